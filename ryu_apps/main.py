"""``mbx-controller``: start the mbx os-ken application.

Its settings are os-ken's: the OpenFlow listener, and the app's own [mbx]
section (``ryu_apps.controller.OPTS``), read from ``--config-file`` as
any os-ken application's; ``--db``, ``--sb`` and the database TLS options
(``--private-key``, ``--certificate``, ``--ca-cert``: [mbx] private_key,
certificate, ca_cert) override the file.  OpenFlow over TLS: os-ken's
``--ctl-privkey``, ``--ctl-cert`` and ``--ca-certs`` (a controller
certificate, and the CA the switches' certificates are signed by); the
controller then accepts only TLS connections, on ``--ofp-port``.
"""

import argparse
import logging
import os
import sys

from ovsdb import default_sb, tls
from ovsdb.errors import MbxError


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mbx-controller",
                                description="mbx OpenFlow controller")
    p.add_argument("--config-file", action="append", default=[],
                   help="an os-ken/oslo.config file; mbx reads its [mbx] "
                   "section (nb_connection, sb_connection, chassis, standby, name); "
                   "may be repeated")
    p.add_argument("--ofp-listen-host", default="0.0.0.0",
                   help="address to accept OpenFlow connections on")
    p.add_argument("--ofp-port", type=int, default=6653,
                   help="OpenFlow TCP port (default 6653)")
    p.add_argument("--db", help="the databases' server, for the southbound "
                   "database when --sb is not given (overrides [mbx] "
                   "nb_connection; default $MBX_DB)")
    p.add_argument("--sb", help="the southbound database, all the controller "
                   "reads (overrides [mbx] sb_connection; default: --db)")
    p.add_argument("--chassis", help="comma-separated hosts this controller "
                   "prefers to serve, taken from any other controller "
                   "(overrides [mbx] chassis; default: none in particular)")
    p.add_argument("--standby", action=argparse.BooleanOptionalAction, default=None,
                   help="also stand by for every other host: serve it when "
                   "its controller is gone (overrides [mbx] standby; default: "
                   "on without --chassis, off with it)")
    p.add_argument("--name", help="this controller's name (overrides [mbx] name)")
    tls.add_arguments(p)
    p.add_argument("--ctl-privkey", metavar="FILE",
                   help="OpenFlow over TLS: this controller's private key")
    p.add_argument("--ctl-cert", metavar="FILE",
                   help="OpenFlow over TLS: this controller's certificate")
    p.add_argument("--ca-certs", metavar="FILE",
                   help="OpenFlow over TLS: the CA a switch's certificate must be "
                   "signed by")
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
    from oslo_config.cfg import Error as ConfigError
    import ryu_apps.controller  # noqa: F401  (registers the [mbx] options)
    conf_args = ["--ofp-listen-host", args.ofp_listen_host]
    ofp_tls = [args.ctl_privkey, args.ctl_cert, args.ca_certs]
    if any(ofp_tls):
        for option, path in zip(("--ctl-privkey", "--ctl-cert", "--ca-certs"), ofp_tls):
            if not path or not os.access(path, os.R_OK):
                print("mbx-controller: OpenFlow over TLS needs a readable %s FILE%s"
                      % (option, " (%s)" % path if path else ""), file=sys.stderr)
                return 2
            conf_args += [option, path]
        conf_args += ["--ofp-ssl-listen-port", str(args.ofp_port)]
    else:
        conf_args += ["--ofp-tcp-listen-port", str(args.ofp_port)]
    for path in args.config_file:
        conf_args += ["--config-file", path]
    try:
        cfg.CONF(args=conf_args, project="os_ken")
    except ConfigError as e:      # a missing or unparsable file, a bad value
        print("mbx-controller: %s" % e, file=sys.stderr)
        return 2
    if args.db:
        cfg.CONF.set_override("nb_connection", args.db, group="mbx")
    if args.sb:
        cfg.CONF.set_override("sb_connection", args.sb, group="mbx")
    if args.chassis:
        cfg.CONF.set_override("chassis", [h for h in args.chassis.split(",") if h],
                              group="mbx")
    if args.standby is not None:
        cfg.CONF.set_override("standby", args.standby, group="mbx")
    if args.name:
        cfg.CONF.set_override("name", args.name, group="mbx")
    for field, value in zip(tls.Files._fields, tls.files(args)):
        if value:
            cfg.CONF.set_override(field, value, group="mbx")
    conf = cfg.CONF.mbx
    try:
        tls.configure(tls.Files(conf.private_key, conf.certificate, conf.ca_cert),
                      default_sb(conf.nb_connection, conf.sb_connection),
                      program="mbx-controller")
    except MbxError as e:
        print("mbx-controller: %s" % e, file=sys.stderr)
        return 2
    AppManager.run_apps(["ryu_apps.controller"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
