"""Steering to the middlebox daemon, asked of the simulated flow table."""

import dataclasses

import pytest

from fakeoftable import FakeOFTable
from ryu_apps import pipeline as P
from ryu_apps import slices as slicelib
from ryu_apps.flows import compute_host_flows
from ryu_apps.model import AddressSetInfo, MiddleboxInfo, PolicyInfo
from ryu_apps.ofmodel import Flow, canon_match
from topologies import TUNNEL, VMS, VNI_A, VNI_B, two_tenants

MAC = {name: spec[1] for name, spec in VMS.items()}
IP = {name: spec[2] for name, spec in VMS.items()}
MB_PORT = 50


def firewalled(policies=None, same_host="both", mb_port=MB_PORT, sets=None):
    topo = two_tenants()
    hosts = {h: dataclasses.replace(i, mb_ofport=mb_port) for h, i in topo.hosts.items()}
    mbs = {"fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a",
                                 options={"same-host": same_host})}
    if policies is None:
        policies = (PolicyInfo("ls-a", 100, "any", "fw-a"),)
    topo = dataclasses.replace(topo, hosts=hosts, middleboxes=mbs, policies=tuple(policies),
                               address_sets=sets or {})
    tags = slicelib.allocate(slicelib.needed_slices(topo), {})
    return dataclasses.replace(topo, slices=tags)


def tcp(src, dst, in_port=None, flags=0x002, sport=40000, dport=7000, **extra):
    pkt = {"in_port": VMS[src][4] if in_port is None else in_port,
           "eth_src": MAC[src], "eth_dst": MAC[dst], "eth_type": 0x0800,
           "ip_proto": 6, "ipv4_src": IP[src], "ipv4_dst": IP[dst],
           "tcp_src": sport, "tcp_dst": dport, "tcp_flags": flags}
    pkt.update(extra)
    return pkt


def from_tunnel(src, dst, host, vni=VNI_A, **kw):
    return tcp(src, dst, in_port=TUNNEL[host], tunnel_id=vni, **kw)


def back_from_daemon(pkt, tag, stage):
    return dict(pkt, in_port=MB_PORT, vlan_vid=P.VLAN_PRESENT | tag, vlan_pcp=stage)


def outs(table, pkt):
    return [(o.port, o.get("vlan_vid"), o.get("vlan_pcp"), o.get("tunnel_id"))
            for o in table.lookup(pkt)]


def test_slices_only_where_the_switch_has_vms_and_tags_are_stable():
    topo = firewalled()
    assert set(topo.slices) == {("fw-a", "h1"), ("fw-a", "h2"), ("fw-a", "h3")}
    again = slicelib.allocate(slicelib.needed_slices(topo), {("fw-a", "h2"): 7})
    assert again[("fw-a", "h2")] == 7 and again[("fw-a", "h1")] == topo.slices[("fw-a", "h1")]
    topo = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a4"})
    assert ("fw-a", "h3") not in slicelib.needed_slices(topo)


def test_tags_are_unique_per_host():
    needed = {("m%d" % i, "h1") for i in range(5)} | {("m0", "h2")}
    tags = slicelib.allocate(needed, {("m1", "h1"): 3, ("m2", "h1"): 3})
    h1 = [t for (m, h), t in tags.items() if h == "h1"]
    assert len(h1) == len(set(h1)) == 5 and tags[("m1", "h1")] == 3


