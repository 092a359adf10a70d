"""mbxd's pure core: every decision the middlebox daemon makes.

``MiddleboxCore`` is the one object the daemon's I/O shell drives, from one
thread.  It does no I/O and never reads a clock: the shell passes ``now``
(float seconds, one clock for the daemon's life and across its restarts,
e.g. ``time.time()``) and carries out what the core returns: frames to write
back on the middlebox port, cache flows to add and delete.

Slices.  Each external slice tag (802.1Q VID) of this host's config is bound
to an internal slice id when its config first arrives; ids are never reused.
A tag whose config now names another middlebox is a new slice (the old one
is removed first).  A changed config (rules, address sets, options, VMs,
default action) is applied in place and affects NEW connections only:
entries already decided keep their verdict and flows (stateful: an
established connection stays up).  Exceptions, kept simple:

* a slice that disappears from the config loses all its entries, and their
  cache flows are deleted;
* a VM that leaves the slice's VM list keeps its table until its entries
  expire, but new packets for it are dropped as ``unknown_vm``.

Stages (docs/middlebox.md): at the from-VM stage (PCP 0) the slice's VM with
the frame's ``eth_src`` is judged, at the to-VM stage (PCP 1) the one with
``eth_dst``.  Its table decides packets of connections it holds (either
direction); otherwise the stage's rules decide a packet that may open a
connection (from-vm rules at the from-VM stage, origin "out"; to-vm rules
at the to-VM stage, origin "in").  ``same-host=source`` (``destination``):
when the other end is a VM of the slice on this host, the from-VM (to-VM)
stage also evaluates the other VM's rules, allows only if both allow, and
records the connection in both VMs' tables.

Offload (``check=offload``): TCP flows are installed when the connection is
established (the SYN-ACK), UDP/ICMP/other flows on the first allowed packet,
both directions; a denied connection gets a drop flow for each direction
seen (timeout ``denied``); a FIN or RST deletes the entry's flows so the
rest of the close passes through the daemon.  Reject is never offloaded,
and creates no entry (every packet is judged and answered).
``check=every-packet`` installs no flows.

ICMP errors that quote a packet of a connection in the VM's table pass or
drop with that connection ("related"), without an entry of their own.
"""

from dataclasses import dataclass, field
from typing import Iterable, List

from ryu_apps import pipeline as P

from middlebox import cacheflows as CF
from middlebox.conntrack import (ACTIVE, ALLOW, CLOSED, CLOSING, DENY, ESTABLISHED,
                                 FIN_WAIT, FLOW_BOTH, FLOW_FROM_VM, FLOW_TO_VM, IN,
                                 OFFLOAD_GRACE, OUT, REPLIED, SYN_RECV, SYN_SENT, UNREPLIED,
                                 ConnEntry, ConnKey, Timeouts, VmTable, can_open, key_for)
from middlebox.packet import (ICMP_ERROR_TYPES, IPPROTO_ICMP, IPPROTO_TCP, TCP_FIN,
                              TCP_RST, MalformedFrame, build_icmp_unreachable,
                              build_tcp_rst, ip_int, ip_text, parse_frame)
from middlebox.rules import DIRECTIONS, RuleSet

# What happens to a non-IPv4 frame of a known slice: "pass" (written back
# unchanged, the pipeline continues) or "drop".  Steering selects IPv4 only,
# so such frames are rare.
NON_IP_POLICY = "pass"

REJECT = "reject"
VERDICTS = (ALLOW, DENY, REJECT)
CHECK_MODES = ("offload", "every-packet")
SAME_HOST_MODES = ("both", "source", "destination")
STATE_VERSION = 1
# Column order of one entry in export_state()["entries"].
STATE_FIELDS = ("tag", "vm", "id", "proto", "vm_ip", "vm_port", "peer_ip", "peer_port",
                "origin", "verdict", "state", "fins", "created", "last_seen",
                "packets_orig", "bytes_orig", "packets_reply", "bytes_reply",
                "flows", "flow_timeout", "fs", "rule")
_PENDING_SHIFT = 2          # ConnEntry.flows bits 2-3: deleted, flow-removed not yet seen
_MULTICAST = (0xE0000000, 0xF0000000)
_STAGE_OF_TABLE = {t.table_id: stage for stage, t in P.CACHE_TABLES.items()}
_KNOWN_STATES = frozenset((SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSING, CLOSED,
                           UNREPLIED, REPLIED, ACTIVE))


@dataclass
class FlowChanges:
    """Cache flows the shell must add and delete (``Flow`` values)."""
    add: list = field(default_factory=list)
    delete: list = field(default_factory=list)


