"""The match language of firewall rules and steering policies.

One home for it: ``mbxctl`` validates with it, the controller compiles
steering policies to OpenFlow matches with it, and ``mbxd`` evaluates rules
with it.  Pure: no I/O.

Syntax: terms separated by spaces and/or commas, each ``FIELD=VALUE``; every
field at most once; the empty match (or ``any``) matches every IPv4 packet.

  proto=tcp|udp|icmp|any|0-255
  src=CIDR|ADDRESS|$SET      dst=CIDR|ADDRESS|$SET
  sport=PORT|LOW-HIGH        dport=PORT|LOW-HIGH     (need proto=tcp or udp)

``$SET`` names an address set; its addresses are looked up when the match is
used, so changing the set changes what the match selects.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import FrozenSet, Mapping, Optional, Sequence, Tuple

from ovsdb.errors import MbxError

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
FIELDS = ("proto", "src", "sport", "dst", "dport")
_SET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Addr:
    """A CIDR (``network`` set) or an address set reference (``set_name`` set)."""
    network: Optional[ipaddress.IPv4Network] = None
    set_name: Optional[str] = None

    def __str__(self):
        if self.set_name is not None:
            return "$" + self.set_name
        if self.network.prefixlen == 32:
            return str(self.network.network_address)
        return str(self.network)


@dataclass(frozen=True)
class Match:
    proto: Optional[int] = None
    src: Optional[Addr] = None
    sport: Optional[Tuple[int, int]] = None
    dst: Optional[Addr] = None
    dport: Optional[Tuple[int, int]] = None

    @property
    def text(self):
        """The canonical text: parse_match(m.text) == m."""
        terms = []
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "proto":
                value = PROTOCOL_NAMES.get(value, str(value))
            elif name in ("sport", "dport"):
                value = str(value[0]) if value[0] == value[1] else "%d-%d" % value
            terms.append("%s=%s" % (name, value))
        return " ".join(terms) if terms else "any"

    @property
    def address_sets(self) -> FrozenSet[str]:
        return frozenset(a.set_name for a in (self.src, self.dst)
                         if a is not None and a.set_name is not None)

    def reversed(self):
        """The same match seen from the other end of the connection."""
        return Match(self.proto, self.dst, self.dport, self.src, self.sport)


def _bad(text, why):
    return MbxError('bad match "%s": %s' % (text, why))


def parse_addr(value, what="address"):
    """A CIDR, a single IPv4 address or ``$SET``; raises MbxError naming the problem."""
    if value.startswith("$"):
        name = value[1:]
        if not _SET_NAME.match(name):
            raise MbxError('bad address set name "%s" (1-64 of A-Z a-z 0-9 _ . -)' % name)
        return Addr(set_name=name)
    try:
        return Addr(network=ipaddress.IPv4Network(value, strict=True))
    except ValueError:
        raise MbxError('bad %s "%s": expected an IPv4 address or CIDR with no host bits '
                       'set, e.g. 10.0.0.0/24' % (what, value)) from None


def parse_network(value):
    """One member of an address set: IPv4 address or CIDR."""
    addr = parse_addr(value)
    if addr.set_name is not None:
        raise MbxError('bad address "%s": address sets cannot contain other sets' % value)
    return addr.network


def _parse_ports(text, name, value):
    m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", value)
    if not m:
        raise _bad(text, '%s "%s" is not a port or LOW-HIGH range' % (name, value))
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) is not None else low
    if not (0 <= low <= 65535 and 0 <= high <= 65535):
        raise _bad(text, "%s %s out of range 0-65535" % (name, value))
    if low > high:
        raise _bad(text, "%s range %s is empty (low > high)" % (name, value))
    return (low, high)


def parse_match(text):
    """Parse a match; raise MbxError with one line that says what is wrong."""
    if not isinstance(text, str):
        raise _bad(text, "not a string")
    terms = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if terms == ["any"]:
        terms = []
    values = {}
    for term in terms:
        name, sep, value = term.partition("=")
        if not sep or not value:
            raise _bad(text, '"%s" is not FIELD=VALUE' % term)
        if name not in FIELDS:
            raise _bad(text, 'unknown field "%s" (fields: %s)' % (name, ", ".join(FIELDS)))
        if name in values:
            raise _bad(text, 'field "%s" given twice' % name)
        values[name] = value
    proto = None
    if "proto" in values:
        raw = values["proto"]
        if raw in PROTOCOLS:
            proto = PROTOCOLS[raw]
        elif raw == "any":
            proto = None
        elif re.fullmatch("[0-9]{1,3}", raw) and int(raw) <= 255:
            proto = int(raw)
        else:
            raise _bad(text, 'proto "%s" (expected tcp, udp, icmp, any or 0-255)' % raw)
    try:
        src = parse_addr(values["src"], "src") if "src" in values else None
        dst = parse_addr(values["dst"], "dst") if "dst" in values else None
    except MbxError as err:
        raise _bad(text, str(err)) from None
    sport = _parse_ports(text, "sport", values["sport"]) if "sport" in values else None
    dport = _parse_ports(text, "dport", values["dport"]) if "dport" in values else None
    if (sport or dport) and proto not in (6, 17):
        raise _bad(text, "sport/dport need proto=tcp or proto=udp")
    return Match(proto, src, sport, dst, dport)


# --------------------------------------------------------------- evaluation

def _net_pair(network):
    return (int(network.network_address), int(network.netmask))


def resolve(addr, sets):
    """The (address, netmask) int pairs ``addr`` stands for.

    ``sets`` maps set name -> iterable of networks (or strings).  An unknown
    set resolves to nothing, so a match that names it selects no packet.
    """
    if addr is None:
        return None
    if addr.set_name is None:
        return (_net_pair(addr.network),)
    out = []
    for member in sets.get(addr.set_name, ()):
        if isinstance(member, str):
            member = parse_network(member)
        out.append(_net_pair(member))
    return tuple(out)


@dataclass(frozen=True)
class CompiledMatch:
    """A match with its address sets resolved, for fast per-packet checks."""
    proto: Optional[int]
    src: Optional[Tuple[Tuple[int, int], ...]]
    sport: Optional[Tuple[int, int]]
    dst: Optional[Tuple[Tuple[int, int], ...]]
    dport: Optional[Tuple[int, int]]

    def matches(self, proto, src, dst, sport=0, dport=0):
        """``src``/``dst`` are IPv4 addresses as ints."""
        if self.proto is not None and proto != self.proto:
            return False
        if self.src is not None and not any((src & m) == a for a, m in self.src):
            return False
        if self.dst is not None and not any((dst & m) == a for a, m in self.dst):
            return False
        if self.sport is not None and not self.sport[0] <= sport <= self.sport[1]:
            return False
        if self.dport is not None and not self.dport[0] <= dport <= self.dport[1]:
            return False
        return True


def compile_match(match, sets: Mapping[str, Sequence]):
    return CompiledMatch(match.proto, resolve(match.src, sets), match.sport,
                         resolve(match.dst, sets), match.dport)


def port_masks(low, high):
    """The fewest (value, mask) pairs over 16 bits that together cover low..high."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def openflow_dimensions(match, sets):
    """``match`` as OpenFlow 1.3 match fields: ``(base, dimensions)``, where
    ``base`` holds the fields every packet it selects has (eth_type,
    ip_proto) and each dimension (source, destination, source ports,
    destination ports) is a list of alternative field dicts; the packets
    selected are those with the base fields and one alternative of every
    dimension.  None when an address set is empty (nothing is selected)."""
    base = {"eth_type": 0x0800}
    if match.proto is not None:
        base["ip_proto"] = match.proto
    dims = []
    for field, addr in (("ipv4_src", match.src), ("ipv4_dst", match.dst)):
        pairs = resolve(addr, sets)
        if pairs is None:
            continue
        if not pairs:
            return None
        dims.append([{field: _oxm_addr(a, m)} for a, m in pairs])
    l4 = PROTOCOL_NAMES.get(match.proto)
    for suffix, ports in (("_src", match.sport), ("_dst", match.dport)):
        if ports is None or ports == (0, 65535):
            continue
        dims.append([{l4 + suffix: (v if m == 0xFFFF else (v, m))}
                     for v, m in port_masks(*ports)])
    return base, dims


def openflow_matches(match, sets):
    """The OpenFlow 1.3 matches (dicts of os-ken OXM fields) that together
    select exactly the IPv4 packets ``match`` selects, expanding address sets
    and port ranges.  An empty address set yields no matches at all."""
    got = openflow_dimensions(match, sets)
    if got is None:
        return []
    base, dims = got
    options = [base]
    for alternatives in dims:
        options = [dict(o, **a) for o in options for a in alternatives]
    return options


def _oxm_addr(addr, mask):
    text = str(ipaddress.IPv4Address(addr))
    if mask == 0xFFFFFFFF:
        return text
    return (text, str(ipaddress.IPv4Address(mask)))
