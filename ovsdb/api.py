"""Python API to the mbx config database (MBX_Northbound), built on ovsdbapp.

    nb = MbxNb.connect("unix:/run/mbx/nb.sock")
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add("ls-a", 101, "10.0.0.0/24"))
        txn.add(nb.vm_add("a1", "ls-a", "10.0.0.1"))
    nb.close()

Arguments are validated when a command is built (before anything is sent).
Constraints that involve other rows (unknown switch, duplicate VNI, IP or
MAC, unknown or foreign address set, duplicate rule or policy priority, a
row still in use) are checked inside ``run_idl`` against the database as the
transaction sees it, so they hold with concurrent clients: a transaction that
races another one is retried by the IDL and checked again.  Every failure is
an ``MbxError`` and leaves the database unchanged.
"""

import dataclasses
import errno
import os
import time
from typing import Dict, Optional, Tuple

from ovs import jsonrpc, poller, stream
from ovsdbapp import api as ovsdbapp_api
from ovsdbapp import exceptions
from ovsdbapp.backend import ovs_idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.backend.ovs_idl import transaction

from ovsdb import validate
from ovsdb.errors import MbxError
from ovsdb.match import parse_match
from ryu_apps.model import (AddressSetInfo, MiddleboxInfo, PolicyInfo,
                             SwitchInfo, VMInfo)

SCHEMA_NAME = "MBX_Northbound"


@dataclasses.dataclass(frozen=True)
class HostRecord:
    name: str
    encap_type: str
    encap_ip: str
    mgmt_address: str
    nb_cfg: int                     # status: config generation applied
    connected: bool                 # status: controller has the host's switch
    datapath_id: Optional[str]      # status: e.g. "0000aabbccddeeff"


@dataclasses.dataclass(frozen=True)
class RuleRecord:
    """A Firewall_Rule; ``uuid`` is not compared (a rule is its values)."""
    priority: int                   # 0..32767, higher first
    direction: str                  # "from-vm" | "to-vm"
    match: str                      # canonical ovsdb.match text
    action: str                     # "allow" | "deny" | "reject"
    tier: str = "tenant"            # "provider" | "tenant"
    uuid: str = dataclasses.field(default="", compare=False)


def _field(factory):
    return dataclasses.field(default_factory=factory)


@dataclasses.dataclass(frozen=True)
class NbSnapshot:
    nb_cfg: int
    hv_cfg: int
    hosts: Dict[str, HostRecord]
    switches: Dict[str, SwitchInfo]
    vms: Dict[str, VMInfo]
    vm_locations: Dict[str, Tuple[Optional[str], int]]  # vm -> (host, epoch)
    middleboxes: Dict[str, MiddleboxInfo] = _field(dict)
    # middlebox name -> its rules in evaluation order (sort_rules)
    rules: Dict[str, Tuple[RuleRecord, ...]] = _field(dict)
    # sorted by (switch, -priority); middlebox None: bypass
    policies: Tuple[PolicyInfo, ...] = ()
    address_sets: Dict[str, AddressSetInfo] = _field(dict)
    # status: (middlebox name, host name) -> slice tag
    slices: Dict[Tuple[str, str], int] = _field(dict)


def sort_rules(rules, tier_order="provider-first"):
    """Rules in evaluation order: by direction (from-vm, to-vm), then tier
    (the middlebox's ``tier-order`` option), then descending priority."""
    tiers = validate.TIERS if tier_order != "tenant-first" else tuple(
        reversed(validate.TIERS))
    return tuple(sorted(rules, key=lambda r: (
        r.direction, tiers.index(r.tier) if r.tier in tiers else 2,
        -r.priority, r.match)))


# --- reading rows (the transaction's view when called from run_idl) ---------

def _rows(api, table):
    return list(api.tables[table].rows.values())


def _find(api, table, name):
    for row in _rows(api, table):
        if row.name == name:
            return row
    return None


def _nb_global(api):
    rows = _rows(api, "NB_Global")
    return rows[0] if rows else None


def _switch_info(row):
    return SwitchInfo(row.name, row.tenant, row.vni, row.subnet)


def _vm_info(row):
    return VMInfo(row.name, row.logical_switch.name, row.mac, row.ip)


def _switches(api):
    return {row.name: _switch_info(row) for row in _rows(api, "Logical_Switch")}


def _vms(api):
    return [_vm_info(row) for row in _rows(api, "VM")]


def _mb_info(row):
    return MiddleboxInfo(row.name, row.type, row.logical_switch.name,
                         row.default_action, dict(row.options))


def _middleboxes(api):
    return {row.name: _mb_info(row) for row in _rows(api, "Middlebox")
            if row.logical_switch is not None}


def _rule_record(row):
    return RuleRecord(row.priority, row.direction, row.match, row.action,
                      row.tier, str(row.uuid))


def _rules(api):
    """Middlebox name -> its rules (the rows its ``rules`` column holds)."""
    return {row.name: sort_rules([_rule_record(r) for r in row.rules
                                  if r is not None],
                                 dict(row.options).get("tier-order", ""))
            for row in _rows(api, "Middlebox")}


