"""Middleboxes and what they are configured with: firewall rules, address
sets, steering policies, NAT rules and load-balanced VIPs (the config
database's rows, docs in ovsdb/mbx_nb.md)."""

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

# The schema's closed sets of values
MIDDLEBOX_TYPES = ("firewall", "nat", "lb", "ids")
ACTIONS = ("allow", "deny", "reject")
DIRECTIONS = ("from-vm", "to-vm")
TIERS = ("provider", "tenant")
NAT_TYPES = ("snat", "dnat")
L4_PROTOCOLS = ("tcp", "udp")
LB_ALGORITHMS = ("hash", "round-robin", "least-connections", "source-hash")
DEFAULT_PORT_RANGE = (1024, 65535)


@dataclass(frozen=True)
class MiddleboxInfo:
    """A Middlebox row (its rules, NAT rules and VIPs are values of their
    own, kept by middlebox name)."""
    name: str
    type: str                       # "firewall" | "nat" | "lb" | "ids"
    switch: str                     # SwitchInfo.name of the logical switch it serves
    default_action: str = "deny"    # "allow" | "deny" | "reject"
    options: Mapping[str, str] = field(default_factory=dict)

    def option(self, key, default):
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class RuleInfo:
    """A Firewall_Rule row (``bare()`` compares two rules by their values)."""
    priority: int                   # 0..32767, higher first
    direction: str                  # "from-vm" | "to-vm"
    match: str                      # canonical ovsdb.match text
    action: str                     # "allow" | "deny" | "reject"
    tier: str = "tenant"            # "provider" | "tenant"
    uuid: str = ""                  # Firewall_Rule row uuid (identifies the rule in stats)


@dataclass(frozen=True)
class AddressSetInfo:
    """An Address_Set row."""
    name: str
    tenant: str
    addresses: tuple = ()           # sorted CIDR / address strings


@dataclass(frozen=True)
class PolicyInfo:
    """A steering policy: traffic of ``switch`` matching ``match`` (ovsdb.match
    text, applied to both directions of a connection) goes through the
    middleboxes of ``chain`` in order; an empty chain means "bypass" (forward
    unchecked)."""
    switch: str
    priority: int                   # 0..30000, highest first
    match: str
    chain: Tuple[str, ...] = ()


@dataclass(frozen=True)
class NatRuleInfo:
    """A NAT_Rule row of middlebox ``middlebox``."""
    uuid: str
    middlebox: str
    type: str                       # "snat" | "dnat"
    external_ips: Tuple[str, ...]   # sorted; dnat: exactly one
    logical_ip: str                 # snat: source CIDR ("" = switch subnet); dnat: VM IP
    protocol: str = ""              # dnat: "tcp" | "udp" | "" (both)
    external_port: Optional[int] = None   # dnat: None = every port (port kept)
    logical_port: Optional[int] = None    # dnat: None = external_port (or kept)
    port_range: Tuple[int, int] = (1024, 65535)   # snat


@dataclass(frozen=True)
class VipInfo:
    """An LB_VIP row of middlebox ``middlebox``."""
    uuid: str
    middlebox: str
    vip: str
    port: int
    protocol: str                   # "tcp" | "udp"
    algorithm: str                  # "hash" | "round-robin" | "least-connections" | "source-hash"
    backends: Tuple[Tuple[str, int], ...] = ()   # sorted (ip, port)
    options: Mapping[str, str] = field(default_factory=dict)  # health-*
    status: Mapping[str, str] = field(default_factory=dict)   # "ip:port" -> up|down


def bare(value):
    """A RuleInfo, NatRuleInfo or VipInfo without its identity (and a VIP
    without its status): what a user wrote, for comparing values."""
    changes = {"uuid": ""}
    if isinstance(value, VipInfo):
        changes["status"] = {}
    return dataclasses.replace(value, **changes)
