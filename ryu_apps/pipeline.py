"""The br-int OpenFlow pipeline of an mbx host, declared as data.

This module is the one place that says which tables exist, what each one
does, which fields its flows may match and which tables it may jump to.
``check_flow`` holds every computed flow to that declaration, so a pipeline
mistake fails in a unit test instead of on a switch.  docs/pipeline.md
describes the same pipeline for people.

Two owners share br-int.  The controller (cookie ``COOKIE``) classifies,
steers, switches and tunnels.  Each host's middlebox daemon (cookie
``DAEMON_COOKIE``) owns the *service stages*: the tables where the switch's
conntrack is the connection cache, the firewall rules compiled to flows,
the load balancer's groups and NAT (``middlebox.dataplane``).  A steered
packet enters a stage at its CT table and leaves it to the table the
controller named (``STAGE_NEXT``).

Packet path::

    CLASSIFY ──(from a VM)──> GATEWAY ──(not answered)──> FROM_VM_STEERING
    FROM_VM_STEERING ──(selected)──> FROM_VM_CT .. FROM_VM_SNAT_STATE ──> L2_LOOKUP
    FROM_VM_STEERING ──(not selected)──> L2_LOOKUP
    CLASSIFY ──(from the uplink: IPv4)──> EXTERNAL_IN ──> EXTERNAL_CT .. EXTERNAL_ROUTE
    EXTERNAL_IN ──(an address/port block of another host)──> tunnel
    CLASSIFY ──(back from the middlebox port)──> the stage's CT/RESUME table, or L2_LOOKUP
    L2_LOOKUP ──> tunnel / EXTERNAL_OUT / TO_VM_STEERING / LOCAL_DELIVERY
    TO_VM_STEERING ──(selected)──> TO_VM_CT .. TO_VM_COMMIT ──> LOCAL_DELIVERY
    TO_VM_RETURN ──> TO_VM_RESUME (a packet the daemon gave back at the to-VM stage)

The daemon is asked only when the switch cannot decide alone (a reject to
answer, a round-robin or least-connections backend to pick, a VM whose
state is arriving, a check mode): such a packet leaves on the middlebox
port with an 802.1Q tag (VID = slice tag, PCP = what for, ``TO_SERVICE``)
and, when the daemon passes it, comes back tagged (PCP = ``FROM_SERVICE``).
"""

from dataclasses import dataclass
from typing import FrozenSet, Tuple

# Every flow mbx's controller installs carries this cookie in the bits of
# COOKIE_MASK.  The controller reads back and deletes only flows with this
# cookie, so another daemon using a different value in those bits can share
# br-int without either removing the other's flows.
COOKIE = 0x4D42580000000000          # "MBX" in the top bytes
COOKIE_MASK = 0xFFFFFF0000000000
# The middlebox daemon's flows (the service stages) carry this cookie in the
# same bits ("MBD"); the rest of their cookie is the daemon's own
# (``middlebox.dataplane``: slice tag, flow kind, index).
DAEMON_COOKIE = 0x4D42440000000000

# Registers (all start at 0 when a packet enters the pipeline).
REG_FROM_TUNNEL = "reg0"   # 1 if the packet arrived on the tunnel port (or is
                           # an external packet being handled), else 0
REG_OUT_PORT = "reg1"      # OpenFlow port LOCAL_DELIVERY outputs to, or OUT_PORT_FLOOD
REG_IN_PORT = "reg2"       # OpenFlow port the packet entered br-int on
REG_SKIP_TO_VM = "reg3"    # 1: the packet was already judged (from outside by
                           # its DNAT, or answered by the daemon):
                           # TO_VM_STEERING sends it straight on
REG_SLICE = "reg4"         # slice tag chosen by steering, read by the service stages
REG_ZONE = "reg5"          # service stages: the conntrack zone of the stage's VM
REG_SERVICE = "reg6"       # service stages: bits 0, 3, 4 (RESUMED, per stage)
                           # the daemon has seen this packet at that stage;
                           # bit 1 (PARTNER) evaluate the other local VM's
                           # rules; bit 2 (NATTED) the check modes' second
                           # conntrack pass (with NAT) is done; bit 5
                           # (CAUGHT) steered by a reply catcher
