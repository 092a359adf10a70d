"""The migration manager (middlebox.migration) between two daemon cores: the
protocol a source and a destination speak (docs/migration.md), through fake
channels, row writers and OpenFlow callables.  Seen from outside: messages on
the wire, entries at the destination, flows applied, rows written."""

import json
import types

import pytest
from test_mb_chain import C1, R
from test_mb_frames import ACK, SYN, tcp_frame
from test_mb_vmstate import FROM, PEER, TO, TO2, destination, open_connections, source

from middlebox import migration
from middlebox.migchan import Event
from middlebox.migration import HELLO_WAIT, STREAM_INTERVAL, MigrationManager, RowWriter
from middlebox.vmstate import digest
from ryu_apps import pipeline as P

UUID = "0c0ffee0-0000-4000-8000-000000000001"
TOKEN = "ab" * 16
OUT = "out-" + UUID
PEERS = {h: types.SimpleNamespace(name=h, migration_address="ssl:1.2.3.%d:6650" % i,
                                  encap_ip="192.168.0.%d" % i)
         for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))}
STRAY = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK, 6, 8)     # mid-connection
ORPHAN = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50001, 8080, ACK, 6, 8)    # no connection
WALL = [1000.0]


@pytest.fixture(autouse=True)
def wall_clock(monkeypatch):
    """The manager's wall clock (holds, timelines) under the test's control."""
    WALL[0] = 1000.0
    monkeypatch.setattr(migration, "time", types.SimpleNamespace(
        time=lambda: WALL[0], monotonic=lambda: WALL[0]))


def row(status="begun", path="announced", uuid=UUID, token=TOKEN, vm="c1", src="h1",
        dst="h2", wait_ms=None):
    return types.SimpleNamespace(
        uuid=uuid, vm=vm, source=src, destination=dst, path=path, status=status,
        token=token, timeline={"begun": int(WALL[0] * 1000)}, stats={}, outcome="",
        options={} if wait_ms is None else {"wait-ms": str(wait_ms)})


class Chan:
    def __init__(self):
        self.sent, self.closed, self.connects = [], [], []

    def connect(self, sid, address, peer_host):
        self.connects.append((sid, address, peer_host))

    def send(self, sid, message):
        self.sent.append((sid, json.loads(json.dumps(message))))   # as on the wire

    def close(self, sid):
        self.closed.append(sid)

    def stats(self, sid):
        return 4321, 99

    def take(self):
        out, self.sent = self.sent, []
        return [m for _, m in out]


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
    """One daemon: core, manager, fake channel/writer/OpenFlow."""

    def __init__(self, host, core):
        self.core, self.chan, self.writer = core, Chan(), Writer()
        self.applied, self.barriers, self.results = [], [], []
        self.mgr = MigrationManager(host, core, self.chan, self.writer,
                                    apply=lambda add, dele: self.applied.append((add, dele)),
                                    barrier=self._barrier, dump=lambda tags: 77,
                                    send=self.results.extend)

    def _barrier(self):
        self.barriers.append(100 + len(self.barriers))
        return self.barriers[-1]

    def conns(self):
        return self.core.conn_list("c1")

    def deliver(self, messages, sid="in-1", peer="h1", now=10.0):
        for m in messages:
            self.mgr.on_event(Event("message", sid, peer, m, None, len(json.dumps(m))), now)

    def accept(self, sid="in-1", peer="h1", now=10.0):
        self.mgr.on_event(Event("accepted", sid, peer, None, None, None), now)

    def nacks(self):
        return [m["error"] for _, m in self.chan.sent if m["type"] == "nack"]

    def added(self):
        return [f for add, _ in self.applied for f in add]


