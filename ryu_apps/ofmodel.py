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
    ``("apply", (action, ...))``
    ``("write_metadata", value, mask)``
    ``("goto", table_id)``
  where an action is one of
    ``("output", port)``
    ``("set_field", field, value)``
    ``("push_vlan", ethertype)``
    ``("pop_vlan",)``
"""

from dataclasses import dataclass
from typing import Any, Tuple


def canon_match(**fields) -> Tuple[Tuple[str, Any], ...]:
    """Build a canonical match tuple from keyword fields (None values dropped)."""
    out = []
    for name, value in fields.items():
        if value is None:
            continue
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
