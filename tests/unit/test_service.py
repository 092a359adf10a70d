"""middlebox.service.Service: what mbxd answers when the switch asks it.

Seen from outside: frames written back on the middlebox port (with their
PCP), and packet-outs -- run here in the simulated switch
(tests/unit/fakeoftable.py) to see which conntrack entry they leave and
where the packet goes on."""

import dataclasses
import random
import struct

import pytest
from fakeoftable import Conntrack, FakeOFTable
from test_mb_frames import eth, icmp_frame, ipv4, tcp_frame, udp_frame

from middlebox import dataplane as D
from mbxmodel.services import RuleInfo, VipInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from middlebox.packet import (IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN,
                              build_tcp, ip_int, ip_text, parse_frame)
from middlebox.service import Service
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow

TAG = 5
R = P.ROUTER_MAC
GATEWAY = "10.0.0.254"
C1 = VmSpec("c1", "02:00:00:00:01:11", "10.0.0.11", "h1")
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.0.0.21", "h1")      # a backend on this host
B2 = VmSpec("b2", "02:00:00:00:01:22", "10.0.0.22", "h3")
P1 = VmSpec("p1", "02:00:00:00:01:31", "10.0.0.31", "h3")
OUTSIDE = "198.51.100.10"
VIP, VIP2, VIP3 = "10.0.0.100", "10.0.0.101", "10.0.0.102"
ZONES = {"c1": 21, "b1": 22}
WEB = RuleInfo(100, "from-vm", "proto=tcp dport=80", "allow", uuid="r-web")
TLS = RuleInfo(100, "from-vm", "proto=tcp dport=443", "allow", uuid="r-tls")
SMTP = RuleInfo(100, "from-vm", "proto=tcp dport=25", "reject", uuid="r-smtp")
TFTP = RuleInfo(100, "from-vm", "proto=udp dport=69", "reject", uuid="r-tftp")
ICMP = RuleInfo(90, "from-vm", "proto=icmp", "reject", uuid="r-icmp")
APP = RuleInfo(100, "to-vm", "proto=tcp dport=8080", "allow", uuid="r-app")
RULES = (WEB, TLS, SMTP, TFTP, ICMP, APP)
FROM, TO, EXT = (TAG | s << 13 for s in (P.STAGE_FROM_VM, P.STAGE_TO_VM,
                                          P.STAGE_FROM_EXTERNAL))
CHECK_FROM = TAG | (P.CHECK_BASE + P.STAGE_FROM_VM) << 13
CHECK_TO = TAG | (P.CHECK_BASE + P.STAGE_TO_VM) << 13
COPY = TAG | P.COPY << 13
PROBE = TAG | P.STAGE_PROBE << 13
DELIVER = TAG | P.DELIVER << 13
HEALTH = {"health-fall": "1", "health-rise": "1", "health-interval": "2",
          "health-timeout": "1"}


def config(rules=RULES, check="offload", ids=None, host="h1"):
    fw = ServiceSpec("fw-a", "firewall", "deny", options={"check": check}, rules=rules)
    lb = ServiceSpec("lb-a", "lb", "allow", vips=(
        VipInfo("v1", "lb-a", VIP, 80, "tcp", "round-robin", ((B1.ip, 8080), (B2.ip, 8080)), HEALTH),
        VipInfo("v2", "lb-a", VIP2, 443, "tcp", "round-robin", ((B1.ip, 8443),), HEALTH),
        VipInfo("v3", "lb-a", VIP3, 80, "tcp", "round-robin", (("10.9.9.9", 80),), HEALTH)))
    services = (fw, lb) + ((ServiceSpec("ids-a", "ids", options=ids),) if ids else ())
    cfg = SliceConfig(tag=TAG, middlebox="fw-a", type="firewall", tenant="t", switch="ls-a",
                      vni=1001, default_action="deny", options={"check": check},
                      rules=rules, vms=(C1, B1, B2, P1), services=services,
                      subnet="10.0.0.0/24", gateway=GATEWAY)
    return HostConfig(host, {TAG: cfg})


