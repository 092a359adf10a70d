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
FW = ("fw-a",)


def firewalled(policies=None, same_host="both", mb_port=MB_PORT, sets=None):
    topo = two_tenants()
    hosts = {h: dataclasses.replace(i, mb_ofport=mb_port) for h, i in topo.hosts.items()}
    mbs = {"fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a",
                                 options={"same-host": same_host})}
    if policies is None:
        policies = (PolicyInfo("ls-a", 100, "any", FW),)
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
    assert set(topo.slices) == {(FW, "h1"), (FW, "h2"), (FW, "h3")}
    again = slicelib.allocate(slicelib.needed_slices(topo), {(FW, "h2"): 7})
    assert again[(FW, "h2")] == 7 and again[(FW, "h1")] == topo.slices[(FW, "h1")]
    topo = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a4"})
    assert (FW, "h3") not in slicelib.needed_slices(topo)


def test_an_incoming_migration_needs_the_vms_slices_at_its_destination():
    topo = firewalled()
    topo = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a4"})
    assert (FW, "h3") not in slicelib.needed_slices(topo)
    assert (FW, "h3") in slicelib.needed_slices(topo, [("a2", "h3")])
    # a VM of an unsteered switch, an unknown VM or host: nothing more
    base = slicelib.needed_slices(topo)
    assert slicelib.needed_slices(topo, [("b2", "h3"), ("zz", "h3"),
                                         ("a2", "h9")]) == base


def test_tags_are_unique_per_host():
    needed = {(("m%d" % i,), "h1") for i in range(5)} | {(("m0",), "h2")}
    tags = slicelib.allocate(needed, {(("m1",), "h1"): 3, (("m2",), "h1"): 3})
    h1 = [t for (m, h), t in tags.items() if h == "h1"]
    assert len(h1) == len(set(h1)) == 5 and tags[(("m1",), "h1")] == 3


