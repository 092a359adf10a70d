"""The databases at one moment, as values: the northbound database's intent
(``MbxNb.snapshot()``) and the southbound database's runtime rows
(``MbxSb.snapshot()``, ``ovsdb.southbound``)."""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, NatRuleInfo,
                               PolicyInfo, RuleInfo, VipInfo)
from mbxmodel.state import (AlertRecord, HostRecord, MigrationRecord,
                            SharedRecord)

Chain = Tuple[str, ...]             # middlebox names in order


def _field(factory):
    return field(default_factory=factory)


@dataclass(frozen=True)
class NbSnapshot:
    """MBX_Northbound: intent, and the status mirrors mbx-northd writes for
    operators (counters, LB_VIP.status, Middlebox.status, VM.host)."""
    nb_cfg: int
    hv_cfg: int
    switches: Dict[str, SwitchInfo]
    vms: Dict[str, VMInfo]
    middleboxes: Dict[str, MiddleboxInfo] = _field(dict)
    # middlebox name -> its rules in evaluation order (ovsdb.api.sort_rules)
    rules: Dict[str, Tuple[RuleInfo, ...]] = _field(dict)
    # sorted by (switch, -priority); chain (): bypass
    policies: Tuple[PolicyInfo, ...] = ()
    address_sets: Dict[str, AddressSetInfo] = _field(dict)
    # middlebox name -> its NAT rules / VIPs, sorted
    nat_rules: Dict[str, Tuple[NatRuleInfo, ...]] = _field(dict)
    vips: Dict[str, Tuple[VipInfo, ...]] = _field(dict)
    external_networks: Dict[str, ExternalNetInfo] = _field(dict)
    # status: middlebox name -> Middlebox.status
    middlebox_status: Dict[str, Dict[str, str]] = _field(dict)
    # NB_Global.options
    global_options: Dict[str, str] = _field(dict)
    # status: the nb_cfg the logical controller has translated (NB_Global.northd_cfg)
    northd_cfg: int = 0
    # status mirror of VM_Location for operators: vm -> (host, epoch)
    vm_mirror: Dict[str, Tuple[Optional[str], int]] = _field(dict)
    # rows not in force -> why: their tenant columns disagree
    # (mbxmodel.tenancy) or no reader can use them (ovsdb.validate.unusable);
    # ("switch", name) | ("vm", name) | ("middlebox", name) | ("rule", uuid)
    # | ("policy", switch, priority) | ("vip", uuid)
    ignored: Dict[tuple, str] = _field(dict)
    # status: the one-line status mbx-northd wrote into a row of those kinds
    # (Logical_Switch, VM, Firewall_Rule, Steering_Policy), by the same key
    row_status: Dict[tuple, str] = _field(dict)


@dataclass(frozen=True)
class SbSnapshot:
    """MBX_Southbound's runtime rows: what the hosts publish, what the
    logical controller decides, what the daemons and controllers record."""
    # SB_Global.sb_cfg
    sb_cfg: int = 0
    # Chassis + Chassis_Private, by chassis name
    hosts: Dict[str, HostRecord] = _field(dict)
    # VM_Location: vm -> (chassis name or None, epoch)
    vm_locations: Dict[str, Tuple[Optional[str], int]] = _field(dict)
    # Slice: (chain, chassis name) -> tag, and -> the slice's status
    slices: Dict[Tuple[Chain, str], int] = _field(dict)
    slice_status: Dict[Tuple[Chain, str], Dict[str, str]] = _field(dict)
    # sorted by (middlebox, service, key, host)
    shared_state: Tuple[SharedRecord, ...] = ()
    # sorted by (middlebox, first_seen, kind, source, target)
    ids_alerts: Tuple[AlertRecord, ...] = ()
    # sorted by (timeline["begun"], uuid): a VM's latest migration is last
    migrations: Tuple[MigrationRecord, ...] = ()