def service(host="h1", **kw):
    svc = Service(host, zone_of=ZONES.get)
    svc.configure(config(host=host, **kw))
    return svc


def syn(src_vm, dst, dport, sport=40000, seq=1000):
    return build_tcp(src_vm.mac, R, ip_int(src_vm.ip), ip_int(dst), sport, dport, seq, 0,
                     TCP_SYN)


# ------------------------------------------------------------ the simulated switch


def packet_state(frame):
    """The simulated switch's fields of ``frame``."""
    pkt = parse_frame(frame, 0)
    state = dict(eth_type=0x0800, eth_src=pkt.eth_src, eth_dst=pkt.eth_dst,
                 ip_proto=pkt.proto, ipv4_src=ip_text(pkt.src), ipv4_dst=ip_text(pkt.dst),
                 in_port=0xFFFFFFFD)
    if pkt.proto == IPPROTO_TCP:
        state.update(tcp_src=pkt.sport, tcp_dst=pkt.dport, tcp_flags=pkt.tcp_flags)
    elif pkt.proto == IPPROTO_ICMP:
        state.update(icmpv4_type=pkt.icmp_type, icmpv4_code=pkt.icmp_code,
                     icmp_id=struct.unpack_from("!H", frame, pkt.l4 + 4)[0])
    else:
        state.update(udp_src=pkt.sport, udp_dst=pkt.dport)
    return state


def packet_out(frame, actions, ct):
    """Run a packet-out in the simulated switch (conntrack ``ct``); FROM_VM_ROUTE
    outputs what reaches it on port 9.  The trace."""
    flows = [Flow(0, 1, (("eth_type", 0x0800),), (("apply", tuple(actions)),)),
             Flow(P.FROM_VM_ROUTE.table_id, 1, (), (("apply", (("output", 9),)),))]
    return FakeOFTable(flows, conntrack=ct).trace(packet_state(frame))


def picked(svc, frame):
    """The backend a VIP's first packet went to, and the client's zone's entry."""
    res = svc.handle_frame(frame, FROM, 1.0)
    assert res.verdict == "allow" and res.out == []
    [(po_frame, actions)] = res.packet_outs
    assert po_frame == frame
    ct = Conntrack()
    [out] = packet_out(po_frame, actions, ct).outputs
    [entry] = ct.dump()
    return (out.get("ipv4_dst"), out.get("tcp_dst")), entry, out


# ------------------------------------------------------------ rejects


def test_a_rejected_tcp_connection_is_answered_with_a_rst_delivered_to_the_sender():
    svc = service()
    frame = syn(C1, P1.ip, 25, seq=7000)
    res = svc.handle_frame(frame, FROM, 1.0)
    assert res.verdict == "reject" and res.packet_outs == []
    [(answer, tci)] = res.out
    assert tci == DELIVER
    rst = parse_frame(answer, tci)
    assert (rst.eth_src, rst.eth_dst) == (R, C1.mac)
    assert (ip_text(rst.src), rst.sport, ip_text(rst.dst), rst.dport) == (P1.ip, 25, C1.ip,
                                                                          40000)
    assert rst.tcp_flags == TCP_RST | TCP_ACK and rst.ack == 7001
    assert svc.stats()["rejects_sent"] == 1


def test_a_rejected_udp_datagram_is_answered_with_icmp_admin_prohibited():
    svc = service()
    frame = udp_frame(C1.mac, R, C1.ip, P1.ip, 5000, 69)
    res = svc.handle_frame(frame, FROM, 1.0)
    [(answer, tci)] = res.out
    icmp = parse_frame(answer, tci)
    assert tci == DELIVER and res.verdict == "reject"
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code) == (IPPROTO_ICMP, 3, 13)
    assert (ip_text(icmp.src), ip_text(icmp.dst)) == (P1.ip, C1.ip)
    # The error quotes the datagram it answers.
    assert icmp.related == (17, ip_int(C1.ip), ip_int(P1.ip), 5000, 69)


