"""mbxd's pure core: every decision the middlebox daemon makes.

``MiddleboxCore`` is the one object the daemon's I/O shell drives, from one
thread.  It does no I/O and never reads a clock: the shell passes ``now``
(float seconds, one clock for the daemon's life and across its restarts,
e.g. ``time.time()``) and carries out what the core returns: frames to write
back on the middlebox port, cache flows to add and delete.

Slices.  Each external slice tag (802.1Q VID) of this host's config is bound
to an internal slice id when its config first arrives; ids are never reused.
A tag whose config now names another middlebox is a new slice (the old one
is removed first).  A changed config (rules, address sets, options, VMs,
default action) is applied in place and affects NEW connections only:
entries already decided keep their verdict and flows (stateful: an
established connection stays up).  Exceptions, kept simple:

* a slice that disappears from the config loses all its entries, and their
  cache flows are deleted;
* a VM that leaves the slice's VM list keeps its table until its entries
  expire, but new packets for it are dropped as ``unknown_vm``.

Stages (docs/middlebox.md): at the from-VM stage (PCP 0) the slice's VM with
the frame's ``eth_src`` is judged, at the to-VM stage (PCP 1) the one with
``eth_dst``.  Its table decides packets of connections it holds (either
direction); otherwise the stage's rules decide a packet that may open a
connection (from-vm rules at the from-VM stage, origin "out"; to-vm rules
at the to-VM stage, origin "in").  ``same-host=source`` (``destination``):
when the other end is a VM of the slice on this host, the from-VM (to-VM)
stage also evaluates the other VM's rules, allows only if both allow, and
records the connection in both VMs' tables.

Offload (``check=offload``): TCP flows are installed when the connection is
established (the SYN-ACK), UDP/ICMP/other flows on the first allowed packet,
both directions; a denied connection gets a drop flow for each direction
seen (timeout ``denied``); a FIN or RST deletes the entry's flows so the
rest of the close passes through the daemon.  Reject is never offloaded,
and creates no entry (every packet is judged and answered).
``check=every-packet`` installs no flows.

ICMP errors that quote a packet of a connection in the VM's table pass or
drop with that connection ("related"), without an entry of their own.
"""

from dataclasses import dataclass, field
from typing import Iterable, List

from ryu_apps import pipeline as P

from middlebox import cacheflows as CF
from middlebox.services import ids as svc_ids, lb as svc_lb, snat as svc_snat
from middlebox.conntrack import (ALLOW, CLOSED, CLOSING, DENY, ESTABLISHED, FLOW_BOTH,
                                 FLOW_FROM_VM, FLOW_TO_VM, IN, KNOWN_STATES, OFFLOAD_GRACE,
                                 OUT, REPLIED, ConnEntry, ConnKey, Timeouts, VmTable, Xlate,
                                 can_open, key_for)
from middlebox.packet import (ICMP_ERROR_TYPES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
                              TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, MalformedFrame,
                              build_icmp_unreachable, build_tcp, build_tcp_rst, ip_int,
                              ip_text, parse_frame, rewrite)
from middlebox.rules import DIRECTIONS, RuleSet
from middlebox.vmstate import VmStateMixin, chain_of

# What happens to a non-IPv4 frame of a known slice: "pass" (written back
# unchanged, the pipeline continues) or "drop".  Steering selects IPv4 only,
# so such frames are rare.
NON_IP_POLICY = "pass"

REJECT = "reject"
VERDICTS = (ALLOW, DENY, REJECT)
CHECK_MODES = ("offload", "every-packet")
SAME_HOST_MODES = ("both", "source", "destination")
STATE_VERSION = 1
# Column order of one entry in export_state()["entries"].
STATE_FIELDS = ("tag", "vm", "id", "proto", "vm_ip", "vm_port", "peer_ip", "peer_port",
                "origin", "verdict", "state", "fins", "created", "last_seen",
                "packets_orig", "bytes_orig", "packets_reply", "bytes_reply",
                "flows", "flow_timeout", "fs", "rule", "xlate")
PROBE_PORT_MIN, PROBE_PORT_MAX = 61000, 61999    # source ports of health probes
PUBLISH_INTERVAL = 1.0      # s between shared-state publications (and scan checks)
VM_STATE = "vm-state"       # shared-state service: VMs whose state a host holds
MAX_ALERTS = 1000           # IDS alerts kept for ovs-appctl
_PENDING_SHIFT = 2          # ConnEntry.flows bits 2-3: deleted, flow-removed not yet seen
_MULTICAST = (0xE0000000, 0xF0000000)
_STAGE_OF_TABLE = {t.table_id: stage for stage, t in P.CACHE_TABLES.items()}


@dataclass
class FlowChanges:
    """Cache flows the shell must add and delete (``Flow`` values)."""
    add: list = field(default_factory=list)
    delete: list = field(default_factory=list)


class Result:
    """What to do about one frame.

    ``out``: ``(frame, tci)`` pairs to write on the middlebox port; ``add``
    / ``delete``: cache flows; ``held``: frames to write only once ``add``
    is in the datapath (an OpenFlow barrier: a translated connection's first
    packet must not overtake its reply catcher); ``verdict``: allow, deny,
    reject, invalid, malformed, unknown_tag, unknown_vm, non_ip, copy,
    no_nat, nat_exhausted or error; ``new``: the frame opened (or was
    refused as opening) a connection, i.e. rules were evaluated;
    ``related``: an ICMP error passed/dropped as part of a tracked
    connection.
    """

    __slots__ = ("out", "add", "delete", "verdict", "new", "related", "held")

    def __init__(self, verdict, out=None):
        self.verdict = verdict
        self.out = out if out is not None else []
        self.add = []
        self.delete = []
        self.held = []
        self.new = False
        self.related = False

    def __repr__(self):
        return "Result(%s out=%d add=%d delete=%d%s)" % (
            self.verdict, len(self.out), len(self.add), len(self.delete),
            " new" if self.new else "")


class _Vip:
    """One load-balancer VIP of a slice: its balancer, this host's health
    checks of its local backends, and the connections per backend."""

    __slots__ = ("service", "spec", "key", "balancer", "health", "counts")

    def __init__(self, service, spec):
        self.service = service
        self.spec = spec
        self.key = "%s:%d/%s" % (spec.vip, spec.port, spec.protocol)
        self.balancer = svc_lb.Balancer(spec.algorithm, spec.backends)
        self.health = None
        if svc_lb.HealthTracker.enabled(spec.options):
            self.health = svc_lb.HealthTracker.from_options(spec.options, spec.backends)
        self.counts = {}

    def update(self, spec):
        self.spec = spec
        self.balancer.update(spec.backends)
        if self.health is not None:
            self.health.set_backends(spec.backends)


def _cidr(text):
    """(network, mask) ints of "a.b.c.d/n" (or a bare address), or None."""
    try:
        addr, _, bits = str(text).partition("/")
        n = int(bits) if bits else 32
        if not 0 <= n <= 32:
            return None
        mask = (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF
        return ip_int(addr) & mask, mask
    except ValueError:
        return None


_PROTO_NUM = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}


class _Ids:
    """The IDS service of a slice: its detectors and their options."""

    __slots__ = ("name", "options", "scan", "synflood")

    def __init__(self, spec):
        self.name = spec.name
        self.options = dict(spec.options or {})
        self.scan = svc_ids.ScanDetector.from_options(self.options)
        self.synflood = svc_ids.SynFloodDetector.from_options(self.options)


