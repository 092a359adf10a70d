"""``mbx-lab``: build and drive the multi-host namespace lab."""

import argparse
import json
import os
import sys

from lab.lab import (CONTROLLER_MODES, DB_CLUSTER_SIZES, DEFAULT_DB_CLUSTER, DEFAULT_PREFIX,
                     DEFAULT_RUNDIR, EXT_NAMES, VM_KINDS, VM_NETNS, Lab)
from lab.sh import LabError
from ovsdb.errors import MbxError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LabError(message + " (see 'mbx-lab --help')")


def build_parser():
    p = _Parser(prog="mbx-lab", description="mbx multi-host namespace lab")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help="name prefix of the lab's namespaces (default %(default)s)")
    p.add_argument("--dir", default=DEFAULT_RUNDIR,
                   help="run directory (default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="bring up hosts, config DB and controller")
    group = up.add_mutually_exclusive_group()
    group.add_argument("--hosts", type=int, default=3)
    group.add_argument("--topology", metavar="FILE.yaml",
                       help="hosts, switches and VMs from a topology file")
    up.add_argument("--encap", choices=["vxlan", "geneve"], default="vxlan")
    up.add_argument("--controllers", choices=CONTROLLER_MODES, default="central",
                    help="one physical controller for every host (central), or "
                    "one on each host preferring it (per-host)")
    up.add_argument("--standby", type=int, default=0, metavar="N",
                    help="N more controller instances in the fabric, standing by "
                    "for every host: each br-int connects to all of them, and "
                    "one takes over a host whose controller dies (default 0)")
    up.add_argument("--db-cluster", type=int, choices=DB_CLUSTER_SIZES,
                    default=DEFAULT_DB_CLUSTER, metavar="N",
                    help="database nodes: 3, each database a Raft cluster of "
                    "three members, or 1 standalone node (default %(default)s)")
    sub.add_parser("down", help="end every lab process and remove every namespace")
    sub.add_parser("status")
    va = sub.add_parser("vm-add")
    va.add_argument("name")
    va.add_argument("--host", required=True)
    va.add_argument("--switch", required=True)
    va.add_argument("--ip", required=True, metavar="ADDR/PREFIX")
    va.add_argument("--mac")
    va.add_argument("--kind", choices=VM_KINDS, default=VM_NETNS,
                    help="a network namespace (default), or a QEMU guest booted "
                    "from the guest image (make guest-image)")
    vd = sub.add_parser("vm-del")
    vd.add_argument("name")
    ex = sub.add_parser("exec", help="run a command inside a VM: exec NAME -- CMD ...")
    ex.add_argument("name")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    xx = sub.add_parser("ext-exec", help="run a command in an external namespace: "
                        "ext-exec xr|xs|xc -- CMD ...")
    xx.add_argument("name", choices=EXT_NAMES)
    xx.add_argument("command", nargs=argparse.REMAINDER)
    mg = sub.add_parser("migrate", help="live-migrate a VM: a namespace VM by re-plumbing "
                        "its port, a QEMU guest by a QEMU live migration over QMP")
    mg.add_argument("name")
    mg.add_argument("--to", required=True)
    mg.add_argument("--no-notify", action="store_true",
                    help="move without announcing it (the controller notices the port)")
    mg.add_argument("--json", action="store_true", help="print timings as JSON")
    sub.add_parser("demo", help="build a lab, show isolation and a live migration, tear down")
    return p


def up_from_topology(lab, path, encap, controllers="central", standby=0,
                     db_cluster=DEFAULT_DB_CLUSTER):
    from ovsdb.topology import apply_topology, parse_topology
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise LabError("cannot read %s: %s" % (path, err.strerror))
    spec = parse_topology(text, allow_placement=True)
    hosts = list(spec.hosts) or ["h1", "h2", "h3"]
    lab.up(hosts, encap=encap, controllers=controllers, standby=standby,
           db_cluster=db_cluster)
    apply_topology(lab.nb(), spec)
    for vm in spec.vms:
        host = spec.placement.get(vm.name)
        if host is None:
            continue
        prefix = lab.nb().snapshot().switches[vm.switch].subnet.split("/")[1]
        lab.vm_add(vm.name, host, vm.switch, "%s/%s" % (vm.ip, prefix), vm.mac)
        print("vm %s on %s" % (vm.name, host))


def run(argv):
    args = build_parser().parse_args(argv)
    if args.cmd == "demo":
        from lab import demo
        return demo.run(prefix=args.prefix, rundir=args.dir)
    lab = Lab(prefix=args.prefix, rundir=args.dir)
    try:
        if args.cmd == "up":
            if args.topology:
                up_from_topology(lab, args.topology, args.encap, args.controllers,
                                 args.standby, args.db_cluster)
            else:
                lab.up(["h%d" % i for i in range(1, args.hosts + 1)], encap=args.encap,
                       controllers=args.controllers, standby=args.standby,
                       db_cluster=args.db_cluster)
            print("config DB: export MBX_DB=%s MBX_SB=%s" % (lab.nb_remote, lab.sb_remote))
        elif args.cmd == "down":
            lab.down()
        elif args.cmd == "status":
            print(lab.status())
        elif args.cmd == "vm-add":
            lab.vm_add(args.name, args.host, args.switch, args.ip, args.mac, kind=args.kind)
            print("vm %s on %s" % (args.name, args.host))
        elif args.cmd == "vm-del":
            lab.vm_del(args.name)
        elif args.cmd in ("exec", "ext-exec"):
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not cmd:
                raise LabError("%s needs a command: mbx-lab %s NAME -- CMD ..."
                               % (args.cmd, args.cmd))
            execute = lab.exec if args.cmd == "exec" else lab.ext_exec
            return execute(args.name, cmd).returncode
        elif args.cmd == "migrate":
            steps = lab.migrate(args.name, args.to, notify=not args.no_notify)
            if args.json:
                print(json.dumps(steps))
            else:
                print("migrated %s to %s: %s" % (args.name, args.to, ", ".join(
                    "%s %.1f ms" % kv for kv in steps.items())))
    finally:
        lab.close()
    return 0


def main(argv=None):
    if os.geteuid() != 0:
        print("mbx-lab: must run as root (it creates network namespaces)",
              file=sys.stderr)
        return 1
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (LabError, MbxError) as err:
        print("mbx-lab: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
