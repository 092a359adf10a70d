"""Rows the system writes about itself, all in the southbound database:
hosts (chassis) and their status, shared service state, IDS alerts,
migrations (docs/migration.md)."""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# Migration.status values: while the migration runs, and once it ended
ACTIVE_MIGRATION = ("begun", "streaming", "stunned", "imported")
FINAL_MIGRATION = ("done", "aborted", "fallback")

# Shared_State services the controllers read: the load balancers' backend
# health, and the VMs whose connection state a host's daemon still holds.
LB_HEALTH = "lb-health"
VM_STATE = "vm-state"


@dataclass(frozen=True)
class HostRecord:
    """A host: its southbound Chassis row (what mbx-chassis publishes) and
    its Chassis_Private row (what its physical controller reports)."""
    name: str
    encap_type: str
    encap_ip: str
    nb_cfg: int = 0                 # Chassis_Private: config generation applied
    connected: bool = False         # Chassis_Private: a controller has its switch
    datapath_id: Optional[str] = None   # Chassis: e.g. "0000aabbccddeeff"
    migration_address: str = ""     # Chassis: where its mbxd accepts state
    mb_cfg: Optional[int] = None    # Chassis_Private: config generation its mbxd applied


@dataclass(frozen=True)
class SharedRecord:
    """A Shared_State row: one value a host publishes for a service of a
    middlebox (docs/services.md, state sharing manager)."""
    middlebox: str
    host: str
    service: str
    key: str
    value: str
    stamp: int


@dataclass(frozen=True)
class AlertRecord:
    """An IDS_Alert row."""
    middlebox: str
    kind: str                       # "port-scan" | "syn-flood"
    source: str
    target: str
    count: int
    hosts: Tuple[str, ...]          # sorted
    first_seen: int
    last_seen: int
    reported_by: str


@dataclass(frozen=True)
class MigrationRecord:
    """A Migration row: one migration of a VM's connection state."""
    uuid: str
    vm: str
    source: str                     # host names
    destination: str
    path: str                       # "announced" | "unannounced"
    status: str                     # ACTIVE_MIGRATION or FINAL_MIGRATION
    token: str
    timeline: Dict[str, int]        # phase -> unix time in ms
    stats: Dict[str, int]
    outcome: str                    # "" while active
    options: Dict[str, str]         # "wait-ms"

    @property
    def active(self):
        return self.status in ACTIVE_MIGRATION
