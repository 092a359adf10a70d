"""The controller's topology, kept up to date change by change.

The engine's ``Topology`` is made of the config database (hosts, switches,
VMs, services), the hosts' ports, the VM bindings that win, and what the
controller allocates from them: the chain slices and the SNAT port blocks.
Built from scratch that is a pass over every binding and slice of the cloud.
``TopologyState.rebuild`` does it once, when the configuration changes;
``TopologyState.update`` then applies a host's port changes (and changes of
the VMs announced on a host, ``incoming``) touching only the bindings,
slices and blocks that change, and says which flow parts
(``flows.host_parts``) of which hosts the change can touch.

What a part depends on (``ryu_apps.flows``), and so what marks it:

* ("switch", S) on H: H's ports, H's VMs of S, H's slices of S's chains;
* ("remote", S) on H: H's tunnel port, where S's VMs are bound;
* ("nat", S) on H: H's ports and slices, the hosts serving S's NAT
  middleboxes, their SNAT blocks, the host of a DNAT rule's VM;
* the host's own part: its ports, whether it has a slice, the external
  addresses it answers for (``slices.designated_hosts``);

and, for every part, the configuration, whose change rebuilds everything.
"""

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from mbxmodel.network import HostInfo
from mbxmodel.topology import Topology
from ryu_apps import flows as flowlib
from ryu_apps import pipeline as P
from ryu_apps import slices as slicelib

ALL = "all"     # every part of a host (a value of ``update``'s result)


@dataclass
class _Index:
    """The indexes of one ``KeptTopology``.  Never changed once handed
    over: an update makes new mappings for what it changes."""
    by_host: Mapping = field(default_factory=dict)      # host -> ((vm, PortBinding), ...) by name
    by_switch: Mapping = field(default_factory=dict)    # switch -> (bound VM name, ...) sorted
    slices_by_host: Mapping = field(default_factory=dict)  # host -> {(chain, host): tag}
    slice_ix: Mapping = field(default_factory=dict)     # slices.indexes()
    config: Dict = field(default_factory=dict)          # derived, shared by one configuration


@dataclass(frozen=True)
class KeptTopology(Topology):
    """A Topology whose indexes of bindings and slices are kept by
    ``TopologyState`` and whose derived values that read only the
    configuration (``flows.CONFIG_DERIVED``) are shared with the other
    topologies of the same configuration."""
    index: _Index = field(default_factory=_Index, compare=False, repr=False)

    def local_vms(self, host):
        out = []
        for name, binding in self.index.by_host.get(host, ()):
            vm = self.vms.get(name)
            if vm is not None and vm.switch in self.switches:
                out.append((vm, binding))
        return out

    def bound_vms(self, switch):
        return self.index.by_switch.get(switch, ())

    def host_slices(self, host):
        return self.index.slices_by_host.get(host, {})

    def unshared(self):
        """The same topology with no flow piece computed yet: what computing
        one host's flows costs when no other host shares its pieces."""
        config = {build: value for build, value in self.index.config.items()
                  if build is not flowlib.SHARED_PIECES}
        return _kept(self, dataclasses.replace(self.index, config=config))

    def derived(self, build):
        ix = self.index
        if build in ix.slice_ix:
            return ix.slice_ix[build]
        if build in _CONFIG_DERIVED:
            if build not in ix.config:
                ix.config[build] = build(self)
            return ix.config[build]
        return super().derived(build)


def host_info(rec, ports):
    """A host's ``HostInfo`` from its config record and its ports."""
    return HostInfo(name=rec.name, encap_ip=rec.encap_ip, encap_type=rec.encap_type,
                    tunnel_ofport=ports.tunnel_ofport, mb_ofport=ports.mb_ofport,
                    uplink_ofport=ports.uplink_ofport, uplink_mac=ports.uplink_mac)