class Result:
    """What to do about one frame.

    ``out``: ``(frame, tci)`` pairs to write on the middlebox port; ``add``
    / ``delete``: cache flows; ``verdict``: allow, deny, reject, invalid,
    malformed, unknown_tag, unknown_vm, non_ip or error; ``new``: the frame
    opened (or was refused as opening) a connection, i.e. rules were
    evaluated; ``related``: an ICMP error passed/dropped as part of a
    tracked connection.
    """

    __slots__ = ("out", "add", "delete", "verdict", "new", "related")

    def __init__(self, verdict, out=None):
        self.verdict = verdict
        self.out = out if out is not None else []
        self.add = []
        self.delete = []
        self.new = False
        self.related = False

    def __repr__(self):
        return "Result(%s out=%d add=%d delete=%d%s)" % (
            self.verdict, len(self.out), len(self.add), len(self.delete),
            " new" if self.new else "")


class _Slice:
    __slots__ = ("tag", "sid", "config", "rules", "timeouts", "offload", "same_host",
                 "by_mac", "by_ip", "tables", "packets", "bytes", "errors")

    def __init__(self, tag, sid, config):
        self.tag = tag
        self.sid = sid
        self.tables = {}
        self.packets = 0
        self.bytes = 0
        self.apply(config)

    def apply(self, cfg):
        self.config = cfg
        options = dict(cfg.options or {})
        errors = []
        self.rules = RuleSet(cfg.rules, cfg.address_sets or {}, cfg.default_action,
                             options.get("tier-order"))
        self.timeouts = Timeouts.from_options(options)
        check = options.get("check", "offload")
        if check not in CHECK_MODES:
            errors.append('option check="%s" is not offload or every-packet: using offload'
                          % check)
            check = "offload"
        self.offload = check == "offload"
        same = options.get("same-host", "both")
        if same not in SAME_HOST_MODES:
            errors.append('option same-host="%s" is not both, source or destination: '
                          'using both' % same)
            same = "both"
        self.same_host = same
        self.by_mac, self.by_ip = {}, {}
        for vm in cfg.vms:
            self.by_mac[str(vm.mac).lower()] = vm
            try:
                self.by_ip[ip_int(str(vm.ip))] = vm
            except ValueError:
                errors.append("VM %s: bad IP %r" % (vm.name, vm.ip))
        names = {vm.name for vm in cfg.vms}
        for name in [n for n, t in self.tables.items() if not t.entries and n not in names]:
            del self.tables[name]
        self.errors = list(self.timeouts.errors) + errors

    def table(self, name):
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = VmTable(name)
        return table

    def entry_count(self):
        return sum(len(t) for t in self.tables.values())


def _rule_id(rule):
    if rule is None:
        return "default"
    return rule.uuid or "%s/%d/%s" % (rule.direction, rule.priority, rule.tier)


def _flow_bit(stage):
    return FLOW_FROM_VM if stage == P.STAGE_FROM_VM else FLOW_TO_VM


