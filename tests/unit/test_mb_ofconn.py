"""middlebox.ofconn against a scripted fake switch on a unix socket: the
handshake it sends, message framing across reads, echo, multipart flow
stats, FLOW_REMOVED, errors and a lost peer.  (tests/integration/test_mb_io.py
runs the same client against a real ovs-vswitchd.)"""

import os
import select
import socket
import struct
import sys
import threading
import time

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp

# ``middlebox`` may not be in the installed package list yet (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox.ofconn import OfConn, OfConnError  # noqa: E402
from ryu_apps import ofmsg  # noqa: E402
from ryu_apps.ofmodel import Flow, canon_match  # noqa: E402

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
HEADER = struct.Struct("!BBHI")
FLOW_MOD_FIXED = ofp.OFP_HEADER_SIZE + struct.calcsize(ofp.OFP_FLOW_MOD_PACK_STR0)
COOKIE = 0x4D42440000000000 | 5 << 28


def header(msg_type, body=b"", xid=0, version=ofp.OFP_VERSION):
    return HEADER.pack(version, msg_type, HEADER.size + len(body), xid) + body


def hello_with_bitmap(*versions, version=6):
    bitmap = sum(1 << v for v in versions)
    return header(ofp.OFPT_HELLO, struct.pack("!HHI", 1, 8, bitmap), version=version)


def read_msg(sock):
    data = b""
    for want in (HEADER.size, None):
        if want is None:
            want = HEADER.unpack(data)[2]
        while len(data) < want:
            chunk = sock.recv(want - len(data))
            if not chunk:
                raise EOFError("peer closed")
            data += chunk
    version, msg_type, _, xid = HEADER.unpack_from(data)
    return msg_type, xid, data


class FakeSwitch:
    """Accepts one connection, answers the handshake, then hands its socket
    to the test (``self.peer``)."""

    def __init__(self, path, hello):
        self.path = path
        self.hello = hello
        self.handshake = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(5)
        self.peer = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            peer, _ = self.listener.accept()
        except OSError:
            return
        peer.settimeout(5)
        try:
            peer.sendall(self.hello)
            for _ in range(10):
                msg_type, xid, data = read_msg(peer)
                self.handshake.append((msg_type, data))
                if msg_type == ofp.OFPT_BARRIER_REQUEST:
                    peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=xid))
                    break
        except (EOFError, OSError):
            peer.close()                # the client gave up (e.g. no common version)
            return
        self.peer = peer

    def close(self):
        self.thread.join(5)
        if self.peer:
            self.peer.close()
        self.listener.close()


class Recorder:
    def __init__(self):
        self.removed, self.stats, self.barriers, self.errors = [], {}, [], []

    def conn(self, target):
        return OfConn(target, on_flow_removed=lambda *a: self.removed.append(a),
                      on_flow_stats=lambda xid, e: self.stats.__setitem__(xid, e),
                      on_barrier=self.barriers.append,
                      on_error=lambda *a: self.errors.append(a))


def pump(conn, until, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        select.select([conn], [], [], 0.05)
        conn.run()


@pytest.fixture
def switch(tmp_path):
    sw = FakeSwitch(str(tmp_path / "br-int.mgmt"), hello_with_bitmap(1, 4, 6))
    rec = Recorder()
    conn = rec.conn("unix:" + sw.path)
    conn.connect(timeout=5)
    sw.thread.join(5)
    yield sw, conn, rec
    conn.close()
    sw.close()


def cache_flow(entry, sport):
    return Flow(11, 100, canon_match(reg4=5, eth_type=0x800, ip_proto=6, ipv4_src="10.0.0.1",
                                     ipv4_dst="10.0.0.2", tcp_src=sport, tcp_dst=80),
                (("goto", 20),), cookie=COOKIE | entry, idle_timeout=30)


def flow_stats_reply(xid, flows, more):
    body = b""
    for flow in flows:
        mod = ofmsg.to_flow_mod(DP, flow)
        mod.serialize()
        tail = bytes(mod.buf[FLOW_MOD_FIXED:])
        body += struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, ofp.OFP_FLOW_STATS_0_SIZE + len(tail),
                            flow.table, 12, 345, flow.priority, flow.idle_timeout,
                            flow.hard_timeout, 0, flow.cookie, 10, 1000) + tail
    flags = ofp.OFPMPF_REPLY_MORE if more else 0
    return header(ofp.OFPT_MULTIPART_REPLY,
                  struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_FLOW, flags) + body,
                  xid=xid)


