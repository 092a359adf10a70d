"""Which chain slices each host needs, their tags, and SNAT port blocks.

A slice is one chain (a tuple of middlebox names, in order) on one host.  A
host needs the slice of chain C when a VM of C's logical switch is bound to
the host (or an active migration brings one there) and a steering policy of
that switch sends traffic through C.  Two
policies with the same chain share a slice.  Each slice gets a tag
(1..4094), unique on its host, that marks its packets on the way to and
from the host's middlebox daemon.

Each SNAT rule's external addresses and port range are cut into blocks
(``ovsdb.natblocks``); each host that serves the rule's NAT middlebox gets
one, stable while it serves it.

Pure functions, no I/O.
"""

import functools
import logging

from ovsdb import natblocks
from ryu_apps import pipeline as P

LOG = logging.getLogger(__name__)

DEFAULT_PORTS_PER_HOST = natblocks.DEFAULT_BLOCK_SIZE
SNAT_STATUS_PREFIX = natblocks.STATUS_PREFIX      # Slice.status key prefix


def chain_ok(topo, policy):
    """True if every middlebox of ``policy``'s (non-empty) chain exists and
    serves the policy's switch."""
    if not policy.chain:
        return False
    for name in policy.chain:
        mb = topo.middleboxes.get(name)
        if mb is None or mb.switch != policy.switch:
            return False
    return True


def chain_types(topo, chain):
    return [topo.middleboxes[n].type for n in chain if n in topo.middleboxes]


def is_ids_only(topo, chain):
    """A chain of passive IDS services only: its packets are copied, not diverted."""
    types = chain_types(topo, chain)
    return bool(types) and all(t == "ids" for t in types)


def chain_switch(topo, chain):
    mb = topo.middleboxes.get(chain[0]) if chain else None
    return mb.switch if mb is not None else None


def needed_slices(topo, incoming=()):
    """The set of (chain, host) pairs the topology needs.  ``incoming``:
    more (vm, host) pairs that need the VM's slices on a host where it is
    not bound (docs/migration.md): the destination and the source of an
    active migration, and a host still holding state of a VM that left."""
    by_switch = {}
    for policy in topo.policies:
        if chain_ok(topo, policy):
            by_switch.setdefault(policy.switch, set()).add(tuple(policy.chain))
    placements = [(b.vm, b.host) for b in topo.bindings.values()]
    placements += [(vm, host) for vm, host in incoming if host in topo.hosts]
    out = set()
    for vm_name, host in placements:
        vm = topo.vms.get(vm_name)
        if vm is None:
            continue
        for chain in by_switch.get(vm.switch, ()):
            out.add((chain, host))
    return out


def allocate(needed, existing):
    """Tags for ``needed`` pairs: a pair keeps its tag from ``existing`` (a
    mapping (chain, host) -> tag) when it is still valid and unique on its
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


# ------------------------------------------------------------ per middlebox

def _serving(topo):
    """{middlebox: sorted names of the hosts with a slice whose chain contains it}."""
    out = {}
    for (chain, host) in topo.slices:
        for name in chain:
            out.setdefault(name, set()).add(host)
    return {name: sorted(hosts) for name, hosts in out.items()}


def hosts_serving(topo, middlebox):
    """Names of the hosts with a slice whose chain contains ``middlebox``, sorted."""
    return list(topo.derived(_serving).get(middlebox, ()))


def switch_hosts(topo, switch):
    """Names of the hosts with a VM bound or a slice of ``switch``."""
    hosts = {topo.bindings[vm].host for vm in topo.bound_vms(switch)}
    hosts.update(topo.derived(_slice_hosts_by_switch).get(switch, ()))
    return hosts


def _slice_hosts_by_switch(topo):
    out = {}
    for (chain, host) in topo.slices:
        out.setdefault(chain_switch(topo, chain), set()).add(host)
    return out


def indexes(topo):
    """The derived indexes of ``topo``'s slices that the functions here
    read ({builder: value}, as ``Topology.derived`` would compute them),
    for a topology whose slices are kept change by change
    (``updated_indexes``)."""
    return {build: build(topo) for build in _INDEXES}


def updated_indexes(ix, topo, changed):
    """``indexes(topo)`` from ``ix``, the indexes of a topology that differs
    from ``topo`` only in the slices ``changed`` ((chain, host) pairs added,
    removed or re-tagged).  Returns (indexes, the middleboxes whose serving
    hosts changed).  ``ix`` is left as it was."""
    serving = dict(ix[_serving])
    by_switch = dict(ix[_slice_hosts_by_switch])
    moved = set()
    host_slices = {}
    for chain, host in changed:
        if host not in host_slices:
            host_slices[host] = [c for (c, _h) in topo.host_slices(host)]
        still = host_slices[host]
        for name in chain:
            has = any(name in c for c in still)
            hosts = serving.get(name, [])
            if has == (host in hosts):
                continue
            hosts = sorted(set(hosts) ^ {host})
            moved.add(name)
            if hosts:
                serving[name] = hosts
            else:
                serving.pop(name, None)
        switch = chain_switch(topo, chain)
        hosts = by_switch.get(switch, set())
        has = any(chain_switch(topo, c) == switch for c in still)
        if has != (host in hosts):
            hosts = hosts ^ {host}
            if hosts:
                by_switch[switch] = hosts
            else:
                by_switch.pop(switch, None)
    out = dict(ix)
    out[_serving] = serving
    out[_slice_hosts_by_switch] = by_switch
    nat = {n for n in moved if n in topo.middleboxes and topo.middleboxes[n].type == "nat"}
    if nat:
        names = set(ix[_nat_middleboxes]) - nat
        names.update(n for n in nat if n in serving)
        out[_nat_middleboxes] = sorted(names)
        out[_designated_hosts] = _designated_hosts(_Indexed(topo, out))
    return out, moved


class _Indexed:
    """``topo`` read through the indexes ``ix`` (to build one index from others)."""

    def __init__(self, topo, ix):
        self._topo, self._ix = topo, ix

    def __getattr__(self, name):
        return getattr(self._topo, name)

    def derived(self, build):
        return self._ix[build] if build in self._ix else self._topo.derived(build)


def lowest_tag(topo, host, predicate):
    """The lowest tag of ``host``'s slices whose chain satisfies ``predicate``, or None."""
    tags = [tag for (chain, _), tag in topo.host_slices(host).items() if predicate(chain)]
    return min(tags) if tags else None