class MiddleboxCore:
    """The middlebox daemon's state machine for one host (see module doc)."""

    def __init__(self, host):
        self.host = host
        self.slices = {}                # tag -> _Slice
        self._next_sid = 1
        self._next_id = 1
        self._entries = {}              # cookie & ENTRY_COOKIE_MASK -> ConnEntry
        self.counters = dict.fromkeys(
            ("frames", "malformed", "unknown_tag", "unknown_vm", "non_ip", "invalid",
             "passed", "dropped", "related", "rejects_sent", "flows_added",
             "flows_deleted", "expired", "internal_errors"), 0)
        self.decisions = dict.fromkeys(VERDICTS, 0)
        self.last_error = None

    # ------------------------------------------------------------ config
    def configure(self, config, now) -> FlowChanges:
        """Create, update and remove slices to match ``config`` (a HostConfig)."""
        changes = FlowChanges()
        wanted = {}
        for tag, cfg in (config.slices or {}).items():
            if isinstance(tag, int) and 1 <= tag <= P.MAX_SLICE_TAG:
                wanted[tag] = cfg
        for tag in list(self.slices):
            cfg = wanted.get(tag)
            if cfg is None or cfg.middlebox != self.slices[tag].config.middlebox:
                changes.delete.extend(self._remove_slice(tag))
        for tag, cfg in wanted.items():
            s = self.slices.get(tag)
            if s is None:
                self.slices[tag] = _Slice(tag, self._next_sid, cfg)
                self._next_sid += 1
            elif s.config != cfg:
                s.apply(cfg)
        self.counters["flows_deleted"] += len(changes.delete)
        return changes

    def _remove_slice(self, tag):
        s = self.slices.pop(tag)
        flows = []
        for table in s.tables.values():
            for e in table:
                flows.extend(self._forget(s, table, e))
        return flows

    # ------------------------------------------------------------ packets
    def handle_frame(self, frame, tci, now) -> Result:
        """Judge one frame from the middlebox port; never raises."""
        self.counters["frames"] += 1
        try:
            return self._handle(frame, tci, now)
        except Exception as err:        # noqa: BLE001 - a daemon must survive any frame
            self.counters["internal_errors"] += 1
            self.counters["dropped"] += 1
            self.last_error = "%s: %s" % (type(err).__name__, err)
            return Result("error")

    def _handle(self, frame, tci, now):
        c = self.counters
        try:
            pkt = parse_frame(frame, tci)
        except MalformedFrame:
            c["malformed"] += 1
            c["dropped"] += 1
            return Result("malformed")
        s = self.slices.get(pkt.tag)
        if s is None:
            c["unknown_tag"] += 1
            c["dropped"] += 1
            return Result("unknown_tag")
        s.packets += 1
        s.bytes += len(frame)
        if pkt.stage != P.STAGE_FROM_VM and pkt.stage != P.STAGE_TO_VM:
            c["malformed"] += 1
            c["dropped"] += 1
            return Result("malformed")
        if pkt.proto is None:
            c["non_ip"] += 1
            if NON_IP_POLICY == "pass":
                c["passed"] += 1
                return Result("non_ip", [(frame, tci)])
            c["dropped"] += 1
            return Result("non_ip")
        from_vm = pkt.stage == P.STAGE_FROM_VM
        vm = s.by_mac.get(pkt.eth_src if from_vm else pkt.eth_dst)
        if vm is None:
            c["unknown_vm"] += 1
            c["dropped"] += 1
            return Result("unknown_vm")
        partner = None
        if s.same_host == "source" and from_vm:
            partner = s.by_mac.get(pkt.eth_dst)
        elif s.same_host == "destination" and not from_vm:
            partner = s.by_mac.get(pkt.eth_src)
        if partner is not None and (partner is vm or partner.host != self.host):
            partner = None
        key = key_for(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, from_vm)
        table = s.table(vm.name)
        entry = table.get(key)
        res = Result(ALLOW)
        pair = None
        if partner is not None:
            ptable = s.table(partner.name)
            pkey = key_for(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, not from_vm)
            pair = (ptable, pkey, ptable.get(pkey))
        if entry is not None and not entry.flows & FLOW_BOTH and now >= entry.expires:
            # Idle past its timeout and not yet collected by expire(): gone.
            res.delete.extend(self._forget(s, table, entry))
            c["expired"] += 1
            entry = None
        if pair is not None and pair[2] is not None and not pair[2].flows & FLOW_BOTH \
                and now >= pair[2].expires:
            res.delete.extend(self._forget(s, pair[0], pair[2]))
            c["expired"] += 1
            pair = (pair[0], pair[1], None)
        if entry is not None and pkt.proto == IPPROTO_TCP and entry.state in (CLOSING, CLOSED) \
                and can_open(pkt.proto, pkt.tcp_flags):
            # A new SYN on a finished connection's 5-tuple: a new connection.
            res.delete.extend(self._forget(s, table, entry))
            if pair is not None and pair[2] is not None:
                res.delete.extend(self._forget(s, pair[0], pair[2]))
                pair = (pair[0], pair[1], None)
            entry = None
        if entry is not None:
            self._existing(s, pkt, frame, tci, now, from_vm, entry, pair, res)
        elif pkt.related is not None and self._related(s, pkt, frame, tci, from_vm, table,
                                                       res):
            pass
        elif not can_open(pkt.proto, pkt.tcp_flags):
            c["invalid"] += 1
            c["dropped"] += 1
            res.verdict = "invalid"
        else:
            self._new(s, pkt, frame, tci, now, from_vm, vm, table, key, partner, pair, res)
        if res.add:
            c["flows_added"] += len(res.add)
        if res.delete:
            c["flows_deleted"] += len(res.delete)
        return res

    def _existing(self, s, pkt, frame, tci, now, from_vm, entry, pair, res):
        n = len(frame)
        flags = pkt.tcp_flags
        entries = [(entry, from_vm)]
        if pair is not None and pair[2] is not None:
            entries.append((pair[2], not from_vm))
        verdict = ALLOW
        for e, vm_is_src in entries:
            e.update(e.is_orig(vm_is_src), flags, n, now, s.timeouts, s.offload)
            if e.verdict != ALLOW:
                verdict = DENY
            self._offload(s, e, vm_is_src, flags, res)
        self._finish(res, verdict, frame, tci)

    def _related(self, s, pkt, frame, tci, from_vm, table, res):
        """An ICMP error about a tracked connection: its verdict decides."""
        qproto, qsrc, qdst, qsport, qdport = pkt.related
        # The quoted packet went the other way: its destination sent this error.
        key = key_for(qproto, qsrc, qdst, qsport, qdport, not from_vm)
        e = table.get(key)
        if e is None:
            return False
        self.counters["related"] += 1
        res.related = True
        self._finish(res, e.verdict, frame, tci)
        return True

    def _finish(self, res, verdict, frame, tci):
        res.verdict = verdict
        if verdict == ALLOW:
            res.out.append((frame, tci))
            self.counters["passed"] += 1
        else:
            self.counters["dropped"] += 1

    def _new(self, s, pkt, frame, tci, now, from_vm, vm, table, key, partner, pair, res):
        res.new = True
        direction = DIRECTIONS[0] if from_vm else DIRECTIONS[1]
        action, rule = s.rules.evaluate(direction, pkt.proto, pkt.src, pkt.dst,
                                        pkt.sport, pkt.dport)
        rule_id = _rule_id(rule)
        p_rule_id = None
        if partner is not None:
            other = DIRECTIONS[1] if from_vm else DIRECTIONS[0]
            p_action, p_rule = s.rules.evaluate(other, pkt.proto, pkt.src, pkt.dst,
                                                pkt.sport, pkt.dport)
            p_rule_id = _rule_id(p_rule)
            if action == ALLOW and p_action != ALLOW:
                action = p_action
                rule_id = p_rule_id
            elif action != ALLOW:
                p_rule_id = rule_id
        self.decisions[action] += 1
        if action == REJECT:
            res.verdict = REJECT
            self.counters["dropped"] += 1
            answer = self._reject_answer(pkt, frame)
            if answer is not None:
                # Back toward the sender: a from-VM stage answer is delivered
                # to the local sender at the to-VM stage's return; a to-VM
                # stage answer leaves like a packet of the receiving VM --
                # except when the sender is the paired local VM
                # (same-host=destination): it has no entry to pass the
                # answer at its own to-VM stage, so deliver it directly.
                stage = P.STAGE_TO_VM if from_vm or partner is not None else P.STAGE_FROM_VM
                res.out.append((answer, (tci & 0x1FFF) | stage << 13))
                self.counters["rejects_sent"] += 1
            return
        entry = self._create(s, table, vm.name, key, OUT if from_vm else IN, action,
                             rule_id, now)
        created = [(entry, from_vm)]
        if partner is not None:
            ptable, pkey, old = pair
            if old is not None:
                res.delete.extend(self._forget(s, ptable, old))
            pentry = self._create(s, ptable, partner.name, pkey, IN if from_vm else OUT,
                                  action, p_rule_id, now)
            created.append((pentry, not from_vm))
        for e, vm_is_src in created:
            e.update(True, pkt.tcp_flags, len(frame), now, s.timeouts, s.offload)
            self._offload(s, e, vm_is_src, pkt.tcp_flags, res)
        self._finish(res, action, frame, tci)

    @staticmethod
    def _reject_answer(pkt, frame):
        if pkt.dst & _MULTICAST[1] == _MULTICAST[0] or pkt.dst == 0xFFFFFFFF:
            return None
        if pkt.proto == IPPROTO_TCP:
            if pkt.tcp_flags & TCP_RST:
                return None
            return build_tcp_rst(pkt, frame)
        if pkt.proto == IPPROTO_ICMP and pkt.icmp_type in ICMP_ERROR_TYPES:
            return None             # never answer an ICMP error with one
        return build_icmp_unreachable(pkt, frame)

    def _create(self, s, table, vm_name, key, origin, verdict, rule_id, now):
        entry_id = self._alloc_id(s.tag)
        e = ConnEntry(key, origin, verdict, now, s.timeouts, entry_id, rule_id, vm_name, s.tag)
        table.add(e)
        self._entries[s.tag << CF.TAG_SHIFT | entry_id] = e
        return e

    def _alloc_id(self, tag):
        while True:
            entry_id = self._next_id
            self._next_id = entry_id + 1 if entry_id < CF.MAX_ENTRY_ID else 1
            if (tag << CF.TAG_SHIFT | entry_id) not in self._entries:
                return entry_id

    # ------------------------------------------------------------ flows
    def _offload(self, s, e, vm_is_src, flags, res):
        """Add or delete ``e``'s cache flows after a packet through the daemon."""
        if not s.offload:
            return
        live = e.flows & FLOW_BOTH
        if e.verdict == ALLOW:
            if e.key.proto == IPPROTO_TCP:
                if flags & (TCP_FIN | TCP_RST):
                    if live:
                        res.delete.extend(self._flows_of(e, live))
                        e.flows = (e.flows & ~FLOW_BOTH) | live << _PENDING_SHIFT
                    return
                want = FLOW_BOTH if e.state == ESTABLISHED else 0
            else:
                want = FLOW_BOTH
        else:
            want = FLOW_FROM_VM if vm_is_src else FLOW_TO_VM
        missing = want & ~live
        if missing:
            timeout = s.timeouts.for_state(e.key.proto, e.state, e.verdict)
            e.flow_timeout = timeout
            res.add.extend(self._flows_of(e, missing, timeout))
            if missing & FLOW_FROM_VM:
                e.fs_from_packets = e.fs_from_bytes = 0
            if missing & FLOW_TO_VM:
                e.fs_to_packets = e.fs_to_bytes = 0
            e.flows = (e.flows | missing) & ~(missing << _PENDING_SHIFT)

    @staticmethod
    def _flows_of(e, bits, timeout=None):
        from_flow, to_flow = CF.entry_flows(e.tag, e, e.flow_timeout if timeout is None
                                            else timeout)
        out = []
        if bits & FLOW_FROM_VM:
            out.append(from_flow)
        if bits & FLOW_TO_VM:
            out.append(to_flow)
        return out

    def _forget(self, s, table, e):
        """Remove ``e`` everywhere; return its flows that are in the datapath."""
        table.remove(e)
        ck = e.tag << CF.TAG_SHIFT | e.entry_id
        if self._entries.get(ck) is e:
            del self._entries[ck]
        live = e.flows & FLOW_BOTH
        e.flows = 0
        return self._flows_of(e, live) if live else []

    def _fold(self, s, e, bit, packets, nbytes):
        """Fold a cache flow's cumulative counters into ``e``; True if they grew."""
        if bit == FLOW_FROM_VM:
            dp, db = packets - e.fs_from_packets, nbytes - e.fs_from_bytes
            e.fs_from_packets, e.fs_from_bytes = packets, nbytes
        else:
            dp, db = packets - e.fs_to_packets, nbytes - e.fs_to_bytes
            e.fs_to_packets, e.fs_to_bytes = packets, nbytes
        if dp < 0 or db < 0:            # a re-installed flow counts from zero
            dp, db = packets, nbytes
        if dp <= 0:
            return False
        # The from-VM flow carries the VM's packets.
        is_orig = e.is_orig(bit == FLOW_FROM_VM)
        e.count(is_orig, dp, db)
        if not is_orig:
            e.seen_reply()
        return True

    def flow_removed(self, cookie, packet_count, byte_count, now, table_id=None):
        """The datapath removed a cache flow (idle timeout, or our delete).

        ``table_id`` says which of the entry's two flows it was; without it
        the flow is taken to be the from-VM one when both are candidates (so
        counters may land in the wrong direction).  When the datapath itself
        removed the last of an entry's flows (idle timeout), the connection
        idled out: the entry is removed -- unless its state's timeout grew
        longer than the flows' since they were installed (a UDP flow
        answered meanwhile), then it lives on, un-offloaded, until that
        longer timeout."""
        ids = CF.split_cookie(cookie)
        if ids is None:
            return
        e = self._entries.get(cookie & CF.ENTRY_COOKIE_MASK)
        s = self.slices.get(ids[0])
        if e is None or s is None:
            return
        candidates = (e.flows | e.flows >> _PENDING_SHIFT) & FLOW_BOTH
        if table_id is not None:
            stage = _STAGE_OF_TABLE.get(table_id)
            if stage is None:
                return
            bit = _flow_bit(stage)
        elif candidates & FLOW_FROM_VM or not candidates:
            bit = FLOW_FROM_VM
        else:
            bit = FLOW_TO_VM
        self._fold(s, e, bit, packet_count, byte_count)
        if bit == FLOW_FROM_VM:
            e.fs_from_packets = e.fs_from_bytes = 0
        else:
            e.fs_to_packets = e.fs_to_bytes = 0
        was_live = e.flows & bit
        e.flows &= ~(bit | bit << _PENDING_SHIFT)
        if not was_live:
            return
        # The datapath removed it: it was idle for flow_timeout seconds.
        e.last_seen = max(e.last_seen, now - e.flow_timeout)
        e.refresh(now, s.timeouts)
        if e.flows & FLOW_BOTH:
            return
        if s.timeouts.for_state(e.key.proto, e.state, e.verdict) <= e.flow_timeout \
                or now >= e.expires:
            table = s.tables.get(e.vm)
            if table is not None:
                self._forget(s, table, e)
                self.counters["expired"] += 1

    def flow_stats(self, stats: Iterable, now) -> List:
        """A poll of the daemon's cache flows: ``(Flow, packet_count,
        byte_count[, ...])`` items.  Folds the counts into the entries
        (``last_seen = now`` for each that grew) and returns the cache flows
        that belong to no entry, for the shell to delete."""
        orphans = []
        for item in stats:
            flow, packets, nbytes = item[0], item[1], item[2]
            parsed = CF.parse_cache_flow(flow)
            if parsed is None:
                continue
            tag, stage, entry_id = parsed[0], parsed[1], parsed[2]
            e = self._entries.get(tag << CF.TAG_SHIFT | entry_id)
            s = self.slices.get(tag)
            bit = _flow_bit(stage)
            if e is None or s is None or not self._flow_fits(e, parsed):
                orphans.append(flow)
                continue
            if not e.flows & bit:
                if not e.flows & bit << _PENDING_SHIFT:
                    orphans.append(flow)
                continue
            if self._fold(s, e, bit, packets, nbytes):
                if now > e.last_seen:
                    e.last_seen = now
                e.refresh(now, s.timeouts)
        self.counters["flows_deleted"] += len(orphans)
        return orphans

    @staticmethod
    def _flow_fits(e, parsed):
        _, stage, _, proto, src, dst, sport, dport, verdict = parsed
        k = e.key
        if verdict != e.verdict or proto != k.proto:
            return False
        if stage == P.STAGE_FROM_VM:
            return (src, dst, sport, dport) == (k.vm_ip, k.peer_ip, k.vm_port, k.peer_port)
        return (src, dst, sport, dport) == (k.peer_ip, k.vm_ip, k.peer_port, k.vm_port)

    # ------------------------------------------------------------ housekeeping
    def expire(self, now) -> List:
        """Remove the entries past their timeout; return their cache flows
        that may still be in the datapath (to delete).  Entries whose flows
        are in the datapath wait for it to remove them (flow_removed), with
        OFFLOAD_GRACE seconds of slack against a lost message."""
        flows = []
        for s in self.slices.values():
            names = None
            for name, table in list(s.tables.items()):
                for e in table.expire(now, OFFLOAD_GRACE):
                    flows.extend(self._forget(s, table, e))
                    self.counters["expired"] += 1
                if not table.entries:
                    if names is None:
                        names = {vm.name for vm in s.config.vms}
                    if name not in names:
                        del s.tables[name]
        self.counters["flows_deleted"] += len(flows)
        return flows

    def flush(self, vm=None) -> List:
        """Remove every entry (of the VM named ``vm`` in every slice, or all);
        return their cache flows to delete."""
        flows = []
        for s in self.slices.values():
            for name, table in s.tables.items():
                if vm is None or name == vm:
                    for e in table:
                        flows.extend(self._forget(s, table, e))
        self.counters["flows_deleted"] += len(flows)
        return flows

    # ------------------------------------------------------------ restart
    def export_state(self) -> dict:
        """Every entry, JSON-serialisable: {"version", "next_entry_id",
        "fields": STATE_FIELDS, "entries": [[value per field], ...]}."""
        rows = []
        for s in self.slices.values():
            for table in s.tables.values():
                for e in table.entries.values():
                    k = e.key
                    rows.append([
                        s.tag, e.vm, e.entry_id, k.proto, ip_text(k.vm_ip), k.vm_port,
                        ip_text(k.peer_ip), k.peer_port, e.origin, e.verdict, e.state,
                        e.fins, e.created, e.last_seen, e.packets_orig, e.bytes_orig,
                        e.packets_reply, e.bytes_reply, e.flows & FLOW_BOTH, e.flow_timeout,
                        [e.fs_from_packets, e.fs_from_bytes, e.fs_to_packets,
                         e.fs_to_bytes], e.rule])
        return {"version": STATE_VERSION, "next_entry_id": self._next_id,
                "fields": list(STATE_FIELDS), "entries": rows}

    def import_state(self, state, datapath_flows: Iterable, now) -> FlowChanges:
        """Rebuild the entries after a restart (call ``configure`` first).

        ``state``: an ``export_state()`` (may be empty); ``datapath_flows``:
        the daemon's cache flows found in the datapath.  An entry with flows
        in the datapath is kept, offloaded (rebuilt from its flows as an
        allowed/denied, established (TCP) / unreplied (UDP) connection when
        the saved state lacks it); a saved entry without flows is kept if it
        has not expired.  Returns the cache flows that fit no entry (unknown
        slice or VM, inconsistent), for the shell to delete."""
        changes = FlowChanges()
        groups = {}
        for flow in datapath_flows:
            parsed = CF.parse_cache_flow(flow)
            if parsed is None:
                continue
            groups.setdefault(parsed[0] << CF.TAG_SHIFT | parsed[2], []).append(
                (parsed, flow))
        max_id = 0
        for row in self._state_rows(state):
            try:
                max_id = max(max_id, self._import_row(row, groups, now, changes))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                continue
        for ck, items in groups.items():
            max_id = max(max_id, ck & CF.ENTRY_ID_MASK)
            self._import_flows(items, now, changes)
        next_id = 1
        if isinstance(state, dict) and isinstance(state.get("next_entry_id"), int):
            next_id = state["next_entry_id"]
        next_id = max(next_id, max_id + 1)
        self._next_id = next_id if 1 <= next_id <= CF.MAX_ENTRY_ID else 1
        self.counters["flows_deleted"] += len(changes.delete)
        return changes

    @staticmethod
    def _state_rows(state):
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return []
        fields = state.get("fields", STATE_FIELDS)
        entries = state.get("entries")
        if not isinstance(fields, (list, tuple)) or not isinstance(entries, list):
            return []
        return [dict(zip(fields, row)) for row in entries
                if isinstance(row, list) and len(row) == len(fields)]

    def _import_row(self, row, groups, now, changes):
        tag, entry_id = int(row["tag"]), int(row["id"])
        s = self.slices.get(tag)
        if s is None or not 1 <= entry_id <= CF.MAX_ENTRY_ID:
            return 0
        ck = tag << CF.TAG_SHIFT | entry_id
        if ck in self._entries:
            return entry_id
        key = ConnKey(int(row["proto"]), ip_int(row["vm_ip"]), int(row["vm_port"]),
                      ip_int(row["peer_ip"]), int(row["peer_port"]))
        origin, verdict, state = row["origin"], row["verdict"], row["state"]
        if origin not in (OUT, IN) or verdict not in (ALLOW, DENY) \
                or state not in _KNOWN_STATES:
            return 0
        table = s.table(str(row["vm"]))
        if table.get(key) is not None:
            return entry_id
        e = ConnEntry(key, origin, verdict, float(row["created"]), s.timeouts, entry_id,
                      str(row["rule"]), table.name, tag, state)
        e.fins = int(row["fins"])
        e.last_seen = float(row["last_seen"])
        e.packets_orig, e.bytes_orig = int(row["packets_orig"]), int(row["bytes_orig"])
        e.packets_reply, e.bytes_reply = int(row["packets_reply"]), int(row["bytes_reply"])
        e.flow_timeout = int(row["flow_timeout"])
        fs = [int(x) for x in row["fs"]]
        e.refresh(now, s.timeouts)
        live = 0
        for parsed, flow in groups.pop(ck, ()):
            bit = _flow_bit(parsed[1])
            if self._flow_fits(e, parsed) and not live & bit:
                live |= bit
                e.flow_timeout = flow.idle_timeout or e.flow_timeout
            else:
                changes.delete.append(flow)
        if live and verdict == ALLOW and key.proto == IPPROTO_TCP and e.state != ESTABLISHED:
            # Flows of a closing connection whose delete never happened.
            changes.delete.extend(self._flows_of(e, live))
            live = 0
        if not live and now >= e.expires:
            return entry_id
        e.flows = live
        e.fs_from_packets, e.fs_from_bytes, e.fs_to_packets, e.fs_to_bytes = (
            fs if live else (0, 0, 0, 0))
        table.add(e)
        self._entries[ck] = e
        return entry_id

    def _import_flows(self, items, now, changes):
        """An entry rebuilt from its flows alone."""
        (tag, stage, entry_id, proto, src, dst, sport, dport, verdict), _ = items[0]
        s = self.slices.get(tag)
        vm_ip = src if stage == P.STAGE_FROM_VM else dst
        vm = s.by_ip.get(vm_ip) if s is not None else None
        ck = tag << CF.TAG_SHIFT | entry_id
        old = self._entries.get(ck)
        if old is not None:
            # Already known (imported twice): adopt the flows that fit it.
            for parsed, flow in items:
                if self._flow_fits(old, parsed):
                    old.flows |= _flow_bit(parsed[1])
                else:
                    changes.delete.append(flow)
            return
        if vm is None or entry_id == 0:
            changes.delete.extend(flow for _, flow in items)
            return
        key = key_for(proto, src, dst, sport, dport, stage == P.STAGE_FROM_VM)
        table = s.table(vm.name)
        if table.get(key) is not None:
            changes.delete.extend(flow for _, flow in items)
            return
        # Who opened it is not in the flows: guess the side with the higher
        # (ephemeral-looking) port as the opener.
        origin = OUT if key.vm_port >= key.peer_port else IN
        state = {IPPROTO_TCP: ESTABLISHED if verdict == ALLOW else None,
                 IPPROTO_ICMP: None}.get(proto)
        e = ConnEntry(key, origin, verdict, now, s.timeouts, entry_id, "restored",
                      vm.name, tag, state)
        live = 0
        for parsed, flow in items:
            bit = _flow_bit(parsed[1])
            if self._flow_fits(e, parsed) and not live & bit:
                live |= bit
                e.flow_timeout = flow.idle_timeout
            else:
                changes.delete.append(flow)
        e.flows = live
        table.add(e)
        self._entries[ck] = e

    # ------------------------------------------------------------ inspection
    def slice_list(self) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            cfg = s.config
            out.append({"tag": tag, "id": s.sid, "middlebox": cfg.middlebox,
                        "tenant": cfg.tenant, "switch": cfg.switch, "vni": cfg.vni,
                        "local_vms": sum(1 for vm in cfg.vms if vm.host == self.host),
                        "entries": s.entry_count()})
        return out

    def conn_list(self, vm=None) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            for name in sorted(s.tables):
                if vm is not None and name != vm:
                    continue
                for e in sorted(s.tables[name].entries.values(), key=lambda e: e.entry_id):
                    out.append(self._conn_dict(s, e))
        return out

    @staticmethod
    def _conn_dict(s, e):
        k = e.key
        return {"tag": s.tag, "middlebox": s.config.middlebox, "vm": e.vm, "id": e.entry_id,
                "cookie": CF.cookie(s.tag, e.entry_id),
                "proto": k.proto, "vm_ip": ip_text(k.vm_ip), "vm_port": k.vm_port,
                "peer_ip": ip_text(k.peer_ip), "peer_port": k.peer_port,
                "origin": e.origin, "verdict": e.verdict, "state": e.state,
                "created": e.created, "last_seen": e.last_seen, "expires": e.expires,
                "packets_orig": e.packets_orig, "bytes_orig": e.bytes_orig,
                "packets_reply": e.packets_reply, "bytes_reply": e.bytes_reply,
                "offloaded": e.offloaded, "rule": e.rule}

    def conn_count(self) -> dict:
        slices = [{"tag": tag, "middlebox": self.slices[tag].config.middlebox,
                   "entries": self.slices[tag].entry_count()} for tag in sorted(self.slices)]
        return {"total": sum(x["entries"] for x in slices), "slices": slices}

    def rules_show(self, middlebox=None) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            if middlebox is not None and s.config.middlebox != middlebox:
                continue
            item = {"tag": tag, "middlebox": s.config.middlebox,
                    "default_action": s.rules.default_action,
                    "tier_order": s.rules.tier_order,
                    "check": "offload" if s.offload else "every-packet",
                    "same_host": s.same_host,
                    "timeouts": {name: getattr(s.timeouts, name)
                                 for name in Timeouts.FIELDS},
                    "errors": list(s.rules.errors) + list(s.errors)}
            for direction in DIRECTIONS:
                item[direction] = [{"priority": r.priority, "tier": r.tier, "match": r.match,
                                    "action": r.action, "uuid": r.uuid}
                                   for r in s.rules.ordered(direction)]
            out.append(item)
        return out

    def stats(self) -> dict:
        out = dict(self.counters)
        out["decisions"] = dict(self.decisions)
        out["entries"] = len(self._entries)
        out["offloaded"] = sum(1 for e in self._entries.values() if e.flows & FLOW_BOTH)
        out["last_error"] = self.last_error
        out["slices"] = [{"tag": tag, "middlebox": s.config.middlebox, "packets": s.packets,
                          "bytes": s.bytes, "entries": s.entry_count()}
                         for tag, s in sorted(self.slices.items())]
        return out
