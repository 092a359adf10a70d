"""middlebox.core with service chains: load balancer, SNAT, DNAT, IDS and
health probes, seen from outside (frames written back, flows, entries)."""

import dataclasses

from middlebox.config import (HostConfig, NatRuleSpec, RuleSpec, ServiceSpec, SliceConfig,
                              VipSpec, VmSpec)
from middlebox.core import MiddleboxCore
from middlebox.packet import parse_frame
from ryu_apps import pipeline as P
from middlebox.packet import ip_text
from test_mb_frames import ACK, RST, SYN, checksums_ok, tcp_frame, tci, udp_frame

HOST = "h1"
TAG = 7
R = P.ROUTER_MAC
C1 = VmSpec("c1", "02:00:00:00:01:01", "10.1.0.11", HOST)       # client, here
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.1.0.21", HOST)       # backends
B2 = VmSpec("b2", "02:00:00:00:01:22", "10.1.0.22", "h2")
B3 = VmSpec("b3", "02:00:00:00:01:23", "10.1.0.23", None)
VIP, VPORT = "10.1.0.100", 80
SERVER = "198.51.100.10"
EXT = "203.0.113.100"
EXT_CLIENT = "198.51.100.20"
EXT_MAC = "02:ee:ff:00:00:01"
FROM, TO, EXT_IN = (tci(TAG, P.STAGE_FROM_VM), tci(TAG, P.STAGE_TO_VM),
                    tci(TAG, P.STAGE_FROM_EXTERNAL))
DC = P.DAEMON_COOKIE

FW = ServiceSpec("fw", "firewall", "deny", {}, (
    RuleSpec(100, "from-vm", "any", "allow", "tenant", "r-out"),
    RuleSpec(100, "to-vm", "proto=tcp dport=8080", "allow", "tenant", "r-web"),
    RuleSpec(90, "to-vm", "proto=tcp dport=22", "deny", "tenant", "r-ssh")))
SNAT = NatRuleSpec("snat-1", "snat", (EXT,), "", port_range=(1024, 65535))
DNAT = NatRuleSpec("dnat-1", "dnat", (EXT,), "10.1.0.21", "tcp", 8443, 8080)
NAT = ServiceSpec("nat", "nat", nat_rules=(SNAT, DNAT))


def lb(algorithm="round-robin", backends=(B1, B2, B3), options=None):
    return ServiceSpec("lb", "lb", vips=(VipSpec(
        "vip-1", VIP, VPORT, "tcp", algorithm,
        tuple(sorted((b.ip, 8080) for b in backends)),
        dict(options or {"health-check": "none"})),))


def chain_cfg(services, block=("203.0.113.100", 4096, 4099), vms=(C1, B1, B2, B3)):
    return SliceConfig(tag=TAG, middlebox="fw", type="firewall", tenant="t", switch="ls",
                       vni=3001, default_action="deny", options={}, rules=FW.rules,
                       vms=vms, services=tuple(services), subnet="10.1.0.0/24",
                       gateway="10.1.0.1", snat_blocks={"snat-1": block})


def make(services, **kw):
    core = MiddleboxCore(HOST)
    core.configure(HostConfig(HOST, {TAG: chain_cfg(services, **kw)}), 0.0)
    return core


def syn(dst=VIP, dport=VPORT, sport=40000, src=C1.ip, src_mac=C1.mac):
    return tcp_frame(src_mac, R, src, dst, sport, dport, SYN, seq=100)


def checked(flows):
    for f in flows:
        assert P.check_flow(f, owner=DC) is f
    return flows


def fields(frame):
    p = parse_frame(frame, 0)
    return (p.eth_src, p.eth_dst, ip_text(p.src), p.sport, ip_text(p.dst), p.dport)


# ------------------------------------------------------------ load balancer

