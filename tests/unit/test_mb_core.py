"""middlebox.core.MiddleboxCore: what the daemon does with frames, config,
flow events and a restart, seen from outside (verdicts, frames, flows)."""

import json
import random
import struct

import pytest

from middlebox.config import HostConfig, RuleSpec, SliceConfig, VmSpec
from middlebox.core import NON_IP_POLICY, MiddleboxCore
from middlebox.packet import parse_frame
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import canon_match
from test_mb_frames import (ACK, FIN, ICMP, IP_A1, IP_A2, IP_A3, IP_OUT, MAC_A1, MAC_A2,
                            MAC_A3, MAC_X, PSH, RST, SYN, TCP, UDP, checksums_ok, eth,
                            icmp_frame, ip_int, ipv4, tcp_frame, tci, udp_frame)

HOST = "h1"
TAG = 5
GW = "02:00:00:00:00:fe"               # source MAC of packets from outside the tenant
FROM, TO = tci(TAG, P.STAGE_FROM_VM), tci(TAG, P.STAGE_TO_VM)
VMS = (VmSpec("a1", MAC_A1, IP_A1, HOST), VmSpec("a2", MAC_A2, IP_A2, HOST),
       VmSpec("a3", MAC_A3, IP_A3, "h2"))
DC = P.DAEMON_COOKIE


def rule(priority, direction, match, action, tier="tenant"):
    return RuleSpec(priority, direction, match, action, tier,
                    "%s-%d-%s" % (direction, priority, action))


WEB_RULES = (rule(100, "from-vm", "any", "allow"),
             rule(100, "to-vm", "proto=tcp dport=22", "reject"),
             rule(90, "to-vm", "proto=tcp dport=80", "allow"),
             rule(80, "to-vm", "proto=udp dport=53", "allow"),
             rule(70, "to-vm", "proto=udp dport=99", "reject"),
             rule(60, "to-vm", "src=$admins", "allow"))


def slice_cfg(rules=WEB_RULES, default="deny", options=None, sets=None, vms=VMS, tag=TAG,
              middlebox="fw1"):
    return SliceConfig(tag=tag, middlebox=middlebox, type="firewall", tenant="ta",
                       switch="ls-a", vni=1001, default_action=default,
                       options=dict(options or {}), rules=tuple(rules),
                       address_sets=dict(sets if sets is not None
                                         else {"admins": ("198.51.100.0/24",)}),
                       vms=vms)


def make_core(*slices, **kw):
    core = MiddleboxCore(HOST)
    cfgs = slices or (slice_cfg(**kw),)
    changes = core.configure(HostConfig(HOST, {s.tag: s for s in cfgs}), 0.0)
    assert changes.add == [] and changes.delete == []
    return core


def out_syn(sport=40000, dport=443, dst=IP_OUT, dst_mac=GW, src=IP_A1, src_mac=MAC_A1):
    return tcp_frame(src_mac, dst_mac, src, dst, sport, dport, SYN, seq=100)


def in_tcp(flags, sport=443, dport=40000, src=IP_OUT, seq=900, ack=101, payload=b""):
    return tcp_frame(GW, MAC_A1, src, IP_A1, sport, dport, flags, seq, ack, payload)


def out_tcp(flags, sport=40000, dport=443, seq=101, ack=901, payload=b""):
    return tcp_frame(MAC_A1, GW, IP_A1, IP_OUT, sport, dport, flags, seq, ack, payload)


def checked(flows):
    for f in flows:
        assert P.check_flow(f, owner=DC) is f
    return flows


def by_table(flows):
    return {f.table: f for f in checked(flows)}


def test_outbound_tcp_offloaded_when_established_and_unoffloaded_on_fin():
    core = make_core()
    syn = out_syn()
    res = core.handle_frame(syn, FROM, 1.0)
    assert res.verdict == "allow" and res.new and res.out == [(syn, FROM)]
    assert res.add == [] and res.delete == []
    synack = in_tcp(SYN | ACK)
    res = core.handle_frame(synack, TO, 1.1)
    assert res.verdict == "allow" and not res.new and res.out == [(synack, TO)]
    flows = by_table(res.add)
    assert set(flows) == {P.FROM_VM_CACHE.table_id, P.TO_VM_CACHE.table_id}
    fwd, rev = flows[P.FROM_VM_CACHE.table_id], flows[P.TO_VM_CACHE.table_id]
    assert fwd.match == canon_match(reg4=TAG, eth_type=0x800, ip_proto=TCP, ipv4_src=IP_A1,
                                    ipv4_dst=IP_OUT, tcp_src=40000, tcp_dst=443)
    assert rev.match == canon_match(reg4=TAG, eth_type=0x800, ip_proto=TCP, ipv4_src=IP_OUT,
                                    ipv4_dst=IP_A1, tcp_src=443, tcp_dst=40000)
    assert fwd.instructions == (("goto", P.L2_LOOKUP.table_id),)
    assert rev.instructions == (("goto", P.LOCAL_DELIVERY.table_id),)
    assert fwd.priority == rev.priority == P.PRIO_CACHE_ENTRY
    assert fwd.idle_timeout == rev.idle_timeout == 3600
    [conn] = core.conn_list()
    assert fwd.cookie == rev.cookie == DC | TAG << 28 | conn["id"] == conn["cookie"]
    assert (conn["state"], conn["origin"], conn["offloaded"]) == ("established", "out", True)
    # The handshake's ACK may still reach the daemon: passed, no second install.
    res = core.handle_frame(out_tcp(ACK), FROM, 1.2)
    assert res.verdict == "allow" and res.add == [] and res.delete == []
    # FIN: flows deleted, the rest of the close passes through the daemon.
    res = core.handle_frame(out_tcp(FIN | ACK), FROM, 5.0)
    assert res.verdict == "allow" and res.add == []
    assert sorted(res.delete, key=lambda f: f.table) == [fwd, rev]
    for frame, stage in ((in_tcp(ACK, seq=901, ack=102), TO),
                         (in_tcp(FIN | ACK, seq=901, ack=102), TO),
                         (out_tcp(ACK, seq=102, ack=902), FROM)):
        res = core.handle_frame(frame, stage, 5.1)
        assert res.verdict == "allow" and res.add == [] and res.delete == []
    [conn] = core.conn_list()
    assert (conn["state"], conn["offloaded"]) == ("closing", False)
    assert conn["packets_orig"] == 4 and conn["packets_reply"] == 3


