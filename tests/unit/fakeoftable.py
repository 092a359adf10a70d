"""A small OpenFlow 1.3 flow table simulator over ``Flow`` lists.

Tests ask behavioural questions ("is this packet output on the tunnel port
with tunnel_id 1001?") instead of comparing flow lists.  Semantics follow
OpenFlow 1.3 as Open vSwitch implements it:

* processing starts in table 0; in each table the highest-priority matching
  flow wins (two matching flows of equal priority are a pipeline bug and
  raise); no match means drop;
* a match on a field the packet lacks fails, except metadata and registers,
  which start at 0;
* apply-actions run in order (output snapshots the packet at that point),
  then write-metadata, then goto (only to a later table);
* output to the packet's own in_port is silently dropped, as on a switch.
"""

import ipaddress
from dataclasses import dataclass
from typing import Any, Tuple

OFPP_IN_PORT = 0xFFFFFFF8

# Pipeline-internal state: never visible on an output packet.
_INTERNAL = {"metadata"} | {f"reg{i}" for i in range(8)}


@dataclass(frozen=True)
class Output:
    port: int
    fields: Tuple[Tuple[str, Any], ...]   # sorted packet fields at output time

    def get(self, name, default=None):
        return dict(self.fields).get(name, default)


class FakeOFTable:

    def __init__(self, flows):
        self.tables = {}
        for flow in flows:
            self.tables.setdefault(flow.table, []).append(flow)
        for flows_of_table in self.tables.values():
            flows_of_table.sort(key=lambda f: -f.priority)

    def lookup(self, packet, include_ingress=False):
        """Outputs of ``packet`` (a dict of fields); [] if it is dropped.

        With ``include_ingress``, outputs to the packet's in_port (which a
        switch drops) are listed too, to check that the pipeline never tries.
        """
        state = dict(packet)
        state.setdefault("metadata", 0)
        outputs = []
        table_id = 0
        while table_id is not None:
            flow = self._match(table_id, state)
            if flow is None:
                break
            table_id = self._execute(flow, state, outputs, include_ingress)
        return outputs

    def is_output(self, packet, port, **fields):
        """True if ``packet`` leaves on ``port`` with all of ``fields`` set as given."""
        return any(out.port == port and all(_same(out.get(k), v) for k, v in fields.items())
                   for out in self.lookup(packet))

    def output_ports(self, packet):
        return sorted(out.port for out in self.lookup(packet))

    def _match(self, table_id, state):
        hits = [f for f in self.tables.get(table_id, []) if _matches(f.match, state)]
        if not hits:
            return None
        tied = [f for f in hits if f.priority == hits[0].priority]
        assert len(tied) == 1, f"ambiguous match in table {table_id}: {tied}"
        return hits[0]

    @staticmethod
    def _execute(flow, state, outputs, include_ingress):
        next_table = None
        for inst in flow.instructions:
            if inst[0] == "apply":
                for action in inst[1]:
                    _act(action, state, outputs, include_ingress)
            elif inst[0] == "write_metadata":
                _, value, mask = inst
                state["metadata"] = (state["metadata"] & ~mask) | (value & mask)
            elif inst[0] == "goto":
                assert inst[1] > flow.table, f"goto backwards: {flow}"
                next_table = inst[1]
            else:
                raise AssertionError(f"unknown instruction {inst}")
        return next_table


def _act(action, state, outputs, include_ingress):
    kind = action[0]
    if kind == "output":
        if action[1] == OFPP_IN_PORT:
            outputs.append(Output(state["in_port"], tuple(sorted(
                (k, v) for k, v in state.items() if k not in _INTERNAL))))
        elif action[1] != state.get("in_port") or include_ingress:
            visible = {k: v for k, v in state.items() if k not in _INTERNAL}
            outputs.append(Output(action[1], tuple(sorted(visible.items()))))
    elif kind == "set_field":
        state[action[1]] = action[2]
    elif kind == "push_vlan":
        state["vlan_vid"] = 0x1000          # tag present, VLAN id 0
    elif kind == "pop_vlan":
        state.pop("vlan_vid", None)
        state.pop("vlan_pcp", None)
    else:
        raise AssertionError(f"unknown action {action}")


def _matches(match, state):
    for name, want in match:
        have = state.get(name, 0 if name in _INTERNAL else None)
        if have is None:
            return False
        value, mask = want if isinstance(want, tuple) else (want, None)
        have, value = _as_int(have), _as_int(value)
        if mask is None:
            if have != value:
                return False
        elif have & _as_int(mask) != value & _as_int(mask):
            return False
    return True


def _same(have, want):
    return have is not None and _as_int(have) == _as_int(want)


def _as_int(value):
    """Ints as they are; MAC and IPv4 strings as the integers they denote."""
    if isinstance(value, int):
        return value
    if ":" in value:
        return int(value.replace(":", ""), 16)
    return int(ipaddress.IPv4Address(value))
