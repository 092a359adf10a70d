"""The service stages mbxd compiles (middlebox.dataplane), run in the
simulated switch: packets enter a stage where the controller's steering
would send them, and the tests look at what leaves it (the table it hands
the packet to, translated or not; the middlebox port with its tag) and at
the conntrack entries left behind."""

import dataclasses

import pytest

from fakeoftable import (CT_EST, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, FakeOFTable, icmp_echo,
                         icmp_error, reply_to, tcp, udp)
from middlebox import dataplane as D
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from ryu_apps import pipeline as P

HOST = "h1"
TAG, VNI = 5, 1001
MB, TUNNEL = 50, 100
A = VmSpec("a", "02:00:00:00:00:0a", "10.0.0.10", HOST)      # local
B = VmSpec("b", "02:00:00:00:00:0b", "10.0.0.11", HOST)      # local
C = VmSpec("c", "02:00:00:00:00:0c", "10.0.0.12", "h2")      # on another host
PORT = {"a": 1, "b": 2, "a2": 3}
ZONES = {"a": 11, "b": 12}
OUTSIDE = "198.51.100.9"
SNAT_IP, DNAT_IP = "203.0.113.5", "203.0.113.10"
SNAT_ZONE = 900
SNAT_BLOCK = (SNAT_IP, 4096, 8191)
VIP = "10.0.0.100"

L2, DELIVER = P.L2_LOOKUP.table_id, P.LOCAL_DELIVERY.table_id


def rule(direction, match, action="allow", priority=100, tier="tenant", uuid=None):
    return RuleInfo(priority, direction, match, action, tier,
                    uuid or "%s/%s/%s/%s" % (direction, match, action, priority))


ALLOW_ALL = (rule("from-vm", "any"), rule("to-vm", "any"))


def slice_config(rules=(), default="deny", options=None, services=(), sets=None, tag=TAG,
                 vms=(A, B, C), snat_blocks=None):
    return SliceConfig(tag, "fw", "firewall", "tenant-%d" % tag, "ls", VNI,
                       default_action=default, options=dict(options or {}), rules=tuple(rules),
                       address_sets=dict(sets or {}), vms=tuple(vms), services=tuple(services),
                       subnet="10.0.0.0/24", gateway="10.0.0.1",
                       snat_blocks=dict(snat_blocks or {}))


class Host:
    """One host's compiled service stages in a simulated switch."""

    def __init__(self, *slices, zones=None, snat_zones=None, holds=(), mb_port=MB,
                 arrivals=False, new_conn_rate=None):
        config = HostConfig(HOST, {s.tag: s for s in slices})
        self.dp = D.compile_host(config, HOST, ZONES if zones is None else zones,
                                 snat_zones or {}, D.HostPorts(mb_port, TUNNEL),
                                 holds=frozenset(holds), arrivals=arrivals,
                                 new_conn_rate=new_conn_rate)
        self.table = FakeOFTable(self.dp.flows, self.dp.groups, meters=self.dp.meters)
        self.ct = self.table.conntrack

    # Entering a stage as the controller's steering sends packets there.
    def from_vm(self, vm, pkt, tag=TAG):
        pkt = dict(pkt, eth_src=vm.mac, reg4=tag, metadata=VNI, in_port=PORT[vm.name])
        pkt.setdefault("eth_dst", P.ROUTER_MAC)
        return Stage(self.table.trace(pkt, table=P.FROM_VM_CT.table_id), L2)

    def to_vm(self, vm, pkt, tag=TAG, tunnel=False):
        pkt = dict(pkt, eth_dst=vm.mac, reg4=tag, metadata=VNI, reg1=PORT[vm.name],
                   reg0=int(tunnel))
        pkt.setdefault("eth_src", C.mac if tunnel else P.ROUTER_MAC)
        return Stage(self.table.trace(pkt, table=P.TO_VM_CT.table_id), DELIVER)

    def external(self, pkt, tag=TAG):
        pkt = dict(pkt, reg4=tag, reg0=P.FROM_TUNNEL, eth_dst="02:aa:00:00:00:01",
                   eth_src="02:aa:00:00:00:fe", in_port=200)
        return Stage(self.table.trace(pkt, table=P.EXTERNAL_CT.table_id), L2)

    def between(self, src, dst, pkt, tag=TAG):
        """``src`` -> ``dst``, both local: the sender's from-VM stage, then
        (if it let the packet on) the receiver's to-VM stage."""
        out = self.from_vm(src, dict(pkt, eth_dst=dst.mac), tag)
        if not out.passed:
            return out
        return self.to_vm(dst, dict(out.packet, eth_src=src.mac), tag)

    def rule_packets(self):
        """Packets that executed a flow of any rule table."""
        return sum(self.table.table_count(t.table_id)
                   for t in (P.FROM_VM_RULES, P.TO_VM_RULES, P.FROM_VM_PARTNER,
                             P.TO_VM_PARTNER, P.EXTERNAL_RULES))


class Stage:
    """What a stage did with one packet."""

    def __init__(self, trace, exit_table):
        self.trace = trace
        arrived = trace.at(exit_table)
        self.passed = bool(arrived)
        self.packet = arrived[-1] if arrived else None
        self.daemon = [(o.get("vlan_vid") & 0xFFF, o.get("vlan_pcp"))
                       for o in trace.outputs if o.port == MB]

    @property
    def dropped(self):
        return not self.passed and not self.daemon

    def get(self, name):
        return self.packet.get(name)


