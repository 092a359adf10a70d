"""The logical controller (``mbx-northd``): the decisions made once for the
whole cloud, which every physical controller (``ryu_apps.engine``) reads.

Plain Python with no I/O of its own: events in, writes out through ``nb``
(the config database API) and ``sb`` (the southbound connection), like the
engine.  One instance runs per cloud.  It reads intent from the northbound
snapshot and the runtime rows (hosts, slices, VM locations, migrations,
shared state, IDS alerts) from the southbound database
(``runtime_changed``).

* **Datapath records**: the intent of each logical switch, translated
  incrementally (``ryu_apps.translate``, format ``mbxmodel.datapath``) and
  written to the southbound ``Datapath`` rows that changed, in one
  transaction per change, before the slices; once both are committed,
  ``SB_Global.nb_cfg`` (the generation a physical controller reports).
  The physical controllers read their intent there; this controller's
  topology is made of the same records.
* **Slices and SNAT blocks** (docs/services.md).  One slice per chain and
  host that needs it -- a host with a VM of the chain's switch, the
  destination and source of an active migration, a host still holding a
  departed VM's state (shared state ``vm-state``), the last host of a VM
  bound nowhere for one ``shared-state-lease`` (``_note_departed``) --
  with a tag stable across recomputations, and one SNAT port block per
  rule and serving host.
  Written to the southbound ``Slice`` rows (chain of middlebox names,
  chassis name, tag, status ``snat-block:<rule>``).
* **``NB_Global.northd_cfg``**: once those writes are committed (the
  Datapath rows and the slices), the ``nb_cfg`` they were decided from
  (``ovsdb/mbx_nb.md``, the nb_cfg / hv_cfg protocol).
* **``hv_cfg``**: the lowest config generation the connected hosts have
  applied (southbound ``Chassis_Private``): their physical controllers'
  ``nb_cfg`` (flows) and their mbxd's ``mb_cfg`` (service stages;
  ``hv_cfg_of``).
* **VM locations**.  A VM whose port appeared somewhere (the newest
  southbound binding, ``ryu_apps.view``) gets a southbound ``VM_Location``
  naming its chassis and a new epoch once every connected host has applied
  flows computed with that binding: the logical controller raises
  ``SB_Global.sb_cfg`` when it sees the binding, and waits until every
  connected host whose flows the binding touches (the hosts of the VM's
  logical switch before and after it, its new and previous host) reports
  that ``sb_cfg`` or a later one; the physical controllers report it for
  those hosts only (``ovsdb/mbx_sb.md``, the sb_cfg protocol).  A VM whose port
  is gone from its host gets its location cleared, its epoch kept.  Each
  location is mirrored into ``VM.host`` / ``VM.location_epoch`` for
  operators in the same round, all of a round's in one transaction;
  programs read ``VM_Location``.  Those mirror writes do not notify this
  controller again (``own_status_write``).
* **Runtime rows by change**: the southbound connection hands over what
  changed (``SbDelta``); the rows are kept (``SbRuntime``), the SNAT
  blocks recorded in the slices' status slice by slice, and only the
  slices that changed are compared with the database and written
  (``Southbound.update_slices``).
* **Service status**: the load balancers' backend health that the daemons
  publish as shared state, merged into ``LB_VIP.status``; each IDS's alert
  count into ``Middlebox.status``.
* **Stale rows** (``ryu_apps.expiry``, ``tick``): the Shared_State rows
  no one refreshed for a lease (``NB_Global.options:shared-state-lease``)
  and the finished Migration rows past their retention
  (``migration-retention``) are deleted.

**Active and standby.**  Several instances may run; the one holding the
southbound OVSDB lock ``mbx_northd`` (``LOCK``) is active and the only one
that writes, as with ovn-northd (``mbx-northd`` asks for the lock; every
southbound write asserts it).  A standby (``active`` False) takes in every
event, so its replicas and its translation stay warm, but writes nothing.
When it gets the lock (``set_active``) it forgets what it had assumed about
the databases, reads the northbound database again and makes one full
round that compares everything with the databases and writes only what
differs: nothing, when the instance before it left them complete.
"""

import concurrent.futures
import dataclasses
import json
import logging
import time
from typing import Dict, Tuple

from mbxmodel import datapath as dplib
from ovsdb.errors import MbxError
from mbxmodel.network import ChassisStatus, HostPorts
from mbxmodel.snapshot import SbRuntime, SbSnapshot
from mbxmodel.state import LB_HEALTH
from ovsdb import validate
from ovsdb.southbound import NotLocked
from ryu_apps import slices as slicelib
from ryu_apps.expiry import MigrationAges, SharedLeases
from ryu_apps.topostate import TopologyState, host_info
from ryu_apps.translate import Translator
from ryu_apps.view import Bindings, config_key, incoming

