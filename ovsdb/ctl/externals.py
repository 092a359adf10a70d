"""mbxctl's external network commands."""

from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import status_table


def _ext_list(snap, args):
    nets = [e for _, e in sorted(snap.external_networks.items())]
    return status_table(["NAME", "CIDR", "GATEWAY_IP", "GATEWAY_MAC"],
                        [[e.name, e.cidr, e.gateway_ip, e.gateway_mac] for e in nets],
                        [snap.row_status.get(("external", e.name), "") for e in nets])


COMMANDS = (
    CtlCommand(
        "ext-add", "NAME CIDR GATEWAY_IP GATEWAY_MAC [--may-exist]",
        "add an external network",
        args=("name", "cidr", "gateway_ip", "gateway_mac", "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.ext_add(
            a.name, a.cidr, a.gateway_ip, a.gateway_mac, a.may_exist))),
    CtlCommand(
        "ext-del", "NAME [--if-exists]",
        "delete an external network no NAT\nrule uses",
        args=("name", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.ext_del(a.name, a.if_exists))),
    CtlCommand("ext-list", help="list external networks", read=_ext_list),
)
