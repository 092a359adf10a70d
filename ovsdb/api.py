"""Python API to the mbx config database (MBX_Northbound), built on ovsdbapp.

    nb = MbxNb.connect("unix:/run/mbx/nb.sock")
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add("ls-a", 101, "10.0.0.0/24"))
        txn.add(nb.vm_add("a1", "ls-a", "10.0.0.1"))
    nb.close()

Arguments are validated when a command is built (before anything is sent).
Constraints that involve other rows (unknown switch, duplicate VNI, IP or
MAC) are checked again inside ``run_idl`` against the database as the
transaction sees it, so they hold with concurrent clients: a transaction that
races another one is retried by the IDL and checked again.  Every failure is
an ``MbxError`` and leaves the database unchanged.
"""

import dataclasses
import errno
import os
import time
from typing import Dict, Optional, Tuple

from ovs import jsonrpc, poller, stream
from ovsdbapp import api as ovsdbapp_api
from ovsdbapp import exceptions
from ovsdbapp.backend import ovs_idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.backend.ovs_idl import transaction

from ovsdb import validate
from ovsdb.errors import MbxError
from ryu_apps.model import SwitchInfo, VMInfo

SCHEMA_NAME = "MBX_Northbound"


@dataclasses.dataclass(frozen=True)
class HostRecord:
    name: str
    encap_type: str
    encap_ip: str
    mgmt_address: str
    nb_cfg: int                     # status: config generation applied
    connected: bool                 # status: controller has the host's switch
    datapath_id: Optional[str]      # status: e.g. "0000aabbccddeeff"


@dataclasses.dataclass(frozen=True)
class NbSnapshot:
    nb_cfg: int
    hv_cfg: int
    hosts: Dict[str, HostRecord]
    switches: Dict[str, SwitchInfo]
    vms: Dict[str, VMInfo]
    vm_locations: Dict[str, Tuple[Optional[str], int]]  # vm -> (host, epoch)


# --- reading rows (the transaction's view when called from run_idl) ---------

def _rows(api, table):
    return list(api.tables[table].rows.values())


def _find(api, table, name):
    for row in _rows(api, table):
        if row.name == name:
            return row
    return None


def _nb_global(api):
    rows = _rows(api, "NB_Global")
    return rows[0] if rows else None


def _switch_info(row):
    return SwitchInfo(row.name, row.tenant, row.vni, row.subnet)


def _vm_info(row):
    return VMInfo(row.name, row.logical_switch.name, row.mac, row.ip)


def _switches(api):
    return {row.name: _switch_info(row) for row in _rows(api, "Logical_Switch")}


def _vms(api):
    return [_vm_info(row) for row in _rows(api, "VM")]


def _require(api, table, name, what):
    row = _find(api, table, name)
    if row is None:
        raise MbxError(f"unknown {what} '{name}'")
    return row


def _differences(current, wanted):
    """'vni 5 (not 6), ...' for fields of two dataclasses that differ."""
    return ", ".join(
        f"{f.name} {getattr(current, f.name)} (not {getattr(wanted, f.name)})"
        for f in dataclasses.fields(current)
        if getattr(current, f.name) != getattr(wanted, f.name))


# --- commands ----------------------------------------------------------------

class _Command(command.BaseCommand):
    def execute(self, check_error=True, log_errors=False, **kwargs):
        return super().execute(check_error=check_error,
                               log_errors=log_errors, **kwargs)


class _ReadCommand(_Command):
    READ_ONLY = True


class LsAddCommand(_Command):
    def __init__(self, api, switch, may_exist=False):
        super().__init__(api)
        self.switch = switch
        self.may_exist = may_exist

    def run_idl(self, txn):
        sw = self.switch
        row = _find(self.api, "Logical_Switch", sw.name)
        if row is not None:
            diff = _differences(_switch_info(row), sw)
            if not self.may_exist:
                raise MbxError(f"logical switch '{sw.name}' already exists; "
                               "use --may-exist to accept an identical one")
            if diff:
                raise MbxError(f"logical switch '{sw.name}' already exists "
                               f"with {diff}")
            return
        validate.check_switch(sw, _switches(self.api).values())
        row = txn.insert(self.api.tables["Logical_Switch"])
        row.name, row.tenant, row.vni, row.subnet = (
            sw.name, sw.tenant, sw.vni, sw.subnet)


class LsDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "Logical_Switch", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown logical switch '{self.name}'; use "
                           "--if-exists to ignore a missing one")
        users = sorted(vm.name for vm in _vms(self.api)
                       if vm.switch == self.name)
        if users:
            raise MbxError(f"logical switch '{self.name}' still has VMs "
                           f"{', '.join(users)}; delete them first (vm-del)")
        row.delete()