def _one(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def slice_key(row):
    """(chain, chassis) of a Slice row, or None when it is broken (an
    empty chain, a missing position, no chassis)."""
    chain = dict(row.chain)
    if not chain or sorted(chain) != list(range(len(chain))) or not row.chassis:
        return None
    return (tuple(chain[i] for i in range(len(chain))), row.chassis)


def migration_record(row):
    return MigrationRecord(
        str(row.uuid), row.vm, row.source, row.destination, row.path,
        row.status, row.token, dict(sorted(row.timeline.items())),
        dict(sorted(row.stats.items())), row.outcome,
        dict(sorted(row.options.items())))


def migration_key(m):
    """Oldest first: by the time it began, then uuid."""
    return (m.timeline.get("begun", 0), str(m.uuid))


def sb_snapshot(tables):
    """The SbSnapshot of southbound rows: ``tables`` maps a table name to
    its rows (python-ovs rows, as an IDL or ovsdbapp holds them); a table
    missing from it (not monitored) is read as empty."""
    def rows(name):
        return list(tables.get(name, ()))
    private = {r.name: r for r in rows("Chassis_Private")}
    hosts = {}
    for r in rows("Chassis"):
        p = private.get(r.name)
        hosts[r.name] = HostRecord(
            name=r.name, encap_type=_one(getattr(r, "encap_type", ""), ""),
            encap_ip=getattr(r, "encap_ip", ""),
            nb_cfg=p.nb_cfg if p is not None else 0,
            connected=bool(p.connected) if p is not None else False,
            mb_cfg=_one(getattr(p, "mb_cfg", None)) if p is not None else None,
            datapath_id=_one(getattr(r, "datapath_id", None)),
            migration_address=getattr(r, "migration_address", ""))
    locations = {r.vm: (_one(r.chassis), r.epoch) for r in rows("VM_Location")}
    slices, slice_status = {}, {}
    for r in sorted(rows("Slice"), key=lambda r: r.uuid):
        key = slice_key(r)
        if key is not None and key not in slices:
            slices[key] = r.tag
            slice_status[key] = dict(sorted(r.status.items()))
    global_rows = rows("SB_Global")
    return SbSnapshot(
        sb_cfg=global_rows[0].sb_cfg if global_rows else 0,
        hosts=hosts, vm_locations=locations, slices=slices,
        slice_status=slice_status,
        shared_state=tuple(sorted(
            (SharedRecord(r.middlebox, r.host, r.service, r.key, r.value, r.stamp)
             for r in rows("Shared_State")),
            key=lambda r: (r.middlebox, r.service, r.key, r.host))),
        ids_alerts=alert_records(rows("IDS_Alert")),
        migrations=tuple(sorted((migration_record(r) for r in rows("Migration")),
                                key=migration_key)))


# ------------------------------------------------------- runtime, by change

_GONE = None


@dataclass(frozen=True)
class SbDelta:
    """What changed in the southbound runtime rows: the keys of the
    ``SbSnapshot`` mappings that changed, with their new value (None: gone);
    a small table (shared state, IDS alerts, migrations) whole when it
    changed, None when it did not."""
    sb_cfg: Optional[int] = None
    hosts: Dict[str, Optional[HostRecord]] = _field(dict)
    vm_locations: Dict[str, Optional[Tuple[Optional[str], int]]] = _field(dict)
    # (chain, chassis) -> (tag, status), or None: the slice is gone
    slices: Dict[Tuple[Chain, str], Optional[Tuple[int, Dict[str, str]]]] = _field(dict)
    shared_state: Optional[Tuple[SharedRecord, ...]] = None
    ids_alerts: Optional[Tuple[AlertRecord, ...]] = None
    migrations: Optional[Tuple[MigrationRecord, ...]] = None

    @property
    def empty(self):
        return (self.sb_cfg is None and not self.hosts and not self.vm_locations
                and not self.slices and self.shared_state is None
                and self.ids_alerts is None and self.migrations is None)


def host_names(known, change):
    """The names of the hosts after ``change`` (an ``SbSnapshot``: all of
    them; an ``SbDelta``: those that changed), ``known`` the names before
    it (None: none yet)."""
    if not isinstance(change, SbDelta):
        return frozenset(change.hosts)
    names = set(known or ())
    for name, rec in change.hosts.items():
        if rec is None:
            names.discard(name)
        else:
            names.add(name)
    return frozenset(names)


class SbRuntime:
    """The southbound runtime rows kept change by change: the attributes of
    an ``SbSnapshot`` (a consumer reads it as one), updated in place by
    ``apply`` (an ``SbDelta``).  ``of`` copies a snapshot into one."""

    def __init__(self):
        self.sb_cfg = 0
        self.hosts: Dict[str, HostRecord] = {}
        self.vm_locations: Dict[str, Tuple[Optional[str], int]] = {}
        self.slices: Dict[Tuple[Chain, str], int] = {}
        self.slice_status: Dict[Tuple[Chain, str], Dict[str, str]] = {}
        self.shared_state: Tuple[SharedRecord, ...] = ()
        self.ids_alerts: Tuple[AlertRecord, ...] = ()
        self.migrations: Tuple[MigrationRecord, ...] = ()

    @classmethod
    def of(cls, snap):
        out = cls()
        out.sb_cfg = snap.sb_cfg
        out.hosts = dict(snap.hosts)
        out.vm_locations = dict(snap.vm_locations)
        out.slices = dict(snap.slices)
        out.slice_status = dict(snap.slice_status)
        out.shared_state = tuple(snap.shared_state)
        out.ids_alerts = tuple(snap.ids_alerts)
        out.migrations = tuple(snap.migrations)
        return out

    def apply(self, delta: SbDelta):
        if delta.sb_cfg is not None:
            self.sb_cfg = delta.sb_cfg
        for mapping, changes in ((self.hosts, delta.hosts),
                                 (self.vm_locations, delta.vm_locations)):
            for key, value in changes.items():
                if value is _GONE:
                    mapping.pop(key, None)
                else:
                    mapping[key] = value
        for key, value in delta.slices.items():
            if value is _GONE:
                self.slices.pop(key, None)
                self.slice_status.pop(key, None)
            else:
                self.slices[key], self.slice_status[key] = value
        for name in ("shared_state", "ids_alerts", "migrations"):
            if getattr(delta, name) is not None:
                setattr(self, name, getattr(delta, name))
        return self

    def snapshot(self):
        """An SbSnapshot of the rows now (a copy: a pass over every row)."""
        return SbSnapshot(sb_cfg=self.sb_cfg, hosts=dict(self.hosts),
                          vm_locations=dict(self.vm_locations), slices=dict(self.slices),
                          slice_status=dict(self.slice_status),
                          shared_state=self.shared_state, ids_alerts=self.ids_alerts,
                          migrations=self.migrations)


def host_record(chassis, private):
    """A host's HostRecord from its Chassis row and Chassis_Private row (or None)."""
    r, p = chassis, private
    return HostRecord(
        name=r.name, encap_type=_one(getattr(r, "encap_type", ""), ""),
        encap_ip=getattr(r, "encap_ip", ""),
        nb_cfg=p.nb_cfg if p is not None else 0,
        connected=bool(p.connected) if p is not None else False,
        datapath_id=_one(getattr(r, "datapath_id", None)),
        migration_address=getattr(r, "migration_address", ""))


def shared_records(rows):
    return tuple(sorted(
        (SharedRecord(r.middlebox, r.host, r.service, r.key, r.value, r.stamp) for r in rows),
        key=lambda r: (r.middlebox, r.service, r.key, r.host)))


def alert_records(rows):
    """IDS_Alert rows -> one AlertRecord per alert (middlebox, kind, source,
    target): each host writes its own row of an alert (the RBAC role
    mbx-chassis lets it write only rows it reported, ovsdb/rbac.py), so
    the rows of several hosts are merged: the highest count, every host
    whose sensors saw it, the first first_seen and the last last_seen,
    reported_by every reporting host ("h1,h2")."""
    merged = {}
    for r in rows:
        key = (r.middlebox, r.kind, r.source, r.target)
        a = AlertRecord(r.middlebox, r.kind, r.source, r.target, r.count,
                        tuple(sorted(r.hosts)), r.first_seen, r.last_seen, r.reported_by)
        b = merged.get(key)
        if b is not None:
            a = AlertRecord(*key, max(a.count, b.count),
                            tuple(sorted(set(a.hosts) | set(b.hosts))),
                            min(a.first_seen, b.first_seen), max(a.last_seen, b.last_seen),
                            ",".join(sorted(set(a.reported_by.split(",")) |
                                            set(b.reported_by.split(",")))))
        merged[key] = a
    return tuple(sorted(
        merged.values(),
        key=lambda a: (a.middlebox, a.first_seen, a.kind, a.source, a.target, a.last_seen)))


class RuntimeRows:
    """Turns the southbound rows that changed into ``SbDelta`` values, as
    ``sb_snapshot`` turns every row into an SbSnapshot (the same
    conversion; ``sb_snapshot`` of the rows after a sequence of changes
    equals the first one with every delta applied, ``SbRuntime``).  Keeps
    what a changed or deleted row needs: which key each row gave."""

    def __init__(self):
        self._chassis = {}          # uuid -> name
        self._private = {}          # uuid -> row (Chassis_Private)
        self._locations = {}        # uuid -> vm
        self._slices = {}           # uuid -> ((chain, chassis), tag, status)
        self._slice_uuids = {}      # (chain, chassis) -> {uuid}
        self._small = {"Shared_State": {}, "IDS_Alert": {}, "Migration": {}}

    def slice_rows(self, key):
        """The uuids of the Slice rows of ``key`` ((chain, chassis))."""
        return set(self._slice_uuids.get(key, ()))

    def chassis_names(self):
        return set(self._chassis.values())

    def delta(self, changed, tables):
        """``changed``: {table name: {uuid: row, or None if deleted}};
        ``tables``: {table name: its current rows by uuid} (an IDL's
        ``tables[name].rows``).  Returns the SbDelta.  A host's record is
        made again when its Chassis row changed (its Chassis_Private row
        read then)."""
        hosts, locations, slices = {}, {}, {}
        small = {}
        for uuid, row in changed.get("Chassis_Private", {}).items():
            self._private.pop(uuid, None)
            if row is not None:
                self._private[uuid] = row
        names = set()
        for uuid, row in changed.get("Chassis", {}).items():
            old = self._chassis.pop(uuid, None)
            if old is not None:
                names.add(old)
            if row is not None:
                self._chassis[uuid] = row.name
                names.add(row.name)
        if names:
            chassis_rows = tables.get("Chassis", {})
            by_name = {}
            for uuid in (u for u, n in self._chassis.items() if n in names):
                row = chassis_rows.get(uuid)
                if row is not None:
                    by_name.setdefault(row.name, row)
            private = {r.name: r for r in self._private.values() if r.name in names}
            for name in names:
                row = by_name.get(name)
                hosts[name] = None if row is None else host_record(row, private.get(name))
        rows = changed.get("VM_Location", {})
        for uuid in rows:       # deletions first: a row may replace another
            vm = self._locations.pop(uuid, None)
            if vm is not None:
                locations[vm] = None
        for uuid, row in rows.items():
            if row is not None:
                self._locations[uuid] = row.vm
                locations[row.vm] = (_one(row.chassis), row.epoch)
        keys = set()
        for uuid, row in changed.get("Slice", {}).items():
            old = self._slices.pop(uuid, None)
            if old is not None:
                keys.add(old[0])
                self._slice_uuids[old[0]].discard(uuid)
            if row is None:
                continue
            key = slice_key(row)
            if key is None:
                continue
            self._slices[uuid] = (key, row.tag, dict(sorted(row.status.items())))
            self._slice_uuids.setdefault(key, set()).add(uuid)
            keys.add(key)
        for key in keys:
            uuids = self._slice_uuids.get(key)
            if not uuids:
                self._slice_uuids.pop(key, None)
                slices[key] = None
            else:           # the first by uuid, as sb_snapshot
                _key, tag, status = self._slices[min(uuids)]
                slices[key] = (tag, status)
        for table in self._small:
            rows = changed.get(table)
            if not rows:
                continue
            mine = self._small[table]
            for uuid, row in rows.items():
                if row is None:
                    mine.pop(uuid, None)
                else:
                    mine[uuid] = row
            small[table] = list(mine.values())
        sb_cfg = None
        if "SB_Global" in changed:
            rows = list(tables.get("SB_Global", {}).values())
            sb_cfg = rows[0].sb_cfg if rows else 0
        return SbDelta(
            sb_cfg=sb_cfg, hosts=hosts, vm_locations=locations, slices=slices,
            shared_state=shared_records(small["Shared_State"])
            if "Shared_State" in small else None,
            ids_alerts=alert_records(small["IDS_Alert"]) if "IDS_Alert" in small else None,
            migrations=tuple(sorted((migration_record(r) for r in small["Migration"]),
                                    key=migration_key))
            if "Migration" in small else None)

    def resync(self, tables):
        """The SbDelta from what this has seen to ``tables`` (every current
        row, by table name and uuid), as after a reconnection, whose
        replica arrives without the deletions it missed."""
        known_hosts = set(self._chassis.values())
        known_vms = set(self._locations.values())
        known_slices = set(self._slice_uuids)
        known_small = {t for t, rows in self._small.items() if rows}
        self.__init__()
        changed = {name: dict(rows) for name, rows in tables.items()}
        delta = self.delta(changed, tables)
        gone = dict.fromkeys
        small = {t: () for t in known_small if t not in changed or not changed[t]}
        return SbDelta(
            sb_cfg=delta.sb_cfg,
            hosts={**gone(known_hosts), **delta.hosts},
            vm_locations={**gone(known_vms), **delta.vm_locations},
            slices={**gone(known_slices), **delta.slices},
            shared_state=delta.shared_state if delta.shared_state is not None
            else small.get("Shared_State"),
            ids_alerts=delta.ids_alerts if delta.ids_alerts is not None
            else small.get("IDS_Alert"),
            migrations=delta.migrations if delta.migrations is not None
            else small.get("Migration"))


def sb_delta(old, new):
    """The SbDelta from SbSnapshot ``old`` to ``new`` (a pass over both:
    for tests and tools that hold whole snapshots)."""
    def changed(a, b):
        return {k: b.get(k) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    slices = {}
    for key in old.slices.keys() | new.slices.keys():
        before = (old.slices[key], dict(old.slice_status.get(key) or {})) \
            if key in old.slices else None
        after = (new.slices[key], dict(new.slice_status.get(key) or {})) \
            if key in new.slices else None
        if before != after:
            slices[key] = after
    return SbDelta(
        sb_cfg=new.sb_cfg if new.sb_cfg != old.sb_cfg else None,
        hosts=changed(old.hosts, new.hosts),
        vm_locations=changed(old.vm_locations, new.vm_locations), slices=slices,
        shared_state=new.shared_state if new.shared_state != old.shared_state else None,
        ids_alerts=new.ids_alerts if new.ids_alerts != old.ids_alerts else None,
        migrations=new.migrations if new.migrations != old.migrations else None)