def test_cross_host_packet_goes_through_the_daemon_on_both_hosts():
    topo = firewalled()
    h1, h2 = (FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h2"))
    tag1, tag2 = topo.slices[("fw-a", "h1")], topo.slices[("fw-a", "h2")]
    syn = tcp("a1", "a2")
    assert outs(h1, syn) == [(MB_PORT, P.VLAN_PRESENT | tag1, P.STAGE_FROM_VM, None)]
    # the daemon passes it: on to the tunnel, untagged
    assert outs(h1, back_from_daemon(syn, tag1, P.STAGE_FROM_VM)) == \
        [(TUNNEL["h1"], None, None, VNI_A)]
    # at h2 the to-VM stage sends it to h2's daemon, then to a2's port
    arriving = from_tunnel("a1", "a2", "h2")
    assert [o[:3] for o in outs(h2, arriving)] == [(MB_PORT, P.VLAN_PRESENT | tag2, P.STAGE_TO_VM)]
    assert [o.port for o in h2.lookup(back_from_daemon(arriving, tag2, P.STAGE_TO_VM))] == \
        [VMS["a2"][4]]


def test_cached_connection_skips_the_daemon_but_fin_and_rst_do_not():
    topo = firewalled()
    tag = topo.slices[("fw-a", "h1")]
    entry = Flow(P.FROM_VM_CACHE.table_id, P.PRIO_CACHE_ENTRY,
                 canon_match(reg4=tag, eth_type=0x0800, ip_proto=6, ipv4_src=IP["a1"],
                             ipv4_dst=IP["a2"], tcp_src=40000, tcp_dst=7000),
                 (("goto", P.L2_LOOKUP.table_id),), cookie=P.DAEMON_COOKIE | 1)
    h1 = FakeOFTable(compute_host_flows(topo, "h1") + [P.check_flow(entry, P.DAEMON_COOKIE)])
    assert outs(h1, tcp("a1", "a2", flags=0x010)) == [(TUNNEL["h1"], None, None, VNI_A)]
    for flags in (0x011, 0x004):
        assert outs(h1, tcp("a1", "a2", flags=flags)) == \
            [(MB_PORT, P.VLAN_PRESENT | tag, P.STAGE_FROM_VM, None)]
    # another connection of the same VMs is not cached
    assert outs(h1, tcp("a1", "a2", sport=40001, flags=0x010))[0][0] == MB_PORT


def test_other_tenant_broadcast_and_arp_are_not_steered():
    h1 = FakeOFTable(compute_host_flows(firewalled(), "h1"))
    b = tcp("b1", "b2")
    assert outs(h1, b) == [(TUNNEL["h1"], None, None, VNI_B)]
    arp = {"in_port": 1, "eth_src": MAC["a1"], "eth_dst": "ff:ff:ff:ff:ff:ff",
           "eth_type": 0x0806}
    assert MB_PORT not in [o.port for o in h1.lookup(arp)]
    bcast = dict(tcp("a1", "a2"), eth_dst="ff:ff:ff:ff:ff:ff", ipv4_dst="10.0.0.255")
    assert MB_PORT not in [o.port for o in h1.lookup(bcast)]


def test_policy_match_selects_both_directions_and_bypass_wins_by_priority():
    policies = (PolicyInfo("ls-a", 200, "dst=10.0.0.4", None),
                PolicyInfo("ls-a", 100, "src=10.0.0.1", "fw-a"))
    topo = firewalled(policies)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert outs(h1, tcp("a1", "a2"))[0][0] == MB_PORT
    assert outs(h1, tcp("a1", "a4")) == [(TUNNEL["h1"], None, None, VNI_A)]   # bypass
    # the reply a2 -> a1 matches the policy reversed: steered at a1's to-VM stage
    assert outs(h1, from_tunnel("a2", "a1", "h1"))[0][0] == MB_PORT
    # traffic between a2 and a3 is not selected at all
    assert [o.port for o in h1.lookup(from_tunnel("a2", "a3", "h1"))] == [VMS["a3"][4]]


def test_address_set_in_policy_is_expanded():
    sets = {"web": AddressSetInfo("web", "tenant-a", ("10.0.0.2", "10.0.0.4"))}
    topo = firewalled((PolicyInfo("ls-a", 100, "dst=$web", "fw-a"),), sets=sets)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert outs(h1, tcp("a1", "a2"))[0][0] == MB_PORT
    assert outs(h1, tcp("a1", "a4"))[0][0] == MB_PORT
    assert outs(h1, tcp("a3", "a1", in_port=3))[0][0] == 1     # not in the set
    empty = firewalled((PolicyInfo("ls-a", 100, "dst=$web", "fw-a"),),
                       sets={"web": AddressSetInfo("web", "tenant-a", ())})
    h1 = FakeOFTable(compute_host_flows(empty, "h1"))
    assert outs(h1, tcp("a1", "a2")) == [(TUNNEL["h1"], None, None, VNI_A)]


@pytest.mark.parametrize("mode, from_vm_stage, to_vm_stage", [
    ("both", True, True), ("source", True, False), ("destination", False, True)])
def test_same_host_modes(mode, from_vm_stage, to_vm_stage):
    topo = firewalled(same_host=mode)
    tag = topo.slices[("fw-a", "h1")]
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    pkt = tcp("a1", "a3")
    stages = []
    for _ in range(3):
        out = h1.lookup(pkt)
        assert len(out) == 1
        if out[0].port != MB_PORT:
            assert out[0].port == VMS["a3"][4]
            break
        stage = out[0].get("vlan_pcp")
        stages.append(stage)
        pkt = back_from_daemon(tcp("a1", "a3"), tag, stage)
    assert stages == [s for s, on in ((P.STAGE_FROM_VM, from_vm_stage),
                                      (P.STAGE_TO_VM, to_vm_stage)) if on]


def test_fail_closed_without_middlebox_port_and_unknown_tags_dropped():
    topo = firewalled(mb_port=None)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert h1.lookup(tcp("a1", "a2")) == []
    assert h1.lookup(tcp("b1", "b2")) != []
    h1 = FakeOFTable(compute_host_flows(firewalled(), "h1"))
    assert h1.lookup(back_from_daemon(tcp("a1", "a2"), 999, P.STAGE_FROM_VM)) == []


def test_every_flow_fits_the_pipeline():
    topo = firewalled(same_host="destination")
    for host in ("h1", "h2", "h3"):
        flows = compute_host_flows(topo, host)
        assert len({f.key for f in flows}) == len(flows)
        for f in flows:
            P.check_flow(f)