class VmAddCommand(_Command):
    def __init__(self, api, vm, mac_given, may_exist=False):
        super().__init__(api)
        self.vm = vm
        self.mac_given = mac_given
        self.may_exist = may_exist

    def run_idl(self, txn):
        vm = self.vm
        row = _find(self.api, "VM", vm.name)
        if row is not None:
            current = _vm_info(row)
            if not self.mac_given:
                vm = dataclasses.replace(vm, mac=current.mac)
            diff = _differences(current, vm)
            if not self.may_exist:
                raise MbxError(f"VM '{vm.name}' already exists; use "
                               "--may-exist to accept an identical one")
            if diff:
                raise MbxError(f"VM '{vm.name}' already exists with {diff}")
            return
        validate.check_vm(vm, _switches(self.api), _vms(self.api))
        row = txn.insert(self.api.tables["VM"])
        row.name, row.mac, row.ip = vm.name, vm.mac, vm.ip
        row.logical_switch = _find(self.api, "Logical_Switch", vm.switch)
        row.location_epoch = 0


class VmDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "VM", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown VM '{self.name}'; use --if-exists to "
                           "ignore a missing one")
        row.delete()


class UpsertSwitchCommand(_Command):
    """Create or update a switch without checks (see CheckCommand)."""

    def __init__(self, api, switch):
        super().__init__(api)
        self.switch = switch

    def run_idl(self, txn):
        sw = self.switch
        row = _find(self.api, "Logical_Switch", sw.name)
        if row is None:
            row = txn.insert(self.api.tables["Logical_Switch"])
            row.name = sw.name
        row.tenant, row.vni, row.subnet = sw.tenant, sw.vni, sw.subnet


class UpsertVmCommand(_Command):
    """Create or update a VM without checks (see CheckCommand)."""

    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        vm = self.vm
        switch = _find(self.api, "Logical_Switch", vm.switch)
        if switch is None:
            raise MbxError(f"VM '{vm.name}': unknown logical switch "
                           f"'{vm.switch}'; create it first")
        row = _find(self.api, "VM", vm.name)
        if row is None:
            row = txn.insert(self.api.tables["VM"])
            row.name, row.location_epoch = vm.name, 0
        row.logical_switch, row.mac, row.ip = switch, vm.mac, vm.ip


class CheckCommand(_Command):
    """Check the named switches, their VMs and the named VMs against the
    database as the transaction leaves it.  Added after a batch of upserts,
    so a batch that is consistent as a whole passes whatever its order."""

    def __init__(self, api, switch_names, vm_names):
        super().__init__(api)
        self.switch_names = set(switch_names)
        self.vm_names = set(vm_names)

    def run_idl(self, txn):
        switches = _switches(self.api)
        vms = _vms(self.api)
        for name in sorted(self.switch_names):
            validate.check_switch(switches[name], switches.values())
        for vm in vms:
            if vm.name in self.vm_names or vm.switch in self.switch_names:
                validate.check_vm(vm, switches, vms)


class HostRegisterCommand(_Command):
    def __init__(self, api, name, encap_type, encap_ip, mgmt_address):
        super().__init__(api)
        self.name = name
        self.encap_type = encap_type
        self.encap_ip = encap_ip
        self.mgmt_address = mgmt_address

    def run_idl(self, txn):
        for other in _rows(self.api, "Host"):
            if other.name != self.name and other.encap_ip == self.encap_ip:
                raise MbxError(f"encap IP {self.encap_ip} is already used by "
                               f"host '{other.name}'; give each host its own")
        row = _find(self.api, "Host", self.name)
        if row is None:
            row = txn.insert(self.api.tables["Host"])
            row.name, row.nb_cfg, row.connected = self.name, 0, False
        row.encap_type = self.encap_type
        row.encap_ip = self.encap_ip
        row.mgmt_address = self.mgmt_address


class EnsureNbGlobalCommand(_Command):
    def run_idl(self, txn):
        self.result = _nb_global(self.api) or _insert_nb_global(self.api, txn)


def _insert_nb_global(api, txn):
    row = txn.insert(api.tables["NB_Global"])
    row.name, row.nb_cfg, row.hv_cfg, row.hv_cfg_timestamp = "", 0, 0, 0
    return row


class BumpNbCfgCommand(_Command):
    def run_idl(self, txn):
        row = _nb_global(self.api)
        if row is None:
            row = _insert_nb_global(self.api, txn)
        else:
            row.verify("nb_cfg")
        self.result = row.nb_cfg + 1
        row.nb_cfg = self.result


