"""The connection record of the middlebox daemon, and its two formats.  Pure.

Connection state lives in Open vSwitch's conntrack (``middlebox.dataplane``:
one zone per local VM, one per SNAT rule).  ``Conn`` is one conntrack entry
as the daemon reads, moves and re-creates it; it is the only connection
record: the dump parser makes them, the wire format carries them between
hosts, ``middlebox.ctcommit`` turns them back into conntrack entries.

``Conn`` (an immutable NamedTuple; equal records compare and hash equal):

    proto                   6 (TCP), 17 (UDP) or 1 (ICMP)
    src, sport, dst, dport  the original direction's tuple
    rsrc, rsport, rdst, rdport
                            the reply direction's tuple, as conntrack expects
                            the reply: NAT shows only here
    zone, mark, label       the entry's zone, ct_mark (32 bits) and ct_label
                            (128 bits), layout in ``middlebox.dataplane``
    state                   TCP: the state as ``dpctl/dump-conntrack`` prints
                            it (``TCP_STATES``); "" for UDP and ICMP
    timeout                 seconds left (a ``-s`` dump), or None

IPv4 addresses are ints.  ICMP has no ports: ``sport`` and ``rsport`` are the
ICMP id, ``dport`` is ``type << 8 | code`` of the original direction (8 << 8
for an echo request) and ``rdport`` that of the reply (0 for an echo reply).

``parse_dump`` reads ``ovs-appctl dpctl/dump-conntrack [-s] [-m] [zone=Z]``
of Open vSwitch 3.1 (format: ``ct_dpif_format_entry``, checked against a
real ovs-vswitchd).  ``encode`` / ``decode`` are the binary format for
moving records between hosts (layout below); each record travels with the
identity of the slice it belongs to (``Slice``).
"""

import contextlib
import gc
import struct
from typing import NamedTuple, Optional, Tuple

from middlebox.packet import ip_text

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP)

# Open vSwitch's TCP conntrack states (CT_DPIF_TCP_STATES), in its order.  A
# dump without -m prints max(state_orig, state_reply) with SYN_RECV shown as
# ESTABLISHED and FIN_WAIT_2 as TIME_WAIT; the userspace datapath's own
# states never include SYN_RECV (a SYN and its SYN-ACK read back as
# ESTABLISHED, with the 30 s timeout of an unfinished handshake).
TCP_STATES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
              "FIN_WAIT_1", "CLOSING", "LAST_ACK", "FIN_WAIT_2", "TIME_WAIT")
_TCP_STATE_RANK = {name: i for i, name in enumerate(TCP_STATES)}
_COALESCE = {"SYN_RECV": "ESTABLISHED", "FIN_WAIT_2": "TIME_WAIT"}

ROLES = ("vm", "snat")          # the zone of a VM, the zone of an SNAT rule


class Conn(NamedTuple):
    """One conntrack entry (module docstring)."""
    proto: int
    src: int
    sport: int
    dst: int
    dport: int
    rsrc: int
    rsport: int
    rdst: int
    rdport: int
    zone: int = 0
    mark: int = 0
    label: int = 0
    state: str = ""
    timeout: Optional[int] = None

    @property
    def key(self):
        """(proto, src, sport, dst, dport): the original direction."""
        return self[:5]

    @property
    def snat(self):
        """(ip, port) the original source is translated to, or None.  ICMP:
        (ip, None) (Open vSwitch 3.1 translates no ICMP id)."""
        if self.proto == IPPROTO_ICMP:
            return (self.rdst, None) if self.rdst != self.src else None
        if self.rdst != self.src or self.rdport != self.sport:
            return (self.rdst, self.rdport)
        return None

    @property
    def dnat(self):
        """(ip, port) the original destination is translated to, or None.
        ICMP: (ip, None)."""
        if self.proto == IPPROTO_ICMP:
            return (self.rsrc, None) if self.rsrc != self.dst else None
        if self.rsrc != self.dst or self.rsport != self.dport:
            return (self.rsrc, self.rsport)
        return None

    def __str__(self):
        return dump_line(self)


class Slice(NamedTuple):
    """Which slice a record belongs to, on the wire: the chain (middlebox
    names, in order), the role of its zone ("vm": the VM's own zone,
    "snat": an SNAT rule's zone) and the service (32-bit id, 0: none)."""
    chain: Tuple[str, ...]
    role: str
    service: int = 0


# ---------------------------------------------------------------- dump text

_PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp"}
_PROTO_OF = {v: k for k, v in _PROTO_NAMES.items()}
# The other names the dump gives a protocol (others are printed as numbers).
_OTHER_PROTOS = frozenset(("icmpv6", "sctp", "udplite", "dccp", "igmp"))
_U8 = {str(i): i for i in range(256)}
_HEX_DIGITS = "0123456789abcdefABCDEF"
_MAX_U32 = 0xFFFFFFFF
_MAX_LABEL = (1 << 128) - 1


def dump_line(c, stats=None):
    """``c`` as one line of ``dpctl/dump-conntrack`` (with ``timeout=`` when
    ``stats`` is true, or, if it is None, when ``c.timeout`` is known)."""
    if c.proto == IPPROTO_ICMP:
        orig = "id=%d,type=%d,code=%d" % (c.sport, c.dport >> 8, c.dport & 255)
        reply = "id=%d,type=%d,code=%d" % (c.rsport, c.rdport >> 8, c.rdport & 255)
    else:
        orig = "sport=%d,dport=%d" % (c.sport, c.dport)
        reply = "sport=%d,dport=%d" % (c.rsport, c.rdport)
    out = ["%s,orig=(src=%s,dst=%s,%s),reply=(src=%s,dst=%s,%s)"
           % (_PROTO_NAMES[c.proto], ip_text(c.src), ip_text(c.dst), orig,
              ip_text(c.rsrc), ip_text(c.rdst), reply)]
    if c.zone:
        out.append(",zone=%d" % c.zone)
    if stats or (stats is None and c.timeout is not None):
        out.append(",timeout=%d" % (c.timeout or 0))
    if c.mark:
        out.append(",mark=%d" % c.mark)
    if c.label:
        out.append(",labels=0x%x" % c.label)
    if c.state:
        out.append(",protoinfo=(state=%s)" % c.state)
    return "".join(out)


class Dump(list):
    """The ``Conn`` values of a dump, with what was skipped: ``other``
    (lines of other address families or protocols: IPv6, SCTP, GRE, ...)
    and ``malformed`` (lines that could not be read)."""

    def __init__(self, conns=(), other=0, malformed=0):
        super().__init__(conns)
        self.other = other
        self.malformed = malformed


class _Skip(Exception):
    """A line of another family or protocol."""


def _ipv4(text):
    """The int of a dotted quad; _Skip for an IPv6 address."""
    if ":" in text:
        raise _Skip
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(text)
    value = 0
    for p in parts:
        if not p.isdigit() or len(p) > 3:
            raise ValueError(text)
        b = int(p)
        if b > 255:
            raise ValueError(text)
        value = value << 8 | b
    return value


def _uint(text, most):
    if not text.isdigit() or len(text) > 10:
        raise ValueError(text)
    value = int(text)
    if value > most:
        raise ValueError(text)
    return value


def _u16(text):
    return _uint(text, 0xFFFF)


def _u8(text):
    return _uint(text, 0xFF)


def _u32(text):
    return _uint(text, _MAX_U32)


def _label(text):
    if text[:2] != "0x" or not 3 <= len(text) <= 34 or text[2:].strip(_HEX_DIGITS):
        raise ValueError(text)
    return int(text[2:], 16)


class _Memo(dict):
    """Pieces of a dump line ("sport=1001", "dport=80)") -> their value,
    for one key: a piece is checked and converted once, and equal values
    share one int object.  A piece of another key is not found
    (ValueError)."""

    __slots__ = ("prefix", "close", "convert")

    def __init__(self, prefix, convert, close=False):
        super().__init__()
        self.prefix, self.convert, self.close = prefix, convert, close

    def __missing__(self, piece):
        n = len(self.prefix)
        if piece[:n] != self.prefix:
            raise ValueError(piece)
        if self.close:
            if piece[-1:] != ")":
                raise ValueError(piece)
            value = self.convert(piece[n:-1])
        else:
            value = self.convert(piece[n:])
        if len(self) < _MEMO_MAX:
            self[piece] = value
        return value


_MEMO_MAX = 1 << 20


def parse_dump(text):
    """The IPv4 TCP, UDP and ICMP entries of a ``dpctl/dump-conntrack`` text
    (with or without ``-s`` and ``-m``), as a ``Dump`` (a list of ``Conn``,
    in the dump's order).  Never raises on its input: lines of other
    families or protocols are counted in ``.other``, lines it cannot read in
    ``.malformed``.  An entry reads the same with and without -m (-m's two
    TCP states are shown as the plain dump shows them).  Bytes are read as
    UTF-8."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    return parse_lines(text.split("\n"))


def parse_lines(lines):
    """``parse_dump`` of a dump's text already split into lines."""
    with gc_paused():
        return _parse(lines)


