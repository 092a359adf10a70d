"""middlebox.packet: parsing slice-tagged frames and building reject answers."""

import struct

import pytest

from middlebox import packet as PK
from middlebox.packet import MalformedFrame, parse_frame
from test_mb_frames import (ACK, FIN, ICMP, IP_A1, IP_A2, MAC_A1, MAC_A2, PSH, RST, SYN,
                            TCP, UDP, checksums_ok, eth, icmp_frame, ip_int, ipv4,
                            tcp_frame, tcp_segment, tci, udp_frame, word_sum_checksum)


def syn():
    return tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, SYN, seq=5000)


def test_tcp_frame_fields():
    frame = tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, PSH | ACK, seq=7, ack=9,
                      payload=b"abcd")
    pkt = parse_frame(frame, tci(5, 1))
    assert (pkt.tag, pkt.stage) == (5, 1)
    assert (pkt.eth_src, pkt.eth_dst, pkt.ethertype) == (MAC_A1, MAC_A2, 0x0800)
    assert (pkt.proto, pkt.src, pkt.dst) == (TCP, ip_int(IP_A1), ip_int(IP_A2))
    assert (pkt.sport, pkt.dport, pkt.tcp_flags) == (40000, 80, PSH | ACK)
    assert (pkt.seq, pkt.ack, pkt.payload_len) == (7, 9, 4)
    assert pkt.ip_len == 20 + 20 + 4 and pkt.l4 == 34
    assert pkt.is_ip


def test_tci_pcp_and_vid_with_dei_bit():
    pkt = parse_frame(syn(), 0x2000 | 0x1000 | 2047)
    assert (pkt.tag, pkt.stage, pkt.origin_in) == (2047, 1, False)
    # VID bit 11: a check's "the peer opened the connection"
    pkt = parse_frame(syn(), 0x8000 | 0x1000 | 0x800 | 7)
    assert (pkt.tag, pkt.stage, pkt.origin_in) == (7, 4, True)


def test_udp_and_icmp_fields():
    pkt = parse_frame(udp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 5353, 53), 5)
    assert (pkt.proto, pkt.sport, pkt.dport, pkt.payload_len) == (UDP, 5353, 53, 5)
    pkt = parse_frame(icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 8, 0), 5)
    # An echo's id stands in both ports, as conntrack keys it.
    assert (pkt.proto, pkt.sport, pkt.dport) == (ICMP, 1, 1)
    assert (pkt.icmp_type, pkt.icmp_code, pkt.related) == (8, 0, None)
    pkt = parse_frame(icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 3, 3, b"\0\0\0\0"), 5)
    assert (pkt.sport, pkt.dport) == (0, 0)


def test_icmp_error_carries_the_quoted_connection():
    inner = ipv4(IP_A2, IP_A1, UDP, struct.pack("!HHHH", 53, 5353, 8, 0))
    frame = icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 3, 3, rest=b"\0" * 4, payload=inner)
    pkt = parse_frame(frame, 5)
    assert pkt.related == (UDP, ip_int(IP_A2), ip_int(IP_A1), 53, 5353)
    # A quote too short for the ports: no related connection, still parsed.
    frame = icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 3, 3, rest=b"\0" * 4, payload=inner[:21])
    assert parse_frame(frame, 5).related is None


def test_ip_options_and_ethernet_padding():
    seg = tcp_segment(IP_A1, IP_A2, 1, 2, SYN)
    frame = eth(MAC_A2, MAC_A1, 0x0800, ipv4(IP_A1, IP_A2, TCP, seg, options=b"\x01" * 8))
    pkt = parse_frame(frame + b"\0" * 20, 5)
    assert (pkt.ihl, pkt.l4, pkt.sport, pkt.dport, pkt.payload_len) == (28, 42, 1, 2, 0)


def test_non_ip_frames_parse_without_l3():
    pkt = parse_frame(eth("ff:ff:ff:ff:ff:ff", MAC_A1, 0x0806, b"\0" * 28), 5)
    assert pkt.proto is None and not pkt.is_ip and pkt.ethertype == 0x0806


def test_first_fragment_parses_and_later_fragments_are_malformed():
    seg = tcp_segment(IP_A1, IP_A2, 1, 2, SYN)
    first = eth(MAC_A2, MAC_A1, 0x0800, ipv4(IP_A1, IP_A2, TCP, seg, frag=0x2000))
    pkt = parse_frame(first, 5)
    assert pkt.more_fragments and pkt.sport == 1
    later = eth(MAC_A2, MAC_A1, 0x0800, ipv4(IP_A1, IP_A2, TCP, b"x" * 24, frag=0x2003))
    with pytest.raises(MalformedFrame, match="fragment"):
        parse_frame(later, 5)