def syn(src, dst, sport=40000, dport=80, **kw):
    return tcp(src.ip if hasattr(src, "ip") else src, dst.ip if hasattr(dst, "ip") else dst,
               sport, dport, TCP_SYN, **kw)


def ack(pkt, **kw):
    return dict(pkt, tcp_flags=TCP_ACK, **kw)


# ------------------------------------------------------------ the compiled flows

def test_every_flow_is_one_open_vswitch_accepts():
    snat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("s1", "nat", "snat", (SNAT_IP,), ""),
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, "tcp", 80, 8080)))
    lb = ServiceSpec("lb", "lb", vips=(VipInfo("v1", "lb", VIP, 80, "tcp", "hash",
                                               ((B.ip, 8080), (C.ip, 8080))),))
    sets = {"web": ("10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24")}
    for options in ({}, {"check": "every-nth"}, {"same-host": "source"}):
        cfg = slice_config((rule("to-vm", "src=$web proto=tcp dport=8000-8999"),) + ALLOW_ALL,
                           options=options, services=(snat, lb), sets=sets,
                           snat_blocks={"s1": SNAT_BLOCK})
        host = Host(cfg, snat_zones={"s1": SNAT_ZONE}, holds={"a"})
        assert host.table.rejected == [] and host.dp.errors == ()


# ------------------------------------------------------------ fairness: meters

def test_a_vms_new_connections_over_its_rate_are_dropped_and_another_vms_are_not():
    host = Host(slice_config(ALLOW_ALL), new_conn_rate=3)
    assert {m.meter_id: (m.rate, m.burst) for m in host.dp.meters} == {11: (3, 3), 12: (3, 3)}
    opened = [host.from_vm(A, syn(A, C, sport=41000 + i)).passed for i in range(5)]
    assert opened == [True, True, True, False, False]      # a burst of 3 (the fake's clock)
    assert len(host.ct.dump(ZONES["a"])) == 3              # nothing committed over it
    assert host.from_vm(B, syn(B, C)).passed                # b has its own meter
    # Established packets and replies never meet the meter.
    first = syn(A, C, sport=41000)
    assert host.from_vm(A, ack(first)).passed
    assert host.to_vm(A, reply_to(first, tcp_flags=TCP_ACK), tunnel=True).passed
    assert host.table.meter_counts[11] == 5


def test_without_a_rate_there_is_no_meter():
    host = Host(slice_config(ALLOW_ALL))
    assert host.dp.meters == ()
    assert all(inst[0] != "meter" for f in host.dp.flows for inst in f.instructions)


# ------------------------------------------------------------ rules, per direction

def test_new_connections_out_of_a_vm_are_allowed_denied_or_rejected_by_its_rules():
    host = Host(slice_config([rule("from-vm", "proto=tcp dport=80"),
                              rule("from-vm", "proto=tcp dport=25", "reject"),
                              rule("from-vm", "proto=tcp dport=23", "deny")], default="allow"))
    assert host.from_vm(A, syn(A, C, dport=80)).passed
    assert host.from_vm(A, syn(A, C, dport=23)).dropped
    rejected = host.from_vm(A, syn(A, C, dport=25))
    assert not rejected.passed and rejected.daemon == [(TAG, P.STAGE_FROM_VM)]
    assert host.from_vm(A, syn(A, C, dport=443)).passed              # default allow
    assert {e.orig[3] for e in host.ct.dump(ZONES["a"])} == {80, 443}


def test_new_connections_into_a_vm_are_allowed_denied_or_rejected_by_its_rules():
    host = Host(slice_config([rule("to-vm", "proto=tcp dport=22 src=10.0.0.12"),
                              rule("to-vm", "proto=udp", "reject")]))
    assert host.to_vm(A, syn(C, A, dport=22), tunnel=True).passed
    assert host.to_vm(A, syn("10.0.0.13", A, dport=22), tunnel=True).dropped   # default deny
    rejected = host.to_vm(A, udp(C.ip, A.ip, 5000, 53), tunnel=True)
    assert rejected.daemon == [(TAG, P.STAGE_TO_VM)] and not rejected.passed
    [entry] = host.ct.dump(ZONES["a"])
    assert entry.orig == (C.ip, 40000, A.ip, 22) and entry.mark & D.MARK_IN


def test_a_commit_records_the_deciding_rule_and_who_opened_the_connection():
    web = rule("from-vm", "proto=tcp dport=80")
    host = Host(slice_config([web], default="allow"))
    host.from_vm(A, syn(A, C, 1, 80))
    host.from_vm(A, syn(A, C, 2, 81))
    label = {e.orig[3]: (e.label & 0xFFFFFFFF, e.mark) for e in host.ct.dump(ZONES["a"])}
    assert label == {80: (D.rule_id(web), TAG), 81: (0, TAG)}


def test_each_rule_flow_counts_for_its_own_decision():
    out_web = rule("from-vm", "proto=tcp dport=80", uuid="out-web")
    in_ssh = rule("to-vm", "proto=tcp dport=22", uuid="in-ssh")
    host = Host(slice_config([out_web, in_ssh]))
    host.from_vm(A, syn(A, C))
    counted = {d.rule: host.table.cookie_count(ck) for ck, d in host.dp.decisions.items()
               if d.stage == P.STAGE_FROM_VM}
    assert counted.get("out-web") == 1


