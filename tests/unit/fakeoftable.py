"""A small simulator of Open vSwitch's OpenFlow 1.3 pipeline over ``Flow`` lists,
with groups, Nicira actions and a userspace-conntrack model.

Tests ask behavioural questions ("is this packet output on the tunnel port
with tunnel_id 1001?", "does the reply reach table 20 translated back?")
instead of comparing flow lists.  Semantics follow OpenFlow 1.3 as Open
vSwitch implements it:

* processing starts in table 0 (``table=`` to start elsewhere); in each table
  the highest-priority matching flow wins (two matching flows of equal
  priority are a pipeline bug and raise); no match means drop;
* a match on a field the packet lacks fails, except metadata, registers
  (reg0..reg15) and the conntrack fields, which start at 0;
* apply-actions run in order (output snapshots the packet at that point),
  then write-metadata, then goto (only to a later table);
* output to the packet's own in_port is silently dropped, as on a switch;
* conjunctive matches as OVS's classifier does them: flows whose actions are
  ``conjunction`` are "soft"; among those of a priority above the best
  ordinary match, a conjunction whose every clause matched makes the lookup
  find the best flow matching ``conj_id``; otherwise the ordinary match wins;
* ``resubmit`` runs the target table (any table, like OVS) as a subroutine,
  then the remaining actions; depth is bounded (``MAX_RESUBMIT_DEPTH``);
* ``group``: select groups pick one bucket of non-zero weight by a hash of
  the 5-tuple (deterministic; ``force_bucket`` overrides), "all" runs every
  bucket, "indirect" its one; bucket actions work on a copy of the packet;
* ``load``/``move`` write bit ranges of registers, metadata, header fields
  and, inside ``ct(exec(...))``, ct_mark/ct_label;
* ``ct`` hands the packet to ``Conntrack`` (below).  As in OVS, ``ct``
  forks: with ``table``, a copy with the conntrack results (ct_state,
  ct_mark, ct_label, ct_zone, NAT applied) is recirculated to that table
  once the current pipeline is done (registers and metadata survive); the
  original instance goes on with the next action *untracked* (ct fields
  cleared, header as before).  Without ``table`` the packet handed to
  conntrack is the one that goes on: conntrack's NAT rewrites its header,
  but, as in OVS (ovs-actions(7): "the original instance ... continue[s]
  ... as an untracked packet"), its ct fields read as cleared.

Flows the switch would refuse are refused at construction (``FlowRejected``;
``strict=False`` installs them anyway and lists them in ``rejected``), e.g.
a ct action in a flow that does not match eth_type IPv4 (OVS:
OFPBAC_MATCH_INCONSISTENT), a conjunction flow with other actions, a group
that does not exist, ct_mark written outside ``ct(exec)``.

Meters (``meters``: ``Meter`` values) have no clock here: a meter passes
its first ``burst`` packets and drops the rest (``meter_counts``: packets
that reached each meter).  A flow whose meter does not exist is refused
(OFPMMFC_UNKNOWN_METER).

The conntrack model (``Conntrack``) follows OVS's userspace conntrack
(lib/conntrack.c), within one ``FakeOFTable`` (shared across lookups):

* a packet is looked up by its 5-tuple (TCP/UDP ports; ICMP echo and the
  other queries by their id, ``icmp_id``) in the zone, as either direction
  of an entry: the original tuple or the reply tuple (NAT-aware: the reply
  tuple is what replies look like on the wire);
* no entry: +trk+new, or +trk+inv for what cannot open a connection (a TCP
  SYN+ACK, illegal TCP flags, an ICMP reply or error).  Like OVS, a TCP
  packet that is not a SYN (a plain ACK) is +new: OVS picks up mid-stream
  connections; the pipeline itself must drop those;
* an entry: +trk+est (+rpl in the reply direction); a TCP SYN repeated
  before any reply is +new again (OVS's VALID_NEW); after a RST (or FIN
  both ways) a new SYN replaces the entry;
* an ICMP error quoting a packet of an entry is +trk+rel (+rpl when it
  travels the reply direction) and is translated like its entry (outer and
  quoted header);
* ``commit`` creates the entry (NAT: ``("nat", "src"|"dst", ip_min, ip_max,
  port_min, port_max)``: the first address and the first port of the range
  whose reply tuple is free; ICMP keeps its id, as OVS does; no free tuple:
  nothing is committed and the packet stays +new, untranslated); ``exec`` sets
  ct_mark/ct_label; re-committing an existing entry only updates them;
* ``nat``: bare ``("nat",)`` translates as the entry says; a packet is
  translated only when the ct action has a nat option.  Translation sets
  +snat/+dnat as OVS does (the reply of an SNAT entry is +dnat: its
  destination is rewritten);
* a second ct in the same zone of a packet already translated there looks
  its entry up by the reverse of its (translated) tuple, as OVS does;
* ct needs an IPv4 packet (eth_type 0x0800).

``commit_entry`` seeds an entry as a state import would; ``dump(zone)``
lists entries.  ``tcp``/``udp``/``icmp_echo``/``icmp_error``/``reply_to``
build packets.
"""

