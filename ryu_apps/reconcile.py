"""Compare the flows a switch should hold with the flows it holds.

The controller recomputes a host's whole flow set on every change, reads back
the flows carrying its cookie, and sends only the difference.  When both sets
are equal (e.g. after a controller restart) the difference is empty and the
switch is not touched.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ryu_apps.ofmodel import Flow, flow_sort_key


@dataclass
class FlowDiff:
    deletes: List[Flow] = field(default_factory=list)    # installed entries to remove
    modifies: List[Flow] = field(default_factory=list)   # desired contents of changed entries
    adds: List[Flow] = field(default_factory=list)       # entries not installed yet
    replaced: Dict[Tuple, Flow] = field(default_factory=dict, repr=False)  # key -> installed

    @property
    def empty(self):
        return not (self.deletes or self.modifies or self.adds)

    def commands(self):
        """(command, flow) pairs for ``ofmsg.to_flow_mod``: deletes, modifies, adds.

        A switch changes only the instructions of an entry on modify, so an
        entry whose cookie or timeouts change is replaced by an 'add' instead.
        The caller sends a barrier after the last one.
        """
        out = [("delete_strict", f) for f in self.deletes]
        for flow in self.modifies:
            old = self.replaced[flow.key]
            same_header = (old.cookie, old.idle_timeout, old.hard_timeout) == \
                (flow.cookie, flow.idle_timeout, flow.hard_timeout)
            out.append(("modify_strict" if same_header else "add", flow))
        out.extend(("add", f) for f in self.adds)
        return out


def diff_flows(desired, installed):
    """The changes that turn the ``installed`` flows into the ``desired`` ones."""
    want = _by_key(desired, "desired")
    have = _by_key(installed, "installed")
    diff = FlowDiff()
    for key, flow in have.items():
        if key not in want:
            diff.deletes.append(flow)
        elif want[key] != flow:
            diff.modifies.append(want[key])
            diff.replaced[key] = flow
    diff.adds = [flow for key, flow in want.items() if key not in have]
    for flows in (diff.deletes, diff.modifies, diff.adds):
        flows.sort(key=flow_sort_key)
    return diff


def apply_diff(installed, diff):
    """The set of flows installed after ``diff`` has been applied to ``installed``."""
    table = {flow.key: flow for flow in installed}
    for flow in diff.deletes:
        table.pop(flow.key, None)
    for flow in diff.modifies + diff.adds:
        table[flow.key] = flow
    return set(table.values())


def _by_key(flows, what):
    out = {}
    for flow in flows:
        if out.setdefault(flow.key, flow) != flow:
            raise ValueError(f"two {what} flows with the same key {flow.key}")
    return out
