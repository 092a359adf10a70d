"""What the areas of the two database APIs share: reading rows as the
transaction sees them, the checks of an add against an existing row, the
command base classes."""

import dataclasses

from ovsdbapp.backend.ovs_idl import command

from mbxmodel import rows as from_row, tenancy
from mbxmodel.network import SwitchInfo, VMInfo
from mbxmodel.services import AddressSetInfo, MiddleboxInfo, PolicyInfo
from ovsdb import validate
from ovsdb.errors import MbxError
from ovsdb.match import parse_match


def sort_rules(rules, tier_order="provider-first"):
    """Rules in evaluation order: by direction (from-vm, to-vm), then tier
    (the middlebox's ``tier-order`` option), then descending priority."""
    tiers = validate.TIERS if tier_order != "tenant-first" else tuple(
        reversed(validate.TIERS))
    return tuple(sorted(rules, key=lambda r: (
        r.direction, tiers.index(r.tier) if r.tier in tiers else 2,
        -r.priority, r.match)))


def _rows(api, table):
    """The table's rows; none when the server's schema predates it."""
    found = api.tables.get(table)
    return list(found.rows.values()) if found is not None else []


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


def _rule_rows(mb_row, tier=None):
    """(tier, Firewall_Rule row) of the rules Middlebox ``mb_row`` holds
    (those of ``tier`` only, if given): a rule's tier is the column that
    holds it (from_row.RULE_COLUMNS)."""
    return [(t, rule) for t, column in sorted(from_row.RULE_COLUMNS.items())
            if tier is None or t == tier
            for rule in getattr(mb_row, column) if rule is not None]


def _mb_rules(mb_row):
    """RuleInfos of Middlebox ``mb_row``'s rules, both tiers."""
    return [from_row.rule(rule, tier) for tier, rule in _rule_rows(mb_row)]


def _rules(api):
    """Middlebox name -> its rules (both tiers), in evaluation order."""
    return {row.name: sort_rules(_mb_rules(row),
                                 dict(row.options).get("tier-order", ""))
            for row in _rows(api, "Middlebox")}


def _tenancy_ignored(api):
    """The rows whose tenant columns disagree (mbxmodel.tenancy.ignored)."""
    switches = {row.name: row.tenant for row in _rows(api, "Logical_Switch")}
    mbs = [row for row in _rows(api, "Middlebox")
           if row.logical_switch is not None]
    return tenancy.ignored(
        switches,
        [(row.name, row.logical_switch.name, row.tenant) for row in mbs],
        [(row.name, tier, str(rule.uuid), rule.tenant) for row in mbs
         for tier, rule in _rule_rows(row)],
        [(row.logical_switch.name, row.priority, row.tenant,
          _chain(row.chain)) for row in _policy_rows(api)])


def _ignored(api, snap):
    """The rows not in force and why: those whose tenant columns disagree,
    and those no reader can use (``validate.unusable``), given ``snap``'s
    values (an NbSnapshot's fields, by name)."""
    nb = _nb_global(api)
    return validate.unusable(
        snap["switches"], snap["vms"], snap["middleboxes"], snap["rules"],
        snap["policies"], snap["address_sets"], snap["vips"],
        _tenancy_ignored(api), nb.options if nb is not None else {},
        snap["nat_rules"], snap["external_networks"].values())


def _status_key(kind, row):
    """The key of ``row`` (of validate.STATUS_TABLES[kind]) in ``validate.unusable``,
    or None (a policy without its switch)."""
    if kind in ("rule", "nat"):
        return (kind, str(row.uuid))
    if kind == "policy":
        if row.logical_switch is None:
            return None
        return ("policy", row.logical_switch.name, row.priority)
    return (kind, row.name)


def _row_status(api):
    """{key: status} of the rows of validate.STATUS_TABLES whose status is set."""
    out = {}
    for kind, table in validate.STATUS_TABLES.items():
        for row in _rows(api, table):
            status = getattr(row, "status", "")
            key = _status_key(kind, row) if status else None
            if key is not None:
                out[key] = status
    return out


def _status_row(api, key):
    """The row of a ``validate.unusable`` key among validate.STATUS_TABLES, or None
    (gone, or a table the server's schema lacks a status for)."""
    table = api.tables.get(validate.STATUS_TABLES.get(key[0], ""))
    if table is None or "status" not in table.columns:
        return None
    for row in table.rows.values():
        if _status_key(key[0], row) == key:
            return row
    return None


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
        rules = [from_row.rule(rule, tier) for tier, rule in _rule_rows(mb)
                 if set_row in rule.address_sets]
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


class _Command(command.BaseCommand):
    def execute(self, check_error=True, log_errors=False, **kwargs):
        return super().execute(check_error=check_error,
                               log_errors=log_errors, **kwargs)


class _ReadCommand(_Command):
    READ_ONLY = True


class RequireCommand(_Command):
    """Fails unless a row named ``name`` exists (for reads in a chain)."""

    def __init__(self, api, table, name, what):
        super().__init__(api)
        self.table = table
        self.name = name
        self.what = what

    def run_idl(self, txn):
        _require(self.api, self.table, self.name, self.what)


def _mb_row(api, name, hint):
    row = _find(api, "Middlebox", name)
    if row is None:
        raise MbxError(f"unknown middlebox '{name}'; create it first "
                       f"({hint})")
    return row
