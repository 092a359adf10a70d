"""Parse the frames mbxd judges and build its reject answers.  Pure: no I/O.

A frame reaches the daemon on the middlebox port WITHOUT its 802.1Q header
(the kernel strips it and reports the TCI in PACKET_AUXDATA), so
``parse_frame`` takes the frame and the TCI separately: VID = slice tag,
PCP = stage (``ryu_apps.pipeline.STAGE_FROM_VM`` / ``STAGE_TO_VM``).

``parse_frame`` raises ``MalformedFrame`` for anything the daemon cannot
judge: truncated Ethernet/IPv4/TCP/UDP/ICMP headers, an IPv4 header with a
bad version or IHL, a total length beyond the frame, and non-first
fragments (they carry no ports, so no rule can be matched against them).
A first fragment (offset 0, MF set) is parsed like any packet.  Frames with
another ethertype parse fine with ``proto = None``.

ICMP errors (destination unreachable, source quench, redirect, time
exceeded, parameter problem) also carry the 5-tuple of the packet they quote
in ``related`` (or None if the quote is too short), so the daemon can pass
them as part of the connection they report on.
"""

import struct

ETH_P_IP = 0x0800
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_CODE_ADMIN_PROHIBITED = 13
# ICMP types that report on another packet (quote its IP header + 8 bytes).
ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))

ETH_LEN = 14
_IP_MIN = 20
_TCP_MIN = 20
_UDP_LEN = 8
_ICMP_LEN = 8
REPLY_TTL = 64

_ETH_TYPE = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBHII")       # ver_ihl tos len id frag ttl proto csum src dst
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBBHHH")         # sport dport seq ack off flags win csum urg
_ICMP_HDR = struct.Struct("!BBH")
_PSEUDO = struct.Struct("!IIBBH")


