"""The flows of one host's br-int, computed from the topology.

``compute_host_flows`` is a pure function: the same ``Topology`` (and SNAT
port blocks) always gives the same sorted list of ``Flow`` values, and
nothing here does I/O.  The tables and registers used are declared in
``ryu_apps.pipeline``; docs/services.md is the design of the services part.

A host's flows are the union of its *parts* (``host_parts``): one part of
its own (table misses, its uplink, its designated external addresses) and,
for each logical switch present on the host, three: ``("switch", S)``
(the host's VMs of S, their steering, the host's slices of S, flooding,
the gateway), ``("remote", S)`` (S's VMs on other hosts) and ``("nat", S)``
(the way in from the outside through S's NAT middleboxes the host serves).
Each part depends on less than the whole topology (see ``ryu_apps.engine``),
so the controller computes again only the parts a change touches, and
compares only those with what the switch holds.  Parts never share a flow
key (their matches differ in the switch's VNI, the VM's port or the
host's own ports); should two do, the first part in ``host_parts`` order
wins, as the first flow computed wins within a part.
"""

import ipaddress
import logging
from collections import Counter

from ovsdb.errors import MbxError
from ovsdb.match import openflow_matches, parse_match
from ryu_apps import pipeline as P
from ryu_apps import slices as slicelib
from ryu_apps.ofmodel import Flow, canon_match, flow_sort_key

LOG = logging.getLogger(__name__)

HOST_PART = ("host",)
SWITCH_PART_KINDS = ("switch", "remote", "nat")


def compute_host_flows(topo, host, snat_blocks=None):
    """Return the sorted list of flows ``host``'s br-int should hold.

    Only logical switches with a VM on ``host``, or a slice of ``host``, get
    flows here.  Switches
    whose VNI is out of range or shared with another switch are left out
    entirely (fail closed: two tenants must never share a key).  If two flows
    would get the same key (e.g. two VMs of one switch with the same MAC) the
    first one computed wins, local VMs before remote ones.

    ``snat_blocks`` is the SNAT port block allocation
    (``slices.snat_blocks``: {(rule uuid, host): (ip, lo, hi)}); None
    computes a fresh one (the engine passes the one it writes back, which is
    kept stable across recomputations).
    """
    if snat_blocks is None:
        snat_blocks = slicelib.snat_blocks(topo, {})
    parts = {part: compute_part(topo, host, part, snat_blocks)
             for part in host_parts(topo, host)}
    table, _contested = union(parts)
    return sorted(table.values(), key=flow_sort_key)


def present_switches(topo, host):
    """The usable logical switches with a VM bound to ``host`` or a slice
    of ``host``, sorted.  A host that keeps a slice of a switch with no VM
    of it here (it holds state of a VM that left, docs/migration.md) still
    reaches the switch's VMs: its SNAT forwarders send to the VM's MAC."""
    switches = _usable_switches(topo)
    out = {vm.switch for vm, _ in topo.local_vms(host) if vm.switch in switches}
    for chain, _ in topo.host_slices(host):
        switch = slicelib.chain_switch(topo, chain)
        if switch in switches:
            out.add(switch)
    return sorted(out)


def host_parts(topo, host):
    """The ids of ``host``'s parts, in order: ``HOST_PART``, then
    ("switch", S), ("remote", S), ("nat", S) for each switch S present."""
    return [HOST_PART] + [(kind, switch) for switch in present_switches(topo, host)
                          for kind in SWITCH_PART_KINDS]


def compute_part(topo, host, part, snat_blocks):
    """The flows of part ``part`` of ``host`` (an id of ``host_parts``):
    {flow key: Flow}, each checked against the pipeline, the first flow of
    each key."""
    shared = topo.derived(_shared)
    if part == HOST_PART:
        flows = _host_flows(topo, host)
    else:
        kind, switch = part
        build = {"switch": _switch_flows, "remote": _remote_flows, "nat": _nat_flows}[kind]
        flows = build(topo, host, switch, snat_blocks)
    return _unique(flows, shared["checked"])