def _parse(lines):
    out = Dump()
    append = out.append
    # Lines as Open vSwitch 3.1 prints them take the fast path: pieces at
    # fixed places, each looked up in the memo of its key.  Anything else
    # (counters inside the tuples, another layout, garbage) is read by
    # _parse_line, which says whether it is an entry, another family or
    # malformed.
    src, rsrc, dst = _Memo("orig=(src=", _ipv4), _Memo("reply=(src=", _ipv4), \
        _Memo("dst=", _ipv4)
    sport, dport = _Memo("sport=", _u16), _Memo("dport=", _u16, close=True)
    icmp_id, icmp_type, icmp_code = _Memo("id=", _u16), _Memo("type=", _u8), \
        _Memo("code=", _u8, close=True)
    tails = {}                  # a piece after the tuples -> (index in entry, value)
    tail = tails.get
    new = tuple.__new__
    other = malformed = 0
    for line in lines:
        if not line:
            continue
        try:
            p = line.split(",")
            proto = _PROTO_OF[p[0]]
            if proto == IPPROTO_ICMP:
                entry = [proto, src[p[1]], icmp_id[p[3]], dst[p[2]],
                         icmp_type[p[4]] << 8 | icmp_code[p[5]],
                         rsrc[p[6]], icmp_id[p[8]], dst[p[7]],
                         icmp_type[p[9]] << 8 | icmp_code[p[10]], 0, 0, 0, "", None, "", None]
                n = 11
            else:
                entry = [proto, src[p[1]], sport[p[3]], dst[p[2]], dport[p[4]],
                         rsrc[p[5]], sport[p[7]], dst[p[6]], dport[p[8]],
                         0, 0, 0, "", None, "", None]
                n = 9
            # The Conn's zone, mark, label, state, timeout, then -m's
            # state_reply and a place for what is ignored.
            for x in p[n:]:
                kv = tail(x)
                if kv is None:
                    kv = _tail_piece(x)
                    if len(tails) < _MEMO_MAX:
                        tails[x] = kv
                entry[kv[0]] = kv[1]
            state = entry[12]
            if proto == IPPROTO_TCP:
                if entry[14] or state not in _TCP_STATE_RANK:
                    entry[12] = _tcp_state(state, entry[14])
            elif state:
                raise ValueError
            del entry[14:]
        except (ValueError, IndexError, KeyError, _Skip):
            try:
                entry = _parse_line(line)
            except _Skip:
                other += 1
                continue
            except (ValueError, IndexError, KeyError):
                malformed += 1
                continue
        append(new(Conn, entry))
    out.other = other
    out.malformed = malformed
    return out


def _tcp_state(state, state_reply):
    """The TCP state as the plain dump shows it; with -m's two states,
    Open vSwitch shows the greater, SYN_RECV as ESTABLISHED and FIN_WAIT_2
    as TIME_WAIT.  KeyError for a state it does not have."""
    rank = _TCP_STATE_RANK[state]
    if not state_reply:
        return state
    if _TCP_STATE_RANK[state_reply] > rank:
        state = state_reply
    return _COALESCE.get(state, state)


_IGNORED = (15, None)


def _tail_piece(x):
    """(index, value) of a piece after the tuples ("zone=70", ...): where it
    goes in _parse's entry (the Conn's fields, 14: -m's state_reply, 15:
    nowhere).  Raises ValueError."""
    k, sep, v = x.partition("=")
    if k == "timeout":
        return (13, _u32(v))
    if k == "zone":
        return (9, _u16(v))
    if k == "mark":
        return (10, _u32(v))
    if k == "labels":
        return (11, _label(v))
    if k == "protoinfo":
        if v[:7] == "(state=" and v[-1] == ")":
            return (12, v[7:-1])
        if v[:12] == "(state_orig=":             # -m
            return (12, v[12:])
        return _IGNORED                         # SCTP's
    if k == "state_reply":                      # -m
        return (14, v.rstrip(")"))
    if k in ("dst", "sport", "dport", "src", "packets", "bytes") or not sep or not k:
        raise ValueError(x)                     # a tuple's piece: not the fast layout
    return _IGNORED