def test_unsolicited_tcp_without_syn_is_invalid():
    core = make_core()
    for flags in (ACK, SYN | ACK, FIN | ACK, RST, PSH | ACK):
        res = core.handle_frame(in_tcp(flags, dport=80), TO, 1.0)
        assert res.verdict == "invalid" and res.out == [] and res.add == []
    assert core.stats()["invalid"] == 5 and core.conn_count()["total"] == 0


def test_inbound_connections_are_judged_by_to_vm_rules():
    core = make_core()
    res = core.handle_frame(in_tcp(SYN, sport=50000, dport=80), TO, 1.0)
    assert res.verdict == "allow" and res.new and res.add == []
    res = core.handle_frame(out_tcp(SYN | ACK, sport=80, dport=50000), FROM, 1.1)
    assert res.verdict == "allow" and len(checked(res.add)) == 2
    [conn] = core.conn_list("a1")
    assert (conn["origin"], conn["rule"], conn["vm_port"]) == ("in", "to-vm-90-allow", 80)
    # Default deny: a drop flow for the direction seen only, timeout "denied".
    res = core.handle_frame(in_tcp(SYN, sport=50001, dport=8080), TO, 2.0)
    assert res.verdict == "deny" and res.out == []
    [drop] = checked(res.add)
    assert drop.table == P.TO_VM_CACHE.table_id and drop.instructions == ()
    assert drop.idle_timeout == 10
    assert dict(drop.match)["tcp_dst"] == 8080
    # A retransmitted SYN (race before the flow is in): dropped, no re-install.
    res = core.handle_frame(in_tcp(SYN, sport=50001, dport=8080), TO, 2.5)
    assert res.verdict == "deny" and res.add == [] and not res.new
    assert core.stats()["decisions"] == {"allow": 1, "deny": 1, "reject": 0}


def test_replies_of_allowed_connections_pass_and_address_sets_admit_peers():
    core = make_core()
    admin = tcp_frame(GW, MAC_A1, "198.51.100.9", IP_A1, 50000, 3306, SYN)
    assert core.handle_frame(admin, TO, 1.0).verdict == "allow"
    other = tcp_frame(GW, MAC_A1, "198.51.101.9", IP_A1, 50000, 3306, SYN)
    assert core.handle_frame(other, TO, 1.0).verdict == "deny"


def test_udp_offloaded_on_first_packet_once():
    core = make_core()
    dns = udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 5353, 53)
    res = core.handle_frame(dns, FROM, 1.0)
    assert res.verdict == "allow" and res.out == [(dns, FROM)]
    flows = by_table(res.add)
    assert len(flows) == 2 and all(f.idle_timeout == 30 for f in flows.values())
    assert dict(flows[P.FROM_VM_CACHE.table_id].match)["udp_dst"] == 53
    # More packets before the flows are in (either direction): no re-install.
    assert core.handle_frame(dns, FROM, 1.01).add == []
    reply = udp_frame(GW, MAC_A1, IP_OUT, IP_A1, 53, 5353)
    res = core.handle_frame(reply, TO, 1.02)
    assert res.verdict == "allow" and res.add == []
    [conn] = core.conn_list()
    assert conn["state"] == "replied" and conn["expires"] == pytest.approx(181.02)
    assert core.stats()["flows_added"] == 2