import ipaddress
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

OFPP_IN_PORT = 0xFFFFFFF8
ETH_TYPE_IP = 0x0800

# ct_state bits (Open vSwitch).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK, CT_SNAT, CT_DNAT = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

REGS = tuple(f"reg{i}" for i in range(16))
CT_FIELDS = ("ct_state", "ct_mark", "ct_label", "ct_zone")
# Pipeline-internal state: never visible on an output packet; reads as 0
# when unset.
_INTERNAL = {"metadata", "conj_id"} | set(REGS) | set(CT_FIELDS)
# Field widths in bits (load/move); others are taken as 48 (MAC) or 32.
_WIDTH = {"metadata": 64, "ct_label": 128, "ct_zone": 16, "ct_state": 32, "ct_mark": 32,
          "tcp_src": 16, "tcp_dst": 16, "udp_src": 16, "udp_dst": 16, "in_port": 32,
          "vlan_vid": 13, "vlan_pcp": 3, "ip_proto": 8, "eth_type": 16, "tunnel_id": 64}
# Match prerequisites (OpenFlow 1.3 / OVS): field -> (field, allowed values).
_PREREQ = {"ipv4_src": ("eth_type", {ETH_TYPE_IP}), "ipv4_dst": ("eth_type", {ETH_TYPE_IP}),
           "ip_proto": ("eth_type", {ETH_TYPE_IP, 0x86DD}),
           "tcp_src": ("ip_proto", {6}), "tcp_dst": ("ip_proto", {6}),
           "tcp_flags": ("ip_proto", {6}),
           "udp_src": ("ip_proto", {17}), "udp_dst": ("ip_proto", {17}),
           "icmpv4_type": ("ip_proto", {1}), "icmpv4_code": ("ip_proto", {1}),
           "arp_op": ("eth_type", {0x0806}), "arp_spa": ("eth_type", {0x0806}),
           "arp_tpa": ("eth_type", {0x0806}), "arp_sha": ("eth_type", {0x0806}),
           "arp_tha": ("eth_type", {0x0806})}
_CT_WRITABLE = {"ct_mark", "ct_label"}

MAX_RESUBMIT_DEPTH = 64
MAX_RECIRCULATIONS = 32

# ICMP: queries (request -> reply type), and the errors that quote a packet.
ICMP_QUERIES = {8: 0, 13: 14, 15: 16, 17: 18}
ICMP_QUERY_REPLIES = frozenset(ICMP_QUERIES.values())
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})


class FlowRejected(AssertionError):
    """A flow (or group) Open vSwitch would refuse to install."""


@dataclass(frozen=True)
class Output:
    port: int
    fields: Tuple[Tuple[str, Any], ...]   # sorted packet fields at output time

    def get(self, name, default=None):
        return dict(self.fields).get(name, default)


@dataclass
class Trace:
    """What one lookup did: outputs, every table entered (with the packet as
    it arrived, registers and ct fields included) and every flow executed."""
    outputs: List[Output] = field(default_factory=list)
    arrivals: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)
    flows: list = field(default_factory=list)

    def reached(self, table_id):
        """True if the packet (or a recirculated copy) entered ``table_id``."""
        return any(t == table_id for t, _ in self.arrivals)

    def at(self, table_id):
        """The packets (field dicts) as they entered ``table_id``, in order."""
        return [dict(s) for t, s in self.arrivals if t == table_id]

    def tables(self):
        return [t for t, _ in self.arrivals]

    def ports(self):
        return sorted(o.port for o in self.outputs)


