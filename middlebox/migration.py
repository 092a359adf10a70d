"""mbxd's migration manager: moves a VM's connection state between daemons.

docs/migration.md is the design.  One ``MigrationManager`` per daemon, driven
by the daemon's poll loop (one thread), like the core:

* ``set_rows(rows, peers, now)`` whenever the Migration rows naming this host
  (or the other hosts' Host rows) changed in the config monitor's replica;
* ``on_event(event, now)`` for each event of the TLS channel
  (``middlebox.migchan``);
* ``on_barrier(xid, now)`` and ``on_dump(xid, entries, now)`` for OpenFlow
  replies it asked for;
* ``run(now)`` every loop iteration: change streaming, hold deadlines,
  late cleanups, hellos waiting for their row.

The manager asks its shell (the daemon) for I/O through four callables:
``apply(add, delete)`` (cache flows), ``barrier() -> xid``,
``dump(tags) -> xid`` (a flow-stats request of those slices' cache flows)
and ``send(results)`` (core Results of held frames, to carry out).  Rows are
written through a ``RowWriter`` (per-key map mutations on the config
monitor's IDL).
"""

import logging
import time

from ovs.db import idl as ovsidl

from middlebox import vmstate
from middlebox.gcpause import gc_paused
from middlebox.vmstate import RecordError

LOG = logging.getLogger("mbxd.migration")

PROTOCOL_VERSION = 2         # 2: the digest over compact record arrays
ACTIVE = ("begun", "streaming", "stunned", "imported")
FINAL = ("done", "aborted", "fallback")
STREAM_INTERVAL = 0.1       # s between change messages while streaming
SNAPSHOT_PART = 20000       # records per state message (a few MB of JSON)
TRANSFER_GRACE = 60.0       # s a hold may outlast its bound while state is arriving
HELLO_WAIT = 3.0            # s an incoming hello may wait for its row to arrive
DEFAULT_TTL = 60.0          # s the source keeps an unacknowledged VM's state
SIGNIFICANT = ("origin", "verdict", "state", "fins", "flows", "xlate", "home", "rule")


def _ms(t):
    return int(round(t * 1000))


