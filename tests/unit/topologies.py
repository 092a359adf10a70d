"""Example topologies shared by the unit tests."""

from ryu_apps.model import HostInfo, PortBinding, SwitchInfo, Topology, VMInfo

VNI_A = 1001
VNI_B = 1002
TUNNEL = {"h1": 100, "h2": 200, "h3": 300}
ENCAP = {"h1": "10.200.0.11", "h2": "10.200.0.12", "h3": "10.200.0.13"}
SHARED_MAC = "02:00:00:00:00:01"     # used by a1 (tenant A) and b1 (tenant B)
BROADCAST = "ff:ff:ff:ff:ff:ff"

# name: (switch, mac, ip, host, ofport)
VMS = {
    "a1": ("ls-a", SHARED_MAC, "10.0.0.1", "h1", 1),
    "a3": ("ls-a", "02:00:00:00:00:03", "10.0.0.3", "h1", 3),
    "b1": ("ls-b", SHARED_MAC, "10.0.0.1", "h1", 2),
    "a2": ("ls-a", "02:00:00:00:00:02", "10.0.0.2", "h2", 1),
    "b2": ("ls-b", "02:00:00:00:00:0b", "10.0.0.2", "h2", 2),
    "a4": ("ls-a", "02:00:00:00:00:04", "10.0.0.4", "h3", 1),
}


def two_tenants(tunnels=TUNNEL, bindings=None):
    """Three hosts; tenants A and B both use 10.0.0.0/24 and share one MAC.

    h1: a1 (port 1), b1 (port 2), a3 (port 3); h2: a2 (1), b2 (2); h3: a4 (1).
    """
    hosts = {h: HostInfo(h, ENCAP[h], tunnel_ofport=tunnels.get(h)) for h in ENCAP}
    switches = {
        "ls-a": SwitchInfo("ls-a", "tenant-a", VNI_A, "10.0.0.0/24"),
        "ls-b": SwitchInfo("ls-b", "tenant-b", VNI_B, "10.0.0.0/24"),
    }
    vms = {n: VMInfo(n, sw, mac, ip) for n, (sw, mac, ip, _, _) in VMS.items()}
    if bindings is None:
        bindings = {n: PortBinding(n, h, port) for n, (_, _, _, h, port) in VMS.items()}
    return Topology(hosts=hosts, switches=switches, vms=vms, bindings=bindings)
