"""Compare the flows a switch should hold with the flows it holds.

The controller reads back the flows carrying its cookie when a switch
connects and sends only the difference to the host's flows (``diff_flows``,
``diff_tables``): when both sets are equal (e.g. after a controller restart)
the difference is empty and the switch is not touched.  After that it
computes again only the parts of a host's flows that a change touches
(``flows.host_parts``) and compares only those (``diff_parts``).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ryu_apps.ofmodel import Flow


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
    return diff_tables(_by_key(desired, "desired"), _by_key(installed, "installed"))


def diff_tables(want, have):
    """``diff_flows`` of two {Flow.key: Flow} tables."""
    diff = FlowDiff()
    for key, flow in have.items():
        other = want.get(key)
        if other is None:
            diff.deletes.append(flow)
        elif other is not flow and other != flow:
            diff.modifies.append(other)
            diff.replaced[key] = flow
    diff.adds = [flow for key, flow in want.items() if key not in have]
    return _sorted(diff)


def diff_parts(installed, old, new):
    """The changes that turn ``installed`` (a switch's flows: the union of
    its host's parts, each key in one part only) into the same union with
    the parts ``old`` (their {Flow.key: Flow} tables as installed) replaced
    by ``new`` (in part order).  None when that union is not decided by
    these parts alone: a key of ``new`` is in another part, or in two of
    ``new``."""
    gone = {}
    for flows in old:
        gone.update(flows)
    want = {}
    for flows in new:
        for key, flow in flows.items():
            if want.setdefault(key, flow) is not flow:
                return None
            if key in installed and key not in gone:
                return None
    diff = FlowDiff()
    for key in gone:
        if key not in want and key in installed:
            diff.deletes.append(installed[key])
    for key, flow in want.items():
        have = installed.get(key)
        if have is None:
            diff.adds.append(flow)
        elif have is not flow and have != flow:
            diff.modifies.append(flow)
            diff.replaced[key] = have
    return _sorted(diff)


def apply_to(table, diff):
    """Apply ``diff`` to ``table`` ({Flow.key: Flow}), in place."""
    for flow in diff.deletes:
        table.pop(flow.key, None)
    for flow in diff.modifies:
        table[flow.key] = flow
    for flow in diff.adds:
        table[flow.key] = flow


def _sorted(diff):
    """Each list in ``flow_sort_key`` order.  Keys are unique in a list, so
    table, priority and match decide it (the instructions never do)."""
    for flows in (diff.deletes, diff.modifies, diff.adds):
        flows.sort(key=_order)
    return diff


def _order(flow):
    return (flow.table, -flow.priority, repr(flow.match))


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