def test_lb_rewrites_to_a_backend_and_holds_the_syn_behind_its_reply_catcher():
    core = make([FW, lb()])
    res = core.handle_frame(syn(), FROM, 1.0)
    assert res.verdict == "allow" and res.out == []
    [(frame, out_tci)] = res.held
    assert out_tci == FROM and checksums_ok(frame)
    src_mac, dst_mac, src, sport, dst, dport = fields(frame)
    assert (src_mac, src, sport, dport) == (R, C1.ip, 40000, 8080)
    backend = {B1.ip: B1, B2.ip: B2, B3.ip: B3}[dst]
    assert dst_mac == backend.mac
    [catcher] = checked(res.add)
    assert catcher.table == P.TO_VM_STEERING.table_id
    assert catcher.priority == P.PRIO_STEER_CATCHER
    m = dict(catcher.match)
    assert (m["ipv4_src"], m["tcp_src"], m["ipv4_dst"], m["tcp_dst"]) == (dst, 8080, C1.ip,
                                                                          40000)
    # The backend's SYN-ACK comes back at the client's to-VM stage: the VIP again.
    back = tcp_frame(backend.mac, C1.mac, dst, C1.ip, 8080, 40000, SYN | ACK, 900, 101)
    res = core.handle_frame(back, TO, 1.1)
    [(frame, out_tci)] = res.out
    assert out_tci == TO and checksums_ok(frame)
    assert fields(frame) == (R, C1.mac, VIP, VPORT, C1.ip, 40000)
    flows = checked(res.add)
    by_table = {f.table: f for f in flows}
    fwd = by_table[P.FROM_VM_CACHE.table_id]
    assert dict(fwd.match)["ipv4_dst"] == VIP
    assert ("set_field", "ipv4_dst", dst) in fwd.instructions[0][1]
    assert fwd.instructions[1] == ("goto", P.L2_LOOKUP.table_id)
    rev = by_table[P.TO_VM_CACHE.table_id]
    assert dict(rev.match)["ipv4_src"] == dst
    assert ("set_field", "ipv4_src", VIP) in rev.instructions[0][1]
    [conn] = core.conn_list()
    assert conn["xlate"] == {"kind": "lb", "wire_vm": "10.1.0.11:40000",
                             "wire_peer": "%s:8080" % dst}


def test_lb_round_robin_spreads_and_every_connection_stays_pinned():
    core = make([lb()])
    chosen = {}
    for port in range(40000, 40006):
        [(frame, _)] = core.handle_frame(syn(sport=port), FROM, 1.0).held
        chosen[port] = fields(frame)[4]
    assert sorted(set(chosen.values())) == [B1.ip, B2.ip, B3.ip]
    assert [chosen[p] for p in range(40000, 40003)] == [chosen[p] for p in range(40003, 40006)]
    for port, backend in chosen.items():
        ack = tcp_frame(C1.mac, R, C1.ip, VIP, port, VPORT, ACK, 101, 901)
        [(frame, _)] = core.handle_frame(ack, FROM, 2.0).out
        assert fields(frame)[4] == backend


def test_lb_least_connections_and_source_hash():
    core = make([lb("least-connections")])
    picks = [fields(core.handle_frame(syn(sport=p), FROM, 1.0).held[0][0])[4]
             for p in range(40000, 40006)]
    assert sorted(picks) == sorted([B1.ip, B2.ip, B3.ip] * 2)
    core = make([lb("source-hash")])
    picks = {fields(core.handle_frame(syn(sport=p), FROM, 1.0).held[0][0])[4]
             for p in range(40000, 40010)}
    assert len(picks) == 1


def test_lb_closing_a_connection_frees_its_backend_count_and_catcher():
    core = make([lb("least-connections")])
    res = core.handle_frame(syn(), FROM, 1.0)
    [catcher] = res.add
    backend = fields(res.held[0][0])[4]
    assert sum(b["connections"] for b in core.lb_list()[0]["backends"]) == 1
    mac = {B1.ip: B1.mac, B2.ip: B2.mac, B3.ip: B3.mac}[backend]
    rst = tcp_frame(mac, C1.mac, backend, C1.ip, 8080, 40000, RST | ACK, 0, 101)
    core.handle_frame(rst, TO, 1.2)
    core.expire(100.0)
    res = core.flush()
    assert sum(b["connections"] for b in core.lb_list()[0]["backends"]) == 0
    assert core.conn_count()["total"] == 0


