"""Re-create a conntrack entry (``middlebox.conn.Conn``) in a zone of this
host's switch: synthesized packets, each sent by an OpenFlow PACKET_OUT
whose only action is a ``ct(commit)``.  Pure: this module builds bytes.

What Open vSwitch 3.1's userspace conntrack makes of such packets (measured;
tests/integration/test_mb_ctcommit.py checks it):

* TCP ESTABLISHED (and the closing states after it): an ACK in the original
  direction, an ACK in the reply direction, the original ACK again: the
  entry is ESTABLISHED with the 24 h timeout.  (One ACK alone gives
  SYN_SENT for 30 s.)  The connection's own packets then continue on it
  only with TCP sequence checking off (``dpctl/ct-disable-tcp-seq-chk``,
  ``middlebox.vswitch``): the packets carry made-up sequence numbers.
* TCP SYN_SENT: one SYN.  SYN_RECV (a kernel datapath's state; the
  userspace datapath shows a SYN and its SYN-ACK as ESTABLISHED): the SYN,
  then the SYN-ACK.  CLOSED and LISTEN: nothing (the entry is ending).
* UDP: a datagram each way; ICMP: the request, then its reply (echo).
* NAT: the first packet (original direction) is committed with
  ``nat(src=IP:PORT)`` or ``nat(dst=IP:PORT)``, from the record's reply
  tuple: conntrack takes exactly that address and port.  The others are
  committed plainly (``ct(commit,zone=Z)``): they find the entry by its
  original or reply tuple.  mark and label are set by the first commit.
  A record translated both ways (never made by ``middlebox.dataplane``)
  cannot be re-created with one ct action, nor can an ICMP id translation
  (Open vSwitch 3.1 never translates ICMP ids).

Frames are Ethernet + IPv4 + TCP/UDP/ICMP with valid IPv4 and L4 checksums,
packed from per-kind constant prefixes with checksums summed from
precomputed constants (one struct pack per frame).  ``packet_outs`` turns a
batch of records into PACKET_OUT bytes with ``ryu_apps.ofmsg``'s
``PacketOutEncoder`` (one per action shape), byte for byte what
``ofmsg.packet_out_bytes`` builds.
"""

import struct

from middlebox.conn import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, gc_paused
from middlebox.packet import ip_text
from ryu_apps import ofmsg

# Any fixed addresses do: conntrack looks at the IPv4 and L4 headers only.
ORIG_MACS = bytes.fromhex("026d62780002" "026d62780001")     # dst, src
REPLY_MACS = bytes.fromhex("026d62780001" "026d62780002")
TTL = 64
WINDOW = 0xFFFF
SEQ_ORIG = 0x6D620000           # made-up sequence numbers of each direction
SEQ_REPLY = 0x78630000

TCP_FIN, TCP_SYN, TCP_ACK = 0x01, 0x02, 0x10
# TCP states of an ending entry: nothing to re-create.
NOTHING_STATES = frozenset(("CLOSED", "LISTEN"))
# The states whose entry is re-created from three ACKs.
ACK_STATES = frozenset(("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "CLOSING", "LAST_ACK",
                        "FIN_WAIT_2", "TIME_WAIT"))

_FRAME_TCP = struct.Struct("!24sHIIHHIIBBHHH")     # prefix, ip csum, src, dst, TCP
_FRAME_UDP = struct.Struct("!24sHIIHHHH")
_FRAME_ICMP = struct.Struct("!24sHIIBBHHH")
_TCP_LEN, _UDP_LEN, _ICMP_LEN = 20, 8, 8
_DF = 0x4000


def _prefix(macs, proto, l4_len):
    """Ethernet header and the IPv4 header up to its checksum, and the sum
    of those IPv4 words (the checksum adds the addresses)."""
    total = 20 + l4_len
    head = struct.pack("!12sHBBHHHBB", macs, 0x0800, 0x45, 0, total, 0, _DF, TTL, proto)
    return head, 0x4500 + total + _DF + (TTL << 8 | proto)


_TCP_ORIG, _IP_SUM_TCP = _prefix(ORIG_MACS, IPPROTO_TCP, _TCP_LEN)
_TCP_REPLY, _ = _prefix(REPLY_MACS, IPPROTO_TCP, _TCP_LEN)
_UDP_ORIG, _IP_SUM_UDP = _prefix(ORIG_MACS, IPPROTO_UDP, _UDP_LEN)
_UDP_REPLY, _ = _prefix(REPLY_MACS, IPPROTO_UDP, _UDP_LEN)
_ICMP_ORIG, _IP_SUM_ICMP = _prefix(ORIG_MACS, IPPROTO_ICMP, _ICMP_LEN)
_ICMP_REPLY, _ = _prefix(REPLY_MACS, IPPROTO_ICMP, _ICMP_LEN)
# TCP checksum constants: pseudo-header protocol and length, data offset
# (5 words) and window; UDP: protocol, and its length twice.
_TCP_SUM = IPPROTO_TCP + _TCP_LEN + 0x5000 + WINDOW
_UDP_SUM = IPPROTO_UDP + 2 * _UDP_LEN

