"""The os-ken application: a thin shell between OpenFlow switches and the Engine.

Each handler translates one os-ken event into one Engine event, posted to the
engine's single thread.  The only place that sends OpenFlow messages is
``MbxController.send``.
"""

import logging
import threading

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER,
                                       MAIN_DISPATCHER, set_ev_cls)
from os_ken.ofproto import ofproto_v1_3

from ovsdb.api import MbxNb
from ryu_apps import ofmsg, pipeline
from ryu_apps.engine import Engine, EngineLoop
from ryu_apps.hostwatch import HostWatcher

LOG = logging.getLogger(__name__)

# Seconds to wait, after start, for every host's OVSDB to report its ports
# before reconciling switches without the hosts that have not answered.
STARTUP_GRACE = 5.0

# Set by ryu_apps.main before os-ken instantiates the application.
SETTINGS = {"db": None}


class MbxController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.datapaths = {}
        self._stats = {}
        self.watchers = {}
        self.loop = EngineLoop()
        self.nb = MbxNb.connect(SETTINGS["db"], on_change=self.loop.post_nb_changed)
        self.loop.engine = Engine(send=self.send, nb=self.nb,
                                  watch_host=self._watch_host)
        self.loop.start()
        self.loop.post_nb_changed()
        grace = threading.Timer(STARTUP_GRACE, self.loop.post, ("startup_grace_over",))
        grace.daemon = True
        grace.start()

    def _watch_host(self, host, remote):
        LOG.info("watching host %s at %s", host, remote)
        watcher = HostWatcher(host, remote,
                              lambda h, ports: self.loop.post("host_ports_changed", h, ports))
        self.watchers[host] = watcher
        watcher.start()

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
