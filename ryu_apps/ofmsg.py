"""Conversion between ``Flow`` values and os-ken OpenFlow 1.3 messages.

The only module that builds or reads OpenFlow messages.  ``flow_from_stats``
is the exact inverse of ``to_flow_mod`` as seen through a switch: a flow
installed with ``to_flow_mod`` and read back from a flow-stats reply compares
equal to the original ``Flow``.  Anything the ``Flow`` conventions cannot
express (another daemon's action, a write-actions instruction, ...) is read
back as an ``("unsupported", text)`` entry so it never equals a desired flow.
The same holds for groups (``to_group_mod`` / ``group_from_stats``).

``packet_out_bytes`` builds an OFPT_PACKET_OUT with the same action tuples;
``PacketOutEncoder`` builds many that share one action shape at a fraction
of the cost (one os-ken template, the varying values packed in place).
"""

import dataclasses
import functools
import socket
import struct

from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto import nicira_ext

from ryu_apps.ofmodel import Flow, Group, Meter, canon_match

COMMANDS = {
    "add": ofp.OFPFC_ADD,
    "modify_strict": ofp.OFPFC_MODIFY_STRICT,
    "delete_strict": ofp.OFPFC_DELETE_STRICT,
}

GROUP_COMMANDS = {
    "add": ofp.OFPGC_ADD,
    "modify": ofp.OFPGC_MODIFY,
    "delete": ofp.OFPGC_DELETE,
    # Open vSwitch's extension (OFPGC11_ADD_OR_MOD), accepted on OpenFlow 1.3:
    # add the group, or replace it if it exists (tested with OVS 3.1).
    "add_or_mod": 0x8000,
}
GROUP_TYPES = {"all": ofp.OFPGT_ALL, "select": ofp.OFPGT_SELECT,
               "indirect": ofp.OFPGT_INDIRECT}
_GROUP_TYPE_NAMES = {v: k for k, v in GROUP_TYPES.items()}

_ALL_ONES = 0xFFFFFFFFFFFFFFFF
_REGS = tuple("reg%d" % i for i in range(8))
_ZONE_OFS_NBITS = nicira_ext.ofs_nbits(0, 15)       # a register's bits 0..15
_NX_IN_PORT = 0xFFF8            # OFPP_IN_PORT as Nicira actions spell it (16 bits)
# nx_action_nat flags (Open vSwitch's NX_NAT_F_*; os-ken names none of them).
_NAT_F_SRC, _NAT_F_DST = 1 << 0, 1 << 1
_NAT_KINDS = {"src": _NAT_F_SRC, "dst": _NAT_F_DST}
_NAT_KIND_NAMES = {v: k for k, v in _NAT_KINDS.items()}
_CT_EXEC_FIELDS = ("ct_mark", "ct_label")
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
    if kind == "meter":
        return ofparser.OFPInstructionMeter(inst[1], ofproto.OFPIT_METER)
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
    if kind == "group":
        return ofparser.OFPActionGroup(action[1])
    if kind == "load":
        _, field, value, ofs, nbits = action
        if field == "in_port" and (ofs, nbits) == (0, 16):
            raise ValueError("a load of all of in_port is spelled ('set_field', 'in_port', "
                             "port), as it reads back: %r" % (action,))
        if not 1 <= nbits <= 64 or ofs < 0 or not 0 <= value < 1 << nbits:
            raise ValueError("load: %r does not fit %d bits at offset %d: %r"
                             % (value, nbits, ofs, action))
        return ofparser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(ofs, ofs + nbits - 1),
                                        dst=field, value=value)
    if kind == "move":
        _, src, src_ofs, dst, dst_ofs, nbits = action
        return ofparser.NXActionRegMove(src_field=src, dst_field=dst, n_bits=nbits,
                                        src_ofs=src_ofs, dst_ofs=dst_ofs)
    if kind == "resubmit":
        return ofparser.NXActionResubmitTable(in_port=_NX_IN_PORT, table_id=action[1])
    if kind == "conjunction":
        _, conj_id, clause, n_clauses = action
        if not 1 <= clause <= n_clauses <= 64:
            raise ValueError("conjunction: clause %r of %r (1 <= clause <= n <= 64): %r"
                             % (clause, n_clauses, action))
        return ofparser.NXActionConjunction(clause=clause - 1, n_clauses=n_clauses,
                                            id_=conj_id)
    if kind == "ct_clear" and len(action) == 1:
        return ofparser.NXActionCTClear()
    if kind == "ct":
        return _to_ct(ofparser, action)
    raise ValueError(f"unknown action {action!r}")