def test_handshake_negotiates_1_3_and_asks_for_flow_removed_only(switch):
    sw, conn, _ = switch
    types_sent = [t for t, _ in sw.handshake]
    assert types_sent == [ofp.OFPT_HELLO, ofp.OFPT_SET_CONFIG, ofp.OFPT_SET_ASYNC,
                          ofp.OFPT_BARRIER_REQUEST]
    _, set_config = sw.handshake[1]
    assert struct.unpack_from("!HH", set_config, 8) == (0, 0xFFFF)      # miss_send_len
    _, set_async = sw.handshake[2]
    assert struct.unpack_from("!IIIIII", set_async, 8) == (0, 0, 0, 0, 0xF, 0xF)
    assert conn.connected


def test_echo_split_across_reads_is_answered(switch):
    sw, conn, _ = switch
    echo = header(ofp.OFPT_ECHO_REQUEST, b"ping", xid=77)
    sw.peer.sendall(echo[:5])
    select.select([conn], [], [], 1)
    conn.run()
    sw.peer.sendall(echo[5:])
    select.select([conn], [], [], 1)
    conn.run()
    assert read_msg(sw.peer) == (ofp.OFPT_ECHO_REPLY, 77,
                                 header(ofp.OFPT_ECHO_REPLY, b"ping", xid=77))


def test_multipart_flow_stats_are_delivered_once_complete(switch):
    sw, conn, rec = switch
    xid = conn.request_flow_stats(COOKIE, 0xFFFFFFFFF0000000)
    msg_type, got_xid, _ = read_msg(sw.peer)
    assert (msg_type, got_xid) == (ofp.OFPT_MULTIPART_REQUEST, xid)
    flows = [cache_flow(i, 1000 + i) for i in range(3)]
    sw.peer.sendall(flow_stats_reply(xid + 1000, flows, False)      # not a request of ours
                    + flow_stats_reply(xid, flows[:2], True))
    select.select([conn], [], [], 1)
    conn.run()
    assert rec.stats == {}
    sw.peer.sendall(flow_stats_reply(xid, flows[2:], False))
    pump(conn, lambda: rec.stats)
    assert rec.stats == {xid: [(f, 10, 1000, 12) for f in flows]}


def test_flow_removed_and_error_reach_their_callbacks(switch):
    sw, conn, rec = switch
    flow = cache_flow(9, 4242)
    match = ofmsg.to_flow_mod(DP, flow).match
    buf = bytearray()
    match.serialize(buf, 0)
    removed = struct.pack(ofp.OFP_FLOW_REMOVED_PACK_STR0, flow.cookie, flow.priority,
                          ofp.OFPRR_IDLE_TIMEOUT, flow.table, 31, 0, 30, 0, 4, 400)
    stats_xid = conn.request_flow_stats(COOKIE, COOKIE)
    error = struct.pack("!HH", ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE) + b"\0" * 8
    sw.peer.sendall(header(ofp.OFPT_FLOW_REMOVED, removed + bytes(buf), xid=0)
                    + header(ofp.OFPT_ERROR, error, xid=stats_xid))
    pump(conn, lambda: rec.removed and rec.errors)
    (cookie, table, prio, match_flow, reason, packets, nbytes, duration), = rec.removed
    assert (cookie, table, prio, reason, packets, nbytes, duration) == \
        (flow.cookie, 11, 100, ofp.OFPRR_IDLE_TIMEOUT, 4, 400, 31)
    assert match_flow == Flow(11, 100, flow.match, (), cookie=flow.cookie, idle_timeout=30)
    assert rec.errors == [(stats_xid, ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE)]
    # The failed request never completes, even if a late reply comes.
    sw.peer.sendall(flow_stats_reply(stats_xid, [flow], False))
    xid = conn.barrier()
    msg_type, got_xid, _ = read_msg(sw.peer)
    while msg_type != ofp.OFPT_BARRIER_REQUEST:
        msg_type, got_xid, _ = read_msg(sw.peer)
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=xid))
    pump(conn, lambda: rec.barriers)
    assert rec.barriers == [xid] and rec.stats == {}


