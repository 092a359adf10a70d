"""mbxctl's NAT rule commands."""

from ovsdb.ctl.middleboxes import require_named
from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import status_table


def _nat_del(nb, txn, args):
    by_uuid = "." not in args.target
    return txn.add(nb.nat_del(args.mb, None if by_uuid else args.target,
                              args.type, args.external_port,
                              args.target if by_uuid else None,
                              args.if_exists))


def _protocol(rule):
    if rule.type == "snat":
        return "tcp,udp"
    if rule.external_port is None:
        return "any"
    return rule.protocol or "tcp,udp"


def _ports(rule):
    if rule.type == "snat":
        return "%d-%d" % rule.port_range
    if rule.external_port is None:
        return "-"
    if rule.logical_port is None:
        return str(rule.external_port)
    return f"{rule.external_port}->{rule.logical_port}"


def _nat_list(snap, args):
    rules = [r for name, mb_rules in sorted(snap.nat_rules.items())
             if args.mb is None or name == args.mb for r in mb_rules]
    return status_table(["MIDDLEBOX", "TYPE", "EXTERNAL_IP", "LOGICAL_IP",
                         "PROTOCOL", "PORTS", "UUID"],
                        [[r.middlebox, r.type, ",".join(r.external_ips),
                          r.logical_ip or "-", _protocol(r), _ports(r), r.uuid]
                         for r in rules],
                        [snap.row_status.get(("nat", r.uuid), "") for r in rules])


COMMANDS = (
    CtlCommand(
        "nat-add",
        "MB snat EXTERNAL_IP[,EXTERNAL_IP...] [LOGICAL_CIDR]\n"
        "[--port-range LO-HI] [--may-exist]",
        "translate sources in LOGICAL_CIDR\n"
        "(default: the switch's subnet) to\n"
        "the external IPs, ports LO-HI\n"
        "(default 1024-65535)",
        other_forms=((
            "MB dnat EXTERNAL_IP LOGICAL_IP [--protocol tcp|udp]\n"
            "[--external-port P] [--logical-port P] [--may-exist]",
            "forward EXTERNAL_IP (or its port P)\nto LOGICAL_IP (its port)"),),
        args=("mb", "type", "external_ips", "logical?", "--port-range",
              "--protocol", "--external-port", "--logical-port",
              "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.nat_add(
            a.mb, a.type, a.external_ips, a.logical or "", a.protocol or "",
            a.external_port, a.logical_port, a.port_range, a.may_exist))),
    CtlCommand(
        "nat-del",
        "MB EXTERNAL_IP|UUID [--type snat|dnat] [--external-port P]\n"
        "[--if-exists]",
        "delete one NAT rule",
        args=("mb", "target", "--type", "--external-port", "--if-exists?"),
        write=_nat_del),
    CtlCommand("nat-list", "[MB]", "list NAT rules", args=("mb?",),
               write=require_named, read=_nat_list),
)