def union(parts):
    """The flows of a host from its parts (an ordered {part id: {key: Flow}}):
    ({key: Flow}, the keys more than one part has).  The first part wins."""
    table, contested = {}, set()
    for flows in parts.values():
        for key, flow in flows.items():
            if table.setdefault(key, flow) is not flow:
                contested.add(key)
    return table, contested


def _host_flows(topo, host):
    """Part ``HOST_PART``: table misses, multicast steering, the judged-packet
    skip, and what the host's uplink needs."""
    flows = list(_piece(topo.derived(_shared), ("table-miss",), lambda: [
        _table_miss(t) for t in P.TABLES if P.COOKIE in t.owners] + [
        _flow(P.FROM_VM_STEERING, P.PRIO_STEER_MULTICAST,
              canon_match(eth_dst=P.MULTICAST_MAC), [_goto(P.L2_LOOKUP)])]))
    if topo.host_slices(host):
        # A packet the daemon made (or a DNAT'd one, judged already) is
        # delivered without being steered again.
        flows.append(_flow(P.TO_VM_STEERING, P.PRIO_STEER_JUDGED,
                           canon_match(**{P.REG_SKIP_TO_VM: P.SKIP_TO_VM}),
                           [_goto(P.LOCAL_DELIVERY)]))
    flows += _gateway_uplink(topo, host)
    flows += _external_uplink(topo, host)
    return flows


def _local_of(topo, host, switch):
    return [(vm, b) for vm, b in topo.local_vms(host) if vm.switch == switch]


def _switch_flows(topo, host, switch, _blocks):
    """Part ("switch", S): the host's VMs of S (classification, L2 to them,
    delivery), their steering and the host's slices of S, flooding to them
    and from the tunnel, their gateway and their way out."""
    switches = _usable_switches(topo)
    vni = switches[switch].vni
    local = _local_of(topo, host, switch)
    host_info = topo.hosts.get(host)
    tunnel = host_info.tunnel_ofport if host_info is not None else None
    flows = []
    for vm, binding in local:
        flows += [_classify_vm(vm, binding, vni), _l2_to_local(vm, binding, vni),
                  _l2_to_local_ip(vm, binding, vni), _deliver_port(binding.ofport)]
    if local:
        flows += _steering(topo, host, switch, vni, local)
    ports = [binding.ofport for _, binding in local]
    if ports:
        flows += _deliver_flood(vni, ports)
    if tunnel is not None:
        flows += [_classify_tunnel(tunnel, vni), _l2_flood_from_tunnel(vni)]
    if local:
        flows += _gateway(topo, host, switches[switch], local)
        flows += _external(topo, switches[switch])
    return flows


def _remote_flows(topo, host, switch, _blocks):
    """Part ("remote", S): S's VMs on other hosts, and the flood to those hosts."""
    vni = _usable_switches(topo)[switch].vni
    host_info = topo.hosts.get(host)
    tunnel = host_info.tunnel_ofport if host_info is not None else None
    remote = _remote_vms(topo, host, switch) if tunnel is not None else []
    encap_ips = list(dict.fromkeys(ip for _, ip in sorted(
        (peer, ip) for _vm, peer, ip in remote)))
    shared = topo.derived(_shared)
    flows = list(_piece(shared, ("l2-flood", vni, tuple(encap_ips), tunnel), lambda: [
        _l2_flood_from_vm(vni, encap_ips, tunnel)]))
    for vm, _, encap_ip in remote:
        flows += _piece(shared, ("l2-remote", vm.name, encap_ip, tunnel), lambda: [
            _l2_to_remote(vm, vni, encap_ip, tunnel)])
    return flows


def _nat_flows(topo, host, switch, blocks):
    """Part ("nat", S): EXTERNAL_IN of the NAT middleboxes of S the host serves."""
    vni = _usable_switches(topo)[switch].vni
    host_info = topo.hosts.get(host)
    tunnel = host_info.tunnel_ofport if host_info is not None else None
    flows = []
    for name in slicelib.nat_middleboxes(topo):
        if topo.middleboxes[name].switch == switch \
                and host in slicelib.hosts_serving(topo, name):
            flows += _nat_in(topo, host, name, vni, tunnel, blocks)
    return flows


