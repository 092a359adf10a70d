"""The br-int OpenFlow pipeline of an mbx host, declared as data.

This module is the one place that says which tables exist, what each one
does, which fields its flows may match and which tables it may jump to.
``check_flow`` holds every computed flow to that declaration, so a pipeline
mistake fails in a unit test instead of on a switch.  docs/pipeline.md
describes the same pipeline for people.

Packet path::

    CLASSIFY ──(from a VM)──> GATEWAY ──(not answered)──> FROM_VM_STEERING
    GATEWAY ──(ARP for the gateway or a VIP)──> reply out of the VM's port
    GATEWAY ──(TCP to the gateway: a health-probe reply)──> middlebox port (PCP 3)
    FROM_VM_STEERING ──(selected)──> FROM_VM_CACHE
    FROM_VM_STEERING ──(not selected)──> L2_LOOKUP
    FROM_VM_CACHE ──(cached allow)──> L2_LOOKUP, or EXTERNAL_OUT (translated)
    FROM_VM_CACHE ──(miss, FIN, RST)──> middlebox port, tagged (slice, stage)
    CLASSIFY ──(from the uplink: ARP)──> GATEWAY ──> reply out of the uplink
    CLASSIFY ──(from the uplink: IPv4)──> EXTERNAL_IN
    CLASSIFY ──(from the tunnel, to ROUTER_MAC: redirected external)──> EXTERNAL_IN
    EXTERNAL_IN ──(an address/port block of another host)──> tunnel
    EXTERNAL_IN ──(an address/port block of this host)──> EXTERNAL_CACHE
    EXTERNAL_CACHE ──(cached)──> L2_LOOKUP; (miss, FIN, RST) ──> middlebox port
    CLASSIFY ──(from tunnel)──> L2_LOOKUP
    CLASSIFY ──(back from the middlebox, from-VM stage)──> L2_LOOKUP
    CLASSIFY ──(back from the middlebox, from-external stage)──> L2_LOOKUP
    CLASSIFY ──(back from the middlebox, to-VM stage)──> TO_VM_RETURN
    L2_LOOKUP ──> output to the tunnel port (VM on another host)
    L2_LOOKUP ──(to ROUTER_MAC from an external address)──> EXTERNAL_OUT ──> uplink
    L2_LOOKUP ──(IPv4 unicast to a local VM)──> TO_VM_STEERING
    L2_LOOKUP ──(broadcast, other unicast)──> LOCAL_DELIVERY
    TO_VM_STEERING ──(selected)──> TO_VM_CACHE ──(cached allow)──> LOCAL_DELIVERY
    TO_VM_STEERING ──(not selected, or already judged: reg3)──> LOCAL_DELIVERY
    TO_VM_CACHE ──(miss, FIN, RST)──> middlebox port, tagged
    TO_VM_RETURN ──> LOCAL_DELIVERY ──> VM port(s)

The three CACHE tables are shared with the middlebox daemon: the controller
owns their miss and FIN/RST flows (cookie ``COOKIE``), the daemon owns the
per-connection entries (cookie ``DAEMON_COOKIE``), and the daemon also owns
the reply catchers in the two STEERING tables.  Neither reads back or
deletes flows with the other's cookie.
"""

from dataclasses import dataclass
from typing import FrozenSet, Tuple

# Every flow mbx's controller installs carries this cookie in the bits of
# COOKIE_MASK.  The controller reads back and deletes only flows with this
# cookie, so another daemon using a different value in those bits can share
# br-int without either removing the other's flows.
COOKIE = 0x4D42580000000000          # "MBX" in the top bytes
COOKIE_MASK = 0xFFFFFF0000000000
# The middlebox daemon's per-connection cache entries and reply catchers carry
# this cookie in the same bits ("MBD"); the rest of their cookie is the
# daemon's own.
DAEMON_COOKIE = 0x4D42440000000000

# Registers (all start at 0 when a packet enters the pipeline).
REG_FROM_TUNNEL = "reg0"   # 1 if the packet arrived on the tunnel port (or is
                           # an external packet being handled), else 0
