"""The conntrack vocabulary of ryu_apps.ofmsg: ct/nat, groups, conjunction,
register load/move, resubmit, ct_clear, the ct match fields, group mods and
packet-outs, each encoded with os-ken and read back through os-ken's parser
exactly as a switch reports it (a switch echoes the match, instruction and
bucket encoding it was given; tests/integration/test_mb_ct.py shows that
Open vSwitch does, and covers what it rewrites)."""

import random
import struct
import time
import types

import pytest
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ryu_apps import ofmsg
from ryu_apps.ofmodel import (CT_EST, CT_INV, CT_NEW, CT_TRK, Flow, Group, canon_match,
                              ct_state_match)

DP = types.SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
FLOW_MOD_FIXED = ofp.OFP_HEADER_SIZE + struct.calcsize(ofp.OFP_FLOW_MOD_PACK_STR0)
COOKIE = 0x4D42440000000000
LABEL = (1 << 127) | 0xABCDEF
SNAT = ("nat", "src", "203.0.113.100", "203.0.113.100", 40001, 40001)


def wire(msg):
    msg.serialize()
    return bytes(msg.buf)


def parse(buf):
    version, msg_type, length, xid = struct.unpack_from(ofp.OFP_HEADER_PACK_STR, buf)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, buf)


def read_back(flow):
    """``flow`` as a switch reports it after installing it with to_flow_mod."""
    tail = wire(ofmsg.to_flow_mod(DP, flow))[FLOW_MOD_FIXED:]
    body = struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, ofp.OFP_FLOW_STATS_0_SIZE + len(tail),
                       flow.table, 1, 0, flow.priority, flow.idle_timeout, flow.hard_timeout,
                       0, flow.cookie, 0, 0) + tail
    reply = parse(struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION,
                              ofp.OFPT_MULTIPART_REPLY, ofp.OFP_MULTIPART_REPLY_SIZE + len(body),
                              1)
                  + struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_FLOW, 0) + body)
    (stats,) = reply.body
    return ofmsg.flow_from_stats(stats)


def read_back_group(group):
    """``group`` as a switch describes it after installing it with to_group_mod."""
    mod = wire(ofmsg.to_group_mod(DP, group, "add"))
    buckets = mod[ofp.OFP_GROUP_MOD_SIZE:]
    body = struct.pack(ofp.OFP_GROUP_DESC_STATS_PACK_STR,
                       ofp.OFP_GROUP_DESC_STATS_SIZE + len(buckets),
                       ofmsg.GROUP_TYPES[group.type], group.group_id) + buckets
    reply = parse(struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION,
                              ofp.OFPT_MULTIPART_REPLY, ofp.OFP_MULTIPART_REPLY_SIZE + len(body),
                              1)
                  + struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_GROUP_DESC, 0)
                  + body)
    (desc,) = reply.body
    return ofmsg.group_from_stats(desc)


def flow(match, *actions, n=1):
    return Flow(10, 100 + n, match, (("apply", actions),), cookie=COOKIE | n)


IP = dict(eth_type=0x0800)
ACTIONS = {
    "ct commit, register zone, table, nat range, mark, label, mark bits": (
        "ct", True, "reg5", 30,
        ("nat", "src", "203.0.113.100", "203.0.113.110", 40001, 40100),
        (("set_field", "ct_mark", 0x1234), ("set_field", "ct_label", LABEL),
         ("load", "ct_mark", 5, 16, 8))),
    "ct commit, one address and port": ("ct", True, "reg5", None, SNAT,
                                        (("set_field", "ct_mark", 1),)),
    "ct, address range, no ports": ("ct", True, 3, 31,
                                    ("nat", "dst", "10.0.0.2", "10.0.0.9", None, None), ()),
    "ct, one address, port range": ("ct", True, 0, None,
                                    ("nat", "dst", "10.0.0.2", "10.0.0.2", 80, 90), ()),
    "ct, address range, one port": ("ct", True, 65535, None,
                                    ("nat", "src", "10.0.0.2", "10.0.0.3", 80, 80), ()),
    "ct lookup with bare nat": ("ct", False, 7, 20, ("nat",), ()),
    "ct lookup": ("ct", False, "reg0", 20, None, ()),
    "ct_clear": ("ct_clear",),
    "group": ("group", 7),
    "conjunction": ("conjunction", 0xABCDEF01, 2, 3),
    "load register bits": ("load", "reg5", 7, 0, 16),
    "load high bits": ("load", "reg7", 3, 30, 2),
    "load eth_dst": ("load", "eth_dst", 0xA, 0, 8),
    "move": ("move", "reg0", 0, "reg1", 8, 16),
    "resubmit": ("resubmit", 20),
}


