"""mbxctl's middlebox commands."""

from ovsdb.ctl.syntax import CtlCommand, key_values
from ovsdb.ctl.text import options, table


def require_named(nb, txn, args):
    """The write step of a list command whose optional MB must exist."""
    if args.mb is not None:
        return txn.add(nb.require_middlebox(args.mb))
    return None


def _rule_count(snap, mb):
    """A middlebox's firewall rules, NAT rules or VIPs, by its type."""
    items = {"firewall": snap.rules, "nat": snap.nat_rules,
             "lb": snap.vips}.get(mb.type)
    return "-" if items is None else len(items.get(mb.name, ()))


def _mb_list(snap, args):
    return table(["NAME", "TYPE", "SWITCH", "DEFAULT", "RULES", "OPTIONS",
                  "STATUS"],
                 [[mb.name, mb.type, mb.switch,
                   mb.default_action if mb.type == "firewall" else "-",
                   _rule_count(snap, mb),
                   options(mb.options) or "-",
                   options(snap.middlebox_status.get(mb.name, {})) or "-"]
                  for mb in sorted(snap.middleboxes.values(),
                                   key=lambda mb: mb.name)])


COMMANDS = (
    CtlCommand(
        "mb-add",
        "NAME SWITCH [--type firewall|nat|lb|ids]\n"
        "[--default allow|deny|reject] [KEY=VALUE...] [--may-exist]",
        "add a middlebox serving SWITCH,\nwith options KEY=VALUE",
        args=("name", "switch", "--type", "--default", "options*",
              "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.mb_add(
            a.name, a.switch, a.type or "firewall", a.default or "deny",
            key_values("mb-add", a.options), a.may_exist))),
    CtlCommand(
        "mb-set", "NAME [--default ACTION] [KEY=VALUE...]",
        "change a middlebox; KEY= removes KEY",
        args=("name", "--default", "options*"),
        write=lambda nb, txn, a: txn.add(nb.mb_set(
            a.name, a.default, key_values("mb-set", a.options)))),
    CtlCommand(
        "mb-del", "NAME [--if-exists]",
        "delete a middlebox and its rules,\nNAT rules and VIPs",
        args=("name", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.mb_del(a.name, a.if_exists))),
    CtlCommand("mb-list", help="list middleboxes, types and status",
               read=_mb_list),
)
