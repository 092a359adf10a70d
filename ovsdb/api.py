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
import ipaddress
import os
import secrets
import time
import uuid as uuidlib

from ovs import jsonrpc, poller, stream
from ovsdbapp import api as ovsdbapp_api
from ovsdbapp import exceptions
from ovsdbapp.backend import ovs_idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.backend.ovs_idl import transaction

from ovsdb import validate
from ovsdb.errors import MbxError
from ovsdb.match import parse_match
from mbxmodel import rows as from_row
from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, PolicyInfo,
                               RuleInfo, bare)
from mbxmodel.snapshot import NbSnapshot
from mbxmodel.state import (ACTIVE_MIGRATION, FINAL_MIGRATION, AlertRecord,
                            HostRecord, MigrationRecord, SharedRecord)

SCHEMA_NAME = "MBX_Northbound"


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
    """The table's rows; none when the server's schema predates it."""
    found = api.tables.get(table)
    return list(found.rows.values()) if found is not None else []


def _require_table_column(api, table, column, version):
    _require_table(api, table, version)
    if column not in api.tables[table].columns:
        raise MbxError(f"the config database has no {table}.{column} (its "
                       f"schema predates {version}); restart its server to "
                       "convert it")


def _require_table(api, table, version):
    if table not in api.tables:
        raise MbxError(f"the config database has no {table} table (its "
                       f"schema predates {version}); restart its server to "
                       "convert it")


def _find(api, table, name):
    for row in _rows(api, table):
        if row.name == name:
            return row
    return None


def _nb_global(api):
    rows = _rows(api, "NB_Global")
    return rows[0] if rows else None


def _switch_info(row):
    gateway = row.gateway[0] if row.gateway else ""
    if not gateway:
        try:
            gateway = validate.default_gateway(row.subnet)
        except ValueError:              # not written by mbx
            gateway = ""
    return SwitchInfo(row.name, row.tenant, row.vni, row.subnet, gateway)


def _gateway_column(sw):
    """Logical_Switch.gateway for ``sw``: empty when it is the default."""
    if not sw.gateway or sw.gateway == validate.default_gateway(sw.subnet):
        return []
    return [sw.gateway]


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


