"""Conversion between ``Flow`` values and os-ken OpenFlow 1.3 messages.

The only module that builds or reads OpenFlow messages.  ``flow_from_stats``
is the exact inverse of ``to_flow_mod`` as seen through a switch: a flow
installed with ``to_flow_mod`` and read back from a flow-stats reply compares
equal to the original ``Flow``.  Anything the ``Flow`` conventions cannot
express (another daemon's action, a write-actions instruction, ...) is read
back as an ``("unsupported", text)`` entry so it never equals a desired flow.
"""

import dataclasses
import functools
import socket
import struct

from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto import nicira_ext

from ryu_apps.ofmodel import Flow, canon_match

COMMANDS = {
    "add": ofp.OFPFC_ADD,
    "modify_strict": ofp.OFPFC_MODIFY_STRICT,
    "delete_strict": ofp.OFPFC_DELETE_STRICT,
}

_ALL_ONES = 0xFFFFFFFFFFFFFFFF
_FULL_MASKS = {"ff:ff:ff:ff:ff:ff", "255.255.255.255"}
_FIELD_BYTES = {f.name: f.type.size for f in ofp.oxm_types}


def to_flow_mod(datapath, flow, command="add"):
    """An OFPFlowMod that adds, modifies or deletes exactly ``flow``'s entry.

    'add' replaces an entry with the same key entirely (cookie, timeouts,
    instructions).  'modify_strict' changes only the instructions of the entry
    with this key AND this exact cookie (a switch never changes cookie or
    timeouts on modify); 'delete_strict' removes only that entry.
    """
    ofproto, ofparser = datapath.ofproto, datapath.ofproto_parser
    return ofparser.OFPFlowMod(
        datapath,
        cookie=flow.cookie,
        cookie_mask=0 if command == "add" else _ALL_ONES,
        table_id=flow.table,
        command=COMMANDS[command],
        idle_timeout=flow.idle_timeout,
        hard_timeout=flow.hard_timeout,
        priority=flow.priority,
        out_port=ofproto.OFPP_ANY,
        out_group=ofproto.OFPG_ANY,
        match=ofparser.OFPMatch(**dict(flow.match)),
        instructions=[_to_instruction(ofproto, ofparser, inst) for inst in flow.instructions])


def flow_stats_request(datapath, cookie, cookie_mask):
    """A request for every flow, in all tables, whose cookie matches under the mask."""
    ofproto, ofparser = datapath.ofproto, datapath.ofproto_parser
    return ofparser.OFPFlowStatsRequest(
        datapath, 0, ofproto.OFPTT_ALL, ofproto.OFPP_ANY, ofproto.OFPG_ANY,
        cookie, cookie_mask, ofparser.OFPMatch())


def flow_from_stats(stats):
    """The ``Flow`` described by one OFPFlowStats entry of a flow-stats reply."""
    match = canon_match(**{name: _match_value(name, value) for name, value in stats.match.items()})
    return Flow(
        table=stats.table_id,
        priority=stats.priority,
        match=match,
        instructions=tuple(_from_instruction(inst) for inst in stats.instructions),
        cookie=stats.cookie,
        idle_timeout=stats.idle_timeout,
        hard_timeout=stats.hard_timeout)


def _to_instruction(ofproto, ofparser, inst):
    kind = inst[0]
    if kind == "apply":
        actions = [_to_action(ofproto, ofparser, a) for a in inst[1]]
        return ofparser.OFPInstructionActions(ofproto.OFPIT_APPLY_ACTIONS, actions)
    if kind == "write_metadata":
        return ofparser.OFPInstructionWriteMetadata(inst[1], inst[2])
    if kind == "goto":
        return ofparser.OFPInstructionGotoTable(inst[1])
    raise ValueError(f"unknown instruction {inst!r}")