def test_lb_without_a_healthy_backend_rejects():
    core = make([lb(backends=(B1,), options={"health-rise": "1", "health-fall": "1"})])
    probes = core.tick(1.0)
    [(probe, ptci)] = probes
    assert ptci == TO
    p = parse_frame(probe, ptci)
    assert (p.eth_src, p.eth_dst, p.dport, p.tcp_flags) == (R, B1.mac, 8080, SYN)
    # The backend refuses: RST -> down (fall 1).
    answer = tcp_frame(B1.mac, R, B1.ip, "10.1.0.1", 8080, p.sport, RST | ACK, 0, p.seq + 1)
    core.handle_frame(answer, tci(TAG, P.STAGE_PROBE), 1.1)
    assert core.lb_list()[0]["backends"][0]["health"] == "down"
    res = core.handle_frame(syn(), FROM, 1.2)
    assert res.verdict == "reject" and len(res.out) == 1
    assert parse_frame(res.out[0][0], 0).tcp_flags & RST
    # It comes back: a SYN-ACK to the next probe; the daemon resets the probe.
    [(probe, _)] = core.tick(4.0)
    p = parse_frame(probe, 0)
    answer = tcp_frame(B1.mac, R, B1.ip, "10.1.0.1", 8080, p.sport, SYN | ACK, 5, p.seq + 1)
    res = core.handle_frame(answer, tci(TAG, P.STAGE_PROBE), 4.1)
    [(rst, _)] = res.out
    assert parse_frame(rst, 0).tcp_flags == RST
    assert core.lb_list()[0]["backends"][0]["health"] == "up"
    assert core.handle_frame(syn(sport=40001), FROM, 4.2).verdict == "allow"


def test_probe_timeouts_count_as_failures_and_only_local_backends_are_probed():
    core = make([lb(options={"health-rise": "1", "health-fall": "2",
                             "health-interval": "1", "health-timeout": "0.5"})])
    sent = core.tick(1.0)
    assert [parse_frame(f, 0).eth_dst for f, _ in sent] == [B1.mac]   # B2, B3 elsewhere
    core.tick(1.6)
    assert core.lb_list()[0]["backends"][0]["health"] == "up"       # fall 2: one failure
    core.tick(2.1)
    core.tick(2.7)
    assert core.lb_list()[0]["backends"][0]["health"] == "down"


# ------------------------------------------------------------ NAT

def test_snat_allocates_from_the_hosts_block_and_translates_both_ways():
    core = make([FW, lb(), NAT])
    res = core.handle_frame(syn(dst=SERVER, dport=80), FROM, 1.0)
    [(frame, _)] = res.out                  # no catcher: replies come via EXTERNAL_IN
    assert res.add == []
    src_mac, dst_mac, src, sport, dst, dport = fields(frame)
    assert (src, dst, dport, dst_mac) == (EXT, SERVER, 80, R) and 4096 <= sport <= 4099
    assert checksums_ok(frame)
    reply = tcp_frame(EXT_MAC, R, SERVER, EXT, 80, sport, SYN | ACK, 900, 101)
    res = core.handle_frame(reply, EXT_IN, 1.1)
    [(frame, out_tci)] = res.out
    assert out_tci == EXT_IN and fields(frame) == (R, C1.mac, SERVER, 80, C1.ip, 40000)
    flows = {f.table: f for f in checked(res.add)}
    assert flows[P.FROM_VM_CACHE.table_id].instructions[1] == (
        "goto", P.EXTERNAL_OUT.table_id)
    assert dict(flows[P.EXTERNAL_CACHE.table_id].match)["tcp_dst"] == sport
    # Every connection a distinct port; the block's 4 ports run out cleanly.
    ports = {sport}
    for p in range(40001, 40004):
        [(frame, _)] = core.handle_frame(syn(dst=SERVER, dport=80, sport=p), FROM, 1.2).out
        ports.add(fields(frame)[3])
    assert ports == {4096, 4097, 4098, 4099}
    res = core.handle_frame(syn(dst=SERVER, dport=80, sport=40010), FROM, 1.3)
    assert (res.verdict, res.out) == ("nat_exhausted", [])
    assert any("4096-4099" in line for line in core.log)
    # Closing one frees its port for the next connection.
    core.handle_frame(tcp_frame(EXT_MAC, R, SERVER, EXT, 80, sport, RST, 901, 0),
                      EXT_IN, 1.4)
    core.expire(100.0)
    [(frame, _)] = core.handle_frame(syn(dst=SERVER, dport=80, sport=40011), FROM,
                                     101.0).out
    assert fields(frame)[3] == sport


