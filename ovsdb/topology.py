"""Declarative YAML topology: the switches, VMs, address sets, middleboxes
and steering policies that should exist.

    switches:
      - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24}
    vms:
      - {name: a1, switch: ls-a, ip: 10.0.0.1, mac: "02:00:00:00:01:01"}
    address_sets:
      - {name: a-admins, tenant: tenant-a, addresses: [10.0.0.11]}
    middleboxes:
      - name: fw-a
        type: firewall                  # the default
        switch: ls-a
        default_action: deny            # the default
        options: {same-host: both}
        rules:
          - {priority: 100, direction: to-vm, match: "proto=tcp dport=7000",
             action: allow, tier: tenant}         # tier: tenant is the default
    steering:
      - {switch: ls-a, priority: 100, match: any, middlebox: fw-a}
      - {switch: ls-a, priority: 200, match: "src=$a-admins",
         middlebox: bypass}

``tenant`` defaults to the switch name; ``mac`` defaults to the VM's
deterministic generated MAC (``validate.mac_from_name``), so a file alone
determines every value.  Applying a file creates missing rows and updates
differing ones; rows it does not mention are left alone:

* switches, VMs and address sets are created or updated by name (an address
  set's addresses become exactly the listed ones);
* a listed middlebox is created or replaced by name: its type, switch,
  default action and options become exactly the file's, and so do its rules
  (no ``rules`` key: no rules); rules that stay keep their rows;
* the steering policies of each switch named in ``steering`` become exactly
  the file's entries for that switch; switches no entry names keep theirs.

Match texts are stored in canonical form (``ovsdb.match``).  Everything is
checked before anything is written, with the rules of mbxctl: the file on
its own when parsed, then merged over the database before the one
transaction that applies it.

The lab's files may also place VMs on hosts (a top-level ``hosts:`` list of
host names and a per-VM ``host:`` key).  Only ``allow_placement=True``
accepts them; placement is returned in the spec, never written to the DB.
"""

import dataclasses
from typing import Mapping, Tuple

import yaml

from ovsdb import validate
from ovsdb.api import RuleRecord
from ovsdb.errors import MbxError
from ryu_apps.model import (AddressSetInfo, MiddleboxInfo, PolicyInfo,
                             SwitchInfo, VMInfo)

TOP_KEYS = ("switches", "vms", "address_sets", "middleboxes", "steering")
SWITCH_KEYS = ("name", "tenant", "vni", "subnet")
VM_KEYS = ("name", "switch", "ip", "mac")
ADDRESS_SET_KEYS = ("name", "tenant", "addresses")
MIDDLEBOX_KEYS = ("name", "type", "switch", "default_action", "options",
                  "rules")
RULE_KEYS = ("priority", "direction", "match", "action", "tier")
STEERING_KEYS = ("switch", "priority", "match", "middlebox")
# Accepted only with allow_placement=True.
LAB_TOP_KEYS = ("hosts",)
LAB_VM_KEYS = ("host",)


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    switches: Tuple[SwitchInfo, ...] = ()
    vms: Tuple[VMInfo, ...] = ()
    hosts: Tuple[str, ...] = ()                 # lab only
    placement: Mapping[str, str] = dataclasses.field(
        default_factory=dict)                   # lab only: VM name -> host
    address_sets: Tuple[AddressSetInfo, ...] = ()
    middleboxes: Tuple[MiddleboxInfo, ...] = ()
    # middlebox name -> its rules, in file order (every listed middlebox)
    rules: Mapping[str, Tuple[RuleRecord, ...]] = dataclasses.field(
        default_factory=dict)
    policies: Tuple[PolicyInfo, ...] = ()       # in file order

    @property
    def steered_switches(self):
        """The switches whose steering policies the file declares."""
        return tuple(dict.fromkeys(p.switch for p in self.policies))


def _yaml_error(e):
    mark = getattr(e, "problem_mark", None)
    if getattr(e, "problem", None) and mark is not None:
        return (f"invalid YAML: {e.problem} at line {mark.line + 1} "
                f"column {mark.column + 1}")
    return "invalid YAML: " + " ".join(str(e).split())


def _check_keys(label, entry, allowed, required):
    for key in entry:
        if key not in allowed:
            raise MbxError(f"{label}: unknown key {key!r}; expected "
                           + ", ".join(allowed))
    for key in required:
        if key not in entry:
            raise MbxError(f"{label}: missing key {key!r}")