class _Slice:
    __slots__ = ("tag", "sid", "config", "rules", "timeouts", "offload", "same_host",
                 "by_mac", "by_ip", "tables", "packets", "bytes", "errors",
                 "ids_only", "translating", "vips", "snat", "dnat", "ids",
                 "subnet", "gateway", "wire")

    def __init__(self, tag, sid, config):
        self.tag = tag
        self.sid = sid
        self.tables = {}
        self.packets = 0
        self.bytes = 0
        self.vips = {}
        self.ids = None
        self.wire = {}                  # far-side 5-tuple -> translated ConnEntry
        self.apply(config)

    def apply(self, cfg):
        self.config = cfg
        options = dict(cfg.options or {})
        errors = []
        self.rules = RuleSet(cfg.rules, cfg.address_sets or {}, cfg.default_action,
                             options.get("tier-order"))
        self.timeouts = Timeouts.from_options(options)
        check = options.get("check", "offload")
        if check not in CHECK_MODES:
            errors.append('option check="%s" is not offload or every-packet: using offload'
                          % check)
            check = "offload"
        self.offload = check == "offload"
        same = options.get("same-host", "both")
        if same not in SAME_HOST_MODES:
            errors.append('option same-host="%s" is not both, source or destination: '
                          'using both' % same)
            same = "both"
        self.same_host = same
        self.by_mac, self.by_ip = {}, {}
        for vm in cfg.vms:
            self.by_mac[str(vm.mac).lower()] = vm
            try:
                self.by_ip[ip_int(str(vm.ip))] = vm
            except ValueError:
                errors.append("VM %s: bad IP %r" % (vm.name, vm.ip))
        names = {vm.name for vm in cfg.vms}
        for name in [n for n, t in self.tables.items() if not t.entries and n not in names]:
            del self.tables[name]
        self._apply_services(cfg, errors)
        self.errors = list(self.timeouts.errors) + errors

    def _apply_services(self, cfg, errors):
        services = tuple(cfg.services or ())
        types = [sv.type for sv in services]
        self.ids_only = bool(types) and all(t == "ids" for t in types)
        self.subnet = _cidr(cfg.subnet) if cfg.subnet else None
        try:
            self.gateway = ip_int(cfg.gateway) if cfg.gateway else None
        except ValueError:
            self.gateway = None
            errors.append("bad gateway address %r" % cfg.gateway)
        vips, self.snat, self.dnat = {}, [], {}
        ids = None
        for sv in services:
            if sv.type == "lb":
                for spec in sv.vips:
                    proto = _PROTO_NUM.get(spec.protocol)
                    try:
                        key = (proto, ip_int(spec.vip), spec.port)
                    except ValueError:
                        errors.append("VIP %r: bad address" % spec.vip)
                        continue
                    old = self.vips.get(key)
                    if old is not None and old.service == sv.name \
                            and old.spec.algorithm == spec.algorithm \
                            and dict(old.spec.options) == dict(spec.options):
                        old.update(spec)
                        vips[key] = old
                    else:
                        vips[key] = _Vip(sv.name, spec)
                        if vips[key].health is not None:
                            errors.extend("VIP %s: %s" % (vips[key].key, e)
                                          for e in vips[key].health.errors)
            elif sv.type == "nat":
                for rule in sv.nat_rules:
                    if rule.type == "snat":
                        src = _cidr(rule.logical_ip) if rule.logical_ip else self.subnet
                        if src is None:
                            errors.append("SNAT rule %s: bad logical_ip %r"
                                          % (rule.uuid, rule.logical_ip))
                            continue
                        self.snat.append((src, rule))
                    elif rule.type == "dnat" and rule.external_ips:
                        try:
                            ext = ip_int(rule.external_ips[0])
                            ip_int(rule.logical_ip)
                        except ValueError:
                            errors.append("DNAT rule %s: bad address" % rule.uuid)
                            continue
                        protos = ([_PROTO_NUM[rule.protocol]] if rule.protocol in _PROTO_NUM
                                  else [IPPROTO_TCP, IPPROTO_UDP])
                        for proto in protos:
                            self.dnat[(ext, proto, rule.external_port)] = rule
            elif sv.type == "ids":
                same = self.ids is not None and self.ids.name == sv.name \
                    and self.ids.options == dict(sv.options or {})
                ids = self.ids if same else _Ids(sv)
                errors.extend("IDS %s: %s" % (sv.name, e)
                              for e in ids.scan.errors + ids.synflood.errors)
        self.vips = vips
        self.ids = ids
        self.translating = bool(vips or self.snat or self.dnat)

    def in_subnet(self, addr):
        return self.subnet is not None and addr & self.subnet[1] == self.subnet[0]

    def snat_rule(self, src):
        for (net, mask), rule in self.snat:
            if src & mask == net:
                return rule
        return None

    def dnat_rule(self, proto, dst, dport):
        return self.dnat.get((dst, proto, dport)) or self.dnat.get((dst, proto, None))

    def table(self, name):
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = VmTable(name)
        return table

    def entry_count(self):
        return sum(len(t) for t in self.tables.values())


def _rule_id(rule):
    if rule is None:
        return "default"
    return rule.uuid or "%s/%d/%s" % (rule.direction, rule.priority, rule.tier)


def _flow_bit(stage):
    return FLOW_FROM_VM if stage == P.STAGE_FROM_VM else FLOW_TO_VM


