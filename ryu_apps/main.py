"""``mbx-controller``: start the mbx os-ken application."""

import argparse
import logging
import os
import sys

from ovsdb import DEFAULT_DB


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mbx-controller",
                                description="mbx OpenFlow controller")
    p.add_argument("--ofp-listen-host", default="0.0.0.0",
                   help="address to accept OpenFlow connections on")
    p.add_argument("--ofp-port", type=int, default=6653,
                   help="OpenFlow TCP port (default 6653)")
    p.add_argument("--db", default=os.environ.get("MBX_DB", DEFAULT_DB),
                   help="config database (default: $MBX_DB or %s)" % DEFAULT_DB)
    p.add_argument("--log-file", help="log to this file instead of stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ["OSKEN_HUB_TYPE"] = "native"    # os-ken on native threads
    logging.basicConfig(
        filename=args.log_file,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S")
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from ryu_apps import controller
    cfg.CONF(args=["--ofp-listen-host", args.ofp_listen_host,
                   "--ofp-tcp-listen-port", str(args.ofp_port)],
             project="os_ken")
    controller.SETTINGS["db"] = args.db
    AppManager.run_apps(["ryu_apps.controller"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
