"""The config database API of NAT rules."""

import dataclasses
import uuid as uuidlib

from mbxmodel import rows as from_row
from mbxmodel.services import bare
from ovsdb import validate
from ovsdb.api.common import (_Command, _externals, _find, _mb_info, _mb_row,
                              _nat_key, _nat_rules, _rows, _switches)
from ovsdb.errors import MbxError


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


class NatApi:
    """MbxNb's NAT rule methods."""

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

    def nat_list(self, mb=None):
        """NAT rules, by middlebox name then sorted (_nat_key)."""
        snap = self.snapshot()
        return [rule for name, rules in sorted(snap.nat_rules.items())
                if mb is None or name == mb for rule in rules]