@pytest.mark.parametrize("action", list(ACTIONS.values()), ids=list(ACTIONS))
def test_every_new_action_survives_the_round_trip(action):
    f = flow(canon_match(**IP), action, ("output", 2))
    assert read_back(f) == f


MATCHES = {
    "ct_state +trk+est-new": dict(ct_state=ct_state_match(CT_TRK | CT_EST, CT_NEW)),
    "ct_state exact": dict(ct_state=CT_TRK | CT_INV),
    "ct_mark masked": dict(ct_mark=(3, 0xFF)),
    "ct_mark exact": dict(ct_mark=9),
    "ct_label masked": dict(ct_label=(5 << 64, 0xFF << 64)),
    "ct_label exact": dict(ct_label=LABEL),
    "ct_zone": dict(ct_zone=7),
    "conj_id": dict(conj_id=77),
    "icmp type and code": dict(ip_proto=1, icmpv4_type=8, icmpv4_code=0),
    "tcp_flags masked": dict(ip_proto=6, tcp_flags=(0x002, 0x012)),
    "tcp_flags exact": dict(ip_proto=6, tcp_flags=0x010),
}


@pytest.mark.parametrize("fields", list(MATCHES.values()), ids=list(MATCHES))
def test_every_new_match_field_survives_the_round_trip(fields):
    f = flow(canon_match(**IP, **fields), ("output", 1))
    assert read_back(f) == f


def test_full_masks_are_exact_matches_and_ct_state_has_eight_bits():
    assert canon_match(ct_mark=(7, 0xFFFFFFFF), ct_label=(1, (1 << 128) - 1),
                       tcp_flags=(2, 0xFFFF)) == canon_match(ct_mark=7, ct_label=1, tcp_flags=2)
    # Open vSwitch reads an exact ct_state back masked with 0xff.
    assert canon_match(ct_state=(0x22, 0xFF)) == canon_match(ct_state=0x22) \
        == canon_match(ct_state=(0x22, 0xFFFFFFFF))
    assert canon_match(ct_state=(0x22, 0x1023)) == canon_match(ct_state=(0x22, 0x23))
    assert ct_state_match(CT_TRK, CT_INV) == (0x20, 0x30)
    with pytest.raises(ValueError, match="both set and clear"):
        ct_state_match(CT_TRK, CT_TRK)
    f = flow(canon_match(ct_state=CT_TRK | CT_EST, **IP), ("output", 1))
    mod = ofmsg.to_flow_mod(DP, f)
    mod.match._fields2 = [(k, (v, 0xFF)) if k == "ct_state" else (k, v)
                          for k, v in mod.match._fields2]
    stats = parser.OFPFlowStats(table_id=f.table, priority=f.priority, cookie=f.cookie,
                                idle_timeout=0, hard_timeout=0, match=mod.match,
                                instructions=mod.instructions)
    assert ofmsg.flow_from_stats(stats) == f


def nested(action):
    """The os-ken actions of a ct, in wire order."""
    return ofmsg.to_flow_mod(DP, flow(canon_match(), action)).instructions[0].actions[0].actions


