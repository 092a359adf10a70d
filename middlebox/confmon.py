"""mbxd's view of the config DB: conditional monitoring of this host's slices.

A host must learn what its own slices need and nothing of other tenants, so
the daemon does not replicate the config DB: it monitors it with OVSDB
conditions (``monitor_cond`` / ``monitor_cond_since``) that it widens and
narrows as rows arrive, like ovn-controller does::

    Host            name == HOST                       (fixed, set before connecting)
    Slice           host == <my Host row>
    Middlebox       _uuid in {slice.middlebox}
    Logical_Switch  _uuid in {middlebox.logical_switch}
    VM              logical_switch in {middlebox.logical_switch}
    Firewall_Rule   _uuid in {middlebox.rules}
    Address_Set     _uuid in {rule.address_sets}

Steering_Policy and NB_Global are not monitored at all.  Every condition
starts as "no rows" (``[]``) except Host's.

The conditions are recomputed after every change of the local replica, by a
walk from this host's Host row that follows only rows the walk reached (not
every row the replica happens to hold), so when a Slice goes away every
condition below it shrinks in one round trip and the server deletes the
other tenant's rows from the replica.  Growing takes one round trip per
level: Host -> Slice -> Middlebox -> {Firewall_Rule, Logical_Switch, VM} ->
Address_Set.

``config()`` is only rebuilt when the chain has settled (``synced()``): no
condition change waiting or in flight and the last one acknowledged (the
server sends the rows a condition change selects before its reply).  In
between, and while the DB is unreachable, ``config()`` keeps returning the
last HostConfig built from a settled replica, so the daemon never sees a
half-arrived slice (e.g. a middlebox without its rules yet).  Before the
first settled replica it is ``HostConfig(host, {})``.  python-ovs reconnects
by itself; after a reconnect it re-requests the conditions it last had
acknowledged (or its latest ones), so the chain does not restart from Host.

VM hosts: the daemon only ever holds its own Host row, so ``VmSpec.host`` is
this host's name for VMs whose ``VM.host`` is this host's row, and ``None``
for every other VM of the switch (unbound, or on another host).

Pure parts (``reach``, ``conditions``, ``build_host_config``) work on
"plain rows": objects with a ``uuid`` attribute and one attribute per column,
reference columns holding raw ``uuid.UUID`` values (a UUID or a list of
them), as ``plain_rows()`` produces from the IDL.  Raw values are needed
because python-ovs resolves a reference column to Row objects of the replica
and silently drops references to rows it does not hold, which is the normal
state of affairs while the condition chain is still growing.
"""

import logging
import time
import types
import uuid as uuidlib

import ovs.poller
from ovs.db import idl as ovsidl

from middlebox.config import HostConfig, RuleSpec, SliceConfig, VmSpec
from ovsdb import match as matchlang
from ovsdb.errors import MbxError
from ovsdb.server import SCHEMA_PATH

LOG = logging.getLogger(__name__)

# The columns mbxd reads, per monitored table.
COLUMNS = {
    "Host": ("name",),
    "Slice": ("middlebox", "host", "tag"),
    "Middlebox": ("name", "type", "logical_switch", "default_action", "rules",
                  "options"),
    "Firewall_Rule": ("priority", "direction", "match", "address_sets",
                      "action", "tier"),
    "Address_Set": ("name", "tenant", "addresses"),
    "Logical_Switch": ("name", "tenant", "vni"),
    "VM": ("name", "logical_switch", "mac", "ip", "host"),
}
TABLES = tuple(COLUMNS)
# How held_rows() names a row: its name column, else its uuid.
_NAME_COLUMN = {"Host": "name", "Middlebox": "name", "Address_Set": "name",
                "Logical_Switch": "name", "VM": "name"}

MIDDLEBOX_TYPES = ("firewall",)
DIRECTIONS = ("from-vm", "to-vm")
ACTIONS = ("allow", "deny", "reject")
TIERS = ("provider", "tenant")


# ------------------------------------------------------------- pure parts

