"""mbxd: the per-host middlebox daemon.

    mbxd --host NAME --db NB_ADDR [--sb SB_ADDR] --bridge br-int [--port mbx-mb]

The switch's conntrack is the connection cache and mbxd is the service that
configures it and answers its misses (docs/middlebox.md).  One thread runs
one poll loop (as ovs-vswitchd's Python helpers do) over:

* the southbound database (this host's slices, VM locations, migrations,
  shared state) and the northbound database (what the slices' middleboxes
  are), through conditional monitors that hold only this host's slices and
  what they need (``middlebox.confmon``); every change
  recompiles the service stages (``middlebox.dataplane``) and installs the
  difference; once the switch has acknowledged it, the config generation
  is reported (``Chassis_Private.mb_cfg``, ``middlebox.mbcfg``);
* the middlebox port, where the switch sends what it asks the service
  (``middlebox.packetio``, decided by ``middlebox.service``);
* an OpenFlow 1.3 connection to the bridge's management socket: the
  service stages' flows and groups, packet-outs that commit connections,
  flow stats (decision counters);
* ovs-vswitchd's unixctl socket, for conntrack itself (``middlebox.vswitch``:
  dump, flush);
* the unixctl server behind ``ovs-appctl -t mbxd`` (``middlebox.appctl``);
* the TLS channel to the other hosts' daemons for migrations
  (``middlebox.migchan``, driven by ``middlebox.migration``).

Nothing of a connection lives only in this process: a restarted daemon
finds its zones in its flows and every connection in conntrack.
"""

import argparse
import logging
import os
import signal
import sys
import time

import ovsdb  # noqa: F401  (quiets python-ovs' optional eventlet import)
import ovs.daemon
import ovs.poller
import ovs.unixctl
import ovs.unixctl.server
import ovs.util

from middlebox import (appctl, ctcommit, dataplane, mbcfg, metrics, migchan, packetio,
                       pki, vmstate)
from middlebox.arrivals import Arrivals
from middlebox.confmon import ConfigMonitor
from middlebox.conntable import ConnTable
from middlebox.migration import MigrationManager, RowWriter
from middlebox.ofconn import OfConn, OfConnError
from middlebox.packetio import PacketPort
from middlebox.service import Service
from mbxmodel.state import VM_STATE
from middlebox.shared import SharedState
from middlebox.vswitch import Vswitch, VswitchError, find_socket
from middlebox.zonepolicy import (DEFAULT_SYN_TIMEOUT, ZoneLimits, ZonePolicies, zone_limits,
                                  zone_policies)
from middlebox.zones import ZoneMap
from ovsdb import tls, validate
from ovsdb.errors import MbxError
from ryu_apps import ofmsg
from ryu_apps import pipeline as P

LOG = logging.getLogger("mbxd")
PROGRAM = "mbxd"
BATCH = 64                  # frames read per wake-up, at most
MAX_BATCHES = 16            # wake-ups' worth of frames handled before other work
STATS_INTERVAL = 2.0        # seconds between flow-stats polls (decision counters)
COUNT_INTERVAL = 2.0        # seconds between counts of the connections in conntrack
TICK_INTERVAL = 0.1         # health probes, shared-state publication
TUNNEL_PORT = "mbx-tun"
RECONNECT_MIN = 0.1         # s before the first attempt to reach a lost switch
RECONNECT_MAX = 2.0         # s between attempts at most (doubling from RECONNECT_MIN)
RECONNECT_TIMEOUT = 2.0     # s one attempt's handshake may take