class FakeOFTable:

    def __init__(self, flows, groups=(), conntrack=None, strict=True, meters=()):
        self.tables = {}
        self.groups = {g.group_id: g for g in groups}
        self.meters = {m.meter_id: m for m in meters}
        self.meter_counts = Counter()   # meter id -> packets that reached it
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self.hits = Counter()           # Flow -> packets that executed it
        self.forced = {}                # group id -> bucket index
        self.rejected = []              # (flow, reason) when not strict
        self._soft = {}                 # id(flow) -> its conjunction actions
        for flow in flows:
            self._soft[id(flow)] = _conjunctions(flow)
            reason = _refusal(flow, self.groups, self.meters)
            if reason is not None:
                if strict:
                    raise FlowRejected(f"{reason}: {flow}")
                self.rejected.append((flow, reason))
            self.tables.setdefault(flow.table, []).append(flow)
        for flows_of_table in self.tables.values():
            flows_of_table.sort(key=lambda f: -f.priority)

    # ---------------------------------------------------------------- API
    def lookup(self, packet, include_ingress=False, table=0):
        """Outputs of ``packet`` (a dict of fields); [] if it is dropped.

        With ``include_ingress``, outputs to the packet's in_port (which a
        switch drops) are listed too, to check that the pipeline never tries.
        ``table``: the table processing starts in.
        """
        return self.trace(packet, include_ingress=include_ingress, table=table).outputs

    def trace(self, packet, table=0, include_ingress=False):
        """Run ``packet`` from ``table``; a ``Trace`` of what happened."""
        run = _Run(self, Trace(), include_ingress)
        state = dict(packet)
        state.setdefault("metadata", 0)
        run.queue.append((state, table))
        count = 0
        while run.queue:
            state, table_id = run.queue.popleft()
            count += 1
            assert count <= MAX_RECIRCULATIONS + 1, "recirculation loop"
            run.pipeline(state, table_id, 0)
        return run.trace

    def is_output(self, packet, port, **fields):
        """True if ``packet`` leaves on ``port`` with all of ``fields`` set as given."""
        return any(out.port == port and all(_same(out.get(k), v) for k, v in fields.items())
                   for out in self.lookup(packet))

    def output_ports(self, packet):
        return sorted(out.port for out in self.lookup(packet))

    def force_bucket(self, group_id, index):
        """Make select group ``group_id`` pick bucket ``index`` (None: hash again)."""
        if index is None:
            self.forced.pop(group_id, None)
        else:
            self.forced[group_id] = index

    def packet_count(self, flow):
        return self.hits[flow]

    def cookie_count(self, cookie, mask=0xFFFFFFFFFFFFFFFF):
        return sum(n for f, n in self.hits.items() if f.cookie & mask == cookie & mask)

    def table_count(self, table_id):
        """Packets that executed some flow of ``table_id``."""
        return sum(n for f, n in self.hits.items() if f.table == table_id)

    # ----------------------------------------------------------- classify
    def classify(self, table_id, state):
        """The flow ``state`` executes in ``table_id``, or None (drop)."""
        hard, soft = None, []
        for f in self.tables.get(table_id, ()):
            if hard is not None and f.priority < hard.priority:
                break
            if not _matches(f.match, state):
                continue
            if self._soft[id(f)]:
                soft.append(f)
            elif hard is None:
                hard = f
            else:
                raise AssertionError(f"ambiguous match in table {table_id}: {[hard, f]}")
        if hard is not None:
            tied = [f for f in soft if f.priority == hard.priority]
            assert not tied, f"conjunction and flow of one priority in table {table_id}: " \
                             f"{[hard] + tied}"
        for prio in sorted({f.priority for f in soft}, reverse=True):
            clauses, sizes = {}, {}
            for f in soft:
                if f.priority != prio:
                    continue
                for _, conj_id, clause, n in self._soft[id(f)]:
                    clauses.setdefault(conj_id, set()).add(clause)
                    assert sizes.setdefault(conj_id, n) == n, \
                        f"conjunction {conj_id} with different clause counts"
            for conj_id in sorted(c for c in clauses if len(clauses[c]) == sizes[c]):
                found = self._classify_hard(table_id, dict(state, conj_id=conj_id))
                if found is not None:
                    return found
        return hard

    def _classify_hard(self, table_id, state):
        hits = [f for f in self.tables.get(table_id, ())
                if not self._soft[id(f)] and _matches(f.match, state)]
        if not hits:
            return None
        tied = [f for f in hits if f.priority == hits[0].priority]
        assert len(tied) == 1, f"ambiguous match in table {table_id}: {tied}"
        return hits[0]