def test_peer_closing_is_reported_and_leaves_the_conn_closed(switch):
    sw, conn, _ = switch
    sw.peer.close()
    sw.peer = None
    with pytest.raises(OfConnError, match="closed by the switch"):
        pump(conn, lambda: False)
    assert not conn.connected
    conn.barrier()                      # dropped, not raised: the daemon reconnects
    assert conn.requests_dropped == 1
    with pytest.raises(OfConnError, match="not connected"):
        conn.run()


def test_a_switch_without_1_3_is_refused_in_one_line(tmp_path):
    sw = FakeSwitch(str(tmp_path / "old.mgmt"), hello_with_bitmap(1, version=1))
    try:
        with pytest.raises(OfConnError) as err:
            OfConn("unix:" + sw.path).connect(timeout=2)
        assert "does not speak OpenFlow 1.3 (it offers 1.0;" in str(err.value)
        assert "\n" not in str(err.value)
    finally:
        sw.listener.close()
        sw.thread.join(5)


def test_a_failed_write_is_raised_by_the_next_run(switch):
    sw, conn, _ = switch
    sw.peer.close()
    sw.peer = None
    conn.barrier()                      # EPIPE: kept, not raised here
    with pytest.raises(OfConnError, match="Broken pipe|closed by the switch"):
        pump(conn, lambda: False)
    assert not conn.connected


def test_dump_flows_blocks_for_the_whole_reply_or_fails_clearly(switch):
    sw, conn, rec = switch
    flows = [cache_flow(i, 2000 + i) for i in range(3)]

    def answer(parts):
        msg_type, xid, _ = read_msg(sw.peer)
        assert msg_type == ofp.OFPT_MULTIPART_REQUEST
        for part in parts:
            sw.peer.sendall(part(xid))

    replier = threading.Thread(target=answer, args=([
        lambda xid: flow_stats_reply(xid, flows[:1], True),
        lambda xid: flow_stats_reply(xid, flows[1:], False)],))
    replier.start()
    assert conn.dump_flows(COOKIE, COOKIE, timeout=2) == [(f, 10, 1000, 12) for f in flows]
    replier.join(5)
    assert rec.stats == {}                  # the blocking dump is not reported again

    error = struct.pack("!HH", ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_EPERM)
    replier = threading.Thread(target=answer, args=([
        lambda xid: header(ofp.OFPT_ERROR, error, xid=xid)],))
    replier.start()
    with pytest.raises(OfConnError, match="flow stats request failed"):
        conn.dump_flows(COOKIE, COOKIE, timeout=2)
    replier.join(5)
    with pytest.raises(OfConnError, match="no flow stats reply within 0.2s"):
        conn.dump_flows(COOKIE, COOKIE, timeout=0.2)


# ------------------------------------------------------------------ bundles
ONF = 0x4F4E4600
BUNDLE_CTRL, BUNDLE_ADD = 2300, 2301


def read_until_barrier(sock):
    """Messages up to and including the next BARRIER_REQUEST: [(type, xid, bytes)]."""
    out = []
    while not out or out[-1][0] != ofp.OFPT_BARRIER_REQUEST:
        out.append(read_msg(sock))
    return out


def bundle_ctrl(data):
    """(experimenter, exp_type, bundle id, control type, flags) of a bundle control."""
    return struct.unpack_from("!IIIHH", data, 8)


def no_more(sock, wait=0.2):
    r, _, _ = select.select([sock], [], [], wait)
    return not r