def parse_args(argv):
    rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
    p = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True,
                   help="this host's name (its southbound Chassis row)")
    p.add_argument("--db", required=True,
                   help="the northbound database's members, e.g. "
                   "ssl:10.201.0.2:6641,ssl:10.201.0.3:6641,ssl:10.201.0.4:6641")
    p.add_argument("--sb", help="the southbound database's members (default: the "
                   "--db remotes, for one server serving both databases)")
    p.add_argument("--bridge", default="br-int")
    p.add_argument("--port", default=P.MIDDLEBOX_PORT, help="the middlebox port's interface")
    p.add_argument("--tunnel-port", default=TUNNEL_PORT,
                   help="the bridge's tunnel port (SNAT forwarders after a move)")
    p.add_argument("--ofp", help="OpenFlow target (default unix:RUNDIR/BRIDGE.mgmt)")
    p.add_argument("--rundir", default=rundir, help="pidfile, unixctl socket; "
                   "ovs-vswitchd's unixctl socket is found here too")
    p.add_argument("--vswitchd", help="ovs-vswitchd's unixctl socket (default: from "
                   "RUNDIR/ovs-vswitchd.pid)")
    p.add_argument("--ovsdb", help="the host's Open vSwitch database, for the zones' "
                   "timeout policies (default unix:RUNDIR/db.sock)")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics over HTTP here")
    p.add_argument("--log-file")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--pki-dir", help="CA and this host's certificate for the migration "
                   "channel (ca.pem, HOST.pem, HOST.key; see mbx-pki), and by default "
                   "for ssl: database remotes")
    tls.add_arguments(p)
    p.add_argument("--migration-listen", metavar="ADDR:PORT",
                   help="accept migrated state here (docs/migration.md)")
    p.add_argument("--migration-ttl", type=float, default=60.0, metavar="SECONDS",
                   help="keep a migrated VM's state this long without an acknowledgement")
    p.add_argument("--no-migration", action="store_true",
                   help="never send or accept connection state (a VM that moves "
                   "loses its connections through this host's middleboxes)")
    p.add_argument("--profile", metavar="FILE",
                   help="profile the daemon's loop (cProfile) and write the "
                   "statistics to FILE when it exits (pstats format)")
    args = p.parse_args(argv)
    if args.profile and not os.path.isdir(os.path.dirname(os.path.abspath(args.profile))):
        p.error("--profile: no directory for %s" % args.profile)
    args.sb = args.sb or args.db
    try:
        tls.check_remotes(args.db, args.sb)
    except MbxError as err:
        p.error(str(err))
    args.tls = tls.files(args)
    if args.pki_dir:
        # The host's own certificate, as for the migration channel.
        args.tls = tls.merge(args.tls, tls.from_pki(args.pki_dir, args.host))
    args.ofp = args.ofp or "unix:%s/%s.mgmt" % (args.rundir, args.bridge)
    args.ovsdb = args.ovsdb or "unix:%s/db.sock" % args.rundir
    if args.metrics:
        addr, _, port = args.metrics.rpartition(":")
        if not addr or not port.isdigit():
            p.error("--metrics wants ADDR:PORT, got %r" % args.metrics)
        args.metrics = (addr, int(port))
    if args.migration_listen:
        addr, _, port = args.migration_listen.rpartition(":")
        if not addr or not port.isdigit():
            p.error("--migration-listen wants ADDR:PORT, got %r" % args.migration_listen)
        args.migration_listen = (addr, int(port))
    return args


