"""The service stages of a host's br-int, compiled from its slices' config.

mbxd is the service; the switch is its engine.  This module (pure: no I/O,
no clock) turns what the daemon knows of its slices (``HostConfig``), the
conntrack zone of every local VM and of every SNAT rule, and the VMs whose
state is arriving into the flows and select groups of the service-stage
tables (``ryu_apps.pipeline``, docs/middlebox.md):

* a packet of an established or related connection is forwarded by the
  switch alone: conntrack (``ct(nat)`` in the VM's zone) finds it, and the
  rule tables never see it;
* a new connection meets the firewall rules, compiled to flows (tiers,
  priorities, address sets as conjunctive matches, port ranges as masks,
  the default action); allowed, it is committed with the slice, its origin
  and the deciding rule in ``ct_mark``/``ct_label``;
* a load-balancer VIP with a hash algorithm is a select group whose buckets
  commit with ``nat(dst=backend)``; round-robin and least-connections VIPs,
  rejects, VMs whose state is arriving and the check modes go to the daemon;
* SNAT commits in the SNAT rule's zone with a port of this host's block;
  DNAT commits in the VM's zone from the external stage.

``compile_host`` returns a ``Dataplane``: every flow (cookie
``DAEMON_COOKIE``, checked against the pipeline), every group, and the
cookies of the rule flows with what they decide (for decision counters).
"""

import ipaddress
import zlib
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from middlebox.rules import RuleSet
from ovsdb.errors import MbxError
from ovsdb.match import compile_match, openflow_dimensions, parse_match, port_masks
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow, Group, Meter, canon_match

# ct_state bits (Open vSwitch).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK, CT_SNAT, CT_DNAT = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# ct_mark of a committed connection.
MARK_TAG_MASK = 0x00000FFF      # the slice tag on this host
MARK_IN = 0x00001000            # origin: the peer opened it (else the VM)
MARK_BLOCKED = 0x00002000       # the service cut it: drop its packets
MARK_SERVICE = 0x00004000       # the service picked its backend (round-robin, ...)
MARK_COUNT_OFS, MARK_COUNT_BITS = 16, 8    # check mode every-nth: packets since a check
# ct_label: bits 0-31 the deciding rule (``rule_id``), 32-63 the service
# (``service_id``: VIP or NAT rule) of a translated connection.
LABEL_RULE_OFS, LABEL_SERVICE_OFS = 0, 32
REG_RULE = "reg8"               # the deciding rule's id, from rules to commit

CHECK_MODES = ("offload", "every-packet", "every-nth", "relay")
DEFAULT_CHECK_INTERVAL = 16
SAME_HOST_MODES = ("both", "source", "destination")
# Decided by the switch: a select group (Open vSwitch hashes the 5-tuple).
# The others (round-robin, least-connections, source-hash: a select group's
# hash fields need OpenFlow 1.5) are decided by the daemon at the first packet.
HASH_ALGORITHMS = ("hash",)
PARTNER = P.PARTNER
ICMP_SEARCH = 1 << 16           # REG_SCRATCH: looking ICMP up zone after zone

# Cookie: DAEMON_COOKIE | slice tag << 28 | kind << 20 | index.
TAG_SHIFT, KIND_SHIFT = 28, 20
INDEX_MASK = (1 << KIND_SHIFT) - 1
K_ZONE, K_STATE, K_RULE, K_CLAUSE, K_PARTNER, K_COMMIT, K_LB, K_ROUTE, K_SNAT, \
    K_DNAT, K_CHECK, K_COPY, K_HOLD, K_FORWARD, K_EXT_RULE, K_SNAT_ZONE, K_RULE_IN, \
    K_ICMP = range(1, 19)
DECISION_KINDS = (K_RULE, K_RULE_IN, K_EXT_RULE)
FORWARD_TAG = 0xFFF             # forwarders belong to no slice

# Priorities inside the service stages.
PRIO_CAUGHT = 310
PRIO_INVALID = 300
PRIO_BLOCKED = 290
PRIO_HOLD = 280
PRIO_BAD_OPEN = 270
PRIO_TRUSTED = 250
PRIO_RST_COPY = 220
PRIO_CHECK = 210
PRIO_EST = 200
PRIO_METERED = 110             # a local VM's new connection: through its meter
PRIO_NEW = 100
PRIO_RULE_BASE = 10             # a rule's flows: PRIO_RULE_BASE + its rank
PRIO_DEFAULT = 5                # the default action
PRIO_PASS = 1                   # "not for this table": go on
PRIO_FORWARD = 500


def rule_id(rule):
    """The 32-bit id of a rule in ct_label (0: the default action)."""
    if rule is None:
        return 0
    key = rule.uuid or "%s/%s/%s/%s" % (rule.direction, rule.priority, rule.tier, rule.match)
    return zlib.crc32(key.encode()) or 1


def service_id(key):
    return zlib.crc32(key.encode()) or 1


@dataclass(frozen=True)
class Decision:
    """What a rule flow (by cookie) decides, for the decision counters."""
    tag: int
    stage: int
    action: str                 # allow | deny | reject
    rule: str                   # rule uuid, or "default"


@dataclass
class Dataplane:
    flows: Tuple[Flow, ...] = ()
    groups: Tuple[Group, ...] = ()
    decisions: Dict[int, Decision] = field(default_factory=dict)
    errors: Tuple[str, ...] = ()
    meters: Tuple[Meter, ...] = ()


@dataclass(frozen=True)
class Forwarder:
    """The reply of a connection whose VM moved away, sent on untranslated to
    the VM's new host (its SNAT port is from this host's block)."""
    fid: int                    # 1..INDEX_MASK
    proto: int
    src: str                    # the outside peer
    sport: int
    dst: str                    # the SNAT address
    dport: int
    vni: int
    encap_ip: str               # the new host's tunnel address
    idle: int = 3600            # s without a packet before the switch drops it