class _Run:
    """One lookup: its trace and the recirculation queue."""

    def __init__(self, table, trace, include_ingress):
        self.table = table
        self.trace = trace
        self.include_ingress = include_ingress
        self.queue = deque()

    def pipeline(self, state, table_id, depth):
        while table_id is not None:
            self.trace.arrivals.append((table_id, dict(state)))
            flow = self.table.classify(table_id, state)
            if flow is None:
                return
            self.table.hits[flow] += 1
            self.trace.flows.append(flow)
            table_id = self.execute(flow, state, depth)

    def execute(self, flow, state, depth):
        next_table = None
        for inst in flow.instructions:
            if inst[0] == "apply":
                self.actions(inst[1], state, depth)
            elif inst[0] == "write_metadata":
                _, value, mask = inst
                state["metadata"] = (state["metadata"] & ~mask) | (value & mask)
            elif inst[0] == "goto":
                assert inst[1] > flow.table, f"goto backwards: {flow}"
                next_table = inst[1]
            elif inst[0] == "meter":
                self.table.meter_counts[inst[1]] += 1
                if self.table.meter_counts[inst[1]] > self.table.meters[inst[1]].burst:
                    return None                 # over its rate: dropped
            else:
                raise AssertionError(f"unknown instruction {inst}")
        return next_table

    def actions(self, actions, state, depth):
        for action in actions:
            self.act(action, state, depth)

    def act(self, action, state, depth):
        kind = action[0]
        if kind == "output":
            port = state["in_port"] if action[1] == OFPP_IN_PORT else action[1]
            if action[1] == OFPP_IN_PORT or port != state.get("in_port") \
                    or self.include_ingress:
                visible = {k: v for k, v in state.items()
                           if k not in _INTERNAL and not k.startswith("_")}
                self.trace.outputs.append(Output(port, tuple(sorted(visible.items()))))
        elif kind == "set_field":
            assert action[1] not in _CT_WRITABLE, f"{action[1]} set outside ct: {action}"
            state[action[1]] = action[2]
        elif kind == "push_vlan":
            state["vlan_vid"] = 0x1000          # tag present, VLAN id 0
        elif kind == "pop_vlan":
            state.pop("vlan_vid", None)
            state.pop("vlan_pcp", None)
        elif kind == "load":
            _, dst, value, ofs, nbits = action
            assert dst not in _CT_WRITABLE, f"{dst} loaded outside ct: {action}"
            _store(state, dst, ofs, nbits, value)
        elif kind == "move":
            _, src, src_ofs, dst, dst_ofs, nbits = action
            assert dst not in _CT_WRITABLE, f"{dst} moved to outside ct: {action}"
            _store(state, dst, dst_ofs, nbits, _bits(_read(state, src), src_ofs, nbits))
        elif kind == "resubmit":
            assert depth < MAX_RESUBMIT_DEPTH, "resubmit too deep"
            self.pipeline(state, action[1], depth + 1)
        elif kind == "group":
            self.group(action[1], state, depth)
        elif kind == "ct":
            self.ct(action, state)
        elif kind == "ct_clear":
            for name in CT_FIELDS:
                state.pop(name, None)
            state.pop("_md_ct", None)
        elif kind == "conjunction":
            raise AssertionError(f"conjunction executed: {action}")
        else:
            raise AssertionError(f"unknown action {action}")

    def group(self, group_id, state, depth):
        group = self.table.groups.get(group_id)
        assert group is not None, f"no group {group_id}"
        buckets = list(group.buckets)
        if group.type == "select":
            forced = self.table.forced.get(group_id)
            if forced is not None:
                chosen = [buckets[forced]]
            else:
                live = [b for b in buckets if b[0] > 0]
                if not live:
                    return
                total = sum(w for w, _ in live)
                point = zlib.crc32(repr(five_tuple(state)).encode()) % total
                for weight, actions in live:
                    if point < weight:
                        chosen = [(weight, actions)]
                        break
                    point -= weight
        else:
            chosen = buckets
        for _, actions in chosen:
            self.actions(actions, dict(state), depth)

    def ct(self, action, state):
        _, commit, zone, table, nat, exec_ = action
        assert state.get("eth_type") == ETH_TYPE_IP, f"ct on a packet that is not IPv4: {state}"
        if isinstance(zone, str):
            zone = _read(state, zone) & 0xFFFF
        tracked = dict(state)
        self.table.conntrack.execute(tracked, zone, commit, nat, exec_)
        if table is not None:
            self.queue.append((tracked, table))
            for name in CT_FIELDS:
                state.pop(name, None)
        else:
            state.clear()
            state.update(tracked)
            for name in CT_FIELDS:
                state.pop(name, None)


# ------------------------------------------------------------------ conntrack

