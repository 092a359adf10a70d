"""The migration manager (middlebox.migration) between two daemons: the
protocol a source and a destination speak (docs/migration.md), through fake
channels and row writers, each daemon with its real service, zones, hold
buffer and connection table over a simulated switch whose conntrack takes
the packet-outs the daemon sends (tests/unit/fakeoftable.py).  Seen from
outside: messages on the wire (framed as migchan frames them), connections
in the destination's zones, frames written on the middlebox port, rows
written."""

import dataclasses
import struct
import logging
import types

import pytest
from fakeoftable import Conntrack, FakeOFTable
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofparser

from middlebox import conn as C
from middlebox import dataplane as D
from middlebox import main as daemon_main
from middlebox import migchan, migration, vmstate
from middlebox.arrivals import Arrivals
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from middlebox.conntable import ConnTable
from middlebox.migchan import Event
from middlebox.migration import HELLO_WAIT, STREAM_INTERVAL, MigrationManager, RowWriter
from middlebox.packet import TCP_ACK, TCP_SYN, build_tcp, ip_int, ip_text, parse_frame
from middlebox.service import Service
from middlebox.vmstate import digest
from middlebox.zones import ZoneMap
from ryu_apps import ofmsg
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow

UUID = "0c0ffee0-0000-4000-8000-000000000001"
TOKEN = "ab" * 16
OUT = "out-" + UUID
PEERS = {h: types.SimpleNamespace(name=h, migration_address="ssl:1.2.3.%d:6650" % i,
                                  encap_ip="192.168.0.%d" % i)
         for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))}
WALL = [1000.0]

TAGS = {"h1": 5, "h2": 9, "h3": 11}          # one chain, its tag on each host
CHAIN = ("fw-a", "lb-a", "nat-a")
SNAT_UUID = "5a7e0000-0000-4000-8000-000000000001"
SNAT_IP, OUTSIDE, VIP = "203.0.113.5", "198.51.100.10", "10.0.0.100"
BLOCKS = {"h1": (SNAT_IP, 4096, 8191), "h2": (SNAT_IP, 8192, 12287),
          "h3": (SNAT_IP, 12288, 16383)}
VIP_SID = D.service_id("%s:80/tcp" % VIP)
C1 = VmSpec("c1", "02:00:00:00:01:11", "10.0.0.11", "h1")      # the VM that moves
A1 = VmSpec("a1", "02:00:00:00:01:12", "10.0.0.12", "h1")      # stays on h1
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.0.0.21", "h3")
P1 = VmSpec("p1", "02:00:00:00:01:31", "10.0.0.31", "h3")
WEB = RuleInfo(100, "from-vm", "proto=tcp dport=80", "allow", uuid="r-web")
DNS = RuleInfo(100, "from-vm", "proto=udp dport=53", "allow", uuid="r-dns")
APP = RuleInfo(100, "to-vm", "proto=tcp dport=8080", "allow", uuid="r-app")
RULES = (WEB, DNS, APP)


@pytest.fixture(autouse=True)
def wall_clock(monkeypatch):
    """The manager's wall clock (holds, timelines) under the test's control."""
    WALL[0] = 1000.0
    monkeypatch.setattr(migration, "time", types.SimpleNamespace(
        time=lambda: WALL[0], monotonic=lambda: WALL[0]))


def host_config(host, c1_host="h1", rules=RULES, options=None):
    options = dict(options or {})
    fw = ServiceSpec("fw-a", "firewall", "deny", options=options, rules=tuple(rules))
    lb = ServiceSpec("lb-a", "lb", "allow", vips=(
        VipInfo("v1", "lb-a", VIP, 80, "tcp", "round-robin", ((B1.ip, 8080),),
                {"health-check": "none"}),))
    nat = ServiceSpec("nat-a", "nat", "allow", nat_rules=(
        NatRuleInfo(SNAT_UUID, "nat-a", "snat", (SNAT_IP,), "10.0.0.0/24"),))
    cfg = SliceConfig(tag=TAGS[host], middlebox="fw-a", type="firewall", tenant="t",
                      switch="ls-a", vni=1001, default_action="deny", options=options,
                      rules=tuple(rules),
                      vms=(dataclasses.replace(C1, host=c1_host), A1, B1, P1),
                      services=(fw, lb, nat), subnet="10.0.0.0/24", gateway="10.0.0.254",
                      snat_blocks={SNAT_UUID: BLOCKS[host]})
    return HostConfig(host, {TAGS[host]: cfg})


def row(status="begun", path="announced", uuid=UUID, token=TOKEN, vm="c1", src="h1",
        dst="h2", wait_ms=None):
    return types.SimpleNamespace(
        uuid=uuid, vm=vm, source=src, destination=dst, path=path, status=status,
        token=token, timeline={"begun": int(WALL[0] * 1000)}, stats={}, outcome="",
        options={} if wait_ms is None else {"wait-ms": str(wait_ms)})


# ------------------------------------------------------------ the fakes


def conn_of(e):
    """A simulated conntrack entry as the Conn a dump of it gives."""
    (src, sport, dst, dport), (rsrc, rsport, rdst, rdport) = e.orig, e.reply
    state = ("ESTABLISHED" if e.seen_reply else "SYN_SENT") if e.proto == 6 else ""
    return C.Conn(e.proto, ip_int(src), sport, ip_int(dst), dport, ip_int(rsrc), rsport,
                  ip_int(rdst), rdport, e.zone, e.mark, e.label, state)


def packet_state(frame):
    pkt = parse_frame(frame, 0)
    state = dict(eth_type=0x0800, ip_proto=pkt.proto, ipv4_src=ip_text(pkt.src),
                 ipv4_dst=ip_text(pkt.dst), eth_src=pkt.eth_src, eth_dst=pkt.eth_dst)
    if pkt.proto == 6:
        state.update(tcp_src=pkt.sport, tcp_dst=pkt.dport, tcp_flags=pkt.tcp_flags)
    elif pkt.proto == 17:
        state.update(udp_src=pkt.sport, udp_dst=pkt.dport)
    else:
        state.update(icmpv4_type=pkt.icmp_type, icmpv4_code=pkt.icmp_code,
                     icmp_id=struct.unpack_from("!H", frame, pkt.l4 + 4)[0])
    return state


def decode_packet_out(buf):
    """(actions, frame) of one PACKET_OUT message."""
    _, msg_type, length, _ = struct.unpack_from(ofp.OFP_HEADER_PACK_STR, buf)
    assert msg_type == ofp.OFPT_PACKET_OUT and length == len(buf)
    _, _, actions_len = struct.unpack_from(ofp.OFP_PACKET_OUT_PACK_STR, buf,
                                           ofp.OFP_HEADER_SIZE)
    offset, end = ofp.OFP_PACKET_OUT_SIZE, ofp.OFP_PACKET_OUT_SIZE + actions_len
    actions = []
    while offset < end:
        action = ofparser.OFPAction.parser(buf, offset)
        actions.append(ofmsg._from_action(action))
        offset += action.len
    return tuple(actions), bytes(buf[end:])