REG_SCRATCH = "reg7"       # service stages: the DNAT mapping or SNAT rule in use
FROM_TUNNEL = 1
SKIP_TO_VM = 1
PARTNER = 2                # REG_SERVICE bit
NATTED = 4                 # REG_SERVICE bit
CAUGHT = 0x20              # REG_SERVICE bit: steered by a reply catcher, not a
                           # policy: a packet of no tracked connection goes on
                           # as if it had not been steered
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

# The middlebox port: one per host on br-int (found by its role,
# mbxmodel.network.MIDDLEBOX_ROLE).  Packets to and from the daemon carry an
# 802.1Q tag: VID = slice tag (1..4094), PCP = why (below).
MIDDLEBOX_PORT = "mbx-mb"
# The uplink to the external network: one per host on br-int (found by its
# role, mbxmodel.network.UPLINK_ROLE; the lab names it UPLINK_PORT).
UPLINK_PORT = "mbx-uplink"
# The stages of a connection's path through a host.
STAGE_FROM_VM = 0          # checked on the way out of the sending VM
STAGE_TO_VM = 1            # checked on the way into the receiving VM
STAGE_FROM_EXTERNAL = 2    # arrived from the external network for an
                           # external address this host owns
# REG_SERVICE bit, per stage: the daemon gave this packet back at that
# stage: do not send it there again (a stage's bit never blocks another's).
RESUMED = {STAGE_FROM_VM: 0x01, STAGE_TO_VM: 0x08, STAGE_FROM_EXTERNAL: 0x10}
# PCP of a frame the switch sends to the daemon (TO_SERVICE):
#   0, 1, 2  the stage asks the daemon to decide (a reject to answer, a
#            backend to pick, a VM whose state is arriving); in path
#   3        a reply to the daemon's health-check probe (never comes back)
#   4, 5, 6  CHECK_BASE + stage: a check mode's packet of an established
#            connection; in path
#   7        COPY: a copy (IDS, relay); the original went on
STAGE_PROBE = 3
CHECK_BASE = 4
COPY = 7
# PCP of a frame the daemon sends to the switch (FROM_SERVICE):
#   0, 1, 2  resume the stage (conntrack is looked up again; the daemon is
#            not asked about it again at that stage: REG_SERVICE, RESUMED)
#   3        DELIVER: a packet the daemon made (a reject's answer, a health
#            probe): switched as judged, never checked again
DELIVER = 3
MAX_SLICE_TAG = 2047
# VID bit of a CHECK frame (TO_SERVICE): the connection was opened by the
# peer, not by the stage's VM (slice tags stay below it).
VID_ORIGIN_IN = 0x800
OFPP_IN_PORT = 0xFFFFFFF8  # output back out of the ingress port
VLAN_PRESENT = 0x1000      # OFPVID_PRESENT
ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x001, 0x002, 0x004, 0x010

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
PRIO_EXTERNAL_ICMP = 150    # EXTERNAL_IN: ICMP to an SNAT address (every serving host)
PRIO_EXTERNAL_REDIRECTED = 50   # EXTERNAL_IN: sent here by another host: conntrack decides
PRIO_EXTERNAL_OUT = 100     # EXTERNAL_OUT: the one flow
PRIO_STEER_BASE = 1000      # STEERING: policy priority p -> 1000 + 2p
PRIO_STEER_CATCHER = 500    # STEERING: replies of LB backends and DNAT'd VMs that
                            # no policy selects (REG_SERVICE bit CAUGHT)
PRIO_STEER_MULTICAST = 65000  # FROM_VM_STEERING: broadcast/multicast never steered
PRIO_STEER_JUDGED = 65000   # TO_VM_STEERING: reg3=1 -> LOCAL_DELIVERY
PRIO_STEER_DEFAULT = 0      # STEERING: not selected -> go on (table-miss)