@pytest.mark.parametrize("mutate, why", [
    (lambda f: f[:10], "Ethernet"),
    (lambda f: f[:30], "IPv4 header"),
    (lambda f: f[:14] + b"\x65" + f[15:], "version"),
    (lambda f: f[:14] + b"\x44" + f[15:], "IHL"),
    (lambda f: f[:16] + struct.pack("!H", 200) + f[18:], "beyond the frame"),
    (lambda f: f[:16] + struct.pack("!H", 10) + f[18:], "shorter"),
    (lambda f: f[:16] + struct.pack("!H", 30) + f[18:], "TCP header"),
    (lambda f: f[:46] + b"\x30" + f[47:], "data offset"),
    (lambda f: f[:46] + b"\xf0" + f[47:], "data offset"),
])
def test_malformed_frames(mutate, why):
    with pytest.raises(MalformedFrame, match=why):
        parse_frame(mutate(syn()), 5)


def test_truncated_udp_and_icmp():
    udp = udp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 1, 2, payload=b"")
    bad = udp[:16] + struct.pack("!H", 24) + udp[18:38]
    with pytest.raises(MalformedFrame, match="UDP"):
        parse_frame(bad, 5)
    icmp = icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, payload=b"")
    bad = icmp[:16] + struct.pack("!H", 24) + icmp[18:38]
    with pytest.raises(MalformedFrame, match="ICMP"):
        parse_frame(bad, 5)


def test_every_cut_of_a_valid_frame_parses_or_raises_malformed_only():
    frame = tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, PSH | ACK, payload=b"data")
    for n in range(len(frame) + 1):
        try:
            parse_frame(frame[:n], 5)
        except MalformedFrame:
            pass
    assert parse_frame(frame, 5).payload_len == 4


# ------------------------------------------------------------ answers

def _parse_answer(frame):
    pkt = parse_frame(frame, 0)
    assert checksums_ok(frame)
    return pkt


def test_rst_answers_a_syn_with_rst_ack():
    frame = syn()
    pkt = parse_frame(frame, 5)
    rst = PK.build_tcp_rst(pkt, frame)
    ans = _parse_answer(rst)
    assert (ans.eth_src, ans.eth_dst) == (MAC_A2, MAC_A1)
    assert (ans.src, ans.dst) == (ip_int(IP_A2), ip_int(IP_A1))
    assert (ans.sport, ans.dport) == (80, 40000)
    assert ans.tcp_flags == RST | ACK
    assert (ans.seq, ans.ack) == (0, 5001)
    assert ans.ip_len == 40 and len(rst) == 54


def test_rst_answers_an_ack_segment_with_seq_from_its_ack():
    frame = tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, PSH | ACK, seq=10, ack=777,
                      payload=b"xyz")
    ans = _parse_answer(PK.build_tcp_rst(parse_frame(frame, 5), frame))
    assert ans.tcp_flags == RST and (ans.seq, ans.ack) == (777, 0)


def test_rst_ack_counts_payload_and_fin_and_wraps():
    frame = tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 1, 2, FIN, seq=0xFFFFFFFF, payload=b"ab")
    ans = _parse_answer(PK.build_tcp_rst(parse_frame(frame, 5), frame))
    assert ans.tcp_flags == RST | ACK and ans.ack == 2      # 0xffffffff + 2 + 1


def test_icmp_unreachable_quotes_header_and_8_bytes():
    frame = udp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 5353, 53, payload=b"0123456789")
    pkt = parse_frame(frame, 5)
    out = PK.build_icmp_unreachable(pkt, frame)
    ans = _parse_answer(out)
    assert (ans.eth_src, ans.eth_dst) == (MAC_A2, MAC_A1)
    assert (ans.proto, ans.src, ans.dst) == (ICMP, ip_int(IP_A2), ip_int(IP_A1))
    assert (ans.icmp_type, ans.icmp_code) == (3, 13)
    quote = out[14 + 20 + 8:]
    assert quote == frame[14:14 + 20 + 8]
    assert ans.related == (UDP, ip_int(IP_A1), ip_int(IP_A2), 5353, 53)
    assert word_sum_checksum(out[34:]) == 0


def test_icmp_unreachable_for_a_short_packet_quotes_what_there_is():
    frame = icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 8, payload=b"")    # 8-byte ICMP
    out = PK.build_icmp_unreachable(parse_frame(frame, 5), frame + b"\0" * 10)  # padded
    assert out[42:] == frame[14:42]
    assert checksums_ok(out)


def test_checksum_matches_the_word_sum():
    for data in (b"", b"\x01", b"\xff\xff", b"\x00\x00", bytes(range(255)), b"\xff" * 7):
        assert PK.checksum(data) == word_sum_checksum(data)
