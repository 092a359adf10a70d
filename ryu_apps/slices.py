"""Which middlebox slices each host needs, and their tags.

A slice is one middlebox's instance on one host.  A host needs a slice of
middlebox M when a VM of M's logical switch is bound to the host and a
steering policy of that switch sends traffic through M.  Each slice gets a
tag (1..4094), unique on its host, that marks its packets on the way to and
from the host's middlebox daemon.  Pure functions, no I/O.
"""

from ryu_apps import pipeline as P


def needed_slices(topo):
    """The set of (middlebox, host) pairs the topology needs."""
    by_switch = {}
    for policy in topo.policies:
        mb = topo.middleboxes.get(policy.middlebox) if policy.middlebox else None
        if mb is not None and mb.switch == policy.switch:
            by_switch.setdefault(policy.switch, set()).add(mb.name)
    out = set()
    for binding in topo.bindings.values():
        vm = topo.vms.get(binding.vm)
        if vm is None:
            continue
        for mb in by_switch.get(vm.switch, ()):
            out.add((mb, binding.host))
    return out


def allocate(needed, existing):
    """Tags for ``needed`` pairs: a pair keeps its tag from ``existing`` (a
    mapping (middlebox, host) -> tag) when it is still valid and unique on its
    host; a new pair gets the lowest tag free on its host.  Pairs that cannot
    get a tag (all 4094 in use on the host) are left out."""
    out = {}
    used = {}
    for pair in sorted(needed):
        tag = existing.get(pair)
        host_used = used.setdefault(pair[1], set())
        if tag is not None and 1 <= tag <= P.MAX_SLICE_TAG and tag not in host_used:
            out[pair] = tag
            host_used.add(tag)
    for pair in sorted(needed):
        if pair in out:
            continue
        host_used = used[pair[1]]
        tag = next((t for t in range(1, P.MAX_SLICE_TAG + 1) if t not in host_used), None)
        if tag is not None:
            out[pair] = tag
            host_used.add(tag)
    return out