def _parse_line(line):
    """The fields of one dump line read by name, in any layout (the slow
    path).  _Skip for another family or protocol, ValueError (or
    IndexError, KeyError) for a line that is not an entry."""
    name, sep, rest = line.partition(",orig=(")
    proto = _PROTO_OF.get(name)
    if proto is None:
        if name in _OTHER_PROTOS or name.isdigit():
            raise _Skip
        raise ValueError(line)
    orig, sep2, rest = rest.partition("),reply=(")
    reply, sep3, rest = rest.partition(")")
    if not (sep and sep2 and sep3) or (rest and rest[0] != ","):
        raise ValueError(line)
    o = dict(x.split("=") for x in orig.split(","))
    r = dict(x.split("=") for x in reply.split(","))
    if proto == IPPROTO_ICMP:
        ports = (_u16(o["id"]), _u8(o["type"]) << 8 | _u8(o["code"]),
                 _u16(r["id"]), _u8(r["type"]) << 8 | _u8(r["code"]))
    else:
        ports = (_u16(o["sport"]), _u16(o["dport"]), _u16(r["sport"]), _u16(r["dport"]))
    entry = [proto, _ipv4(o["src"]), ports[0], _ipv4(o["dst"]), ports[1], _ipv4(r["src"]),
             ports[2], _ipv4(r["dst"]), ports[3], 0, 0, 0, "", None, "", None]
    for x in rest[1:].split(",") if rest else ():
        if x.partition("=")[0] in _TAIL_KEYS:       # not -m's parent=(src=..,dst=..)
            kv = _tail_piece(x)
            entry[kv[0]] = kv[1]
    if proto == IPPROTO_TCP:
        entry[12] = _tcp_state(entry[12], entry[14])
    elif entry[12]:
        raise ValueError(line)
    del entry[14:]
    return entry


_TAIL_KEYS = frozenset(("zone", "timeout", "mark", "labels", "protoinfo", "state_reply"))


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the body: building 100k
    records (tuples of ints and strings, no cycles) otherwise runs it
    hundreds of times and costs a third of the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------- wire format
#
# One part (``encode`` makes one, ``encode_parts`` several; each decodes on
# its own), all integers big-endian:
#
#   header    magic "MBXC", version (1), flags (0), string count (u16),
#             slice count (u16), record count (u32)
#   strings   per string: length (u16), UTF-8 bytes
#   slices    per slice: role (u8: 0 vm, 1 snat), name count (u8), service
#             (u32), then one string index (u16) per name of the chain
#   records   ``RECORD.size`` (54) bytes each: proto (u8), TCP state (u8:
#             0 none, else 1 + its index in TCP_STATES), zone (u16), src,
#             dst (u32), sport, dport (u16), rsrc, rdst (u32), rsport,
#             rdport (u16), mark (u32), label (two u64, high first), timeout
#             plus one (u32, 0: unknown), slice index (u16)
#
# The part ends with its last record: trailing bytes are an error.

MAGIC = b"MBXC"
VERSION = 1
PART_RECORDS = 10000            # records per part of encode_parts
_HEADER = struct.Struct("!4sBBHHI")
_STRLEN = struct.Struct("!H")
_SLICE = struct.Struct("!BBI")
RECORD = struct.Struct("!BBHIIHHIIHHIQQIH")
_MASK64 = (1 << 64) - 1
_STATE_CODE = {(IPPROTO_UDP, ""): 0, (IPPROTO_ICMP, ""): 0}
_STATE_CODE.update(((IPPROTO_TCP, s), i) for i, s in enumerate(TCP_STATES, 1))
_STATE_OF = {(proto, code): state for (proto, state), code in _STATE_CODE.items()}


class WireError(ValueError):
    """Bytes that are not a record part; the message is one line."""