class SetHostStatusCommand(_Command):
    def __init__(self, api, name, nb_cfg, connected, datapath_id):
        super().__init__(api)
        self.name = name
        self.columns = {"nb_cfg": nb_cfg, "connected": connected,
                        "datapath_id": datapath_id}

    def run_idl(self, txn):
        row = _require(self.api, "Host", self.name, "host")
        for column, value in self.columns.items():
            if column == "datapath_id" and value is not None:
                value = [value] if value else []
            if value is not None:
                setattr(row, column, value)


class SetVmLocationCommand(_Command):
    def __init__(self, api, vm_name, host_name, epoch):
        super().__init__(api)
        self.vm_name = vm_name
        self.host_name = host_name
        self.epoch = epoch

    def run_idl(self, txn):
        row = _require(self.api, "VM", self.vm_name, "VM")
        host = []
        if self.host_name is not None:
            host = [_require(self.api, "Host", self.host_name, "host")]
        row.host = host
        row.location_epoch = self.epoch


class SetHvCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.hv_cfg = self.value
        row.hv_cfg_timestamp = int(time.time() * 1000)


class SnapshotCommand(_ReadCommand):
    def run_idl(self, txn):
        nb = _nb_global(self.api)
        hosts, locations = {}, {}
        for row in _rows(self.api, "Host"):
            hosts[row.name] = HostRecord(
                row.name, row.encap_type, row.encap_ip, row.mgmt_address,
                row.nb_cfg, row.connected,
                row.datapath_id[0] if row.datapath_id else None)
        for row in _rows(self.api, "VM"):
            locations[row.name] = (row.host[0].name if row.host else None,
                                   row.location_epoch)
        self.result = NbSnapshot(
            nb_cfg=nb.nb_cfg if nb else 0, hv_cfg=nb.hv_cfg if nb else 0,
            hosts=hosts, switches=_switches(self.api),
            vms={vm.name: vm for vm in _vms(self.api)},
            vm_locations=locations)


# --- connection ---------------------------------------------------------------

def _unreachable(remote, reason):
    return MbxError(f"cannot connect to config database at {remote}: "
                    f"{reason}; is the lab up? set --db or MBX_DB")