def _rules(api):
    """Middlebox name -> its rules (the rows its ``rules`` column holds)."""
    return {row.name: sort_rules([from_row.rule(r) for r in row.rules
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


def _chain(column):
    """The names of a chain map column {position: Middlebox row} in
    position order."""
    return tuple(mb.name for _, mb in sorted(column.items())
                 if mb is not None)


def _policy_info(row):
    return PolicyInfo(row.logical_switch.name, row.priority, row.match,
                      _chain(row.chain))


def _policy_rows(api, switch=None):
    return [row for row in _rows(api, "Steering_Policy")
            if row.logical_switch is not None
            and (switch is None or row.logical_switch.name == switch)]


def _policies(api):
    return tuple(sorted((_policy_info(row) for row in _policy_rows(api)),
                        key=lambda p: (p.switch, -p.priority)))


def _nat_key(rule):
    return (rule.type,
            tuple(from_row.ip_key(ip) for ip in rule.external_ips),
            rule.external_port or 0, rule.protocol, rule.logical_ip,
            rule.logical_port or 0, rule.port_range, rule.uuid)


def _nat_rules(api):
    """Middlebox name -> its NAT rules, sorted."""
    return {row.name: tuple(sorted((from_row.nat_rule(r, row.name)
                                    for r in row.nat_rules if r is not None),
                                   key=_nat_key))
            for row in _rows(api, "Middlebox") if row.nat_rules}


def _vip_key(v):
    return (from_row.ip_key(v.vip), v.port, v.protocol)


def _vips(api):
    """Middlebox name -> its VIPs, sorted by address, port, protocol."""
    return {row.name: tuple(sorted((from_row.vip(r, row.name)
                                    for r in row.vips if r is not None),
                                   key=_vip_key))
            for row in _rows(api, "Middlebox") if row.vips}


def _externals(api):
    return {row.name: from_row.external_network(row)
            for row in _rows(api, "External_Network")}


def _reserved(api):
    return validate.reserved_addresses(_middleboxes(api), _vips(api))


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
        rules = [from_row.rule(rule) for rule in mb.rules
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
        return "[" + ", ".join(f"{v[0]}:{v[1]}" if isinstance(v, tuple)
                               else str(v) for v in value) + "]"
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
        row.gateway = _gateway_column(sw)


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
        validate.check_vm(vm, _switches(self.api), _vms(self.api),
                          reserved=_reserved(self.api))
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
        row.gateway = _gateway_column(sw)


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
        reserved = _reserved(self.api)
        for name in sorted(self.switch_names):
            validate.check_switch(switches[name], switches.values())
        for vm in vms:
            if vm.name in self.vm_names or vm.switch in self.switch_names:
                validate.check_vm(vm, switches, vms, reserved=reserved)


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
        row.rules, row.nat_rules, row.vips = [], [], []


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
        users = [p for p in _policies(self.api) if self.name in p.chain]
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
        # Slices of chains through it are dead (no policy uses it).  The
        # weak reference would only drop it from their chain, which could
        # then pass for a shorter chain.
        for slice_row in _rows(self.api, "Slice"):
            if row in slice_row.chain.values():
                slice_row.delete()
        row.delete()


class MbSetCommand(_Command):
    def __init__(self, api, name, default_action, options):
        super().__init__(api)
        self.name = name
        self.default_action = default_action
        self.options = options

    def run_idl(self, txn):
        row = _require(self.api, "Middlebox", self.name, "middlebox")
        validate.check_option_types(
            row.name, row.type,
            [key for key, value in self.options.items() if value != ""])
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
            # ports-per-host bounds the SNAT port ranges
            mb = dataclasses.replace(_mb_info(row), options=options)
            switches = _switches(self.api)
            externals = list(_externals(self.api).values())
            for rule in _nat_rules(self.api).get(row.name, ()):
                validate.check_nat_rule(
                    rule, mb, switches, externals,
                    f"middlebox '{row.name}' {validate.describe_nat(rule)}")


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
            mb, rule, [from_row.rule(r) for r in row.rules if r is not None])
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
    row.chain = {i: _require(api, "Middlebox", mb, "middlebox")
                 for i, mb in enumerate(policy.chain)}


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


def _slice_chain(row):
    """The chain of a Slice row, or None when it is broken: empty, or a
    position is missing (a weak reference to a deleted middlebox was
    cleared)."""
    chain = row.chain
    if not chain or sorted(chain) != list(range(len(chain))):
        return None
    return _chain(chain)


def _slice_key(row):
    chain = _slice_chain(row)
    if chain is None or not row.host:
        return None
    return (chain, row.host[0].name)


class SetSlicesCommand(_Command):
    def __init__(self, api, desired, status):
        super().__init__(api)
        self.desired = desired
        self.status = status

    def run_idl(self, txn):
        middleboxes = {row.name: row for row in _rows(self.api, "Middlebox")}
        hosts = {row.name: row for row in _rows(self.api, "Host")}
        wanted = {key: tag for key, tag in self.desired.items()
                  if all(mb in middleboxes for mb in key[0])
                  and key[1] in hosts}
        seen = set()
        for row in sorted(_rows(self.api, "Slice"), key=lambda r: r.uuid):
            key = _slice_key(row)
            if key not in wanted or key in seen:
                row.delete()
                continue
            seen.add(key)
            if row.tag != wanted[key]:
                row.tag = wanted[key]
            status = self.status.get(key, {})
            if dict(row.status) != status:
                row.status = status
        for key, tag in sorted(wanted.items()):
            if key not in seen:
                chain, host = key
                row = txn.insert(self.api.tables["Slice"])
                row.chain = {i: middleboxes[mb] for i, mb in enumerate(chain)}
                row.host, row.tag = [hosts[host]], tag
                row.status = self.status.get(key, {})


class SetVipStatusCommand(_Command):
    def __init__(self, api, vip_uuid, status):
        super().__init__(api)
        self.vip_uuid = vip_uuid
        self.status = status

    def run_idl(self, txn):
        row = self.api.tables["LB_VIP"].rows.get(self.vip_uuid)
        if row is not None and dict(row.status) != self.status:
            row.status = self.status


class SetMiddleboxStatusCommand(_Command):
    def __init__(self, api, name, status):
        super().__init__(api)
        self.name = name
        self.status = status

    def run_idl(self, txn):
        row = _find(self.api, "Middlebox", self.name)
        if row is not None and dict(row.status) != self.status:
            row.status = self.status


# --- external networks, NAT rules, VIPs --------------------------------------

class ExtAddCommand(_Command):
    def __init__(self, api, ext, may_exist=False):
        super().__init__(api)
        self.ext = ext
        self.may_exist = may_exist

    def run_idl(self, txn):
        ext = self.ext
        row = _find(self.api, "External_Network", ext.name)
        if row is not None:
            _refuse_existing(f"external network '{ext.name}'",
                             from_row.external_network(row),
                             ext, self.may_exist)
            return
        validate.check_external_network(
            ext, _externals(self.api).values())
        row = txn.insert(self.api.tables["External_Network"])
        _write_ext(row, ext)


def _write_ext(row, ext):
    row.name, row.cidr = ext.name, ext.cidr
    row.gateway_ip, row.gateway_mac = ext.gateway_ip, ext.gateway_mac


def _ext_users(api, ext):
    """Descriptions of the NAT rules with an external IP inside ``ext``."""
    net = ipaddress.IPv4Network(ext.cidr)
    users = []
    for mb_name, rules in sorted(_nat_rules(api).items()):
        users += [f"middlebox '{mb_name}' {validate.describe_nat(rule)}"
                  for rule in rules
                  if any(ipaddress.IPv4Address(ip) in net
                         for ip in rule.external_ips)]
    return users


class ExtDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "External_Network", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown external network '{self.name}'; use "
                           "--if-exists to ignore a missing one")
        users = _ext_users(self.api, from_row.external_network(row))
        if users:
            raise MbxError(f"external network '{self.name}' is still used by "
                           f"{'; '.join(users)}; delete "
                           f"{'it' if len(users) == 1 else 'them'} first "
                           "(nat-del)")
        row.delete()


class UpsertExternalNetworkCommand(_Command):
    """Create or update an external network without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, ext):
        super().__init__(api)
        self.ext = ext

    def run_idl(self, txn):
        row = _find(self.api, "External_Network", self.ext.name)
        if row is None:
            row = txn.insert(self.api.tables["External_Network"])
        _write_ext(row, self.ext)


def _mb_row(api, name, hint):
    row = _find(api, "Middlebox", name)
    if row is None:
        raise MbxError(f"unknown middlebox '{name}'; create it first "
                       f"({hint})")
    return row


def _write_nat(row, rule):
    row.type, row.external_ips = rule.type, list(rule.external_ips)
    row.logical_ip = rule.logical_ip
    row.protocol = [rule.protocol] if rule.protocol else []
    row.external_port = ([] if rule.external_port is None
                         else [rule.external_port])
    row.logical_port = ([] if rule.logical_port is None
                        else [rule.logical_port])
    row.port_range = (["%d-%d" % rule.port_range] if rule.type == "snat"
                      else [])


def _verify_nat(api):
    """Have the transaction fail (and be retried) if any middlebox's NAT
    rules change meanwhile: overlaps are checked across all of them."""
    for row in _rows(api, "Middlebox"):
        row.verify("nat_rules")


class NatAddCommand(_Command):
    def __init__(self, api, mb_name, rule, may_exist=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.rule = rule
        self.may_exist = may_exist

    def run_idl(self, txn):
        row = _mb_row(self.api, self.mb_name, "mb-add --type nat")
        mb = _mb_info(row)
        rule = dataclasses.replace(self.rule, middlebox=mb.name)
        _verify_nat(self.api)
        others = [r for rules in _nat_rules(self.api).values()
                  for r in rules]
        if any(bare(r) == rule for r in others):
            if self.may_exist:
                return
            raise MbxError(f"middlebox '{mb.name}' already has a "
                           f"{validate.describe_nat(rule)}; use --may-exist "
                           "to accept an identical one")
        validate.check_nat_rule(rule, mb, _switches(self.api),
                                list(_externals(self.api).values()))
        validate.check_nat_unique(rule, others)
        new = txn.insert(self.api.tables["NAT_Rule"])
        _write_nat(new, rule)
        row.nat_rules = [r for r in row.nat_rules if r is not None] + [new]


class NatDelCommand(_Command):
    def __init__(self, api, mb_name, external_ip, rule_type, external_port,
                 rule_uuid, if_exists=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.external_ip = external_ip
        self.rule_type = rule_type
        self.external_port = external_port
        self.rule_uuid = rule_uuid
        self.if_exists = if_exists

    def _selects(self, rule):
        if self.rule_uuid is not None:
            return rule.uuid == self.rule_uuid
        return (self.external_ip in rule.external_ips
                and self.rule_type in (None, rule.type)
                and self.external_port in (None, rule.external_port))

    def _what(self):
        if self.rule_uuid is not None:
            return f"NAT rule {self.rule_uuid}"
        what = f"{self.rule_type or 'NAT'} rule for external IP " \
               f"{self.external_ip}"
        if self.external_port is not None:
            what += f" port {self.external_port}"
        return what

    def run_idl(self, txn):
        row = _find(self.api, "Middlebox", self.mb_name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown middlebox '{self.mb_name}'; use "
                           "--if-exists to ignore a missing one")
        row.verify("nat_rules")
        rows = [r for r in row.nat_rules if r is not None]
        doomed = [r for r in rows
                  if self._selects(from_row.nat_rule(r, row.name))]
        if not doomed:
            if self.if_exists:
                return
            raise MbxError(f"middlebox '{self.mb_name}' has no "
                           f"{self._what()}; use --if-exists to ignore a "
                           "missing one")
        if len(doomed) > 1:
            rules = sorted((from_row.nat_rule(r, row.name) for r in doomed),
                           key=_nat_key)
            raise MbxError(f"middlebox '{self.mb_name}' has "
                           f"{len(doomed)} NAT rules for external IP "
                           f"{self.external_ip}: "
                           + "; ".join(validate.describe_nat(r)
                                       for r in rules)
                           + "; choose one with --type and --external-port,"
                           " or by UUID (nat-list)")
        row.nat_rules = [r for r in rows if r not in doomed]


def _write_vip(row, v):
    row.vip, row.port, row.protocol = v.vip, v.port, v.protocol
    row.algorithm = v.algorithm
    row.backends = [validate.backend_text(b) for b in v.backends]
    row.options = dict(v.options)


def _find_vip(api, mb_name, address, protocol, if_exists=False):
    """(Middlebox row, its LB_VIP row for ``address`` (ip, port) and
    ``protocol`` (None: the only one), or None).  (None, None) for a
    missing middlebox with ``if_exists``."""
    row = _find(api, "Middlebox", mb_name)
    if row is None:
        if if_exists:
            return None, None
        raise MbxError(f"unknown middlebox '{mb_name}'; create it first "
                       "(mb-add --type lb)")
    found = [r for r in row.vips if r is not None
             and (r.vip, r.port) == address
             and protocol in (None, r.protocol)]
    if len(found) > 1:
        raise MbxError(f"load balancer '{mb_name}' has VIPs "
                       f"{address[0]}:{address[1]} for "
                       f"{' and '.join(sorted(r.protocol for r in found))}; "
                       "choose one with --protocol")
    return row, (found[0] if found else None)


def _no_vip(mb_name, address, protocol):
    what = f"{address[0]}:{address[1]}" + (f"/{protocol}" if protocol
                                           else "")
    return MbxError(f"load balancer '{mb_name}' has no VIP {what}")


def _check_vip(api, v, mb):
    """check_vip and check_vip_unique against the transaction's view."""
    middleboxes = _middleboxes(api)
    validate.check_vip(v, mb, _switches(api), _vms(api))
    others = [o for vips in _vips(api).values() for o in vips
              if o.uuid != v.uuid]
    validate.check_vip_unique(v, mb, others, middleboxes)


class LbAddCommand(_Command):
    def __init__(self, api, mb_name, vip, may_exist=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.vip = vip
        self.may_exist = may_exist

    def run_idl(self, txn):
        v = self.vip
        row, current = _find_vip(self.api, self.mb_name, (v.vip, v.port),
                                 v.protocol)
        v = dataclasses.replace(v, middlebox=row.name)
        if current is not None:
            _refuse_existing(f"load balancer '{row.name}' VIP "
                             f"{validate.vip_text(v)}",
                             bare(from_row.vip(current, row.name)), v,
                             self.may_exist)
            return
        for other in _rows(self.api, "Middlebox"):
            other.verify("vips")
        _check_vip(self.api, v, _mb_info(row))
        new = txn.insert(self.api.tables["LB_VIP"])
        _write_vip(new, v)
        new.status = {}
        row.vips = [r for r in row.vips if r is not None] + [new]


class LbDelCommand(_Command):
    def __init__(self, api, mb_name, address, protocol, if_exists=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.address = address
        self.protocol = protocol
        self.if_exists = if_exists

    def run_idl(self, txn):
        row, current = _find_vip(self.api, self.mb_name, self.address,
                                 self.protocol, self.if_exists)
        if current is None:
            if self.if_exists:
                return
            raise MbxError(str(_no_vip(self.mb_name, self.address,
                                       self.protocol))
                           + "; use --if-exists to ignore a missing one")
        row.vips = [r for r in row.vips if r is not None and r != current]


class LbChangeCommand(_Command):
    """Change one VIP: add or remove a backend, merge options, set the
    algorithm; then check it."""

    def __init__(self, api, mb_name, address, protocol, add=None,
                 remove=None, options=None, algorithm=None, may_exist=False,
                 if_exists=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.address = address
        self.protocol = protocol
        self.add = add
        self.remove = remove
        self.options = options or {}
        self.algorithm = algorithm
        self.may_exist = may_exist
        self.if_exists = if_exists

    def run_idl(self, txn):
        row, current = _find_vip(self.api, self.mb_name, self.address,
                                 self.protocol)
        if current is None:
            raise _no_vip(self.mb_name, self.address, self.protocol)
        current.verify("backends")
        current.verify("options")
        v = from_row.vip(current, row.name)
        backends = list(v.backends)
        text = validate.backend_text(self.add or self.remove or ("", 0))
        label = f"load balancer '{row.name}' VIP {validate.vip_text(v)}"
        if self.add is not None:
            if self.add in backends:
                if self.may_exist:
                    return
                raise MbxError(f"{label} already has backend {text}; use "
                               "--may-exist to accept it")
            backends.append(self.add)
        if self.remove is not None:
            if self.remove not in backends:
                if self.if_exists:
                    return
                raise MbxError(f"{label} has no backend {text}; use "
                               "--if-exists to ignore a missing one")
            backends.remove(self.remove)
        options = dict(v.options)
        for key, value in self.options.items():
            if value == "":
                options.pop(key, None)
            else:
                options[key] = value
        v = dataclasses.replace(
            v, backends=tuple(sorted(backends, key=lambda b: (
                from_row.ip_key(b[0]), b[1]))),
            options=dict(sorted(options.items())),
            algorithm=self.algorithm or v.algorithm)
        _check_vip(self.api, v, _mb_info(row))
        _write_vip(current, v)


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
    """Create or update a middlebox and make its rules, NAT rules and VIPs
    exactly ``rules``, ``nat_rules`` and ``vips`` (rules that stay keep
    their rows; a VIP that stays, by address, port and protocol, keeps its
    row and status), without checks (see CheckFirewallCommand)."""

    def __init__(self, api, mb, rules, nat_rules=(), vips=()):
        super().__init__(api)
        self.mb = mb
        self.rules = rules
        self.nat_rules = nat_rules
        self.vips = vips

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
            row.nat_rules, row.vips = [], []
        row.type, row.logical_switch = mb.type, switch
        row.default_action, row.options = mb.default_action, dict(mb.options)
        row.verify("rules")
        keep, wanted = [], [bare(r) for r in self.rules]
        for rule in row.rules:
            if rule is None:
                continue
            record = bare(from_row.rule(rule))
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
        self._nat(txn, row)
        self._vips(txn, row)

    def _nat(self, txn, row):
        row.verify("nat_rules")
        keep, wanted = [], [bare(r) for r in self.nat_rules]
        for rule in row.nat_rules:
            if rule is None:
                continue
            record = bare(from_row.nat_rule(rule, row.name))
            if record in wanted:
                wanted.remove(record)
                keep.append(rule)
        for rule in wanted:
            new = txn.insert(self.api.tables["NAT_Rule"])
            _write_nat(new, rule)
            keep.append(new)
        row.nat_rules = keep

    def _vips(self, txn, row):
        row.verify("vips")
        wanted = {(v.vip, v.port, v.protocol): v for v in self.vips}
        keep = []
        for current in row.vips:
            if current is None:
                continue
            v = wanted.pop((current.vip, current.port, current.protocol),
                           None)
            if v is None:
                continue
            if bare(from_row.vip(current, row.name)) != bare(v):
                _write_vip(current, v)
            keep.append(current)
        for v in wanted.values():
            new = txn.insert(self.api.tables["LB_VIP"])
            _write_vip(new, v)
            new.status = {}
            keep.append(new)
        row.vips = keep


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
        switches, middleboxes = _switches(self.api), _middleboxes(self.api)
        validate.check_firewall(
            switches, _address_sets(self.api), middleboxes,
            _rules(self.api), _policies(self.api))
        validate.check_services(
            switches, _vms(self.api), middleboxes, _nat_rules(self.api),
            _vips(self.api), _externals(self.api))


class HostRegisterCommand(_Command):
    def __init__(self, api, name, encap_type, encap_ip, mgmt_address,
                 migration_address=None):
        super().__init__(api)
        self.name = name
        self.encap_type = encap_type
        self.encap_ip = encap_ip
        self.mgmt_address = mgmt_address
        self.migration_address = migration_address

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
        if "migration_address" not in self.api.tables["Host"].columns:
            if self.migration_address:      # schema before 1.3.0
                _require_table(self.api, "Migration", "1.3.0")
        elif self.migration_address is not None:
            row.migration_address = self.migration_address


class EnsureNbGlobalCommand(_Command):
    def run_idl(self, txn):
        self.result = _nb_global(self.api) or _insert_nb_global(self.api, txn)


def _insert_nb_global(api, txn):
    row = txn.insert(api.tables["NB_Global"])
    row.name, row.nb_cfg, row.hv_cfg, row.hv_cfg_timestamp = "", 0, 0, 0
    if "northd_cfg" in api.tables["NB_Global"].columns:
        row.northd_cfg = 0
    row.options = {}
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


class SetNorthdCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        _require_table_column(self.api, "NB_Global", "northd_cfg", "1.5.0")
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.northd_cfg = self.value


class SetHvCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.hv_cfg = self.value
        row.hv_cfg_timestamp = int(time.time() * 1000)


# --- migrations (docs/migration.md) -----------------------------------------

def _now_ms():
    return int(time.time() * 1000)


def _migration_record(row):
    return MigrationRecord(
        str(row.uuid), row.vm, row.source, row.destination, row.path,
        row.status, row.token, dict(sorted(row.timeline.items())),
        dict(sorted(row.stats.items())), row.outcome,
        dict(sorted(row.options.items())))


def _migration_key(m):
    """Oldest first: by the time it began, then uuid."""
    return (m.timeline.get("begun", 0), str(m.uuid))


def _migration_rows(api, vm):
    """The Migration rows of VM ``vm``, oldest first."""
    return sorted((row for row in _rows(api, "Migration") if row.vm == vm),
                  key=lambda row: (dict(row.timeline).get("begun", 0),
                                   str(row.uuid)))


def _active_row(api, vm):
    """The VM's active migration (its latest, should there be more), or
    None."""
    active = [row for row in _migration_rows(api, vm)
              if row.status in ACTIVE_MIGRATION]
    return active[-1] if active else None


def _moves(row):
    return f"{row.source} -> {row.destination}"


def _ended(row):
    """'aborted (aborted by operator)': a final row's status and outcome."""
    return row.status + (f" ({row.outcome})" if row.outcome else "")


def _no_migration(api, vm, what="migration"):
    """The error for a VM without a(n active) migration: unknown VM, or no
    migration."""
    if _find(api, "VM", vm) is None and not _migration_rows(api, vm):
        return MbxError(f"unknown VM '{vm}'")
    return MbxError(f"VM '{vm}' has no {what}")


def _setkey(row, column, key, value):
    """Set one key of a map column: an OVSDB mutation (other keys, maybe
    written by others meanwhile, are left alone); a row inserted by this
    transaction gets its whole map."""
    if row._data is None:
        setattr(row, column, dict(getattr(row, column), **{key: value}))
    else:
        row.setkey(column, key, value)


class _MigrationCommand(_Command):
    """A command whose result is a Migration row's uuid (str), the final
    one after commit for a row this transaction inserted."""

    def post_commit(self, txn):
        if isinstance(self.result, uuidlib.UUID):
            self.result = str(txn.get_insert_uuid(self.result)
                              or self.result)


class MigrationCreateCommand(_MigrationCommand):
    """Insert a Migration row (``begun``).  ``source`` None: announced by
    an operator (migrate-begin), from the VM's current host."""

    def __init__(self, api, vm, source, destination, path, wait_ms):
        super().__init__(api)
        self.vm = vm
        self.source = source
        self.destination = destination
        self.path = path
        self.wait_ms = wait_ms

    def run_idl(self, txn):
        _require_table(self.api, "Migration", "1.3.0")
        vm_row = _require(self.api, "VM", self.vm, "VM")
        source = self.source
        if source is None:
            vm_row.verify("host")
            if not vm_row.host:
                raise MbxError(f"VM '{self.vm}' runs on no host (its port "
                               "exists nowhere); nothing to migrate")
            source = vm_row.host[0].name
        if _find(self.api, "Host", self.destination) is None:
            raise MbxError(f"unknown host '{self.destination}'; a host "
                           "registers itself (mbx-host-register)")
        if self.destination == source:
            raise MbxError(f"VM '{self.vm}' is already on host '{source}'")
        active = _active_row(self.api, self.vm)
        if active is not None:
            active.verify("status")
            raise MbxError(f"VM '{self.vm}' already has an active migration "
                           f"{_moves(active)} (status {active.status}); end "
                           "it first (migrate-done or migrate-abort)")
        wait_ms = self.wait_ms
        if wait_ms is None:
            nb = _nb_global(self.api)
            wait_ms = validate.global_wait_ms(nb.options if nb else {})
        row = txn.insert(self.api.tables["Migration"])
        row.vm, row.source, row.destination = self.vm, source, self.destination
        row.path, row.status = self.path, "begun"
        row.token = secrets.token_hex(16)
        row.timeline, row.stats = {"begun": _now_ms()}, {}
        row.outcome = ""
        row.options = {"wait-ms": str(wait_ms)}
        self.result = row.uuid


class MigrateStunCommand(_MigrationCommand):
    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            raise _no_migration(self.api, self.vm, "active migration; begin "
                                "one first (migrate-begin)")
        row.verify("status")
        if row.path != "announced":
            raise MbxError(f"VM '{self.vm}': its migration {_moves(row)} is "
                           f"{row.path}; only an announced migration is "
                           "stunned")
        if row.status not in ("begun", "streaming"):
            raise MbxError(f"VM '{self.vm}': its migration {_moves(row)} is "
                           f"already {row.status}")
        row.status = "stunned"
        _setkey(row, "timeline", "stunned", _now_ms())
        self.result = row.uuid


class MigrateDoneCommand(_MigrationCommand):
    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            rows = _migration_rows(self.api, self.vm)
            if not rows:
                raise _no_migration(self.api, self.vm)
            latest = rows[-1]
            latest.verify("status")
            if latest.status != "done":
                raise MbxError(f"VM '{self.vm}': its latest migration "
                               f"{_moves(latest)} ended {_ended(latest)}; "
                               "nothing to finish")
            self.result = latest.uuid       # done already: nothing to do
            return
        row.verify("status")
        if row.status != "imported":
            raise MbxError(f"VM '{self.vm}': its state has not been imported "
                           f"at {row.destination} yet (status {row.status})")
        row.status = "done"
        _setkey(row, "timeline", "done", _now_ms())
        row.verify("outcome")
        if not row.outcome:
            entries = dict(row.stats).get("entries", 0)
            row.outcome = (f"ok: {entries} connection"
                           + ("" if entries == 1 else "s"))
        self.result = row.uuid


class MigrateAbortCommand(_MigrationCommand):
    def __init__(self, api, vm, if_exists=False):
        super().__init__(api)
        self.vm = vm
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            if self.if_exists:
                return
            raise _no_migration(self.api, self.vm, "active migration; use "
                                "--if-exists to ignore that")
        row.verify("status")
        row.status = "aborted"
        _setkey(row, "timeline", "aborted", _now_ms())
        row.outcome = "aborted by operator"
        self.result = row.uuid


class MigrationUpdateCommand(_MigrationCommand):
    """Status, per-key timeline and stats, and outcome of one Migration row
    (the daemons' writes)."""

    def __init__(self, api, key, status, timeline, stats, outcome, expect):
        super().__init__(api)
        self.key = key
        self.status = status
        self.timeline = timeline
        self.stats = stats
        self.outcome = outcome
        self.expect = expect

    def run_idl(self, txn):
        table = self.api.tables.get("Migration")
        row = table.rows.get(self.key) if table is not None else None
        if row is None:
            raise MbxError(f"unknown migration {self.key}")
        if self.status is not None or self.expect is not None:
            row.verify("status")
            if self.expect is not None and row.status not in self.expect:
                raise MbxError(f"migration {self.key} of VM '{row.vm}' is "
                               f"{row.status}, not "
                               f"{validate._one_of(self.expect)}")
            if self.status is not None and row.status != self.status:
                if row.status not in ACTIVE_MIGRATION:
                    raise MbxError(f"migration {self.key} of VM '{row.vm}' "
                                   f"has ended ({row.status})")
                row.status = self.status
        for column, values in (("timeline", self.timeline),
                               ("stats", self.stats)):
            for key, value in sorted(values.items()):
                _setkey(row, column, key, value)
        if self.outcome is not None:
            row.outcome = self.outcome
        self.result = row.uuid


class RequireMigrationsCommand(_Command):
    """Fails unless VM ``vm`` is known (a VM row, or a Migration row names
    it); with ``need_one``, unless it has a migration."""

    def __init__(self, api, vm, need_one):
        super().__init__(api)
        self.vm = vm
        self.need_one = need_one

    def run_idl(self, txn):
        rows = _migration_rows(self.api, self.vm)
        if (not rows and self.need_one) or (
                not rows and _find(self.api, "VM", self.vm) is None):
            raise _no_migration(self.api, self.vm)


class GlobalSetCommand(_Command):
    def __init__(self, api, options):
        super().__init__(api)
        self.options = options

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        if row._data is not None:
            row.verify("options")
        options = dict(row.options)
        for key, value in self.options.items():
            if value == "":
                options.pop(key, None)
            else:
                options[key] = value
        if options != dict(row.options):
            row.options = options


class SnapshotCommand(_ReadCommand):
    def run_idl(self, txn):
        nb = _nb_global(self.api)
        hosts, locations = {}, {}
        for row in _rows(self.api, "Host"):
            hosts[row.name] = HostRecord(
                row.name, row.encap_type, row.encap_ip, row.mgmt_address,
                row.nb_cfg, row.connected,
                row.datapath_id[0] if row.datapath_id else None,
                getattr(row, "migration_address", ""))
        for row in _rows(self.api, "VM"):
            locations[row.name] = (row.host[0].name if row.host else None,
                                   row.location_epoch)
        slices, slice_status = {}, {}
        for row in sorted(_rows(self.api, "Slice"), key=lambda r: r.uuid):
            key = _slice_key(row)
            if key is not None and key not in slices:
                slices[key] = row.tag
                slice_status[key] = dict(sorted(row.status.items()))
        middleboxes = _middleboxes(self.api)
        self.result = NbSnapshot(
            nb_cfg=nb.nb_cfg if nb else 0, hv_cfg=nb.hv_cfg if nb else 0,
            northd_cfg=getattr(nb, "northd_cfg", 0) if nb else 0,
            hosts=hosts, switches=_switches(self.api),
            vms={vm.name: vm for vm in _vms(self.api)},
            vm_locations=locations, middleboxes=middleboxes,
            rules=_rules(self.api), policies=_policies(self.api),
            address_sets=_address_sets(self.api), slices=slices,
            slice_status=slice_status,
            nat_rules={k: v for k, v in _nat_rules(self.api).items()
                       if k in middleboxes},
            vips={k: v for k, v in _vips(self.api).items()
                  if k in middleboxes},
            external_networks=_externals(self.api),
            middlebox_status={row.name: dict(sorted(row.status.items()))
                              for row in _rows(self.api, "Middlebox")
                              if row.name in middleboxes},
            shared_state=_shared_state(self.api),
            ids_alerts=_ids_alerts(self.api),
            migrations=tuple(sorted(
                (_migration_record(row)
                 for row in _rows(self.api, "Migration")),
                key=_migration_key)),
            global_options=dict(sorted(nb.options.items())) if nb else {})


def _shared_state(api):
    return tuple(sorted(
        (SharedRecord(row.middlebox, row.host, row.service, row.key,
                      row.value, row.stamp)
         for row in _rows(api, "Shared_State")),
        key=lambda r: (r.middlebox, r.service, r.key, r.host)))


def _ids_alerts(api):
    return tuple(sorted(
        (AlertRecord(row.middlebox, row.kind, row.source, row.target,
                     row.count, tuple(sorted(row.hosts)), row.first_seen,
                     row.last_seen, row.reported_by)
         for row in _rows(api, "IDS_Alert")),
        key=lambda a: (a.middlebox, a.first_seen, a.kind, a.source,
                       a.target, a.last_seen)))


def _lb_protocol(protocol):
    return None if protocol is None else validate.protocol(protocol)


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
                      "Address_Set", "External_Network")}

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

    def ls_add(self, name, vni, subnet, tenant=None, may_exist=False,
               gateway=None):
        """``gateway`` (default: the subnet's first address) is a host
        address of ``subnet``."""
        name = validate.name(name, "logical switch name")
        subnet = validate.subnet(subnet)
        switch = SwitchInfo(
            name, validate.tenant(name if tenant is None else tenant),
            validate.vni(vni), subnet,
            validate.default_gateway(subnet) if gateway is None
            else validate.gateway(gateway, subnet, name))
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
        rule = RuleInfo(validate.rule_priority(priority),
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

    def steer_add(self, switch, priority, match, chain):
        """``chain``: middleboxes of ``switch`` in order, as a sequence of
        names or "NAME,NAME"; "bypass" (or empty) for none."""
        policy = PolicyInfo(
            validate.name(switch, "logical switch name"),
            validate.steer_priority(priority), validate.match(match).text,
            validate.chain(chain))
        return SteerAddCommand(self, policy)

    def steer_del(self, switch, priority=None, if_exists=False):
        """Without ``priority``: every steering policy of ``switch``."""
        if priority is not None:
            priority = validate.steer_priority(priority)
        return SteerDelCommand(self, switch, priority, if_exists)

    def ext_add(self, name, cidr, gateway_ip, gateway_mac, may_exist=False):
        return ExtAddCommand(self, validate.external_network(
            name, cidr, gateway_ip, gateway_mac), may_exist)

    def ext_del(self, name, if_exists=False):
        """Refused while a NAT rule has an external IP inside it."""
        return ExtDelCommand(self, name, if_exists)

    def nat_add(self, mb, type, external_ips, logical_ip="", protocol="",
                external_port=None, logical_port=None, port_range=None,
                may_exist=False):
        """See validate.nat_rule; ``mb`` is a nat middlebox."""
        return NatAddCommand(self, mb, validate.nat_rule(
            mb, type, external_ips, logical_ip, protocol, external_port,
            logical_port, port_range), may_exist)

    def nat_del(self, mb, external_ip=None, type=None, external_port=None,
                uuid=None, if_exists=False):
        """The one NAT rule of ``mb`` with ``external_ip`` (and ``type``,
        ``external_port`` if given), or the rule with ``uuid``."""
        if (external_ip is None) == (uuid is None):
            raise MbxError("give an external IP or a NAT rule's UUID")
        if uuid is not None:
            try:
                uuid = str(uuidlib.UUID(uuid))
            except (TypeError, ValueError):
                raise MbxError(f"invalid UUID {uuid!r}") from None
        else:
            external_ip = validate.ipv4(external_ip, "external IP")
        if type is not None:
            type = validate.nat_type(type)
        if external_port is not None:
            external_port = validate.port(external_port, "external port")
        return NatDelCommand(self, mb, external_ip, type, external_port,
                             uuid, if_exists)

    def lb_add(self, mb, vip, protocol="tcp", algorithm="hash",
               backends=(), options=None, may_exist=False):
        """``vip`` and ``backends``: "IP:PORT"; ``mb`` is an lb middlebox."""
        return LbAddCommand(self, mb, validate.vip(
            mb, vip, protocol, algorithm, backends, options), may_exist)

    def lb_del(self, mb, vip, protocol=None, if_exists=False):
        """``protocol`` None: the VIP's only protocol."""
        return LbDelCommand(self, mb, validate.ip_port(vip, "VIP"),
                            _lb_protocol(protocol), if_exists)

    def lb_backend_add(self, mb, vip, backend, protocol=None,
                       may_exist=False):
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol),
                               add=validate.ip_port(backend, "backend"),
                               may_exist=may_exist)

    def lb_backend_del(self, mb, vip, backend, protocol=None,
                       if_exists=False):
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol),
                               remove=validate.ip_port(backend, "backend"),
                               if_exists=if_exists)

    def lb_set(self, mb, vip, options=None, algorithm=None, protocol=None):
        """Merges ``options`` into the VIP's (a value "" removes the key);
        ``algorithm`` replaces its algorithm."""
        checked = {}
        for key, value in (options or {}).items():
            if value == "":
                checked[validate.vip_option_key(key)] = ""
            else:
                checked[key] = validate.vip_option(key, value)
        if algorithm is not None:
            algorithm = validate.algorithm(algorithm)
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol), options=checked,
                               algorithm=algorithm)

    def require_middlebox(self, name):
        """Fails unless middlebox ``name`` exists (e.g. before fw-list)."""
        return RequireCommand(self, "Middlebox", name, "middlebox")

    def upsert_address_set(self, aset: AddressSetInfo):
        """Create or update ``aset``; follow a batch with
        ``check_firewall()``."""
        return UpsertAddressSetCommand(self, aset)

    def upsert_middlebox(self, mb: MiddleboxInfo, rules=(), nat_rules=(),
                         vips=()):
        """Create or update ``mb`` with exactly ``rules`` (RuleInfos),
        ``nat_rules`` (NatRuleInfos) and ``vips`` (VipInfos); follow a
        batch with ``check_firewall()``."""
        return UpsertMiddleboxCommand(self, mb, tuple(rules),
                                      tuple(nat_rules), tuple(vips))

    def upsert_external_network(self, ext: ExternalNetInfo):
        """Create or update ``ext``; follow a batch with
        ``check_firewall()``."""
        return UpsertExternalNetworkCommand(self, ext)

    def replace_policies(self, switch, policies):
        """Make ``switch``'s steering policies exactly ``policies``; follow
        a batch with ``check_firewall()``."""
        return ReplacePoliciesCommand(self, switch, tuple(policies))

    def check_firewall(self):
        """Check every middlebox, rule, steering policy, NAT rule, VIP and
        external network (validate.check_firewall, check_services)."""
        return CheckFirewallCommand(self)

    def upsert_switch(self, switch: SwitchInfo):
        """Create or update ``switch``; follow a batch with ``check()``."""
        return UpsertSwitchCommand(self, switch)

    def upsert_vm(self, vm: VMInfo):
        """Create or update ``vm``; follow a batch with ``check()``."""
        return UpsertVmCommand(self, vm)

    def check(self, switch_names=(), vm_names=()):
        return CheckCommand(self, switch_names, vm_names)

    def host_register(self, name, encap_type, encap_ip, mgmt_address,
                      migration_address=None):
        """Create or update Host ``name``; ``migration_address`` None
        leaves it as it is ("" on a new row), "" clears it."""
        if migration_address is not None:
            migration_address = validate.migration_address(migration_address)
        return HostRegisterCommand(
            self, validate.name(name, "host name"),
            validate.encap_type(encap_type),
            validate.ipv4(encap_ip, "encap IP"),
            validate.mgmt_address(mgmt_address), migration_address)

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

    def set_northd_cfg(self, value):
        """NB_Global.northd_cfg: the logical controller has translated the
        config up to this ``nb_cfg`` (written after its own status writes)."""
        return SetNorthdCfgCommand(self, value)

    def set_slices(self, slices, status=None):
        """Make the Slice table exactly ``slices``, a dict (chain, host
        name) -> tag, where a chain is a non-empty tuple of middlebox names
        in order; ``status`` maps the same keys to the slices' status
        ({str: str}; missing or None: empty).  Entries naming a missing
        middlebox or host are ignored."""
        desired, checked = {}, {}
        for (chain, host), tag in slices.items():
            chain = validate.chain(tuple(chain))
            if not chain:
                raise MbxError("a slice's chain names at least one "
                               "middlebox")
            desired[(chain, host)] = validate.slice_tag(tag)
        for (chain, host), value in (status or {}).items():
            checked[(tuple(chain), host)] = validate.status_map(
                value, "slice status")
        return SetSlicesCommand(self, desired, checked)

    def set_vip_status(self, vip_uuid, status):
        """LB_VIP.status of the VIP with UUID ``vip_uuid`` ("ip:port" ->
        "up"/"down"); nothing if the VIP is gone."""
        try:
            key = uuidlib.UUID(str(vip_uuid))
        except ValueError:
            raise MbxError(f"invalid UUID {vip_uuid!r}") from None
        return SetVipStatusCommand(self, key,
                                   validate.status_map(status, "VIP status"))

    def set_middlebox_status(self, name, status):
        """Middlebox.status of ``name``; nothing if it is gone."""
        return SetMiddleboxStatusCommand(
            self, name, validate.status_map(status, "middlebox status"))

    # --- migrations (docs/migration.md) ---

    def migrate_begin(self, vm, destination):
        """Announce the migration of ``vm`` from its current host to host
        ``destination``: a new Migration row (announced, begun).  The
        command's result is the row's uuid (str)."""
        return MigrationCreateCommand(
            self, validate.name(vm, "VM name"), None,
            validate.name(destination, "host name"), "announced", None)

    def migration_create(self, vm, source, destination, path="unannounced",
                         wait_ms=None):
        """A new Migration row (begun) of ``vm`` from host ``source`` to
        host ``destination`` (registered), whatever the VM's host;
        ``wait_ms`` None: NB_Global.options:migration-wait-ms, else 3000.
        Refused while the VM has an active migration.  The command's result
        is the row's uuid (str)."""
        vm = validate.name(vm, "VM name")
        source = validate.name(source, "host name")
        destination = validate.name(destination, "host name")
        if source == destination:
            raise MbxError(f"a migration of VM '{vm}' needs two hosts, not "
                           f"'{source}' twice")
        if wait_ms is not None:
            wait_ms = validate.migration_wait_ms(wait_ms, "wait-ms")
        return MigrationCreateCommand(self, vm, source, destination,
                                      validate.migration_path(path), wait_ms)

    def migrate_stun(self, vm):
        """The VM's active announced migration (begun or streaming) becomes
        stunned.  Result: the row's uuid (str)."""
        return MigrateStunCommand(self, validate.name(vm, "VM name"))

    def migrate_done(self, vm):
        """The VM's active migration, once imported, becomes done; nothing
        if its latest migration is done already."""
        return MigrateDoneCommand(self, validate.name(vm, "VM name"))

    def migrate_abort(self, vm, if_exists=False):
        """The VM's active migration becomes aborted ("aborted by
        operator")."""
        return MigrateAbortCommand(self, validate.name(vm, "VM name"),
                                   if_exists)

    def migration_update(self, migration, status=None, timeline=None,
                         stats=None, outcome=None, expect=None):
        """Write to Migration row ``migration`` (uuid): ``status`` (only
        while active), the keys of ``timeline`` and ``stats`` (each key a
        mutation: other keys stay), ``outcome``.  ``expect``: the statuses
        the row must have (checked in the transaction)."""
        try:
            key = uuidlib.UUID(str(migration))
        except ValueError:
            raise MbxError(f"invalid UUID {migration!r}") from None
        if status is not None:
            status = validate.migration_status(status)
        if expect is not None:
            expect = tuple(validate.migration_status(s) for s in expect)
        if outcome is not None and not isinstance(outcome, str):
            raise MbxError(f"invalid migration outcome {outcome!r}")
        return MigrationUpdateCommand(
            self, key, status,
            validate.migration_counters(timeline or {}, "timeline"),
            validate.migration_counters(stats or {}, "stats"), outcome,
            expect)

    def require_migrations(self, vm, need_one=False):
        """Fails unless VM ``vm`` is known (a VM row or a migration of it);
        with ``need_one``, unless it has a migration."""
        return RequireMigrationsCommand(self, vm, need_one)

    def global_set(self, options):
        """Merges ``options`` into NB_Global.options (creating the row); a
        value "" removes the key."""
        checked = {}
        for key, value in (options or {}).items():
            if value == "":
                checked[validate.global_option_key(key)] = ""
            else:
                checked[key] = validate.global_option(key, value)
        return GlobalSetCommand(self, checked)

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

    def ext_list(self):
        return sorted(self.snapshot().external_networks.values(),
                      key=lambda e: e.name)

    def nat_list(self, mb=None):
        """NAT rules, by middlebox name then sorted (_nat_key)."""
        snap = self.snapshot()
        return [rule for name, rules in sorted(snap.nat_rules.items())
                if mb is None or name == mb for rule in rules]

    def lb_list(self, mb=None):
        """VIPs, by middlebox name then address, port, protocol."""
        snap = self.snapshot()
        return [v for name, vips in sorted(snap.vips.items())
                if mb is None or name == mb for v in vips]

    def ids_alerts(self, mb=None):
        return [a for a in self.snapshot().ids_alerts
                if mb is None or a.middlebox == mb]

    def as_list(self, tenant=None):
        return sorted((s for s in self.snapshot().address_sets.values()
                       if tenant is None or s.tenant == tenant),
                      key=lambda s: s.name)

    def steer_list(self, switch=None):
        """Sorted by switch, then descending priority."""
        return [p for p in self.snapshot().policies
                if switch is None or p.switch == switch]

    def migrations(self, vm=None):
        """Migrations (of ``vm``), oldest first."""
        return [m for m in self.snapshot().migrations
                if vm is None or m.vm == vm]

    def wait_migration(self, migration, timeout, until=("imported", "done")):
        """The record of Migration ``migration`` (uuid) once its status is
        in ``until``; MbxError when it ends otherwise, is gone, or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.snapshot().migrations
                     if m.uuid == str(migration)]
            if not found:
                raise MbxError(f"migration {migration} is gone")
            m = found[0]
            if m.status in until:
                return m
            if m.status in FINAL_MIGRATION:
                raise MbxError(f"its migration {m.source} -> {m.destination} "
                               f"ended {m.status}"
                               + (f" ({m.outcome})" if m.outcome else ""))
            if time.monotonic() >= deadline:
                raise MbxError(f"timed out after {timeout:g}s waiting for its "
                               f"state to be imported at {m.destination} "
                               f"(status {m.status})")
            time.sleep(0.05)

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