# Checksums: a 16-bit one's complement sum is the sum of the words modulo
# 0xFFFF (2**16 == 1 mod 0xFFFF, so a 32-bit address counts whole), and the
# checksum that makes the total 0 is its negation modulo 0xFFFF (when the
# words are not all zero; IPv4, TCP and UDP never are).


def _tcp(prefix, src, dst, sport, dport, seq, ack, flags):
    return _FRAME_TCP.pack(prefix, -(_IP_SUM_TCP + src + dst) % 0xFFFF, src, dst, sport, dport,
                           seq, ack, 0x50, flags, WINDOW,
                           -(_TCP_SUM + src + dst + sport + dport + seq + ack + flags)
                           % 0xFFFF, 0)


def _udp(prefix, src, dst, sport, dport):
    csum = -(_UDP_SUM + src + dst + sport + dport) % 0xFFFF
    return _FRAME_UDP.pack(prefix, -(_IP_SUM_UDP + src + dst) % 0xFFFF, src, dst, sport, dport,
                           _UDP_LEN, csum or 0xFFFF)


def _icmp(prefix, src, dst, type_code, ident):
    # All-zero words (an echo reply of id 0) sum to 0, not 0xFFFF: their
    # checksum is 0xFFFF.
    csum = -(type_code + ident) % 0xFFFF if type_code or ident else 0xFFFF
    return _FRAME_ICMP.pack(prefix, -(_IP_SUM_ICMP + src + dst) % 0xFFFF, src, dst,
                            type_code >> 8, type_code & 0xFF, csum, ident, 0)


def frames(conn):
    """The frames that re-create ``conn``, in order, each with ``needs_nat``:
    True for the one to commit with the first-packet actions of
    ``commit_actions`` (NAT, mark, label), False for the others.  Empty for
    a TCP entry in CLOSED or LISTEN; ValueError for a protocol or TCP state
    the record type does not have."""
    (proto, src, sport, dst, dport, rsrc, rsport, rdst, rdport,
     _zone, _mark, _label, state, _timeout) = conn
    if proto == IPPROTO_TCP:
        if state in ACK_STATES:
            orig = _tcp(_TCP_ORIG, src, dst, sport, dport, SEQ_ORIG, SEQ_REPLY, TCP_ACK)
            return [(orig, True),
                    (_tcp(_TCP_REPLY, rsrc, rdst, rsport, rdport, SEQ_REPLY, SEQ_ORIG, TCP_ACK),
                     False),
                    (orig, False)]
        if state == "SYN_SENT":
            return [(_tcp(_TCP_ORIG, src, dst, sport, dport, SEQ_ORIG - 1, 0, TCP_SYN), True)]
        if state == "SYN_RECV":
            return [(_tcp(_TCP_ORIG, src, dst, sport, dport, SEQ_ORIG - 1, 0, TCP_SYN), True),
                    (_tcp(_TCP_REPLY, rsrc, rdst, rsport, rdport, SEQ_REPLY - 1, SEQ_ORIG,
                          TCP_SYN | TCP_ACK), False)]
        if state in NOTHING_STATES:
            return []
        raise ValueError("TCP state %r" % (state,))
    if proto == IPPROTO_UDP:
        return [(_udp(_UDP_ORIG, src, dst, sport, dport), True),
                (_udp(_UDP_REPLY, rsrc, rdst, rsport, rdport), False)]
    if proto == IPPROTO_ICMP:
        return [(_icmp(_ICMP_ORIG, src, dst, dport, sport), True),
                (_icmp(_ICMP_REPLY, rsrc, rdst, rdport, rsport), False)]
    raise ValueError("protocol %r" % (proto,))


_TEXT = {}                      # address int -> dotted quad (bounded below)
_TEXT_MAX = 1 << 16


def _text(ip):
    text = _TEXT.get(ip)
    if text is None:
        if len(_TEXT) >= _TEXT_MAX:
            _TEXT.clear()
        text = _TEXT[ip] = ip_text(ip)
    return text


def nat_action(conn):
    """The ``("nat", ...)`` of ``conn``'s first commit (ofmodel
    conventions), or None.  ValueError for a record translated both ways."""
    s, d = conn.snat, conn.dnat
    if s is not None and d is not None:
        raise ValueError("translated both ways (SNAT and DNAT): one ct action cannot "
                         "re-create it")
    kind, xlate = ("src", s) if s is not None else ("dst", d) if d is not None else (None, None)
    if kind is None:
        return None
    ip, port = xlate
    ip = _text(ip)
    return ("nat", kind, ip, ip, port, port)