class MalformedFrame(ValueError):
    """A frame the daemon cannot judge; ``reason`` is one short line."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Packet:
    """What the daemon needs of one frame (all plain ints and strings).

    For a non-IPv4 frame only tag, stage, eth_dst, eth_src and ethertype are
    set; ``proto`` is None.  ``l3`` / ``l4`` are byte offsets in the frame,
    ``payload_len`` the TCP/UDP payload length, ``seq``/``ack`` the TCP
    sequence and acknowledgement numbers.
    """

    __slots__ = ("tag", "stage", "origin_in", "eth_dst", "eth_src", "ethertype", "proto",
                 "src", "dst",
                 "sport", "dport", "tcp_flags", "icmp_type", "icmp_code", "ip_len",
                 "ihl", "l3", "l4", "seq", "ack", "payload_len", "more_fragments",
                 "related")

    def __init__(self, tag, stage, eth_dst, eth_src, ethertype, origin_in=False):
        self.tag = tag
        self.stage = stage
        self.origin_in = origin_in
        self.eth_dst = eth_dst
        self.eth_src = eth_src
        self.ethertype = ethertype
        self.proto = None
        self.src = self.dst = 0
        self.sport = self.dport = 0
        self.tcp_flags = 0
        self.icmp_type = self.icmp_code = None
        self.ip_len = self.ihl = 0
        self.l3 = ETH_LEN
        self.l4 = 0
        self.seq = self.ack = 0
        self.payload_len = 0
        self.more_fragments = False
        self.related = None

    @property
    def is_ip(self):
        return self.proto is not None

    def __repr__(self):
        if self.proto is None:
            return "Packet(tag=%d stage=%d %s>%s type=0x%04x)" % (
                self.tag, self.stage, self.eth_src, self.eth_dst, self.ethertype)
        return "Packet(tag=%d stage=%d proto=%d %s:%d>%s:%d flags=0x%x)" % (
            self.tag, self.stage, self.proto, ip_text(self.src), self.sport,
            ip_text(self.dst), self.dport, self.tcp_flags)


def ip_text(addr):
    return "%d.%d.%d.%d" % (addr >> 24, (addr >> 16) & 255, (addr >> 8) & 255, addr & 255)


def ip_int(text):
    a, b, c, d = (int(x) for x in text.split("."))
    if not all(0 <= x <= 255 for x in (a, b, c, d)):
        raise ValueError("bad IPv4 address %r" % text)
    return a << 24 | b << 16 | c << 8 | d


def parse_frame(frame, tci):
    """Parse an untagged Ethernet frame whose 802.1Q TCI was ``tci`` (VID:
    slice tag in bits 0-10, bit 11 "the peer opened it" on a check; PCP:
    why, ``ryu_apps.pipeline``)."""
    n = len(frame)
    if n < ETH_LEN:
        raise MalformedFrame("truncated Ethernet header (%d bytes)" % n)
    ethertype = _ETH_TYPE.unpack_from(frame, 12)[0]
    pkt = Packet(tci & 0x7FF, (tci >> 13) & 7, frame[0:6].hex(":"), frame[6:12].hex(":"),
                 ethertype, bool(tci & 0x800))
    if ethertype != ETH_P_IP:
        return pkt
    if n < ETH_LEN + _IP_MIN:
        raise MalformedFrame("truncated IPv4 header")
    ver_ihl, _, ip_len, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(frame, ETH_LEN)
    if ver_ihl >> 4 != 4:
        raise MalformedFrame("IPv4 ethertype with IP version %d" % (ver_ihl >> 4))
    ihl = (ver_ihl & 15) * 4
    if ihl < _IP_MIN:
        raise MalformedFrame("bad IHL %d" % (ihl // 4))
    if ip_len < ihl:
        raise MalformedFrame("IPv4 total length %d shorter than its header" % ip_len)
    if ETH_LEN + ip_len > n:
        raise MalformedFrame("IPv4 total length %d beyond the frame" % ip_len)
    if frag & 0x1FFF:
        raise MalformedFrame("non-first fragment")
    pkt.proto = proto
    pkt.src = src
    pkt.dst = dst
    pkt.ip_len = ip_len
    pkt.ihl = ihl
    pkt.more_fragments = bool(frag & 0x2000)
    l4 = ETH_LEN + ihl
    pkt.l4 = l4
    end = ETH_LEN + ip_len
    if proto == IPPROTO_TCP:
        if end - l4 < _TCP_MIN:
            raise MalformedFrame("truncated TCP header")
        sport, dport, seq, ack, off, flags, _, _, _ = _TCP.unpack_from(frame, l4)
        doff = (off >> 4) * 4
        if doff < _TCP_MIN or doff > end - l4:
            raise MalformedFrame("bad TCP data offset %d" % (off >> 4))
        pkt.sport = sport
        pkt.dport = dport
        pkt.seq = seq
        pkt.ack = ack
        pkt.tcp_flags = flags
        pkt.payload_len = end - l4 - doff
    elif proto == IPPROTO_UDP:
        if end - l4 < _UDP_LEN:
            raise MalformedFrame("truncated UDP header")
        pkt.sport, pkt.dport = _PORTS.unpack_from(frame, l4)
        pkt.payload_len = end - l4 - _UDP_LEN
    elif proto == IPPROTO_ICMP:
        if end - l4 < _ICMP_LEN:
            raise MalformedFrame("truncated ICMP header")
        pkt.icmp_type = frame[l4]
        pkt.icmp_code = frame[l4 + 1]
        if pkt.icmp_type in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
            # As conntrack keys an echo: the id in place of both ports.
            pkt.sport = pkt.dport = _PORTS.unpack_from(frame, l4 + 4)[0]
        if pkt.icmp_type in ICMP_ERROR_TYPES:
            pkt.related = _quoted(frame, l4 + _ICMP_LEN, end)
    return pkt


def _quoted(frame, off, end):
    """(proto, src, dst, sport, dport) of the packet an ICMP error quotes, or None."""
    if end - off < _IP_MIN:
        return None
    ver_ihl, _, _, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(frame, off)
    ihl = (ver_ihl & 15) * 4
    if ver_ihl >> 4 != 4 or ihl < _IP_MIN or frag & 0x1FFF:
        return None
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if end - off - ihl < 4:
            return None
        sport, dport = _PORTS.unpack_from(frame, off + ihl)
        return (proto, src, dst, sport, dport)
    return (proto, src, dst, 0, 0)


# ------------------------------------------------------------------ answers

def checksum(data):
    """The Internet checksum (RFC 1071) of ``data``, as an int to pack big-endian."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    # 2**16 == 1 (mod 0xFFFF): the one's complement sum of the 16-bit words
    # is the number mod 0xFFFF, with a non-zero multiple giving 0xFFFF.
    total = int.from_bytes(data, "big")
    s = total % 0xFFFF
    if s == 0 and total:
        s = 0xFFFF
    return ~s & 0xFFFF