def test_a_reject_without_a_middlebox_port_drops():
    host = Host(slice_config([rule("from-vm", "any", "reject")]), mb_port=None)
    assert host.from_vm(A, syn(A, C)).dropped


def test_a_connection_the_service_cut_is_dropped_both_ways():
    host = Host(slice_config(ALLOW_ALL))
    host.ct.commit_entry(ZONES["a"], 6, A.ip, 7, C.ip, 80, mark=TAG | D.MARK_BLOCKED)
    out = tcp(A.ip, C.ip, 7, 80, TCP_ACK)
    assert host.from_vm(A, out).dropped
    assert host.to_vm(A, reply_to(out), tunnel=True).dropped


def test_replies_of_an_allowed_connection_pass_and_unsolicited_packets_do_not():
    host = Host(slice_config([rule("from-vm", "proto=tcp")]))
    out = syn(A, C)
    assert host.from_vm(A, out).passed
    back = host.to_vm(A, reply_to(out), tunnel=True)
    assert back.passed and back.packet["ct_state"] & CT_EST
    assert host.from_vm(A, ack(out)).passed
    assert host.to_vm(A, syn(C, A, 40001, 22), tunnel=True).dropped
    assert host.to_vm(A, reply_to(syn(A, C, 40002)), tunnel=True).dropped   # no such connection


def test_established_packets_never_reach_the_rule_tables():
    host = Host(slice_config([rule("from-vm", "proto=tcp", "allow")],
                             options={"check": "offload"}))
    out = syn(A, C)
    host.from_vm(A, out)
    seen = host.rule_packets()
    assert seen >= 1
    for _ in range(5):
        assert host.from_vm(A, ack(out)).passed
        back = host.to_vm(A, reply_to(ack(out)), tunnel=True)
        assert back.passed and back.daemon == []
    assert host.rule_packets() == seen


def test_only_a_tcp_syn_opens_a_connection():
    host = Host(slice_config(ALLOW_ALL))
    for flags in (TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST | TCP_ACK, TCP_FIN | TCP_ACK):
        assert host.from_vm(A, tcp(A.ip, C.ip, 40000, 80, flags)).dropped, flags
        assert host.to_vm(A, tcp(C.ip, A.ip, 40000, 80, flags), tunnel=True).dropped, flags
    assert host.ct.dump() == []
    assert host.from_vm(A, udp(A.ip, C.ip, 5000, 53)).passed
    assert host.from_vm(A, icmp_echo(A.ip, C.ip)).passed
    assert host.from_vm(A, syn(A, C)).passed


# ------------------------------------------------------------ rule order and matching

def test_provider_tier_comes_first_unless_tenant_first_and_priority_orders_a_tier():
    rules = [rule("from-vm", "proto=tcp dport=80", "deny", priority=1, tier="provider"),
             rule("from-vm", "proto=tcp", "allow", priority=1000, tier="tenant"),
             rule("from-vm", "proto=udp", "deny", priority=10),
             rule("from-vm", "proto=udp dport=53", "allow", priority=20)]
    host = Host(slice_config(rules))
    assert host.from_vm(A, syn(A, C, dport=80)).dropped
    assert host.from_vm(A, syn(A, C, dport=81)).passed
    assert host.from_vm(A, udp(A.ip, C.ip, 5000, 53)).passed
    assert host.from_vm(A, udp(A.ip, C.ip, 5000, 54)).dropped
    host = Host(slice_config(rules, options={"tier-order": "tenant-first"}))
    assert host.from_vm(A, syn(A, C, dport=80)).passed


def test_an_address_set_times_a_port_range_is_a_conjunction_that_matches_exactly():
    members = ("10.0.0.12", "10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.0.30")
    host = Host(slice_config([rule("to-vm", "src=$clients proto=tcp dport=8000-8999")],
                             sets={"clients": members}))
    assert any(a[0] == "conjunction" for f in host.dp.flows for i in f.instructions
               if i[0] == "apply" for a in i[1])
    for src in members:
        for port in (8000, 8512, 8999):
            assert host.to_vm(A, syn(src, A, dport=port), tunnel=True).passed, (src, port)
    for src, port in (("10.0.0.23", 8000), ("10.0.0.12", 7999), ("10.0.0.20", 9000)):
        assert host.to_vm(A, syn(src, A, dport=port), tunnel=True).dropped, (src, port)


def test_port_ranges_match_exactly_their_ports():
    host = Host(slice_config([rule("from-vm", "proto=udp dport=1000-1999"),
                              rule("from-vm", "proto=tcp sport=3-5")]))
    for port, passed in ((999, False), (1000, True), (1500, True), (1999, True), (2000, False)):
        assert host.from_vm(A, udp(A.ip, C.ip, 1, port)).passed == passed, port
    for port, passed in ((2, False), (3, True), (5, True), (6, False)):
        assert host.from_vm(A, syn(A, C, sport=port)).passed == passed, port


# ------------------------------------------------------------ same host