def test_icmp_flows_have_no_ports_and_deny_udp_installs_one_drop_flow():
    core = make_core(rules=WEB_RULES + (rule(5, "from-vm", "proto=udp", "deny",
                                                 tier="provider"),))
    res = core.handle_frame(icmp_frame(MAC_A1, GW, IP_A1, IP_OUT), FROM, 1.0)
    flows = by_table(res.add)
    assert dict(flows[P.FROM_VM_CACHE.table_id].match) == {
        "reg4": TAG, "eth_type": 0x800, "ip_proto": ICMP, "ipv4_src": IP_A1,
        "ipv4_dst": IP_OUT}
    res = core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 2), FROM, 1.0)
    assert res.verdict == "deny" and res.out == []
    [drop] = checked(res.add)
    assert drop.table == P.FROM_VM_CACHE.table_id and drop.instructions == ()


def test_every_packet_mode_installs_no_flows():
    core = make_core(options={"check": "every-packet"})
    frames = [(out_syn(), FROM), (in_tcp(SYN | ACK), TO), (out_tcp(ACK), FROM),
              (udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53), FROM),
              (in_tcp(SYN, sport=1, dport=8080), TO)]
    states = []
    for frame, stage in frames:
        res = core.handle_frame(frame, stage, 1.0)
        assert res.add == [] and res.delete == []
        states.append(res.verdict)
    assert states == ["allow", "allow", "allow", "allow", "deny"]
    tcp = [c for c in core.conn_list() if c["proto"] == TCP and c["verdict"] == "allow"]
    assert tcp[0]["state"] == "established" and not tcp[0]["offloaded"]


def test_every_packet_mode_tracks_syn_recv_until_the_ack():
    core = make_core(options={"check": "every-packet"})
    core.handle_frame(out_syn(), FROM, 1.0)
    core.handle_frame(in_tcp(SYN | ACK), TO, 1.1)
    assert core.conn_list()[0]["state"] == "syn_recv"
    core.handle_frame(out_tcp(ACK), FROM, 1.2)
    assert core.conn_list()[0]["state"] == "established"


def test_reject_tcp_at_to_vm_stage_answers_the_sender_with_a_rst():
    core = make_core()
    syn = in_tcp(SYN, sport=50000, dport=22, seq=4242)
    res = core.handle_frame(syn, TO, 1.0)
    assert res.verdict == "reject" and res.add == []
    [(rst, out_tci)] = res.out
    assert out_tci == tci(TAG, P.STAGE_FROM_VM)     # leaves like a packet of the VM
    assert checksums_ok(rst)
    pkt = parse_frame(rst, out_tci)
    assert (pkt.eth_src, pkt.eth_dst) == (MAC_A1, GW)
    assert (pkt.src, pkt.dst, pkt.sport, pkt.dport) == (ip_int(IP_A1), ip_int(IP_OUT), 22,
                                                         50000)
    assert pkt.tcp_flags == RST | ACK and (pkt.seq, pkt.ack) == (0, 4243)
    assert core.conn_count()["total"] == 0          # reject keeps no state
    assert core.handle_frame(syn, TO, 1.5).verdict == "reject"
    assert core.stats()["decisions"]["reject"] == 2


def test_reject_at_from_vm_stage_goes_back_at_the_to_vm_stage():
    core = make_core(rules=(rule(10, "from-vm", "proto=tcp dport=25", "reject"),
                            rule(10, "from-vm", "proto=udp", "reject")))
    res = core.handle_frame(out_syn(dport=25), FROM, 1.0)
    [(rst, out_tci)] = res.out
    assert out_tci == tci(TAG, P.STAGE_TO_VM)
    pkt = parse_frame(rst, out_tci)
    assert pkt.eth_dst == MAC_A1 and pkt.dst == ip_int(IP_A1) and pkt.tcp_flags & RST
    # UDP: ICMP administratively prohibited, from the original destination.
    udp = udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 5000, 99)
    [(icmp, out_tci)] = core.handle_frame(udp, FROM, 1.0).out
    assert out_tci == tci(TAG, P.STAGE_TO_VM) and checksums_ok(icmp)
    pkt = parse_frame(icmp, out_tci)
    assert (pkt.proto, pkt.icmp_type, pkt.icmp_code) == (ICMP, 3, 13)
    assert (pkt.src, pkt.dst) == (ip_int(IP_OUT), ip_int(IP_A1))
    assert pkt.related == (UDP, ip_int(IP_A1), ip_int(IP_OUT), 5000, 99)


def test_reject_never_answers_a_rst_or_an_icmp_error():
    core = make_core(rules=(rule(10, "to-vm", "any", "reject"),))
    # A RST cannot open a connection anyway: invalid, no answer.
    assert core.handle_frame(in_tcp(RST), TO, 1.0).out == []
    err = icmp_frame(GW, MAC_A1, IP_OUT, IP_A1, 3, 1, rest=b"\0" * 4, payload=b"")
    res = core.handle_frame(err, TO, 1.0)
    assert res.verdict == "reject" and res.out == []