class Switch:
    """One host's Open vSwitch as mbxd sees it: conntrack zones it dumps and
    flushes (the vswitch client) and packet-outs run through conntrack."""

    def __init__(self):
        self.ct = Conntrack()
        self.packet_outs = 0

    def seed(self, c):
        nat = None
        if c.snat is not None:
            nat = ("src", ip_text(c.snat[0]), c.snat[1])
        elif c.dnat is not None:
            nat = ("dst", ip_text(c.dnat[0]), c.dnat[1])
        e = self.ct.commit_entry(c.zone, c.proto, ip_text(c.src), c.sport, ip_text(c.dst),
                                 c.dport, nat, c.mark, c.label)
        e.seen_reply = c.state != "SYN_SENT"

    def conns(self, zone):
        return [conn_of(e) for e in self.ct.dump(zone)]

    def dump_zone(self, zone, stats=False):
        return "".join(C.dump_line(c, stats) + "\n" for c in self.conns(zone))

    def flush_zone(self, zone):
        for e in self.ct.dump(zone):
            self.ct._remove(e)

    def send_packet_outs(self, messages):
        data = b"".join(messages)        # as OfConn takes them: whole messages, joined
        offset, xids = 0, []
        while offset < len(data):
            length = struct.unpack_from("!H", data, offset + 2)[0]
            raw, offset = data[offset:offset + length], offset + length
            actions, frame = decode_packet_out(raw)
            flows = [Flow(0, 1, (("eth_type", 0x0800),), (("apply", actions),))]
            FakeOFTable(flows, conntrack=self.ct).trace(packet_state(frame))
            self.packet_outs += 1
            xids.append(self.packet_outs)
        return xids


class Chan:
    """The TLS channel: messages framed and read back as migchan does."""

    def __init__(self):
        self.sent, self.closed, self.connects = [], [], []
        self.queued = {}                # sid -> what waits for the handshake
        self.closing = set()            # sessions closed but not finished yet
        self.forgotten = []             # sids whose record (and pipe) the channel dropped

    def connect(self, sid, address, peer_host):
        if sid in self.closing:
            raise ValueError("session %r is open" % (sid,))
        self.connects.append((sid, address, peer_host))
        self.queued[sid] = []

    def opened(self, sid):
        """The handshake with the host asked for is done: queued frames go."""
        self.sent += self.queued.pop(sid, [])

    def send(self, sid, message):
        frame = migchan.encode(message)
        [received] = migchan.Decoder().feed(frame)
        (self.queued[sid] if sid in self.queued else self.sent).append(
            (sid, received, len(frame)))

    def close(self, sid, discard=False):
        self.closed.append(sid)
        if discard:
            self.queued.pop(sid, None)
        else:
            self.opened(sid)

    def stats(self, sid):
        return 4321, 99

    def forget(self, sid):
        self.forgotten.append(sid)

    def take(self):
        out, self.sent = self.sent, []
        return [(m, n) for _, m, n in out]


class Writer:
    def __init__(self):
        self.writes = []

    def write(self, uuid, status=None, from_statuses=None, timeline=None, stats=None,
              outcome=None):
        self.writes.append({"uuid": uuid, "status": status, "from_statuses": from_statuses,
                            "timeline": dict(timeline or {}), "stats": dict(stats or {}),
                            "outcome": outcome})

    def statuses(self):
        return [w["status"] for w in self.writes if w["status"]]

    def merged(self, column):
        out = {}
        for w in self.writes:
            out.update(w[column])
        return out

    def outcomes(self):
        return [w["outcome"] for w in self.writes if w["outcome"]]


class Node:
    """One mbxd: its real service, zones, hold buffer, connection table and
    migration manager; the switch, channel and southbound row writer are fakes.
    Results, barriers and zones are carried out by the daemon's own code
    (middlebox.main.Daemon)."""

    send_results = daemon_main.Daemon.send_results
    wanted_zones = daemon_main.Daemon.wanted_zones
    barrier_done = daemon_main.Daemon._barrier

    def __init__(self, host, config=None):
        self.host = host
        self.args = types.SimpleNamespace(host=host)
        self.zones = ZoneMap(first=10 * TAGS[host])
        self.service = Service(host, zone_of=self.zones.vm)
        self.arrivals = Arrivals()
        self.service.arrivals = self.arrivals
        self.switch = self.vswitch = Switch()
        self.conns = ConnTable(self.switch, self.zones)
        self.of = self.port = self
        self.frames = []                # written on the middlebox port
        self.barriers = []
        self._after = {}
        self.chan, self.writer = Chan(), Writer()
        self.migrations = self.mgr = MigrationManager(host, self, self.chan, self.writer,
                                                      clock=lambda: WALL[0])
        self.dirty = False
        self.configure(config or host_config(host))

    # the daemon's I/O, as the manager and main.Daemon use it
    def configure(self, config):
        self.config = config
        self.service.configure(config)
        self.replan()

    def replan(self):
        new, released = self.zones.update(self.wanted_zones())
        for zone in list(new.values()) + list(released.values()):
            self.switch.flush_zone(zone)
        self.dirty = False

    def replan_soon(self):
        self.dirty = True

    def send_packet_outs(self, messages):
        return self.switch.send_packet_outs(messages)

    def barrier(self):
        self.barriers.append(100 + len(self.barriers))
        return self.barriers[-1]

    def send(self, frame, tci):
        self.frames.append((frame, tci))

    # the daemon's loop
    def loop(self, now):
        if self.dirty or self.arrivals.changed():
            self.replan()
        for vm in self.arrivals.due(WALL[0]):
            self.mgr.fallback(vm, now)
        self.mgr.run(now)
        if self.dirty:
            self.replan()

    def handle(self, frame, tci):
        """A frame from the switch to the service, carried out."""
        res = self.service.handle_frame(frame, tci, WALL[0])
        self.send_results([res])
        return res.verdict

    # what a test looks at
    def vm_conns(self, vm="c1"):
        zone = self.zones.vm(vm)
        return [] if zone is None else self.switch.conns(zone)

    def snat_conns(self):
        zone = self.zones.get(("snat", SNAT_UUID))
        return [] if zone is None else self.switch.conns(zone)

    def deliver(self, messages, sid="in-1", peer="h1", now=10.0):
        for m in messages:
            m, size = m if isinstance(m, tuple) else (m, 100)
            self.mgr.on_event(Event("message", sid, peer, m, None, size), now)

    def accept(self, sid="in-1", peer="h1", now=10.0):
        self.mgr.on_event(Event("accepted", sid, peer, None, None, None), now)

    def sent_messages(self):
        return [m for _, m, _ in self.chan.sent]

    def nacks(self):
        return [m["error"] for m in self.sent_messages() if m["type"] == "nack"]


def tcp(src, sport, dst, dport, reply=None, mark=0, label=0, proto=6, zone=0):
    rsrc, rsport, rdst, rdport = reply or (dst, dport, src, sport)
    return C.Conn(proto, ip_int(src), sport, ip_int(dst), dport, ip_int(rsrc), rsport,
                  ip_int(rdst), rdport, zone, mark, label, "ESTABLISHED" if proto == 6 else "")


# c1's connections on h1: to the VIP (b1), to the internet (SNAT, port 4100
# of h1's block), one p1 opened, a UDP stream; and a1's, which stays.
def c1_connections(tag=TAGS["h1"]):
    return {
        "lb": tcp(C1.ip, 40000, VIP, 80, (B1.ip, 8080, C1.ip, 40000),
                  mark=tag | D.MARK_SERVICE,
                  label=D.rule_id(WEB) | VIP_SID << D.LABEL_SERVICE_OFS),
        "out": tcp(C1.ip, 40001, OUTSIDE, 80, label=D.rule_id(WEB), mark=tag),
        "in": tcp(P1.ip, 50000, C1.ip, 8080, mark=tag | D.MARK_IN, label=D.rule_id(APP)),
        "udp": tcp(C1.ip, 5353, P1.ip, 53, proto=17, mark=tag, label=D.rule_id(DNS)),
    }


