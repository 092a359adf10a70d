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
        ids_alerts=tuple(sorted(
            (AlertRecord(r.middlebox, r.kind, r.source, r.target, r.count,
                         tuple(sorted(r.hosts)), r.first_seen, r.last_seen,
                         r.reported_by)
             for r in rows("IDS_Alert")),
            key=lambda a: (a.middlebox, a.first_seen, a.kind, a.source,
                           a.target, a.last_seen))),
        migrations=tuple(sorted((migration_record(r) for r in rows("Migration")),
                                key=migration_key)))
