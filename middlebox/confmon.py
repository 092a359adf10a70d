"""mbxd's view of the two databases: conditional monitoring of this host's slices.

A host must learn what its own slices need and nothing of other tenants, so
the daemon replicates neither database: it monitors both with OVSDB
conditions (``monitor_cond`` / ``monitor_cond_since``) that it widens and
narrows as rows arrive, like ovn-controller does.  The southbound database
(runtime, ``--sb``) says which slices this host runs and where VMs are; the
northbound database (intent, ``--db``) holds what those slices' middleboxes
are::

    SB Chassis          name == HOST, or the other host of one of my Migration rows
    SB Slice            chassis == HOST                          (fixed)
    SB Migration        source == HOST or destination == HOST    (fixed)
    SB Shared_State     middlebox in {names in my slices' chains}
    SB VM_Location      vm in {names of my VM rows}
    NB Middlebox        name in {names in my slices' chains}
    NB Logical_Switch   _uuid in {middlebox.logical_switch}
    NB VM               logical_switch in {middlebox.logical_switch}
    NB Firewall_Rule    _uuid in {middlebox.rules, middlebox.provider_rules}
    NB NAT_Rule         _uuid in {middlebox.nat_rules}
    NB LB_VIP           _uuid in {middlebox.vips}
    NB Address_Set      _uuid in {rule.address_sets}
    NB External_Network every row                                (fixed)
    NB NB_Global, SB SB_Global   every row: nb_cfg                (fixed)
    SB Chassis_Private  name == HOST: its mb_cfg                 (fixed)

The last three are outside the walk, the HostConfig and ``held_rows()``:
``generation()`` and ``reported()`` read them for ``middlebox.mbcfg``, and
a change of them alone rebuilds nothing.  Nothing else of either database
is monitored (the daemon only writes
IDS_Alert rows, see ``middlebox.shared``; ``VM.host`` is an operator's
mirror of VM_Location and is not read).  Every condition starts as "no rows"
(``[]``) except the fixed ones and Chassis'.  The two schemas' table names
are disjoint, so the pure parts name a table without its database;
``SB_COLUMNS`` and ``NB_COLUMNS`` say which is where.

The conditions are recomputed after every change of either replica (of a
table other than Shared_State: shared state does not move the chain), by a
walk from this host's slices that follows only rows the walk reached (not
every row the replicas happen to hold), so when a Slice goes away every
condition below it shrinks in one round trip and the servers delete the
other tenant's rows from the replicas.  Growing takes one round trip per
level: SB Slice -> {NB Middlebox, SB Shared_State} -> NB {Firewall_Rule,
NAT_Rule, LB_VIP, Logical_Switch, VM} -> {NB Address_Set, SB VM_Location}.

``config()`` is only rebuilt when the chain has settled (``synced()``): both
databases connected and monitoring, no condition change waiting or in flight
in either and the last ones acknowledged (a server sends the rows a
condition change selects before its reply).  In between, and while either
database is unreachable, ``config()`` keeps returning the last HostConfig
built from settled replicas, so the daemon never sees a half-arrived slice
(e.g. a middlebox without its rules yet, or a slice whose middlebox has not
come from the other database).  Before the first settled replicas it is
``HostConfig(host, {})``.  python-ovs reconnects by itself; after a
reconnect it re-requests the conditions it last had acknowledged (or its
latest ones), so the chain does not restart from the slices.  Changes of
Shared_State rows alone neither recompute conditions nor rebuild the config;
``shared_rows()`` hands them to ``middlebox.shared``.

VM locations: ``VmSpec.host`` is this host's name for a VM whose
VM_Location row names this host's chassis, and ``None`` for every other VM
of the switch (no location yet, or on another host).

Pure parts (``reach``, ``conditions``, ``build_host_config``) work on
"plain rows": objects with a ``uuid`` attribute and one attribute per column,
reference columns holding raw ``uuid.UUID`` values (a UUID or a list of
them), as ``plain_row()`` produces from the IDL.  Raw values are needed
because python-ovs resolves a reference column to Row objects of the
replica and silently drops references to rows it does not hold, which is
the normal state of affairs while the condition chain is still growing.
"""

import ipaddress
import logging
import time
import types
import uuid as uuidlib

import ovs.poller
from ovs.db import idl as ovsidl

from mbxmodel import rows as from_row, tenancy
from mbxmodel.network import VMInfo
from mbxmodel.services import (ACTIONS, L4_PROTOCOLS, MIDDLEBOX_TYPES,
                               NAT_TYPES)
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from ovsdb import match as matchlang, remotes, validate
from ovsdb.errors import MbxError
from ovsdb.natblocks import STATUS_PREFIX as SNAT_BLOCK_PREFIX, parse_block
from ovsdb.server import SB_SCHEMA_PATH, SCHEMA_PATH

LOG = logging.getLogger(__name__)