@pytest.mark.parametrize("nat", [
    ("nat",), ("nat", "src", "1.2.3.4", "1.2.3.4", None, None),
    ("nat", "src", "1.2.3.4", "1.2.3.5", None, None), ("nat", "dst", "1.2.3.4", "1.2.3.4", 1, 1),
    ("nat", "dst", "1.2.3.4", "1.2.3.4", 1, 2), ("nat", "src", "1.2.3.4", "1.2.3.9", 1, 1),
    ("nat", "src", "1.2.3.4", "1.2.3.9", 1000, 2000)])
def test_nat_is_padded_to_the_length_it_declares(nat):
    """os-ken 4.2.2 writes an address and port range in 28 bytes under a
    length of 32, which shifts whatever follows inside the ct."""
    action = ("ct", True, 0, None, nat, (("set_field", "ct_mark", 5),))
    (nat_action, mark) = nested(action)
    buf = bytearray()
    nat_action.serialize(buf, 0)
    assert len(buf) == nat_action.len and len(buf) % 8 == 0
    assert mark.key == "ct_mark"
    f = flow(canon_match(**IP), action)
    assert read_back(f) == f


def test_ranges_of_one_are_one_value_on_the_wire():
    (nat,) = nested(("ct", True, 0, None, SNAT, ()))
    assert (nat.flags, nat.range_ipv4_min, nat.range_ipv4_max, nat.range_proto_min,
            nat.range_proto_max) == (1, "203.0.113.100", "", 40001, None)
    (nat,) = nested(("ct", True, 0, None, ("nat", "dst", "1.2.3.4", "1.2.3.5", 1, 2), ()))
    assert (nat.flags, nat.range_ipv4_max, nat.range_proto_max) == (2, "1.2.3.5", 2)


def test_ct_zone_and_table_on_the_wire():
    ct = ofmsg.to_flow_mod(DP, flow(canon_match(), ("ct", True, "reg5", None, None, ()))) \
        .instructions[0].actions[0]
    assert (ct.flags, ct.zone_src, ct.zone_ofs_nbits, ct.recirc_table) == \
        (nicira_ext.NX_CT_F_COMMIT, "reg5", nicira_ext.ofs_nbits(0, 15),
         nicira_ext.NX_CT_RECIRC_NONE)
    ct = ofmsg.to_flow_mod(DP, flow(canon_match(), ("ct", False, 300, 12, None, ()))) \
        .instructions[0].actions[0]
    assert (ct.flags, ct.zone_src, ct.zone_ofs_nbits, ct.recirc_table) == (0, "", 300, 12)


def test_conjunction_clauses_count_from_one_as_in_ovs_ofctl():
    mod = ofmsg.to_flow_mod(DP, flow(canon_match(), ("conjunction", 9, 1, 2)))
    (conj,) = mod.instructions[0].actions
    assert (conj.id, conj.clause, conj.n_clauses) == (9, 0, 2)


def test_nxm_field_names_read_back_as_their_oxm_names():
    """Open vSwitch writes a load or move of eth_dst with NXM_OF_ETH_DST,
    which os-ken calls eth_dst_nxm."""
    f = flow(canon_match(**IP), ("load", "eth_dst", 1, 0, 8), ("move", "eth_src", 0, "reg0", 0, 8))
    mod = ofmsg.to_flow_mod(DP, f)
    load, move = mod.instructions[0].actions
    load.dst, move.src_field = "eth_dst_nxm", "eth_src_nxm"
    stats = parser.OFPFlowStats(table_id=f.table, priority=f.priority, cookie=f.cookie,
                                idle_timeout=0, hard_timeout=0, match=mod.match,
                                instructions=mod.instructions)
    assert ofmsg.flow_from_stats(stats) == f


