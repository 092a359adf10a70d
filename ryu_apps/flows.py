"""The flows of one host's br-int, computed from the topology.

``compute_host_flows`` is a pure function: the same ``Topology`` always gives
the same sorted list of ``Flow`` values, and nothing here does I/O.  The
tables and registers used are declared in ``ryu_apps.pipeline``.
"""

from collections import Counter

from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow, canon_match, flow_sort_key


def compute_host_flows(topo, host):
    """Return the sorted list of flows ``host``'s br-int should hold.

    Only logical switches with a VM on ``host`` get flows here.  Switches
    whose VNI is out of range or shared with another switch are left out
    entirely (fail closed: two tenants must never share a key).  If two flows
    would get the same key (e.g. two VMs of one switch with the same MAC) the
    first one computed wins, local VMs before remote ones.
    """
    switches = _usable_switches(topo)
    local = [(vm, b) for vm, b in topo.local_vms(host) if vm.switch in switches]
    ports = {}
    for vm, binding in local:
        ports.setdefault(vm.switch, []).append(binding.ofport)
    host_info = topo.hosts.get(host)
    tunnel = host_info.tunnel_ofport if host_info is not None else None
    remote = _remote_vms(topo, host, ports) if tunnel is not None else []

    flows = [_drop(t) for t in P.TABLES]
    for vm, binding in local:
        vni = switches[vm.switch].vni
        flows += [_classify_vm(vm, binding, vni), _l2_to_local(vm, binding, vni),
                  _deliver_port(binding.ofport)]
    for name in sorted(ports):
        vni = switches[name].vni
        peers = sorted((peer, ip) for vm, peer, ip in remote if vm.switch == name)
        encap_ips = list(dict.fromkeys(ip for _, ip in peers))
        flows += _deliver_flood(vni, ports[name])
        flows.append(_l2_flood_from_vm(vni, encap_ips, tunnel))
        if tunnel is not None:
            flows += [_classify_tunnel(tunnel, vni), _l2_flood_from_tunnel(vni)]
    for vm, _, encap_ip in remote:
        flows.append(_l2_to_remote(vm, switches[vm.switch].vni, encap_ip, tunnel))
    return _unique(flows)


def _usable_switches(topo):
    counts = Counter(s.vni for s in topo.switches.values())
    return {name: s for name, s in topo.switches.items()
            if 0 < s.vni <= P.MAX_VNI and counts[s.vni] == 1}


def _remote_vms(topo, host, switches):
    """(VMInfo, host, encap_ip) of VMs of ``switches`` on other known hosts, by VM name."""
    out = []
    for name, binding in sorted(topo.bindings.items()):
        vm = topo.vms.get(name)
        peer = topo.hosts.get(binding.host)
        if vm is None or vm.switch not in switches or peer is None or binding.host == host:
            continue
        out.append((vm, binding.host, peer.encap_ip))
    return out


def _unique(flows):
    seen = {}
    for flow in flows:
        seen.setdefault(flow.key, P.check_flow(flow))
    return sorted(seen.values(), key=flow_sort_key)


def _flow(table, priority, match, instructions):
    return Flow(table.table_id, priority, match, tuple(instructions), cookie=P.COOKIE)


def _metadata(vni):
    return ("write_metadata", vni, P.METADATA_VNI_MASK)


def _goto(table):
    return ("goto", table.table_id)


def _set(field, value):
    return ("set_field", field, value)


def _drop(table):
    return _flow(table, P.PRIO_DROP, (), ())


def _classify_vm(vm, binding, vni):
    return _flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                 canon_match(in_port=binding.ofport, eth_src=vm.mac),
                 [("apply", (_set(P.REG_IN_PORT, binding.ofport),)),
                  _metadata(vni), _goto(P.L2_LOOKUP)])


def _classify_tunnel(tunnel, vni):
    return _flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                 canon_match(in_port=tunnel, tunnel_id=vni),
                 [("apply", (_set(P.REG_FROM_TUNNEL, P.FROM_TUNNEL),
                             _set(P.REG_IN_PORT, tunnel))),
                  _metadata(vni), _goto(P.L2_LOOKUP)])


def _vni_match(vni, **fields):
    return canon_match(metadata=(vni, P.METADATA_VNI_MASK), **fields)


def _l2_to_local(vm, binding, vni):
    return _flow(P.L2_LOOKUP, P.PRIO_L2_UNICAST, _vni_match(vni, eth_dst=vm.mac),
                 [("apply", (_set(P.REG_OUT_PORT, binding.ofport),)),
                  _goto(P.LOCAL_DELIVERY)])


def _tunnel_to(vni, encap_ip, tunnel):
    return (_set("tunnel_id", vni), _set("tun_ipv4_dst", encap_ip), ("output", tunnel))


def _l2_to_remote(vm, vni, encap_ip, tunnel):
    match = _vni_match(vni, eth_dst=vm.mac, **{P.REG_FROM_TUNNEL: 0})
    return _flow(P.L2_LOOKUP, P.PRIO_L2_UNICAST, match,
                 [("apply", _tunnel_to(vni, encap_ip, tunnel))])


def _l2_flood_from_vm(vni, encap_ips, tunnel):
    actions = []
    for encap_ip in encap_ips:
        actions.extend(_tunnel_to(vni, encap_ip, tunnel))
    actions.append(_set(P.REG_OUT_PORT, P.OUT_PORT_FLOOD))
    match = _vni_match(vni, eth_dst=P.MULTICAST_MAC, **{P.REG_FROM_TUNNEL: 0})
    return _flow(P.L2_LOOKUP, P.PRIO_L2_FLOOD, match,
                 [("apply", tuple(actions)), _goto(P.LOCAL_DELIVERY)])


def _l2_flood_from_tunnel(vni):
    match = _vni_match(vni, eth_dst=P.MULTICAST_MAC, **{P.REG_FROM_TUNNEL: P.FROM_TUNNEL})
    return _flow(P.L2_LOOKUP, P.PRIO_L2_FLOOD, match,
                 [("apply", (_set(P.REG_OUT_PORT, P.OUT_PORT_FLOOD),)),
                  _goto(P.LOCAL_DELIVERY)])


def _deliver_port(ofport):
    return _flow(P.LOCAL_DELIVERY, P.PRIO_DELIVER, canon_match(**{P.REG_OUT_PORT: ofport}),
                 [("apply", (("output", ofport),))])


def _deliver_flood(vni, ports):
    """Flood to the switch's local ports: skipping the ingress one, or all of them."""
    flood = {P.REG_OUT_PORT: P.OUT_PORT_FLOOD}
    out = []
    for port in ports:
        others = tuple(("output", p) for p in ports if p != port)
        out.append(_flow(P.LOCAL_DELIVERY, P.PRIO_DELIVER_FLOOD_EXCEPT,
                         _vni_match(vni, **flood, **{P.REG_IN_PORT: port}),
                         [("apply", others)] if others else []))
    out.append(_flow(P.LOCAL_DELIVERY, P.PRIO_DELIVER, _vni_match(vni, **flood),
                     [("apply", tuple(("output", p) for p in ports))]))
    return out