def test_snat_never_applies_inside_the_subnet_or_to_the_vip():
    core = make([lb(), NAT])
    res = core.handle_frame(syn(dst="10.1.0.22", dport=8080), FROM, 1.0)
    assert fields(res.out[0][0])[2] == C1.ip
    res = core.handle_frame(syn(sport=40001), FROM, 1.0)
    assert fields(res.held[0][0])[2] == C1.ip                  # LB, not SNAT


def test_snat_without_a_port_block_refuses_with_one_line():
    core = MiddleboxCore(HOST)
    cfg = dataclasses.replace(chain_cfg([NAT]), snat_blocks={})
    core.configure(HostConfig(HOST, {TAG: cfg}), 0.0)
    res = core.handle_frame(syn(dst=SERVER, dport=80), FROM, 1.0)
    assert (res.verdict, res.out) == ("no_nat", [])
    assert len(core.log) == 1 and "no port block" in core.log[0]


def test_dnat_opens_inbound_connections_through_the_firewall():
    core = make([FW, NAT])
    inbound = tcp_frame(EXT_MAC, R, EXT_CLIENT, EXT, 50000, 8443, SYN, 7)
    res = core.handle_frame(inbound, EXT_IN, 1.0)
    [(frame, out_tci)] = res.held
    assert out_tci == EXT_IN
    assert fields(frame) == (R, B1.mac, EXT_CLIENT, 50000, B1.ip, 8080)
    [catcher] = checked(res.add)
    assert catcher.table == P.FROM_VM_STEERING.table_id
    reply = tcp_frame(B1.mac, R, B1.ip, EXT_CLIENT, 8080, 50000, SYN | ACK, 1, 8)
    [(frame, _)] = core.handle_frame(reply, FROM, 1.1).out
    assert fields(frame)[2:] == (EXT, 8443, EXT_CLIENT, 50000)
    # Unknown external destinations and other ports open nothing.
    for frame in (tcp_frame(EXT_MAC, R, EXT_CLIENT, EXT, 50001, 9999, SYN, 7),
                  tcp_frame(EXT_MAC, R, EXT_CLIENT, "203.0.113.9", 50001, 8443, SYN, 7),
                  udp_frame(EXT_MAC, R, EXT_CLIENT, EXT, 50001, 8443)):
        assert core.handle_frame(frame, EXT_IN, 1.2).verdict == "no_nat"


def test_restart_keeps_translations():
    core = make([lb(), NAT])
    core.handle_frame(syn(dst=SERVER, dport=80), FROM, 1.0)
    lbres = core.handle_frame(syn(sport=40001), FROM, 1.0)
    state = core.export_state()
    new = make([lb(), NAT])
    changes = new.import_state(state, [], 2.0)
    assert [f.table for f in changes.add] == [P.TO_VM_STEERING.table_id]   # catcher back
    assert {c["xlate"]["kind"] for c in new.conn_list()} == {"lb", "snat"}
    # The restored SNAT port is taken: the next connection gets another one.
    [(frame, _)] = new.handle_frame(syn(dst=SERVER, dport=81, sport=40002), FROM, 2.1).out
    assert fields(frame)[3] == 4097
    assert lbres.held


# ------------------------------------------------------------ IDS

def test_ids_only_chain_observes_copies_and_detects_a_scan_and_a_syn_flood():
    ids = ServiceSpec("ids", "ids", options={"scan-threshold": "5", "scan-window": "10",
                                            "synflood-threshold": "20",
                                            "synflood-window": "2"})
    core = make([ids])
    for port in range(1, 6):
        frame = tcp_frame("02:00:00:00:09:09", B1.mac, "10.1.0.99", B1.ip, 5555, port, SYN)
        res = core.handle_frame(frame, TO, 1.0)
        assert (res.verdict, res.out, res.add) == ("copy", [], [])
    assert core.alerts == []
    core.tick(1.5)
    [alert] = core.alerts
    assert (alert["kind"], alert["source"], alert["count"]) == ("port-scan", "10.1.0.99", 5)
    core.tick(3.0)
    assert len(core.alerts) == 1                               # once per window
    for i in range(20):
        frame = tcp_frame("02:00:00:00:09:09", B1.mac, "10.9.%d.1" % i, B1.ip, 5555, 80, SYN)
        core.handle_frame(frame, TO, 4.0)
    assert [a["kind"] for a in core.alerts] == ["port-scan", "syn-flood"]