def _sorted_addresses(values):
    try:
        return validate.addresses(values)
    except MbxError:                    # not written by mbx: keep as is
        return tuple(sorted(values))


def _address_set_info(row):
    return AddressSetInfo(row.name, row.tenant,
                          _sorted_addresses(row.addresses))


def _address_sets(api):
    return {row.name: _address_set_info(row)
            for row in _rows(api, "Address_Set")}


def _policy_info(row):
    return PolicyInfo(row.logical_switch.name, row.priority, row.match,
                      row.middlebox[0].name if row.middlebox else None)


def _policy_rows(api, switch=None):
    return [row for row in _rows(api, "Steering_Policy")
            if row.logical_switch is not None
            and (switch is None or row.logical_switch.name == switch)]


def _policies(api):
    return tuple(sorted((_policy_info(row) for row in _policy_rows(api)),
                        key=lambda p: (p.switch, -p.priority)))


def _set_rows(api, parsed):
    """The Address_Set rows of the sets ``parsed`` (a Match) names."""
    rows = []
    for set_name in sorted(parsed.address_sets):
        row = _find(api, "Address_Set", set_name)
        if row is None:
            raise MbxError(f'unknown address set "{set_name}"; create it '
                           "first (as-add)")
        rows.append(row)
    return rows


def _set_users(api, set_row):
    """Descriptions of the firewall rules and steering policies that
    reference Address_Set ``set_row``."""
    users = []
    for mb in sorted(_rows(api, "Middlebox"), key=lambda r: r.name):
        rules = [_rule_record(rule) for rule in mb.rules
                 if rule is not None and set_row in rule.address_sets]
        users += [f"middlebox '{mb.name}' {validate.describe_rule(rule)}"
                  for rule in sort_rules(rules)]
    for policy in _policies(api):
        if set_row.name in parse_match(policy.match).address_sets:
            users.append(f"logical switch '{policy.switch}' "
                         f"{validate.describe_policy(policy)}")
    return users


def _require(api, table, name, what):
    row = _find(api, table, name)
    if row is None:
        raise MbxError(f"unknown {what} '{name}'")
    return row