def nat_middleboxes(topo):
    """Names of the NAT middleboxes that some slice serves, sorted."""
    return list(topo.derived(_nat_middleboxes))


def _nat_middleboxes(topo):
    names = topo.derived(_serving)
    return sorted(n for n in names
                  if n in topo.middleboxes and topo.middleboxes[n].type == "nat")


def designated_hosts(topo):
    """External address -> the host that answers ARP for it: the first host
    by name serving a slice that contains the NAT middlebox of the address."""
    return dict(topo.derived(_designated_hosts))


def _designated_hosts(topo):
    out = {}
    for name in nat_middleboxes(topo):
        hosts = hosts_serving(topo, name)
        if not hosts:
            continue
        for rule in topo.nat_rules.get(name, ()):
            for ip in rule.external_ips:
                out.setdefault(ip, hosts[0])
    return out


def ports_per_host(mb):
    try:
        return natblocks.check_size(int(mb.option("ports-per-host", DEFAULT_PORTS_PER_HOST)))
    except (TypeError, ValueError):
        LOG.error("middlebox %s: bad ports-per-host %r, using %d", mb.name,
                  mb.option("ports-per-host", None), DEFAULT_PORTS_PER_HOST)
        return DEFAULT_PORTS_PER_HOST


def snat_blocks(topo, previous, middleboxes=None):
    """{(SNAT rule uuid, host): (ip, lo, hi)}: one block per rule and host
    serving the rule's NAT middlebox.  A (rule, host) keeps its block from
    ``previous`` (same shape) while it is still valid; hosts left without a
    block (more hosts than blocks) are absent.  ``middleboxes``: only the
    blocks of these NAT middleboxes' rules (default: every one's)."""
    out = {}
    previous_by_rule = _by_rule(previous)
    for name in nat_middleboxes(topo):
        if middleboxes is not None and name not in middleboxes:
            continue
        hosts = hosts_serving(topo, name)
        mb = topo.middleboxes[name]
        for rule in topo.nat_rules.get(name, ()):
            if rule.type != "snat" or not hosts:
                continue
            try:
                blocks = natblocks.blocks(rule.external_ips, tuple(rule.port_range),
                                          ports_per_host(mb))
            except ValueError as err:
                LOG.error("SNAT rule %s of %s: no port blocks: %s", rule.uuid, name, err)
                continue
            prev = {host: tuple(block)
                    for host, block in previous_by_rule.get(rule.uuid, {}).items()}
            for host, block in natblocks.allocate(hosts, blocks, prev).items():
                if block is not None:
                    out[(rule.uuid, host)] = tuple(block)
    return out