def test_a_large_batch_goes_in_bundles_committed_after_the_switch_saw_them(switch,
                                                                            monkeypatch):
    sw, conn, rec = switch
    import middlebox.ofconn as O
    monkeypatch.setattr(O, "BUNDLE_CHUNK", 300)
    flows = [cache_flow(i, 1000 + i) for i in range(O.BUNDLE_MIN + 400)]
    old = cache_flow(9999, 999)
    xids = conn.send_flows(add=flows, delete=[old])
    barrier = conn.barrier()
    msgs = read_until_barrier(sw.peer)
    check = msgs[-1][1]
    assert check != barrier                 # the switch answers the batch's own first
    opens = [m for m in msgs if m[0] == ofp.OFPT_EXPERIMENTER
             and bundle_ctrl(m[2])[1] == BUNDLE_CTRL]
    adds = [m for m in msgs if m[0] == ofp.OFPT_EXPERIMENTER
            and bundle_ctrl(m[2])[1] == BUNDLE_ADD]
    assert len(msgs) == len(opens) + len(adds) + 1
    ids = [bundle_ctrl(m[2])[2] for m in opens]
    assert [bundle_ctrl(m[2])[3:] for m in opens] == [(ofp.ONF_BCT_OPEN_REQUEST, 3)] * 3
    assert len(set(ids)) == 3               # 1 delete + 656 adds in bundles of 300
    # Each add carries, with the flow-mod's own xid, exactly what a single
    # flow-mod would have been: the delete first, then the adds in order.
    assert [m[1] for m in adds] == xids
    want = [ofmsg.to_flow_mod(DP, Flow(**{**old.__dict__, "instructions": ()}),
                              "delete_strict")]
    for f in flows:
        want.append(ofmsg.to_flow_mod(DP, f, "add"))
        want[-1].flags = ofp.OFPFF_SEND_FLOW_REM
    for m, (_, xid, data), n in zip(want, adds, range(len(adds))):
        m.set_xid(xid)
        m.serialize()
        assert data[24:] == bytes(m.buf)
        assert struct.unpack_from("!I2xH", data, 16) == (ids[n // 300], 3)
    # Nothing else goes out (the caller's barrier waits) until the batch is decided.
    assert no_more(sw.peer)
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=check))
    pump(conn, lambda: conn.bundles_committed == 3)
    after = read_until_barrier(sw.peer)
    assert [bundle_ctrl(m[2])[2:4] for m in after[:-1]] == \
        [(i, ofp.ONF_BCT_COMMIT_REQUEST) for i in ids]
    assert after[-1][1] == barrier
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=barrier))
    pump(conn, lambda: rec.barriers)
    assert rec.barriers == [barrier] and not rec.errors     # not the batch's own barrier
    assert conn.flow_mods_sent == len(flows) + 1


def test_a_refused_message_discards_the_whole_batch(switch):
    sw, conn, rec = switch
    import middlebox.ofconn as O
    flows = [cache_flow(i, 1000 + i) for i in range(O.BUNDLE_MIN)]
    xids = conn.send_flows(add=flows)
    later = conn.send_flows(add=[cache_flow(5000, 5000)])     # small: a plain flow-mod
    msgs = read_until_barrier(sw.peer)
    (bundle_id,) = {bundle_ctrl(m[2])[2] for m in msgs[:-1]}
    error = struct.pack("!HH", ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_TABLE_ID) + b"\0" * 8
    sw.peer.sendall(header(ofp.OFPT_ERROR, error, xid=xids[7])
                    + header(ofp.OFPT_BARRIER_REPLY, xid=msgs[-1][1]))
    pump(conn, lambda: conn.bundles_discarded)
    assert rec.errors == [(xids[7], ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_TABLE_ID)]
    discard = read_msg(sw.peer)
    assert bundle_ctrl(discard[2])[2:4] == (bundle_id, ofp.ONF_BCT_DISCARD_REQUEST)
    assert conn.bundles_committed == 0
    # What was asked for after the batch goes out after the discard, as asked.
    msg_type, xid, data = read_msg(sw.peer)
    assert (msg_type, xid) == (ofp.OFPT_FLOW_MOD, later[0])


def test_a_small_batch_is_plain_flow_mods(switch):
    sw, conn, _ = switch
    import middlebox.ofconn as O
    flows = [cache_flow(i, 1000 + i) for i in range(O.BUNDLE_MIN - 1)]
    xids = conn.send_flows(add=flows)
    got = [read_msg(sw.peer) for _ in flows]
    assert [(t, x) for t, x, _ in got] == [(ofp.OFPT_FLOW_MOD, x) for x in xids]
    assert no_more(sw.peer)
    forced = conn.send_flows(add=flows[:2], bundle=True)
    msgs = read_until_barrier(sw.peer)
    assert [m[1] for m in msgs[:-1] if bundle_ctrl(m[2])[1] == BUNDLE_ADD] == forced


def test_a_lost_connection_forgets_the_undecided_batch(switch):
    sw, conn, _ = switch
    import middlebox.ofconn as O
    conn.send_flows(add=[cache_flow(i, 1000 + i) for i in range(O.BUNDLE_MIN)])
    conn.barrier()
    read_until_barrier(sw.peer)
    sw.peer.close()
    sw.peer = None
    with pytest.raises(OfConnError):
        pump(conn, lambda: False)
    assert not conn._batches and not conn._held


