"""The os-ken application: a thin shell between OpenFlow switches and the Engine.

Each handler translates one os-ken event into one Engine event, posted to the
engine's single thread.  The only place that sends OpenFlow messages is
``MbxController.send``.
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

from ovsdb import DEFAULT_DB
from ovsdb.api import MbxNb
from ryu_apps import ofmsg, pipeline
from ryu_apps.engine import Engine, EngineLoop
from ovsdb.southbound import ENGINE_TABLES, Southbound

LOG = logging.getLogger(__name__)

# The application's settings: the [mbx] section of os-ken's configuration
# (oslo.config), so any os-ken AppManager can load the app from a config file;
# mbx-controller sets them from its command line.
OPTS = [
    cfg.StrOpt("nb-connection", default=os.environ.get("MBX_DB", DEFAULT_DB),
               help="the northbound (config) database, an OVSDB remote "
               "(default: $MBX_DB or %s)" % DEFAULT_DB),
    cfg.StrOpt("sb-connection", default=os.environ.get("MBX_SB", ""),
               help="the southbound database (default: $MBX_SB, or the "
               "northbound database's server, which may serve both)"),
    cfg.ListOpt("chassis", default=[],
                help="the hosts whose switches this controller programs "
                "(default: every host); several controllers split the hosts "
                "between them this way"),
    cfg.StrOpt("name", default="",
               help="this controller's name, recorded with what it reports "
               "of its hosts (default: its host name and process id)"),
]
cfg.CONF.register_opts(OPTS, group="mbx")


class MbxController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.datapaths = {}
        self._stats = {}
        conf = self.CONF.mbx
        nb_remote = conf.nb_connection
        sb_remote = conf.sb_connection or nb_remote
        LOG.info("northbound %s, southbound %s", nb_remote, sb_remote)
        self.loop = EngineLoop()
        self.nb = MbxNb.connect(nb_remote, on_change=self.loop.post_nb_changed)
        post = self.loop.post
        self.southbound = Southbound(
            sb_remote,
            on_ports=lambda host, ports: post("host_ports_changed", host, ports),
            on_sb_cfg=lambda value: post("sb_cfg_changed", value),
            on_ready=lambda: post("southbound_ready"),
            on_runtime=lambda snap: post("runtime_changed", snap),
            runtime_tables=ENGINE_TABLES)
        name = conf.name or "%s:%d" % (socket.gethostname(), os.getpid())
        self.loop.engine = Engine(send=self.send, nb=self.nb, sb=self.southbound,
                                  hosts=conf.chassis or None, name=name)
        LOG.info("controller %s serving %s", name,
                 ", ".join(conf.chassis) if conf.chassis else "every host")
        self.loop.start()
        self.loop.post_nb_changed()
        self.southbound.start()

    def send(self, dpid, ops, barrier_xid):
        dp = self.datapaths.get(dpid)
        if dp is None:
            return
        for command, flow in ops:
            dp.send_msg(ofmsg.to_flow_mod(dp, flow, command))
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
