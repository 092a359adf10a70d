"""The os-ken application: a thin shell between OpenFlow switches and the Engine.

Each handler translates one os-ken event into one Engine event, posted to the
engine's single thread.  The only place that sends OpenFlow messages is
``MbxController.send``.

Which hosts it serves is decided by the southbound server's locks
(``ovsdb.locks``, on a thread of their own): it asks for the lock of each
host it prefers (``[mbx] chassis``, stolen) and, standing by
(``[mbx] standby``), of every other host in the southbound database
(queued); the engine serves exactly the hosts whose locks it holds, none
until the first is granted.
"""

import logging
import os
import socket

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER,
                                       MAIN_DISPATCHER, set_ev_cls)
from os_ken.ofproto import ofproto_v1_3

from ovsdb import DEFAULT_DB, default_sb, tls
from mbxmodel.snapshot import host_names
from ovsdb.locks import LockThread, hosts_of, wanted_locks
from ryu_apps import ofmsg, pipeline
from ryu_apps.engine import Engine, EngineLoop
from ovsdb.southbound import ENGINE_TABLES, Southbound

LOG = logging.getLogger(__name__)

# The application's settings: the [mbx] section of os-ken's configuration
# (oslo.config), so any os-ken AppManager can load the app from a config file;
# mbx-controller sets them from its command line.
OPTS = [
    cfg.StrOpt("nb-connection", default=os.environ.get("MBX_DB", DEFAULT_DB),
               help="the databases' server, an OVSDB remote, used for the "
               "southbound database when sb-connection is unset (default: "
               "$MBX_DB or %s); the controller reads no northbound table"
               % DEFAULT_DB),
    cfg.StrOpt("sb-connection", default=os.environ.get("MBX_SB", ""),
               help="the southbound database, everything the controller "
               "computes from (default: $MBX_SB, or nb-connection)"),
    cfg.ListOpt("chassis", default=[],
                help="the hosts this controller prefers to serve: it takes "
                "each one's southbound lock from whichever controller holds "
                "it, so a restarted controller gets its hosts back (default: "
                "none in particular); several controllers split the hosts "
                "between them this way"),
    cfg.BoolOpt("standby", default=None,
                help="also stand by for every other host in the southbound "
                "database: queue for its lock and serve it as soon as the "
                "controller serving it is gone (default: true when chassis "
                "is unset, so a lone controller serves every host; false "
                "otherwise)"),
    cfg.StrOpt("name", default="",
               help="this controller's name, recorded with what it reports "
               "of its hosts (default: its host name and process id)"),
    cfg.StrOpt("private-key", default=None,
               help="private key (PEM) for ssl: database remotes"),
    cfg.StrOpt("certificate", default=None,
               help="certificate (PEM, signed by the CA) for ssl: database remotes"),
    cfg.StrOpt("ca-cert", default=None,
               help="the CA certificate (PEM) a database server's certificate "
               "must be signed by"),
]
cfg.CONF.register_opts(OPTS, group="mbx")


class MbxController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.datapaths = {}
        self._stats = {}
        conf = self.CONF.mbx
        sb_remote = default_sb(conf.nb_connection, conf.sb_connection)
        LOG.info("southbound %s", sb_remote)
        tls.configure(tls.Files(conf.private_key, conf.certificate, conf.ca_cert),
                      sb_remote, program="mbx-controller")
        self.loop = EngineLoop()
        post = self.loop.post
        self._preferred = frozenset(conf.chassis)
        self._standby = (not conf.chassis) if conf.standby is None else conf.standby
        self.southbound = Southbound(
            sb_remote,
            on_ports=lambda host, ports: post("host_ports_changed", host, ports),
            on_sb_cfg=lambda value: post("sb_cfg_changed", value),
            on_ready=lambda: post("southbound_ready"),
            on_runtime=self._runtime_changed,
            on_status=lambda statuses: post("statuses_changed", statuses),
            runtime_tables=ENGINE_TABLES,
            datapaths=True,
            on_datapaths=lambda rows, nb_cfg: post("datapaths_changed", rows, nb_cfg),
            # serving no other host, it reads only its hosts' switches' records
            hosts=None if self._standby else self._preferred)
        name = conf.name or "%s:%d" % (socket.gethostname(), os.getpid())
        self._known_hosts = None
        # It serves no host until the server grants it a lock.
        self.loop.engine = Engine(send=self.send, sb=self.southbound, hosts=(),
                                  name=name, read_flows=self.read_flows)
        self.locks = LockThread(sb_remote, on_change=lambda held: post(
            "set_served", hosts_of(held)))
        LOG.info("controller %s: prefers %s, %s", name,
                 ", ".join(sorted(self._preferred)) or "no host",
                 "stands by for every other host" if self._standby else "no standby")
        self.loop.start()
        self.locks.want(wanted_locks((), self._preferred, self._standby))
        self.locks.start()
        self.southbound.start()

    def _runtime_changed(self, snap):
        """On the southbound thread: the runtime rows, and with them the
        hosts whose locks it stands by for."""
        self.loop.post("runtime_changed", snap)
        hosts = host_names(self._known_hosts, snap)
        if hosts != self._known_hosts:
            self._known_hosts = hosts
            self.locks.want(wanted_locks(hosts, self._preferred, self._standby))

    def read_flows(self, dpid):
        """Ask a switch for its flows (with our cookie) again; the answer
        reaches the engine as ``switch_flows``."""
        dp = self.datapaths.get(dpid)
        if dp is not None:
            dp.send_msg(ofmsg.flow_stats_request(dp, pipeline.COOKIE,
                                                 pipeline.COOKIE_MASK))

    def send(self, dpid, ops, barrier_xid):
        dp = self.datapaths.get(dpid)
        if dp is None:
            return
        for command, flow in ops:
            try:
                msg = ofmsg.to_flow_mod(dp, flow, command)
            except Exception as e:  # a value no flow can carry: skip that flow
                LOG.error("switch %016x: flow not sent, it cannot be encoded "
                          "(%s): %s", dpid, e, flow)
                continue
            dp.send_msg(msg)
        barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
        barrier.set_xid(barrier_xid)
        dp.send_msg(barrier)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            LOG.info("switch %016x connected", dp.id)
            self.datapaths[dp.id] = dp
            self._stats[dp.id] = []
            self.loop.post("switch_connected", dp.id)
            dp.send_msg(ofmsg.flow_stats_request(dp, pipeline.COOKIE,
                                                 pipeline.COOKIE_MASK))
        elif ev.state == DEAD_DISPATCHER and self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            self.loop.post("switch_disconnected", dp.id)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev):
        msg = ev.msg
        dpid = msg.datapath.id
        collected = self._stats.setdefault(dpid, [])
        collected.extend(ofmsg.flow_from_stats(s) for s in msg.body)
        if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            self.loop.post("switch_flows", dpid, self._stats.pop(dpid))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        self.loop.post("barrier_reply", ev.msg.datapath.id, ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPErrorMsg,
                [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        self.loop.post("flow_error", msg.datapath.id,
                       "type=%d code=%d" % (msg.type, msg.code))
