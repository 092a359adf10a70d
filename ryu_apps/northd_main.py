"""``mbx-northd``: run the logical controller (``ryu_apps.northd``).

One process per cloud, next to the databases: it monitors the northbound
database and the southbound one and writes the cloud-wide decisions.
"""

import argparse
import logging
import os
import signal
import sys
import threading

from ovsdb import DEFAULT_DB, default_sb, tls
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError
from ovsdb.southbound import NORTHD_TABLES, Southbound
from ryu_apps.engine import EngineLoop
from ryu_apps.northd import Northd

PROG = "mbx-northd"


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
                                                                rows, nb_cfg))
    loop.engine = Northd(nb, sb)
    loop.start()
    loop.post_nb_changed()
    sb.start()
    logging.getLogger(PROG).info("northbound %s, southbound %s", args.db,
                                 args.sb or args.db)
    stop.wait()
    sb.stop()
    loop.stop()
    nb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