def _uuids(value):
    """A reference column's value as a list of UUIDs (None, one UUID, or a
    list/tuple/set of them; strings are accepted for convenience)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
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


def _scalar(value, default=None):
    """An optional (0..1) column given as a list -> its element or default."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def _by_uuid(rows):
    """``rows`` as {uuid: row} whether given as a mapping or an iterable."""
    if rows is None:
        return {}
    if isinstance(rows, dict):
        return rows
    return {row.uuid: row for row in rows}


def reach(host_name, tables):
    """Walk from the Host row named ``host_name`` through ``tables`` (table
    name -> {uuid: plain row} or iterable of plain rows).

    Returns {table: set of uuids} of the rows this host needs, including
    uuids referenced but not (yet) present, plus "VM_switches", the switch
    uuids whose VMs are needed.  Only rows reached by the walk contribute
    references, so rows merely lingering in the replica add nothing."""
    t = {name: _by_uuid(tables.get(name)) for name in TABLES}
    out = {name: set() for name in TABLES}
    out["Host"] = {u for u, h in t["Host"].items()
                   if getattr(h, "name", None) == host_name}
    for u, s in t["Slice"].items():
        if set(_uuids(getattr(s, "host", None))) & out["Host"]:
            out["Slice"].add(u)
            out["Middlebox"].update(_uuids(getattr(s, "middlebox", None)))
    for u in out["Middlebox"]:
        mb = t["Middlebox"].get(u)
        if mb is None:
            continue
        out["Firewall_Rule"].update(_uuids(getattr(mb, "rules", None)))
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
    return out


def _clauses(column, uuids):
    return [[column, "==", ["uuid", str(u)]] for u in sorted(uuids, key=str)]


def initial_conditions(host_name):
    """The conditions before anything is known: my Host row, nothing else."""
    conds = {name: [] for name in TABLES}
    conds["Host"] = [["name", "==", host_name]]
    return conds


def conditions(host_name, tables):
    """{table: OVSDB condition} for the replica ``tables``; ``[]`` = no rows.
    Deterministic (sorted), so an unchanged replica gives equal conditions."""
    r = reach(host_name, tables)
    conds = initial_conditions(host_name)
    conds["Slice"] = _clauses("host", r["Host"])
    conds["Middlebox"] = _clauses("_uuid", r["Middlebox"])
    conds["Firewall_Rule"] = _clauses("_uuid", r["Firewall_Rule"])
    conds["Address_Set"] = _clauses("_uuid", r["Address_Set"])
    conds["Logical_Switch"] = _clauses("_uuid", r["Logical_Switch"])
    conds["VM"] = _clauses("logical_switch", r["VM_switches"])
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


def _rule_spec(rule, warn):
    """RuleSpec of a Firewall_Rule plain row, or None (skipped, warned)."""
    def skip(why):
        warn(("Firewall_Rule", rule.uuid),
             "skipping firewall rule %s: %s" % (rule.uuid, why))
        return None

    priority = _scalar(getattr(rule, "priority", None))
    direction = _scalar(getattr(rule, "direction", None), "")
    action = _scalar(getattr(rule, "action", None), "")
    tier = _scalar(getattr(rule, "tier", None), "") or "tenant"
    text = _scalar(getattr(rule, "match", None), "")
    if not isinstance(priority, int) or isinstance(priority, bool) or \
            not 0 <= priority <= 32767:
        return skip("priority %r not in 0-32767" % (priority,))
    if direction not in DIRECTIONS:
        return skip("direction %r is not from-vm or to-vm" % (direction,))
    if action not in ACTIONS:
        return skip("action %r is not allow, deny or reject" % (action,))
    if tier not in TIERS:
        return skip("tier %r is not provider or tenant" % (tier,))
    try:
        matchlang.parse_match(text)
    except MbxError as err:
        return skip(str(err))
    return RuleSpec(priority=priority, direction=direction, match=text,
                    action=action, tier=tier, uuid=str(rule.uuid))