class Pair:
    """h1 (source, c1 runs there with 3 connections) and h2 (destination)."""

    def __init__(self, dst_core=None):
        self.src = Node("h1", source())
        self.conns, _ = open_connections(self.src.core)
        self.dst = Node("h2", dst_core or destination())
        self.now = 10.0

    def set_rows(self, *rows):
        for n in (self.src, self.dst):
            n.mgr.set_rows(list(rows), PEERS, self.now)

    def connect(self):
        assert self.src.chan.connects == [(OUT, "ssl:1.2.3.2:6650", "h2")]
        self.src.mgr.on_event(Event("connected", OUT, "h2", None, None, None), self.now)
        self.dst.accept(now=self.now)

    def to_dst(self):
        msgs = self.src.chan.take()
        self.dst.deliver(msgs, now=self.now)
        return msgs

    def to_src(self):
        msgs = self.dst.chan.take()
        for m in msgs:
            self.src.mgr.on_event(Event("message", OUT, "h2", m, None, 10), self.now)
        return msgs

    def run(self, dt=0.0):
        self.now += dt
        for n in (self.src, self.dst):
            n.mgr.run(self.now)


def transfer(records, uuid=UUID, token=TOKEN, vm="c1"):
    """A source's messages for ``records``: hello, snapshot, final."""
    return [{"type": "hello", "version": migration.PROTOCOL_VERSION, "migration": uuid, "token": token, "vm": vm,
             "source": "h1", "destination": "h2"},
            {"type": "state", "migration": uuid, "seq": 1, "kind": "snapshot",
             "records": records, "removed": []},
            {"type": "final", "migration": uuid, "seq": 2, "count": len(records),
             "digest": digest(records)}]


def gathered():
    core = source()
    open_connections(core)
    return json.loads(json.dumps(core.gather("c1")))


# ------------------------------------------------------------ announced


def test_announced_migration_streams_then_imports_whole_and_the_source_releases():
    p = Pair()
    p.set_rows(row("begun"))
    p.connect()
    hello, snap = p.to_dst()
    assert hello["type"] == "hello" and hello["token"] == TOKEN and hello["vm"] == "c1"
    assert snap["kind"] == "snapshot" and snap["seq"] == 1 and len(snap["records"]) == 3
    assert p.src.writer.writes[-1]["status"] == "streaming"
    assert p.src.writer.writes[-1]["from_statuses"] == ("begun",)
    assert "snapshot" in p.src.writer.merged("timeline")
    # A new connection while the VM runs at the source reaches h2 as a change.
    res = p.src.core.handle_frame(tcp_frame(C1.mac, R, C1.ip, "10.1.0.22", 40500, 8080,
                                            SYN, 1), FROM, 2.0)
    assert res.verdict == "allow"
    p.run(STREAM_INTERVAL / 2)
    assert p.src.chan.sent == []
    p.run(STREAM_INTERVAL)
    [changes] = p.to_dst()
    assert changes["kind"] == "changes" and changes["seq"] == 2
    assert [r["conn"][2] for r in changes["records"]] == [40500]
    assert p.dst.conns() == [] and p.dst.applied == []      # staged, not imported
    # Stunned: the last round and the final.
    p.set_rows(row("stunned"))
    p.run()
    [final] = p.to_dst()
    assert final["type"] == "final" and final["seq"] == 3 and final["count"] == 4
    assert len(p.dst.conns()) == 4
    assert p.dst.barriers == [100] and p.dst.chan.sent == []    # no ack before the barrier
    assert p.dst.writer.writes == []
    flows = len(p.dst.added())
    assert flows > 0
    assert p.dst.mgr.on_barrier(100, p.now)
    [ack] = p.to_src()
    assert ack == {"type": "ack", "migration": UUID, "entries": 4, "flows": flows}
    [w] = p.dst.writer.writes
    assert w["status"] == "imported" and w["outcome"] is None
    assert w["stats"]["entries"] == 4 and w["stats"]["flows"] == flows
    assert "imported" in w["timeline"]
    # The source: acked, still serving until the row is done.
    assert "acked" in p.src.writer.merged("timeline")
    assert p.src.writer.merged("stats")["bytes"] == 4321
    assert OUT in p.src.chan.closed and len(p.src.conns()) == 4
    assert p.src.core.handle_frame(STRAY, TO, 3.0).verdict == "allow"
    p.src.applied.clear()
    p.set_rows(row("done"))
    assert p.src.conns() == []
    [(add, delete)] = p.src.applied
    assert [f.table for f in add] == [P.EXTERNAL_CACHE.table_id]       # SNAT forwarder
    assert delete and "cleaned" in p.src.writer.merged("timeline")