OUT_SNAT = tcp(C1.ip, 40001, OUTSIDE, 80, (OUTSIDE, 80, SNAT_IP, 4100), mark=TAGS["h1"],
               label=D.service_id(SNAT_UUID) << D.LABEL_SERVICE_OFS)
A1_OUT = tcp(A1.ip, 41000, OUTSIDE, 80, mark=TAGS["h1"], label=D.rule_id(WEB))
# Frames of c1's connections, as the switch hands them to the service.
STRAY = build_tcp(P1.mac, C1.mac, ip_int(P1.ip), ip_int(C1.ip), 50000, 8080, 6, 8, TCP_ACK)
ORPHAN = build_tcp(P1.mac, C1.mac, ip_int(P1.ip), ip_int(C1.ip), 50001, 8080, 6, 8, TCP_ACK)
TO2 = TAGS["h2"] | P.STAGE_TO_VM << 13


def source(options=None, connections=None):
    node = Node("h1", host_config("h1", options=options))
    zone, snat_zone = node.zones.vm("c1"), node.zones.get(("snat", SNAT_UUID))
    for c in (connections or c1_connections()).values():
        node.switch.seed(c._replace(zone=zone))
    node.switch.seed(OUT_SNAT._replace(zone=snat_zone))
    node.switch.seed(A1_OUT._replace(zone=node.zones.vm("a1")))
    return node


def destination(options=None):
    return Node("h2", host_config("h2", options=options))


def same(conns):
    """Connections as any host has them: tuples, translation, origin and
    service bits, rule, state (not this host's zone, tag or counters)."""
    return sorted((c[:9], c.mark & ~D.MARK_TAG_MASK, c.label, c.state) for c in conns)


def records_of(node, vm="c1"):
    """The records a datapath gather of ``vm`` at ``node`` gives."""
    snat = {SNAT_UUID: node.snat_conns()}
    return vmstate.gather(vm, node.service.slices, node.vm_conns(vm), snat)


def transfer(records, uuid=UUID, token=TOKEN, vm="c1"):
    """A source's messages for ``records``: hello, snapshot, final."""
    return [{"type": "hello", "version": migration.PROTOCOL_VERSION, "migration": uuid,
             "token": token, "vm": vm, "source": "h1", "destination": "h2"},
            {"type": "state", "migration": uuid, "seq": 1, "kind": "snapshot",
             "data": C.encode([c for _, c in records], [s for s, _ in records]),
             "removed": []},
            {"type": "final", "migration": uuid, "seq": 2, "count": len(records),
             "digest": digest(records)}]


def decoded(message):
    """The records a state message carries."""
    if "data" not in message:
        return []
    conns, slices = C.decode(message["data"])
    return list(zip(slices, conns))


class Pair:
    """h1 (source, c1 runs there) and h2 (destination)."""

    def __init__(self, src=None, dst=None):
        self.src = src or source()
        self.dst = dst or destination()
        self.now = 10.0

    def set_rows(self, *rows):
        for n in (self.src, self.dst):
            n.mgr.set_rows(list(rows), PEERS, self.now)
            n.loop(self.now)

    def moved(self, host="h2"):
        """c1's port is bound at ``host`` now (the controller's config)."""
        for n in (self.src, self.dst):
            n.configure(host_config(n.host, c1_host=host, options=n.config.slices[
                TAGS[n.host]].options))

    def connect(self):
        assert self.src.chan.connects == [(OUT, "ssl:1.2.3.2:6650", "h2")]
        self.src.chan.opened(OUT)
        self.src.mgr.on_event(Event("connected", OUT, "h2", None, None, None), self.now)
        self.dst.accept(now=self.now)

    def unannounced(self, seen_moved=True):
        """c1 moves unannounced, whole: its state lands and is acknowledged;
        ``seen_moved``: the daemons saw its port move before the ack."""
        self.set_rows(row("begun", path="unannounced"))
        self.connect()
        self.to_dst()
        self.imported()
        if seen_moved:
            self.moved()
        self.to_src()

    def to_dst(self):
        msgs = self.src.chan.take()
        self.dst.deliver(msgs, now=self.now)
        self.dst.loop(self.now)
        return [m for m, _ in msgs]

    def to_src(self):
        msgs = self.dst.chan.take()
        for m, size in msgs:
            self.src.mgr.on_event(Event("message", OUT, "h2", m, None, size), self.now)
        self.src.loop(self.now)
        return [m for m, _ in msgs]

    def run(self, dt=0.0):
        self.now += dt
        for n in (self.src, self.dst):
            n.loop(self.now)

    def imported(self):
        """Barrier of the destination's import taken: it acknowledges."""
        [xid] = self.dst.barriers
        self.dst.barrier_done(xid)
        self.dst.loop(self.now)


# ------------------------------------------------------------ announced


def test_announced_migration_streams_then_imports_whole_and_the_source_releases():
    p = Pair()
    before = same(p.src.vm_conns())
    p.set_rows(row("begun"))
    p.connect()
    hello, snap, snat = p.to_dst()
    assert hello["type"] == "hello" and hello["token"] == TOKEN and hello["vm"] == "c1"
    # The snapshot a zone at a time: the VM's, then the SNAT zone's.
    assert snap["kind"] == "snapshot" and snap["seq"] == 1 and len(decoded(snap)) == 4
    assert snat["kind"] == "changes" and snat["seq"] == 2
    assert [sl.role for sl, _ in decoded(snat)] == ["snat"]
    assert vmstate.count_connections(decoded(snap) + decoded(snat)) == 4
    assert p.src.writer.writes[-1]["status"] == "streaming"
    assert p.src.writer.writes[-1]["from_statuses"] == ("begun",)
    assert "snapshot" in p.src.writer.merged("timeline")
    # A new connection and a closed one while the VM runs at the source
    # reach h2 as changes.
    zone = p.src.zones.vm("c1")
    p.src.switch.seed(tcp(C1.ip, 40500, P1.ip, 80, mark=TAGS["h1"], zone=zone))
    gone = next(e for e in p.src.switch.ct.dump(zone) if e.proto == 17)
    p.src.switch.ct._remove(gone)
    p.run(STREAM_INTERVAL / 2)
    assert p.src.chan.sent == []
    p.run(STREAM_INTERVAL)
    [changes] = p.to_dst()
    assert changes["kind"] == "changes" and changes["seq"] == 3
    assert [c.sport for _, c in decoded(changes)] == [40500]
    assert [r[3:] for r in changes["removed"]] == [[17, ip_int(C1.ip), 5353, ip_int(P1.ip), 53]]
    assert p.dst.vm_conns() == [] and p.dst.switch.packet_outs == 0   # staged, not imported
    # Stunned: the last round and the final.
    p.set_rows(row("stunned"))
    p.run()
    [final] = p.to_dst()
    assert final["type"] == "final" and final["seq"] == 4 and final["count"] == 5
    moved = [c for c in before if c[0][2] != 5353] + same([tcp(C1.ip, 40500, P1.ip, 80)])
    assert same(p.dst.vm_conns()) == sorted(moved)
    assert {c.mark & D.MARK_TAG_MASK for c in p.dst.vm_conns()} == {TAGS["h2"]}
    # The SNAT translation lands in h2's SNAT zone with h1's port.
    assert same(p.dst.snat_conns()) == same([OUT_SNAT])
    assert p.dst.barriers == [100] and p.dst.chan.sent == []    # no ack before the barrier
    assert p.dst.writer.writes == []
    commits = p.dst.switch.packet_outs
    p.imported()
    [ack] = p.to_src()
    assert ack == {"type": "ack", "migration": UUID, "entries": 4, "commits": commits}
    [w] = p.dst.writer.writes
    assert w["status"] == "imported" and w["outcome"] is None
    assert w["stats"]["entries"] == 4 and w["stats"]["flows"] == commits
    assert "imported" in w["timeline"]
    # The source: acked, still holding c1's state until the row is done.
    assert "acked" in p.src.writer.merged("timeline")
    assert p.src.writer.merged("stats")["bytes"] == 4321
    assert OUT in p.src.chan.closed and len(p.src.vm_conns()) == 4
    p.moved()
    assert len(p.src.vm_conns()) == 4
    assert p.src.mgr.forwarders() == ()         # c1 still runs here: replies come here
    p.set_rows(row("done"))
    assert p.src.vm_conns() == [] and p.src.zones.vm("c1") is None
    assert len(p.src.mgr.forwarders()) == 1     # released: its SNAT replies go on to h2
    assert "cleaned" in p.src.writer.merged("timeline")
    # a1 never moved.
    assert same(p.src.vm_conns("a1")) == same([A1_OUT])


