"""The controller's engine: desired state, reconciliation and write-back.

Plain Python with no os-ken import.  The os-ken application and the
southbound database watcher (``ryu_apps.southbound``: each host's chassis
record and port bindings) are thin shells that feed it events; it answers
through the two things it was given:

* ``send(dpid, ops, barrier_xid)`` -- install ``ops`` (``FlowDiff.commands()``:
  ``(command, Flow)`` pairs, deletes first) on a switch, followed by a barrier
  request with that xid;
* ``nb`` -- the config database API (``snapshot`` and the status writers).

Every event method must be called from ONE thread (``EngineLoop`` runs them).

Rounds.  Each recomputation is a numbered round that records the config
generation (``NB_Global.nb_cfg``) it was computed from.  A switch has applied
round r once every barrier sent up to r is acknowledged.  From that the engine
writes back: ``Host.nb_cfg`` per host, ``NB_Global.hv_cfg`` (the minimum over
connected hosts) and, for a VM whose port appeared somewhere, ``VM.host`` and
a new ``VM.location_epoch`` once every connected host has applied the round in
which that location was first programmed.

Services (docs/services.md).  The engine also allocates the slices (one per
chain and host) and the SNAT port blocks, both stable across
recomputations, and writes them to the ``Slice`` rows (tag, status
``snat-block:<rule>``); it merges the load-balancer health the daemons
publish as shared state into ``LB_VIP.status`` and counts each IDS's
alerts into ``Middlebox.status``.

Migrations (docs/migration.md).  A host that an active migration names as
its destination gets the slices of the VM's chains before the VM arrives.
The engine remembers each VM's last host (``VM.host``, kept when the port
disappears); when a VM's port appears on another host and no active
migration of the VM names that host, it writes an ``unannounced``
Migration row, before it sends any flow for the VM's new place.
"""

import dataclasses
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ovsdb.validate import global_wait_ms
from ryu_apps import flows as flowlib
from ryu_apps import reconcile
from ryu_apps import slices as slicelib
from mbxmodel.network import HostInfo, HostPorts, PortBinding
from mbxmodel.state import ACTIVE_MIGRATION
from mbxmodel.topology import Topology

LOG = logging.getLogger(__name__)


@dataclass
class _Switch:
    dpid: int
    host: Optional[str] = None
    synced: bool = False            # installed flows read back from the switch
    installed: Dict = field(default_factory=dict)   # Flow.key -> Flow
    pending: Dict[int, int] = field(default_factory=dict)  # barrier xid -> round
    target_round: int = 0
    applied_round: int = 0
    current: bool = False           # installed = the flows of the last topology


