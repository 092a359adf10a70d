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
  ls-del NAME [--if-exists]              delete an unused logical switch
  ls-list                                list logical switches
  vm-add NAME --switch LS --ip IP [--mac MAC] [--may-exist]
  vm-del NAME [--if-exists]
  vm-list [--switch LS]                  list VMs and where they run
  host-list                              list registered hosts
  mb-add NAME SWITCH [--type firewall] [--default allow|deny|reject]
         [KEY=VALUE...] [--may-exist]    add a middlebox serving SWITCH,
                                         with options KEY=VALUE
  mb-set NAME [--default ACTION] [KEY=VALUE...]
                                         change a middlebox; KEY= removes KEY
  mb-del NAME [--if-exists]              delete a middlebox and its rules
  mb-list                                list middleboxes
  fw-add MB PRIORITY DIRECTION MATCH ACTION [--tier provider|tenant]
                                         add a firewall rule: PRIORITY 0-32767,
                                         DIRECTION from-vm|to-vm, ACTION
                                         allow|deny|reject (tier: tenant)
  fw-del MB [DIRECTION PRIORITY] [--tier T] [--if-exists]
                                         delete one rule (tier: tenant), or
                                         every rule (of tier T)
  fw-list MB                             list a middlebox's rules in
                                         evaluation order
  as-add NAME TENANT [ADDRESS...] [--may-exist]
                                         add an address set (IPs or CIDRs)
  as-set NAME [ADDRESS...]               replace an address set's addresses
  as-del NAME [--if-exists]              delete an address set not in use
  as-list [TENANT]                       list address sets
  steer-add SWITCH PRIORITY MATCH MIDDLEBOX|bypass
                                         send SWITCH's traffic that MATCH
                                         selects through MIDDLEBOX (PRIORITY
                                         0-30000)
  steer-del SWITCH [PRIORITY] [--if-exists]
                                         delete one or all steering policies
  steer-list [SWITCH]                    list steering policies
  show                                   everything, as a tree
  load FILE.yaml                         create or update what FILE declares
  sync                                   change nothing; with --wait=hv, return
                                         once every connected host has applied
                                         the current configuration

MATCH: space- or comma-separated terms, "any" or "" for every IPv4 packet:
  proto=tcp|udp|icmp|any|0-255  src=CIDR|ADDRESS|$SET  dst=...
  sport=PORT|LOW-HIGH  dport=...  (ports need proto=tcp or udp)
Middlebox options (KEY=VALUE): check=offload|every-packet,
  same-host=both|source|destination, tier-order=provider-first|tenant-first,
  timeout-tcp-syn, timeout-tcp-established, timeout-tcp-closing, timeout-udp,
  timeout-udp-replied, timeout-icmp, timeout-denied=SECONDS (1-65535)