# The columns mbxd reads, per monitored table of each database.
SB_COLUMNS = {
    "Chassis": ("name", "encap_ip", "migration_address"),
    "Slice": ("chain", "chassis", "tag", "status"),
    "VM_Location": ("vm", "chassis", "epoch"),
    "Shared_State": ("middlebox", "host", "service", "key", "value", "stamp"),
    "Migration": ("vm", "source", "destination", "path", "status", "token",
                  "timeline", "stats", "outcome", "options"),
}
NB_COLUMNS = {
    "Middlebox": ("name", "type", "tenant", "logical_switch", "default_action",
                  "rules", "provider_rules", "nat_rules", "vips", "options"),
    "Firewall_Rule": ("priority", "direction", "match", "address_sets",
                      "action", "tenant"),
    "NAT_Rule": ("type", "external_ips", "logical_ip", "protocol",
                 "external_port", "logical_port", "port_range"),
    "LB_VIP": ("vip", "port", "protocol", "algorithm", "backends", "options"),
    "Address_Set": ("name", "tenant", "addresses"),
    "Logical_Switch": ("name", "tenant", "vni", "subnet", "gateway"),
    "VM": ("name", "logical_switch", "mac", "ip"),
    "External_Network": ("name", "cidr", "gateway_ip", "gateway_mac"),
}
COLUMNS = dict(SB_COLUMNS, **NB_COLUMNS)
# The config generation (``generation()``) and this host's report of it
# (``reported()``): fixed conditions, outside the condition walk, the
# HostConfig and ``held_rows()``; a change of them alone builds nothing.
SB_CFG_COLUMNS = {"SB_Global": ("nb_cfg",), "Chassis_Private": ("name", "mb_cfg")}
NB_CFG_COLUMNS = {"NB_Global": ("nb_cfg", "options")}   # options: the lease
TABLES = tuple(COLUMNS)
# Tables whose rows make up the HostConfig (Shared_State is handed over
# separately, to middlebox.shared; Migration and Chassis rows to
# middlebox.migration).
CONFIG_TABLES = tuple(t for t in TABLES
                      if t not in ("Shared_State", "Migration", "Chassis"))
# The tables the condition walk reads.
WALK_TABLES = CONFIG_TABLES + ("Migration",)
# How held_rows() names a row: its name column, else its uuid.
_NAME_COLUMN = {"Chassis": "name", "Middlebox": "name", "Address_Set": "name",
                "Logical_Switch": "name", "VM": "name", "VM_Location": "vm",
                "External_Network": "name"}


# ------------------------------------------------------------- pure parts