@dataclass(frozen=True)
class Table:
    name: str
    table_id: int
    description: str
    match_fields: FrozenSet[str]
    next_tables: Tuple[str, ...] = ()
    owners: FrozenSet[int] = frozenset({COOKIE})   # who may install flows here


_L4_FIELDS = frozenset({"ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst",
                        "udp_src", "udp_dst", "icmpv4_type", "icmpv4_code"})
_DAEMON = frozenset({DAEMON_COOKIE})
_BOTH = frozenset({COOKIE, DAEMON_COOKIE})
# What a service-stage flow may match.
_STAGE_FIELDS = frozenset({REG_SLICE, REG_ZONE, REG_SERVICE, REG_SCRATCH, REG_FROM_TUNNEL,
                           "eth_type", "eth_src", "eth_dst", "ct_state", "ct_mark",
                           "ct_label", "conj_id", "tcp_flags"}) | _L4_FIELDS

CLASSIFY = Table(
    "CLASSIFY", 0,
    "Admit packets from VM ports (port security on eth_src), from the "
    "tunnel (known VNI only; to ROUTER_MAC: a redirected external packet), "
    "from the uplink (ARP, IPv4) and back from the middlebox port (known "
    "slice tag only); set the logical switch in metadata.",
    frozenset({"in_port", "eth_src", "eth_dst", "eth_type", "tunnel_id", "vlan_vid",
               "vlan_pcp"}),
    ("GATEWAY", "EXTERNAL_IN", "EXTERNAL_CT", "FROM_VM_CT", "L2_LOOKUP", "TO_VM_RETURN"))
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
    "logical switch and goes to EXTERNAL_CT; one of another host goes into "
    "the tunnel to that host; ICMP to an SNAT address goes to every host "
    "serving it; the rest is dropped.",
    frozenset({REG_FROM_TUNNEL, "eth_type", "ip_proto", "ipv4_dst", "tcp_dst", "udp_dst"}),
    ("EXTERNAL_CT",))
EXTERNAL_CT = Table(
    "EXTERNAL_CT", 3,
    "Service stage from the outside: an SNAT address is looked up in the "
    "SNAT rule's conntrack zone, a DNAT address in the zone of its VM "
    "(un-NAT of established connections); the reply of a connection whose "
    "VM moved away is forwarded to its new host untranslated.",
    _STAGE_FIELDS | {"in_port"},
    ("EXTERNAL_SNAT_STATE", "EXTERNAL_DNAT_STATE"), _DAEMON)
EXTERNAL_SNAT_STATE = Table(
    "EXTERNAL_SNAT_STATE", 4,
    "A reply to an SNAT address: established or related (already "
    "translated back to the VM) goes on to EXTERNAL_ROUTE; anything else "
    "is dropped (or, while a VM's state is arriving, held by the daemon).  "
    "ICMP to an external address is looked up in each zone that may hold "
    "its connection in turn (back into this table), a new echo to a DNAT "
    "address that maps every port goes on to EXTERNAL_DNAT_STATE.",
    _STAGE_FIELDS, ("EXTERNAL_SNAT_STATE", "EXTERNAL_DNAT_STATE", "EXTERNAL_ROUTE"),
    _DAEMON)
EXTERNAL_DNAT_STATE = Table(
    "EXTERNAL_DNAT_STATE", 5,
    "A packet to a DNAT address: established or related goes on to "
    "EXTERNAL_ROUTE; a new connection to the rules.",
    _STAGE_FIELDS, ("EXTERNAL_RULES", "EXTERNAL_ROUTE"), _DAEMON)
EXTERNAL_RULES = Table(
    "EXTERNAL_RULES", 6,
    "The VM's to-vm rules, applied to the connection as the VM will see it "
    "(after the DNAT); allow goes on to EXTERNAL_COMMIT.",
    _STAGE_FIELDS, ("EXTERNAL_COMMIT",), _DAEMON)