def test_done_before_the_ack_waits_for_the_ttl():
    p = Pair()
    p.set_rows(row("begun"))
    p.connect()
    p.moved()
    p.set_rows(row("done"))
    p.run(1.0)
    assert len(p.src.vm_conns()) == 4
    p.run(migration.DEFAULT_TTL)
    assert p.src.vm_conns() == [] and p.src.mgr.counters["cleaned"] == 1


# ------------------------------------------------------------ unannounced


def test_an_unannounced_transfer_refused_is_tried_again_once_its_session_closed():
    """The destination refused (its slice of the VM had not arrived): the
    source tries again, but not on a session still closing (the channel
    refuses to open it twice), and the state lands at the next try."""
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.src.chan.take()
    p.src.mgr.on_event(Event("message", OUT, "h2", {"type": "nack", "error": "VM c1 has "
                             "no slice or zone here"}, None, 10), p.now)
    p.src.chan.closing.add(OUT)
    p.src.chan.connects.clear()
    p.src.loop(p.now)                                   # the failed try is dropped
    p.set_rows(row("begun", path="unannounced"))        # the row is still active
    assert p.src.chan.connects == []
    p.src.chan.closing.discard(OUT)
    p.src.loop(p.now)
    p.connect()
    p.to_dst()
    p.imported()
    [w] = p.dst.writer.writes
    assert w["status"] == "done" and w["outcome"] == "ok: 4 connections"



def test_unannounced_sends_everything_at_once_and_releases_held_frames():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    assert p.dst.handle(STRAY, TO2) == "held"
    p.connect()
    msgs = p.to_dst()
    assert [m["type"] for m in msgs] == ["hello", "state", "state", "final"]
    assert not any(w["status"] for w in p.src.writer.writes)   # the row stays begun
    assert p.dst.frames == []                                   # held until the barrier
    p.imported()
    assert p.dst.frames == [(STRAY, TO2)]
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    [w] = p.dst.writer.writes
    assert w["status"] == "done" and w["outcome"] == "ok: 4 connections"
    assert w["stats"]["buffered"] == 1 and {"imported", "done"} <= set(w["timeline"])
    p.moved()
    p.to_src()
    assert p.src.vm_conns() == [] and "cleaned" in p.src.writer.merged("timeline")
    # The replica still shows the row begun (our write in flight): no new hold.
    p.set_rows(row("begun", path="unannounced"))
    assert p.dst.handle(ORPHAN, TO2) == "resumed"   # the switch judges it (and drops it)
    WALL[0] += 10
    p.run()
    assert p.dst.mgr.counters["fallbacks"] == 0 and len(p.dst.writer.writes) == 1


# ------------------------------------------------------------ rejections


def _with_record(msgs, record):
    records = decoded(msgs[1]) + [record]
    msgs[1]["data"] = C.encode([c for _, c in records], [s for s, _ in records])
    msgs[2].update(count=len(records), digest=digest(records))


def _another_vms(msgs):
    b1 = tcp(B1.ip, 40000, OUTSIDE, 80, mark=TAGS["h1"])
    _with_record(msgs, (C.Slice(CHAIN, "vm", 0), b1))


def _another_chain(msgs):
    _with_record(msgs, (C.Slice(("fw-b",), "vm", 0), decoded(msgs[1])[0][1]))


def _flip(msgs, at):
    data = bytearray(msgs[1]["data"])
    data[at] ^= 0xFF
    msgs[1]["data"] = bytes(data)


REJECTIONS = {
    "wrong peer": ({"peer": "h3"}, None, "is not the source h1"),
    "wrong token": ({"token": "cd" * 16}, None, "wrong token"),
    "not here": ({"dst": "h3"}, None, "goes to h3, not here"),
    "not active": ({"status": "done"}, None, "a replayed or late transfer"),
    "old protocol": ({}, lambda m: m[0].update(version=2), "protocol version 2"),
    "wrong vm": ({}, lambda m: m[0].update(vm="a1"), "wrong token or VM"),
    "another vm": ({}, _another_vms, "VM b1's connection, not of VM c1"),
    "another chain": ({}, _another_chain, "chain fw-b, which VM c1 is not in here"),
    "bad digest": ({}, lambda m: m[2].update(digest="0" * 64), "corrupt transfer"),
    "bad count": ({}, lambda m: m[2].update(count=2), "corrupt transfer"),
    "bad records": ({}, lambda m: _flip(m, 0), "bad records in message 1: bad magic"),
    "bad protocol": ({}, lambda m: _flip(m, -54), "bad records in message 1"),
    "cut records": ({}, lambda m: m[1].update(data=m[1]["data"][:-3]),
                    "bad records in message 1"),
    "bad removal": ({}, lambda m: m[1].update(removed=[["fw-a"]]), "malformed removal"),
    "no removals": ({}, lambda m: m[1].pop("removed"), "malformed state message 1"),
    "out of order": ({}, lambda m: m[2].update(seq=3), "out of order"),
    "no seq": ({}, lambda m: m[1].pop("seq"), "without a sequence number"),
    "not a hello": ({}, lambda m: m.pop(0), "expected hello"),
    "other migration": ({}, lambda m: m[1].update(migration="x"), "another migration"),
    "unknown message": ({}, lambda m: m[2].update(type="commit"), "unexpected message"),
}