@dataclass
class Entry:
    """One connection: ``orig`` as its first packet had it, ``reply`` as its
    replies look on the wire; both (src, sport, dst, dport) with dotted
    addresses.  ``nat``: "src", "dst" or None."""
    zone: int
    proto: int
    orig: Tuple[str, int, str, int]
    reply: Tuple[str, int, str, int]
    nat: Optional[str] = None
    mark: int = 0
    label: int = 0
    seen_reply: bool = False
    fin: Tuple[bool, bool] = (False, False)
    closed: bool = False

    def __str__(self):
        o, r = self.orig, self.reply
        text = "zone=%d proto=%d orig=%s:%d>%s:%d reply=%s:%d>%s:%d mark=%#x label=%#x" % (
            (self.zone, self.proto) + tuple(o) + tuple(r) + (self.mark, self.label))
        return text + (" nat=%s" % self.nat if self.nat else "")


class Conntrack:
    """Zones of connection entries, shared by every lookup of a FakeOFTable."""

    def __init__(self):
        self._index = {}                # (zone, proto, tuple) -> (Entry, is_reply)
        self._entries = []

    @property
    def entries(self):
        return list(self._entries)

    def dump(self, zone=None):
        """The entries of ``zone`` (all zones: None), oldest first."""
        return [e for e in self._entries if zone is None or e.zone == zone]

    def find(self, zone, proto, src, sport, dst, dport):
        """(entry, is_reply) of the packet tuple, or (None, False)."""
        return self._index.get((zone, proto, (_ip(src), sport, _ip(dst), dport)), (None, False))

    def commit_entry(self, zone, proto, src, sport, dst, dport, nat=None, mark=0, label=0):
        """Create an entry as a state import would.  ``nat``: None or
        ``("src"|"dst", address, port or None)``, the translated source (or
        destination) of the original direction."""
        orig = (_ip(src), sport, _ip(dst), dport)
        translated, kind = orig, None
        if nat is not None:
            kind, address, port = nat
            if kind == "src":
                translated = (_ip(address), sport if port is None else port, orig[2], dport)
            else:
                translated = (orig[0], sport, _ip(address), dport if port is None else port)
        entry = Entry(zone, proto, orig, _reverse(translated), kind, mark, label)
        self._insert(entry)
        return entry

    def _insert(self, entry):
        for key, is_reply in (((entry.zone, entry.proto, entry.orig), False),
                              ((entry.zone, entry.proto, entry.reply), True)):
            assert key not in self._index or self._index[key][0] is entry, \
                f"conntrack: {key} already taken"
            self._index.setdefault(key, (entry, is_reply))
        self._entries.append(entry)

    def _remove(self, entry):
        for key in ((entry.zone, entry.proto, entry.orig), (entry.zone, entry.proto, entry.reply)):
            if self._index.get(key, (None,))[0] is entry:
                del self._index[key]
        self._entries.remove(entry)

    # -------------------------------------------------------- the ct action
    def execute(self, state, zone, commit, nat, exec_):
        """The ct action on ``state`` (modified in place): ct fields, NAT."""
        md_state, md_zone = state.get("_md_ct", (0, None))
        if md_zone != zone:
            md_state = 0                # entering a new zone resets the state
        proto = state.get("ip_proto")
        key = five_tuple(state)
        if key is None:                 # no usable tuple: tracked, invalid
            return self._set(state, zone, CT_TRK | CT_INV, None)
        if proto == 1 and state.get("icmpv4_type") in ICMP_ERRORS:
            return self._related(state, zone, nat)
        tup = key[1:]
        natted = bool(md_state & (CT_SNAT | CT_DNAT))
        entry, is_reply = self._index.get(
            (zone, proto, _reverse(tup) if natted else tup), (None, False))
        if entry is not None and natted:
            is_reply = not is_reply
        if entry is not None and proto == 6:
            flags = _tcp_flags(state)
            if _tcp_invalid(flags):
                return self._set(state, zone, CT_TRK | CT_INV, None)
            syn_only = flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            if syn_only and not is_reply and entry.closed:
                self._remove(entry)
                entry = None
            elif syn_only and not is_reply and not entry.seen_reply:
                if commit:
                    self._exec(entry, exec_, state)
                return self._set(state, zone, CT_TRK | CT_NEW, entry,
                                 self._translate(state, entry, is_reply, nat))
        if entry is not None:
            if is_reply:
                entry.seen_reply = True
            if proto == 6:
                flags = _tcp_flags(state)
                if flags & TCP_RST:
                    entry.closed = True
                if flags & TCP_FIN:
                    fin = list(entry.fin)
                    fin[is_reply] = True
                    entry.fin = tuple(fin)
                    entry.closed = entry.closed or all(fin)
            if commit:
                self._exec(entry, exec_, state)
            bits = CT_TRK | CT_EST | (CT_RPL if is_reply else 0)
            return self._set(state, zone, bits, entry,
                             self._translate(state, entry, is_reply, nat))
        # No entry: can this packet open a connection?
        if not _valid_new(state):
            return self._set(state, zone, CT_TRK | CT_INV, None)
        if not commit:
            return self._set(state, zone, CT_TRK | CT_NEW, None)
        translated, kind = tup, None
        if nat is not None and len(nat) > 1:
            kind = nat[1]
            translated = self._choose(zone, proto, tup, nat)
            if translated is None:
                # No free tuple: OVS commits nothing and leaves the packet
                # +trk+new, untranslated ("tuple space exhaustion").
                return self._set(state, zone, CT_TRK | CT_NEW, None)
        entry = Entry(zone, proto, tup, _reverse(translated), kind)
        self._insert(entry)
        self._exec(entry, exec_, state)
        bits = self._translate(state, entry, False, nat)
        return self._set(state, zone, CT_TRK | CT_NEW, entry, bits)

    def _related(self, state, zone, nat):
        quote = dict(state.get("icmpv4_quote", ()))
        inner = five_tuple(quote) if quote else None
        if inner is None:
            return self._set(state, zone, CT_TRK | CT_INV, None)
        entry, is_reply = self._index.get((zone, inner[0], _reverse(inner[1:])), (None, False))
        if entry is None:
            return self._set(state, zone, CT_TRK | CT_INV, None)
        bits = 0
        if nat is not None and entry.nat:
            # The quoted packet travels the other way: the entry's other
            # direction, translated as that direction is.
            want = entry.orig if is_reply else entry.reply
            _set_tuple(quote, want)
            state["icmpv4_quote"] = tuple(sorted(quote.items()))
            if is_reply and entry.nat == "src":
                state["ipv4_dst"] = entry.orig[0]       # back to the original source
            elif is_reply:
                state["ipv4_src"] = entry.orig[2]       # from the original destination
            elif entry.nat == "src":
                state["ipv4_src"] = entry.reply[2]      # from the translated source
            else:
                state["ipv4_dst"] = entry.reply[0]      # to the translated destination
            bits = _nat_bits(entry, is_reply)
        return self._set(state, zone, CT_TRK | CT_REL | (CT_RPL if is_reply else 0), entry, bits)

    def _choose(self, zone, proto, tup, nat):
        _, kind, ip_min, ip_max, port_min, port_max = nat
        src, sport, dst, dport = tup
        pat = proto in (6, 17)
        for address in range(int(ipaddress.IPv4Address(ip_min)),
                             int(ipaddress.IPv4Address(ip_max)) + 1):
            address = str(ipaddress.IPv4Address(address))
            keep = sport if kind == "src" else dport
            ports = range(port_min, port_max + 1) if pat and port_min is not None else (keep,)
            for port in ports:
                cand = (address, port, dst, dport) if kind == "src" \
                    else (src, sport, address, port)
                if (zone, proto, _reverse(cand)) not in self._index:
                    return cand
        return None

    @staticmethod
    def _translate(state, entry, is_reply, nat):
        """Rewrite the packet's tuple as ``entry`` says; its nat ct_state bits."""
        if nat is None or entry.nat is None:
            return 0
        _set_tuple(state, _reverse(entry.orig if is_reply else entry.reply))
        return _nat_bits(entry, is_reply)

    @staticmethod
    def _exec(entry, exec_, state):
        for action in exec_:
            kind, name = action[0], action[1] if action[0] != "move" else action[3]
            assert name in _CT_WRITABLE, f"ct exec writes {name}: {action}"
            attr = "mark" if name == "ct_mark" else "label"
            width = 32 if attr == "mark" else 128
            if kind == "set_field":
                setattr(entry, attr, action[2] & ((1 << width) - 1))
            elif kind == "load":
                _, _, value, ofs, nbits = action
                setattr(entry, attr, _put(getattr(entry, attr), ofs, nbits, value))
            elif kind == "move":
                _, src, src_ofs, _, dst_ofs, nbits = action
                value = _bits(_read(state, src), src_ofs, nbits)
                setattr(entry, attr, _put(getattr(entry, attr), dst_ofs, nbits, value))
            else:
                raise AssertionError(f"ct exec action {action}")

    @staticmethod
    def _set(state, zone, bits, entry, nat_bits=0):
        state["ct_state"] = bits | nat_bits
        state["ct_zone"] = zone
        state["ct_mark"] = entry.mark if entry is not None else 0
        state["ct_label"] = entry.label if entry is not None else 0
        state["_md_ct"] = (state["ct_state"], zone)