@pytest.mark.parametrize("foreign", [
    parser.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT, zone_src="", zone_ofs_nbits=1,
                      recirc_table=255, alg=21, actions=[]),
    parser.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT | nicira_ext.NX_CT_F_FORCE, zone_src="",
                      zone_ofs_nbits=1, recirc_table=255, alg=0, actions=[]),
    parser.NXActionCT(flags=1, zone_src="reg5", zone_ofs_nbits=nicira_ext.ofs_nbits(16, 31),
                      recirc_table=255, alg=0, actions=[]),
    parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=1, recirc_table=255, alg=0,
                      actions=[ofmsg._NXActionNAT(flags=1 | 4, range_ipv4_min="1.2.3.4")]),
    parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=1, recirc_table=255, alg=0,
                      actions=[ofmsg._NXActionNAT(flags=1, range_ipv6_min="::1")]),
    parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=1, recirc_table=255, alg=0,
                      actions=[parser.OFPActionSetField(ct_mark=1), ofmsg._NXActionNAT(flags=0)]),
    parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=1, recirc_table=255, alg=0,
                      actions=[parser.OFPActionSetField(reg0=1)]),
    parser.NXActionResubmitTable(in_port=3, table_id=20),
    parser.NXActionResubmit(in_port=3),
], ids=["alg", "force", "zone bits 16-31", "persistent nat", "ipv6 nat", "nat after exec",
        "exec reg0", "resubmit from another port", "resubmit without table"])
def test_what_the_tuples_cannot_say_reads_back_unsupported(foreign):
    f = flow(canon_match(**IP), ("output", 1))
    mod = ofmsg.to_flow_mod(DP, f)
    inst = parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [foreign])
    stats = parser.OFPFlowStats(table_id=f.table, priority=f.priority, cookie=f.cookie,
                                idle_timeout=0, hard_timeout=0, match=mod.match,
                                instructions=[inst])
    (action,) = ofmsg.flow_from_stats(stats).instructions[0][1]
    assert action[0] == "unsupported"


@pytest.mark.parametrize("action, message", [
    (("ct", True, 65536, None, None, ()), "zone must be"),
    (("ct", True, "reg8", None, None, ()), "zone must be"),
    (("ct", True, True, None, None, ()), "zone must be"),
    (("ct", True, 0, 255, None, ()), "table must be"),
    (("ct", False, 0, None, SNAT, ()), "without commit"),
    (("ct", False, 0, None, None, (("set_field", "ct_mark", 1),)), "without commit"),
    (("ct", True, 0, None, None, (("set_field", "reg0", 1),)), "ct exec takes"),
    (("ct", True, 0, None, ("nat", "src", "1.2.3.4", "1.2.3.4", 1, None), ()), "both ints"),
    (("ct", True, 0, None, ("nat", "both", "1.2.3.4", "1.2.3.4", None, None), ()), "nat is"),
    (("ct", True, 0, None, ("nat", "src", "1.2.3.04", "1.2.3.4", None, None), ()), "canonical"),
    (("ct", True, 0, None), "ct takes"),
    (("load", "in_port", 1, 0, 16), "set_field"),
    (("load", "reg0", 256, 0, 8), "does not fit"),
    (("load", "reg0", 1, 0, 65), "does not fit"),
    (("conjunction", 1, 3, 2), "clause"),
    (("conjunction", 1, 0, 2), "clause"),
])
def test_actions_the_switch_would_refuse_are_refused_in_one_line(action, message):
    with pytest.raises(ValueError, match=message) as err:
        ofmsg.to_flow_mod(DP, flow(canon_match(**IP), action))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ groups
GROUPS = [
    Group(1, "select", tuple(
        (w, (("load", "reg5", 7, 0, 16),
             ("ct", True, "reg5", 30, ("nat", "dst", ip, ip, port, port),
              (("set_field", "ct_mark", w),))))
        for w, ip, port in ((1, "10.0.0.2", 80), (3, "10.0.0.3", 8080)))),
    Group(2, "all", ((0, (("output", 1),)), (0, (("ct_clear",), ("output", 2))))),
    Group(3, "indirect", ((0, (("ct", True, 9, None, SNAT, ()),)),)),
    Group(4, "select", ()),
]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.type + str(g.group_id))
def test_groups_survive_the_round_trip(group):
    assert read_back_group(group) == group


