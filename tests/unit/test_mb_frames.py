"""Test helper for the middlebox daemon's unit tests: real frames built with
struct, and an independent checksum check (a plain word-by-word sum, not the
algorithm middlebox.packet uses).  The few tests here check the helper."""

import struct

ETH_IP = 0x0800
TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

MAC_A1 = "02:00:00:00:00:01"
MAC_A2 = "02:00:00:00:00:02"
MAC_A3 = "02:00:00:00:00:03"
MAC_X = "02:00:00:00:00:99"        # in no slice
IP_A1, IP_A2, IP_A3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
IP_OUT = "192.0.2.7"               # a peer outside the tenant's VMs


def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def ip_int(text):
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def ip_bytes(text):
    return struct.pack("!I", ip_int(text))


def tci(tag, stage):
    return stage << 13 | tag


def word_sum_checksum(data):
    """RFC 1071 the slow, obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(dst, src, ethertype, payload):
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, options=b"", frag=0, total_len=None, ident=0x1234):
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(payload) if total_len is None else total_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, 64, proto, 0,
                      ip_bytes(src), ip_bytes(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", word_sum_checksum(hdr)) + hdr[12:]
    return hdr + payload


def _pseudo(src, dst, proto, length):
    return ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, proto, length)


def tcp_segment(src, dst, sport, dport, flags, seq=1000, ack=0, payload=b""):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    csum = word_sum_checksum(_pseudo(src, dst, TCP, len(hdr) + len(payload)) + hdr + payload)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:] + payload


def udp_datagram(src, dst, sport, dport, payload=b"hello"):
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    csum = word_sum_checksum(_pseudo(src, dst, UDP, 8 + len(payload)) + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", csum) + payload


def icmp_message(icmp_type, code=0, rest=b"\0\x01\0\x01", payload=b"ping"):
    body = struct.pack("!BBH", icmp_type, code, 0) + rest + payload
    return body[:2] + struct.pack("!H", word_sum_checksum(body)) + body[4:]


def tcp_frame(src_mac, dst_mac, src, dst, sport, dport, flags, seq=1000, ack=0, payload=b"",
              pad=0):
    return eth(dst_mac, src_mac, ETH_IP,
               ipv4(src, dst, TCP, tcp_segment(src, dst, sport, dport, flags, seq, ack,
                                               payload))) + b"\0" * pad


def udp_frame(src_mac, dst_mac, src, dst, sport, dport, payload=b"hello"):
    return eth(dst_mac, src_mac, ETH_IP,
               ipv4(src, dst, UDP, udp_datagram(src, dst, sport, dport, payload)))


def icmp_frame(src_mac, dst_mac, src, dst, icmp_type=8, code=0, rest=b"\0\x01\0\x01",
               payload=b"ping"):
    return eth(dst_mac, src_mac, ETH_IP, ipv4(src, dst, ICMP,
                                              icmp_message(icmp_type, code, rest, payload)))


def checksums_ok(frame):
    """IPv4 header checksum and TCP/UDP/ICMP checksum of an Ethernet frame are valid."""
    ihl = (frame[14] & 15) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    if word_sum_checksum(frame[14:14 + ihl]) != 0:
        return False
    proto = frame[23]
    l4 = frame[14 + ihl:14 + total]
    if proto == ICMP:
        return word_sum_checksum(l4) == 0
    src = "%d.%d.%d.%d" % tuple(frame[26:30])
    dst = "%d.%d.%d.%d" % tuple(frame[30:34])
    return word_sum_checksum(_pseudo(src, dst, proto, len(l4)) + l4) == 0


# ------------------------------------------------------------ helper self-tests

def test_built_frames_have_valid_checksums():
    for frame in (tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, SYN),
                  tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, ACK, payload=b"abc"),
                  udp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 5000, 53),
                  icmp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2)):
        assert checksums_ok(frame)


def test_a_corrupted_frame_fails_the_check():
    frame = bytearray(tcp_frame(MAC_A1, MAC_A2, IP_A1, IP_A2, 40000, 80, SYN))
    frame[-1] ^= 0x40
    assert not checksums_ok(bytes(frame))