def _shared(topo):
    """Flows that are the same on every host that has them (a remote VM's
    L2 flow, a policy's steering flows for one slice tag), computed once
    per topology: {piece key: its flows}; "checked": the ids of those
    flows, checked against the pipeline when made.  A piece's key names
    everything it depends on but the topology's configuration, so the
    engine hands the pieces on to the next topology of the same
    configuration."""
    return {"checked": set()}


def _piece(shared, key, build):
    """The flows of piece ``key``: ``build()`` the first time, each flow
    checked against the pipeline then; the same list after."""
    flows = shared.get(key)
    if flows is None:
        flows = shared[key] = build()
        shared["checked"].update(id(P.check_flow(f)) for f in flows)
    return flows


def _usable_switches(topo):
    return topo.derived(_usable)


def _usable(topo):
    counts = Counter(s.vni for s in topo.switches.values())
    return {name: s for name, s in topo.switches.items()
            if 0 < s.vni <= P.MAX_VNI and counts[s.vni] == 1}


def _remote_vms(topo, host, switch):
    """(VMInfo, host, encap_ip) of VMs of ``switch`` on other known hosts, by VM name."""
    out = []
    for name in topo.bound_vms(switch):
        binding = topo.bindings[name]
        vm = topo.vms.get(name)
        peer = topo.hosts.get(binding.host)
        if vm is None or vm.switch != switch or peer is None or binding.host == host:
            continue
        out.append((vm, binding.host, peer.encap_ip))
    return out


def _unique(flows, checked=()):
    """{key: the first flow of that key}, each checked against the pipeline
    (but for those in ``checked``, ids of flows checked already)."""
    seen = {}
    for flow in flows:
        if flow.key not in seen:
            seen[flow.key] = flow if id(flow) in checked else P.check_flow(flow)
    return seen


def _flow(table, priority, match, instructions):
    return Flow(table.table_id, priority, match, tuple(instructions), cookie=P.COOKIE)


def _metadata(vni):
    return ("write_metadata", vni, P.METADATA_VNI_MASK)


def _goto(table):
    return ("goto", table.table_id)


def _set(field, value):
    return ("set_field", field, value)


def _table_miss(table):
    """Steering tables (and GATEWAY) pass unselected packets on; every other
    table drops."""
    if table is P.GATEWAY:
        return _flow(table, P.PRIO_STEER_DEFAULT, (), [_goto(P.FROM_VM_STEERING)])
    if table is P.FROM_VM_STEERING:
        return _flow(table, P.PRIO_STEER_DEFAULT, (), [_goto(P.L2_LOOKUP)])
    if table is P.TO_VM_STEERING:
        return _flow(table, P.PRIO_STEER_DEFAULT, (), [_goto(P.LOCAL_DELIVERY)])
    return _flow(table, P.PRIO_DROP, (), ())


def _classify_vm(vm, binding, vni):
    return _flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                 canon_match(in_port=binding.ofport, eth_src=vm.mac),
                 [("apply", (_set(P.REG_IN_PORT, binding.ofport),)),
                  _metadata(vni), _goto(P.GATEWAY)])


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

def _steering(topo, host, switch, vni, local):
    """Steering of switch ``switch``'s traffic on ``host`` (its VMs
    ``local``) into the host's slices' service stages, the reply catchers
    of load-balancer backends and DNAT'd VMs, and the flows that take
    packets back from the middlebox daemon.

    A policy's match is applied to both directions of a connection, so the
    replies of a steered connection are steered too.  A policy whose chain
    has no slice tag or whose host has no middlebox port yet drops what it
    selects (fail closed: a firewall that is not there yet must not let
    traffic by), except a chain of IDS services only, which never changes a
    verdict: without a tag its traffic goes on unobserved.
    """
    host_info = topo.hosts.get(host)
    mb_port = host_info.mb_ofport if host_info is not None else None
    flows = []
    policies = topo.derived(_policies_by_switch).get(switch, ())
    shared = topo.derived(_shared)
    for policy in policies:
        # The same on every host with the policy's slice tag.
        valid = slicelib.chain_ok(topo, policy)
        tag = topo.slices.get((tuple(policy.chain), host)) if valid else None
        flows += _piece(shared, ("policy", id(policy), vni, tag),
                        lambda: _policy_flows(topo, policy, vni, valid, tag))
    if any(p.chain for p in policies):
        for vm, binding in local:
            flows.append(_flow(P.TO_VM_RETURN, P.PRIO_DELIVER,
                               _vni_match(vni, eth_dst=vm.mac),
                               [("apply", (_set(P.REG_OUT_PORT, binding.ofport),)),
                                _goto(P.TO_VM_RESUME)]))
    for (chain, _host), tag in sorted(topo.host_slices(host).items()):
        if slicelib.chain_switch(topo, chain) != switch or not all(
                n in topo.middleboxes and topo.middleboxes[n].switch == switch
                for n in chain):
            continue
        flows += _slice_flows(topo, chain, tag, vni, mb_port)
        flows += _catchers(topo, chain, tag, vni)
    return flows