class _NXActionNAT(parser.NXActionNAT):
    """os-ken 4.2.2's NXActionNAT writes its ranges without padding (an
    address range and a port range: 28 bytes under a length of 32; OVS
    refuses the ct action holding it, OFPBAC_MATCH_INCONSISTENT).  This one
    pads its body to the length it declares."""

    def serialize_body(self):
        data = super().serialize_body()
        head = ofp.OFP_ACTION_EXPERIMENTER_HEADER_SIZE + struct.calcsize(
            parser.NXAction._fmt_str)
        data += bytes(-(head + len(data)) % 8)
        return data


def _to_ct(ofparser, action):
    if len(action) != 6:
        raise ValueError("ct takes (commit, zone, table, nat, exec_actions): %r" % (action,))
    _, commit, zone, table, nat, exec_actions = action
    if zone in _REGS:
        zone_src, zone_ofs_nbits = zone, _ZONE_OFS_NBITS
    elif type(zone) is int and 0 <= zone <= 0xFFFF:      # noqa: E721 - not a bool
        zone_src, zone_ofs_nbits = "", zone
    else:
        raise ValueError("ct zone must be 0-65535 or reg0..reg7, not %r" % (zone,))
    if table is None:
        recirc = nicira_ext.NX_CT_RECIRC_NONE
    elif type(table) is int and 0 <= table < nicira_ext.NX_CT_RECIRC_NONE:  # noqa: E721
        recirc = table
    else:
        raise ValueError("ct table must be 0-254 or None, not %r" % (table,))
    nested = []
    if nat is not None:
        nested.append(_to_nat(nat))
    for a in exec_actions:
        if a[0] == "set_field" and len(a) == 3 and a[1] in _CT_EXEC_FIELDS:
            nested.append(ofparser.OFPActionSetField(**{a[1]: a[2]}))
        elif a[0] == "load" and a[1] in _CT_EXEC_FIELDS:
            nested.append(_to_action(ofp, ofparser, a))
        elif a[0] == "move" and len(a) == 6 and a[3] in _CT_EXEC_FIELDS:
            nested.append(_to_action(ofp, ofparser, a))
        else:
            raise ValueError("ct exec takes set_field/load/move into ct_mark or ct_label, not %r"
                             % (a,))
    if not commit and (exec_actions or (nat is not None and len(nat) > 1)):
        raise ValueError("ct without commit takes no exec actions and only a bare nat "
                         "(Open vSwitch refuses the rest): %r" % (action,))
    return ofparser.NXActionCT(
        flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src=zone_src,
        zone_ofs_nbits=zone_ofs_nbits, recirc_table=recirc, alg=0, actions=nested)


def _to_nat(nat):
    if nat == ("nat",):
        return _NXActionNAT(flags=0)
    if len(nat) != 6 or nat[0] != "nat" or nat[1] not in _NAT_KINDS:
        raise ValueError("nat is ('nat',) or ('nat', 'src'|'dst', ip_min, ip_max, port_min, "
                         "port_max), not %r" % (nat,))
    _, kind, ip_min, ip_max, port_min, port_max = nat
    if (port_min is None) != (port_max is None):
        raise ValueError("nat ports are both ints or both None: %r" % (nat,))
    _ipv4_bytes(ip_min), _ipv4_bytes(ip_max)            # canonical dotted quads only
    kwargs = {"range_ipv4_min": ip_min}
    if ip_max != ip_min:
        kwargs["range_ipv4_max"] = ip_max
    if port_min is not None:
        kwargs["range_proto_min"] = port_min
        if port_max != port_min:
            kwargs["range_proto_max"] = port_max
    return _NXActionNAT(flags=_NAT_KINDS[kind], **kwargs)