def _nat_bits(entry, is_reply):
    src = (entry.nat == "src") != is_reply
    return CT_SNAT if src else CT_DNAT


def _valid_new(state):
    proto = state.get("ip_proto")
    if proto == 6:
        flags = _tcp_flags(state)
        return not _tcp_invalid(flags) and flags & (TCP_SYN | TCP_ACK) != (TCP_SYN | TCP_ACK)
    if proto == 1:
        return state.get("icmpv4_type") in ICMP_QUERIES
    return True


def _tcp_flags(state):
    flags = state.get("tcp_flags")
    assert flags is not None, f"a TCP packet without tcp_flags: {state}"
    return flags


def _tcp_invalid(flags):
    """OVS's tcp_invalid_flags."""
    if flags & TCP_SYN:
        if flags & (TCP_RST | TCP_FIN):
            return True
    elif not flags & (TCP_ACK | TCP_RST):
        return True
    if not flags & TCP_ACK and flags & (TCP_FIN | TCP_PSH | TCP_URG):
        return True
    return False


_L4 = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst")}


def five_tuple(state):
    """(proto, src, sport, dst, dport) of an IPv4 packet (dotted addresses;
    ICMP queries: the id both ways), or None."""
    if state.get("ipv4_src") is None or state.get("ipv4_dst") is None:
        return None
    proto = state.get("ip_proto", 0)
    src, dst = _ip(state["ipv4_src"]), _ip(state["ipv4_dst"])
    if proto in _L4:
        s, d = _L4[proto]
        return (proto, src, state.get(s, 0), dst, state.get(d, 0))
    if proto == 1:
        ident = state.get("icmp_id", 0)
        return (proto, src, ident, dst, ident)
    return (proto, src, 0, dst, 0)


