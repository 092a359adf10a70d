"""mbxd's migration manager: moves a VM's connection state between daemons.

docs/migration.md is the design.  One ``MigrationManager`` per daemon, driven
by the daemon's poll loop (one thread):

* ``set_rows(rows, peers, now)`` whenever the Migration rows naming this host
  (or the other hosts' Chassis rows) changed in the config monitor's
  southbound replica;
* ``on_event(event, now)`` for each event of the TLS channel
  (``middlebox.migchan``);
* ``on_barrier(xid, now)`` for the OpenFlow barriers it asked for;
* ``run(now)`` every loop iteration: change streaming, lazy commits, late
  cleanups, hellos waiting for their row.

The state is conntrack's: the source dumps the VM's zones
(``middlebox.conntable``), the records travel in the binary format of
``middlebox.conn``, and the destination commits them into its own zones by
OpenFlow packet-outs (``middlebox.ctcommit``), in bulk or at each
connection's first packet (lazy).  The manager uses its daemon (the shell:
``middlebox.main.Daemon``) for that I/O.  Rows are written through a
``RowWriter`` (per-key map mutations on the config monitor's southbound IDL).
"""

import logging
import time

from ovs.db import idl as ovsidl

from mbxmodel.snapshot import migration_record
from mbxmodel.state import ACTIVE_MIGRATION, FINAL_MIGRATION
from middlebox import arrivals, conn as C, ctcommit, dataplane as D, vmstate
from middlebox.vmstate import RecordError
from middlebox.vswitch import VswitchError

LOG = logging.getLogger("mbxd.migration")

PROTOCOL_VERSION = 3         # 3: conntrack records in middlebox.conn's binary format
STREAM_INTERVAL = 0.1       # s between change messages while streaming
SNAPSHOT_PART = C.PART_RECORDS  # records per state message
TRANSFER_GRACE = 60.0       # s a hold may outlast its bound while state is arriving
HELLO_WAIT = 3.0            # s an incoming hello may wait for its row to arrive
DEFAULT_TTL = 60.0          # s the source keeps an unacknowledged VM's state
IMPORT_MODES = ("bulk", "lazy")
LAZY_CHUNK = 2000           # records a lazy import commits per barrier (~40 ms of switch)
FORWARD_IDLE = {6: 3600, 17: 180}   # s a forwarder of a moved SNAT connection lasts idle


def _ms(t):
    return int(round(t * 1000))