# ------------------------------------------- groups, packet-outs, look-ups
from ryu_apps.ofmodel import Group  # noqa: E402

LB = Group(1, "select", ((1, (("ct", True, "reg5", 30, ("nat", "dst", "10.0.0.2", "10.0.0.2",
                                                        80, 80), ()),)),
                         (2, (("ct", True, "reg5", 30, ("nat", "dst", "10.0.0.3", "10.0.0.3",
                                                        80, 80), ()),))))


def serialized(msg, xid):
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def multipart_reply(xid, mp_type, body, more):
    flags = ofp.OFPMPF_REPLY_MORE if more else 0
    return header(ofp.OFPT_MULTIPART_REPLY,
                  struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, mp_type, flags) + body, xid=xid)


def group_desc(group):
    buckets = serialized(ofmsg.to_group_mod(DP, group), 0)[ofp.OFP_GROUP_MOD_SIZE:]
    return struct.pack(ofp.OFP_GROUP_DESC_STATS_PACK_STR,
                       ofp.OFP_GROUP_DESC_STATS_SIZE + len(buckets),
                       ofmsg.GROUP_TYPES[group.type], group.group_id) + buckets


def port_desc(port_no, name):
    return struct.pack(ofp.OFP_PORT_PACK_STR, port_no, b"\x02\0\0\0\0\x01", name.encode(),
                       0, 0, 0, 0, 0, 0, 0, 0)


def answer(sock, *parts):
    """A thread that reads one request and answers it with ``parts(xid)``."""
    def run():
        msg_type, xid, _ = read_msg(sock)
        assert msg_type == ofp.OFPT_MULTIPART_REQUEST
        for part in parts:
            sock.sendall(part(xid))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_group_mods_and_packet_outs_go_out_in_order_with_their_xids(switch):
    sw, conn, _ = switch
    gxids = conn.send_groups([LB, Group(2, "all", ())], "add_or_mod")
    po = [ofmsg.packet_out_bytes(b"frame%d" % i, (("output", i),)) for i in range(3)]
    pxids = conn.send_packet_outs(po)
    assert len(set(gxids + pxids)) == 5
    got = [read_msg(sw.peer) for _ in range(5)]
    assert [(t, x) for t, x, _ in got] == \
        [(ofp.OFPT_GROUP_MOD, x) for x in gxids] + [(ofp.OFPT_PACKET_OUT, x) for x in pxids]
    assert got[0][2] == serialized(ofmsg.to_group_mod(DP, LB, "add_or_mod"), gxids[0])
    for (_, xid, data), msg in zip(got[2:], po):
        assert data == msg[:4] + struct.pack("!I", xid) + msg[8:]
    assert (conn.group_mods_sent, conn.packet_outs_sent, conn.flow_mods_sent) == (2, 3, 0)


def test_bytes_that_are_not_packet_outs_are_refused_and_nothing_is_sent(switch):
    sw, conn, _ = switch
    good = ofmsg.packet_out_bytes(b"frame", (("output", 1),))
    flow_mod = serialized(ofmsg.to_flow_mod(DP, cache_flow(1, 1000)), 0)
    for bad in ([good, flow_mod], [good, good[:-1]], [good[:7]]):
        with pytest.raises(ValueError, match="message 1 is not|message 0 is not"):
            conn.send_packet_outs(bad)
    assert conn.packet_outs_sent == 0 and conn.pending_output == 0
    assert no_more(sw.peer)


def test_groups_ride_in_the_flows_bundle_between_deletes_and_adds(switch):
    sw, conn, _ = switch
    old, new = cache_flow(1, 1000), cache_flow(2, 2000)
    xids = conn.send_flows(add=[new], delete=[old], groups=[("add", LB)], bundle=True)
    msgs = read_until_barrier(sw.peer)
    adds = [m for m in msgs if m[0] == ofp.OFPT_EXPERIMENTER
            and bundle_ctrl(m[2])[1] == BUNDLE_ADD]
    assert [m[1] for m in adds] == xids
    assert [struct.unpack_from("!B", m[2], 25)[0] for m in adds] == \
        [ofp.OFPT_FLOW_MOD, ofp.OFPT_GROUP_MOD, ofp.OFPT_FLOW_MOD]
    assert adds[1][2][24:] == serialized(ofmsg.to_group_mod(DP, LB, "add"), xids[1])
    assert (conn.flow_mods_sent, conn.group_mods_sent) == (2, 1)


