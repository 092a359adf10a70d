"""Per-VM connection tables and the TCP/UDP/ICMP state machines.  Pure.

Every connection is seen from one VM's point of view: its ``ConnKey`` is
``(proto, vm_ip, vm_port, peer_ip, peer_port)`` whichever way a packet goes,
so a packet of either direction finds its entry with one dict lookup; the
entry's ``origin`` says who opened it: ``"out"`` (the VM) or ``"in"`` (the
peer).  The direction that opened the connection is "orig", the other
"reply" (as in Linux conntrack).  ICMP and protocols without ports use port 0.

States and the timeout each one uses (``Timeouts``; any denied entry uses
``denied``):

  TCP   syn_sent     SYN seen                                     tcp_syn
        syn_recv     SYN-ACK seen (only when every packet is       tcp_syn
                     seen; with offload the SYN-ACK establishes)
        established  the handshake completed                      tcp_established
        fin_wait     one side sent FIN (half-closed)              tcp_established
        closing      both sides sent FIN                          tcp_closing
        closed       RST seen                                     tcp_closing
  UDP (and protocols other than TCP and ICMP)
        unreplied    only the opening direction seen              udp
        replied      the other direction answered                 udp_replied
  ICMP  active                                                    icmp

Only a TCP SYN without ACK (and without RST/FIN) opens a TCP connection;
UDP, ICMP and other protocols open with any packet (``can_open``).
"""

from dataclasses import dataclass, field
from typing import NamedTuple

from middlebox.packet import (IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN,
                             TCP_RST, TCP_SYN)

OUT = "out"
IN = "in"
ALLOW = "allow"
DENY = "deny"

SYN_SENT = "syn_sent"
SYN_RECV = "syn_recv"
ESTABLISHED = "established"
FIN_WAIT = "fin_wait"
CLOSING = "closing"
CLOSED = "closed"
UNREPLIED = "unreplied"
REPLIED = "replied"
ACTIVE = "active"
TCP_STATES = (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSING, CLOSED)

# Bits of ConnEntry.flows: which of the entry's cache flows are (believed to
# be) in the datapath.  (middlebox.core also keeps, in bits 2-3, the flows it
# deleted whose flow-removed message has not arrived yet.)
FLOW_FROM_VM = 1
FLOW_TO_VM = 2
FLOW_BOTH = FLOW_FROM_VM | FLOW_TO_VM

# An entry whose flows are in the datapath is normally removed when the
# datapath reports them gone (idle timeout).  As a safety net against a lost
# flow-removed message it is collected anyway this long after it expired by
# the daemon's own reckoning (which flow stats keep up to date).
OFFLOAD_GRACE = 60.0