REG_OUT_PORT = "reg1"      # OpenFlow port LOCAL_DELIVERY outputs to, or OUT_PORT_FLOOD
REG_IN_PORT = "reg2"       # OpenFlow port the packet entered br-int on
REG_SKIP_TO_VM = "reg3"    # 1: the chain already judged this packet (it came
                           # from outside): TO_VM_STEERING sends it straight on
REG_SLICE = "reg4"         # slice tag chosen by steering, read by the CACHE tables
FROM_TUNNEL = 1
SKIP_TO_VM = 1
# REG_OUT_PORT value meaning "every local VM port of the logical switch except
# the one the packet came from" (numerically OpenFlow's OFPP_FLOOD).
OUT_PORT_FLOOD = 0xFFFFFFFB

# Metadata holds the logical switch key (its VNI) in its low 24 bits.
METADATA_VNI_MASK = 0x0000000000FFFFFF
MAX_VNI = 0xFFFFFF

# eth_dst with this mask matches every broadcast and multicast address.
MULTICAST_MAC = ("01:00:00:00:00:00", "01:00:00:00:00:00")

# The distributed default gateway's MAC: every host answers its VMs' ARP
# requests for their switch's gateway address (and load-balancer VIPs) with it.
ROUTER_MAC = "02:4d:42:00:00:01"

# The middlebox port: one per host on br-int, found by this Interface
# external_ids key/value.  Packets to and from the daemon carry an 802.1Q tag:
# VID = slice tag (1..4094), PCP = stage.
MIDDLEBOX_PORT = "mbx-mb"
MIDDLEBOX_ROLE = ("mbx-role", "middlebox")
# The uplink to the external network: one per host on br-int, found by its
# Interface external_ids key/value (the lab names it UPLINK_PORT).
UPLINK_PORT = "mbx-uplink"
UPLINK_ROLE = ("mbx-role", "uplink")
STAGE_FROM_VM = 0          # PCP: checked on the way out of the sending VM
STAGE_TO_VM = 1            # PCP: checked on the way into the receiving VM
STAGE_FROM_EXTERNAL = 2    # PCP: arrived from the external network for an
                           # external address this host owns
STAGE_PROBE = 3            # PCP: a reply to the daemon's health-check probe
                           # (never comes back)
MAX_SLICE_TAG = 4094
OFPP_IN_PORT = 0xFFFFFFF8  # output back out of the ingress port
VLAN_PRESENT = 0x1000      # OFPVID_PRESENT
ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
TCP_FIN, TCP_SYN, TCP_RST = 0x001, 0x002, 0x004

# Priorities, highest wins within a table.
PRIO_DROP = 0               # table-miss: drop
PRIO_CLASSIFY = 100         # port security / tunnel key check / uplink
PRIO_CLASSIFY_REDIRECT = 110  # CLASSIFY: tunnel packet to ROUTER_MAC (redirected external)
PRIO_L2_UNICAST = 200       # known destination MAC
PRIO_L2_FLOOD = 100         # broadcast / multicast destination
PRIO_L2_EXTERNAL = 220      # L2_LOOKUP: to ROUTER_MAC from an external address
PRIO_DELIVER = 100          # one local port, or flood to all local ports
PRIO_DELIVER_FLOOD_EXCEPT = 110   # flood that skips the ingress port
PRIO_MB_RETURN = 100        # CLASSIFY: a packet coming back from the daemon
PRIO_L2_TO_VM_STEER = 210   # L2_LOOKUP: IPv4 unicast to a local VM
PRIO_GATEWAY_ARP = 100      # GATEWAY: ARP responder (VMs and uplink)
PRIO_GATEWAY_PROBE = 100    # GATEWAY: health-probe reply to the daemon
PRIO_GATEWAY_SPOOF = 200    # GATEWAY: a VM sending from an external address: drop
PRIO_GATEWAY_UPLINK = 1     # GATEWAY: other ARP from the uplink: drop
PRIO_EXTERNAL_DNAT = 100    # EXTERNAL_IN: DNAT address; +1 with ip_proto, +200 with a port
PRIO_EXTERNAL_SNAT = 200    # EXTERNAL_IN: an SNAT port block
PRIO_EXTERNAL_OUT = 100     # EXTERNAL_OUT: the one flow
PRIO_STEER_BASE = 1000      # STEERING: policy priority p -> 1000 + 2p (+1: skip)
PRIO_STEER_CATCHER = 64000  # STEERING: the daemon's reply catchers
PRIO_STEER_MULTICAST = 65000  # FROM_VM_STEERING: broadcast/multicast never steered
PRIO_STEER_JUDGED = 65000   # TO_VM_STEERING: reg3=1 -> LOCAL_DELIVERY
PRIO_STEER_DEFAULT = 0      # STEERING: not selected -> go on (table-miss)
PRIO_CACHE_FLAGS = 65000    # CACHE: FIN/RST always to the daemon (controller);
                            # IDS-only slice: SYN copy (RST copy: +1)