# ------------------------------------------------------------------ groups
def to_group_mod(datapath, group, command="add"):
    """An OFPGroupMod that adds, modifies, adds-or-modifies ("add_or_mod",
    Open vSwitch's extension) or deletes ``group`` (a delete carries only
    the group id)."""
    ofparser = datapath.ofproto_parser
    if group.type not in GROUP_TYPES:
        raise ValueError("group %d: type %r cannot be installed (all, select or indirect)"
                         % (group.group_id, group.type))
    if command == "delete":
        return ofparser.OFPGroupMod(datapath, GROUP_COMMANDS[command], GROUP_TYPES[group.type],
                                    group.group_id, [])
    buckets = [ofparser.OFPBucket(weight, datapath.ofproto.OFPP_ANY, datapath.ofproto.OFPG_ANY,
                                  [_to_action(datapath.ofproto, ofparser, a) for a in actions])
               for weight, actions in group.buckets]
    return ofparser.OFPGroupMod(datapath, GROUP_COMMANDS[command], GROUP_TYPES[group.type],
                                group.group_id, buckets)


def group_desc_request(datapath):
    """A request for every group's description (OFPMP_GROUP_DESC)."""
    return datapath.ofproto_parser.OFPGroupDescStatsRequest(datapath, 0)


def group_from_stats(desc):
    """The ``Group`` described by one OFPGroupDescStats entry of a group-desc
    reply.  A bucket that watches a port or group (fast failover, which
    ``to_group_mod`` cannot install) reads back with an ``("unsupported",
    ...)`` action, so it never equals a desired group."""
    kind = _GROUP_TYPE_NAMES.get(desc.type, "fast_failover")
    buckets = []
    for b in desc.buckets:
        actions = tuple(_from_action(a) for a in b.actions)
        if b.watch_port != ofp.OFPP_ANY or b.watch_group != ofp.OFPG_ANY:
            actions += (("unsupported", "watch_port=%d,watch_group=%d"
                         % (b.watch_port, b.watch_group)),)
        buckets.append((b.weight, actions))
    return Group(desc.group_id, kind, tuple(buckets))


# ------------------------------------------------------------------ meters
METER_COMMANDS = {"add": ofp.OFPMC_ADD, "modify": ofp.OFPMC_MODIFY, "delete": ofp.OFPMC_DELETE}
_METER_FLAGS = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS


def to_meter_mod(datapath, meter, command="add"):
    """An OFPMeterMod that adds, modifies or deletes ``meter`` (a delete
    carries only the meter id; Open vSwitch then deletes the flows that use
    it)."""
    ofparser = datapath.ofproto_parser
    if command == "delete":
        return ofparser.OFPMeterMod(datapath, METER_COMMANDS[command], 0, meter.meter_id, [])
    band = ofparser.OFPMeterBandDrop(rate=meter.rate, burst_size=meter.burst)
    return ofparser.OFPMeterMod(datapath, METER_COMMANDS[command], _METER_FLAGS,
                                meter.meter_id, [band])


def meter_config_request(datapath):
    """A request for every meter's configuration (OFPMP_METER_CONFIG)."""
    return datapath.ofproto_parser.OFPMeterConfigStatsRequest(datapath, 0, ofp.OFPM_ALL)


def meter_from_config(config):
    """The ``Meter`` of one OFPMeterConfigStats entry; a meter that is not
    one pktps drop band reads back with rate -1 (it never equals a wanted
    one, so it is set again)."""
    bands = list(config.bands)
    if len(bands) != 1 or bands[0].type != ofp.OFPMBT_DROP or \
            not config.flags & ofp.OFPMF_PKTPS:
        return Meter(config.meter_id, -1, 0)
    return Meter(config.meter_id, bands[0].rate, bands[0].burst_size)


def meter_stats_request(datapath):
    """A request for every meter's counters (OFPMP_METER)."""
    return datapath.ofproto_parser.OFPMeterStatsRequest(datapath, 0, ofp.OFPM_ALL)