"""


class _Parser(argparse.ArgumentParser):
    """A command's argument parser whose errors are one MbxError line, and
    which reports a mistyped option before the required one it misses."""

    def __init__(self, command, options):
        super().__init__(prog=command, allow_abbrev=False, add_help=False)
        self.required_options = []
        for option in options:
            if option.startswith("--") and option.endswith("?"):
                self.add_argument(option[:-1], action="store_true")
            elif option.endswith("!"):
                self.add_argument(option[:-1])
                self.required_options.append(option[:-1])
            elif option.startswith("--"):
                self.add_argument(option)
            elif option.endswith("*"):
                self.add_argument(option[:-1], nargs="*")
            elif option.endswith("?"):
                self.add_argument(option[:-1], nargs="?")
            else:
                self.add_argument(option, nargs="?")
                self.required_options.append(option)

    def parse(self, args):
        parsed, extra = self.parse_known_intermixed_args(args)
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
# "--x" optional value, "x" required positional, "x?" optional positional,
# "x*" zero or more positionals.
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
    "mb-add": _parser("mb-add", "name", "switch", "--type", "--default",
                      "options*", "--may-exist?"),
    "mb-set": _parser("mb-set", "name", "--default", "options*"),
    "mb-del": _parser("mb-del", "name", "--if-exists?"),
    "mb-list": _parser("mb-list"),
    "fw-add": _parser("fw-add", "mb", "priority", "direction", "match",
                      "action", "--tier"),
    "fw-del": _parser("fw-del", "mb", "direction?", "priority?", "--tier",
                      "--if-exists?"),
    "fw-list": _parser("fw-list", "mb"),
    "as-add": _parser("as-add", "name", "tenant", "addresses*",
                      "--may-exist?"),
    "as-set": _parser("as-set", "name", "addresses*"),
    "as-del": _parser("as-del", "name", "--if-exists?"),
    "as-list": _parser("as-list", "tenant?"),
    "steer-add": _parser("steer-add", "switch", "priority", "match",
                         "middlebox"),
    "steer-del": _parser("steer-del", "switch", "priority?", "--if-exists?"),
    "steer-list": _parser("steer-list", "switch?"),
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
    elif command == "mb-add":
        txn.add(nb.mb_add(args.name, args.switch, args.type or "firewall",
                          args.default or "deny",
                          _key_values(command, args.options), args.may_exist))
    elif command == "mb-set":
        txn.add(nb.mb_set(args.name, args.default,
                          _key_values(command, args.options)))
    elif command == "mb-del":
        txn.add(nb.mb_del(args.name, args.if_exists))
    elif command == "fw-add":
        txn.add(nb.fw_add(args.mb, args.priority, args.direction, args.match,
                          args.action, args.tier or "tenant"))
    elif command == "fw-del":
        if (args.direction is None) != (args.priority is None):
            raise MbxError("fw-del: give both DIRECTION and PRIORITY to "
                           "delete one rule, or neither to delete every rule")
        txn.add(nb.fw_del(args.mb, args.direction, args.priority, args.tier,
                          args.if_exists))
    elif command == "fw-list":
        txn.add(nb.require_middlebox(args.mb))
    elif command == "as-add":
        txn.add(nb.as_add(args.name, args.tenant, args.addresses,
                          args.may_exist))
    elif command == "as-set":
        txn.add(nb.as_set(args.name, args.addresses))
    elif command == "as-del":
        txn.add(nb.as_del(args.name, args.if_exists))
    elif command == "steer-add":
        txn.add(nb.steer_add(args.switch, args.priority, args.match,
                             args.middlebox))
    elif command == "steer-del":
        txn.add(nb.steer_del(args.switch, args.priority, args.if_exists))
    elif command == "load":
        try:
            apply_topology(nb, args.spec)   # joins the enclosing transaction
        except MbxError as e:
            raise MbxError(f"{args.file}: {e}") from None


def _key_values(command, items):
    """{KEY: VALUE} from ["KEY=VALUE", ...]."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise MbxError(f"{command}: invalid option {item!r}: use "
                           "KEY=VALUE, e.g. same-host=both (see mbxctl "
                           "--help)")
        if key in out:
            raise MbxError(f"{command}: option {key!r} is given twice")
        out[key] = value
    return out


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
    if command == "mb-list":
        return _table(["NAME", "TYPE", "SWITCH", "DEFAULT", "RULES",
                       "OPTIONS"],
                      [[mb.name, mb.type, mb.switch, mb.default_action,
                        len(snap.rules.get(mb.name, ())),
                        _options(mb.options) or "-"]
                       for mb in sorted(snap.middleboxes.values(),
                                        key=lambda mb: mb.name)])
    if command == "fw-list":
        return _table(["DIRECTION", "TIER", "PRIORITY", "ACTION", "MATCH"],
                      [[r.direction, r.tier, r.priority, r.action, r.match]
                       for r in snap.rules.get(args.mb, ())])
    if command == "as-list":
        return _table(["NAME", "TENANT", "ADDRESSES"],
                      [[s.name, s.tenant, ", ".join(s.addresses) or "-"]
                       for s in sorted(snap.address_sets.values(),
                                       key=lambda s: s.name)
                       if args.tenant is None or s.tenant == args.tenant])
    if command == "steer-list":
        return _table(["SWITCH", "PRIORITY", "MIDDLEBOX", "MATCH"],
                      [[p.switch, p.priority, p.middlebox or "bypass",
                        p.match]
                       for p in snap.policies
                       if args.switch is None or p.switch == args.switch])
    return _show(snap)


def _options(options):
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


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
        for mb in sorted(snap.middleboxes.values(), key=lambda mb: mb.name):
            if mb.switch != sw.name:
                continue
            lines.append(f"    middlebox {mb.name} ({mb.type}, default "
                         f"{mb.default_action})")
            if mb.options:
                lines.append(f"        options: {_options(mb.options)}")
            lines += [f"        rule {r.direction} {r.tier} {r.priority}: "
                      f"{r.match} -> {r.action}"
                      for r in snap.rules.get(mb.name, ())]
        lines += [f"    steering {p.priority}: {p.match} -> "
                  f"{p.middlebox or 'bypass'}"
                  for p in snap.policies if p.switch == sw.name]
    for aset in sorted(snap.address_sets.values(), key=lambda s: s.name):
        lines += [f"address set {aset.name} (tenant {aset.tenant})",
                  f"    addresses: {', '.join(aset.addresses) or '-'}"]
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
    reads = {"ls-list", "vm-list", "host-list", "mb-list", "fw-list",
             "as-list", "steer-list", "show"}
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
