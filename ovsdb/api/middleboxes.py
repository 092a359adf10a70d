"""The config database API of middleboxes (and loading one whole, with its
rules, NAT rules and VIPs)."""

import dataclasses

from mbxmodel import rows as from_row
from mbxmodel.services import bare, MiddleboxInfo
from ovsdb import validate
from ovsdb.api.common import (_Command, _externals, _find, _mb_info,
                              _nat_rules, _policies, _refuse_existing,
                              _require, _rule_rows, _set_rows, _switches,
                              RequireCommand)
from ovsdb.api.lb import _write_vip
from ovsdb.api.nat import _write_nat
from ovsdb.errors import MbxError
from ovsdb.match import parse_match


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
        switch = _find(self.api, "Logical_Switch", mb.switch)
        row.logical_switch, row.tenant = switch, switch.tenant
        row.options = dict(mb.options)
        row.rules, row.provider_rules = [], []
        row.nat_rules, row.vips = [], []


def _insert_rule(api, txn, switch_tenant, rule):
    """A new Firewall_Rule row for ``rule`` (RuleInfo) of a middlebox whose
    switch belongs to ``switch_tenant``; the caller links it into the
    Middlebox column of its tier."""
    new = txn.insert(api.tables["Firewall_Rule"])
    new.priority, new.direction, new.match = (
        rule.priority, rule.direction, rule.match)
    new.action = rule.action
    new.tenant = from_row.rule_tenant(rule.tier, switch_tenant)
    new.address_sets = _set_rows(api, parse_match(rule.match))
    return new


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
        for _, rule in _rule_rows(row):
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


class SetMiddleboxStatusCommand(_Command):
    def __init__(self, api, name, status):
        super().__init__(api)
        self.name = name
        self.status = status

    def run_idl(self, txn):
        row = _find(self.api, "Middlebox", self.name)
        if row is not None and dict(row.status) != self.status:
            row.status = self.status


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
            row.name, row.rules, row.provider_rules = mb.name, [], []
            row.nat_rules, row.vips = [], []
        row.type, row.logical_switch = mb.type, switch
        row.tenant = switch.tenant
        row.default_action, row.options = mb.default_action, dict(mb.options)
        for tier, column in sorted(from_row.RULE_COLUMNS.items()):
            self._rules(txn, row, switch.tenant, tier, column)
        self._nat(txn, row)
        self._vips(txn, row)

    def _rules(self, txn, row, switch_tenant, tier, column):
        """Make ``row``'s rules of ``tier`` (in ``column``) exactly those of
        self.rules; a rule that stays keeps its row (and its tenant is
        that of the middlebox's switch)."""
        row.verify(column)
        keep = []
        wanted = [bare(r) for r in self.rules if r.tier == tier]
        tenant = from_row.rule_tenant(tier, switch_tenant)
        for _, rule in _rule_rows(row, tier):
            record = bare(from_row.rule(rule, tier))
            if record in wanted:
                wanted.remove(record)
                if rule.tenant != tenant:
                    rule.tenant = tenant
                keep.append(rule)
            else:
                _drop_rule(rule)
        for rule in wanted:
            keep.append(_insert_rule(self.api, txn, switch_tenant, rule))
        setattr(row, column, keep)

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


class MiddleboxesApi:
    """MbxNb's middlebox methods."""

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

    def require_middlebox(self, name):
        """Fails unless middlebox ``name`` exists (e.g. before fw-list)."""
        return RequireCommand(self, "Middlebox", name, "middlebox")

    def upsert_middlebox(self, mb: MiddleboxInfo, rules=(), nat_rules=(),
                         vips=()):
        """Create or update ``mb`` with exactly ``rules`` (RuleInfos),
        ``nat_rules`` (NatRuleInfos) and ``vips`` (VipInfos); follow a
        batch with ``check_firewall()``."""
        return UpsertMiddleboxCommand(self, mb, tuple(rules),
                                      tuple(nat_rules), tuple(vips))

    def set_middlebox_status(self, name, status):
        """Middlebox.status of ``name``; nothing if it is gone."""
        return SetMiddleboxStatusCommand(
            self, name, validate.status_map(status, "middlebox status"))

    def mb_list(self):
        return sorted(self.snapshot().middleboxes.values(),
                      key=lambda mb: mb.name)