def _to_action(ofproto, ofparser, action):
    kind = action[0]
    if kind == "output":
        # max_len only matters for output to the controller; switches report 0.
        max_len = ofproto.OFPCML_NO_BUFFER if action[1] == ofproto.OFPP_CONTROLLER else 0
        return ofparser.OFPActionOutput(action[1], max_len)
    if kind == "set_field" and action[1] == "in_port":
        # OpenFlow 1.3 cannot set in_port; Open vSwitch's register load can
        # (a SNAT forwarder clears it so it may send a packet back into the
        # tunnel it came from).
        return ofparser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(0, 15),
                                        dst="in_port", value=action[2])
    if kind == "set_field":
        return ofparser.OFPActionSetField(**{action[1]: action[2]})
    if kind == "push_vlan":
        return ofparser.OFPActionPushVlan(action[1])
    if kind == "pop_vlan":
        return ofparser.OFPActionPopVlan()
    raise ValueError(f"unknown action {action!r}")


def _from_instruction(inst):
    if isinstance(inst, parser.OFPInstructionActions) and inst.type == ofp.OFPIT_APPLY_ACTIONS:
        return ("apply", tuple(_from_action(a) for a in inst.actions))
    if isinstance(inst, parser.OFPInstructionWriteMetadata):
        return ("write_metadata", inst.metadata, inst.metadata_mask)
    if isinstance(inst, parser.OFPInstructionGotoTable):
        return ("goto", inst.table_id)
    return ("unsupported", str(inst))


def _from_action(action):
    if isinstance(action, parser.OFPActionOutput):
        if action.port == ofp.OFPP_CONTROLLER and action.max_len != ofp.OFPCML_NO_BUFFER:
            return ("unsupported", str(action))
        return ("output", action.port)
    if isinstance(action, parser.OFPActionSetField):
        return ("set_field", action.key, action.value)
    if isinstance(action, parser.NXActionRegLoad) and action.dst == "in_port" \
            and action.ofs_nbits == nicira_ext.ofs_nbits(0, 15):
        return ("set_field", "in_port", action.value)
    if isinstance(action, parser.OFPActionPushVlan):
        return ("push_vlan", action.ethertype)
    if isinstance(action, parser.OFPActionPopVlan):
        return ("pop_vlan",)
    return ("unsupported", str(action))


def _match_value(name, value):
    """Drop a mask that covers the whole field: the switch treats it as exact."""
    if not isinstance(value, tuple):
        return value
    data, mask = value
    if isinstance(mask, str) and mask.lower() in _FULL_MASKS:
        return data
    if isinstance(mask, int) and mask == (1 << (8 * _FIELD_BYTES[name])) - 1:
        return data
    return value


# --------------------------------------------------------------- fast encoding
# ``FlowModEncoder`` writes the FLOW_MOD bytes of a ``Flow`` without building
# os-ken objects: os-ken is asked once per field (its OXM header) and once per
# flow shape (the order of its match fields); the rest is struct packing.  The
# bytes are those of ``to_flow_mod`` + ``serialize`` (tests/unit/test_mb_flowenc.py
# compares them for every kind of flow the daemon installs).  A flow it cannot
# encode (an unusual field type or action) goes through os-ken.

_FLOW_MOD_HEAD = struct.Struct("!BBHI" + ofp.OFP_FLOW_MOD_PACK_STR0[1:])
_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FIELD_TYPES = {f.name: f.type for f in ofp.oxm_types}
_MAX_CACHED = 1 << 16           # addresses / instruction shapes kept


def _round8(n):
    return (n + 7) // 8 * 8


def _mac_bytes(text):
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError("bad MAC address %r" % text)
    return raw


def _ipv4_bytes(text):
    raw = socket.inet_aton(text)
    if socket.inet_ntoa(raw) != text:       # only the canonical dotted quad
        raise ValueError("not a canonical IPv4 address: %r" % text)
    return raw


# Canonical text -> 4 bytes (addresses repeat; errors are not remembered).
_ipv4_cached = functools.lru_cache(maxsize=_MAX_CACHED)(_ipv4_bytes)