def _ipv4_header(src, dst, proto, payload_len):
    hdr = bytearray(_IPV4.pack(0x45, 0, _IP_MIN + payload_len, 0, 0x4000, REPLY_TTL, proto,
                               0, src, dst))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr)


def _eth_reply(pkt):
    return (bytes.fromhex(pkt.eth_src.replace(":", ""))
            + bytes.fromhex(pkt.eth_dst.replace(":", "")) + b"\x08\x00")


def build_tcp_rst(pkt, frame):
    """The RST a TCP stack would answer ``pkt`` with (RFC 793 reset generation).

    If the offending segment has ACK, the RST carries seq = its ack and only
    the RST flag; otherwise seq = 0, ack = its seq + payload length (+1 for
    SYN, +1 for FIN) and flags RST|ACK.  MACs, addresses and ports swapped.
    """
    if pkt.tcp_flags & TCP_ACK:
        seq, ack, flags = pkt.ack, 0, TCP_RST
    else:
        seg_len = pkt.payload_len + (1 if pkt.tcp_flags & TCP_SYN else 0) \
            + (1 if pkt.tcp_flags & TCP_FIN else 0)
        seq, ack, flags = 0, (pkt.seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    tcp = bytearray(_TCP.pack(pkt.dport, pkt.sport, seq, ack, 5 << 4, flags, 0, 0, 0))
    pseudo = _PSEUDO.pack(pkt.dst, pkt.src, 0, IPPROTO_TCP, len(tcp))
    struct.pack_into("!H", tcp, 16, checksum(pseudo + tcp))
    return _eth_reply(pkt) + _ipv4_header(pkt.dst, pkt.src, IPPROTO_TCP, len(tcp)) + bytes(tcp)


def build_icmp_unreachable(pkt, frame):
    """ICMP destination unreachable, administratively prohibited (type 3 code
    13), from the original destination to the sender, quoting the original IP
    header and the first 8 bytes of its payload."""
    quote = bytes(frame[pkt.l3:min(pkt.l4 + 8, pkt.l3 + pkt.ip_len)])
    icmp = bytearray(_ICMP_HDR.pack(ICMP_DEST_UNREACH, ICMP_CODE_ADMIN_PROHIBITED, 0)
                     + b"\0\0\0\0" + quote)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    return _eth_reply(pkt) + _ipv4_header(pkt.dst, pkt.src, IPPROTO_ICMP, len(icmp)) \
        + bytes(icmp)


# ------------------------------------------------------------------ translation

def _mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def build_tcp(eth_src, eth_dst, src, dst, sport, dport, seq, ack, flags, window=1024):
    """A bare TCP segment (no options, no payload) in an Ethernet frame."""
    tcp = bytearray(_TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                              flags, window, 0, 0))
    pseudo = _PSEUDO.pack(src, dst, 0, IPPROTO_TCP, len(tcp))
    struct.pack_into("!H", tcp, 16, checksum(pseudo + tcp))
    return (_mac_bytes(eth_dst) + _mac_bytes(eth_src) + b"\x08\x00"
            + _ipv4_header(src, dst, IPPROTO_TCP, len(tcp)) + bytes(tcp))
