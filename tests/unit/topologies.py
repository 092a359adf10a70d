"""Example topologies shared by the unit tests."""

import dataclasses

from mbxmodel.network import HostInfo, PortBinding, SwitchInfo, VMInfo
from mbxmodel.topology import Topology

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


# ------------------------------------------------------------------ services
# two_tenants() with every host's middlebox port and uplink, an external
# network, and tenant A's services (docs/services.md).

MB_PORT = 50
UPLINK = 60
UPLINK_MAC = {"h1": "02:ee:00:00:00:01", "h2": "02:ee:00:00:00:02", "h3": "02:ee:00:00:00:03"}
GATEWAY_A = "10.0.0.254"
EXT_CIDR = "203.0.113.0/24"
EXT_GW_IP = "203.0.113.1"
EXT_GW_MAC = "02:ee:ff:00:00:01"
SNAT_IP = "203.0.113.5"
DNAT_IP = "203.0.113.6"
VIP = "10.0.0.100"
OUTSIDE = "198.51.100.10"            # a server on the internet
CLIENT = "198.51.100.20"             # a client on the internet

FW_NAT = ("fw-a", "nat-a")           # ls-a to the internet: firewall, then SNAT
FW_LB = ("fw-a", "lb-a")             # ls-a to the VIP
IDS = ("ids-a",)                     # ssh in ls-a: watched only


def services(mb_port=MB_PORT, uplink=UPLINK, ports_per_host=16384, external=True,
             policies=None):
    """two_tenants() plus, for tenant A: a firewall, a NAT (SNAT of the
    subnet to SNAT_IP, DNAT DNAT_IP:8080/tcp -> a2:80), a load balancer (VIP
    10.0.0.100:80 -> a2, a4), an IDS, and three policies:

    * priority 300, dst=VIP: FW_LB
    * priority 200, dst=198.51.100.0/24 (the internet): FW_NAT
    * priority 100, tcp port 22: IDS
    """
    from ryu_apps import slices as slicelib
    from mbxmodel.network import ExternalNetInfo
    from mbxmodel.services import (MiddleboxInfo, NatRuleInfo, PolicyInfo,
                                   VipInfo)
    topo = two_tenants()
    hosts = {h: dataclasses.replace(i, mb_ofport=mb_port, uplink_ofport=uplink,
                                    uplink_mac=UPLINK_MAC[h] if uplink else None)
             for h, i in topo.hosts.items()}
    switches = dict(topo.switches)
    switches["ls-a"] = dataclasses.replace(switches["ls-a"], gateway=GATEWAY_A)
    mbs = {
        "fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a"),
        "nat-a": MiddleboxInfo("nat-a", "nat", "ls-a",
                               options={"ports-per-host": str(ports_per_host)}),
        "lb-a": MiddleboxInfo("lb-a", "lb", "ls-a"),
        "ids-a": MiddleboxInfo("ids-a", "ids", "ls-a"),
    }
    nat = (NatRuleInfo("11111111-0000-0000-0000-000000000001", "nat-a", "snat", (SNAT_IP,), ""),
           NatRuleInfo("11111111-0000-0000-0000-000000000002", "nat-a", "dnat", (DNAT_IP,),
                       "10.0.0.2", protocol="tcp", external_port=8080, logical_port=80))
    vips = (VipInfo("22222222-0000-0000-0000-000000000001", "lb-a", VIP, 80, "tcp",
                    "round-robin", (("10.0.0.2", 80), ("10.0.0.4", 80))),)
    if policies is None:
        policies = (PolicyInfo("ls-a", 300, "dst=" + VIP, FW_LB),
                    PolicyInfo("ls-a", 200, "dst=198.51.100.0/24", FW_NAT),
                    PolicyInfo("ls-a", 100, "proto=tcp dport=22", IDS))
    ext = {"ext": ExternalNetInfo("ext", EXT_CIDR, EXT_GW_IP, EXT_GW_MAC)} if external else {}
    topo = dataclasses.replace(topo, hosts=hosts, switches=switches, middleboxes=mbs,
                               policies=tuple(policies), nat_rules={"nat-a": nat},
                               vips={"lb-a": vips}, external_networks=ext)
    return dataclasses.replace(
        topo, slices=slicelib.allocate(slicelib.needed_slices(topo), {}))