def _items(doc, key, what):
    """(label, item) for each item of list ``doc[key]``."""
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise MbxError(f"{key}: expected a list of {what}")
    return [(f"{key}[{i}]", item) for i, item in enumerate(items)]


def _entries(doc, key, what):
    """(label, mapping) for each item of list ``doc[key]``; the label names
    the entry, e.g. "vms[2] (a3)"."""
    out = []
    for label, entry in _items(doc, key, what):
        if not isinstance(entry, dict):
            raise MbxError(f"{label}: expected a mapping like {{name: ...}}")
        if isinstance(entry.get("name"), str):
            label += f" ({entry['name']})"
        out.append((label, entry))
    return out


def _value(label, func, value):
    try:
        return func(value)
    except MbxError as e:
        raise MbxError(f"{label}: {e}") from None


def _parse_switch(label, entry):
    _check_keys(label, entry, SWITCH_KEYS, ("name", "vni", "subnet"))
    if not isinstance(entry["vni"], int) or isinstance(entry["vni"], bool):
        raise MbxError(f"{label}: vni must be an integer, e.g. vni: 101")
    name = _value(label, lambda v: validate.name(v, "switch name"),
                  entry["name"])
    return SwitchInfo(name=name,
                      tenant=_value(label, validate.tenant,
                                    entry.get("tenant", name)),
                      vni=_value(label, validate.vni, entry["vni"]),
                      subnet=_value(label, validate.subnet, entry["subnet"]))


def _parse_vm(label, entry, vm_keys):
    _check_keys(label, entry, vm_keys, ("name", "switch", "ip"))
    name = _value(label, lambda v: validate.name(v, "VM name"), entry["name"])
    mac = entry.get("mac")
    if mac is None:
        mac = validate.mac_from_name(name)
    elif not isinstance(mac, str):
        raise MbxError(f'{label}: mac must be a quoted string, e.g. mac: '
                       '"02:00:00:00:01:01"')
    return VMInfo(name=name,
                  switch=_value(label, lambda v: validate.name(v, "switch"),
                                entry["switch"]),
                  mac=_value(label, validate.mac, mac),
                  ip=_value(label, validate.ipv4, entry["ip"]))


def _integer(label, key, value, example):
    if not isinstance(value, int) or isinstance(value, bool):
        raise MbxError(f"{label}: {key} must be an integer, e.g. {key}: "
                       f"{example}")
    return value


def _string(label, key, value, example):
    if not isinstance(value, str):
        raise MbxError(f"{label}: {key} must be a string, e.g. {key}: "
                       f"{example}")
    return value


def _parse_address_set(label, entry):
    _check_keys(label, entry, ADDRESS_SET_KEYS, ("name", "tenant"))
    addresses = entry.get("addresses")
    if addresses is None:
        addresses = []
    if not isinstance(addresses, list):
        raise MbxError(f"{label}: addresses must be a list, e.g. addresses: "
                       "[10.0.0.11, 10.0.1.0/24]")
    return AddressSetInfo(
        name=_value(label, lambda v: validate.name(v, "address set name"),
                    entry["name"]),
        tenant=_value(label, validate.tenant, entry["tenant"]),
        addresses=_value(label, validate.addresses, addresses))


def _parse_rule(label, entry):
    if not isinstance(entry, dict):
        raise MbxError(f"{label}: expected a mapping like {{priority: 100, "
                       "direction: to-vm, match: any, action: allow}}")
    _check_keys(label, entry, RULE_KEYS,
                ("priority", "direction", "match", "action"))
    match = _string(label, "match", entry["match"], '"proto=tcp dport=22"')
    return RuleRecord(
        priority=_value(label, validate.rule_priority, _integer(
            label, "priority", entry["priority"], 100)),
        direction=_value(label, validate.direction, entry["direction"]),
        match=_value(label, lambda v: validate.match(v).text, match),
        action=_value(label, validate.action, entry["action"]),
        tier=_value(label, validate.tier, entry.get("tier", "tenant")))