def test_ids_in_a_chain_never_changes_the_verdict():
    ids = ServiceSpec("ids", "ids", options={"scan-threshold": "2"})
    core = make([FW, ids])
    ok = tcp_frame("02:00:00:00:09:09", B1.mac, "10.1.0.99", B1.ip, 5555, 8080, SYN)
    bad = tcp_frame("02:00:00:00:09:09", B1.mac, "10.1.0.99", B1.ip, 5555, 22, SYN)
    assert core.handle_frame(ok, TO, 1.0).verdict == "allow"
    assert core.handle_frame(bad, TO, 1.0).verdict == "deny"
    core.tick(2.0)
    assert [a["kind"] for a in core.alerts] == ["port-scan"]


class FakeShared:
    def __init__(self):
        self.published, self.alerts, self.remote = {}, [], {}

    def publish(self, middlebox, service, key, value):
        self.published[(middlebox, service, key)] = value

    def get(self, middlebox, service):
        out = {}
        for (mb, svc, key), value in self.published.items():
            if (mb, svc) == (middlebox, service):
                out.setdefault(key, {})[HOST] = value
        for (mb, svc, key, host), value in self.remote.items():
            if (mb, svc) == (middlebox, service):
                out.setdefault(key, {})[host] = value
        return out

    def report_alert(self, *args):
        self.alerts.append(args)


def test_shared_health_and_scan_counts_from_other_hosts():
    core = make([lb(options={"health-check": "tcp"})])
    core.shared = shared = FakeShared()
    core.tick(1.0)
    assert shared.published[("lb", "lb-health", "10.1.0.100:80/tcp")] == {
        "10.1.0.21:8080": "up"}
    # h2 says its backend is down: no new connection goes there.
    shared.remote[("lb", "lb-health", "10.1.0.100:80/tcp", "h2")] = {"10.1.0.22:8080": "down"}
    picks = {fields(core.handle_frame(syn(sport=p), FROM, 1.1).held[0][0])[4]
             for p in range(40000, 40006)}
    assert picks == {B1.ip, B3.ip}
    ids = ServiceSpec("ids", "ids", options={"scan-threshold": "4"})
    core = make([ids])
    core.shared = shared = FakeShared()
    for port in (1, 2):
        core.handle_frame(tcp_frame("02:00:00:00:09:09", B1.mac, "10.1.0.99", B1.ip, 5, port,
                                    SYN), TO, 1.0)
    shared.remote[("ids", "ids-scan", "targets", "h0")] = {"10.1.0.99": ["10.1.0.30:1",
                                                                        "10.1.0.30:2"]}
    core.tick(1.5)
    assert core.alerts == []                   # h0 sorts first: it reports the scan
    shared.remote.clear()
    shared.remote[("ids", "ids-scan", "targets", "h3")] = {"10.1.0.99": ["10.1.0.30:1",
                                                                        "10.1.0.30:2"]}
    core = make([ids])
    core.shared = shared
    for port in (1, 2):
        core.handle_frame(tcp_frame("02:00:00:00:09:09", B1.mac, "10.1.0.99", B1.ip, 5, port,
                                    SYN), TO, 1.0)
    core.tick(1.5)
    [alert] = core.alerts
    assert alert["count"] == 4 and alert["hosts"] == ["h1", "h3"]
    assert shared.alerts[0][:5] == ("ids", "port-scan", "10.1.0.99", "", 4)


def test_udp_snat_and_malformed_frames_in_a_chain():
    core = make([FW, lb(), NAT])
    res = core.handle_frame(udp_frame(C1.mac, R, C1.ip, SERVER, 5353, 53), FROM, 1.0)
    [(frame, _)] = res.out
    assert fields(frame)[2] == EXT and checksums_ok(frame)
    for n in range(0, 60, 3):
        core.handle_frame(syn(dst=SERVER)[:n], FROM, 1.0)
        core.handle_frame(syn(dst=SERVER)[:n], EXT_IN, 1.0)
    assert core.stats()["internal_errors"] == 0