def build_host_config(host_name, tables, warn=None):
    """The HostConfig of ``host_name`` from plain rows (see ``reach``).

    One SliceConfig per Slice of this host whose tag is set (1-4094) and whose
    Middlebox and Logical_Switch are present; rules that are not usable (bad
    priority/direction/action/tier or match) are skipped; address set
    members that are not IPv4 addresses/CIDRs are dropped; two slices with
    one tag: the one with the lower Slice uuid wins.  ``warn(key, message)``
    is called for each skipped item (``key`` identifies it)."""
    if warn is None:
        def warn(_key, message):
            LOG.warning("%s", message)
    t = {name: _by_uuid(tables.get(name)) for name in TABLES}
    r = reach(host_name, t)
    my_hosts = r["Host"]
    slices = {}
    for su in sorted(r["Slice"], key=str):
        s = t["Slice"][su]
        mb_uuid = _scalar(_uuids(getattr(s, "middlebox", None)))
        mb = t["Middlebox"].get(mb_uuid) if mb_uuid is not None else None
        if mb is None:
            continue                      # no middlebox, or not arrived yet
        tag = _scalar(getattr(s, "tag", None))
        if not isinstance(tag, int) or isinstance(tag, bool) or \
                not 1 <= tag <= 4094:
            warn(("Slice", su), "skipping slice %s of middlebox %s: tag %r "
                 "not in 1-4094" % (su, mb.name, tag))
            continue
        if tag in slices:
            warn(("Slice", su), "skipping slice %s of middlebox %s: tag %d "
                 "already used by middlebox %s"
                 % (su, mb.name, tag, slices[tag].middlebox))
            continue
        mb_type = _scalar(getattr(mb, "type", None), "")
        if mb_type not in MIDDLEBOX_TYPES:
            warn(("Middlebox", mb.uuid), "skipping middlebox %s: type %r is "
                 "not one of %s" % (mb.name, mb_type,
                                    ", ".join(MIDDLEBOX_TYPES)))
            continue
        ls_uuid = _scalar(_uuids(getattr(mb, "logical_switch", None)))
        ls = t["Logical_Switch"].get(ls_uuid) if ls_uuid is not None else None
        if ls is None:
            continue                      # not arrived yet
        default_action = _scalar(getattr(mb, "default_action", None), "")
        if default_action not in ACTIONS:
            if default_action:
                warn(("Middlebox", mb.uuid, "default_action"),
                     "middlebox %s: default_action %r unknown, using deny"
                     % (mb.name, default_action))
            default_action = "deny"
        rules = []
        set_uuids = set()
        for ru in _uuids(getattr(mb, "rules", None)):
            rule = t["Firewall_Rule"].get(ru)
            if rule is None:
                continue
            spec = _rule_spec(rule, warn)
            if spec is None:
                continue
            rules.append(spec)
            set_uuids.update(_uuids(getattr(rule, "address_sets", None)))
        rules.sort(key=lambda x: (-x.priority, x.direction, x.uuid))
        address_sets = {}
        for au in sorted(set_uuids, key=str):
            aset = t["Address_Set"].get(au)
            if aset is not None:
                address_sets[aset.name] = _good_addresses(aset, warn)
        vms = []
        for vm in t["VM"].values():
            if ls_uuid not in _uuids(getattr(vm, "logical_switch", None)):
                continue
            vm_host = _scalar(_uuids(getattr(vm, "host", None)))
            vms.append(VmSpec(name=vm.name,
                              mac=(_scalar(vm.mac, "") or "").lower(),
                              ip=_scalar(vm.ip, "") or "",
                              host=host_name if vm_host in my_hosts
                              else None))
        vms.sort(key=lambda v: v.name)
        vni = _scalar(getattr(ls, "vni", None), 0)
        slices[tag] = SliceConfig(
            tag=tag, middlebox=mb.name, type=mb_type,
            tenant=_scalar(getattr(ls, "tenant", None), "") or ls.name,
            switch=ls.name, vni=vni if isinstance(vni, int) else 0,
            default_action=default_action,
            options=dict(getattr(mb, "options", None) or {}),
            rules=tuple(rules), address_sets=address_sets, vms=tuple(vms))
    return HostConfig(host=host_name, slices=slices)