PRIO_CACHE_ENTRY = 100      # CACHE: per-connection entries (daemon)
PRIO_CACHE_MISS = 1         # CACHE: not cached -> to the daemon (controller);
                            # +1 for packets that came back from the daemon


@dataclass(frozen=True)
class Table:
    name: str
    table_id: int
    description: str
    match_fields: FrozenSet[str]
    next_tables: Tuple[str, ...] = ()
    owners: FrozenSet[int] = frozenset({COOKIE})   # who may install flows here


_L4_FIELDS = frozenset({"ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst",
                        "udp_src", "udp_dst"})
_BOTH = frozenset({COOKIE, DAEMON_COOKIE})

CLASSIFY = Table(
    "CLASSIFY", 0,
    "Admit packets from VM ports (port security on eth_src), from the "
    "tunnel (known VNI only; to ROUTER_MAC: a redirected external packet), "
    "from the uplink (ARP, IPv4) and back from the middlebox port (known "
    "slice tag only); set the logical switch in metadata.",
    frozenset({"in_port", "eth_src", "eth_dst", "eth_type", "tunnel_id", "vlan_vid",
               "vlan_pcp"}),
    ("GATEWAY", "EXTERNAL_IN", "L2_LOOKUP", "TO_VM_RETURN"))
GATEWAY = Table(
    "GATEWAY", 1,
    "The distributed gateway: answer ARP for the switch's gateway and VIPs "
    "(from VMs) and for this host's external addresses (from the uplink); "
    "send health-probe replies to the daemon; everything else from a VM "
    "goes on to FROM_VM_STEERING.",
    frozenset({"in_port", "metadata", "eth_type", "eth_dst", "arp_op", "arp_spa",
               "arp_tpa", "ip_proto", "ipv4_src", "ipv4_dst"}),
    ("FROM_VM_STEERING",))
EXTERNAL_IN = Table(
    "EXTERNAL_IN", 2,
    "IPv4 from the external network: a packet for an external address "
    "(SNAT port block, DNAT rule) of this host gets its slice tag and "
    "logical switch and goes to EXTERNAL_CACHE; one of another host goes "
    "into the tunnel to that host; the rest is dropped.",
    frozenset({REG_FROM_TUNNEL, "eth_type", "ip_proto", "ipv4_dst", "tcp_dst", "udp_dst"}),
    ("EXTERNAL_CACHE",))
EXTERNAL_CACHE = Table(
    "EXTERNAL_CACHE", 3,
    "As FROM_VM_CACHE, for the from-external stage (PCP 2); a cached "
    "connection is translated (daemon flows) and goes to L2_LOOKUP.",
    frozenset({REG_SLICE, "in_port", "eth_type"}) | _L4_FIELDS | {"tcp_flags"},
    ("L2_LOOKUP",), _BOTH)
FROM_VM_STEERING = Table(
    "FROM_VM_STEERING", 10,
    "Steering policies for packets sent by a local VM: selected IPv4 "
    "packets get their slice tag in REG_SLICE and go to FROM_VM_CACHE; "
    "the rest go on to L2_LOOKUP.  The daemon's reply catchers live here.",
    frozenset({"metadata", "eth_type", "eth_dst"}) | _L4_FIELDS,
    ("FROM_VM_CACHE", "L2_LOOKUP"), _BOTH)
FROM_VM_CACHE = Table(
    "FROM_VM_CACHE", 11,
    "Connections the daemon decided (its flows) go on to L2_LOOKUP (or, "
    "translated to an external address, EXTERNAL_OUT) or are dropped; "
    "everything else, and every FIN and RST, goes to the daemon.",
    EXTERNAL_CACHE.match_fields,
    ("L2_LOOKUP", "EXTERNAL_OUT"), _BOTH)