def _uuids(value):
    """A reference column's value as a list of UUIDs (None, one UUID, or a
    list/tuple/set of them, or a map whose values are UUIDs; strings are
    accepted for convenience)."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = [value[k] for k in sorted(value, key=str)]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    else:
        items = [value]
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                item = uuidlib.UUID(item)
            except ValueError:
                continue
        if isinstance(item, uuidlib.UUID) and item.int != 0:
            out.append(item)
    return out


def _chain(value):
    """``Slice.chain`` ({position: Middlebox name}, or [(position, name)])
    as the list of middlebox names, lowest position first."""
    if value is None:
        return []
    pairs = value.items() if isinstance(value, dict) else value
    ordered = []
    for item in pairs:
        try:
            pos, name = item
        except (TypeError, ValueError):
            continue
        if isinstance(name, str) and name and isinstance(pos, int) \
                and not isinstance(pos, bool):
            ordered.append((pos, name))
    ordered.sort(key=lambda pr: pr[0])
    return [name for _, name in ordered]


def _by_uuid(rows):
    """``rows`` as {uuid: row} whether given as a mapping or an iterable."""
    if rows is None:
        return {}
    if isinstance(rows, dict):
        return rows
    return {row.uuid: row for row in rows}


def _is_mine(row, column, host_name):
    return from_row.optional(getattr(row, column, None)) == host_name


def reach(host_name, tables):
    """Walk from this host's slices through ``tables`` (table name ->
    {uuid: plain row} or iterable of plain rows, both databases' tables).

    Returns {table: set of uuids} of the rows this host needs, including
    uuids referenced but not (yet) present, plus "Middlebox_names", the
    middlebox names its slices' chains hold (whose Middlebox and
    Shared_State rows are needed), "VM_switches", the switch uuids whose
    VMs are needed, and "VM_names", the names of the reached VM rows present
    (whose VM_Location rows are needed).  Only rows reached by the walk
    contribute references, so rows merely lingering in a replica add
    nothing.  External_Network: every row."""
    t = {name: _by_uuid(tables.get(name)) for name in TABLES}
    out = {name: set() for name in TABLES}
    out["Chassis"] = {u for u, c in t["Chassis"].items()
                      if getattr(c, "name", None) == host_name}
    names = set()
    for u, s in t["Slice"].items():
        if _is_mine(s, "chassis", host_name):
            out["Slice"].add(u)
            names.update(_chain(getattr(s, "chain", None)))
    out["Middlebox_names"] = names
    out["Middlebox"] = {u for u, mb in t["Middlebox"].items()
                        if getattr(mb, "name", None) in names}
    for u in out["Middlebox"]:
        mb = t["Middlebox"][u]
        for column in from_row.RULE_COLUMNS.values():
            out["Firewall_Rule"].update(_uuids(getattr(mb, column, None)))
        out["NAT_Rule"].update(_uuids(getattr(mb, "nat_rules", None)))
        out["LB_VIP"].update(_uuids(getattr(mb, "vips", None)))
        out["Logical_Switch"].update(
            _uuids(getattr(mb, "logical_switch", None)))
    for u in out["Firewall_Rule"]:
        rule = t["Firewall_Rule"].get(u)
        if rule is not None:
            out["Address_Set"].update(
                _uuids(getattr(rule, "address_sets", None)))
    out["VM_switches"] = set(out["Logical_Switch"])
    out["VM"] = {u for u, vm in t["VM"].items()
                 if set(_uuids(getattr(vm, "logical_switch", None)))
                 & out["VM_switches"]}
    out["VM_names"] = {t["VM"][u].name for u in out["VM"]
                       if getattr(t["VM"][u], "name", None)}
    out["VM_Location"] = {u for u, loc in t["VM_Location"].items()
                          if getattr(loc, "vm", None) in out["VM_names"]}
    out["External_Network"] = set(t["External_Network"])
    out["Shared_State"] = {u for u, row in t["Shared_State"].items()
                           if getattr(row, "middlebox", None) in names}
    out["Migration"] = {u for u, m in t["Migration"].items()
                        if _is_mine(m, "source", host_name)
                        or _is_mine(m, "destination", host_name)}
    return out


def _clauses(column, values):
    """One ``column == value`` clause per value (uuids as references),
    sorted: an unchanged set gives an equal condition."""
    out = []
    for value in sorted(values, key=str):
        if isinstance(value, uuidlib.UUID):
            value = ["uuid", str(value)]
        out.append([column, "==", value])
    return out


def initial_conditions(host_name):
    """The conditions before anything is known: my Chassis row, my slices,
    my migrations and every External_Network row, nothing else."""
    conds = {name: [] for name in TABLES}
    conds["Chassis"] = [["name", "==", host_name]]
    conds["Slice"] = [["chassis", "==", host_name]]
    conds["Migration"] = [["source", "==", host_name],
                          ["destination", "==", host_name]]
    conds["External_Network"] = [True]
    return conds


def migration_peers(host_name, migrations):
    """The other host of each Migration row (plain rows) naming ``host_name``."""
    peers = set()
    for m in migrations:
        for name in (from_row.optional(getattr(m, "source", None)),
                     from_row.optional(getattr(m, "destination", None))):
            if isinstance(name, str) and name and name != host_name:
                peers.add(name)
    return peers


def conditions(host_name, tables):
    """{table: OVSDB condition} for the replicas ``tables``; ``[]`` = no
    rows.  Deterministic (sorted), so unchanged replicas give equal
    conditions."""
    r = reach(host_name, tables)
    conds = initial_conditions(host_name)
    conds["Middlebox"] = _clauses("name", r["Middlebox_names"])
    for table in ("Firewall_Rule", "NAT_Rule", "LB_VIP", "Address_Set",
                  "Logical_Switch"):
        conds[table] = _clauses("_uuid", r[table])
    conds["VM"] = _clauses("logical_switch", r["VM_switches"])
    conds["VM_Location"] = _clauses("vm", r["VM_names"])
    conds["Shared_State"] = _clauses("middlebox", r["Middlebox_names"])
    peers = migration_peers(host_name, _by_uuid(tables.get("Migration")).values())
    conds["Chassis"] += _clauses("name", peers)
    return conds
def _good_addresses(aset, warn):
    good = []
    for address in sorted(getattr(aset, "addresses", None) or ()):
        try:
            matchlang.parse_network(address)
        except MbxError as err:
            warn(("Address_Set", aset.uuid, address),
                 "address set %s: ignoring member %r: %s"
                 % (getattr(aset, "name", aset.uuid), address, err))
            continue
        good.append(address)
    return tuple(good)


def _rule(rule, tier, mb_name, switch_tenant, warn):
    """RuleInfo of a Firewall_Rule plain row held in the Middlebox column
    of ``tier`` of middlebox ``mb_name`` (whose switch is tenant
    ``switch_tenant``'s), or None (skipped, warned)."""
    def skip(why):
        warn(("Firewall_Rule", rule.uuid),
             "skipping firewall rule %s: %s" % (rule.uuid, why))
        return None

    why = tenancy.rule_problem(mb_name, tier, from_row.text(
        getattr(rule, "tenant", None)), switch_tenant)
    if why:
        return skip(why)

    value = from_row.rule(rule, tier)
    why = validate.problem(validate.rule_fields, value)
    if why:
        return skip(why)
    return value


def _ipv4(text):
    ipaddress.IPv4Address(text)           # ValueError if not an address
    return text


def _nat_rule(row, middlebox, warn):
    """NatRuleInfo of a NAT_Rule plain row of ``middlebox``, or None
    (skipped, warned)."""
    def skip(why):
        warn(("NAT_Rule", row.uuid),
             "skipping NAT rule %s: %s" % (row.uuid, why))
        return None

    kind = from_row.optional(getattr(row, "type", None), "")
    if kind not in NAT_TYPES:
        return skip("type %r is not snat or dnat" % (kind,))
    ips = sorted(set(from_row.strings(getattr(row, "external_ips", None))))
    try:
        for ip in ips:
            _ipv4(ip)
    except ValueError as err:
        return skip("external_ips: %s" % err)
    if not ips:
        return skip("no external_ips")
    logical_ip = from_row.text(getattr(row, "logical_ip", None))
    protocol = from_row.optional(getattr(row, "protocol", None), "") or ""
    if protocol not in ("",) + L4_PROTOCOLS:
        return skip("protocol %r is not tcp or udp" % (protocol,))
    if kind == "snat":
        if logical_ip:
            try:
                ipaddress.IPv4Network(logical_ip, strict=False)
            except ValueError as err:
                return skip("logical_ip: %s" % err)
        try:
            from_row.port_range(getattr(row, "port_range", None))
        except ValueError as err:
            return skip(str(err))
    else:
        if len(ips) != 1:
            return skip("a dnat rule has exactly one external IP, not %d"
                        % len(ips))
        try:
            _ipv4(logical_ip)
        except ValueError:
            return skip("logical_ip %r is not the VM's IPv4 address"
                        % (logical_ip,))
    return from_row.nat_rule(row, middlebox)


def _vip(row, middlebox, warn):
    """VipInfo of an LB_VIP plain row of ``middlebox``, or None (skipped,
    warned); malformed backends are dropped (warned)."""
    def skip(why):
        warn(("LB_VIP", row.uuid), "skipping LB VIP %s: %s" % (row.uuid, why))
        return None

    value = from_row.vip(row, middlebox)
    why = validate.problem(validate.vip_fields, value)
    if why:
        return skip(why)
    for text in from_row.backends(row)[1]:
        warn(("LB_VIP", row.uuid, text),
             "LB VIP %s:%d: ignoring backend %r (not ip:port)"
             % (value.vip, value.port, text))
    return value


def _switch_tenant(mb, t):
    """The ``tenant`` column of the Logical_Switch of Middlebox ``mb``
    ("" when it is not in the replica)."""
    for u in _uuids(getattr(mb, "logical_switch", None)):
        ls = t["Logical_Switch"].get(u)
        if ls is not None:
            return from_row.text(getattr(ls, "tenant", None))
    return ""


def _service_spec(mb, t, warn):
    """(ServiceSpec, address-set uuids) of a Middlebox plain row whose type
    is known."""
    mb_type = from_row.optional(getattr(mb, "type", None), "")
    options = dict(getattr(mb, "options", None) or {})
    if mb_type == "firewall":
        default_action = from_row.optional(
            getattr(mb, "default_action", None), "")
        if default_action not in ACTIONS:
            if default_action:
                warn(("Middlebox", mb.uuid, "default_action"),
                     "middlebox %s: default_action %r unknown, using deny"
                     % (mb.name, default_action))
            default_action = "deny"
        rules = []
        set_uuids = set()
        switch_tenant = _switch_tenant(mb, t)
        for tier, column in sorted(from_row.RULE_COLUMNS.items()):
            for ru in _uuids(getattr(mb, column, None)):
                rule = t["Firewall_Rule"].get(ru)
                if rule is None:
                    continue
                value = _rule(rule, tier, mb.name, switch_tenant, warn)
                if value is None:
                    continue
                rules.append(value)
                set_uuids.update(_uuids(getattr(rule, "address_sets", None)))
        rules.sort(key=lambda x: (-x.priority, x.direction, x.uuid))
        address_sets = {}
        for au in sorted(set_uuids, key=str):
            aset = t["Address_Set"].get(au)
            if aset is not None:
                address_sets[aset.name] = _good_addresses(aset, warn)
        return ServiceSpec(name=mb.name, type=mb_type,
                           default_action=default_action, options=options,
                           rules=tuple(rules), address_sets=address_sets)
    if mb_type == "nat":
        nat_rules = []
        for nu in _uuids(getattr(mb, "nat_rules", None)):
            row = t["NAT_Rule"].get(nu)
            value = (_nat_rule(row, mb.name, warn) if row is not None
                     else None)
            if value is not None:
                nat_rules.append(value)
        nat_rules.sort(key=lambda x: (x.type, x.external_ips, x.uuid))
        return ServiceSpec(name=mb.name, type=mb_type, options=options,
                           nat_rules=tuple(nat_rules))
    if mb_type == "lb":
        vips = []
        for vu in _uuids(getattr(mb, "vips", None)):
            row = t["LB_VIP"].get(vu)
            value = _vip(row, mb.name, warn) if row is not None else None
            if value is not None:
                vips.append(value)
        vips.sort(key=lambda x: (x.vip, x.port, x.protocol, x.uuid))
        return ServiceSpec(name=mb.name, type=mb_type, options=options,
                           vips=tuple(vips))
    return ServiceSpec(name=mb.name, type=mb_type, options=options)


def _gateway(ls, warn):
    """(subnet, gateway) of a Logical_Switch plain row: ``gateway`` or the
    subnet's first host address."""
    subnet = from_row.text(getattr(ls, "subnet", None))
    gateway = from_row.text(getattr(ls, "gateway", None))
    if gateway:
        return subnet, gateway
    if not subnet:
        return subnet, ""
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as err:
        warn(("Logical_Switch", ls.uuid, "subnet"),
             "logical switch %s: subnet %r unusable, no gateway: %s"
             % (ls.name, subnet, err))
        return subnet, ""
    first = next(iter(net.hosts()), None)
    return subnet, str(first) if first is not None else ""


def _snat_blocks(slice_row, warn):
    blocks = {}
    status = getattr(slice_row, "status", None) or {}
    for key in sorted(status):
        if not key.startswith(SNAT_BLOCK_PREFIX):
            continue
        rule = key[len(SNAT_BLOCK_PREFIX):]
        try:
            if not rule:
                raise ValueError("no NAT_Rule uuid in the key")
            blocks[rule] = parse_block(status[key])
        except ValueError as err:
            warn(("Slice", slice_row.uuid, key),
                 "slice %s: ignoring %s=%r: %s"
                 % (slice_row.uuid, key, status[key], err))
    return blocks


def _external_nets(t):
    return tuple(sorted((from_row.external_network(row)
                         for row in t["External_Network"].values()),
                        key=lambda n: n.name))


def build_host_config(host_name, tables, warn=None):
    """The HostConfig of ``host_name`` from plain rows of both databases
    (see ``reach``).

    One SliceConfig per Slice of this host's chassis whose tag is set
    (1-4094), whose chain is not empty and whose Middleboxes (by name) and
    Logical_Switch are present (see ``middlebox.config.SliceConfig`` for its
    fields); a slice whose chain has a middlebox of unknown type or spans
    more than one logical switch is skipped; rules, NAT rules and VIPs that
    are not usable are skipped; address set members that are not IPv4
    addresses/CIDRs and backends that are not ip:port are dropped; malformed
    ``snat-block:`` status entries are ignored; two slices with one tag: the
    one with the lower Slice uuid wins.  ``warn(key, message)`` is called
    for each skipped item (``key`` identifies it)."""
    if warn is None:
        def warn(_key, message):
            LOG.warning("%s", message)
    t = {name: _by_uuid(tables.get(name)) for name in TABLES}
    r = reach(host_name, t)
    by_name = {t["Middlebox"][u].name: t["Middlebox"][u]
               for u in sorted(r["Middlebox"], key=str)}
    here = {loc.vm for u, loc in t["VM_Location"].items()
            if u in r["VM_Location"] and _is_mine(loc, "chassis", host_name)}
    external = _external_nets(t)
    slices = {}
    for su in sorted(r["Slice"], key=str):
        s = t["Slice"][su]
        chain_names = _chain(getattr(s, "chain", None))
        chain = [by_name.get(name) for name in chain_names]
        if not chain or any(mb is None for mb in chain):
            continue                      # bypass, or not arrived yet
        names = ",".join(chain_names)
        tag = from_row.optional(getattr(s, "tag", None))
        if not isinstance(tag, int) or isinstance(tag, bool) or \
                not 1 <= tag <= 4094:
            warn(("Slice", su), "skipping slice %s of middlebox %s: tag %r "
                 "not in 1-4094" % (su, names, tag))
            continue
        if tag in slices:
            warn(("Slice", su), "skipping slice %s of middlebox %s: tag %d "
                 "already used by middlebox %s"
                 % (su, names, tag, slices[tag].middlebox))
            continue
        bad = [mb for mb in chain if from_row.optional(
            getattr(mb, "type", None), "") not in MIDDLEBOX_TYPES]
        if bad:
            for mb in bad:
                warn(("Middlebox", mb.uuid), "skipping middlebox %s: type %r "
                     "is not one of %s" % (mb.name, from_row.optional(
                         getattr(mb, "type", None), ""),
                         ", ".join(MIDDLEBOX_TYPES)))
            continue
        bad = [(mb, why) for mb, why in (
            (mb, validate.problem(validate.known_middlebox_options,
                                  dict(getattr(mb, "options", None) or {})))
            for mb in chain) if why]
        if bad:
            for mb, why in bad:
                warn(("Middlebox", mb.uuid, "options"),
                     "skipping slice %s (tag %d): middlebox %s: %s"
                     % (su, tag, mb.name, why))
            continue
        switches = set()
        for mb in chain:
            switches.update(_uuids(getattr(mb, "logical_switch", None)))
        if len(switches) > 1:
            warn(("Slice", su, "switches"),
                 "skipping slice %s (tag %d): its chain %s spans %d logical "
                 "switches" % (su, tag, names, len(switches)))
            continue
        ls_uuid = next(iter(switches), None)
        ls = t["Logical_Switch"].get(ls_uuid) if ls_uuid is not None else None
        if ls is None:
            continue                      # not arrived yet
        claims = [why for why in (tenancy.middlebox_problem(
            mb.name, from_row.text(getattr(mb, "tenant", None)), ls.name,
            from_row.text(getattr(ls, "tenant", None))) for mb in chain) if why]
        if claims:
            warn(("Slice", su, "tenant"), "skipping slice %s (tag %d): %s"
                 % (su, tag, "; ".join(claims)))
            continue
        subnet, gateway = _gateway(ls, warn)
        why = validate.problem(validate.subnet, subnet)
        if why:
            warn(("Logical_Switch", ls.uuid), "skipping slice %s (tag %d): "
                 "logical switch %s: %s" % (su, tag, ls.name, why))
            continue
        skipped = []

        def slice_warn(key, message):
            skipped.append(message)
            warn(key, message)
        services = [_service_spec(mb, t, slice_warn) for mb in chain]
        firewall = next((sv for sv in services if sv.type == "firewall"),
                        None)
        options = {}
        for sv in services:
            for key, value in sv.options.items():
                options.setdefault(key, value)
        vms = []
        for vm in t["VM"].values():
            if ls_uuid not in _uuids(getattr(vm, "logical_switch", None)):
                continue
            info = VMInfo(vm.name, ls.name, from_row.text(vm.mac).lower(),
                          from_row.optional(vm.ip, "") or "")
            why = validate.problem(validate.vm_fields, info, subnet)
            if why:
                slice_warn(("VM", vm.uuid), "skipping VM %s: %s" % (vm.name, why))
                continue
            vms.append(VmSpec(name=info.name, mac=info.mac, ip=info.ip,
                              host=host_name if vm.name in here else None))
        vms.sort(key=lambda v: v.name)
        vni = from_row.optional(getattr(ls, "vni", None), 0)
        if firewall is not None:
            legacy = dict(middlebox=firewall.name, type="firewall",
                          default_action=firewall.default_action,
                          rules=firewall.rules,
                          address_sets=firewall.address_sets)
        else:
            legacy = dict(middlebox=names, type="chain",
                          default_action="allow", rules=(), address_sets={})
        slices[tag] = SliceConfig(
            tag=tag,
            tenant=(from_row.optional(getattr(ls, "tenant", None), "")
                    or ls.name),
            switch=ls.name, vni=vni if isinstance(vni, int) else 0,
            options=options, vms=tuple(vms), services=tuple(services),
            subnet=subnet, gateway=gateway, snat_blocks=_snat_blocks(s, warn),
            external=external, skipped=tuple(skipped), **legacy)
    return HostConfig(host=host_name, slices=slices)


def generation_of(nb_global, sb_global):
    """The config generation of plain ``NB_Global`` and ``SB_Global`` rows
    (at most one each; none: 0): the lower of the two ``nb_cfg``."""
    def cfg(rows):
        for row in rows:
            return row.nb_cfg if isinstance(row.nb_cfg, int) else 0
        return 0
    return min(cfg(nb_global), cfg(sb_global))


def held_names(tables):
    """{table: sorted names}: rows by their name column (VM_Location rows
    by their VM), Shared_State rows as ``middlebox/service/key@host``,
    other rows by uuid."""
    out = {}
    for name in TABLES:
        rows = _by_uuid(tables.get(name)).values()
        column = _NAME_COLUMN.get(name)
        if name == "Shared_State":
            out[name] = sorted("%s/%s/%s@%s" % (r.middlebox, r.service, r.key,
                                                r.host) for r in rows)
        else:
            out[name] = sorted(str(getattr(row, column)) if column else
                               str(row.uuid) for row in rows)
    return out


# ------------------------------------------------------------- IDL side

def _raw(value, _base):
    return value


def plain_row(row, columns):
    """An IDL row as a plain row: reference columns as raw UUIDs; a column
    the server did not send (it omits default values) has its default, as
    python-ovs' own row attributes do."""
    data = row._data              # python-ovs has no public raw accessor
    values = {"uuid": row.uuid}
    for column in columns:
        # Indexing, not .get(): python-ovs' column dict makes the default.
        datum = data[column] if data is not None else None
        values[column] = datum.to_python(_raw) if datum is not None else None
    return types.SimpleNamespace(**values)


class _Idl(ovsidl.Idl):
    """An Idl that counts the change notices of Shared_State rows and of
    the generation tables (``SB_CFG_COLUMNS``, ``NB_CFG_COLUMNS``), so the
    monitor can tell config changes from shared-state traffic and
    generation numbers: each row change adds one to ``change_seqno`` and
    gives one notice."""

    QUIET = frozenset(("Shared_State",) + tuple(SB_CFG_COLUMNS) + tuple(NB_CFG_COLUMNS))

    def __init__(self, *args, **kwargs):
        self.shared_notices = 0
        super().__init__(*args, **kwargs)     # a member list: follows the leader
        remotes.follow_quickly(self._session)

    def notify(self, event, row, updates=None):
        if row._table.name in self.QUIET:
            self.shared_notices += 1

    def config_seqno(self):
        """Moves when anything but Shared_State rows and generation rows
        changed."""
        return self.change_seqno - self.shared_notices


class _Replica:
    """One database's IDL and the conditions asked of it."""

    def __init__(self, remote, schema, columns, conds, probe_interval,
                 fixed=None):
        """``fixed``: {table: (columns, condition)} monitored besides
        ``columns``, whose conditions never change."""
        fixed = fixed or {}
        helper = ovsidl.SchemaHelper(location=schema)
        for table, cols in columns.items():
            helper.register_columns(table, list(cols))
        for table, (cols, _cond) in fixed.items():
            helper.register_columns(table, list(cols))
        self.idl = _Idl(remote, helper, probe_interval=probe_interval)
        self.columns = columns
        self.fixed = {table: cols for table, (cols, _cond) in fixed.items()}
        self.conds = {table: conds[table] for table in columns}
        for table, cond in self.conds.items():
            self.idl.cond_change(table, cond)
        for table, (_cols, cond) in fixed.items():
            self.idl.cond_change(table, cond)

    def ask(self, conds):
        """Ask for ``conds`` (of every database: only this one's tables
        are looked at); True if anything changed."""
        changed = False
        for table in self.columns:
            if conds[table] != self.conds[table]:
                self.idl.cond_change(table, conds[table])
                self.conds[table] = conds[table]
                changed = True
        if changed:
            self.idl.send_cond_change()     # now, not at the next run()
        return changed

    def settled(self):
        """Connected and monitoring, no condition change waiting or in
        flight (the last one acknowledged, so its rows have arrived)."""
        idl = self.idl
        if idl.state != idl.IDL_S_MONITORING or \
                not idl._session.is_connected() or idl.cond_changed:
            return False
        for table in list(self.columns) + list(self.fixed):
            state = idl.tables[table].condition_state
            if state.new is not None or state.requested is not None:
                return False
        return True

    def plain(self, table):
        columns = self.columns.get(table) or self.fixed[table]
        return {u: plain_row(row, columns)
                for u, row in self.idl.tables[table].rows.items()}


class ConfigMonitor:
    """This host's view of the two databases; see the module docstring.

    ``nb_remote``: the northbound database; ``sb_remote``: the southbound
    one (default: the same remote, one server serving both).  Drive it from
    a poll loop: ``run()``, then ``wait(poller)`` and ``poller.block()``.
    Not thread-safe: use it from one thread."""

    def __init__(self, nb_remote, host_name, sb_remote=None,
                 nb_schema=SCHEMA_PATH, sb_schema=SB_SCHEMA_PATH,
                 probe_interval=None):
        self.host_name = host_name
        conds = initial_conditions(host_name)
        self._sb = _Replica(sb_remote or nb_remote, sb_schema, SB_COLUMNS,
                            conds, probe_interval, fixed={
                                "SB_Global": (SB_CFG_COLUMNS["SB_Global"], [True]),
                                "Chassis_Private": (SB_CFG_COLUMNS["Chassis_Private"],
                                                    [["name", "==", host_name]])})
        self._nb = _Replica(nb_remote, nb_schema, NB_COLUMNS, conds,
                            probe_interval, fixed={
                                "NB_Global": (NB_CFG_COLUMNS["NB_Global"], [True])})
        self._replicas = (self._sb, self._nb)
        self._conds = conds
        self._seen_seqno = None
        self._built_key = None
        self._generation = (None, None)     # (replicas' change_seqno, generation)
        self._global_options = (None, {})   # (NB replica's change_seqno, options)
        self._config = HostConfig(host=host_name, slices={})
        self._warned = set()
        self._last_error = None
        self.cond_changes = 0         # condition updates sent (for stats)
        self.builds = 0               # HostConfig rebuilds (for stats)

    # -- poll loop

    def run(self):
        """Process what the databases sent, update the conditions; never
        blocks.  Returns True if ``config()`` changed."""
        try:
            result = self._run()
        except Exception as err:      # odd data must not kill the daemon
            if repr(err) != self._last_error:   # once, not every iteration
                self._last_error = repr(err)
                LOG.exception("config monitor: unexpected error, keeping "
                              "the last configuration")
            return False
        self._last_error = None
        return result

    def _config_seqno(self):
        return tuple(rep.idl.config_seqno() for rep in self._replicas)

    def _run(self):
        for rep in self._replicas:
            rep.idl.run()
        seqno = self._config_seqno()
        if seqno != self._seen_seqno:
            new = conditions(self.host_name, self._plain_tables(WALK_TABLES))
            self._seen_seqno = seqno
            changed = [rep.ask(new) for rep in self._replicas]
            self._conds = new
            if any(changed):
                self.cond_changes += 1
        if not self.synced():
            return False
        key = seqno + tuple(rep.idl.cond_seqno for rep in self._replicas)
        if key == self._built_key:
            return False
        self._built_key = key
        self.builds += 1
        config = self._build(self._plain_tables(CONFIG_TABLES))
        if config == self._config:
            return False
        self._config = config
        return True

    def wait(self, poller):
        for rep in self._replicas:
            rep.idl.wait(poller)

    def close(self):
        for rep in self._replicas:
            rep.idl.close()

    # -- state

    def synced(self):
        """True when the condition chain has settled on the current
        replicas: both databases connected and monitoring, no condition
        change waiting or in flight in either (the last ones acknowledged,
        so their rows have arrived), and the conditions computed from the
        replicas are the ones acknowledged."""
        if not all(rep.settled() for rep in self._replicas):
            return False
        return self._config_seqno() == self._seen_seqno   # run() looked

    def connected(self):
        """{"sb": bool, "nb": bool}: which databases are being monitored."""
        return {name: rep.idl.state == rep.idl.IDL_S_MONITORING
                and rep.idl._session.is_connected()
                for name, rep in (("sb", self._sb), ("nb", self._nb))}

    def config(self):
        """The HostConfig of the last settled replicas (see module doc)."""
        return self._config

    def conditions(self):
        """The conditions currently asked for, per table."""
        return {table: list(cond) for table, cond in self._conds.items()}

    def held_rows(self):
        """Everything the local replicas hold: {table: sorted names}
        (see ``held_names``)."""
        return held_names(self._plain_tables())

    # -- the config generation (middlebox.mbcfg)

    def generation(self):
        """The config generation the settled replicas hold, or None while
        not ``synced()``: the lower of the northbound ``NB_Global.nb_cfg``
        (the intent, which arrives with the change it counts) and the
        southbound ``SB_Global.nb_cfg`` (the logical controller's slices
        and decisions for it, which arrive before it); 0 without the row.
        ``config()`` is built from replicas that hold it."""
        if not self.synced():
            return None
        key = tuple(rep.idl.change_seqno for rep in self._replicas)
        if key != self._generation[0]:      # read again only after a change
            self._generation = (key, generation_of(
                self._nb.plain("NB_Global").values(),
                self._sb.plain("SB_Global").values()))
        return self._generation[1]

    def global_options(self):
        """``NB_Global.options`` as the replica holds it ({} without the
        row): ``middlebox.shared`` reads the Shared_State lease there, the
        daemon's loop its limits at every pass (read again only after the
        northbound replica changed)."""
        seqno = self._nb.idl.change_seqno
        if self._global_options[0] != seqno:
            options = {}
            for row in self._nb.plain("NB_Global").values():
                options = dict(row.options or {})
                break
            self._global_options = (seqno, options)
        return dict(self._global_options[1])

    def reported(self):
        """This host's ``Chassis_Private.mb_cfg`` as the replica holds it:
        ``(row exists, value or None)``."""
        for row in self._sb.plain("Chassis_Private").values():
            if row.name == self.host_name:
                return True, from_row.optional(row.mb_cfg)
        return False, None

    # -- writers (middlebox.shared, middlebox.migration, middlebox.mbcfg)

    @property
    def sb_idl(self):
        """The southbound IDL: Shared_State, IDS_Alert and Migration writes
        are committed on it."""
        return self._sb.idl

    @property
    def nb_idl(self):
        """The northbound IDL (read only)."""
        return self._nb.idl

    def data_seqno(self):
        """Moves whenever the southbound replica changed (Shared_State,
        Migration, Chassis rows included) or the chain settled or
        unsettled."""
        return (self._sb.idl.change_seqno, self._sb.idl.cond_seqno,
                self.synced())

    # -- shared state (middlebox.shared)

    def shared_rows(self):
        """The Shared_State rows the replica holds, as plain rows."""
        return list(self._sb.plain("Shared_State").values())

    def shared_covered(self):
        """The middlebox names whose Shared_State rows the replica holds in
        full (the acknowledged condition), or None while not ``synced()``."""
        if not self.synced():
            return None
        return {clause[2] for clause in self._conds["Shared_State"]}

    # -- migrations (middlebox.migration)

    def migrations(self):
        """The Migration rows naming this host, as plain rows."""
        return list(self._sb.plain("Migration").values())

    def peers(self):
        """{host name: plain Chassis row} of the other hosts in the replica."""
        return {row.name: row for row in self._sb.plain("Chassis").values()
                if row.name != self.host_name}

    # -- helpers

    def _plain_tables(self, tables=TABLES):
        return {table: (self._sb if table in SB_COLUMNS else self._nb)
                .plain(table) for table in tables}

    def _build(self, tables):
        warnings = {}

        def warn(key, message):
            warnings[key] = message
        config = build_host_config(self.host_name, tables, warn)
        for key, message in warnings.items():
            if key not in self._warned:
                LOG.warning("%s", message)
        self._warned = set(warnings)
        return config


def run_until(monitor, predicate, timeout):
    """Drive ``monitor``'s poll loop until ``predicate()`` or ``timeout``
    seconds; returns the predicate's last value.  For tools and tests."""
    deadline = time.monotonic() + timeout
    while True:
        monitor.run()
        if predicate():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller = ovs.poller.Poller()
        monitor.wait(poller)
        poller.timer_wait(max(1, min(100, int(left * 1000))))
        poller.block()
