"""mbxctl: the command-line client of the mbx config database."""

import argparse
import os
import sys
import time

from ovsdb import DEFAULT_DB, validate
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
  ls-add NAME --vni N --subnet CIDR [--tenant T] [--gateway IP]
         [--may-exist]                   gateway: default the subnet's first
                                         address
  ls-del NAME [--if-exists]              delete an unused logical switch
  ls-list                                list logical switches
  vm-add NAME --switch LS --ip IP [--mac MAC] [--may-exist]
  vm-del NAME [--if-exists]
  vm-list [--switch LS]                  list VMs and where they run
  host-list                              list registered hosts
  ext-add NAME CIDR GATEWAY_IP GATEWAY_MAC [--may-exist]
                                         add an external network
  ext-del NAME [--if-exists]             delete an external network no NAT
                                         rule uses
  ext-list                               list external networks
  mb-add NAME SWITCH [--type firewall|nat|lb|ids]
         [--default allow|deny|reject] [KEY=VALUE...] [--may-exist]
                                         add a middlebox serving SWITCH,
                                         with options KEY=VALUE
  mb-set NAME [--default ACTION] [KEY=VALUE...]
                                         change a middlebox; KEY= removes KEY
  mb-del NAME [--if-exists]              delete a middlebox and its rules,
                                         NAT rules and VIPs
  mb-list                                list middleboxes, types and status
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
  nat-add MB snat EXTERNAL_IP[,EXTERNAL_IP...] [LOGICAL_CIDR]
         [--port-range LO-HI] [--may-exist]
                                         translate sources in LOGICAL_CIDR
                                         (default: the switch's subnet) to
                                         the external IPs, ports LO-HI
                                         (default 1024-65535)
  nat-add MB dnat EXTERNAL_IP LOGICAL_IP [--protocol tcp|udp]
         [--external-port P] [--logical-port P] [--may-exist]
                                         forward EXTERNAL_IP (or its port P)
                                         to LOGICAL_IP (its port)
  nat-del MB EXTERNAL_IP|UUID [--type snat|dnat] [--external-port P]
         [--if-exists]                   delete one NAT rule
  nat-list [MB]                          list NAT rules
  lb-add MB VIP:PORT [BACKEND_IP:PORT...] [--protocol tcp|udp]
         [--algorithm hash|round-robin|least-connections|source-hash]
         [--may-exist]                   add a load-balanced VIP (tcp,
                                         hash)
  lb-del MB VIP:PORT [--protocol P] [--if-exists]
  lb-backend-add MB VIP:PORT BACKEND_IP:PORT [--protocol P] [--may-exist]
  lb-backend-del MB VIP:PORT BACKEND_IP:PORT [--protocol P] [--if-exists]
  lb-set MB VIP:PORT [--algorithm A] [KEY=VALUE...] [--protocol P]
                                         change a VIP; KEY= removes KEY
  lb-list [MB]                           list VIPs, backends and health
  ids-alerts [MB]                        list IDS alerts
  steer-add SWITCH PRIORITY MATCH MB[,MB...]|bypass
                                         send SWITCH's traffic that MATCH
                                         selects through the chain of
                                         middleboxes MB,... in order
                                         (PRIORITY 0-30000)
  steer-del SWITCH [PRIORITY] [--if-exists]
                                         delete one or all steering policies
  steer-list [SWITCH]                    list steering policies
  migrate-begin VM --to HOST             announce the migration of VM's
                                         connection state from its host to
                                         HOST; prints the migration's UUID
  migrate-stun VM [--wait]               the VM is paused for the last round;
                                         with --wait, wait (--timeout) until
                                         its state is imported at HOST
  migrate-done VM                        finish the migration once imported
  migrate-abort VM [--if-exists]         abort the VM's active migration
  migration-list [VM]                    list migrations, oldest first
  migration-show VM                      the VM's latest migration: phases,
                                         what moved, outcome
  global-set KEY=VALUE...                set NB_Global options; KEY= removes
                                         KEY
  show                                   everything, as a tree
  load FILE.yaml                         create or update what FILE declares
  sync                                   change nothing; with --wait=hv, return
                                         once every connected host has applied
                                         the current configuration

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
                      "--gateway", "--may-exist?"),
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
    "ext-add": _parser("ext-add", "name", "cidr", "gateway_ip", "gateway_mac",
                       "--may-exist?"),
    "ext-del": _parser("ext-del", "name", "--if-exists?"),
    "ext-list": _parser("ext-list"),
    "nat-add": _parser("nat-add", "mb", "type", "external_ips", "logical?",
                       "--port-range", "--protocol", "--external-port",
                       "--logical-port", "--may-exist?"),
    "nat-del": _parser("nat-del", "mb", "target", "--type", "--external-port",
                       "--if-exists?"),
    "nat-list": _parser("nat-list", "mb?"),
    "lb-add": _parser("lb-add", "mb", "vip", "backends*", "--protocol",
                      "--algorithm", "--may-exist?"),
    "lb-del": _parser("lb-del", "mb", "vip", "--protocol", "--if-exists?"),
    "lb-backend-add": _parser("lb-backend-add", "mb", "vip", "backend",
                              "--protocol", "--may-exist?"),
    "lb-backend-del": _parser("lb-backend-del", "mb", "vip", "backend",
                              "--protocol", "--if-exists?"),
    "lb-set": _parser("lb-set", "mb", "vip", "options*", "--algorithm",
                      "--protocol"),
    "lb-list": _parser("lb-list", "mb?"),
    "ids-alerts": _parser("ids-alerts", "mb?"),
    "steer-add": _parser("steer-add", "switch", "priority", "match",
                         "chain"),
    "steer-del": _parser("steer-del", "switch", "priority?", "--if-exists?"),
    "steer-list": _parser("steer-list", "switch?"),
    "migrate-begin": _parser("migrate-begin", "vm", "--to!"),
    "migrate-stun": _parser("migrate-stun", "vm", "--wait?"),
    "migrate-done": _parser("migrate-done", "vm"),
    "migrate-abort": _parser("migrate-abort", "vm", "--if-exists?"),
    "migration-list": _parser("migration-list", "vm?"),
    "migration-show": _parser("migration-show", "vm"),
    "global-set": _parser("global-set", "options*"),
    "show": _parser("show"),
    "load": _parser("load", "file"),
    "sync": _parser("sync"),
}