def encode(records, chains):
    """One part: ``records`` (``Conn`` values) and the ``Slice`` each
    belongs to: ``chains`` is either one ``Slice`` (of every record) or a
    sequence of them, one per record.  Raises ValueError (naming the record)
    for a record the format cannot carry."""
    records = records if isinstance(records, (list, tuple)) else list(records)
    strings, slices = {}, {}
    if isinstance(chains, Slice):
        index = _slice_index(chains, strings, slices)
        indexes = None
    else:
        chains = chains if isinstance(chains, (list, tuple)) else list(chains)
        if len(chains) != len(records):
            raise ValueError("encode: %d records but %d slices" % (len(records), len(chains)))
        memo = {}
        indexes = []
        for s in chains:
            i = memo.get(id(s))
            if i is None:
                i = memo[id(s)] = _slice_index(s, strings, slices)
            indexes.append(i)
        index = 0
    if len(records) > _MAX_U32:
        raise ValueError("encode: more than %d records in one part" % _MAX_U32)
    pack, code = RECORD.pack, _STATE_CODE
    try:
        if indexes is None:
            body = [pack(p, code[p, st], z, s, d, sp, dp, rs, rd, rsp, rdp, m,
                         lb >> 64, lb & _MASK64, 0 if t is None else t + 1, index)
                    for (p, s, sp, d, dp, rs, rsp, rd, rdp, z, m, lb, st, t) in records]
        else:
            body = [pack(p, code[p, st], z, s, d, sp, dp, rs, rd, rsp, rdp, m,
                         lb >> 64, lb & _MASK64, 0 if t is None else t + 1, i)
                    for (p, s, sp, d, dp, rs, rsp, rd, rdp, z, m, lb, st, t), i
                    in zip(records, indexes)]
    except (struct.error, KeyError, TypeError, ValueError):
        _bad_record(records)
        raise
    head = [_HEADER.pack(MAGIC, VERSION, 0, len(strings), len(slices), len(records))]
    for text in strings:
        raw = text.encode()
        head.append(_STRLEN.pack(len(raw)) + raw)
    for (chain, role, service) in slices:
        head.append(_SLICE.pack(ROLES.index(role), len(chain), service)
                    + struct.pack("!%dH" % len(chain), *(strings[n] for n in chain)))
    return b"".join(head + body)


def encode_parts(records, chains, size=PART_RECORDS):
    """``encode`` in parts of at most ``size`` records (an iterator of
    bytes, each a part ``decode`` takes on its own): for streaming."""
    records = records if isinstance(records, (list, tuple)) else list(records)
    one = isinstance(chains, Slice)
    if not one:
        chains = chains if isinstance(chains, (list, tuple)) else list(chains)
        if len(chains) != len(records):
            raise ValueError("encode: %d records but %d slices" % (len(records), len(chains)))
    for start in range(0, len(records), size):
        yield encode(records[start:start + size],
                     chains if one else chains[start:start + size])


def _slice_index(s, strings, slices):
    if not isinstance(s, Slice) or not isinstance(s.chain, tuple) or s.role not in ROLES \
            or type(s.service) is not int or not 0 <= s.service <= _MAX_U32 \
            or len(s.chain) > 255:
        raise ValueError("encode: not a Slice of a chain of at most 255 names, role %s "
                         "and a 32-bit service: %r" % ("/".join(ROLES), s))
    i = slices.get(s)
    if i is not None:
        return i
    for name in s.chain:
        if not isinstance(name, str) or len(name.encode()) > 0xFFFF:
            raise ValueError("encode: middlebox name %r is not a string of at most "
                             "65535 bytes" % (name,))
        if name not in strings:
            strings[name] = len(strings)
    if len(strings) > 0xFFFF or len(slices) >= 0xFFFF:
        raise ValueError("encode: more than 65535 names or slices in one part")
    i = slices[s] = len(slices)
    return i


def _bad_record(records):
    """Raise ValueError naming the first record the format cannot carry."""
    for n, c in enumerate(records):
        try:
            if not isinstance(c, Conn):
                raise ValueError("not a Conn")
            if (c.proto, c.state) not in _STATE_CODE:
                raise ValueError("proto %r with TCP state %r" % (c.proto, c.state))
            if not 0 <= c.label <= _MAX_LABEL:
                raise ValueError("label beyond 128 bits")
            if c.timeout is not None and not 0 <= c.timeout < _MAX_U32:
                raise ValueError("timeout %r" % (c.timeout,))
            RECORD.pack(c.proto, 0, c.zone, c.src, c.dst, c.sport, c.dport, c.rsrc, c.rdst,
                        c.rsport, c.rdport, c.mark, c.label >> 64, c.label & _MASK64, 0, 0)
        except (struct.error, TypeError, ValueError) as e:
            raise ValueError("encode: record %d (%r): %s" % (n, c, e)) from None