LOG = logging.getLogger(__name__)

# How long the Datapath rows' and slices' writes are waited for (the
# Datapath rows before the slices, the slices before northd_cfg).
SB_WRITE_TIMEOUT = 10.0

_MIRROR_COLUMNS = frozenset({"host", "location_epoch"})
# The northbound columns only this controller writes, by table: a change of
# nothing else is its own (``own_status_write``).
_QUIET_COLUMNS = {table: frozenset({"status"})
                  for table in validate.STATUS_TABLES.values()}
_QUIET_COLUMNS["VM"] = _MIRROR_COLUMNS | {"status"}
STATUS_ERROR = validate.STATUS_ERROR
STATUS_KINDS = frozenset(validate.STATUS_TABLES)

# The southbound OVSDB lock whose holder is the active logical controller.
LOCK = "mbx_northd"



def hv_cfg_of(statuses, hosts, nb_cfg):
    """Pure: ``NB_Global.hv_cfg`` from the hosts' ``Chassis_Private``
    reports (ChassisStatus values): the lowest, over the connected hosts
    with a chassis (``hosts``), of what the host applied: its physical
    controller's ``nb_cfg`` (flows) and, once its mbxd has reported at all,
    that daemon's ``mb_cfg`` (service stages) too.  A host whose mbxd has
    never reported is waited for by its flows only (its daemon is not up
    yet, or the host has none: a lab or test without daemons).
    ``nb_cfg`` when no host counts."""
    return min((s.nb_cfg if s.mb_cfg is None else min(s.nb_cfg, s.mb_cfg)
                for s in statuses if s.connected and s.name in hosts),
               default=nb_cfg)


def _switches(topo, slices):
    """{chain: its logical switch} of the chains of ``slices`` (keys
    (chain, host)): the slices' ``Slice.datapath``."""
    return {chain: slicelib.chain_switch(topo, chain) for chain, _host in slices}


