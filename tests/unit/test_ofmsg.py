"""Flow <-> OpenFlow 1.3 wire format, round-tripped through os-ken's parser.

A switch reports a flow with the same match and instruction encoding it was
given, so a flow-stats entry built from a FlowMod's own match and
instruction bytes is what the switch would send back.
"""

import dataclasses
import struct
import types

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ryu_apps import ofmsg
from ryu_apps import pipeline as P
from ryu_apps.flows import compute_host_flows
from ryu_apps.ofmodel import Flow, canon_match
from topologies import two_tenants

DP = types.SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
FLOW_MOD_FIXED = ofp.OFP_HEADER_SIZE + struct.calcsize(ofp.OFP_FLOW_MOD_PACK_STR0)


def all_host_flows():
    return sorted({f for h in ("h1", "h2", "h3", "h9")
                   for f in compute_host_flows(two_tenants(), h)}, key=repr)


def vlan_flow():
    return Flow(30, 10, canon_match(in_port=4, eth_dst=("01:00:00:00:00:00", "01:00:00:00:00:00")),
                (("apply", (("push_vlan", 0x8100), ("set_field", "vlan_vid", 0x1000 | 7),
                            ("output", 9), ("pop_vlan",), ("output", 10))),),
                cookie=P.COOKIE | 3, idle_timeout=60, hard_timeout=600)


def wire(msg):
    msg.serialize()
    return bytes(msg.buf)


def stats_reply(*entries):
    """A serialized flow-stats reply holding (header fields, match+instructions bytes)."""
    body = b""
    for flow, tail in entries:
        body += struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, ofp.OFP_FLOW_STATS_0_SIZE + len(tail),
                            flow.table, 12, 345, flow.priority, flow.idle_timeout,
                            flow.hard_timeout, 0, flow.cookie, 10, 1000) + tail
    header = struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY,
                         ofp.OFP_MULTIPART_REPLY_SIZE + len(body), 7)
    return header + struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_FLOW, 0) + body


def parse(buf):
    version, msg_type, length, xid = struct.unpack_from(ofp.OFP_HEADER_PACK_STR, buf)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, buf)


def read_back(flows):
    """Flows as a switch would report them after installing them with to_flow_mod."""
    entries = [(f, wire(ofmsg.to_flow_mod(DP, f))[FLOW_MOD_FIXED:]) for f in flows]
    reply = parse(stats_reply(*entries))
    assert isinstance(reply, parser.OFPFlowStatsReply)
    return [ofmsg.flow_from_stats(entry) for entry in reply.body]


@pytest.mark.parametrize("flow", all_host_flows() + [vlan_flow()],
                         ids=lambda f: f"table{f.table}-prio{f.priority}")
def test_every_flow_survives_the_round_trip(flow):
    assert read_back([flow]) == [flow]


def test_round_trip_keeps_a_whole_flow_table():
    flows = compute_host_flows(two_tenants(), "h1")
    assert read_back(flows) == flows


def test_flow_mod_carries_command_cookie_and_header_fields():
    flow = vlan_flow()
    for command, code, cookie_mask in (("add", ofp.OFPFC_ADD, 0),
                                       ("modify_strict", ofp.OFPFC_MODIFY_STRICT, 2**64 - 1),
                                       ("delete_strict", ofp.OFPFC_DELETE_STRICT, 2**64 - 1)):
        fields = struct.unpack_from(ofp.OFP_FLOW_MOD_PACK_STR0,
                                    wire(ofmsg.to_flow_mod(DP, flow, command)), ofp.OFP_HEADER_SIZE)
        cookie, mask, table, cmd, idle, hard, prio = fields[:7]
        assert (cookie, mask, table, cmd, idle, hard, prio) == \
            (flow.cookie, cookie_mask, 30, code, 60, 600, 10)


def test_output_to_a_port_asks_for_no_packet_bytes():
    mod = ofmsg.to_flow_mod(DP, vlan_flow())
    outputs = [a for a in mod.instructions[0].actions if isinstance(a, parser.OFPActionOutput)]
    assert [(a.port, a.max_len) for a in outputs] == [(9, 0), (10, 0)]


