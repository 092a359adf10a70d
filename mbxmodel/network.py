"""Hosts, logical switches, VMs and where they are bound.

``HostInfo``, ``SwitchInfo``, ``VMInfo`` and ``ExternalNetInfo`` are the
config database's rows; ``HostPorts`` is what a host's own OVSDB says about
its br-int, and ``PortBinding`` one VM port found there.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class HostInfo:
    """A host as the controller computes its flows: its Chassis row and the
    ports its own OVSDB reported (``HostPorts``)."""
    name: str
    encap_ip: str                   # underlay tunnel endpoint, e.g. "10.200.0.11"
    encap_type: str = "vxlan"       # "vxlan" or "geneve"
    tunnel_ofport: Optional[int] = None   # OpenFlow port of the host's tunnel port, once known
    mb_ofport: Optional[int] = None       # OpenFlow port of the host's middlebox port, once known
    uplink_ofport: Optional[int] = None   # OpenFlow port of the host's uplink, once known
    uplink_mac: Optional[str] = None      # its MAC (Interface mac_in_use), lower-case


@dataclass(frozen=True)
class SwitchInfo:
    """A Logical_Switch row."""
    name: str
    tenant: str
    vni: int                        # tunnel key and in-pipeline logical switch key
    subnet: str                     # e.g. "10.0.0.0/24"
    gateway: str = ""               # default gateway address: Logical_Switch.gateway,
                                    # or the subnet's first address when unset


@dataclass(frozen=True)
class VMInfo:
    """A VM row (its location, VM.host, is status kept apart)."""
    name: str
    switch: str                     # SwitchInfo.name
    mac: str                        # lower-case "02:00:00:00:00:01"
    ip: str                         # address only, e.g. "10.0.0.1"


@dataclass(frozen=True)
class ExternalNetInfo:
    """An External_Network row."""
    name: str
    cidr: str
    gateway_ip: str
    gateway_mac: str                # lower-case


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
class ChassisStatus:
    """What the physical controller serving a host says of it (southbound
    Chassis_Private): its switch is connected, and the config generation
    (northbound ``nb_cfg``) and runtime generation (southbound ``sb_cfg``)
    whose flows the switch has acknowledged; and, written by the host's
    mbxd, the config generation whose service stages it has applied
    (``mb_cfg``, None while its mbxd has never reported)."""
    name: str
    controller: str = ""
    connected: bool = False
    nb_cfg: int = 0
    sb_cfg: int = 0
    mb_cfg: Optional[int] = None


@dataclass(frozen=True)
class PortBinding:
    """A VM port that exists on a host's br-int (seen in that host's OVSDB)."""
    vm: str                         # VMInfo.name (the Interface's external_ids:iface-id)
    host: str                       # HostInfo.name
    ofport: int
