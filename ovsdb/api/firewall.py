"""The config database API of firewall rules and address sets."""

from mbxmodel import rows as from_row
from mbxmodel.services import AddressSetInfo, RuleInfo
from ovsdb import validate
from ovsdb.api.common import (_address_set_info, _address_sets, _Command,
                              _externals, _find, _mb_info, _mb_rules,
                              _middleboxes, _nat_rules, _policies,
                              _refuse_existing, _rule_rows, _rules,
                              _set_users, _switches, _vips, _vms)
from ovsdb.api.middleboxes import _drop_rule, _insert_rule
from ovsdb.errors import MbxError


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
        column = from_row.RULE_COLUMNS[rule.tier]
        row.verify(column)
        validate.check_rule(mb, rule, _switches(self.api),
                            _address_sets(self.api))
        validate.check_rule_unique(mb, rule, _mb_rules(row))
        new = _insert_rule(self.api, txn, row.logical_switch.tenant, rule)
        setattr(row, column, list(getattr(row, column)) + [new])



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
        for column in from_row.RULE_COLUMNS.values():
            row.verify(column)
        if self.direction is None:
            doomed = _rule_rows(row, self.tier)
        else:
            tier = self.tier or "tenant"
            doomed = [(t, r) for t, r in _rule_rows(row, tier)
                      if (r.direction, r.priority)
                      == (self.direction, self.priority)]
            if not doomed:
                if self.if_exists:
                    return
                raise MbxError(f"middlebox '{self.mb_name}' has no {tier} "
                               f"{self.direction} rule at priority "
                               f"{self.priority}; use --if-exists to ignore "
                               "a missing one")
        for tier in sorted({t for t, _ in doomed}):
            column = from_row.RULE_COLUMNS[tier]
            gone = [r for t, r in doomed if t == tier]
            setattr(row, column, [r for r in getattr(row, column)
                                  if r is not None and r not in gone])
        for _, rule in doomed:
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


class FirewallApi:
    """MbxNb's firewall rule and address set methods."""

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

    def upsert_address_set(self, aset: AddressSetInfo):
        """Create or update ``aset``; follow a batch with
        ``check_firewall()``."""
        return UpsertAddressSetCommand(self, aset)

    def check_firewall(self):
        """Check every middlebox, rule, steering policy, NAT rule, VIP and
        external network (validate.check_firewall, check_services)."""
        return CheckFirewallCommand(self)

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