def _set_tuple(state, tup):
    src, sport, dst, dport = tup
    state["ipv4_src"], state["ipv4_dst"] = src, dst
    proto = state.get("ip_proto")
    if proto in _L4:
        s, d = _L4[proto]
        state[s], state[d] = sport, dport


def _reverse(tup):
    src, sport, dst, dport = tup
    return (dst, dport, src, sport)


def _ip(value):
    if isinstance(value, int):
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv4Address(value))


# --------------------------------------------------------- bits and fields

def _read(state, name):
    value = state.get(name, 0 if name in _INTERNAL else None)
    assert value is not None, f"read of {name}, which the packet lacks"
    return _as_int(value)


def _bits(value, ofs, nbits):
    return (value >> ofs) & ((1 << nbits) - 1)


def _put(old, ofs, nbits, value):
    mask = ((1 << nbits) - 1) << ofs
    return (old & ~mask) | ((value << ofs) & mask)


def _store(state, name, ofs, nbits, value):
    old = state.get(name, 0 if name in _INTERNAL else None)
    if isinstance(old, str):
        new = _put(_as_int(old), ofs, nbits, value)
        state[name] = _like(old, new)
    else:
        state[name] = _put(old or 0, ofs, nbits, value)


def _like(text, value):
    """``value`` in the notation of ``text`` (MAC or dotted IPv4)."""
    if ":" in text:
        raw = "%012x" % value
        return ":".join(raw[i:i + 2] for i in range(0, 12, 2))
    return str(ipaddress.IPv4Address(value))


def _conjunctions(flow):
    return tuple(a for inst in flow.instructions if inst[0] == "apply"
                 for a in inst[1] if a[0] == "conjunction")


def _refusal(flow, groups, meters=None):
    """Why Open vSwitch would refuse ``flow``, or None."""
    match = dict(flow.match)
    for inst in flow.instructions:
        if inst[0] == "meter" and inst[1] not in (meters or {}):
            return f"meter {inst[1]} does not exist (OFPMMFC_UNKNOWN_METER)"
    for name in match:
        prereq = _PREREQ.get(name)
        if prereq is not None and match.get(prereq[0]) not in prereq[1]:
            return f"match on {name} without {prereq[0]} in {sorted(prereq[1])} " \
                   "(OFPBMC_BAD_PREREQ)"
    actions = [a for inst in flow.instructions if inst[0] == "apply" for a in inst[1]]
    conj = [a for a in actions if a[0] == "conjunction"]
    if conj:
        if len(conj) != len(actions) or len(flow.instructions) != 1:
            return "conjunction with other actions or instructions (NXBAC_BAD_CONJUNCTION)"
        for _, _, clause, n in conj:
            if not (2 <= n <= 64 and 1 <= clause <= n):
                return f"conjunction clause {clause}/{n} (NXBAC_BAD_CONJUNCTION)"
    for inst in flow.instructions:
        if inst[0] == "goto" and inst[1] <= flow.table:
            return f"goto table {inst[1]} from table {flow.table} (OFPBIC_BAD_TABLE_ID)"
    for a in actions:
        if a[0] == "ct":
            if match.get("eth_type") != ETH_TYPE_IP:
                return "ct action without eth_type=0x0800 in the match " \
                       "(OFPBAC_MATCH_INCONSISTENT)"
            for sub in a[5]:
                dst = sub[3] if sub[0] == "move" else sub[1]
                if sub[0] not in ("set_field", "load", "move") or dst not in _CT_WRITABLE:
                    return f"ct exec action {sub} (OFPBAC_BAD_ARGUMENT)"
            state = match.get("ct_state")
            if a[1] and state is not None:
                value = state[0] if isinstance(state, tuple) else state
                if value & CT_INV:
                    return "ct commit of a +inv match (OFPBAC_MATCH_INCONSISTENT)"
        elif a[0] in ("set_field", "load") and a[1] in _CT_WRITABLE or \
                a[0] == "move" and a[3] in _CT_WRITABLE:
            return f"{a} outside ct (OFPBAC_BAD_SET_ARGUMENT)"
        elif a[0] == "group" and a[1] not in groups:
            return f"group {a[1]} does not exist (OFPBAC_BAD_OUT_GROUP)"
    return None


