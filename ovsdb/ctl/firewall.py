"""mbxctl's firewall rule and address set commands."""

from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import status_table
from ovsdb.errors import MbxError


def _fw_del(nb, txn, args):
    if (args.direction is None) != (args.priority is None):
        raise MbxError("fw-del: give both DIRECTION and PRIORITY to "
                       "delete one rule, or neither to delete every rule")
    return txn.add(nb.fw_del(args.mb, args.direction, args.priority,
                             args.tier, args.if_exists))


def _fw_list(snap, args):
    rules = snap.rules.get(args.mb, ())
    return status_table(["DIRECTION", "TIER", "PRIORITY", "ACTION", "MATCH"],
                        [[r.direction, r.tier, r.priority, r.action, r.match]
                         for r in rules],
                        [snap.row_status.get(("rule", r.uuid), "")
                         for r in rules])


def _as_list(snap, args):
    sets = [s for s in sorted(snap.address_sets.values(), key=lambda s: s.name)
            if args.tenant is None or s.tenant == args.tenant]
    return status_table(["NAME", "TENANT", "ADDRESSES"],
                        [[s.name, s.tenant, ", ".join(s.addresses) or "-"]
                         for s in sets],
                        [snap.row_status.get(("set", s.name), "") for s in sets])


COMMANDS = (
    CtlCommand(
        "fw-add",
        "MB PRIORITY DIRECTION MATCH ACTION [--tier provider|tenant]",
        "add a firewall rule: PRIORITY 0-32767,\n"
        "DIRECTION from-vm|to-vm, ACTION\n"
        "allow|deny|reject (tier: tenant)",
        args=("mb", "priority", "direction", "match", "action", "--tier"),
        write=lambda nb, txn, a: txn.add(nb.fw_add(
            a.mb, a.priority, a.direction, a.match, a.action,
            a.tier or "tenant"))),
    CtlCommand(
        "fw-del", "MB [DIRECTION PRIORITY] [--tier T] [--if-exists]",
        "delete one rule (tier: tenant), or\nevery rule (of tier T)",
        args=("mb", "direction?", "priority?", "--tier", "--if-exists?"),
        write=_fw_del),
    CtlCommand(
        "fw-list", "MB", "list a middlebox's rules in\nevaluation order",
        args=("mb",),
        write=lambda nb, txn, a: txn.add(nb.require_middlebox(a.mb)),
        read=_fw_list),
    CtlCommand(
        "as-add", "NAME TENANT [ADDRESS...] [--may-exist]",
        "add an address set (IPs or CIDRs)",
        args=("name", "tenant", "addresses*", "--may-exist?"),
        write=lambda nb, txn, a: txn.add(nb.as_add(
            a.name, a.tenant, a.addresses, a.may_exist))),
    CtlCommand(
        "as-set", "NAME [ADDRESS...]", "replace an address set's addresses",
        args=("name", "addresses*"),
        write=lambda nb, txn, a: txn.add(nb.as_set(a.name, a.addresses))),
    CtlCommand(
        "as-del", "NAME [--if-exists]", "delete an address set not in use",
        args=("name", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.as_del(a.name, a.if_exists))),
    CtlCommand("as-list", "[TENANT]", "list address sets",
               args=("tenant?",), read=_as_list),
)
