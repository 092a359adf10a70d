"""The physical controller's engine: desired flows, reconciliation and
what it reports of its hosts.

Plain Python with no os-ken import.  The os-ken application and the
southbound connection (``ovsdb.southbound``: the switches' Datapath records,
the runtime rows, each host's chassis record and port bindings,
``SB_Global.sb_cfg``) are thin shells that feed it events; it reads nothing
from the northbound database.  It answers through what it was given:

* ``send(dpid, ops, barrier_xid)`` -- install ``ops`` (``FlowDiff.commands()``:
  ``(command, Flow)`` pairs, deletes first) on a switch, followed by a barrier
  request with that xid;
* ``sb`` -- the southbound writer (``set_chassis_statuses``,
  ``record_migration``); the southbound connection also reports the
  logical switches' ``Datapath`` records (``datapaths_changed``) and the
  runtime rows (``runtime_changed``);
* ``hosts`` -- the names of the hosts it serves (None: every host; changed
  with ``set_served``), and ``name``, its own, recorded with what it reports;
* ``read_flows(dpid)`` -- ask a switch for its flows again (the answer
  comes back as ``switch_flows``): a host it starts serving is reconciled
  against what its switch holds now, not what it held when it connected.

Serving.  The engine programs and reports only the hosts it serves: it
keeps the topology and every connected switch (flows read back) of the
others, so serving one more host (``set_served``: the physical controller
got its lock, ``ovsdb.locks``) is a reconciliation, as after a restart:
the switch's flows are read again and every part compared with them; flows
that are right get no message.  A host it stops serving gets no message
from it any more, and no status: the controller that serves it now writes
its ``Chassis_Private`` row.

Every event method must be called from ONE thread (``EngineLoop`` runs them).

What it computes from.  The intent comes from the southbound ``Datapath``
records the logical controller translated (``mbxmodel.datapath``: one per
logical switch, decoded row by row, a malformed row left out); the logical
controller's decisions (slices and SNAT blocks, ``ryu_apps.northd``), the
hosts' tunnel endpoints and the VMs' last locations from the southbound
runtime rows (``runtime_changed``); where each VM's port is, from the
southbound bindings (``ryu_apps.view``).  It decides nothing cloud-wide
itself, so any number of engines, each serving some hosts, compute the
same flows for a host.

Incremental computation.  The topology is kept change by change
(``topostate.TopologyState``): a host's port event updates the bindings of
that host's VMs and marks the flow parts (``flows.host_parts``) of the
hosts it can touch; the logical controller's slices and SNAT blocks, when
they change, mark theirs; only those parts are computed again and compared
with the switch, part by part.  Datapath records whose flow-relevant
content changed (``datapath.flows_changed``: not a firewall rule, which is
mbxd's) rebuild the topology and compute again the parts of those switches
on the hosts they are on (``topostate.config_dirty``); hosts' tunnel
endpoints that changed (``view.config_key``) rebuild it and compute every
part; status written back by the daemons or the controllers computes
nothing.  A switch that connects, or whose host changed, gets every part,
compared with the flows read back.

Rounds.  Each recomputation is a numbered round that records the
generations it was computed from: ``SB_Global.nb_cfg`` (the config the
logical controller has translated: written after the Datapath records and
the slices decided for it, so it arrives after them) and
``SB_Global.sb_cfg`` (the bindings the logical controller has seen).  A
switch has applied round r once every barrier sent up to r is acknowledged;
then the engine writes its host's southbound ``Chassis_Private`` row:
connected, and the two generations.  The logical controller turns those
into ``NB_Global.hv_cfg`` and the VMs' locations.  ``sb_cfg`` is reported
only for hosts a round touched (flow parts computed again, barriers
pending, or a report owed): the logical controller waits for the hosts a
VM's binding touches only, and the hosts the binding touched owe it the
report of every ``sb_cfg`` until the VM's location is written (the
``sb_cfg`` raised for the binding arrives after it; ``ovsdb/mbx_sb.md``,
the sb_cfg protocol).  A round of an unchanged ``nb_cfg`` publishes only
the status of the switches it touched.

Runtime rows by change.  The southbound connection hands over what
changed (``SbDelta``); the engine keeps the rows (``SbRuntime``), the
logical controller's slices and the SNAT blocks recorded in their status
slice by slice (``slices.RecordedBlocks``), and tells the topology which
of them changed, so no event parses or compares every slice of the
cloud.

Migrations (docs/migration.md).  When a VM's port appears on one of its
hosts, other than the VM's last host (southbound ``VM_Location``), and no
active migration of the VM names that host, the engine writes an
``unannounced`` southbound Migration row, and waits for it to be committed
before it sends any flow for the VM's new place.
"""