def _address_sets(topo):
    return {name: a.addresses for name, a in topo.address_sets.items()}


def _policies_by_switch(topo):
    """{switch: its policies, in ``topo.policies`` order}."""
    out = {}
    for policy in topo.policies:
        out.setdefault(policy.switch, []).append(policy)
    return out


def _policy_flows(topo, policy, vni, valid, tag):
    """A policy's steering flows on a host where its chain is ``valid``
    and has slice tag ``tag`` (None: none here)."""
    sets = topo.derived(_address_sets)
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
    chain = tuple(policy.chain)
    ids_only = valid and slicelib.is_ids_only(topo, chain)
    steered = valid and tag is not None
    flows = []
    for stage, steer_table, next_table in (
            (P.STAGE_FROM_VM, P.FROM_VM_STEERING, P.L2_LOOKUP),
            (P.STAGE_TO_VM, P.TO_VM_STEERING, P.LOCAL_DELIVERY)):
        if not chain or (ids_only and not steered):
            action = [_goto(next_table)]
        elif not steered:
            action = []
        else:
            action = [("apply", (_set(P.REG_SLICE, tag),)), _goto(P.STAGE_TABLES[stage])]
        for sel in selections:
            flows.append(_flow(steer_table, prio, _vni_match(vni, **sel), action))
    return flows


def _to_middlebox(tag, stage, port, pop=False):
    actions = (("push_vlan", 0x8100),
               _set("vlan_vid", P.VLAN_PRESENT | tag),
               _set("vlan_pcp", stage),
               ("output", port))
    return ("apply", actions + ((("pop_vlan",),) if pop else ()))


def _slice_flows(topo, chain, tag, vni, mb_port):
    """The flows that take a slice's packets back from the middlebox daemon:
    by PCP, resume the stage (REG_SERVICE says the daemon saw it), or
    deliver a packet the daemon made."""
    if mb_port is None:
        return []
    flows = []
    resume = {P.STAGE_FROM_VM: P.FROM_VM_CT, P.STAGE_TO_VM: P.TO_VM_RETURN}
    if "nat" in slicelib.chain_types(topo, chain):
        resume[P.STAGE_FROM_EXTERNAL] = P.EXTERNAL_CT
    for pcp, table in sorted(resume.items()):
        regs = [("pop_vlan",), _set(P.REG_SLICE, tag), _set(P.REG_SERVICE, P.RESUMED[pcp])]
        if pcp == P.STAGE_FROM_EXTERNAL:
            regs.append(_set(P.REG_FROM_TUNNEL, P.FROM_TUNNEL))
        flows.append(_flow(P.CLASSIFY, P.PRIO_MB_RETURN,
                           canon_match(in_port=mb_port, vlan_vid=P.VLAN_PRESENT | tag,
                                       vlan_pcp=pcp),
                           [("apply", tuple(regs)), _metadata(vni), _goto(table)]))
    flows.append(_flow(P.CLASSIFY, P.PRIO_MB_RETURN,
                       canon_match(in_port=mb_port, vlan_vid=P.VLAN_PRESENT | tag,
                                   vlan_pcp=P.DELIVER),
                       [("apply", (("pop_vlan",), _set(P.REG_SKIP_TO_VM, P.SKIP_TO_VM))),
                        _metadata(vni), _goto(P.L2_LOOKUP)]))
    return flows