def meter_dropped(stats):
    """(meter id, packets in, packets dropped) of one OFPMeterStats entry."""
    return (stats.meter_id, stats.packet_in_count,
            sum(b.packet_band_count for b in stats.band_stats))


# ------------------------------------------------------------- packet-out
def packet_out_bytes(data, actions, in_port=ofp.OFPP_CONTROLLER, xid=0):
    """The OFPT_PACKET_OUT (OpenFlow 1.3, no buffer) of ``data`` (the whole
    frame) with these action tuples, as bytes.

    os-ken serializes the fixed part and the actions; the data is appended
    here, as os-ken 4.2.2 loses it when there are no actions (it writes it
    where its fixed part then goes)."""
    msg = parser.OFPPacketOut(_Datapath(), buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
                              actions=[_to_action(ofp, parser, a) for a in actions])
    msg.set_xid(xid)
    msg.serialize()
    buf = msg.buf + data
    struct.pack_into("!H", buf, 2, len(buf))
    return bytes(buf)


def _from_instruction(inst):
    if isinstance(inst, parser.OFPInstructionActions) and inst.type == ofp.OFPIT_APPLY_ACTIONS:
        return ("apply", tuple(_from_action(a) for a in inst.actions))
    if isinstance(inst, parser.OFPInstructionWriteMetadata):
        return ("write_metadata", inst.metadata, inst.metadata_mask)
    if isinstance(inst, parser.OFPInstructionGotoTable):
        return ("goto", inst.table_id)
    if isinstance(inst, parser.OFPInstructionMeter):
        return ("meter", inst.meter_id)
    return ("unsupported", str(inst))


def _from_action(action):
    if isinstance(action, parser.OFPActionOutput):
        if action.port == ofp.OFPP_CONTROLLER and action.max_len != ofp.OFPCML_NO_BUFFER:
            return ("unsupported", str(action))
        return ("output", action.port)
    if isinstance(action, parser.OFPActionSetField):
        return ("set_field", action.key, action.value)
    if isinstance(action, parser.OFPActionPushVlan):
        return ("push_vlan", action.ethertype)
    if isinstance(action, parser.OFPActionPopVlan):
        return ("pop_vlan",)
    if isinstance(action, parser.OFPActionGroup):
        return ("group", action.group_id)
    if isinstance(action, parser.NXActionRegLoad):
        dst = _oxm_name(action.dst)
        if dst == "in_port" and action.ofs_nbits == nicira_ext.ofs_nbits(0, 15):
            return ("set_field", "in_port", action.value)
        ofs, nbits = action.ofs_nbits >> 6, (action.ofs_nbits & 0x3F) + 1
        return ("load", dst, action.value, ofs, nbits)
    if isinstance(action, parser.NXActionRegMove):
        return ("move", _oxm_name(action.src_field), action.src_ofs,
                _oxm_name(action.dst_field), action.dst_ofs, action.n_bits)
    if isinstance(action, parser.NXActionResubmitTable) and action.in_port == _NX_IN_PORT:
        return ("resubmit", action.table_id)
    if isinstance(action, parser.NXActionConjunction):
        return ("conjunction", action.id, action.clause + 1, action.n_clauses)
    if isinstance(action, parser.NXActionCTClear):
        return ("ct_clear",)
    if isinstance(action, parser.NXActionCT):
        return _from_ct(action)
    return ("unsupported", str(action))


def _oxm_name(name):
    """The OXM name of a field a Nicira action names: Open vSwitch writes a
    field that has an NXM header with it (NXM_OF_ETH_DST, which os-ken calls
    ``eth_dst_nxm``) even if it was given the OXM header (``eth_dst``)."""
    if name.endswith("_nxm") and name[:-4] in _FIELD_BYTES:
        return name[:-4]
    return name