def _scalar(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def wait_s(record):
    """How long (s) the destination of ``record`` (a MigrationRecord) holds
    an arriving VM's packets for its state: ``options:wait-ms``, 0.1-60 s."""
    try:
        return max(0.1, min(60.0, int(record.options.get("wait-ms", 3000)) / 1000.0))
    except (TypeError, ValueError):
        return arrivals.DEFAULT_WAIT


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
            blocked = [s for s in ACTIVE_MIGRATION + FINAL_MIGRATION
                       if s in FINAL_MIGRATION
                       or (from_statuses is not None and s not in from_statuses)]
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
        idl = self.monitor.sb_idl
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
        self.state = "gathering"    # waiting-address connecting sending final acked failed
        self.sent = {}              # (slice, conn key) -> record as sent (the mirror)
        self.seq = 0
        self.started = now
        self.final_wanted = row.path == "unannounced"
        self.next_stream = 0.0
        self.stream_cost = 0.0      # s the last gather took (streaming adapts to it)
        self.changes = 0
        self.messages = 0
        self.mode = vmstate.DEFAULT_GATHER
        self.gather_ms = 0
        self.reviewed_out = 0
        self.final_at = None
        self.snapshot_final = False  # gathered once the VM had left: nothing changes after
        self.forwarded = set()      # reply 5-tuples of SNAT connections forwarded
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
        self.state = "hello"        # waiting receiving slice importing acked rejected
        self.pending = []           # messages that came while waiting for the row
        self.staged = {}            # (slice, conn key) -> (slice, conn)
        self.seq = 0
        self.bytes = 0
        self.barrier = None
        self.import_ms = 0
        self.entries = 0
        self.commits = 0
        self.lazy = None            # ctcommit.LazyCommits still to commit (lazy import)
        self.lazy_barrier = None    # the barrier after the chunk in flight
        self.early = None           # staged keys committed as their part came (bulk, unannounced)
        self.early_commits = 0      # their packet-outs
        self.final = None           # (final message, when) waiting for the VM's slice


def _key(sl, c):
    return (sl, c.key)


def _import_mode(slices, vm, default="bulk"):
    """The VM's chain's migration-import option; ``default`` while no slice
    of this host serves the VM yet (its config has not arrived)."""
    known = False
    for s in slices.values():
        if any(v.name == vm for v in s.config.vms):
            known = True
            for sv in s.config.services:
                mode = dict(sv.options or {}).get("migration-import")
                if mode:
                    return mode if mode in IMPORT_MODES else "bulk"
    return "bulk" if known else default


class MigrationManager:
    def __init__(self, host, daemon, channel, writer, ttl=DEFAULT_TTL, clock=time.monotonic):
        self.host = host
        self.daemon = daemon
        self.channel = channel
        self.writer = writer
        self.ttl = ttl
        self.clock = clock
        self.rows = {}              # uuid -> MigrationRecord
        self.peers = {}             # host name -> (migration address, encap ip)
        self.senders = frozenset()  # hosts an active migration to here comes from
        self.outs = {}              # uuid -> _Out
        self.ins = {}               # sid -> _In
        self._used = set()          # migrations whose transfer this host accepted
        self._settled = set()       # migrations whose hold here ended (landed / fell back)
        self._barriers = {}         # xid -> _In
        self._late = {}             # migration uuid or ("left", VM) -> (VM, cleanup time)
        self._left_slices = {}      # departed VM -> {tag: Slice} it was served by here
        self._forwarders = {}       # forwarder id -> dataplane.Forwarder
        self._fwd_vm = {}           # forwarder id -> VM name
        self._next_fid = 1
        self.counters = dict.fromkeys(
            ("sent", "received", "imported", "rejected", "aborted", "fallbacks",
             "cleaned", "entries_sent", "entries_imported", "lazy_commits"), 0)
        self.history = []           # recent outcomes, for ovs-appctl
        self._said = set()          # (migration uuid, failure) logged already (either end)

    # ------------------------------------------------------------ helpers
    @property
    def service(self):
        return self.daemon.service

    def incoming(self):
        """VMs moving here: the destination of their latest migration, not
        aborted, until they are bound here (then their binding keeps their
        zone) or a TTL passed.  They need their zone before the import and
        must keep it while the controller binds them."""
        latest = {}
        for r in self.rows.values():
            if r.vm not in latest or r.timeline.get("begun", 0) > \
                    latest[r.vm].timeline.get("begun", 0):
                latest[r.vm] = r
        wall = time.time() * 1000
        return {vm for vm, r in latest.items() if r.destination == self.host
                and r.status not in ("aborted", "fallback")
                and (r.status in ACTIVE_MIGRATION
                     or wall - r.timeline.get("begun", 0) < self.ttl * 1000)}

    def outgoing(self):
        """VMs leaving or gone, whose state this host keeps until it is
        released (from the rows too: a row may come with the VM's new
        binding, before its transfer starts)."""
        return {o.vm for o in self.outs.values() if not o.cleaned} | {
            r.vm for r in self.rows.values() if r.source == self.host
            and r.status in ("begun", "streaming", "stunned") and r.uuid not in self.outs
            and not self._newer_to_me(r)} | {
            # Over while this daemon was down: kept for the TTL.
            vm for uuid, (vm, due) in self._late.items() if due is not None
            and not (uuid in self.rows and self._newer_to_me(self.rows[uuid]))}

    def held_vms(self):
        """VMs that left whose state or SNAT forwarders this host still has:
        it must keep their slices (shared state "vm-state")."""
        return self.outgoing() | set(self._fwd_vm.values())

    def forwarders(self):
        return tuple(self._forwarders.values())

    def wait(self, poller):
        self.writer.wait(poller)
        if any(i.lazy is not None and i.state == "acked" and i.lazy_barrier is None
               for i in self.ins.values()):
            poller.immediate_wake()     # a lazy import's next chunk may go

    # ------------------------------------------------------------ config
    def knows(self, peer):
        """Whether ``peer`` (a host, by its certificate's CN) is the source
        of an active migration to this host: the channel admits only such
        peers past the handshake."""
        return peer in self.senders

    def set_rows(self, rows, peers, now):
        """``rows``: the Migration rows naming this host (plain rows);
        ``peers``: {host name: its Chassis row (plain)}."""
        self.rows = {r.uuid: r for r in map(migration_record, rows)}
        # The hosts that may send state here (read by the channel's threads:
        # replaced whole, never changed in place).
        self.senders = frozenset(r.source for r in self.rows.values()
                                 if r.destination == self.host
                                 and r.status in ACTIVE_MIGRATION)
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
                deadline = (begun / 1000.0 if begun else wall) + wait_s(row)
                self.daemon.arrivals.expect(row.vm, wall, max(deadline, wall + 0.1))
        self._said = {said for said in self._said if said[0] in self.rows}
        for uuid, out in list(self.outs.items()):
            if uuid not in self.rows and out.state not in ("acked", "failed"):
                self._fail(out, "its migration record is gone", write=False)

    def _source_row(self, row, now):
        out = self.outs.get(row.uuid)
        if out is None:
            if row.status in FINAL_MIGRATION and row.uuid not in self._late:
                # Over without this daemon taking part (it was down): what it
                # still holds of the VM goes after the TTL, unless it is back
                # (bound here again, as after an aborted move).
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
        elif row.status == "aborted" and out.state == "acked" and not out.cleaned:
            # Aborted after the destination took the state (the move was
            # rolled back): the VM comes back here, its state never left.
            out.cleaned = True
            self._keep(out)
            LOG.warning("migration %s of %s aborted after %s took its state: the VM "
                        "keeps its state here", out.uuid[:8], out.vm, row.destination)
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
    def _records(self, out):
        """The VM's records now, in its gather mode."""
        return [r for part in self._record_parts(out) for r in part]

    def _record_parts(self, out):
        """The VM's records now, in its gather mode, a part at a time: the
        datapath mode parses its zones' dumps a part at a time, so the first
        parts travel while the rest is read."""
        slices = self._slices_of(out.vm)
        mine = [s for s in slices.values() if any(v.name == out.vm for v in s.config.vms)]
        out.mode = vmstate.gather_mode(mine)
        zone = self.daemon.zones.vm(out.vm)
        if out.mode == "service":
            yield vmstate.known(out.vm, slices, zone or 0)
            return
        if zone is None:
            return
        table = self.daemon.conns
        snat = [(uuid, z) for (kind, uuid), z in self.daemon.zones.owners().items()
                if kind == "snat"]
        if out.mode == "datapath+review":
            records = vmstate.gather(out.vm, slices, table.zone(zone, stats=False),
                                     {uuid: table.zone(z, stats=False) for uuid, z in snat})
            records, dropped = vmstate.review(records, slices)
            out.reviewed_out += dropped
            yield records
            return
        for conns in table.zone_parts(zone, SNAPSHOT_PART):
            yield vmstate.gather(out.vm, slices, conns, {})
        for uuid, z in snat:
            for conns in table.zone_parts(z, SNAPSHOT_PART):
                yield vmstate.gather(out.vm, slices, (), {uuid: conns})

    def _gather(self, out, now):
        """The row is seen: connect and send the snapshot (once the
        destination's address is known)."""
        # Unannounced: the VM runs on its new host already: the snapshot is
        # final (no second gather) and its SNAT replies go there now (held
        # until its state lands).
        out.snapshot_final = out.final_wanted
        address = self.peers.get(out.row.destination, ("", ""))[0]
        if not address:
            out.state = "waiting-address"
            return
        self._start(out, address, now)

    def _start(self, out, address, now):
        """Connect, then hello and the snapshot, part by part as the zones
        are read (the channel sends once the session is up)."""
        r = out.row
        try:
            self.channel.connect(out.sid, address, r.destination)
        except ValueError:
            # The session of a failed try (the destination refused: its
            # slice had not arrived yet) is still closing: tried again
            # from ``run`` once it is closed.
            out.state = "waiting-address"
            return
        out.state = "connecting"
        self._send_msg(out, {"type": "hello", "version": PROTOCOL_VERSION,
                             "migration": out.uuid, "token": r.token, "vm": out.vm,
                             "source": self.host, "destination": r.destination})
        forward = r.path == "unannounced" and not self._newer_to_me(r)
        t0 = self.clock()
        first = True
        try:
            for records in self._record_parts(out):
                if not records and not first:
                    continue
                if forward:
                    self._forward(out, records)
                self._send_records(out, records, [], first)
                out.sent.update((_key(sl, c), (sl, c)) for sl, c in records)
                first = False
        except VswitchError as err:
            self._fail(out, "gathering %s's connections: %s" % (out.vm, err))
            return
        if first:
            self._send_records(out, [], [], True)
        out.stream_cost = self.clock() - t0
        out.gather_ms = _ms(out.stream_cost)
        self.counters["entries_sent"] += len(out.sent)
        LOG.info("migration %s of %s: %d records (%s gather, %d ms) to %s at %s",
                 out.uuid[:8], out.vm, len(out.sent), out.mode, out.gather_ms,
                 r.destination, address)
        if out.final_wanted:
            self._final(out, now)

    def _send_msg(self, out, message):
        self.channel.send(out.sid, message)
        out.messages += 1

    def _send_records(self, out, records, removed, first):
        """State messages with ``records`` (in parts) and the keys of
        ``removed`` connections."""
        parts = list(C.encode_parts([c for _, c in records], [sl for sl, _ in records],
                                    SNAPSHOT_PART)) or [b""]
        for i, data in enumerate(parts):
            out.seq += 1
            msg = {"type": "state", "migration": out.uuid, "seq": out.seq,
                   "kind": "snapshot" if first and i == 0 else "changes",
                   "removed": removed if i == len(parts) - 1 else []}
            if data:
                msg["data"] = data
            self._send_msg(out, msg)

    def _connected(self, out, now):
        """The destination's certificate checked: the snapshot is on its way."""
        if out.state == "connecting":
            out.state = "sending"
            out.next_stream = now + max(STREAM_INTERVAL, 2 * out.stream_cost)
        status = {"status": "streaming", "from_statuses": ("begun",)} \
            if out.row.path == "announced" else {}
        self.writer.write(out.uuid, timeline={"snapshot": _ms(time.time())},
                          stats={"gather_ms": out.gather_ms}, **status)

    def _stream(self, out, now):
        """Send what changed since the last message: new records, records
        whose entry changed (state, mark), and the keys of those gone."""
        t0 = self.clock()
        records = self._records(out)
        out.stream_cost = self.clock() - t0
        current = {_key(sl, c): (sl, c) for sl, c in records}
        changed = [rec for k, rec in current.items()
                   if k not in out.sent or _differs(out.sent[k][1], rec[1])]
        removed = C.encode_removed(k for k in out.sent if k not in current)
        out.sent = current
        if not changed and not removed:
            return
        LOG.debug("migration %s: %d changed, %d removed", out.uuid[:8], len(changed),
                  len(removed))
        out.changes += len(changed) + len(removed)
        self._send_records(out, changed, removed, False)

    def _final(self, out, now):
        if not out.snapshot_final:
            self._stream(out, now)      # the changes since the last message
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
        self.channel.close(out.sid, discard=True)   # what is queued goes nowhere
        self.counters["aborted"] += 1
        line = "destination %s: %s" % (out.row.destination, why)
        self._remember(out.vm, "source", "failed: " + line)
        out.cleaned = True              # nothing to release: the VM keeps its state here
        self._keep(out)
        if write and out.row.path == "announced":
            LOG.warning("migration %s of %s aborted: %s; the VM keeps its state here",
                        out.uuid[:8], out.vm, line)
            self.writer.write(out.uuid, status="aborted", outcome="aborted: " + line,
                              timeline={"aborted": _ms(time.time())})
        elif (out.uuid, line) not in self._said:
            # An unannounced row stays as it is: its move is tried again at
            # the next pass, and said once.
            self._said.add((out.uuid, line))
            LOG.warning("migration %s of %s: %s", out.uuid[:8], out.vm, line)

    def departed(self, vms, now):
        """``vms`` ({VM: {tag: its slices here}}) were bound here and are
        bound elsewhere or nowhere now (their port left): their zones, and
        so their connections, stay for the TTL, with the slices that read
        them (the logical controller may take a tenant's last slice off
        this host at once).  An unannounced move's row comes only once the
        port shows up at the destination; until then nothing else says the
        state is wanted, and a zone released at the unplug is flushed."""
        for vm, slices in vms.items():
            if self._state_went(vm):
                continue
            self._late[("left", vm)] = (vm, now + self.ttl)
            self._left_slices[vm] = slices

    def _state_went(self, vm):
        """The VM's latest migration took its state from here and is cleaned
        up already (the acknowledgement came before this daemon saw the
        port go): nothing of it is left to keep, and a zone kept now would
        hold its stale entries for the TTL (and give them back should the
        VM come back meanwhile)."""
        rows = [r for r in self.rows.values() if r.vm == vm]
        latest = max(rows, key=lambda r: r.timeline.get("begun", 0), default=None)
        out = self.outs.get(latest.uuid) if latest is not None else None
        return out is not None and out.cleaned and out.state == "acked" \
            and latest.source == self.host

    def kept_snat(self):
        """The SNAT rules (uuids) of the slices departed VMs left behind:
        their zones hold those VMs' translations."""
        return {uuid for slices in self._left_slices.values() for sl in slices.values()
                for uuid in (sl.config.snat_blocks or {})}

    def _slices_of(self, vm):
        """The service's slices, with those a departed ``vm`` left behind."""
        slices = self.service.slices
        kept = self._left_slices.get(vm)
        if not kept or all(tag in slices for tag in kept):
            return slices
        return {**kept, **slices}

    def _keep(self, out):
        """The VM stays (or comes back) here after its move failed: its
        zone, and so its connections, are kept for the TTL even while it
        is bound nowhere (its port was already unplugged here; docs/
        migration.md, "Faults"), then its binding here keeps them."""
        self._late[out.uuid] = (out.vm, self.clock() + self.ttl)
        self.daemon.replan_soon()

    def _cleanup(self, out, now):
        """The VM's state went: its zone is released (and flushed) by the
        daemon once the VM is neither bound nor leaving here; its SNAT
        connections' replies, which still come to this host's port block
        (or a forwarder pointing here), are forwarded to its new host."""
        if out.cleaned:
            return
        out.cleaned = True
        self._late.pop(("left", out.vm), None)     # its state went: nothing to keep
        if self._newer_to_me(self.rows.get(out.uuid, out.row)):
            self._left_slices.pop(out.vm, None)
            return                      # the VM came back meanwhile: its state is new
        made = self._forward(out, out.sent.values())
        self._left_slices.pop(out.vm, None)
        self.counters["cleaned"] += 1
        self.daemon.replan_soon()
        self.writer.write(out.uuid, timeline={"cleaned": _ms(time.time())})
        LOG.info("migration %s: %s's state released here (%d SNAT forwarders to %s)",
                 out.uuid[:8], out.vm, made, out.row.destination)

    def _forward(self, out, records):
        """Forwarders to the VM's new host for its SNAT connections among
        ``records`` (each once): their replies still come to this host's
        port block (or a forwarder pointing here).  Returns how many."""
        encap = self.peers.get(out.row.destination, ("", ""))[1]
        vni = self._vni(out.vm)
        if not encap or vni is None:
            return 0
        made = 0
        for sl, c in records:
            key = (c.proto, c.rsrc, c.rsport, c.rdst, c.rdport)
            if sl.role != "snat" or c.proto not in FORWARD_IDLE or key in out.forwarded:
                continue
            out.forwarded.add(key)
            fid = self._next_fid
            self._next_fid = fid % D.INDEX_MASK + 1
            self._forwarders[fid] = D.Forwarder(fid, c.proto, _ip(c.rsrc), c.rsport,
                                                _ip(c.rdst), c.rdport, vni, encap,
                                                FORWARD_IDLE[c.proto])
            self._fwd_vm[fid] = out.vm
            made += 1
        if made:
            self.daemon.replan_soon()
        return made

    def _vni(self, vm):
        for s in self._slices_of(vm).values():
            if any(v.name == vm for v in s.config.vms):
                return s.config.vni
        return None

    def forwarder_gone(self, fid):
        """A forwarder's flow went idle: its connection is over."""
        self._forwarders.pop(fid, None)
        self._fwd_vm.pop(fid, None)

    def _drop_forwarders(self, keys):
        """Connections coming back here need no forwarder any more."""
        gone = [fid for fid, f in self._forwarders.items()
                if (f.proto, f.src, f.sport, f.dst, f.dport) in keys]
        for fid in gone:
            self.forwarder_gone(fid)
        return len(gone)

    # ------------------------------------------------------------ destination
    def _flush_vm_zone(self, inc):
        """Take back what was committed early: the VM's zone holds nothing
        else of the move (connections the VM opened here since it came go
        too: a failed move is not half applied)."""
        inc.early_commits = 0
        zone = self.daemon.zones.vm(inc.row.vm)
        if zone is None:
            return
        try:
            self.daemon.vswitch.flush_zone(zone)
        except VswitchError as err:
            LOG.warning("migration %s: flushing %s's zone %d: %s", inc.row.uuid[:8],
                        inc.row.vm, zone, err)

    def _reject(self, inc, why):
        if inc.state in ("rejected", "acked"):
            return
        if inc.early_commits:
            self._flush_vm_zone(inc)
        inc.early = False
        inc.state = "rejected"
        inc.staged = {}
        inc.lazy = None
        self.counters["rejected"] += 1
        uuid = inc.hello.get("migration") if isinstance(inc.hello, dict) else None
        self.channel.send(inc.sid, {"type": "nack", "migration": uuid, "error": why})
        self.channel.close(inc.sid)
        if uuid is None or (str(uuid), why) not in self._said:
            # A source tries a row's move again at each pass: said once.
            if uuid is not None:
                self._said.add((str(uuid), why))
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
                uuid[:8], row.status if row.status not in ACTIVE_MIGRATION else "already received")
        if why is not None:
            self._reject(inc, why)
            return True
        self._used.add(uuid)
        inc.row = row
        inc.state = "receiving"
        self.daemon.replan_soon()       # the VM needs its zone here before the import
        return True

    def _message_in(self, inc, msg, size, now):
        inc.bytes += size
        if inc.state in ("rejected", "acked", "importing", "slice"):
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
            self._state_in(inc, msg, seq)
            if inc.state == "receiving":
                # State is arriving: a hold for the VM waits for it.
                self.daemon.arrivals.extend(inc.row.vm, time.time() + TRANSFER_GRACE)
            return
        if kind == "final":
            if inc.staged and _import_mode(self.service.slices, inc.row.vm,
                                           default=None) is None:
                # No slice of this host serves the VM yet: its config comes
                # after the row (the logical controller adds the slice for
                # the migration), the transfer may come first.  (A VM with
                # no connections may have no slice at all: a switch without
                # middleboxes; nothing waits for one.)
                inc.state, inc.final = "slice", (msg, now)
                return
            self._import(inc, msg, now)
            return
        self._reject(inc, "unexpected message %r" % kind)

    def _state_in(self, inc, msg, seq):
        removed = msg.get("removed")
        data = msg.get("data", b"")
        if not isinstance(removed, list) or not isinstance(data, (bytes, bytearray)) or \
                (seq == 1) != (msg.get("kind") == "snapshot"):
            self._reject(inc, "malformed state message %d" % seq)
            return
        try:
            gone = C.decode_removed(removed)
            part = []
            if data:
                conns, slices = C.decode(data)
                staged, early = inc.staged, inc.early
                for sl, c in zip(slices, conns):
                    key = _key(sl, c)
                    if early and key in early and staged[key][1] != c:
                        inc.early = early = False   # a committed record changed
                    staged[key] = (sl, c)
                    part.append((sl, c))
            for key in gone:
                if inc.early and key in inc.early:
                    inc.early = False
                inc.staged.pop(key, None)
        except C.WireError as err:
            self._reject(inc, "bad records in message %d: %s" % (seq, err))
            return
        if part and inc.early is not False:
            self._commit_early(inc, part)

    def _zone_in_place(self, vm):
        if self.daemon.zones.vm(vm) is None:
            self.daemon.replan()        # the zone of a VM that arrived meanwhile

    def _commit_early(self, inc, part):
        """Bulk import of an unannounced move: commit the VM's own zone's
        records of a part as it comes, so the switch works while the rest
        is decoded (the SNAT zone's, shared with other VMs, wait for
        ``final``).  A transfer that then fails its check takes them back
        (the VM's zone is flushed: ``_reject``)."""
        vm = inc.row.vm
        if inc.early is None:
            mode = _import_mode(self.service.slices, vm, default=None)
            if mode is None and inc.row.path == "unannounced":
                return          # the VM's slice config has not arrived: decide later
            if inc.row.path != "unannounced" or mode != "bulk":
                inc.early = False
                return
            self._zone_in_place(vm)
            inc.early = set()
        mine = [(sl, c) for sl, c in part if sl.role == "vm"]
        try:
            local = vmstate.localize(vm, mine, self.service.slices, self.daemon.zones)
        except RecordError as err:
            self._reject(inc, str(err))
            return
        inc.early_commits += len(self.daemon.of.send_packet_outs(
            [ctcommit.packet_outs([c for c, _ in local])]))
        inc.early.update(_key(sl, c) for sl, c in mine)

    def _import(self, inc, msg, now):
        records = list(inc.staged.values())
        if inc.early is False and inc.early_commits:
            # A record committed early changed or went: start again whole.
            self._flush_vm_zone(inc)
        if msg.get("count") != len(records) or msg.get("digest") != vmstate.digest(records):
            self._reject(inc, "corrupt transfer: %r records announced, %d staged, digest "
                              "%s" % (msg.get("count"), len(records),
                                      "differs" if msg.get("count") == len(records)
                                      else "not checked"))
            return
        t0 = self.clock()
        vm = inc.row.vm
        self._zone_in_place(vm)
        early = inc.early or ()
        try:
            local = vmstate.localize(vm, [r for r in records if _key(*r) not in early]
                                     if early else records,
                                     self.service.slices, self.daemon.zones)
        except RecordError as err:
            self._reject(inc, str(err))
            return
        self._drop_forwarders({(c.proto, _ip(c.rsrc), c.rsport, _ip(c.rdst), c.rdport)
                               for c, role in local if role == "snat"})
        inc.entries = vmstate.count_connections(records)
        conns = [c for c, _ in local]
        mode = _import_mode(self.service.slices, vm)
        if mode == "lazy":
            # Acknowledged now; each connection is committed at its first
            # packet, the rest in the background (``run``).
            inc.lazy = ctcommit.LazyCommits(conns, tally=self.counters)
            inc.commits = len(inc.lazy)
            self.daemon.arrivals.expect(vm, time.time(), time.time() + TRANSFER_GRACE)
            # Packets held already whose connection came: committed first.
            self.daemon.send_results([self.daemon.arrivals.offer_lazy(vm, inc.lazy)])
        else:
            inc.commits = inc.early_commits + len(
                self.daemon.of.send_packet_outs([ctcommit.packet_outs(conns)]))
        inc.import_ms = _ms(self.clock() - t0)
        inc.state = "importing"
        inc.barrier = self.daemon.of.barrier()
        self._barriers[inc.barrier] = inc
        self.counters["entries_imported"] += inc.entries

    def on_barrier(self, xid, now):
        inc = self._barriers.pop(xid, None)
        if inc is None:
            return False
        if xid == inc.lazy_barrier:
            inc.lazy_barrier = None     # the next chunk may go
            return True
        row = inc.row
        inc.state = "acked"
        self.channel.send(inc.sid, {"type": "ack", "migration": row.uuid,
                                    "entries": inc.entries, "commits": inc.commits})
        self.counters["imported"] += 1
        held = 0
        if inc.lazy is None:
            held = self._landed(row.vm)
        self._settled.add(row.uuid)
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
                          stats={"entries": inc.entries, "flows": inc.commits,
                                 "buffered": held, "import_ms": inc.import_ms})
        self._remember(row.vm, "destination", "imported %d connections from %s"
                       % (inc.entries, inc.peer))
        LOG.info("migration %s of %s: imported %d connections from %s (%d commits%s), "
                 "%d packets held", row.uuid[:8], row.vm, inc.entries, inc.peer,
                 inc.commits, ", lazy" if inc.lazy is not None else "", held)
        if inc.lazy is None:
            self.ins.pop(inc.sid, None)
        return True

    def _landed(self, vm):
        frames, held = self.daemon.arrivals.landed(vm, time.time())
        for frame, tci in frames:
            self.daemon.port.send(frame, tci)
        self.daemon.replan_soon()
        return held

    def _closed_in(self, inc, reason):
        if inc.lazy is None:
            self.ins.pop(inc.sid, None)
        if inc.state in ("receiving", "hello", "waiting"):
            if inc.early_commits:
                self._flush_vm_zone(inc)
            inc.state = "rejected"
            self.counters["rejected"] += 1
            LOG.warning("state transfer from %s%s ended early (%s): nothing imported",
                        inc.peer, " for migration %s" % inc.row.uuid[:8] if inc.row else "",
                        reason)
            self._remember(inc.row.vm if inc.row else "?", "destination",
                           "transfer ended early (%s)" % reason)

    def _lazy_run(self):
        """Commit a chunk of each lazy import's records once the switch took
        the last one (so a first packet's commit never waits behind more
        than a chunk); a finished import ends the VM's arrival."""
        for inc in list(self.ins.values()):
            if inc.lazy is None or inc.state != "acked" or inc.lazy_barrier is not None:
                continue
            if not inc.lazy:
                self._landed(inc.row.vm)
                self.ins.pop(inc.sid, None)
                continue
            self.daemon.of.send_packet_outs(inc.lazy.chunk(LAZY_CHUNK))
            inc.lazy_barrier = self.daemon.of.barrier()
            self._barriers[inc.lazy_barrier] = inc

    # ------------------------------------------------------------ events
    def on_event(self, ev, now):
        self._on_event(ev, now)
        if ev.kind == "closed":
            self.channel.forget(ev.sid)     # the session's record and wake-up pipe

    def _on_event(self, ev, now):
        if ev.sid.startswith("out-"):
            out = self.outs.get(ev.sid[4:])
            if out is None:
                return
            if ev.kind == "connected":
                if out.state not in ("connecting", "final"):
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
                    self._start(out, address, now)
                elif now - out.started > HELLO_WAIT:
                    self._fail(out, "no migration address known")
            elif out.state == "sending":
                if out.final_wanted:
                    self._final(out, now)
                elif now >= out.next_stream:
                    self._stream(out, now)
                    out.next_stream = now + max(STREAM_INTERVAL, 2 * out.stream_cost)
            if out.cleanup_at is not None and now >= out.cleanup_at and not out.cleaned:
                self._cleanup(out, now)
        for inc in list(self.ins.values()):
            if inc.state == "hello" and now - inc.started > HELLO_WAIT:
                self._reject(inc, "no hello within %.0f s" % HELLO_WAIT)
                continue
            if inc.state == "slice":
                msg, since = inc.final
                if _import_mode(self.service.slices, inc.row.vm, default=None) is not None:
                    inc.state = "receiving"
                    self._import(inc, msg, now)
                elif now - since > HELLO_WAIT:
                    self._reject(inc, "VM %s has no slice here (none came within %.0f s)"
                                 % (inc.row.vm, HELLO_WAIT))
                continue
            if inc.state == "waiting":
                self._check_hello(inc, now)
                if inc.state == "receiving":
                    for msg, size in inc.pending:
                        self._message_in(inc, msg, size, now)
                    inc.pending = []
        self._lazy_run()
        for uuid, (vm, due) in list(self._late.items()):
            if due is not None and now >= due:
                self._late[uuid] = (vm, None)
                if uuid == ("left", vm):
                    self._left_slices.pop(vm, None)
                self.daemon.replan_soon()
        for uuid in [u for u, o in self.outs.items() if o.cleaned
                     and (o.state == "failed" or now - o.started > 2 * self.ttl)]:
            del self.outs[uuid]

    def fallback(self, vm, now):
        """The VM's hold ended without state (the daemon dropped the held
        packets): record it."""
        self.counters["fallbacks"] += 1
        row = next((r for r in self.rows.values() if r.vm == vm
                    and r.destination == self.host and r.status in ("begun", "streaming",
                                                                    "stunned")), None)
        source = row.source if row is not None else "its previous host"
        line = "no state from %s within %.0f ms: its connections are judged anew" % (
            source, (wait_s(row) if row is not None else arrivals.DEFAULT_WAIT) * 1000)
        self._remember(vm, "destination", "fallback: " + line)
        if row is not None:
            self._settled.add(row.uuid)
            self.writer.write(row.uuid, status="fallback",
                              from_statuses=("begun", "streaming", "stunned"),
                              outcome="fallback: " + line,
                              timeline={"fallback": _ms(time.time())})

    def _remember(self, vm, role, what):
        self.history.append({"time": round(time.time(), 3), "vm": vm, "role": role,
                             "what": what})
        del self.history[:-100]

    # ------------------------------------------------------------ inspection
    def listing(self):
        outs = [{"migration": o.uuid, "vm": o.vm, "role": "source",
                 "peer": o.row.destination, "path": o.row.path, "state": o.state,
                 "mode": o.mode, "entries": vmstate.count_connections(o.sent.values()),
                 "seq": o.seq, "reviewed_out": o.reviewed_out}
                for o in self.outs.values()]
        ins = [{"migration": i.row.uuid if i.row else None,
                "vm": i.row.vm if i.row else None, "role": "destination",
                "peer": i.peer, "state": i.state, "entries": len(i.staged) or i.entries,
                "seq": i.seq, "lazy_left": len(i.lazy or ())} for i in self.ins.values()]
        return {"transfers": outs + ins, "holds": self.daemon.arrivals.listing(),
                "forwarders": [{"vm": self._fwd_vm.get(f.fid, "?"), "proto": f.proto,
                                "wire": "%s:%d/%s:%d" % (f.src, f.sport, f.dst, f.dport),
                                "to": f.encap_ip} for f in self._forwarders.values()],
                "counters": dict(self.counters), "history": list(self.history)}


def _differs(old, new):
    """Did an entry change in a way the destination must see?"""
    return old.state != new.state or old.mark != new.mark or old.label != new.label \
        or old[5:9] != new[5:9]


def _ip(value):
    from middlebox.packet import ip_text
    return ip_text(value) if isinstance(value, int) else value