def _parse_middlebox(label, entry):
    """(MiddleboxInfo, its rules)."""
    _check_keys(label, entry, MIDDLEBOX_KEYS, ("name", "switch"))
    options = entry.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise MbxError(f"{label}: options must be a mapping, e.g. options: "
                       "{same-host: both}")
    for key, value in options.items():
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise MbxError(f"{label}: option {key!r} must be a string or a "
                           "number")
    mb = MiddleboxInfo(
        name=_value(label, lambda v: validate.name(v, "middlebox name"),
                    entry["name"]),
        type=_value(label, validate.middlebox_type,
                    entry.get("type", "firewall")),
        switch=_value(label, lambda v: validate.name(v, "switch"),
                      entry["switch"]),
        default_action=_value(label, lambda v: validate.action(
            v, "default action"), entry.get("default_action", "deny")),
        options=_value(label, validate.middlebox_options,
                       {k: v if isinstance(v, str) else str(v)
                        for k, v in options.items()}))
    if not isinstance(entry.get("rules") or [], list):
        raise MbxError(f"{label}: rules must be a list, e.g. rules: "
                       "[{priority: 100, direction: to-vm, match: any, "
                       "action: allow}]")
    rules = []
    for rule_label, item in _items(entry, "rules", "rules"):
        rule_label = f"{label}: {rule_label}"
        rule = _parse_rule(rule_label, item)
        validate.check_rule_unique(mb, rule, rules, rule_label)
        rules.append(rule)
    return mb, tuple(rules)


def _parse_policy(label, entry):
    _check_keys(label, entry, STEERING_KEYS,
                ("switch", "priority", "match", "middlebox"))
    match = _string(label, "match", entry["match"], "any")
    middlebox = entry["middlebox"]
    return PolicyInfo(
        switch=_value(label, lambda v: validate.name(v, "switch"),
                      entry["switch"]),
        priority=_value(label, validate.steer_priority, _integer(
            label, "priority", entry["priority"], 100)),
        match=_value(label, lambda v: validate.match(v).text, match),
        middlebox=None if middlebox == "bypass" else _value(
            label, lambda v: validate.name(
                v, "middlebox name (or bypass)"), middlebox))


def _unique(label, kind, name, seen):
    if name in seen:
        raise MbxError(f"{label}: {kind} '{name}' is listed twice")
    seen.add(name)


def parse_topology(text, allow_placement=False) -> TopologySpec:
    """Parse and check a topology file's text; pure, raises MbxError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MbxError(_yaml_error(e)) from None
    if doc is None:
        return TopologySpec()
    top_keys = TOP_KEYS + (LAB_TOP_KEYS if allow_placement else ())
    if not isinstance(doc, dict):
        raise MbxError("topology: expected a mapping with keys "
                       + ", ".join(top_keys))
    _check_keys("topology", doc, top_keys, ())

    hosts = []
    for label, host in _items(doc, "hosts", "host names"):
        host = _value(label, lambda v: validate.name(v, "host name"), host)
        _unique(label, "host", host, set(hosts))
        hosts.append(host)

    switches, names = [], set()
    for label, entry in _entries(doc, "switches", "switches"):
        sw = _parse_switch(label, entry)
        _unique(label, "switch", sw.name, names)
        validate.check_switch(sw, switches, label)
        switches.append(sw)

    vm_keys = VM_KEYS + (LAB_VM_KEYS if allow_placement else ())
    by_switch = {sw.name: sw for sw in switches}
    vms, names, placement = [], set(), {}
    for label, entry in _entries(doc, "vms", "VMs"):
        vm = _parse_vm(label, entry, vm_keys)
        _unique(label, "VM", vm.name, names)
        if vm.switch in by_switch:
            validate.check_vm(vm, by_switch, vms, label)
        if "host" in entry:
            if entry["host"] not in hosts:
                raise MbxError(f"{label}: host {entry['host']!r} is not in "
                               "the hosts list")
            placement[vm.name] = entry["host"]
        vms.append(vm)

    address_sets, names = [], set()
    for label, entry in _entries(doc, "address_sets", "address sets"):
        aset = _parse_address_set(label, entry)
        _unique(label, "address set", aset.name, names)
        address_sets.append(aset)

    middleboxes, rules, names = [], {}, set()
    for label, entry in _entries(doc, "middleboxes", "middleboxes"):
        mb, mb_rules = _parse_middlebox(label, entry)
        _unique(label, "middlebox", mb.name, names)
        middleboxes.append(mb)
        rules[mb.name] = mb_rules

    policies = []
    for label, entry in _steering_entries(doc):
        policy = _parse_policy(label, entry)
        validate.check_policy_unique(policy, policies, label)
        policies.append(policy)

    spec = TopologySpec(tuple(switches), tuple(vms), tuple(hosts), placement,
                        tuple(address_sets), tuple(middleboxes), rules,
                        tuple(policies))
    _check_firewall(spec, by_switch, {s.name: s for s in address_sets},
                    {mb.name: mb for mb in middleboxes}, rules,
                    spec.policies, partial=True)
    return spec


def _steering_entries(doc):
    """(label, mapping) of each steering entry, labelled "steering[i]
    (SWITCH priority P)"."""
    out = []
    for label, entry in _items(doc, "steering", "steering policies"):
        if not isinstance(entry, dict):
            raise MbxError(f"{label}: expected a mapping like {{switch: ..., "
                           "priority: ..., match: ..., middlebox: ...}")
        if isinstance(entry.get("switch"), str) and "priority" in entry:
            label += f" ({entry['switch']} priority {entry['priority']})"
        out.append((label, entry))
    return out