def _from_ct(action):
    unsupported = ("unsupported", str(action))
    if action.flags & ~nicira_ext.NX_CT_F_COMMIT or action.alg:
        return unsupported
    if not action.zone_src:
        zone = action.zone_ofs_nbits
    elif action.zone_src in _REGS and action.zone_ofs_nbits == _ZONE_OFS_NBITS:
        zone = action.zone_src
    else:
        return unsupported
    table = None if action.recirc_table == nicira_ext.NX_CT_RECIRC_NONE \
        else action.recirc_table
    nat, exec_actions = None, []
    for a in action.actions:
        if isinstance(a, parser.NXActionNAT) and nat is None and not exec_actions:
            nat = _from_nat(a)
            if nat is None:
                return unsupported
        elif isinstance(a, parser.OFPActionSetField) and a.key in _CT_EXEC_FIELDS:
            exec_actions.append(("set_field", a.key, a.value))
        elif isinstance(a, parser.NXActionRegLoad) and a.dst in _CT_EXEC_FIELDS:
            exec_actions.append(_from_action(a))
        elif isinstance(a, parser.NXActionRegMove) and a.dst_field in _CT_EXEC_FIELDS:
            exec_actions.append(_from_action(a))
        else:
            return unsupported
    return ("ct", bool(action.flags & nicira_ext.NX_CT_F_COMMIT), zone, table, nat,
            tuple(exec_actions))


def _from_nat(action):
    """The nat tuple of an NXActionNAT, or None if the tuple cannot say it."""
    has_range = action.range_ipv4_min or action.range_ipv4_max or action.range_ipv6_min \
        or action.range_ipv6_max or action.range_proto_min is not None \
        or action.range_proto_max is not None
    if action.flags == 0 and not has_range:
        return ("nat",)
    kind = _NAT_KIND_NAMES.get(action.flags)
    if kind is None or not action.range_ipv4_min or action.range_ipv6_min \
            or action.range_ipv6_max \
            or (action.range_proto_min is None and action.range_proto_max is not None):
        return None
    ip_max = action.range_ipv4_max or action.range_ipv4_min
    port_min = action.range_proto_min
    port_max = port_min if action.range_proto_max is None else action.range_proto_max
    return ("nat", kind, action.range_ipv4_min, ip_max, port_min, port_max)


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


# ------------------------------------------------------------ wire bytes
_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FIELD_TYPES = {f.name: f.type for f in ofp.oxm_types}


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
_ipv4_cached = functools.lru_cache(maxsize=1 << 16)(_ipv4_bytes)


def flow_mod_bytes(flow, command="add", flags=0, xid=0, bare=False):
    """The FLOW_MOD bytes of ``to_flow_mod(flow, command)`` with ``flags``
    and ``xid``; ``bare``: without the flow's instructions (a delete)."""
    if bare and flow.instructions:
        flow = dataclasses.replace(flow, instructions=())
    msg = to_flow_mod(_DATAPATH, flow, command)
    msg.flags = flags
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


class _Datapath:
    ofproto = ofp
    ofproto_parser = parser


_DATAPATH = _Datapath()


# ------------------------------------------------------- fast packet-outs
# ``PacketOutEncoder`` writes many PACKET_OUTs whose actions share one shape
# (the migration import commits ~100k synthesized packets, each "load the
# zone into reg5; ct(commit, zone=reg5, nat(...), exec(mark, label))" with
# its own values): os-ken serializes one template; where each varying value
# lies in it is found by changing that value alone and seeing which byte
# changes; each packet is then one struct.pack of the template's constant
# bytes and its own values, followed by its data.

class _Slot:
    """A value the encoder packs per message (in a shape: "any value")."""

    def __repr__(self):
        return "<value>"


_VALUE = _Slot()
_SAME = "<same as min>"         # nat: ip_max / port_max equal to the min


def _value_format(field):
    """(struct format, converter, flip) of a set_field value of ``field``,
    or None if it is not packed per message.  ``flip(v, bit)`` is a value
    that differs from ``v`` in one bit of its last byte."""
    t = _FIELD_TYPES.get(field)
    if t is type_desc.IPv4Addr:
        return "4s", _ipv4_cached, _flip_ipv4
    if t is type_desc.MacAddr:
        return "6s", _mac_bytes, _flip_mac
    if isinstance(t, type_desc.IntDescr) and t.size in _INT_FORMATS:
        return _INT_FORMATS[t.size], None, _flip_int
    if t is type_desc.Int16:
        return "16s", _int16_bytes, _flip_int
    return None