@pytest.mark.parametrize("frame", [
    build_tcp(C1.mac, R, ip_int(C1.ip), ip_int(P1.ip), 40000, 25, 1, 0, TCP_RST),
    icmp_frame(C1.mac, R, C1.ip, P1.ip, 3, 3, payload=b"\0" * 28),
    udp_frame(C1.mac, R, C1.ip, "255.255.255.255", 5000, 69),
    udp_frame(C1.mac, R, C1.ip, "224.0.0.9", 5000, 69),
], ids=["rst", "icmp-error", "broadcast", "multicast"])
def test_no_answer_to_a_rst_an_icmp_error_or_a_broadcast(frame):
    svc = service()
    res = svc.handle_frame(frame, FROM, 1.0)
    # Nothing made here: a RST (which cannot open a connection) is given
    # back for the switch to judge, the others are dropped.
    assert all(out == (frame, FROM) for out in res.out) and res.packet_outs == []
    assert svc.stats()["rejects_sent"] == 0


def test_a_packet_the_rules_allow_is_given_back_to_its_stage():
    svc = service()
    frame = syn(C1, P1.ip, 80)
    res = svc.handle_frame(frame, FROM, 1.0)
    assert res.out == [(frame, FROM)] and res.packet_outs == []


def test_a_tcp_packet_that_cannot_open_a_connection_goes_back_to_the_switch_unanswered():
    """Only a hold sends such a packet (the switch drops it otherwise); a
    hold that just ended gives it back: its connection landed or not, the
    switch judges it, and nothing answers it."""
    svc = service()
    ack = build_tcp(C1.mac, R, ip_int(C1.ip), ip_int(P1.ip), 40000, 25, 1, 1, TCP_ACK)
    res = svc.handle_frame(ack, FROM, 1.0)
    assert res.verdict == "resumed" and res.out == [(ack, FROM)]
    assert svc.stats()["rejects_sent"] == 0


# ------------------------------------------------------------ load balancer


def test_a_vips_first_packet_is_committed_to_a_backend_by_one_packet_out():
    svc = service()
    backend, entry, out = picked(svc, syn(C1, VIP, 80))
    assert backend == (B1.ip, 8080) and out.get("eth_dst") == B1.mac
    # In the client's zone, translated to the backend, marked as the
    # service's pick, with the deciding rule and the VIP in its label.
    assert entry.zone == ZONES["c1"] and entry.nat == "dst"
    assert entry.orig == (C1.ip, 40000, VIP, 80) and entry.reply == (B1.ip, 8080, C1.ip,
                                                                     40000)
    assert entry.mark == TAG | D.MARK_SERVICE
    assert entry.label == D.rule_id(WEB) | D.service_id(VIP + ":80/tcp") << \
        D.LABEL_SERVICE_OFS
    assert svc.stats()["lb_picks"] == 1


def test_the_packet_carries_on_from_the_route_table_as_resumed():
    svc = service()
    res = svc.handle_frame(syn(C1, VIP, 80), FROM, 1.0)
    [(frame, actions)] = res.packet_outs
    trace = packet_out(frame, actions, Conntrack())
    [routed] = trace.at(P.FROM_VM_ROUTE.table_id)
    assert routed[P.REG_SLICE] == TAG and routed[P.REG_ZONE] == ZONES["c1"]
    assert routed[P.REG_SERVICE] & P.RESUMED[P.STAGE_FROM_VM]
    assert routed["metadata"] == 1001


def test_round_robin_rotates_over_the_backends_on_each_host():
    svc = service()
    got = [picked(svc, syn(C1, VIP, 80, sport=40000 + i))[0] for i in range(3)]
    assert got == [(B1.ip, 8080), (B2.ip, 8080), (B1.ip, 8080)]
    # Another host rotates on its own.
    other = service(host="h3")
    assert picked(other, syn(C1, VIP, 80))[0] == (B1.ip, 8080)