class Engine:
    def __init__(self, send, nb):
        self._send = send
        self._nb = nb
        self.nb_snap = None
        self.host_ports: Dict[str, HostPorts] = {}
        self.switches: Dict[int, _Switch] = {}
        self._sb_ready = False
        self._appear_seq = 0
        self._appearances: Dict[Tuple[str, str], Tuple[int, int]] = {}  # (vm, host) -> (seq, ofport)
        self._binding_round: Dict[str, Tuple[int, int]] = {}  # vm -> (seq, first round)
        self._announced: Dict[str, int] = {}   # vm -> appearance seq written to the DB
        self._round = 0
        self._round_cfg: Dict[int, int] = {0: 0}
        self._written: Dict[Tuple, object] = {}
        self._xid = 0x4d420000
        self._slices: Dict[Tuple[Tuple[str, ...], str], int] = {}   # (chain, host) -> tag
        self._snat_blocks: Dict[Tuple[str, str], Tuple[str, int, int]] = {}
        #                   (SNAT rule uuid, host) -> (ip, lo, hi)
        self._bad_health = set()    # shared-state rows already logged as bad
        self._last_host: Dict[str, str] = {}   # vm -> the last host VM.host named
        self._checked_seq: Dict[str, int] = {}  # vm -> newest appearance checked
        #                                          for an unannounced migration
        self._topo: Optional[Topology] = None  # of the last recomputation
        self._snap_vms = (None, {})     # (snapshot, its VMs as the topologies hold them)

    # ------------------------------------------------------------- inputs
    def nb_changed(self):
        self.nb_snap = self._nb.snapshot()
        for vm, (host, _epoch) in self.nb_snap.vm_locations.items():
            if host is not None:
                self._last_host[vm] = host
        self._recompute()

    def host_ports_changed(self, host, ports: HostPorts):
        old = self.host_ports.get(host, HostPorts())
        self.host_ports[host] = ports
        for vm, (ofport, _mac) in ports.vm_ports.items():
            prev = self._appearances.get((vm, host))
            if prev is None or prev[1] != ofport or vm not in old.vm_ports:
                self._appear_seq += 1
                self._appearances[(vm, host)] = (self._appear_seq, ofport)
        for vm in old.vm_ports:
            if vm not in ports.vm_ports:
                self._appearances.pop((vm, host), None)
        self._match_switches()
        if self._sb_ready:
            self._recompute(changed=(host, set(old.vm_ports) | set(ports.vm_ports)))

    def southbound_ready(self):
        """The southbound database's contents (every host's chassis and
        bindings) have arrived once: reconcile the switches."""
        self._sb_ready = True
        self._recompute()

    def _all_hosts_reported(self):
        """Every host's chassis and bindings are known.  Until then no
        switch is reconciled: flows computed without a host's ports would
        delete that host's VMs from every other switch, only to add them
        back a moment later (flow churn on a controller restart)."""
        return self._sb_ready

    def switch_connected(self, dpid):
        self.switches[dpid] = _Switch(dpid=dpid)
        self._match_switches()

    def switch_flows(self, dpid, installed_flows):
        """The switch's current flows (with our cookie) have been read back."""
        sw = self.switches.get(dpid)
        if sw is None:
            return
        sw.installed = {f.key: f for f in installed_flows}
        sw.synced = True
        sw.current = False
        LOG.info("switch %016x (%s): %d flows read back", dpid, sw.host,
                 len(sw.installed))
        self._recompute(changed=(None, ()))

    def switch_disconnected(self, dpid):
        sw = self.switches.pop(dpid, None)
        if sw is not None:
            LOG.info("switch %016x (%s) disconnected", dpid, sw.host)
            self._publish()

    def barrier_reply(self, dpid, xid):
        sw = self.switches.get(dpid)
        if sw is None or sw.pending.pop(xid, None) is None:
            return
        if sw.pending:
            return                      # its round is not applied yet: nothing to say
        sw.applied_round = sw.target_round
        if any(other.pending for other in self._live()):
            # Its own status now; what depends on every switch (hv_cfg, VM
            # locations, slices) once the last busy one is done.
            if self.nb_snap is not None:
                self._publish_host(sw, self.nb_snap)
            return
        self._publish()

    def flow_error(self, dpid, text):
        """A switch refused a message; the flow computation has a bug."""
        sw = self.switches.get(dpid)
        LOG.error("switch %016x (%s) reported an error: %s", dpid,
                  sw.host if sw else "?", text)

    # ---------------------------------------------------------- internals
    def _match_switches(self):
        by_dpid = {p.datapath_id: h for h, p in self.host_ports.items()
                   if p.datapath_id is not None}
        for sw in self.switches.values():
            host = by_dpid.get(sw.dpid)
            if host != sw.host:
                sw.host = host
                sw.current = False

    def topology(self) -> Topology:
        snap = self.nb_snap
        if snap is None:
            return Topology()
        hosts = {}
        for name, rec in snap.hosts.items():
            ports = self.host_ports.get(name, HostPorts())
            hosts[name] = HostInfo(name=name, encap_ip=rec.encap_ip,
                                   encap_type=rec.encap_type,
                                   tunnel_ofport=ports.tunnel_ofport,
                                   mb_ofport=ports.mb_ofport,
                                   uplink_ofport=ports.uplink_ofport,
                                   uplink_mac=ports.uplink_mac)
        bindings = {}
        for (vm, host), (seq, ofport) in sorted(self._appearances.items(),
                                                key=lambda kv: kv[1][0]):
            # The newest appearance wins while a port exists on two hosts.
            info = snap.vms.get(vm)
            mac = self.host_ports[host].vm_ports[vm][1]
            if info is None or (mac and mac.lower() != info.mac):
                continue
            bindings[vm] = PortBinding(vm=vm, host=host, ofport=ofport)
        if self._snap_vms[0] is not snap:   # one copy per config snapshot
            self._snap_vms = (snap, dict(snap.vms))
        topo = Topology(hosts=hosts, switches=dict(snap.switches),
                        vms=self._snap_vms[1], bindings=bindings,
                        middleboxes=dict(snap.middleboxes), policies=tuple(snap.policies),
                        address_sets=dict(snap.address_sets),
                        nat_rules=_by_middlebox(getattr(snap, "nat_rules", {})),
                        vips=_by_middlebox(getattr(snap, "vips", {})),
                        external_networks={n.name: n for n in _records(
                            getattr(snap, "external_networks", {}))})
        existing = dict(snap.slices)
        existing.update(self._slices)
        incoming = [(m.vm, host) for m in getattr(snap, "migrations", ())
                    if m.status in ACTIVE_MIGRATION for host in (m.destination, m.source)]
        # A host keeps its slices while its daemon holds state of a VM that
        # left (shared state "vm-state"): the VM's new host may still ask
        # for it, and its SNAT ports are forwarded from there.
        incoming += [(row.key, row.host) for row in _records(
            getattr(snap, "shared_state", ())) if getattr(row, "service", None) == VM_STATE]
        self._slices = slicelib.allocate(slicelib.needed_slices(topo, incoming),
                                         existing)
        topo = dataclasses.replace(topo, slices=dict(self._slices))
        previous = slicelib.blocks_from_status(getattr(snap, "slice_status", {}))
        previous.update(self._snat_blocks)
        self._snat_blocks = slicelib.snat_blocks(topo, previous)
        return topo

    def _current_seq(self, vm, binding):
        return self._appearances[(vm, binding.host)][0]

    def _recompute(self, changed=None):
        """A new round.  ``changed``: (host, VM names) when only that host's
        ports changed (host None: nothing but a switch's installed flows),
        so only the hosts it can affect are computed again; None: every host."""
        if self.nb_snap is None:
            return
        self._round += 1
        rnd = self._round
        self._round_cfg[rnd] = self.nb_snap.nb_cfg
        old, old_blocks = self._topo, self._snat_blocks
        topo = self.topology()
        self._topo = topo
        dirty = None
        if changed is not None and old is not None:
            dirty = _affected_hosts(old, topo, old_blocks, self._snat_blocks, *changed)
        for vm, binding in topo.bindings.items():
            seq = self._current_seq(vm, binding)
            if self._binding_round.get(vm, (None,))[0] != seq:
                self._binding_round[vm] = (seq, rnd)
        for vm in list(self._binding_round):
            if vm not in topo.bindings:
                del self._binding_round[vm]
        self._record_unannounced(topo)      # before any flow for the new place
        program = self._all_hosts_reported()
        for sw in self.switches.values():
            if not program or not sw.synced or sw.host is None:
                continue
            if dirty is not None and sw.current and sw.host not in dirty:
                sw.target_round = rnd       # its flows cannot have changed
                if not sw.pending:
                    sw.applied_round = rnd
                continue
            desired = flowlib.compute_host_flows(topo, sw.host, self._snat_blocks)
            diff = reconcile.diff_flows(desired, sw.installed.values())
            sw.current = True
            sw.target_round = rnd
            if diff.empty:
                if not sw.pending:
                    sw.applied_round = rnd
                continue
            self._xid += 1
            ops = diff.commands()
            LOG.info("%s: %d deletes, %d modifies, %d adds (round %d)", sw.host,
                     len(diff.deletes), len(diff.modifies), len(diff.adds), rnd)
            sw.installed = {f.key: f for f in desired}
            sw.pending[self._xid] = rnd
            self._send(sw.dpid, ops, self._xid)
        self._publish(topo)

    def _record_unannounced(self, topo):
        """A Migration row (unannounced) for each VM whose port newly appeared
        on a host other than its last one, unless a migration to that host
        is under way (or, announced, was just finished).  Once per
        appearance; a failed write is logged and does not hold flows back."""
        snap = self.nb_snap
        for vm, binding in sorted(topo.bindings.items()):
            seq = self._current_seq(vm, binding)
            if self._checked_seq.get(vm, 0) >= seq:
                continue
            self._checked_seq[vm] = seq
            host, last = binding.host, self._last_host.get(vm)
            if last is None or last == host:
                continue
            mine = [m for m in getattr(snap, "migrations", ()) if m.vm == vm]
            if any(m.status in ACTIVE_MIGRATION and m.destination == host
                   for m in mine):
                continue
            if mine and mine[-1].status == "done" and \
                    (mine[-1].source, mine[-1].destination) == (last, host):
                continue
            wait_ms = global_wait_ms(getattr(snap, "global_options", {}))
            try:
                self._nb.migration_create(vm, last, host, "unannounced",
                                          wait_ms).execute(check_error=True)
            except Exception as e:    # flows must follow the VM regardless
                LOG.error("VM %s appeared on %s (last on %s): cannot record its "
                          "unannounced migration: %s", vm, host, last, e)
                continue
            LOG.info("VM %s appeared on %s, last on %s: unannounced migration "
                     "(wait %d ms)", vm, host, last, wait_ms)

    def _live(self):
        return [sw for sw in self.switches.values() if sw.synced and sw.host]

    def _write(self, key, value, fn):
        if self._written.get(key) == value:
            return
        fn()
        self._written[key] = value

    def _publish(self, topo=None):
        snap = self.nb_snap
        if snap is None:
            return
        topo = topo or self._topo or self.topology()
        live = self._live()
        live_hosts = {sw.host for sw in live}
        for sw in live:
            self._publish_host(sw, snap)
        for name, rec in snap.hosts.items():
            if rec.connected and name not in live_hosts:
                self._write(("host", name), (rec.nb_cfg, False, None),
                            lambda: self._nb.set_host_status(
                                name, connected=False).execute(check_error=True))
        hv_cfg = min((self._round_cfg.get(sw.applied_round, 0) for sw in live),
                     default=snap.nb_cfg)
        if hv_cfg != snap.hv_cfg:
            self._write(("hv_cfg",), hv_cfg,
                        lambda: self._nb.set_hv_cfg(hv_cfg).execute(check_error=True))
        self._publish_locations(topo, live)
        status = slicelib.slice_status(topo, self._snat_blocks)
        current = {k: dict(v) for k, v in getattr(snap, "slice_status", {}).items()}
        if self._all_hosts_reported() and (
                dict(topo.slices) != dict(snap.slices)
                or {k: v for k, v in status.items() if v}
                != {k: v for k, v in current.items() if v and k in topo.slices}):
            self._write(("slices",), (tuple(sorted(topo.slices.items())),
                                      tuple(sorted((k, tuple(sorted(v.items())))
                                                   for k, v in status.items()))),
                        lambda: self._nb.set_slices(dict(topo.slices), status).execute(
                            check_error=True))
        self._publish_vip_status(topo)
        self._publish_ids_status(topo)
        low = min((sw.applied_round for sw in live), default=self._round)
        for rnd in [r for r in self._round_cfg if r < low]:
            del self._round_cfg[rnd]

    def _publish_host(self, sw, snap):
        """A live switch's host: connected, its datapath, the nb_cfg of the
        round it applied."""
        rec = snap.hosts.get(sw.host)
        if rec is None:
            return
        cfg = self._round_cfg.get(sw.applied_round, 0)
        dpid = "%016x" % sw.dpid
        if rec.nb_cfg != cfg or not rec.connected or rec.datapath_id != dpid:
            self._write(("host", sw.host), (cfg, True, dpid),
                        lambda: self._nb.set_host_status(
                            sw.host, nb_cfg=cfg, connected=True,
                            datapath_id=dpid).execute(check_error=True))

    def _publish_locations(self, topo, live):
        snap = self.nb_snap
        applied = min((sw.applied_round for sw in live), default=None)
        for vm, (seq, first_round) in self._binding_round.items():
            if self._announced.get(vm) == seq:
                continue
            if applied is not None and applied < first_round:
                continue        # not yet programmed on every connected host
            host = topo.bindings[vm].host
            cur_host, epoch = snap.vm_locations.get(vm, (None, 0))
            if vm not in self._announced and cur_host == host:
                self._announced[vm] = seq   # already recorded (controller restart)
                continue
            self._set_location(vm, host, epoch + 1)
            self._announced[vm] = seq
            LOG.info("VM %s now on %s (epoch %d)", vm, host, epoch + 1)
        for vm, (cur_host, epoch) in list(snap.vm_locations.items()):
            # Only a host whose br-int has been reported can be known not to
            # hold the port (after a restart the DB is read before any host).
            if cur_host is None or vm in topo.bindings:
                continue
            ports = self.host_ports.get(cur_host)
            reported = ports.datapath_id if ports is not None else None
            if reported is not None \
                    and self._written.get(("gone", vm)) != epoch:
                self._set_location(vm, None, epoch)
                self._written[("gone", vm)] = epoch
                self._announced.pop(vm, None)

    def _publish_vip_status(self, topo):
        """LB_VIP.status: each backend's health as the hosts publish it
        (shared state, service "lb-health", value {"ip:port": "up"|"down"});
        down if any host says down."""
        health = {}         # middlebox -> {"ip:port": state}
        for row in _records(getattr(self.nb_snap, "shared_state", ())):
            if getattr(row, "service", None) != LB_HEALTH:
                continue
            try:
                value = json.loads(row.value)
            except (TypeError, ValueError):
                if (row.middlebox, row.host, row.value) not in self._bad_health:
                    self._bad_health.add((row.middlebox, row.host, row.value))
                    LOG.warning("lb-health of %s from %s: not JSON: %r",
                                row.middlebox, row.host, row.value)
                continue
            if not isinstance(value, dict):
                continue
            merged = health.setdefault(row.middlebox, {})
            for backend, state in value.items():
                if state in ("up", "down") and merged.get(backend) != "down":
                    merged[backend] = state
        for name, vips in sorted(topo.vips.items()):
            merged = health.get(name, {})
            for vip in vips:
                wanted = {}
                for ip, port in vip.backends:
                    key = f"{ip}:{port}"
                    if key in merged:
                        wanted[key] = merged[key]
                if wanted == dict(vip.status):
                    continue
                self._write(("vip", vip.uuid), wanted,
                            lambda: self._nb.set_vip_status(vip.uuid, wanted).execute(
                                check_error=True))

    def _publish_ids_status(self, topo):
        """Middlebox.status "alerts" = the number of IDS_Alert rows of each IDS."""
        counts = {}
        for row in _records(getattr(self.nb_snap, "ids_alerts", ())):
            counts[row.middlebox] = counts.get(row.middlebox, 0) + 1
        current_status = getattr(self.nb_snap, "middlebox_status", {})
        for name, mb in sorted(topo.middleboxes.items()):
            if mb.type != "ids":
                continue
            current = dict(current_status.get(name, {}))
            status = dict(current, alerts=str(counts.get(name, 0)))
            if status == current:
                continue
            self._write(("mb-status", name), status,
                        lambda: self._nb.set_middlebox_status(name, status).execute(
                            check_error=True))

    def _set_location(self, vm, host, epoch):
        self._nb.set_vm_location(vm, host, epoch).execute(check_error=True)
        # Events handled before the database's change notification arrives
        # must see this write: the next epoch is computed from it.
        self.nb_snap.vm_locations[vm] = (host, epoch)
        if host is not None:
            self._last_host[vm] = host


