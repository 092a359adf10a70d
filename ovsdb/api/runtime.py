"""The southbound database API of the runtime rows as a whole: the
snapshot, the hosts (Chassis and Chassis_Private), the VMs' locations
(VM_Location)."""

from mbxmodel.snapshot import SbSnapshot, sb_snapshot
from ovsdb import validate
from ovsdb.api.common import _Command, _ReadCommand


class SbSnapshotCommand(_ReadCommand):
    def run_idl(self, txn):
        self.result = sb_snapshot({name: table.rows.values()
                                   for name, table in self.api.tables.items()})


def write_vm_location(tables, txn, vm, chassis, epoch):
    """In ``txn``: VM_Location of ``vm`` says ``chassis`` (None: nowhere)
    and ``epoch``.  Shared by MbxSb and the controllers' southbound
    connection."""
    row = next((r for r in tables["VM_Location"].rows.values() if r.vm == vm), None)
    if row is None:
        row = txn.insert(tables["VM_Location"])
        row.vm = vm
    row.chassis = [] if chassis is None else [chassis]
    row.epoch = epoch


class SetVmLocationCommand(_Command):
    def __init__(self, api, vm, chassis, epoch):
        super().__init__(api)
        self.vm = vm
        self.chassis = chassis
        self.epoch = epoch

    def run_idl(self, txn):
        write_vm_location(self.api.tables, txn, self.vm, self.chassis, self.epoch)


class RuntimeApi:
    """MbxSb's methods on the runtime rows as a whole."""

    def snapshot(self) -> SbSnapshot:
        return SbSnapshotCommand(self).execute(check_error=True)

    def host_list(self):
        """The hosts (chassis), sorted by name."""
        return sorted(self.snapshot().hosts.values(), key=lambda h: h.name)

    def set_vm_location(self, vm, chassis, epoch):
        """VM_Location of ``vm``: on ``chassis`` (None: nowhere) since
        location ``epoch`` (mbx-northd's decision)."""
        return SetVmLocationCommand(self, validate.name(vm, "VM name"),
                                    None if chassis is None
                                    else validate.name(chassis, "host name"),
                                    epoch)