def test_done_before_the_ack_waits_for_the_ttl():
    p = Pair()
    p.set_rows(row("begun"))
    p.connect()
    p.set_rows(row("done"))
    p.run(1.0)
    assert len(p.src.conns()) == 3
    p.run(migration.DEFAULT_TTL)
    assert p.src.conns() == []


# ------------------------------------------------------------ unannounced


def test_unannounced_sends_everything_at_once_and_releases_held_frames():
    p = Pair()
    assert p.dst.core.handle_frame(STRAY, TO2, WALL[0]).verdict == "held"
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    msgs = p.to_dst()
    assert [m["type"] for m in msgs] == ["hello", "state", "final"]
    assert not any(w["status"] for w in p.src.writer.writes)   # the row stays begun
    assert p.dst.results == []                                  # held until the barrier
    p.dst.mgr.on_barrier(p.dst.barriers[0], p.now)
    [res] = p.dst.results
    assert res.verdict == "allow" and res.out[0][0] == STRAY
    [w] = p.dst.writer.writes
    assert w["status"] == "done" and w["outcome"] == "ok: 3 connections"
    assert w["stats"]["buffered"] == 1 and {"imported", "done"} <= set(w["timeline"])
    p.to_src()
    assert p.src.conns() == [] and "cleaned" in p.src.writer.merged("timeline")
    # The replica still shows the row begun (our write in flight): no new hold.
    p.set_rows(row("begun", path="unannounced"))
    assert p.dst.core.handle_frame(ORPHAN, TO2, WALL[0]).verdict == "invalid"
    WALL[0] += 10
    p.run()
    assert p.dst.mgr.counters["fallbacks"] == 0 and len(p.dst.writer.writes) == 1


# ------------------------------------------------------------ rejections


def _tamper_vm(msgs):
    snap = msgs[1]["records"]
    snap[0]["vm"] = "b1"
    msgs[2]["digest"] = digest(snap)


REJECTIONS = {
    "wrong peer": ({"peer": "h3"}, None, "is not the source h1"),
    "wrong token": ({"token": "cd" * 16}, None, "wrong token"),
    "not active": ({"status": "done"}, None, "a replayed or late transfer"),
    "another vm": ({}, _tamper_vm, "is for VM 'b1'"),
    "bad digest": ({}, lambda m: m[2].update(digest="0" * 64), "corrupt transfer"),
    "bad count": ({}, lambda m: m[2].update(count=2), "corrupt transfer"),
    "out of order": ({}, lambda m: m[2].update(seq=3), "out of order"),
    "no seq": ({}, lambda m: m[1].pop("seq"), "without a sequence number"),
    "not a hello": ({}, lambda m: m.pop(0), "expected hello"),
    "other migration": ({}, lambda m: m[1].update(migration="x"), "another migration"),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_a_bad_transfer_is_refused_whole(case):
    opts, tamper, why = REJECTIONS[case]
    dst = Node("h2", destination())
    dst.mgr.set_rows([row(opts.get("status", "begun"))], PEERS, 10.0)
    msgs = transfer(gathered(), token=opts.get("token", TOKEN))
    if tamper:
        tamper(msgs)
    dst.accept(peer=opts.get("peer", "h1"))
    dst.deliver(msgs, peer=opts.get("peer", "h1"))
    [error] = dst.nacks()
    assert why in error
    assert dst.chan.closed == ["in-1"]
    assert dst.conns() == [] and dst.applied == [] and dst.barriers == []
    assert dst.writer.writes == [] and dst.mgr.counters["rejected"] == 1


def test_a_second_transfer_of_the_same_migration_is_a_replay():
    dst = Node("h2", destination())
    dst.mgr.set_rows([row()], PEERS, 10.0)
    msgs = transfer(gathered())
    dst.accept()
    dst.deliver(msgs[:2])
    dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), 10.0)   # truncated
    dst.accept(sid="in-2")
    dst.deliver(msgs, sid="in-2")
    [error] = dst.nacks()
    assert "already received" in error and dst.chan.closed == ["in-2"]
    assert dst.conns() == [] and dst.applied == [] and dst.mgr.counters["rejected"] == 2


