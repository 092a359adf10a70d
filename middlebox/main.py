"""mbxd: the per-host middlebox daemon.

    mbxd --host NAME --db ADDR --bridge br-int [--port mbx-mb]

One thread runs one poll loop (as ovs-vswitchd's Python helpers do) over:

* the config DB, through a conditional monitor that holds only this host's
  slices and what they need (``middlebox.confmon``);
* the middlebox port, where slice-tagged frames arrive (``middlebox.packetio``);
* an OpenFlow 1.3 connection to the bridge's management socket, for the
  per-connection cache flows, their flow-removed messages and flow stats
  (``middlebox.ofconn``);
* the unixctl server behind ``ovs-appctl -t mbxd`` (``middlebox.appctl``);
* the TLS channel to the other hosts' daemons for migrations
  (``middlebox.migchan``, driven by ``middlebox.migration``).

All decisions are made by ``middlebox.core.MiddleboxCore``; this module only
moves bytes and messages between it and the world.  Connection state is
saved to a state file (at most once a second, when it changed) so that a
restarted daemon, together with the cache flows still in the datapath,
carries on with every established connection.
"""

import argparse
import json
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

from middlebox import appctl, metrics, migchan, pki
from middlebox.confmon import ConfigMonitor
from middlebox.core import MiddleboxCore
from middlebox.migration import MigrationManager, RowWriter
from middlebox.ofconn import OfConn
from middlebox.packetio import PacketPort
from middlebox.shared import SharedState
from ovsdb.errors import MbxError
from ryu_apps import pipeline as P

LOG = logging.getLogger("mbxd")
PROGRAM = "mbxd"
BATCH = 64                  # frames read per wake-up, at most
MAX_BATCHES = 16            # wake-ups' worth of frames handled before other work
STATS_INTERVAL = 2.0        # seconds between flow-stats polls of the cache flows
EXPIRE_INTERVAL = 1.0
SAVE_INTERVAL = 1.0
TICK_INTERVAL = 0.1         # health probes, shared-state publication
# A connection's cache flows wait this long before they go to OVS; a
# connection that ends within it never touches the flow table.  Every flow
# table change makes ovs-vswitchd revalidate its datapath flows, which costs
# more than the few packets a short connection sends through the daemon
# (docs/benchmarks.md, "New connections").
OFFLOAD_DELAY = 0.02