EXTERNAL_COMMIT = Table(
    "EXTERNAL_COMMIT", 7,
    "Commit the new connection in the VM's zone with its DNAT.",
    _STAGE_FIELDS, ("EXTERNAL_ROUTE",), _DAEMON)
EXTERNAL_ROUTE = Table(
    "EXTERNAL_ROUTE", 8,
    "Address the translated packet to its VM (eth_dst) from ROUTER_MAC and "
    "go on to L2_LOOKUP.",
    _STAGE_FIELDS, ("L2_LOOKUP",), _DAEMON)
FROM_VM_STEERING = Table(
    "FROM_VM_STEERING", 10,
    "Steering policies for packets sent by a local VM: selected IPv4 "
    "packets get their slice tag in REG_SLICE and go to FROM_VM_CT; "
    "the rest go on to L2_LOOKUP.  Replies of DNAT'd VMs are steered here.",
    frozenset({"metadata", "eth_type", "eth_dst"}) | _L4_FIELDS,
    ("FROM_VM_CT", "L2_LOOKUP"))
FROM_VM_CT = Table(
    "FROM_VM_CT", 11,
    "Service stage out of a VM: its conntrack zone into REG_ZONE, then "
    "conntrack (with NAT) in that zone.",
    _STAGE_FIELDS, ("FROM_VM_STATE",), _DAEMON)
FROM_VM_STATE = Table(
    "FROM_VM_STATE", 12,
    "By conntrack state: invalid is dropped; established and related go on "
    "to FROM_VM_ROUTE (check modes: through or past the daemon, then "
    "conntrack again, with NAT, back into this table); new goes to the "
    "rules (only a TCP SYN, UDP or ICMP may open a connection).",
    _STAGE_FIELDS, ("FROM_VM_STATE", "FROM_VM_RULES", "FROM_VM_COMMIT", "FROM_VM_ROUTE",
                    "L2_LOOKUP"),
    _DAEMON)
FROM_VM_RULES = Table(
    "FROM_VM_RULES", 13,
    "The slice's from-vm rules, compiled: allow goes on, deny drops, reject "
    "goes to the daemon.",
    _STAGE_FIELDS, ("FROM_VM_PARTNER", "FROM_VM_COMMIT"), _DAEMON)
FROM_VM_PARTNER = Table(
    "FROM_VM_PARTNER", 14,
    "same-host=source: the to-vm rules of the receiving VM on this host.",
    _STAGE_FIELDS, ("FROM_VM_COMMIT",), _DAEMON)
FROM_VM_COMMIT = Table(
    "FROM_VM_COMMIT", 15,
    "Commit the connection in the VM's zone (a VIP: through its select "
    "group, with its DNAT), slice, rule and origin in ct_mark/ct_label.",
    _STAGE_FIELDS, ("FROM_VM_ROUTE",), _DAEMON)
FROM_VM_ROUTE = Table(
    "FROM_VM_ROUTE", 16,
    "After the VM's zone: a load-balanced packet gets its backend's MAC; a "
    "packet to the outside under an SNAT rule goes to FROM_VM_SNAT; the "
    "rest to L2_LOOKUP.",
    _STAGE_FIELDS, ("FROM_VM_SNAT", "L2_LOOKUP"), _DAEMON)
FROM_VM_SNAT = Table(
    "FROM_VM_SNAT", 17,
    "Conntrack (with NAT) in the SNAT rule's zone.",
    _STAGE_FIELDS, ("FROM_VM_SNAT_STATE",), _DAEMON)
FROM_VM_SNAT_STATE = Table(
    "FROM_VM_SNAT_STATE", 18,
    "A new connection is committed with a port of this host's block; an "
    "established one goes on to L2_LOOKUP (which sends it out of the "
    "uplink) only if it is translated.",
    _STAGE_FIELDS, ("FROM_VM_SNAT_CHECK", "L2_LOOKUP"), _DAEMON)
