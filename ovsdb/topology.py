"""Declarative YAML topology: the switches and VMs that should exist.

    switches:
      - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24}
    vms:
      - {name: a1, switch: ls-a, ip: 10.0.0.1, mac: "02:00:00:00:01:01"}

``tenant`` defaults to the switch name; ``mac`` defaults to the VM's
deterministic generated MAC (``validate.mac_from_name``), so a file alone
determines every value.  Applying a file creates missing rows and updates
differing ones; rows it does not mention are left alone.

The lab's files may also place VMs on hosts (a top-level ``hosts:`` list of
host names and a per-VM ``host:`` key).  Only ``allow_placement=True``
accepts them; placement is returned in the spec, never written to the DB.
"""

import dataclasses
from typing import Mapping, Tuple

import yaml

from ovsdb import validate
from ovsdb.errors import MbxError
from ryu_apps.model import SwitchInfo, VMInfo

TOP_KEYS = ("switches", "vms")
SWITCH_KEYS = ("name", "tenant", "vni", "subnet")
VM_KEYS = ("name", "switch", "ip", "mac")
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
    return TopologySpec(tuple(switches), tuple(vms), tuple(hosts), placement)


def check_against(spec, snapshot):
    """Check ``spec`` merged over the database ``snapshot``: every switch a
    VM names exists in one or the other, no VNI is used twice, and every VM
    on a switch the file mentions fits that switch."""
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


def apply_topology(api, spec):
    """Make the database hold ``spec``'s switches and VMs, in one
    transaction: checked first against a snapshot, then again inside the
    transaction (``api.check``) in case another client raced us."""
    snapshot = api.snapshot()
    check_against(spec, snapshot)
    with api.transaction(check_error=True) as txn:
        for sw in spec.switches:
            if snapshot.switches.get(sw.name) != sw:
                txn.add(api.upsert_switch(sw))
        for vm in spec.vms:
            if snapshot.vms.get(vm.name) != vm:
                txn.add(api.upsert_vm(vm))
        txn.add(api.check([sw.name for sw in spec.switches],
                          [vm.name for vm in spec.vms]))
