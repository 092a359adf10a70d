"""The physical controller's engine: desired flows, reconciliation and
what it reports of its hosts.

Plain Python with no os-ken import.  The os-ken application and the
southbound connection (``ovsdb.southbound``: each host's chassis record and
port bindings, ``SB_Global.sb_cfg``) are thin shells that feed it events; it
answers through what it was given:

* ``send(dpid, ops, barrier_xid)`` -- install ``ops`` (``FlowDiff.commands()``:
  ``(command, Flow)`` pairs, deletes first) on a switch, followed by a barrier
  request with that xid;
* ``nb`` -- the config database API (``snapshot``, ``migration_create``);
* ``sb`` -- the southbound writer (``set_chassis_status``);
* ``hosts`` -- the names of the hosts it serves (None: every host), and
  ``name``, its own, recorded with what it reports.

Every event method must be called from ONE thread (``EngineLoop`` runs them).

What it computes from.  The intent and the logical controller's decisions
(slices and SNAT blocks, ``ryu_apps.northd``) come from the northbound
snapshot; where each VM's port is, from the southbound bindings
(``ryu_apps.view``).  It decides nothing cloud-wide itself, so any number of
engines, each serving some hosts, compute the same flows for a host.

Rounds.  Each recomputation is a numbered round that records the
generations it was computed from: ``NB_Global.northd_cfg`` (the config the
logical controller has translated) and ``SB_Global.sb_cfg`` (the bindings
the logical controller has seen).  A switch has applied round r once every
barrier sent up to r is acknowledged; then the engine writes its host's
southbound ``Chassis_Private`` row: connected, and the two generations.  The
logical controller turns those into ``Host.nb_cfg``, ``NB_Global.hv_cfg``
and the VMs' locations.

Migrations (docs/migration.md).  When a VM's port appears on one of its
hosts, other than the VM's last host (``VM.host``), and no active migration
of the VM names that host, the engine writes an ``unannounced`` Migration
row, before it sends any flow for the VM's new place.
"""

