"""The config database API of logical switches and VMs."""

import dataclasses

from mbxmodel.network import SwitchInfo, VMInfo
from ovsdb import validate
from ovsdb.api.common import (_Command, _find, _gateway_column, _middleboxes,
                              _policies, _policy_rows, _refuse_existing,
                              _reserved, _rows, _rule_rows, _switch_info,
                              _switches, _vm_info, _vms)
from ovsdb.errors import MbxError


class LsAddCommand(_Command):
    def __init__(self, api, switch, may_exist=False):
        super().__init__(api)
        self.switch = switch
        self.may_exist = may_exist

    def run_idl(self, txn):
        sw = self.switch
        row = _find(self.api, "Logical_Switch", sw.name)
        if row is not None:
            _refuse_existing(f"logical switch '{sw.name}'", _switch_info(row), sw,
                             self.may_exist)
            return
        validate.check_switch(sw, _switches(self.api).values())
        row = txn.insert(self.api.tables["Logical_Switch"])
        row.name, row.tenant, row.vni, row.subnet = (
            sw.name, sw.tenant, sw.vni, sw.subnet)
        row.gateway = _gateway_column(sw)


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
        policies = sorted((p.priority for p in _policies(self.api)
                           if p.switch == self.name), reverse=True)
        if policies:
            raise MbxError(f"logical switch '{self.name}' still has steering "
                           "policies at priority "
                           f"{', '.join(map(str, policies))}; delete them "
                           f"first (steer-del {self.name})")
        middleboxes = sorted(mb.name for mb in _middleboxes(self.api).values()
                             if mb.switch == self.name)
        if middleboxes:
            raise MbxError(f"logical switch '{self.name}' still has "
                           f"middleboxes {', '.join(middleboxes)}; delete "
                           "them first (mb-del)")
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
            _refuse_existing(f"VM '{vm.name}'", current, vm, self.may_exist)
            return
        validate.check_vm(vm, _switches(self.api), _vms(self.api),
                          reserved=_reserved(self.api))
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
        elif row.tenant != sw.tenant:
            _retenant(self.api, row, sw.tenant)
        row.tenant, row.vni, row.subnet = sw.tenant, sw.vni, sw.subnet
        row.gateway = _gateway_column(sw)


def _retenant(api, switch_row, tenant):
    """Switch ``switch_row`` now belongs to ``tenant``: so do its
    middleboxes, their tenant-tier rules and its steering policies (the
    ``tenant`` columns RBAC authorizes on)."""
    for mb in _rows(api, "Middlebox"):
        if mb.logical_switch == switch_row:
            mb.tenant = tenant
            for _, rule in _rule_rows(mb, "tenant"):
                rule.tenant = tenant
    for policy in _policy_rows(api, switch_row.name):
        policy.tenant = tenant


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
        reserved = _reserved(self.api)
        for name in sorted(self.switch_names):
            validate.check_switch(switches[name], switches.values())
        for vm in vms:
            if vm.name in self.vm_names or vm.switch in self.switch_names:
                validate.check_vm(vm, switches, vms, reserved=reserved)


class SetVmLocationCommand(_Command):
    def __init__(self, api, vm_name, host_name, epoch):
        super().__init__(api)
        self.vm_name = vm_name
        self.host_name = host_name
        self.epoch = epoch

    def run_idl(self, txn):
        row = _find(self.api, "VM", self.vm_name)
        if row is None:
            return                      # deleted meanwhile: nothing to mirror
        row.host = [] if self.host_name is None else [self.host_name]
        row.location_epoch = self.epoch


class SetVmMirrorsCommand(_Command):
    """Several VMs' mirrors in one transaction, the VM rows looked up once."""

    def __init__(self, api, mirrors):
        super().__init__(api)
        self.mirrors = dict(mirrors)

    def run_idl(self, txn):
        rows = {row.name: row for row in self.api.tables["VM"].rows.values()}
        for vm_name, (host_name, epoch) in sorted(self.mirrors.items()):
            row = rows.get(vm_name)
            if row is None:
                continue                # deleted meanwhile: nothing to mirror
            row.host = [] if host_name is None else [host_name]
            row.location_epoch = epoch


class SwitchesApi:
    """MbxNb's logical switch and VM methods."""

    def ls_add(self, name, vni, subnet, tenant=None, may_exist=False,
               gateway=None):
        """``gateway`` (default: the subnet's first address) is a host
        address of ``subnet``."""
        name = validate.name(name, "logical switch name")
        subnet = validate.subnet(subnet)
        switch = SwitchInfo(
            name, validate.tenant(name if tenant is None else tenant),
            validate.vni(vni), subnet,
            validate.default_gateway(subnet) if gateway is None
            else validate.gateway(gateway, subnet, name))
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

    def set_vm_mirror(self, vm_name, host_name, epoch):
        """VM.host and location_epoch: the operators' mirror of the VM's
        southbound VM_Location (mbx-northd writes both)."""
        return SetVmLocationCommand(self, vm_name, host_name, epoch)

    def set_vm_mirrors(self, mirrors):
        """``set_vm_mirror`` of every VM of ``mirrors`` ({vm: (host or
        None, epoch)}), in one transaction."""
        return SetVmMirrorsCommand(self, mirrors)

    def ls_list(self):
        return sorted(self.snapshot().switches.values(), key=lambda s: s.name)

    def vm_list(self, switch=None):
        return sorted((vm for vm in self.snapshot().vms.values()
                       if switch is None or vm.switch == switch),
                      key=lambda vm: vm.name)
