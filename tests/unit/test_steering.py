"""Steering into the service stages, asked of the simulated flow table.

The controller's flows (``compute_host_flows``) alone answer where a packet
is sent: into which stage, with which registers, or past every stage.  The
stages themselves are the daemon's (``middlebox.dataplane``, tested in
test_dataplane); where a question is about a whole host, the controller's
flows and the daemon's compiled stages of the same topology run in one
simulated switch (``both``).
"""

import dataclasses

import pytest

from fakeoftable import CT_EST, FakeOFTable, reply_to
from mbxmodel.services import AddressSetInfo, MiddleboxInfo, PolicyInfo, RuleInfo
from middlebox import dataplane as D
from ryu_apps import pipeline as P
from ryu_apps import slices as slicelib
from ryu_apps.flows import compute_host_flows
from topologies import TUNNEL, VMS, VNI_A, daemon_dataplane, host_zones, two_tenants

MAC = {name: spec[1] for name, spec in VMS.items()}
IP = {name: spec[2] for name, spec in VMS.items()}
PORT = {name: spec[4] for name, spec in VMS.items()}
MB_PORT = 50
FW = ("fw-a",)
T = {t.name: t.table_id for t in P.TABLES}
STAGE_TABLE_IDS = {t.table_id for t in P.TABLES if P.DAEMON_COOKIE in t.owners}

# fw-a's rules (default deny): out of a VM anything; into a VM ssh and http.
FW_RULES = {"fw-a": (RuleInfo(100, "from-vm", "any", "allow", uuid="out"),
                     RuleInfo(100, "to-vm", "proto=tcp dport=22", "allow", uuid="ssh"),
                     RuleInfo(90, "to-vm", "proto=tcp dport=80", "allow", uuid="http"))}


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


def both(topo, host, blocks=None, rules=FW_RULES, holds=()):
    """``host``'s switch holding the controller's flows and the daemon's
    compiled service stages."""
    dp = daemon_dataplane(topo, host, blocks, rules, holds)
    assert dp.errors == ()
    return FakeOFTable(compute_host_flows(topo, host, blocks) + list(dp.flows), dp.groups)


def zone(topo, host, vm):
    return host_zones(topo, host)[0][vm]


def tcp(src, dst, in_port=None, flags=0x002, sport=40000, dport=7000, **extra):
    pkt = {"in_port": VMS[src][4] if in_port is None else in_port,
           "eth_src": MAC[src], "eth_dst": MAC[dst], "eth_type": 0x0800,
           "ip_proto": 6, "ipv4_src": IP[src], "ipv4_dst": IP[dst],
           "tcp_src": sport, "tcp_dst": dport, "tcp_flags": flags}
    pkt.update(extra)
    return pkt


def from_tunnel(src, dst, host, vni=VNI_A, **kw):
    return tcp(src, dst, in_port=TUNNEL[host], tunnel_id=vni, **kw)


def back_from_daemon(pkt, tag, pcp):
    return dict(pkt, in_port=MB_PORT, vlan_vid=P.VLAN_PRESENT | tag, vlan_pcp=pcp)


def outs(table, pkt):
    return [(o.port, o.get("vlan_vid"), o.get("vlan_pcp"), o.get("tunnel_id"))
            for o in table.lookup(pkt)]


def entering(table, pkt, stage_table, **start):
    """The registers and metadata ``pkt`` carries as it enters ``stage_table``
    (a list: empty if it never does)."""
    keys = ("reg0", "reg1", "reg2", "reg3", "reg4", "reg6", "metadata")
    return [{k: state.get(k, 0) for k in keys}
            for state in table.trace(pkt, **start).at(stage_table.table_id)]


def stages_of(trace):
    """The service-stage tables a packet went through, in order."""
    return [t for t in trace.tables() if t in STAGE_TABLE_IDS]


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


# ------------------------------------------------------------------ steering