import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ovsdb.validate import global_wait_ms
from ryu_apps import flows as flowlib
from ryu_apps import reconcile
from ryu_apps import slices as slicelib
from mbxmodel.network import ChassisStatus, HostPorts
from mbxmodel.state import ACTIVE_MIGRATION
from mbxmodel.topology import Topology
from ryu_apps.view import Bindings, TopologyBuilder

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
    def __init__(self, send, nb, sb=None, hosts=None, name=""):
        self._send = send
        self._nb = nb
        self._sb = sb
        self._hosts = None if hosts is None else frozenset(hosts)
        self.name = name
        self.nb_snap = None
        self.bindings = Bindings()
        self._builder = TopologyBuilder()
        self.switches: Dict[int, _Switch] = {}
        self._sb_ready = False
        self._sb_cfg = 0
        self._round = 0
        self._round_cfg: Dict[int, Tuple[int, int]] = {0: (0, 0)}  # round -> (northd_cfg, sb_cfg)
        self._written: Dict[Tuple, object] = {}
        self._xid = 0x4d420000
        self._snat_blocks: Dict[Tuple[str, str], Tuple[str, int, int]] = {}
        #                   (SNAT rule uuid, host) -> (ip, lo, hi)
        self._last_host: Dict[str, str] = {}   # vm -> the last host VM.host named
        self._checked_seq: Dict[str, int] = {}  # vm -> newest appearance checked
        #                                          for an unannounced migration
        self._topo: Optional[Topology] = None  # of the last recomputation

    @property
    def host_ports(self):
        return self.bindings.host_ports

    def serves(self, host):
        return host is not None and (self._hosts is None or host in self._hosts)

    # ------------------------------------------------------------- inputs
    def nb_changed(self):
        self.nb_snap = self._nb.snapshot()
        for vm, (host, _epoch) in self.nb_snap.vm_locations.items():
            if host is not None:
                self._last_host[vm] = host
        self._recompute()

    def host_ports_changed(self, host, ports: HostPorts):
        old = self.bindings.update(host, ports)
        self._match_switches()
        if self._sb_ready:
            self._recompute(changed=(host, set(old.vm_ports) | set(ports.vm_ports)))

    def sb_cfg_changed(self, value):
        """``SB_Global.sb_cfg``: the bindings reported before it are all the
        logical controller had seen when it wrote ``value``."""
        self._sb_cfg = value
        if self._sb_ready:
            self._recompute(changed=(None, ()))

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
        self._publish_host(sw)
        self._forget_rounds()

    def flow_error(self, dpid, text):
        """A switch refused a message; the flow computation has a bug."""
        sw = self.switches.get(dpid)
        LOG.error("switch %016x (%s) reported an error: %s", dpid,
                  sw.host if sw else "?", text)

    # ---------------------------------------------------------- internals
    def _match_switches(self):
        by_dpid = {p.datapath_id: h for h, p in self.host_ports.items()
                   if p.datapath_id is not None and self.serves(h)}
        for sw in self.switches.values():
            host = by_dpid.get(sw.dpid)
            if host != sw.host:
                sw.host = host
                sw.current = False

    def topology(self) -> Topology:
        snap = self.nb_snap
        if snap is None:
            return Topology()
        self._snat_blocks = slicelib.blocks_from_status(getattr(snap, "slice_status", {}))
        return self._builder.build(snap, self.bindings)

    def _current_seq(self, vm, binding):
        return self.bindings.seq(vm, binding.host)

    def _recompute(self, changed=None):
        """A new round.  ``changed``: (host, VM names) when only that host's
        ports changed (host None: nothing but a switch's installed flows or
        the southbound generation), so only the hosts it can affect are
        computed again; None: every host."""
        if self.nb_snap is None:
            return
        self._round += 1
        rnd = self._round
        self._round_cfg[rnd] = (getattr(self.nb_snap, "northd_cfg", 0), self._sb_cfg)
        old, old_blocks = self._topo, self._snat_blocks
        topo = self.topology()
        self._topo = topo
        dirty = None
        if changed is not None and old is not None:
            dirty = _affected_hosts(old, topo, old_blocks, self._snat_blocks, *changed)
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
        self._publish()

    def _record_unannounced(self, topo):
        """A Migration row (unannounced) for each VM whose port newly appeared
        on a host this engine serves, other than its last one, unless a
        migration to that host is under way (or, announced, was just
        finished).  Once per appearance; a failed write is logged and does
        not hold flows back."""
        snap = self.nb_snap
        for vm, binding in sorted(topo.bindings.items()):
            if not self.serves(binding.host):
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

    def _report(self, host, status):
        """Write ``host``'s Chassis_Private row, unless it already says so."""
        if self._sb is None or self._written.get(("chassis", host)) == status:
            return
        self._written[("chassis", host)] = status
        self._sb.set_chassis_status(status)

    def _publish(self):
        """Every served host's status: its switch's applied round, or not
        connected (only hosts this engine has reported connected before)."""
        live = self._live()
        for sw in live:
            self._publish_host(sw)
        live_hosts = {sw.host for sw in live}
        for key, status in list(self._written.items()):
            if key[0] == "chassis" and key[1] not in live_hosts and status.connected:
                self._report(key[1], dataclasses.replace(status, connected=False))
        self._forget_rounds()

    def _publish_host(self, sw):
        northd_cfg, sb_cfg = self._round_cfg.get(sw.applied_round, (0, 0))
        self._report(sw.host, ChassisStatus(name=sw.host, controller=self.name,
                                            connected=True, nb_cfg=northd_cfg,
                                            sb_cfg=sb_cfg))

    def _forget_rounds(self):
        low = min((sw.applied_round for sw in self._live()), default=self._round)
        for rnd in [r for r in self._round_cfg if r < low]:
            del self._round_cfg[rnd]


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