@dataclass(frozen=True)
class HostPorts:
    middlebox: Optional[int] = None     # the middlebox port's OpenFlow number
    tunnel: Optional[int] = None        # the tunnel port's (forwarders)


def cookie(tag, kind, index=0):
    return P.DAEMON_COOKIE | tag << TAG_SHIFT | kind << KIND_SHIFT | (index & INDEX_MASK)


def compile_host(config, host, zones: Mapping[str, int], snat_zones: Mapping[str, int],
                 ports: HostPorts, holds=frozenset(), forwarders=(),
                 arrivals=False, new_conn_rate=None) -> Dataplane:
    """The service stages of every slice of ``config`` (a HostConfig).

    ``zones``: local VM name -> its conntrack zone; ``snat_zones``: SNAT
    rule uuid -> its zone (only rules this host has a port block of);
    ``holds``: names of VMs whose new connections go to the daemon (state
    arriving or fetched lazily); ``forwarders``: ``Forwarder`` values;
    ``arrivals``: a packet of a VM with no zone here goes to the daemon (a
    VM arriving: state migration is on), else it is dropped;
    ``new_conn_rate``: new connections a second each local VM may open (its
    from-VM stage sends them through a meter whose id is the VM's zone),
    None: no meter.
    """
    out = Dataplane()
    flows, groups, errors = [], [], []
    meters = {}
    for tag in sorted(config.slices or {}):
        s = _Slice(config.slices[tag], host, zones, snat_zones, ports, holds, arrivals,
                   new_conn_rate)
        s.build()
        flows += s.flows
        groups += s.groups
        out.decisions.update(s.decisions)
        errors += s.errors
        meters.update((m.meter_id, m) for m in s.meters)
    for fwd in forwarders:
        flows.append(_forwarder_flow(fwd, ports))
    flows = [f for f in flows if f is not None]
    for f in flows:
        P.check_flow(f, P.DAEMON_COOKIE)
    out.flows = tuple(_unique(flows))
    out.groups = tuple(groups)
    out.errors = tuple(errors)
    out.meters = tuple(meters[k] for k in sorted(meters))
    return out


def vm_meter(zone, rate):
    """The meter of the VM with conntrack zone ``zone``: ``rate`` new
    connections a second, a burst of one second's worth."""
    return Meter(zone, rate, rate)


def zones_in(flows, config):
    """The zones a previous daemon's flows name: {("vm", name) | ("snat",
    rule uuid): zone}, matched to ``config`` (a HostConfig) by the VM's MAC
    and the SNAT rule's external address."""
    by_mac, by_ext = {}, {}
    for s in ((config.slices or {}).values() if config is not None else ()):
        for vm in s.vms:
            by_mac[vm.mac.lower()] = vm.name
        for sv in s.services:
            for rule in sv.nat_rules:
                if rule.type == "snat":
                    for ip in rule.external_ips:
                        by_ext[ip] = rule.uuid
    out = {}
    for f in flows:
        kind = (f.cookie >> KIND_SHIFT) & 0xFF
        zone = f.cookie & INDEX_MASK
        match = f.match_dict()
        if kind == K_ZONE and f.table == P.FROM_VM_CT.table_id:
            name = by_mac.get(str(match.get("eth_src", "")).lower())
            if name is not None:
                out[("vm", name)] = zone
        elif kind == K_SNAT_ZONE:
            uuid = by_ext.get(match.get("ipv4_dst"))
            if uuid is not None:
                out[("snat", uuid)] = zone
    return out


def _unique(flows):
    seen = {}
    for f in flows:
        seen.setdefault(f.key, f)
    return seen.values()


def _forwarder_flow(fwd, ports):
    if ports.tunnel is None:
        return None
    l4 = {6: "tcp", 17: "udp"}.get(fwd.proto)
    if l4 is None:
        return None
    match = canon_match(eth_type=P.ETH_TYPE_IP, ip_proto=fwd.proto, ipv4_src=fwd.src,
                        ipv4_dst=fwd.dst, **{l4 + "_src": fwd.sport, l4 + "_dst": fwd.dport})
    actions = (("set_field", "in_port", 0), ("set_field", "tunnel_id", fwd.vni),
               ("set_field", "tun_ipv4_dst", fwd.encap_ip),
               ("set_field", "eth_dst", P.ROUTER_MAC), ("output", ports.tunnel))
    return Flow(P.EXTERNAL_CT.table_id, PRIO_FORWARD, match, (("apply", actions),),
                cookie(FORWARD_TAG, K_FORWARD, fwd.fid), idle_timeout=fwd.idle)


def _goto(table):
    return ("goto", table.table_id)


def _ct(commit, zone, table=None, nat=None, exec_=()):
    return ("ct", commit, zone, table.table_id if table is not None else None, nat,
            tuple(exec_))


def _load(reg, value, ofs=0, nbits=32):
    return ("load", reg, value, ofs, nbits)


def _ct_state(on, off=0):
    """ct_state match: bits ``on`` set, bits ``off`` clear, trk always set."""
    on |= CT_TRK
    return (on, on | off)