class _Unsupported(Exception):
    """Not for the fast path: os-ken encodes this flow."""


class _Oxm:
    """How one OXM field is written: its header (from os-ken) and the struct
    format and converter of its value (and mask)."""

    __slots__ = ("header", "fmt", "conv", "masked", "value_type")

    def __init__(self, name, masked):
        t = _FIELD_TYPES.get(name)
        if t is type_desc.IPv4Addr:
            fmt, conv, sample, vtype = "4s", _ipv4_cached, "0.0.0.0", str
        elif t is type_desc.MacAddr:
            fmt, conv, sample, vtype = "6s", _mac_bytes, "00:00:00:00:00:00", str
        elif isinstance(t, type_desc.IntDescr) and t.size in _INT_FORMATS:
            fmt, conv, sample, vtype = _INT_FORMATS[t.size], None, 0, int
        else:
            raise _Unsupported(name)
        n, v, m = ofp.oxm_from_user(name, (sample, sample) if masked else sample)
        buf = bytearray()
        length = ofp.oxm_serialize(n, v, m, buf, 0)
        self.header = bytes(buf[:length - t.size * (2 if masked else 1)])
        self.fmt = "%ds%s" % (len(self.header), fmt * (2 if masked else 1))
        self.conv, self.masked, self.value_type = conv, masked, vtype

    def size(self):
        return struct.calcsize("!" + self.fmt)

    def values(self, value):
        """The struct arguments of ``value`` (after the header)."""
        if self.masked:
            if not isinstance(value, tuple) or len(value) != 2:
                raise _Unsupported(value)
            pair = value
        else:
            pair = (value,)
        for v in pair:
            if type(v) is not self.value_type:      # noqa: E721 - bool is no port
                raise _Unsupported(v)
        return tuple(self.conv(v) for v in pair) if self.conv else pair


_OXMS = {}


def _oxm(name, masked):
    key = (name, masked)
    spec = _OXMS.get(key)
    if spec is None:
        spec = _OXMS[key] = _Oxm(name, masked)
    return spec


def _encode_oxm(name, value):
    spec = _oxm(name, isinstance(value, tuple))
    return struct.pack("!" + spec.fmt, spec.header, *spec.values(value))


def _encode_action(action):
    kind = action[0]
    if kind == "output":
        max_len = ofp.OFPCML_NO_BUFFER if action[1] == ofp.OFPP_CONTROLLER else 0
        return struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, action[1], max_len)
    if kind == "set_field" and action[1] != "in_port":
        if isinstance(action[2], tuple):
            raise _Unsupported(action)
        oxm = _encode_oxm(action[1], action[2])
        length = _round8(4 + len(oxm))
        return struct.pack("!HH", ofp.OFPAT_SET_FIELD, length) + oxm \
            + bytes(length - 4 - len(oxm))
    if kind == "push_vlan":
        return struct.pack("!HHH2x", ofp.OFPAT_PUSH_VLAN, 8, action[1])
    if kind == "pop_vlan" and len(action) == 1:
        return struct.pack("!HH4x", ofp.OFPAT_POP_VLAN, 8)
    # The register load of in_port (and anything rarer): os-ken, once per value.
    buf = bytearray()
    _to_action(ofp, parser, action).serialize(buf, 0)
    return bytes(buf)


def _encode_instructions(instructions):
    out = []
    for inst in instructions:
        kind = inst[0]
        if kind == "goto":
            out.append(struct.pack("!HHB3x", ofp.OFPIT_GOTO_TABLE, 8, inst[1]))
        elif kind == "apply":
            actions = b"".join(_encode_action(a) for a in inst[1])
            out.append(struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(actions))
                       + actions)
        elif kind == "write_metadata":
            out.append(struct.pack("!HH4xQQ", ofp.OFPIT_WRITE_METADATA, 24, inst[1], inst[2]))
        else:
            raise _Unsupported(inst)
    return b"".join(out)


