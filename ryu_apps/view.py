"""The controllers' shared view of the cloud: where each VM's port is (from
the southbound database's port bindings) and the ``Topology`` value built
from that and a northbound snapshot.

Both controllers use it: the logical controller (``ryu_apps.northd``) for
the cloud-wide decisions (slices, SNAT blocks, VM locations), the physical
controller (``ryu_apps.engine``) for its hosts' flows.  So both agree on
which binding of a VM counts while its port exists on two hosts: the one
that appeared last.
"""

import dataclasses
from typing import Dict, Tuple

from mbxmodel.network import HostInfo, HostPorts, PortBinding
from mbxmodel.topology import Topology


class Bindings:
    """Every host's ports, and the order in which VM ports appeared."""

    def __init__(self):
        self.host_ports: Dict[str, HostPorts] = {}
        self._seq = 0
        self._appearances: Dict[Tuple[str, str], Tuple[int, int]] = {}
        #                  (vm, host) -> (appearance seq, ofport)

    def update(self, host, ports: HostPorts):
        """``host`` now has ``ports``; returns the HostPorts it had."""
        old = self.host_ports.get(host, HostPorts())
        self.host_ports[host] = ports
        for vm, (ofport, _mac) in ports.vm_ports.items():
            prev = self._appearances.get((vm, host))
            if prev is None or prev[1] != ofport or vm not in old.vm_ports:
                self._seq += 1
                self._appearances[(vm, host)] = (self._seq, ofport)
        for vm in old.vm_ports:
            if vm not in ports.vm_ports:
                self._appearances.pop((vm, host), None)
        return old

    def seq(self, vm, host):
        """The appearance number of ``vm``'s port on ``host`` (higher: newer)."""
        return self._appearances[(vm, host)][0]

    def bound(self, vms):
        """{vm: PortBinding} of the VMs of ``vms`` (name -> VMInfo) whose port
        exists somewhere with the VM's own MAC (or none given); the newest
        appearance wins while a port exists on two hosts."""
        out = {}
        for (vm, host), (_seq, ofport) in sorted(self._appearances.items(),
                                                 key=lambda kv: kv[1][0]):
            info = vms.get(vm)
            mac = self.host_ports[host].vm_ports[vm][1]
            if info is None or (mac and mac.lower() != info.mac):
                continue
            out[vm] = PortBinding(vm=vm, host=host, ofport=ofport)
        return out


class TopologyBuilder:
    """``Topology`` values from northbound snapshots and the bindings, with
    one copy of a snapshot's VMs shared by the topologies built from it."""

    def __init__(self):
        self._snap_vms = (None, {})

    def build(self, snap, bindings: Bindings, slices=None):
        """The topology of ``snap`` and ``bindings``; its slices are
        ``slices`` ({(chain, host): tag}; default: the snapshot's)."""
        hosts = {}
        for name, rec in snap.hosts.items():
            ports = bindings.host_ports.get(name, HostPorts())
            hosts[name] = HostInfo(name=name, encap_ip=rec.encap_ip,
                                   encap_type=rec.encap_type,
                                   tunnel_ofport=ports.tunnel_ofport,
                                   mb_ofport=ports.mb_ofport,
                                   uplink_ofport=ports.uplink_ofport,
                                   uplink_mac=ports.uplink_mac)
        if self._snap_vms[0] is not snap:
            self._snap_vms = (snap, dict(snap.vms))
        return Topology(hosts=hosts, switches=dict(snap.switches),
                        vms=self._snap_vms[1], bindings=bindings.bound(snap.vms),
                        middleboxes=dict(snap.middleboxes), policies=tuple(snap.policies),
                        address_sets=dict(snap.address_sets),
                        nat_rules=_by_middlebox(getattr(snap, "nat_rules", {})),
                        vips=_by_middlebox(getattr(snap, "vips", {})),
                        external_networks={n.name: n for n in records(
                            getattr(snap, "external_networks", {}))},
                        slices=dict(snap.slices if slices is None else slices))


def with_slices(topo, slices):
    return dataclasses.replace(topo, slices=dict(slices))


def records(value):
    """The rows of a snapshot field that may be a mapping or a sequence."""
    if value is None:
        return []
    return list(value.values()) if hasattr(value, "values") else list(value)


def _by_middlebox(value):
    """{middlebox: (record, ...)} from a snapshot field keyed by middlebox
    (values: tuples of records) or by record (values: records)."""
    if hasattr(value, "items") and all(isinstance(v, (tuple, list)) for v in value.values()):
        return {name: tuple(recs) for name, recs in value.items()}
    out = {}
    for rec in records(value):
        out.setdefault(rec.middlebox, []).append(rec)
    return {name: tuple(recs) for name, recs in out.items()}