def test_a_hello_before_its_row_waits_then_is_refused():
    dst = Node("h2", destination())
    dst.accept()
    dst.deliver(transfer(gathered()))
    [t] = dst.mgr.listing()["transfers"]
    assert t["state"] == "waiting" and dst.chan.sent == []
    dst.mgr.run(10.0 + HELLO_WAIT - 0.1)
    assert dst.nacks() == []
    dst.mgr.run(10.0 + HELLO_WAIT)
    [error] = dst.nacks()
    assert "unknown migration" in error and dst.conns() == [] and dst.barriers == []


def test_a_hello_whose_row_arrives_in_time_proceeds():
    dst = Node("h2", destination())
    dst.accept()
    dst.deliver(transfer(gathered()))
    dst.mgr.set_rows([row()], PEERS, 11.0)
    dst.mgr.run(11.0)
    assert dst.barriers == [100] and len(dst.conns()) == 3      # pending messages replayed
    dst.mgr.on_barrier(100, 11.0)
    assert [m["type"] for _, m in dst.chan.sent] == ["ack"]


# ------------------------------------------------------------ duplicates, truncation


def test_a_duplicate_changes_nothing_and_a_late_message_is_ignored():
    dst = Node("h2", destination())
    dst.mgr.set_rows([row()], PEERS, 10.0)
    records = gathered()
    hello, snap, final = transfer(records)
    dropped = {"type": "state", "migration": UUID, "seq": 2, "kind": "changes",
               "records": [], "removed": [records[0]["conn"] + [records[0]["chain"]]]}
    final.update(seq=3, count=2, digest=digest(records[1:]))
    dst.accept()
    dst.deliver([hello, snap, dropped, snap, dropped, final])   # snap again would re-add
    assert dst.nacks() == [] and len(dst.conns()) == 2
    dst.mgr.on_barrier(100, 10.0)
    before = (len(dst.chan.sent), len(dst.applied), len(dst.writer.writes))
    late = dict(final, seq=4)
    dst.deliver([snap, late, dict(dropped, seq=5, removed=[])])
    assert (len(dst.chan.sent), len(dst.applied), len(dst.writer.writes)) == before
    assert len(dst.conns()) == 2 and dst.barriers == [100]


def test_a_late_ack_at_the_source_changes_nothing():
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    p.to_dst()
    p.dst.mgr.on_barrier(100, p.now)
    [ack] = p.to_src()
    writes = len(p.src.writer.writes)
    p.src.mgr.on_event(Event("message", OUT, "h2", ack, None, 10), p.now)
    p.src.mgr.on_event(Event("closed", OUT, "h2", None, "closed", None), p.now)
    assert len(p.src.writer.writes) == writes and p.src.mgr.counters["cleaned"] == 1


