"""mbxctl's logical switch, VM and host commands (hosts and VM locations:
the southbound database)."""

from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import options, status_table, table


def _ls_list(snap, args):
    switches = sorted(snap.switches.values(), key=lambda s: s.name)
    return status_table(["NAME", "TENANT", "VNI", "SUBNET", "GATEWAY"],
                        [[s.name, s.tenant, s.vni, s.subnet, s.gateway]
                         for s in switches],
                        [snap.row_status.get(("switch", s.name), "")
                         for s in switches])


def _vm_list(snap, args, sb_snap):
    vms = [vm for vm in snap.vms.values()
           if args.switch is None or vm.switch == args.switch]
    rows, statuses = [], []
    for vm in sorted(vms, key=lambda vm: vm.name):
        host, epoch = sb_snap.vm_locations.get(vm.name, (None, 0))
        rows.append([vm.name, vm.switch, vm.ip, vm.mac, host or "-", epoch])
        statuses.append(snap.row_status.get(("vm", vm.name), ""))
    return status_table(["NAME", "SWITCH", "IP", "MAC", "HOST", "EPOCH"],
                        rows, statuses)


def _host_list(sb_snap, args):
    return table(["NAME", "ENCAP", "ENCAP_IP", "NB_CFG", "MB_CFG", "CONNECTED",
                  "DATAPATH_ID", "MIGRATION_ADDRESS"],
                 [[h.name, h.encap_type, h.encap_ip, h.nb_cfg,
                   "-" if h.mb_cfg is None else h.mb_cfg,
                   str(h.connected).lower(), h.datapath_id or "-",
                   h.migration_address or "-"]
                  for h in sorted(sb_snap.hosts.values(), key=lambda h: h.name)])


def _slice_list(sb_snap, args):
    return table(["HOST", "TAG", "CHAIN", "STATUS"],
                 [[host, tag, ",".join(chain),
                   options(sb_snap.slice_status.get((chain, host), {})) or "-"]
                  for (chain, host), tag in sorted(
                      sb_snap.slices.items(), key=lambda item: (item[0][1], item[1]))
                  if args.host is None or host == args.host])


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
               args=("--switch",), read=_vm_list, reads="both"),
    CtlCommand("host-list", help="list hosts (their chassis) and\ntheir status",
               read=_host_list, reads="sb"),
    CtlCommand("slice-list", "[--host HOST]",
               "list the chain slices mbx-northd\nallocated, by host",
               args=("--host",), read=_slice_list, reads="sb"),
)