# --- writes: add commands to the one transaction -----------------------------

def _write(nb, txn, command, args):
    """Add ``command``'s API commands to ``txn``; returns the one whose
    result it reports, if any."""
    if command == "migrate-begin":
        return txn.add(nb.migrate_begin(args.vm, args.to))
    if command == "migrate-stun":
        return txn.add(nb.migrate_stun(args.vm))
    if command == "migrate-done":
        txn.add(nb.migrate_done(args.vm))
    elif command == "migrate-abort":
        txn.add(nb.migrate_abort(args.vm, args.if_exists))
    elif command in ("migration-list", "migration-show"):
        if args.vm is not None:
            txn.add(nb.require_migrations(
                args.vm, need_one=command == "migration-show"))
    elif command == "global-set":
        if not args.options:
            raise MbxError("global-set: give at least one KEY=VALUE, e.g. "
                           "migration-wait-ms=5000 (see mbxctl --help)")
        txn.add(nb.global_set(_key_values(command, args.options,
                                          "migration-wait-ms=5000")))
    elif command == "init":
        txn.add(nb.ensure_nb_global())
    elif command == "ls-add":
        txn.add(nb.ls_add(args.name, args.vni, args.subnet, args.tenant,
                          args.may_exist, args.gateway))
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
    elif command == "ext-add":
        txn.add(nb.ext_add(args.name, args.cidr, args.gateway_ip,
                           args.gateway_mac, args.may_exist))
    elif command == "ext-del":
        txn.add(nb.ext_del(args.name, args.if_exists))
    elif command == "nat-add":
        txn.add(nb.nat_add(args.mb, args.type, args.external_ips,
                           args.logical or "", args.protocol or "",
                           args.external_port, args.logical_port,
                           args.port_range, args.may_exist))
    elif command == "nat-del":
        by_uuid = "." not in args.target
        txn.add(nb.nat_del(args.mb, None if by_uuid else args.target,
                           args.type, args.external_port,
                           args.target if by_uuid else None, args.if_exists))
    elif command == "lb-add":
        txn.add(nb.lb_add(args.mb, args.vip, args.protocol or "tcp",
                          args.algorithm or "hash", args.backends,
                          may_exist=args.may_exist))
    elif command == "lb-del":
        txn.add(nb.lb_del(args.mb, args.vip, args.protocol, args.if_exists))
    elif command == "lb-backend-add":
        txn.add(nb.lb_backend_add(args.mb, args.vip, args.backend,
                                  args.protocol, args.may_exist))
    elif command == "lb-backend-del":
        txn.add(nb.lb_backend_del(args.mb, args.vip, args.backend,
                                  args.protocol, args.if_exists))
    elif command == "lb-set":
        txn.add(nb.lb_set(args.mb, args.vip,
                          _key_values(command, args.options), args.algorithm,
                          args.protocol))
    elif command in ("nat-list", "lb-list", "ids-alerts"):
        if args.mb is not None:
            txn.add(nb.require_middlebox(args.mb))
    elif command == "steer-add":
        txn.add(nb.steer_add(args.switch, args.priority, args.match,
                             args.chain))
    elif command == "steer-del":
        txn.add(nb.steer_del(args.switch, args.priority, args.if_exists))
    elif command == "load":
        try:
            apply_topology(nb, args.spec)   # joins the enclosing transaction
        except MbxError as e:
            raise MbxError(f"{args.file}: {e}") from None
    return None


