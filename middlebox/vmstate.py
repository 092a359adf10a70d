"""A VM's connection state as transferable records (docs/migration.md).

``VmStateMixin`` is part of ``middlebox.core.MiddleboxCore`` (pure: no I/O,
no clock).  It gives the migration manager (``middlebox.migration``):

* ``gather(vm, mode, flows)``: every connection of the VM in every slice it
  is in, as records, in one of the three gather modes;
* ``check_records(vm, records)`` and ``import_vm(vm, records, now)``: a
  transfer is checked whole, then applied whole;
* ``release_vm(vm)``: the source drops a VM that left, keeping its SNAT
  ports behind forwarders;
* the hold buffer of the destination: packets of an arriving VM that miss
  the cache and cannot open a connection wait for its state
  (``expect_vm``, ``release_held``, ``holds_due``).

A record is a JSON object (see docs/migration.md "What travels"); the slice
is named by its chain (the middlebox names in order), never by a tag, since
tags are per host.
"""

import functools
import hashlib
import json
from operator import itemgetter

from middlebox import cacheflows as CF
from middlebox.gcpause import gc_paused
from middlebox.conntrack import (ALLOW, CLOSED, CLOSING, DENY, ESTABLISHED, KNOWN_STATES, FLOW_BOTH, FLOW_FROM_VM,
                                 FLOW_TO_VM, IN, OUT, ConnEntry, ConnKey, Xlate,
                                 initial_state)
from middlebox.packet import IPPROTO_TCP, ip_int, ip_text
from ryu_apps import pipeline as P

GATHER_MODES = ("service", "datapath", "datapath+review")
DEFAULT_GATHER = "service"
HOLD_MAX_FRAMES = 2048
HOLD_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_WAIT = 3.0          # s a destination holds packets of an unannounced arrival
HOLD_FORGET = 30.0          # s a finished hold is remembered (no new hold meanwhile)
XLATE_KINDS = ("lb", "snat", "dnat")
RECORD_FIELDS = ("chain", "switch", "vm", "conn", "origin", "verdict", "state", "fins",
                 "created", "last_seen", "counts", "flows", "flow_timeout", "rule",
                 "xlate", "home")


class RecordError(ValueError):
    """A transfer that must be refused as a whole (one line, why)."""


def chain_of(cfg):
    """A slice's identity across hosts: its chain's middlebox names."""
    return tuple(sv.name for sv in cfg.services) or (cfg.middlebox,)


def record_key(rec):
    return (tuple(rec["chain"]), tuple(rec["conn"]))


_ROW = itemgetter(*RECORD_FIELDS)
_ROW_KEY = itemgetter(0, 3)                 # chain, conn


def digest(records):
    """sha256 (hex) of a set of records, independent of their order: of the
    compact JSON array of their fields (``RECORD_FIELDS``, in that order),
    sorted by slice and connection."""
    with gc_paused():
        return _digest(records)


def _digest(records):
    try:
        rows = list(map(_ROW, records))
    except (KeyError, TypeError):
        rows = [[rec.get(f) if isinstance(rec, dict) else None for f in RECORD_FIELDS]
                for rec in records]
    try:
        rows.sort(key=_ROW_KEY)
    except TypeError:                       # malformed: still one answer
        rows.sort(key=repr)
    # Rows of decoded JSON or of gather(): never cyclic, so no check for it.
    body = json.dumps(rows, separators=(",", ":"), ensure_ascii=False, default=repr,
                      check_circular=False)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()




# ``ip_int`` (same errors: exceptions are not remembered), remembering the
# answers: a transfer names the same few addresses over and over.
_ip = functools.lru_cache(maxsize=65536)(ip_int)


def _conn(k):
    return [k.proto, ip_text(k.vm_ip), k.vm_port, ip_text(k.peer_ip), k.peer_port]