class MiddleboxCore(VmStateMixin):
    """The middlebox daemon's state machine for one host (see module doc);
    migration of a VM's state: ``middlebox.vmstate``."""

    def __init__(self, host):
        self.host = host
        self.slices = {}                # tag -> _Slice
        self._next_sid = 1
        self._next_id = 1
        self._entries = {}              # cookie & ENTRY_COOKIE_MASK -> ConnEntry
        self.counters = dict.fromkeys(
            ("frames", "malformed", "unknown_tag", "unknown_vm", "non_ip", "invalid",
             "passed", "dropped", "related", "rejects_sent", "flows_added",
             "flows_deleted", "expired", "internal_errors", "copies", "translated",
             "no_nat", "nat_exhausted", "snat_no_block", "no_backend", "probes_sent", "probe_replies",
             "ids_alerts", "held", "hold_dropped", "forwarded"), 0)
        self.decisions = dict.fromkeys(VERDICTS, 0)
        self.last_error = None
        # The state sharing manager (middlebox.shared.SharedState) the shell
        # gives the core; None: this host's own view only (unit tests).
        self.shared = None
        self._snat = {}                 # NAT_Rule uuid -> (block, PortAllocator)
        self._probe_port = PROBE_PORT_MIN
        self.alerts = []                # IDS alerts raised here (newest last)
        self.log = []                   # lines for the shell to log (drained by it)
        self._next_publish = 0.0
        self._probes = {}               # (backend ip, port, probe port) -> (_Vip, backend, sent)
        self.alert_counts = {}          # IDS alert kind -> count
        self._carry = []                # flows to delete, for the next Result
        self._vm_state_published = set()   # (middlebox, VM) "vm-state" rows
        self._vmstate_init()

    # ------------------------------------------------------------ config
    def configure(self, config, now) -> FlowChanges:
        """Create, update and remove slices to match ``config`` (a HostConfig)."""
        changes = FlowChanges()
        wanted = {}
        for tag, cfg in (config.slices or {}).items():
            if isinstance(tag, int) and 1 <= tag <= P.MAX_SLICE_TAG:
                wanted[tag] = cfg
        for tag in list(self.slices):
            cfg = wanted.get(tag)
            if cfg is None or cfg.middlebox != self.slices[tag].config.middlebox:
                changes.delete.extend(self._remove_slice(tag))
        for tag, cfg in wanted.items():
            s = self.slices.get(tag)
            if s is None:
                self.slices[tag] = _Slice(tag, self._next_sid, cfg)
                self._next_sid += 1
            elif s.config != cfg:
                s.apply(cfg)
        self._update_snat(wanted)
        self.counters["flows_deleted"] += len(changes.delete)
        return changes

    def _update_snat(self, wanted):
        """One port allocator per SNAT rule, over this host's block of it."""
        blocks = {}
        for cfg in wanted.values():
            for uuid, block in (cfg.snat_blocks or {}).items():
                blocks[uuid] = tuple(block)
        for uuid in [u for u in self._snat if u not in blocks]:
            del self._snat[uuid]
        for uuid, block in blocks.items():
            old = self._snat.get(uuid)
            if old is not None and old[0] == block:
                continue
            try:
                alloc = svc_snat.PortAllocator(ip_int(block[0]), int(block[1]), int(block[2]))
            except (ValueError, TypeError, IndexError):
                self.log.append("SNAT rule %s: bad port block %r" % (uuid, block))
                continue
            self._snat[uuid] = (block, alloc)
            # Ports of live mappings in the new block stay taken.
            for s in self.slices.values():
                for e in s.wire.values():
                    x = e.xlate
                    if x.kind == "snat" and not x.away and x.service == uuid \
                            and x.vm_ip == alloc.ip:
                        alloc.reserve(e.key.proto, x.vm_port)

    def _remove_slice(self, tag):
        s = self.slices.pop(tag)
        flows = []
        for table in s.tables.values():
            for e in table:
                flows.extend(self._forget(s, table, e))
        return flows

    # ------------------------------------------------------------ packets
    def handle_frame(self, frame, tci, now) -> Result:
        """Judge one frame from the middlebox port; never raises."""
        self.counters["frames"] += 1
        try:
            return self._handle(frame, tci, now)
        except Exception as err:        # noqa: BLE001 - a daemon must survive any frame
            self.counters["internal_errors"] += 1
            self.counters["dropped"] += 1
            self.last_error = "%s: %s" % (type(err).__name__, err)
            return Result("error")

    def _handle(self, frame, tci, now):
        c = self.counters
        try:
            pkt = parse_frame(frame, tci)
        except MalformedFrame:
            c["malformed"] += 1
            c["dropped"] += 1
            return Result("malformed")
        s = self.slices.get(pkt.tag)
        if s is None:
            c["unknown_tag"] += 1
            c["dropped"] += 1
            return Result("unknown_tag")
        s.packets += 1
        s.bytes += len(frame)
        stage = pkt.stage
        if stage == P.STAGE_PROBE:
            return self._probe_reply(s, pkt, now)
        if stage not in (P.STAGE_FROM_VM, P.STAGE_TO_VM, P.STAGE_FROM_EXTERNAL):
            c["malformed"] += 1
            c["dropped"] += 1
            return Result("malformed")
        if s.ids_only:
            # A copy: the original went on unchanged.  Observe, never answer.
            c["copies"] += 1
            if stage != P.STAGE_FROM_VM and pkt.proto is not None:
                self._ids_observe(s, pkt, now)
            return Result("copy")
        if pkt.proto is not None and (s.wire or stage == P.STAGE_FROM_EXTERNAL):
            went = s.wire.get((pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport))
            if went is not None:
                res = self._translated(s, pkt, frame, tci, now, went, True)
                if res is not None:
                    return self._count(res)
            if stage == P.STAGE_FROM_EXTERNAL:
                fwd = self.forwarder_for(pkt) if self._forwarders else None
                if fwd is not None:
                    # A FIN/RST of a connection whose VM moved away: on to it.
                    c["forwarded"] += 1
                    c["passed"] += 1
                    out = rewrite(frame, pkt, eth_src=P.ROUTER_MAC, eth_dst=fwd.mac)
                    return Result(ALLOW, [(out, (tci & 0x1FFF) | P.STAGE_FROM_VM << 13)])
                return self._count(self._new_external(s, pkt, frame, tci, now))
        if pkt.proto is None:
            c["non_ip"] += 1
            if NON_IP_POLICY == "pass":
                c["passed"] += 1
                return Result("non_ip", [(frame, tci)])
            c["dropped"] += 1
            return Result("non_ip")
        from_vm = pkt.stage == P.STAGE_FROM_VM
        vm = s.by_mac.get(pkt.eth_src if from_vm else pkt.eth_dst)
        if vm is None:
            c["unknown_vm"] += 1
            c["dropped"] += 1
            return Result("unknown_vm")
        partner = None
        if s.same_host == "source" and from_vm:
            partner = s.by_mac.get(pkt.eth_dst)
        elif s.same_host == "destination" and not from_vm:
            partner = s.by_mac.get(pkt.eth_src)
        if partner is not None and (partner is vm or partner.host != self.host):
            partner = None
        key = key_for(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, from_vm)
        table = s.table(vm.name)
        entry = table.get(key)
        if entry is not None and entry.xlate is not None:
            res = self._translated(s, pkt, frame, tci, now, entry, False)
            if res is not None:
                return self._count(res)
            entry = table.get(key)
        res = Result(ALLOW)
        pair = None
        if partner is not None:
            ptable = s.table(partner.name)
            pkey = key_for(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, not from_vm)
            pair = (ptable, pkey, ptable.get(pkey))
        if entry is not None and not entry.flows & FLOW_BOTH and now >= entry.expires:
            # Idle past its timeout and not yet collected by expire(): gone.
            res.delete.extend(self._forget(s, table, entry))
            c["expired"] += 1
            entry = None
        if pair is not None and pair[2] is not None and not pair[2].flows & FLOW_BOTH \
                and now >= pair[2].expires:
            res.delete.extend(self._forget(s, pair[0], pair[2]))
            c["expired"] += 1
            pair = (pair[0], pair[1], None)
        if entry is not None and pkt.proto == IPPROTO_TCP and entry.state in (CLOSING, CLOSED) \
                and can_open(pkt.proto, pkt.tcp_flags):
            # A new SYN on a finished connection's 5-tuple: a new connection.
            res.delete.extend(self._forget(s, table, entry))
            if pair is not None and pair[2] is not None:
                res.delete.extend(self._forget(s, pair[0], pair[2]))
                pair = (pair[0], pair[1], None)
            entry = None
        if entry is not None:
            self._existing(s, pkt, frame, tci, now, from_vm, entry, pair, res)
        elif pkt.related is not None and self._related(s, pkt, frame, tci, from_vm, table,
                                                       res):
            pass
        elif not can_open(pkt.proto, pkt.tcp_flags):
            if self.should_hold(vm, now) and self.hold(vm.name, frame, tci):
                # The VM is arriving and its state has not (docs/migration.md).
                res.verdict = "held"
                return res
            c["invalid"] += 1
            c["dropped"] += 1
            res.verdict = "invalid"
        elif s.translating and from_vm and partner is None:
            self._new_chain(s, pkt, frame, tci, now, vm, table, key, res)
        else:
            if not from_vm and s.ids is not None:
                self._ids_observe(s, pkt, now)
            self._new(s, pkt, frame, tci, now, from_vm, vm, table, key, partner, pair, res)
        return self._count(res)

    def _count(self, res):
        if self._carry:
            res.delete.extend(self._carry)
            self._carry = []
        if res.add:
            self.counters["flows_added"] += len(res.add)
        if res.delete:
            self.counters["flows_deleted"] += len(res.delete)
        return res

    def _existing(self, s, pkt, frame, tci, now, from_vm, entry, pair, res):
        n = len(frame)
        flags = pkt.tcp_flags
        entries = [(entry, from_vm)]
        if pair is not None and pair[2] is not None:
            entries.append((pair[2], not from_vm))
        verdict = ALLOW
        for e, vm_is_src in entries:
            e.update(e.is_orig(vm_is_src), flags, n, now, s.timeouts, s.offload)
            if e.verdict != ALLOW:
                verdict = DENY
            self._offload(s, e, vm_is_src, flags, res)
        self._finish(res, verdict, frame, tci)

    def _related(self, s, pkt, frame, tci, from_vm, table, res):
        """An ICMP error about a tracked connection: its verdict decides."""
        qproto, qsrc, qdst, qsport, qdport = pkt.related
        # The quoted packet went the other way: its destination sent this error.
        key = key_for(qproto, qsrc, qdst, qsport, qdport, not from_vm)
        e = table.get(key)
        if e is None:
            return False
        self.counters["related"] += 1
        res.related = True
        self._finish(res, e.verdict, frame, tci)
        return True

    def _finish(self, res, verdict, frame, tci):
        res.verdict = verdict
        if verdict == ALLOW:
            res.out.append((frame, tci))
            self.counters["passed"] += 1
        else:
            self.counters["dropped"] += 1

    def _new(self, s, pkt, frame, tci, now, from_vm, vm, table, key, partner, pair, res):
        res.new = True
        direction = DIRECTIONS[0] if from_vm else DIRECTIONS[1]
        action, rule = s.rules.evaluate(direction, pkt.proto, pkt.src, pkt.dst,
                                        pkt.sport, pkt.dport)
        rule_id = _rule_id(rule)
        p_rule_id = None
        if partner is not None:
            other = DIRECTIONS[1] if from_vm else DIRECTIONS[0]
            p_action, p_rule = s.rules.evaluate(other, pkt.proto, pkt.src, pkt.dst,
                                                pkt.sport, pkt.dport)
            p_rule_id = _rule_id(p_rule)
            if action == ALLOW and p_action != ALLOW:
                action = p_action
                rule_id = p_rule_id
            elif action != ALLOW:
                p_rule_id = rule_id
        self.decisions[action] += 1
        if action == REJECT:
            self._reject(pkt, frame, tci, from_vm, partner, res)
            return
        entry = self._create(s, table, vm.name, key, OUT if from_vm else IN, action,
                             rule_id, now)
        created = [(entry, from_vm)]
        if partner is not None:
            ptable, pkey, old = pair
            if old is not None:
                res.delete.extend(self._forget(s, ptable, old))
            pentry = self._create(s, ptable, partner.name, pkey, IN if from_vm else OUT,
                                  action, p_rule_id, now)
            created.append((pentry, not from_vm))
        for e, vm_is_src in created:
            e.update(True, pkt.tcp_flags, len(frame), now, s.timeouts, s.offload)
            self._offload(s, e, vm_is_src, pkt.tcp_flags, res)
        self._finish(res, action, frame, tci)

    # ------------------------------------------------------------ services
    def _translated(self, s, pkt, frame, tci, now, e, inbound):
        """A packet of a translated connection: update, offload, rewrite.
        None: not this entry's packet after all (caller goes on as usual)."""
        table = s.tables.get(e.vm)
        x = e.xlate
        want = (P.STAGE_FROM_VM if not inbound else
                P.STAGE_TO_VM if x.kind == "lb" or x.away else P.STAGE_FROM_EXTERNAL)
        if table is None or pkt.stage != want:
            return None
        flags = pkt.tcp_flags
        if (not e.flows & FLOW_BOTH and now >= e.expires) or (
                pkt.proto == IPPROTO_TCP and e.state in (CLOSING, CLOSED)
                and can_open(pkt.proto, flags)):
            # Gone idle, or a new SYN on a finished connection's tuple.
            self._carry.extend(self._forget(s, table, e))
            self.counters["expired"] += 1
            return None
        vm_is_src = not inbound
        e.update(e.is_orig(vm_is_src), flags, len(frame), now, s.timeouts, s.offload)
        res = Result(ALLOW)
        self._offload(s, e, vm_is_src, flags, res)
        res.out.append((self._rewrite_frame(e, pkt, frame, inbound), tci))
        self.counters["passed"] += 1
        self.counters["translated"] += 1
        return res

    @staticmethod
    def _rewrite_frame(e, pkt, frame, inbound):
        k, x = e.key, e.xlate
        if not inbound:
            if x.kind == "lb":
                return rewrite(frame, pkt, eth_src=P.ROUTER_MAC, eth_dst=x.peer_mac,
                               dst=x.peer_ip, dport=x.peer_port)
            return rewrite(frame, pkt, src=x.vm_ip, sport=x.vm_port)
        if x.kind == "lb":
            return rewrite(frame, pkt, eth_src=P.ROUTER_MAC, src=k.peer_ip, sport=k.peer_port)
        return rewrite(frame, pkt, eth_src=P.ROUTER_MAC, eth_dst=x.vm_mac, dst=k.vm_ip,
                       dport=k.vm_port)

    def _drop(self, res, verdict):
        res.verdict = verdict
        self.counters["dropped"] += 1
        return res

    def _new_chain(self, s, pkt, frame, tci, now, vm, table, key, res):
        """A connection a VM opens through a chain with a load balancer or
        NAT: every service in order decides, translations accumulate."""
        c = self.counters
        if pkt.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            self._new(s, pkt, frame, tci, now, True, vm, table, key, None, None, res)
            return
        res.new = True
        dst, dport = pkt.dst, pkt.dport
        xl, action, rule_id = None, ALLOW, "default"
        for sv in s.config.services:
            if sv.type == "firewall":
                action, rule = s.rules.evaluate(DIRECTIONS[0], pkt.proto, pkt.src, dst,
                                                pkt.sport, dport)
                rule_id = _rule_id(rule)
                if action != ALLOW:
                    break
            elif sv.type == "lb" and xl is None:
                v = s.vips.get((pkt.proto, dst, dport))
                if v is None:
                    continue
                backend = self._choose(s, v, pkt.src)
                if backend is None:
                    c["no_backend"] += 1
                    action, rule_id = REJECT, "lb %s: no healthy backend" % v.key
                    break
                bip = ip_int(backend[0])
                xl = Xlate("lb", pkt.src, pkt.sport, bip, backend[1], vm.mac,
                           s.by_ip[bip].mac, v.key)
                dst, dport = bip, backend[1]
            elif sv.type == "nat" and xl is None:
                if s.in_subnet(dst) or dst == s.gateway:
                    continue
                rule = s.snat_rule(pkt.src)
                if rule is None:
                    continue
                got = self._snat.get(rule.uuid)
                if got is None:
                    c["snat_no_block"] += 1
                    self._warn("SNAT rule %s: this host has no port block: dropping "
                               "connections from %s" % (rule.uuid, vm.name))
                    self._drop(res, "no_nat")
                    return
                port = got[1].allocate(pkt.proto, dst, dport, now)
                if port is None:
                    c["nat_exhausted"] += 1
                    self._warn("SNAT rule %s: every port of block %s:%d-%d is in use: "
                               "dropping a new connection from %s"
                               % (rule.uuid, got[0][0], got[0][1], got[0][2], vm.name))
                    self._drop(res, "nat_exhausted")
                    return
                xl = Xlate("snat", got[1].ip, port, dst, dport, vm.mac, "", rule.uuid)
        self.decisions[action] += 1
        if action == REJECT:
            self._reject(pkt, frame, tci, True, None, res)
            return
        entry = self._create(s, table, vm.name, key, OUT, action, rule_id, now)
        if action == ALLOW and xl is not None:
            entry.xlate = xl
            held = self._bind(s, entry, res)
        else:
            held = False
        entry.update(True, pkt.tcp_flags, len(frame), now, s.timeouts, s.offload)
        self._offload(s, entry, True, pkt.tcp_flags, res)
        if action != ALLOW:
            self._finish(res, action, frame, tci)
            return
        out = (self._rewrite_frame(entry, pkt, frame, False) if xl is not None else frame, tci)
        (res.held if held else res.out).append(out)
        res.verdict = ALLOW
        c["passed"] += 1
        if xl is not None:
            c["translated"] += 1

    def _new_external(self, s, pkt, frame, tci, now):
        """A packet from the external network that no mapping knows: a DNAT
        rule may open a connection to a VM of this host."""
        c = self.counters
        res = Result(ALLOW)
        if pkt.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            c["no_nat"] += 1
            return self._drop(res, "no_nat")
        if not can_open(pkt.proto, pkt.tcp_flags):
            c["invalid"] += 1
            return self._drop(res, "invalid")
        rule = s.dnat_rule(pkt.proto, pkt.dst, pkt.dport)
        if rule is None:
            c["no_nat"] += 1
            return self._drop(res, "no_nat")
        vm_ip = ip_int(rule.logical_ip)
        lport = rule.logical_port or pkt.dport
        vm = s.by_ip.get(vm_ip)
        if vm is None or vm.host != self.host:
            c["unknown_vm"] += 1
            return self._drop(res, "unknown_vm")
        res.new = True
        if s.ids is not None:
            self._ids_seen(s, pkt.proto, pkt.tcp_flags, pkt.src, vm_ip, lport, now)
        action, rule_id = ALLOW, "default"
        for sv in s.config.services:
            if sv.type == "firewall":
                action, fw_rule = s.rules.evaluate(DIRECTIONS[1], pkt.proto, pkt.src, vm_ip,
                                                   pkt.sport, lport)
                rule_id = _rule_id(fw_rule)
                break
        self.decisions[action] += 1
        if action != ALLOW:
            # From outside, reject is a silent drop: nothing to answer from.
            return self._drop(res, action)
        table = s.table(vm.name)
        key = ConnKey(pkt.proto, vm_ip, lport, pkt.src, pkt.sport)
        old = table.get(key)
        if old is not None:
            res.delete.extend(self._forget(s, table, old))
        entry = self._create(s, table, vm.name, key, IN, ALLOW, rule_id, now)
        entry.xlate = Xlate("dnat", pkt.dst, pkt.dport, pkt.src, pkt.sport, vm.mac, "",
                            rule.uuid)
        held = self._bind(s, entry, res)
        entry.update(True, pkt.tcp_flags, len(frame), now, s.timeouts, s.offload)
        self._offload(s, entry, False, pkt.tcp_flags, res)
        out = (self._rewrite_frame(entry, pkt, frame, True), tci)
        (res.held if held else res.out).append(out)
        c["passed"] += 1
        c["translated"] += 1
        return res

    @staticmethod
    def _wire_key(e):
        k, x = e.key, e.xlate
        if x.kind == "lb":
            return (k.proto, x.peer_ip, x.peer_port, k.vm_ip, k.vm_port)
        return (k.proto, k.peer_ip, k.peer_port, x.vm_ip, x.vm_port)

    def _bind(self, s, e, res):
        """Index a translated entry by its far-side tuple, count it, install
        its reply catcher; True if there is one (hold the first packet)."""
        x = e.xlate
        s.wire[self._wire_key(e)] = e
        if x.kind == "lb":
            v = self._vip(s, x.service)
            if v is not None:
                b = (ip_text(x.peer_ip), x.peer_port)
                v.counts[b] = v.counts.get(b, 0) + 1
        timeout = s.timeouts.for_state(e.key.proto, ESTABLISHED if e.key.proto == IPPROTO_TCP
                                       else REPLIED)
        flow = CF.catcher_flow(s.tag, e, s.config.vni, timeout)
        if flow is None:
            return False
        res.add.append(flow)
        e.flows |= CF.FLOW_CATCHER
        return True

    def _unbind(self, s, e):
        """Undo ``_bind``; return the catcher flow to delete, if any."""
        x = e.xlate
        w = self._wire_key(e)
        if s.wire.get(w) is e:
            del s.wire[w]
        if x.kind == "lb":
            v = self._vip(s, x.service)
            if v is not None:
                b = (ip_text(x.peer_ip), x.peer_port)
                v.counts[b] = max(0, v.counts.get(b, 0) - 1)
        elif x.kind == "snat" and not x.away:
            got = self._snat.get(x.service)
            if got is not None and got[1].ip == x.vm_ip:
                got[1].release(e.key.proto, x.vm_port)
        if e.flows & CF.FLOW_CATCHER:
            e.flows &= ~CF.FLOW_CATCHER
            return [CF.catcher_flow(s.tag, e, s.config.vni, 0)]
        return []

    @staticmethod
    def _vip(s, key):
        for v in s.vips.values():
            if v.key == key:
                return v
        return None

    def _warn(self, line):
        if len(self.log) < 1000 and line not in self.log:
            self.log.append(line)

    # ------------------------------------------------------------ load balancer
    def _local_backends(self, s, v):
        out = []
        for b in v.spec.backends:
            try:
                vm = s.by_ip.get(ip_int(b[0]))
            except ValueError:
                continue
            if vm is not None and vm.host == self.host:
                out.append(tuple(b))
        return out

    def health_views(self, s, v):
        """{host: {"ip:port": "up"|"down"}}: every host's published view of
        the VIP's backends, this host's own from its live tracker."""
        views = {}
        if self.shared is not None:
            views = dict(self.shared.get(v.service, "lb-health").get(v.key, {}))
        if v.health is not None:
            views[self.host] = {"%s:%d" % b: v.health.state(b)
                                for b in self._local_backends(s, v)}
        return views

    def _choose(self, s, v, client):
        merged = svc_lb.merge_health(self.health_views(s, v), v.spec.backends)
        healthy = set()
        for b in v.spec.backends:
            b = tuple(b)
            try:
                known = ip_int(b[0]) in s.by_ip
            except ValueError:
                known = False
            if known and merged.get(b, "up") != "down":
                healthy.add(b)
        if not healthy:
            return None
        return v.balancer.choose(client, healthy, v.counts)

    def tick(self, now):
        """Timers: health probes of this host's backends (frames to write on
        the middlebox port) and publishing shared state.  Call often (every
        100-200 ms)."""
        out = []
        for s in self.slices.values():
            for v in s.vips.values():
                if v.health is None or s.gateway is None:
                    continue
                local = self._local_backends(s, v)
                v.health.set_backends(local)
                for b in v.health.timeouts(now):
                    self._health_result(v, b, False, now)
                for b in v.health.due(now):
                    out.append(self._probe(s, v, b, now))
        for key in [k for k, p in self._probes.items() if now - p[2] > 30]:
            del self._probes[key]
        if self.shared is not None:
            self._publish_vm_state(self.shared)     # promptly: see its doc
        if now >= self._next_publish:
            self._next_publish = now + PUBLISH_INTERVAL
            self._publish(now)
        return out

    def _probe(self, s, v, b, now):
        port = self._probe_port
        self._probe_port = port + 1 if port < PROBE_PORT_MAX else PROBE_PORT_MIN
        bip = ip_int(b[0])
        self._probes[(bip, b[1], port)] = (v, b, now)
        v.health.probe_sent(b, now)
        self.counters["probes_sent"] += 1
        frame = build_tcp(P.ROUTER_MAC, s.by_ip[bip].mac, s.gateway, bip, port, b[1],
                          port << 16, 0, TCP_SYN)
        return (frame, s.tag | P.STAGE_TO_VM << 13)

    def _probe_reply(self, s, pkt, now):
        self.counters["probe_replies"] += 1
        res = Result("probe")
        if pkt.proto != IPPROTO_TCP:
            return res
        got = self._probes.pop((pkt.src, pkt.sport, pkt.dport), None)
        if got is None:
            return res
        v, b, _ = got
        ok = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
        if ok:
            # Close the half-open probe connection at once.
            res.out.append((build_tcp(P.ROUTER_MAC, pkt.eth_src, pkt.dst, pkt.src, pkt.dport,
                                      pkt.sport, pkt.ack, 0, TCP_RST),
                            s.tag | P.STAGE_TO_VM << 13))
        self._health_result(v, b, ok, now)
        return res

    def _health_result(self, v, b, ok, now):
        changed = v.health.result(b, ok, now)
        if changed is not None:
            self._warn_now("load balancer %s %s: backend %s:%d is %s"
                           % (v.service, v.key, b[0], b[1], changed))
            self._next_publish = now

    def _warn_now(self, line):
        if len(self.log) < 1000:
            self.log.append(line)

    def _publish(self, now):
        shared = self.shared
        for s in self.slices.values():
            if shared is not None:
                for v in s.vips.values():
                    if v.health is not None:
                        view = self.health_views(s, v).get(self.host, {})
                        if view:
                            shared.publish(v.service, "lb-health", v.key, view)
            ids = s.ids
            if ids is None:
                continue
            local = ids.scan.local_targets(now)
            remote = {}
            if shared is not None:
                shared.publish(ids.name, "ids-scan", "targets", local)
                remote = {h: val for h, val in
                          shared.get(ids.name, "ids-scan").get("targets", {}).items()
                          if h != self.host}
            for src, count, hosts in ids.scan.combined(local, remote, self.host, now):
                if ids.scan.should_alert(src, hosts, self.host, now):
                    self._alert(ids, "port-scan", src, "", count, hosts, now)
                # Every host marks it: no second host alerts when the first
                # stops reporting it within the window.
                ids.scan.mark_alerted(src, now)

    def _publish_vm_state(self, shared):
        """Shared state "vm-state": the VMs this host holds connection state
        (or SNAT forwarders) of, per chain, so the controller keeps the
        slice here while a VM that left may still need it (its state is
        asked for by its new host, its SNAT ports are forwarded from here)."""
        wanted = set()
        fwd_tags = {}
        for ck, f in self._forwarders.items():
            fwd_tags.setdefault(ck >> CF.TAG_SHIFT, set()).add(f.vm)
        for s in self.slices.values():
            mb = chain_of(s.config)[0]
            names = {n for n, t in s.tables.items() if t.entries}
            names |= fwd_tags.get(s.tag, set())
            wanted.update((mb, n) for n in names)
        for mb, vm in self._vm_state_published - wanted:
            shared.withdraw(mb, VM_STATE, vm)
        for mb, vm in wanted - self._vm_state_published:
            shared.publish(mb, VM_STATE, vm, 1)
        self._vm_state_published = wanted

    # ------------------------------------------------------------ IDS
    def _ids_observe(self, s, pkt, now):
        if pkt.proto in (IPPROTO_TCP, IPPROTO_UDP):
            self._ids_seen(s, pkt.proto, pkt.tcp_flags, pkt.src, pkt.dst, pkt.dport, now)

    def _ids_seen(self, s, proto, flags, src, dst, dport, now):
        ids = s.ids
        if proto == IPPROTO_TCP and flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
            return
        ids.scan.observe(ip_text(src), ip_text(dst), dport, now)
        if proto == IPPROTO_TCP and ids.synflood.observe_syn(ip_text(dst), now):
            self._alert(ids, "syn-flood", "*", "%s" % ip_text(dst),
                        ids.synflood.threshold, [self.host], now)

    def _alert(self, ids, kind, source, target, count, hosts, now):
        alert = {"middlebox": ids.name, "kind": kind, "source": source, "target": target,
                 "count": int(count), "hosts": sorted(hosts), "time": now,
                 "reported_by": self.host}
        self.alerts.append(alert)
        del self.alerts[:-MAX_ALERTS]
        self.counters["ids_alerts"] += 1
        self.alert_counts[kind] = self.alert_counts.get(kind, 0) + 1
        self._warn_now("IDS %s: %s from %s%s: %d (hosts %s)"
                       % (ids.name, kind, source, " to " + target if target else "",
                          count, ",".join(sorted(hosts))))
        if self.shared is not None:
            stamp = int(now * 1000)
            self.shared.report_alert(ids.name, kind, source, target, int(count),
                                     sorted(hosts), stamp, stamp)

    def ids_alerts(self):
        return list(self.alerts)

    def lb_list(self):
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            for v in s.vips.values():
                merged = svc_lb.merge_health(self.health_views(s, v), v.spec.backends)
                out.append({"tag": tag, "middlebox": v.service, "vip": v.key,
                            "algorithm": v.spec.algorithm,
                            "backends": [{"backend": "%s:%d" % tuple(b),
                                          "health": merged.get(tuple(b), "up"),
                                          "probed_here": tuple(b) in
                                          set(self._local_backends(s, v)),
                                          "connections": v.counts.get(tuple(b), 0)}
                                         for b in v.spec.backends]})
        return out

    def _reject(self, pkt, frame, tci, from_vm, partner, res):
        res.verdict = REJECT
        self.counters["dropped"] += 1
        answer = self._reject_answer(pkt, frame)
        if answer is not None:
            # Back toward the sender: a from-VM stage answer is delivered
            # to the local sender at the to-VM stage's return; a to-VM
            # stage answer leaves like a packet of the receiving VM --
            # except when the sender is the paired local VM
            # (same-host=destination): it has no entry to pass the
            # answer at its own to-VM stage, so deliver it directly.
            stage = P.STAGE_TO_VM if from_vm or partner is not None else P.STAGE_FROM_VM
            res.out.append((answer, (tci & 0x1FFF) | stage << 13))
            self.counters["rejects_sent"] += 1

    @staticmethod
    def _reject_answer(pkt, frame):
        if pkt.dst & _MULTICAST[1] == _MULTICAST[0] or pkt.dst == 0xFFFFFFFF:
            return None
        if pkt.proto == IPPROTO_TCP:
            if pkt.tcp_flags & TCP_RST:
                return None
            return build_tcp_rst(pkt, frame)
        if pkt.proto == IPPROTO_ICMP and pkt.icmp_type in ICMP_ERROR_TYPES:
            return None             # never answer an ICMP error with one
        return build_icmp_unreachable(pkt, frame)

    def _create(self, s, table, vm_name, key, origin, verdict, rule_id, now):
        entry_id = self._alloc_id(s.tag)
        e = ConnEntry(key, origin, verdict, now, s.timeouts, entry_id, rule_id, vm_name, s.tag)
        table.add(e)
        self._entries[s.tag << CF.TAG_SHIFT | entry_id] = e
        return e

    def _alloc_id(self, tag):
        while True:
            entry_id = self._next_id
            self._next_id = entry_id + 1 if entry_id < CF.MAX_ENTRY_ID else 1
            ck = tag << CF.TAG_SHIFT | entry_id
            if ck not in self._entries and ck not in self._forwarders:
                return entry_id

    # ------------------------------------------------------------ flows
    def _offload(self, s, e, vm_is_src, flags, res):
        """Add or delete ``e``'s cache flows after a packet through the daemon."""
        if not s.offload:
            return
        live = e.flows & FLOW_BOTH
        if e.verdict == ALLOW:
            if e.key.proto == IPPROTO_TCP:
                if flags & (TCP_FIN | TCP_RST):
                    if live:
                        res.delete.extend(self._flows_of(e, live))
                        e.flows = (e.flows & ~FLOW_BOTH) | live << _PENDING_SHIFT
                    return
                want = FLOW_BOTH if e.state == ESTABLISHED else 0
            else:
                want = FLOW_BOTH
        else:
            want = FLOW_FROM_VM if vm_is_src else FLOW_TO_VM
        missing = want & ~live
        if missing:
            timeout = s.timeouts.for_state(e.key.proto, e.state, e.verdict)
            e.flow_timeout = timeout
            res.add.extend(self._flows_of(e, missing, timeout))
            if missing & FLOW_FROM_VM:
                e.fs_from_packets = e.fs_from_bytes = 0
            if missing & FLOW_TO_VM:
                e.fs_to_packets = e.fs_to_bytes = 0
            e.flows = (e.flows | missing) & ~(missing << _PENDING_SHIFT)

    @staticmethod
    def _flows_of(e, bits, timeout=None):
        from_flow, to_flow = CF.entry_flows(e.tag, e, e.flow_timeout if timeout is None
                                            else timeout)
        out = []
        if bits & FLOW_FROM_VM:
            out.append(from_flow)
        if bits & FLOW_TO_VM:
            out.append(to_flow)
        return out

    def _forget(self, s, table, e):
        """Remove ``e`` everywhere; return its flows that are in the datapath."""
        table.remove(e)
        ck = e.tag << CF.TAG_SHIFT | e.entry_id
        if self._entries.get(ck) is e:
            del self._entries[ck]
        live = e.flows & FLOW_BOTH
        flows = self._flows_of(e, live) if live else []
        if e.xlate is not None:
            flows.extend(self._unbind(s, e))
        e.flows = 0
        return flows

    def _fold(self, s, e, bit, packets, nbytes):
        """Fold a cache flow's cumulative counters into ``e``; True if they grew."""
        if bit == FLOW_FROM_VM:
            dp, db = packets - e.fs_from_packets, nbytes - e.fs_from_bytes
            e.fs_from_packets, e.fs_from_bytes = packets, nbytes
        else:
            dp, db = packets - e.fs_to_packets, nbytes - e.fs_to_bytes
            e.fs_to_packets, e.fs_to_bytes = packets, nbytes
        if dp < 0 or db < 0:            # a re-installed flow counts from zero
            dp, db = packets, nbytes
        if dp <= 0:
            return False
        # The from-VM flow carries the VM's packets.
        is_orig = e.is_orig(bit == FLOW_FROM_VM)
        e.count(is_orig, dp, db)
        if not is_orig:
            e.seen_reply()
        return True

    def flow_removed(self, cookie, packet_count, byte_count, now, table_id=None):
        """The datapath removed a cache flow (idle timeout, or our delete).

        ``table_id`` says which of the entry's two flows it was; without it
        the flow is taken to be the from-VM one when both are candidates (so
        counters may land in the wrong direction).  When the datapath itself
        removed the last of an entry's flows (idle timeout), the connection
        idled out: the entry is removed -- unless its state's timeout grew
        longer than the flows' since they were installed (a UDP flow
        answered meanwhile), then it lives on, un-offloaded, until that
        longer timeout."""
        ids = CF.split_cookie(cookie)
        if ids is None:
            return
        if self._forwarders and self._forwarder_gone(cookie & CF.ENTRY_COOKIE_MASK):
            return
        e = self._entries.get(cookie & CF.ENTRY_COOKIE_MASK)
        s = self.slices.get(ids[0])
        if e is None or s is None:
            return
        candidates = (e.flows | e.flows >> _PENDING_SHIFT) & FLOW_BOTH
        if table_id is not None:
            stage = _STAGE_OF_TABLE.get(table_id)
            if stage is None:
                return
            bit = _flow_bit(stage)
        elif candidates & FLOW_FROM_VM or not candidates:
            bit = FLOW_FROM_VM
        else:
            bit = FLOW_TO_VM
        self._fold(s, e, bit, packet_count, byte_count)
        if bit == FLOW_FROM_VM:
            e.fs_from_packets = e.fs_from_bytes = 0
        else:
            e.fs_to_packets = e.fs_to_bytes = 0
        was_live = e.flows & bit
        e.flows &= ~(bit | bit << _PENDING_SHIFT)
        if not was_live:
            return
        # The datapath removed it: it was idle for flow_timeout seconds.
        e.last_seen = max(e.last_seen, now - e.flow_timeout)
        e.refresh(now, s.timeouts)
        if e.flows & FLOW_BOTH:
            return
        if s.timeouts.for_state(e.key.proto, e.state, e.verdict) <= e.flow_timeout \
                or now >= e.expires:
            table = s.tables.get(e.vm)
            if table is not None:
                self._forget(s, table, e)
                self.counters["expired"] += 1

    def flow_stats(self, stats: Iterable, now) -> List:
        """A poll of the daemon's cache flows: ``(Flow, packet_count,
        byte_count[, ...])`` items.  Folds the counts into the entries
        (``last_seen = now`` for each that grew) and returns the cache flows
        that belong to no entry, for the shell to delete."""
        orphans = []
        for item in stats:
            flow, packets, nbytes = item[0], item[1], item[2]
            parsed = CF.parse_cache_flow(flow)
            if parsed is None:
                continue
            tag, stage, entry_id = parsed[0], parsed[1], parsed[2]
            if (tag << CF.TAG_SHIFT | entry_id) in self._forwarders:
                continue
            e = self._entries.get(tag << CF.TAG_SHIFT | entry_id)
            s = self.slices.get(tag)
            bit = _flow_bit(stage)
            if e is None or s is None or not self._flow_fits(e, parsed, flow):
                orphans.append(flow)
                continue
            if not e.flows & bit:
                if not e.flows & bit << _PENDING_SHIFT:
                    orphans.append(flow)
                continue
            if self._fold(s, e, bit, packets, nbytes):
                if now > e.last_seen:
                    e.last_seen = now
                e.refresh(now, s.timeouts)
        self.counters["flows_deleted"] += len(orphans)
        return orphans

    @staticmethod
    def _flow_fits(e, parsed, flow=None):
        _, stage, _, proto, src, dst, sport, dport, verdict = parsed
        k = e.key
        if e.xlate is not None:
            if flow is None:
                return False
            want = CF.entry_flows(e.tag, e, 0)[0 if stage == P.STAGE_FROM_VM else 1]
            return (flow.table, flow.match, flow.instructions) == (
                want.table, want.match, want.instructions)
        if verdict != e.verdict or proto != k.proto:
            return False
        if stage == P.STAGE_FROM_VM:
            return (src, dst, sport, dport) == (k.vm_ip, k.peer_ip, k.vm_port, k.peer_port)
        return (src, dst, sport, dport) == (k.peer_ip, k.vm_ip, k.peer_port, k.vm_port)

    # ------------------------------------------------------------ housekeeping
    def expire(self, now) -> List:
        """Remove the entries past their timeout; return their cache flows
        that may still be in the datapath (to delete).  Entries whose flows
        are in the datapath wait for it to remove them (flow_removed), with
        OFFLOAD_GRACE seconds of slack against a lost message."""
        flows = []
        for s in self.slices.values():
            names = None
            for name, table in list(s.tables.items()):
                for e in table.expire(now, OFFLOAD_GRACE):
                    flows.extend(self._forget(s, table, e))
                    self.counters["expired"] += 1
                if not table.entries:
                    if names is None:
                        names = {vm.name for vm in s.config.vms}
                    if name not in names:
                        del s.tables[name]
        self.counters["flows_deleted"] += len(flows)
        return flows

    def flush(self, vm=None) -> List:
        """Remove every entry (of the VM named ``vm`` in every slice, or all);
        return their cache flows to delete."""
        flows = []
        for s in self.slices.values():
            for name, table in s.tables.items():
                if vm is None or name == vm:
                    for e in table:
                        flows.extend(self._forget(s, table, e))
        self.counters["flows_deleted"] += len(flows)
        return flows

    # ------------------------------------------------------------ restart
    def export_state(self) -> dict:
        """Every entry, JSON-serialisable: {"version", "next_entry_id",
        "fields": STATE_FIELDS, "entries": [[value per field], ...]}."""
        rows = []
        for s in self.slices.values():
            for table in s.tables.values():
                for e in table.entries.values():
                    k = e.key
                    rows.append([
                        s.tag, e.vm, e.entry_id, k.proto, ip_text(k.vm_ip), k.vm_port,
                        ip_text(k.peer_ip), k.peer_port, e.origin, e.verdict, e.state,
                        e.fins, e.created, e.last_seen, e.packets_orig, e.bytes_orig,
                        e.packets_reply, e.bytes_reply, e.flows & FLOW_BOTH, e.flow_timeout,
                        [e.fs_from_packets, e.fs_from_bytes, e.fs_to_packets,
                         e.fs_to_bytes], e.rule,
                        e.xlate.as_list() if e.xlate is not None else None])
        return {"version": STATE_VERSION, "next_entry_id": self._next_id,
                "fields": list(STATE_FIELDS), "entries": rows,
                "forwarders": self.export_forwarders()}

    def import_state(self, state, datapath_flows: Iterable, now) -> FlowChanges:
        """Rebuild the entries after a restart (call ``configure`` first).

        ``state``: an ``export_state()`` (may be empty); ``datapath_flows``:
        the daemon's cache flows found in the datapath.  An entry with flows
        in the datapath is kept, offloaded (rebuilt from its flows as an
        allowed/denied, established (TCP) / unreplied (UDP) connection when
        the saved state lacks it); a saved entry without flows is kept if it
        has not expired.  Returns the cache flows that fit no entry (unknown
        slice or VM, inconsistent), for the shell to delete."""
        changes = FlowChanges()
        groups = {}
        for flow in datapath_flows:
            parsed = CF.parse_cache_flow(flow)
            if parsed is None:
                continue
            groups.setdefault(parsed[0] << CF.TAG_SHIFT | parsed[2], []).append(
                (parsed, flow))
        max_id = 0
        if isinstance(state, dict):
            self.import_forwarders(state.get("forwarders"), groups)
        for row in self._state_rows(state):
            try:
                max_id = max(max_id, self._import_row(row, groups, now, changes))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                continue
        for ck, items in groups.items():
            max_id = max(max_id, ck & CF.ENTRY_ID_MASK)
            self._import_flows(items, now, changes)
        next_id = 1
        if isinstance(state, dict) and isinstance(state.get("next_entry_id"), int):
            next_id = state["next_entry_id"]
        next_id = max(next_id, max_id + 1)
        self._next_id = next_id if 1 <= next_id <= CF.MAX_ENTRY_ID else 1
        self.counters["flows_deleted"] += len(changes.delete)
        return changes

    @staticmethod
    def _state_rows(state):
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return []
        fields = state.get("fields", STATE_FIELDS)
        entries = state.get("entries")
        if not isinstance(fields, (list, tuple)) or not isinstance(entries, list):
            return []
        return [dict(zip(fields, row)) for row in entries
                if isinstance(row, list) and len(row) == len(fields)]

    def _import_row(self, row, groups, now, changes):
        tag, entry_id = int(row["tag"]), int(row["id"])
        s = self.slices.get(tag)
        if s is None or not 1 <= entry_id <= CF.MAX_ENTRY_ID:
            return 0
        ck = tag << CF.TAG_SHIFT | entry_id
        if ck in self._entries:
            return entry_id
        key = ConnKey(int(row["proto"]), ip_int(row["vm_ip"]), int(row["vm_port"]),
                      ip_int(row["peer_ip"]), int(row["peer_port"]))
        origin, verdict, state = row["origin"], row["verdict"], row["state"]
        if origin not in (OUT, IN) or verdict not in (ALLOW, DENY) \
                or state not in KNOWN_STATES:
            return 0
        table = s.table(str(row["vm"]))
        if table.get(key) is not None:
            return entry_id
        e = ConnEntry(key, origin, verdict, float(row["created"]), s.timeouts, entry_id,
                      str(row["rule"]), table.name, tag, state)
        e.fins = int(row["fins"])
        e.last_seen = float(row["last_seen"])
        e.packets_orig, e.bytes_orig = int(row["packets_orig"]), int(row["bytes_orig"])
        e.packets_reply, e.bytes_reply = int(row["packets_reply"]), int(row["bytes_reply"])
        e.flow_timeout = int(row["flow_timeout"])
        fs = [int(x) for x in row["fs"]]
        xl = row.get("xlate")
        if xl:
            kind, xvm_ip, xvm_port, xpeer_ip, xpeer_port, vm_mac, peer_mac, service = xl[:8]
            home = xl[8] if len(xl) > 8 and kind == "snat" else None
            if kind not in ("lb", "snat", "dnat"):
                return 0
            e.xlate = Xlate(kind, int(xvm_ip), int(xvm_port), int(xpeer_ip),
                            int(xpeer_port), str(vm_mac), str(peer_mac), str(service),
                            str(home) if home else None)
        e.refresh(now, s.timeouts)
        live = 0
        for parsed, flow in groups.pop(ck, ()):
            bit = _flow_bit(parsed[1])
            if self._flow_fits(e, parsed, flow) and not live & bit:
                live |= bit
                e.flow_timeout = flow.idle_timeout or e.flow_timeout
            else:
                changes.delete.append(flow)
        if live and verdict == ALLOW and key.proto == IPPROTO_TCP and e.state != ESTABLISHED:
            # Flows of a closing connection whose delete never happened.
            changes.delete.extend(self._flows_of(e, live))
            live = 0
        if not live and now >= e.expires:
            return entry_id
        e.flows = live
        e.fs_from_packets, e.fs_from_bytes, e.fs_to_packets, e.fs_to_bytes = (
            fs if live else (0, 0, 0, 0))
        table.add(e)
        self._entries[ck] = e
        if e.xlate is not None:
            self._rebind(s, e, changes)
        return entry_id

    def _rebind(self, s, e, changes):
        """A restored translated entry: index it again, take its SNAT port
        and (re)install its reply catcher (an identical flow-mod is harmless)."""
        x = e.xlate
        if x.kind == "snat" and not x.away:
            got = self._snat.get(x.service)
            if got is not None and got[1].ip == x.vm_ip:
                got[1].reserve(e.key.proto, x.vm_port)
        res = Result(ALLOW)
        self._bind(s, e, res)
        changes.add.extend(res.add)

    def _import_flows(self, items, now, changes):
        """An entry rebuilt from its flows alone."""
        (tag, stage, entry_id, proto, src, dst, sport, dport, verdict), _ = items[0]
        s = self.slices.get(tag)
        vm_ip = src if stage == P.STAGE_FROM_VM else dst
        vm = s.by_ip.get(vm_ip) if s is not None else None
        ck = tag << CF.TAG_SHIFT | entry_id
        old = self._entries.get(ck)
        if old is not None:
            # Already known (imported twice): adopt the flows that fit it.
            for parsed, flow in items:
                if self._flow_fits(old, parsed, flow):
                    old.flows |= _flow_bit(parsed[1])
                else:
                    changes.delete.append(flow)
            return
        if vm is None or entry_id == 0:
            changes.delete.extend(flow for _, flow in items)
            return
        key = key_for(proto, src, dst, sport, dport, stage == P.STAGE_FROM_VM)
        table = s.table(vm.name)
        if table.get(key) is not None:
            changes.delete.extend(flow for _, flow in items)
            return
        # Who opened it is not in the flows: guess the side with the higher
        # (ephemeral-looking) port as the opener.
        origin = OUT if key.vm_port >= key.peer_port else IN
        state = {IPPROTO_TCP: ESTABLISHED if verdict == ALLOW else None,
                 IPPROTO_ICMP: None}.get(proto)
        e = ConnEntry(key, origin, verdict, now, s.timeouts, entry_id, "restored",
                      vm.name, tag, state)
        live = 0
        for parsed, flow in items:
            bit = _flow_bit(parsed[1])
            if self._flow_fits(e, parsed) and not live & bit:
                live |= bit
                e.flow_timeout = flow.idle_timeout
            else:
                changes.delete.append(flow)
        e.flows = live
        table.add(e)
        self._entries[ck] = e

    # ------------------------------------------------------------ inspection
    def slice_list(self) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            cfg = s.config
            out.append({"tag": tag, "id": s.sid, "middlebox": cfg.middlebox,
                        "chain": [sv.name for sv in cfg.services],
                        "tenant": cfg.tenant, "switch": cfg.switch, "vni": cfg.vni,
                        "local_vms": sum(1 for vm in cfg.vms if vm.host == self.host),
                        "entries": s.entry_count()})
        return out

    def conn_list(self, vm=None) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            for name in sorted(s.tables):
                if vm is not None and name != vm:
                    continue
                for e in sorted(s.tables[name].entries.values(), key=lambda e: e.entry_id):
                    out.append(self._conn_dict(s, e))
        return out

    @staticmethod
    def _conn_dict(s, e):
        k = e.key
        return {"tag": s.tag, "middlebox": s.config.middlebox, "vm": e.vm, "id": e.entry_id,
                "cookie": CF.cookie(s.tag, e.entry_id),
                "proto": k.proto, "vm_ip": ip_text(k.vm_ip), "vm_port": k.vm_port,
                "peer_ip": ip_text(k.peer_ip), "peer_port": k.peer_port,
                "origin": e.origin, "verdict": e.verdict, "state": e.state,
                "created": e.created, "last_seen": e.last_seen, "expires": e.expires,
                "packets_orig": e.packets_orig, "bytes_orig": e.bytes_orig,
                "packets_reply": e.packets_reply, "bytes_reply": e.bytes_reply,
                "offloaded": e.offloaded, "rule": e.rule,
                "xlate": None if e.xlate is None else {
                    "kind": e.xlate.kind,
                    "wire_vm": "%s:%d" % (ip_text(e.xlate.vm_ip), e.xlate.vm_port),
                    "wire_peer": "%s:%d" % (ip_text(e.xlate.peer_ip), e.xlate.peer_port)}}

    def conn_count(self) -> dict:
        slices = [{"tag": tag, "middlebox": self.slices[tag].config.middlebox,
                   "entries": self.slices[tag].entry_count()} for tag in sorted(self.slices)]
        return {"total": sum(x["entries"] for x in slices), "slices": slices}

    def rules_show(self, middlebox=None) -> List[dict]:
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            if middlebox is not None and s.config.middlebox != middlebox:
                continue
            item = {"tag": tag, "middlebox": s.config.middlebox,
                    "default_action": s.rules.default_action,
                    "tier_order": s.rules.tier_order,
                    "check": "offload" if s.offload else "every-packet",
                    "same_host": s.same_host,
                    "timeouts": {name: getattr(s.timeouts, name)
                                 for name in Timeouts.FIELDS},
                    "errors": list(s.rules.errors) + list(s.errors)}
            for direction in DIRECTIONS:
                item[direction] = [{"priority": r.priority, "tier": r.tier, "match": r.match,
                                    "action": r.action, "uuid": r.uuid}
                                   for r in s.rules.ordered(direction)]
            out.append(item)
        return out

    def stats(self) -> dict:
        out = dict(self.counters)
        out["decisions"] = dict(self.decisions)
        out["entries"] = len(self._entries)
        out["offloaded"] = sum(1 for e in self._entries.values() if e.flows & FLOW_BOTH)
        out["last_error"] = self.last_error
        out["nat_refused"] = self.counters["snat_no_block"] + self.counters["nat_exhausted"]
        out["ids_alerts_by_kind"] = {k: self.alert_counts.get(k, 0)
                                     for k in ("port-scan", "syn-flood")}
        out["slices"] = [{"tag": tag, "middlebox": s.config.middlebox, "packets": s.packets,
                          "bytes": s.bytes, "entries": s.entry_count()}
                         for tag, s in sorted(self.slices.items())]
        return out
