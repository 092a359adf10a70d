"""The controllers' connection to the southbound database (``mbx_sb.md``).

One OVSDB connection, on its own thread, for the whole cloud:

* it reports what the hosts publish (``mbx-chassis``): every host's chassis
  record and port bindings, as one ``HostPorts`` value per host, for the
  hosts whose value changed, hosts that only lost ports first (so a VM whose
  port appears on its new host in the same batch counts as newest there);
* what the physical controllers say of the hosts they serve
  (``Chassis_Private``, as ``ChassisStatus`` values);
* the runtime generation ``SB_Global.sb_cfg``, always after the bindings
  that arrived with it;
* with ``datapaths=True``, the logical switches' ``Datapath`` rows and
  ``SB_Global.nb_cfg`` (the config generation they were translated from),
  before the runtime rows and the bindings that arrived with them; given
  ``hosts`` as well, only the rows of the switches present on those hosts
  (``ovsdb.localdp``), nothing being reported while a condition change is
  on its way (the records of a VM's switch arrive before its binding is
  reported);
* the runtime rows a controller asks for (``runtime_tables``: of Slice,
  VM_Location, Migration, Shared_State, IDS_Alert) with the hosts' chassis
  records, as what changed (an ``SbDelta``, ``mbxmodel.snapshot``: the rows
  the IDL reported changed, converted once; the first one, and the first
  after a reconnection, carries every row), before the ports that arrived
  with it;
* and, once the database's contents have arrived the first time, that it
  is ready.

Writes are handed to the connection's thread (``write``), the only one that
touches the IDL's rows; a write that meets a concurrent change is tried
again on the new contents.  Each returns a Future: done once committed
(its result the function's), failed with the MbxError that refused it.
"""

import concurrent.futures
import logging
import queue
import threading

import ovs.poller
from ovs.db import idl

from mbxmodel import datapath as dplib
from mbxmodel.network import ChassisStatus, HostPorts
from mbxmodel.snapshot import RuntimeRows
from ovsdb import localdp, remotes
from ovsdb.api.migration import create_migration
from ovsdb.api.runtime import write_vm_location
from ovsdb.api.slices import check_slices, write_slices
from ovsdb.errors import MbxError
from ovsdb.server import SB_SCHEMA_PATH
from ovsdb.wakeup import Wakeup

# The runtime tables a controller may monitor, and the columns it reads.
RUNTIME_COLUMNS = {
    "Slice": ["chain", "chassis", "tag", "status", "datapath"],
    "VM_Location": ["vm", "chassis", "epoch"],
    "Migration": ["vm", "source", "destination", "path", "status", "token",
                  "timeline", "stats", "outcome", "options"],
    "Shared_State": ["middlebox", "host", "service", "key", "value", "stamp"],
    "IDS_Alert": ["middlebox", "kind", "source", "target", "count", "hosts",
                  "first_seen", "last_seen", "reported_by"],
}
# What the physical controller computes from; the logical controller also
# reads what the daemons publish.
ENGINE_TABLES = ("Slice", "VM_Location", "Migration")
NORTHD_TABLES = ENGINE_TABLES + ("Shared_State", "IDS_Alert")
_CHASSIS_RUNTIME = {"encap_type", "encap_ip", "migration_address"}

LOG = logging.getLogger(__name__)


def _one(value):
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _dpid(text, host, warned):
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        if (host, text) not in warned:
            warned.add((host, text))
            LOG.warning("chassis %s: datapath_id %r is not hexadecimal; "
                        "its switch stays unknown", host, text)
        return None


def host_ports_from_southbound(chassis_rows, binding_rows, warned=None):
    """Pure: {host: HostPorts} from IDL-like Chassis and Port_Binding rows."""
    warned = set() if warned is None else warned
    vm_ports = {}
    for row in binding_rows:
        vm_ports.setdefault(row.chassis, {})[row.logical_port] = (
            row.ofport, (row.mac or "").lower())
    out = {}
    for row in chassis_rows:
        mac = _one(row.uplink_mac)
        out[row.name] = HostPorts(
            datapath_id=_dpid(_one(row.datapath_id), row.name, warned),
            tunnel_ofport=_one(row.tunnel_ofport),
            mb_ofport=_one(row.mb_ofport),
            vm_ports=vm_ports.pop(row.name, {}),
            uplink_ofport=_one(row.uplink_ofport),
            uplink_mac=mac.lower() if mac else None)
    for host, ports in vm_ports.items():     # bindings of a host with no chassis row yet
        out[host] = HostPorts(vm_ports=ports)
    return out