def commit_actions(conn, zone, mark, label):
    """(first-packet action, other-packets action) that commit ``conn``'s
    frames in ``zone`` with ``mark`` and ``label`` (ofmodel ct actions)."""
    return (("ct", True, zone, None, nat_action(conn),
             (("set_field", "ct_mark", mark), ("set_field", "ct_label", label))),
            ("ct", True, zone, None, None, ()))


_ENCODERS = {}                  # action shape key -> ofmsg.PacketOutEncoder


def _encoder(action):
    """The encoder of ``(action,)`` packet-outs of this ct action's shape."""
    nat = action[4]
    key = (len(action[5]), None if nat is None else (nat[1], nat[4] is None))
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = ofmsg.PacketOutEncoder((action,))
    return enc.encode_trusted           # commit_actions makes one shape per key


def commit_messages(conn, zone, mark, label):
    """The PACKET_OUT messages (a list of bytes) that re-create ``conn``;
    ValueError if it cannot be."""
    out = frames(conn)
    if not out:
        raise ValueError("TCP state %s: nothing to re-create" % conn.state)
    first, other = commit_actions(conn, zone, mark, label)
    first, other = (first,), (other,)
    enc_first, enc_other = _encoder(first[0]), _encoder(other[0])
    return [enc_first(data, first) if nat else enc_other(data, other) for data, nat in out]


def packet_outs(conns, zone_of=None, mark_of=None, label_of=None, skipped=None):
    """The PACKET_OUT messages (one bytes, xids 0: ``OfConn.send_packet_outs``
    numbers them) that re-create ``conns`` in the zone ``zone_of(conn)``
    with ct_mark ``mark_of(conn)`` and ct_label ``label_of(conn)`` (each by
    default the record's own).  A record that cannot be re-created (TCP
    CLOSED or LISTEN, translated both ways) is left out, and appended to
    ``skipped`` if given."""
    out = []
    extend = out.extend
    with gc_paused():
        for c in conns:
            try:
                extend(commit_messages(c, c.zone if zone_of is None else zone_of(c),
                                       c.mark if mark_of is None else mark_of(c),
                                       c.label if label_of is None else label_of(c)))
            except ValueError:
                if skipped is not None:
                    skipped.append(c)
    return b"".join(out)


def packet_keys(conn):
    """The 5-tuples ``(proto, src, sport, dst, dport)`` a packet of
    ``conn``'s connection has: original and reply direction."""
    return conn[:5], (conn.proto, conn.rsrc, conn.rsport, conn.rdst, conn.rdport)


class LazyCommits:
    """A lazy import's records, committed when their connection's first
    packet comes (``take``) and the rest in the background (``chunk``);
    each record once.  The PACKET_OUT messages are built when a record is
    committed, so indexing costs a dict entry per direction only.  Each
    record committed, by a packet or in the background, counts one in
    ``tally["lazy_commits"]`` (the migration manager's counters)."""

    def __init__(self, conns, skipped=None, tally=None):
        self._order = order = []        # records not yet committed, last first out
        # packet 5-tuple -> its record, or a list of them (an SNAT
        # connection's entries in the VM's zone and in the SNAT zone)
        self._index = index = {}
        get = index.get
        for c in conns:
            if c.proto == IPPROTO_TCP and c.state in NOTHING_STATES:
                if skipped is not None:
                    skipped.append(c)
                continue
            order.append(c)
            for key in packet_keys(c):
                had = get(key)
                if had is None:
                    index[key] = c
                elif type(had) is list:
                    had.append(c)
                else:
                    index[key] = [had, c]
        self._done = set()              # records committed
        self._left = len(self._order)
        self._skipped = skipped         # and those that cannot be (translated both ways)
        self._tally = tally if tally is not None else {"lazy_commits": 0}

    def __len__(self):
        """Records not committed yet."""
        return self._left

    def _commit(self, conns, out):
        for c in conns:
            if c in self._done:
                continue
            self._done.add(c)
            self._left -= 1
            self._tally["lazy_commits"] += 1
            try:
                out.extend(commit_messages(c, c.zone, c.mark, c.label))
            except ValueError:
                if self._skipped is not None:
                    self._skipped.append(c)

    def take(self, key):
        """The messages that commit the records of the connection a packet
        with 5-tuple ``key`` belongs to: empty if they are committed
        already, None if no record has that key."""
        conns = self._index.get(key)
        if conns is None:
            return None
        out = []
        with gc_paused():
            self._commit(conns if type(conns) is list else (conns,), out)
        return out

    def chunk(self, n):
        """The messages that commit up to ``n`` more records."""
        out, order = [], self._order
        with gc_paused():
            while order and n > 0:
                c = order.pop()
                if c not in self._done:
                    self._commit((c,), out)
                    n -= 1
        return out
