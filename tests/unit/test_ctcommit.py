"""middlebox.ctcommit: the packets that re-create a conntrack entry, their
ct actions and their PACKET_OUT messages.  The real switch's side is
tests/integration/test_mb_ctcommit.py."""

import struct

import pytest

from middlebox import ctcommit as K
from middlebox.conn import Conn
from middlebox.packet import ip_int, parse_frame
from ryu_apps import ofmsg

A, B, PEER, VIP = ip_int("10.0.0.10"), ip_int("10.0.0.20"), ip_int("198.51.100.10"), \
    ip_int("10.0.0.100")
SNAT_IP = ip_int("203.0.113.100")
LABEL = (1 << 127) | 0xABCDEF
EXEC = (("set_field", "ct_mark", 5), ("set_field", "ct_label", LABEL))

PLAIN = Conn(6, A, 40000, B, 80, B, 80, A, 40000, 70, 5, LABEL, "ESTABLISHED", 86399)
SNAT = Conn(6, A, 40001, PEER, 80, PEER, 80, SNAT_IP, 5000, 71, 5, LABEL, "ESTABLISHED")
DNAT = Conn(6, PEER, 40002, VIP, 80, B, 8080, PEER, 40002, 70, 5, LABEL, "ESTABLISHED")
UDP = Conn(17, A, 40003, PEER, 53, PEER, 53, SNAT_IP, 6000, 71, 5, LABEL)
ICMP = Conn(1, A, 4242, B, 8 << 8, B, 4242, A, 0, 70, 5, LABEL)
ICMP_SNAT = ICMP._replace(dst=PEER, rsrc=PEER, rdst=SNAT_IP)


