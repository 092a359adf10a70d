"""The controllers' shared view of the cloud: where each VM's port is (from
the southbound database's port bindings), and what of a northbound
snapshot and the southbound runtime rows the topology is made of.

Both controllers use it: the logical controller (``ryu_apps.northd``) for
the cloud-wide decisions (slices, SNAT blocks, VM locations), the physical
controller (``ryu_apps.engine``) for its hosts' flows, each keeping its
topology with ``ryu_apps.topostate``.  So both agree on which binding of a
VM counts while its port exists on two hosts: the one that appeared last.
"""

from typing import Dict, Tuple

from mbxmodel.network import HostPorts, PortBinding
from mbxmodel.state import ACTIVE_MIGRATION, VM_STATE
from mbxmodel.topology import Topology


class Bindings:
    """Every host's ports, and the order in which VM ports appeared."""

    def __init__(self):
        self.host_ports: Dict[str, HostPorts] = {}
        self._seq = 0
        self._appearances: Dict[Tuple[str, str], Tuple[int, int]] = {}
        #                  (vm, host) -> (appearance seq, ofport)
        self._vm_hosts: Dict[str, set] = {}     # vm -> hosts where its port is

    def update(self, host, ports: HostPorts):
        """``host`` now has ``ports``; returns the HostPorts it had."""
        old = self.host_ports.get(host, HostPorts())
        self.host_ports[host] = ports
        for vm, (ofport, _mac) in ports.vm_ports.items():
            prev = self._appearances.get((vm, host))
            if prev is None or prev[1] != ofport or vm not in old.vm_ports:
                self._seq += 1
                self._appearances[(vm, host)] = (self._seq, ofport)
                self._vm_hosts.setdefault(vm, set()).add(host)
        for vm in old.vm_ports:
            if vm not in ports.vm_ports:
                self._appearances.pop((vm, host), None)
                self._vm_hosts.get(vm, set()).discard(host)
        return old

    def seq(self, vm, host):
        """The appearance number of ``vm``'s port on ``host`` (higher: newer)."""
        return self._appearances[(vm, host)][0]

    def vms(self):
        """The VMs whose port exists somewhere."""
        return [vm for vm, hosts in self._vm_hosts.items() if hosts]

    def binding(self, vm, info):
        """The binding of ``vm`` (``info``: its VMInfo, or None) that wins:
        its newest appearance whose port carries the VM's MAC (or none), or
        None."""
        if info is None:
            return None
        best = None
        for host in self._vm_hosts.get(vm, ()):
            seq, ofport = self._appearances[(vm, host)]
            mac = self.host_ports[host].vm_ports[vm][1]
            if (mac and mac.lower() != info.mac) or (best is not None and best[0] > seq):
                continue
            best = (seq, PortBinding(vm=vm, host=host, ofport=ofport))
        return best[1] if best is not None else None

    def bound(self, vms):
        """{vm: PortBinding} of the VMs of ``vms`` (name -> VMInfo) whose port
        exists somewhere (``binding``)."""
        out = {}
        for vm in self.vms():
            binding = self.binding(vm, vms.get(vm))
            if binding is not None:
                out[vm] = binding
        return out


def config_topology(snap):
    """The Topology of a snapshot's configuration only: no hosts' ports,
    bindings or slices."""
    return Topology(
        switches=dict(snap.switches), vms=dict(snap.vms),
        middleboxes=dict(snap.middleboxes), policies=tuple(snap.policies),
        address_sets=dict(snap.address_sets),
        nat_rules=_by_middlebox(getattr(snap, "nat_rules", {})),
        vips=_by_middlebox(getattr(snap, "vips", {})),
        external_networks={n.name: n for n in records(
            getattr(snap, "external_networks", {}))})


def config_key(snap, hosts):
    """What the flows are computed from of a config snapshot and the
    hosts (``SbSnapshot.hosts``): the intent and the hosts' tunnel
    endpoints, not the status columns (LB_VIP and Middlebox status, the
    VM.host mirror, the nb_cfg / hv_cfg / northd_cfg counters) nor the
    hosts' status."""
    vips = {name: tuple((v.uuid, v.vip, v.port, v.protocol, v.algorithm, v.backends,
                         tuple(sorted(dict(v.options).items()))) for v in recs)
            for name, recs in _by_middlebox(getattr(snap, "vips", {})).items()}
    return ({name: (h.encap_ip, h.encap_type) for name, h in hosts.items()},
            snap.switches, snap.vms, snap.middleboxes, tuple(snap.policies),
            snap.address_sets, _by_middlebox(getattr(snap, "nat_rules", {})), vips,
            {n.name: n for n in records(getattr(snap, "external_networks", {}))})


def incoming(runtime):
    """(vm, host) pairs that need the VM's slices on a host where it may not
    be bound (``slices.needed_slices``), from the runtime rows (an
    SbSnapshot): the destination and the source of an active migration,
    and a host that holds state of a VM that left (shared state
    "vm-state": the VM's new host may still ask for it, and its SNAT ports
    are forwarded from there)."""
    out = {(m.vm, host) for m in runtime.migrations
           if m.status in ACTIVE_MIGRATION for host in (m.destination, m.source)}
    out.update((row.key, row.host) for row in runtime.shared_state
               if row.service == VM_STATE)
    return frozenset(out)


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