LB_HEALTH = "lb-health"     # shared-state service of the load balancers' health
VM_STATE = "vm-state"       # shared-state service: VMs whose state a host holds


def _affected_hosts(old, new, old_blocks, new_blocks, host, vms):
    """The hosts whose flows may differ between topologies ``old`` and
    ``new`` when only ``host``'s ports (its VMs ``vms``) changed: ``host``
    if its own ports did; the hosts with a VM or a slice of a logical switch
    where a VM's binding, a slice or a SNAT block changed (before or after);
    the hosts an external address's designated host moved from or to.  A
    host's flows depend on nothing else (``flows.compute_host_flows``)."""
    hosts, switches = set(), set()
    if host is not None and old.hosts.get(host) != new.hosts.get(host):
        hosts.add(host)
    for vm in vms:
        if old.bindings.get(vm) != new.bindings.get(vm):
            for topo in (old, new):
                if vm in topo.vms:
                    switches.add(topo.vms[vm].switch)
    for (chain, slice_host), _tag in old.slices.items() ^ new.slices.items():
        hosts.add(slice_host)
        switches.add(slicelib.chain_switch(new, chain))
    for (rule, _host), _block in old_blocks.items() ^ new_blocks.items():
        for name, rules in new.nat_rules.items():
            if any(r.uuid == rule for r in rules) and name in new.middleboxes:
                switches.add(new.middleboxes[name].switch)
    before, after = slicelib.designated_hosts(old), slicelib.designated_hosts(new)
    for address in before.keys() | after.keys():
        if before.get(address) != after.get(address):
            hosts.update(h for h in (before.get(address), after.get(address)) if h)
    for switch in switches:
        hosts |= slicelib.switch_hosts(old, switch) | slicelib.switch_hosts(new, switch)
    return hosts