class _Hold:
    __slots__ = ("deadline", "frames", "nbytes", "state", "count", "dropped", "since")

    def __init__(self, now, deadline):
        self.since = now
        self.deadline = deadline
        self.frames = []
        self.nbytes = 0
        self.state = "waiting"          # -> "landed" | "fallback"
        self.count = 0                  # frames held in all
        self.dropped = 0                # frames refused: buffer full


class _Forwarder:
    __slots__ = ("wire", "rule", "proto", "port", "vm", "mac", "flow")

    def __init__(self, wire, rule, proto, port, vm, mac, flow):
        self.wire, self.rule, self.proto, self.port, self.vm, self.mac, self.flow = (
            wire, rule, proto, port, vm, mac, flow)


class VmStateMixin:
    """See the module doc.  Expects MiddleboxCore's attributes."""

    def _vmstate_init(self):
        self.hold_enabled = True        # off when the daemon migrates no state
        self.holds = {}                 # VM name -> _Hold
        self._forwarders = {}           # cookie & ENTRY_COOKIE_MASK -> _Forwarder
        self._fwd_by_wire = {}          # wire 5-tuple -> that key

    # ------------------------------------------------------------ gather
    def vm_slices(self, vm):
        """[(slice, VmSpec)] of the slices whose switch has the VM."""
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            spec = next((v for v in s.config.vms if v.name == vm), None)
            if spec is not None:
                out.append((s, spec))
        return out

    def is_local(self, vm):
        """Is ``vm`` bound to this host (per the config)?"""
        return any(spec.host == self.host for _, spec in self.vm_slices(vm))

    def gather_mode(self, vm):
        for s, _ in self.vm_slices(vm):
            mode = dict(s.config.options or {}).get("migration-gather")
            if mode:
                return mode if mode in GATHER_MODES else DEFAULT_GATHER
        return DEFAULT_GATHER

    def gather_tags(self, vm):
        return [s.tag for s, _ in self.vm_slices(vm)]

    def gather(self, vm, mode=DEFAULT_GATHER, flows=()):
        """The VM's connections as records.  ``flows``: for the datapath
        modes, a fresh dump of the daemon's cache flows ``(Flow, packets,
        bytes)`` of the VM's slices."""
        if mode not in GATHER_MODES:
            raise ValueError("gather mode %r is not one of %s" % (mode, ", ".join(GATHER_MODES)))
        with gc_paused():
            return self._gather(vm, mode, flows)

    def _gather(self, vm, mode, flows):
        out = []
        for s, spec in self.vm_slices(vm):
            table = s.tables.get(vm)
            entries = list(table.entries.values()) if table is not None else []
            if mode == "service":
                chain, switch = list(chain_of(s.config)), s.config.switch
                record = self._record
                out.extend([record(s, e, chain=chain, switch=switch) for e in entries])
                continue
            found = self._datapath_records(s, spec, flows)
            if mode == "datapath":
                for rec in found.values():
                    rec.pop("_flowcounts", None)
                    out.append(rec)
                # Nothing in the datapath to read for connections without flows.
                out.extend(self._record(s, e) for e in entries
                           if not e.flows & FLOW_BOTH
                           and tuple(_conn(e.key)) not in found)
                continue
            for e in entries:               # datapath+review
                rec = found.pop(tuple(_conn(e.key)), None)
                if e.state in (CLOSING, CLOSED) and rec is not None:
                    continue                # its flows are about to go
                out.append(self._record(s, e, fresh=rec))
            # Flows of connections the service no longer holds: dropped.
        return out

    def _record(self, s, e, fresh=None, chain=None, switch=None):
        x = e.xlate
        counts = [e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply]
        if fresh is not None:
            # Counters the datapath has and the last poll did not fold in.
            f = fresh["_flowcounts"]
            d_from = (max(0, f[0] - e.fs_from_packets), max(0, f[1] - e.fs_from_bytes))
            d_to = (max(0, f[2] - e.fs_to_packets), max(0, f[3] - e.fs_to_bytes))
            if e.origin == OUT:
                counts = [counts[0] + d_from[0], counts[1] + d_from[1],
                          counts[2] + d_to[0], counts[3] + d_to[1]]
            else:
                counts = [counts[0] + d_to[0], counts[1] + d_to[1],
                          counts[2] + d_from[0], counts[3] + d_from[1]]
        home = None
        if x is not None and x.kind == "snat":
            home = x.home or self.host
        k = e.key
        return {"chain": list(chain or chain_of(s.config)),
                "switch": s.config.switch if switch is None else switch, "vm": e.vm,
                "conn": [k.proto, ip_text(k.vm_ip), k.vm_port, ip_text(k.peer_ip), k.peer_port],
                "origin": e.origin, "verdict": e.verdict,
                "state": e.state, "fins": e.fins, "created": e.created,
                "last_seen": e.last_seen, "counts": counts,
                "flows": e.flows & FLOW_BOTH, "flow_timeout": e.flow_timeout,
                "rule": e.rule,
                "xlate": _xlate_record(x), "home": home}

    def _datapath_records(self, s, spec, flows):
        """{conn id: record} of the VM's offloaded connections in slice ``s``,
        from their cache flows alone."""
        vm_ip = ip_int(spec.ip)
        groups = {}
        for item in flows:
            flow, packets, nbytes = item[0], item[1], item[2]
            parsed = CF.parse_cache_flow(flow)
            if parsed is None or parsed[0] != s.tag:
                continue
            ck = s.tag << CF.TAG_SHIFT | parsed[2]
            if ck in self._forwarders:
                continue
            groups.setdefault(parsed[2], []).append((parsed, flow, packets, nbytes))
        out = {}
        for items in groups.values():
            rec = self._record_from_flows(s, spec, vm_ip, items)
            if rec is not None:
                out[tuple(rec["conn"])] = rec
        return out

    def _record_from_flows(self, s, spec, vm_ip, items):
        out_flow = back_flow = None
        counts = [0, 0, 0, 0]
        bits = 0
        for parsed, flow, packets, nbytes in items:
            if parsed[1] == P.STAGE_FROM_VM:
                out_flow = (parsed, flow)
                counts[0], counts[1] = packets, nbytes
                bits |= FLOW_FROM_VM
            else:
                back_flow = (parsed, flow)
                counts[2], counts[3] = packets, nbytes
                bits |= FLOW_TO_VM
        xl, home = None, None
        if out_flow is not None:
            (_, _, _, proto, src, dst, sport, dport, verdict), flow = out_flow
            if src != vm_ip:
                return None
            key = ConnKey(proto, src, sport, dst, dport)
            sets = _sets(flow)
            if "ipv4_dst" in sets:          # load balancer: to the backend
                xl = Xlate("lb", src, sport, ip_int(sets["ipv4_dst"]),
                           sets.get("tcp_dst", sets.get("udp_dst", dport)), spec.mac,
                           sets.get("eth_dst", ""), self._vip_key(s, proto, dst, dport))
            elif "ipv4_src" in sets:        # SNAT or DNAT: from an external address
                ext = ip_int(sets["ipv4_src"])
                eport = sets.get("tcp_src", sets.get("udp_src", sport))
                rule = s.dnat_rule(proto, ext, eport)
                if rule is not None and ip_int(rule.logical_ip) == vm_ip:
                    xl = Xlate("dnat", ext, eport, dst, dport, spec.mac, "", rule.uuid)
                else:
                    snat = next((r for _, r in s.snat if sets["ipv4_src"] in r.external_ips),
                                None)
                    xl = Xlate("snat", ext, eport, dst, dport, spec.mac, "",
                               snat.uuid if snat is not None else "")
                    home = self._snat_home(s, spec.name, key)
        elif back_flow is not None:
            (_, stage, _, proto, src, dst, sport, dport, verdict), flow = back_flow
            if dst != vm_ip or stage != P.STAGE_TO_VM or _sets(flow):
                return None         # a translated entry's flows come in pairs
            key = ConnKey(proto, dst, dport, src, sport)
        else:
            return None
        origin = OUT if key.vm_port >= key.peer_port else IN
        flowcounts = list(counts)               # from-VM flow, then to-VM flow
        if origin == IN:
            counts = [counts[2], counts[3], counts[0], counts[1]]
        state = ESTABLISHED if proto == IPPROTO_TCP and verdict == ALLOW else None
        if state is None:
            state = initial_state(proto)
        timeout = max(f.idle_timeout for _, f, _, _ in items)
        rec = {"chain": list(chain_of(s.config)), "switch": s.config.switch,
               "vm": spec.name, "conn": _conn(key), "origin": origin, "verdict": verdict,
               "state": state, "fins": 0, "created": 0.0, "last_seen": 0.0,
               "counts": counts, "flows": bits, "flow_timeout": timeout,
               "rule": "datapath",
               "xlate": _xlate_record(xl), "home": home, "_flowcounts": flowcounts}
        return rec

    def _snat_home(self, s, vm, key):
        """Where a SNAT port's block is: not a datapath fact; the service knows."""
        table = s.tables.get(vm)
        e = table.get(key) if table is not None else None
        if e is not None and e.xlate is not None and e.xlate.home:
            return e.xlate.home
        return self.host

    def _vip_key(self, s, proto, ip, port):
        for v in s.vips.values():
            if v.spec.vip == ip_text(ip) and v.spec.port == port:
                return v.key
        return ""

    # ------------------------------------------------------------ import
    def check_records(self, vm, records):
        """Raise RecordError unless every record is one this host may import
        for ``vm``: the VM's own, into a slice of its own switch (tenant)."""
        with gc_paused():
            self._checked(vm, records)

    def _checked(self, vm, records):
        """``check_records``; returns, per record in order, ``(slice, ConnKey,
        Xlate or None, record)`` (everything parsed once)."""
        slices = {chain_of(s.config): (s, spec, _ip(spec.ip), spec.mac, s.config.switch)
                  for s, spec in self.vm_slices(vm)}
        if not isinstance(records, list):
            raise RecordError("records are not a list")
        seen = set()
        out = []
        ports = range(65536)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise RecordError("record %d is not an object" % i)
            try:
                if rec.get("vm") != vm:
                    raise RecordError("record %d is for VM %r, not %s" % (i, rec.get("vm"), vm))
                chain = tuple(rec["chain"])
                got = slices.get(chain)
                if got is None or rec.get("switch") != got[4]:
                    raise RecordError("record %d: chain %s is not a slice of %s's switch on %s"
                                      % (i, ",".join(map(str, chain)), vm, self.host))
                s, spec, own_ip, own_mac, _ = got
                conn = rec["conn"]
                proto, vm_ip, vm_port, peer_ip, peer_port = conn
                if _ip(vm_ip) != own_ip:
                    raise RecordError("record %d: address %s is not %s's" % (i, vm_ip, vm))
                if type(vm_port) is not int or vm_port not in ports:   # noqa: E721 - no bools
                    raise RecordError("record %d: bad port %r" % (i, vm_port))
                if type(peer_port) is not int or peer_port not in ports:   # noqa: E721
                    raise RecordError("record %d: bad port %r" % (i, peer_port))
                if type(proto) is not int or not 0 <= proto <= 255:    # noqa: E721
                    raise RecordError("record %d: bad protocol %r" % (i, proto))
                key = ConnKey(proto, own_ip, vm_port, _ip(peer_ip), peer_port)
                if rec["origin"] not in (OUT, IN) or rec["verdict"] not in (ALLOW, DENY):
                    raise RecordError("record %d: bad origin or verdict" % i)
                if rec["state"] not in KNOWN_STATES:
                    raise RecordError("record %d: bad state %r" % (i, rec["state"]))
                flows = rec["flows"]
                if not isinstance(flows, int) or flows & ~FLOW_BOTH:
                    raise RecordError("record %d: bad flows %r" % (i, flows))
                counts = rec["counts"]
                if len(counts) != 4:
                    raise RecordError("record %d: bad counters" % i)
                for n in counts:
                    if not isinstance(n, int) or n < 0:
                        raise RecordError("record %d: bad counters" % i)
                float(rec["created"])
                float(rec["last_seen"])
                int(rec["fins"])
                timeout = rec["flow_timeout"]
                if not isinstance(timeout, int) or timeout < 0:
                    raise RecordError("record %d: bad flow timeout" % i)
                xl = rec.get("xlate")
                x = None
                if xl is not None:
                    kind, xvm, xvport, xpeer, xpport, vm_mac, peer_mac, service = xl
                    vm_mac = str(vm_mac).lower()
                    if kind not in XLATE_KINDS or vm_mac != own_mac:
                        raise RecordError("record %d: bad translation" % i)
                    xvm, xpeer = _ip(xvm), _ip(xpeer)
                    if not (isinstance(xvport, int) and 0 <= xvport <= 65535
                            and isinstance(xpport, int) and 0 <= xpport <= 65535):
                        raise RecordError("record %d: bad translated port" % i)
                    home = None
                    if kind == "snat":
                        home = rec.get("home")
                        if not isinstance(home, str):
                            raise RecordError("record %d: SNAT record without its home host"
                                              % i)
                    x = Xlate(kind, xvm, xvport, xpeer, xpport, vm_mac, str(peer_mac).lower(),
                              str(service), None if home == self.host else home)
            except RecordError:
                raise
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
                raise RecordError("record %d: malformed (%s: %s)" % (i, type(err).__name__, err))
            seen_key = (chain, key)
            if seen_key in seen:
                raise RecordError("record %d: connection listed twice" % i)
            seen.add(seen_key)
            out.append((s, key, x, rec))
        return out

    def import_vm(self, vm, records, now):
        """Apply a checked transfer: the VM's connections in these slices
        become exactly ``records`` (stale entries of an earlier stay go).
        Returns (FlowChanges, entries imported)."""
        with gc_paused():
            return self._import_vm(vm, records, now)

    def _import_vm(self, vm, records, now):
        from middlebox.core import FlowChanges, Result
        checked = self._checked(vm, records)
        changes = FlowChanges()
        for s, _ in self.vm_slices(vm):
            table = s.tables.get(vm)
            if table is not None:
                for e in table:
                    changes.delete.extend(self._forget(s, table, e))
        add = changes.add
        entries = self._entries
        for s, key, x, rec in checked:
            table = s.table(vm)
            entry_id = self._alloc_id(s.tag)
            e = ConnEntry(key, rec["origin"], rec["verdict"], float(rec["created"]),
                          s.timeouts, entry_id, str(rec["rule"]), vm, s.tag, rec["state"])
            e.fins = int(rec["fins"])
            e.last_seen = float(rec["last_seen"])
            e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply = rec["counts"]
            e.flow_timeout = rec["flow_timeout"]
            e.xlate = x
            e.refresh(max(now, e.last_seen), s.timeouts)
            table.add(e)
            entries[s.tag << CF.TAG_SHIFT | entry_id] = e
            if x is not None:
                if self._fwd_by_wire:
                    changes.delete.extend(self._drop_forwarder(self._wire_key(e)))
                if x.kind == "snat" and not x.away:
                    got = self._snat.get(x.service)
                    if got is not None and got[1].ip == x.vm_ip:
                        got[1].reserve(key.proto, x.vm_port)
                res = Result(ALLOW)
                self._bind(s, e, res)
                add.extend(res.add)
            bits = rec["flows"] if s.offload else 0
            if bits:
                timeout = e.flow_timeout or s.timeouts.for_state(key.proto, e.state, e.verdict)
                e.flow_timeout = timeout
                add.extend(self._flows_of(e, bits, timeout))
                e.flows |= bits
        self.counters["flows_added"] += len(changes.add)
        self.counters["flows_deleted"] += len(changes.delete)
        return changes, len(records)

    # ------------------------------------------------------------ release
    def release_vm(self, vm):
        """The VM runs elsewhere now: forget its connections here.  A SNAT
        mapping from this host's own port block keeps its port, behind a
        forwarder to the VM's MAC.  Returns FlowChanges."""
        from middlebox.core import FlowChanges
        changes = FlowChanges()
        for s, spec in self.vm_slices(vm):
            table = s.tables.get(vm)
            if table is None:
                continue
            for e in table:
                x = e.xlate
                keep = (x is not None and x.kind == "snat" and not x.away
                        and e.verdict == ALLOW and x.service in self._snat
                        and self._snat[x.service][1].ip == x.vm_ip)
                wire = self._wire_key(e) if keep else None
                changes.delete.extend(self._forget(s, table, e))
                if keep:
                    self._snat[x.service][1].reserve(e.key.proto, x.vm_port)
                    timeout = e.flow_timeout or s.timeouts.for_state(
                        e.key.proto, ESTABLISHED if e.key.proto == IPPROTO_TCP else "replied")
                    fid = self._alloc_id(s.tag)
                    flow = CF.forwarder_flow(s.tag, fid, e.key.proto, e.key.peer_ip,
                                             e.key.peer_port, x.vm_ip, x.vm_port, spec.mac,
                                             timeout)
                    ck = s.tag << CF.TAG_SHIFT | fid
                    self._forwarders[ck] = _Forwarder(wire, x.service, e.key.proto,
                                                      x.vm_port, vm, spec.mac, flow)
                    self._fwd_by_wire[wire] = ck
                    changes.add.append(flow)
            if not table.entries and vm not in {v.name for v in s.config.vms
                                                if v.host == self.host}:
                s.tables.pop(vm, None)
        self.counters["flows_added"] += len(changes.add)
        self.counters["flows_deleted"] += len(changes.delete)
        return changes

    def _drop_forwarder(self, wire):
        """The connection is back on its SNAT block's host: no forwarder."""
        ck = self._fwd_by_wire.pop(wire, None)
        fwd = self._forwarders.pop(ck, None) if ck is not None else None
        return [fwd.flow] if fwd is not None else []

    def _forwarder_gone(self, ck):
        """Its flow left the datapath (idle): release the port."""
        fwd = self._forwarders.pop(ck, None)
        if fwd is None:
            return False
        if self._fwd_by_wire.get(fwd.wire) == ck:
            del self._fwd_by_wire[fwd.wire]
        got = self._snat.get(fwd.rule)
        if got is not None:
            got[1].release(fwd.proto, fwd.port)
        return True

    def forwarder_for(self, pkt):
        """The forwarder of a packet from outside (a FIN or RST its flow
        does not take), or None."""
        ck = self._fwd_by_wire.get((pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport))
        return self._forwarders.get(ck) if ck is not None else None

    def export_forwarders(self):
        """The forwarders, JSON-serialisable, for the state file."""
        out = []
        for ck, f in self._forwarders.items():
            m = dict(f.flow.match)
            out.append([ck >> CF.TAG_SHIFT, ck & CF.ENTRY_ID_MASK, f.proto,
                        m["ipv4_src"], f.wire[2], m["ipv4_dst"], f.port, f.mac,
                        f.flow.idle_timeout, f.rule, f.vm])
        return out

    def import_forwarders(self, rows, groups):
        """Forwarders of the state file whose flow is still in the datapath
        (``groups``: the daemon's flows found there, by cookie; the ones
        taken are removed from it).  A restarted daemon keeps forwarding."""
        for row in rows if isinstance(rows, list) else ():
            try:
                tag, fid, proto, peer_ip, peer_port, ext_ip, port, mac, timeout, rule, vm = row
                flow = CF.forwarder_flow(int(tag), int(fid), int(proto), ip_int(peer_ip),
                                         int(peer_port), ip_int(ext_ip), int(port), str(mac),
                                         int(timeout))
            except (TypeError, ValueError):
                continue
            ck = int(tag) << CF.TAG_SHIFT | int(fid)
            found = groups.get(ck, [])
            if not any(f.match == flow.match and f.instructions == flow.instructions
                       for _, f in found):
                continue
            groups.pop(ck, None)
            wire = (int(proto), ip_int(peer_ip), int(peer_port), ip_int(ext_ip), int(port))
            self._forwarders[ck] = _Forwarder(wire, str(rule), int(proto), int(port),
                                              str(vm), str(mac), flow)
            self._fwd_by_wire[wire] = ck
            got = self._snat.get(str(rule))
            if got is not None:
                got[1].reserve(int(proto), int(port))

    def forwarders(self):
        return [{"vm": f.vm, "proto": f.proto, "wire": "%s:%d/%s:%d" % (
                    ip_text(f.wire[1]), f.wire[2], ip_text(f.wire[3]), f.wire[4])}
                for f in self._forwarders.values()]

    # ------------------------------------------------------------ hold
    def expect_vm(self, vm, now, deadline):
        """A migration of ``vm`` to this host began: hold its stray packets
        until the state lands or ``deadline``."""
        h = self.holds.get(vm)
        if h is None or h.state != "waiting":
            self.holds[vm] = _Hold(now, deadline)
        else:
            h.deadline = max(h.deadline, deadline)

    def should_hold(self, vm_spec, now):
        """Hold this packet (no entry, cannot open a connection) of a VM?"""
        if not self.hold_enabled:
            return False
        h = self.holds.get(vm_spec.name)
        if h is None:
            if vm_spec.host == self.host:
                return False
            # Not bound here yet, but its packets are: it is arriving.
            h = self.holds[vm_spec.name] = _Hold(now, now + DEFAULT_WAIT)
        return h.state == "waiting"

    def hold(self, vm, frame, tci):
        h = self.holds[vm]
        if len(h.frames) >= HOLD_MAX_FRAMES or h.nbytes + len(frame) > HOLD_MAX_BYTES:
            h.dropped += 1
            self.counters["hold_dropped"] += 1
            return False
        h.frames.append((frame, tci))
        h.nbytes += len(frame)
        h.count += 1
        self.counters["held"] += 1
        return True

    def holds_due(self, now):
        """VMs whose hold passed its deadline without state."""
        return [vm for vm, h in self.holds.items() if h.state == "waiting" and now >= h.deadline]

    def release_held(self, vm, now, landed):
        """End the VM's hold: its frames are judged now, in order (after an
        import they find their connections; after a fallback, the rules).
        Returns (list of Result, frames held in all)."""
        h = self.holds.get(vm)
        if h is None:
            return [], 0
        frames, h.frames, h.nbytes = h.frames, [], 0
        h.state = "landed" if landed else "fallback"
        h.since = now
        results = [self.handle_frame(frame, tci, now) for frame, tci in frames]
        return results, h.count

    def forget_holds(self, now):
        for vm in [v for v, h in self.holds.items()
                   if h.state != "waiting" and now - h.since > HOLD_FORGET]:
            del self.holds[vm]


def _xlate_record(x):
    """An Xlate as a record's "xlate" list (addresses as text), or None."""
    if x is None:
        return None
    return [x.kind, ip_text(x.vm_ip), x.vm_port, ip_text(x.peer_ip), x.peer_port, x.vm_mac,
            x.peer_mac, x.service]


def _sets(flow):
    out = {}
    for inst in flow.instructions:
        if inst[0] == "apply":
            for action in inst[1]:
                if action[0] == "set_field":
                    out[action[1]] = action[2]
    return out