L2_LOOKUP = Table(
    "L2_LOOKUP", 20,
    "Per logical switch, look up eth_dst: local VM -> TO_VM_STEERING (IPv4) "
    "or LOCAL_DELIVERY, remote VM -> tunnel (not for packets from the "
    "tunnel), broadcast -> flood, ROUTER_MAC from an external address -> "
    "EXTERNAL_OUT.",
    frozenset({"metadata", "eth_dst", "eth_type", "ipv4_src", REG_FROM_TUNNEL}),
    ("TO_VM_STEERING", "LOCAL_DELIVERY", "EXTERNAL_OUT"))
TO_VM_STEERING = Table(
    "TO_VM_STEERING", 30,
    "Steering policies for packets about to be delivered to a local VM.  "
    "The daemon's reply catchers live here.",
    frozenset({"metadata", "eth_type", REG_FROM_TUNNEL, REG_SKIP_TO_VM}) | _L4_FIELDS,
    ("TO_VM_CACHE", "LOCAL_DELIVERY"), _BOTH)
TO_VM_CACHE = Table(
    "TO_VM_CACHE", 31,
    "As FROM_VM_CACHE, for the to-VM stage; cached allow -> LOCAL_DELIVERY.",
    FROM_VM_CACHE.match_fields,
    ("LOCAL_DELIVERY",), _BOTH)
TO_VM_RETURN = Table(
    "TO_VM_RETURN", 32,
    "A packet the daemon passed at the to-VM stage: look up its local VM "
    "port again (registers do not survive the trip through the daemon).",
    frozenset({"metadata", "eth_dst"}),
    ("LOCAL_DELIVERY",))
LOCAL_DELIVERY = Table(
    "LOCAL_DELIVERY", 40,
    "Output to the local VM port(s) chosen in the output-port register.",
    frozenset({"metadata", REG_OUT_PORT, REG_IN_PORT}))
EXTERNAL_OUT = Table(
    "EXTERNAL_OUT", 41,
    "A translated packet to the external network leaves by this host's "
    "uplink, from the uplink's MAC to the external gateway's MAC.",
    frozenset())

TABLES = (CLASSIFY, GATEWAY, EXTERNAL_IN, EXTERNAL_CACHE, FROM_VM_STEERING, FROM_VM_CACHE,
          L2_LOOKUP, TO_VM_STEERING, TO_VM_CACHE, TO_VM_RETURN, LOCAL_DELIVERY, EXTERNAL_OUT)
BY_NAME = {t.name: t for t in TABLES}
BY_ID = {t.table_id: t for t in TABLES}
CACHE_TABLES = {STAGE_FROM_VM: FROM_VM_CACHE, STAGE_TO_VM: TO_VM_CACHE,
                STAGE_FROM_EXTERNAL: EXTERNAL_CACHE}
# Where a packet the daemon passed continues, per stage (same as a cache hit).
CACHE_NEXT = {STAGE_FROM_VM: L2_LOOKUP, STAGE_TO_VM: LOCAL_DELIVERY,
              STAGE_FROM_EXTERNAL: L2_LOOKUP}
STEERING_TABLES = {STAGE_FROM_VM: FROM_VM_STEERING, STAGE_TO_VM: TO_VM_STEERING}

# Header fields a daemon cache entry may rewrite (NAT, load balancer).
DAEMON_REWRITE_FIELDS = frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst",
                                   "tcp_src", "tcp_dst", "udp_src", "udp_dst"})

# Table ids kept free for later stages.
GAPS = (
    ("EXTERNAL_STAGES", range(4, 10),
     "from-external direction: after EXTERNAL_CACHE, before FROM_VM_STEERING"),
    ("FROM_VM_STAGES", range(12, 20),
     "from-VM direction: after FROM_VM_CACHE, before L2_LOOKUP"),
    ("TO_VM_STAGES", range(33, 40),
     "to-VM direction: after TO_VM_RETURN, before LOCAL_DELIVERY"),
)

_INSTRUCTION_ORDER = ("apply", "write_metadata", "goto")
_ACTIONS = {"output": 2, "set_field": 3, "push_vlan": 2, "pop_vlan": 1}