def test_icmp_errors_about_a_tracked_connection_pass_with_it():
    core = make_core()
    dns = udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 5353, 53)
    core.handle_frame(dns, FROM, 1.0)
    quoted = dns[14:14 + 28]
    err = icmp_frame(GW, MAC_A1, IP_OUT, IP_A1, 3, 3, rest=b"\0" * 4, payload=quoted)
    res = core.handle_frame(err, TO, 1.1)
    assert res.verdict == "allow" and res.related and res.out == [(err, TO)]
    assert core.conn_count()["total"] == 1          # no entry of its own
    # Quoting a connection nobody made: judged as ICMP by the to-vm rules.
    other = udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 5354, 53)[14:14 + 28]
    err = icmp_frame(GW, MAC_A1, IP_OUT, IP_A1, 3, 3, rest=b"\0" * 4, payload=other)
    res = core.handle_frame(err, TO, 1.2)
    assert res.verdict == "deny" and not res.related


def test_a_new_syn_on_a_closed_connection_opens_a_new_one():
    core = make_core()
    core.handle_frame(out_syn(), FROM, 1.0)
    core.handle_frame(in_tcp(RST | ACK), TO, 1.1)
    assert core.conn_list()[0]["state"] == "closed"
    old_id = core.conn_list()[0]["id"]
    res = core.handle_frame(out_syn(), FROM, 2.0)
    assert res.verdict == "allow" and res.new
    [conn] = core.conn_list()
    assert conn["state"] == "syn_sent" and conn["id"] != old_id


# ------------------------------------------------------------ same host

def a1_to_a2(flags, sport=40000, dport=80, seq=1):
    return tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, sport, dport, flags, seq)


def a2_to_a1(flags, sport=80, dport=40000, seq=1, ack=2):
    return tcp_frame(MAC_A2, MAC_A1, IP_A2, IP_A1, sport, dport, flags, seq, ack)


def test_same_host_source_checks_both_vms_at_the_senders_stage():
    core = make_core(options={"same-host": "source"})
    res = core.handle_frame(a1_to_a2(SYN), FROM, 1.0)
    assert res.verdict == "allow"
    conns = {c["vm"]: c for c in core.conn_list()}
    assert conns["a1"]["origin"] == "out" and conns["a2"]["origin"] == "in"
    assert conns["a2"]["rule"] == "to-vm-90-allow"
    # a2's SYN-ACK at a2's from-VM stage establishes both entries.
    res = core.handle_frame(a2_to_a1(SYN | ACK), FROM, 1.1)
    assert res.verdict == "allow"
    flows = checked(res.add)
    assert len(flows) == 4 and len({f.cookie for f in flows}) == 2
    assert {(f.table, dict(f.match)["ipv4_src"]) for f in flows} == {
        (P.FROM_VM_CACHE.table_id, IP_A1), (P.TO_VM_CACHE.table_id, IP_A2),
        (P.FROM_VM_CACHE.table_id, IP_A2), (P.TO_VM_CACHE.table_id, IP_A1)}
    assert {c["state"] for c in core.conn_list()} == {"established"}
    # a2's to-vm rules reject ssh although a1's from-vm rules allow it.
    res = core.handle_frame(a1_to_a2(SYN, sport=40001, dport=22), FROM, 2.0)
    assert res.verdict == "reject"
    [(rst, out_tci)] = res.out
    assert out_tci == tci(TAG, P.STAGE_TO_VM) and parse_frame(rst, 0).eth_dst == MAC_A1
    # ... and deny (default) is recorded in both tables.
    res = core.handle_frame(a1_to_a2(SYN, sport=40002, dport=8080), FROM, 2.0)
    assert res.verdict == "deny"
    denied = [c for c in core.conn_list() if c["verdict"] == "deny"]
    assert sorted(c["vm"] for c in denied) == ["a1", "a2"]
    assert {c["rule"] for c in denied} == {"default"}


def test_same_host_source_leaves_remote_peers_to_their_host():
    core = make_core(options={"same-host": "source"})
    frame = tcp_frame(MAC_A1, MAC_A3, IP_A1, IP_A3, 40000, 8080, SYN)
    assert core.handle_frame(frame, FROM, 1.0).verdict == "allow"   # a3 on h2
    assert [c["vm"] for c in core.conn_list()] == ["a1"]


def test_same_host_destination_checks_both_vms_at_the_receivers_stage():
    core = make_core(options={"same-host": "destination"},
                     rules=(rule(10, "from-vm", "proto=tcp dport=25", "deny"),
                            rule(5, "from-vm", "any", "allow"),
                            rule(10, "to-vm", "any", "allow")))
    assert core.handle_frame(a1_to_a2(SYN, dport=25), TO, 1.0).verdict == "deny"
    res = core.handle_frame(a1_to_a2(SYN, dport=80), TO, 1.0)
    assert res.verdict == "allow"
    conns = {(c["vm"], c["vm_port"]): c for c in core.conn_list()}
    assert conns[("a2", 80)]["origin"] == "in" and conns[("a1", 40000)]["origin"] == "out"
    # The SYN-ACK reaches a1's to-VM stage and establishes both.
    res = core.handle_frame(a2_to_a1(SYN | ACK), TO, 1.1)
    assert res.verdict == "allow" and len(checked(res.add)) == 4