def _catchers(topo, chain, tag, vni):
    """Replies that no steering policy selects, but whose connection the
    chain may have translated: a load-balancer backend's (un-DNAT in the
    client's zone) and a DNAT'd VM's (un-DNAT in its own zone).  Below
    every policy; marked CAUGHT, so that in the stage a packet of no
    tracked connection goes on as if it had not been steered."""
    if not chain:
        return []
    flows = []
    by_name = topo.derived(_vms_by_address)
    switch = slicelib.chain_switch(topo, chain)
    for name in chain:
        mb = topo.middleboxes.get(name)
        if mb is None:
            continue
        if mb.type == "lb":
            for vip in topo.vips.get(name, ()):
                proto = {"tcp": 6, "udp": 17}.get(vip.protocol)
                if proto is None:
                    continue
                l4 = "tcp_src" if proto == 6 else "udp_src"
                for ip, port in vip.backends:
                    flows.append(_flow(P.TO_VM_STEERING, P.PRIO_STEER_CATCHER,
                                       _vni_match(vni, eth_type=P.ETH_TYPE_IP, ip_proto=proto,
                                                  ipv4_src=ip, **{l4: port}),
                                       [("apply", (_set(P.REG_SLICE, tag),
                                                   _set(P.REG_SERVICE, P.CAUGHT))),
                                        _goto(P.TO_VM_CT)]))
        elif mb.type == "nat":
            for rule in topo.nat_rules.get(name, ()):
                if rule.type != "dnat" or (switch, rule.logical_ip) not in by_name:
                    continue
                flows.append(_flow(P.FROM_VM_STEERING, P.PRIO_STEER_CATCHER,
                                   _vni_match(vni, eth_type=P.ETH_TYPE_IP,
                                              ipv4_src=rule.logical_ip),
                                   [("apply", (_set(P.REG_SLICE, tag),
                                               _set(P.REG_SERVICE, P.CAUGHT))),
                                    _goto(P.FROM_VM_CT)]))
    return flows


# ------------------------------------------------------------------ gateway

def gateway_ip(switch):
    """The switch's default gateway: its ``gateway``, or its subnet's first address."""
    if switch.gateway:
        return switch.gateway
    try:
        return str(next(ipaddress.IPv4Network(switch.subnet, strict=False).hosts()))
    except (ValueError, StopIteration):
        return None


def _switch_vips(topo, switch):
    """VIP addresses of the load balancers in the chains of the switch's policies."""
    out = []
    for policy in topo.derived(_policies_by_switch).get(switch, ()):
        if not slicelib.chain_ok(topo, policy):
            continue
        for name in policy.chain:
            if topo.middleboxes[name].type == "lb":
                out += [v.vip for v in topo.vips.get(name, ())]
    return sorted(set(out))


def _external_nets(topo):
    return [topo.external_networks[n] for n in sorted(topo.external_networks)]


def _external_cidrs(topo):
    """The external networks' cidrs as ipv4 match values, nested ones left out."""
    return list(topo.derived(_external_cidr_matches))


def _external_cidr_matches(topo):
    nets = []
    for net in _external_nets(topo):
        try:
            nets.append(ipaddress.IPv4Network(net.cidr, strict=False))
        except ValueError:
            LOG.error("external network %s: bad cidr %r", net.name, net.cidr)
    out = []
    for net in sorted(set(nets)):
        if any(net != other and net.subnet_of(other) for other in nets):
            continue
        out.append(_ip_match(net))
    return out


def _ip_match(net):
    if net.prefixlen == 32:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def _arp_reply(ask_ip, ask_mac, answer_ip, answer_mac):
    """Apply-actions turning an ARP request from (ask_ip, ask_mac) for
    answer_ip into its reply, sent back out of the ingress port."""
    return ("apply", (_set("eth_dst", ask_mac), _set("eth_src", answer_mac),
                      _set("arp_op", P.ARP_REPLY),
                      _set("arp_sha", answer_mac), _set("arp_spa", answer_ip),
                      _set("arp_tha", ask_mac), _set("arp_tpa", ask_ip),
                      ("output", P.OFPP_IN_PORT)))


