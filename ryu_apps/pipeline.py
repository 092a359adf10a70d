"""The br-int OpenFlow pipeline of an mbx host, declared as data.

This module is the one place that says which tables exist, what each one
does, which fields its flows may match and which tables it may jump to.
``check_flow`` holds every computed flow to that declaration, so a pipeline
mistake fails in a unit test instead of on a switch.  docs/pipeline.md
describes the same pipeline for people.

Packet path::

    CLASSIFY ──(from a VM)──> [from-VM middlebox stages] ──> L2_LOOKUP
    CLASSIFY ──(from tunnel)─────────────────────────────> L2_LOOKUP
    L2_LOOKUP ──> output to the tunnel port (VM on another host)
    L2_LOOKUP ──> [to-VM middlebox stages] ──> LOCAL_DELIVERY ──> VM port(s)

The bracketed stages do not exist yet; their table ids are kept free
(``GAPS``) so they can be inserted without renumbering.
"""

from dataclasses import dataclass
from typing import FrozenSet, Tuple

# Every flow mbx's controller installs carries this cookie in the bits of
# COOKIE_MASK.  The controller reads back and deletes only flows with this
# cookie, so another daemon using a different value in those bits can share
# br-int without either removing the other's flows.
COOKIE = 0x4D42580000000000          # "MBX" in the top bytes
COOKIE_MASK = 0xFFFFFF0000000000

# Registers (all start at 0 when a packet enters the pipeline).
REG_FROM_TUNNEL = "reg0"   # 1 if the packet arrived on the tunnel port, else 0
REG_OUT_PORT = "reg1"      # OpenFlow port LOCAL_DELIVERY outputs to, or OUT_PORT_FLOOD
REG_IN_PORT = "reg2"       # OpenFlow port the packet entered br-int on
FROM_TUNNEL = 1
# REG_OUT_PORT value meaning "every local VM port of the logical switch except
# the one the packet came from" (numerically OpenFlow's OFPP_FLOOD).
OUT_PORT_FLOOD = 0xFFFFFFFB

# Metadata holds the logical switch key (its VNI) in its low 24 bits.
METADATA_VNI_MASK = 0x0000000000FFFFFF
MAX_VNI = 0xFFFFFF

# eth_dst with this mask matches every broadcast and multicast address.
MULTICAST_MAC = ("01:00:00:00:00:00", "01:00:00:00:00:00")

# Priorities, highest wins within a table.
PRIO_DROP = 0               # table-miss: drop
PRIO_CLASSIFY = 100         # port security / tunnel key check
PRIO_L2_UNICAST = 200       # known destination MAC
PRIO_L2_FLOOD = 100         # broadcast / multicast destination
PRIO_DELIVER = 100          # one local port, or flood to all local ports
PRIO_DELIVER_FLOOD_EXCEPT = 110   # flood that skips the ingress port


@dataclass(frozen=True)
class Table:
    name: str
    table_id: int
    description: str
    match_fields: FrozenSet[str]
    next_tables: Tuple[str, ...] = ()


CLASSIFY = Table(
    "CLASSIFY", 0,
    "Admit packets from VM ports (port security on eth_src) and from the "
    "tunnel (known VNI only); set the logical switch in metadata.",
    frozenset({"in_port", "eth_src", "tunnel_id"}),
    ("L2_LOOKUP",))
L2_LOOKUP = Table(
    "L2_LOOKUP", 20,
    "Per logical switch, look up eth_dst: local VM -> LOCAL_DELIVERY, remote "
    "VM -> tunnel (not for packets from the tunnel), broadcast -> flood.",
    frozenset({"metadata", "eth_dst", REG_FROM_TUNNEL}),
    ("LOCAL_DELIVERY",))
LOCAL_DELIVERY = Table(
    "LOCAL_DELIVERY", 40,
    "Output to the local VM port(s) chosen in the output-port register.",
    frozenset({"metadata", REG_OUT_PORT, REG_IN_PORT}))

TABLES = (CLASSIFY, L2_LOOKUP, LOCAL_DELIVERY)
BY_NAME = {t.name: t for t in TABLES}
BY_ID = {t.table_id: t for t in TABLES}

# Table ids kept free for middlebox steering stages added later.
GAPS = (
    ("FROM_VM_STEERING", range(1, 20),
     "from-VM direction: after CLASSIFY, before L2_LOOKUP"),
    ("TO_VM_STEERING", range(21, 40),
     "to-VM direction: after L2_LOOKUP, before LOCAL_DELIVERY"),
)

_INSTRUCTION_ORDER = ("apply", "write_metadata", "goto")
_ACTIONS = {"output": 2, "set_field": 3, "push_vlan": 2, "pop_vlan": 1}


def check_flow(flow):
    """Assert that ``flow`` fits the declared pipeline; return it unchanged."""
    table = BY_ID.get(flow.table)
    assert table is not None, f"flow in undeclared table {flow.table}: {flow}"
    assert (flow.cookie & COOKIE_MASK) == COOKIE, f"flow without mbx cookie: {flow}"
    names = [name for name, _ in flow.match]
    assert names == sorted(set(names)), f"match not canonical: {flow}"
    undeclared = set(names) - table.match_fields
    assert not undeclared, f"{table.name} may not match {sorted(undeclared)}: {flow}"
    for name, value in flow.match:
        if isinstance(value, tuple) and isinstance(value[0], int):
            assert (value[0] & ~value[1]) == 0, f"{name} has bits outside its mask: {flow}"
    kinds = [inst[0] for inst in flow.instructions]
    assert all(k in _INSTRUCTION_ORDER for k in kinds), f"unknown instruction: {flow}"
    assert kinds == sorted(set(kinds), key=_INSTRUCTION_ORDER.index), \
        f"instructions out of OpenFlow order: {flow}"
    for inst in flow.instructions:
        if inst[0] == "apply":
            assert inst[1], f"empty apply-actions: {flow}"
            for action in inst[1]:
                assert _ACTIONS.get(action[0]) == len(action), f"bad action {action}: {flow}"
        elif inst[0] == "write_metadata":
            assert (inst[1] & ~inst[2]) == 0, f"metadata bits outside mask: {flow}"
        elif inst[0] == "goto":
            target = BY_ID.get(inst[1])
            assert target is not None and target.name in table.next_tables, \
                f"{table.name} may not goto table {inst[1]}: {flow}"
    return flow