def check_flow(flow, owner=COOKIE):
    """Assert that ``flow`` fits the declared pipeline; return it unchanged.

    ``owner`` is the cookie prefix of whoever installs it: ``COOKIE`` for the
    controller, ``DAEMON_COOKIE`` for the middlebox daemon's cache entries
    (in the CACHE tables: header rewrites, then goto the stage's next table
    or, from FROM_VM_CACHE, EXTERNAL_OUT; or drop) and reply catchers (in the
    STEERING tables: set REG_SLICE, goto the stage's cache table).
    """
    table = BY_ID.get(flow.table)
    assert table is not None, f"flow in undeclared table {flow.table}: {flow}"
    assert (flow.cookie & COOKIE_MASK) == owner, f"flow without its owner's cookie: {flow}"
    assert owner in table.owners, f"{table.name} takes no flows of owner {owner:#x}: {flow}"
    names = [name for name, _ in flow.match]
    assert names == sorted(set(names)), f"match not canonical: {flow}"
    undeclared = set(names) - table.match_fields
    assert not undeclared, f"{table.name} may not match {sorted(undeclared)}: {flow}"
    for name, value in flow.match:
        if isinstance(value, tuple) and isinstance(value[0], int):
            assert (value[0] & ~value[1]) == 0, f"{name} has bits outside its mask: {flow}"
    kinds = [inst[0] for inst in flow.instructions]
    assert all(k in _INSTRUCTION_ORDER for k in kinds), f"unknown instruction: {flow}"
    assert kinds == sorted(set(kinds), key=_INSTRUCTION_ORDER.index), \
        f"instructions out of OpenFlow order: {flow}"
    for inst in flow.instructions:
        if inst[0] == "apply":
            assert inst[1], f"empty apply-actions: {flow}"
            for action in inst[1]:
                assert _ACTIONS.get(action[0]) == len(action), f"bad action {action}: {flow}"
        elif inst[0] == "write_metadata":
            assert (inst[1] & ~inst[2]) == 0, f"metadata bits outside mask: {flow}"
        elif inst[0] == "goto":
            target = BY_ID.get(inst[1])
            assert target is not None and target.name in table.next_tables, \
                f"{table.name} may not goto table {inst[1]}: {flow}"
    if owner == DAEMON_COOKIE:
        _check_daemon_flow(table, flow)
    return flow


def _check_daemon_flow(table, flow):
    """The daemon writes only cache entries and reply catchers."""
    actions = [a for inst in flow.instructions if inst[0] == "apply" for a in inst[1]]
    gotos = [inst[1] for inst in flow.instructions if inst[0] == "goto"]
    assert "write_metadata" not in [inst[0] for inst in flow.instructions], \
        f"the daemon may not write metadata: {flow}"
    assert all(a[0] == "set_field" for a in actions), \
        f"the daemon's flows may only rewrite fields: {flow}"
    stage = next((s for s, t in STEERING_TABLES.items() if t is table), None)
    if stage is not None:
        assert flow.priority == PRIO_STEER_CATCHER, f"reply catcher priority: {flow}"
        assert [a[1] for a in actions] == [REG_SLICE], f"a reply catcher sets {REG_SLICE}: {flow}"
        assert gotos == [CACHE_TABLES[stage].table_id], \
            f"a reply catcher goes to its stage's cache table: {flow}"
        return
    stage = next(s for s, t in CACHE_TABLES.items() if t is table)
    rewritable = DAEMON_REWRITE_FIELDS
    if table is EXTERNAL_CACHE:
        rewritable = rewritable | {REG_FROM_TUNNEL, "in_port"}     # a SNAT forwarder
    bad = {a[1] for a in actions} - rewritable
    assert not bad, f"the daemon may not rewrite {sorted(bad)}: {flow}"
    allowed = {CACHE_NEXT[stage].table_id}
    if stage == STAGE_FROM_VM:
        allowed.add(EXTERNAL_OUT.table_id)
    assert not gotos or gotos[0] in allowed, f"cache entry goes to the wrong table: {flow}"
    assert gotos or not actions, f"a dropping cache entry rewrites nothing: {flow}"
