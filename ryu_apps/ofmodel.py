"""A canonical, hashable form of an OpenFlow 1.3 flow entry.

Everything that computes, compares or simulates flows works on ``Flow`` values;
only ``ryu_apps.ofmsg`` converts them to and from os-ken messages.  Two flows
are the same entry on a switch when their ``key`` (table, priority, match) is
equal; they are identical when, in addition, cookie and instructions are equal.

Conventions (so a flow computed here compares equal to one read back from OVS):

* match: a tuple of ``(field, value)`` pairs sorted by field name.  Field names
  are os-ken OXM names (``in_port``, ``eth_src``, ``eth_dst``, ``eth_type``,
  ``tunnel_id``, ``metadata``, ``reg0``..``reg7``, ...).  A value is an int, or a
  lower-case string for MAC ("aa:bb:...") and dotted IPv4 addresses; a masked
  value is a ``(value, mask)`` tuple of the same types.
* instructions: a tuple, in OpenFlow 1.3 execution order, of
    ``("meter", meter_id)``: the packet passes meter ``meter_id`` (a
      ``Meter``) first and is dropped over its rate
    ``("apply", (action, ...))``
    ``("write_metadata", value, mask)``
    ``("goto", table_id)``
  where an action is one of
    ``("output", port)``
    ``("set_field", field, value)``
    ``("push_vlan", ethertype)``
    ``("pop_vlan",)``
    ``("group", group_id)``
    ``("load", field, value, ofs, nbits)``: Nicira reg_load of ``value``
      into bits ``ofs``..``ofs + nbits - 1`` of ``field`` (``reg0``..``reg7``,
      ``ct_mark``, ``eth_dst``...: any OXM/NXM name os-ken knows).  The one
      spelling that is not accepted is a load of all of in_port (0, 16): that
      is ``("set_field", "in_port", port)``, which is how it reads back.
    ``("move", src_field, src_ofs, dst_field, dst_ofs, nbits)``: reg_move.
    ``("resubmit", table)``: resubmit to ``table`` with the packet's in_port.
    ``("conjunction", conj_id, clause, n_clauses)``: clause numbered 1..n,
      as ovs-ofctl's ``conjunction(id,k/n)`` (the wire carries k - 1).
    ``("ct_clear",)``
    ``("ct", commit, zone, table, nat, exec_actions)``: Nicira ct.
      ``commit`` a bool; ``zone`` an int (the immediate zone 0-65535) or a
      register name ``"reg0"``..``"reg7"`` meaning its bits 0..15; ``table``
      an int (recirculate there) or None; ``nat`` None, ``("nat",)`` (bare
      nat: translate as the existing entry says) or ``("nat", kind, ip_min,
      ip_max, port_min, port_max)`` with kind ``"src"`` or ``"dst"``, dotted
      IPv4 strings (``ip_max == ip_min``: one address) and ports both ints
      (``port_max == port_min``: one port) or both None (no port range);
      ``exec_actions`` a tuple of ``("set_field", "ct_mark", int)``,
      ``("set_field", "ct_label", int)`` (128 bits) and ``("load", "ct_mark",
      value, ofs, nbits)``.

Match fields beyond the OXM basics (all os-ken names): ``ct_state`` (an int,
or ``(value, mask)`` of the ``CT_*`` bits below; ``ct_state_match`` builds
one), ``ct_mark``, ``ct_label`` (128-bit int), ``ct_zone``, ``conj_id``,
``icmpv4_type``, ``icmpv4_code``, ``tcp_flags``.  A mask that covers the whole
field is the exact value: ``canon_match`` drops it for these fields as the
switch does (``ct_mark=(7, 0xffffffff)`` is ``ct_mark=7``).  Open vSwitch
keeps 8 bits of ct_state and reads an exact ct_state back masked with 0xff,
so ``canon_match`` takes ct_state masks modulo 0xff and ``(0x22, 0xff)`` is
the exact ``0x22``.

``Group`` is a group-table entry (OpenFlow 1.3 group-mod / group-desc);
``Meter`` a meter-table entry (meter-mod / meter-config).
"""

from dataclasses import dataclass
from typing import Any, Tuple