import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mbxmodel import datapath as dplib
from ovsdb.validate import global_wait_ms
from ryu_apps import flows as flowlib
from ryu_apps import reconcile
from ryu_apps import slices as slicelib
from ryu_apps.topostate import ALL, TopologyState, config_dirty, host_info
from ryu_apps.view import Bindings, config_key
from mbxmodel.network import ChassisStatus, HostPorts
from mbxmodel.snapshot import SbRuntime, SbSnapshot
from mbxmodel.state import ACTIVE_MIGRATION
from mbxmodel.topology import Topology

LOG = logging.getLogger(__name__)

# How long the engine waits for its unannounced Migration row to be committed.
MIGRATION_WRITE_TIMEOUT = 5.0


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
    target_sb: int = 0              # the sb_cfg reported once target_round is applied
    applied_sb: int = 0             # the sb_cfg reported (Chassis_Private.sb_cfg)
    current: bool = False           # installed = the flows of the last topology


class Engine:
    def __init__(self, send, sb=None, hosts=None, name="", read_flows=None):
        self._send = send
        self._read_flows = read_flows
        self._sb = sb
        self._hosts = None if hosts is None else frozenset(hosts)
        self.name = name
        self.sb_snap = SbRuntime()      # the runtime rows (runtime_changed)
        self.bindings = Bindings()
        self.switches: Dict[int, _Switch] = {}
        self._sb_ready = False
        self._sb_cfg = 0
        self._datapaths = dplib.Reader()  # the Datapath records, decoded
        self._intent = None             # their topology (datapath.topology)
        self._nb_cfg = 0                # SB_Global.nb_cfg: what they translate
        self._round = 0
        self._round_cfg: Dict[int, Tuple[int, int]] = {0: (0, 0)}  # round -> (nb_cfg, sb_cfg)
        self._written: Dict[Tuple, object] = {}
        self._xid = 0x4d420000
        self._last_host: Dict[str, str] = {}   # vm -> the last host VM_Location named
        self._checked_seq: Dict[str, int] = {}  # vm -> newest appearance checked
        #                                          for an unannounced migration
        self._state = TopologyState()   # the topology of the last recomputation
        self._config = None             # the configuration it was built from
        # The logical controller's decisions, kept as the runtime rows change:
        self._slices = {}               # the slices whose chain the records know
        self._recorded = slicelib.RecordedBlocks()  # the SNAT blocks they record
        self._decided_intent = None     # the records' topology they were made for
        self._slice_keys = None         # slices changed since (None: every one)
        self._decided_keys = None       # (slice keys, block keys) changed since the
        #                                 topology took them (None: every one)
        self._owed: Dict[str, set] = {}  # vm -> hosts whose sb_cfg it is owed
        self._hosts_changed = True      # a switch's host changed: publish every host
        self._published_nb = None       # the nb_cfg of the last round published

    @property
    def host_ports(self):
        return self.bindings.host_ports

    def serves(self, host):
        return host is not None and (self._hosts is None or host in self._hosts)

    def set_served(self, hosts):
        """Serve exactly ``hosts`` from now on (None: every host)."""
        hosts = None if hosts is None else frozenset(hosts)
        if hosts == self._hosts:
            return
        old = {sw.dpid: sw.host for sw in self.switches.values()}
        self._hosts = hosts
        LOG.info("serving %s", "every host" if hosts is None else
                 ", ".join(sorted(hosts)) or "no host")
        self._match_switches()
        for sw in self.switches.values():
            if sw.host == old[sw.dpid]:
                continue
            if old[sw.dpid] is not None:
                # Lost: its barriers and its status are the new holder's.
                sw.pending.clear()
                self._written.pop(("chassis", old[sw.dpid]), None)
            if sw.host is not None:
                self._written.pop(("chassis", sw.host), None)
                if sw.synced and self._read_flows is not None:
                    # What it holds now (another controller programmed it):
                    # the parts are compared with that once it arrives.
                    sw.synced = False
                    self._read_flows(sw.dpid)
        self._recompute(changes=({}, ()))

    def statuses_changed(self, statuses):
        """The ``Chassis_Private`` rows ({name: ChassisStatus}): a served
        host's row naming another controller (whose write landed after this
        engine took the host over) is written again."""
        for sw in self._live():
            row = statuses.get(sw.host)
            if row is not None and row.controller != self.name:
                self._written.pop(("chassis", sw.host), None)
        self._publish()

    # ------------------------------------------------------------- inputs
    def runtime_changed(self, change):
        """The southbound runtime rows (hosts' chassis, slices, VM
        locations, migrations): what changed (an ``SbDelta``), or all of
        them (an ``SbSnapshot``)."""
        if isinstance(change, SbSnapshot):
            self.sb_snap = SbRuntime.of(change)
            self._slice_keys = None
            config = config_key(self.sb_snap.hosts)
        else:
            self.sb_snap.apply(change)
            if self._slice_keys is not None:
                self._slice_keys.update(change.slices)
            for vm, location in change.vm_locations.items():
                self._location_written(vm, location)
            # The last host a VM was located on, also when its location
            # moved after its port events were handled (an announced move).
            self._remember_hosts(self.sb_snap.vm_locations, change.vm_locations)
            config = self._config
            if change.hosts and self._config is not None:
                config = dict(self._config)
                for name, rec in change.hosts.items():
                    if rec is None:
                        config.pop(name, None)
                    else:
                        config[name] = (rec.encap_ip, rec.encap_type)
        if config != self._config:
            self._config = config
            self._recompute()
        else:
            # Status only (what the daemons and the controllers write back),
            # or the logical controller's slices and blocks: no flow is
            # computed again unless those changed.
            self._recompute(changes=({}, ()))

    def _location_written(self, vm, location):
        """The logical controller wrote ``vm``'s location: the hosts that
        owed it a report for the VM's binding owe it no more."""
        if vm not in self._owed:
            return
        binding = self._state.topo.bindings.get(vm) if self._state.topo else None
        if binding is None or (location is not None and location[0] == binding.host):
            del self._owed[vm]

    def host_ports_changed(self, host, ports: HostPorts):
        old = self.bindings.update(host, ports)
        if old.datapath_id != ports.datapath_id:
            self._match_switches()
        if self._sb_ready:
            self._recompute(changes=({host: ports}, set(old.vm_ports) | set(ports.vm_ports)))

    def datapaths_changed(self, rows, nb_cfg):
        """The southbound Datapath rows ({name: (tenant, vni, config)}) and
        ``SB_Global.nb_cfg``: every switch's translated intent, up to that
        config generation."""
        changes = self._datapaths.update(rows)
        self._nb_cfg = nb_cfg
        switches = {name for name, change in changes.items()
                    if dplib.flows_changed({name: change})}
        if self._intent is None or switches:
            first = self._intent is None
            self._intent = dplib.topology(self._datapaths.records.values())
            self._recompute(switches=None if first else switches)
        else:
            self._recompute(changes=({}, ()))

    def sb_cfg_changed(self, value):
        """``SB_Global.sb_cfg``: the bindings reported before it are all the
        logical controller had seen when it wrote ``value``."""
        self._sb_cfg = value
        if self._sb_ready:
            self._recompute(changes=({}, ()))

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
        self._recompute(changes=({}, ()))

    def switch_disconnected(self, dpid):
        sw = self.switches.pop(dpid, None)
        if sw is not None:
            LOG.info("switch %016x (%s) disconnected", dpid, sw.host)
            self._hosts_changed = True
            self._publish()

    def barrier_reply(self, dpid, xid):
        sw = self.switches.get(dpid)
        if sw is None or sw.pending.pop(xid, None) is None:
            return
        if sw.pending:
            return                      # its round is not applied yet: nothing to say
        sw.applied_round = sw.target_round
        sw.applied_sb = sw.target_sb
        if sw.host is not None:
            self._report([self._host_status(sw)])
        self._forget_rounds()

    def flow_error(self, dpid, text):
        """A switch refused a message; the flow computation has a bug."""
        sw = self.switches.get(dpid)
        LOG.error("switch %016x (%s) reported an error: %s", dpid,
                  sw.host if sw else "?", text)

    # ---------------------------------------------------------- internals
    def _match_switches(self):
        self._hosts_changed = True
        by_dpid = {p.datapath_id: h for h, p in self.host_ports.items()
                   if p.datapath_id is not None and self.serves(h)}
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

    def _decisions(self):
        """The logical controller's slices and SNAT blocks in the runtime
        rows, kept slice by slice: the same objects as long as they are
        equal (the topology compares them by identity first); the keys
        that changed since the topology last took them are in
        ``_decided_keys``."""
        snap, intent = self.sb_snap, self._intent
        if self._decided_intent is not intent or self._slice_keys is None:
            self._slices = dplib.known_slices(snap.slices, intent)
            if self._slices is snap.slices:
                self._slices = dict(snap.slices)
            self._recorded = slicelib.RecordedBlocks(snap.slice_status)
            self._decided_intent, self._slice_keys = intent, set()
            self._decided_keys = None
        elif self._slice_keys:
            keys, self._slice_keys = self._slice_keys, set()
            known = intent.middleboxes
            changed = {}
            for key in keys:
                tag = snap.slices.get(key)
                if tag is None or not all(n in known for n in key[0]):
                    tag = None
                if self._slices.get(key) != tag:
                    changed[key] = tag
            if changed:
                slices = dict(self._slices)     # a new mapping: handed over before
                for key, tag in changed.items():
                    if tag is None:
                        del slices[key]
                    else:
                        slices[key] = tag
                self._slices = slices
            blocks = self._recorded.update({k: snap.slice_status.get(k) for k in keys})
            if self._decided_keys is not None:
                self._decided_keys[0].update(changed)
                self._decided_keys[1].update(blocks)
        return self._slices, self._recorded.blocks

    def _taken_keys(self):
        """The decision keys changed since the topology last took them
        (``_decisions``); the topology takes them now."""
        keys, self._decided_keys = self._decided_keys, (set(), set())
        return keys

    def _rebuild(self):
        hosts = {name: host_info(rec, self.host_ports.get(name, HostPorts()))
                 for name, rec in self.sb_snap.hosts.items()}
        topo = self._state.rebuild(self._intent, hosts,
                                   self.bindings.bound(self._intent.vms), incoming=(),
                                   recorded_slices={}, slices={}, recorded_blocks={},
                                   decided=self._decisions())
        self._taken_keys()
        return topo

    def _recompute(self, changes=None, switches=None):
        """A new round.  ``changes``: (hosts' new ports {host: HostPorts},
        VMs whose binding may have changed); the topology is updated with
        them and with the logical controller's decisions, and only the flow
        parts they touch are computed again (``topostate``).  None: the
        configuration changed; the topology is built again and every host
        computed again, or, given ``switches`` (the logical switches whose
        records changed), only the parts those can touch
        (``topostate.config_dirty``)."""
        if self._intent is None:
            return
        self._round += 1
        rnd = self._round
        self._round_cfg[rnd] = (self._nb_cfg, self._sb_cfg)
        if changes is None or self._state.topo is None:
            old = self._state.topo
            self._remember_hosts(self.sb_snap.vm_locations)
            topo = self._rebuild()
            dirty, vms = None, sorted(topo.bindings)
            if switches is not None and old is not None:
                dirty = config_dirty(old, topo, switches)
        else:
            ports, vms = changes
            runtime = self.sb_snap
            hosts = {h: host_info(runtime.hosts[h], p) for h, p in ports.items()
                     if h in runtime.hosts}
            vms = sorted(vms)
            self._remember_hosts(runtime.vm_locations, vms)
            before = self._state.topo.bindings
            decided = self._decisions()
            dirty = self._state.update(
                hosts, {vm: self.bindings.binding(vm, self._intent.vms.get(vm)) for vm in vms},
                None, {}, slicelib.Blocks(), decided=decided,
                decided_keys=self._taken_keys())
            topo = self._state.topo
            self._owe(vms, before, topo.bindings, dirty)
        self._record_unannounced(topo, vms)     # before any flow for the new place
        program = self._all_hosts_reported()
        owed = self._owed_hosts(topo)
        sb_cfg = self._sb_cfg
        touched = []                    # switches whose status may change now
        for sw in self.switches.values():
            if not program or not sw.synced or sw.host is None:
                sw.current = False
                continue
            parts = ALL if dirty is None or not sw.current else dirty.get(sw.host)
            if parts is None:           # its flows cannot have changed
                if sw.pending:
                    sw.target_round, sw.target_sb = rnd, sb_cfg
                else:
                    sw.target_round = sw.applied_round = rnd
                    if sw.host in owed:
                        sw.target_sb = sw.applied_sb = sb_cfg
                        touched.append(sw)
                continue
            touched.append(sw)
            sw.target_round, sw.target_sb = rnd, sb_cfg
            diff = self._program(sw, topo, parts)
            if diff.empty:
                if not sw.pending:
                    sw.applied_round, sw.applied_sb = rnd, sb_cfg
                continue
            self._xid += 1
            LOG.info("%s: %d deletes, %d modifies, %d adds (round %d)", sw.host,
                     len(diff.deletes), len(diff.modifies), len(diff.adds), rnd)
            sw.pending[self._xid] = rnd
            self._send(sw.dpid, diff.commands(), self._xid)
        # A round of an unchanged nb_cfg changes the status only of the
        # switches it touched; any other round, any switch's.
        nb_cfg = self._round_cfg[rnd][0]
        whole = dirty is None or nb_cfg != self._published_nb
        self._published_nb = nb_cfg
        self._publish(None if whole else touched)

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

    def _owe(self, vms, before, after, dirty):
        """The hosts whose flows a VM's new binding touched (``dirty``) owe
        the logical controller a report of the ``sb_cfg`` it raises for the
        binding, which arrives after it: they report every ``sb_cfg`` until
        the VM's location is written (``_location_written``)."""
        hosts = set(dirty) if dirty is not None else set()
        for vm in vms:
            if before.get(vm) == after.get(vm):
                continue
            if after.get(vm) is None:
                self._owed.pop(vm, None)
            else:
                # Also when it touched no served switch's flows (the engine
                # served no host just then, as between losing its locks to
                # a southbound leader change and getting them back, or a
                # full recomputation): the hosts of the VM's switch owe the
                # report then (_owed_hosts), or a host programmed later with
                # no barrier pending when the sb_cfg arrives never says so.
                self._owed.setdefault(vm, set()).update(hosts)

    def _owed_hosts(self, topo):
        """The hosts that owe a report of the current sb_cfg: those a
        binding touched (``_owe``) and the hosts of its switch now."""
        if not self._owed:
            return ()
        out = set()
        for vm, hosts in self._owed.items():
            out |= hosts
            info = topo.vms.get(vm)
            if info is not None:
                out |= slicelib.switch_hosts(topo, info.switch)
        return out

    def _remember_hosts(self, locations, vms=None):
        """The last host ``VM_Location`` named, of ``vms`` (None: every VM):
        remembered when a VM's port event is handled, so it outlives the
        logical controller clearing the location once the port is gone."""
        for vm in (locations if vms is None else vms):
            host = locations.get(vm, (None,))[0]
            if host is not None:
                self._last_host[vm] = host

    def _record_unannounced(self, topo, vms):
        """A Migration row (unannounced) for each VM of ``vms`` whose port
        newly appeared on a host this engine serves, other than its last
        one, unless a migration to that host is under way (or, announced,
        was just finished).  Once per appearance; a failed write is logged
        and does not hold flows back."""
        for vm in vms:
            binding = topo.bindings.get(vm)
            if binding is None or not self.serves(binding.host):
                continue
            seq = self.bindings.seq(vm, binding.host)
            if self._checked_seq.get(vm, 0) >= seq:
                continue
            self._checked_seq[vm] = seq
            host, last = binding.host, self._last_host.get(vm)
            if last is None or last == host:
                continue
            mine = [m for m in self.sb_snap.migrations if m.vm == vm]
            if any(m.status in ACTIVE_MIGRATION and m.destination == host
                   for m in mine):
                continue
            if mine and mine[-1].status == "done" and \
                    (mine[-1].source, mine[-1].destination) == (last, host):
                continue
            wait_ms = global_wait_ms(dplib.global_options(self._datapaths.records.values()))
            try:
                self._sb.record_migration(vm, last, host, "unannounced", wait_ms).result(
                    timeout=MIGRATION_WRITE_TIMEOUT)
            except Exception as e:    # flows must follow the VM regardless
                LOG.error("VM %s appeared on %s (last on %s): cannot record its "
                          "unannounced migration: %s", vm, host, last, e)
                continue
            LOG.info("VM %s appeared on %s, last on %s: unannounced migration "
                     "(wait %d ms)", vm, host, last, wait_ms)

    def _live(self):
        return [sw for sw in self.switches.values() if sw.synced and sw.host]

    def _report(self, statuses):
        """Write the hosts' Chassis_Private rows that do not say so already,
        in one transaction."""
        fresh = [st for st in statuses if self._written.get(("chassis", st.name)) != st]
        if self._sb is None or not fresh:
            return
        for st in fresh:
            self._written[("chassis", st.name)] = st
        self._sb.set_chassis_statuses(fresh)

    def _publish(self, only=None):
        """Every served host's status (``only``: of these switches): its
        switch's applied round, or not connected (only hosts this engine
        has reported connected before, looked for when a switch's host
        changed)."""
        if only is None or self._hosts_changed:
            live = self._live()
        else:
            live = [sw for sw in only if sw.synced and sw.host]
        statuses = []
        for sw in live:
            prev = self._written.get(("chassis", sw.host))
            if prev is None or not prev.connected or prev.controller != self.name or \
                    (prev.nb_cfg, prev.sb_cfg) != (
                        self._round_cfg.get(sw.applied_round, (0, 0))[0], sw.applied_sb):
                statuses.append(self._host_status(sw))
        if self._hosts_changed:
            self._hosts_changed = False
            live_hosts = {sw.host for sw in live}
            statuses += [dataclasses.replace(st, connected=False)
                         for key, st in self._written.items()
                         if key[0] == "chassis" and key[1] not in live_hosts and st.connected]
        self._report(statuses)
        self._forget_rounds()

    def _host_status(self, sw):
        """Its switch's applied round's nb_cfg; the sb_cfg of the last round
        that touched the host's flows (or found it with barriers pending,
        or owing a report): a host whose flows a binding did not touch has
        trivially applied it, and the logical controller does not wait for
        it."""
        northd_cfg = self._round_cfg.get(sw.applied_round, (0, 0))[0]
        return ChassisStatus(name=sw.host, controller=self.name, connected=True,
                             nb_cfg=northd_cfg, sb_cfg=sw.applied_sb)

    def _forget_rounds(self):
        if len(self._round_cfg) < 64:
            return                      # a pass over the switches every 64 rounds
        low = min((sw.applied_round for sw in self._live()), default=self._round)
        for rnd in [r for r in self._round_cfg if r < low]:
            del self._round_cfg[rnd]


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