def _text(value):
    """A field value as mbxctl shows it: "[a, b]" for a sequence, "{k=v}"
    for a mapping."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(
            value.items())) + "}"
    return str(value)


def _differences(current, wanted):
    """'vni 5 (not 6), ...' for fields of two dataclasses that differ."""
    return ", ".join(
        f"{f.name} {_text(getattr(current, f.name))} "
        f"(not {_text(getattr(wanted, f.name))})"
        for f in dataclasses.fields(current)
        if getattr(current, f.name) != getattr(wanted, f.name))


def _refuse_existing(label, current, wanted, may_exist):
    """An add found ``label`` (e.g. "VM 'a1'") already there: fine with
    --may-exist when nothing differs, else one clear error."""
    if not may_exist:
        raise MbxError(f"{label} already exists; use --may-exist to accept an "
                       "identical one")
    diff = _differences(current, wanted)
    if diff:
        raise MbxError(f"{label} already exists with {diff}")


# --- commands ----------------------------------------------------------------

class _Command(command.BaseCommand):
    def execute(self, check_error=True, log_errors=False, **kwargs):
        return super().execute(check_error=check_error,
                               log_errors=log_errors, **kwargs)


class _ReadCommand(_Command):
    READ_ONLY = True


class LsAddCommand(_Command):
    def __init__(self, api, switch, may_exist=False):
        super().__init__(api)
        self.switch = switch
        self.may_exist = may_exist

    def run_idl(self, txn):
        sw = self.switch
        row = _find(self.api, "Logical_Switch", sw.name)
        if row is not None:
            _refuse_existing(f"logical switch '{sw.name}'", _switch_info(row), sw,
                             self.may_exist)
            return
        validate.check_switch(sw, _switches(self.api).values())
        row = txn.insert(self.api.tables["Logical_Switch"])
        row.name, row.tenant, row.vni, row.subnet = (
            sw.name, sw.tenant, sw.vni, sw.subnet)


class LsDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "Logical_Switch", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown logical switch '{self.name}'; use "
                           "--if-exists to ignore a missing one")
        users = sorted(vm.name for vm in _vms(self.api)
                       if vm.switch == self.name)
        if users:
            raise MbxError(f"logical switch '{self.name}' still has VMs "
                           f"{', '.join(users)}; delete them first (vm-del)")
        policies = sorted((p.priority for p in _policies(self.api)
                           if p.switch == self.name), reverse=True)
        if policies:
            raise MbxError(f"logical switch '{self.name}' still has steering "
                           "policies at priority "
                           f"{', '.join(map(str, policies))}; delete them "
                           f"first (steer-del {self.name})")
        middleboxes = sorted(mb.name for mb in _middleboxes(self.api).values()
                             if mb.switch == self.name)
        if middleboxes:
            raise MbxError(f"logical switch '{self.name}' still has "
                           f"middleboxes {', '.join(middleboxes)}; delete "
                           "them first (mb-del)")
        row.delete()


class VmAddCommand(_Command):
    def __init__(self, api, vm, mac_given, may_exist=False):
        super().__init__(api)
        self.vm = vm
        self.mac_given = mac_given
        self.may_exist = may_exist

    def run_idl(self, txn):
        vm = self.vm
        row = _find(self.api, "VM", vm.name)
        if row is not None:
            current = _vm_info(row)
            if not self.mac_given:
                vm = dataclasses.replace(vm, mac=current.mac)
            _refuse_existing(f"VM '{vm.name}'", current, vm, self.may_exist)
            return
        validate.check_vm(vm, _switches(self.api), _vms(self.api))
        row = txn.insert(self.api.tables["VM"])
        row.name, row.mac, row.ip = vm.name, vm.mac, vm.ip
        row.logical_switch = _find(self.api, "Logical_Switch", vm.switch)
        row.location_epoch = 0


class VmDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "VM", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown VM '{self.name}'; use --if-exists to "
                           "ignore a missing one")
        row.delete()


class UpsertSwitchCommand(_Command):
    """Create or update a switch without checks (see CheckCommand)."""

    def __init__(self, api, switch):
        super().__init__(api)
        self.switch = switch

    def run_idl(self, txn):
        sw = self.switch
        row = _find(self.api, "Logical_Switch", sw.name)
        if row is None:
            row = txn.insert(self.api.tables["Logical_Switch"])
            row.name = sw.name
        row.tenant, row.vni, row.subnet = sw.tenant, sw.vni, sw.subnet


class UpsertVmCommand(_Command):
    """Create or update a VM without checks (see CheckCommand)."""

    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        vm = self.vm
        switch = _find(self.api, "Logical_Switch", vm.switch)
        if switch is None:
            raise MbxError(f"VM '{vm.name}': unknown logical switch "
                           f"'{vm.switch}'; create it first")
        row = _find(self.api, "VM", vm.name)
        if row is None:
            row = txn.insert(self.api.tables["VM"])
            row.name, row.location_epoch = vm.name, 0
        row.logical_switch, row.mac, row.ip = switch, vm.mac, vm.ip


class CheckCommand(_Command):
    """Check the named switches, their VMs and the named VMs against the
    database as the transaction leaves it.  Added after a batch of upserts,
    so a batch that is consistent as a whole passes whatever its order."""

    def __init__(self, api, switch_names, vm_names):
        super().__init__(api)
        self.switch_names = set(switch_names)
        self.vm_names = set(vm_names)

    def run_idl(self, txn):
        switches = _switches(self.api)
        vms = _vms(self.api)
        for name in sorted(self.switch_names):
            validate.check_switch(switches[name], switches.values())
        for vm in vms:
            if vm.name in self.vm_names or vm.switch in self.switch_names:
                validate.check_vm(vm, switches, vms)


class MbAddCommand(_Command):
    def __init__(self, api, mb, may_exist=False):
        super().__init__(api)
        self.mb = mb
        self.may_exist = may_exist

    def run_idl(self, txn):
        mb = self.mb
        row = _find(self.api, "Middlebox", mb.name)
        if row is not None:
            _refuse_existing(f"middlebox '{mb.name}'", _mb_info(row), mb, self.may_exist)
            return
        validate.check_middlebox(mb, _switches(self.api))
        row = txn.insert(self.api.tables["Middlebox"])
        row.name, row.type, row.default_action = (
            mb.name, mb.type, mb.default_action)
        row.logical_switch = _find(self.api, "Logical_Switch", mb.switch)
        row.options = dict(mb.options)
        row.rules = []


def _drop_rule(rule):
    """Let a Firewall_Rule go, in a transaction that unlinks it from its
    middlebox.  It is a child row: python-ovs sends no delete for it, and
    ovsdb-server garbage-collects it only after checking references, so its
    own references to address sets are cleared first -- otherwise deleting
    such a set in the same transaction fails."""
    rule.address_sets = []


class MbDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "Middlebox", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown middlebox '{self.name}'; use "
                           "--if-exists to ignore a missing one")
        users = [p for p in _policies(self.api) if p.middlebox == self.name]
        if users:
            where = ", ".join(f"{p.switch} priority {p.priority}"
                              for p in users)
            first = users[0]
            raise MbxError(
                f"middlebox '{self.name}' is still used by steering "
                f"polic{'y' if len(users) == 1 else 'ies'} {where}; delete "
                f"{'it' if len(users) == 1 else 'them'} first (steer-del "
                f"{first.switch} {first.priority})")
        for rule in row.rules:
            if rule is not None:
                _drop_rule(rule)
        row.delete()


class MbSetCommand(_Command):
    def __init__(self, api, name, default_action, options):
        super().__init__(api)
        self.name = name
        self.default_action = default_action
        self.options = options

    def run_idl(self, txn):
        row = _require(self.api, "Middlebox", self.name, "middlebox")
        if self.default_action is not None:
            row.default_action = self.default_action
        if self.options:
            row.verify("options")
            options = dict(row.options)
            for key, value in self.options.items():
                if value == "":
                    options.pop(key, None)
                else:
                    options[key] = value
            row.options = options


class FwAddCommand(_Command):
    def __init__(self, api, mb_name, rule):
        super().__init__(api)
        self.mb_name = mb_name
        self.rule = rule

    def run_idl(self, txn):
        rule = self.rule
        row = _find(self.api, "Middlebox", self.mb_name)
        if row is None:
            raise MbxError(f"unknown middlebox '{self.mb_name}'; create it "
                           "first (mb-add)")
        mb = _mb_info(row)
        row.verify("rules")
        validate.check_rule(mb, rule, _switches(self.api),
                            _address_sets(self.api))
        validate.check_rule_unique(
            mb, rule, [_rule_record(r) for r in row.rules if r is not None])
        new = txn.insert(self.api.tables["Firewall_Rule"])
        new.priority, new.direction, new.match = (
            rule.priority, rule.direction, rule.match)
        new.action, new.tier = rule.action, rule.tier
        new.address_sets = _set_rows(self.api, parse_match(rule.match))
        row.rules = list(row.rules) + [new]


class FwDelCommand(_Command):
    def __init__(self, api, mb_name, direction, priority, tier, if_exists):
        super().__init__(api)
        self.mb_name = mb_name
        self.direction = direction
        self.priority = priority
        self.tier = tier
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "Middlebox", self.mb_name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown middlebox '{self.mb_name}'; use "
                           "--if-exists to ignore a missing one")
        row.verify("rules")
        rules = [r for r in row.rules if r is not None]
        if self.direction is None:
            doomed = [r for r in rules
                      if self.tier is None or r.tier == self.tier]
        else:
            tier = self.tier or "tenant"
            doomed = [r for r in rules if (r.direction, r.tier, r.priority)
                      == (self.direction, tier, self.priority)]
            if not doomed:
                if self.if_exists:
                    return
                raise MbxError(f"middlebox '{self.mb_name}' has no {tier} "
                               f"{self.direction} rule at priority "
                               f"{self.priority}; use --if-exists to ignore "
                               "a missing one")
        if not doomed:
            return
        row.rules = [r for r in rules if r not in doomed]
        for rule in doomed:
            _drop_rule(rule)


class AsAddCommand(_Command):
    def __init__(self, api, aset, may_exist=False):
        super().__init__(api)
        self.aset = aset
        self.may_exist = may_exist

    def run_idl(self, txn):
        aset = self.aset
        row = _find(self.api, "Address_Set", aset.name)
        if row is not None:
            _refuse_existing(f'address set "{aset.name}"', _address_set_info(row), aset,
                             self.may_exist)
            return
        row = txn.insert(self.api.tables["Address_Set"])
        row.name, row.tenant = aset.name, aset.tenant
        row.addresses = list(aset.addresses)


class AsSetCommand(_Command):
    def __init__(self, api, name, addresses):
        super().__init__(api)
        self.name = name
        self.addresses = addresses

    def run_idl(self, txn):
        row = _find(self.api, "Address_Set", self.name)
        if row is None:
            raise MbxError(f'unknown address set "{self.name}"; create it '
                           "first (as-add)")
        row.addresses = list(self.addresses)


class AsDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "Address_Set", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f'unknown address set "{self.name}"; use '
                           "--if-exists to ignore a missing one")
        users = _set_users(self.api, row)
        if users:
            raise MbxError(f'address set "{self.name}" is still used by '
                           f"{'; '.join(users)}; change or delete "
                           f"{'it' if len(users) == 1 else 'them'} first "
                           "(fw-del, steer-del)")
        row.delete()


class SteerAddCommand(_Command):
    def __init__(self, api, policy):
        super().__init__(api)
        self.policy = policy

    def run_idl(self, txn):
        policy = self.policy
        switch = _find(self.api, "Logical_Switch", policy.switch)
        if switch is None:
            raise MbxError(f"unknown logical switch '{policy.switch}'; "
                           "create it first (ls-add)")
        validate.check_policy(policy, _switches(self.api),
                              _middleboxes(self.api), _address_sets(self.api))
        validate.check_policy_unique(policy, _policies(self.api))
        _insert_policy(self.api, txn, switch, policy)


def _insert_policy(api, txn, switch, policy):
    row = txn.insert(api.tables["Steering_Policy"])
    row.logical_switch, row.priority, row.match = (
        switch, policy.priority, policy.match)
    row.address_sets = _set_rows(api, parse_match(policy.match))
    row.middlebox = [] if policy.middlebox is None else [
        _require(api, "Middlebox", policy.middlebox, "middlebox")]


class SteerDelCommand(_Command):
    def __init__(self, api, switch, priority, if_exists=False):
        super().__init__(api)
        self.switch = switch
        self.priority = priority
        self.if_exists = if_exists

    def run_idl(self, txn):
        if _find(self.api, "Logical_Switch", self.switch) is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown logical switch '{self.switch}'; use "
                           "--if-exists to ignore a missing one")
        doomed = [row for row in _policy_rows(self.api, self.switch)
                  if self.priority is None or row.priority == self.priority]
        if not doomed and self.priority is not None and not self.if_exists:
            raise MbxError(f"logical switch '{self.switch}' has no steering "
                           f"policy at priority {self.priority}; use "
                           "--if-exists to ignore a missing one")
        for row in doomed:
            row.delete()


class RequireCommand(_Command):
    """Fails unless a row named ``name`` exists (for reads in a chain)."""

    def __init__(self, api, table, name, what):
        super().__init__(api)
        self.table = table
        self.name = name
        self.what = what

    def run_idl(self, txn):
        _require(self.api, self.table, self.name, self.what)


class SetSlicesCommand(_Command):
    def __init__(self, api, desired):
        super().__init__(api)
        self.desired = desired

    def run_idl(self, txn):
        middleboxes = {row.name: row for row in _rows(self.api, "Middlebox")}
        hosts = {row.name: row for row in _rows(self.api, "Host")}
        wanted = {key: tag for key, tag in self.desired.items()
                  if key[0] in middleboxes and key[1] in hosts}
        seen = set()
        for row in _rows(self.api, "Slice"):
            key = (row.middlebox[0].name if row.middlebox else None,
                   row.host[0].name if row.host else None)
            if key not in wanted or key in seen:
                row.delete()
                continue
            seen.add(key)
            if row.tag != wanted[key]:
                row.tag = wanted[key]
        for (mb, host), tag in sorted(wanted.items()):
            if (mb, host) not in seen:
                row = txn.insert(self.api.tables["Slice"])
                row.middlebox, row.host, row.tag = (
                    [middleboxes[mb]], [hosts[host]], tag)


class UpsertAddressSetCommand(_Command):
    """Create or update an address set without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, aset):
        super().__init__(api)
        self.aset = aset

    def run_idl(self, txn):
        aset = self.aset
        row = _find(self.api, "Address_Set", aset.name)
        if row is None:
            row = txn.insert(self.api.tables["Address_Set"])
            row.name = aset.name
        row.tenant, row.addresses = aset.tenant, list(aset.addresses)