@pytest.mark.parametrize("path", ["announced", "unannounced"])
@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_a_bad_transfer_is_refused_whole(case, path):
    opts, tamper, why = REJECTIONS[case]
    dst = destination()
    dst.mgr.set_rows([row(opts.get("status", "begun"), dst=opts.get("dst", "h2"),
                          path=path)], PEERS, 10.0)
    dst.loop(10.0)
    msgs = transfer(records_of(source()), token=opts.get("token", TOKEN))
    if tamper:
        tamper(msgs)
    dst.accept(peer=opts.get("peer", "h1"))
    dst.deliver(msgs, peer=opts.get("peer", "h1"))
    [error] = dst.nacks()
    assert why in error
    assert dst.chan.closed == ["in-1"]
    # Nothing stays (an unannounced bulk import commits the VM's zone's
    # records as their part comes, and takes them back).
    assert dst.vm_conns() == [] and dst.snat_conns() == []
    assert dst.barriers == [] and (path == "unannounced" or dst.switch.packet_outs == 0)
    assert dst.writer.writes == [] and dst.mgr.counters["rejected"] == 1


def test_an_unannounced_bulk_import_commits_the_vms_zone_as_its_parts_come():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    hello, state, snat, final = p.src.chan.take()
    p.dst.deliver([hello, state], now=p.now)
    # Before final: the VM's zone has its connections; the SNAT zone (shared
    # with other VMs) waits for the check.
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert p.dst.snat_conns() == [] and p.dst.barriers == []
    early = p.dst.switch.packet_outs
    p.dst.deliver([snat, final], now=p.now)
    p.imported()
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert same(p.dst.snat_conns()) == same([OUT_SNAT])
    [ack] = [m for m, _ in p.dst.chan.take() if m["type"] == "ack"]
    assert ack["commits"] == p.dst.switch.packet_outs > early > 0


def test_an_unannounced_import_decides_bulk_or_lazy_once_its_slice_config_is_there():
    # The VM's state can start arriving before the config of its slice on
    # this host: nothing is committed on a guess of the import mode.
    dst = destination(options={"migration-import": "lazy"})
    full = dst.config
    dst.configure(HostConfig("h2", {}))
    p = Pair(dst=dst)
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    hello, state, snat, final = p.src.chan.take()
    p.dst.deliver([hello, state], now=p.now)
    assert p.dst.switch.packet_outs == 0 and p.dst.vm_conns() == []
    p.dst.configure(full)                       # lazy, as the chain says
    p.dst.deliver([snat, final], now=p.now)
    assert p.dst.switch.packet_outs == 0        # acknowledged before its commits
    p.imported()
    p.dst.loop(p.now)                           # the background commits them
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert p.dst.mgr.counters["lazy_commits"] == 5


def test_a_final_before_the_slice_config_waits_for_it_then_imports():
    # Onto a host without the tenant's slice, the whole transfer (final
    # included) can come before the slice: it waits, bounded, not refused.
    dst = destination()
    full = dst.config
    dst.configure(HostConfig("h2", {}))
    p = Pair(dst=dst)
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    assert p.dst.nacks() == [] and p.dst.vm_conns() == []
    p.now += 1.0
    p.dst.configure(full)
    p.dst.loop(p.now)
    p.imported()
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert p.dst.writer.writes[-1]["outcome"] == "ok: 4 connections"


def test_a_final_whose_slice_never_comes_is_refused_after_the_wait():
    dst = destination()
    dst.configure(HostConfig("h2", {}))
    p = Pair(dst=dst)
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    assert p.dst.nacks() == []
    p.now += 4.0
    p.dst.loop(p.now)
    [error] = p.dst.nacks()
    assert "no slice here" in error and p.dst.vm_conns() == []


def test_a_transfer_of_no_records_waits_for_no_slice():
    # A VM of a switch without middleboxes has no slice on either host:
    # its transfer holds nothing, and nothing waits for a slice.
    p = Pair(src=Node("h1", HostConfig("h1", {})), dst=Node("h2", HostConfig("h2", {})))
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    p.imported()
    assert p.dst.nacks() == []
    assert p.dst.writer.writes[-1]["outcome"] == "ok: 0 connections"


def test_an_early_committed_record_that_changes_is_imported_whole_again():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    hello, state, snat, final = p.src.chan.take()
    p.dst.deliver([hello, state, snat], now=p.now)
    # A part that drops one of the records committed already.
    [(sl, gone)] = [(sl, c) for sl, c in decoded(state[0]) if sl.role == "vm"][:1]
    removal = dict(state[0], seq=3, kind="changes", removed=[
        [list(sl.chain), sl.role, sl.service] + list(gone.key)])
    removal.pop("data")
    kept = [r for r in decoded(state[0]) + decoded(snat[0]) if r[1] != gone]
    final = (dict(final[0], seq=4, count=len(kept), digest=digest(kept)), final[1])
    p.dst.deliver([(removal, 100), final], now=p.now)
    p.imported()
    assert same(p.dst.vm_conns()) == same([c for sl, c in kept if sl.role == "vm"])
    assert p.dst.mgr.counters["imported"] == 1


def test_a_second_transfer_of_the_same_migration_is_a_replay():
    dst = destination()
    dst.mgr.set_rows([row()], PEERS, 10.0)
    msgs = transfer(records_of(source()))
    dst.accept()
    dst.deliver(msgs[:2])
    dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), 10.0)   # truncated
    dst.accept(sid="in-2")
    dst.deliver(msgs, sid="in-2")
    [error] = dst.nacks()
    assert "already received" in error and dst.chan.closed == ["in-2"]
    assert dst.vm_conns() == [] and dst.switch.packet_outs == 0
    assert dst.mgr.counters["rejected"] == 2



def test_a_replay_tried_again_and_again_is_refused_each_time_and_said_once(caplog):
    dst = destination()
    dst.mgr.set_rows([row()], PEERS, 10.0)
    msgs = transfer(records_of(source()))
    dst.accept()
    dst.deliver(msgs[:2])
    dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), 10.0)
    with caplog.at_level(logging.WARNING, logger="mbxd.migration"):
        for i in range(2, 7):
            dst.accept(sid="in-%d" % i)
            dst.deliver(msgs, sid="in-%d" % i)
    assert len(dst.nacks()) == 5 and dst.mgr.counters["rejected"] == 6
    said = [r for r in caplog.records if "already received" in r.getMessage()]
    assert len(said) == 1


def test_a_hello_before_its_row_waits_then_is_refused():
    dst = destination()
    dst.accept()
    dst.deliver(transfer(records_of(source())))
    [t] = dst.mgr.listing()["transfers"]
    assert t["state"] == "waiting" and dst.chan.sent == []
    dst.loop(10.0 + HELLO_WAIT - 0.1)
    assert dst.nacks() == []
    dst.loop(10.0 + HELLO_WAIT)
    [error] = dst.nacks()
    assert "unknown migration" in error and dst.vm_conns() == [] and dst.barriers == []


def test_a_session_that_never_says_hello_is_cut_and_only_a_migrations_source_is_known():
    dst = destination()
    assert not dst.mgr.knows("h1")
    dst.mgr.set_rows([row()], PEERS, 10.0)
    assert dst.mgr.knows("h1") and not dst.mgr.knows("h3")
    dst.accept(sid="in-7")
    dst.loop(10.0 + HELLO_WAIT - 0.1)
    assert dst.chan.closed == []
    dst.loop(10.0 + HELLO_WAIT + 0.1)
    [error] = dst.nacks()
    assert error.startswith("no hello within") and dst.chan.closed == ["in-7"]


