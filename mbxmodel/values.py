"""The controller's view of the world, as plain immutable values.

Flow computation (``ryu_apps.flows``) is a pure function of a ``Topology``:
no I/O, no clocks, no os-ken.  The controller builds a ``Topology`` from two
sources and hands it over:

* the config database (hosts, logical switches, VMs), and
* each host's own OVSDB (which VM ports exist on which host, their OpenFlow
  port numbers, the host's tunnel port).
"""

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class HostInfo:
    name: str
    encap_ip: str                   # underlay tunnel endpoint, e.g. "10.200.0.11"
    encap_type: str = "vxlan"       # "vxlan" or "geneve"
    tunnel_ofport: Optional[int] = None   # OpenFlow port of the host's tunnel port, once known
    mb_ofport: Optional[int] = None       # OpenFlow port of the host's middlebox port, once known
    uplink_ofport: Optional[int] = None   # OpenFlow port of the host's uplink, once known
    uplink_mac: Optional[str] = None      # its MAC (Interface mac_in_use), lower-case


@dataclass(frozen=True)
class SwitchInfo:
    name: str
    tenant: str
    vni: int                        # tunnel key and in-pipeline logical switch key
    subnet: str                     # e.g. "10.0.0.0/24"
    gateway: str = ""               # default gateway address: Logical_Switch.gateway,
                                    # or the subnet's first address when unset


@dataclass(frozen=True)
class VMInfo:
    name: str
    switch: str                     # SwitchInfo.name
    mac: str                        # lower-case "02:00:00:00:00:01"
    ip: str                         # address only, e.g. "10.0.0.1"


# A host's own ports on br-int are found by these Interface external_ids
# key/value pairs: the middlebox port (mbxd's) and the uplink to the
# external network.
MIDDLEBOX_ROLE = ("mbx-role", "middlebox")
UPLINK_ROLE = ("mbx-role", "uplink")


@dataclass(frozen=True)
class HostPorts:
    """What a host's own OVSDB says about its br-int: the facts the host
    publishes about itself (its chassis record and its port bindings)."""
    datapath_id: Optional[int] = None
    tunnel_ofport: Optional[int] = None
    vm_ports: Dict[str, Tuple[int, str]] = field(default_factory=dict)  # iface-id -> (ofport, attached-mac)
    mb_ofport: Optional[int] = None     # the middlebox port (external_ids:mbx-role=middlebox)
    uplink_ofport: Optional[int] = None  # the uplink (external_ids:mbx-role=uplink)
    uplink_mac: Optional[str] = None    # its mac_in_use, lower-case


@dataclass(frozen=True)
class PortBinding:
    """A VM port that exists on a host's br-int (seen in that host's OVSDB)."""
    vm: str                         # VMInfo.name (the Interface's external_ids:iface-id)
    host: str                       # HostInfo.name
    ofport: int


@dataclass(frozen=True)
class Topology:
    hosts: Mapping[str, HostInfo] = field(default_factory=dict)
    switches: Mapping[str, SwitchInfo] = field(default_factory=dict)
    vms: Mapping[str, VMInfo] = field(default_factory=dict)
    bindings: Mapping[str, PortBinding] = field(default_factory=dict)  # by VM name
    middleboxes: Mapping[str, "MiddleboxInfo"] = field(default_factory=dict)
    policies: Tuple["PolicyInfo", ...] = ()
    address_sets: Mapping[str, "AddressSetInfo"] = field(default_factory=dict)
    # (chain, host) -> tag; a chain is a tuple of middlebox names in order
    slices: Mapping[Tuple[Tuple[str, ...], str], int] = field(default_factory=dict)
    nat_rules: Mapping[str, Tuple["NatRuleInfo", ...]] = field(default_factory=dict)  # by middlebox
    vips: Mapping[str, Tuple["VipInfo", ...]] = field(default_factory=dict)           # by middlebox
    external_networks: Mapping[str, "ExternalNetInfo"] = field(default_factory=dict)

    def local_vms(self, host):
        """(VMInfo, PortBinding) pairs of VMs bound to ``host`` whose config is known."""
        out = []
        for name, binding in self.derived(_bindings_by_host).get(host, ()):
            vm = self.vms.get(name)
            if vm is not None and vm.switch in self.switches:
                out.append((vm, binding))
        return out

    def bound_vms(self, switch):
        """Names of the bound VMs whose config puts them on ``switch``, sorted."""
        return self.derived(_bound_by_switch).get(switch, ())

    def host_slices(self, host):
        """{(chain, host): tag} of ``host``'s slices."""
        return self.derived(_slices_by_host).get(host, {})

    def derived(self, build):
        """``build(self)``, computed once per topology (a Topology is
        immutable): indexes that spare a scan of every VM or slice for each
        host."""
        cache = self.__dict__.setdefault("_derived", {})
        if build not in cache:
            cache[build] = build(self)
        return cache[build]


def _bindings_by_host(topo):
    out = {}
    for name, binding in sorted(topo.bindings.items()):
        out.setdefault(binding.host, []).append((name, binding))
    return out


def _bound_by_switch(topo):
    out = {}
    for name in sorted(topo.bindings):
        vm = topo.vms.get(name)
        if vm is not None:
            out.setdefault(vm.switch, []).append(name)
    return out


def _slices_by_host(topo):
    out = {}
    for (chain, host), tag in topo.slices.items():
        out.setdefault(host, {})[(chain, host)] = tag
    return out


@dataclass(frozen=True)
class MiddleboxInfo:
    name: str
    type: str                       # "firewall"
    switch: str                     # SwitchInfo.name of the logical switch it serves
    default_action: str = "deny"    # "allow" | "deny" | "reject"
    options: Mapping[str, str] = field(default_factory=dict)

    def option(self, key, default):
        return dict(self.options).get(key, default)


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
class AddressSetInfo:
    name: str
    tenant: str
    addresses: tuple = ()           # sorted CIDR / address strings


@dataclass(frozen=True)
class NatRuleInfo:
    uuid: str
    middlebox: str
    type: str                       # "snat" | "dnat"
    external_ips: Tuple[str, ...]   # sorted
    logical_ip: str                 # snat: source CIDR ("" = switch subnet); dnat: VM IP
    protocol: str = ""              # dnat: "tcp" | "udp" | "" (both)
    external_port: Optional[int] = None
    logical_port: Optional[int] = None
    port_range: Tuple[int, int] = (1024, 65535)


@dataclass(frozen=True)
class VipInfo:
    uuid: str
    middlebox: str
    vip: str
    port: int
    protocol: str                   # "tcp" | "udp"
    algorithm: str
    backends: Tuple[Tuple[str, int], ...] = ()   # sorted (ip, port)
    options: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, str] = field(default_factory=dict)   # "ip:port" -> up|down


@dataclass(frozen=True)
class ExternalNetInfo:
    name: str
    cidr: str
    gateway_ip: str
    gateway_mac: str                # lower-case