def _int16_bytes(value):
    return value.to_bytes(16, "big")


def _flip_int(value, bit):
    return value ^ bit


def _flip_ipv4(text, bit):
    raw = bytearray(socket.inet_aton(text))
    raw[-1] ^= bit
    return socket.inet_ntoa(bytes(raw))


def _flip_mac(text, bit):
    raw = bytearray(_mac_bytes(text))
    raw[-1] ^= bit
    return ":".join("%02x" % b for b in raw)


_PORT = ("H", None, _flip_int)
_U32 = ("I", None, _flip_int)
_U64 = ("Q", None, _flip_int)
_IPV4 = ("4s", _ipv4_cached, _flip_ipv4)


def _po_shape(actions, slots=None):
    """The shape of packet-out ``actions``: the same tuples with every value
    the encoder packs replaced by ``_VALUE`` (a nat's max equal to its min
    by ``_SAME``, as it is then not on the wire).  With ``slots`` (a list),
    append ``(paths, (format, converter, flip))`` per value, in order; a
    value at several paths (a nat range of one) is packed once."""
    out = []
    for i, a in enumerate(actions):
        kind = a[0]
        if kind == "output" and len(a) == 2 and a[1] != ofp.OFPP_CONTROLLER:
            # (to the controller is another max_len: part of the shape)
            out.append((kind, _VALUE))
            if slots is not None:
                slots.append((((i, 1),), _U32))
        elif kind == "set_field" and len(a) == 3 and a[1] != "in_port" \
                and not isinstance(a[2], tuple) and _value_format(a[1]):
            out.append((kind, a[1], _VALUE))
            if slots is not None:
                slots.append((((i, 2),), _value_format(a[1])))
        elif kind == "load" and len(a) == 5:
            out.append((kind, a[1], _VALUE, a[3], a[4]))
            if slots is not None:
                slots.append((((i, 2),), _U64))
        elif kind == "ct" and len(a) == 6:
            out.append(_ct_shape(i, a, slots))
        else:
            out.append(a)
    return tuple(out)


def _ct_shape(i, a, slots):
    _, commit, zone, table, nat, exec_actions = a
    if type(zone) is int:           # noqa: E721 - an immediate zone, not a register
        if slots is not None:
            slots.append((((i, 2),), _PORT))
        zone = _VALUE
    if nat is not None and len(nat) == 6:
        _, kind, ip_min, ip_max, port_min, port_max = nat
        ip_min, ip_max = _nat_range_shape(i, 2, ip_min, ip_max, _IPV4, slots)
        port_min, port_max = _nat_range_shape(i, 4, port_min, port_max, _PORT, slots)
        nat = ("nat", kind, ip_min, ip_max, port_min, port_max)
    shaped = []
    for j, e in enumerate(exec_actions):
        if e[0] == "set_field" and len(e) == 3 and _value_format(e[1]):
            shaped.append((e[0], e[1], _VALUE))
            if slots is not None:
                slots.append((((i, 5, j, 2),), _value_format(e[1])))
        elif e[0] == "load" and len(e) == 5:
            shaped.append((e[0], e[1], _VALUE, e[3], e[4]))
            if slots is not None:
                slots.append((((i, 5, j, 2),), _U64))
        else:
            shaped.append(e)
    return ("ct", commit, zone, table, nat, tuple(shaped))


def _nat_range_shape(i, k, low, high, fmt, slots):
    """The shape of the (min, max) at ``k``, ``k + 1`` of the nat of action
    ``i``: a range of one is one value on the wire."""
    if low is None:
        return None, high
    if high == low:
        if slots is not None:
            slots.append((((i, 4, k), (i, 4, k + 1)), fmt))
        return _VALUE, _SAME
    if slots is not None:
        slots.append((((i, 4, k),), fmt))
        slots.append((((i, 4, k + 1),), fmt))
    return _VALUE, _VALUE


def _get(actions, path):
    for k in path:
        actions = actions[k]
    return actions


def _replace(actions, path, value):
    """``actions`` (nested tuples) with the item at ``path`` replaced."""
    if not path:
        return value
    k = path[0]
    return actions[:k] + (_replace(actions[k], path[1:], value),) + actions[k + 1:]