def test_same_host_both_checks_only_the_stages_own_vm():
    core = make_core()
    assert core.handle_frame(a1_to_a2(SYN, dport=22), FROM, 1.0).verdict == "allow"
    assert [c["vm"] for c in core.conn_list()] == ["a1"]
    res = core.handle_frame(a1_to_a2(SYN, dport=22), TO, 1.0)
    assert res.verdict == "reject"
    # The RST leaves like a2's packet and reaches a1's to-VM stage: it passes
    # there as the reply of a1's connection, which it closes.
    [(rst, out_tci)] = res.out
    assert out_tci == FROM
    assert core.handle_frame(rst, TO, 1.1).verdict == "allow"
    assert core.conn_list("a1")[0]["state"] == "closed"


# ------------------------------------------------------------ robustness

def test_unknown_tag_unknown_vm_and_non_ip():
    core = make_core()
    assert core.handle_frame(out_syn(), tci(77, 0), 1.0).verdict == "unknown_tag"
    frame = tcp_frame(MAC_X, GW, IP_A1, IP_OUT, 1, 2, SYN)
    assert core.handle_frame(frame, FROM, 1.0).verdict == "unknown_vm"
    frame = tcp_frame(GW, MAC_X, IP_OUT, IP_A1, 1, 2, SYN)
    res = core.handle_frame(frame, TO, 1.0)
    assert res.verdict == "unknown_vm" and res.out == []
    arp = eth("ff:ff:ff:ff:ff:ff", MAC_A1, 0x0806, b"\0" * 28)
    res = core.handle_frame(arp, FROM, 1.0)
    assert NON_IP_POLICY == "pass" and res.out == [(arp, FROM)] and res.verdict == "non_ip"
    st = core.stats()
    assert (st["unknown_tag"], st["unknown_vm"], st["non_ip"], st["frames"]) == (1, 2, 1, 4)


def test_every_cut_and_random_bytes_never_raise():
    core = make_core()
    frames = [out_syn(), in_tcp(SYN | ACK), udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53),
              icmp_frame(GW, MAC_A1, IP_OUT, IP_A1, 3, 3, rest=b"\0" * 4,
                         payload=out_syn()[14:42])]
    for frame in frames:
        for n in range(len(frame) + 1):
            for stage_tci in (FROM, TO, tci(TAG, 7), tci(0, 0)):
                res = core.handle_frame(frame[:n], stage_tci, 2.0)
                assert isinstance(res.verdict, str)
    rnd = random.Random(7)
    base = out_syn()
    for _ in range(3000):
        frame = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        frame = bytes(frame[:rnd.randint(0, len(frame))])
        core.handle_frame(frame, rnd.choice((FROM, TO, rnd.randrange(65536))), 3.0)
    for _ in range(500):
        core.handle_frame(bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 80))),
                          rnd.randrange(65536), 4.0)
    st = core.stats()
    assert st["internal_errors"] == 0, st["last_error"]
    assert st["malformed"] > 0


def test_stage_outside_0_3_is_malformed_and_unexpected_stages_are_dropped():
    core = make_core()
    for stage in (4, 5, 6, 7):
        assert core.handle_frame(out_syn(), tci(TAG, stage), 1.0).verdict == "malformed"
    # From the external network with no NAT in the chain: nothing opens.
    res = core.handle_frame(out_syn(), tci(TAG, 2), 1.0)
    assert (res.verdict, res.out) == ("no_nat", [])
    # A probe reply that no probe of this daemon expects: dropped.
    res = core.handle_frame(out_syn(), tci(TAG, 3), 1.0)
    assert (res.verdict, res.out) == ("probe", [])


# ------------------------------------------------------------ config changes

def test_rule_changes_do_not_rejudge_established_connections():
    core = make_core()
    core.handle_frame(out_syn(), FROM, 1.0)
    core.handle_frame(in_tcp(SYN | ACK), TO, 1.1)
    changes = core.configure(HostConfig(HOST, {TAG: slice_cfg(rules=())}), 2.0)
    assert changes.add == [] and changes.delete == []
    res = core.handle_frame(out_tcp(PSH | ACK, payload=b"x"), FROM, 3.0)
    assert res.verdict == "allow"
    assert core.handle_frame(out_syn(sport=40001), FROM, 3.0).verdict == "deny"


def test_address_set_changes_apply_to_new_connections():
    core = make_core()
    src = "203.0.113.5"
    syn = tcp_frame(GW, MAC_A1, src, IP_A1, 50000, 5432, SYN)
    res = core.handle_frame(syn, TO, 1.0)
    assert res.verdict == "deny"
    [drop] = res.add
    cfg = slice_cfg(sets={"admins": ("203.0.113.0/24",)})
    core.configure(HostConfig(HOST, {TAG: cfg}), 2.0)
    syn2 = tcp_frame(GW, MAC_A1, src, IP_A1, 50001, 5432, SYN)
    assert core.handle_frame(syn2, TO, 2.0).verdict == "allow"
    # The connection denied before stays denied until it expires (its drop
    # flow idles out in the datapath).
    assert core.handle_frame(syn, TO, 2.0).verdict == "deny"
    core.flow_removed(drop.cookie, 0, 0, 12.0, table_id=drop.table)
    assert core.handle_frame(syn, TO, 12.5).verdict == "allow"