class Daemon:
    def __init__(self, args):
        self.args = args
        self.zones = ZoneMap()
        self.policies = ZonePolicies(args.ovsdb)
        self.limits = ZoneLimits()
        self.meters = {}                # meter id -> Meter (what the switch holds)
        self._limit_errors = ()
        self._limits_seen = None        # NB_Global.options the plane was computed with
        self.service = Service(args.host, zone_of=self.zones.vm)
        self.conf = ConfigMonitor(args.db, args.host, sb_remote=args.sb)
        # State sharing manager (middlebox.shared): services publish and read
        # through it; its writes go out on the monitor's southbound IDL.
        self.shared = SharedState(args.host, monitor=self.conf)
        # Chassis_Private.mb_cfg: the config generation applied (mbcfg).
        self.mbcfg = mbcfg.Writer(self.conf, args.host)
        self.service.shared = self.shared
        self.arrivals = Arrivals()
        self.service.arrivals = self.arrivals
        self.of = None
        self.port = None
        self.vswitch = None
        self.conns = None               # middlebox.conntable.ConnTable
        self.ports = dataplane.HostPorts()
        self.exiting = False
        self.config = None
        self.plane = dataplane.Dataplane()
        self.installed = {}             # flow key -> Flow (what the switch holds)
        self.groups = {}                # group id -> Group
        self.recovered = False
        self._next = {"stats": 0.0, "tick": 0.0, "count": 0.0}
        self._stats_waiters = []        # callbacks for the next flow-stats reply
        self._after = {}                # barrier xid -> frames to give back then
        self._vm_state = set()          # (middlebox, VM) "vm-state" rows published
        self._stats_xid = None
        self._dirty_plane = True
        self.channel = None
        self.migrations = None          # middlebox.migration.MigrationManager
        self._mig_seqno = None
        self._db_up = {"sb": False, "nb": False}
        self.switch_losses = 0          # OpenFlow connections lost (each one resynced)
        self.conns_restored = 0         # connections re-committed into a restarted switch
        self._of_backoff = RECONNECT_MIN
        self._of_retry = 0.0

    # ------------------------------------------------------------ start
    def start(self):
        self.of = self._connect_openflow()
        self.vswitch = Vswitch(self.args.vswitchd or find_socket(self.args.rundir))
        self._attach()
        if self.ports.middlebox is None:
            LOG.warning("no port %s on %s: misses are dropped until it appears",
                        self.args.port, self.args.bridge)
        self.conns = ConnTable(self.vswitch, self.zones)
        if self.args.no_migration:
            LOG.info("state migration is off")
        elif not self.args.pki_dir:
            LOG.warning("no --pki-dir: state migration is off")
        else:
            self._start_migrations()
        # Without migrations nothing is ever held: no VM's state arrives.
        self.service.arrivals = self.arrivals if self.migrations is not None else None

    def _attach(self):
        """What the daemon needs of a (re)started switch besides flows: the
        ports' numbers, its middlebox port open (and up), conntrack's TCP
        sequence checking off (a datapath-wide setting a restart resets).
        Raises OfConnError if the switch went away meanwhile, MbxError if
        its middlebox port, there before, is not back yet."""
        ports = dataplane.HostPorts(self.of.port_number(self.args.port),
                                    self.of.port_number(self.args.tunnel_port))
        if ports.middlebox is None and self.ports.middlebox is not None:
            raise MbxError("no port %s on %s yet" % (self.args.port, self.args.bridge))
        self.ports = ports
        self._open_port()
        try:
            if not self.args.vswitchd:
                # Its unixctl socket may be named after its (new) pid.
                self.vswitch.path = find_socket(self.args.rundir)
            self.vswitch.disable_tcp_seq_check()
        except VswitchError as err:
            LOG.warning("%s: connections moved here may stall", err)

    def _open_port(self):
        """Open the middlebox port's packet socket, again if its interface
        was replaced (a restarted switch creates its internal ports anew);
        keep the old one while the new cannot be opened."""
        if self.port is not None and not self.port.gone():
            return
        try:
            port = PacketPort(self.args.port)
        except OSError as err:
            if self.port is None:
                raise MbxError(str(err)) from None
            LOG.warning("%s (retrying)", err)
            return
        if self.port is not None:
            self.port.close()
            LOG.info("middlebox port %s opened again", self.args.port)
        self.port = port
        try:
            if packetio.set_up(self.args.port):
                LOG.info("middlebox port %s was down: brought it up", self.args.port)
        except OSError as err:
            LOG.warning("cannot bring %s up: %s", self.args.port, err)

    def _start_migrations(self):
        files = pki.host_files(self.args.pki_dir, self.args.host)
        # Past its handshake, a session stays only if a migration to this
        # host names its peer (middlebox.migchan).
        self.channel = migchan.Channel(
            self.args.host, files, self.args.migration_listen,
            admit=lambda peer: self.migrations is not None and self.migrations.knows(peer))
        self.channel.start()
        self.migrations = MigrationManager(
            self.args.host, self, self.channel, RowWriter(self.conf, self.args.host),
            ttl=self.args.migration_ttl)
        if self.args.migration_listen:
            LOG.info("accepting migrated state on %s:%d", *self.channel.listen_address)

    def _connect_openflow(self, timeout=30):
        deadline = time.monotonic() + timeout
        of = OfConn(self.args.ofp, on_flow_stats=self._flow_stats,
                    on_barrier=self._on_barrier, on_flow_removed=self._flow_removed)
        while True:
            try:
                of.connect()
            except MbxError as err:
                if time.monotonic() > deadline:
                    raise
                LOG.info("waiting for %s: %s", self.args.ofp, err)
                time.sleep(0.5)
                continue
            return of

    # ---------------------------------------------- the switch going away
    def _switch_lost(self, err):
        """The OpenFlow connection dropped (ovs-vswitchd restarted, or the
        bridge went): reconnect with backoff; the loop keeps serving the
        databases, the migration channel and ovs-appctl meanwhile."""
        self.of.close()
        self.switch_losses += 1
        self._of_backoff = RECONNECT_MIN
        self._of_retry = time.monotonic() + RECONNECT_MIN
        LOG.warning("lost the switch (%s): reconnecting", err)

    def _switch_reconnect(self):
        mono = time.monotonic()
        if mono < self._of_retry:
            return
        try:
            self.of.connect(timeout=RECONNECT_TIMEOUT)
            self._attach()
            if self.recovered:
                self._resync()
        except (MbxError, OSError) as err:
            self.of.close()
            self._of_backoff = min(2 * self._of_backoff, RECONNECT_MAX)
            self._of_retry = mono + self._of_backoff
            LOG.debug("switch not back yet: %s (next try in %.1fs)", err, self._of_backoff)
            return
        LOG.info("switch back: %d flows and %d groups resynchronised",
                 len(self.installed), len(self.groups))

    def _resync(self):
        """Reconnected: what the switch holds now is the starting point (all
        of it after a mere reconnection, nothing after a restart); the plane
        is installed again over it, and every barrier the lost connection
        owed is answered behind that.  Conntrack is the switch's: a
        restarted ovs-vswitchd (none of the daemon's flows left) starts
        empty and is given the last census's connections first
        (docs/middlebox.md, "Restart")."""
        self._stats_xid = None          # its reply went with the connection
        had_flows = bool(self.installed)
        self.recover()
        if had_flows and not self.installed:
            # None of its flows left: the switch restarted, conntrack too.
            self._restore_conntrack()
        self.replan()
        self.of.resume_barriers()

    def _restore_conntrack(self):
        """A restarted switch's conntrack is empty: the connections of the
        last census (at most a few seconds old) are committed again, as a
        migration's import commits them, before the service stages are
        back, so no packet of theirs is judged anew meanwhile."""
        lost = self.conns.lost()
        if not lost:
            return
        skipped = []
        self.of.send_packet_outs([ctcommit.packet_outs(lost, skipped=skipped)])
        self.conns_restored += len(lost) - len(skipped)
        age = time.monotonic() - self.conns.checkpoint_at \
            if self.conns.checkpoint_at is not None else 0.0
        LOG.warning("the switch lost its conntrack (restarted): %d connections "
                    "re-created as of %.1f s ago%s", len(lost) - len(skipped), age,
                    ", %d could not be" % len(skipped) if skipped else "")

    def recover(self):
        """Read what a previous daemon left in the switch: its flows (and in
        them its zones) and groups; the first install then changes only what
        differs, and conntrack keeps every connection."""
        flows = [f for f, _, _, _ in self.of.dump_flows(P.DAEMON_COOKIE, P.COOKIE_MASK)]
        self.installed = {f.key: f for f in flows}
        self.groups = {g.group_id: g for g in self.of.dump_groups()}
        self.meters = {m.meter_id: m for m in self.of.dump_meters()}
        owners = dataplane.zones_in(flows, self.config)
        self.zones.recover(owners)
        LOG.info("found %d flows, %d groups and %d zones in the switch",
                 len(flows), len(self.groups), len(owners))
        self.recovered = True

    # ------------------------------------------------------------ the plane
    def wanted_zones(self):
        owners = []
        for s in (self.config.slices or {}).values():
            owners += [("vm", vm.name) for vm in s.vms if vm.host == self.args.host]
            owners += [("snat", uuid) for uuid in (s.snat_blocks or {})]
        owners += [("vm", vm) for vm in self.arrivals.expected()]
        if self.migrations is not None:
            owners += [("vm", vm) for vm in self.migrations.incoming()]
            owners += [("vm", vm) for vm in self.migrations.outgoing()]
            owners += [("snat", uuid) for uuid in self.migrations.kept_snat()]
        return owners

    def _local_vms(self, config):
        return {vm.name for s in ((config.slices or {}) if config else {}).values()
                for vm in s.vms if vm.host == self.args.host}

    def _note_departures(self, config):
        """VMs whose port left this host keep their zones a while
        (``MigrationManager.departed``)."""
        if self.migrations is not None and self.config is not None:
            gone = self._local_vms(self.config) - self._local_vms(config)
            if gone:
                self.migrations.departed(
                    {vm: {tag: s for tag, s in self.service.slices.items()
                          if any(v.name == vm for v in s.config.vms)} for vm in gone},
                    time.monotonic())

    def replan_soon(self):
        self._dirty_plane = True

    def replan(self):
        """Recompile the service stages and install what changed."""
        new, released = self.zones.update(self.wanted_zones())
        for zone in list(new.values()) + list(released.values()):
            try:
                self.vswitch.flush_zone(zone)
            except VswitchError as err:
                LOG.warning("%s", err)
        self.policies.update(zone_policies(self.config, self.zones.owners()))
        self._limits_seen = self.conf.global_options()
        per_vm, per_host, rate, errors = validate.global_limits(self._limits_seen)
        for line in errors:
            if line not in self._limit_errors:
                LOG.warning("%s", line)
        self._limit_errors = errors
        self.limits.update(self.vswitch, zone_limits(self.zones.owners(), per_vm), per_host,
                           rate)
        snat = {uuid: z for (kind, uuid), z in self.zones.owners().items() if kind == "snat"}
        vms = {name: z for (kind, name), z in self.zones.owners().items() if kind == "vm"}
        plane = dataplane.compile_host(self.config, self.args.host, vms, snat, self.ports,
                                       holds=self.arrivals.holding(),
                                       forwarders=self.migrations.forwarders()
                                       if self.migrations else (),
                                       arrivals=self.migrations is not None,
                                       new_conn_rate=rate)
        for line in plane.errors:
            if line not in self.plane.errors:
                LOG.warning("%s", line)
        self.plane = plane
        self.install(plane)
        self._dirty_plane = False
        # Packets of VMs that came before their zone: judged again now.
        waiting = self.arrivals.take_unzoned()
        if waiting:
            now = time.time()
            self.send_results([self.service.handle_frame(frame, tci, now)
                               for frame, tci in waiting])

    def install(self, plane):
        want = {f.key: f for f in plane.flows}
        add = [f for k, f in want.items() if self.installed.get(k) != f]
        delete = [f for k, f in self.installed.items() if k not in want]
        groups = {g.group_id: g for g in plane.groups}
        gmods = [("add_or_mod", g) for gid, g in groups.items() if self.groups.get(gid) != g]
        gdel = [("delete", g) for gid, g in self.groups.items() if gid not in groups]
        meters = {m.meter_id: m for m in plane.meters}
        # A flow may use a meter only once it exists; deleting a meter
        # deletes its flows, so it goes after them.
        self.of.send_meters([m for i, m in meters.items() if i not in self.meters])
        self.of.send_meters([m for i, m in meters.items()
                             if i in self.meters and self.meters[i] != m], "modify")
        mdel = [m for i, m in self.meters.items() if i not in meters]
        self.meters = meters
        if not (add or delete or gmods or gdel):
            self.of.send_meters(mdel, "delete")
            return
        # Forwarders tell when they go idle (flow-removed): their connection ended.
        forward = [f for f in add if f.idle_timeout]
        add = [f for f in add if not f.idle_timeout]
        # One bundle: a group and the flows that use it change together.
        self.of.send_flows(add, delete, send_flow_rem=False, bundle=True,
                           groups=gmods + gdel)
        if forward:
            self.of.send_flows(forward, (), send_flow_rem=True)
        self.of.send_meters(mdel, "delete")
        self.installed = want
        self.groups = groups
        LOG.debug("installed %d flows, deleted %d, %d group changes", len(add), len(delete),
                  len(gmods) + len(gdel))

    # ------------------------------------------------------------ events
    def _flow_removed(self, cookie, _table, _priority, match, _reason, *_counts):
        kind = (cookie >> dataplane.KIND_SHIFT) & 0xFF
        if cookie & P.COOKIE_MASK == P.DAEMON_COOKIE and kind == dataplane.K_FORWARD:
            self.installed.pop(match.key, None)
            if self.migrations is not None:
                self.migrations.forwarder_gone(cookie & dataplane.INDEX_MASK)
                self._dirty_plane = True

    def _flow_stats(self, xid, entries):
        if xid != self._stats_xid:
            return
        self._stats_xid = None
        self.service.account(self.plane.decisions,
                             [(f.cookie, packets) for f, packets, _, _ in entries])
        waiters, self._stats_waiters = self._stats_waiters, []
        for callback in waiters:
            callback()

    def fresh_stats(self, callback):
        """Call ``callback`` once decision counters are fresh from the switch."""
        self._stats_waiters.append(callback)
        if self._stats_xid is None:
            self._stats_xid = self.of.request_flow_stats(P.DAEMON_COOKIE, P.COOKIE_MASK)

    def _on_barrier(self, xid):
        self.mbcfg.reporter.on_barrier(xid)
        self._barrier(xid)

    def _barrier(self, xid):
        for frame, tci in self._after.pop(xid, ()):
            self.port.send(frame, tci)
        if self.migrations is not None:
            self.migrations.on_barrier(xid, time.monotonic())

    def send_results(self, results):
        """Carry out service Results: frames out, packet-outs, and frames
        that wait until the switch has taken the packet-outs."""
        outs, after = [], []
        for res in results:
            for out, tci in res.out:
                self.port.send(out, tci)
            outs.extend(ofmsg.packet_out_bytes(frame, actions)
                        for frame, actions in res.packet_outs)
            outs.extend(res.messages)
            after.extend(res.after_barrier)
        if outs:
            self.of.send_packet_outs(outs)
        if after:
            self._after[self.of.barrier()] = after

    def _migration_rows(self):
        """The Migration rows, before the plane is recomputed: a VM leaving
        keeps its zone until its state is sent."""
        mig = self.migrations
        seqno = self.conf.data_seqno()
        if mig is not None and seqno != self._mig_seqno and self.conf.synced():
            self._mig_seqno = seqno
            mig.set_rows(self.conf.migrations(), self.conf.peers(), time.monotonic())

    def _migration_run(self):
        mig = self.migrations
        if mig is None:
            return
        mono = time.monotonic()
        self._migration_rows()
        for ev in self.channel.events():
            mig.on_event(ev, mono)
        mig.run(mono)
        mig.writer.flush()
        self._drain_log()

    def _packets(self, now):
        for _ in range(MAX_BATCHES):
            frames = self.port.recv_batch(BATCH)
            if not frames:
                return
            self.send_results([self.service.handle_frame(frame, tci if tci is not None else 0,
                                                         now) for frame, tci in frames])
            self._drain_log()

    def _drain_log(self):
        if self.service.log:
            for line in self.service.log:
                LOG.warning("%s", line)
            del self.service.log[:]

    def _timers(self, now):
        mono = time.monotonic()
        if mono >= self._next["tick"]:
            self._next["tick"] = mono + TICK_INTERVAL
            self._open_port()           # replaced under us: open it again
            for out, tci in self.service.tick(now):
                self.port.send(out, tci)
            self._publish_vm_state()
            self._drain_log()
            for vm in self.arrivals.due(now):
                LOG.warning("no state for %s arrived in time: its held packets were "
                            "dropped; its connections are judged anew", vm)
                if self.migrations is not None:
                    self.migrations.fallback(vm, time.monotonic())
        if mono >= self._next["stats"]:
            self._next["stats"] = mono + STATS_INTERVAL
            self.fresh_stats(lambda: None)
        if mono >= self._next["count"]:
            # Connections per slice (metrics) and per backend (least-
            # connections): a dump of every VM zone, at most every 2 s, and
            # rarer when that costs more than a few percent of the loop.
            t0 = time.monotonic()
            try:
                per_tag, lb = self.conns.census(self.service.slices, mono)
            except VswitchError as err:
                LOG.warning("%s", err)
                per_tag, lb = {}, {}
            self.service.connections = per_tag
            self.service.set_lb_counts(lb)
            self.refresh_limits()
            self._next["count"] = mono + max(COUNT_INTERVAL, 50 * (time.monotonic() - t0))

    def _limits_changed(self):
        """NB_Global's options changed since the plane was computed (the
        limits are there, not in the host's config)."""
        return self.conf.global_options() != self._limits_seen

    def refresh_limits(self):
        """The limits as the switch holds them (set again if it lost them)
        and what the meters dropped, into ``service.limits``: for
        ``limits/show`` and the metrics."""
        self.limits.refresh(self.vswitch)
        try:
            meters = self.of.meter_stats() if self.meters else {}
        except MbxError as err:
            LOG.warning("meter stats: %s", err)
            meters = {}
        self.service.limits = self.limits.report(self.zones.owners(), self._syn_timeouts(),
                                                 meters)

    def _syn_timeouts(self):
        """timeout-tcp-syn of the VM zones: {zone: seconds}."""
        pols = zone_policies(self.config, self.zones.owners())
        return {z: p.get("tcp_syn_sent", DEFAULT_SYN_TIMEOUT) for z, p in pols.items()}

    def _publish_vm_state(self):
        """Shared state "vm-state": the VMs this host holds connection state
        or SNAT forwarders of (they left), per chain, so the controller
        keeps the slice here meanwhile (its new host may still ask for the
        state; its SNAT replies still come here to be forwarded)."""
        vms = self.migrations.held_vms() if self.migrations is not None else set()
        wanted = set()
        for s in self.service.slices.values():
            mb = vmstate.chain_of(s.config)[0]
            wanted.update((mb, vm.name) for vm in s.config.vms if vm.name in vms)
        for mb, vm in self._vm_state - wanted:
            self.shared.withdraw(mb, VM_STATE, vm)
        for mb, vm in wanted - self._vm_state:
            self.shared.publish(mb, VM_STATE, vm, 1)
        self._vm_state = wanted

    def _log_db_connections(self):
        up = self.conf.connected()
        for name, title in (("sb", "southbound"), ("nb", "northbound")):
            if up[name] and not self._db_up[name]:
                LOG.info("%s database: monitoring", title)
            elif self._db_up[name] and not up[name]:
                LOG.warning("%s database: connection lost; keeping the last "
                            "configuration until it is back", title)
        self._db_up = up

    # -------------------------------------------------------------- loop
    def run(self, server):
        while not self.exiting:
            now = time.time()
            changed = self.conf.run()
            self._log_db_connections()
            if changed:
                self._note_departures(self.conf.config())
                self.config = self.conf.config()
                self.shared.set_config(self.config)
                self.service.configure(self.config)
                self._dirty_plane = True
            elif self.shared.host_config is None and self.conf.synced():
                self.shared.set_config(self.conf.config())   # settled, no slices
            self.shared.pull()          # other hosts' shared rows, if changed
            if not self.of.connected:
                self._switch_reconnect()
            try:
                if not self.recovered and self.conf.synced() and self.of.connected:
                    # Only with the config: the zones in the flows are matched
                    # to their VMs by it, and a plane computed without it
                    # would drop every slice.  Until then the switch goes on
                    # alone.
                    self.config = self.conf.config()
                    self.service.configure(self.config)
                    self.recover()
                if self.of.connected:
                    self.of.run()
                if self.recovered and self.of.connected:
                    self._migration_rows()
                    if self._dirty_plane or self.arrivals.changed() or \
                            self._limits_changed():
                        self.replan()
                    # The plane of the settled config is sent: a barrier says
                    # when the switch holds it (mb_cfg).
                    self.mbcfg.reporter.settled(self.conf.generation(), self.of.barrier)
                    self._packets(now)
                    self._timers(now)
            except OfConnError as err:
                self._switch_lost(err)
            if self.recovered:
                self._migration_run()
            server.run()
            self.shared.flush()         # this iteration's shared-state writes
            self.mbcfg.flush()
            metrics.publish(self.service)
            poller = ovs.poller.Poller()
            self.conf.wait(poller)
            self.shared.wait(poller)
            self.mbcfg.wait(poller)
            if self.of.connected:
                self.of.wait(poller)
            else:
                poller.timer_wait(max(0, int(1000 * (self._of_retry - time.monotonic()))))
            if self.recovered and self.of.connected:
                poller.fd_wait(self.port.fileno(), ovs.poller.POLLIN)
            server.wait(poller)
            if self.migrations is not None:
                poller.fd_wait(self.channel.fileno(), ovs.poller.POLLIN)
                self.migrations.wait(poller)
                poller.timer_wait(50)
            poller.timer_wait(200)
            poller.block()
        if self.channel is not None:
            self.channel.stop()