class UpsertMiddleboxCommand(_Command):
    """Create or update a middlebox and make its rules exactly ``rules``
    (rules that stay keep their rows), without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, mb, rules):
        super().__init__(api)
        self.mb = mb
        self.rules = rules

    def run_idl(self, txn):
        mb = self.mb
        switch = _find(self.api, "Logical_Switch", mb.switch)
        if switch is None:
            raise MbxError(f"middlebox '{mb.name}': unknown logical switch "
                           f"'{mb.switch}'; create it first")
        row = _find(self.api, "Middlebox", mb.name)
        if row is None:
            row = txn.insert(self.api.tables["Middlebox"])
            row.name, row.rules = mb.name, []
        row.type, row.logical_switch = mb.type, switch
        row.default_action, row.options = mb.default_action, dict(mb.options)
        row.verify("rules")
        keep, wanted = [], list(self.rules)
        for rule in row.rules:
            if rule is None:
                continue
            record = _rule_record(rule)
            if record in wanted:
                wanted.remove(record)
                keep.append(rule)
            else:
                _drop_rule(rule)
        for rule in wanted:
            new = txn.insert(self.api.tables["Firewall_Rule"])
            new.priority, new.direction, new.match = (
                rule.priority, rule.direction, rule.match)
            new.action, new.tier = rule.action, rule.tier
            new.address_sets = _set_rows(self.api, parse_match(rule.match))
            keep.append(new)
        row.rules = keep


class ReplacePoliciesCommand(_Command):
    """Make the steering policies of ``switch`` exactly ``policies``
    (policies that stay keep their rows), without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, switch, policies):
        super().__init__(api)
        self.switch = switch
        self.policies = policies

    def run_idl(self, txn):
        switch = _find(self.api, "Logical_Switch", self.switch)
        if switch is None:
            raise MbxError(f"unknown logical switch '{self.switch}'; create "
                           "it first")
        wanted = list(self.policies)
        for row in _policy_rows(self.api, self.switch):
            policy = _policy_info(row)
            if policy in wanted:
                wanted.remove(policy)
            else:
                row.delete()
        for policy in wanted:
            _insert_policy(self.api, txn, switch, policy)


