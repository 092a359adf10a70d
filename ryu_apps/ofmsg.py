"""Conversion between ``Flow`` values and os-ken OpenFlow 1.3 messages.

The only module that builds or reads OpenFlow messages.  ``flow_from_stats``
is the exact inverse of ``to_flow_mod`` as seen through a switch: a flow
installed with ``to_flow_mod`` and read back from a flow-stats reply compares
equal to the original ``Flow``.  Anything the ``Flow`` conventions cannot
express (another daemon's action, a write-actions instruction, ...) is read
back as an ``("unsupported", text)`` entry so it never equals a desired flow.
"""

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
