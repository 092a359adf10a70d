"""mbxd's service: what the daemon decides when the switch asks it.

The switch is the engine (``middlebox.dataplane`` compiles its tables): it
forwards every packet of an established connection and judges every new
one by the compiled rules.  It asks the service, over the middlebox port,
only for what it cannot do alone (docs/middlebox.md):

* a **reject**: the answer (a TCP RST, or ICMP administratively
  prohibited) is made here and delivered (PCP ``DELIVER``);
* the **first packet to a round-robin, least-connections or source-hash
  VIP**: the backend is picked here and committed into the client's zone
  with its DNAT by an OpenFlow packet-out that carries the packet on
  through the pipeline;
* a **check** (check modes ``every-packet`` / ``every-nth``): the packet of
  an established connection is judged by the current rules, as the
  connection's origin opened it; passed, it resumes its stage; refused,
  the connection is cut (``MARK_BLOCKED`` committed into its entry) and the
  packet dropped;
* **copies** (IDS, relay): observed, never answered;
* **health-probe replies**, and the probes themselves (``tick``);
* the new connections of a VM whose state is **arriving**
  (``middlebox.arrivals``).

Pure: no I/O, no clock; the shell (``middlebox.main``) passes ``now`` and
carries out the ``Result``s.
"""

from middlebox import dataplane as D
from middlebox.packet import (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ERROR_TYPES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
                              TCP_ACK, TCP_RST, TCP_SYN, MalformedFrame,
                              build_icmp_unreachable, build_tcp, build_tcp_rst, ip_int,
                              ip_text, parse_frame)
from mbxmodel.state import LB_HEALTH
from middlebox.rules import DIRECTIONS, RuleSet
from middlebox.services import ids as svc_ids, lb as svc_lb
from ryu_apps import pipeline as P

REJECT = "reject"
VERDICTS = ("allow", "deny", REJECT)
PROBE_PORT_MIN, PROBE_PORT_MAX = 61000, 61999    # source ports of health probes
PUBLISH_INTERVAL = 1.0      # s between shared-state publications (and scan checks)
MAX_ALERTS = 1000           # IDS alerts kept for ovs-appctl
_MULTICAST = (0xE0000000, 0xF0000000)
_PROTO_NUM = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
COUNTERS = ("frames", "malformed", "unknown_tag", "unknown_vm", "non_ip",
            "passed", "dropped", "rejects_sent", "internal_errors", "copies", "checked",
            "cut", "lb_picks", "no_backend", "probes_sent", "probe_replies", "ids_alerts",
            "held", "hold_dropped", "resumed")


class Result:
    """What to do about one frame: ``out`` (frame, tci) pairs to write on
    the middlebox port now; ``packet_outs`` (frame, actions) to send to the
    switch, and ``messages`` packet-outs already encoded (a migrated
    connection's commits, ``middlebox.ctcommit``); ``after_barrier``
    (frame, tci) pairs to write once the switch has taken them (an OpenFlow
    barrier); ``verdict`` for counters and tests."""

    __slots__ = ("out", "packet_outs", "messages", "after_barrier", "verdict")

    def __init__(self, verdict, out=None):
        self.verdict = verdict
        self.out = out if out is not None else []
        self.packet_outs = []
        self.messages = []
        self.after_barrier = []

    def __repr__(self):
        return "Result(%s out=%d packet_outs=%d)" % (self.verdict, len(self.out),
                                                     len(self.packet_outs))


def _tci(tag, pcp):
    return (tag & 0xFFF) | pcp << 13


class _Vip:
    """One VIP of a slice: its balancer, this host's health checks of its
    local backends, and this host's connections per backend."""

    __slots__ = ("service", "spec", "key", "sid", "balancer", "health", "counts")

    def __init__(self, service, spec):
        self.service = service
        self.spec = spec
        self.key = "%s:%d/%s" % (spec.vip, spec.port, spec.protocol)
        self.sid = D.service_id(self.key)
        algorithm = spec.algorithm if spec.algorithm in svc_lb.ALGORITHMS \
            else svc_lb.SOURCE_HASH
        self.balancer = svc_lb.Balancer(algorithm, spec.backends)
        self.health = None
        if svc_lb.HealthTracker.enabled(spec.options):
            self.health = svc_lb.HealthTracker.from_options(spec.options, spec.backends)
        self.counts = {}

    def update(self, spec):
        self.spec = spec
        self.balancer.update(spec.backends)
        if self.health is not None:
            self.health.set_backends(spec.backends)


