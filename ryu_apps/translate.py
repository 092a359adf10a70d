"""The logical controller's translation: northbound intent -> one southbound
``Datapath`` record per logical switch (``mbxmodel.datapath``).

Pure and incremental.  ``Translator.update(snapshot)`` compares each input
of the new northbound snapshot with the one before -- switches, VMs,
middleboxes, firewall rules, NAT rules, VIPs (without their status),
steering policies, address sets, external networks, global options -- and
builds and encodes again only the records of the switches a changed input
belongs to: a VM's switch (before and after), a middlebox's switch and so
its rules', NAT rules' and VIPs', a policy's switch, the switches whose
policies or rules name a changed address set; an external network or a
global option is in every record.  It returns the records whose text
changed; ``mbx-northd`` writes those rows (``ryu_apps.northd``).

No I/O.  The cost of an update is a comparison of the inputs, plus
building and encoding the changed switches' records.
"""

import dataclasses
from typing import Dict, Optional

from mbxmodel import datapath as dplib
from ovsdb import validate
from ovsdb.errors import MbxError
from ovsdb.match import parse_match


class Translator:
    """The records of the last snapshot translated, and what they were
    made of."""

    def __init__(self):
        self.records: Dict[str, dplib.Datapath] = {}
        self.rows: Dict[str, tuple] = {}        # name -> its row, datapath.row(record)
        self.translated = 0                     # records built by the last update
        self._in = None                         # the inputs of the last snapshot
        self._vms_by_switch: Dict[str, Dict] = {}
        self._set_users: Dict[str, set] = {}    # address set -> switches naming it
        self._sets_of: Dict[str, frozenset] = {}  # switch -> the address sets it names

    def update(self, snap) -> Dict[str, Optional[dplib.Datapath]]:
        """Translate ``snap``; returns {switch: its new record, or None if
        the switch is gone} for the records whose row (tenant, VNI or
        config text) changed."""
        new = _inputs(snap)
        old = self._in
        if old is None:
            dirty = set(new["switches"])
            self._vms_by_switch = {}
            for vm in new["vms"].values():
                self._vms_by_switch.setdefault(vm.switch, {})[vm.name] = vm
        else:
            dirty = self._dirty(old, new)
        self._in = new
        out = {}
        self.translated = 0
        for name in sorted(dirty):
            switch = new["switches"].get(name)
            if switch is None:
                if name in self.records:
                    del self.records[name], self.rows[name]
                    out[name] = None
                self._name_sets(name, frozenset())
                continue
            record = self._record(new, switch)
            self.translated += 1
            row = dplib.row(record)
            if self.rows.get(name) != row:
                self.records[name], self.rows[name] = record, row
                out[name] = record
        return out

    def _dirty(self, old, new):
        """The switches whose record may differ between ``old`` and ``new``."""
        dirty = set(old["switches"].keys() ^ new["switches"].keys())
        dirty.update(n for n, s in new["switches"].items()
                     if n in old["switches"] and old["switches"][n] != s)
        old_vms, new_vms = old["vms"], new["vms"]
        for name in old_vms.keys() | new_vms.keys():
            before, after = old_vms.get(name), new_vms.get(name)
            if before == after:
                continue
            if before is not None:
                dirty.add(before.switch)
                self._vms_by_switch.get(before.switch, {}).pop(name, None)
            if after is not None:
                dirty.add(after.switch)
                self._vms_by_switch.setdefault(after.switch, {})[name] = after
        old_policies, new_policies = old["policies"], new["policies"]
        for switch in old_policies.keys() | new_policies.keys():
            if old_policies.get(switch) != new_policies.get(switch):
                dirty.add(switch)
        old_mbs, new_mbs = old["middleboxes"], new["middleboxes"]
        for key in ("middleboxes", "rules", "nat_rules", "vips"):
            for mb in old[key].keys() | new[key].keys():
                if old[key].get(mb) != new[key].get(mb):
                    for mbs in (old_mbs, new_mbs):
                        if mb in mbs:
                            dirty.add(mbs[mb].switch)
        for name in old["sets"].keys() | new["sets"].keys():
            if old["sets"].get(name) != new["sets"].get(name):
                dirty.update(self._set_users.get(name, ()))
        if old["externals"] != new["externals"] or old["options"] != new["options"]:
            dirty |= set(old["switches"]) | set(new["switches"])     # in every record
        return dirty

    def _name_sets(self, switch, used):
        """``switch``'s policies and rules now name the address sets ``used``."""
        before = self._sets_of.get(switch, frozenset())
        for name in before - used:
            self._set_users[name].discard(switch)
        for name in used - before:
            self._set_users.setdefault(name, set()).add(switch)
        if used:
            self._sets_of[switch] = used
        else:
            self._sets_of.pop(switch, None)

    def _record(self, inputs, switch):
        name = switch.name
        vms = tuple(vm for _, vm in sorted(self._vms_by_switch.get(name, {}).items()))
        policies = inputs["policies"].get(name, ())
        middleboxes = tuple(inputs["middleboxes"][n]
                            for n in sorted(inputs["mbs_of"].get(name, ())))
        rules = {mb.name: inputs["rules"][mb.name] for mb in middleboxes
                 if inputs["rules"].get(mb.name)}
        used = set()
        for text in [p.match for p in policies] + [r.match for rs in rules.values()
                                                   for r in rs]:
            used |= _set_names(text)
        self._name_sets(name, frozenset(used))
        sets = tuple(inputs["sets"][n] for n in sorted(used) if n in inputs["sets"])
        return dplib.Datapath(
            switch=switch, vms=vms, policies=policies, middleboxes=middleboxes,
            rules=rules,
            nat_rules={mb.name: inputs["nat_rules"][mb.name] for mb in middleboxes
                       if inputs["nat_rules"].get(mb.name)},
            vips={mb.name: inputs["vips"][mb.name] for mb in middleboxes
                  if inputs["vips"].get(mb.name)},
            address_sets=sets, external_networks=inputs["externals"],
            options=inputs["options"])


