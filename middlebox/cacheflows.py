"""The daemon's cache entries as ``Flow`` values, and back.  Pure.

docs/middlebox.md "Daemon cache entries": for a connection of VM v with peer
p in slice tag t, two flows at priority PRIO_CACHE_ENTRY:

* FROM_VM_CACHE: ``reg4=t, eth_type=0x800, ip_proto, ipv4_src=v,
  ipv4_dst=p, {tcp,udp}_src=v_port, {tcp,udp}_dst=p_port``
* TO_VM_CACHE: the reverse 5-tuple.

(no ports for other protocols).  allow -> ``goto`` CACHE_NEXT of the stage;
deny -> no instructions (drop).  Cookie = DAEMON_COOKIE | t << 28 | entry id.
The flows must be installed with OFPFF_SEND_FLOW_REM (``Flow`` has no flags
field: the daemon's OpenFlow shell sets it on every cache flow it adds).
"""

import functools

from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow

from middlebox.packet import IPPROTO_TCP, IPPROTO_UDP, ip_int, ip_text

ENTRY_ID_BITS = 28
ENTRY_ID_MASK = (1 << ENTRY_ID_BITS) - 1
MAX_ENTRY_ID = ENTRY_ID_MASK
TAG_SHIFT = ENTRY_ID_BITS
TAG_MASK = 0xFFF
# The part of a cache flow's cookie that identifies its entry (tag and id).
ENTRY_COOKIE_MASK = (TAG_MASK << TAG_SHIFT) | ENTRY_ID_MASK
ETH_TYPE_IP = 0x0800
_L4 = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst")}
_STAGE_OF_TABLE = {t.table_id: stage for stage, t in P.CACHE_TABLES.items()}
FLOW_CATCHER = 16           # ConnEntry.flows bit: the entry's reply catcher is installed


def cookie(tag, entry_id):
    return P.DAEMON_COOKIE | (tag & TAG_MASK) << TAG_SHIFT | (entry_id & ENTRY_ID_MASK)


def split_cookie(value):
    """(tag, entry_id) of a daemon cookie, or None for another owner's cookie."""
    if value & P.COOKIE_MASK != P.DAEMON_COOKIE:
        return None
    return (value >> TAG_SHIFT) & TAG_MASK, value & ENTRY_ID_MASK


def cache_flow(tag, stage, entry_id, proto, src, dst, sport, dport, verdict, idle_timeout):
    """One cache flow: the packets of the 5-tuple (src/dst as ints) at ``stage``."""
    instructions = (("goto", P.CACHE_NEXT[stage].table_id),) if verdict == "allow" else ()
    return Flow(P.CACHE_TABLES[stage].table_id, P.PRIO_CACHE_ENTRY,
                _tuple_match(tag, proto, src, dst, sport, dport),
                instructions, cookie=cookie(tag, entry_id), idle_timeout=int(idle_timeout))


def entry_flows(tag, entry, idle_timeout):
    """(from_vm_flow, to_vm_flow) of a ``ConnEntry``, with its verdict.

    A translated entry (``entry.xlate``, docs/services.md) gets flows with
    its header rewrites: the from-VM flow matches what the VM sends and
    rewrites it for the far side; the toward-VM flow (TO_VM_CACHE for a load
    balancer, EXTERNAL_CACHE for NAT) matches what arrives from the far side
    and rewrites it back."""
    k = entry.key
    x = entry.xlate
    if x is None:
        return (cache_flow(tag, P.STAGE_FROM_VM, entry.entry_id, k.proto, k.vm_ip,
                           k.peer_ip, k.vm_port, k.peer_port, entry.verdict, idle_timeout),
                cache_flow(tag, P.STAGE_TO_VM, entry.entry_id, k.proto, k.peer_ip,
                           k.vm_ip, k.peer_port, k.vm_port, entry.verdict, idle_timeout))
    return _xlate_flows(tag, entry, k, x, _L4.get(k.proto, (None, None)), int(idle_timeout))


# Addresses repeat (a VM's own, its peers'): remember their text.
_ip_text = functools.lru_cache(maxsize=65536)(ip_text)


# The field order of a tagged TCP/UDP 5-tuple's canonical match, if it is
# eth_type, ip_proto, ipv4_dst, ipv4_src, the tag register, dst port, src
# port (as with "reg4"): such a match is then built in that order at once.
_FAST_ORDER = all(
    sorted(["eth_type", "ip_proto", "ipv4_src", "ipv4_dst", P.REG_SLICE, s, d])
    == ["eth_type", "ip_proto", "ipv4_dst", "ipv4_src", P.REG_SLICE, d, s]
    for s, d in _L4.values())
