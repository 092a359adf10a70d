"""mbxctl's load-balancer VIP commands."""

from ovsdb import validate
from ovsdb.ctl.middleboxes import require_named
from ovsdb.ctl.syntax import CtlCommand, key_values
from ovsdb.ctl.text import options, status_table


def backends(v):
    """'10.0.0.11:80=up, 10.0.0.12:80=unknown' (health from LB_VIP.status;
    unknown: not reported yet; its key "error" is the VIP's status)."""
    return ", ".join(
        f"{text}={v.status.get(text, 'unknown')}"
        for text in map(validate.backend_text, v.backends))


def _lb_list(snap, args):
    vips = [v for name, mb_vips in sorted(snap.vips.items())
            if args.mb is None or name == args.mb for v in mb_vips]
    return status_table(["MIDDLEBOX", "VIP", "PROTOCOL", "ALGORITHM",
                         "BACKENDS", "OPTIONS"],
                        [[v.middlebox, f"{v.vip}:{v.port}", v.protocol,
                          v.algorithm, backends(v) or "-",
                          options(v.options) or "-"] for v in vips],
                        [v.status.get(validate.STATUS_ERROR, "")
                         for v in vips])


COMMANDS = (
    CtlCommand(
        "lb-add",
        "MB VIP:PORT [BACKEND_IP:PORT...] [--protocol tcp|udp]\n"
        "[--algorithm hash|round-robin|least-connections|source-hash]\n"
        "[--may-exist]",
        "add a load-balanced VIP (tcp,\nhash)",
        args=("mb", "vip", "backends*", "--protocol", "--algorithm",
              "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.lb_add(
            a.mb, a.vip, a.protocol or "tcp", a.algorithm or "hash",
            a.backends, may_exist=a.may_exist))),
    CtlCommand(
        "lb-del", "MB VIP:PORT [--protocol P] [--if-exists]",
        args=("mb", "vip", "--protocol", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.lb_del(
            a.mb, a.vip, a.protocol, a.if_exists))),
    CtlCommand(
        "lb-backend-add",
        "MB VIP:PORT BACKEND_IP:PORT [--protocol P] [--may-exist]",
        args=("mb", "vip", "backend", "--protocol", "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.lb_backend_add(
            a.mb, a.vip, a.backend, a.protocol, a.may_exist))),
    CtlCommand(
        "lb-backend-del",
        "MB VIP:PORT BACKEND_IP:PORT [--protocol P] [--if-exists]",
        args=("mb", "vip", "backend", "--protocol", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.lb_backend_del(
            a.mb, a.vip, a.backend, a.protocol, a.if_exists))),
    CtlCommand(
        "lb-set", "MB VIP:PORT [--algorithm A] [KEY=VALUE...] [--protocol P]",
        "change a VIP; KEY= removes KEY",
        args=("mb", "vip", "options*", "--algorithm", "--protocol"),
        write=lambda nb, txn, a: txn.add(nb.lb_set(
            a.mb, a.vip, key_values("lb-set", a.options), a.algorithm,
            a.protocol))),
    CtlCommand("lb-list", "[MB]", "list VIPs, backends and health",
               args=("mb?",), write=require_named, read=_lb_list),
)
