"""mbxctl's logical switch, VM and host commands."""

from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import table


def _ls_list(snap, args):
    return table(["NAME", "TENANT", "VNI", "SUBNET", "GATEWAY"],
                 [[s.name, s.tenant, s.vni, s.subnet, s.gateway]
                  for s in sorted(snap.switches.values(),
                                  key=lambda s: s.name)])


def _vm_list(snap, args):
    vms = [vm for vm in snap.vms.values()
           if args.switch is None or vm.switch == args.switch]
    return table(["NAME", "SWITCH", "IP", "MAC", "HOST", "EPOCH"],
                 [[vm.name, vm.switch, vm.ip, vm.mac,
                   snap.vm_locations[vm.name][0] or "-",
                   snap.vm_locations[vm.name][1]]
                  for vm in sorted(vms, key=lambda vm: vm.name)])


def _host_list(snap, args):
    return table(["NAME", "ENCAP", "ENCAP_IP", "MGMT_ADDRESS", "NB_CFG",
                  "CONNECTED", "DATAPATH_ID", "MIGRATION_ADDRESS"],
                 [[h.name, h.encap_type, h.encap_ip, h.mgmt_address,
                   h.nb_cfg, str(h.connected).lower(),
                   h.datapath_id or "-", h.migration_address or "-"]
                  for h in sorted(snap.hosts.values(), key=lambda h: h.name)])


COMMANDS = (
    CtlCommand(
        "ls-add",
        "NAME --vni N --subnet CIDR [--tenant T] [--gateway IP]\n"
        "[--may-exist]",
        "gateway: default the subnet's first\naddress",
        args=("name", "--vni!", "--subnet!", "--tenant", "--gateway",
              "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.ls_add(
            a.name, a.vni, a.subnet, a.tenant, a.may_exist, a.gateway))),
    CtlCommand(
        "ls-del", "NAME [--if-exists]", "delete an unused logical switch",
        args=("name", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.ls_del(a.name, a.if_exists))),
    CtlCommand("ls-list", help="list logical switches", read=_ls_list),
    CtlCommand(
        "vm-add", "NAME --switch LS --ip IP [--mac MAC] [--may-exist]",
        args=("name", "--switch!", "--ip!", "--mac", "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.vm_add(
            a.name, a.switch, a.ip, a.mac, a.may_exist))),
    CtlCommand(
        "vm-del", "NAME [--if-exists]",
        args=("name", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.vm_del(a.name, a.if_exists))),
    CtlCommand("vm-list", "[--switch LS]", "list VMs and where they run",
               args=("--switch",), read=_vm_list),
    CtlCommand("host-list", help="list registered hosts", read=_host_list),
)