def test_output_to_the_controller_sends_whole_packets():
    flow = dataclasses.replace(vlan_flow(), instructions=(("apply", (("output", ofp.OFPP_CONTROLLER),)),))
    mod = ofmsg.to_flow_mod(DP, flow)
    assert mod.instructions[0].actions[0].max_len == ofp.OFPCML_NO_BUFFER
    assert read_back([flow]) == [flow]
    truncating = parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                              [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, 128)])
    stats = parser.OFPFlowStats(table_id=flow.table, priority=flow.priority, cookie=flow.cookie,
                                idle_timeout=60, hard_timeout=600, match=mod.match,
                                instructions=[truncating])
    assert ofmsg.flow_from_stats(stats) != flow


def test_full_masks_read_back_as_exact_matches():
    match = parser.OFPMatch(metadata=(5, 2**64 - 1), eth_dst=("02:00:00:00:00:0A", "ff:ff:ff:ff:ff:ff"),
                            reg1=(3, 0xFFFFFFFF), tunnel_id=(0x80, 0xF0))
    stats = parser.OFPFlowStats(table_id=20, priority=1, cookie=P.COOKIE, idle_timeout=0,
                                hard_timeout=0, match=match, instructions=[])
    assert ofmsg.flow_from_stats(stats).match == canon_match(
        metadata=5, eth_dst="02:00:00:00:00:0a", reg1=3, tunnel_id=(0x80, 0xF0))


def test_foreign_actions_and_instructions_never_equal_ours():
    flow = compute_host_flows(two_tenants(), "h1")[0]
    mod = ofmsg.to_flow_mod(DP, flow)
    foreign = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionDecNwTtl()]),
               parser.OFPInstructionActions(ofp.OFPIT_WRITE_ACTIONS, [parser.OFPActionOutput(1, 0)])]
    for inst in foreign:
        stats = parser.OFPFlowStats(table_id=flow.table, priority=flow.priority, cookie=flow.cookie,
                                    idle_timeout=0, hard_timeout=0, match=mod.match,
                                    instructions=[inst])
        read = ofmsg.flow_from_stats(stats)
        assert read.key == flow.key and read != flow
        assert "unsupported" in repr(read.instructions)


def test_flow_stats_request_asks_for_our_cookie_in_all_tables():
    buf = wire(ofmsg.flow_stats_request(DP, P.COOKIE, P.COOKIE_MASK))
    offset = ofp.OFP_MULTIPART_REQUEST_SIZE
    mp_type, = struct.unpack_from("!H", buf, ofp.OFP_HEADER_SIZE)
    table, out_port, out_group, cookie, mask = struct.unpack_from(
        ofp.OFP_FLOW_STATS_REQUEST_0_PACK_STR, buf, offset)
    assert (mp_type, table, out_port, out_group, cookie, mask) == \
        (ofp.OFPMP_FLOW, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, P.COOKIE, P.COOKIE_MASK)


def test_unknown_command_or_action_is_refused():
    flow = vlan_flow()
    with pytest.raises(KeyError):
        ofmsg.to_flow_mod(DP, flow, "modify")
    with pytest.raises(ValueError, match="unknown action"):
        ofmsg.to_flow_mod(DP, dataclasses.replace(flow, instructions=(("apply", (("flood",),)),)))


def test_a_meter_instruction_and_a_meter_mod_survive_the_round_trip():
    from ryu_apps.ofmodel import Meter
    flow = Flow(12, 110, canon_match(eth_type=0x800, eth_src="02:00:00:00:00:0a"),
                (("meter", 11), ("goto", 13)), 0x4d42440000000000)
    assert read_back([flow]) == [flow]
    # METER_MOD: command, flags, meter id, then one drop band (type, len, rate, burst).
    buf = wire(ofmsg.to_meter_mod(DP, Meter(11, 200, 200)))
    command, flags, meter_id = struct.unpack_from("!HHI", buf, 8)
    assert (command, meter_id) == (ofp.OFPMC_ADD, 11)
    assert flags == ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS
    assert struct.unpack_from("!HHII", buf, 16) == (ofp.OFPMBT_DROP, 16, 200, 200)
    assert ofmsg.meter_from_config(parser.OFPMeterConfigStats(
        flags, 11, [parser.OFPMeterBandDrop(rate=200, burst_size=200)])) == Meter(11, 200, 200)
    buf = wire(ofmsg.to_meter_mod(DP, Meter(11, 200, 200), "delete"))
    assert struct.unpack_from("!HHI", buf, 8)[::2] == (ofp.OFPMC_DELETE, 11) and len(buf) == 16