class CheckFirewallCommand(_Command):
    """Check every middlebox, rule and steering policy against the database
    as the transaction leaves it (validate.check_firewall).  Added after a
    batch of upserts, like CheckCommand."""

    def run_idl(self, txn):
        validate.check_firewall(
            _switches(self.api), _address_sets(self.api),
            _middleboxes(self.api), _rules(self.api), _policies(self.api))


class HostRegisterCommand(_Command):
    def __init__(self, api, name, encap_type, encap_ip, mgmt_address):
        super().__init__(api)
        self.name = name
        self.encap_type = encap_type
        self.encap_ip = encap_ip
        self.mgmt_address = mgmt_address

    def run_idl(self, txn):
        for other in _rows(self.api, "Host"):
            if other.name != self.name and other.encap_ip == self.encap_ip:
                raise MbxError(f"encap IP {self.encap_ip} is already used by "
                               f"host '{other.name}'; give each host its own")
        row = _find(self.api, "Host", self.name)
        if row is None:
            row = txn.insert(self.api.tables["Host"])
            row.name, row.nb_cfg, row.connected = self.name, 0, False
        row.encap_type = self.encap_type
        row.encap_ip = self.encap_ip
        row.mgmt_address = self.mgmt_address


class EnsureNbGlobalCommand(_Command):
    def run_idl(self, txn):
        self.result = _nb_global(self.api) or _insert_nb_global(self.api, txn)