def _scalar(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def _map(value):
    return dict(value) if isinstance(value, dict) else {}


class Row:
    """The fields of a Migration row the manager uses (from a plain row)."""

    __slots__ = ("uuid", "vm", "source", "destination", "path", "status", "token",
                 "timeline", "stats", "options")

    def __init__(self, plain):
        self.uuid = str(plain.uuid)
        for name in ("vm", "source", "destination", "path", "status", "token"):
            setattr(self, name, _scalar(getattr(plain, name, None), "") or "")
        self.timeline = _map(getattr(plain, "timeline", None))
        self.stats = _map(getattr(plain, "stats", None))
        self.options = _map(getattr(plain, "options", None))

    @property
    def wait(self):
        try:
            return max(0.1, min(60.0, int(self.options.get("wait-ms", 3000)) / 1000.0))
        except (TypeError, ValueError):
            return vmstate.DEFAULT_WAIT


class RowWriter:
    """Writes to Migration rows: a status (guarded: never over a final one,
    and only from the statuses given), timeline and stats keys (mutations),
    an outcome.  One transaction in flight; a failed one is retried."""

    def __init__(self, monitor, host):
        self.monitor = monitor
        self.host = host
        self._queue = []            # [(uuid, status, from_statuses, timeline, stats, outcome)]
        self._txn = None
        self.failures = 0

    def write(self, uuid, status=None, from_statuses=None, timeline=None, stats=None,
              outcome=None):
        self._queue.append((uuid, status, from_statuses, dict(timeline or {}),
                            dict(stats or {}), outcome))

    def _ops(self, item):
        uuid, status, from_statuses, timeline, stats, outcome = item
        where = [["_uuid", "==", ["uuid", uuid]]]
        ops = []
        if status is not None or outcome is not None:
            guard = list(where)
            blocked = [s for s in ACTIVE + FINAL
                       if s in FINAL or (from_statuses is not None and s not in from_statuses)]
            guard += [["status", "!=", s] for s in blocked if s != status]
            row = {}
            if status is not None:
                row["status"] = status
            if outcome is not None:
                row["outcome"] = outcome
            ops.append({"op": "update", "table": "Migration", "where": guard, "row": row})
        for column, values in (("timeline", timeline), ("stats", stats)):
            if values:
                ops.append({"op": "mutate", "table": "Migration", "where": where,
                            "mutations": [
                                [column, "delete", ["set", sorted(values)]],
                                [column, "insert", ["map", [[k, int(v)] for k, v
                                                            in sorted(values.items())]]]]})
        return ops

    def flush(self):
        if self.monitor is None:
            self._queue.clear()
            return
        idl = self.monitor.idl
        if self._txn is not None:
            status = self._txn[0].commit()
            if status == ovsidl.Transaction.INCOMPLETE:
                return
            txn, items = self._txn
            self._txn = None
            if status not in (ovsidl.Transaction.SUCCESS, ovsidl.Transaction.UNCHANGED):
                self.failures += 1
                LOG.warning("migration record: commit failed (%s), retrying",
                            txn.get_error())
                self._queue[:0] = items
        if not self._queue or idl.state != idl.IDL_S_MONITORING or idl.txn is not None:
            return
        items, self._queue = self._queue, []
        txn = ovsidl.Transaction(idl)
        for item in items:
            for op in self._ops(item):
                txn.add_op(op)
        txn.add_comment("mbxd %s: migration" % self.host)
        txn.commit()
        self._txn = (txn, items)

    def wait(self, poller):
        if self._txn is not None:
            self._txn[0].wait(poller)

    def busy(self):
        return bool(self._queue or self._txn)


class _Out:
    """This host is the source of a migration."""

    def __init__(self, row, now):
        self.row = row
        self.uuid = row.uuid
        self.vm = row.vm
        self.sid = "out-" + row.uuid
        self.state = "gathering"    # connecting sending final acked failed
        self.sent = {}              # record key -> record as sent (the mirror)
        self.seq = 0
        self.started = now
        self.final_wanted = row.path == "unannounced"
        self.next_stream = 0.0
        self.changes = 0
        self.messages = 0
        self.snapshot = None        # records gathered, not yet sent
        self.dump_xid = None
        self.mode = vmstate.DEFAULT_GATHER
        self.gather_ms = 0
        self.final_at = None
        self.cleanup_at = None      # release the VM's state at this time (TTL)
        self.cleaned = False


class _In:
    """This host is the destination of a transfer (one TLS session)."""

    def __init__(self, sid, peer, now):
        self.sid = sid
        self.peer = peer
        self.started = now
        self.row = None
        self.hello = None
        self.state = "hello"        # waiting receiving importing acked rejected
        self.pending = []           # messages that came while waiting for the row
        self.staged = {}
        self.seq = 0
        self.bytes = 0
        self.barrier = None
        self.import_ms = 0
        self.entries = 0
        self.flows = 0


class MigrationManager:
    def __init__(self, host, core, channel, writer, apply, barrier, dump, send,
                 ttl=DEFAULT_TTL, clock=time.monotonic):
        self.host = host
        self.core = core
        self.channel = channel
        self.writer = writer
        self._apply, self._barrier, self._dump, self._send = apply, barrier, dump, send
        self.ttl = ttl
        self.clock = clock
        self.rows = {}              # uuid -> Row
        self.peers = {}             # host name -> (migration address, encap ip)
        self.outs = {}              # uuid -> _Out
        self.ins = {}               # sid -> _In
        self._used = set()          # migrations whose transfer this host accepted
        self._settled = set()       # migrations whose hold here ended (landed / fell back)
        self._barriers = {}         # xid -> _In
        self._dumps = {}            # xid -> _Out
        self._late = {}             # migration uuid -> (VM, cleanup time)
        self.counters = dict.fromkeys(
            ("sent", "received", "imported", "rejected", "aborted", "fallbacks",
             "cleaned", "entries_sent", "entries_imported"), 0)
        self.history = []           # recent outcomes, for ovs-appctl

    # ------------------------------------------------------------ config
    def set_rows(self, rows, peers, now):
        self.rows = {r.uuid: r for r in (Row(p) for p in rows)}
        self.peers = {name: (_scalar(getattr(h, "migration_address", None), "") or "",
                             _scalar(getattr(h, "encap_ip", None), "") or "")
                      for name, h in (peers or {}).items()}
        for row in self.rows.values():
            if row.source == self.host:
                self._source_row(row, now)
            if row.destination == self.host and row.path == "unannounced" \
                    and row.status in ("begun", "streaming", "stunned") \
                    and row.uuid not in self._settled:  # not again while our write is in flight
                wall = time.time()      # holds run on the packets' clock
                begun = row.timeline.get("begun")
                deadline = (begun / 1000.0 if begun else wall) + row.wait
                self.core.expect_vm(row.vm, wall, max(deadline, wall + 0.1))
        for uuid, out in list(self.outs.items()):
            if uuid not in self.rows and out.state not in ("acked", "failed"):
                self._fail(out, "its migration record is gone", write=False)

    def _source_row(self, row, now):
        out = self.outs.get(row.uuid)
        if out is None:
            if row.status in ("done", "fallback") and row.uuid not in self._late:
                # Over without this daemon taking part (it was down): what it
                # still holds of the VM goes after the TTL, unless it is back.
                self._late[row.uuid] = (row.vm, now + self.ttl)
            if row.status not in ("begun", "streaming", "stunned"):
                return
            if self._newer_to_me(row):
                return
            out = self.outs[row.uuid] = _Out(row, now)
            self._gather(out, now)
            return
        out.row = row
        if row.status == "stunned":
            out.final_wanted = True
        elif row.status == "aborted" and out.state not in ("acked", "failed"):
            self._fail(out, "aborted", write=False)
        elif row.status == "done" and not out.cleaned:
            if out.state == "acked":
                self._cleanup(out, now)
            elif out.cleanup_at is None:
                out.cleanup_at = now + self.ttl

    def _newer_to_me(self, row):
        """Is there a later migration of the same VM to this host?"""
        begun = row.timeline.get("begun", 0)
        return any(r.vm == row.vm and r.destination == self.host
                   and r.timeline.get("begun", 0) > begun for r in self.rows.values())

    # ------------------------------------------------------------ source
    def _gather(self, out, now):
        out.mode = self.core.gather_mode(out.vm)
        t0 = self.clock()
        if out.mode == "service":
            self._gathered(out, self.core.gather(out.vm, "service"), t0, now)
        else:
            out.dump_xid = self._dump(self.core.gather_tags(out.vm))
            out.dump_t0 = t0
            self._dumps[out.dump_xid] = out

    def on_dump(self, xid, entries, now):
        out = self._dumps.pop(xid, None)
        if out is None:
            return False
        flows = [(f, packets, nbytes) for f, packets, nbytes, *_ in entries]
        self._gathered(out, self.core.gather(out.vm, out.mode, flows), out.dump_t0, now)
        return True

    def _gathered(self, out, records, t0, now):
        out.gather_ms = _ms(self.clock() - t0)
        out.snapshot = records
        address = self.peers.get(out.row.destination, ("", ""))[0]
        if not address:
            out.state = "waiting-address"
            return
        self._connect(out, address)

    def _connect(self, out, address):
        out.state = "connecting"
        LOG.info("migration %s of %s: %d connections (%s gather) to %s at %s",
                 out.uuid[:8], out.vm, len(out.snapshot), out.mode, out.row.destination,
                 address)
        self.channel.connect(out.sid, address, out.row.destination)

    def _send_msg(self, out, message):
        self.channel.send(out.sid, message)
        out.messages += 1

    def _connected(self, out, now):
        r = out.row
        self._send_msg(out, {"type": "hello", "version": PROTOCOL_VERSION,
                             "migration": out.uuid, "token": r.token, "vm": out.vm,
                             "source": self.host, "destination": r.destination})
        records = out.snapshot or []
        out.snapshot = None
        # A large snapshot goes in parts: seq 1 is the snapshot, the rest
        # are changes that add records (a message stays far below MAX_MESSAGE).
        # No cyclic collection while encoding them and keying what was sent.
        with gc_paused():
            for start in range(0, max(len(records), 1), SNAPSHOT_PART):
                out.seq += 1
                self._send_msg(out, {"type": "state", "migration": out.uuid, "seq": out.seq,
                                     "kind": "snapshot" if out.seq == 1 else "changes",
                                     "records": records[start:start + SNAPSHOT_PART],
                                     "removed": []})
            out.sent = {vmstate.record_key(rec): rec for rec in records}
        out.state = "sending"
        out.next_stream = now + STREAM_INTERVAL
        self.counters["entries_sent"] += len(records)
        status = {"status": "streaming", "from_statuses": ("begun",)} \
            if r.path == "announced" else {}
        self.writer.write(out.uuid, timeline={"snapshot": _ms(time.time())},
                          stats={"gather_ms": out.gather_ms}, **status)
        if out.final_wanted:
            self._final(out, now)

    def _changes(self, out, full):
        """Records new or changed since sent (``full``: any field, else the
        significant ones), and the keys of those that went."""
        with gc_paused():
            now_recs = {vmstate.record_key(rec): rec
                        for rec in self.core.gather(out.vm, "service")}
        changed = []
        for key, rec in now_recs.items():
            old = out.sent.get(key)
            if old is None or (rec != old if full else
                               any(rec.get(f) != old.get(f) for f in SIGNIFICANT)):
                changed.append(rec)
        removed = [list(key[1]) + [list(key[0])] for key in out.sent if key not in now_recs]
        for rec in changed:
            out.sent[vmstate.record_key(rec)] = rec
        for key in [k for k in out.sent if k not in now_recs]:
            del out.sent[key]
        return changed, removed

    def _stream(self, out, now, full=False):
        changed, removed = self._changes(out, full)
        if not changed and not removed:
            return
        LOG.debug("migration %s: %d changed, %d removed%s", out.uuid[:8], len(changed),
                  len(removed), " (final)" if full else "")
        out.seq += 1
        out.changes += len(changed) + len(removed)
        self._send_msg(out, {"type": "state", "migration": out.uuid, "seq": out.seq,
                             "kind": "changes", "records": changed, "removed": removed})

    def _final(self, out, now):
        self._stream(out, now, full=True)
        out.seq += 1
        self._send_msg(out, {"type": "final", "migration": out.uuid, "seq": out.seq,
                             "count": len(out.sent),
                             "digest": vmstate.digest(out.sent.values())})
        out.state = "final"
        out.final_at = now
        self.writer.write(out.uuid, timeline={"final": _ms(time.time())})

    def _acked(self, out, message, now):
        out.state = "acked"
        sent, _ = self.channel.stats(out.sid)
        self.counters["sent"] += 1
        self.writer.write(out.uuid, timeline={"acked": _ms(time.time())},
                          stats={"bytes": sent, "messages": out.messages,
                                 "changes": out.changes,
                                 "transfer_ms": _ms(now - out.started) - out.gather_ms})
        self.channel.close(out.sid)
        LOG.info("migration %s of %s: %s acknowledged %s connections (%d bytes)",
                 out.uuid[:8], out.vm, out.row.destination, message.get("entries"), sent)
        row = self.rows.get(out.uuid, out.row)
        if row.status == "done" or row.path == "unannounced":
            self._cleanup(out, now)

    def _fail(self, out, why, write=True):
        if out.state in ("acked", "failed"):
            return
        out.state = "failed"
        self.channel.close(out.sid)
        self.counters["aborted"] += 1
        line = "destination %s: %s" % (out.row.destination, why)
        self._remember(out.vm, "source", "failed: " + line)
        if write and out.row.path == "announced":
            LOG.warning("migration %s of %s aborted: %s; the VM keeps its state here",
                        out.uuid[:8], out.vm, line)
            self.writer.write(out.uuid, status="aborted", outcome="aborted: " + line,
                              timeline={"aborted": _ms(time.time())})
        else:
            LOG.warning("migration %s of %s: %s", out.uuid[:8], out.vm, line)

    def _cleanup(self, out, now):
        if out.cleaned:
            return
        out.cleaned = True
        if self._newer_to_me(self.rows.get(out.uuid, out.row)):
            return                      # the VM came back meanwhile: its state is new
        changes = self.core.release_vm(out.vm)
        self._apply(changes.add, changes.delete)
        self.counters["cleaned"] += 1
        self.writer.write(out.uuid, timeline={"cleaned": _ms(time.time())})
        LOG.info("migration %s: %s's state released here (%d flows removed, %d SNAT "
                 "forwarders)", out.uuid[:8], out.vm, len(changes.delete), len(changes.add))

    # ------------------------------------------------------------ destination
    def _reject(self, inc, why):
        if inc.state in ("rejected", "acked"):
            return
        inc.state = "rejected"
        inc.staged = {}
        self.counters["rejected"] += 1
        uuid = inc.hello.get("migration") if isinstance(inc.hello, dict) else None
        self.channel.send(inc.sid, {"type": "nack", "migration": uuid, "error": why})
        self.channel.close(inc.sid)
        LOG.warning("refused a state transfer from %s%s: %s; nothing imported", inc.peer,
                    " for migration %s" % str(uuid)[:8] if uuid else "", why)
        self._remember(inc.row.vm if inc.row else "?", "destination", "refused: " + why)

    def _check_hello(self, inc, now):
        """Accept, refuse, or keep waiting for the row (returns True when decided)."""
        h = inc.hello
        uuid = h.get("migration")
        row = self.rows.get(uuid) if isinstance(uuid, str) else None
        if row is None:
            if now - inc.started < HELLO_WAIT:
                inc.state = "waiting"   # the row may not have reached this host yet
                return False
            self._reject(inc, "unknown migration %r" % uuid)
            return True
        why = None
        if h.get("version") != PROTOCOL_VERSION:
            why = "protocol version %r, not %d" % (h.get("version"), PROTOCOL_VERSION)
        elif row.destination != self.host:
            why = "migration %s goes to %s, not here" % (uuid[:8], row.destination)
        elif row.source != inc.peer:
            why = ("peer %s is not the source %s named for migration %s"
                   % (inc.peer, row.source, uuid[:8]))
        elif h.get("token") != row.token or h.get("vm") != row.vm:
            why = "wrong token or VM for migration %s" % uuid[:8]
        elif uuid in self._used or row.status not in ("begun", "streaming", "stunned"):
            why = "migration %s is %s: a replayed or late transfer" % (
                uuid[:8], row.status if row.status not in ACTIVE else "already received")
        if why is not None:
            self._reject(inc, why)
            return True
        self._used.add(uuid)
        inc.row = row
        inc.state = "receiving"
        return True

    def _message_in(self, inc, msg, size, now):
        inc.bytes += size
        if inc.state in ("rejected", "acked", "importing"):
            return
        kind = msg.get("type")
        if inc.state == "hello":
            if kind != "hello" or inc.hello is not None:
                self._reject(inc, "expected hello, got %r" % kind)
                return
            inc.hello = msg
            self._check_hello(inc, now)
            return
        if inc.state == "waiting":
            inc.pending.append((msg, size))
            return
        if msg.get("migration") != inc.row.uuid:
            self._reject(inc, "message for another migration")
            return
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self._reject(inc, "message without a sequence number")
            return
        if seq <= inc.seq:
            return                      # seen already: a duplicate changes nothing
        if seq != inc.seq + 1:
            self._reject(inc, "message %d after %d: out of order" % (seq, inc.seq))
            return
        inc.seq = seq
        if kind == "state":
            records, removed = msg.get("records"), msg.get("removed")
            if not isinstance(records, list) or not isinstance(removed, list) or \
                    (seq == 1) != (msg.get("kind") == "snapshot"):
                self._reject(inc, "malformed state message %d" % seq)
                return
            try:
                with gc_paused():
                    for rec in records:
                        inc.staged[vmstate.record_key(rec)] = rec
                    for item in removed:
                        inc.staged.pop((tuple(item[-1]), tuple(item[:-1])), None)
            except (TypeError, KeyError, IndexError, AttributeError):
                self._reject(inc, "malformed record in message %d" % seq)
            return
        if kind == "final":
            self._import(inc, msg, now)
            return
        self._reject(inc, "unexpected message %r" % kind)

    def _import(self, inc, msg, now):
        records = list(inc.staged.values())
        if msg.get("count") != len(records) or msg.get("digest") != vmstate.digest(records):
            self._reject(inc, "corrupt transfer: %r records announced, %d staged, digest "
                              "%s" % (msg.get("count"), len(records),
                                      "differs" if msg.get("count") == len(records)
                                      else "not checked"))
            return
        t0 = self.clock()
        try:
            changes, n = self.core.import_vm(inc.row.vm, records, time.time())
        except RecordError as err:
            self._reject(inc, str(err))
            return
        self._apply(changes.add, changes.delete)
        inc.import_ms = _ms(self.clock() - t0)
        inc.entries, inc.flows = n, len(changes.add)
        inc.state = "importing"
        inc.barrier = self._barrier()
        self._barriers[inc.barrier] = inc
        self.counters["entries_imported"] += n

    def on_barrier(self, xid, now):
        inc = self._barriers.pop(xid, None)
        if inc is None:
            return False
        row = inc.row
        inc.state = "acked"
        self.channel.send(inc.sid, {"type": "ack", "migration": row.uuid,
                                    "entries": inc.entries, "flows": inc.flows})
        self.counters["imported"] += 1
        self._settled.add(row.uuid)
        results, held = self.core.release_held(row.vm, time.time(), landed=True)
        self._send(results)
        wall = _ms(time.time())
        timeline = {"imported": wall}
        if row.path == "unannounced":
            status, outcome = "done", "ok: %d connections" % inc.entries
            timeline["done"] = wall
        else:
            status, outcome = "imported", None
        self.writer.write(row.uuid, status=status,
                          from_statuses=("begun", "streaming", "stunned"),
                          timeline=timeline, outcome=outcome,
                          stats={"entries": inc.entries, "flows": inc.flows,
                                 "buffered": held, "import_ms": inc.import_ms})
        self._remember(row.vm, "destination", "imported %d connections from %s"
                       % (inc.entries, inc.peer))
        LOG.info("migration %s of %s: imported %d connections from %s, %d flows, "
                 "%d packets held", row.uuid[:8], row.vm, inc.entries, inc.peer,
                 inc.flows, held)
        return True

    def _closed_in(self, inc, reason):
        self.ins.pop(inc.sid, None)
        if inc.state in ("receiving", "hello", "waiting"):
            inc.state = "rejected"
            self.counters["rejected"] += 1
            LOG.warning("state transfer from %s%s ended early (%s): nothing imported",
                        inc.peer, " for migration %s" % inc.row.uuid[:8] if inc.row else "",
                        reason)
            self._remember(inc.row.vm if inc.row else "?", "destination",
                           "transfer ended early (%s)" % reason)

    # ------------------------------------------------------------ events
    def on_event(self, ev, now):
        if ev.sid.startswith("out-"):
            out = self.outs.get(ev.sid[4:])
            if out is None:
                return
            if ev.kind == "connected":
                if out.state != "connecting":
                    return                  # failed (aborted, row gone) meanwhile
                if ev.peer != out.row.destination:
                    self._fail(out, "its certificate names %s" % ev.peer)
                else:
                    self._connected(out, now)
            elif ev.kind == "message":
                msg = ev.message
                if msg.get("type") == "ack" and msg.get("migration") == out.uuid \
                        and out.state == "final":
                    self._acked(out, msg, now)
                elif msg.get("type") == "nack":
                    self._fail(out, "refused the transfer: %s" % msg.get("error"))
            elif ev.kind == "closed" and out.state not in ("acked", "failed"):
                self._fail(out, "connection %s before the acknowledgement" % (
                    ev.reason if ev.reason != "eof" else "closed"))
            return
        if ev.kind == "accepted":
            self.ins[ev.sid] = _In(ev.sid, ev.peer, now)
            return
        inc = self.ins.get(ev.sid)
        if inc is None:
            return
        if ev.kind == "message":
            self.counters["received"] += 1
            self._message_in(inc, ev.message, ev.size or 0, now)
        elif ev.kind == "closed":
            self._closed_in(inc, ev.reason)

    # ------------------------------------------------------------ timers
    def run(self, now):
        for out in list(self.outs.values()):
            if out.state == "waiting-address":
                address = self.peers.get(out.row.destination, ("", ""))[0]
                if address:
                    self._connect(out, address)
                elif now - out.started > HELLO_WAIT:
                    self._fail(out, "no migration address known")
            elif out.state == "sending":
                if out.final_wanted:
                    self._final(out, now)
                elif now >= out.next_stream:
                    out.next_stream = now + STREAM_INTERVAL
                    self._stream(out, now)
            if out.cleanup_at is not None and now >= out.cleanup_at and not out.cleaned:
                self._cleanup(out, now)
        for inc in list(self.ins.values()):
            if inc.state == "waiting":
                self._check_hello(inc, now)
                if inc.state == "receiving":
                    for msg, size in inc.pending:
                        self._message_in(inc, msg, size, now)
                    inc.pending = []
        for uuid, (vm, due) in list(self._late.items()):
            if due is not None and now >= due:
                self._late[uuid] = (vm, None)
                row = self.rows.get(uuid)
                if row is not None and not self._newer_to_me(row) \
                        and not self.core.is_local(vm):
                    changes = self.core.release_vm(vm)
                    self._apply(changes.add, changes.delete)
                    LOG.info("migration %s: %s's leftover state released here",
                             uuid[:8], vm)
        for vm in self.core.holds_due(time.time()):
            # The bound is for a source that never answers: state that is
            # arriving (or being imported) is waited for, up to a limit.
            if any(i.row is not None and i.row.vm == vm
                   and i.state in ("receiving", "importing")
                   and now - i.started < TRANSFER_GRACE for i in self.ins.values()):
                continue
            self._fallback(vm)
        self.core.forget_holds(time.time())

    def _fallback(self, vm):
        results, held = self.core.release_held(vm, time.time(), landed=False)
        self._send(results)
        self.counters["fallbacks"] += 1
        row = next((r for r in self.rows.values() if r.vm == vm
                    and r.destination == self.host and r.status in ("begun", "streaming",
                                                                    "stunned")), None)
        source = row.source if row is not None else "its previous host"
        line = "no state from %s within %.0f ms: evaluating %d held packets by the rules" % (
            source, (row.wait if row is not None else vmstate.DEFAULT_WAIT) * 1000, held)
        LOG.warning("VM %s: %s", vm, line)
        self._remember(vm, "destination", "fallback: " + line)
        if row is not None:
            self._settled.add(row.uuid)
            self.writer.write(row.uuid, status="fallback",
                              from_statuses=("begun", "streaming", "stunned"),
                              outcome="fallback: " + line,
                              timeline={"fallback": _ms(time.time())},
                              stats={"buffered": held})

    def _remember(self, vm, role, what):
        self.history.append({"time": round(time.time(), 3), "vm": vm, "role": role,
                             "what": what})
        del self.history[:-100]

    # ------------------------------------------------------------ inspection
    def listing(self):
        outs = [{"migration": o.uuid, "vm": o.vm, "role": "source",
                 "peer": o.row.destination, "path": o.row.path, "state": o.state,
                 "mode": o.mode, "entries": len(o.sent), "seq": o.seq}
                for o in self.outs.values()]
        ins = [{"migration": i.row.uuid if i.row else None,
                "vm": i.row.vm if i.row else None, "role": "destination",
                "peer": i.peer, "state": i.state, "entries": len(i.staged) or i.entries,
                "seq": i.seq} for i in self.ins.values()]
        holds = [{"vm": vm, "state": h.state, "held": len(h.frames), "count": h.count}
                 for vm, h in sorted(self.core.holds.items())]
        return {"transfers": outs + ins, "holds": holds,
                "forwarders": self.core.forwarders(), "counters": dict(self.counters),
                "history": list(self.history)}
