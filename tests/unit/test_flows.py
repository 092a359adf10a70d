"""Behaviour of the computed flows, asked of the simulated flow table."""

import dataclasses
import random

import pytest

from fakeoftable import FakeOFTable
from ryu_apps import pipeline
from ryu_apps.flows import compute_host_flows
from mbxmodel.network import PortBinding, SwitchInfo, VMInfo
from mbxmodel.topology import Topology
from topologies import BROADCAST, ENCAP, SHARED_MAC, TUNNEL, VMS, VNI_A, VNI_B, two_tenants

MAC = {name: spec[1] for name, spec in VMS.items()}


def tables(topo):
    return {h: FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h2", "h3")}


def from_vm(vm, eth_dst, port=None, eth_src=None):
    return {"in_port": port if port is not None else VMS[vm][4],
            "eth_src": eth_src or MAC[vm], "eth_dst": eth_dst, "eth_type": 0x0800}


def from_tunnel(host, vni, eth_dst, eth_src="02:00:00:00:00:99"):
    return {"in_port": TUNNEL[host], "tunnel_id": vni,
            "eth_src": eth_src, "eth_dst": eth_dst, "eth_type": 0x0806}


@pytest.fixture
def sw():
    return tables(two_tenants())


def test_unicast_to_remote_vm_is_tunnelled_to_its_host(sw):
    outs = sw["h1"].lookup(from_vm("a1", MAC["a2"]))
    assert [(o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in outs] == \
        [(TUNNEL["h1"], VNI_A, ENCAP["h2"])]


def test_tunnelled_unicast_is_delivered_only_to_its_vm(sw):
    assert sw["h2"].output_ports(from_tunnel("h2", VNI_A, MAC["a2"])) == [1]
    assert sw["h2"].output_ports(from_tunnel("h2", VNI_B, MAC["b2"])) == [2]


def test_tunnelled_unicast_with_another_tenants_vni_is_dropped(sw):
    assert sw["h2"].lookup(from_tunnel("h2", VNI_B, MAC["a2"])) == []
    assert sw["h2"].lookup(from_tunnel("h2", 4242, MAC["a2"])) == []


def test_local_unicast_stays_on_the_host(sw):
    outs = sw["h1"].lookup(from_vm("a1", MAC["a3"]))
    assert [o.port for o in outs] == [3]
    assert outs[0].get("tunnel_id") is None


def test_spoofed_source_mac_is_dropped(sw):
    assert sw["h1"].lookup(from_vm("a1", MAC["a3"], eth_src="02:00:00:00:00:66")) == []
    # a3's own MAC from a1's port is a spoof too
    assert sw["h1"].lookup(from_vm("a1", MAC["a2"], eth_src=MAC["a3"])) == []


def test_unknown_port_and_unknown_unicast_are_dropped(sw):
    assert sw["h1"].lookup(from_vm("a1", MAC["a2"], port=42)) == []
    assert sw["h1"].lookup(from_vm("a1", "02:00:00:00:00:77")) == []


def test_shared_mac_resolves_within_each_tenant(sw):
    # a1 and b1 have the same MAC on the same host
    assert sw["h1"].output_ports(from_vm("a3", SHARED_MAC)) == [1]
    assert sw["h1"].output_ports(from_tunnel("h1", VNI_A, SHARED_MAC)) == [1]
    assert sw["h1"].output_ports(from_tunnel("h1", VNI_B, SHARED_MAC)) == [2]
    outs = sw["h2"].lookup(from_vm("b2", SHARED_MAC))
    assert [(o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in outs] == \
        [(TUNNEL["h2"], VNI_B, ENCAP["h1"])]


def test_broadcast_from_vm_reaches_own_tenant_only(sw):
    outs = sw["h1"].lookup(from_vm("a1", BROADCAST))
    assert [(o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in outs if o.port == TUNNEL["h1"]] \
        == [(VNI_A, ENCAP["h2"]), (VNI_A, ENCAP["h3"])]
    assert [o.port for o in outs if o.port != TUNNEL["h1"]] == [3]
    assert sw["h1"].is_output(from_vm("a1", BROADCAST), TUNNEL["h1"], tun_ipv4_dst=ENCAP["h3"])
    assert not sw["h1"].is_output(from_vm("a1", BROADCAST), 2)
    # the flood itself skips the ingress port (not just the switch's hairpin rule)
    outs = sw["h1"].lookup(from_vm("a1", BROADCAST), include_ingress=True)
    assert 1 not in [o.port for o in outs]


def test_broadcast_copies_go_only_to_hosts_with_the_tenants_vms(sw):
    outs = sw["h1"].lookup(from_vm("b1", "01:00:5e:00:00:01"))   # multicast
    assert [(o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in outs] == \
        [(TUNNEL["h1"], VNI_B, ENCAP["h2"])]


def test_broadcast_from_tunnel_goes_to_local_ports_only(sw):
    assert sw["h1"].output_ports(from_tunnel("h1", VNI_A, BROADCAST)) == [1, 3]
    assert sw["h1"].output_ports(from_tunnel("h1", VNI_B, BROADCAST)) == [2]
    assert sw["h3"].output_ports(from_tunnel("h3", VNI_B, BROADCAST)) == []


def test_packets_from_tunnel_are_never_sent_back_into_it(sw):
    # a4 lives on h3; h1 must not relay h2's packet for it, not even as a
    # hairpin the switch would silently drop.
    for host in ("h1", "h2", "h3"):
        for vni in (VNI_A, VNI_B):
            for dst in list(MAC.values()) + [BROADCAST]:
                outs = sw[host].lookup(from_tunnel(host, vni, dst), include_ingress=True)
                assert TUNNEL[host] not in [o.port for o in outs], (host, vni, dst)


def test_no_packet_crosses_tenants(sw):
    tenant = {name: spec[0] for name, spec in VMS.items()}
    for src, (_, _, _, host, _) in VMS.items():
        for dst in list(MAC.values()) + [BROADCAST]:
            for out in sw[host].lookup(from_vm(src, dst)):
                if out.port == TUNNEL[host]:
                    assert out.get("tunnel_id") == (VNI_A if tenant[src] == "ls-a" else VNI_B)
                else:
                    receiver = next(n for n, s in VMS.items() if s[3] == host and s[4] == out.port)
                    assert tenant[receiver] == tenant[src], (src, dst, receiver)


def test_host_gets_no_flows_for_switches_without_local_vms(sw):
    flows = compute_host_flows(two_tenants(), "h3")      # only a4 (tenant A)
    assert VNI_B not in {f.match_dict().get("tunnel_id") for f in flows}
    assert "(1002," not in repr(flows)
    assert sw["h3"].lookup(from_tunnel("h3", VNI_B, MAC["b2"])) == []


def test_moving_a_vm_updates_every_host():
    before = two_tenants()
    bindings = dict(before.bindings)
    bindings["a2"] = PortBinding("a2", "h3", 5)
    sw = tables(dataclasses.replace(before, bindings=bindings))
    outs = sw["h1"].lookup(from_vm("a1", MAC["a2"]))
    assert [(o.port, o.get("tun_ipv4_dst")) for o in outs] == [(TUNNEL["h1"], ENCAP["h3"])]
    assert sw["h3"].output_ports(from_tunnel("h3", VNI_A, MAC["a2"])) == [5]
    assert sw["h2"].lookup(from_tunnel("h2", VNI_A, MAC["a2"])) == []
    # h2 has no tenant-A VM left, so broadcasts for A no longer go there
    outs = sw["h1"].lookup(from_vm("a1", BROADCAST))
    assert [o.get("tun_ipv4_dst") for o in outs if o.port == TUNNEL["h1"]] == [ENCAP["h3"]]
    assert sw["h2"].lookup(from_tunnel("h2", VNI_A, BROADCAST)) == []


def test_host_without_tunnel_port_gets_local_flows_only():
    topo = two_tenants(tunnels={"h2": 200, "h3": 300})
    flows = compute_host_flows(topo, "h1")
    sw = FakeOFTable(flows)
    assert sw.output_ports(from_vm("a1", MAC["a3"])) == [3]
    assert sw.output_ports(from_vm("a1", BROADCAST)) == [3]
    assert sw.lookup(from_vm("a1", MAC["a2"])) == []
    assert not any(f.match_dict().get("tunnel_id") for f in flows)
    # other hosts still reach h1 through its known encap IP
    outs = FakeOFTable(compute_host_flows(topo, "h2")).lookup(from_vm("a2", MAC["a1"]))
    assert [(o.port, o.get("tun_ipv4_dst")) for o in outs] == [(TUNNEL["h2"], ENCAP["h1"])]


def test_host_missing_from_topology_gets_local_flows_only():
    topo = two_tenants()
    topo = dataclasses.replace(topo, hosts={h: i for h, i in topo.hosts.items() if h != "h1"})
    sw = FakeOFTable(compute_host_flows(topo, "h1"))
    assert sw.output_ports(from_vm("a1", MAC["a3"])) == [3]
    assert sw.output_ports(from_vm("a1", BROADCAST)) == [3]
    assert sw.lookup(from_vm("a1", MAC["a2"])) == []
    # and h2 can no longer tunnel to h1
    assert FakeOFTable(compute_host_flows(topo, "h2")).lookup(from_vm("a2", MAC["a1"])) == []


def test_host_without_vms_drops_everything():
    topo = two_tenants()
    flows = compute_host_flows(topo, "h9")
    assert all(f.match == () or f.table == pipeline.FROM_VM_STEERING.table_id for f in flows)
    sw = FakeOFTable(flows)
    for src in ("a1", "b1", "a3"):
        for dst in (BROADCAST, MAC["a2"]):
            assert sw.lookup(from_vm(src, dst)) == []
    assert sw.lookup(from_tunnel("h1", VNI_A, MAC["a1"])) == []


def test_vm_of_unknown_switch_is_ignored():
    topo = two_tenants()
    topo = dataclasses.replace(
        topo, vms={**topo.vms, "x1": VMInfo("x1", "ls-gone", "02:00:00:00:00:55", "10.0.0.9")},
        bindings={**topo.bindings, "x1": PortBinding("x1", "h1", 9)})
    flows = compute_host_flows(topo, "h1")
    assert "02:00:00:00:00:55" not in repr(flows)
    assert flows == compute_host_flows(two_tenants(), "h1")


def test_switches_sharing_a_vni_are_left_out():
    topo = two_tenants()
    clash = SwitchInfo("ls-b", "tenant-b", VNI_A, "10.0.0.0/24")
    sw = FakeOFTable(compute_host_flows(
        dataclasses.replace(topo, switches={**topo.switches, "ls-b": clash}), "h1"))
    for src in ("a1", "b1", "a3"):
        assert sw.lookup(from_vm(src, BROADCAST)) == []
    assert sw.lookup(from_tunnel("h1", VNI_A, SHARED_MAC)) == []


def test_duplicate_mac_in_one_switch_gives_unique_keys():
    topo = two_tenants()
    vms = {**topo.vms, "a5": VMInfo("a5", "ls-a", MAC["a3"], "10.0.0.5")}
    bindings = {**topo.bindings, "a5": PortBinding("a5", "h1", 7)}
    flows = compute_host_flows(dataclasses.replace(topo, vms=vms, bindings=bindings), "h1")
    keys = [f.key for f in flows]
    assert len(keys) == len(set(keys))
    assert FakeOFTable(flows).output_ports(from_vm("a1", MAC["a3"])) == [3]


@pytest.mark.parametrize("host", ["h1", "h2", "h3"])
def test_flows_fit_the_pipeline_and_are_unique(host):
    flows = compute_host_flows(two_tenants(), host)
    for flow in flows:
        pipeline.check_flow(flow)
    assert len({f.key for f in flows}) == len(flows)
    steering = {pipeline.GATEWAY: pipeline.FROM_VM_STEERING,
                pipeline.FROM_VM_STEERING: pipeline.L2_LOOKUP,
                pipeline.TO_VM_STEERING: pipeline.LOCAL_DELIVERY}
    for table in pipeline.TABLES:
        if pipeline.COOKIE not in table.owners:
            # a service stage: the daemon's tables, never the controller's
            assert not any(f.table == table.table_id for f in flows)
            continue
        miss = (("goto", steering[table].table_id),) if table in steering else ()
        assert any(f.table == table.table_id and f.priority == pipeline.PRIO_DROP
                   and f.match == () and f.instructions == miss for f in flows)


def test_output_is_deterministic_and_independent_of_input_order():
    topo = two_tenants()
    expected = compute_host_flows(topo, "h1")
    order = [(f.table, -f.priority) for f in expected]
    assert order == sorted(order)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = Topology(**{name: dict(rng.sample(sorted(getattr(topo, name).items()),
                                                     len(getattr(topo, name))))
                               for name in ("hosts", "switches", "vms", "bindings")})
        assert compute_host_flows(shuffled, "h1") == expected


def test_pieces_the_same_on_many_hosts_are_computed_once_and_change_nothing():
    same_port = {h: 100 for h in TUNNEL}
    topo = two_tenants(tunnels=same_port)
    h2, h3 = compute_host_flows(topo, "h2"), compute_host_flows(topo, "h3")
    # a3 (on h1) is remote on both: its L2 flow is one object, made once.
    mac = VMS["a3"][1]

    def to_a3(flows):
        [flow] = [f for f in flows if f.table == pipeline.L2_LOOKUP.table_id
                  and dict(f.match).get("eth_dst") == mac and "tunnel_id" in repr(f)]
        return flow
    assert to_a3(h2) is to_a3(h3)
    # Each host's flows are those of a topology computing it alone.
    for host, flows in (("h2", h2), ("h3", h3)):
        assert flows == compute_host_flows(two_tenants(tunnels=same_port), host)