def test_group_mod_commands_and_a_delete_without_buckets():
    group = GROUPS[0]
    for command, code in (("add", 0), ("modify", 1), ("delete", 2), ("add_or_mod", 0x8000)):
        buf = wire(ofmsg.to_group_mod(DP, group, command))
        got = struct.unpack_from(ofp.OFP_GROUP_MOD_PACK_STR, buf, ofp.OFP_HEADER_SIZE)
        assert got == (code, ofp.OFPGT_SELECT, 1)
        assert (len(buf) == ofp.OFP_GROUP_MOD_SIZE) == (command == "delete")
    with pytest.raises(KeyError):
        ofmsg.to_group_mod(DP, group, "insert_bucket")


def test_a_fast_failover_group_reads_back_but_is_never_installed():
    bucket = parser.OFPBucket(0, 3, ofp.OFPG_ANY, [parser.OFPActionOutput(3, 0)])
    desc = parser.OFPGroupDescStats(ofp.OFPGT_FF, 9, [bucket])
    got = ofmsg.group_from_stats(desc)
    assert got.type == "fast_failover"
    assert got.buckets[0][1][-1][0] == "unsupported"
    with pytest.raises(ValueError, match="cannot be installed"):
        ofmsg.to_group_mod(DP, got)
    with pytest.raises(ValueError, match="type must be"):
        Group(1, "chained", ())


# ------------------------------------------------------------- packet-outs
def commit_actions(zone, ip, port, mark, label):
    return (("load", "reg5", zone, 0, 16),
            ("ct", True, "reg5", None, ("nat", "src", ip, ip, port, port),
             (("set_field", "ct_mark", mark), ("set_field", "ct_label", label))))


def test_packet_out_carries_data_and_actions():
    actions = commit_actions(7, "203.0.113.100", 40001, 5, LABEL) + (("output", 3),)
    data = bytes(range(80))
    assert parse_packet_out(ofmsg.packet_out_bytes(data, actions, in_port=4, xid=99)) == \
        (99, ofp.OFP_NO_BUFFER, 4, actions, data)
    assert parse_packet_out(ofmsg.packet_out_bytes(b"x", ())) == \
        (0, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER, (), b"x")


def parse_packet_out(buf):
    """(xid, buffer_id, in_port, action tuples, data) of PACKET_OUT bytes
    (os-ken parses only what a switch sends)."""
    version, msg_type, length, xid = struct.unpack_from(ofp.OFP_HEADER_PACK_STR, buf)
    assert (version, msg_type, length) == (ofp.OFP_VERSION, ofp.OFPT_PACKET_OUT, len(buf))
    buffer_id, in_port, actions_len = struct.unpack_from(ofp.OFP_PACKET_OUT_PACK_STR, buf,
                                                         ofp.OFP_HEADER_SIZE)
    offset, end = ofp.OFP_PACKET_OUT_SIZE, ofp.OFP_PACKET_OUT_SIZE + actions_len
    actions = []
    while offset < end:
        action = parser.OFPAction.parser(buf, offset)
        actions.append(ofmsg._from_action(action))
        offset += action.len
    assert offset == end
    return xid, buffer_id, in_port, tuple(actions), buf[end:]


def random_ip(rng):
    return "%d.%d.%d.%d" % (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256),
                            rng.randrange(256))


