"""What mbxd knows of the config DB: plain immutable values.

``middlebox.confmon`` builds a ``HostConfig`` from the rows the daemon's
conditional monitor holds; the service (``middlebox.service``) and the dataplane
compiler (``middlebox.dataplane``) consume it.  Only
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
class NatRuleSpec:
    uuid: str                       # NAT_Rule row uuid
    type: str                       # "snat" | "dnat"
    external_ips: Tuple[str, ...]   # sorted; dnat: exactly one
    logical_ip: str                 # snat: source CIDR ("" = the switch's subnet); dnat: VM IP
    protocol: str = ""              # dnat: "tcp" | "udp" | "" (both)
    external_port: Optional[int] = None   # dnat: None = every port (port kept)
    logical_port: Optional[int] = None    # dnat: None = external_port (or kept)
    port_range: Tuple[int, int] = (1024, 65535)   # snat


@dataclass(frozen=True)
class VipSpec:
    uuid: str                       # LB_VIP row uuid
    vip: str
    port: int
    protocol: str                   # "tcp" | "udp"
    algorithm: str                  # "round-robin" | "least-connections" | "source-hash"
    backends: Tuple[Tuple[str, int], ...] = ()     # (ip, port), sorted
    options: Mapping[str, str] = field(default_factory=dict)   # health-*


@dataclass(frozen=True)
class ServiceSpec:
    """One middlebox of a slice's chain."""
    name: str                       # Middlebox.name
    type: str                       # "firewall" | "nat" | "lb" | "ids"
    default_action: str = "deny"
    options: Mapping[str, str] = field(default_factory=dict)
    rules: Tuple[RuleSpec, ...] = ()                       # firewall
    address_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    nat_rules: Tuple[NatRuleSpec, ...] = ()                # nat
    vips: Tuple[VipSpec, ...] = ()                         # lb


@dataclass(frozen=True)
class ExternalNetSpec:
    name: str
    cidr: str
    gateway_ip: str
    gateway_mac: str


@dataclass(frozen=True)
class SliceConfig:
    """One chain on this host.

    ``services`` is the chain in order.  The firewall fields (``middlebox``
    .. ``address_sets``) describe the chain's first firewall, or an empty
    allow-all firewall when the chain has none; ``middlebox`` is then the
    chain's names joined with ","; ``options`` are the options of every
    service of the chain, the first occurrence of a key winning.
    """
    tag: int                        # external slice tag (802.1Q VID), 1..4094
    middlebox: str                  # the chain's firewall name, or the names joined with ","
    type: str                       # "firewall" when the chain has one, else "chain"
    tenant: str
    switch: str                     # Logical_Switch.name
    vni: int
    default_action: str = "deny"
    options: Mapping[str, str] = field(default_factory=dict)
    rules: Tuple[RuleSpec, ...] = ()
    address_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    vms: Tuple[VmSpec, ...] = ()    # every VM of the switch
    services: Tuple[ServiceSpec, ...] = ()
    subnet: str = ""                # the switch's subnet (CIDR)
    gateway: str = ""               # the switch's gateway address
    snat_blocks: Mapping[str, Tuple[str, int, int]] = field(default_factory=dict)
    #                                 NAT_Rule uuid -> (external ip, lo, hi) of this host
    external: Tuple[ExternalNetSpec, ...] = ()


@dataclass(frozen=True)
class HostConfig:
    host: str
    slices: Mapping[int, SliceConfig] = field(default_factory=dict)   # by tag