# ------------------------------------------------------------------ the daemon's side
# The service stages mbxd would compile on a host of such a topology
# (middlebox.dataplane), for tests that run the controller's flows and the
# daemon's in one simulated switch.

ZONE_BASE = 10                      # a host's VMs get zones 10, 11, ... by name
SNAT_ZONE_BASE = 900                # its SNAT rules 900, 901, ... by uuid


def host_zones(topo, host, blocks=None):
    """(VM zones, SNAT rule zones) of ``host``, as mbxd's ZoneMap would
    give them (any distinct numbers do): a zone for each local VM, and for
    each SNAT rule this host has a port block of."""
    local = sorted(vm.name for vm, _ in topo.local_vms(host))
    snat = sorted(uuid for uuid, h in (blocks or {}) if h == host)
    return ({name: ZONE_BASE + i for i, name in enumerate(local)},
            {uuid: SNAT_ZONE_BASE + i for i, uuid in enumerate(snat)})


def host_config(topo, host, blocks=None, rules=None):
    """The ``middlebox.config.HostConfig`` mbxd builds for ``host``'s slices
    (middlebox.confmon.build_host_config does it from the config DB's rows).
    ``blocks``: the SNAT port blocks (``slices.snat_blocks``); ``rules``:
    {firewall name: RuleInfos} (the controller's topology has no rules)."""
    from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
    from ryu_apps import slices as slicelib
    from ryu_apps.flows import gateway_ip
    rules = rules or {}
    blocks = blocks or {}
    slices = {}
    for (chain, _), tag in sorted(topo.host_slices(host).items()):
        services = []
        for name in chain:
            mb = topo.middleboxes[name]
            services.append(ServiceSpec(
                mb.name, mb.type, mb.default_action, dict(mb.options),
                rules=tuple(rules.get(name, ())),
                nat_rules=tuple(topo.nat_rules.get(name, ())),
                vips=tuple(dataclasses.replace(v, status={})     # mbxd does not read it
                           for v in topo.vips.get(name, ()))))
        options = {}
        for sv in services:
            for key, value in sv.options.items():
                options.setdefault(key, value)
        firewall = next((sv for sv in services if sv.type == "firewall"), None)
        if firewall is not None:
            legacy = dict(middlebox=firewall.name, type="firewall",
                          default_action=firewall.default_action, rules=firewall.rules)
        else:
            legacy = dict(middlebox=",".join(chain), type="chain", default_action="allow")
        switch = topo.switches[slicelib.chain_switch(topo, chain)]
        vms = tuple(VmSpec(vm.name, vm.mac, vm.ip,
                           host if vm.name in topo.bindings
                           and topo.bindings[vm.name].host == host else None)
                    for vm in sorted(topo.vms.values(), key=lambda v: v.name)
                    if vm.switch == switch.name)
        external = tuple(n for _, n in sorted(topo.external_networks.items()))
        slices[tag] = SliceConfig(
            tag=tag, tenant=switch.tenant, switch=switch.name, vni=switch.vni,
            options=options, vms=vms, services=tuple(services), subnet=switch.subnet,
            gateway=gateway_ip(switch) or "",
            snat_blocks={uuid: block for (uuid, h), block in blocks.items() if h == host},
            external=external, **legacy)
    return HostConfig(host, slices)


def daemon_dataplane(topo, host, blocks=None, rules=None, holds=()):
    """``middlebox.dataplane.compile_host`` for ``host`` (its zones from
    ``host_zones``, its ports from the topology)."""
    from middlebox import dataplane
    zones, snat_zones = host_zones(topo, host, blocks)
    info = topo.hosts[host]
    return dataplane.compile_host(host_config(topo, host, blocks, rules), host, zones,
                                  snat_zones, dataplane.HostPorts(info.mb_ofport,
                                                                  info.tunnel_ofport),
                                  holds=frozenset(holds))
