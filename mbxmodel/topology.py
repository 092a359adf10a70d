"""The controller's view of the world, as one immutable value.

Flow computation (``ryu_apps.flows``) is a pure function of a ``Topology``:
no I/O, no clocks, no os-ken.  The controller builds a ``Topology`` from two
sources and hands it over:

* the config database (hosts, logical switches, VMs), and
* each host's own OVSDB (which VM ports exist on which host, their OpenFlow
  port numbers, the host's tunnel port).
"""

from dataclasses import dataclass, field
from typing import Mapping, Tuple

from mbxmodel.network import (ExternalNetInfo, HostInfo, PortBinding,
                              SwitchInfo, VMInfo)
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, NatRuleInfo,
                               PolicyInfo, VipInfo)


@dataclass(frozen=True)
class Topology:
    hosts: Mapping[str, HostInfo] = field(default_factory=dict)
    switches: Mapping[str, SwitchInfo] = field(default_factory=dict)
    vms: Mapping[str, VMInfo] = field(default_factory=dict)
    bindings: Mapping[str, PortBinding] = field(default_factory=dict)  # by VM name
    middleboxes: Mapping[str, MiddleboxInfo] = field(default_factory=dict)
    policies: Tuple[PolicyInfo, ...] = ()
    address_sets: Mapping[str, AddressSetInfo] = field(default_factory=dict)
    # (chain, host) -> tag; a chain is a tuple of middlebox names in order
    slices: Mapping[Tuple[Tuple[str, ...], str], int] = field(default_factory=dict)
    nat_rules: Mapping[str, Tuple[NatRuleInfo, ...]] = field(default_factory=dict)  # by middlebox
    vips: Mapping[str, Tuple[VipInfo, ...]] = field(default_factory=dict)           # by middlebox
    external_networks: Mapping[str, ExternalNetInfo] = field(default_factory=dict)

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