def test_same_host_both_evaluates_each_vms_own_rules_at_its_stage():
    host = Host(slice_config([rule("from-vm", "proto=tcp dport=80"),
                              rule("to-vm", "proto=tcp dport=22")]))
    assert host.between(A, B, syn(A, B, dport=80)).dropped          # B's to-vm rules
    assert host.between(A, B, syn(A, B, dport=22)).dropped          # A's from-vm rules
    host = Host(slice_config([rule("from-vm", "proto=tcp dport=80"),
                              rule("to-vm", "proto=tcp dport=80")]))
    out = syn(A, B, dport=80)
    assert host.between(A, B, out).passed
    assert host.between(B, A, reply_to(out)).passed
    assert len(host.ct.dump(ZONES["a"])) == len(host.ct.dump(ZONES["b"])) == 1


@pytest.mark.parametrize("mode, judge", [("source", "from"), ("destination", "to")])
def test_same_host_source_or_destination_judges_both_rule_sets_at_one_stage(mode, judge):
    host = Host(slice_config([rule("from-vm", "proto=tcp dport=80"),
                              rule("to-vm", "proto=tcp dport=80"),
                              rule("from-vm", "proto=tcp dport=22"),
                              rule("to-vm", "proto=udp")],
                             options={"same-host": mode}))
    before = host.rule_packets()
    out = syn(A, B, dport=80)
    first = host.from_vm(A, dict(out, eth_dst=B.mac))
    assert first.passed
    judged_at_source = host.rule_packets() > before
    assert judged_at_source == (judge == "from")
    assert host.to_vm(B, dict(first.packet, eth_src=A.mac)).passed
    assert len(host.ct.dump(ZONES["a"])) == len(host.ct.dump(ZONES["b"])) == 1
    assert host.between(B, A, reply_to(out)).passed
    # Each rule set still applies: A may not send to 22 (B's to-vm), B not to udp.
    assert host.between(A, B, syn(A, B, 40001, 22)).dropped
    assert host.between(A, B, udp(A.ip, B.ip, 1, 2)).dropped


def test_same_host_modes_only_trust_local_senders():
    host = Host(slice_config([rule("to-vm", "proto=tcp dport=22")],
                             options={"same-host": "source"}))
    # A packet from the tunnel that claims a local VM's MAC meets the rules.
    forged = dict(syn(B, A, dport=80), eth_src=B.mac)
    assert host.to_vm(A, forged, tunnel=True).dropped


def test_same_host_source_applies_the_receivers_rules_when_sent_via_the_gateway_mac():
    host = Host(slice_config([rule("from-vm", "any"), rule("to-vm", "proto=tcp dport=80")],
                             options={"same-host": "source"}))
    via_gateway = host.from_vm(A, syn(A, B, dport=22, eth_dst=P.ROUTER_MAC))
    assert not via_gateway.passed or \
        host.to_vm(B, dict(via_gateway.packet, eth_src=A.mac)).dropped


# ------------------------------------------------------------ load balancer

def lb_slice(algorithm="hash", backends=((B.ip, 8080), (C.ip, 8080)), rules=ALLOW_ALL):
    vip = VipInfo("v1", "lb", VIP, 80, "tcp", algorithm, backends)
    return slice_config(rules, services=(ServiceSpec("lb", "lb", vips=(vip,)),))


def test_a_hash_vip_dnats_through_its_select_group_and_the_reply_is_undone():
    host = Host(lb_slice())
    [group] = host.dp.groups
    assert group.type == "select" and len(group.buckets) == 2
    for index, backend in enumerate((B, C)):
        host.table.force_bucket(group.group_id, index)
        out = syn(A, VIP, 40000 + index)
        sent = host.from_vm(A, out)
        assert sent.passed
        assert (sent.get("ipv4_dst"), sent.get("tcp_dst"), sent.get("eth_dst")) == \
            (backend.ip, 8080, backend.mac)
        [entry] = [e for e in host.ct.dump(ZONES["a"]) if e.orig[1] == 40000 + index]
        assert entry.orig == (A.ip, 40000 + index, VIP, 80) and entry.nat == "dst"
        later = host.from_vm(A, ack(out))
        assert (later.get("ipv4_dst"), later.get("eth_dst")) == (backend.ip, backend.mac)
        reply = tcp(backend.ip, A.ip, 8080, 40000 + index, TCP_SYN | TCP_ACK)
        back = host.to_vm(A, reply, tunnel=backend is C)
        assert back.passed and (back.get("ipv4_src"), back.get("tcp_src")) == (VIP, 80)


def test_a_hash_vip_picks_the_same_backend_for_a_connection_every_time():
    host = Host(lb_slice())
    first = host.from_vm(A, syn(A, VIP, 41000)).get("ipv4_dst")
    again = host.from_vm(A, syn(A, VIP, 41000)).get("ipv4_dst")  # retransmitted SYN
    assert first == again and len(host.ct.dump(ZONES["a"])) == 1


def test_round_robin_and_source_hash_vips_go_to_the_daemon():
    for algorithm in ("round-robin", "least-connections", "source-hash"):
        host = Host(lb_slice(algorithm))
        sent = host.from_vm(A, syn(A, VIP))
        assert sent.daemon == [(TAG, P.STAGE_FROM_VM)] and not sent.passed, algorithm
        assert host.dp.groups == ()


def test_rules_see_a_vip_connection_before_its_dnat():
    host = Host(lb_slice(rules=[rule("from-vm", "dst=%s proto=tcp dport=80" % VIP),
                                rule("to-vm", "any")]))
    assert host.from_vm(A, syn(A, VIP)).passed
    assert host.from_vm(A, syn(A, B, dport=8080)).dropped