def inet_checksum(data):
    """RFC 1071, the textbook way: 16-bit words, carries folded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def assert_valid(frame):
    """Ethernet + IPv4 + TCP/UDP/ICMP with both checksums right: summing a
    header with its checksum gives 0."""
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert ip[0] == 0x45 and struct.unpack_from("!H", ip, 2)[0] == len(frame) - 14
    assert inet_checksum(ip) == 0
    l4 = frame[34:]
    if ip[9] == 1:
        assert inet_checksum(l4) == 0
    else:
        pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(l4))
        assert inet_checksum(pseudo + l4) == 0
        if ip[9] == 17:
            assert struct.unpack_from("!H", l4, 6)[0] != 0      # UDP: 0 means none


def parsed(frames):
    return [(parse_frame(f, 0), nat) for f, nat in frames]


def test_established_tcp_is_orig_ack_reply_ack_orig_ack():
    for c in (PLAIN, SNAT, DNAT):
        (o1, n1), (r, n2), (o2, n3) = parsed(K.frames(c))
        assert (n1, n2, n3) == (True, False, False)
        assert (o1.src, o1.sport, o1.dst, o1.dport) == (c.src, c.sport, c.dst, c.dport)
        assert (r.src, r.sport, r.dst, r.dport) == (c.rsrc, c.rsport, c.rdst, c.rdport)
        assert (o2.src, o2.sport, o2.dst, o2.dport) == (c.src, c.sport, c.dst, c.dport)
        assert o1.tcp_flags == r.tcp_flags == o2.tcp_flags == K.TCP_ACK
        assert (o1.seq, o1.ack) == (r.ack, r.seq)


def test_later_tcp_states_are_re_created_established():
    for state in ("TIME_WAIT", "FIN_WAIT_1", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "FIN_WAIT_2"):
        assert K.frames(PLAIN._replace(state=state)) == K.frames(PLAIN)


def test_handshake_states_are_re_created_with_their_handshake():
    [(syn, nat)] = parsed(K.frames(PLAIN._replace(state="SYN_SENT")))
    assert nat and syn.tcp_flags == K.TCP_SYN and syn.sport == 40000
    (syn, n1), (synack, n2) = parsed(K.frames(SNAT._replace(state="SYN_RECV")))
    assert (n1, n2) == (True, False)
    assert syn.tcp_flags == K.TCP_SYN and synack.tcp_flags == K.TCP_SYN | K.TCP_ACK
    assert (synack.src, synack.sport, synack.dst, synack.dport) == (PEER, 80, SNAT_IP, 5000)
    assert synack.ack == syn.seq + 1
    assert K.frames(PLAIN._replace(state="CLOSED")) == []
    assert K.frames(PLAIN._replace(state="LISTEN")) == []
    with pytest.raises(ValueError):
        K.frames(PLAIN._replace(state="NONSENSE"))
    with pytest.raises(ValueError):
        K.frames(PLAIN._replace(proto=47))


def test_udp_and_icmp_are_a_packet_each_way():
    (o, n1), (r, n2) = parsed(K.frames(UDP))
    assert (n1, n2) == (True, False)
    assert (o.proto, o.src, o.sport, o.dst, o.dport) == (17, A, 40003, PEER, 53)
    assert (r.src, r.sport, r.dst, r.dport) == (PEER, 53, SNAT_IP, 6000)
    (o, n1), (r, n2) = parsed(K.frames(ICMP))
    assert (n1, n2) == (True, False)
    assert (o.proto, o.icmp_type, o.icmp_code, o.src, o.dst) == (1, 8, 0, A, B)
    assert (r.icmp_type, r.icmp_code, r.src, r.dst) == (0, 0, B, A)
    # The echo id is the record's sport / rsport.
    assert K.frames(ICMP)[0][0][38:40] == struct.pack("!H", 4242)


def test_every_frame_has_valid_ip_and_l4_checksums():
    seen = 0
    addresses = (0, 1, A, PEER, SNAT_IP, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
    for src in addresses:
        for dst in addresses:
            for sport, dport in ((0, 0), (1, 0xFFFF), (0xFFFF, 0xFFFF), (40000, 80)):
                c = PLAIN._replace(src=src, dst=dst, sport=sport, dport=dport, rsrc=dst,
                                   rdst=src, rsport=dport, rdport=sport)
                for conn in (c, c._replace(state="SYN_RECV"), c._replace(proto=17, state=""),
                             c._replace(proto=1, state="", dport=sport & 0xFF00 | 3,
                                        rdport=dport & 0xFFFF)):
                    for frame, _ in K.frames(conn):
                        assert_valid(frame)
                        seen += 1
    assert seen > 2000


def test_a_udp_checksum_that_sums_to_zero_is_sent_as_ffff():
    # Find ports whose UDP checksum computes to 0: it must go out as 0xFFFF.
    for sport in range(1, 1 << 16):
        frame = K.frames(UDP._replace(sport=sport, rdport=sport, rdst=A))[0][0]
        if struct.unpack_from("!H", frame, 40)[0] == 0xFFFF:
            assert_valid(frame)
            break
    else:
        pytest.fail("no UDP frame with the checksum 0xFFFF")


def test_commit_actions_plain_snat_dnat():
    first, other = K.commit_actions(PLAIN, 9, 5, LABEL)
    assert first == ("ct", True, 9, None, None, EXEC)
    assert other == ("ct", True, 9, None, None, ())
    first, _ = K.commit_actions(SNAT, 9, 5, LABEL)
    assert first == ("ct", True, 9, None,
                     ("nat", "src", "203.0.113.100", "203.0.113.100", 5000, 5000), EXEC)
    first, _ = K.commit_actions(DNAT, 9, 5, LABEL)
    assert first == ("ct", True, 9, None, ("nat", "dst", "10.0.0.20", "10.0.0.20", 8080, 8080),
                     EXEC)
    first, _ = K.commit_actions(UDP, 9, 5, LABEL)
    assert first[4] == ("nat", "src", "203.0.113.100", "203.0.113.100", 6000, 6000)
    # ICMP: the address alone.
    assert K.commit_actions(ICMP, 9, 5, LABEL)[0][4] is None
    assert K.commit_actions(ICMP_SNAT, 9, 5, LABEL)[0][4] == \
        ("nat", "src", "203.0.113.100", "203.0.113.100", None, None)
    with pytest.raises(ValueError, match="both ways"):
        K.commit_actions(SNAT._replace(rsrc=B), 9, 5, LABEL)


def expected_packet_outs(conns, zone, mark, label):
    """What os-ken builds for the same frames and actions."""
    out = b""
    for c in conns:
        first, other = K.commit_actions(c, zone(c), mark(c), label(c))
        for frame, nat in K.frames(c):
            out += ofmsg.packet_out_bytes(frame, [first if nat else other])
    return out


ALL = [PLAIN, SNAT, DNAT, UDP, ICMP, ICMP_SNAT, PLAIN._replace(state="SYN_SENT"),
       SNAT._replace(state="SYN_RECV", mark=0, label=0), DNAT._replace(zone=65535)]


def test_packet_outs_are_the_bytes_os_ken_builds():
    zone, mark, label = (lambda c: c.zone - 1), (lambda c: c.mark | 0x1000), \
        (lambda c: c.label ^ 7)
    got = K.packet_outs(ALL, zone, mark, label)
    assert got == expected_packet_outs(ALL, zone, mark, label)
    # One message per frame, in order.
    n, offset = 0, 0
    while offset < len(got):
        version, msg_type, length, xid = struct.unpack_from("!BBHI", got, offset)
        assert (version, msg_type, xid) == (4, 13, 0)
        offset += length
        n += 1
    assert n == sum(len(K.frames(c)) for c in ALL)


def test_records_that_cannot_be_re_created_are_skipped_and_reported():
    closed, twice = PLAIN._replace(state="CLOSED"), SNAT._replace(rsrc=B)
    skipped = []
    got = K.packet_outs([closed, PLAIN, twice], lambda c: 1, lambda c: 0, lambda c: 0,
                        skipped=skipped)
    assert skipped == [closed, twice]
    assert got == K.packet_outs([PLAIN], lambda c: 1, lambda c: 0, lambda c: 0)
    assert K.packet_outs([closed], lambda c: 1, lambda c: 0, lambda c: 0) == b""


def test_lazy_commits_find_a_record_by_either_direction_and_commit_it_once():
    skipped = []
    lazy = K.LazyCommits([SNAT, PLAIN._replace(state="CLOSED"), ICMP], skipped)
    assert len(lazy) == 2 and len(skipped) == 1
    assert K.packet_keys(SNAT) == ((6, A, 40001, PEER, 80), (6, PEER, 80, SNAT_IP, 5000))
    own = (lambda c: c.zone, lambda c: c.mark, lambda c: c.label)
    msgs = lazy.take((6, PEER, 80, SNAT_IP, 5000))      # a reply finds it
    assert b"".join(msgs) == expected_packet_outs([SNAT], *own) and len(msgs) == 3
    assert lazy.take((6, A, 40001, PEER, 80)) == []      # committed already
    assert lazy.take((6, A, 1, PEER, 80)) is None        # no such connection
    assert len(lazy) == 1
    # The background commits what is left, once.
    assert b"".join(lazy.chunk(10)) == expected_packet_outs([ICMP], *own)
    assert len(lazy) == 0 and lazy.chunk(10) == [] and lazy.take(ICMP.key) == []


def test_lazy_commits_of_records_sharing_a_packet_key_commit_together():
    # A SNAT connection's entry in the VM's zone and in the SNAT zone: the
    # VM's packet has the original tuple of both.
    vm_side = SNAT._replace(rsrc=PEER, rsport=80, rdst=A, rdport=40001, zone=3)
    lazy = K.LazyCommits([vm_side, SNAT])
    own = (lambda c: c.zone, lambda c: c.mark, lambda c: c.label)
    assert b"".join(lazy.take(SNAT[:5])) == expected_packet_outs([vm_side, SNAT], *own)
    assert len(lazy) == 0


def test_300k_frames_and_100k_connections_of_packet_outs():
    """Three frames per established TCP connection, one packet-out each;
    the speed is measured by the migration benchmark (commit), not asserted
    here."""
    conns = [PLAIN._replace(sport=1024 + i % 60000, rdport=1024 + i % 60000,
                            dst=B + i // 60000, rsrc=B + i // 60000) for i in range(100_000)]
    assert sum(len(K.frames(c)) for c in conns) == 300_000
    data = K.packet_outs(conns, lambda c: 70, lambda c: c.mark, lambda c: c.label)
    sizes = {len(K.packet_outs([c], lambda c: 70, lambda c: c.mark, lambda c: c.label))
             for c in conns[:10]}
    assert len(sizes) == 1 and len(data) == sizes.pop() * len(conns)