def _gateway(topo, host, switch, local):
    """GATEWAY for ``switch``'s VMs ``local`` on ``host``: ARP for the
    gateway and VIPs, health-probe replies, anti-spoofing of external
    source addresses."""
    host_info = topo.hosts.get(host)
    mb_port = host_info.mb_ofport if host_info is not None else None
    name = switch.name
    flows = []
    gateway = gateway_ip(switch)
    targets = ([gateway] if gateway else []) + _switch_vips(topo, name)
    for vm, binding in local:
        for target in dict.fromkeys(targets):
            if target == vm.ip:
                continue
            flows.append(_flow(P.GATEWAY, P.PRIO_GATEWAY_ARP,
                               canon_match(in_port=binding.ofport, eth_type=P.ETH_TYPE_ARP,
                                           arp_op=P.ARP_REQUEST, arp_tpa=target),
                               [_arp_reply(vm.ip, vm.mac, target, P.ROUTER_MAC)]))
    for cidr in _external_cidrs(topo):
        # Only a translation by the chain may send from an external
        # address to the outside (L2_LOOKUP -> EXTERNAL_OUT).
        flows.append(_flow(P.GATEWAY, P.PRIO_GATEWAY_SPOOF,
                           _vni_match(switch.vni, eth_type=P.ETH_TYPE_IP,
                                      eth_dst=P.ROUTER_MAC, ipv4_src=cidr), []))
    tag = slicelib.lowest_tag(
        topo, host, lambda chain: slicelib.chain_switch(topo, chain) == name
        and "lb" in slicelib.chain_types(topo, chain))
    if gateway and mb_port is not None and tag is not None:
        flows.append(_flow(P.GATEWAY, P.PRIO_GATEWAY_PROBE,
                           _vni_match(switch.vni, eth_type=P.ETH_TYPE_IP, ip_proto=6,
                                      ipv4_dst=gateway, eth_dst=P.ROUTER_MAC),
                           [_to_middlebox(tag, P.STAGE_PROBE, mb_port)]))
    return flows


def _gateway_uplink(topo, host):
    """GATEWAY for the host's uplink: nothing from it passes but ARP for
    the external addresses the host answers for."""
    host_info = topo.hosts.get(host)
    uplink = host_info.uplink_ofport if host_info is not None else None
    if uplink is None:
        return []
    flows = [_flow(P.GATEWAY, P.PRIO_GATEWAY_UPLINK, canon_match(in_port=uplink), [])]
    uplink_mac = host_info.uplink_mac
    if not uplink_mac:
        return flows
    for address in topo.derived(_designated_by_host).get(host, ()):
        for net in _external_nets(topo):
            if not _contains(net.cidr, address):
                continue
            flows.append(_flow(P.GATEWAY, P.PRIO_GATEWAY_ARP,
                               canon_match(in_port=uplink, eth_type=P.ETH_TYPE_ARP,
                                           arp_op=P.ARP_REQUEST, arp_spa=net.gateway_ip,
                                           arp_tpa=address),
                               [_arp_reply(net.gateway_ip, net.gateway_mac, address,
                                           uplink_mac)]))
    return flows


def _designated_by_host(topo):
    """{host: the external addresses it answers ARP for, sorted}."""
    out = {}
    for address, owner in sorted(slicelib.designated_hosts(topo).items()):
        out.setdefault(owner, []).append(address)
    return out


def _contains(cidr, address):
    try:
        return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        return False


# ----------------------------------------------------------------- external

def _external_uplink(topo, host):
    """The host's uplink: into GATEWAY (ARP) or EXTERNAL_IN (IPv4), and
    EXTERNAL_OUT, the way out."""
    host_info = topo.hosts.get(host)
    uplink = host_info.uplink_ofport if host_info is not None else None
    if uplink is None:
        return []
    flows = [_flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                   canon_match(in_port=uplink, eth_type=P.ETH_TYPE_ARP), [_goto(P.GATEWAY)]),
             _flow(P.CLASSIFY, P.PRIO_CLASSIFY,
                   canon_match(in_port=uplink, eth_type=P.ETH_TYPE_IP),
                   [_goto(P.EXTERNAL_IN)])]
    nets = _external_nets(topo)
    if host_info.uplink_mac and nets:
        flows.append(_flow(P.EXTERNAL_OUT, P.PRIO_EXTERNAL_OUT, (),
                           [("apply", (_set("eth_src", host_info.uplink_mac),
                                       _set("eth_dst", nets[0].gateway_mac),
                                       ("output", uplink)))]))
    return flows