def _key_values(command, items, example="same-host=both"):
    """{KEY: VALUE} from ["KEY=VALUE", ...]."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise MbxError(f"{command}: invalid option {item!r}: use "
                           f"KEY=VALUE, e.g. {example} (see mbxctl "
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
        return _table(["NAME", "TENANT", "VNI", "SUBNET", "GATEWAY"],
                      [[s.name, s.tenant, s.vni, s.subnet, s.gateway]
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
                       "CONNECTED", "DATAPATH_ID", "MIGRATION_ADDRESS"],
                      [[h.name, h.encap_type, h.encap_ip, h.mgmt_address,
                        h.nb_cfg, str(h.connected).lower(),
                        h.datapath_id or "-", h.migration_address or "-"]
                       for h in sorted(snap.hosts.values(),
                                       key=lambda h: h.name)])
    if command == "mb-list":
        return _table(["NAME", "TYPE", "SWITCH", "DEFAULT", "RULES",
                       "OPTIONS", "STATUS"],
                      [[mb.name, mb.type, mb.switch,
                        mb.default_action if mb.type == "firewall" else "-",
                        _rule_count(snap, mb),
                        _options(mb.options) or "-",
                        _options(snap.middlebox_status.get(mb.name, {}))
                        or "-"]
                       for mb in sorted(snap.middleboxes.values(),
                                        key=lambda mb: mb.name)])
    if command == "ext-list":
        return _table(["NAME", "CIDR", "GATEWAY_IP", "GATEWAY_MAC"],
                      [[e.name, e.cidr, e.gateway_ip, e.gateway_mac]
                       for _, e in sorted(snap.external_networks.items())])
    if command == "nat-list":
        return _table(["MIDDLEBOX", "TYPE", "EXTERNAL_IP", "LOGICAL_IP",
                       "PROTOCOL", "PORTS", "UUID"],
                      [[r.middlebox, r.type, ",".join(r.external_ips),
                        r.logical_ip or "-", _nat_protocol(r),
                        _nat_ports(r), r.uuid]
                       for name, rules in sorted(snap.nat_rules.items())
                       if args.mb is None or name == args.mb
                       for r in rules])
    if command == "lb-list":
        return _table(["MIDDLEBOX", "VIP", "PROTOCOL", "ALGORITHM",
                       "BACKENDS", "OPTIONS"],
                      [[v.middlebox, f"{v.vip}:{v.port}", v.protocol,
                        v.algorithm, _backends(v) or "-",
                        _options(v.options) or "-"]
                       for name, vips in sorted(snap.vips.items())
                       if args.mb is None or name == args.mb
                       for v in vips])
    if command == "ids-alerts":
        return _table(["MIDDLEBOX", "KIND", "SOURCE", "TARGET", "COUNT",
                       "HOSTS", "FIRST_SEEN", "LAST_SEEN", "REPORTED_BY"],
                      [[a.middlebox, a.kind, a.source, a.target or "-",
                        a.count, ",".join(a.hosts) or "-",
                        _ms_time(a.first_seen), _ms_time(a.last_seen),
                        a.reported_by or "-"]
                       for a in snap.ids_alerts
                       if args.mb is None or a.middlebox == args.mb])
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
        return _table(["SWITCH", "PRIORITY", "CHAIN", "MATCH"],
                      [[p.switch, p.priority, validate.chain_text(p.chain),
                        p.match]
                       for p in snap.policies
                       if args.switch is None or p.switch == args.switch])
    if command == "migration-list":
        return _table(["VM", "HOSTS", "PATH", "STATUS", "ENTRIES", "BYTES",
                       "OUTCOME"],
                      [[m.vm, f"{m.source} -> {m.destination}", m.path,
                        m.status, m.stats.get("entries", "-"),
                        m.stats.get("bytes", "-"), m.outcome or "-"]
                       for m in snap.migrations
                       if args.vm is None or m.vm == args.vm])
    if command == "migration-show":
        return _migration_show([m for m in snap.migrations
                                if m.vm == args.vm][-1])
    return _show(snap)


def _ordered(keys, order):
    """``keys`` in ``order``, then the others sorted."""
    return ([k for k in order if k in keys]
            + sorted(k for k in keys if k not in order))


def _migration_show(m):
    timeline = m.timeline
    begun = timeline.get("begun", min(timeline.values(), default=0))
    lines = [f"migration of VM {m.vm}: {m.source} -> {m.destination} "
             f"({m.path})",
             f"uuid: {m.uuid}",
             f"status: {m.status}",
             f"begun: {_ms_time(begun, precise=True) if timeline else '-'}",
             "timeline:" + ("" if timeline else " -")]
    lines += [f"  +{timeline[phase] - begun:6.1f} ms  {phase}"
              for phase in _ordered(timeline, validate.MIGRATION_PHASES)]
    stats = ", ".join(f"{key}={m.stats[key]}"
                      for key in _ordered(m.stats, validate.MIGRATION_STATS))
    lines += [f"stats: {stats or '-'}",
              f"options: {_options(m.options) or '-'}",
              f"outcome: {m.outcome or '-'}"]
    return lines


def _options(options):
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def _ms_time(ms, precise=False):
    """Milliseconds since the epoch as UTC time, e.g. 2026-01-02T03:04:05Z
    (precise: 2026-01-02T03:04:05.678Z)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (f".{ms % 1000:03d}Z" if precise else "Z")