class _Ids:
    __slots__ = ("name", "options", "scan", "synflood")

    def __init__(self, spec):
        self.name = spec.name
        self.options = dict(spec.options or {})
        self.scan = svc_ids.ScanDetector.from_options(self.options)
        self.synflood = svc_ids.SynFloodDetector.from_options(self.options)


class _Slice:
    """What the service keeps of one slice."""

    __slots__ = ("tag", "config", "rules", "by_mac", "by_ip", "vips", "ids", "gateway",
                 "packets", "bytes", "errors", "check", "known", "replies")

    def __init__(self, cfg, old=None):
        self.tag = cfg.tag
        self.packets = old.packets if old is not None else 0
        self.bytes = old.bytes if old is not None else 0
        # The connections the service decided or checked, by original tuple:
        # (opened by the peer, DNAT (ip int, port) or None, service id).
        self.known = old.known if old is not None else {}
        self.replies = old.replies if old is not None else set()   # of its LB picks
        self.apply(cfg, old)

    def apply(self, cfg, old):
        self.config = cfg
        options = dict(cfg.options or {})
        self.rules = RuleSet(cfg.rules, cfg.address_sets or {}, cfg.default_action,
                             options.get("tier-order"))
        self.check = options.get("check", "offload")
        self.errors = list(self.rules.errors) + list(cfg.skipped)
        self.by_mac, self.by_ip = {}, {}
        for vm in cfg.vms:
            self.by_mac[str(vm.mac).lower()] = vm
            try:
                self.by_ip[ip_int(str(vm.ip))] = vm
            except ValueError:
                self.errors.append("VM %s: bad IP %r" % (vm.name, vm.ip))
        try:
            self.gateway = ip_int(cfg.gateway) if cfg.gateway else None
        except ValueError:
            self.gateway = None
            self.errors.append("bad gateway address %r" % cfg.gateway)
        vips = {}
        self.ids = None
        for sv in cfg.services:
            if sv.type == "lb":
                for spec in sv.vips:
                    proto = _PROTO_NUM.get(spec.protocol)
                    try:
                        key = (proto, ip_int(spec.vip), spec.port)
                    except ValueError:
                        self.errors.append("VIP %r: bad address" % spec.vip)
                        continue
                    prev = old.vips.get(key) if old is not None else None
                    if prev is not None and prev.service == sv.name \
                            and prev.spec.algorithm == spec.algorithm \
                            and dict(prev.spec.options) == dict(spec.options):
                        prev.update(spec)
                        vips[key] = prev
                    else:
                        vips[key] = _Vip(sv.name, spec)
                        if vips[key].health is not None:
                            self.errors.extend("VIP %s: %s" % (vips[key].key, e)
                                               for e in vips[key].health.errors)
            elif sv.type == "ids":
                prev = old.ids if old is not None else None
                same = prev is not None and prev.name == sv.name \
                    and prev.options == dict(sv.options or {})
                self.ids = prev if same else _Ids(sv)
                self.errors.extend("IDS %s: %s" % (sv.name, e)
                                   for e in self.ids.scan.errors + self.ids.synflood.errors)
        self.vips = vips