def _matches(match, state):
    for name, want in match:
        have = state.get(name, 0 if name in _INTERNAL else None)
        if have is None:
            return False
        value, mask = want if isinstance(want, tuple) else (want, None)
        have, value = _as_int(have), _as_int(value)
        if mask is None:
            if have != value:
                return False
        elif have & _as_int(mask) != value & _as_int(mask):
            return False
    return True


def _same(have, want):
    return have is not None and _as_int(have) == _as_int(want)


def _as_int(value):
    """Ints as they are; MAC and IPv4 strings as the integers they denote."""
    if isinstance(value, int):
        return value
    if ":" in value:
        return int(value.replace(":", ""), 16)
    return int(ipaddress.IPv4Address(value))


# ------------------------------------------------------------------ packets

def tcp(src, dst, sport, dport, flags=TCP_SYN, **fields):
    """A TCP/IPv4 packet (``fields``: eth_src, in_port, registers...)."""
    return dict(eth_type=ETH_TYPE_IP, ip_proto=6, ipv4_src=src, ipv4_dst=dst,
                tcp_src=sport, tcp_dst=dport, tcp_flags=flags, **fields)


def udp(src, dst, sport, dport, **fields):
    return dict(eth_type=ETH_TYPE_IP, ip_proto=17, ipv4_src=src, ipv4_dst=dst,
                udp_src=sport, udp_dst=dport, **fields)


def icmp_echo(src, dst, ident=1, reply=False, **fields):
    return dict(eth_type=ETH_TYPE_IP, ip_proto=1, ipv4_src=src, ipv4_dst=dst,
                icmpv4_type=0 if reply else 8, icmpv4_code=0, icmp_id=ident, **fields)


def icmp_error(quoted, src, dst, type_=3, code=3, **fields):
    """An ICMP error from ``src`` to ``dst`` quoting packet ``quoted``'s
    IPv4 header and ports."""
    quote = {k: v for k, v in quoted.items()
             if k in ("ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst", "udp_src",
                      "udp_dst", "icmpv4_type", "icmpv4_code", "icmp_id")}
    return dict(eth_type=ETH_TYPE_IP, ip_proto=1, ipv4_src=src, ipv4_dst=dst,
                icmpv4_type=type_, icmpv4_code=code, icmpv4_quote=tuple(sorted(quote.items())),
                **fields)


def reply_to(packet, **fields):
    """The reverse of ``packet`` (addresses, ports, MACs swapped; an echo
    request becomes its reply; TCP flags: ``tcp_flags=`` or SYN+ACK for a
    SYN, else ACK), with ``fields`` set."""
    out = dict(packet)
    for a, b in (("ipv4_src", "ipv4_dst"), ("tcp_src", "tcp_dst"), ("udp_src", "udp_dst"),
                 ("eth_src", "eth_dst")):
        if a in packet or b in packet:
            out[a], out[b] = packet.get(b), packet.get(a)
            if out[a] is None:
                del out[a]
            if out[b] is None:
                del out[b]
    if packet.get("ip_proto") == 6:
        out["tcp_flags"] = TCP_SYN | TCP_ACK if packet["tcp_flags"] == TCP_SYN else TCP_ACK
    if packet.get("ip_proto") == 1 and packet.get("icmpv4_type") in ICMP_QUERIES:
        out["icmpv4_type"] = ICMP_QUERIES[packet["icmpv4_type"]]
    out.update(fields)
    return out