def held_names(tables):
    """{table: sorted names (uuid strings for Slice, Firewall_Rule)}."""
    out = {}
    for name in TABLES:
        rows = _by_uuid(tables.get(name)).values()
        column = _NAME_COLUMN.get(name)
        out[name] = sorted(str(getattr(row, column)) if column else
                           str(row.uuid) for row in rows)
    return out


# ------------------------------------------------------------- IDL side

def _raw(value, _base):
    return value


def plain_row(row, columns):
    """An IDL row as a plain row: reference columns as raw UUIDs."""
    data = row._data or {}        # python-ovs has no public raw accessor
    values = {"uuid": row.uuid}
    for column in columns:
        datum = data.get(column)
        values[column] = datum.to_python(_raw) if datum is not None else None
    return types.SimpleNamespace(**values)


class ConfigMonitor:
    """This host's view of the config DB; see the module docstring.

    Drive it from a poll loop: ``run()``, then ``wait(poller)`` and
    ``poller.block()``.  Not thread-safe: use it from one thread."""

    def __init__(self, remote, host_name, schema=SCHEMA_PATH,
                 probe_interval=None):
        self.host_name = host_name
        helper = ovsidl.SchemaHelper(location=schema)
        for table, columns in COLUMNS.items():
            helper.register_columns(table, list(columns))
        self._idl = ovsidl.Idl(remote, helper, probe_interval=probe_interval)
        self._conds = initial_conditions(host_name)
        for table, cond in self._conds.items():
            self._idl.cond_change(table, cond)
        self._seen_seqno = None
        self._built_key = None
        self._config = HostConfig(host=host_name, slices={})
        self._warned = set()
        self._last_error = None
        self.cond_changes = 0         # condition updates sent (for stats)

    # -- poll loop

    def run(self):
        """Process what the DB sent, update the conditions; never blocks.
        Returns True if ``config()`` changed."""
        try:
            result = self._run()
        except Exception as err:      # odd data must not kill the daemon
            if repr(err) != self._last_error:   # once, not every iteration
                self._last_error = repr(err)
                LOG.exception("config DB monitor: unexpected error, keeping "
                              "the last configuration")
            return False
        self._last_error = None
        return result

    def _run(self):
        self._idl.run()
        seqno = self._idl.change_seqno
        if seqno != self._seen_seqno:
            new = conditions(self.host_name, self._plain_tables())
            self._seen_seqno = seqno
            changed = False
            for table in TABLES:
                if new[table] != self._conds[table]:
                    self._idl.cond_change(table, new[table])
                    changed = True
            self._conds = new
            if changed:
                self.cond_changes += 1
                self._idl.send_cond_change()   # now, not at the next run()
        if not self.synced():
            return False
        key = (self._idl.change_seqno, self._idl.cond_seqno)
        if key == self._built_key:
            return False
        self._built_key = key
        config = self._build(self._plain_tables())
        if config == self._config:
            return False
        self._config = config
        return True

    def wait(self, poller):
        self._idl.wait(poller)

    def close(self):
        self._idl.close()

    # -- state

    def synced(self):
        """True when the condition chain has settled on the current replica:
        connected and monitoring, no condition change waiting or in flight
        (the last one acknowledged, so its rows have arrived), and the
        conditions computed from the replica are the ones acknowledged."""
        idl = self._idl
        if idl.state != idl.IDL_S_MONITORING or \
                not idl._session.is_connected() or idl.cond_changed:
            return False
        if idl.change_seqno != self._seen_seqno:
            return False                  # run() has not looked at it yet
        for table in TABLES:
            state = idl.tables[table].condition_state
            if state.new is not None or state.requested is not None:
                return False
        return True

    def config(self):
        """The HostConfig of the last settled replica (see module doc)."""
        return self._config

    def conditions(self):
        """The conditions currently asked for, per table."""
        return {table: list(cond) for table, cond in self._conds.items()}

    def held_rows(self):
        """Everything the local replica holds: {table: sorted names}
        (Slice and Firewall_Rule rows by uuid)."""
        return held_names(self._plain_tables())

    # -- helpers

    def _plain_tables(self):
        return {table: {u: plain_row(row, COLUMNS[table])
                        for u, row in self._idl.tables[table].rows.items()}
                for table in TABLES}

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