def test_an_idle_entry_not_yet_collected_is_gone_for_new_packets():
    core = make_core(options={"check": "every-packet"})
    syn = tcp_frame(GW, MAC_A1, "203.0.113.5", IP_A1, 50000, 5432, SYN)
    assert core.handle_frame(syn, TO, 1.0).verdict == "deny"
    core.configure(HostConfig(HOST, {TAG: slice_cfg(
        options={"check": "every-packet"}, sets={"admins": ("203.0.113.0/24",)})}), 2.0)
    assert core.handle_frame(syn, TO, 10.9).verdict == "deny"     # refreshed: 20.9
    res = core.handle_frame(syn, TO, 20.9)
    assert res.verdict == "allow" and res.new


def test_removed_slice_drops_entries_and_deletes_flows():
    other = slice_cfg(tag=6, middlebox="fw2")
    core = make_core(slice_cfg(), other)
    core.handle_frame(out_syn(), FROM, 1.0)
    flows = core.handle_frame(in_tcp(SYN | ACK), TO, 1.1).add
    core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53), tci(6, 0), 1.0)
    ids = {s["tag"]: s["id"] for s in core.slice_list()}
    changes = core.configure(HostConfig(HOST, {6: other}), 2.0)
    assert sorted(changes.delete, key=lambda f: f.table) == sorted(flows, key=lambda f: f.table)
    assert core.conn_count() == {"total": 1, "slices": [{"tag": 6, "middlebox": "fw2",
                                                          "entries": 1}]}
    assert core.handle_frame(out_syn(), FROM, 3.0).verdict == "unknown_tag"
    # The tag comes back: a new slice (new internal id), no old state.
    core.configure(HostConfig(HOST, {TAG: slice_cfg(), 6: other}), 4.0)
    new_ids = {s["tag"]: s["id"] for s in core.slice_list()}
    assert new_ids[6] == ids[6] and new_ids[TAG] not in ids.values()


def test_tag_moving_to_another_middlebox_is_a_new_slice():
    core = make_core()
    core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53), FROM, 1.0)
    changes = core.configure(HostConfig(HOST, {TAG: slice_cfg(middlebox="fw9")}), 2.0)
    assert len(changes.delete) == 2 and core.conn_count()["total"] == 0


def test_vm_leaving_keeps_its_entries_but_new_packets_are_unknown():
    core = make_core()
    core.handle_frame(out_syn(), FROM, 1.0)
    core.configure(HostConfig(HOST, {TAG: slice_cfg(vms=VMS[1:])}), 2.0)
    assert core.conn_count()["total"] == 1
    assert core.handle_frame(in_tcp(SYN | ACK), TO, 2.1).verdict == "unknown_vm"
    assert core.expire(100.0) == [] and core.conn_count()["total"] == 0


# ------------------------------------------------------------ flow events

def established(core, sport=40000, now=1.0):
    core.handle_frame(out_syn(sport=sport), FROM, now)
    res = core.handle_frame(in_tcp(SYN | ACK, dport=sport), TO, now)
    return by_table(res.add)


def test_flow_stats_fold_counters_and_report_orphans():
    core = make_core()
    flows = established(core)
    fwd, rev = flows[P.FROM_VM_CACHE.table_id], flows[P.TO_VM_CACHE.table_id]
    stray = fwd.__class__(fwd.table, fwd.priority, fwd.match, fwd.instructions,
                          cookie=DC | TAG << 28 | 999999, idle_timeout=5)
    orphans = core.flow_stats([(fwd, 10, 1000, 3), (rev, 0, 0, 3), (stray, 1, 1, 1)], 50.0)
    assert orphans == [stray]
    [c] = core.conn_list()
    syn_len = len(out_syn())
    assert (c["packets_orig"], c["bytes_orig"], c["packets_reply"]) == (11, 1000 + syn_len, 1)
    assert c["last_seen"] == 50.0 and c["expires"] == 3650.0
    # Cumulative counts: only the growth is added.
    core.flow_stats([(fwd, 10, 1000), (rev, 4, 400)], 60.0)
    [c] = core.conn_list()
    assert (c["packets_orig"], c["packets_reply"], c["bytes_reply"]) == (11, 5, 400 + syn_len)
    assert c["last_seen"] == 60.0


def test_udp_reply_seen_only_in_flow_stats_marks_replied():
    core = make_core()
    flows = by_table(core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53),
                                       FROM, 1.0).add)
    core.flow_stats([(flows[P.TO_VM_CACHE.table_id], 2, 200)], 10.0)
    assert core.conn_list()[0]["state"] == "replied"


def test_flow_removed_by_idle_timeout_removes_the_entry():
    core = make_core()
    flows = established(core)
    fwd, rev = flows[P.FROM_VM_CACHE.table_id], flows[P.TO_VM_CACHE.table_id]
    core.flow_removed(fwd.cookie, 7, 700, 4000.0, table_id=fwd.table)
    [c] = core.conn_list()
    assert c["offloaded"] and c["packets_orig"] == 8
    # One flow gone: the next packet in that direction re-installs it alone.
    res = core.handle_frame(out_tcp(PSH | ACK, payload=b"x"), FROM, 4000.5)
    assert res.verdict == "allow" and res.add == [fwd]
    core.flow_removed(fwd.cookie, 0, 0, 8000.0, table_id=fwd.table)
    core.flow_removed(rev.cookie, 3, 300, 8000.0, table_id=rev.table)
    assert core.conn_count()["total"] == 0
    assert core.stats()["expired"] == 1


