"""``mbx-northd``: run the logical controller (``ryu_apps.northd``).

It runs next to the databases: it monitors the northbound database and the
southbound one and writes the cloud-wide decisions.  Run two or more for
availability: the one holding the southbound lock ``mbx_northd`` is active
and writes, the others stand by with warm replicas and the first in the
server's queue takes over when the holder's connection goes (its death, or
a cluster's new leader: the lock is asked for again on the new
connection).  The log says "active: ..." / "standby: ..."; so does
``ovs-appctl -t mbx-northd status`` (``--unixctl``), first line
``Status: active`` or ``Status: standby``.
"""

import argparse
import logging
import os
import signal
import sys
import threading

import ovs.daemon
import ovs.poller
import ovs.unixctl
import ovs.unixctl.server
import ovs.util

from ovsdb import DEFAULT_DB, default_sb, tls
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError
from ovsdb.southbound import NORTHD_TABLES, Southbound
from ryu_apps.engine import EngineLoop
from ryu_apps.northd import LOCK, Northd

PROG = "mbx-northd"
TICK = 1.0          # s between two looks for stale rows (ryu_apps.expiry)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise MbxError(f"{message} (see {PROG} --help)")


def parse_args(argv):
    p = _Parser(prog=PROG, description="the mbx logical controller")
    p.add_argument("--db", default=os.environ.get("MBX_DB", DEFAULT_DB),
                   help="the northbound (config) database (default: $MBX_DB "
                   "or %s)" % DEFAULT_DB)
    p.add_argument("--sb", default=os.environ.get("MBX_SB"),
                   help="the southbound database (default: $MBX_SB, or the "
                   "northbound database's server, which may serve both)")
    tls.add_arguments(p)
    p.add_argument("--log-file", help="log to this file instead of stderr")
    p.add_argument("--rundir", default=os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"),
                   help="where the pidfile %s.pid and the control socket "
                   "%s.PID.ctl go (ovs-appctl -t %s status); default $OVS_RUNDIR or "
                   "/var/run/openvswitch" % (PROG, PROG, PROG))
    p.add_argument("--unixctl", help="the control socket's path instead "
                   "(ovs-appctl -t PATH status); no pidfile then")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        filename=args.log_file,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S")
    args.sb = default_sb(args.db, args.sb)
    try:
        tls.check_remotes(args.db, args.sb)
        tls.configure(tls.files(args), args.db, args.sb, program=PROG)
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    loop = EngineLoop()
    ctl = _control_socket(args, loop, stop)
    if ctl is None:
        return 1
    try:
        nb = MbxNb.connect(args.db, on_change=loop.post_nb_changed,
                           quiet=Northd.own_status_write)
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    sb = Southbound(args.sb or args.db,
                    on_ports=lambda host, ports: loop.post("host_ports_changed",
                                                           host, ports),
                    on_status=lambda statuses: loop.post("chassis_status_changed",
                                                         statuses),
                    on_sb_cfg=lambda value: loop.post("sb_cfg_changed", value),
                    on_ready=lambda: loop.post("southbound_ready"),
                    on_runtime=lambda snap: loop.post("runtime_changed", snap),
                    runtime_tables=NORTHD_TABLES,
                    datapaths=True,
                    on_datapaths=lambda rows, nb_cfg: loop.post("datapaths_changed",
                                                                rows, nb_cfg),
                    lock=LOCK,
                    on_lock=lambda held: loop.post("set_active", held))
    loop.engine = Northd(nb, sb, active=False)
    loop.start()
    loop.post_nb_changed()
    sb.start()
    logging.getLogger(PROG).info("northbound %s, southbound %s; standby until it "
                                 "holds the lock %s", args.db, args.sb or args.db, LOCK)
    ticker = threading.Thread(target=_tick, args=(loop, stop), daemon=True,
                              name="mbx-northd-tick")
    ticker.start()
    ctl.start()
    stop.wait()
    sb.stop()
    loop.stop()
    nb.close()
    return 0


def _tick(loop, stop):
    while not stop.wait(TICK):
        loop.post("tick")


class _Control(threading.Thread):
    """The unixctl server (``ovs-appctl -t ... status`` / ``exit``), on its
    own thread; ``status`` reads the engine's plain attributes."""

    def __init__(self, server, stop):
        super().__init__(daemon=True, name="mbx-northd-unixctl")
        self.server, self.stop = server, stop

    def run(self):
        while not self.stop.is_set():
            self.server.run()
            poller = ovs.poller.Poller()
            self.server.wait(poller)
            poller.timer_wait(200)
            poller.block()
        self.server.close()


def _control_socket(args, loop, stop):
    ovs.util.PROGRAM_NAME = PROG
    if args.unixctl:
        path = args.unixctl
    else:
        os.makedirs(args.rundir, exist_ok=True)
        ovs.daemon.set_pidfile(os.path.join(args.rundir, PROG + ".pid"))
        ovs.daemon.ignore_existing_pidfile()
        ovs.daemon.daemonize_start()
        ovs.daemon.daemonize_complete()
        path = os.path.join(args.rundir, "%s.%d.ctl" % (PROG, os.getpid()))

    def status(conn, _argv, _aux):
        engine = loop.engine
        conn.reply("\n".join(engine.status_lines()) + "\n" if engine is not None
                   else "Status: starting\n")

    def exit_(conn, _argv, _aux):
        conn.reply(None)
        stop.set()
    ovs.unixctl.command_register("status", "", 0, 0, status, None)
    ovs.unixctl.command_register("exit", "", 0, 0, exit_, None)
    err, server = ovs.unixctl.server.UnixctlServer.create(path)
    if err:
        print("%s: cannot create the control socket %s: %s" % (PROG, path, os.strerror(err)),
              file=sys.stderr)
        return None
    return _Control(server, stop)


if __name__ == "__main__":
    sys.exit(main())