# The same for an untagged one with a metadata match (a reply catcher).
_FAST_META_ORDER = all(
    sorted(["eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "metadata", s, d])
    == ["eth_type", "ip_proto", "ipv4_dst", "ipv4_src", "metadata", d, s]
    for s, d in _L4.values())


def _low(value):
    return value.lower() if isinstance(value, str) else value


_SET_ROUTER_MAC = ("set_field", "eth_src", P.ROUTER_MAC.lower())


def _port_set(name, port):
    """A port rewrite, or none for a protocol without ports."""
    return (("set_field", name, port),) if name is not None else ()


def _xlate_flows(tag, entry, k, x, names, idle_timeout):
    """``entry_flows`` of a translated entry: the two flows with their
    rewrites (``names``: the protocol's port fields, or None)."""
    ck = cookie(tag, entry.entry_id)
    src_name, dst_name = names
    if x.kind == "lb":
        out_apply = ((("set_field", "ipv4_dst", _ip_text(x.peer_ip)),)
                     + _port_set(dst_name, x.peer_port)
                     + (_SET_ROUTER_MAC, ("set_field", "eth_dst", _low(x.peer_mac))))
        out_next = P.L2_LOOKUP.table_id
        back_table = P.CACHE_TABLES[P.STAGE_TO_VM].table_id
        back_apply = ((("set_field", "ipv4_src", _ip_text(k.peer_ip)),)
                      + _port_set(src_name, k.peer_port) + (_SET_ROUTER_MAC,))
        back_next = P.LOCAL_DELIVERY.table_id
    else:
        # SNAT from another host's port block (away): the replies arrive
        # forwarded by that host to the VM's MAC, untranslated; "landing" at
        # the to-VM stage (its catcher: catcher_flow) translates them here.
        out_apply = ((("set_field", "ipv4_src", _ip_text(x.vm_ip)),)
                     + _port_set(src_name, x.vm_port))
        out_next = P.EXTERNAL_OUT.table_id
        back_table = P.CACHE_TABLES[P.STAGE_TO_VM if x.away
                                    else P.STAGE_FROM_EXTERNAL].table_id
        back_apply = ((("set_field", "ipv4_dst", _ip_text(k.vm_ip)),)
                      + _port_set(dst_name, k.vm_port)
                      + (_SET_ROUTER_MAC, ("set_field", "eth_dst", _low(x.vm_mac))))
        back_next = P.LOCAL_DELIVERY.table_id if x.away else P.L2_LOOKUP.table_id
    out_match = _tuple_match(tag, k.proto, k.vm_ip, k.peer_ip, k.vm_port, k.peer_port)
    back_match = _tuple_match(tag, k.proto, x.peer_ip, x.vm_ip, x.peer_port, x.vm_port)
    return (Flow(P.FROM_VM_CACHE.table_id, P.PRIO_CACHE_ENTRY, out_match,
                 (("apply", out_apply), ("goto", out_next)), cookie=ck,
                 idle_timeout=idle_timeout),
            Flow(back_table, P.PRIO_CACHE_ENTRY, back_match,
                 (("apply", back_apply), ("goto", back_next)), cookie=ck,
                 idle_timeout=idle_timeout))


def _tuple_match(tag, proto, src, dst, sport, dport, **extra):
    """The canonical match (``canon_match``: sorted by field name) of a
    5-tuple; built directly, as its values need no canonicalising (numbers,
    dotted quads, ``extra`` numbers or number pairs)."""
    names = _L4.get(proto)
    if _FAST_ORDER and tag is not None and names is not None and not extra:
        return (("eth_type", ETH_TYPE_IP), ("ip_proto", proto), ("ipv4_dst", _ip_text(dst)),
                ("ipv4_src", _ip_text(src)), (P.REG_SLICE, tag), (names[1], dport),
                (names[0], sport))
    if _FAST_META_ORDER and tag is None and names is not None and len(extra) == 1 \
            and "metadata" in extra:
        return (("eth_type", ETH_TYPE_IP), ("ip_proto", proto), ("ipv4_dst", _ip_text(dst)),
                ("ipv4_src", _ip_text(src)), ("metadata", extra["metadata"]),
                (names[1], dport), (names[0], sport))
    items = [("eth_type", ETH_TYPE_IP), ("ip_proto", proto), ("ipv4_src", _ip_text(src)),
             ("ipv4_dst", _ip_text(dst))]
    if tag is not None:
        items.append((P.REG_SLICE, tag))
    if names is not None:
        items.append((names[0], sport))
        items.append((names[1], dport))
    if extra:
        items.extend(extra.items())
    items.sort()
    return tuple(items)


def _rewrite(sets, next_table):
    return (("apply", tuple([("set_field", name, value if not isinstance(value, str)
                              else value.lower()) for name, value in sets
                             if name is not None])),
            ("goto", next_table))


def catcher_flow(tag, entry, vni, idle_timeout):
    """The reply catcher of a translated entry whose replies reach this host
    through a steering table (docs/services.md), or None: a load-balanced
    connection's replies at TO_VM_STEERING, a DNAT'd connection's replies
    (sent by the VM) at FROM_VM_STEERING."""
    x = entry.xlate
    if x is None or (x.kind == "snat" and not x.away):
        return None
    k = entry.key
    meta = (vni, P.METADATA_VNI_MASK)
    if x.away:
        table, stage = P.TO_VM_STEERING, P.STAGE_TO_VM
        match = _tuple_match(None, k.proto, x.peer_ip, x.vm_ip, x.peer_port, x.vm_port,
                             metadata=meta)
    elif x.kind == "lb":
        table, stage = P.TO_VM_STEERING, P.STAGE_TO_VM
        match = _tuple_match(None, k.proto, x.peer_ip, k.vm_ip, x.peer_port, k.vm_port,
                             metadata=meta)
    else:
        table, stage = P.FROM_VM_STEERING, P.STAGE_FROM_VM
        match = _tuple_match(None, k.proto, k.vm_ip, k.peer_ip, k.vm_port, k.peer_port,
                             metadata=meta)
    return Flow(table.table_id, P.PRIO_STEER_CATCHER, match,
                (("apply", (("set_field", P.REG_SLICE, tag),)),
                 ("goto", P.CACHE_TABLES[stage].table_id)),
                cookie=cookie(tag, entry.entry_id), idle_timeout=int(idle_timeout))


def forwarder_flow(tag, entry_id, proto, peer_ip, peer_port, ext_ip, ext_port, vm_mac,
                   idle_timeout):
    """A SNAT forwarder (docs/migration.md): on the host whose port block
    ``ext_ip:ext_port`` is from, replies for a connection whose VM moved away
    go, untranslated, to the VM's MAC (L2_LOOKUP sends them into the tunnel
    to wherever the VM is now; ``reg0=0``: this one hop is allowed;
    ``in_port=0``: also when they arrived by the tunnel)."""
    match = _tuple_match(tag, proto, peer_ip, ext_ip, peer_port, ext_port)
    # in_port=0: the packet may have come from the tunnel (redirected here by
    # the external address's designated host), and OpenFlow never outputs a
    # packet to its ingress port.
    sets = (("eth_src", P.ROUTER_MAC), ("eth_dst", vm_mac), (P.REG_FROM_TUNNEL, 0),
            ("in_port", 0))
    return Flow(P.EXTERNAL_CACHE.table_id, P.PRIO_CACHE_ENTRY, match,
                _rewrite(sets, P.L2_LOOKUP.table_id), cookie=cookie(tag, entry_id),
                idle_timeout=int(idle_timeout))


def parse_cache_flow(flow):
    """``(tag, stage, entry_id, proto, src, dst, sport, dport, verdict)`` of a
    daemon cache flow (src/dst as ints, as the flow matches them), or None
    if ``flow`` is not one (other cookie, table, priority, match or
    instructions).  ``verdict`` is "allow" or "deny"."""
    try:
        ids = split_cookie(flow.cookie)
        stage = _STAGE_OF_TABLE.get(flow.table)
        if ids is None or stage is None or flow.priority != P.PRIO_CACHE_ENTRY:
            return None
        tag, entry_id = ids
        m = dict(flow.match)
        if m.pop(P.REG_SLICE, None) != tag or m.pop("eth_type", None) != ETH_TYPE_IP:
            return None
        proto = m.pop("ip_proto", None)
        src, dst = m.pop("ipv4_src", None), m.pop("ipv4_dst", None)
        if not isinstance(proto, int) or not isinstance(src, str) or not isinstance(dst, str):
            return None
        sport = dport = 0
        names = _L4.get(proto)
        if names is not None:
            sport, dport = m.pop(names[0], None), m.pop(names[1], None)
            if not isinstance(sport, int) or not isinstance(dport, int):
                return None
        if m:
            return None
        if flow.instructions == ():
            verdict = "deny"
        elif flow.instructions == (("goto", P.CACHE_NEXT[stage].table_id),):
            verdict = "allow"
        elif len(flow.instructions) == 2 and flow.instructions[0][0] == "apply" \
                and flow.instructions[1][0] == "goto" \
                and all(a[0] == "set_field" for a in flow.instructions[0][1]):
            verdict = "allow"       # a translated entry's flow (entry_flows)
        else:
            return None
        return (tag, stage, entry_id, proto, ip_int(src), ip_int(dst), sport, dport, verdict)
    except (AttributeError, TypeError, ValueError):
        return None