class Blocks(dict):
    """A ``snat_blocks`` mapping that also gives one rule's blocks,
    ``of_rule``, without a pass over every rule's: {rule uuid: its sorted
    ((rule uuid, host), block) items}.  Never changed once built."""

    def __init__(self, items=(), by_rule=None):
        super().__init__(items)
        self._by_rule = by_rule

    def of_rule(self, rule_uuid):
        if self._by_rule is None:
            index = {}
            for item in sorted(self.items()):
                index.setdefault(item[0][0], []).append(item)
            self._by_rule = {uuid: tuple(items) for uuid, items in index.items()}
        return self._by_rule.get(rule_uuid, ())

    def replacing(self, rules, blocks):
        """These blocks with those of ``rules`` replaced by ``blocks`` (a
        ``snat_blocks`` mapping of these rules only)."""
        self.of_rule(None)
        out = dict(self)
        by_rule = dict(self._by_rule)
        for rule in rules:
            for key, _block in by_rule.pop(rule, ()):
                del out[key]
        index = {}
        for item in sorted(blocks.items()):
            index.setdefault(item[0][0], []).append(item)
        out.update(blocks)
        by_rule.update((uuid, tuple(items)) for uuid, items in index.items())
        return Blocks(out, by_rule)


def _by_rule(blocks):
    """{rule uuid: {host: block}} of a ``snat_blocks`` mapping, in its order."""
    out = {}
    for (uuid, host), block in blocks.items():
        out.setdefault(uuid, {})[host] = block
    return out


def block_match(lo, hi):
    """The ``tcp_dst``/``udp_dst`` match value of the port block lo..hi:
    ``(value, mask)``, or the bare value for a one-port block."""
    value, mask = natblocks.block_match(lo, hi)
    return value if mask == 0xFFFF else (value, mask)


def slice_status(topo, blocks, pairs=None):
    """{(chain, host): {key: value}} for every slice (or the slices
    ``pairs``): the SNAT blocks of the host for the SNAT rules of every NAT
    middlebox of the chain."""
    out = {}
    for (chain, host) in (topo.slices if pairs is None else pairs):
        status = {}
        for name in chain:
            for rule in topo.nat_rules.get(name, ()):
                block = blocks.get((rule.uuid, host))
                if rule.type == "snat" and block is not None:
                    status[SNAT_STATUS_PREFIX + rule.uuid] = natblocks.format_block(block)
        out[(chain, host)] = status
    return out


_INDEXES = (_serving, _slice_hosts_by_switch, _nat_middleboxes, _designated_hosts)


def blocks_from_status(status):
    """The SNAT blocks recorded in Slice.status rows (``slice_status`` shape)."""
    out = {}
    for (chain, host), values in sorted(item for item in status.items() if item[1]):
        for key, value in dict(values).items():
            if key.startswith(SNAT_STATUS_PREFIX):
                block = _parsed_block(value)
                if block is not None:
                    out.setdefault((key[len(SNAT_STATUS_PREFIX):], host), block)
    return out


@functools.lru_cache(maxsize=65536)
def _parsed_block(value):
    """``natblocks.parse_block``, None if malformed; each status value is
    parsed once (every snapshot holds every slice's status again)."""
    try:
        return natblocks.parse_block(value)
    except ValueError:
        return None


class RecordedBlocks:
    """The SNAT blocks recorded in the Slice rows' status
    (``blocks_from_status``), kept slice by slice: a change parses the
    status of the hosts whose slices changed only.  ``blocks`` is a new
    ``Blocks`` after each change that changed a block, the same one
    otherwise."""

    def __init__(self, status=None):
        self._by_host = {}          # host -> {(chain, host): status}
        self._blocks_of = {}        # host -> its blocks {(rule uuid, host): block}
        self._rules = {}            # rule uuid -> {host: block}
        self._by_rule = {}          # Blocks.of_rule's index, kept rule by rule
        self.blocks = Blocks(by_rule={})
        if status:
            self.update(status)

    def update(self, changes):
        """``changes``: {(chain, host): status dict, or None: gone}.
        Returns the block keys ((rule uuid, host)) whose block changed."""
        hosts = set()
        for key, status in changes.items():
            mine = self._by_host.setdefault(key[1], {})
            if status is None:
                mine.pop(key, None)
            else:
                mine[key] = status
            hosts.add(key[1])
        changed = {}
        for host in hosts:
            mine = self._by_host.get(host, {})
            new = blocks_from_status(mine)
            old = self._blocks_of.pop(host, {})
            if new:
                self._blocks_of[host] = new
            for k in old.keys() | new.keys():
                if old.get(k) != new.get(k):
                    changed[k] = new.get(k)
            if not mine:
                self._by_host.pop(host, None)
        if changed:
            out = dict(self.blocks)
            by_rule = dict(self._by_rule)
            for (rule, host), v in changed.items():
                mine = self._rules.setdefault(rule, {})
                if v is None:
                    out.pop((rule, host), None)
                    mine.pop(host, None)
                else:
                    out[(rule, host)] = mine[host] = v
            for rule in {k[0] for k in changed}:
                mine = self._rules.get(rule)
                if mine:
                    by_rule[rule] = tuple(sorted(((rule, h), b) for h, b in mine.items()))
                else:
                    self._rules.pop(rule, None)
                    by_rule.pop(rule, None)
            self._by_rule = by_rule
            self.blocks = Blocks(out, by_rule)
        return set(changed)