def _records(value):
    """The rows of a snapshot field that may be a mapping or a sequence."""
    if value is None:
        return []
    return list(value.values()) if hasattr(value, "values") else list(value)


def _by_middlebox(value):
    """{middlebox: (record, ...)} from a snapshot field keyed by middlebox
    (values: tuples of records) or by record (values: records)."""
    if hasattr(value, "items") and all(isinstance(v, (tuple, list)) for v in value.values()):
        return {name: tuple(recs) for name, recs in value.items()}
    out = {}
    for rec in _records(value):
        out.setdefault(rec.middlebox, []).append(rec)
    return {name: tuple(recs) for name, recs in out.items()}


class EngineLoop:
    """Runs an Engine's event methods on one thread, in arrival order.

    Config-database change notifications are coalesced: many row changes in a
    burst cause one snapshot and one recomputation.
    """

    def __init__(self, engine=None):
        self.engine = engine        # may be set later, before start()
        self._queue = queue.Queue()
        self._nb_pending = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mbx-engine",
                                        daemon=True)

    def start(self):
        self._thread.start()

    def post(self, method, *args):
        self._queue.put((method, args))

    def post_nb_changed(self, *_ignored):
        if not self._nb_pending.is_set():
            self._nb_pending.set()
            self._queue.put(("_nb", ()))

    def stop(self):
        self._queue.put(None)

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            method, args = item
            try:
                if method == "_nb":
                    self._nb_pending.clear()
                    self.engine.nb_changed()
                else:
                    getattr(self.engine, method)(*args)
            except Exception:   # one bad event must not stop the controller
                LOG.exception("engine event %s failed", method)