def _check_firewall(spec, switches, address_sets, middleboxes, rules,
                    policies, partial=False):
    """validate.check_firewall, naming the file's entries by their labels."""
    validate.check_firewall(
        switches, address_sets, middleboxes, rules, policies,
        mb_labels={mb.name: f"middleboxes[{i}] ({mb.name})"
                   for i, mb in enumerate(spec.middleboxes)},
        policy_labels={(p.switch, p.priority):
                       f"steering[{i}] ({p.switch} priority {p.priority})"
                       for i, p in enumerate(spec.policies)},
        partial=partial)


def check_against(spec, snapshot):
    """Check ``spec`` merged over the database ``snapshot``: every switch a
    VM names exists in one or the other, no VNI is used twice, every VM
    on a switch the file mentions fits that switch, and every middlebox,
    rule and steering policy (the file's and the database's) refers to
    switches, address sets and middleboxes that exist and fit."""
    switches = {**snapshot.switches, **{sw.name: sw for sw in spec.switches}}
    vms = {**snapshot.vms, **{vm.name: vm for vm in spec.vms}}
    for i, sw in enumerate(spec.switches):
        validate.check_switch(sw, switches.values(),
                              f"switches[{i}] ({sw.name})")
    vm_labels = {vm.name: f"vms[{i}] ({vm.name})"
                 for i, vm in enumerate(spec.vms)}
    file_switches = {sw.name for sw in spec.switches}
    for vm in vms.values():
        if vm.name in vm_labels or vm.switch in file_switches:
            validate.check_vm(vm, switches, vms.values(),
                              vm_labels.get(vm.name))
    steered = set(spec.steered_switches)
    _check_firewall(
        spec, switches,
        {**snapshot.address_sets, **{s.name: s for s in spec.address_sets}},
        {**snapshot.middleboxes, **{mb.name: mb for mb in spec.middleboxes}},
        {**snapshot.rules, **spec.rules},
        [p for p in snapshot.policies if p.switch not in steered]
        + list(spec.policies))


def _same(first, second):
    """Two collections of dataclass values hold the same values."""
    first, second = list(first), list(second)
    for value in first:
        if value not in second:
            return False
        second.remove(value)
    return not second


def apply_topology(api, spec):
    """Make the database hold ``spec``'s switches, VMs, address sets,
    middleboxes (with their rules) and steering policies, in one
    transaction: checked first against a snapshot, then again inside the
    transaction (``api.check``, ``api.check_firewall``) in case another
    client raced us."""
    snapshot = api.snapshot()
    check_against(spec, snapshot)
    with api.transaction(check_error=True) as txn:
        for sw in spec.switches:
            if snapshot.switches.get(sw.name) != sw:
                txn.add(api.upsert_switch(sw))
        for vm in spec.vms:
            if snapshot.vms.get(vm.name) != vm:
                txn.add(api.upsert_vm(vm))
        for aset in spec.address_sets:
            if snapshot.address_sets.get(aset.name) != aset:
                txn.add(api.upsert_address_set(aset))
        for mb in spec.middleboxes:
            rules = spec.rules.get(mb.name, ())
            if (snapshot.middleboxes.get(mb.name) != mb
                    or not _same(snapshot.rules.get(mb.name, ()), rules)):
                txn.add(api.upsert_middlebox(mb, rules))
        for switch in spec.steered_switches:
            policies = [p for p in spec.policies if p.switch == switch]
            if not _same([p for p in snapshot.policies
                          if p.switch == switch], policies):
                txn.add(api.replace_policies(switch, policies))
        txn.add(api.check([sw.name for sw in spec.switches],
                          [vm.name for vm in spec.vms]))
        txn.add(api.check_firewall())