def decode(data):
    """(conns, slices) of one part: a list of ``Conn`` and, one per record,
    the ``Slice`` it belongs to (records of one slice share the object).
    Anything else raises ``WireError`` with a one-line reason."""
    try:
        data = memoryview(data).cast("B")
    except TypeError:
        raise WireError("not bytes: %s" % type(data).__name__) from None
    size = len(data)
    if size < _HEADER.size:
        raise WireError("truncated header: %d of %d bytes" % (size, _HEADER.size))
    magic, version, flags, n_strings, n_slices, n_records = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad magic %r (not a connection record part)" % bytes(magic))
    if version != VERSION:
        raise WireError("version %d, this host reads version %d" % (version, VERSION))
    if flags:
        raise WireError("unknown flags 0x%02x" % flags)
    pos = _HEADER.size
    strings = []
    for n in range(n_strings):
        if pos + 2 > size:
            raise WireError("truncated in string %d of %d" % (n, n_strings))
        length = _STRLEN.unpack_from(data, pos)[0]
        pos += 2
        if pos + length > size:
            raise WireError("truncated in string %d of %d" % (n, n_strings))
        try:
            strings.append(str(data[pos:pos + length], "utf-8"))
        except UnicodeDecodeError:
            raise WireError("string %d is not UTF-8" % n) from None
        pos += length
    slices = []
    for n in range(n_slices):
        if pos + _SLICE.size > size:
            raise WireError("truncated in slice %d of %d" % (n, n_slices))
        role, n_names, service = _SLICE.unpack_from(data, pos)
        pos += _SLICE.size
        if role >= len(ROLES):
            raise WireError("slice %d: unknown role %d" % (n, role))
        if pos + 2 * n_names > size:
            raise WireError("truncated in slice %d of %d" % (n, n_slices))
        names = struct.unpack_from("!%dH" % n_names, data, pos)
        pos += 2 * n_names
        if any(i >= n_strings for i in names):
            raise WireError("slice %d: string index %d, only %d strings"
                            % (n, max(names), n_strings))
        slices.append(Slice(tuple(strings[i] for i in names), ROLES[role], service))
    body = size - pos
    if body != n_records * RECORD.size:
        raise WireError("%d bytes of records where %d records take %d"
                        % (body, n_records, n_records * RECORD.size))
    with gc_paused():
        return _records(data[pos:], slices)


def _records(data, slices):
    conns, owners = [], []
    add, own = conns.append, owners.append
    new, states = tuple.__new__, _STATE_OF
    try:
        for (p, st, z, s, d, sp, dp, rs, rd, rsp, rdp, m, lh, ll, t, i) \
                in RECORD.iter_unpack(data):
            add(new(Conn, (p, s, sp, d, dp, rs, rsp, rd, rdp, z, m, lh << 64 | ll,
                           states[p, st], t - 1 if t else None)))
            own(slices[i])
    except (KeyError, IndexError):
        _bad_row(RECORD.iter_unpack(data), len(slices))
        raise
    return conns, owners


def _bad_row(rows, n_slices):
    for n, r in enumerate(rows):
        if (r[0], r[1]) not in _STATE_OF:
            if r[0] not in PROTOS:
                raise WireError("record %d: protocol %d is not TCP, UDP or ICMP" % (n, r[0]))
            raise WireError("record %d: state code %d for protocol %d" % (n, r[1], r[0]))
        if r[15] >= n_slices:
            raise WireError("record %d: slice index %d, only %d slices" % (n, r[15], n_slices))


# ---------------------------------------------------------------- removals
#
# A state message names the connections gone since the previous message as a
# JSON list, one item per connection: [chain (list of middlebox names), role,
# service, proto, src, sport, dst, dport] (the ``Slice`` and ``Conn.key``).

def encode_removed(keys):
    """The JSON items of ``(Slice, Conn.key)`` pairs."""
    return [[list(sl.chain), sl.role, sl.service] + list(key) for sl, key in keys]


def decode_removed(items):
    """The ``(Slice, Conn.key)`` pairs of ``encode_removed``'s items;
    anything else raises ``WireError`` with a one-line reason."""
    if not isinstance(items, list):
        raise WireError("malformed removals: %s, not a list" % type(items).__name__)
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 8 or not isinstance(item[0], list) \
                or not all(isinstance(name, str) for name in item[0]) \
                or item[1] not in ROLES \
                or not all(type(v) is int and 0 <= v <= _MAX_U32 for v in item[2:]):
            raise WireError("malformed removal %d: not [chain, role, service, proto, "
                            "src, sport, dst, dport]" % n)
        out.append((Slice(tuple(item[0]), item[1], item[2]), tuple(item[3:])))
    return out