FROM_VM_SNAT_CHECK = Table(
    "FROM_VM_SNAT_CHECK", 19,
    "After the commit: on to L2_LOOKUP only if the NAT found a free "
    "address and port (never the VM's own address to the outside).",
    _STAGE_FIELDS, ("L2_LOOKUP",), _DAEMON)
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
    "Steering policies for packets about to be delivered to a local VM; "
    "replies of load-balancer backends are steered here.",
    frozenset({"metadata", "eth_type", REG_FROM_TUNNEL, REG_SKIP_TO_VM}) | _L4_FIELDS,
    ("TO_VM_CT", "LOCAL_DELIVERY"))
TO_VM_CT = Table(
    "TO_VM_CT", 31,
    "Service stage into a VM: its conntrack zone into REG_ZONE, then "
    "conntrack (with NAT: un-DNAT of load-balancer replies) in that zone.",
    _STAGE_FIELDS, ("TO_VM_STATE",), _DAEMON)
TO_VM_RETURN = Table(
    "TO_VM_RETURN", 32,
    "A packet the daemon gave back at the to-VM stage: look up its local VM "
    "port again (registers do not survive the trip through the daemon).",
    frozenset({"metadata", "eth_dst"}),
    ("TO_VM_RESUME",))
TO_VM_RESUME = Table(
    "TO_VM_RESUME", 33,
    "As TO_VM_CT, for a packet the daemon gave back.",
    _STAGE_FIELDS, ("TO_VM_STATE",), _DAEMON)
TO_VM_STATE = Table(
    "TO_VM_STATE", 34,
    "As FROM_VM_STATE, into the VM: established and related are delivered; "
    "new goes to the rules (IDS: a copy of every new connection and RST).",
    _STAGE_FIELDS, ("TO_VM_STATE", "TO_VM_RULES", "TO_VM_COMMIT", "LOCAL_DELIVERY"),
    _DAEMON)
TO_VM_RULES = Table(
    "TO_VM_RULES", 35,
    "The slice's to-vm rules, compiled.",
    _STAGE_FIELDS, ("TO_VM_PARTNER", "TO_VM_COMMIT"), _DAEMON)
TO_VM_PARTNER = Table(
    "TO_VM_PARTNER", 36,
    "same-host=destination: the from-vm rules of the sending VM on this host.",
    _STAGE_FIELDS, ("TO_VM_COMMIT",), _DAEMON)
TO_VM_COMMIT = Table(
    "TO_VM_COMMIT", 37,
    "Commit the connection in the VM's zone; deliver.",
    _STAGE_FIELDS, ("LOCAL_DELIVERY",), _DAEMON)
LOCAL_DELIVERY = Table(
    "LOCAL_DELIVERY", 40,
    "Output to the local VM port(s) chosen in the output-port register.",
    frozenset({"metadata", REG_OUT_PORT, REG_IN_PORT}))
EXTERNAL_OUT = Table(
    "EXTERNAL_OUT", 41,
    "A translated packet to the external network leaves by this host's "
    "uplink, from the uplink's MAC to the external gateway's MAC.",
    frozenset())

TABLES = (CLASSIFY, GATEWAY, EXTERNAL_IN, EXTERNAL_CT, EXTERNAL_SNAT_STATE,
          EXTERNAL_DNAT_STATE, EXTERNAL_RULES, EXTERNAL_COMMIT, EXTERNAL_ROUTE,
          FROM_VM_STEERING, FROM_VM_CT, FROM_VM_STATE, FROM_VM_RULES, FROM_VM_PARTNER,
          FROM_VM_COMMIT, FROM_VM_ROUTE, FROM_VM_SNAT, FROM_VM_SNAT_STATE,
          FROM_VM_SNAT_CHECK, L2_LOOKUP, TO_VM_STEERING, TO_VM_CT, TO_VM_RETURN, TO_VM_RESUME, TO_VM_STATE,
          TO_VM_RULES, TO_VM_PARTNER, TO_VM_COMMIT, LOCAL_DELIVERY, EXTERNAL_OUT)