# ------------------------------------------------------------ SNAT

def snat_slice(rules=ALLOW_ALL, extra_rules=(), options=None):
    nat = ServiceSpec("nat", "nat", nat_rules=(NatRuleInfo("s1", "nat", "snat", (SNAT_IP,), ""),)
                      + tuple(extra_rules))
    return slice_config(rules, services=(nat,), snat_blocks={"s1": SNAT_BLOCK},
                        options=options)


def snat_host(**kw):
    return Host(snat_slice(**kw), snat_zones={"s1": SNAT_ZONE})


def test_snat_commits_in_its_zone_with_a_port_of_the_hosts_block():
    host = snat_host()
    first = host.from_vm(A, syn(A, OUTSIDE, 40000, 443))
    second = host.from_vm(B, syn(B, OUTSIDE, 40000, 443))
    assert [(s.get("ipv4_src"), s.get("tcp_src")) for s in (first, second)] == \
        [(SNAT_IP, 4096), (SNAT_IP, 4097)]
    assert {e.orig[0] for e in host.ct.dump(SNAT_ZONE)} == {A.ip, B.ip}
    assert all(e.nat == "src" for e in host.ct.dump(SNAT_ZONE))
    # Inside the subnet: no translation.
    assert host.from_vm(A, syn(A, C, 40001)).get("ipv4_src") == A.ip


def test_snat_reply_from_outside_is_translated_back_at_the_external_stage():
    host = snat_host()
    out = syn(A, OUTSIDE, 40000, 443)
    host.from_vm(A, out)
    back = host.external(tcp(OUTSIDE, SNAT_IP, 443, 4096, TCP_SYN | TCP_ACK))
    assert back.passed
    assert (back.get("ipv4_dst"), back.get("tcp_dst"), back.get("eth_dst")) == \
        (A.ip, 40000, A.mac)
    # ... and the VM's to-VM stage knows it as the reply of A's connection.
    assert host.to_vm(A, dict(back.packet, eth_src=P.ROUTER_MAC)).passed
    assert host.external(tcp(OUTSIDE, SNAT_IP, 443, 4097, TCP_SYN | TCP_ACK)).dropped
    assert host.external(syn(OUTSIDE, SNAT_IP, 443, 5000)).dropped     # no way in


def test_icmp_echo_through_snat():
    host = snat_host()
    sent = host.from_vm(A, icmp_echo(A.ip, OUTSIDE, ident=7))
    assert sent.passed and sent.get("ipv4_src") == SNAT_IP
    back = host.external(icmp_echo(OUTSIDE, SNAT_IP, ident=7, reply=True))
    assert back.passed and back.get("ipv4_dst") == A.ip
    assert host.external(icmp_echo(OUTSIDE, SNAT_IP, ident=8, reply=True)).dropped


def test_an_icmp_error_about_a_snat_connection_reaches_the_vm_translated():
    host = snat_host()
    sent = host.from_vm(A, udp(A.ip, OUTSIDE, 5000, 53))
    error = host.external(icmp_error(sent.packet, "192.0.2.1", SNAT_IP))
    assert error.passed and (error.get("ipv4_dst"), error.get("eth_dst")) == (A.ip, A.mac)
    assert dict(error.get("icmpv4_quote"))["udp_src"] == 5000
    assert host.to_vm(A, dict(error.packet, eth_src=P.ROUTER_MAC)).passed


def test_snat_without_a_port_block_here_fails_closed():
    host = Host(snat_slice(), snat_zones={})
    assert not host.from_vm(A, syn(A, OUTSIDE)).passed


def test_icmp_echo_through_snat_when_a_dnat_port_rule_shares_the_address():
    web = NatRuleInfo("d1", "nat", "dnat", (SNAT_IP,), B.ip, "tcp", 80, 8080)
    host = snat_host(extra_rules=(web,))
    assert host.from_vm(A, icmp_echo(A.ip, OUTSIDE, ident=7)).passed
    assert host.external(icmp_echo(OUTSIDE, SNAT_IP, ident=7, reply=True)).passed


def test_two_snat_rules_sharing_an_address_each_get_their_replies():
    rules = (NatRuleInfo("s1", "nat", "snat", (SNAT_IP,), "10.0.0.0/29", port_range=(4096, 8191)),
             NatRuleInfo("s2", "nat", "snat", (SNAT_IP,), "10.0.0.8/29", port_range=(8192, 12287)))
    cfg = slice_config(ALLOW_ALL, services=(ServiceSpec("nat", "nat", nat_rules=rules),),
                       snat_blocks={"s1": SNAT_BLOCK, "s2": (SNAT_IP, 8192, 12287)})
    host = Host(cfg, snat_zones={"s1": SNAT_ZONE, "s2": SNAT_ZONE + 1})
    sent = host.from_vm(A, syn(A, OUTSIDE, 40000, 443))       # 10.0.0.10: s2
    assert sent.get("tcp_src") == 8192
    assert host.external(tcp(OUTSIDE, SNAT_IP, 443, 8192, TCP_SYN | TCP_ACK)).passed


# ------------------------------------------------------------ DNAT

