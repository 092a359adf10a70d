"""The flows of one host's br-int, computed from the topology.

``compute_host_flows`` is a pure function: the same ``Topology`` always gives
the same sorted list of ``Flow`` values, and nothing here does I/O.  The
tables and registers used are declared in ``ryu_apps.pipeline``.
"""

import logging
from collections import Counter

from ovsdb.errors import MbxError
from ovsdb.match import openflow_matches, parse_match
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow, canon_match, flow_sort_key

LOG = logging.getLogger(__name__)


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

    flows = [_table_miss(t) for t in P.TABLES]
    flows.append(_flow(P.FROM_VM_STEERING, P.PRIO_STEER_MULTICAST,
                       canon_match(eth_dst=P.MULTICAST_MAC), [_goto(P.L2_LOOKUP)]))
    for vm, binding in local:
        vni = switches[vm.switch].vni
        flows += [_classify_vm(vm, binding, vni), _l2_to_local(vm, binding, vni),
                  _l2_to_local_ip(vm, binding, vni), _deliver_port(binding.ofport)]
    flows += _steering(topo, host, switches, local)
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


def _table_miss(table):
    """Steering tables pass unselected packets on; every other table drops."""
    if table is P.FROM_VM_STEERING:
        return _flow(table, P.PRIO_STEER_DEFAULT, (), [_goto(P.L2_LOOKUP)])
    if table is P.TO_VM_STEERING:
        return _flow(table, P.PRIO_STEER_DEFAULT, (), [_goto(P.LOCAL_DELIVERY)])
    return _flow(table, P.PRIO_DROP, (), ())


def _classify_vm(vm, binding, vni):
    return _flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                 canon_match(in_port=binding.ofport, eth_src=vm.mac),
                 [("apply", (_set(P.REG_IN_PORT, binding.ofport),)),
                  _metadata(vni), _goto(P.FROM_VM_STEERING)])


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


def _l2_to_local_ip(vm, binding, vni):
    """IPv4 unicast to a local VM passes the to-VM steering stage first."""
    return _flow(P.L2_LOOKUP, P.PRIO_L2_TO_VM_STEER,
                 _vni_match(vni, eth_dst=vm.mac, eth_type=0x0800),
                 [("apply", (_set(P.REG_OUT_PORT, binding.ofport),)),
                  _goto(P.TO_VM_STEERING)])


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


# ------------------------------------------------------------------ steering

def _steering(topo, host, switches, local):
    """Steering, cache-table and return flows for the host's slices.

    A policy's match is applied to both directions of a connection, so the
    replies of a steered connection are steered too.  A policy whose
    middlebox has no slice tag or whose host has no middlebox port yet drops
    what it selects (fail closed: a firewall that is not there yet must not
    let traffic by).
    """
    host_info = topo.hosts.get(host)
    mb_port = host_info.mb_ofport if host_info is not None else None
    sets = {name: a.addresses for name, a in topo.address_sets.items()}
    local_by_switch = {}
    for vm, binding in local:
        local_by_switch.setdefault(vm.switch, []).append((vm, binding))
    flows = []
    for name in sorted(local_by_switch):
        vni = switches[name].vni
        for policy in topo.policies:
            if policy.switch != name:
                continue
            flows += _policy_flows(topo, host, policy, vni, sets, mb_port,
                                   local_by_switch[name])
        if any(p.switch == name and p.middlebox for p in topo.policies):
            for vm, binding in local_by_switch[name]:
                flows.append(_flow(P.TO_VM_RETURN, P.PRIO_DELIVER,
                                   _vni_match(vni, eth_dst=vm.mac),
                                   [("apply", (_set(P.REG_OUT_PORT, binding.ofport),)),
                                    _goto(P.LOCAL_DELIVERY)]))
    if mb_port is not None:
        for (mb_name, slice_host), tag in sorted(topo.slices.items()):
            mb = topo.middleboxes.get(mb_name)
            if slice_host != host or mb is None or mb.switch not in local_by_switch:
                continue
            flows += _slice_flows(tag, switches[mb.switch].vni, mb_port)
    return flows