SHAPES = {
    "migration commit": lambda r: commit_actions(r.randrange(65536), random_ip(r),
                                                 r.randrange(65536), r.randrange(1 << 32),
                                                 r.randrange(1 << 128)),
    "ranges, immediate zone, mark bits, output": lambda r: (
        ("ct", True, r.randrange(65536), 5,
         ("nat", "dst", "10.0.0.1", "10.0.0.9", 1000 + r.randrange(100), 2000 + r.randrange(100)),
         (("load", "ct_mark", r.randrange(256), 8, 8),)),
        ("set_field", "ipv4_dst", random_ip(r)), ("set_field", "eth_src", "02:00:00:00:00:%02x"
                                                  % r.randrange(256)),
        ("output", r.randrange(1, 1000))),
    "nothing varies": lambda r: (("ct_clear",), ("resubmit", 3), ("output", 0xFFFFFFFD)),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_packet_out_encoder_writes_the_bytes_os_ken_writes(shape):
    rng = random.Random(7)
    encoder = ofmsg.PacketOutEncoder(shape(rng), in_port=5)
    for _ in range(300):
        actions = shape(rng)
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
        xid = rng.randrange(1 << 32)
        assert encoder.encode(data, actions, xid) == \
            ofmsg.packet_out_bytes(data, actions, in_port=5, xid=xid)


def test_packet_out_encoder_refuses_another_shape():
    template = commit_actions(1, "1.2.3.4", 5, 6, 7)
    encoder = ofmsg.PacketOutEncoder(template)
    assert encoder.values == 5          # zone, address, port, mark, label
    range_of_two = ("ct", True, "reg5", None, ("nat", "src", "1.2.3.4", "1.2.3.5", 5, 5),
                    (("set_field", "ct_mark", 6), ("set_field", "ct_label", 7)))
    for other in (template[:1],                                 # an action less
                  (("load", "reg6", 1, 0, 16),) + template[1:],  # another register
                  template[:1] + (range_of_two,)):              # another layout
        with pytest.raises(ValueError, match="another shape"):
            encoder.encode(b"", other)
    # Output to the controller asks for whole packets (another max_len).
    encoder = ofmsg.PacketOutEncoder(template + (("output", 1),))
    encoder.encode(b"", template + (("output", 2),))
    with pytest.raises(ValueError, match="another shape"):
        encoder.encode(b"", template + (("output", ofp.OFPP_CONTROLLER),))


def test_packet_out_encoder_rate():
    """The migration import's shape: how many per second (printed)."""
    encoder = ofmsg.PacketOutEncoder(commit_actions(7, "203.0.113.100", 40001, 1, 1))
    data = bytes(54)
    packets = [commit_actions(i & 0xFFFF, "203.0.113.100", 40001 + i % 20000, i, i << 64)
               for i in range(50000)]
    encode = encoder.encode
    start = time.perf_counter()
    for actions in packets:
        encode(data, actions)
    fast = len(packets) / (time.perf_counter() - start)
    start = time.perf_counter()
    for actions in packets[:2000]:
        ofmsg.packet_out_bytes(data, actions)
    slow = 2000 / (time.perf_counter() - start)
    print("\nPacketOutEncoder: %.0f packet-outs/s (os-ken: %.0f/s, x%.0f)"
          % (fast, slow, fast / slow))
    assert fast > 2 * slow


# ------------------------------------------------- the flow-mod bytes
def test_flow_mod_bytes_are_os_kens_with_flags_and_xid():
    """ofconn sends flows as flow_mod_bytes: to_flow_mod's message, with the
    flags and xid it is given."""
    flows = [flow(canon_match(**IP, **fields), action, ("output", 2), n=i)
             for i, (fields, action) in enumerate(zip(
                 list(MATCHES.values()) * 2, ACTIONS.values()))]
    for f in flows:
        msg = ofmsg.to_flow_mod(DP, f)
        msg.flags = ofp.OFPFF_SEND_FLOW_REM
        msg.set_xid(5)
        assert ofmsg.flow_mod_bytes(f, "add", ofp.OFPFF_SEND_FLOW_REM, 5) == wire(msg)