def test_a_bundle_refused_at_its_commit_is_counted(switch):
    """OVS checks a flow's group references only when it commits."""
    sw, conn, rec = switch
    conn.send_flows(add=[cache_flow(1, 1000)], groups=[("add", LB)], bundle=True)
    check = read_until_barrier(sw.peer)[-1][1]
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=check))
    pump(conn, lambda: conn.bundles_committed)
    commit = read_msg(sw.peer)
    assert bundle_ctrl(commit[2])[3] == ofp.ONF_BCT_COMMIT_REQUEST
    failed = struct.pack("!HHHI", 0xFFFF, 2313, 0, ONF)
    sw.peer.sendall(header(ofp.OFPT_ERROR, failed, xid=commit[1]))
    pump(conn, lambda: rec.errors)
    assert conn.bundles_failed == 1 and rec.errors[0][0] == commit[1]


def test_dump_groups_and_port_number_block_for_the_whole_reply(switch):
    sw, conn, _ = switch
    other = Group(2, "indirect", ((0, (("output", 3),)),))
    t = answer(sw.peer,
               lambda x: multipart_reply(x, ofp.OFPMP_GROUP_DESC, group_desc(LB), True),
               lambda x: multipart_reply(x, ofp.OFPMP_GROUP_DESC, group_desc(other), False))
    assert conn.dump_groups(timeout=2) == [LB, other]
    t.join(5)
    ports = port_desc(1, "vif0") + port_desc(7, "mbx-mb") + port_desc(ofp.OFPP_LOCAL, "br-int")
    for name, want in (("mbx-mb", 7), ("br-int", ofp.OFPP_LOCAL), ("mbx", None)):
        t = answer(sw.peer, lambda x: multipart_reply(x, ofp.OFPMP_PORT_DESC, ports, False))
        assert conn.port_number(name, timeout=2) == want
        t.join(5)


def test_a_failed_or_silent_look_up_is_one_clear_line(switch):
    sw, conn, _ = switch
    error = struct.pack("!HH", ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_MULTIPART)
    t = answer(sw.peer, lambda x: header(ofp.OFPT_ERROR, error, xid=x))
    with pytest.raises(OfConnError, match="group description request failed"):
        conn.dump_groups(timeout=2)
    t.join(5)
    with pytest.raises(OfConnError, match="no port description reply within 0.2s"):
        conn.port_number("mbx-mb", timeout=0.2)
    assert not conn._mp_pending


def test_barriers_lost_with_the_connection_are_answered_after_the_resync(tmp_path):
    """A barrier unanswered when the switch went, and one asked for while
    it was gone, are answered (in order) by the reply to the barrier
    ``resume_barriers`` sends once reconnected, after what was sent
    before it; a barrier asked for after that is answered normally."""
    path = str(tmp_path / "br-int.mgmt")
    sw = FakeSwitch(path, hello_with_bitmap(4))
    rec = Recorder()
    conn = rec.conn("unix:" + path)
    conn.connect(timeout=5)
    sw.thread.join(5)
    first = conn.barrier()
    read_msg(sw.peer)                   # the switch takes it, never answers: it dies
    sw.close()
    with pytest.raises(OfConnError):
        pump(conn, lambda: False)
    second = conn.barrier()             # asked for while disconnected
    assert conn.lost_barriers == [first, second] and rec.barriers == []
    os.unlink(path)
    sw = FakeSwitch(path, hello_with_bitmap(4))
    conn.connect(timeout=5)
    sw.thread.join(5)
    assert conn.resume_barriers() == 2
    msg_type, xid, _ = read_msg(sw.peer)
    assert msg_type == ofp.OFPT_BARRIER_REQUEST and xid not in (first, second)
    later = conn.barrier()
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=xid))
    pump(conn, lambda: rec.barriers == [first, second])
    read_msg(sw.peer)
    sw.peer.sendall(header(ofp.OFPT_BARRIER_REPLY, xid=later))
    pump(conn, lambda: rec.barriers == [first, second, later])
    assert conn.lost_barriers == []
    conn.close()
    sw.close()