def changed_hosts(old, new):
    """The hosts whose HostPorts differ between ``old`` and ``new``, in the
    order to report them: hosts that gained no VM port first."""
    hosts = [h for h in sorted(old.keys() | new.keys())
             if old.get(h, HostPorts()) != new.get(h, HostPorts())]
    def gained(host):
        return bool(set(new.get(host, HostPorts()).vm_ports)
                    - set(old.get(host, HostPorts()).vm_ports))
    return sorted(hosts, key=gained)


def chassis_statuses(rows):
    """Pure: {name: ChassisStatus} from IDL-like Chassis_Private rows."""
    return {r.name: ChassisStatus(name=r.name, controller=r.controller,
                                  connected=bool(r.connected), nb_cfg=r.nb_cfg,
                                  sb_cfg=r.sb_cfg,
                                  mb_cfg=_one(getattr(r, "mb_cfg", None)))
            for r in rows}


def _chain_result(source, target):
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


def _sb_cfg(idl_):
    for row in idl_.tables["SB_Global"].rows.values():
        return row.sb_cfg
    return 0


def _nb_cfg(idl_):
    for row in idl_.tables["SB_Global"].rows.values():
        return row.nb_cfg
    return 0


def _datapath_rows(idl_):
    """{name: (tenant, vni, config)} of the Datapath rows."""
    return {r.name: (r.tenant, r.vni, r.config)
            for r in idl_.tables["Datapath"].rows.values()}


class _Idl(idl.Idl):
    """Notes which tables changed, and which rows of the runtime tables
    (``changed``: {table: {uuid: row, or None if deleted}}), so the
    runtime is handed over as what changed (``RuntimeRows``)."""

    def __init__(self, remote, helper, watched):
        super().__init__(remote, helper)     # a member list: follows the leader
        remotes.follow_quickly(self._session)
        self.watched = watched
        self.changed = {}
        self.datapaths_dirty = True
        self.local_dirty = True

    def notify(self, event, row, updates=None):
        table = row._table.name
        if table in ("Port_Binding", "Slice"):
            self.local_dirty = True
        if table == "Datapath" or (
                table == "SB_Global" and (event != idl.ROW_UPDATE or updates is None
                                          or "nb_cfg" in updates._data)):
            self.datapaths_dirty = True
        if table in self.watched or table == "Chassis_Private" or (
                table == "Chassis" and (event != idl.ROW_UPDATE or updates is None
                                        or _CHASSIS_RUNTIME & set(updates._data))):
            self.changed.setdefault(table, {})[row.uuid] = \
                None if event == idl.ROW_DELETE else row

    def session_connected(self):
        return self._session.is_connected()

    def session_seqno(self):
        """Changes on each (re)connection: the replica is then sent again,
        without the deletions missed meanwhile."""
        return self._session.get_seqno()


class NotLocked(MbxError):
    """A write asserting a lock that this client does not hold (any more)."""