def _fetch_schema(remote, timeout):
    """The schema JSON of MBX_Northbound served at ``remote``, or MbxError
    within about ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    def remaining_ms():
        return max(0, int((deadline - time.monotonic()) * 1000))

    err, strm = stream.Stream.open_block(stream.Stream.open(remote),
                                         remaining_ms())
    if err:
        raise _unreachable(remote, os.strerror(err))
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request("get_schema", [SCHEMA_NAME])
        err = rpc.send(request)
        while not err:
            err, reply = rpc.recv()
            if err == errno.EAGAIN:
                if not remaining_ms():
                    raise _unreachable(remote, f"no answer within {timeout}s")
                rpc.run()
                wait = poller.Poller()
                rpc.wait(wait)
                rpc.recv_wait(wait)
                wait.timer_wait(remaining_ms())
                wait.block()
                err = 0
            elif not err and reply.id == request.id:
                if reply.error:
                    raise _unreachable(remote, f"it serves no {SCHEMA_NAME} "
                                       "database")
                return reply.result
        raise _unreachable(remote, os.strerror(err) if err > 0 else "EOF")
    finally:
        rpc.close()


class _NbIdl(connection.OvsdbIdl):
    on_change = None

    def notify(self, event, row, updates=None):
        if self.on_change is not None:
            self.on_change(row._table.name)


class _Transaction(transaction.Transaction):
    """Reports OVSDB-level failures as MbxError."""

    def commit(self):
        try:
            return super().commit()
        except MbxError:
            raise
        except (RuntimeError, exceptions.TimeoutException) as e:
            raise MbxError(f"config database transaction failed: {e}") from e


class MbxNb(ovs_idl.Backend, ovsdbapp_api.API):
    schema = SCHEMA_NAME
    lookup_table = {
        table: idlutils.RowLookup(table, "name", None)
        for table in ("Host", "Logical_Switch", "VM")}

    @classmethod
    def connect(cls, remote, timeout=5.0, on_change=None):
        """Connect to the config database at ``remote`` ("unix:PATH",
        "tcp:IP:PORT").  ``on_change(table_name)`` is called from the IDL
        thread after any row changes; it must be cheap (e.g. queue.put)."""
        helper = idlutils.create_schema_helper(_fetch_schema(remote, timeout))
        helper.register_all()
        idl = _NbIdl(remote, helper)
        idl.on_change = on_change
        conn = connection.Connection(idl, timeout)
        # The Backend keeps its connection at class level: each connection
        # gets a class of its own so several can coexist in one process.
        own_class = type(cls.__name__, (cls,), {
            "_ovsdb_connection": None, "__module__": cls.__module__})
        nb = own_class(conn, start=False)
        try:
            conn.start()
        except Exception as e:
            idl.close()
            raise _unreachable(remote, str(e) or type(e).__name__) from e
        return nb

    def close(self):
        self.ovsdb_connection.stop(timeout=5)

    def create_transaction(self, check_error=True, log_errors=False, **kw):
        return _Transaction(self, self.ovsdb_connection,
                            self.ovsdb_connection.timeout,
                            check_error, log_errors)

    def transaction(self, check_error=True, log_errors=False, **kwargs):
        return super().transaction(check_error, log_errors, **kwargs)

    # --- user writes ---

    def ls_add(self, name, vni, subnet, tenant=None, may_exist=False):
        switch = SwitchInfo(
            validate.name(name, "logical switch name"),
            validate.tenant(name if tenant is None else tenant),
            validate.vni(vni), validate.subnet(subnet))
        return LsAddCommand(self, switch, may_exist)

    def ls_del(self, name, if_exists=False):
        return LsDelCommand(self, name, if_exists)

    def vm_add(self, name, switch, ip, mac=None, may_exist=False):
        vm = VMInfo(validate.name(name, "VM name"),
                    validate.name(switch, "logical switch name"),
                    validate.mac(mac) if mac is not None
                    else validate.mac_from_name(name),
                    validate.ipv4(ip))
        return VmAddCommand(self, vm, mac is not None, may_exist)

    def vm_del(self, name, if_exists=False):
        return VmDelCommand(self, name, if_exists)

    def upsert_switch(self, switch: SwitchInfo):
        """Create or update ``switch``; follow a batch with ``check()``."""
        return UpsertSwitchCommand(self, switch)

    def upsert_vm(self, vm: VMInfo):
        """Create or update ``vm``; follow a batch with ``check()``."""
        return UpsertVmCommand(self, vm)

    def check(self, switch_names=(), vm_names=()):
        return CheckCommand(self, switch_names, vm_names)

    def host_register(self, name, encap_type, encap_ip, mgmt_address):
        return HostRegisterCommand(
            self, validate.name(name, "host name"),
            validate.encap_type(encap_type),
            validate.ipv4(encap_ip, "encap IP"),
            validate.mgmt_address(mgmt_address))

    def ensure_nb_global(self):
        return EnsureNbGlobalCommand(self)

    def bump_nb_cfg(self):
        """Increments NB_Global.nb_cfg; the command's result is the new value."""
        return BumpNbCfgCommand(self)

    # --- status writes (the controller) ---

    def set_host_status(self, name, nb_cfg=None, connected=None,
                        datapath_id=None):
        """Columns left as None are unchanged; datapath_id "" clears it."""
        return SetHostStatusCommand(self, name, nb_cfg, connected, datapath_id)

    def set_vm_location(self, vm_name, host_name, epoch):
        return SetVmLocationCommand(self, vm_name, host_name, epoch)

    def set_hv_cfg(self, value):
        return SetHvCfgCommand(self, value)

    # --- reads ---

    def snapshot(self) -> NbSnapshot:
        return SnapshotCommand(self).execute(check_error=True)

    def ls_list(self):
        return sorted(self.snapshot().switches.values(), key=lambda s: s.name)

    def vm_list(self, switch=None):
        return sorted((vm for vm in self.snapshot().vms.values()
                       if switch is None or vm.switch == switch),
                      key=lambda vm: vm.name)

    def host_list(self):
        return sorted(self.snapshot().hosts.values(), key=lambda h: h.name)

    def wait_hv(self, nb_cfg, timeout):
        """Return once NB_Global.hv_cfg >= nb_cfg, else MbxError."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if snap.hv_cfg >= nb_cfg:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        behind = sorted(f"{h.name} (at {h.nb_cfg})"
                        for h in snap.hosts.values()
                        if h.connected and h.nb_cfg < nb_cfg)
        raise MbxError(
            f"timed out after {timeout:g}s waiting for hosts to apply config "
            f"{nb_cfg} (hv_cfg is {snap.hv_cfg}); behind: "
            + (", ".join(behind) or "no connected host; is the controller "
               "running?"))
