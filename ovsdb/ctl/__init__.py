"""mbxctl: the command-line client of the mbx databases: intent in the
config (northbound) database, runtime rows in the southbound database.

Every command is declared once, as a CtlCommand (ovsdb/ctl/syntax.py) in the
module of its area; COMMANDS is their table, and the help text is laid out
from it. This module runs them: the options before the first command, the
commands joined by "--" in one transaction, then their output and waits."""

import os
import sys

from ovsdb import DEFAULT_DB, DEFAULT_SB, default_sb, remotes, tls
from ovsdb.api import MbxNb, MbxSb
from ovsdb.ctl import (database, externals, firewall, ids, lb, middleboxes,
                       migration, nat, steering, switches)
from ovsdb.ctl.syntax import command_table
from ovsdb.errors import MbxError
from ovsdb.rbac import explain as explain_refusal

COMMANDS = command_table(
    database.COMMANDS, switches.COMMANDS, externals.COMMANDS,
    middleboxes.COMMANDS, firewall.COMMANDS, nat.COMMANDS, lb.COMMANDS,
    ids.COMMANDS, steering.COMMANDS, migration.COMMANDS)

USAGE = f"""\
usage: mbxctl [OPTIONS] COMMAND [ARG...] [-- COMMAND [ARG...]]...

Commands joined by a standalone "--" run in one transaction: all or nothing
(so they change one database: the config database, or the southbound
database's runtime rows).

Options (before the first command):
  --db ADDR        config database (default: $MBX_DB, else {DEFAULT_DB});
                   a cluster's members: ADDR,ADDR,... (it uses the leader)
  --sb ADDR        southbound database: hosts, slices, migrations, IDS
                   alerts (default: $MBX_SB, else the --db server; with
                   the default --db: {DEFAULT_SB})
  -p, --private-key FILE   for ssl: remotes: this client's private key,
  -c, --certificate FILE   its certificate,
  -C, --ca-cert FILE       and the CA certificate (see mbx-pki)
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
  migration for the state to land; shared-state-lease=SECONDS (3-3600,
  default 30): a dead host's shared state goes after this long;
  migration-retention=SECONDS (10-31536000, default 3600): finished
  migrations are deleted this long after they ended
A PROTOCOL is needed by lb-del, lb-backend-*, lb-set only when the VIP
exists for both tcp and udp.
"""


def _global_options(argv):
    """(options dict, rest of argv) from the options before the command."""
    opts = {"db": os.environ.get("MBX_DB") or DEFAULT_DB,
            "sb": os.environ.get("MBX_SB") or None, "wait": "none",
            "timeout": 10.0}
    tls_names = {}
    for long, short, dest, _help in tls.OPTIONS:
        tls_names[long] = tls_names[short] = dest
        opts[dest] = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        if argv[i] in ("-h", "--help"):
            opts["help"] = True
            return opts, []
        key, eq, value = argv[i].partition("=")
        if key not in ("--db", "--sb", "--wait", "--timeout") and key not in tls_names:
            raise MbxError(f"unknown option {argv[i]!r}; options are --db, "
                           "--sb, --wait=hv, --timeout, -p/--private-key, "
                           "-c/--certificate, -C/--ca-cert (see mbxctl --help)")
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
        if key in tls_names:
            opts[tls_names[key]] = value
            continue
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


def _databases(commands):
    """The database the commands write to ("nb" or "sb"; "nb" when none
    writes), and whether any reads the southbound database; MbxError when
    they would write to both."""
    writes = {COMMANDS[name].db for name, _ in commands
              if COMMANDS[name].write is not None}
    if len(writes) > 1:
        sb_names = sorted({name for name, _ in commands
                           if COMMANDS[name].db == "sb" and COMMANDS[name].write})
        raise MbxError("commands on the config database and on the southbound "
                       f"database ({', '.join(sb_names)}) cannot share one "
                       "transaction; run them separately")
    reads_sb = any(COMMANDS[name].reads in ("sb", "both") for name, _ in commands)
    return (writes.pop() if writes else "nb"), reads_sb


def _write(api, txn, name, args):
    """Add command ``name``'s API commands to ``txn``; returns the one whose
    result it reports, if any."""
    write = COMMANDS[name].write
    return None if write is None else write(api, txn, args)


def _read(name, args, nb_snap=None, sb_snap=None):
    """Command ``name``'s output lines from the snapshots."""
    command = COMMANDS[name]
    if command.reads == "sb":
        return command.read(sb_snap, args)
    if command.reads == "both":
        return command.read(nb_snap, args, sb_snap)
    return command.read(nb_snap, args)


def parse(argv):
    """What mbxctl checks before connecting: ``(options, [(command name,
    parsed args)], database written, whether the southbound database is
    read)``, or ``(options, [], None, False)`` for --help; a mistake raises
    one MbxError line."""
    opts, rest = _global_options(argv)
    if opts.get("help"):
        return opts, [], None, False
    commands = _commands(rest)
    db, reads_sb = _databases(commands)
    remotes.split(opts["db"], "--db remote")
    if opts["sb"]:
        remotes.split(opts["sb"], "--sb remote")
    return opts, commands, db, reads_sb


def run(argv, out):
    opts, commands, db, reads_sb = parse(argv)
    if opts.get("help"):
        out.write(USAGE)
        return
    tls.configure(tls.Files(opts["private_key"], opts["certificate"], opts["ca_cert"]),
                  opts["db"], opts["sb"], program="mbxctl")
    timeout = min(opts["timeout"], 5.0)
    nb = MbxNb.connect(opts["db"], timeout=timeout)
    sb = None
    try:
        if db == "sb" or reads_sb or opts["wait"] == "hv":
            sb = MbxSb.connect(default_sb(opts["db"], opts["sb"]), timeout=timeout, nb=nb)
        api = sb if db == "sb" else nb
        bump = None
        with api.transaction(check_error=True) as txn:
            results = [_write(api, txn, name, args) for name, args in commands]
            if opts["wait"] == "hv" and api is nb:
                bump = txn.add(nb.bump_nb_cfg())
        if opts["wait"] == "hv" and api is not nb:
            with nb.transaction(check_error=True) as txn:
                bump = txn.add(nb.bump_nb_cfg())
        lines = []
        readers = [COMMANDS[name].reads for name, _ in commands
                   if COMMANDS[name].read is not None]
        nb_snap = nb.snapshot() if any(r in ("nb", "both") for r in readers) else None
        sb_snap = sb.snapshot() if any(r in ("sb", "both") for r in readers) else None
        for (name, args), result in zip(commands, results):
            command = COMMANDS[name]
            if command.reply is not None:
                lines += command.reply(result, args)
            if command.read is not None:
                lines += _read(name, args, nb_snap, sb_snap)
        if bump is not None:
            try:
                nb.wait_hv(bump.result, opts["timeout"], sb)
            except MbxError as e:
                raise MbxError(f"change committed, but {e}") from None
        for (name, args), result in zip(commands, results):
            if COMMANDS[name].wait is not None:
                COMMANDS[name].wait(api, result, args, opts["timeout"])
    finally:
        if sb is not None:
            sb.close()
        nb.close()
    for line in lines:
        print(line, file=out)


def main(argv=None):
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except MbxError as e:
        # the server's RBAC refusal (a tenant's or host's certificate)
        print(f"mbxctl: {explain_refusal(e) or e}", file=sys.stderr)
        return 1
    return 0