class TopologyState:
    """The current ``KeptTopology`` and SNAT blocks, and what they are made of."""

    def __init__(self):
        self.topo: Optional[KeptTopology] = None
        self.blocks = slicelib.Blocks()
        self.status: Dict = {}          # slices.slice_status of topo and blocks
        self.version = 0                # counts the changes of slices, blocks, status
        self.touched = None             # slices changed (tag or status) since taken
        #                                 (``take_touched``); None: every one
        self._decided = ({}, {})        # the last (slices, blocks) decided elsewhere
        self._placements = Counter()    # (switch, host) -> VMs bound or incoming there
        self._incoming = frozenset()    # (vm, host) pairs counted in _placements
        self._chains = {}               # switch -> its valid chains (config)
        self._dnat = {}                 # switch -> ((NAT middlebox, logical ip), ...)

    # ------------------------------------------------------------ rebuild
    def rebuild(self, config, hosts, bindings, incoming, recorded_slices, slices,
                recorded_blocks, decided=None):
        """From scratch.  ``config``: a Topology of the configuration only
        (no hosts' ports, bindings or slices); ``hosts``: {name: HostInfo};
        ``bindings``: {vm: PortBinding}; ``incoming``: (vm, host) pairs
        (``slices.needed_slices``); ``recorded_slices`` and ``slices``: the
        tags in the database and those allocated since, which the slices
        keep; ``recorded_blocks``: the SNAT blocks recorded in the database,
        which the blocks keep (with those allocated since).  ``decided``:
        (slices, blocks) decided elsewhere (the logical controller's, as
        the database records them), taken as they are instead of
        allocated."""
        base = dataclasses.replace(config, hosts=dict(hosts), bindings=dict(bindings))
        self._chains = _valid_chains(base)
        self._dnat = _dnat_addresses(base)
        self._incoming = frozenset(p for p in incoming if p[1] in base.hosts)
        if decided is not None:
            self._decided = decided
            base = dataclasses.replace(base, slices=dict(decided[0]))
        else:
            needed = slicelib.needed_slices(base, self._incoming)
            existing = dict(recorded_slices)
            existing.update(slices)
            base = dataclasses.replace(base, slices=slicelib.allocate(needed, existing))
        self._placements = Counter()
        for vm, host in [(b.vm, b.host) for b in base.bindings.values()] + list(self._incoming):
            info = base.vms.get(vm)
            if info is not None:
                self._placements[(info.switch, host)] += 1
        by_host, by_switch = {}, {}
        for name, binding in sorted(base.bindings.items()):
            by_host.setdefault(binding.host, []).append((name, binding))
            vm = base.vms.get(name)
            if vm is not None:
                by_switch.setdefault(vm.switch, []).append(name)
        slices_by_host = {}
        for (chain, host), tag in base.slices.items():
            slices_by_host.setdefault(host, {})[(chain, host)] = tag
        index = _Index(by_host={h: tuple(v) for h, v in by_host.items()},
                       by_switch={s: tuple(v) for s, v in by_switch.items()},
                       slices_by_host=slices_by_host, slice_ix=slicelib.indexes(base))
        self.topo = _kept(base, index)
        if decided is not None:
            self.blocks = _as_blocks(decided[1])
        else:
            previous = dict(recorded_blocks)
            previous.update(self.blocks)
            self.blocks = slicelib.Blocks(slicelib.snat_blocks(self.topo, previous))
        self.blocks.of_rule(None)       # its index now, not in the first move that reads it
        self.status = slicelib.slice_status(self.topo, self.blocks)
        self.version += 1
        self.touched = None
        return self.topo

    def take_touched(self):
        """The (chain, host) pairs whose slice (tag or status) changed since
        the last call (None: any may have: a rebuild)."""
        touched, self.touched = self.touched, set()
        return touched

    # ------------------------------------------------------------- update
    def update(self, hosts, bindings, incoming, recorded_slices, recorded_blocks,
               decided=None, decided_keys=None):
        """Apply changes: ``hosts`` {name: HostInfo} of hosts whose ports
        may have changed, ``bindings`` {vm: PortBinding or None} of VMs
        whose binding may have changed, ``incoming`` the (vm, host) pairs
        now (None: unchanged).  ``recorded_slices``: tags in the database,
        a new slice takes its recorded one when free; ``recorded_blocks``:
        the SNAT blocks recorded in the database (``slices.Blocks``), which
        a new block keeps when free.  ``decided``: (slices, blocks) decided elsewhere (``rebuild``); the
        slices and blocks become them, and nothing is allocated;
        ``decided_keys``: (slice keys, block keys) outside which they equal
        the last ones given (None: compared whole).
        Returns {host: set of part ids, or ALL}: the parts that may have
        changed."""
        old = self.topo
        dirty = {}

        def mark(host, *parts):
            if dirty.get(host) is not ALL:
                dirty.setdefault(host, set()).update(parts)

        def mark_switch(host, switch):
            mark(host, *((kind, switch) for kind in flowlib.SWITCH_PART_KINDS))

        new_hosts = old.hosts
        for name, info in hosts.items():
            if name in old.hosts and old.hosts[name] != info:
                if new_hosts is old.hosts:
                    new_hosts = dict(old.hosts)
                new_hosts[name] = info
                dirty[name] = ALL

        changed = {vm: b for vm, b in bindings.items() if old.bindings.get(vm) != b}
        placed = set()          # (switch, host) whose VMs bound or incoming changed
        new_bindings, ix = old.bindings, old.index
        by_host, by_switch = ix.by_host, ix.by_switch
        moved = {}              # switch -> its VMs whose binding changed
        if changed:
            new_bindings = dict(old.bindings)
            by_host, by_switch = dict(by_host), dict(by_switch)
            hosts_touched = set()
            for vm, binding in changed.items():
                prev = old.bindings.get(vm)
                if binding is None:
                    del new_bindings[vm]
                else:
                    new_bindings[vm] = binding
                info = old.vms.get(vm)
                if info is not None:
                    moved.setdefault(info.switch, []).append(info)
                for b, step in ((prev, -1), (binding, 1)):
                    if b is None:
                        continue
                    hosts_touched.add(b.host)
                    if info is not None:
                        self._placements[(info.switch, b.host)] += step
                        placed.add((info.switch, b.host))
                        mark_switch(b.host, info.switch)
            for host in hosts_touched:
                entries = [e for e in by_host.get(host, ()) if e[0] not in changed]
                entries += [(vm, b) for vm, b in changed.items()
                            if b is not None and b.host == host]
                _put(by_host, host, tuple(sorted(entries, key=lambda e: e[0])))
            for switch in moved:
                names = [n for n in by_switch.get(switch, ()) if n not in changed]
                names += [vm for vm, b in changed.items() if b is not None
                          and vm in old.vms and old.vms[vm].switch == switch]
                _put(by_switch, switch, tuple(sorted(names)))

        if incoming is not None:
            incoming = frozenset(p for p in incoming if p[1] in new_hosts)
            for (vm, host) in incoming ^ self._incoming:
                info = old.vms.get(vm)
                if info is None:
                    continue
                self._placements[(info.switch, host)] += 1 if (vm, host) in incoming else -1
                placed.add((info.switch, host))
            self._incoming = incoming

        # The slices of the (switch, host) pairs whose placements changed:
        # the ones no longer needed go, then each new one takes its
        # recorded tag when free on its host, else the lowest free
        # (``slices.allocate``'s rule, for the pairs in the same order).
        slices, slices_by_host = old.slices, ix.slices_by_host
        gone, new = [], []
        given = None
        if decided is not None and decided[0] is not self._decided[0]:
            given = decided[0]
            if decided_keys is not None:
                differ = {p for p in decided_keys[0] if slices.get(p) != given.get(p)}
            else:
                differ = {p for p, _tag in slices.items() ^ given.items()}
            gone = [p for p in differ if p in slices]
            new = [p for p in differ if p in given]
        elif decided is None:
            for switch, host in placed:
                chains = self._chains.get(switch, ())
                needed = self._placements[(switch, host)] > 0
                for chain in chains:
                    if needed and (chain, host) not in slices:
                        new.append((chain, host))
                    elif not needed and (chain, host) in slices:
                        gone.append((chain, host))
        changed_slices = []
        if gone or new:
            slices, slices_by_host = dict(slices), dict(slices_by_host)
        for pair in gone:
            del slices[pair]
            mine = dict(slices_by_host[pair[1]])
            del mine[pair]
            _put(slices_by_host, pair[1], mine)
            changed_slices.append(pair)
        for pair in sorted(new):
            mine = dict(slices_by_host.get(pair[1], {}))
            tag = given[pair] if given is not None else \
                _free_tag(set(mine.values()), recorded_slices.get(pair))
            if tag is None:
                continue
            slices[pair] = mine[pair] = tag
            slices_by_host[pair[1]] = mine
            changed_slices.append(pair)

        topo = _kept(dataclasses.replace(old, hosts=new_hosts, bindings=new_bindings,
                                         slices=slices),
                     dataclasses.replace(ix, by_host=by_host, by_switch=by_switch,
                                         slices_by_host=slices_by_host))
        nat = []
        if changed_slices:
            topo.index.slice_ix, served = slicelib.updated_indexes(
                ix.slice_ix, topo, changed_slices)
            for chain, host in changed_slices:
                mark(host, flowlib.HOST_PART)
                mark_switch(host, slicelib.chain_switch(topo, chain))
            nat = sorted(n for n in served if topo.middleboxes[n].type == "nat")
            for name in nat:
                switch = topo.middleboxes[name].switch
                for host in _serving_either(old, topo, name):
                    mark(host, ("nat", switch))
            before, after = slicelib.designated_hosts(old), slicelib.designated_hosts(topo)
            for address in before.keys() | after.keys():
                if before.get(address) != after.get(address):
                    for host in (before.get(address), after.get(address)):
                        if host is not None:
                            mark(host, flowlib.HOST_PART)
        for switch, infos in moved.items():
            # S's VMs are remote VMs wherever S is
            for host in slicelib.switch_hosts(old, switch) | slicelib.switch_hosts(topo, switch):
                mark(host, ("remote", switch))
            # a DNAT rule's VM moved: its way in changes where the NAT is served
            for mb, ip in self._dnat.get(switch, ()):
                if any(info.ip == ip for info in infos):
                    for host in _serving_either(old, topo, mb):
                        mark(host, ("nat", switch))
        if decided is not None:
            if decided[1] is not self._decided[1]:
                self._decided_blocks(old, topo, decided[1], changed_slices, mark,
                                     None if decided_keys is None else decided_keys[1])
            self._decided = decided
        elif nat:
            rules = [rule.uuid for name in nat for rule in topo.nat_rules.get(name, ())]
            previous = {}
            for rule in rules:
                previous.update(recorded_blocks.of_rule(rule))
                previous.update(self.blocks.of_rule(rule))
            computed = slicelib.snat_blocks(topo, previous, middleboxes=set(nat))
            before = {k: v for rule in rules for k, v in self.blocks.of_rule(rule)}
            if computed != before:
                # the status of the slices of hosts whose blocks changed
                for key in computed.keys() | before.keys():
                    if computed.get(key) != before.get(key):
                        changed_slices += [pair for pair in topo.host_slices(key[1])
                                           if pair not in changed_slices]
                self.blocks = self.blocks.replacing(rules, computed)
        if changed_slices:
            status = dict(self.status)
            for pair in changed_slices:
                status.pop(pair, None)
            status.update(slicelib.slice_status(
                topo, self.blocks, [p for p in changed_slices if p in topo.slices]))
            self.status = status
            self.version += 1
            if self.touched is not None:
                self.touched.update(changed_slices)
        self.topo = topo
        return dirty


    def _decided_blocks(self, old, topo, blocks, changed_slices, mark, keys=None):
        """The SNAT blocks become ``blocks``: the NAT way in of every host
        serving a middlebox whose rule's blocks changed is marked.
        ``keys``: the block keys that may differ (None: every one)."""
        rules = _rule_middleboxes_of(topo)
        touched = set()
        for key in (blocks.keys() | self.blocks.keys()) if keys is None else keys:
            if blocks.get(key) != self.blocks.get(key):
                touched.add(rules.get(key[0]))
                changed_slices += [pair for pair in topo.host_slices(key[1])
                                   if pair not in changed_slices]
        for name in sorted(n for n in touched if n in topo.middleboxes):
            switch = topo.middleboxes[name].switch
            for host in _serving_either(old, topo, name):
                mark(host, ("nat", switch))
        self.blocks = _as_blocks(blocks)