def test_a_truncated_transfer_imports_nothing():
    dst = Node("h2", destination())
    dst.mgr.set_rows([row()], PEERS, 10.0)
    dst.accept()
    dst.deliver(transfer(gathered())[:2])
    dst.mgr.on_event(Event("closed", "in-1", "h1", None, "eof", None), 10.0)
    assert dst.conns() == [] and dst.applied == [] and dst.barriers == []
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
    p.set_rows(row("begun"))
    p.connect()
    p.src.mgr.on_event(event, p.now)
    w = p.src.writer.writes[-1]
    assert w["status"] == "aborted" and "aborted" in w["timeline"]
    assert w["outcome"].startswith("aborted: destination h2: " + why.split(" before")[0])
    assert OUT in p.src.chan.closed
    p.set_rows(row("aborted"))
    p.run(migration.DEFAULT_TTL + 1)
    assert len(p.src.conns()) == 3 and p.src.applied == []
    assert p.src.core.handle_frame(STRAY, TO, 3.0).verdict == "allow"


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
    assert len(p.src.conns()) == 3


def test_an_abort_while_connecting_sends_nothing():
    p = Pair()
    p.set_rows(row("begun"))
    p.set_rows(row("aborted"))
    p.src.mgr.on_event(Event("connected", OUT, "h2", None, None, None), p.now)
    p.run(1.0)
    assert p.src.chan.sent == [] and p.src.writer.writes == []


# ------------------------------------------------------------ fallback


def test_no_state_within_wait_ms_falls_back_to_the_rules():
    dst = Node("h2", destination())
    dst.mgr.set_rows([row("begun", path="unannounced", wait_ms=100)], PEERS, 10.0)
    assert dst.core.handle_frame(STRAY, TO2, WALL[0]).verdict == "held"
    WALL[0] += 0.05
    dst.mgr.run(10.05)
    assert dst.results == [] and dst.writer.writes == []
    WALL[0] = 1000.0 + 0.1                  # the deadline: begun + wait-ms
    dst.mgr.run(10.1)
    assert [r.verdict for r in dst.results] == ["invalid"]
    [w] = dst.writer.writes
    assert w["status"] == "fallback" and w["from_statuses"] == ("begun", "streaming", "stunned")
    assert w["outcome"].startswith("fallback: no state from h1 within 100 ms")
    assert w["stats"] == {"buffered": 1} and "fallback" in w["timeline"]
    # Our write still in flight: the row is begun in the replica; no second hold.
    dst.mgr.set_rows([row("begun", path="unannounced", wait_ms=100)], PEERS, 10.2)
    assert dst.core.handle_frame(STRAY, TO2, WALL[0]).verdict == "invalid"
    WALL[0] += 1
    dst.mgr.run(11.2)
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
    monkeypatch.setattr(migration, "SNAPSHOT_PART", 1)
    p = Pair()
    p.set_rows(row("begun", path="unannounced"))
    p.connect()
    msgs = p.to_dst()
    states = [m for m in msgs if m["type"] == "state"]
    assert [(m["seq"], m["kind"], len(m["records"])) for m in states] == [
        (1, "snapshot", 1), (2, "changes", 1), (3, "changes", 1)]
    assert msgs[-1]["type"] == "final" and msgs[-1]["seq"] == 4
    p.dst.mgr.on_barrier(p.dst.barriers[0], p.now)
    assert len(p.dst.conns()) == 3 and p.dst.nacks() == []


def test_a_hold_outlasts_its_bound_while_the_state_is_arriving():
    p = Pair()
    p.set_rows(row("begun", path="unannounced", wait_ms=100))
    assert p.dst.core.handle_frame(STRAY, TO2, WALL[0]).verdict == "held"
    p.connect()
    msgs = p.src.chan.take()
    p.dst.deliver(msgs[:2], now=p.now)          # hello and snapshot, no final yet
    WALL[0] = 1000.0 + 5                        # far past begun + wait-ms
    p.run()
    assert p.dst.results == [] and p.dst.mgr.counters["fallbacks"] == 0
    p.dst.deliver(msgs[2:], now=p.now)
    p.dst.mgr.on_barrier(p.dst.barriers[0], p.now)
    assert [r.verdict for r in p.dst.results] == ["allow"]