def probe_answer(frame, flags):
    """The backend's answer to a health probe ``frame``."""
    p = parse_frame(frame, DELIVER)
    return build_tcp(B1.mac, R, p.dst, p.src, p.dport, p.sport, 5000, p.seq + 1, flags)


def test_health_probes_go_to_this_hosts_backends_and_a_refusal_takes_one_out():
    svc = service()
    probes = svc.tick(10.0)
    # b1 serves both VIPs and runs here: one probe per backend; b2 is h3's to probe.
    assert sorted((ip_text(parse_frame(f, t).dst), parse_frame(f, t).dport, t)
                  for f, t in probes) == [(B1.ip, 8080, DELIVER), (B1.ip, 8443, DELIVER)]
    first = next(f for f, _ in probes if parse_frame(f, DELIVER).dport == 8080)
    assert (ip_text(parse_frame(first, 0).src), parse_frame(first, 0).tcp_flags) == \
        (GATEWAY, TCP_SYN)
    assert svc.handle_frame(probe_answer(first, TCP_RST | TCP_ACK), PROBE, 10.1).out == []
    got = {picked(svc, syn(C1, VIP, 80, sport=s))[0] for s in range(40000, 40004)}
    assert got == {(B2.ip, 8080)}
    [view] = [v for v in svc.lb_list() if v["vip"] == VIP + ":80/tcp"]
    assert [b["health"] for b in view["backends"]] == ["down", "up"]


def test_a_probe_answered_with_syn_ack_is_closed_and_keeps_the_backend():
    svc = service()
    first = next(f for f, _ in svc.tick(10.0) if parse_frame(f, DELIVER).dport == 8080)
    res = svc.handle_frame(probe_answer(first, TCP_SYN | TCP_ACK), PROBE, 10.1)
    [(rst, tci)] = res.out
    assert tci == DELIVER and parse_frame(rst, tci).tcp_flags == TCP_RST
    assert picked(svc, syn(C1, VIP, 80))[0] == (B1.ip, 8080)


def test_with_no_healthy_backend_the_connection_is_rejected():
    svc = service()
    probe = next(f for f, _ in svc.tick(10.0) if parse_frame(f, DELIVER).dport == 8443)
    svc.handle_frame(probe_answer(probe, TCP_RST | TCP_ACK), PROBE, 10.1)
    res = svc.handle_frame(syn(C1, VIP2, 443), FROM, 10.2)
    assert res.verdict == "reject" and res.packet_outs == []
    [(answer, tci)] = res.out
    assert tci == DELIVER and parse_frame(answer, tci).tcp_flags & TCP_RST
    assert svc.stats()["no_backend"] == 1


def test_a_backend_that_is_no_vm_of_the_switch_is_never_picked():
    svc = service()
    res = svc.handle_frame(syn(C1, VIP3, 80), FROM, 1.0)
    assert res.verdict == "reject" and res.packet_outs == []


def test_a_vip_the_firewall_refuses_is_never_balanced():
    svc = service(rules=(SMTP,))
    res = svc.handle_frame(syn(C1, VIP, 80), FROM, 1.0)
    assert res.packet_outs == [] and res.out == [] and svc.stats()["lb_picks"] == 0


# ------------------------------------------------------------ checks


def ack(src_vm_mac, dst_mac, src, sport, dst, dport):
    return build_tcp(src_vm_mac, dst_mac, ip_int(src), ip_int(dst), sport, dport, 10, 20,
                     TCP_ACK)


def test_a_checked_packet_allowed_today_is_given_back_to_its_stage():
    svc = service(check="every-packet")
    frame = ack(C1.mac, R, C1.ip, 40001, P1.ip, 80)
    res = svc.handle_frame(frame, CHECK_FROM, 1.0)
    assert res.verdict == "allow" and res.out == [(frame, FROM)] and res.packet_outs == []
    assert svc.stats()["checked"] == 1