def test_a_hello_whose_row_arrives_in_time_proceeds():
    dst = destination()
    dst.accept()
    dst.deliver(transfer(records_of(source())))
    dst.mgr.set_rows([row()], PEERS, 11.0)
    dst.loop(11.0)
    assert dst.barriers == [100] and len(dst.vm_conns()) == 4  # pending messages replayed
    dst.barrier_done(100)
    assert [m["type"] for m in dst.sent_messages()] == ["ack"]


# ------------------------------------------------------------ duplicates, truncation


def test_a_duplicate_changes_nothing_and_a_late_message_is_ignored():
    dst = destination()
    dst.mgr.set_rows([row()], PEERS, 10.0)
    records = records_of(source())
    udp = next(r for r in records if r[1].proto == 17)
    rest = [r for r in records if r is not udp]
    hello, snap, final = transfer(records)
    dropped = {"type": "state", "migration": UUID, "seq": 2, "kind": "changes",
               "removed": [[list(udp[0].chain), udp[0].role, udp[0].service]
                           + list(udp[1].key)]}
    final.update(seq=3, count=len(rest), digest=digest(rest))
    dst.accept()
    dst.deliver([hello, snap, dropped, snap, dropped, final])   # snap again would re-add
    assert dst.nacks() == [] and len(dst.vm_conns()) == 3
    assert 17 not in {c.proto for c in dst.vm_conns()}
    dst.barrier_done(100)
    before = (len(dst.chan.sent), dst.switch.packet_outs, len(dst.writer.writes))
    late = dict(final, seq=4)
    dst.deliver([snap, late, dict(dropped, seq=5, removed=[])])
    assert (len(dst.chan.sent), dst.switch.packet_outs, len(dst.writer.writes)) == before
    assert len(dst.vm_conns()) == 3 and dst.barriers == [100]


def acked_unannounced():
    """A Pair whose unannounced transfer the destination imported, and the
    ack on its way to the source."""
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    p.imported()
    [ack] = p.to_src()
    return p, ack


def test_a_late_ack_at_the_source_changes_nothing():
    p, ack = acked_unannounced()
    writes = len(p.src.writer.writes)
    p.src.mgr.on_event(Event("message", OUT, "h2", ack, None, 10), p.now)
    p.src.mgr.on_event(Event("closed", OUT, "h2", None, "closed", None), p.now)
    assert len(p.src.writer.writes) == writes and p.src.mgr.counters["cleaned"] == 1


def test_the_channel_releases_each_session_once_it_closed_on_both_hosts():
    # A session the manager never forgot kept its record and its wake-up
    # pipe in the channel: mbxd leaked two fds per migration on each host.
    p, ack = acked_unannounced()
    p.src.mgr.on_event(Event("message", OUT, "h2", ack, None, 10), p.now)
    assert p.src.chan.forgotten == [] and p.dst.chan.forgotten == []
    p.src.mgr.on_event(Event("closed", OUT, "h2", None, "closed", None), p.now)
    p.dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), p.now)
    assert p.src.chan.forgotten == [OUT] and p.dst.chan.forgotten == ["in-1"]


def test_a_truncated_transfer_imports_nothing():
    dst = destination()
    dst.mgr.set_rows([row()], PEERS, 10.0)
    dst.accept()
    dst.deliver(transfer(records_of(source()))[:2])
    dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), 10.0)
    assert dst.vm_conns() == [] and dst.switch.packet_outs == 0 and dst.barriers == []
    assert dst.mgr.counters["rejected"] == 1 and dst.mgr.listing()["transfers"] == []


# ------------------------------------------------------------ faults at the source


@pytest.mark.parametrize("event, why", [
    (Event("closed", OUT, "h2", None, "eof", None), "connection closed before the ack"),
    (Event("closed", OUT, "h2", None, "reset: x", None), "connection reset: x before"),
    (Event("message", OUT, "h2", {"type": "nack", "migration": UUID, "error": "no"}, None, 9),
     "refused the transfer: no"),
])
def test_losing_the_destination_aborts_and_the_source_keeps_the_vm(event, why):
    p = Pair()
    before = same(p.src.vm_conns())
    p.set_rows(row("begun"))
    p.connect()
    p.src.mgr.on_event(event, p.now)
    w = p.src.writer.writes[-1]
    assert w["status"] == "aborted" and "aborted" in w["timeline"]
    assert w["outcome"].startswith("aborted: destination h2: " + why.split(" before")[0])
    assert OUT in p.src.chan.closed
    p.set_rows(row("aborted"))
    p.run(migration.DEFAULT_TTL + 1)
    assert same(p.src.vm_conns()) == before and p.src.mgr.forwarders() == ()


def test_a_destination_with_the_wrong_certificate_gets_nothing():
    p = Pair()
    p.set_rows(row("begun"))
    p.src.mgr.on_event(Event("connected", OUT, "h3", None, None, None), p.now)
    assert p.src.chan.sent == [] and p.src.writer.statuses() == ["aborted"]
    assert "certificate names h3" in p.src.writer.outcomes()[0]


def test_an_unannounced_failure_writes_no_abort():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.src.mgr.on_event(Event("closed", OUT, "h2", None, "eof", None), p.now)
    assert p.src.writer.statuses() == [] and p.src.mgr.counters["aborted"] == 1
    assert len(p.src.vm_conns()) == 4


def test_an_abort_while_connecting_sends_nothing():
    p = Pair()
    p.set_rows(row("begun"))
    p.set_rows(row("aborted"))
    p.src.mgr.on_event(Event("connected", OUT, "h2", None, None, None), p.now)
    p.run(1.0)
    assert p.src.chan.sent == [] and p.src.writer.writes == []


def test_a_destination_without_a_migration_address_yet_is_waited_for():
    p = Pair()
    no_address = dict(PEERS, h2=types.SimpleNamespace(name="h2", migration_address=[],
                                                      encap_ip="192.168.0.2"))
    p.src.mgr.set_rows([row("begun")], no_address, p.now)
    assert p.src.chan.connects == []
    p.src.mgr.set_rows([row("begun")], PEERS, p.now)
    p.run(0.1)
    assert p.src.chan.connects == [(OUT, "ssl:1.2.3.2:6650", "h2")]
    q = Pair()
    q.src.mgr.set_rows([row("begun")], no_address, q.now)
    q.run(HELLO_WAIT + 0.1)
    assert "no migration address known" in q.src.writer.outcomes()[0]



def test_an_unannounced_move_to_a_host_without_an_address_is_said_once(caplog):
    p = Pair()
    ghost = row("begun", path="unannounced", dst="ghost")
    with caplog.at_level(logging.WARNING, logger="mbxd.migration"):
        for i in range(5):                  # tried again at each pass
            p.src.mgr.set_rows([ghost], PEERS, p.now)
            p.run(HELLO_WAIT + 0.1)
    said = [r for r in caplog.records if "no migration address known" in r.getMessage()]
    assert len(said) == 1 and p.src.mgr.counters["aborted"] == 5


# ------------------------------------------------------------ fallback