def dnat_host(rules=ALLOW_ALL, external_port=80, logical_port=8080, protocol="tcp",
              options=None):
    nat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, protocol, external_port, logical_port),))
    return Host(slice_config(rules, services=(nat,), options=options))


def test_dnat_brings_an_outside_syn_to_the_vm_and_its_reply_back():
    host = dnat_host()
    out = syn(OUTSIDE, DNAT_IP, 50000, 80)
    inside = host.external(out)
    assert inside.passed
    assert (inside.get("ipv4_dst"), inside.get("tcp_dst"), inside.get("eth_dst")) == \
        (A.ip, 8080, A.mac)
    assert inside.packet[P.REG_SKIP_TO_VM] == P.SKIP_TO_VM
    [entry] = host.ct.dump(ZONES["a"])
    assert entry.orig == (OUTSIDE, 50000, DNAT_IP, 80) and entry.mark & D.MARK_IN
    reply = host.from_vm(A, tcp(A.ip, OUTSIDE, 8080, 50000, TCP_SYN | TCP_ACK))
    assert reply.passed and (reply.get("ipv4_src"), reply.get("tcp_src")) == (DNAT_IP, 80)
    assert host.external(ack(out)).get("ipv4_dst") == A.ip
    assert host.external(syn(OUTSIDE, DNAT_IP, 50000, 81)).dropped      # unmapped port


def test_dnat_applies_the_vms_rules_as_the_vm_sees_the_connection():
    host = dnat_host(rules=[rule("to-vm", "proto=tcp dport=8080 src=198.51.100.0/24"),
                            rule("to-vm", "proto=tcp dport=80", "allow")])
    assert host.external(syn(OUTSIDE, DNAT_IP, 50000, 80)).passed
    assert host.external(syn("192.0.2.7", DNAT_IP, 50000, 80)).dropped   # 8080 rule: src
    host = dnat_host(rules=[rule("to-vm", "proto=tcp dport=80")])
    assert host.external(syn(OUTSIDE, DNAT_IP, 50000, 80)).dropped       # sees 8080, not 80
    host = dnat_host(rules=[rule("to-vm", "dst=10.0.0.10 proto=tcp")])
    assert host.external(syn(OUTSIDE, DNAT_IP, 50000, 80)).passed


def test_dnat_of_every_port_maps_udp_and_echo_and_a_port_rule_only_its_port():
    host = dnat_host(protocol="", external_port=None, logical_port=None)
    assert host.external(udp(OUTSIDE, DNAT_IP, 1, 53)).get("udp_dst") == 53
    assert host.external(icmp_echo(OUTSIDE, DNAT_IP, 3)).get("ipv4_dst") == A.ip
    assert host.from_vm(A, icmp_echo(A.ip, OUTSIDE, 3, reply=True)).get("ipv4_src") == DNAT_IP
    host = dnat_host()
    assert host.external(icmp_echo(OUTSIDE, DNAT_IP, 3)).dropped
    assert host.external(udp(OUTSIDE, DNAT_IP, 1, 80)).dropped


def test_an_icmp_error_about_a_dnat_connection_reaches_the_vm_translated():
    host = dnat_host()
    host.external(syn(OUTSIDE, DNAT_IP, 50000, 80))
    reply = host.from_vm(A, tcp(A.ip, OUTSIDE, 8080, 50000, TCP_SYN | TCP_ACK))
    error = host.external(icmp_error(reply.packet, "192.0.2.1", DNAT_IP, code=4))
    assert error.passed and error.get("ipv4_dst") == A.ip
    assert dict(error.get("icmpv4_quote"))["tcp_src"] == 8080


def test_two_dnat_rules_sharing_an_address_each_get_their_icmp_errors():
    nat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, "tcp", 80, 8080),
        NatRuleInfo("d2", "nat", "dnat", (DNAT_IP,), B.ip, "tcp", 22, 22)))
    host = Host(slice_config(ALLOW_ALL, services=(nat,)))
    assert host.external(syn(OUTSIDE, DNAT_IP, 50000, 22)).get("ipv4_dst") == B.ip
    reply = host.from_vm(B, tcp(B.ip, OUTSIDE, 22, 50000, TCP_SYN | TCP_ACK))
    error = host.external(icmp_error(reply.packet, "192.0.2.1", DNAT_IP, code=4))
    assert error.passed and error.get("ipv4_dst") == B.ip


def test_dnat_only_opens_connections_with_a_syn():
    host = dnat_host()
    assert host.external(ack(syn(OUTSIDE, DNAT_IP, 50000, 80))).dropped
    assert host.ct.dump() == []


# ------------------------------------------------------------ IDS

def test_ids_copies_new_connections_and_resets_into_a_vm_and_the_originals_go_on():
    ids = ServiceSpec("ids", "ids")
    host = Host(slice_config(ALLOW_ALL, services=(ids,)))
    out = syn(C, A, 40000, 22)
    first = host.to_vm(A, out, tunnel=True)
    assert first.passed and first.daemon == [(TAG, P.COPY)]
    assert first.packet.get("vlan_vid") is None
    assert host.to_vm(A, ack(out), tunnel=True).daemon == []
    rst = host.to_vm(A, dict(out, tcp_flags=TCP_RST | TCP_ACK), tunnel=True)
    assert rst.passed and rst.daemon == [(TAG, P.COPY)]
    assert host.from_vm(A, syn(A, C)).daemon == []                    # to-VM stage only


