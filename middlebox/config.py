"""What mbxd knows of the databases: its slices, each with its chain.

``middlebox.confmon`` builds a ``HostConfig`` from the rows the daemon's
conditional monitor holds (the slices and VM locations from the southbound
database, the middleboxes they name from the northbound one); the service
(``middlebox.service``) and the dataplane compiler (``middlebox.dataplane``)
consume it.  Only slices allocated to this host appear here, and with them
only their own middlebox, rules, address sets, logical switch and that
switch's VMs.

The rows themselves are mbxmodel's values (``RuleInfo``, ``NatRuleInfo``,
``VipInfo``, ``ExternalNetInfo``, built by ``mbxmodel.rows``); the types here
are the daemon's aggregates of them, per slice.
"""

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

from mbxmodel.network import ExternalNetInfo
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo


@dataclass(frozen=True)
class VmSpec:
    """A VM of a slice's logical switch as this host sees it: its address,
    and whether it is bound here."""
    name: str
    mac: str                        # lower-case
    ip: str
    host: Optional[str] = None      # this host's name when the VM's VM_Location
                                    # names this host, else None (no location
                                    # yet, or elsewhere)


@dataclass(frozen=True)
class ServiceSpec:
    """One middlebox of a slice's chain."""
    name: str                       # Middlebox.name
    type: str                       # "firewall" | "nat" | "lb" | "ids"
    default_action: str = "deny"
    options: Mapping[str, str] = field(default_factory=dict)
    rules: Tuple[RuleInfo, ...] = ()                       # firewall
    address_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    nat_rules: Tuple[NatRuleInfo, ...] = ()                # nat
    vips: Tuple[VipInfo, ...] = ()                         # lb


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
    rules: Tuple[RuleInfo, ...] = ()
    address_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    vms: Tuple[VmSpec, ...] = ()    # every VM of the switch
    services: Tuple[ServiceSpec, ...] = ()
    subnet: str = ""                # the switch's subnet (CIDR)
    gateway: str = ""               # the switch's gateway address
    snat_blocks: Mapping[str, Tuple[str, int, int]] = field(default_factory=dict)
    #                                 NAT_Rule uuid -> (external ip, lo, hi) of this host
    external: Tuple[ExternalNetInfo, ...] = ()
    skipped: Tuple[str, ...] = ()   # one line per row of the slice not used
    #                                 (a rule, VIP, NAT rule, VM, address set
    #                                 member): ``rules/show`` lists them


@dataclass(frozen=True)
class HostConfig:
    host: str
    slices: Mapping[int, SliceConfig] = field(default_factory=dict)   # by tag
