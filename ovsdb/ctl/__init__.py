"""mbxctl: the command-line client of the mbx config database.

Every command is declared once, as a CtlCommand (ovsdb/ctl/syntax.py) in the
module of its area; COMMANDS is their table, and the help text is laid out
from it. This module runs them: the options before the first command, the
commands joined by "--" in one transaction, then their output and waits."""

import os
import sys

from ovsdb import DEFAULT_DB
from ovsdb.api import MbxNb
from ovsdb.ctl import (database, externals, firewall, ids, lb, middleboxes,
                       migration, nat, steering, switches)
from ovsdb.ctl.syntax import command_table
from ovsdb.errors import MbxError

COMMANDS = command_table(
    database.COMMANDS, switches.COMMANDS, externals.COMMANDS,
    middleboxes.COMMANDS, firewall.COMMANDS, nat.COMMANDS, lb.COMMANDS,
    ids.COMMANDS, steering.COMMANDS, migration.COMMANDS)

USAGE = f"""\
usage: mbxctl [OPTIONS] COMMAND [ARG...] [-- COMMAND [ARG...]]...

Commands joined by a standalone "--" run in one transaction: all or nothing.

Options (before the first command):
  --db ADDR        config database (default: $MBX_DB, else {DEFAULT_DB})
  --wait=hv        after the change, wait until every connected host has
                   applied it (flows installed)
  --timeout SECS   give up waiting after SECS seconds (default: 10)

Commands:
""" + "".join(line + "\n" for command in COMMANDS.values()
              for line in command.help_lines()) + """
MATCH: space- or comma-separated terms, "any" or "" for every IPv4 packet:
  proto=tcp|udp|icmp|any|0-255  src=CIDR|ADDRESS|$SET  dst=...
  sport=PORT|LOW-HIGH  dport=...  (ports need proto=tcp or udp)
Middlebox options (KEY=VALUE): check=offload|every-packet|every-nth|relay,
  check-interval=2-255 (every-nth), same-host=both|source|destination,
  tier-order=provider-first|tenant-first (firewall only),
  migration-gather=datapath|datapath+review|service, migration-import=bulk|lazy,
  timeout-tcp-syn, timeout-tcp-established, timeout-tcp-closing, timeout-udp,
  timeout-udp-replied, timeout-icmp=SECONDS (1-65535: the zones' conntrack
  timeout policy);
  nat only: ports-per-host=256|512|...|32768 (default 4096);
  ids only: scan-threshold, synflood-threshold=COUNT (1-1000000),
  scan-window, synflood-window=SECONDS (1-65535)
VIP options (lb-set KEY=VALUE): health-check=tcp|none,
  health-interval, health-timeout=SECONDS (0 < S <= 3600),
  health-rise, health-fall=COUNT (1-100)
Global options (global-set KEY=VALUE): migration-wait-ms=MS (100-60000,
  default 3000): how long a destination holds packets of an unannounced
  migration for the state to land
A PROTOCOL is needed by lb-del, lb-backend-*, lb-set only when the VIP
exists for both tcp and udp.
"""


def _global_options(argv):
    """(options dict, rest of argv) from the options before the command."""
    opts = {"db": os.environ.get("MBX_DB") or DEFAULT_DB, "wait": "none",
            "timeout": 10.0}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        if argv[i] in ("-h", "--help"):
            opts["help"] = True
            return opts, []
        key, eq, value = argv[i].partition("=")
        if key not in ("--db", "--wait", "--timeout"):
            raise MbxError(f"unknown option {argv[i]!r}; options are --db, "
                           "--wait=hv, --timeout (see mbxctl --help)")
        if not eq:
            i += 1
            if i == len(argv):
                raise MbxError(f"option {key} needs a value")
            value = argv[i]
        i += 1
        if key == "--wait" and value not in ("hv", "none"):
            raise MbxError(f"invalid --wait={value}: use --wait=hv")
        if key == "--timeout":
            value = _timeout(value)
        opts[key[2:]] = value
    return opts, argv[i:]


def _timeout(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise MbxError(f"invalid --timeout {text!r}: use a positive number "
                       "of seconds")
    return value


def _commands(argv):
    """[(command name, parsed args)] from argv split at standalone "--"."""
    groups = [[]]
    for arg in argv:
        if arg == "--":
            groups.append([])
        else:
            groups[-1].append(arg)
    commands = []
    for group in groups:
        if not group:
            raise MbxError("missing command (see mbxctl --help)")
        name, args = group[0], group[1:]
        if name not in COMMANDS:
            raise MbxError(f"unknown command {name!r} (see mbxctl --help)")
        commands.append((name, COMMANDS[name].parse(args)))
    return commands


def _write(nb, txn, name, args):
    """Add command ``name``'s API commands to ``txn``; returns the one whose
    result it reports, if any."""
    write = COMMANDS[name].write
    return None if write is None else write(nb, txn, args)


def _read(snap, name, args):
    """Command ``name``'s output lines from ``snap``."""
    return COMMANDS[name].read(snap, args)


def run(argv, out):
    opts, rest = _global_options(argv)
    if opts.get("help"):
        out.write(USAGE)
        return
    commands = _commands(rest)
    nb = MbxNb.connect(opts["db"], timeout=min(opts["timeout"], 5.0))
    try:
        with nb.transaction(check_error=True) as txn:
            results = [_write(nb, txn, name, args) for name, args in commands]
            bump = txn.add(nb.bump_nb_cfg()) if opts["wait"] == "hv" else None
        lines = []
        snap = (nb.snapshot() if any(COMMANDS[name].read is not None
                                     for name, _ in commands) else None)
        for (name, args), result in zip(commands, results):
            command = COMMANDS[name]
            if command.reply is not None:
                lines += command.reply(result, args)
            if command.read is not None:
                lines += command.read(snap, args)
        if bump is not None:
            try:
                nb.wait_hv(bump.result, opts["timeout"])
            except MbxError as e:
                raise MbxError(f"change committed, but {e}") from None
        for (name, args), result in zip(commands, results):
            if COMMANDS[name].wait is not None:
                COMMANDS[name].wait(nb, result, args, opts["timeout"])
    finally:
        nb.close()
    for line in lines:
        print(line, file=out)


def main(argv=None):
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except MbxError as e:
        print(f"mbxctl: {e}", file=sys.stderr)
        return 1
    return 0