def _inst_shape(instructions):
    """The shape of ``instructions``: the same, with the value of every
    set_field (but in_port's register load) replaced by its type."""
    out = []
    for inst in instructions:
        if inst[0] == "apply":
            out.append(("apply", tuple([
                (a[0], a[1], type(a[2])) if a[0] == "set_field" and a[1] != "in_port" else a
                for a in inst[1]])))
        else:
            out.append(inst)
    return tuple(out)


def _inst_plan(shape):
    """A function (instructions) -> their bytes, for instructions of this
    shape (``_inst_shape``): the constant parts as literals, the set_field
    values packed, in one struct.pack.  Generated code, as ``_match_plan``."""
    pieces = []                 # (struct format, argument expression or None, constant)

    def const(raw):
        if raw:
            pieces.append(("%ds" % len(raw), None, raw))

    env = {}
    for i, inst in enumerate(shape):
        kind = inst[0]
        if kind != "apply":
            const(_encode_instructions((inst,)))
            continue
        start = len(pieces)
        total = 8
        for j, a in enumerate(inst[1]):
            if a[0] == "set_field" and a[1] != "in_port":
                if a[2] is tuple:
                    raise _Unsupported(a)
                spec = _oxm(a[1], False)
                if a[2] is not spec.value_type:
                    raise _Unsupported(a)
                vfmt = spec.fmt[len("%ds" % len(spec.header)):]
                oxm_len = len(spec.header) + struct.calcsize("!" + vfmt)
                length = _round8(4 + oxm_len)
                const(struct.pack("!HH", ofp.OFPAT_SET_FIELD, length) + spec.header)
                expr = "insts[%d][1][%d][2]" % (i, j)
                if spec.conv is not None:
                    env["_c%d_%d" % (i, j)] = spec.conv
                    expr = "_c%d_%d(%s)" % (i, j, expr)
                pieces.append((vfmt, expr, None))
                if length - 4 - oxm_len:
                    pieces.append(("%dx" % (length - 4 - oxm_len), None, None))
                total += length
            else:
                raw = _encode_action(a)
                const(raw)
                total += len(raw)
        pieces.insert(start, ("8s", None, struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, total)))
    # Adjacent constants as one.
    merged = []
    for fmt, expr, raw in pieces:
        if raw is not None and merged and merged[-1][2] is not None:
            prev = merged.pop()[2] + raw
            merged.append(("%ds" % len(prev), None, prev))
        else:
            merged.append((fmt, expr, raw))
    if not any(expr for _, expr, _ in merged):
        value = b"".join(raw for _, _, raw in merged if raw is not None)
        return lambda insts: value
    args = []
    for n, (fmt, expr, raw) in enumerate(merged):
        if raw is not None:
            env["_k%d" % n] = raw
            args.append("_k%d" % n)
        elif expr is not None:
            args.append(expr)
    env["_pack"] = struct.Struct("!" + "".join(fmt for fmt, _, _ in merged)).pack
    src = "def plan(insts):\n    return _pack(%s)\n" % ", ".join(args)
    exec(compile(src, "<instructions plan>", "exec"), env)   # noqa: S102
    return env["plan"]