def test_ids_copies_new_connections_from_outside_through_dnat():
    nat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, "tcp", 80, 8080),))
    host = Host(slice_config(ALLOW_ALL, services=(nat, ServiceSpec("ids", "ids"))))
    inside = host.external(syn(OUTSIDE, DNAT_IP, 50000, 80))
    assert inside.passed and inside.daemon == [(TAG, P.COPY)]


def test_ids_copies_resets_from_outside_through_dnat():
    nat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, "tcp", 80, 8080),))
    host = Host(slice_config(ALLOW_ALL, services=(nat, ServiceSpec("ids", "ids"))))
    out = syn(OUTSIDE, DNAT_IP, 50000, 80)
    host.external(out)
    host.from_vm(A, tcp(A.ip, OUTSIDE, 8080, 50000, TCP_SYN | TCP_ACK))
    rst = host.external(dict(out, tcp_flags=TCP_RST | TCP_ACK))
    assert rst.passed and rst.daemon == [(TAG, P.COPY)]


# ------------------------------------------------------------ check modes

def opened(options, **kw):
    """A host with A -> C's TCP connection open (SYN out, SYN+ACK back)."""
    host = Host(slice_config(ALLOW_ALL, options=options), **kw)
    out = syn(A, C)
    assert host.from_vm(A, out).passed
    return host, out


def test_check_every_packet_sends_established_packets_to_the_daemon():
    host, out = opened({"check": "every-packet"})
    sent = host.from_vm(A, ack(out))
    assert not sent.passed and [pcp for _, pcp in sent.daemon] == [P.CHECK_BASE + 0]
    back = host.to_vm(A, reply_to(out), tunnel=True)
    assert not back.passed and [pcp for _, pcp in back.daemon] == [P.CHECK_BASE + 1]
    # Given back by the daemon (RESUMED), it goes on.
    resumed = host.from_vm(A, ack(out, reg6=P.RESUMED[P.STAGE_FROM_VM]))
    assert resumed.passed and resumed.daemon == []


def test_a_checks_vlan_id_says_the_peer_opened_the_connection():
    host = Host(slice_config(ALLOW_ALL, options={"check": "every-packet"}))
    inbound = syn(C, A, 40000, 22)
    assert host.to_vm(A, inbound, tunnel=True).passed
    reply = host.from_vm(A, reply_to(inbound))
    assert reply.daemon == [(TAG | P.VID_ORIGIN_IN, P.CHECK_BASE + P.STAGE_FROM_VM)]


def test_check_every_nth_sends_exactly_every_nth_established_packet():
    host, out = opened({"check": "every-nth", "check-interval": "4"})
    checked = []
    for i in range(1, 13):
        stage = host.from_vm(A, ack(out)) if i % 3 else \
            host.to_vm(A, reply_to(ack(out)), tunnel=True)
        if stage.daemon:
            assert not stage.passed
            checked.append(i)
        else:
            assert stage.passed, i
    assert checked == [4, 8, 12]
    [entry] = host.ct.dump(ZONES["a"])
    assert (entry.mark >> D.MARK_COUNT_OFS) & 0xFF == 0


def test_check_every_nth_counts_a_load_balanced_connection_in_one_entry():
    host = Host(dataclasses.replace(lb_slice(), options={"check": "every-nth",
                                                         "check-interval": "2"}))
    host.table.force_bucket(host.dp.groups[0].group_id, 1)
    out = syn(A, VIP)
    assert host.from_vm(A, out).get("ipv4_dst") == C.ip
    first = host.from_vm(A, ack(out))
    assert first.passed and first.get("ipv4_dst") == C.ip
    assert host.from_vm(A, ack(out)).daemon
    assert len(host.ct.dump(ZONES["a"])) == 1


def test_check_relay_copies_established_packets_and_lets_them_go_on():
    host, out = opened({"check": "relay"})
    sent = host.from_vm(A, ack(out))
    assert sent.passed and sent.daemon == [(TAG, P.COPY)]
    back = host.to_vm(A, reply_to(out), tunnel=True)
    assert back.passed and [pcp for _, pcp in back.daemon] == [P.COPY]


@pytest.mark.parametrize("mode", ["relay", "every-nth"])
def test_check_modes_undo_a_local_backends_dnat_in_the_clients_zone(mode):
    host = Host(dataclasses.replace(lb_slice(), options={"check": mode}))
    host.table.force_bucket(host.dp.groups[0].group_id, 0)           # backend B, local
    out = syn(A, VIP)
    sent = host.from_vm(A, out)
    assert host.to_vm(B, dict(sent.packet, eth_src=A.mac)).passed
    reply = tcp(B.ip, A.ip, 8080, 40000, TCP_SYN | TCP_ACK, eth_dst=A.mac)
    back = host.between(B, A, reply)
    assert back.passed and (back.get("ipv4_src"), back.get("tcp_src")) == (VIP, 80)


def test_offload_sends_nothing_to_the_daemon():
    host, out = opened({})
    assert host.from_vm(A, ack(out)).daemon == []


# ------------------------------------------------------------ holds