def config_dirty(old, new, switches):
    """The parts that may differ between ``old`` and ``new``, two topologies
    of the same hosts' ports, bindings and decisions whose configurations
    differ in the logical switches ``switches`` only (their Datapath
    records): {host: set of part ids}; None when every part of every host
    may (the external networks, which every switch's flows use, changed).

    A switch's parts on the hosts it is present on, before or after, and
    those hosts' own part; the parts of the switches sharing a VNI with one
    of them (a shared VNI makes a switch unusable); the own part of the
    hosts whose designated external addresses changed."""
    if old.external_networks != new.external_networks:
        return None
    vnis = {t.switches[s].vni for t in (old, new) for s in switches if s in t.switches}
    affected = set(switches) | {s for t in (old, new) for s, info in t.switches.items()
                                if info.vni in vnis}
    dirty = {}
    for switch in affected:
        parts = [flowlib.HOST_PART] + [(kind, switch) for kind in flowlib.SWITCH_PART_KINDS]
        for host in slicelib.switch_hosts(old, switch) | slicelib.switch_hosts(new, switch):
            dirty.setdefault(host, set()).update(parts)
    before, after = slicelib.designated_hosts(old), slicelib.designated_hosts(new)
    for address in before.keys() | after.keys():
        if before.get(address) != after.get(address):
            for host in (before.get(address), after.get(address)):
                if host is not None:
                    dirty.setdefault(host, set()).add(flowlib.HOST_PART)
    return dirty


