"""The whole config database at one moment, as values (``MbxNb.snapshot()``)."""

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
    nb_cfg: int
    hv_cfg: int
    hosts: Dict[str, HostRecord]
    switches: Dict[str, SwitchInfo]
    vms: Dict[str, VMInfo]
    vm_locations: Dict[str, Tuple[Optional[str], int]]  # vm -> (host, epoch)
    middleboxes: Dict[str, MiddleboxInfo] = _field(dict)
    # middlebox name -> its rules in evaluation order (ovsdb.api.sort_rules)
    rules: Dict[str, Tuple[RuleInfo, ...]] = _field(dict)
    # sorted by (switch, -priority); chain (): bypass
    policies: Tuple[PolicyInfo, ...] = ()
    address_sets: Dict[str, AddressSetInfo] = _field(dict)
    # status: (chain, host name) -> slice tag, and -> the slice's status
    slices: Dict[Tuple[Chain, str], int] = _field(dict)
    slice_status: Dict[Tuple[Chain, str], Dict[str, str]] = _field(dict)
    # middlebox name -> its NAT rules / VIPs, sorted
    nat_rules: Dict[str, Tuple[NatRuleInfo, ...]] = _field(dict)
    vips: Dict[str, Tuple[VipInfo, ...]] = _field(dict)
    external_networks: Dict[str, ExternalNetInfo] = _field(dict)
    # status: middlebox name -> Middlebox.status
    middlebox_status: Dict[str, Dict[str, str]] = _field(dict)
    # sorted by (middlebox, service, key, host)
    shared_state: Tuple[SharedRecord, ...] = ()
    # sorted by (middlebox, first_seen, kind, source, target)
    ids_alerts: Tuple[AlertRecord, ...] = ()
    # sorted by (timeline["begun"], uuid): a VM's latest migration is last
    migrations: Tuple[MigrationRecord, ...] = ()
    # NB_Global.options
    global_options: Dict[str, str] = _field(dict)
    # status: the nb_cfg the logical controller has translated (NB_Global.northd_cfg)
    northd_cfg: int = 0