def _insert_nb_global(api, txn):
    row = txn.insert(api.tables["NB_Global"])
    row.name, row.nb_cfg, row.hv_cfg, row.hv_cfg_timestamp = "", 0, 0, 0
    return row


class BumpNbCfgCommand(_Command):
    def run_idl(self, txn):
        row = _nb_global(self.api)
        if row is None:
            row = _insert_nb_global(self.api, txn)
        else:
            row.verify("nb_cfg")
        self.result = row.nb_cfg + 1
        row.nb_cfg = self.result


class SetHostStatusCommand(_Command):
    def __init__(self, api, name, nb_cfg, connected, datapath_id):
        super().__init__(api)
        self.name = name
        self.columns = {"nb_cfg": nb_cfg, "connected": connected,
                        "datapath_id": datapath_id}

    def run_idl(self, txn):
        row = _require(self.api, "Host", self.name, "host")
        for column, value in self.columns.items():
            if column == "datapath_id" and value is not None:
                value = [value] if value else []
            if value is not None:
                setattr(row, column, value)


class SetVmLocationCommand(_Command):
    def __init__(self, api, vm_name, host_name, epoch):
        super().__init__(api)
        self.vm_name = vm_name
        self.host_name = host_name
        self.epoch = epoch

    def run_idl(self, txn):
        row = _require(self.api, "VM", self.vm_name, "VM")
        host = []
        if self.host_name is not None:
            host = [_require(self.api, "Host", self.host_name, "host")]
        row.host = host
        row.location_epoch = self.epoch


class SetHvCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.hv_cfg = self.value
        row.hv_cfg_timestamp = int(time.time() * 1000)


class SnapshotCommand(_ReadCommand):
    def run_idl(self, txn):
        nb = _nb_global(self.api)
        hosts, locations = {}, {}
        for row in _rows(self.api, "Host"):
            hosts[row.name] = HostRecord(
                row.name, row.encap_type, row.encap_ip, row.mgmt_address,
                row.nb_cfg, row.connected,
                row.datapath_id[0] if row.datapath_id else None)
        for row in _rows(self.api, "VM"):
            locations[row.name] = (row.host[0].name if row.host else None,
                                   row.location_epoch)
        slices = {}
        for row in _rows(self.api, "Slice"):
            if row.middlebox and row.host:
                slices[(row.middlebox[0].name, row.host[0].name)] = row.tag
        self.result = NbSnapshot(
            nb_cfg=nb.nb_cfg if nb else 0, hv_cfg=nb.hv_cfg if nb else 0,
            hosts=hosts, switches=_switches(self.api),
            vms={vm.name: vm for vm in _vms(self.api)},
            vm_locations=locations, middleboxes=_middleboxes(self.api),
            rules=_rules(self.api), policies=_policies(self.api),
            address_sets=_address_sets(self.api), slices=slices)


# --- connection ---------------------------------------------------------------

def _unreachable(remote, reason):
    return MbxError(f"cannot connect to config database at {remote}: "
                    f"{reason}; is the lab up? set --db or MBX_DB")