def test_a_checked_connection_refused_today_is_cut_and_its_packet_dropped():
    svc = service(check="every-packet")
    ct = Conntrack()
    entry = ct.commit_entry(ZONES["c1"], 6, C1.ip, 40002, P1.ip, 22,
                            mark=TAG | 3 << D.MARK_COUNT_OFS, label=0x77)
    entry.seen_reply = True
    frame = ack(C1.mac, R, C1.ip, 40002, P1.ip, 22)
    res = svc.handle_frame(frame, CHECK_FROM, 1.0)
    assert res.verdict == "cut" and res.out == []
    [(po_frame, actions)] = res.packet_outs
    packet_out(po_frame, actions, ct)
    assert entry.mark == TAG | 3 << D.MARK_COUNT_OFS | D.MARK_BLOCKED and entry.label == 0x77
    assert len(ct.dump()) == 1
    assert svc.stats()["cut"] == 1


def test_the_origin_bit_decides_whose_rules_judge_a_checked_packet():
    svc = service(check="every-packet")
    # p1:80 -> c1:40001 at c1's to-VM stage: a reply of a connection c1 opened
    # to port 80 (from-vm rules: allowed) ...
    reply = ack(P1.mac, C1.mac, P1.ip, 80, C1.ip, 40001)
    assert svc.handle_frame(reply, CHECK_TO, 1.0).out == [(reply, TO)]
    # ... or, with the VID's origin bit, p1 opened it to c1's port 40001
    # (to-vm rules: only 8080 is allowed in).
    res = svc.handle_frame(reply, CHECK_TO | P.VID_ORIGIN_IN, 1.0)
    assert res.verdict == "cut" and res.out == []
    # c1 answering p1's connection to its 8080: judged by to-vm rules, allowed.
    answer = ack(C1.mac, R, C1.ip, 8080, P1.ip, 50000)
    assert svc.handle_frame(answer, CHECK_FROM | P.VID_ORIGIN_IN, 1.0).out == [(answer, FROM)]
    assert svc.handle_frame(answer, CHECK_FROM, 1.0).verdict == "cut"


# ------------------------------------------------------------ copies


def test_copies_feed_the_scan_detector_and_are_never_answered():
    svc = service(ids={"scan-threshold": "3", "scan-window": "10"})
    for port in (22, 23, 25):
        frame = tcp_frame(R, C1.mac, OUTSIDE, C1.ip, 50000, port, TCP_SYN)
        res = svc.handle_frame(frame, COPY, 1.0)
        assert res.verdict == "copy" and res.out == [] and res.packet_outs == []
    svc.tick(1.5)
    [alert] = svc.alerts
    assert (alert["kind"], alert["source"], alert["count"]) == ("port-scan", OUTSIDE, 3)
    assert svc.stats()["copies"] == 3 and svc.stats()["ids_alerts"] == 1


def test_copies_of_packets_that_open_nothing_are_not_scans():
    svc = service(ids={"scan-threshold": "3", "scan-window": "10"})
    for port in (22, 23, 25):
        svc.handle_frame(tcp_frame(R, C1.mac, OUTSIDE, C1.ip, 50000, port, TCP_ACK), COPY, 1.0)
    svc.tick(1.5)
    assert svc.alerts == [] and svc.stats()["copies"] == 3


# ------------------------------------------------------------ bad input