def _match_plan(names, types, command, flags):
    """A function (xid, flow, values, instruction bytes) -> FLOW_MOD bytes for
    flows whose match has these field names (canonical order) and value
    types, with this command and flags: the fixed part, the match in os-ken's
    field order (sorted by OXM type, as OFPMatch does) and its padding, in
    one struct.pack.  Generated code, so that every constant is a literal."""
    specs = [_oxm(n, t is tuple) for n, t in zip(names, types)]
    order = [k for k, _ in parser.OFPMatch(**{
        n: ((0, 0) if s.masked else 0) if s.value_type is int else
        (("0.0.0.0", "0.0.0.0") if s.masked else "0.0.0.0") if s.fmt.endswith("4s") else
        (("00:00:00:00:00:00",) * 2 if s.masked else "00:00:00:00:00:00")
        for n, s in zip(names, specs)})._fields2]
    if sorted(order) != sorted(names):
        raise _Unsupported(names)
    index = {n: i for i, n in enumerate(names)}
    match_len = 4 + sum(specs[index[n]].size() for n in order)
    pad = _round8(match_len) - match_len
    fmt = _FLOW_MOD_HEAD.format + "HH" + "".join(specs[index[n]].fmt for n in order) \
        + "%dx" % pad
    fixed_len = _FLOW_MOD_HEAD.size + match_len + pad
    cookie_mask = 0 if command == "add" else _ALL_ONES
    args = ["%d, %d, %d + len(inst), xid, flow.cookie, %d, flow.table, %d, flow.idle_timeout, "
            "flow.hard_timeout, flow.priority, %d, %d, %d, %d, %d, %d"
            % (ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, fixed_len, cookie_mask, COMMANDS[command],
               ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, flags, ofp.OFPMT_OXM, match_len)]
    env = {"_pack": struct.Struct(fmt).pack}
    for n in order:
        i, spec = index[n], specs[index[n]]
        env["_h%d" % i] = spec.header
        if spec.conv is not None:
            env["_c%d" % i] = spec.conv
        if types[i] is not (tuple if spec.masked else spec.value_type):
            raise _Unsupported(n)
        if spec.masked and spec.conv is not None:
            args.append("_h%d, _c%d(values[%d][0]), _c%d(values[%d][1])" % (i, i, i, i, i))
        elif spec.masked:
            args.append("_h%d, values[%d][0], values[%d][1]" % (i, i, i))
        elif spec.conv is not None:
            args.append("_h%d, _c%d(values[%d])" % (i, i, i))
        else:
            args.append("_h%d, values[%d]" % (i, i))
    src = "def plan(xid, flow, values, inst):\n    return _pack(%s) + inst\n" % ", ".join(args)
    exec(compile(src, "<flow-mod plan %s>" % ",".join(names), "exec"), env)   # noqa: S102
    return env["plan"], tuple(types)


class FlowModEncoder:
    """FLOW_MOD bytes of ``Flow`` values, byte for byte those of
    ``to_flow_mod(dp, flow, command)`` with ``flags`` and ``xid``, serialized
    by os-ken, at a small fraction of the cost.  ``bare=True``: without the
    flow's instructions (a delete)."""

    def __init__(self):
        self._plans = {}            # (names, types, command, flags) -> (plan, types)
        self._insts = {}            # instruction shape -> its plan (_inst_plan)
        self._dp = _Datapath()
        self.fallbacks = 0          # flows os-ken encoded

    def encode(self, flow, command="add", flags=0, xid=0, bare=False):
        match = flow.match
        try:
            if match:
                names, values = zip(*match)
                types = tuple(map(type, values))
            else:
                names = values = types = ()
            key = (names, types, command, flags)
            got = self._plans.get(key)
            if got is None:
                got = self._plans[key] = _match_plan(names, types, command, flags)
            if bare or not flow.instructions:
                inst = b""
            else:
                shape = _inst_shape(flow.instructions)
                plan = self._insts.get(shape)
                if plan is None:
                    plan = _inst_plan(shape)
                    if len(self._insts) >= _MAX_CACHED:
                        self._insts.clear()
                    self._insts[shape] = plan
                inst = plan(flow.instructions)
            return got[0](xid, flow, values, inst)
        except (_Unsupported, ValueError, TypeError, OSError, struct.error, IndexError):
            self.fallbacks += 1
            if bare and flow.instructions:
                flow = dataclasses.replace(flow, instructions=())
            msg = to_flow_mod(self._dp, flow, command)
            msg.flags = flags
            msg.set_xid(xid)
            msg.serialize()
            return bytes(msg.buf)


class _Datapath:
    ofproto = ofp
    ofproto_parser = parser