def parse_args(argv):
    rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
    p = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="this host's name (its Host row)")
    p.add_argument("--db", required=True, help="config DB remote, e.g. tcp:10.201.0.1:6641")
    p.add_argument("--bridge", default="br-int")
    p.add_argument("--port", default=P.MIDDLEBOX_PORT, help="the middlebox port's interface")
    p.add_argument("--ofp", help="OpenFlow target (default unix:RUNDIR/BRIDGE.mgmt)")
    p.add_argument("--rundir", default=rundir, help="pidfile, unixctl socket, state file")
    p.add_argument("--state-file", help="default RUNDIR/mbxd.state.json")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics over HTTP here")
    p.add_argument("--log-file")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--pki-dir", help="CA and this host's certificate for the migration "
                   "channel (ca.pem, HOST.pem, HOST.key; see mbx-pki)")
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
    args.ofp = args.ofp or "unix:%s/%s.mgmt" % (args.rundir, args.bridge)
    args.state_file = args.state_file or os.path.join(args.rundir, "mbxd.state.json")
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
        self.core = MiddleboxCore(args.host)
        self.conf = ConfigMonitor(args.db, args.host)
        # State sharing manager (middlebox.shared): services publish and read
        # through it; its writes go out on the config monitor's IDL.
        self.shared = SharedState(args.host, monitor=self.conf)
        self.core.shared = self.shared
        self.of = None
        self.port = None
        self.exiting = False
        self.dirty = False
        self._next = {"stats": 0.0, "expire": 0.0, "save": 0.0, "tick": 0.0}
        self.restored = False
        self._held = {}             # barrier xid -> frames waiting for their flows
        self._pending_add = {}      # Flow.key -> cache flow waiting for OFFLOAD_DELAY
        self._pending_del = []
        self._pending_since = None
        self.channel = None
        self.migrations = None      # middlebox.migration.MigrationManager
        self._mig_seqno = None
        self.core.hold_enabled = False

    # ------------------------------------------------------------ start
    def start(self):
        self.of = self._connect_openflow()
        self.port = PacketPort(self.args.port)
        if self.args.no_migration:
            LOG.info("state migration is off")
        elif not self.args.pki_dir:
            LOG.warning("no --pki-dir: state migration is off")
        else:
            self._start_migrations()

    def _start_migrations(self):
        files = pki.host_files(self.args.pki_dir, self.args.host)
        self.channel = migchan.Channel(self.args.host, files, self.args.migration_listen)
        self.channel.start()
        self.migrations = MigrationManager(
            self.args.host, self.core, self.channel,
            RowWriter(self.conf, self.args.host),
            apply=self._apply, barrier=self.of.barrier,
            dump=lambda _tags: self.of.request_flow_stats(P.DAEMON_COOKIE, P.COOKIE_MASK),
            send=self._send_results, ttl=self.args.migration_ttl)
        self.core.hold_enabled = True
        if self.args.migration_listen:
            LOG.info("accepting migrated state on %s:%d", *self.channel.listen_address)

    def _connect_openflow(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            of = OfConn(self.args.ofp)
            try:
                of.connect()
            except MbxError as err:
                if time.monotonic() > deadline:
                    raise
                LOG.info("waiting for %s: %s", self.args.ofp, err)
                time.sleep(0.5)
                continue
            of.on_flow_removed = self._flow_removed
            of.on_flow_stats = self._flow_stats
            of.on_barrier = self._barrier
            return of

    def restore(self, now):
        """Rebuild connection state from the state file and the cache flows
        still in the datapath (a restart after a crash or an upgrade)."""
        saved = {}
        try:
            with open(self.args.state_file) as f:
                saved = json.load(f)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            LOG.warning("state file %s unreadable, rebuilding from the datapath "
                        "alone: %s", self.args.state_file, err)
        flows = [f for f, _, _, _ in self.of.dump_flows(P.DAEMON_COOKIE, P.COOKIE_MASK)]
        changes = self.core.import_state(saved, flows, now)
        # Flows that fit no entry are deleted only when the config is known:
        # without it every flow would look orphaned.
        self._apply(changes.add, changes.delete if self.conf.synced() else [])
        n = self.core.conn_count()["total"]
        LOG.info("restored %d connections (%d cache flows in the datapath)", n, len(flows))
        self.restored = True

    # ------------------------------------------------------------ events
    def _flow_removed(self, cookie, _table, _priority, _match, _reason, packet_count,
                      byte_count, _duration):
        # The switch sends these to every connection that takes async messages:
        # only the daemon's own cache entries concern it.
        if cookie & P.COOKIE_MASK == P.DAEMON_COOKIE:
            self.core.flow_removed(cookie, packet_count, byte_count, time.time(),
                                   table_id=_table)
            self.dirty = True

    def _flow_stats(self, xid, entries):
        if self.migrations is not None and self.migrations.on_dump(xid, entries, time.monotonic()):
            return
        orphans = self.core.flow_stats(
            [(f, packets, nbytes) for f, packets, nbytes, _ in entries], time.time())
        self._apply([], orphans)
        self.dirty = True

    def _apply(self, add, delete):
        """Send cache flow changes now (after any that are waiting)."""
        self._queue_flows(add, delete)
        self._flush_flows()

    def _queue_flows(self, add, delete):
        """Hold flow changes for OFFLOAD_DELAY.  A delete of a flow whose add
        is still waiting cancels both: OVS never sees that flow.  (The core
        adds only flows it does not believe installed, so a waiting add never
        hides an installed flow of the same key.)"""
        for flow in delete:
            if self._pending_add.pop(flow.key, None) is None:
                self._pending_del.append(flow)
        for flow in add:
            self._pending_add[flow.key] = flow
        if self._pending_since is None and (self._pending_add or self._pending_del):
            self._pending_since = time.monotonic()

    def _flush_flows(self):
        """Send the waiting changes: deletes first, then adds (a flow deleted
        and added again ends up added)."""
        if self._pending_add or self._pending_del:
            add, delete = list(self._pending_add.values()), self._pending_del
            self._pending_add, self._pending_del = {}, []
            self.of.send_flows(add, delete)
            self.dirty = True
        self._pending_since = None

    def _flows_due(self, mono):
        return self._pending_since is not None and mono - self._pending_since >= OFFLOAD_DELAY

    def _barrier(self, xid):
        for out, out_tci in self._held.pop(xid, ()):
            self.port.send(out, out_tci)
        if self.migrations is not None:
            self.migrations.on_barrier(xid, time.monotonic())

    def _send_results(self, results):
        """Carry out core Results: frames out, flows, and the frames held
        back until their flows are in (a translated connection's first
        packet must not overtake its reply catcher: OpenFlow barrier)."""
        add, delete, held = [], [], []
        for res in results:
            for out, out_tci in res.out:
                self.port.send(out, out_tci)
            add.extend(res.add)
            delete.extend(res.delete)
            held.extend(res.held)
        self._queue_flows(add, delete)
        if held:
            self._flush_flows()
            self._held[self.of.barrier()] = held

    def _migration_run(self):
        mig = self.migrations
        if mig is None:
            return
        mono = time.monotonic()
        seqno = self.conf.data_seqno()
        if seqno != self._mig_seqno and self.conf.synced():
            self._mig_seqno = seqno
            mig.set_rows(self.conf.migrations(), self.conf.peers(), mono)
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
            self._send_results([self.core.handle_frame(frame, tci if tci is not None else 0,
                                                       now) for frame, tci in frames])
            self._drain_log()

    def _drain_log(self):
        if self.core.log:
            for line in self.core.log:
                LOG.warning("%s", line)
            del self.core.log[:]

    def _timers(self, now):
        mono = time.monotonic()
        if mono >= self._next["tick"]:
            self._next["tick"] = mono + TICK_INTERVAL
            for out, out_tci in self.core.tick(now):
                self.port.send(out, out_tci)
            self._drain_log()
        if mono >= self._next["stats"]:
            self._next["stats"] = mono + STATS_INTERVAL
            self.of.request_flow_stats(P.DAEMON_COOKIE, P.COOKIE_MASK)
        if mono >= self._next["expire"]:
            self._next["expire"] = mono + EXPIRE_INTERVAL
            self._apply([], self.core.expire(now))
        if self.dirty and mono >= self._next["save"]:
            self._next["save"] = mono + SAVE_INTERVAL
            self.save_state()

    def save_state(self):
        tmp = self.args.state_file + ".tmp"
        with open(tmp, "w") as f:
            # dumps, not dump: json.dump streams through the pure-Python
            # encoder, about ten times slower, and the loop waits for it.
            f.write(json.dumps(self.core.export_state(), separators=(",", ":")))
        os.replace(tmp, self.args.state_file)
        self.dirty = False

    # -------------------------------------------------------------- loop
    def run(self, server):
        wait_until = time.monotonic() + 5
        while not self.exiting:
            now = time.time()
            if self.conf.run():
                self.shared.set_config(self.conf.config())
                changes = self.core.configure(self.conf.config(), now)
                self._apply(changes.add, changes.delete)
            elif self.shared.host_config is None and self.conf.synced():
                self.shared.set_config(self.conf.config())   # settled, no slices
            self.shared.pull()          # other hosts' shared rows, if changed
            if not self.restored and (self.conf.synced() or time.monotonic() > wait_until):
                # Restore once the slices are known, so entries find their slice.
                self.restore(now)
            self.of.run()
            if self.restored:
                # Nothing that judges cache flows runs before the restore: a
                # stats poll would find every flow of the old daemon orphaned.
                self._packets(now)
                if self._flows_due(time.monotonic()):
                    self._flush_flows()
                self._timers(now)
                self._migration_run()
            server.run()
            self.shared.flush()         # this iteration's shared-state writes
            metrics.publish(self.core)
            poller = ovs.poller.Poller()
            self.conf.wait(poller)
            self.shared.wait(poller)
            self.of.wait(poller)
            if self.restored:
                poller.fd_wait(self.port.fileno(), ovs.poller.POLLIN)
            server.wait(poller)
            if self.migrations is not None:
                poller.fd_wait(self.channel.fileno(), ovs.poller.POLLIN)
                self.migrations.writer.wait(poller)
                poller.timer_wait(50)
            if self._pending_since is not None:
                poller.timer_wait(max(0, int(1000 * (self._pending_since + OFFLOAD_DELAY
                                                     - time.monotonic())) + 1))
            poller.timer_wait(200)
            poller.block()
        self._flush_flows()
        self.save_state()
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
    LOG.info("mbxd for host %s started (db %s, bridge %s, port %s)",
             args.host, args.db, args.bridge, args.port)
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