def _external(topo, switch):
    """The way out of ``switch`` (L2_LOOKUP -> EXTERNAL_OUT): to an
    external network, from an external address only."""
    return [_flow(P.L2_LOOKUP, P.PRIO_L2_EXTERNAL,
                  _vni_match(switch.vni, eth_dst=P.ROUTER_MAC,
                             eth_type=P.ETH_TYPE_IP, ipv4_src=cidr,
                             **{P.REG_FROM_TUNNEL: 0}),
                  [_goto(P.EXTERNAL_OUT)])
            for cidr in _external_cidrs(topo)]


def _nat_in(topo, host, name, vni, tunnel, blocks):
    """EXTERNAL_IN flows of NAT middlebox ``name``, which ``host`` serves.
    Those that do not name the host itself (a block or a DNAT'd VM's way
    to the host that owns it, the way in for this host with its slice tag)
    are pieces the hosts that have them share."""
    mb = topo.middleboxes[name]
    tag = slicelib.lowest_tag(topo, host, lambda chain: name in chain)
    serving = set(slicelib.hosts_serving(topo, name))
    shared = topo.derived(_shared)
    flows = []
    if tunnel is not None:
        flows += _piece(shared, ("nat-redirect", tunnel, vni), lambda: [
            _flow(P.CLASSIFY, P.PRIO_CLASSIFY_REDIRECT,
                  canon_match(in_port=tunnel, tunnel_id=vni, eth_dst=P.ROUTER_MAC),
                  [("apply", (_set(P.REG_FROM_TUNNEL, P.FROM_TUNNEL),
                              _set(P.REG_IN_PORT, tunnel))),
                   _goto(P.EXTERNAL_IN)])])

    here = ("apply", (_set(P.REG_SLICE, tag), _set(P.REG_FROM_TUNNEL, P.FROM_TUNNEL)))
    stage = [here, _metadata(vni), _goto(P.EXTERNAL_CT)]

    def tunnel_to(owner):
        peer = topo.hosts.get(owner)
        return (_set("tunnel_id", vni), _set("tun_ipv4_dst", peer.encap_ip),
                _set("eth_dst", P.ROUTER_MAC), ("output", tunnel))

    def to_host(owner):
        """(piece key part, instructions, extra match) for a packet owned by
        ``owner``, or None."""
        if owner == host:
            return (("here", tag), stage, {})
        if tunnel is None or topo.hosts.get(owner) is None or owner not in serving:
            return None
        return (("to", topo.hosts[owner].encap_ip, tunnel), [("apply", tunnel_to(owner))],
                {P.REG_FROM_TUNNEL: 0})

    others = sorted(h for h in serving if h != host and topo.hosts.get(h) is not None)
    addresses = sorted({ip for rule in topo.nat_rules.get(name, ()) for ip in rule.external_ips})
    for ip in addresses:
        # Sent here by another host (a port block, a moved connection's
        # forwarder, ICMP): this host's conntrack decides.
        flows += _piece(shared, ("nat-redirected", ip, tag, vni), lambda: [
            _flow(P.EXTERNAL_IN, P.PRIO_EXTERNAL_REDIRECTED,
                  canon_match(eth_type=P.ETH_TYPE_IP, ipv4_dst=ip,
                              **{P.REG_FROM_TUNNEL: P.FROM_TUNNEL}), stage)])
    for rule in topo.nat_rules.get(name, ()):
        if rule.type != "snat" or tunnel is None:
            continue
        for ip in rule.external_ips:
            # ICMP carries no port of a block: every serving host's SNAT
            # zone is asked (echo replies, errors about its connections).
            copies = tuple(a for h in others for a in tunnel_to(h))
            flows.append(_flow(P.EXTERNAL_IN, P.PRIO_EXTERNAL_ICMP,
                               canon_match(eth_type=P.ETH_TYPE_IP, ip_proto=1, ipv4_dst=ip,
                                           **{P.REG_FROM_TUNNEL: 0}),
                               [("apply", copies + here[1])] + stage[1:]))

    for rule in topo.nat_rules.get(name, ()):
        if rule.type == "snat":
            for (uuid, owner), (ip, lo, hi) in _blocks_of(blocks, rule.uuid):
                target = to_host(owner)
                if target is not None:
                    flows += _piece(shared, ("snat-block", ip, lo, hi, vni, target[0]),
                                    lambda: _snat_block(ip, lo, hi, target))
        elif rule.type == "dnat":
            vm = topo.derived(_vms_by_address).get((mb.switch, rule.logical_ip))
            binding = topo.bindings.get(vm.name) if vm is not None else None
            target = to_host(binding.host) if binding is not None else None
            flows += _piece(shared, ("dnat", rule.uuid, vni, target and target[0]),
                            lambda: _dnat(rule, target))
    return flows