def _setup_logging(args):
    handlers = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(args)
    ovs.util.PROGRAM_NAME = PROGRAM
    os.makedirs(args.rundir, exist_ok=True)
    ovs.daemon.set_pidfile(os.path.join(args.rundir, PROGRAM + ".pid"))
    ovs.daemon.ignore_existing_pidfile()
    ovs.daemon.daemonize_start()
    try:
        tls.configure(args.tls, args.db, args.sb, program=PROGRAM)
    except MbxError as err:
        LOG.error("%s", err)
        print("%s: %s" % (PROGRAM, err), file=sys.stderr)
        return 1
    daemon = Daemon(args)
    ctl_path = os.path.join(args.rundir, "%s.%d.ctl" % (PROGRAM, os.getpid()))
    err, server = ovs.unixctl.server.UnixctlServer.create(ctl_path)
    if err:
        LOG.error("cannot create unixctl server at %s: %s", ctl_path, os.strerror(err))
        return 1
    appctl.register(daemon)
    signal.signal(signal.SIGTERM, lambda *_: setattr(daemon, "exiting", True))
    try:
        daemon.start()
    except MbxError as err:
        LOG.error("%s", err)
        return 1
    if args.metrics:
        metrics.serve(args.metrics)
    ovs.daemon.daemonize_complete()
    LOG.info("mbxd for host %s started (northbound %s, southbound %s, bridge %s, "
             "port %s)", args.host, args.db, args.sb, args.bridge, args.port)
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        daemon.run(server)
    finally:
        server.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