BAD = {
    "empty": (b"", FROM, "malformed"),
    "short ethernet": (b"\x02" * 13, FROM, "malformed"),
    "truncated ip": (syn(C1, P1.ip, 80)[:30], FROM, "malformed"),
    "fragment": (eth(R, C1.mac, 0x0800, ipv4(C1.ip, P1.ip, 17, b"\0" * 8, frag=5)), FROM,
                 "malformed"),
    "unknown tag": (syn(C1, P1.ip, 80), 77 | P.STAGE_FROM_VM << 13, "unknown_tag"),
    "arp": (eth("ff:ff:ff:ff:ff:ff", C1.mac, 0x0806, b"\0" * 28), FROM, "non_ip"),
    "unknown vm": (build_tcp("02:00:00:00:09:99", R, ip_int("10.0.0.99"), ip_int(P1.ip),
                             1, 80, 1, 0, TCP_SYN), FROM, "unknown_vm"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_frame_it_cannot_judge_is_counted_and_dropped(case):
    frame, tci, counter = BAD[case]
    svc = service()
    res = svc.handle_frame(frame, tci, 1.0)
    assert res.verdict == counter and res.out == [] and res.packet_outs == []
    stats = svc.stats()
    assert stats[counter] == 1 and stats["dropped"] == 1 and stats["frames"] == 1


def test_no_frame_ever_raises():
    svc = service(check="every-packet", ids={"scan-threshold": "3"})
    rng = random.Random(7)
    base = [syn(C1, VIP, 80), udp_frame(C1.mac, R, C1.ip, P1.ip, 5000, 69),
            icmp_frame(C1.mac, R, C1.ip, P1.ip, 8)]
    for i in range(3000):
        frame = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 6)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        frame = bytes(frame[:rng.randrange(len(frame) + 1)])
        res = svc.handle_frame(frame, rng.randrange(1 << 16), float(i))
        assert res.verdict is not None
    stats = svc.stats()
    assert stats["frames"] == 3000 and stats["internal_errors"] == 0, stats["last_error"]


# ------------------------------------------------------------ decision counters


def test_flow_stats_become_decision_counters_by_verdict_and_rule():
    svc = service()
    decisions = {1: D.Decision(TAG, 0, "allow", "r-web"), 2: D.Decision(TAG, 0, "reject",
                                                                         "r-smtp"),
                 3: D.Decision(TAG, 1, "deny", "default"), 4: D.Decision(TAG, 0, "allow",
                                                                          "r-tls")}
    svc.account(decisions, [(1, 10), (2, 3), (3, 4), (4, 2), (99, 1000)])
    assert svc.stats()["decisions"] == {"allow": 12, "deny": 4, "reject": 3}
    [shown] = svc.rules_show()
    hits = {r["uuid"]: r["hits"] for r in shown["from-vm"]}
    assert (hits["r-web"], hits["r-smtp"], hits["r-tls"], shown["hits"]["default"]) == \
        (10, 3, 2, 4)
    # Later stats: counters follow, and never go back when a flow is replaced.
    svc.account(decisions, [(1, 15), (2, 0), (3, 4), (4, 2)])
    assert svc.stats()["decisions"] == {"allow": 17, "deny": 4, "reject": 3}
    assert {r["uuid"]: r["hits"] for r in svc.rules_show()[0]["from-vm"]}["r-web"] == 15
    # A reinstalled flow starts again at 0: what it counts since is added.
    svc.account(decisions, [(1, 2), (2, 1), (3, 4), (4, 2)])
    assert svc.stats()["decisions"] == {"allow": 19, "deny": 4, "reject": 4}
    assert {r["uuid"]: r["hits"] for r in svc.rules_show()[0]["from-vm"]}["r-web"] == 17


def test_rules_show_filters_by_middlebox_and_lists_config_errors():
    bad = RuleInfo(1, "sideways", "any", "allow", uuid="r-bad")
    svc = service(rules=RULES + (bad,))
    [shown] = svc.rules_show("fw-a")
    assert any("r-bad" in e for e in shown["errors"])
    assert svc.rules_show("other") == []


def test_a_reconfigured_slice_keeps_its_rotation_and_counters():
    svc = service()
    picked(svc, syn(C1, VIP, 80))
    cfg = config()
    slice_ = cfg.slices[TAG]
    svc.configure(dataclasses.replace(cfg, slices={TAG: dataclasses.replace(
        slice_, rules=slice_.rules + (RuleInfo(1, "to-vm", "any", "deny", uuid="r-x"),))}))
    assert picked(svc, syn(C1, VIP, 80, sport=40001))[0] == (B2.ip, 8080)
    assert svc.stats()["lb_picks"] == 2
