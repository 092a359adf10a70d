"""mbxctl: the command-line client of the mbx config database."""

import argparse
import os
import sys

from ovsdb import DEFAULT_DB
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError
from ovsdb.topology import apply_topology, parse_topology

USAGE = f"""\
usage: mbxctl [OPTIONS] COMMAND [ARG...] [-- COMMAND [ARG...]]...

Commands joined by a standalone "--" run in one transaction: all or nothing.

Options (before the first command):
  --db ADDR        config database (default: $MBX_DB, else {DEFAULT_DB})
  --wait=hv        after the change, wait until every connected host has
                   applied it (flows installed)
  --timeout SECS   give up waiting after SECS seconds (default: 10)

Commands:
  init                                   create the NB_Global row
  ls-add NAME --vni N --subnet CIDR [--tenant T] [--may-exist]
  ls-del NAME [--if-exists]              delete a logical switch without VMs
  ls-list                                list logical switches
  vm-add NAME --switch LS --ip IP [--mac MAC] [--may-exist]
  vm-del NAME [--if-exists]
  vm-list [--switch LS]                  list VMs and where they run
  host-list                              list registered hosts
  show                                   everything, as a tree
  load FILE.yaml                         create or update what FILE declares
  sync                                   change nothing; with --wait=hv, return
                                         once every connected host has applied
                                         the current configuration
"""


class _Parser(argparse.ArgumentParser):
    """A command's argument parser whose errors are one MbxError line, and
    which reports a mistyped option before the required one it misses."""

    def __init__(self, command, options):
        super().__init__(prog=command, allow_abbrev=False, add_help=False)
        self.required_options = []
        for option in options:
            if option.endswith("?"):
                self.add_argument(option[:-1], action="store_true")
            elif option.endswith("!"):
                self.add_argument(option[:-1])
                self.required_options.append(option[:-1])
            elif option.startswith("--"):
                self.add_argument(option)
            else:
                self.add_argument(option, nargs="?")
                self.required_options.append(option)

    def parse(self, args):
        parsed, extra = self.parse_known_args(args)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        for option in self.required_options:
            if getattr(parsed, option.lstrip("-").replace("-", "_")) is None:
                what = (f"option {option}" if option.startswith("--")
                        else option.upper())
                self.error(f"missing {what}")
        return parsed

    def error(self, message):
        raise MbxError(f"{self.prog}: {message} (see mbxctl --help)")


def _parser(command, *options):
    return _Parser(command, options)


# Option syntax in this table: "--x!" required value, "--x?" flag,
# "--x" optional value, "x" required positional.
PARSERS = {
    "init": _parser("init"),
    "ls-add": _parser("ls-add", "name", "--vni!", "--subnet!", "--tenant",
                      "--may-exist?"),
    "ls-del": _parser("ls-del", "name", "--if-exists?"),
    "ls-list": _parser("ls-list"),
    "vm-add": _parser("vm-add", "name", "--switch!", "--ip!", "--mac",
                      "--may-exist?"),
    "vm-del": _parser("vm-del", "name", "--if-exists?"),
    "vm-list": _parser("vm-list", "--switch"),
    "host-list": _parser("host-list"),
    "show": _parser("show"),
    "load": _parser("load", "file"),
    "sync": _parser("sync"),
}


# --- writes: add commands to the one transaction -----------------------------

def _write(nb, txn, command, args):
    if command == "init":
        txn.add(nb.ensure_nb_global())
    elif command == "ls-add":
        txn.add(nb.ls_add(args.name, args.vni, args.subnet, args.tenant,
                          args.may_exist))
    elif command == "ls-del":
        txn.add(nb.ls_del(args.name, args.if_exists))
    elif command == "vm-add":
        txn.add(nb.vm_add(args.name, args.switch, args.ip, args.mac,
                          args.may_exist))
    elif command == "vm-del":
        txn.add(nb.vm_del(args.name, args.if_exists))
    elif command == "load":
        try:
            apply_topology(nb, args.spec)   # joins the enclosing transaction
        except MbxError as e:
            raise MbxError(f"{args.file}: {e}") from None