def test_no_state_within_wait_ms_falls_back_to_the_rules():
    dst = destination()
    dst.mgr.set_rows([row("begun", path="unannounced", wait_ms=100)], PEERS, 10.0)
    dst.loop(10.0)
    assert dst.handle(STRAY, TO2) == "held"
    WALL[0] += 0.05
    dst.loop(10.05)
    assert dst.frames == [] and dst.writer.writes == []
    WALL[0] = 1000.0 + 0.1                  # the deadline: begun + wait-ms
    dst.loop(10.1)
    assert dst.frames == []                 # the held packet was dropped
    [w] = dst.writer.writes
    assert w["status"] == "fallback" and w["from_statuses"] == ("begun", "streaming", "stunned")
    assert w["outcome"].startswith("fallback: no state from h1 within 100 ms")
    assert "fallback" in w["timeline"]
    # Our write still in flight: the row is begun in the replica; no second hold.
    dst.mgr.set_rows([row("begun", path="unannounced", wait_ms=100)], PEERS, 10.2)
    dst.loop(10.2)
    assert dst.handle(STRAY, TO2) == "resumed"   # the switch judges it (and drops it)
    WALL[0] += 1
    dst.loop(11.2)
    assert len(dst.writer.writes) == 1 and dst.mgr.counters["fallbacks"] == 1


# ------------------------------------------------------------ RowWriter


def _where(op):
    return [c for c in op["where"] if c[0] == "status"]


def test_row_writer_guards_statuses_and_mutates_map_keys():
    ops = RowWriter(None, "h2")._ops((UUID, "imported", ("begun", "streaming", "stunned"),
                                      {"imported": 5, "acked": 6}, {"entries": 3}, None))
    update, timeline, stats = ops
    assert update["op"] == "update" and update["row"] == {"status": "imported"}
    assert update["where"][0] == ["_uuid", "==", ["uuid", UUID]]
    assert sorted(c[2] for c in _where(update)) == ["aborted", "done", "fallback"]
    assert timeline["mutations"] == [
        ["timeline", "delete", ["set", ["acked", "imported"]]],
        ["timeline", "insert", ["map", [["acked", 6], ["imported", 5]]]]]
    assert stats["mutations"][1] == ["stats", "insert", ["map", [["entries", 3]]]]
    # From begun only: not over a later active status either.
    [update] = RowWriter(None, "h1")._ops((UUID, "streaming", ("begun",), {}, {}, None))
    assert sorted(c[2] for c in _where(update)) == [
        "aborted", "done", "fallback", "imported", "stunned"]
    # Aborted from any active status; an outcome alone never lands on a final row.
    [update] = RowWriter(None, "h1")._ops((UUID, "aborted", None, {}, {}, "aborted: x"))
    assert sorted(c[2] for c in _where(update)) == ["done", "fallback"]
    assert update["row"] == {"status": "aborted", "outcome": "aborted: x"}
    [update] = RowWriter(None, "h1")._ops((UUID, None, None, {}, {}, "why"))
    assert sorted(c[2] for c in _where(update)) == ["aborted", "done", "fallback"]
    # Only map keys: no update op at all.
    [mutate] = RowWriter(None, "h1")._ops((UUID, None, None, {"cleaned": 1}, {}, None))
    assert mutate["op"] == "mutate"
    w = RowWriter(None, "h1")
    w.write(UUID, timeline={"x": 1})
    w.flush()
    assert not w.busy()


def test_a_large_snapshot_goes_in_parts_and_imports_whole(monkeypatch):
    monkeypatch.setattr(migration, "SNAPSHOT_PART", 2)
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    msgs = p.to_dst()
    states = [m for m in msgs if m["type"] == "state"]
    assert [(m["seq"], m["kind"], len(decoded(m))) for m in states] == [
        (1, "snapshot", 2), (2, "changes", 2), (3, "changes", 1)]
    assert msgs[-1]["type"] == "final" and msgs[-1]["seq"] == 4
    p.imported()
    assert len(p.dst.vm_conns()) == 4 and p.dst.nacks() == []


def test_a_hold_outlasts_its_bound_while_the_state_is_arriving():
    p = Pair()
    p.set_rows(row("begun", path="unannounced", wait_ms=100))
    assert p.dst.handle(STRAY, TO2) == "held"
    p.connect()
    msgs = p.src.chan.take()
    p.dst.deliver(msgs[:2], now=p.now)          # hello and snapshot, no final yet
    WALL[0] = 1000.0 + 5                        # far past begun + wait-ms
    p.run()
    assert p.dst.frames == [] and p.dst.mgr.counters["fallbacks"] == 0
    p.dst.deliver(msgs[2:], now=p.now)
    p.imported()
    assert p.dst.frames == [(STRAY, TO2)]


# ------------------------------------------------------------ gather modes


def test_gather_datapath_moves_every_entry_of_the_vm_as_the_switch_has_it():
    p = Pair()
    cut = tcp(C1.ip, 40009, P1.ip, 22, mark=TAGS["h1"] | D.MARK_BLOCKED,
              zone=p.src.zones.vm("c1"))
    p.src.switch.seed(cut)
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    p.imported()
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert any(c.mark & D.MARK_BLOCKED for c in p.dst.vm_conns())     # still cut there
    assert p.src.mgr.listing()["transfers"][0]["mode"] == "datapath"


def test_gather_datapath_review_leaves_behind_what_todays_rules_refuse():
    # Since p1 opened its connection into c1:8080, the rule allowing it went.
    p = Pair(src=source(), dst=destination())
    p.src.configure(host_config("h1", rules=(WEB, DNS),
                                options={"migration-gather": "datapath+review"}))
    p.set_rows(row("begun", path="unannounced"))
    [t] = p.src.mgr.listing()["transfers"]
    assert t["mode"] == "datapath+review" and t["reviewed_out"] == 1
    p.connect()
    p.to_dst()
    p.imported()
    assert same(p.dst.vm_conns()) == same(
        c for c in p.src.vm_conns() if not c.mark & D.MARK_IN)
    [ack] = p.to_src()
    assert ack["entries"] == 3


def test_gather_service_moves_what_the_service_decided():
    src = Node("h1", host_config("h1", options={"migration-gather": "service"}))
    src.switch.seed(c1_connections()["out"]._replace(zone=src.zones.vm("c1")))
    syn = build_tcp(C1.mac, P.ROUTER_MAC, ip_int(C1.ip), ip_int(VIP), 40000, 80, 1, 0,
                    TCP_SYN)
    assert src.handle(syn, TAGS["h1"] | P.STAGE_FROM_VM << 13) == "allow"
    [picked] = [c for c in src.vm_conns() if c.dnat]
    p = Pair(src=src)
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    msgs = p.to_dst()
    [(sl, record)] = decoded(msgs[1])          # nothing the switch decided alone
    assert sl == C.Slice(CHAIN, "vm", VIP_SID) and record.key == picked.key
    p.imported()
    [got] = p.dst.vm_conns()
    assert (got[:9], got.mark & D.MARK_IN) == (picked[:9], 0)
    assert got.dnat == (ip_int(B1.ip), 8080) and got.state == "ESTABLISHED"


# ------------------------------------------------------------ SNAT forwarders