class Southbound:
    """The connection; callbacks run on its thread and must be cheap (post
    an event).  ``on_ports(host, HostPorts)``, ``on_status({name:
    ChassisStatus})``, ``on_sb_cfg(value)``, ``on_ready()``,
    ``on_runtime(SbDelta)`` (the ``runtime_tables`` and the chassis: what
    changed; a consumer keeps them with ``SbRuntime.apply``);
    with ``datapaths=True`` (the controllers) the Datapath rows are
    monitored and ``on_datapaths({name: (tenant, vni, config)},
    SB_Global.nb_cfg)`` reports them; ``hosts`` (a controller that serves
    only these): only the rows of the switches present on them.

    ``lock`` (the logical controller's ``mbx_northd``): the connection asks
    the server for that OVSDB lock and every write asserts it (a write
    without it fails: python-ovs's NOT_LOCKED); ``on_lock(held)`` says
    whether it is held, after the rows that arrived with the news.  It
    counts as held only while connected and monitoring: a reconnection
    (to a new cluster leader, say) asks for it again."""

    def __init__(self, remote, on_ports=None, on_status=None, on_sb_cfg=None,
                 on_ready=None, on_runtime=None, runtime_tables=(),
                 schema=SB_SCHEMA_PATH, datapaths=False, on_datapaths=None,
                 hosts=None, lock=None, on_lock=None):
        self._on_ports = on_ports or (lambda host, ports: None)
        self._on_status = on_status or (lambda statuses: None)
        self._on_sb_cfg = on_sb_cfg or (lambda value: None)
        self._on_ready = on_ready or (lambda: None)
        self._on_runtime = on_runtime or (lambda snap: None)
        self._datapaths = datapaths
        self._on_lock = on_lock or (lambda held: None)
        self._held = lock is None       # see lock_held
        self._on_datapaths = on_datapaths or (lambda rows, nb_cfg: None)
        self._stop = threading.Event()
        helper = idl.SchemaHelper(location=schema)
        helper.register_columns("Chassis", ["name", "datapath_id", "tunnel_ofport",
                                            "mb_ofport", "uplink_ofport",
                                            "uplink_mac"] + sorted(_CHASSIS_RUNTIME))
        for table in runtime_tables:
            helper.register_columns(table, RUNTIME_COLUMNS[table])
        helper.register_columns("Port_Binding", ["logical_port", "chassis",
                                                 "ofport", "mac"])
        helper.register_columns("Chassis_Private", ["name", "controller", "connected",
                                                    "nb_cfg", "sb_cfg", "mb_cfg"])
        helper.register_columns("SB_Global", ["sb_cfg", "nb_cfg"])
        if datapaths:
            helper.register_columns("Datapath", ["name", "tenant", "vni", "config",
                                                 "ports"])
        self._local = frozenset(hosts) if datapaths and hosts is not None else None
        if self._local is not None:
            helper.register_columns("Slice", ["chassis", "datapath"])
        self._idl = _Idl(remote, helper, frozenset(runtime_tables))
        if lock is not None:
            self._idl.set_lock(lock)
        self._runtime_rows = RuntimeRows()
        self._local_cond = []
        if self._local is not None:
            self._idl.cond_change("Datapath", self._local_cond)
        self._warned = set()
        self._writes = queue.Queue()
        self._unlocked = False      # a write failed for want of the lock (said once)
        self._wakeup = Wakeup()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="mbx-southbound")

    def start(self):
        self._thread.start()

    def lock_held(self):
        """Whether the connection holds its ``lock`` as of its thread's
        last look (True without a lock): a writer outside this connection
        (the northbound status) checks it just before writing."""
        return self._held

    def stop(self):
        self._stop.set()
        self._wakeup.wake()

    # ------------------------------------------------------------ writes
    def write(self, fn, what):
        """Carry out ``fn(idl, txn)`` in a transaction on the connection's
        thread (``what`` names it in a log line if it fails).  Returns a
        Future of ``fn``'s result once committed."""
        future = concurrent.futures.Future()
        self._writes.put((fn, what, future))
        self._wakeup.wake()
        return future

    def set_datapaths(self, changes, nb_cfg=None, complete=False):
        """Datapath rows, in one transaction: ``changes`` {name: (tenant,
        vni, config), or None to delete}; a row already so is left alone.
        ``complete``: ``changes`` names every switch; other rows are
        deleted.  ``nb_cfg``: SB_Global.nb_cfg, the config generation the
        rows are translated from.  Returns the write's Future."""
        changes = dict(changes)

        def fn(idl_, txn):
            table = idl_.tables["Datapath"]
            rows = {r.name: r for r in table.rows.values()}
            for name, row in rows.items():
                if complete and name not in changes:
                    row.delete()
            for name, value in changes.items():
                row = rows.get(name)
                if value is None:
                    if row is not None:
                        row.delete()
                    continue
                tenant, vni, config = value
                if row is None:
                    row = txn.insert(table)
                    row.name = name
                elif (row.tenant, row.vni, row.config) == (tenant, vni, config) and (
                        row.ports or not dplib.ports(config)):  # (none: before 2.1.0)
                    continue
                row.tenant, row.vni, row.config = tenant, vni, config
                row.ports = dplib.ports(config)
            if nb_cfg is not None:
                found = list(idl_.tables["SB_Global"].rows.values())
                top = found[0] if found else txn.insert(idl_.tables["SB_Global"])
                if not found or top.nb_cfg != nb_cfg:
                    top.nb_cfg = nb_cfg
        return self.write(fn, "%d datapaths%s" % (
            len(changes), "" if nb_cfg is None else ", nb_cfg %d" % nb_cfg))

    def set_slices(self, slices, status=None, datapaths=None):
        """The Slice table becomes exactly ``slices`` (``MbxSb.set_slices``)."""
        desired, checked = check_slices(slices, status)
        return self.write(lambda idl_, txn: write_slices(idl_.tables, txn, desired,
                                                         checked, datapaths),
                          "%d slices" % len(desired))

    def update_slices(self, changes, datapaths=None):
        """Some slices, in one transaction: ``changes`` {(chain, chassis):
        (tag, status), or None: no such slice}; the other rows are left
        alone (their rows found through the kept index, not a pass over
        the table).  A slice of a chassis with no Chassis row is left out
        (``write_slices``).  ``datapaths``: {chain: its logical switch},
        the changed rows' ``datapath``."""
        desired, checked = check_slices(
            {k: v[0] for k, v in changes.items() if v is not None},
            {k: v[1] for k, v in changes.items() if v is not None})
        gone = [k for k, v in changes.items() if v is None]

        def fn(idl_, txn):
            table = idl_.tables["Slice"]
            chassis = self._runtime_rows.chassis_names()
            for key in sorted(desired.keys() | set(gone)):
                rows = sorted((table.rows[u] for u in self._runtime_rows.slice_rows(key)
                               if u in table.rows), key=lambda r: r.uuid)
                keep = key in desired and key[1] in chassis
                for row in rows[1 if keep else 0:]:
                    row.delete()
                if not keep:
                    continue
                status = checked.get(key, {})
                switch = (datapaths or {}).get(key[0])
                if not rows:
                    row = txn.insert(table)
                    row.chain = dict(enumerate(key[0]))
                    row.chassis, row.tag, row.status = key[1], desired[key], status
                    if switch:
                        row.datapath = [switch]
                    continue
                row = rows[0]
                if row.tag != desired[key]:
                    row.tag = desired[key]
                if dict(row.status) != status:
                    row.status = status
                if datapaths is not None and list(row.datapath) != (
                        [switch] if switch else []):
                    row.datapath = [switch] if switch else []
        return self.write(fn, "%d slices changed" % len(changes))

    def set_vm_location(self, vm, chassis, epoch):
        """VM_Location of ``vm``: ``chassis`` (None: nowhere), ``epoch``."""
        return self.write(lambda idl_, txn: write_vm_location(idl_.tables, txn, vm,
                                                              chassis, epoch),
                          "location of %s" % vm)

    def record_migration(self, vm, source, destination, path, wait_ms):
        """A new Migration row (begun); the Future's result is its uuid,
        or an MbxError (the VM has an active migration, ...)."""
        def fn(idl_, txn):
            return create_migration(idl_, txn, vm, source, destination, path,
                                    wait_ms)
        return self.write(fn, "migration of %s" % vm)

    def delete_shared_state(self, records):
        """Delete the Shared_State rows of ``records`` (SharedRecord values:
        middlebox, host, service, key, value, stamp), each only while it
        still holds that value and stamp: a row its host refreshed or
        changed meanwhile stays (the logical controller's lease expiry,
        ``ryu_apps.expiry``).  The Future's result: the rows deleted."""
        wanted = {(r.middlebox, r.host, r.service, r.key): (r.value, r.stamp)
                  for r in records}

        def fn(idl_, txn):
            deleted = 0
            for row in list(idl_.tables["Shared_State"].rows.values()):
                key = (row.middlebox, row.host, row.service, row.key)
                if wanted.get(key) == (row.value, row.stamp):
                    row.verify("stamp")
                    row.verify("value")
                    row.delete()
                    deleted += 1
            return deleted
        return self.write(fn, "%d expired shared state rows" % len(wanted))

    def delete_migrations(self, uuids):
        """Delete the Migration rows of ``uuids`` (finished migrations past
        their retention, ``ryu_apps.expiry``)."""
        uuids = {str(u) for u in uuids}

        def fn(idl_, txn):
            deleted = 0
            for row in list(idl_.tables["Migration"].rows.values()):
                if str(row.uuid) in uuids:
                    row.delete()
                    deleted += 1
            return deleted
        return self.write(fn, "%d finished migrations" % len(uuids))

    def set_chassis_statuses(self, statuses):
        """Hosts' Chassis_Private rows (ChassisStatus values), in one
        transaction.  Only the controller's columns: ``mb_cfg`` is the
        host's mbxd's, which may also create the row (with its name and
        ``mb_cfg`` only); an insert that meets the daemon's is written
        again, once, as an update of the row the replica then holds."""
        statuses = list(statuses)
        inserted = []

        def fn(idl_, txn):
            rows = {r.name: r for r in idl_.tables["Chassis_Private"].rows.values()}
            for status in statuses:
                row = rows.get(status.name)
                if row is None:
                    row = txn.insert(idl_.tables["Chassis_Private"])
                    row.name = status.name
                    inserted.append(status.name)
                row.controller = status.controller
                row.connected = status.connected
                row.nb_cfg = status.nb_cfg
                row.sb_cfg = status.sb_cfg
        what = "status of %s" % ", ".join(s.name for s in statuses[:3]) + (
            " and %d more" % (len(statuses) - 3) if len(statuses) > 3 else "")
        future = self.write(fn, what)
        outcome = concurrent.futures.Future()
        outcome.retries = 0

        def done(f):
            if f.exception() is not None and inserted and outcome.retries == 0:
                outcome.retries = 1
                again = self.write(fn, what)
                again.add_done_callback(lambda g: _chain_result(g, outcome))
            else:
                _chain_result(f, outcome)
        future.add_done_callback(done)
        return outcome

    def raise_sb_cfg(self, value):
        """``SB_Global.sb_cfg`` becomes ``value`` unless it is already higher."""
        def fn(idl_, txn):
            rows = list(idl_.tables["SB_Global"].rows.values())
            row = rows[0] if rows else txn.insert(idl_.tables["SB_Global"])
            if not rows or row.sb_cfg < value:
                if rows:
                    row.verify("sb_cfg")
                row.sb_cfg = value
        return self.write(fn, "sb_cfg %d" % value)

    # ------------------------------------------------------------- thread
    def _run(self):
        last_seqno = None
        last_ports, last_status, last_cfg, last_session = {}, None, None, None
        last_datapaths = None
        ready = False
        locked = None           # not said yet
        inflight = []           # (txn, fn, what)
        while not self._stop.is_set():
            self._idl.run()
            self._wakeup.drain()
            if self._idl.has_ever_connected() and \
                    self._idl.change_seqno != last_seqno and self._local_settled():
                last_seqno = self._idl.change_seqno
                if self._datapaths and self._idl.datapaths_dirty:
                    self._idl.datapaths_dirty = False
                    datapaths = (_datapath_rows(self._idl), _nb_cfg(self._idl))
                    if datapaths != last_datapaths:
                        last_datapaths = datapaths
                        self._on_datapaths(*datapaths)
                changed, self._idl.changed = self._idl.changed, {}
                tables = {name: table.rows for name, table in self._idl.tables.items()}
                session = self._idl.session_seqno()
                if session != last_session:
                    # every row again, once the replica holds some (a
                    # reconnection empties it first)
                    if any(tables.values()) or not ready:
                        last_session = session
                        self._on_runtime(self._runtime_rows.resync(tables))
                else:
                    delta = self._runtime_rows.delta(changed, tables)
                    if not delta.empty:
                        self._on_runtime(delta)
                ports = host_ports_from_southbound(
                    self._idl.tables["Chassis"].rows.values(),
                    self._idl.tables["Port_Binding"].rows.values(),
                    self._warned)
                for host in changed_hosts(last_ports, ports):
                    self._on_ports(host, ports.get(host, HostPorts()))
                last_ports = ports
                status = chassis_statuses(self._idl.tables["Chassis_Private"].rows.values())
                if status != last_status:
                    last_status = status
                    self._on_status(status)
                cfg = _sb_cfg(self._idl)
                if cfg != last_cfg:
                    last_cfg = cfg
                    self._on_sb_cfg(cfg)
                if not ready:
                    ready = True
                    self._on_ready()
            if self._idl.lock_name is not None:
                held = self._idl.has_lock and self._idl.state == \
                    self._idl.IDL_S_MONITORING and self._idl.session_connected()
                self._held = held
                if held != locked and (held or locked or self._idl.is_lock_contended):
                    locked = held
                    self._on_lock(held)
            inflight = self._commit(inflight)
            poller = ovs.poller.Poller()
            self._idl.wait(poller)
            self._wakeup.wait(poller)
            poller.block()
        self._idl.close()

    def _local_settled(self):
        """With ``hosts``: the Datapath condition follows the hosts'
        bindings and slices, and the server has answered its last change
        (so the rows it selects have arrived)."""
        if self._local is None:
            return True
        idl_ = self._idl
        if idl_.local_dirty:
            idl_.local_dirty = False
            cond = localdp.condition(*localdp.local_of(
                self._local,
                ((r.logical_port, r.chassis)
                 for r in idl_.tables["Port_Binding"].rows.values()),
                ((r.chassis, _one(r.datapath))
                 for r in idl_.tables["Slice"].rows.values())))
            if cond != self._local_cond:
                self._local_cond = cond
                idl_.cond_change("Datapath", cond)
                idl_.send_cond_change()
        state = idl_.tables["Datapath"].condition_state
        return (idl_.state == idl_.IDL_S_MONITORING and not idl_.cond_changed
                and state.new is None and state.requested is None)

    def _commit(self, inflight):
        """Push the transactions along; start the queued writes."""
        still = []
        for txn, write, result in inflight:
            self._push(txn, write, result, still)
        if not self._idl.has_ever_connected():
            return still
        while True:
            try:
                write = self._writes.get_nowait()
            except queue.Empty:
                break
            fn, what, future = write
            txn = idl.Transaction(self._idl)
            try:
                result = fn(self._idl, txn)
            except MbxError as e:
                txn.abort()
                LOG.error("southbound write (%s) refused: %s", what, e)
                future.set_exception(e)
                continue
            if self._push(txn, write, result, still) == idl.Transaction.TRY_AGAIN:
                break           # the replica is behind: the rest after its update
        return still

    def _push(self, txn, write, result, still):
        """Commit ``txn`` (again): kept in ``still`` while in flight, queued
        again to be rebuilt on the new contents if it met a concurrent
        change, logged if refused.  Returns its status."""
        _fn, what, future = write
        status = txn.commit()
        if status == idl.Transaction.INCOMPLETE:
            still.append((txn, write, result))
        elif status == idl.Transaction.TRY_AGAIN:
            self._writes.put(write)
        elif status in (idl.Transaction.SUCCESS, idl.Transaction.UNCHANGED):
            self._unlocked = False
            if hasattr(result, "uuid"):         # an inserted row: its final uuid
                result = str(txn.get_insert_uuid(result.uuid) or result.uuid)
            future.set_result(result)
        else:
            error = txn.get_error()
            if "not locked" in str(error):
                # The lock the writes assert went with a reconnection: they
                # fail until the lock is known lost or held again; said once.
                if not self._unlocked:
                    self._unlocked = True
                    LOG.warning("southbound writes refused: the lock they assert is "
                                "not held (%s); not written until it is", what)
                future.set_exception(NotLocked("southbound write (%s) failed: the lock "
                                               "is not held" % what))
                return status
            LOG.error("southbound write (%s) failed: %s %s", what, status, error)
            future.set_exception(MbxError("southbound write (%s) failed: %s %s"
                                          % (what, status, error)))
        return status