class PacketOutEncoder:
    """PACKET_OUT bytes, byte for byte those of ``packet_out_bytes(data,
    actions, in_port, xid)``, for actions of the shape of ``template``: the
    same actions, differing only in output ports, set_field and load values,
    a ct's immediate zone and its nat addresses and ports (a nat range of
    one address or port must stay one, and the other way round).

        enc = PacketOutEncoder(first_actions)
        for data, actions in packets:
            msgs.append(enc.encode(data, actions))

    ``encode`` raises ValueError for actions of another shape, struct.error
    for a value that does not fit its field and OSError for a bad address;
    it does not check a load's value against its bit count (os-ken's own
    encoding of the template does) nor that an address is a canonical
    dotted quad.
    """

    def __init__(self, template, in_port=ofp.OFPP_CONTROLLER):
        template = tuple(template)
        self.in_port = in_port
        slots = []
        self.shape = _po_shape(template, slots)
        base = packet_out_bytes(b"", template, in_port)
        fields = []                     # (offset, format, converter, path)
        for paths, (fmt, conv, flip) in slots:
            size = struct.calcsize("!" + fmt)
            fields.append((self._locate(template, base, paths, flip, size), fmt, conv,
                           paths[0]))
        fields.sort()
        pieces, args, env = [], [], {}
        pos = ofp.OFP_HEADER_SIZE
        for n, (offset, fmt, conv, path) in enumerate(fields):
            if offset < pos:
                raise ValueError("packet-out template: overlapping values at %d" % offset)
            if offset > pos:
                env["_k%d" % n] = base[pos:offset]
                pieces.append("%ds" % (offset - pos))
                args.append("_k%d" % n)
            expr = "actions" + "".join("[%d]" % k for k in path)
            if conv is not None:
                env["_c%d" % n] = conv
                expr = "_c%d(%s)" % (n, expr)
            pieces.append(fmt)
            args.append(expr)
            pos = offset + struct.calcsize("!" + fmt)
        if pos < len(base):
            env["_tail"] = base[pos:]
            pieces.append("%ds" % (len(base) - pos))
            args.append("_tail")
        env.update(_pack=struct.Struct("!BBHI" + "".join(pieces)).pack, _shape=_po_shape,
                   _SHAPE=self.shape, _err=self._wrong_shape)
        body = ("    return _pack(%d, %d, %d + len(data), xid%s) + data\n"
                % (ofp.OFP_VERSION, ofp.OFPT_PACKET_OUT, len(base),
                   "".join(", " + a for a in args)))
        src = ("def encode(data, actions, xid=0):\n"
               "    if _shape(actions) != _SHAPE:\n"
               "        _err(actions)\n" + body +
               "def encode_trusted(data, actions, xid=0):\n" + body)
        exec(compile(src, "<packet-out encoder>", "exec"), env)   # noqa: S102
        self.encode = env["encode"]
        # For a caller that built ``actions`` of the template's shape itself
        # (one encoder per shape it makes): no shape check, a third of the cost.
        self.encode_trusted = env["encode_trusted"]
        self.values = len(fields)       # values packed per message

    def _locate(self, template, base, paths, flip, size):
        """The offset in ``base`` of the value at ``paths``: change that
        value alone (one bit of its last byte) and see which byte changes."""
        value = _get(template, paths[0])
        for bit in (1, 2, 4):
            changed = template
            for path in paths:
                changed = _replace(changed, path, flip(value, bit))
            if _po_shape(changed) != self.shape:
                continue                # e.g. a nat range's min became its max
            try:
                other = packet_out_bytes(b"", changed, self.in_port)
            except ValueError:
                continue
            diff = [k for k in range(len(base)) if base[k] != other[k]] \
                if len(other) == len(base) else None
            if diff and len(diff) == 1:
                return diff[0] - size + 1
        raise ValueError("packet-out template: cannot place the value at %r" % (paths[0],))

    def _wrong_shape(self, actions):
        raise ValueError("packet-out actions of another shape than the encoder's "
                         "template: %r" % (actions,))