# ct_state bits (Open vSwitch's CS_*, os-ken's ct_state values).
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20
CT_SNAT = 0x40
CT_DNAT = 0x80
# ct_state is 32 bits on the wire, but Open vSwitch keeps only these 8: it
# reads an exact ct_state back with the mask 0xff.
_CT_STATE_BITS = 0xFF

# Widths (bits) of the match fields whose full mask canon_match drops.
_FULL_MASK_BITS = {"ct_mark": 32, "ct_label": 128, "ct_zone": 16, "conj_id": 32,
                   "tcp_flags": 16}


def ct_state_match(on=0, off=0):
    """The ct_state match of ovs-ofctl's ``+flag`` (``on``) and ``-flag``
    (``off``) bits, e.g. ``ct_state_match(CT_TRK | CT_EST, CT_NEW)`` for
    ``+trk+est-new``: ``(value, mask)``."""
    if on & off:
        raise ValueError("ct_state bits both set and clear: %#x" % (on & off))
    return (on, on | off)


def canon_match(**fields) -> Tuple[Tuple[str, Any], ...]:
    """Build a canonical match tuple from keyword fields (None values dropped)."""
    out = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, tuple) and len(value) == 2:
            if name == "ct_state":
                value = (value[0], value[1] & _CT_STATE_BITS)
                if value[1] == _CT_STATE_BITS:
                    value = value[0]
            elif name in _FULL_MASK_BITS and value[1] == (1 << _FULL_MASK_BITS[name]) - 1:
                value = value[0]
        out.append((name, _canon_value(value)))
    return tuple(sorted(out))


def _canon_value(value):
    if isinstance(value, tuple):
        return tuple(_canon_value(v) for v in value)
    if isinstance(value, str):
        return value.lower()
    return value


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: Tuple[Tuple[str, Any], ...]
    instructions: Tuple[Any, ...]
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0

    @property
    def key(self):
        return (self.table, self.priority, self.match)

    def match_dict(self):
        return dict(self.match)


def flow_sort_key(flow):
    """A total order on flows: table, then highest priority first, then match.

    Match values of one field may be an int in one flow and a (value, mask)
    tuple in another, which Python cannot compare, so the match is ordered by
    its text.
    """
    return (flow.table, -flow.priority, repr(flow.match), repr(flow.instructions))


# "fast_failover" only reads back (a group another program installed): the
# model has no watch ports, so ofmsg installs the other three.
GROUP_TYPES = ("all", "select", "indirect", "fast_failover")


@dataclass(frozen=True)
class Group:
    """A group-table entry.

    ``type`` is "all", "select" or "indirect" ("fast_failover" only in a
    group read back from a switch); ``buckets`` a tuple of
    ``(weight, actions)`` with ``actions`` a tuple of apply-action tuples
    (the Flow conventions above).  A select group's weights are relative (a
    bucket of weight 0 is never chosen); all and indirect groups take weight
    0.  An indirect group has exactly one bucket.

    No selection method: Open vSwitch carries ``selection_method`` (hash of
    chosen fields) only as an OpenFlow 1.5 group property.  Over OpenFlow
    1.3, ovs-ofctl drops it silently (tested with OVS 3.1: the OpenFlow 1.3
    GROUP_MOD on the wire has no room for it) and OVS picks buckets with its
    default method.
    """
    group_id: int
    type: str
    buckets: Tuple[Tuple[int, Tuple[Any, ...]], ...]

    def __post_init__(self):
        if self.type not in GROUP_TYPES:
            raise ValueError("group %d: type must be one of %s, not %r"
                             % (self.group_id, ", ".join(GROUP_TYPES), self.type))


@dataclass(frozen=True)
class Meter:
    """A meter with one drop band: packets over ``rate`` a second are
    dropped, after a burst of ``burst`` packets (OpenFlow 1.3 meter-mod with
    OFPMF_PKTPS | OFPMF_BURST | OFPMF_STATS, as ``ovs-ofctl add-meter
    meter=ID,pktps,burst,stats,band=type=drop,rate=R,burst_size=B``)."""
    meter_id: int
    rate: int
    burst: int
