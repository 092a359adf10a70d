"""What mbxd knows of the config DB: plain immutable values.

``middlebox.confmon`` builds a ``HostConfig`` from the rows the daemon's
conditional monitor holds; the core (``middlebox.core``) consumes it.  Only
slices allocated to this host appear here, and with them only their own
middlebox, rules, address sets, logical switch and that switch's VMs.
"""

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple


@dataclass(frozen=True)
class RuleSpec:
    priority: int                   # 0..32767, higher first
    direction: str                  # "from-vm" | "to-vm"
    match: str                      # ovsdb.match text
    action: str                     # "allow" | "deny" | "reject"
    tier: str = "tenant"            # "provider" | "tenant"
    uuid: str = ""                  # Firewall_Rule row uuid (identifies the rule in stats)


@dataclass(frozen=True)
class VmSpec:
    name: str
    mac: str                        # lower-case
    ip: str
    host: Optional[str] = None      # Host name from VM.host (None: unbound)


@dataclass(frozen=True)
class SliceConfig:
    tag: int                        # external slice tag (802.1Q VID), 1..4094
    middlebox: str                  # Middlebox.name
    type: str                       # "firewall"
    tenant: str
    switch: str                     # Logical_Switch.name
    vni: int
    default_action: str = "deny"
    options: Mapping[str, str] = field(default_factory=dict)
    rules: Tuple[RuleSpec, ...] = ()
    address_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    vms: Tuple[VmSpec, ...] = ()    # every VM of the switch


@dataclass(frozen=True)
class HostConfig:
    host: str
    slices: Mapping[int, SliceConfig] = field(default_factory=dict)   # by tag