def test_a_selected_packet_enters_from_vm_ct_with_its_slices_tag():
    topo = firewalled()
    h1, h2 = (FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h2"))
    tag1, tag2 = topo.slices[(FW, "h1")], topo.slices[(FW, "h2")]
    for flags in (0x002, 0x010, 0x011, 0x004):        # SYN, ACK, FIN, RST alike
        trace = h1.trace(tcp("a1", "a2", flags=flags))
        assert [(s["reg4"], s["metadata"], s["reg2"]) for s in
                entering(h1, tcp("a1", "a2", flags=flags), P.FROM_VM_CT)] == [(tag1, VNI_A, 1)]
        # the controller sends nothing to the daemon itself, and nothing
        # passes a stage mbxd has not compiled yet (fail closed)
        assert trace.outputs == [] and not trace.reached(T["L2_LOOKUP"])
    # at a2's host the to-VM stage, with a2's port chosen
    [state] = entering(h2, from_tunnel("a1", "a2", "h2"), P.TO_VM_CT)
    assert (state["reg4"], state["reg1"], state["reg0"], state["metadata"]) == \
        (tag2, PORT["a2"], 1, VNI_A)


def test_a_packet_no_policy_selects_goes_to_l2_lookup():
    topo = firewalled((PolicyInfo("ls-a", 100, "src=10.0.0.1", FW),))
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    trace = h1.trace(tcp("a3", "a2", in_port=3))
    assert trace.reached(T["L2_LOOKUP"]) and stages_of(trace) == []
    assert [o.port for o in trace.outputs] == [TUNNEL["h1"]]


def test_other_tenant_broadcast_and_arp_are_never_steered():
    h1 = FakeOFTable(compute_host_flows(firewalled(), "h1"))
    b = h1.trace(tcp("b1", "b2"))
    assert stages_of(b) == [] and [o.port for o in b.outputs] == [TUNNEL["h1"]]
    arp = {"in_port": 1, "eth_src": MAC["a1"], "eth_dst": "ff:ff:ff:ff:ff:ff",
           "eth_type": 0x0806}
    bcast = dict(tcp("a1", "a2"), eth_dst="ff:ff:ff:ff:ff:ff", ipv4_dst="10.0.0.255")
    for pkt in (arp, bcast):
        trace = h1.trace(pkt)
        assert stages_of(trace) == [] and sorted(o.port for o in trace.outputs) == \
            [3, TUNNEL["h1"], TUNNEL["h1"]]


def test_policy_match_selects_both_directions_and_bypass_wins_by_priority():
    policies = (PolicyInfo("ls-a", 200, "dst=10.0.0.4", ()),
                PolicyInfo("ls-a", 100, "src=10.0.0.1", FW))
    topo = firewalled(policies)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert stages_of(h1.trace(tcp("a1", "a2"))) == [T["FROM_VM_CT"]]
    assert outs(h1, tcp("a1", "a4")) == [(TUNNEL["h1"], None, None, VNI_A)]   # bypass
    # the reply a2 -> a1 matches the policy reversed: a1's to-VM stage
    assert stages_of(h1.trace(from_tunnel("a2", "a1", "h1"))) == [T["TO_VM_CT"]]
    # traffic between a2 and a3 is not selected at all
    assert [o.port for o in h1.lookup(from_tunnel("a2", "a3", "h1"))] == [VMS["a3"][4]]


def test_address_set_in_policy_is_expanded():
    sets = {"web": AddressSetInfo("web", "tenant-a", ("10.0.0.2", "10.0.0.4"))}
    topo = firewalled((PolicyInfo("ls-a", 100, "dst=$web", FW),), sets=sets)
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    assert stages_of(h1.trace(tcp("a1", "a2"))) == [T["FROM_VM_CT"]]
    assert stages_of(h1.trace(tcp("a1", "a4"))) == [T["FROM_VM_CT"]]
    assert outs(h1, tcp("a3", "a1", in_port=3)) == [(1, None, None, None)]  # not in the set
    empty = firewalled((PolicyInfo("ls-a", 100, "dst=$web", FW),),
                       sets={"web": AddressSetInfo("web", "tenant-a", ())})
    h1 = FakeOFTable(compute_host_flows(empty, "h1"))
    assert outs(h1, tcp("a1", "a2")) == [(TUNNEL["h1"], None, None, VNI_A)]


def test_fail_closed_without_a_tag_and_unknown_tags_dropped():
    topo = firewalled()
    untagged = dataclasses.replace(topo, slices={k: v for k, v in topo.slices.items()
                                                 if k[1] != "h1"})
    h1 = FakeOFTable(compute_host_flows(untagged, "h1"))
    trace = h1.trace(tcp("a1", "a2"))
    assert trace.outputs == [] and stages_of(trace) == []
    assert h1.trace(from_tunnel("a2", "a1", "h1")).outputs == []
    assert h1.lookup(tcp("b1", "b2")) != []                 # tenant B is not affected
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    for pcp in range(8):
        assert h1.lookup(back_from_daemon(tcp("a1", "a2"), 999, pcp)) == []
    # without a middlebox port nothing comes back from the daemon
    bare = FakeOFTable(compute_host_flows(firewalled(mb_port=None), "h1"))
    tag = topo.slices[(FW, "h1")]
    for pcp in (P.STAGE_FROM_VM, P.STAGE_TO_VM, P.DELIVER):
        assert bare.trace(back_from_daemon(tcp("a1", "a2"), tag, pcp)).tables() == [0]


# ------------------------------------------------------------------ back from the daemon

@pytest.mark.parametrize("pcp, vm, resume", [
    (P.STAGE_FROM_VM, "a1", "FROM_VM_CT"),
    (P.STAGE_TO_VM, "a1", "TO_VM_RESUME")])
def test_a_packet_back_from_the_daemon_resumes_its_stage(pcp, vm, resume):
    topo = firewalled()
    tag = topo.slices[(FW, "h1")]
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    pkt = tcp("a1", "a3") if pcp == P.STAGE_FROM_VM else from_tunnel("a2", "a1", "h1")
    trace = h1.trace(back_from_daemon(pkt, tag, pcp))
    assert stages_of(trace) == [T[resume]]
    [state] = entering(h1, back_from_daemon(pkt, tag, pcp), P.BY_NAME[resume])
    assert (state["reg4"], state["reg6"], state["metadata"]) == (tag, P.RESUMED[pcp], VNI_A)
    if pcp == P.STAGE_TO_VM:
        # registers do not survive the daemon: TO_VM_RETURN finds the port again
        assert trace.reached(T["TO_VM_RETURN"]) and state["reg1"] == PORT[vm]
    # the tag is gone before the stage sees the packet
    assert "vlan_vid" not in trace.at(T[resume])[0]


def test_the_from_external_stage_resumes_only_for_a_slice_with_a_nat():
    topo = services()
    h2 = FakeOFTable(compute_host_flows(topo, "h2"))
    passed = dict(from_outside(DNAT_IP, 8080, src=CLIENT, sport=50000), in_port=MB_PORT,
                  vlan_vid=tag_of(topo, FW_NAT, "h2"), vlan_pcp=P.STAGE_FROM_EXTERNAL)
    [state] = entering(h2, passed, P.EXTERNAL_CT)
    assert (state["reg4"], state["reg0"], state["reg6"], state["metadata"]) == \
        (topo.slices[(FW_NAT, "h2")], 1, P.RESUMED[P.STAGE_FROM_EXTERNAL], VNI_A)
    assert h2.lookup(dict(passed, vlan_vid=tag_of(topo, FW_LB, "h2"))) == []


def test_deliver_is_switched_with_reg3_and_never_steered_again():
    topo = firewalled()
    tag = topo.slices[(FW, "h1")]
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    # e.g. the daemon's answer to a rejected connection, to a local VM
    answer = back_from_daemon(dict(tcp("a2", "a1", flags=0x014), in_port=TUNNEL["h1"]), tag,
                              P.DELIVER)
    trace = h1.trace(answer)
    assert stages_of(trace) == [] and [o.port for o in trace.outputs] == [PORT["a1"]]
    assert trace.at(T["L2_LOOKUP"])[0]["reg3"] == P.SKIP_TO_VM
    assert trace.outputs[0].get("vlan_vid") is None
    # to a VM on another host: into the tunnel, untagged
    away = back_from_daemon(tcp("a1", "a2", flags=0x014), tag, P.DELIVER)
    assert outs(h1, away) == [(TUNNEL["h1"], None, None, VNI_A)]


def test_the_controllers_flows_do_not_depend_on_the_same_host_mode():
    flows = {mode: {h: compute_host_flows(firewalled(same_host=mode), h)
                    for h in ("h1", "h2", "h3")}
             for mode in D.SAME_HOST_MODES}
    assert flows["both"] == flows["source"] == flows["destination"]


# ------------------------------------------------------------------ one host, both owners

def test_a_new_connection_is_committed_in_each_vms_zone_and_its_replies_skip_the_rules():
    topo = firewalled()
    h1, h2 = both(topo, "h1"), both(topo, "h2")
    syn = tcp("a1", "a2", dport=22)
    out = h1.trace(syn)
    assert T["FROM_VM_RULES"] in stages_of(out) and T["FROM_VM_COMMIT"] in stages_of(out)
    assert [(o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in out.outputs] == \
        [(TUNNEL["h1"], VNI_A, topo.hosts["h2"].encap_ip)]
    [entry] = h1.conntrack.dump(zone(topo, "h1", "a1"))
    assert entry.orig == (IP["a1"], 40000, IP["a2"], 22) and not entry.mark & D.MARK_IN
    arrived = h2.trace(from_tunnel("a1", "a2", "h2", dport=22))
    assert T["TO_VM_COMMIT"] in stages_of(arrived)
    assert [o.port for o in arrived.outputs] == [PORT["a2"]]
    [entry] = h2.conntrack.dump(zone(topo, "h2", "a2"))
    assert entry.mark & D.MARK_IN
    # the reply and the rest of the connection: conntrack alone
    synack = dict(reply_to(syn), in_port=PORT["a2"])
    back = h2.trace(synack)
    assert stages_of(back) == [T["FROM_VM_CT"], T["FROM_VM_STATE"], T["FROM_VM_ROUTE"]]
    assert [o.port for o in back.outputs] == [TUNNEL["h2"]]
    home = h1.trace(dict(synack, in_port=TUNNEL["h1"], tunnel_id=VNI_A))
    assert stages_of(home) == [T["TO_VM_CT"], T["TO_VM_STATE"]]
    assert [o.port for o in home.outputs] == [PORT["a1"]]
    assert home.at(T["TO_VM_STATE"])[0]["ct_state"] & CT_EST
    ack = h1.trace(tcp("a1", "a2", dport=22, flags=0x010))
    assert stages_of(ack) == [T["FROM_VM_CT"], T["FROM_VM_STATE"], T["FROM_VM_ROUTE"]]
    assert [o.port for o in ack.outputs] == [TUNNEL["h1"]]


def test_an_unsolicited_syn_the_firewall_denies_is_dropped():
    topo = firewalled()
    h1, h2 = both(topo, "h1"), both(topo, "h2")
    # a1 may send it (from-vm: anything) ...
    assert outs(h1, tcp("a1", "a2", dport=7000)) == [(TUNNEL["h1"], None, None, VNI_A)]
    # ... a2 does not take it (to-vm: ssh and http only)
    trace = h2.trace(from_tunnel("a1", "a2", "h2", dport=7000))
    assert trace.outputs == [] and trace.reached(T["TO_VM_RULES"])
    assert h2.conntrack.dump(zone(topo, "h2", "a2")) == []
    # nor a packet that claims to belong to a connection nobody opened
    assert h2.lookup(from_tunnel("a1", "a2", "h2", dport=22, flags=0x010)) == []
    assert h1.lookup(tcp("a1", "a2", dport=22, flags=0x012)) == []


def test_a_held_connection_given_back_by_the_daemon_is_not_held_again():
    topo = firewalled()
    tag = topo.slices[(FW, "h2")]
    h2 = both(topo, "h2", holds={"a2"})            # a2's state is arriving
    syn = from_tunnel("a1", "a2", "h2", dport=22)
    assert outs(h2, syn) == [(MB_PORT, P.VLAN_PRESENT | tag, P.STAGE_TO_VM, VNI_A)]
    # the daemon gives it back at the stage it came from: it meets the rules
    back = dict(syn, in_port=MB_PORT, vlan_vid=P.VLAN_PRESENT | tag, vlan_pcp=P.STAGE_TO_VM)
    del back["tunnel_id"]
    assert [o.port for o in h2.lookup(back)] == [PORT["a2"]]
    assert len(h2.conntrack.dump(zone(topo, "h2", "a2"))) == 1


@pytest.mark.parametrize("mode, judged_at", [
    ("both", ("FROM_VM_RULES", "TO_VM_RULES")),
    ("source", ("FROM_VM_RULES", "FROM_VM_PARTNER")),
    ("destination", ("TO_VM_RULES", "TO_VM_PARTNER"))])
def test_same_host_modes_are_the_daemons_stages(mode, judged_at):
    topo = firewalled(same_host=mode)
    h1 = both(topo, "h1")
    rule_tables = {T[n] for n in ("FROM_VM_RULES", "FROM_VM_PARTNER", "TO_VM_RULES",
                                  "TO_VM_PARTNER")}
    ssh = h1.trace(tcp("a1", "a3", dport=22))
    assert [o.port for o in ssh.outputs] == [PORT["a3"]]
    assert [t for t in stages_of(ssh) if t in rule_tables] == [T[n] for n in judged_at]
    # both stages are passed and both VMs' zones hold the connection
    assert T["FROM_VM_COMMIT"] in stages_of(ssh) and T["TO_VM_COMMIT"] in stages_of(ssh)
    assert len(h1.conntrack.dump(zone(topo, "h1", "a1"))) == 1
    assert len(h1.conntrack.dump(zone(topo, "h1", "a3"))) == 1
    # a3's to-vm rules still apply in every mode
    assert h1.lookup(tcp("a1", "a3", dport=7000)) == []
    assert [o.port for o in h1.lookup(dict(reply_to(tcp("a1", "a3", dport=22)),
                                           in_port=PORT["a3"]))] == [PORT["a1"]]


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

from mbxmodel.network import HostInfo  # noqa: E402
from topologies import (CLIENT, DNAT_IP, ENCAP, EXT_GW_IP, EXT_GW_MAC, FW_LB,  # noqa: E402
                        FW_NAT, GATEWAY_A, IDS, OUTSIDE, SNAT_IP, UPLINK, UPLINK_MAC, VIP,
                        services)

SNAT_UUID = "11111111-0000-0000-0000-000000000001"
ELSEWHERE = "192.0.2.77"            # on the internet, outside every policy's match


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


def icmp_from_outside(dst, ident=7, type_=0):
    return {"in_port": UPLINK, "eth_src": EXT_GW_MAC, "eth_dst": UPLINK_MAC["h1"],
            "eth_type": 0x0800, "ip_proto": 1, "ipv4_src": OUTSIDE, "ipv4_dst": dst,
            "icmpv4_type": type_, "icmpv4_code": 0, "icmp_id": ident}


def redirected(pkt, host, vni=VNI_A):
    """``pkt`` as it arrives at ``host`` after another host's EXTERNAL_IN sent it on."""
    return dict(pkt, in_port=TUNNEL[host], tunnel_id=vni, eth_dst=P.ROUTER_MAC)


def tag_of(topo, chain, host):
    return P.VLAN_PRESENT | topo.slices[(chain, host)]


def hashed(topo):
    """``topo`` with its VIP balanced by the switch (a select group)."""
    vip = dataclasses.replace(topo.vips["lb-a"][0], algorithm="hash")
    return dataclasses.replace(topo, vips={"lb-a": (vip,)})


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
    assert [s["reg4"] for s in entering(h1, to_vip, P.FROM_VM_CT)] == \
        [topo.slices[(FW_LB, "h1")]]
    out = dict(tcp("a1", "a2", dport=443), ipv4_dst=OUTSIDE, eth_dst=P.ROUTER_MAC)
    assert [s["reg4"] for s in entering(h1, out, P.FROM_VM_CT)] == \
        [topo.slices[(FW_NAT, "h1")]]
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
                if owner == "h1":
                    assert tables["h1"].lookup(reply) == []
                    [state] = entering(tables["h1"], reply, P.EXTERNAL_CT)
                    assert (state["reg4"], state["reg0"], state["metadata"]) == \
                        (topo.slices[(FW_NAT, "h1")], P.FROM_TUNNEL, VNI_A)
                    continue
                [o] = tables["h1"].lookup(reply)
                assert (o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst"), o.get("eth_dst")) \
                    == (TUNNEL["h1"], VNI_A, ENCAP[owner], P.ROUTER_MAC)
                assert not tables["h1"].trace(reply).reached(T["EXTERNAL_CT"])
                # the owner takes it into its own from-external stage
                [state] = entering(tables[owner], redirected(reply, owner), P.EXTERNAL_CT)
                assert (state["reg4"], state["reg0"], state["metadata"]) == \
                    (topo.slices[(FW_NAT, owner)], P.FROM_TUNNEL, VNI_A)
                # a host that does not own it lets its conntrack decide and
                # never sends it on again
                other = ({"h2", "h3"} - {owner}).pop()
                trace = tables[other].trace(redirected(reply, other))
                assert trace.outputs == [] and trace.reached(T["EXTERNAL_CT"])
    # below the port range, another address: dropped
    assert tables["h1"].trace(from_outside(SNAT_IP, 80)).tables() == [0, T["EXTERNAL_IN"]]
    assert tables["h1"].trace(from_outside("203.0.113.99", 20000)).tables() == \
        [0, T["EXTERNAL_IN"]]


def test_icmp_to_an_snat_address_goes_to_every_serving_host():
    topo = services()
    tables = host_tables(topo)
    echo_reply = icmp_from_outside(SNAT_IP)
    trace = tables["h1"].trace(echo_reply)
    assert sorted((o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst"), o.get("eth_dst"))
                  for o in trace.outputs) == \
        [(TUNNEL["h1"], VNI_A, ENCAP[h], P.ROUTER_MAC) for h in ("h2", "h3")]
    [state] = trace.at(T["EXTERNAL_CT"])
    assert (state["reg4"], state["reg0"]) == (topo.slices[(FW_NAT, "h1")], P.FROM_TUNNEL)
    # the copies are looked up there, and not copied again
    for host in ("h2", "h3"):
        copy = tables[host].trace(redirected(echo_reply, host))
        assert copy.outputs == [] and \
            [s["reg4"] for s in copy.at(T["EXTERNAL_CT"])] == [topo.slices[(FW_NAT, host)]]


def test_redirected_packets_to_any_nat_address_enter_external_ct():
    topo = services()
    h3 = FakeOFTable(compute_host_flows(topo, "h3"))
    # a2, whose DNAT address this is, is not on h3: a moved connection's
    # forwarder may still be (the daemon's EXTERNAL_CT decides)
    for pkt in (from_outside(DNAT_IP, 8080), from_outside(SNAT_IP, 20000, proto=17),
                icmp_from_outside(DNAT_IP)):
        [state] = entering(h3, redirected(pkt, "h3"), P.EXTERNAL_CT)
        assert (state["reg4"], state["reg0"]) == (topo.slices[(FW_NAT, "h3")], P.FROM_TUNNEL)
    assert h3.trace(redirected(from_outside("203.0.113.99", 80), "h3")).tables() == \
        [0, T["EXTERNAL_IN"]]


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
    [state] = entering(tables["h2"], redirected(syn, "h2"), P.EXTERNAL_CT)
    assert (state["reg4"], state["reg0"], state["metadata"]) == \
        (topo.slices[(FW_NAT, "h2")], P.FROM_TUNNEL, VNI_A)
    assert tables["h1"].lookup(from_outside(DNAT_IP, 8080, proto=17)) == []
    assert tables["h1"].lookup(from_outside(DNAT_IP, 8081)) == []
    # a2 bound nowhere: dropped, not sent to the SNAT block owner
    gone = dataclasses.replace(topo, bindings={k: v for k, v in topo.bindings.items()
                                               if k != "a2"})
    assert FakeOFTable(compute_host_flows(gone, "h1")).lookup(syn) == []


def test_translated_packets_leave_by_the_senders_uplink():
    topo = services()
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    # as FROM_VM_SNAT_STATE hands an SNAT'd packet to L2_LOOKUP
    snat = dict(tcp("a1", "a2", sport=20001, dport=443), ipv4_src=SNAT_IP, ipv4_dst=OUTSIDE,
                eth_dst=P.ROUTER_MAC, metadata=VNI_A)
    [o] = h1.lookup(snat, table=T["L2_LOOKUP"])
    assert (o.port, o.get("eth_src"), o.get("eth_dst"), o.get("ipv4_src"), o.get("vlan_vid")) \
        == (UPLINK, UPLINK_MAC["h1"], EXT_GW_MAC, SNAT_IP, None)
    # ... not one that came from the tunnel
    assert h1.lookup(dict(snat, reg0=1), table=T["L2_LOOKUP"]) == []
    # a VM sending from an external address itself is dropped, not routed
    spoofed = dict(snat)
    del spoofed["metadata"]
    assert h1.lookup(dict(spoofed, tcp_dst=9999, ipv4_dst="192.0.2.1")) == []
    assert h1.lookup(spoofed) == []
    # no uplink, or no external network: nothing leaves
    for topo2 in (services(uplink=None), services(external=False)):
        assert FakeOFTable(compute_host_flows(topo2, "h1")).lookup(
            snat, table=T["L2_LOOKUP"]) == []


def test_ids_only_chain_is_steered_like_any_chain_and_unobserved_without_a_tag():
    topo = services()
    h1, h3 = (FakeOFTable(compute_host_flows(topo, h)) for h in ("h1", "h3"))
    ssh = tcp("a1", "a4", dport=22)
    assert [s["reg4"] for s in entering(h1, ssh, P.FROM_VM_CT)] == [topo.slices[(IDS, "h1")]]
    assert [s["reg4"] for s in entering(h3, from_tunnel("a1", "a4", "h3", dport=22),
                                        P.TO_VM_CT)] == [topo.slices[(IDS, "h3")]]
    # no tag here yet: forwarded, unobserved (an IDS never changes a verdict)
    untagged = dataclasses.replace(topo, slices={k: v for k, v in topo.slices.items()
                                                 if k != (IDS, "h3")})
    bare = FakeOFTable(compute_host_flows(untagged, "h3"))
    assert outs(bare, from_tunnel("a1", "a4", "h3", dport=22)) == \
        [(VMS["a4"][4], None, None, VNI_A)]


def test_ids_only_chain_gets_copies_and_never_delays_the_original():
    topo = services()
    tag = tag_of(topo, IDS, "h3")
    h1, h3 = both(topo, "h1"), both(topo, "h3")
    # from-VM stage: nothing goes to the daemon
    assert outs(h1, tcp("a1", "a4", dport=22)) == [(TUNNEL["h1"], None, None, VNI_A)]
    # to-VM stage: a copy of the SYN and of a RST, tagged, then the original
    copy = (MB_PORT, tag, P.COPY, VNI_A)
    deliver = (VMS["a4"][4], None, None, VNI_A)
    assert outs(h3, from_tunnel("a1", "a4", "h3", dport=22)) == [copy, deliver]
    assert outs(h3, from_tunnel("a1", "a4", "h3", dport=22, flags=0x010)) == [deliver]
    assert outs(h3, from_tunnel("a1", "a4", "h3", dport=22, flags=0x004)) == [copy, deliver]
    # no IDS copies come back
    assert h3.lookup(back_from_daemon(tcp("a1", "a4", dport=22), tag & 0xFFF, P.COPY)) == []
    # no middlebox port: the traffic still flows, unobserved
    bare = services(mb_port=None)
    assert outs(both(bare, "h3"), from_tunnel("a1", "a4", "h3", dport=22)) == [deliver]


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


def test_lb_backend_replies_are_caught_into_the_clients_to_vm_stage():
    topo = services()
    h1 = FakeOFTable(compute_host_flows(topo, "h1"))
    # a4 answers a1's connection to the VIP: no policy selects a4 -> a1
    reply = from_tunnel("a4", "a1", "h1", sport=80, dport=40000, flags=0x012)
    [state] = entering(h1, reply, P.TO_VM_CT)
    assert (state["reg4"], state["reg1"]) == (topo.slices[(FW_LB, "h1")], PORT["a1"])
    # another port of the backend is no reply of the VIP
    assert outs(h1, dict(reply, tcp_src=81)) == [(PORT["a1"], None, None, VNI_A)]


def test_dnat_vms_packets_are_caught_into_their_from_vm_stage():
    topo = services()
    h2 = FakeOFTable(compute_host_flows(topo, "h2"))
    # to a client no policy selects
    reply = dict(tcp("a2", "a1", sport=80, dport=50000, flags=0x012), ipv4_dst=ELSEWHERE,
                 eth_dst=P.ROUTER_MAC)
    [state] = entering(h2, reply, P.FROM_VM_CT)
    assert (state["reg4"], state["metadata"]) == (topo.slices[(FW_NAT, "h2")], VNI_A)


def test_snat_a_vms_connection_leaves_translated_and_its_reply_comes_back_through_its_zone():
    topo = services()
    blocks = slicelib.snat_blocks(topo, {})
    h1, h2 = both(topo, "h1", blocks), both(topo, "h2", blocks)
    _, lo, hi = blocks[(SNAT_UUID, "h1")]
    out = dict(tcp("a1", "a2", dport=443), ipv4_dst=OUTSIDE, eth_dst=P.ROUTER_MAC)
    [o] = h1.lookup(out)
    assert (o.port, o.get("ipv4_src"), o.get("eth_src"), o.get("eth_dst")) == \
        (UPLINK, SNAT_IP, UPLINK_MAC["h1"], EXT_GW_MAC)
    port = o.get("tcp_src")
    assert lo <= port <= hi
    _, snat_zones = host_zones(topo, "h1", blocks)
    [entry] = h1.conntrack.dump(snat_zones[SNAT_UUID])
    assert entry.reply == (OUTSIDE, 443, SNAT_IP, port)
    # the reply: EXTERNAL_IN by block, un-SNAT in the rule's zone, then a1's
    # to-VM stage (the policy selects it reversed)
    reply = from_outside(SNAT_IP, port, tcp_flags=0x012)
    trace = h1.trace(reply)
    assert stages_of(trace) == [T[n] for n in ("EXTERNAL_CT", "EXTERNAL_SNAT_STATE",
                                               "EXTERNAL_ROUTE", "TO_VM_CT", "TO_VM_STATE")]
    [o] = trace.outputs
    assert (o.port, o.get("ipv4_dst"), o.get("tcp_dst"), o.get("eth_dst")) == \
        (PORT["a1"], IP["a1"], 40000, MAC["a1"])
    # a2 on h2 gets a port of h2's block; its reply reaches h1 first
    [o] = h2.lookup(dict(tcp("a2", "a1", dport=443), ipv4_dst=OUTSIDE, eth_dst=P.ROUTER_MAC))
    _, lo2, hi2 = blocks[(SNAT_UUID, "h2")]
    assert o.port == UPLINK and lo2 <= o.get("tcp_src") <= hi2
    reply2 = from_outside(SNAT_IP, o.get("tcp_src"), tcp_flags=0x012)
    assert outs(h1, reply2) == [(TUNNEL["h1"], None, None, VNI_A)]
    [o] = h2.lookup(redirected(reply2, "h2"))
    assert (o.port, o.get("ipv4_dst"), o.get("tcp_dst")) == (PORT["a2"], IP["a2"], 40000)
    # a port of the block nobody uses: conntrack has no entry, dropped
    assert h1.lookup(from_outside(SNAT_IP, lo if port != lo else hi, tcp_flags=0x012)) == []


def test_dnat_an_outside_syn_reaches_the_vm_and_the_reply_leaves_translated():
    topo = services()
    h1, h2 = both(topo, "h1"), both(topo, "h2")
    syn = from_outside(DNAT_IP, 8080, src=ELSEWHERE, sport=50000)
    [o] = h1.lookup(syn)
    assert o.get("tun_ipv4_dst") == ENCAP["h2"]
    trace = h2.trace(redirected(syn, "h2"))
    [o] = trace.outputs
    assert (o.port, o.get("ipv4_dst"), o.get("tcp_dst"), o.get("eth_src"), o.get("eth_dst")) \
        == (PORT["a2"], IP["a2"], 80, P.ROUTER_MAC, MAC["a2"])
    # judged at the from-external stage (a2's rules): not steered again
    assert T["EXTERNAL_RULES"] in stages_of(trace) and not trace.reached(T["TO_VM_CT"])
    # (no policy selects the client: the DNAT catcher takes the reply)
    synack = dict(tcp("a2", "a1", sport=80, dport=50000, flags=0x012), ipv4_dst=ELSEWHERE,
                  eth_dst=P.ROUTER_MAC)
    [o] = h2.lookup(synack)
    assert (o.port, o.get("ipv4_src"), o.get("tcp_src"), o.get("eth_src")) == \
        (UPLINK, DNAT_IP, 8080, UPLINK_MAC["h2"])
    # a port a2's rules do not open: dropped at the from-external stage
    topo2 = dataclasses.replace(topo, nat_rules={"nat-a": (
        topo.nat_rules["nat-a"][0],
        dataclasses.replace(topo.nat_rules["nat-a"][1], logical_port=7000))})
    closed = both(topo2, "h2").trace(redirected(syn, "h2"))
    assert closed.outputs == [] and closed.reached(T["EXTERNAL_RULES"])


def test_lb_a_hash_vip_is_balanced_by_the_switch_and_the_reply_undone_in_the_clients_zone():
    topo = hashed(services())
    h1 = both(topo, "h1")
    to_vip = dict(tcp("a1", "a2", dport=80), ipv4_dst=VIP, eth_dst=P.ROUTER_MAC)
    [o] = h1.lookup(to_vip)
    backend = {IP["a2"]: "a2", IP["a4"]: "a4"}[o.get("ipv4_dst")]
    host = VMS[backend][3]
    assert (o.port, o.get("tun_ipv4_dst"), o.get("eth_dst"), o.get("tcp_dst")) == \
        (TUNNEL["h1"], ENCAP[host], MAC[backend], 80)
    reply = from_tunnel(backend, "a1", "h1", sport=80, dport=40000, flags=0x012)
    [o] = h1.lookup(reply)
    assert (o.port, o.get("ipv4_src"), o.get("tcp_src")) == (PORT["a1"], VIP, 80)
    # round-robin: the daemon picks, at the from-VM stage
    rr = both(services(), "h1")
    assert outs(rr, to_vip) == [(MB_PORT, tag_of(services(), FW_LB, "h1"),
                                 P.STAGE_FROM_VM, None)]


def test_a_reply_of_a_direct_connection_to_a_backends_port_is_delivered():
    topo = services()
    h1 = both(topo, "h1")
    direct = tcp("a3", "a4", dport=80)              # not to the VIP: no policy selects it
    assert outs(h1, direct) == [(TUNNEL["h1"], None, None, VNI_A)]
    reply = dict(reply_to(direct), in_port=TUNNEL["h1"], tunnel_id=VNI_A)
    assert [o.port for o in h1.lookup(reply)] == [PORT["a3"]]


def test_a_dnat_vm_answers_connections_no_policy_selects():
    topo = services()
    h2 = both(topo, "h2")
    direct = from_tunnel("a3", "a2", "h2", dport=7000)
    assert [o.port for o in h2.lookup(direct)] == [PORT["a2"]]
    reply = dict(reply_to(direct), in_port=PORT["a2"])
    del reply["tunnel_id"]
    assert outs(h2, reply) == [(TUNNEL["h2"], None, None, VNI_A)]


def test_a_dnat_vm_reaches_a_vip_through_the_vips_chain():
    topo = services()
    h2 = FakeOFTable(compute_host_flows(topo, "h2"))
    to_vip = dict(tcp("a2", "a1", dport=80), ipv4_dst=VIP, eth_dst=P.ROUTER_MAC)
    assert [s["reg4"] for s in entering(h2, to_vip, P.FROM_VM_CT)] == \
        [topo.slices[(FW_LB, "h2")]]


def test_host_without_nat_gets_no_external_flows():
    topo = services(policies=(PolicyInfo("ls-a", 1, "any", FW_LB),))
    flows = compute_host_flows(topo, "h1")
    tables = {f.table for f in flows if f.match}
    assert P.EXTERNAL_IN.table_id not in tables
    assert not any(("goto", P.EXTERNAL_CT.table_id) in f.instructions for f in flows)
    h1 = FakeOFTable(flows)
    assert h1.lookup(from_outside(SNAT_IP, 20000)) == []
    assert h1.lookup(redirected(from_outside(SNAT_IP, 20000), "h1")) == []


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


@pytest.mark.parametrize("host", ["h1", "h2", "h3"])
def test_the_two_owners_flows_never_share_a_table(host):
    topo = services()
    blocks = slicelib.snat_blocks(topo, {})
    ours = {f.table for f in compute_host_flows(topo, host, blocks)}
    theirs = {f.table for f in daemon_dataplane(topo, host, blocks, FW_RULES).flows}
    assert theirs and not ours & theirs
    assert theirs <= STAGE_TABLE_IDS


def test_every_controller_flow_survives_the_switch_round_trip():
    from test_ofmsg import read_back
    topos = (services(), services(mb_port=None), services(uplink=None), hashed(services()),
             firewalled(), firewalled(same_host="source"))
    for topo in topos:
        for host in ("h1", "h2", "h3"):
            flows = compute_host_flows(topo, host)
            assert read_back(flows) == flows