class Northd:
    """``active``: whether it writes (``set_active``: the lock is held);
    ``clock``: monotonic seconds (leases, the takeover's timing); ``wall``:
    unix time in seconds (migration retention)."""

    def __init__(self, nb, sb, active=True, clock=time.monotonic, wall=time.time):
        self._nb = nb
        self._sb = sb
        self.active = active
        self._clock, self._wall = clock, wall
        self.active_since = clock() if active else None
        self.takeover_ms = None         # the first round's time once it got the lock
        self.takeovers = 0
        self._told = False              # set_active called once
        self._leases = SharedLeases()
        self._ages = MigrationAges()
        self._expiring = None           # the Future of the stale rows' deletion
        self.expired_rows = {"shared_state": 0, "migrations": 0}
        self.nb_snap = None
        self.sb_snap = SbRuntime()      # the runtime rows (runtime_changed)
        self.bindings = Bindings()
        self.status: Dict[str, ChassisStatus] = {}
        self._sb_ready = False
        self._sb_cfg_seen = 0           # SB_Global.sb_cfg as last read
        self._sb_cfg_asked = 0          # the highest value written
        self._state = TopologyState()   # bindings, slices, SNAT blocks, kept
        self._config = None             # the configuration it was built from
        self._recorded_blocks = slicelib.RecordedBlocks()  # as Slice.status has them
        self._slice_keys = None         # slices changed in the database since
        #                                 compared (None: compare every one)
        self._pending: Dict[str, Tuple[int, str, int, frozenset]] = {}
        #   vm -> (seq, host, sb_cfg, the hosts whose flows the binding touches)
        self._announced: Dict[str, int] = {}   # vm -> appearance seq written to the DB
        self._maybe_gone = set()        # VMs VM_Location places where none is bound
        self._departed: Dict[str, Tuple[str, float]] = {}
        #   vm bound nowhere -> (its last host, until when its slices stay there)
        self._slices_checked = None     # the slices version compared with the DB
        self._written: Dict[Tuple, object] = {}
        self._slices_written = None     # the Future of the last slices written
        self._bad_health = set()
        self._translator = Translator()
        self._intent = None             # the topology of its records
        self._dp_pending = set()        # switches whose record is not written yet
        self._dp_synced = False         # the southbound rows were compared once
        self._dp_cfg = None             # SB_Global.nb_cfg as written
        self._mirrors = {}              # vm -> (host, epoch): this round's VM.host mirrors
        self._problems = {}             # the rows not in force, as last logged
        self._nb_failing = None         # why the last northbound status write failed
        self.nb_write_failures = 0      # northbound status writes that failed (retried)

    @property
    def topo(self):
        return self._state.topo

    # -------------------------------------------------- active / standby
    def _forget_writes(self):
        """Back to what a freshly started instance knows of the databases:
        nothing assumed written, every row compared at the next round."""
        self._state = TopologyState()
        self._config = None
        self._slice_keys = None
        self._pending = {}
        self._announced = {}
        self._maybe_gone = set()
        self._departed = {}
        self._slices_checked = None
        self._written = {}
        self._slices_written = None
        self._dp_pending = set()
        self._dp_synced = False
        self._dp_cfg = None
        self._mirrors = {}
        self._expiring = None
        self._sb_cfg_asked = self._sb_cfg_seen

    def set_active(self, active):
        """The lock ``LOCK`` was granted (True) or lost (False)."""
        told, self._told = self._told, True
        if active == self.active:
            if not told and not active:
                LOG.info("standby: lock %s held by another instance; writing nothing",
                         LOCK)
            return
        self.active = active
        self._forget_writes()
        if not active:
            self.active_since = None
            LOG.info("standby: lock %s not held; writing nothing", LOCK)
            return
        t0 = self._clock()
        self.active_since = t0
        self.takeovers += 1
        LOG.info("active: lock %s held; comparing the databases with the intent", LOCK)
        self.nb_changed()       # a fresh northbound snapshot, then one full round
        self.tick()
        if self._sb_ready:      # (else the round comes with southbound_ready)
            self.takeover_ms = (self._clock() - t0) * 1000
            LOG.info("active: first round done in %.1f ms", self.takeover_ms)

    def status_lines(self):
        """What ``ovs-appctl -t mbx-northd status`` shows, as lines."""
        lines = ["Status: %s" % ("active" if self.active else "standby"),
                 "Lock: %s" % LOCK]
        if self.active and self.active_since is not None:
            lines.append("Active for: %.1f s" % (self._clock() - self.active_since))
        if self.takeover_ms is not None:
            lines.append("First round as active: %.1f ms" % self.takeover_ms)
        lines.append("Times active: %d" % self.takeovers)
        lines.append("Southbound ready: %s" % ("yes" if self._sb_ready else "no"))
        lines.append("Shared_State rows tracked: %d" % len(self._leases))
        lines.append("Expired: %d Shared_State rows, %d migrations"
                     % (self.expired_rows["shared_state"], self.expired_rows["migrations"]))
        lines.append("Northbound status writes failed: %d%s"
                     % (self.nb_write_failures, "" if self._nb_failing is None
                        else " (failing now: %s)" % self._nb_failing[:200]))
        return lines

    # ----------------------------------------------------- stale rows
    def tick(self):
        """The timer (about once a second): write again the northbound
        status a failed write left behind (``_nb_write``); delete the stale
        rows (``ryu_apps.expiry``), one deletion in flight at a time."""
        if not self.active or not self._sb_ready or self.nb_snap is None:
            return
        if self._nb_failing is not None:
            self._publish_problems(self.nb_snap)
            self._config_changed()
        if self._expiring is not None and not self._expiring.done():
            return
        self._expire_departed()
        self._expiring = None
        options = self.nb_snap.global_options
        now = self._clock()
        lease = validate.global_shared_state_lease(options)
        stale = self._leases.expired(now, lease)
        old = self._ages.expired(self.sb_snap.migrations, now, int(self._wall() * 1000),
                                 validate.global_migration_retention(options))
        if stale:
            hosts = sorted({r.host for r in stale})
            LOG.info("Shared_State of %s unchanged for more than the %d s lease: "
                     "deleting %d rows (%s)", ", ".join(hosts), lease, len(stale),
                     ", ".join("%s/%s/%s@%s" % (r.middlebox, r.service, r.key, r.host)
                               for r in stale[:5]) + (" ..." if len(stale) > 5 else ""))
            self._expiring = self._sb.delete_shared_state(stale)
            self._count_expired(self._expiring, "shared_state")
        if old:
            LOG.info("deleting %d finished migrations past their retention (%s)",
                     len(old), ", ".join("%s %s" % (m.vm, m.status) for m in old[:5]))
            written = self._sb.delete_migrations([m.uuid for m in old])
            self._count_expired(written, "migrations")
            if self._expiring is None:
                self._expiring = written

    def _count_expired(self, future, kind):
        if future is None:
            return

        def done(f):
            if f.exception() is None and isinstance(f.result(), int):
                self.expired_rows[kind] += f.result()
        future.add_done_callback(done)

    # ------------------------------------------------------------- inputs
    def nb_changed(self):
        self.nb_snap = snap = self._nb.snapshot()
        old = dict(self._translator.records)
        changed = self._translator.update(snap)
        self._dp_pending.update(changed)
        if self._intent is None or dplib.flows_changed(
                {name: (old.get(name), new) for name, new in changed.items()}):
            self._intent = dplib.topology(self._translator.records.values())
            self._config = None
        self._config_changed()
        if self.active and self._sb_ready:
            self._publish_problems(snap)

    def runtime_changed(self, change):
        """The southbound runtime rows: what changed (an ``SbDelta``), or
        all of them (an ``SbSnapshot``)."""
        if isinstance(change, SbSnapshot):
            self.sb_snap = SbRuntime.of(change)
            self._observe(True, True)
            self._recorded_blocks = slicelib.RecordedBlocks(self.sb_snap.slice_status)
            self._slice_keys = None
            self._config_changed()
            return
        self.sb_snap.apply(change)
        self._observe(change.shared_state is not None, change.migrations is not None)
        self._recorded_blocks.update({k: None if v is None else v[1]
                                      for k, v in change.slices.items()})
        if self._slice_keys is not None:
            self._slice_keys.update(change.slices)
        status = change.shared_state is not None or change.ids_alerts is not None
        moving = status or change.migrations is not None
        self._config_changed(hosts=change.hosts, status=status, moving=moving)

    def _observe(self, shared, migrations):
        now = self._clock()
        if shared:
            self._leases.observe(self.sb_snap.shared_state, now)
        if migrations:
            self._ages.observe(self.sb_snap.migrations, now)

    def _config_changed(self, hosts=None, status=True, moving=True):
        """``hosts``: the hosts whose record changed (None: any);
        ``status``: shared state or IDS alerts may have changed;
        ``moving``: migrations or shared state (``incoming``)."""
        if self.nb_snap is None:
            return
        config = self._config
        if hosts is None or config is None:
            config = config_key(self.sb_snap.hosts)
        elif hosts:
            config = dict(config)
            for name, rec in hosts.items():
                if rec is None:
                    config.pop(name, None)
                else:
                    config[name] = (rec.encap_ip, rec.encap_type)
        if config != self._config or self._state.topo is None:
            self._config = config
            self._run(None)
        else:
            self._run(({}, (), self._incoming() if moving else None), status=status)

    def host_ports_changed(self, host, ports: HostPorts):
        old = self.bindings.update(host, ports)
        if self._sb_ready:
            self._run(({host: ports}, set(old.vm_ports) | set(ports.vm_ports), None))

    def chassis_status_changed(self, statuses):
        self.status = dict(statuses)
        if self._sb_ready:
            self._run(({}, (), None))

    def datapaths_changed(self, rows, nb_cfg):
        """The southbound Datapath rows as the database has them: a row that
        differs from its record (written by someone else, or gone) is
        written again."""
        if not self._dp_synced or self.nb_snap is None or not self.active:
            return                      # the first write compares every row
        wanted = self._translator.rows
        differ = {name for name in rows.keys() | wanted.keys()
                  if rows.get(name) != wanted.get(name)}
        if differ - self._dp_pending:
            # (also a notification older than the last write: rewriting is a no-op)
            LOG.info("Datapath rows not as translated, written again: %s",
                     ", ".join(sorted(differ - self._dp_pending)[:5]))
            self._dp_pending |= differ
            self._publish_datapaths(self.nb_snap)

    def sb_cfg_changed(self, value):
        self._sb_cfg_seen = value
        self._sb_cfg_asked = max(self._sb_cfg_asked, value)

    def southbound_ready(self):
        t0 = self._clock()
        self._sb_ready = True
        self._run(None)
        if self.active and self.nb_snap is not None:
            self._publish_problems(self.nb_snap)
        if self.active and self.takeover_ms is None and self.takeovers:
            # the lock came before the southbound rows: this is its first round
            self.takeover_ms = (self._clock() - t0) * 1000
            LOG.info("active: first round done in %.1f ms", self.takeover_ms)

    # ---------------------------------------------------------- decisions
    def _recorded(self):
        """The SNAT blocks the database records (Slice.status), kept slice
        by slice (``runtime_changed``)."""
        return self._recorded_blocks.blocks

    def _run(self, changes, status=False):
        """``changes``: (hosts' new ports, VMs whose binding may have
        changed, the VMs announced on a host or None); None: everything.
        ``status``: the runtime rows daemons write may have changed (shared
        state, alerts)."""
        snap, runtime = self.nb_snap, self.sb_snap
        if snap is None or not self._sb_ready or not self.active:
            return
        state = self._state
        old = state.topo
        if changes is None or state.topo is None:
            infos = {name: host_info(rec, self.bindings.host_ports.get(name, HostPorts()))
                     for name, rec in runtime.hosts.items()}
            recorded = self._recorded()
            bound = self.bindings.bound(self._intent.vms)
            if old is not None:
                self._note_departed(old.bindings, {vm: bound.get(vm) for vm in
                                                   set(old.bindings) | set(bound)})
            topo = state.rebuild(self._intent, infos, bound,
                                 self._incoming(), runtime.slices,
                                 state.topo.slices if state.topo else {},
                                 dict(recorded))
            vms = sorted(topo.bindings)
            # VM_Location naming a host where the VM is not bound (a restart)
            self._maybe_gone = {vm for vm, (host, _) in runtime.vm_locations.items()
                                if host is not None and vm not in topo.bindings}
        else:
            ports, vms, now_incoming = changes
            infos = {h: host_info(runtime.hosts[h], p) for h, p in ports.items()
                     if h in runtime.hosts}
            vms = sorted(vms)
            bound = {vm: self.bindings.binding(vm, self._intent.vms.get(vm)) for vm in vms}
            if self._note_departed({vm: state.topo.bindings.get(vm) for vm in vms}, bound):
                now_incoming = self._incoming()
            state.update(infos, bound, now_incoming, runtime.slices, self._recorded())
            topo = state.topo
        for vm in vms:
            if vm not in topo.bindings and \
                    runtime.vm_locations.get(vm, (None,))[0] is not None:
                self._maybe_gone.add(vm)
        self._publish_datapaths(snap)     # before the slices naming their middleboxes
        self._publish_slices(topo, runtime)
        if self._dp_cfg != snap.nb_cfg:
            self._slices_committed()
            self._publish_nb_cfg(snap.nb_cfg)
        if snap.northd_cfg != snap.nb_cfg and self._written.get(("northd_cfg",)) != snap.nb_cfg:
            self._slices_committed()
            self._write(("northd_cfg",), snap.nb_cfg,
                        lambda: self._nb.set_northd_cfg(snap.nb_cfg).execute(
                            check_error=True))
        self._track_locations(topo, vms, old)
        self._publish_hv_cfg(snap)
        self._publish_locations(topo)
        if changes is None:
            self._publish_mirrors(snap)
        self._flush_mirrors()
        if changes is None or status:
            self._publish_vip_status(topo)
            self._publish_middlebox_status(snap)

    def _incoming(self):
        """(vm, host) pairs that need the VM's slices on a host where it
        may not be bound: those the runtime rows name (``view.incoming``)
        and the last host of each VM bound nowhere, for its grace
        (``_note_departed``)."""
        return incoming(self.sb_snap) | frozenset(
            (vm, host) for vm, (host, _) in self._departed.items())

    def _note_departed(self, before, after):
        """A VM bound in ``before`` and nowhere in ``after`` (both {vm:
        PortBinding or None}; ``after`` names every VM to look at) keeps its slices on its last host for one
        ``shared-state-lease``, as if that host had published it holds its
        state (shared state "vm-state"), which its daemon does once it sees
        the VM gone and keeps doing as long as it holds the state: until
        then, an unannounced move's source (its Migration row comes only
        once the port appears elsewhere) would lose the slice, and with it
        the VM's connections.  A VM bound again on that host needs no
        grace.  Returns whether the pairs changed."""
        lease = validate.global_shared_state_lease(self.nb_snap.global_options)
        changed = False
        for vm, now in after.items():
            was = before.get(vm)
            if was is not None and now is None:
                self._departed[vm] = (was.host, self._clock() + lease)
                changed = True
            elif now is not None and self._departed.get(vm, (None,))[0] == now.host:
                del self._departed[vm]
                changed = True
        return changed

    def _expire_departed(self):
        """The grace of the VMs bound nowhere that ended (``tick``)."""
        now = self._clock()
        due = [vm for vm, (_, until) in self._departed.items() if now >= until]
        for vm in due:
            del self._departed[vm]
        if due:
            self._run(({}, (), self._incoming()))

    def _write(self, key, value, fn):
        """A northbound status write (its value remembered once written)."""
        if self._written.get(key) == value or not self._lock_held():
            return
        if self._nb_write(key[0], fn):
            self._written[key] = value

    def _nb_write(self, what, fn):
        """Run ``fn``, a northbound status write; False if the database did
        not take it (a timeout under load, a leader change): one warning
        until a write goes through again, and the next tick writes what is
        still owed (nothing was remembered as written)."""
        try:
            fn()
        except MbxError as e:
            self.nb_write_failures += 1
            if self._nb_failing is None:
                LOG.warning("northbound status write (%s) failed: %s; writing it "
                            "again every second until it goes through", what, e)
            self._nb_failing = str(e)
            return False
        if self._nb_failing is not None:
            LOG.info("northbound status writes go through again")
            self._nb_failing = None
        return True

    def _lock_held(self):
        """The southbound connection still holds the lock right now (its
        news may not have reached this thread yet): northbound writes,
        which no lock guards, are not made once it is lost."""
        held = getattr(self._sb, "lock_held", None)
        return held is None or held()

    def _publish_slices(self, topo, snap):
        """The slices and their status, written when they changed (the
        database had the ones written before) or when the database says
        otherwise: every slice compared after a whole snapshot, the slices
        the database changed after a delta (``_slice_keys``)."""
        state = self._state
        keys, self._slice_keys = self._slice_keys, set()
        if self._slices_checked == state.version and not keys and keys is not None:
            return
        status = state.status

        def same(key):
            return topo.slices.get(key) == snap.slices.get(key) and \
                (key not in topo.slices or
                 dict(status.get(key) or {}) == dict(snap.slice_status.get(key) or {}))
        if keys is None:
            current = {k: dict(v) for k, v in snap.slice_status.items()}
            differ = dict(topo.slices) != dict(snap.slices) \
                or {k: v for k, v in status.items() if v} \
                != {k: v for k, v in current.items() if v and k in topo.slices}
        else:
            differ = self._slices_checked != state.version or \
                not all(same(key) for key in keys)
        touched = state.take_touched()
        if differ and (self._written.get(("slices",)) != state.version or keys):
            if touched is None or keys is None:
                self._slices_written = self._sb.set_slices(
                    dict(topo.slices), status, _switches(topo, topo.slices))
            else:       # the slices that changed here or differ in the database
                changes = {key: (topo.slices[key], status.get(key) or {})
                           if key in topo.slices else None for key in touched | keys}
                self._slices_written = self._sb.update_slices(
                    changes, _switches(topo, changes))
            self._written[("slices",)] = state.version
        self._slices_checked = state.version

    def _publish_datapaths(self, snap):
        """The Datapath rows whose records changed (every row the first
        time: the rows of switches that are gone are deleted), in one
        transaction, waited for."""
        if not self._dp_pending and self._dp_synced:
            return
        wanted = self._translator.rows
        names = sorted(wanted) if not self._dp_synced else sorted(self._dp_pending)
        rows = {name: wanted.get(name) for name in names}
        written = self._sb.set_datapaths(rows, complete=not self._dp_synced)
        self._dp_pending, self._dp_synced = set(), True
        if not self._committed(written, "%d Datapath rows" % len(rows)):
            self._dp_synced = False     # written again, every row compared, next time

    def _publish_nb_cfg(self, value):
        """SB_Global.nb_cfg: the config generation whose Datapath rows and
        slices are committed (a physical controller reports the value of
        the rows it computed from, so it follows them), waited for."""
        written = self._sb.set_datapaths({}, nb_cfg=value)
        if self._committed(written, "SB_Global.nb_cfg %d" % value):
            self._dp_cfg = value

    def _committed(self, written, what):
        """Wait for a southbound write's Future (None: a write with nothing
        to wait for); False if it failed."""
        if written is None:
            return True
        try:
            written.result(timeout=SB_WRITE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            LOG.warning("the southbound database has not committed %s in %g s",
                        what, SB_WRITE_TIMEOUT)
        except NotLocked:       # said once by the writer; standby follows
            return False
        except Exception as e:
            LOG.error("%s not written to the southbound database: %s", what, e)
            return False
        return True

    def _slices_committed(self):
        """Wait for the last slices written to be committed (at most
        SB_WRITE_TIMEOUT): ``northd_cfg`` says its decisions are in the
        databases, so it goes after them."""
        written, self._slices_written = self._slices_written, None
        if written is None:
            return
        try:
            written.result(timeout=SB_WRITE_TIMEOUT)
        except Exception as e:    # the next change writes them again
            if not isinstance(e, NotLocked):
                LOG.error("slices not written to the southbound database: %s", e)
            self._written.pop(("slices",), None)

    def _connected(self):
        return [s for s in self.status.values() if s.connected]

    def _publish_hv_cfg(self, snap):
        """NB_Global.hv_cfg: see ``hv_cfg_of``."""
        hv_cfg = hv_cfg_of(self.status.values(), self.sb_snap.hosts, snap.nb_cfg)
        if hv_cfg != snap.hv_cfg:
            self._write(("hv_cfg",), hv_cfg,
                        lambda: self._nb.set_hv_cfg(hv_cfg).execute(check_error=True))

    def _track_locations(self, topo, vms, old=None):
        """Each new binding of ``vms`` waits for a new sb_cfg, raised once
        per run, on the hosts whose flows it touches: the hosts of the VM's
        logical switch before and after it (where it is a remote VM), its
        new host and its previous one (``old``: the topology before the
        run)."""
        fresh = []
        for vm in vms:
            binding = topo.bindings.get(vm)
            if binding is None:
                self._pending.pop(vm, None)
                continue
            seq = self.bindings.seq(vm, binding.host)
            if self._pending.get(vm, (None,))[0] == seq or self._announced.get(vm) == seq:
                continue
            if vm not in self._announced and vm not in self._pending and \
                    self.sb_snap.vm_locations.get(vm, (None,))[0] == binding.host:
                self._announced[vm] = seq   # recorded already (a restart, a takeover)
                continue
            hosts = {binding.host}
            info = topo.vms.get(vm)
            if info is not None:
                hosts |= slicelib.switch_hosts(topo, info.switch)
                if old is not None:
                    hosts |= slicelib.switch_hosts(old, info.switch)
            previous = old.bindings.get(vm) if old is not None else None
            if previous is not None:
                hosts.add(previous.host)
            if vm in self._pending:
                hosts |= self._pending[vm][3]
            fresh.append((vm, seq, binding.host, frozenset(hosts)))
        if not fresh:
            return
        value = max(self._sb_cfg_seen, self._sb_cfg_asked) + 1
        self._sb_cfg_asked = value
        for vm, seq, host, hosts in fresh:
            self._pending[vm] = (seq, host, value, hosts)
        self._sb.raise_sb_cfg(value)

    def _publish_locations(self, topo):
        runtime = self.sb_snap
        for vm, (seq, host, needed, hosts) in sorted(self._pending.items()):
            if any(s.sb_cfg < needed for s in (self.status.get(h) for h in hosts)
                   if s is not None and s.connected and s.name in runtime.hosts):
                continue        # not yet programmed on every connected host it touches
            del self._pending[vm]
            cur_host, epoch = runtime.vm_locations.get(vm, (None, 0))
            if vm not in self._announced and cur_host == host:
                self._announced[vm] = seq   # already recorded (a restart)
                continue
            # Epochs never go back, also not below the operators' mirror (a
            # config database converted from 1.x keeps VM.location_epoch).
            epoch = max(epoch, self.nb_snap.vm_mirror.get(vm, (None, 0))[1])
            self._set_location(vm, host, epoch + 1)
            self._announced[vm] = seq
            LOG.info("VM %s now on %s (epoch %d)", vm, host, epoch + 1)
        for vm in sorted(self._maybe_gone):
            # Only a host whose chassis has been published can be known not
            # to hold the port.
            cur_host, epoch = self.sb_snap.vm_locations.get(vm, (None, 0))
            if cur_host is None or vm in topo.bindings:
                self._maybe_gone.discard(vm)
                continue
            ports = self.bindings.host_ports.get(cur_host)
            if ports is not None and ports.datapath_id is not None \
                    and self._written.get(("gone", vm)) != epoch:
                self._set_location(vm, None, epoch)
                self._written[("gone", vm)] = epoch
                self._announced.pop(vm, None)

    def _set_location(self, vm, host, epoch):
        self._sb.set_vm_location(vm, host, epoch)
        self._mirrors[vm] = (host, epoch)       # written at the end of the round
        self._written[("mirror", vm)] = (host, epoch)
        # Events handled before the database's change notification arrives
        # must see this write: the next epoch is computed from it.
        self.sb_snap.vm_locations[vm] = (host, epoch)

    def _publish_mirrors(self, snap):
        """VM.host / location_epoch of each VM whose mirror differs from its
        VM_Location (a restart, a converted config database)."""
        for vm, location in sorted(self.sb_snap.vm_locations.items()):
            if vm in snap.vms and snap.vm_mirror.get(vm) != location and \
                    self._written.get(("mirror", vm)) != location:
                self._mirrors[vm] = location
                self._written[("mirror", vm)] = location

    def _flush_mirrors(self):
        """The round's VM.host / location_epoch mirrors, in one transaction
        (a cold start mirrors every VM)."""
        if self._mirrors and self._lock_held():
            mirrors, self._mirrors = self._mirrors, {}
            if not self._nb_write("VM.host", lambda: self._nb.set_vm_mirrors(
                    mirrors).execute(check_error=True)):
                self._mirrors = {**mirrors, **self._mirrors}

    def _publish_vip_status(self, topo):
        """LB_VIP.status: each backend's health as the hosts publish it
        (shared state, service "lb-health", value {"ip:port": "up"|"down"});
        down if any host says down."""
        health = {}         # middlebox -> {"ip:port": state}
        for row in self.sb_snap.shared_state:
            if row.service != LB_HEALTH:
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
        for name, vips in sorted(self.nb_snap.vips.items()):
            merged = health.get(name, {})
            for vip in vips:
                wanted = {}
                for ip, port in vip.backends:
                    key = f"{ip}:{port}"
                    if key in merged:
                        wanted[key] = merged[key]
                why = self.nb_snap.ignored.get(("vip", vip.uuid))
                if why:
                    wanted[STATUS_ERROR] = why
                if wanted == dict(vip.status):
                    continue
                self._write(("vip", vip.uuid), wanted,
                            lambda: self._nb.set_vip_status(vip.uuid, wanted).execute(
                                check_error=True))

    def _publish_middlebox_status(self, snap):
        """Middlebox.status: "alerts", the number of IDS_Alert rows of each
        IDS; "error", why a middlebox is not in force (``snap.ignored``)."""
        counts = {}
        for row in self.sb_snap.ids_alerts:
            counts[row.middlebox] = counts.get(row.middlebox, 0) + 1
        current_status = snap.middlebox_status
        for name, mb in sorted(snap.middleboxes.items()):
            current = dict(current_status.get(name, {}))
            status = {k: v for k, v in current.items() if k != STATUS_ERROR}
            if mb.type == "ids":
                status["alerts"] = str(counts.get(name, 0))
            why = snap.ignored.get(("middlebox", name))
            if why:
                status[STATUS_ERROR] = why
            if status == current:
                continue
            self._write(("mb-status", name), status,
                        lambda: self._nb.set_middlebox_status(name, status).execute(
                            check_error=True))

    def _publish_problems(self, snap):
        """The rows not in force (``snap.ignored``: tenant columns that
        disagree, values no reader can use): one log line for each when it
        appears or its reason changes, and its reason in the row's status
        (the ``status`` column; Middlebox and LB_VIP: the key "error"); a
        status whose row is usable again is cleared."""
        for key, why in sorted(snap.ignored.items()):
            if self._problems.get(key) != why:
                LOG.warning("ignoring %s", why)
        for key in sorted(self._problems.keys() - snap.ignored.keys()):
            LOG.info("in force again (or gone): %s", " ".join(map(str, key)))
        self._problems = dict(snap.ignored)
        wanted = {key: why for key, why in snap.ignored.items()
                  if key[0] in STATUS_KINDS}
        changes = {key: wanted.get(key, "")
                   for key in wanted.keys() | snap.row_status.keys()
                   if wanted.get(key, "") != snap.row_status.get(key, "")}
        # what was written for rows that have no status now is forgotten: a
        # row made again with the same problem is written again
        for key in [k for k in self._written if k[0] == "row-status"
                    and k[1] not in wanted and k[1] not in snap.row_status]:
            del self._written[key]
        changes = {key: text for key, text in changes.items()
                   if self._written.get(("row-status", key)) != text}
        if changes and self._lock_held() and self._nb_write(
                "status", lambda: self._nb.set_row_status(changes).execute(check_error=True)):
            for key, text in changes.items():
                self._written[("row-status", key)] = text
        self._publish_vip_status(self._state.topo)
        self._publish_middlebox_status(snap)

    @staticmethod
    def own_status_write(table, event, columns):
        """A northbound row change that only carries this controller's own
        status writes (VM.host, location_epoch; the ``status`` of a row it
        cannot use): its notification is not needed
        (``MbxNb.connect(quiet=...)``), which spares a snapshot of the whole
        northbound database per move."""
        quiet = _QUIET_COLUMNS.get(table, frozenset())
        return event == "update" and bool(columns) and columns <= quiet