def _inputs(snap):
    """What the records are made of, grouped for comparison: the rows in
    force (not ``snap.ignored``: mbxmodel.tenancy, ovsdb.validate.unusable),
    and nothing of a switch that is not."""
    ignored = getattr(snap, "ignored", None) or {}
    gone = {key[1] for key in ignored if key[0] == "middlebox"}
    switches = {name: sw for name, sw in snap.switches.items()
                if ("switch", name) not in ignored}
    policies = {}
    for p in snap.policies:
        if ("policy", p.switch, p.priority) not in ignored \
                and p.switch in switches:
            policies.setdefault(p.switch, []).append(p)
    middleboxes = {name: mb for name, mb in snap.middleboxes.items()
                   if name not in gone and mb.switch in switches}
    gone |= set(snap.middleboxes) - set(middleboxes)
    mbs_of = {}
    for mb in middleboxes.values():
        mbs_of.setdefault(mb.switch, []).append(mb.name)
    rules = {k: tuple(r for r in v if ("rule", r.uuid) not in ignored)
             for k, v in snap.rules.items() if k not in gone}
    nets = snap.external_networks
    nets = [n for n in (nets.values() if hasattr(nets, "values") else nets)
            if ("external", n.name) not in ignored]
    options = getattr(snap, "global_options", {}) or {}
    return {
        "switches": switches,
        "vms": {name: vm for name, vm in snap.vms.items()
                if ("vm", name) not in ignored and vm.switch in switches},
        "policies": {s: tuple(sorted(ps, key=lambda p: (-p.priority, p.match, p.chain)))
                     for s, ps in policies.items()},
        "middleboxes": middleboxes,
        "mbs_of": mbs_of,
        "rules": rules,
        "nat_rules": {k: tuple(r for r in v if ("nat", r.uuid) not in ignored)
                      for k, v in snap.nat_rules.items() if k not in gone},
        "vips": {k: tuple(dataclasses.replace(v, status={}) if v.status else v
                          for v in vs if ("vip", v.uuid) not in ignored)
                 for k, vs in snap.vips.items() if k not in gone},
        "sets": {name: _usable_set(aset) for name, aset in snap.address_sets.items()},
        "externals": tuple(sorted(nets, key=lambda n: n.name)),
        "options": {k: options[k] for k in dplib.GLOBAL_OPTIONS if k in options},
    }


def _usable_set(aset):
    """``aset`` with only the members that are addresses (the others are
    named in its status, ``validate.unusable``)."""
    good = validate.usable_addresses(aset.addresses)[0]
    return aset if good == tuple(aset.addresses) else \
        dataclasses.replace(aset, addresses=good)


_SET_CACHE: Dict[str, frozenset] = {}


def _set_names(text):
    """The address sets a match text names (none if it does not parse)."""
    names = _SET_CACHE.get(text)
    if names is None:
        try:
            names = parse_match(text).address_sets
        except MbxError:
            names = frozenset()
        if len(_SET_CACHE) > 100000:
            _SET_CACHE.clear()
        _SET_CACHE[text] = names
    return names
