"""mbxctl's commands on the database as a whole: creating it, its global
options, showing it, loading a file into it, waiting for it."""

from ovsdb import validate
from ovsdb.ctl.lb import backends
from ovsdb.ctl.syntax import CtlCommand, key_values
from ovsdb.ctl.text import options
from ovsdb.errors import MbxError
from ovsdb.topology import apply_topology, parse_topology


def _global_set(nb, txn, args):
    if not args.options:
        raise MbxError("global-set: give at least one KEY=VALUE, e.g. "
                       "migration-wait-ms=5000 (see mbxctl --help)")
    return txn.add(nb.global_set(key_values("global-set", args.options,
                                            "migration-wait-ms=5000")))


def _read_file(args):
    """load's file, parsed before connecting: args.spec."""
    try:
        with open(args.file) as f:
            text = f.read()
    except OSError as e:
        raise MbxError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        args.spec = parse_topology(text)
    except MbxError as e:
        raise MbxError(f"{args.file}: {e}") from None


def _load(nb, txn, args):
    try:
        apply_topology(nb, args.spec)   # joins the enclosing transaction
    except MbxError as e:
        raise MbxError(f"{args.file}: {e}") from None


def _show(snap, args, sb_snap):
    """The tree; a row that mbx-northd could not use shows its status."""
    lines = []
    for sw in sorted(snap.switches.values(), key=lambda s: s.name):
        lines.append(f"switch {sw.name} (tenant {sw.tenant}, vni {sw.vni}, "
                     f"subnet {sw.subnet}, gateway {sw.gateway})")
        lines += _status(snap, ("switch", sw.name), "    ")
        for vm in sorted(snap.vms.values(), key=lambda vm: vm.name):
            if vm.switch != sw.name:
                continue
            host, epoch = sb_snap.vm_locations.get(vm.name, (None, 0))
            lines += [f"    vm {vm.name}",
                      f"        mac: {vm.mac}",
                      f"        ip: {vm.ip}",
                      f"        host: {host or '-'} (epoch {epoch})"]
            lines += _status(snap, ("vm", vm.name), "        ")
        for mb in sorted(snap.middleboxes.values(), key=lambda mb: mb.name):
            if mb.switch != sw.name:
                continue
            lines.append(f"    middlebox {mb.name} ({mb.type}"
                         + (f", default {mb.default_action})"
                            if mb.type == "firewall" else ")"))
            if mb.options:
                lines.append(f"        options: {options(mb.options)}")
            status = snap.middlebox_status.get(mb.name)
            if status:
                lines.append(f"        status: {options(status)}")
            for r in snap.rules.get(mb.name, ()):
                lines.append(f"        rule {r.direction} {r.tier} "
                             f"{r.priority}: {r.match} -> {r.action}")
                lines += _status(snap, ("rule", r.uuid), "            ")
            for r in snap.nat_rules.get(mb.name, ()):
                lines.append(f"        {validate.describe_nat(r)}")
                lines += _status(snap, ("nat", r.uuid), "            ")
            for v in snap.vips.get(mb.name, ()):
                lines.append(f"        vip {validate.vip_text(v)} "
                             f"{v.algorithm}: {backends(v) or '-'}")
                if v.options:
                    lines.append(f"            options: "
                                 f"{options(v.options)}")
                if v.status.get(validate.STATUS_ERROR):
                    lines.append("            status: "
                                 + v.status[validate.STATUS_ERROR])
        for p in snap.policies:
            if p.switch == sw.name:
                lines.append(f"    steering {p.priority}: {p.match} -> "
                             f"{validate.chain_text(p.chain)}")
                lines += _status(snap, ("policy", p.switch, p.priority),
                                 "        ")
    for aset in sorted(snap.address_sets.values(), key=lambda s: s.name):
        lines += [f"address set {aset.name} (tenant {aset.tenant})",
                  f"    addresses: {', '.join(aset.addresses) or '-'}"]
        lines += _status(snap, ("set", aset.name), "    ")
    for _, ext in sorted(snap.external_networks.items()):
        lines.append(f"external network {ext.name} (cidr {ext.cidr}, "
                     f"gateway {ext.gateway_ip} {ext.gateway_mac})")
        lines += _status(snap, ("external", ext.name), "    ")
    for h in sorted(sb_snap.hosts.values(), key=lambda h: h.name):
        lines += [f"host {h.name}",
                  f"    encap: {h.encap_type} {h.encap_ip}",
                  f"    nb_cfg: {h.nb_cfg}"]
        if h.mb_cfg is not None:
            lines.append(f"    mb_cfg: {h.mb_cfg}")
        lines.append(f"    connected: {str(h.connected).lower()}")
        if h.migration_address:
            lines.append(f"    migration_address: {h.migration_address}")
    if snap.global_options:
        lines.append(f"global options: {options(snap.global_options)}")
    # rows whose tenant columns disagree or whose values no reader can use:
    # mbx-northd and mbxd ignore them (mbx-northd says so in their status)
    lines += [f"ignored: {why}" for _, why in sorted(snap.ignored.items())]
    return lines


def _status(snap, key, indent):
    """The line of the status mbx-northd wrote into the row of ``key``."""
    status = snap.row_status.get(key)
    return [f"{indent}status: {status}"] if status else []


COMMANDS = (
    CtlCommand("init", help="create the NB_Global row",
               write=lambda nb, txn, a: txn.add(nb.ensure_nb_global())),
    CtlCommand("global-set", "KEY=VALUE...",
               "set NB_Global options; KEY= removes\nKEY",
               args=("options*",), write=_global_set),
    CtlCommand("show", help="everything, as a tree", read=_show, reads="both"),
    CtlCommand("load", "FILE.yaml", "create or update what FILE declares",
               args=("file",), prepare=_read_file, write=_load),
    CtlCommand("sync",
               help="change nothing; with --wait=hv, return\n"
                    "once every connected host has applied\n"
                    "the current configuration"),
)