def test_flow_removed_without_table_id_and_for_flows_we_deleted():
    core = make_core()
    flows = established(core)
    res = core.handle_frame(out_tcp(FIN | ACK), FROM, 2.0)
    assert len(res.delete) == 2
    # The datapath confirms our deletes: counters folded, the entry stays.
    core.flow_removed(flows[P.FROM_VM_CACHE.table_id].cookie, 5, 500, 2.1)
    core.flow_removed(flows[P.TO_VM_CACHE.table_id].cookie, 6, 600, 2.1)
    [c] = core.conn_list()
    assert c["state"] == "fin_wait" and c["packets_orig"] == 2 + 5
    assert c["packets_reply"] == 1 + 6
    # Unknown cookies and other owners' cookies are ignored.
    core.flow_removed(DC | TAG << 28 | 12345, 1, 1, 3.0)
    core.flow_removed(P.COOKIE | 1, 1, 1, 3.0)
    assert core.conn_count()["total"] == 1


def test_udp_answered_while_offloaded_outlives_its_flows():
    core = make_core()
    flows = by_table(core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53),
                                       FROM, 1.0).add)
    rev = flows[P.TO_VM_CACHE.table_id]
    core.flow_stats([(rev, 1, 100)], 2.0)                   # replied: 180 s
    for f in flows.values():
        core.flow_removed(f.cookie, 1, 100, 32.0, table_id=f.table)
    [c] = core.conn_list()
    assert c["state"] == "replied" and not c["offloaded"]
    res = core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 1, 53), FROM, 40.0)
    assert res.verdict == "allow" and not res.new
    assert {f.idle_timeout for f in res.add} == {180}


def test_expire_collects_idle_entries_and_returns_their_flows():
    core = make_core()
    core.handle_frame(out_syn(sport=1), FROM, 0.0)                     # syn_sent, 30 s
    [drop] = core.handle_frame(in_tcp(SYN, sport=2, dport=8080), TO, 0.0).add   # 10 s
    flows = established(core, sport=3, now=0.0)                        # 3600 s
    assert core.expire(29.0) == [] and core.conn_count()["total"] == 3
    assert core.expire(30.0) == [] and core.conn_count()["total"] == 2
    # Offloaded entries are the datapath's to time out (flow_removed); the
    # daemon collects them itself only OFFLOAD_GRACE (60 s) later.
    assert core.expire(69.0) == []
    assert core.expire(70.0) == [drop]
    assert core.expire(3659.0) == []
    assert sorted(core.expire(3660.0), key=lambda f: f.table) == \
        [flows[P.FROM_VM_CACHE.table_id], flows[P.TO_VM_CACHE.table_id]]
    assert core.conn_count()["total"] == 0 and core.stats()["expired"] == 3


def test_flush_one_vm_or_all():
    core = make_core()
    established(core)
    core.handle_frame(tcp_frame(MAC_A2, GW, IP_A2, IP_OUT, 1, 2, SYN), FROM, 1.0)
    assert len(core.flush("a1")) == 2
    assert [c["vm"] for c in core.conn_list()] == ["a2"]
    assert core.flush() == [] and core.conn_count()["total"] == 0


# ------------------------------------------------------------ restart

def _busy_core():
    core = make_core()
    flows = []
    flows += established(core, sport=40000).values()
    flows += core.handle_frame(udp_frame(MAC_A1, GW, IP_A1, IP_OUT, 5353, 53), FROM, 1.0).add
    flows += core.handle_frame(in_tcp(SYN, sport=1, dport=8080), TO, 1.0).add     # deny
    core.handle_frame(out_syn(sport=40001), FROM, 1.0)                             # syn_sent
    core.flow_stats([(f, 3, 300) for f in flows], 2.0)
    return core, flows


def test_export_import_round_trip():
    core, flows = _busy_core()
    saved = json.loads(json.dumps(core.export_state()))
    assert len(json.dumps(saved)) < 2000
    new = make_core()
    changes = new.import_state(saved, flows, 3.0)
    assert changes.add == [] and changes.delete == []
    assert new.conn_list() == core.conn_list()
    # Established traffic goes on; new ids continue above the highest seen.
    assert new.handle_frame(out_tcp(PSH | ACK, payload=b"x"), FROM, 4.0).verdict == "allow"
    new.handle_frame(out_syn(sport=40002), FROM, 4.0)
    ids = [c["id"] for c in new.conn_list()]
    assert max(ids) == ids[-1] and len(set(ids)) == len(ids)
    assert max(ids) > max(c["id"] for c in core.conn_list())