def _fetch_schema(remote, timeout):
    """The schema JSON of MBX_Northbound served at ``remote``, or MbxError
    within about ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    def remaining_ms():
        return max(0, int((deadline - time.monotonic()) * 1000))

    err, strm = stream.Stream.open_block(stream.Stream.open(remote),
                                         remaining_ms())
    if err:
        raise _unreachable(remote, os.strerror(err))
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request("get_schema", [SCHEMA_NAME])
        err = rpc.send(request)
        while not err:
            err, reply = rpc.recv()
            if err == errno.EAGAIN:
                if not remaining_ms():
                    raise _unreachable(remote, f"no answer within {timeout}s")
                rpc.run()
                wait = poller.Poller()
                rpc.wait(wait)
                rpc.recv_wait(wait)
                wait.timer_wait(remaining_ms())
                wait.block()
                err = 0
            elif not err and reply.id == request.id:
                if reply.error:
                    raise _unreachable(remote, f"it serves no {SCHEMA_NAME} "
                                       "database")
                return reply.result
        raise _unreachable(remote, os.strerror(err) if err > 0 else "EOF")
    finally:
        rpc.close()


class _NbIdl(connection.OvsdbIdl):
    on_change = None

    def notify(self, event, row, updates=None):
        if self.on_change is not None:
            self.on_change(row._table.name)


class _Transaction(transaction.Transaction):
    """Reports OVSDB-level failures as MbxError."""

    def commit(self):
        try:
            return super().commit()
        except MbxError:
            raise
        except (RuntimeError, exceptions.TimeoutException) as e:
            raise MbxError(f"config database transaction failed: {e}") from e


class MbxNb(ovs_idl.Backend, ovsdbapp_api.API):
    schema = SCHEMA_NAME
    lookup_table = {
        table: idlutils.RowLookup(table, "name", None)
        for table in ("Host", "Logical_Switch", "VM", "Middlebox",
                      "Address_Set")}

    @classmethod
    def connect(cls, remote, timeout=5.0, on_change=None):
        """Connect to the config database at ``remote`` ("unix:PATH",
        "tcp:IP:PORT").  ``on_change(table_name)`` is called from the IDL
        thread after any row changes; it must be cheap (e.g. queue.put)."""
        helper = idlutils.create_schema_helper(_fetch_schema(remote, timeout))
        helper.register_all()
        idl = _NbIdl(remote, helper)
        idl.on_change = on_change
        conn = connection.Connection(idl, timeout)
        # The Backend keeps its connection at class level: each connection
        # gets a class of its own so several can coexist in one process.
        own_class = type(cls.__name__, (cls,), {
            "_ovsdb_connection": None, "__module__": cls.__module__})
        nb = own_class(conn, start=False)
        try:
            conn.start()
        except Exception as e:
            idl.close()
            raise _unreachable(remote, str(e) or type(e).__name__) from e
        return nb

    def close(self):
        self.ovsdb_connection.stop(timeout=5)

    def create_transaction(self, check_error=True, log_errors=False, **kw):
        return _Transaction(self, self.ovsdb_connection,
                            self.ovsdb_connection.timeout,
                            check_error, log_errors)

    def transaction(self, check_error=True, log_errors=False, **kwargs):
        return super().transaction(check_error, log_errors, **kwargs)

    # --- user writes ---

    def ls_add(self, name, vni, subnet, tenant=None, may_exist=False):
        switch = SwitchInfo(
            validate.name(name, "logical switch name"),
            validate.tenant(name if tenant is None else tenant),
            validate.vni(vni), validate.subnet(subnet))
        return LsAddCommand(self, switch, may_exist)

    def ls_del(self, name, if_exists=False):
        return LsDelCommand(self, name, if_exists)

    def vm_add(self, name, switch, ip, mac=None, may_exist=False):
        vm = VMInfo(validate.name(name, "VM name"),
                    validate.name(switch, "logical switch name"),
                    validate.mac(mac) if mac is not None
                    else validate.mac_from_name(name),
                    validate.ipv4(ip))
        return VmAddCommand(self, vm, mac is not None, may_exist)

    def vm_del(self, name, if_exists=False):
        return VmDelCommand(self, name, if_exists)

    def mb_add(self, name, switch, type="firewall", default_action="deny",
               options=None, may_exist=False):
        mb = MiddleboxInfo(validate.name(name, "middlebox name"),
                           validate.middlebox_type(type),
                           validate.name(switch, "logical switch name"),
                           validate.action(default_action, "default action"),
                           validate.middlebox_options(options or {}))
        return MbAddCommand(self, mb, may_exist)

    def mb_del(self, name, if_exists=False):
        """Deletes the middlebox and its rules; refused while a steering
        policy uses it."""
        return MbDelCommand(self, name, if_exists)

    def mb_set(self, name, default_action=None, options=None):
        """Merges ``options`` into the middlebox's; a value "" removes the
        key."""
        if default_action is not None:
            default_action = validate.action(default_action, "default action")
        checked = {}
        for key, value in (options or {}).items():
            if value == "":
                checked[validate.middlebox_option_key(key)] = ""
            else:
                checked[key] = validate.middlebox_option(key, value)
        return MbSetCommand(self, name, default_action, checked)

    def fw_add(self, mb, priority, direction, match, action, tier="tenant"):
        rule = RuleRecord(validate.rule_priority(priority),
                          validate.direction(direction),
                          validate.match(match).text,
                          validate.action(action), validate.tier(tier))
        return FwAddCommand(self, mb, rule)

    def fw_del(self, mb, direction=None, priority=None, tier=None,
               if_exists=False):
        """Without ``direction`` and ``priority``: every rule of ``mb`` (of
        ``tier`` if given); with both: that rule of ``tier`` (default
        tenant)."""
        if (direction is None) != (priority is None):
            raise MbxError("give both a direction and a priority to delete "
                           "one rule, or neither to delete every rule")
        if direction is not None:
            direction = validate.direction(direction)
            priority = validate.rule_priority(priority)
        if tier is not None:
            tier = validate.tier(tier)
        return FwDelCommand(self, mb, direction, priority, tier, if_exists)

    def as_add(self, name, tenant, addresses=(), may_exist=False):
        aset = AddressSetInfo(validate.name(name, "address set name"),
                              validate.tenant(tenant),
                              validate.addresses(addresses))
        return AsAddCommand(self, aset, may_exist)

    def as_set(self, name, addresses):
        """Replaces the members of address set ``name``."""
        return AsSetCommand(self, name, validate.addresses(addresses))

    def as_del(self, name, if_exists=False):
        """Refused while a firewall rule or steering policy uses the set."""
        return AsDelCommand(self, name, if_exists)

    def steer_add(self, switch, priority, match, middlebox):
        """``middlebox`` is a middlebox of ``switch``, or "bypass"."""
        policy = PolicyInfo(
            validate.name(switch, "logical switch name"),
            validate.steer_priority(priority), validate.match(match).text,
            None if middlebox == "bypass"
            else validate.name(middlebox, "middlebox name"))
        return SteerAddCommand(self, policy)

    def steer_del(self, switch, priority=None, if_exists=False):
        """Without ``priority``: every steering policy of ``switch``."""
        if priority is not None:
            priority = validate.steer_priority(priority)
        return SteerDelCommand(self, switch, priority, if_exists)

    def require_middlebox(self, name):
        """Fails unless middlebox ``name`` exists (e.g. before fw-list)."""
        return RequireCommand(self, "Middlebox", name, "middlebox")

    def upsert_address_set(self, aset: AddressSetInfo):
        """Create or update ``aset``; follow a batch with
        ``check_firewall()``."""
        return UpsertAddressSetCommand(self, aset)

    def upsert_middlebox(self, mb: MiddleboxInfo, rules=()):
        """Create or update ``mb`` with exactly ``rules`` (RuleRecords);
        follow a batch with ``check_firewall()``."""
        return UpsertMiddleboxCommand(self, mb, tuple(rules))

    def replace_policies(self, switch, policies):
        """Make ``switch``'s steering policies exactly ``policies``; follow
        a batch with ``check_firewall()``."""
        return ReplacePoliciesCommand(self, switch, tuple(policies))

    def check_firewall(self):
        return CheckFirewallCommand(self)

    def upsert_switch(self, switch: SwitchInfo):
        """Create or update ``switch``; follow a batch with ``check()``."""
        return UpsertSwitchCommand(self, switch)

    def upsert_vm(self, vm: VMInfo):
        """Create or update ``vm``; follow a batch with ``check()``."""
        return UpsertVmCommand(self, vm)

    def check(self, switch_names=(), vm_names=()):
        return CheckCommand(self, switch_names, vm_names)

    def host_register(self, name, encap_type, encap_ip, mgmt_address):
        return HostRegisterCommand(
            self, validate.name(name, "host name"),
            validate.encap_type(encap_type),
            validate.ipv4(encap_ip, "encap IP"),
            validate.mgmt_address(mgmt_address))

    def ensure_nb_global(self):
        return EnsureNbGlobalCommand(self)

    def bump_nb_cfg(self):
        """Increments NB_Global.nb_cfg; the command's result is the new value."""
        return BumpNbCfgCommand(self)

    # --- status writes (the controller) ---

    def set_host_status(self, name, nb_cfg=None, connected=None,
                        datapath_id=None):
        """Columns left as None are unchanged; datapath_id "" clears it."""
        return SetHostStatusCommand(self, name, nb_cfg, connected, datapath_id)

    def set_vm_location(self, vm_name, host_name, epoch):
        return SetVmLocationCommand(self, vm_name, host_name, epoch)

    def set_hv_cfg(self, value):
        return SetHvCfgCommand(self, value)

    def set_slices(self, desired):
        """Make the Slice table exactly ``desired``, a dict (middlebox name,
        host name) -> tag; entries naming a missing middlebox or host are
        ignored."""
        return SetSlicesCommand(self, {
            (mb, host): validate.slice_tag(tag)
            for (mb, host), tag in desired.items()})

    # --- reads ---

    def snapshot(self) -> NbSnapshot:
        return SnapshotCommand(self).execute(check_error=True)

    def ls_list(self):
        return sorted(self.snapshot().switches.values(), key=lambda s: s.name)

    def vm_list(self, switch=None):
        return sorted((vm for vm in self.snapshot().vms.values()
                       if switch is None or vm.switch == switch),
                      key=lambda vm: vm.name)

    def host_list(self):
        return sorted(self.snapshot().hosts.values(), key=lambda h: h.name)

    def mb_list(self):
        return sorted(self.snapshot().middleboxes.values(),
                      key=lambda mb: mb.name)

    def fw_list(self, mb):
        """The rules of middlebox ``mb`` in evaluation order: by direction,
        tier (its tier-order option) and descending priority."""
        snap = self.snapshot()
        if mb not in snap.middleboxes:
            raise MbxError(f"unknown middlebox '{mb}'")
        return list(snap.rules.get(mb, ()))

    def as_list(self, tenant=None):
        return sorted((s for s in self.snapshot().address_sets.values()
                       if tenant is None or s.tenant == tenant),
                      key=lambda s: s.name)

    def steer_list(self, switch=None):
        """Sorted by switch, then descending priority."""
        return [p for p in self.snapshot().policies
                if switch is None or p.switch == switch]

    def wait_hv(self, nb_cfg, timeout):
        """Return once NB_Global.hv_cfg >= nb_cfg, else MbxError."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if snap.hv_cfg >= nb_cfg:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        behind = sorted(f"{h.name} (at {h.nb_cfg})"
                        for h in snap.hosts.values()
                        if h.connected and h.nb_cfg < nb_cfg)
        raise MbxError(
            f"timed out after {timeout:g}s waiting for hosts to apply config "
            f"{nb_cfg} (hv_cfg is {snap.hv_cfg}); behind: "
            + (", ".join(behind) or "no connected host; is the controller "
               "running?"))