def _snat_block(ip, lo, hi, target):
    """A SNAT port block's way in: to ``target`` (``_nat_in``'s to_host)."""
    _key, instructions, extra = target
    ports = slicelib.block_match(lo, hi)
    return [_flow(P.EXTERNAL_IN, P.PRIO_EXTERNAL_SNAT,
                  canon_match(eth_type=P.ETH_TYPE_IP, ip_proto=proto, ipv4_dst=ip,
                              **{field: ports}, **extra),
                  instructions)
            for proto, field in ((6, "tcp_dst"), (17, "udp_dst"))]


def _dnat(rule, target):
    """A DNAT rule's way in: to ``target`` (``_nat_in``'s to_host), or
    dropped (None: its VM is nowhere)."""
    _key, instructions, extra = target if target is not None else (None, [], {})
    protos = {"tcp": (6,), "udp": (17,)}.get(rule.protocol)
    if protos is None:
        protos = (6, 17) if rule.external_port is not None else (None,)
    if None not in protos:
        protos += (1,)          # ICMP errors about its connections
    flows = []
    for ip in rule.external_ips:
        for proto in protos:
            fields = dict(extra)
            prio = P.PRIO_EXTERNAL_DNAT
            if proto is not None:
                fields["ip_proto"] = proto
                prio += 1
            if rule.external_port is not None and proto != 1:
                fields["tcp_dst" if proto == 6 else "udp_dst"] = rule.external_port
                prio += 200
            flows.append(_flow(P.EXTERNAL_IN, prio,
                               canon_match(eth_type=P.ETH_TYPE_IP, ipv4_dst=ip, **fields),
                               instructions))
    return flows


def _vms_by_address(topo):
    """{(switch, ip): the VM of that switch with that address, first by name}."""
    index = {}
    for vm in topo.vms.values():
        key = (vm.switch, vm.ip)
        if key not in index or vm.name < index[key].name:
            index[key] = vm
    return index


_BLOCKS_CACHE = [None, {}]      # the last blocks mapping seen, its index


def _blocks_of(blocks, rule_uuid):
    """The sorted ((rule uuid, host), block) items of ``blocks`` for one rule.
    A ``slices.Blocks`` mapping (the engine's) indexes itself; for another
    mapping the index is kept for the last one seen."""
    if isinstance(blocks, slicelib.Blocks):
        return blocks.of_rule(rule_uuid)
    if _BLOCKS_CACHE[0] is not blocks:
        index = {}
        for item in sorted(blocks.items()):
            index.setdefault(item[0][0], []).append(item)
        _BLOCKS_CACHE[:] = [blocks, index]
    return _BLOCKS_CACHE[1].get(rule_uuid, ())


# The derived values above that read the configuration only (switches,
# VMs, services, hosts' addresses; not the hosts' ports, bindings or
# slices), which the topologies of one configuration may share
# (``ryu_apps.topostate``).  ``_shared``'s pieces are keyed by all else
# they depend on.
CONFIG_DERIVED = frozenset({_usable, _shared, _policies_by_switch, _vms_by_address,
                            _external_cidr_matches, _address_sets})
SHARED_PIECES = _shared
