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

Incremental computation.  The topology is kept change by change
(``topostate.TopologyState``): a host's port event updates the bindings of
that host's VMs and what follows from them (slices, SNAT blocks), and marks
the flow parts (``flows.host_parts``) of the hosts it can touch; only those
parts are computed again and compared with the switch, part by part.  A
config snapshot rebuilds the topology and computes every part only when
what the flows are made of changed (``_config``); status written back by
the daemons or the controller computes nothing.  A switch that connects,
or whose host changed, gets every part, compared with the flows read back.

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
from ryu_apps.topostate import ALL, TopologyState, host_info
from mbxmodel.network import HostPorts, PortBinding
from mbxmodel.state import ACTIVE_MIGRATION
from mbxmodel.topology import Topology

LOG = logging.getLogger(__name__)


@dataclass
class _Switch:
    dpid: int
    host: Optional[str] = None
    synced: bool = False            # installed flows read back from the switch
    installed: Dict = field(default_factory=dict)   # Flow.key -> Flow
    parts: Dict = field(default_factory=dict)       # part id -> {Flow.key: Flow}
    contested: bool = False         # a flow key in two parts (flows.union)
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
        self._bad_health = set()    # shared-state rows already logged as bad
        self._last_host: Dict[str, str] = {}   # vm -> the last host VM.host named
        self._checked_seq: Dict[str, int] = {}  # vm -> newest appearance checked
        #                                          for an unannounced migration
        self._state = TopologyState()   # the topology of the last recomputation
        self._config = None             # the configuration it was built from
        self._vm_hosts: Dict[str, set] = {}    # vm -> hosts where its port appeared
        self._to_announce = set()       # VMs whose binding VM.host does not say yet
        self._maybe_gone = set()        # VMs VM.host places where they are not bound
        self._recorded_blocks = (None, {})  # (snapshot, the SNAT blocks it records)
        self._slices_checked = None     # (slices version, snapshot) last compared with the DB

    # ------------------------------------------------------------- inputs
    def nb_changed(self):
        self.nb_snap = snap = self._nb.snapshot()
        for vm, (host, _epoch) in snap.vm_locations.items():
            if host is not None:
                self._last_host[vm] = host
        bound = self._state.topo.bindings if self._state.topo is not None else {}
        self._maybe_gone = {vm for vm, (host, _) in snap.vm_locations.items()
                            if host is not None and vm not in bound}
        config = _config(snap)
        if config != self._config:
            self._config = config
            self._recompute()
        else:
            # Status only (what the daemons and the controller write back),
            # or VMs announced on a host: no flow is computed again unless
            # that changes a slice.
            self._recompute(changes=({}, (), _incoming(snap)))

    def host_ports_changed(self, host, ports: HostPorts):
        old = self.host_ports.get(host, HostPorts())
        self.host_ports[host] = ports
        for vm, (ofport, _mac) in ports.vm_ports.items():
            prev = self._appearances.get((vm, host))
            if prev is None or prev[1] != ofport or vm not in old.vm_ports:
                self._appear_seq += 1
                self._appearances[(vm, host)] = (self._appear_seq, ofport)
                self._vm_hosts.setdefault(vm, set()).add(host)
        for vm in old.vm_ports:
            if vm not in ports.vm_ports:
                self._appearances.pop((vm, host), None)
                self._vm_hosts.get(vm, set()).discard(host)
        if old.datapath_id != ports.datapath_id:
            self._match_switches()
        if self._sb_ready:
            self._recompute(changes=({host: ports}, set(old.vm_ports) | set(ports.vm_ports),
                                     None))

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
        self._recompute(changes=({}, (), None))

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
        """The topology of the last recomputation (an empty one before the
        config database answered)."""
        return self._state.topo if self._state.topo is not None else Topology()

    @property
    def _snat_blocks(self):
        return self._state.blocks

    def _binding(self, vm):
        """The binding of ``vm`` that wins: its newest appearance whose port
        carries the VM's MAC (or none), or None."""
        info = self.nb_snap.vms.get(vm)
        if info is None:
            return None
        best = None
        for host in self._vm_hosts.get(vm, ()):
            seq, ofport = self._appearances[(vm, host)]
            mac = self.host_ports[host].vm_ports[vm][1]
            if (mac and mac.lower() != info.mac) or (best is not None and best[0] > seq):
                continue
            best = (seq, PortBinding(vm=vm, host=host, ofport=ofport))
        return best[1] if best is not None else None

    def _rebuild(self):
        snap = self.nb_snap
        config = Topology(
            switches=dict(snap.switches), vms=dict(snap.vms),
            middleboxes=dict(snap.middleboxes), policies=tuple(snap.policies),
            address_sets=dict(snap.address_sets),
            nat_rules=_by_middlebox(getattr(snap, "nat_rules", {})),
            vips=_by_middlebox(getattr(snap, "vips", {})),
            external_networks={n.name: n for n in _records(
                getattr(snap, "external_networks", {}))})
        hosts = {name: host_info(rec, self.host_ports.get(name, HostPorts()))
                 for name, rec in snap.hosts.items()}
        bindings = {}
        for vm in self._vm_hosts:
            binding = self._binding(vm)
            if binding is not None:
                bindings[vm] = binding
        return self._state.rebuild(config, hosts, bindings, _incoming(snap), snap.slices,
                                   self._state.topo.slices if self._state.topo else {},
                                   self._recorded_blocks_now())

    def _recorded_blocks_now(self):
        """The SNAT blocks the database records (Slice.status)."""
        snap = self.nb_snap
        if self._recorded_blocks[0] is not snap:
            self._recorded_blocks = (snap, slicelib.Blocks(slicelib.blocks_from_status(
                getattr(snap, "slice_status", {}))))
        return self._recorded_blocks[1]

    def _current_seq(self, vm, binding):
        return self._appearances[(vm, binding.host)][0]

    def _recompute(self, changes=None):
        """A new round.  ``changes``: (hosts' new ports {host: HostPorts},
        VMs whose binding may have changed, the (vm, host) pairs of VMs
        announced on a host now or None if unchanged); the topology is
        updated with them and only the flow parts they touch are computed
        again (``topostate``).  None: the configuration changed, every
        host is computed again."""
        if self.nb_snap is None:
            return
        self._round += 1
        rnd = self._round
        self._round_cfg[rnd] = self.nb_snap.nb_cfg
        if changes is None or self._state.topo is None:
            topo = self._rebuild()
            dirty, vms = None, sorted(set(topo.bindings) | set(self._binding_round))
        else:
            ports, vms, incoming = changes
            snap = self.nb_snap
            hosts = {h: host_info(snap.hosts[h], p) for h, p in ports.items()
                     if h in snap.hosts}
            vms = sorted(vms)
            dirty = self._state.update(hosts, {vm: self._binding(vm) for vm in vms},
                                       incoming, snap.slices,
                                       self._recorded_blocks_now())
            topo = self._state.topo
        for vm in vms:
            binding = topo.bindings.get(vm)
            if binding is None:
                self._binding_round.pop(vm, None)
                if self.nb_snap.vm_locations.get(vm, (None,))[0] is not None:
                    self._maybe_gone.add(vm)
                continue
            seq = self._current_seq(vm, binding)
            if self._binding_round.get(vm, (None,))[0] != seq:
                self._binding_round[vm] = (seq, rnd)
                self._to_announce.add(vm)
        self._record_unannounced(topo, vms)     # before any flow for the new place
        program = self._all_hosts_reported()
        for sw in self.switches.values():
            if not program or not sw.synced or sw.host is None:
                sw.current = False
                continue
            parts = ALL if dirty is None or not sw.current else dirty.get(sw.host)
            sw.target_round = rnd
            if parts is None:           # its flows cannot have changed
                if not sw.pending:
                    sw.applied_round = rnd
                continue
            diff = self._program(sw, topo, parts)
            if diff.empty:
                if not sw.pending:
                    sw.applied_round = rnd
                continue
            self._xid += 1
            LOG.info("%s: %d deletes, %d modifies, %d adds (round %d)", sw.host,
                     len(diff.deletes), len(diff.modifies), len(diff.adds), rnd)
            sw.pending[self._xid] = rnd
            self._send(sw.dpid, diff.commands(), self._xid)
        self._publish(topo)

    def _program(self, sw, topo, parts):
        """Compute ``parts`` (ALL, or a set of part ids) of the switch's
        host again and return the difference to what the switch holds;
        ``sw.installed`` becomes the host's flows."""
        host, blocks = sw.host, self._state.blocks
        ids = flowlib.host_parts(topo, host)
        if parts is not ALL and not sw.contested:
            present = set(ids)
            old, new = [], {}
            for part in parts:
                old.append(sw.parts.pop(part, {}))
                if part in present:
                    new[part] = flowlib.compute_part(topo, host, part, blocks)
            sw.parts.update(new)
            diff = reconcile.diff_parts(sw.installed, old,
                                        [new[p] for p in ids if p in new])
            if diff is not None:
                reconcile.apply_to(sw.installed, diff)
                sw.current = True
                return diff
        else:
            sw.parts = {part: flowlib.compute_part(topo, host, part, blocks) for part in ids}
        # every part, or a flow key in two parts: the union of them all
        desired, contested = flowlib.union({part: sw.parts[part] for part in ids})
        sw.contested = bool(contested)
        diff = reconcile.diff_tables(desired, sw.installed)
        sw.installed = desired
        sw.current = True
        return diff

    def _record_unannounced(self, topo, vms):
        """A Migration row (unannounced) for each VM of ``vms`` whose port
        newly appeared on a host other than its last one, unless a migration
        to that host is under way (or, announced, was just finished).  Once
        per appearance; a failed write is logged and does not hold flows
        back."""
        snap = self.nb_snap
        for vm in vms:
            binding = topo.bindings.get(vm)
            if binding is None:
                continue
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
        topo = topo or self.topology()
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
        state = self._state
        if self._all_hosts_reported() and self._slices_checked != (state.version, snap):
            # The slices and their status written when they changed (the
            # database had the ones written before) or when the database
            # says otherwise (compared once per snapshot).
            status = state.status
            if self._slices_checked is not None and self._slices_checked[1] is snap:
                differ = True
            else:
                current = {k: dict(v) for k, v in getattr(snap, "slice_status", {}).items()}
                differ = dict(topo.slices) != dict(snap.slices) \
                    or {k: v for k, v in status.items() if v} \
                    != {k: v for k, v in current.items() if v and k in topo.slices}
            if differ and self._written.get(("slices",)) != state.version:
                self._nb.set_slices(dict(topo.slices), status).execute(check_error=True)
                self._written[("slices",)] = state.version
            self._slices_checked = (state.version, snap)
        self._publish_vip_status()
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
        for vm in sorted(self._to_announce):
            if vm not in self._binding_round:
                self._to_announce.discard(vm)
                continue
            seq, first_round = self._binding_round[vm]
            if self._announced.get(vm) == seq:
                self._to_announce.discard(vm)
                continue
            if applied is not None and applied < first_round:
                continue        # not yet programmed on every connected host
            self._to_announce.discard(vm)
            host = topo.bindings[vm].host
            cur_host, epoch = snap.vm_locations.get(vm, (None, 0))
            if vm not in self._announced and cur_host == host:
                self._announced[vm] = seq   # already recorded (controller restart)
                continue
            self._set_location(vm, host, epoch + 1)
            self._announced[vm] = seq
            LOG.info("VM %s now on %s (epoch %d)", vm, host, epoch + 1)
        for vm in sorted(self._maybe_gone):
            # Only a host whose br-int has been reported can be known not to
            # hold the port (after a restart the DB is read before any host).
            cur_host, epoch = snap.vm_locations.get(vm, (None, 0))
            if cur_host is None or vm in topo.bindings:
                self._maybe_gone.discard(vm)
                continue
            ports = self.host_ports.get(cur_host)
            reported = ports.datapath_id if ports is not None else None
            if reported is not None \
                    and self._written.get(("gone", vm)) != epoch:
                self._set_location(vm, None, epoch)
                self._written[("gone", vm)] = epoch
                self._announced.pop(vm, None)

    def _publish_vip_status(self):
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
        for name, vips in sorted(_by_middlebox(getattr(self.nb_snap, "vips", {})).items()):
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