class Service:
    """The middlebox daemon's decisions for one host (see the module doc).

    ``zone_of(vm_name)`` -> the VM's conntrack zone or None (the shell's
    zone map); ``shared`` the state sharing manager (None in unit tests);
    ``arrivals`` the hold buffer of VMs whose state is arriving
    (``middlebox.arrivals.Arrivals``, None: never hold)."""

    def __init__(self, host, zone_of=lambda _vm: None):
        self.host = host
        self.zone_of = zone_of
        self.slices = {}                # tag -> _Slice
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.decisions = dict.fromkeys(VERDICTS, 0)     # from the switch's rule flows
        self.rule_hits = {}             # (tag, rule) -> packets decided
        self._flow_packets = {}         # rule flow cookie -> its last packet count
        self.last_error = None
        self.shared = None
        self.arrivals = None
        self._probe_port = PROBE_PORT_MIN
        self._probes = {}               # (backend ip, port, probe port) -> (_Vip, backend, sent)
        self.alerts = []
        self.alert_counts = {}
        self.log = []
        self._next_publish = 0.0
        self.connections = {}           # tag -> connections in conntrack (last count)
        self.limits = {}                # the daemon's limits report (zonepolicy.ZoneLimits)

    # ------------------------------------------------------------ config
    def configure(self, config):
        wanted = {tag: cfg for tag, cfg in (config.slices or {}).items()
                  if isinstance(tag, int) and 1 <= tag <= P.MAX_SLICE_TAG}
        slices = {}
        for tag, cfg in wanted.items():
            old = self.slices.get(tag)
            if old is not None and old.config.middlebox != cfg.middlebox:
                old = None
            if old is not None and old.config == cfg:
                slices[tag] = old
            else:
                slices[tag] = _Slice(cfg, old)
        self.slices = slices

    def vm(self, name):
        """(slice, VmSpec) of a VM of this host's slices, or (None, None)."""
        for s in self.slices.values():
            for vm in s.config.vms:
                if vm.name == name:
                    return s, vm
        return None, None

    # ------------------------------------------------------------ frames
    def handle_frame(self, frame, tci, now):
        """Decide about one frame from the middlebox port; never raises."""
        self.counters["frames"] += 1
        try:
            return self._handle(frame, tci, now)
        except Exception as err:        # noqa: BLE001 - a daemon must survive any frame
            self.counters["internal_errors"] += 1
            self.counters["dropped"] += 1
            self.last_error = "%s: %s" % (type(err).__name__, err)
            return Result("error")

    def _drop(self, verdict):
        self.counters["dropped"] += 1
        return Result(verdict)

    def _handle(self, frame, tci, now):
        c = self.counters
        try:
            pkt = parse_frame(frame, tci)
        except MalformedFrame:
            c["malformed"] += 1
            return self._drop("malformed")
        s = self.slices.get(pkt.tag)
        if s is None:
            c["unknown_tag"] += 1
            return self._drop("unknown_tag")
        s.packets += 1
        s.bytes += len(frame)
        stage = pkt.stage
        if stage == P.STAGE_PROBE:
            return self._probe_reply(s, pkt, now)
        if pkt.proto is None:
            c["non_ip"] += 1
            return self._drop("non_ip")
        if stage == P.COPY:
            return self._copy(s, pkt, now)
        if P.CHECK_BASE <= stage < P.COPY:
            return self._check(s, pkt, frame, stage - P.CHECK_BASE)
        return self._decide(s, pkt, frame, stage, now)

    def resume(self, tag, stage, frame, verdict="allow"):
        """A Result that gives ``frame`` back to its stage."""
        self.counters["passed"] += 1
        return Result(verdict, [(frame, _tci(tag, stage))])

    def _vm_of(self, s, pkt, stage):
        if stage == P.STAGE_FROM_VM:
            return s.by_mac.get(pkt.eth_src)
        if stage == P.STAGE_TO_VM:
            return s.by_mac.get(pkt.eth_dst)
        return None

    def _decide(self, s, pkt, frame, stage, now):
        """A new connection the stage sent here: arriving VM, VIP, reject."""
        c = self.counters
        vm = self._vm_of(s, pkt, stage)
        if vm is not None and self.arrivals is not None and self.zone_of(vm.name) is None:
            # No zone here: the VM is arriving (its port came first).
            return self.arrivals.unzoned(vm, frame, _tci(s.tag, stage), now)
        if stage == P.STAGE_FROM_EXTERNAL or vm is not None:
            if self.arrivals is not None:
                held = self.arrivals.offer(s, vm, pkt, frame, _tci(s.tag, stage), now)
                if held is not None:
                    return held
        if stage == P.STAGE_FROM_EXTERNAL:
            # Resumed from an arrival's hold, or a miss nothing explains.
            return self.resume(s.tag, stage, frame)
        if vm is None:
            c["unknown_vm"] += 1
            return self._drop("unknown_vm")
        if pkt.proto == IPPROTO_TCP and pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
            # Only a hold sends such a packet here (the switch drops it
            # otherwise), and the hold just ended: the switch judges it
            # again, its connection landed or not.
            c["resumed"] += 1
            return self.resume(s.tag, stage, frame, "resumed")
        from_vm = stage == P.STAGE_FROM_VM
        direction = DIRECTIONS[0] if from_vm else DIRECTIONS[1]
        action, rule = s.rules.evaluate(direction, pkt.proto, pkt.src, pkt.dst,
                                        pkt.sport, pkt.dport)
        if action == REJECT:
            return self._reject(s, pkt, frame)
        if action != "allow":
            # The switch judged it before us (a rule changed meanwhile): drop.
            return self._drop("deny")
        if from_vm:
            v = s.vips.get((pkt.proto, pkt.dst, pkt.dport))
            if v is not None:
                return self._pick(s, v, vm, pkt, frame, rule)
        # Given back (an arrival's packet, or a rule that changed): on.
        return self.resume(s.tag, stage, frame)

    # ------------------------------------------------------------ reject
    def _reject(self, s, pkt, frame):
        c = self.counters
        c["dropped"] += 1
        answer = _reject_answer(pkt, frame)
        res = Result(REJECT)
        if answer is not None:
            res.out.append((answer, _tci(s.tag, P.DELIVER)))
            c["rejects_sent"] += 1
        return res

    # ------------------------------------------------------------ load balancer
    def _pick(self, s, v, vm, pkt, frame, rule):
        """Pick a backend for a new connection to a VIP and commit it into the
        client's zone; the packet goes on through the pipeline."""
        c = self.counters
        zone = self.zone_of(vm.name)
        backend = self._choose(s, v, pkt.src)
        if backend is None or zone is None:
            c["no_backend"] += 1
            return self._reject(s, pkt, frame)
        target = s.by_ip.get(ip_int(backend[0]))
        mark = s.tag | D.MARK_SERVICE
        actions = (("set_field", "eth_src", P.ROUTER_MAC),
                   ("set_field", "eth_dst", target.mac),
                   ("set_field", "metadata", s.config.vni),
                   ("set_field", P.REG_SLICE, s.tag),
                   ("set_field", P.REG_ZONE, zone),
                   ("set_field", P.REG_SERVICE, P.RESUMED[P.STAGE_FROM_VM]),
                   ("ct", True, P.REG_ZONE, P.FROM_VM_ROUTE.table_id,
                    ("nat", "dst", backend[0], backend[0], backend[1], backend[1]),
                    (("set_field", "ct_mark", mark),
                     ("set_field", "ct_label",
                      D.rule_id(rule) | v.sid << D.LABEL_SERVICE_OFS))))
        v.counts[backend] = v.counts.get(backend, 0) + 1
        _remember(s, (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport),
                  (False, (ip_int(backend[0]), backend[1]), v.sid))
        s.replies.add((pkt.proto, ip_int(backend[0]), backend[1], pkt.src, pkt.sport))
        c["lb_picks"] += 1
        c["passed"] += 1
        res = Result("allow")
        res.packet_outs.append((frame, actions))
        return res

    def _local_backends(self, v):
        s = None
        for sl in self.slices.values():
            if v in sl.vips.values():
                s = sl
        out = []
        for b in v.spec.backends:
            try:
                vm = s.by_ip.get(ip_int(b[0])) if s is not None else None
            except ValueError:
                continue
            if vm is not None and vm.host == self.host:
                out.append(tuple(b))
        return out

    def health_views(self, v):
        """{host: {"ip:port": "up"|"down"}}: every host's published view of
        the VIP's backends, this host's own from its live tracker."""
        views = {}
        if self.shared is not None:
            views = dict(self.shared.get(v.service, LB_HEALTH).get(v.key, {}))
        if v.health is not None:
            views[self.host] = {"%s:%d" % b: v.health.state(b)
                                for b in self._local_backends(v)}
        return views

    def healthy(self, s, v):
        merged = svc_lb.merge_health(self.health_views(v), v.spec.backends)
        out = []
        for b in v.spec.backends:
            b = tuple(b)
            try:
                known = ip_int(b[0]) in s.by_ip
            except ValueError:
                known = False
            if known and merged.get(b, "up") != "down":
                out.append(b)
        return out

    def _choose(self, s, v, client):
        healthy = set(self.healthy(s, v))
        if not healthy:
            return None
        return v.balancer.choose(client, healthy, v.counts)

    def set_lb_counts(self, counts):
        """This host's connections per (VIP service id, backend), counted in
        its zones (least-connections)."""
        for s in self.slices.values():
            for v in s.vips.values():
                v.counts = dict(counts.get(v.sid, {}))

    # ------------------------------------------------------------ checks, copies
    def _check(self, s, pkt, frame, stage):
        """An established connection's packet, checked against today's
        rules as its origin opened it."""
        c = self.counters
        c["checked"] += 1
        vm = self._vm_of(s, pkt, stage)
        if vm is None:
            c["unknown_vm"] += 1
            return self._drop("unknown_vm")
        vm_sent = stage == P.STAGE_FROM_VM
        seen = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        key = seen
        if pkt.origin_in == vm_sent:
            key = (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        if pkt.proto == IPPROTO_ICMP:
            # An echo as conntrack keys it: the id, the request's type.
            if pkt.icmp_type not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
                return self.resume(s.tag, stage, frame)
            src, dst = (pkt.src, pkt.dst) if pkt.icmp_type == ICMP_ECHO_REQUEST \
                else (pkt.dst, pkt.src)
            key = (IPPROTO_ICMP, src, pkt.sport, dst, ICMP_ECHO_REQUEST << 8)
        # (A reply of a connection the service load-balanced is seen as the
        # backend sent it: that connection is known already, by its VIP.)
        if key not in s.known and seen not in s.replies:
            _remember(s, key, (pkt.origin_in, None, 0))
        if pkt.origin_in == vm_sent:
            # The packet goes against the connection's origin: judge its reverse.
            direction = DIRECTIONS[1] if vm_sent else DIRECTIONS[0]
            action, _ = s.rules.evaluate(direction, pkt.proto, pkt.dst, pkt.src,
                                         pkt.dport, pkt.sport)
        else:
            direction = DIRECTIONS[0] if vm_sent else DIRECTIONS[1]
            action, _ = s.rules.evaluate(direction, pkt.proto, pkt.src, pkt.dst,
                                         pkt.sport, pkt.dport)
        if action == "allow":
            return self.resume(s.tag, stage, frame)
        zone = self.zone_of(vm.name)
        c["cut"] += 1
        c["dropped"] += 1
        res = Result("cut")
        if zone is not None:
            res.packet_outs.append((frame, (
                ("set_field", P.REG_ZONE, zone),
                ("ct", True, P.REG_ZONE, None, None,
                 (("load", "ct_mark", 1, D.MARK_BLOCKED.bit_length() - 1, 1),))),))
        return res

    def _copy(self, s, pkt, now):
        """A copy (IDS: new connections and RSTs into a VM; relay: every
        packet): observe."""
        self.counters["copies"] += 1
        if s.ids is not None and pkt.proto in (IPPROTO_TCP, IPPROTO_UDP):
            self._ids_seen(s, pkt.proto, pkt.tcp_flags, pkt.src, pkt.dst, pkt.dport, now)
        return Result("copy")

    # ------------------------------------------------------------ IDS
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

    # ------------------------------------------------------------ timers
    def tick(self, now):
        """Health probes of this host's backends (frames to write on the
        middlebox port) and shared-state publication.  Call every 100-200 ms."""
        out = []
        for s in self.slices.values():
            for v in s.vips.values():
                if v.health is None or s.gateway is None:
                    continue
                v.health.set_backends(self._local_backends(v))
                for b in v.health.timeouts(now):
                    self._health_result(v, b, False, now)
                for b in v.health.due(now):
                    out.append(self._probe(s, v, b, now))
        for key in [k for k, p in self._probes.items() if now - p[2] > 30]:
            del self._probes[key]
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
        return (frame, _tci(s.tag, P.DELIVER))

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
                            _tci(s.tag, P.DELIVER)))
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
                        view = self.health_views(v).get(self.host, {})
                        if view:
                            shared.publish(v.service, LB_HEALTH, v.key, view)
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
                ids.scan.mark_alerted(src, now)

    # ------------------------------------------------------------ decisions
    def account(self, decisions, stats):
        """The switch decides new connections: count them from its rule
        flows' packet counters.  ``decisions``: cookie -> dataplane.Decision;
        ``stats``: (cookie, packet count) pairs of one flow-stats reply.

        Counters are cumulative: each reply adds what each flow counted since
        the last one.  A flow whose count went down was replaced (a config
        change reinstalls the rule tables), so all of its count is new."""
        now = {}
        for ck, packets in stats:
            if ck in decisions:
                now[ck] = now.get(ck, 0) + packets
        for ck, packets in now.items():
            before = self._flow_packets.get(ck, 0)
            delta = packets - before if packets >= before else packets
            if not delta:
                continue
            d = decisions[ck]
            self.decisions[d.action] = self.decisions.get(d.action, 0) + delta
            self.rule_hits[(d.tag, d.rule)] = self.rule_hits.get((d.tag, d.rule), 0) + delta
        self._flow_packets = now

    # ------------------------------------------------------------ inspection
    def lb_list(self):
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            for v in s.vips.values():
                merged = svc_lb.merge_health(self.health_views(v), v.spec.backends)
                local = set(self._local_backends(v))
                out.append({"tag": tag, "middlebox": v.service, "vip": v.key,
                            "algorithm": v.spec.algorithm,
                            "backends": [{"backend": "%s:%d" % tuple(b),
                                          "health": merged.get(tuple(b), "up"),
                                          "probed_here": tuple(b) in local,
                                          "connections": v.counts.get(tuple(b), 0)}
                                         for b in v.spec.backends]})
        return out

    def rules_show(self, middlebox=None):
        out = []
        for tag in sorted(self.slices):
            s = self.slices[tag]
            if middlebox is not None and s.config.middlebox != middlebox:
                continue
            options = dict(s.config.options or {})
            item = {"tag": tag, "middlebox": s.config.middlebox,
                    "default_action": s.rules.default_action,
                    "tier_order": s.rules.tier_order,
                    "check": options.get("check", "offload"),
                    "same_host": options.get("same-host", "both"),
                    "errors": list(s.errors),
                    "hits": {"default": self.rule_hits.get((tag, "default"), 0)}}
            for direction in DIRECTIONS:
                item[direction] = [{"priority": r.priority, "tier": r.tier, "match": r.match,
                                    "action": r.action, "uuid": r.uuid,
                                    "hits": self.rule_hits.get((tag, r.uuid), 0)}
                                   for r in s.rules.ordered(direction)]
            out.append(item)
        return out

    def stats(self):
        out = dict(self.counters)
        out["decisions"] = dict(self.decisions)
        out["last_error"] = self.last_error
        out["ids_alerts_by_kind"] = {k: self.alert_counts.get(k, 0)
                                     for k in ("port-scan", "syn-flood")}
        out["slices"] = [{"tag": tag, "middlebox": s.config.middlebox, "packets": s.packets,
                          "bytes": s.bytes, "connections": self.connections.get(tag, 0)}
                         for tag, s in sorted(self.slices.items())]
        return out


KNOWN_MAX = 65536           # connections a slice's service remembers, at most


def _remember(s, key, value):
    if len(s.known) >= KNOWN_MAX:
        del s.known[next(iter(s.known))]
        s.replies.clear()           # (a bound, not an index: rebuilt by new picks)
    s.known[key] = value


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
