"""mbxctl's steering policy commands."""

from ovsdb import validate
from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import status_table


def _steer_list(snap, args):
    policies = [p for p in snap.policies
                if args.switch is None or p.switch == args.switch]
    return status_table(["SWITCH", "PRIORITY", "CHAIN", "MATCH"],
                        [[p.switch, p.priority, validate.chain_text(p.chain),
                          p.match] for p in policies],
                        [snap.row_status.get(("policy", p.switch,
                                              p.priority), "")
                         for p in policies])


COMMANDS = (
    CtlCommand(
        "steer-add", "SWITCH PRIORITY MATCH MB[,MB...]|bypass",
        "send SWITCH's traffic that MATCH\n"
        "selects through the chain of\n"
        "middleboxes MB,... in order\n"
        "(PRIORITY 0-30000)",
        args=("switch", "priority", "match", "chain"),
        write=lambda nb, txn, a: txn.add(nb.steer_add(
            a.switch, a.priority, a.match, a.chain))),
    CtlCommand(
        "steer-del", "SWITCH [PRIORITY] [--if-exists]",
        "delete one or all steering policies",
        args=("switch", "priority?", "--if-exists?"),
        write=lambda nb, txn, a: txn.add(nb.steer_del(
            a.switch, a.priority, a.if_exists))),
    CtlCommand("steer-list", "[SWITCH]", "list steering policies",
               args=("switch?",), read=_steer_list),
)