def _rule_middleboxes_of(topo):
    return topo.derived(_rule_middleboxes)


def _serving_either(old, new, middlebox):
    return set(slicelib.hosts_serving(old, middlebox)) | set(
        slicelib.hosts_serving(new, middlebox))


def _rule_middleboxes(topo):
    return {rule.uuid: name for name, rules in topo.nat_rules.items() for rule in rules}


_CONFIG_DERIVED = flowlib.CONFIG_DERIVED | {_rule_middleboxes}


def _put(mapping, key, value):
    if value:
        mapping[key] = value
    else:
        mapping.pop(key, None)


def _free_tag(used, recorded):
    """A new slice's tag on a host using ``used``: its ``recorded`` one when
    free, else the lowest free (``slices.allocate``'s rule); None: none left."""
    if recorded is not None and 1 <= recorded <= P.MAX_SLICE_TAG and recorded not in used:
        return recorded
    return next((t for t in range(1, P.MAX_SLICE_TAG + 1) if t not in used), None)


def _kept(topo, index):
    fields = {f.name: getattr(topo, f.name) for f in dataclasses.fields(Topology)}
    return KeptTopology(index=index, **fields)


def _valid_chains(topo):
    """{switch: its policies' valid chains, sorted}."""
    out = {}
    for policy in topo.policies:
        if slicelib.chain_ok(topo, policy):
            out.setdefault(policy.switch, set()).add(tuple(policy.chain))
    return {switch: tuple(sorted(chains)) for switch, chains in out.items()}


def _dnat_addresses(topo):
    """{switch: ((NAT middlebox, DNAT rule's logical ip), ...)}."""
    out = {}
    for name, rules in topo.nat_rules.items():
        mb = topo.middleboxes.get(name)
        if mb is None:
            continue
        for rule in rules:
            if rule.type == "dnat":
                out.setdefault(mb.switch, []).append((name, rule.logical_ip))
    return out


def _as_blocks(blocks):
    """``blocks`` as a ``slices.Blocks`` (itself if it is one: never changed
    once built, and its ``of_rule`` index may be built already)."""
    return blocks if isinstance(blocks, slicelib.Blocks) else slicelib.Blocks(blocks)