def test_an_unannounced_sources_snat_connections_are_forwarded_from_the_snapshot():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    # c1 runs on h2 already: its SNAT replies go there from the snapshot on
    # (h2 holds them until the state lands).
    [fwd] = p.src.mgr.forwarders()
    p.connect()
    p.to_dst()
    p.imported()
    p.moved()
    p.to_src()                                  # acked: cleaned up
    assert p.src.mgr.forwarders() == (fwd,)     # one forwarder per connection
    # The reply from outside to h1's port block goes on, untranslated, to h2.
    assert (fwd.proto, fwd.src, fwd.sport, fwd.dst, fwd.dport) == (6, OUTSIDE, 80, SNAT_IP,
                                                                   4100)
    assert (fwd.vni, fwd.encap_ip) == (1001, "192.168.0.2")
    assert p.src.mgr.held_vms() == {"c1"}
    assert p.src.mgr.listing()["forwarders"] == [
        {"vm": "c1", "proto": 6, "wire": "%s:80/%s:4100" % (OUTSIDE, SNAT_IP),
         "to": "192.168.0.2"}]
    # c1's state itself is gone from h1; the SNAT entry keeps its port.
    assert p.src.vm_conns() == [] and same(p.src.snat_conns()) == same([OUT_SNAT])
    # The forwarder's flow went idle: the connection is over.
    p.src.mgr.forwarder_gone(fwd.fid)
    assert p.src.mgr.forwarders() == () and p.src.mgr.held_vms() == set()


def test_a_vm_coming_back_needs_no_forwarder():
    p = Pair()
    p.unannounced()
    assert len(p.src.mgr.forwarders()) == 1
    # c1 moves back from h2 to h1 with its SNAT connection.
    back = "0c0ffee0-0000-4000-8000-000000000002"
    WALL[0] += 1
    h1 = p.src
    h1.mgr.set_rows([row("done"), row("begun", path="unannounced", uuid=back, src="h2",
                                      dst="h1")], PEERS, p.now)
    h1.loop(p.now)
    records = records_of(p.dst)
    h1.accept(sid="in-9", peer="h2")
    msgs = transfer(records, uuid=back)
    msgs[0].update(source="h2", destination="h1")
    h1.deliver(msgs, sid="in-9", peer="h2")
    assert h1.nacks() == [] and h1.mgr.forwarders() == ()
    assert same(h1.vm_conns()) == same(p.dst.vm_conns())


# ------------------------------------------------------------ lazy import


def lazy_pair(held=(ORPHAN,)):
    p = Pair(dst=destination(options={"migration-import": "lazy"}))
    p.set_rows(row("begun", path="unannounced"))
    for frame in held:
        assert p.dst.handle(frame, TO2) == "held"
    p.connect()
    p.to_dst()
    return p


def test_a_lazy_import_is_acknowledged_before_its_commits_and_lands_in_the_background():
    p = lazy_pair()                             # ORPHAN: of no connection of c1's
    assert p.dst.switch.packet_outs == 0 and p.dst.vm_conns() == []
    [xid] = p.dst.barriers
    p.dst.barrier_done(xid)                     # acknowledged at once
    assert [m["type"] for m in p.dst.sent_messages()] == ["ack"]
    assert p.dst.writer.writes[0]["status"] == "done"
    assert p.dst.frames == []                   # the hold goes on meanwhile
    p.dst.loop(p.now)                           # the background commits, a chunk
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    assert same(p.dst.snat_conns()) == same([OUT_SNAT])
    assert p.dst.mgr.counters["lazy_commits"] == 5
    p.dst.loop(p.now)                           # the next chunk waits for the switch
    assert p.dst.frames == [] and len(p.dst.barriers) == 2
    p.dst.barrier_done(p.dst.barriers[-1])
    p.dst.loop(p.now)
    assert p.dst.frames == [(ORPHAN, TO2)]      # landed: what was held goes on


def test_a_lazily_imported_connection_is_committed_at_its_first_packet():
    p = lazy_pair()
    p.dst.barrier_done(p.dst.barriers[0])
    assert p.dst.handle(STRAY, TO2) == "lazy"
    [inbound] = p.dst.vm_conns()
    assert (inbound.src, inbound.sport, inbound.mark) == (ip_int(P1.ip), 50000,
                                                          TAGS["h2"] | D.MARK_IN)
    assert p.dst.frames == []                   # on once the switch has the entry
    p.dst.barrier_done(p.dst.barriers[-1])
    assert p.dst.frames == [(STRAY, TO2)]


def test_a_packet_held_before_a_lazy_import_is_committed_by_the_import():
    p = lazy_pair(held=(STRAY, ORPHAN))
    [inbound] = p.dst.vm_conns()                # committed with the import
    assert (inbound.src, inbound.sport) == (ip_int(P1.ip), 50000)
    commits, imported = p.dst.barriers
    p.dst.barrier_done(commits)
    assert p.dst.frames == [(STRAY, TO2)] and p.dst.sent_messages() == []
    p.dst.barrier_done(imported)
    assert [m["type"] for m in p.dst.sent_messages()] == ["ack"]
    p.dst.loop(p.now)
    p.dst.barrier_done(p.dst.barriers[-1])      # the switch took the background's chunk
    p.dst.loop(p.now)
    assert p.dst.frames == [(STRAY, TO2), (ORPHAN, TO2)]
    assert same(p.dst.vm_conns()) == same(p.src.vm_conns())
    # Every record counts once, the one the held packet committed included.
    assert p.dst.mgr.counters["lazy_commits"] == 5


# ------------------------------------------------------------ TTL cleanup


def test_a_source_that_missed_the_migration_releases_the_vms_state_after_the_ttl():
    # c1 moved to h2 while h1's daemon was down; the restarted daemon finds
    # c1's zone in its flows, and the row done.
    h1 = Node("h1", host_config("h1", c1_host="h2"))
    h1.zones.recover({("vm", "c1"): 70})
    h1.switch.seed(c1_connections()["out"]._replace(zone=70))
    h1.replan_soon()                            # its first plane after recovering
    h1.mgr.set_rows([row("done")], PEERS, 10.0)
    h1.loop(10.0)
    assert h1.zones.vm("c1") == 70 and len(h1.switch.conns(70)) == 1
    h1.loop(10.0 + migration.DEFAULT_TTL + 1)
    assert h1.zones.vm("c1") is None and h1.switch.conns(70) == []


def test_a_departed_vm_keeps_its_zone_and_slices_until_its_unannounced_row_comes():
    """c1's port left h1, and with it h1's slice of its tenant, before the
    controller's unannounced row arrived (written once the port shows up at
    the destination): its zone is not flushed and the row still finds
    every connection."""
    p = Pair()
    before, expected = same(p.src.vm_conns()), len(records_of(p.src))
    assert expected > 0
    p.src.mgr.departed({"c1": dict(p.src.service.slices)}, p.now)
    p.src.configure(HostConfig("h1", {}))
    assert same(p.src.vm_conns()) == before
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    assert sum(len(decoded(m)) for m in p.to_dst()) == expected    # its SNAT one too
    p.imported()
    assert same(p.dst.vm_conns()) == before
    p.dst.configure(host_config("h2", c1_host="h2"))
    p.to_src()
    # Released; its SNAT connection's replies, still sent to h1's block, go to h2.
    assert p.src.vm_conns() == [] and len(p.src.mgr.forwarders()) == 1


def test_a_vm_whose_state_went_before_its_port_was_seen_gone_keeps_nothing():
    """The unannounced move was acknowledged (and cleaned up) before this
    daemon saw c1's port go: its zone is released, not kept for the TTL
    with stale entries."""
    p = Pair()
    p.unannounced(seen_moved=False)
    assert "cleaned" in p.src.writer.merged("timeline")
    p.src.mgr.departed({"c1": dict(p.src.service.slices)}, p.now)
    assert "c1" not in p.src.mgr.outgoing()
    p.src.configure(HostConfig("h1", {}))          # the port is seen gone
    assert p.src.vm_conns() == []