BY_NAME = {t.name: t for t in TABLES}
BY_ID = {t.table_id: t for t in TABLES}
# The first table of each stage (where steering sends a packet) and where
# the stage hands it back to the controller's tables.
STAGE_TABLES = {STAGE_FROM_VM: FROM_VM_CT, STAGE_TO_VM: TO_VM_CT,
                STAGE_FROM_EXTERNAL: EXTERNAL_CT}
STAGE_NEXT = {STAGE_FROM_VM: L2_LOOKUP, STAGE_TO_VM: LOCAL_DELIVERY,
              STAGE_FROM_EXTERNAL: L2_LOOKUP}
STEERING_TABLES = {STAGE_FROM_VM: FROM_VM_STEERING, STAGE_TO_VM: TO_VM_STEERING}

# Table ids kept free for later stages.
GAPS = (
    ("EXTERNAL_STAGES", range(9, 10),
     "from-external direction: after EXTERNAL_ROUTE, before FROM_VM_STEERING"),
    ("TO_VM_STAGES", range(38, 40),
     "to-VM direction: after TO_VM_COMMIT, before LOCAL_DELIVERY"),
)

_INSTRUCTION_ORDER = ("meter", "apply", "write_metadata", "goto")
_ACTIONS = {"output": 2, "set_field": 3, "push_vlan": 2, "pop_vlan": 1, "ct": 6,
            "group": 2, "conjunction": 4, "load": 5, "move": 6, "resubmit": 2,
            "ct_clear": 1}
# Actions only the daemon's service stages use.
_DAEMON_ACTIONS = frozenset({"ct", "group", "conjunction", "load", "move", "resubmit",
                             "ct_clear"})


def check_flow(flow, owner=COOKIE):
    """Assert that ``flow`` fits the declared pipeline; return it unchanged.

    ``owner`` is the cookie prefix of whoever installs it: ``COOKIE`` for the
    controller, ``DAEMON_COOKIE`` for the middlebox daemon (its service
    stages only).  A conntrack action that recirculates (``table``) or a
    resubmit counts as a jump: it must target a declared next table.
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
                _check_action(table, flow, owner, action)
        elif inst[0] == "write_metadata":
            assert owner == COOKIE, f"the daemon may not write metadata: {flow}"
            assert (inst[1] & ~inst[2]) == 0, f"metadata bits outside mask: {flow}"
        elif inst[0] == "goto":
            _check_jump(table, flow, inst[1], goto=True)
        elif inst[0] == "meter":
            assert owner == DAEMON_COOKIE, f"only the service stages use meters: {flow}"
    return flow


def _check_action(table, flow, owner, action):
    assert _ACTIONS.get(action[0]) == len(action), f"bad action {action}: {flow}"
    if action[0] in _DAEMON_ACTIONS:
        assert owner == DAEMON_COOKIE, f"only the service stages use {action[0]}: {flow}"
    if action[0] == "ct" and action[3] is not None:
        _check_jump(table, flow, action[3])
    elif action[0] == "resubmit":
        _check_jump(table, flow, action[1])


def _check_jump(table, flow, target_id, goto=False):
    assert not (goto and target_id == table.table_id), \
        f"{table.name} may not goto itself (only ct recirculates there): {flow}"
    target = BY_ID.get(target_id)
    assert target is not None and target.name in table.next_tables, \
        f"{table.name} may not go to table {target_id}: {flow}"


def check_group_actions(actions, table):
    """A select group's bucket runs in the table that names the group: its
    actions obey that table's contract (``check_flow``)."""
    for action in actions:
        assert _ACTIONS.get(action[0]) == len(action), f"bad bucket action {action}"
        if action[0] == "ct" and action[3] is not None:
            target = BY_ID.get(action[3])
            assert target is not None and target.name in table.next_tables, \
                f"a bucket of {table.name} may not go to table {action[3]}"