class _Slice:
    """The flows of one slice (one chain on this host)."""

    def __init__(self, cfg, host, zones, snat_zones, ports, holds, arrivals=False,
                 new_conn_rate=None):
        self.cfg = cfg
        self.arrivals = arrivals
        self.new_conn_rate = new_conn_rate
        self.meters = []
        self.tag = cfg.tag
        self.host = host
        self.ports = ports
        self.flows, self.groups, self.errors = [], [], []
        self.decisions = {}
        options = dict(cfg.options or {})
        self.check = options.get("check", "offload")
        if self.check not in CHECK_MODES:
            self.errors.append('option check="%s" is not one of %s: using offload'
                               % (self.check, ", ".join(CHECK_MODES)))
            self.check = "offload"
        self.interval = DEFAULT_CHECK_INTERVAL
        if "check-interval" in options:
            try:
                self.interval = int(options["check-interval"])
                if not 2 <= self.interval <= (1 << MARK_COUNT_BITS) - 1:
                    raise ValueError
            except ValueError:
                self.errors.append('option check-interval="%s" is not 2..%d: using %d'
                                   % (options["check-interval"], (1 << MARK_COUNT_BITS) - 1,
                                      DEFAULT_CHECK_INTERVAL))
                self.interval = DEFAULT_CHECK_INTERVAL
        self.same_host = options.get("same-host", "both")
        if self.same_host not in SAME_HOST_MODES:
            self.same_host = "both"     # RuleSet users report it (core)
        self.rules = RuleSet(cfg.rules, cfg.address_sets or {}, cfg.default_action,
                             options.get("tier-order"))
        self.errors += self.rules.errors
        self.sets = dict(cfg.address_sets or {})
        # The VMs with a zone here: bound here, or arriving.
        self.local = [vm for vm in cfg.vms if vm.name in zones]
        self.zones = {vm.name: zones[vm.name] for vm in self.local}
        self.holding = [vm for vm in self.local if vm.name in holds]
        types = [sv.type for sv in cfg.services]
        self.ids = "ids" in types
        self.vips = [v for sv in cfg.services if sv.type == "lb" for v in sv.vips]
        self.lb_service = {v.uuid: sv.name for sv in cfg.services if sv.type == "lb"
                           for v in sv.vips}
        self.snat = [r for sv in cfg.services if sv.type == "nat" for r in sv.nat_rules
                     if r.type == "snat"]
        self.dnat = [r for sv in cfg.services if sv.type == "nat" for r in sv.nat_rules
                     if r.type == "dnat" and r.external_ips]
        self.snat_zones = snat_zones
        self.next_conj = 0
        self.all_ports = set()          # DNAT mappings of rules that map every port

    # ------------------------------------------------------------ helpers
    def flow(self, table, prio, kind, instructions, index=0, **match):
        # Steering selects IPv4 only; conntrack needs the match to say so.
        match.setdefault("eth_type", P.ETH_TYPE_IP)
        f = Flow(table.table_id, prio, canon_match(**{P.REG_SLICE: self.tag}, **match),
                 tuple(instructions), cookie(self.tag, kind, index))
        self.flows.append(f)
        return f

    def to_service(self, pcp, copy=False, origin_in=False):
        """Actions that send the packet to the daemon (VID = tag, PCP =
        ``pcp``; a check's VID also says who opened the connection); a copy
        pops the tag again so the original goes on.  Without a middlebox
        port: nothing (the packet is dropped, or the copy is skipped)."""
        if self.ports.middlebox is None:
            return ()
        vid = P.VLAN_PRESENT | self.tag | (P.VID_ORIGIN_IN if origin_in else 0)
        # A packet the daemon gave back entered on the middlebox port, and a
        # switch never sends a packet out of its ingress port: forget it
        # (nothing after classification looks at in_port).
        actions = (("set_field", "in_port", 0),
                   ("push_vlan", 0x8100), ("set_field", "vlan_vid", vid),
                   ("set_field", "vlan_pcp", pcp), ("output", self.ports.middlebox))
        return actions + ((("pop_vlan",),) if copy else ())

    def apply_goto(self, actions, table):
        insts = []
        if actions:
            insts.append(("apply", tuple(actions)))
        if table is not None:
            insts.append(_goto(table))
        return insts

    def commit_exec(self, origin_in, service=0):
        mark = self.tag | (MARK_IN if origin_in else 0)
        out = [("set_field", "ct_mark", mark),
               ("move", REG_RULE, 0, "ct_label", LABEL_RULE_OFS, 32)]
        if service:
            out.append(("load", "ct_label", service, LABEL_SERVICE_OFS, 32))
        return out

    # ------------------------------------------------------------ build
    def build(self):
        self.zone_flows()
        self.state_flows(P.STAGE_FROM_VM)
        self.state_flows(P.STAGE_TO_VM)
        self.rule_flows(P.FROM_VM_RULES, "from-vm", P.STAGE_FROM_VM,
                        P.FROM_VM_PARTNER if self.same_host == "source" else P.FROM_VM_COMMIT)
        self.rule_flows(P.TO_VM_RULES, "to-vm", P.STAGE_TO_VM,
                        P.TO_VM_PARTNER if self.same_host == "destination" else P.TO_VM_COMMIT,
                        kind=K_RULE_IN)
        if self.same_host == "source":
            self.rule_flows(P.FROM_VM_PARTNER, "to-vm", None, P.FROM_VM_COMMIT, partner=True)
        if self.same_host == "destination":
            self.rule_flows(P.TO_VM_PARTNER, "from-vm", None, P.TO_VM_COMMIT, partner=True,
                            kind=K_CLAUSE)
        self.commit_flows()
        self.route_flows()
        self.snat_flows()
        self.external_flows()

    def zone_flows(self):
        # A check mode looks the connection up untranslated first (the
        # daemon sees, and can cut, the packet as the VM sent or will
        # receive it), then again with NAT (``established``).
        nat = ("nat",) if self.check == "offload" else None
        for vm in self.local:
            zone = self.zones[vm.name]
            for table, nxt, side in ((P.FROM_VM_CT, P.FROM_VM_STATE, "eth_src"),
                                     (P.TO_VM_CT, P.TO_VM_STATE, "eth_dst"),
                                     (P.TO_VM_RESUME, P.TO_VM_STATE, "eth_dst")):
                # A stage starts with its own PARTNER and NATTED bits clear
                # (the packet may come from another stage of this host).
                acts = (_load(P.REG_ZONE, zone, 0, 16), _load(P.REG_SERVICE, 0, 1, 2),
                        _ct(False, P.REG_ZONE, nxt, nat))
                self.flow(table, PRIO_NEW, K_ZONE, [("apply", acts)],
                          index=zone, **{side: vm.mac})
        if self.arrivals:
            # A VM of the slice with no zone here: it is arriving (its port
            # came before the daemon knew): the daemon holds its packets
            # until its zone is in place.
            for table, stage in ((P.FROM_VM_CT, P.STAGE_FROM_VM),
                                 (P.TO_VM_CT, P.STAGE_TO_VM)):
                self.flow(table, PRIO_PASS, K_HOLD,
                          self.apply_goto(self.to_service(stage), None))

    def state_flows(self, stage):
        """FROM_VM_STATE / TO_VM_STATE."""
        from_vm = stage == P.STAGE_FROM_VM
        table = P.FROM_VM_STATE if from_vm else P.TO_VM_STATE
        rules = P.FROM_VM_RULES if from_vm else P.TO_VM_RULES
        commit = P.FROM_VM_COMMIT if from_vm else P.TO_VM_COMMIT
        done = P.FROM_VM_ROUTE if from_vm else P.LOCAL_DELIVERY
        me = "eth_src" if from_vm else "eth_dst"
        resumed = (P.RESUMED[stage], P.RESUMED[stage])
        fresh = (0, P.RESUMED[stage])
        self.flow(table, PRIO_INVALID, K_STATE, [], ct_state=_ct_state(CT_INV))
        # Steered by a reply catcher (no policy selects it) and of no
        # translated connection: on, as if it had not been steered.
        unsteered = P.L2_LOOKUP if from_vm else P.LOCAL_DELIVERY
        for state in (CT_NEW, CT_INV):
            self.flow(table, PRIO_CAUGHT, K_STATE, [_goto(unsteered)],
                      ct_state=_ct_state(state), **{P.REG_SERVICE: (P.CAUGHT, P.CAUGHT)})
        self.flow(table, PRIO_BLOCKED, K_STATE, [], ct_state=_ct_state(CT_EST),
                  ct_mark=(MARK_BLOCKED, MARK_BLOCKED))
        for vm in self.holding:
            self.flow(table, PRIO_HOLD, K_HOLD, self.apply_goto(self.to_service(stage), None),
                      ct_state=_ct_state(CT_NEW), **{me: vm.mac, P.REG_SERVICE: fresh})
        # Only a TCP SYN (without ACK) opens a connection.
        for flags in ((0, P.TCP_SYN), (P.TCP_SYN | P.TCP_ACK, P.TCP_SYN | P.TCP_ACK)):
            self.flow(table, PRIO_BAD_OPEN, K_STATE, [], ct_state=_ct_state(CT_NEW),
                      eth_type=P.ETH_TYPE_IP, ip_proto=6, tcp_flags=flags)
        copy_new = self.to_service(P.COPY, copy=True) if self.ids and not from_vm else ()
        # same-host: a connection between two local VMs of the slice is
        # judged at one stage; the other commits it without the rules.
        trusted = (self.same_host == "destination" and from_vm) or \
                  (self.same_host == "source" and not from_vm)
        partner = (self.same_host == "source" and from_vm) or \
                  (self.same_host == "destination" and not from_vm)
        for vm in self.local:
            # The other VM by its address (a packet to ROUTER_MAC with a local
            # VM's address reaches it too); coming from it, by MAC and
            # address both (port security vouches for the MAC).
            match = {"ipv4_dst" if from_vm else "ipv4_src": vm.ip,
                     "ct_state": _ct_state(CT_NEW)}
            if not from_vm:
                match[P.REG_FROM_TUNNEL] = 0
                match["eth_src"] = vm.mac
            if trusted:
                self.flow(table, PRIO_TRUSTED, K_STATE,
                          self.apply_goto([_load(REG_RULE, 0)] + list(copy_new), commit),
                          **match)
            elif partner:
                self.flow(table, PRIO_TRUSTED, K_STATE,
                          self.apply_goto([_load(P.REG_SERVICE, 1, 1, 1)] + list(copy_new),
                                          rules), **match)
        if from_vm and self.new_conn_rate:
            # Fairness: a VM's new connections pass its meter (id = its
            # zone) before the rules; over the rate their first packet is
            # dropped here, before any commit or trip to the daemon.
            for vm in self.local:
                zone = self.zones[vm.name]
                self.meters.append(vm_meter(zone, self.new_conn_rate))
                self.flow(table, PRIO_METERED, K_STATE,
                          [("meter", zone)] + self.apply_goto(copy_new, rules),
                          index=zone, ct_state=_ct_state(CT_NEW), eth_src=vm.mac)
        self.flow(table, PRIO_NEW, K_STATE, self.apply_goto(copy_new, rules),
                  ct_state=_ct_state(CT_NEW))
        if self.ids and not from_vm:
            self.flow(table, PRIO_RST_COPY, K_COPY,
                      self.apply_goto(self.to_service(P.COPY, copy=True), done),
                      ct_state=_ct_state(CT_EST), eth_type=P.ETH_TYPE_IP, ip_proto=6,
                      tcp_flags=(P.TCP_RST, P.TCP_RST))
        self.established(table, stage, done, resumed)

    def established(self, table, stage, done, resumed):
        """Established and related packets: on, past or through the daemon
        (check mode)."""
        est, rel = _ct_state(CT_EST), _ct_state(CT_REL)
        if self.check == "offload":
            self.flow(table, PRIO_EST, K_STATE, [_goto(done)], ct_state=rel)
            self.flow(table, PRIO_EST, K_STATE, [_goto(done)], ct_state=est)
            return
        natted = (P.NATTED, P.NATTED)
        fresh = {P.REG_SERVICE: (0, P.RESUMED[stage] | P.NATTED)}
        again = (_load(P.REG_SERVICE, 1, 2, 1), _ct(False, P.REG_ZONE, table, ("nat",)))
        for state in (est, rel):
            # Second pass, translated: on.
            self.flow(table, PRIO_CHECK + 2, K_STATE, [_goto(done)], ct_state=state,
                      **{P.REG_SERVICE: natted})
            # Not for the daemon (related, or given back by it): translate.
            self.flow(table, PRIO_EST, K_STATE, [("apply", again)], ct_state=state)
        check = P.CHECK_BASE + stage
        for origin_in in (False, True):
            mark = (MARK_IN if origin_in else 0, MARK_IN)
            to_check = self.to_service(check, origin_in=origin_in)
            if self.check == "every-packet":
                self.flow(table, PRIO_CHECK, K_CHECK, self.apply_goto(to_check, None),
                          ct_state=est, ct_mark=mark, **fresh)
            elif self.check == "relay":
                acts = self.to_service(P.COPY, copy=True, origin_in=origin_in) + again
                self.flow(table, PRIO_CHECK, K_CHECK, [("apply", acts)],
                          ct_state=est, ct_mark=mark, **fresh)
            else:                       # every-nth: a counter in ct_mark
                count_mask = ((1 << MARK_COUNT_BITS) - 1) << MARK_COUNT_OFS
                for k in range(self.interval):
                    nxt = (k + 1) % self.interval
                    count = _ct(True, P.REG_ZONE, None, None,
                                (("load", "ct_mark", nxt, MARK_COUNT_OFS, MARK_COUNT_BITS),))
                    acts = (count,) + (again if nxt else to_check)
                    self.flow(table, PRIO_CHECK, K_CHECK, [("apply", acts)] if acts else [],
                              index=k + (self.interval if origin_in else 0), ct_state=est,
                              ct_mark=(k << MARK_COUNT_OFS | mark[0], count_mask | MARK_IN),
                              **fresh)

    # ------------------------------------------------------------ rules
    def rule_flows(self, table, direction, stage, nxt, partner=False, extra=None,
                   substitute=None, kind=None):
        """One direction's rules in ``table``: allow -> ``nxt`` (REG_RULE =
        the rule's id), deny -> drop, reject -> the daemon (``stage``; a
        partner table or the external stage has no one to answer: drop).

        ``extra``: match fields every flow adds; ``substitute``: (proto,
        dst ip, dst port or None) the packet will have after a DNAT: rules
        are evaluated as the VM will see the connection."""
        extra = dict(extra or {})
        if partner:
            extra[P.REG_SERVICE] = (PARTNER, PARTNER)
        if kind is None:
            kind = K_PARTNER if partner else K_RULE
        ordered = self.rules.ordered(direction)
        n = len(ordered)
        for rank, rule in enumerate(ordered):
            prio = PRIO_RULE_BASE + (n - rank)
            try:
                match = parse_match(rule.match)
            except MbxError:
                continue
            dims = self._dimensions(match, substitute)
            if dims is None:
                continue
            acts = self.verdict(rule.action, rule_id(rule), stage, nxt)
            ck = cookie(self.tag, kind, rank + 1 + (extra.get(P.REG_SCRATCH, 0) << 12))
            self._emit_rule(table, prio, ck, dims, acts, extra, rank + 1)
            if not partner and stage is not None:
                self.decisions[ck] = Decision(self.tag, stage, rule.action,
                                              rule.uuid or "rule-%d" % (rank + 1))
        acts = self.verdict(self.rules.default_action, 0, stage, nxt)
        ck = cookie(self.tag, kind, extra.get(P.REG_SCRATCH, 0) << 12)
        self.flows.append(Flow(table.table_id, PRIO_DEFAULT,
                               canon_match(**{P.REG_SLICE: self.tag}, eth_type=P.ETH_TYPE_IP,
                                           **extra), tuple(acts), ck))
        if not partner and stage is not None:
            self.decisions[ck] = Decision(self.tag, stage, self.rules.default_action, "default")
        if partner:
            self.flow(table, PRIO_PASS, K_PARTNER, [_goto(nxt)], **{P.REG_SERVICE: (0, PARTNER)})

    def verdict(self, action, rid, stage, nxt):
        if action == "allow":
            return [("apply", (_load(REG_RULE, rid),)), _goto(nxt)]
        if action == "reject" and stage in (P.STAGE_FROM_VM, P.STAGE_TO_VM):
            acts = self.to_service(stage)
            return [("apply", acts)] if acts else []
        return []

    def _dimensions(self, match, substitute):
        """(base fields, [alternatives per dimension]) or None (matches nothing)."""
        if substitute is not None:
            proto, dst_ip, dport = substitute
            if match.proto is not None and match.proto != proto:
                return None
            cm = compile_match(match, self.sets)
            if cm.dst is not None and not any((dst_ip & m) == a for a, m in cm.dst):
                return None
            if dport is not None and cm.dport is not None \
                    and not cm.dport[0] <= dport <= cm.dport[1]:
                return None
            match = type(match)(proto, match.src, match.sport, None,
                                None if dport is not None else match.dport)
        return openflow_dimensions(match, self.sets)

    def _emit_rule(self, table, prio, ck, dims, insts, extra, number):
        base, alternatives = dims
        base = dict(base, **extra)
        multi = [alts for alts in alternatives if len(alts) > 1]
        product = 1
        for alts in alternatives:
            product *= len(alts)
        if len(multi) < 2 or product <= sum(len(a) for a in multi) + 1:
            combos = [{}]
            for alts in alternatives:
                combos = [dict(c, **a) for c in combos for a in alts]
            for c in combos:
                self.flows.append(Flow(table.table_id, prio,
                                       canon_match(**{P.REG_SLICE: self.tag}, **base, **c),
                                       tuple(insts), ck))
            return
        # Conjunctive match: one flow per alternative of each dimension, and
        # one flow for the conjunction's id carrying the verdict.
        self.next_conj += 1
        conj = (self.tag << 20 | self.next_conj) & 0xFFFFFFFF
        single = {}
        for alts in alternatives:
            if len(alts) == 1:
                single.update(alts[0])
        for k, alts in enumerate(multi, 1):
            for a in alts:
                self.flows.append(Flow(table.table_id, prio,
                                       canon_match(**{P.REG_SLICE: self.tag}, **base,
                                                   **single, **a),
                                       (("apply", (("conjunction", conj, k, len(multi)),)),),
                                       cookie(self.tag, K_CLAUSE, number)))
        self.flows.append(Flow(table.table_id, prio,
                               canon_match(**{P.REG_SLICE: self.tag}, conj_id=conj, **base),
                               tuple(insts), ck))

    # ------------------------------------------------------------ commit, LB
    def commit_flows(self):
        # to-VM: the peer opened it.
        self.flow(P.TO_VM_COMMIT, PRIO_PASS, K_COMMIT,
                  [("apply", (_ct(True, P.REG_ZONE, None, None, self.commit_exec(True)),)),
                   _goto(P.LOCAL_DELIVERY)])
        # from-VM: the VM opened it; a VIP goes through its balancer.
        self.flow(P.FROM_VM_COMMIT, PRIO_PASS, K_COMMIT,
                  [("apply", (_ct(True, P.REG_ZONE, None, None, self.commit_exec(False)),)),
                   _goto(P.FROM_VM_ROUTE)])
        by_ip = {vm.ip: vm for vm in self.cfg.vms}
        for index, v in enumerate(self.vips, 1):
            proto = {"tcp": 6, "udp": 17}.get(v.protocol)
            if proto is None:
                continue
            l4 = "tcp_dst" if proto == 6 else "udp_dst"
            match = {"eth_type": P.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": v.vip, l4: v.port}
            sid = service_id("%s:%d/%s" % (v.vip, v.port, v.protocol))
            backends = [b for b in v.backends if b[0] in by_ip]
            if v.algorithm in HASH_ALGORITHMS and backends:
                gid = self.tag << 16 | index
                buckets = []
                for ip, port in backends:
                    acts = (("set_field", "eth_src", P.ROUTER_MAC),
                            ("set_field", "eth_dst", by_ip[ip].mac),
                            _ct(True, P.REG_ZONE, P.FROM_VM_ROUTE,
                                ("nat", "dst", ip, ip, port, port),
                                self.commit_exec(False, sid)))
                    P.check_group_actions(acts, P.FROM_VM_COMMIT)
                    buckets.append((100, acts))
                self.groups.append(Group(gid, "select", tuple(buckets)))
                self.flow(P.FROM_VM_COMMIT, PRIO_NEW, K_LB, [("apply", (("group", gid),))],
                          index=index, **match)
            else:
                # Round-robin, least-connections, source-hash (or no usable
                # backend): the daemon picks and commits.
                self.flow(P.FROM_VM_COMMIT, PRIO_NEW, K_LB,
                          self.apply_goto(self.to_service(P.STAGE_FROM_VM), None),
                          index=index, **match)

    def route_flows(self):
        """FROM_VM_ROUTE: the backend's MAC for a load-balanced packet, SNAT
        for the outside, the rest to L2_LOOKUP."""
        for vm in self.cfg.vms:
            # Only a load-balanced (DNAT'd) packet to the router MAC is the
            # backend's: anything else to the router with a VM's address is
            # not switched.
            self.flow(P.FROM_VM_ROUTE, 300, K_ROUTE,
                      [("apply", (("set_field", "eth_dst", vm.mac),)), _goto(P.L2_LOOKUP)],
                      eth_type=P.ETH_TYPE_IP, eth_dst=P.ROUTER_MAC, ipv4_dst=vm.ip,
                      ct_state=(CT_DNAT | CT_TRK, CT_DNAT | CT_TRK))
        if self.cfg.subnet:
            self.flow(P.FROM_VM_ROUTE, 250, K_ROUTE, [_goto(P.L2_LOOKUP)],
                      eth_type=P.ETH_TYPE_IP, ipv4_dst=_net(self.cfg.subnet))
        for i, rule in enumerate(self.snat, 1):
            src = rule.logical_ip or self.cfg.subnet
            if not src:
                continue
            zone = self.snat_zones.get(rule.uuid)
            block = (self.cfg.snat_blocks or {}).get(rule.uuid)
            if zone is None or block is None:
                # No port block here yet: fail closed.
                self.flow(P.FROM_VM_ROUTE, 200 - i, K_SNAT, [], index=i,
                          eth_type=P.ETH_TYPE_IP, ipv4_src=_net(src))
                continue
            self.flow(P.FROM_VM_ROUTE, 200 - i, K_SNAT,
                      [("apply", (_load(P.REG_SCRATCH, i),)), _goto(P.FROM_VM_SNAT)],
                      index=i, eth_type=P.ETH_TYPE_IP, ipv4_src=_net(src))
        self.flow(P.FROM_VM_ROUTE, PRIO_PASS, K_ROUTE, [_goto(P.L2_LOOKUP)])

    def snat_flows(self):
        for i, rule in enumerate(self.snat, 1):
            zone = self.snat_zones.get(rule.uuid)
            block = (self.cfg.snat_blocks or {}).get(rule.uuid)
            if zone is None or block is None:
                continue
            ip, lo, hi = block
            sid = service_id(rule.uuid)
            self.flow(P.FROM_VM_SNAT, PRIO_NEW, K_SNAT,
                      [("apply", (_ct(False, zone, P.FROM_VM_SNAT_STATE, ("nat",)),))],
                      index=i, **{P.REG_SCRATCH: i})
            exec_ = [("set_field", "ct_mark", self.tag),
                     ("load", "ct_label", sid, LABEL_SERVICE_OFS, 32)]
            self.flow(P.FROM_VM_SNAT_STATE, PRIO_NEW, K_SNAT,
                      [("apply", (_ct(True, zone, P.FROM_VM_SNAT_CHECK,
                                      ("nat", "src", ip, ip, int(lo), int(hi)), exec_),))],
                      index=i, ct_state=_ct_state(CT_NEW), **{P.REG_SCRATCH: i})
            # Established: on only if translated (a commit whose NAT found
            # no free tuple, e.g. two VMs pinging one server with the same
            # ICMP id, must not leak the VM's own address).
            self.flow(P.FROM_VM_SNAT_STATE, PRIO_EST, K_SNAT, [_goto(P.L2_LOOKUP)],
                      index=i, ct_state=_ct_state(CT_EST | CT_SNAT), **{P.REG_SCRATCH: i})
            self.flow(P.FROM_VM_SNAT_STATE, PRIO_EST, K_SNAT, [_goto(P.L2_LOOKUP)],
                      index=i, ct_state=_ct_state(CT_REL), **{P.REG_SCRATCH: i})
        self.flow(P.FROM_VM_SNAT_CHECK, PRIO_EST, K_SNAT, [_goto(P.L2_LOOKUP)],
                  ct_state=_ct_state(CT_SNAT))

    # ------------------------------------------------------------ external
    def external_flows(self):
        """EXTERNAL_CT .. EXTERNAL_ROUTE: replies to SNAT addresses, DNAT,
        ICMP to external addresses."""
        if not (self.snat or self.dnat):
            return
        ex_fresh = {P.REG_SERVICE: (0, P.RESUMED[P.STAGE_FROM_EXTERNAL])}
        icmp = {}                       # external ip -> [(zone, kind, mapping index)]
        for i, rule in enumerate(self.snat, 1):
            zone = self.snat_zones.get(rule.uuid)
            if zone is None:
                continue
            lo, hi = rule.port_range
            for ip in rule.external_ips:
                icmp.setdefault(ip, []).append((zone, "snat", i))
                for proto, l4 in ((6, "tcp_dst"), (17, "udp_dst")):
                    for value, mask in port_masks(lo, hi):
                        # (The cookie names the zone: a restarted daemon finds it.)
                        self.flow(P.EXTERNAL_CT, 200, K_SNAT_ZONE,
                                  [("apply", (_load(P.REG_SCRATCH, i),
                                              _ct(False, zone, P.EXTERNAL_SNAT_STATE,
                                                  ("nat",))))],
                                  index=zone, ipv4_dst=ip, ip_proto=proto,
                                  **{l4: value if mask == 0xFFFF else (value, mask)})
        t = P.EXTERNAL_SNAT_STATE
        self.flow(t, PRIO_INVALID, K_STATE, [], ct_state=_ct_state(CT_INV))
        for state in (CT_EST, CT_REL):
            self.flow(t, PRIO_EST, K_STATE,
                      [("apply", (_load(P.REG_SKIP_TO_VM, 0),)), _goto(P.EXTERNAL_ROUTE)],
                      ct_state=_ct_state(state))
        if self.holding:
            self.flow(t, PRIO_HOLD, K_HOLD,
                      self.apply_goto(self.to_service(P.STAGE_FROM_EXTERNAL), None),
                      ct_state=_ct_state(CT_NEW), **ex_fresh)
        self.dnat_flows(icmp)
        self.icmp_flows(icmp)
        for vm in self.cfg.vms:
            self.flow(P.EXTERNAL_ROUTE, PRIO_NEW, K_ROUTE,
                      [("apply", (("set_field", "eth_src", P.ROUTER_MAC),
                                  ("set_field", "eth_dst", vm.mac))), _goto(P.L2_LOOKUP)],
                      eth_type=P.ETH_TYPE_IP, ipv4_dst=vm.ip)

    def icmp_flows(self, icmp):
        """ICMP to an external address carries no port: look it up in each
        zone that may hold its connection (the SNAT rules' zones, then the
        DNAT VMs' zones) until one knows it; a new echo to a DNAT address
        that maps every port is a new connection to its VM."""
        t = P.EXTERNAL_SNAT_STATE
        for n, ip in enumerate(sorted(icmp), 1):
            cands = sorted(icmp[ip], key=lambda c: (c[1] == "dnat" and c[2] in self.all_ports,
                                                    c[1], c[2]))

            def step(k):
                return ICMP_SEARCH | n << 8 | k
            zone0 = cands[0][0]
            self.flow(P.EXTERNAL_CT, 400, K_ICMP,
                      [("apply", (_load(P.REG_SCRATCH, step(0)),
                                  _load(P.REG_ZONE, zone0, 0, 16),
                                  _ct(False, P.REG_ZONE, t, ("nat",))))],
                      index=n, ipv4_dst=ip, ip_proto=1)
            for k, (zone, kind, index) in enumerate(cands):
                here = {P.REG_SCRATCH: step(k)}
                judged = 1 if kind == "dnat" else 0
                for state in (CT_EST, CT_REL):
                    self.flow(t, 350, K_ICMP,
                              [("apply", (_load(P.REG_SKIP_TO_VM, judged),)),
                               _goto(P.EXTERNAL_ROUTE)],
                              index=n, ct_state=_ct_state(state), **here)
                if k + 1 < len(cands):
                    nxt = cands[k + 1][0]
                    self.flow(t, 340, K_ICMP,
                              [("apply", (_load(P.REG_SCRATCH, step(k + 1)),
                                          _load(P.REG_ZONE, nxt, 0, 16),
                                          _ct(False, P.REG_ZONE, t, ("nat",))))],
                              index=n, **here)
                elif kind == "dnat" and index in self.all_ports:
                    self.flow(t, 340, K_ICMP,
                              [("apply", (_load(P.REG_SCRATCH, index),)),
                               _goto(P.EXTERNAL_DNAT_STATE)],
                              index=n, ct_state=_ct_state(CT_NEW), **here)
                else:
                    self.flow(t, 340, K_ICMP, [], index=n, **here)

    def dnat_flows(self, icmp):
        by_ip = {vm.ip: vm for vm in self.local}
        self.all_ports = set()
        t = P.EXTERNAL_DNAT_STATE
        self.flow(t, PRIO_INVALID, K_STATE, [], ct_state=_ct_state(CT_INV))
        self.flow(t, PRIO_BLOCKED, K_STATE, [], ct_state=_ct_state(CT_EST),
                  ct_mark=(MARK_BLOCKED, MARK_BLOCKED))
        judged = ("apply", (_load(P.REG_SKIP_TO_VM, 1),))
        for state in (CT_EST, CT_REL):
            self.flow(t, PRIO_EST, K_STATE, [judged, _goto(P.EXTERNAL_ROUTE)],
                      ct_state=_ct_state(state))
        if self.ids:
            # The VM's to-VM stage is skipped: the IDS sees an outside RST here.
            self.flow(t, PRIO_RST_COPY, K_COPY,
                      [("apply", self.to_service(P.COPY, copy=True)
                        + (_load(P.REG_SKIP_TO_VM, 1),)), _goto(P.EXTERNAL_ROUTE)],
                      ct_state=_ct_state(CT_EST), ip_proto=6, tcp_flags=(P.TCP_RST, P.TCP_RST))
        # (Check modes see a DNAT'd connection at its VM's from-VM stage.)
        for flags in ((0, P.TCP_SYN), (P.TCP_SYN | P.TCP_ACK, P.TCP_SYN | P.TCP_ACK)):
            self.flow(t, PRIO_BAD_OPEN, K_STATE, [], ct_state=_ct_state(CT_NEW),
                      eth_type=P.ETH_TYPE_IP, ip_proto=6, tcp_flags=flags)
        index = 0
        for rule in self.dnat:
            vm = by_ip.get(rule.logical_ip)
            if vm is None:
                continue
            protos = {"tcp": (6,), "udp": (17,)}.get(rule.protocol, (6, 17))
            for ext in rule.external_ips:
                for proto in protos:
                    index += 1
                    self.dnat_mapping(index, rule, vm, ext, proto)
                index += 1
                icmp.setdefault(ext, []).append((self.zones[vm.name], "dnat", index))
                if rule.external_port is None:
                    # Every port mapped: an echo to the address is the VM's.
                    self.all_ports.add(index)
                    self.dnat_mapping(index, rule, vm, ext, 1)

    def dnat_mapping(self, index, rule, vm, ext, proto):
        zone = self.zones[vm.name]
        l4 = {6: "tcp_dst", 17: "udp_dst"}.get(proto)
        if l4 is not None:
            match = {"eth_type": P.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": ext}
            prio = 300
            if rule.external_port is not None:
                match[l4] = rule.external_port
                prio = 310
            self.flow(P.EXTERNAL_CT, prio, K_DNAT,
                      [("apply", (_load(P.REG_SCRATCH, index), _load(P.REG_ZONE, zone, 0, 16),
                                  _ct(False, P.REG_ZONE, P.EXTERNAL_DNAT_STATE, ("nat",))))],
                      index=index, **match)
        sel = {P.REG_SCRATCH: index, "ct_state": _ct_state(CT_NEW)}
        if vm in self.holding:
            self.flow(P.EXTERNAL_DNAT_STATE, PRIO_HOLD, K_HOLD,
                      self.apply_goto(self.to_service(P.STAGE_FROM_EXTERNAL), None),
                      index=index, **sel,
                      **{P.REG_SERVICE: (0, P.RESUMED[P.STAGE_FROM_EXTERNAL])})
        copy = self.to_service(P.COPY, copy=True) if self.ids else ()
        self.flow(P.EXTERNAL_DNAT_STATE, PRIO_NEW, K_DNAT,
                  self.apply_goto(copy, P.EXTERNAL_RULES), index=index, **sel)
        lport = rule.logical_port or rule.external_port
        self.rule_flows(P.EXTERNAL_RULES, "to-vm", P.STAGE_FROM_EXTERNAL, P.EXTERNAL_COMMIT,
                        extra={P.REG_SCRATCH: index},
                        substitute=(proto, _ip_int(vm.ip), lport if l4 else None),
                        kind=K_EXT_RULE)
        sid = service_id(rule.uuid)
        nat = ("nat", "dst", vm.ip, vm.ip, lport, lport) if (l4 and lport) else \
            ("nat", "dst", vm.ip, vm.ip, None, None)
        self.flow(P.EXTERNAL_COMMIT, PRIO_NEW, K_DNAT,
                  [("apply", (_load(P.REG_SKIP_TO_VM, 1),
                              _ct(True, P.REG_ZONE, P.EXTERNAL_ROUTE, nat,
                                  self.commit_exec(True, sid))))],
                  index=index, **{P.REG_SCRATCH: index})


def _net(cidr):
    """An ipv4 match value of a CIDR: the address, or (address, netmask)."""
    net = ipaddress.IPv4Network(cidr, strict=False)
    if net.prefixlen == 32:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def _ip_int(text):
    return int(ipaddress.IPv4Address(text))