def _policy_flows(topo, host, policy, vni, sets, mb_port, local):
    try:
        match = parse_match(policy.match)
    except MbxError as err:
        LOG.error("steering policy %s/%d skipped: %s", policy.switch, policy.priority, err)
        return []
    selections = []
    for m in openflow_matches(match, sets) + openflow_matches(match.reversed(), sets):
        if m not in selections:
            selections.append(m)
    prio = P.PRIO_STEER_BASE + 2 * policy.priority
    mb = topo.middleboxes.get(policy.middlebox) if policy.middlebox else None
    tag = topo.slices.get((mb.name, host)) if mb is not None else None
    flows = []
    for stage, steer_table, cache_table, next_table in (
            (P.STAGE_FROM_VM, P.FROM_VM_STEERING, P.FROM_VM_CACHE, P.L2_LOOKUP),
            (P.STAGE_TO_VM, P.TO_VM_STEERING, P.TO_VM_CACHE, P.LOCAL_DELIVERY)):
        if policy.middlebox is None:
            action = [_goto(next_table)]
        elif mb is None or mb.switch != policy.switch or tag is None or mb_port is None:
            action = []
        else:
            action = [("apply", (_set(P.REG_SLICE, tag),)), _goto(cache_table)]
        for sel in selections:
            flows.append(_flow(steer_table, prio, _vni_match(vni, **sel), action))
            if mb is None or not action:
                continue
            mode = mb.option("same-host", "both")
            if stage == P.STAGE_FROM_VM and mode == "destination":
                # Traffic to a VM on this host is checked at its to-VM stage only.
                for vm, _ in local:
                    flows.append(_flow(steer_table, prio + 1,
                                       _vni_match(vni, eth_dst=vm.mac, **sel),
                                       [_goto(next_table)]))
            if stage == P.STAGE_TO_VM and mode == "source":
                # Traffic from a VM on this host was checked at its from-VM stage.
                flows.append(_flow(steer_table, prio + 1,
                                   _vni_match(vni, **{P.REG_FROM_TUNNEL: 0}, **sel),
                                   [_goto(next_table)]))
    return flows


def _to_middlebox(tag, stage, port):
    return ("apply", (("push_vlan", 0x8100),
                      _set("vlan_vid", P.VLAN_PRESENT | tag),
                      _set("vlan_pcp", stage),
                      ("output", port)))


def _slice_flows(tag, vni, mb_port):
    """Cache-table miss and FIN/RST flows, and the return flows, of one slice."""
    flows = []
    for stage, cache_table in sorted(P.CACHE_TABLES.items()):
        # A packet that came back from the daemon (same-host traffic checked
        # at both stages) can only be sent back out of the port it came in on
        # with the IN_PORT output: hence a second flow matching in_port.
        for in_port, prio_add, port in ((None, 0, mb_port), (mb_port, 1, P.OFPP_IN_PORT)):
            out = [_to_middlebox(tag, stage, port)]
            flows.append(_flow(cache_table, P.PRIO_CACHE_MISS + prio_add,
                               canon_match(**{P.REG_SLICE: tag}, in_port=in_port), out))
            for flag in (0x001, 0x004):         # FIN, RST
                flows.append(_flow(cache_table, P.PRIO_CACHE_FLAGS + prio_add,
                                   canon_match(**{P.REG_SLICE: tag}, in_port=in_port,
                                               eth_type=0x0800, ip_proto=6,
                                               tcp_flags=(flag, flag)), out))
        back = P.CACHE_NEXT[stage] if stage == P.STAGE_FROM_VM else P.TO_VM_RETURN
        flows.append(_flow(P.CLASSIFY, P.PRIO_MB_RETURN,
                           canon_match(in_port=mb_port, vlan_vid=P.VLAN_PRESENT | tag,
                                       vlan_pcp=stage),
                           [("apply", (("pop_vlan",),)), _metadata(vni), _goto(back)]))
    return flows