# --- reads: text from a snapshot ---------------------------------------------

def _table(headers, rows):
    rows = [headers] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
            for row in rows]


def _read(snap, command, args):
    if command == "ls-list":
        return _table(["NAME", "TENANT", "VNI", "SUBNET"],
                      [[s.name, s.tenant, s.vni, s.subnet]
                       for s in sorted(snap.switches.values(),
                                       key=lambda s: s.name)])
    if command == "vm-list":
        vms = [vm for vm in snap.vms.values()
               if args.switch is None or vm.switch == args.switch]
        return _table(["NAME", "SWITCH", "IP", "MAC", "HOST", "EPOCH"],
                      [[vm.name, vm.switch, vm.ip, vm.mac,
                        snap.vm_locations[vm.name][0] or "-",
                        snap.vm_locations[vm.name][1]]
                       for vm in sorted(vms, key=lambda vm: vm.name)])
    if command == "host-list":
        return _table(["NAME", "ENCAP", "ENCAP_IP", "MGMT_ADDRESS", "NB_CFG",
                       "CONNECTED", "DATAPATH_ID"],
                      [[h.name, h.encap_type, h.encap_ip, h.mgmt_address,
                        h.nb_cfg, str(h.connected).lower(),
                        h.datapath_id or "-"]
                       for h in sorted(snap.hosts.values(),
                                       key=lambda h: h.name)])
    return _show(snap)


def _show(snap):
    lines = []
    for sw in sorted(snap.switches.values(), key=lambda s: s.name):
        lines.append(f"switch {sw.name} (tenant {sw.tenant}, vni {sw.vni}, "
                     f"subnet {sw.subnet})")
        for vm in sorted(snap.vms.values(), key=lambda vm: vm.name):
            if vm.switch != sw.name:
                continue
            host, epoch = snap.vm_locations[vm.name]
            lines += [f"    vm {vm.name}",
                      f"        mac: {vm.mac}",
                      f"        ip: {vm.ip}",
                      f"        host: {host or '-'} (epoch {epoch})"]
    for h in sorted(snap.hosts.values(), key=lambda h: h.name):
        lines += [f"host {h.name}",
                  f"    encap: {h.encap_type} {h.encap_ip}",
                  f"    mgmt_address: {h.mgmt_address}",
                  f"    nb_cfg: {h.nb_cfg}",
                  f"    connected: {str(h.connected).lower()}"]
    return lines


# --- command line --------------------------------------------------------------

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
    """[(command, parsed args)] from argv split at standalone "--"."""
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
        command, args = group[0], group[1:]
        if command not in PARSERS:
            raise MbxError(f"unknown command {command!r} (see mbxctl --help)")
        parsed = PARSERS[command].parse(args)
        if command == "load":
            parsed.spec = _load_file(parsed.file)
        commands.append((command, parsed))
    return commands


def _load_file(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise MbxError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_topology(text)
    except MbxError as e:
        raise MbxError(f"{path}: {e}") from None


def run(argv, out):
    opts, rest = _global_options(argv)
    if opts.get("help"):
        out.write(USAGE)
        return
    commands = _commands(rest)
    reads = {"ls-list", "vm-list", "host-list", "show"}
    nb = MbxNb.connect(opts["db"], timeout=min(opts["timeout"], 5.0))
    try:
        with nb.transaction(check_error=True) as txn:
            for command, args in commands:
                _write(nb, txn, command, args)
            bump = txn.add(nb.bump_nb_cfg()) if opts["wait"] == "hv" else None
        lines = []
        if any(command in reads for command, _ in commands):
            snap = nb.snapshot()
            for command, args in commands:
                if command in reads:
                    lines += _read(snap, command, args)
        if bump is not None:
            try:
                nb.wait_hv(bump.result, opts["timeout"])
            except MbxError as e:
                raise MbxError(f"change committed, but {e}") from None
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


if __name__ == "__main__":
    sys.exit(main())