def _rule_count(snap, mb):
    """A middlebox's firewall rules, NAT rules or VIPs, by its type."""
    items = {"firewall": snap.rules, "nat": snap.nat_rules,
             "lb": snap.vips}.get(mb.type)
    return "-" if items is None else len(items.get(mb.name, ()))


def _nat_protocol(rule):
    if rule.type == "snat":
        return "tcp,udp"
    if rule.external_port is None:
        return "any"
    return rule.protocol or "tcp,udp"


def _nat_ports(rule):
    if rule.type == "snat":
        return "%d-%d" % rule.port_range
    if rule.external_port is None:
        return "-"
    if rule.logical_port is None:
        return str(rule.external_port)
    return f"{rule.external_port}->{rule.logical_port}"


def _backends(v):
    """'10.0.0.11:80=up, 10.0.0.12:80=unknown' (health from LB_VIP.status;
    unknown: not reported yet)."""
    return ", ".join(
        f"{text}={v.status.get(text, 'unknown')}"
        for text in map(validate.backend_text, v.backends))


def _show(snap):
    lines = []
    for sw in sorted(snap.switches.values(), key=lambda s: s.name):
        lines.append(f"switch {sw.name} (tenant {sw.tenant}, vni {sw.vni}, "
                     f"subnet {sw.subnet}, gateway {sw.gateway})")
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
            lines.append(f"    middlebox {mb.name} ({mb.type}"
                         + (f", default {mb.default_action})"
                            if mb.type == "firewall" else ")"))
            if mb.options:
                lines.append(f"        options: {_options(mb.options)}")
            status = snap.middlebox_status.get(mb.name)
            if status:
                lines.append(f"        status: {_options(status)}")
            lines += [f"        rule {r.direction} {r.tier} {r.priority}: "
                      f"{r.match} -> {r.action}"
                      for r in snap.rules.get(mb.name, ())]
            lines += [f"        {validate.describe_nat(r)}"
                      for r in snap.nat_rules.get(mb.name, ())]
            for v in snap.vips.get(mb.name, ()):
                lines.append(f"        vip {validate.vip_text(v)} "
                             f"{v.algorithm}: {_backends(v) or '-'}")
                if v.options:
                    lines.append(f"            options: "
                                 f"{_options(v.options)}")
        lines += [f"    steering {p.priority}: {p.match} -> "
                  f"{validate.chain_text(p.chain)}"
                  for p in snap.policies if p.switch == sw.name]
    for aset in sorted(snap.address_sets.values(), key=lambda s: s.name):
        lines += [f"address set {aset.name} (tenant {aset.tenant})",
                  f"    addresses: {', '.join(aset.addresses) or '-'}"]
    for _, ext in sorted(snap.external_networks.items()):
        lines.append(f"external network {ext.name} (cidr {ext.cidr}, "
                     f"gateway {ext.gateway_ip} {ext.gateway_mac})")
    for h in sorted(snap.hosts.values(), key=lambda h: h.name):
        lines += [f"host {h.name}",
                  f"    encap: {h.encap_type} {h.encap_ip}",
                  f"    mgmt_address: {h.mgmt_address}",
                  f"    nb_cfg: {h.nb_cfg}",
                  f"    connected: {str(h.connected).lower()}"]
        if h.migration_address:
            lines.append(f"    migration_address: {h.migration_address}")
    if snap.global_options:
        lines.append(f"global options: {_options(snap.global_options)}")
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
             "as-list", "steer-list", "show", "ext-list", "nat-list",
             "lb-list", "ids-alerts", "migration-list", "migration-show"}
    nb = MbxNb.connect(opts["db"], timeout=min(opts["timeout"], 5.0))
    try:
        with nb.transaction(check_error=True) as txn:
            results = [_write(nb, txn, command, args)
                       for command, args in commands]
            bump = txn.add(nb.bump_nb_cfg()) if opts["wait"] == "hv" else None
        lines = []
        snap = (nb.snapshot() if any(command in reads
                                     for command, _ in commands) else None)
        for (command, args), result in zip(commands, results):
            if command == "migrate-begin":
                lines.append(result.result)
            elif command in reads:
                lines += _read(snap, command, args)
        if bump is not None:
            try:
                nb.wait_hv(bump.result, opts["timeout"])
            except MbxError as e:
                raise MbxError(f"change committed, but {e}") from None
        for (command, args), result in zip(commands, results):
            if command == "migrate-stun" and args.wait:
                try:
                    nb.wait_migration(result.result, opts["timeout"])
                except MbxError as e:
                    raise MbxError(f"VM '{args.vm}' is stunned, but {e}"
                                   ) from None
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