def test_cross_host_packet_goes_through_the_daemon_on_both_hosts():
    topo = firewalled()
    h1, h2 = (FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h2"))
    tag1, tag2 = topo.slices[(FW, "h1")], topo.slices[(FW, "h2")]
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
    tag = topo.slices[(FW, "h1")]
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
    policies = (PolicyInfo("ls-a", 200, "dst=10.0.0.4", ()),
                PolicyInfo("ls-a", 100, "src=10.0.0.1", FW))
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
    topo = firewalled((PolicyInfo("ls-a", 100, "dst=$web", FW),), sets=sets)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert outs(h1, tcp("a1", "a2"))[0][0] == MB_PORT
    assert outs(h1, tcp("a1", "a4"))[0][0] == MB_PORT
    assert outs(h1, tcp("a3", "a1", in_port=3))[0][0] == 1     # not in the set
    empty = firewalled((PolicyInfo("ls-a", 100, "dst=$web", FW),),
                       sets={"web": AddressSetInfo("web", "tenant-a", ())})
    h1 = FakeOFTable(compute_host_flows(empty, "h1"))
    assert outs(h1, tcp("a1", "a2")) == [(TUNNEL["h1"], None, None, VNI_A)]


@pytest.mark.parametrize("mode, from_vm_stage, to_vm_stage", [
    ("both", True, True), ("source", True, False), ("destination", False, True)])
def test_same_host_modes(mode, from_vm_stage, to_vm_stage):
    topo = firewalled(same_host=mode)
    tag = topo.slices[(FW, "h1")]
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


# ------------------------------------------------------------------ services
# docs/services.md on the simulated flow table: chains, the distributed
# gateway, the external network, SNAT port blocks, DNAT, IDS copies.

from ryu_apps.model import HostInfo  # noqa: E402
from topologies import (CLIENT, DNAT_IP, ENCAP, EXT_GW_IP, EXT_GW_MAC, FW_LB,  # noqa: E402
                        FW_NAT, GATEWAY_A, IDS, OUTSIDE, SNAT_IP, UPLINK, UPLINK_MAC, VIP,
                        services)

SNAT_UUID = "11111111-0000-0000-0000-000000000001"


def host_tables(topo, blocks=None):
    return {h: FakeOFTable(compute_host_flows(topo, h, blocks)) for h in ("h1", "h2", "h3")}


def arp_request(src, target, in_port=None):
    return {"in_port": VMS[src][4] if in_port is None else in_port, "eth_src": MAC[src],
            "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1,
            "arp_sha": MAC[src], "arp_spa": IP[src], "arp_tha": "00:00:00:00:00:00",
            "arp_tpa": target}


def from_outside(dst, dport, proto=6, src=OUTSIDE, sport=443, **extra):
    pkt = {"in_port": UPLINK, "eth_src": EXT_GW_MAC, "eth_dst": UPLINK_MAC["h1"],
           "eth_type": 0x0800, "ip_proto": proto, "ipv4_src": src, "ipv4_dst": dst}
    names = ("tcp_src", "tcp_dst") if proto == 6 else ("udp_src", "udp_dst")
    pkt.update({names[0]: sport, names[1]: dport})
    if proto == 6:
        pkt["tcp_flags"] = 0x002
    pkt.update(extra)
    return pkt


def redirected(pkt, host, vni=VNI_A):
    """``pkt`` as it arrives at ``host`` after another host's EXTERNAL_IN sent it on."""
    return dict(pkt, in_port=TUNNEL[host], tunnel_id=vni, eth_dst=P.ROUTER_MAC)


def tag_of(topo, chain, host):
    return P.VLAN_PRESENT | topo.slices[(chain, host)]


def test_slices_per_distinct_chain_shared_by_policies():
    topo = services(policies=(PolicyInfo("ls-a", 300, "dst=" + VIP, FW_LB),
                              PolicyInfo("ls-a", 250, "proto=udp", FW_LB),
                              PolicyInfo("ls-a", 200, "any", FW_NAT),
                              PolicyInfo("ls-a", 150, "proto=icmp", ()),
                              PolicyInfo("ls-b", 100, "any", ("fw-a",))))  # another switch's
    assert set(topo.slices) == {(c, h) for c in (FW_LB, FW_NAT) for h in ("h1", "h2", "h3")}
    for host in ("h1", "h2", "h3"):
        assert topo.slices[(FW_LB, host)] != topo.slices[(FW_NAT, host)]
    # the same middlebox in two chains: two slices; order matters
    needed = slicelib.needed_slices(dataclasses.replace(topo, policies=(
        PolicyInfo("ls-a", 2, "any", ("nat-a", "fw-a")), PolicyInfo("ls-a", 1, "any", FW_NAT))))
    assert {c for c, h in needed if h == "h1"} == {("nat-a", "fw-a"), FW_NAT}
    # the policy of ls-b naming ls-a's firewall selects nothing: fail closed
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert h1.lookup(tcp("b1", "b2")) == []


def test_each_policy_steers_to_its_chains_slice():
    topo = services()
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    to_vip = dict(tcp("a1", "a2", dport=80), ipv4_dst=VIP, eth_dst=P.ROUTER_MAC)
    assert outs(h1, to_vip) == [(MB_PORT, tag_of(topo, FW_LB, "h1"), P.STAGE_FROM_VM, None)]
    out = dict(tcp("a1", "a2", dport=443), ipv4_dst=OUTSIDE, eth_dst=P.ROUTER_MAC)
    assert outs(h1, out) == [(MB_PORT, tag_of(topo, FW_NAT, "h1"), P.STAGE_FROM_VM, None)]
    # not selected, to the router MAC: no route
    assert h1.lookup(dict(out, ipv4_dst="192.0.2.1")) == []


def test_gateway_and_vip_arp_is_answered_by_the_local_host():
    h1 = FakeOFTable(compute_host_flows(services(), "h1"))
    for target in (GATEWAY_A, VIP):
        replies = h1.lookup(arp_request("a3", target))
        assert len(replies) == 1
        r = replies[0]
        assert r.port == VMS["a3"][4]          # out of the asking VM's own port
        assert (r.get("eth_dst"), r.get("eth_src"), r.get("arp_op")) == \
            (MAC["a3"], P.ROUTER_MAC, 2)
        assert (r.get("arp_sha"), r.get("arp_spa"), r.get("arp_tha"), r.get("arp_tpa")) == \
            (P.ROUTER_MAC, target, MAC["a3"], IP["a3"])
    # ARP for another VM is flooded as before; tenant B has no VIP here
    assert [o.port for o in h1.lookup(arp_request("a3", IP["a1"]))] == [TUNNEL["h1"]] * 2 + [1]
    assert all(o.get("eth_src") != P.ROUTER_MAC for o in h1.lookup(arp_request("b1", VIP)))
    # a VM asking for its own address (here: its switch's default gateway) is not answered
    assert all(o.get("eth_src") != P.ROUTER_MAC for o in h1.lookup(arp_request("b1", "10.0.0.1")))


def test_uplink_arp_is_answered_by_the_designated_host_only():
    topo = services()
    assert slicelib.designated_hosts(topo) == {SNAT_IP: "h1", DNAT_IP: "h1"}
    tables = host_tables(topo)
    for address in (SNAT_IP, DNAT_IP):
        ask = {"in_port": UPLINK, "eth_src": EXT_GW_MAC, "eth_dst": "ff:ff:ff:ff:ff:ff",
               "eth_type": 0x0806, "arp_op": 1, "arp_sha": EXT_GW_MAC, "arp_spa": EXT_GW_IP,
               "arp_tha": "00:00:00:00:00:00", "arp_tpa": address}
        [r] = tables["h1"].lookup(ask)
        assert r.port == UPLINK
        assert (r.get("eth_src"), r.get("eth_dst"), r.get("arp_op"), r.get("arp_sha"),
                r.get("arp_spa"), r.get("arp_tha"), r.get("arp_tpa")) == \
            (UPLINK_MAC["h1"], EXT_GW_MAC, 2, UPLINK_MAC["h1"], address, EXT_GW_MAC, EXT_GW_IP)
        assert tables["h2"].lookup(ask) == [] and tables["h3"].lookup(ask) == []
        assert tables["h1"].lookup(dict(ask, arp_tpa="203.0.113.99")) == []
        assert tables["h1"].lookup(dict(ask, arp_spa="203.0.113.7")) == []


def test_snat_block_of_this_host_is_handled_here_others_are_redirected():
    topo = services()
    blocks = slicelib.snat_blocks(topo, {})
    assert sorted(h for (_, h) in blocks) == ["h1", "h2", "h3"]
    assert len({b for b in blocks.values()}) == 3
    tables = host_tables(topo, blocks)
    for (uuid, owner), (ip, lo, hi) in sorted(blocks.items()):
        assert (uuid, ip) == (SNAT_UUID, SNAT_IP)
        for proto in (6, 17):
            for port in (lo, lo + 1234, hi):
                reply = from_outside(ip, port, proto)
                [o] = tables["h1"].lookup(reply)
                if owner == "h1":
                    assert (o.port, o.get("vlan_vid"), o.get("vlan_pcp")) == \
                        (MB_PORT, tag_of(topo, FW_NAT, "h1"), P.STAGE_FROM_EXTERNAL)
                    continue
                assert (o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst"), o.get("eth_dst")) \
                    == (TUNNEL["h1"], VNI_A, ENCAP[owner], P.ROUTER_MAC)
                # the owner takes it to its own daemon
                assert outs(tables[owner], redirected(reply, owner)) == \
                    [(MB_PORT, tag_of(topo, FW_NAT, owner), P.STAGE_FROM_EXTERNAL, VNI_A)]
                # and a host that does not own it never sends it on again
                other = ({"h2", "h3"} - {owner}).pop()
                assert tables[other].lookup(redirected(reply, other)) == []
    # below the port range, another address, another protocol: dropped
    assert tables["h1"].lookup(from_outside(SNAT_IP, 80)) == []
    assert tables["h1"].lookup(from_outside("203.0.113.99", 20000)) == []
    assert tables["h1"].lookup(from_outside(SNAT_IP, 20000, proto=1, sport=0)) == []


def test_snat_blocks_are_stable_and_written_to_the_slices_status():
    topo = services(ports_per_host=16384)
    first = slicelib.snat_blocks(topo, {})
    swapped = dict(first)
    swapped[(SNAT_UUID, "h1")], swapped[(SNAT_UUID, "h3")] = \
        first[(SNAT_UUID, "h3")], first[(SNAT_UUID, "h1")]
    assert slicelib.snat_blocks(topo, swapped) == swapped
    # h2 leaves (no more tenant-A VMs there): the others keep theirs
    gone = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a2"})
    gone = dataclasses.replace(gone, slices=slicelib.allocate(
        slicelib.needed_slices(gone), dict(topo.slices)))
    again = slicelib.snat_blocks(gone, swapped)
    assert again == {k: v for k, v in swapped.items() if k[1] != "h2"}
    status = slicelib.slice_status(topo, swapped)
    ip, lo, hi = swapped[(SNAT_UUID, "h1")]
    assert status[(FW_NAT, "h1")] == {"snat-block:" + SNAT_UUID: f"{ip}:{lo}-{hi}"}
    assert status[(FW_LB, "h1")] == {} and status[(IDS, "h1")] == {}
    assert slicelib.blocks_from_status(status) == swapped
    # more hosts than blocks: the last host by name gets none
    tight = dataclasses.replace(topo, nat_rules={"nat-a": (dataclasses.replace(
        topo.nat_rules["nat-a"][0], port_range=(32768, 65535)),)})
    assert sorted(h for _, h in slicelib.snat_blocks(tight, {})) == ["h1", "h2"]


def test_dnat_goes_to_the_vms_host():
    topo = services()
    tables = host_tables(topo)
    syn = from_outside(DNAT_IP, 8080, src=CLIENT, sport=50000)
    [o] = tables["h1"].lookup(syn)                 # a2 lives on h2
    assert (o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst"), o.get("eth_dst")) == \
        (TUNNEL["h1"], VNI_A, ENCAP["h2"], P.ROUTER_MAC)
    assert outs(tables["h2"], redirected(syn, "h2")) == \
        [(MB_PORT, tag_of(topo, FW_NAT, "h2"), P.STAGE_FROM_EXTERNAL, VNI_A)]
    assert tables["h1"].lookup(from_outside(DNAT_IP, 8080, proto=17)) == []
    assert tables["h1"].lookup(from_outside(DNAT_IP, 8081)) == []
    # a2 bound nowhere: dropped, not sent to the SNAT block owner
    gone = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a2"})
    assert FakeOFTable(compute_host_flows(gone, "h1")).lookup(syn) == []


def test_judged_external_packet_goes_to_the_vm_without_steering_again():
    topo = services()
    h2 = FakeOFTable(compute_host_flows(topo, "h2"))
    tag = topo.slices[(FW_NAT, "h2")]
    # the daemon translated it (DNAT) and passes it at PCP 2
    passed = dict(from_outside(IP["a2"], 80, src=CLIENT, sport=50000), in_port=MB_PORT,
                  eth_src=P.ROUTER_MAC, eth_dst=MAC["a2"], vlan_vid=P.VLAN_PRESENT | tag,
                  vlan_pcp=P.STAGE_FROM_EXTERNAL)
    assert outs(h2, passed) == [(VMS["a2"][4], None, None, None)]
    # without reg3 the FW_NAT policy (src in the internet) would have taken it
    arriving = dict(from_tunnel("a1", "a2", "h2", dport=80), ipv4_src=CLIENT)
    assert outs(h2, arriving)[0][0] == MB_PORT
    # a judged packet for a VM not on this host never goes into the tunnel
    assert h2.lookup(dict(passed, eth_dst=MAC["a4"], ipv4_dst=IP["a4"])) == []
    # PCP 2 of a slice without NAT is not admitted
    other = dict(passed, vlan_vid=tag_of(topo, FW_LB, "h2"))
    assert h2.lookup(other) == []


def test_external_cache_entry_translates_and_delivers():
    topo = services()
    tag = topo.slices[(FW_NAT, "h2")]
    syn = from_outside(DNAT_IP, 8080, src=CLIENT, sport=50000, tcp_flags=0x010)
    entry = Flow(P.EXTERNAL_CACHE.table_id, P.PRIO_CACHE_ENTRY,
                 canon_match(reg4=tag, eth_type=0x0800, ip_proto=6, ipv4_src=CLIENT,
                             ipv4_dst=DNAT_IP, tcp_src=50000, tcp_dst=8080),
                 (("apply", (("set_field", "ipv4_dst", IP["a2"]), ("set_field", "tcp_dst", 80),
                             ("set_field", "eth_src", P.ROUTER_MAC),
                             ("set_field", "eth_dst", MAC["a2"]))),
                  ("goto", P.L2_LOOKUP.table_id)), cookie=P.DAEMON_COOKIE | 9)
    h2 = FakeOFTable(compute_host_flows(topo, "h2") + [P.check_flow(entry, P.DAEMON_COOKIE)])
    [o] = h2.lookup(redirected(syn, "h2"))
    assert (o.port, o.get("ipv4_dst"), o.get("tcp_dst"), o.get("eth_dst")) == \
        (VMS["a2"][4], IP["a2"], 80, MAC["a2"])
    # FIN and RST still go to the daemon
    assert outs(h2, redirected(dict(syn, tcp_flags=0x001), "h2"))[0][0] == MB_PORT


def test_translated_packets_leave_by_the_senders_uplink():
    topo = services()
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    tag = topo.slices[(FW_NAT, "h1")]
    snat = dict(tcp("a1", "a2", sport=20001, dport=443), ipv4_src=SNAT_IP, ipv4_dst=OUTSIDE,
                eth_dst=P.ROUTER_MAC)
    passed = back_from_daemon(snat, tag, P.STAGE_FROM_VM)
    [o] = h1.lookup(passed)
    assert (o.port, o.get("eth_src"), o.get("eth_dst"), o.get("ipv4_src"), o.get("vlan_vid")) \
        == (UPLINK, UPLINK_MAC["h1"], EXT_GW_MAC, SNAT_IP, None)
    # a cached translation (FROM_VM_CACHE -> EXTERNAL_OUT) leaves the same way
    entry = Flow(P.FROM_VM_CACHE.table_id, P.PRIO_CACHE_ENTRY,
                 canon_match(reg4=tag, eth_type=0x0800, ip_proto=6, ipv4_src=IP["a1"],
                             ipv4_dst=OUTSIDE, tcp_src=40000, tcp_dst=443),
                 (("apply", (("set_field", "ipv4_src", SNAT_IP),
                             ("set_field", "tcp_src", 20001))),
                  ("goto", P.EXTERNAL_OUT.table_id)), cookie=P.DAEMON_COOKIE | 3)
    cached = FakeOFTable(compute_host_flows(topo, "h1") + [P.check_flow(entry, P.DAEMON_COOKIE)])
    pkt = dict(tcp("a1", "a2", dport=443, flags=0x010), ipv4_dst=OUTSIDE, eth_dst=P.ROUTER_MAC)
    [o] = cached.lookup(pkt)
    assert (o.port, o.get("eth_src"), o.get("eth_dst"), o.get("ipv4_src"), o.get("tcp_src")) \
        == (UPLINK, UPLINK_MAC["h1"], EXT_GW_MAC, SNAT_IP, 20001)
    # a VM sending from an external address itself is dropped, not routed
    assert h1.lookup(dict(snat, tcp_dst=9999, ipv4_dst="192.0.2.1")) == []
    assert h1.lookup(dict(snat, ipv4_dst=OUTSIDE)) == []
    # no uplink, or no external network: nothing leaves
    for topo2 in (services(uplink=None), services(external=False)):
        assert FakeOFTable(compute_host_flows(topo2, "h1")).lookup(passed) == []


def test_ids_only_chain_gets_copies_and_never_delays_the_original():
    topo = services()
    tag = tag_of(topo, IDS, "h3")
    h1, h3 = (FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h3"))
    # from-VM stage: nothing goes to the daemon
    assert outs(h1, tcp("a1", "a4", dport=22)) == [(TUNNEL["h1"], None, None, VNI_A)]
    # to-VM stage: a copy of SYN and RST, tagged, then the original
    for flags in (0x002, 0x012, 0x004):
        assert outs(h3, from_tunnel("a1", "a4", "h3", dport=22, flags=flags)) == \
            [(MB_PORT, tag, P.STAGE_TO_VM, VNI_A), (VMS["a4"][4], None, None, VNI_A)]
    for flags in (0x010, 0x018, 0x011):
        assert outs(h3, from_tunnel("a1", "a4", "h3", dport=22, flags=flags)) == \
            [(VMS["a4"][4], None, None, VNI_A)]
    # no IDS returns are admitted
    assert h3.lookup(back_from_daemon(tcp("a1", "a4", dport=22), tag & 0xFFF,
                                      P.STAGE_TO_VM)) == []
    # no middlebox port: the traffic still flows, unobserved
    bare = FakeOFTable(compute_host_flows(services(mb_port=None), "h3"))
    assert outs(bare, from_tunnel("a1", "a4", "h3", dport=22)) == \
        [(VMS["a4"][4], None, None, VNI_A)]


def test_health_probe_reply_goes_to_the_daemon():
    topo = services()
    h2 = FakeOFTable(compute_host_flows(topo, "h2"))
    reply = dict(tcp("a2", "a1", sport=80, dport=61000, flags=0x012), ipv4_dst=GATEWAY_A,
                 eth_dst=P.ROUTER_MAC)
    lb_tag = min(t for (c, h), t in topo.slices.items() if h == "h2" and "lb-a" in c)
    assert outs(h2, reply) == [(MB_PORT, P.VLAN_PRESENT | lb_tag, P.STAGE_PROBE, None)]
    # PCP 3 never comes back
    assert h2.lookup(back_from_daemon(reply, lb_tag, P.STAGE_PROBE)) == []
    # without a load balancer in the switch's chains: no route to the gateway
    no_lb = services(policies=(PolicyInfo("ls-a", 1, "proto=udp", FW_NAT),))
    assert FakeOFTable(compute_host_flows(no_lb, "h2")).lookup(reply) == []


def test_reply_catcher_of_the_daemon_steers_to_the_cache_table():
    topo = services()
    tag = topo.slices[(FW_LB, "h1")]
    # LB entry: a1 -> VIP went to a4; a4's reply at a1's to-VM stage
    catcher = Flow(P.TO_VM_STEERING.table_id, P.PRIO_STEER_CATCHER,
                   canon_match(metadata=(VNI_A, P.METADATA_VNI_MASK), eth_type=0x0800,
                               ip_proto=6, ipv4_src=IP["a4"], ipv4_dst=IP["a1"],
                               tcp_src=80, tcp_dst=40000),
                   (("apply", (("set_field", "reg4", tag),)),
                    ("goto", P.TO_VM_CACHE.table_id)), cookie=P.DAEMON_COOKIE | 4)
    h1 = FakeOFTable(compute_host_flows(topo, "h1") + [P.check_flow(catcher, P.DAEMON_COOKIE)])
    reply = from_tunnel("a4", "a1", "h1", sport=80, dport=40000, flags=0x012)
    assert outs(h1, reply) == [(MB_PORT, P.VLAN_PRESENT | tag, P.STAGE_TO_VM, VNI_A)]
    assert outs(FakeOFTable(compute_host_flows(topo, "h1")), reply) == \
        [(VMS["a1"][4], None, None, VNI_A)]


def test_host_without_nat_gets_no_external_flows():
    topo = services(policies=(PolicyInfo("ls-a", 1, "any", FW_LB),))
    flows = compute_host_flows(topo, "h1")
    tables = {f.table for f in flows if f.match}
    assert P.EXTERNAL_IN.table_id not in tables and P.EXTERNAL_CACHE.table_id not in tables
    assert not any(f.table == P.TO_VM_STEERING.table_id and "reg3" in f.match_dict()
                   for f in flows)
    assert FakeOFTable(flows).lookup(from_outside(SNAT_IP, 20000)) == []


@pytest.mark.parametrize("host", ["h1", "h2", "h3"])
def test_every_service_flow_fits_the_pipeline(host):
    for topo in (services(), services(mb_port=None), services(uplink=None),
                 services(external=False)):
        flows = compute_host_flows(topo, host)
        assert len({f.key for f in flows}) == len(flows)
        for f in flows:
            P.check_flow(f)
    # a host without a tunnel or registered at all still gets consistent flows
    topo = services()
    topo = dataclasses.replace(topo, hosts={**topo.hosts, host: HostInfo(host, ENCAP[host])})
    for f in compute_host_flows(topo, host):
        P.check_flow(f)


def test_service_flows_survive_the_switch_round_trip():
    from test_ofmsg import read_back
    topo = services()
    for host in ("h1", "h2", "h3"):
        flows = compute_host_flows(topo, host)
        assert read_back(flows) == flows