MAX_TIMEOUT = 65535            # OpenFlow idle_timeout is 16 bits


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds per protocol and state (docs/middlebox.md)."""
    tcp_syn: int = 30
    tcp_established: int = 3600
    tcp_closing: int = 10
    udp: int = 30
    udp_replied: int = 180
    icmp: int = 30
    denied: int = 10
    # One line per ignored option value (they fell back to the default).
    errors: tuple = field(default=(), compare=False, repr=False)

    FIELDS = ("tcp_syn", "tcp_established", "tcp_closing", "udp", "udp_replied",
              "icmp", "denied")

    @classmethod
    def from_options(cls, options):
        """Read ``timeout-tcp-syn`` ... ``timeout-denied`` from middlebox
        options; a value that is not an integer 1..65535 keeps the default
        and is reported in ``errors``."""
        values, errors = {}, []
        for name in cls.FIELDS:
            key = "timeout-" + name.replace("_", "-")
            raw = (options or {}).get(key)
            if raw is None:
                continue
            try:
                value = int(str(raw).strip())
            except ValueError:
                value = None
            if value is None or not 1 <= value <= MAX_TIMEOUT:
                errors.append('option %s="%s" is not a number of seconds 1-%d: using %d'
                              % (key, raw, MAX_TIMEOUT, getattr(cls, name)))
                continue
            values[name] = value
        return cls(**values, errors=tuple(errors))

    def for_state(self, proto, state, verdict=ALLOW):
        if verdict != ALLOW:
            return self.denied
        if proto == IPPROTO_TCP:
            if state in (ESTABLISHED, FIN_WAIT):
                return self.tcp_established
            if state in (CLOSING, CLOSED):
                return self.tcp_closing
            return self.tcp_syn
        if proto == IPPROTO_ICMP:
            return self.icmp
        return self.udp_replied if state == REPLIED else self.udp


class ConnKey(NamedTuple):
    proto: int
    vm_ip: int
    vm_port: int
    peer_ip: int
    peer_port: int


def key_for(proto, src, dst, sport, dport, vm_is_src):
    """The key of a packet in the table of the VM at its source or destination."""
    if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
        sport = dport = 0
    if vm_is_src:
        return ConnKey(proto, src, sport, dst, dport)
    return ConnKey(proto, dst, dport, src, sport)


def can_open(proto, tcp_flags):
    """May a packet with no entry open a connection?"""
    if proto == IPPROTO_TCP:
        return tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
    return True


def initial_state(proto):
    if proto == IPPROTO_TCP:
        return SYN_SENT
    if proto == IPPROTO_ICMP:
        return ACTIVE
    return UNREPLIED


class ConnEntry:
    """One tracked connection of one VM (small: __slots__, shared strings).

    Counters per direction (``packets_orig``/``bytes_orig``, ``..._reply``)
    include both the packets the daemon saw and those its cache flows
    forwarded (folded in from flow stats and flow-removed messages;
    ``fs_*`` hold the last count read from each flow so nothing is counted
    twice).  ``flows``: FLOW_FROM_VM / FLOW_TO_VM bits of the cache flows in
    the datapath; ``flow_timeout``: the idle timeout they were installed
    with.  ``rule``: uuid of the deciding rule, or "default".
    """

    __slots__ = ("key", "origin", "verdict", "state", "fins", "created", "last_seen",
                 "expires", "packets_orig", "bytes_orig", "packets_reply", "bytes_reply",
                 "flows", "flow_timeout", "fs_from_packets", "fs_from_bytes",
                 "fs_to_packets", "fs_to_bytes", "entry_id", "rule", "vm", "tag", "xlate")

    def __init__(self, key, origin, verdict, now, timeouts, entry_id=0, rule="default",
                 vm="", tag=0, state=None):
        self.key = key
        self.origin = origin
        self.verdict = verdict
        self.state = state or initial_state(key.proto)
        self.fins = 0
        self.created = now
        self.last_seen = now
        self.packets_orig = self.bytes_orig = 0
        self.packets_reply = self.bytes_reply = 0
        self.flows = 0
        self.flow_timeout = 0
        self.fs_from_packets = self.fs_from_bytes = 0
        self.fs_to_packets = self.fs_to_bytes = 0
        self.entry_id = entry_id
        self.rule = rule
        self.vm = vm
        self.tag = tag
        self.xlate = None               # an Xlate when a service translated it
        self.expires = now + timeouts.for_state(key.proto, self.state, verdict)

    # key fields
    proto = property(lambda self: self.key.proto)
    vm_ip = property(lambda self: self.key.vm_ip)
    vm_port = property(lambda self: self.key.vm_port)
    peer_ip = property(lambda self: self.key.peer_ip)
    peer_port = property(lambda self: self.key.peer_port)

    @property
    def offloaded(self):
        return self.flows & FLOW_BOTH != 0

    def is_orig(self, vm_is_src):
        """Is a packet sent by the VM (``vm_is_src``) or to it in the orig direction?"""
        return vm_is_src == (self.origin == OUT)

    def count(self, is_orig, packets, nbytes):
        if is_orig:
            self.packets_orig += packets
            self.bytes_orig += nbytes
        else:
            self.packets_reply += packets
            self.bytes_reply += nbytes

    def refresh(self, now, timeouts):
        """Recompute ``expires`` from ``last_seen`` and the current state."""
        self.expires = self.last_seen + timeouts.for_state(self.key.proto, self.state,
                                                           self.verdict)

    def update(self, is_orig, tcp_flags, nbytes, now, timeouts, syn_ack_establishes=True):
        """A packet of this connection passed through the daemon."""
        self.count(is_orig, 1, nbytes)
        if now > self.last_seen:
            self.last_seen = now
        proto = self.key.proto
        if proto == IPPROTO_TCP:
            self._tcp(is_orig, tcp_flags, syn_ack_establishes)
        elif proto != IPPROTO_ICMP and not is_orig:
            self.state = REPLIED
        self.refresh(now, timeouts)

    def seen_reply(self):
        """The datapath forwarded reply-direction packets (from flow stats)."""
        if self.key.proto != IPPROTO_TCP and self.key.proto != IPPROTO_ICMP:
            self.state = REPLIED

    def _tcp(self, is_orig, flags, syn_ack_establishes):
        if flags & TCP_RST:
            self.state = CLOSED
            return
        state = self.state
        if state == CLOSED:
            return
        if state == SYN_SENT:
            if not is_orig and flags & TCP_SYN:
                if flags & TCP_ACK and syn_ack_establishes:
                    state = ESTABLISHED
                else:
                    state = SYN_RECV
        elif state == SYN_RECV:
            if is_orig and flags & TCP_ACK:
                state = ESTABLISHED
            elif not is_orig and flags & TCP_SYN and flags & TCP_ACK and syn_ack_establishes:
                state = ESTABLISHED
        if flags & TCP_FIN:
            self.fins |= 1 if is_orig else 2
        if self.fins:
            state = CLOSING if self.fins == 3 else FIN_WAIT
        self.state = state

    def __repr__(self):
        k = self.key
        return "ConnEntry(%s %d %d:%d %s %d:%d %s %s #%d)" % (
            self.vm, k.proto, k.vm_ip, k.vm_port, self.origin, k.peer_ip, k.peer_port,
            self.verdict, self.state, self.entry_id)


class Xlate:
    """How a translated connection looks beyond the translation.

    ``kind``: "lb" (the peer the VM addressed, a VIP, is really ``peer_ip``:
    ``peer_port`` with MAC ``peer_mac``), "snat" or "dnat" (the VM's end is
    ``vm_ip``:``vm_port``, an external address, on the far side).  Fields that
    the kind does not translate repeat the entry's own values.  ``vm_mac``:
    the VM's MAC (translated packets toward the VM get it); ``service``: what
    to release when the entry goes (the NAT rule uuid, or the VIP key).
    """

    __slots__ = ("kind", "vm_ip", "vm_port", "peer_ip", "peer_port", "vm_mac", "peer_mac",
                 "service", "home")

    def __init__(self, kind, vm_ip, vm_port, peer_ip, peer_port, vm_mac, peer_mac="",
                 service="", home=None):
        self.kind = kind
        self.vm_ip = vm_ip
        self.vm_port = vm_port
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.vm_mac = vm_mac
        self.peer_mac = peer_mac
        self.service = service
        # SNAT only: the host whose port block ``vm_port`` is from, when that
        # is not the host holding the entry (the VM migrated here): replies
        # come forwarded from there (docs/migration.md), not from EXTERNAL_IN.
        self.home = home

    @property
    def away(self):
        return self.kind == "snat" and self.home is not None

    def as_list(self):
        return [self.kind, self.vm_ip, self.vm_port, self.peer_ip, self.peer_port,
                self.vm_mac, self.peer_mac, self.service, self.home]

    def __repr__(self):
        return "Xlate(%s)" % ",".join(str(x) for x in self.as_list())


class VmTable:
    """The connection table of one VM (in one slice)."""

    __slots__ = ("name", "entries")

    def __init__(self, name):
        self.name = name
        self.entries = {}

    def get(self, key):
        return self.entries.get(key)

    def add(self, entry):
        self.entries[entry.key] = entry

    def remove(self, entry):
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(list(self.entries.values()))

    def expire(self, now, offload_grace=OFFLOAD_GRACE):
        """Remove and return the entries past ``expires`` (entries with flows
        in the datapath only ``offload_grace`` seconds later)."""
        gone = [e for e in self.entries.values()
                if now >= e.expires + (offload_grace if e.flows & FLOW_BOTH else 0.0)]
        for e in gone:
            del self.entries[e.key]
        return gone


# Every state an entry can be in (a state file or a migrated record names one).
KNOWN_STATES = frozenset((SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSING, CLOSED,
                          UNREPLIED, REPLIED, ACTIVE))