def _incoming(snap):
    """(vm, host) pairs that need the VM's slices on a host where it may not
    be bound (``slices.needed_slices``): the destination and the source of
    an active migration, and a host that holds state of a VM that left
    (shared state "vm-state": the VM's new host may still ask for it, and
    its SNAT ports are forwarded from there)."""
    out = {(m.vm, host) for m in getattr(snap, "migrations", ())
           if m.status in ACTIVE_MIGRATION for host in (m.destination, m.source)}
    out.update((row.key, row.host) for row in _records(getattr(snap, "shared_state", ()))
               if getattr(row, "service", None) == VM_STATE)
    return frozenset(out)


def _config(snap):
    """What of a config snapshot the flows are computed from: everything
    but the status columns (hosts' nb_cfg, connection and datapath; VM
    locations; slices; LB_VIP, Middlebox and Migration status; shared
    state and IDS alerts; the nb_cfg / hv_cfg counters)."""
    vips = {name: tuple(dataclasses.replace(v, status={}) for v in recs)
            for name, recs in _by_middlebox(getattr(snap, "vips", {})).items()}
    return ({name: (h.encap_ip, h.encap_type) for name, h in snap.hosts.items()},
            snap.switches, snap.vms, snap.middleboxes, tuple(snap.policies),
            snap.address_sets, _by_middlebox(getattr(snap, "nat_rules", {})), vips,
            {n.name: n for n in _records(getattr(snap, "external_networks", {}))})


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