def test_a_held_vm_sends_its_new_connections_to_the_daemon():
    host = Host(slice_config(ALLOW_ALL), holds={"a"})
    out = host.from_vm(A, syn(A, C))
    assert out.daemon == [(TAG, P.STAGE_FROM_VM)] and not out.passed
    inbound = host.to_vm(A, syn(C, A, 1, 22), tunnel=True)
    assert inbound.daemon == [(TAG, P.STAGE_TO_VM)]
    # A mid-stream packet of a connection whose state has not arrived yet too.
    assert host.from_vm(A, ack(syn(A, C, 2))).daemon == [(TAG, P.STAGE_FROM_VM)]
    # Once imported, it is established and the switch forwards it alone.
    host.ct.commit_entry(ZONES["a"], 6, A.ip, 3, C.ip, 80, mark=TAG)
    assert host.from_vm(A, ack(syn(A, C, 3))).passed
    assert host.from_vm(B, syn(B, C)).passed                          # B is not held


def test_a_held_vms_connection_given_back_by_the_daemon_meets_the_rules():
    host = Host(slice_config([rule("to-vm", "proto=tcp dport=22")]), holds={"a"})
    back = dict(syn(C, A, 1, 22), eth_src=C.mac, eth_dst=A.mac, reg4=TAG, reg1=PORT["a"],
                reg6=P.RESUMED[P.STAGE_TO_VM], metadata=VNI)
    assert host.table.trace(back, table=P.TO_VM_RESUME.table_id).reached(DELIVER)
    assert [e.orig for e in host.ct.dump(ZONES["a"])] == [(C.ip, 1, A.ip, 22)]
    denied = dict(back, tcp_dst=23)
    assert not host.table.trace(denied, table=P.TO_VM_RESUME.table_id).reached(DELIVER)


def test_a_held_vms_dnat_connections_from_outside_go_to_the_daemon():
    nat = ServiceSpec("nat", "nat", nat_rules=(
        NatRuleInfo("d1", "nat", "dnat", (DNAT_IP,), A.ip, "tcp", 80, 8080),))
    host = Host(slice_config(ALLOW_ALL, services=(nat,)), holds={"a"})
    midstream = host.external(ack(syn(OUTSIDE, DNAT_IP, 50000, 80)))
    assert midstream.daemon == [(TAG, P.STAGE_FROM_EXTERNAL)]


# ------------------------------------------------------------ forwarders

def test_the_reply_of_a_moved_vms_connection_is_forwarded_untranslated():
    fwd = D.Forwarder(1, 6, OUTSIDE, 443, SNAT_IP, 4100, VNI, "10.200.0.12")
    dp = D.compile_host(HostConfig(HOST, {TAG: snat_slice()}), HOST, ZONES,
                        {"s1": SNAT_ZONE}, D.HostPorts(MB, TUNNEL), forwarders=[fwd])
    table = FakeOFTable(dp.flows, dp.groups)
    pkt = dict(tcp(OUTSIDE, SNAT_IP, 443, 4100, TCP_ACK), reg4=TAG, reg0=1, in_port=200)
    [out] = table.lookup(pkt, table=P.EXTERNAL_CT.table_id)
    assert (out.port, out.get("tunnel_id"), out.get("tun_ipv4_dst")) == \
        (TUNNEL, VNI, "10.200.0.12")
    assert (out.get("ipv4_dst"), out.get("tcp_dst")) == (SNAT_IP, 4100)
    assert table.conntrack.dump() == []


# ------------------------------------------------------------ isolation

def test_each_vm_has_its_own_zone():
    host = Host(slice_config(ALLOW_ALL))
    out = udp(A.ip, C.ip, 5000, 53)
    host.from_vm(A, out)
    assert [e.zone for e in host.ct.dump()] == [ZONES["a"]]
    before = host.rule_packets()
    # B sending the very same tuple is a new connection in B's zone.
    assert host.from_vm(B, out).passed and host.rule_packets() > before
    assert len(host.ct.dump(ZONES["b"])) == 1


def test_two_tenants_with_the_same_addresses_never_see_each_others_entries():
    a2 = VmSpec("a2", "02:00:00:00:01:0a", A.ip, HOST)               # same address as A
    other = slice_config([], tag=6, vms=(a2,))                        # default deny
    host = Host(slice_config(ALLOW_ALL), other, zones=dict(ZONES, a2=21))
    out = syn(A, C)
    assert host.from_vm(A, out).passed
    assert host.from_vm(a2, ack(out), tag=6).dropped                  # not A's connection
    assert host.to_vm(a2, reply_to(out), tag=6, tunnel=True).dropped
    assert host.ct.dump(21) == []


def test_a_vm_with_no_zone_here_goes_to_the_daemon_when_states_can_arrive():
    """Its port came before the daemon knew it was arriving: both stages ask
    the daemon (which holds the packets until the VM's zone is in place)."""
    zones = {name: z for name, z in ZONES.items() if name != "b"}
    arriving = Host(slice_config(ALLOW_ALL), zones=zones, arrivals=True)
    assert arriving.from_vm(B, syn(B, C)).daemon == [(TAG, P.STAGE_FROM_VM)]
    assert arriving.to_vm(B, syn(C, B), tunnel=True).daemon == [(TAG, P.STAGE_TO_VM)]
    assert arriving.from_vm(A, syn(A, C)).passed                # A has its zone
    # Without state migration nothing arrives: such a packet is dropped.
    plain = Host(slice_config(ALLOW_ALL), zones=zones)
    assert plain.from_vm(B, syn(B, C)).dropped