def test_import_rebuilds_offloaded_entries_from_flows_alone():
    core, flows = _busy_core()
    new = make_core()
    changes = new.import_state({}, flows, 3.0)
    assert changes.delete == []
    conns = {(c["proto"], c["vm_port"], c["peer_port"]): c for c in new.conn_list()}
    assert len(conns) == 3                                       # syn_sent had no flows
    tcp = conns[(TCP, 40000, 443)]
    assert (tcp["verdict"], tcp["state"], tcp["offloaded"], tcp["vm"]) == \
        ("allow", "established", True, "a1")
    assert conns[(TCP, 8080, 1)]["verdict"] == "deny"
    assert conns[(UDP, 5353, 53)]["state"] == "unreplied"
    # A mid-connection segment is passed (not invalid), a FIN deletes the flows.
    assert new.handle_frame(in_tcp(PSH | ACK, payload=b"y"), TO, 4.0).verdict == "allow"
    res = new.handle_frame(out_tcp(FIN | ACK), FROM, 5.0)
    assert res.verdict == "allow" and len(res.delete) == 2
    # Flows of an unknown slice or VM are handed back for deletion.
    other = make_core(vms=VMS[1:])
    changes = other.import_state({}, flows, 3.0)
    assert len(changes.delete) == len(flows) and other.conn_count()["total"] == 0


def test_import_keeps_saved_entries_without_flows_until_they_expire():
    core, flows = _busy_core()
    saved = core.export_state()
    new = make_core()
    new.import_state(saved, [], 20.0)
    # Their flows are gone (idled out while the daemon was down): kept if
    # not expired: established (3600 s), UDP replied in the stats (180 s),
    # syn_sent (30 s from 1.0); the denied one (10 s from 2.0) is gone.
    assert sorted((c["proto"], c["state"]) for c in new.conn_list()) == \
        [(TCP, "established"), (TCP, "syn_sent"), (UDP, "replied")]
    assert not any(c["offloaded"] for c in new.conn_list())
    later = make_core()
    later.import_state(saved, [], 40.0)
    assert sorted(c["state"] for c in later.conn_list()) == ["established", "replied"]


def test_import_survives_garbage_state():
    new = make_core()
    for state in ({}, {"version": 99}, {"version": 1, "entries": [[1, 2, 3]]},
                  {"version": 1, "fields": ["tag"], "entries": [["x"]]}, None, [],
                  {"version": 1, "fields": 3, "entries": {}},
                  {"version": 1, "entries": [[TAG, "a1", 1, 6, 7, 1, "1.2.3.4", 2, "out",
                                               "allow", "established", 0, 1.0, 1.0, 0, 0,
                                               0, 0, 0, 0, [0, 0, 0, 0], "r"]]}):
        changes = new.import_state(state, [], 1.0)
        assert changes.delete == [] and new.conn_count()["total"] == 0


# ------------------------------------------------------------ inspection

def test_inspection_shapes():
    core = make_core(rules=WEB_RULES + (rule(1, "from-vm", "proto=tcp dport=1-99999",
                                                 "allow"),),
                     options={"timeout-udp": "x", "tier-order": "tenant-first"})
    established(core)
    assert core.slice_list() == [{"tag": TAG, "id": 1, "middlebox": "fw1", "chain": [],
                                  "tenant": "ta", "switch": "ls-a", "vni": 1001,
                                  "local_vms": 2, "entries": 1}]
    [shown] = core.rules_show("fw1")
    assert core.rules_show("nope") == []
    assert [r["priority"] for r in shown["to-vm"]] == [100, 90, 80, 70, 60]
    assert shown["from-vm"][0] == {"priority": 100, "tier": "tenant", "match": "any",
                                   "action": "allow", "uuid": "from-vm-100-allow"}
    assert shown["default_action"] == "deny" and shown["tier_order"] == "tenant-first"
    assert len(shown["errors"]) == 2                  # bad port range, bad timeout
    st = core.stats()
    for key in ("frames", "malformed", "unknown_tag", "unknown_vm", "non_ip", "invalid",
                "passed", "dropped", "flows_added", "flows_deleted", "offloaded", "entries",
                "decisions", "slices"):
        assert key in st
    assert st["offloaded"] == 1 and st["flows_added"] == 2
    assert st["slices"][0]["packets"] == 2
    json.dumps([core.slice_list(), core.conn_list(), core.conn_count(), shown, st])
    c = core.conn_list()[0]
    assert (c["vm_ip"], c["peer_ip"], c["proto"]) == (IP_A1, IP_OUT, TCP)


def test_first_fragment_is_judged_like_a_packet():
    core = make_core()
    udp = struct.pack("!HHHH", 5353, 53, 100, 0) + b"x" * 16
    frame = eth(GW, MAC_A1, 0x0800, ipv4(IP_A1, IP_OUT, UDP, udp, frag=0x2000))
    assert core.handle_frame(frame, FROM, 1.0).verdict == "allow"
    later = eth(GW, MAC_A1, 0x0800, ipv4(IP_A1, IP_OUT, UDP, b"y" * 16, frag=0x0003))
    assert core.handle_frame(later, FROM, 1.0).verdict == "malformed"
