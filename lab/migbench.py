"""Migration benchmarks (part of ``make bench``; ``python -m lab.migbench``
alone prints JSON).

1. ``transfer(sizes)``: the time to move the state of N connections of one
   VM, phase by phase, with the real pieces of mbxd: a source
   ``MiddleboxCore`` holding N connections built from real frames
   (``handle_frame``: a third plain firewall, a third load balancer, a third
   SNAT), ``gather`` (service mode; datapath mode too for the sizes in
   ``datapath_for``: a flow-stats dump of the source's cache flows from a real
   bridge, then ``gather``), the protocol's messages (hello, one ``state``
   snapshot, ``final`` with count and digest) through a real
   ``migchan.Channel`` pair over TLS on 127.0.0.1 (certificates from ``pki``
   in a temporary directory), the destination's digest check and
   ``import_vm``, and the resulting flows sent with ``OfConn.send_flows`` to a
   netdev bridge of a private ovs-vswitchd (in its own namespace
   ``mbxb-xfer``), timed to the barrier reply.  Then the ack back.
2. ``gaps(...)``: the largest reply gap a migration causes, mbx against the
   same re-plumb on a switch without middleboxes, per path (announced,
   unannounced), over many moves on a 3-host lab (prefix ``mbxb``).
3. ``survival(...)``: the share of established connections that survive a
   migration with mbx (the migscenario, both paths) against the OVS-conntrack
   baseline (``lab.ctbaseline.run``, no state transfer), per kind.
"""

import argparse
import json
import os
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from lab.sh import counts_arg

PREFIX = "mbxb"
RUNDIR = "/run/mbx-bench"
SIZES = (1000, 10000, 100000)

# ------------------------------------------------------------------ 1. transfer
VM, PEER_VM = "mv", "peer"
SRC_HOST, DST_HOST = "hsrc", "hdst"
SRC_TAG, DST_TAG = 7, 9
SUBNET, GATEWAY = "10.9.0.0/24", "10.9.0.1"
VM_MAC, VM_IP = "02:00:00:09:00:0a", "10.9.0.10"
PEER_MAC, PEER_IP = "02:00:00:09:00:14", "10.9.0.20"
BACKENDS = (("b1", "02:00:00:09:00:1f", "10.9.0.31"), ("b2", "02:00:00:09:00:20", "10.9.0.32"),
            ("b3", "02:00:00:09:00:21", "10.9.0.33"))
VIP, VIP_PORT, BACKEND_PORT = "10.9.0.100", 80, 8080
SERVER, SERVER_PORT = "198.51.100.10", 80
EXT_IP, EXT_GW_MAC = "203.0.113.100", "02:ee:ff:00:00:01"
KINDS = ("fw", "lb", "snat")


def _slice_config(host, tag):
    from middlebox.config import (HostConfig, NatRuleSpec, RuleSpec, ServiceSpec,
                                  SliceConfig, VipSpec, VmSpec)
    fw = ServiceSpec("fw-x", "firewall", "deny", {}, (
        RuleSpec(100, "from-vm", "proto=tcp", "allow", "tenant", "r-out"),
        RuleSpec(100, "to-vm", "proto=tcp dport=%d" % BACKEND_PORT, "allow", "tenant", "r-be")))
    lb = ServiceSpec("lb-x", "lb", vips=(VipSpec(
        "vip-1", VIP, VIP_PORT, "tcp", "round-robin",
        tuple(sorted((ip, BACKEND_PORT) for _, _, ip in BACKENDS)),
        {"health-check": "none"}),))
    snat = NatRuleSpec("snat-1", "snat", (EXT_IP,), "", port_range=(1024, 65535))
    nat = ServiceSpec("nat-x", "nat", nat_rules=(snat,))
    vms = (VmSpec(VM, VM_MAC, VM_IP, SRC_HOST), VmSpec(PEER_VM, PEER_MAC, PEER_IP, "hpeer")) \
        + tuple(VmSpec(n, m, ip, "hpeer") for n, m, ip in BACKENDS)
    block = (EXT_IP, 1024, 65535) if host == SRC_HOST else (EXT_IP, 1024, 1027)
    return HostConfig(host, {tag: SliceConfig(
        tag=tag, middlebox="fw-x", type="firewall", tenant="x", switch="ls-x", vni=900,
        default_action="deny", options={}, rules=fw.rules, vms=vms, services=(fw, lb, nat),
        subnet=SUBNET, gateway=GATEWAY, snat_blocks={"snat-1": block})})


def _frame(src_mac, dst_mac, src, dst, sport, dport, flags):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1 if flags & 0x10 else 0,
                      0x50, flags, 1024, 0, 0)
    return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
            + b"\x08\x00" + ip + tcp)


def build_source(n):
    """A source core with ``n`` established TCP connections of VM ``mv``
    (kinds in turn: fw to a peer VM, lb to the VIP, snat to a server on
    the internet), each from its SYN and SYN-ACK through ``handle_frame``.
    Returns (core, {flow key: Flow} of its installed cache flows)."""
    from middlebox.core import MiddleboxCore
    from middlebox.packet import ip_text, parse_frame
    from ryu_apps import pipeline as P
    core = MiddleboxCore(SRC_HOST)
    core.configure(_slice_config(SRC_HOST, SRC_TAG), 0.0)
    R = P.ROUTER_MAC
    from_vm, to_vm = P.STAGE_FROM_VM << 13 | SRC_TAG, P.STAGE_TO_VM << 13 | SRC_TAG
    ext_in = P.STAGE_FROM_EXTERNAL << 13 | SRC_TAG
    bmac = {ip: mac for _, mac, ip in BACKENDS}
    flows = {}

    def take(res):
        for f in res.delete:
            flows.pop(f.key, None)
        for f in res.add:
            flows[f.key] = f
    for i in range(n):
        kind, j = KINDS[i % 3], i // 3
        sport = 1024 + j % 64000
        if kind == "fw":
            dport = 7000 + j // 64000
            take(core.handle_frame(_frame(VM_MAC, PEER_MAC, VM_IP, PEER_IP, sport, dport, 0x02),
                                   from_vm, 1.0))
            res = core.handle_frame(_frame(PEER_MAC, VM_MAC, PEER_IP, VM_IP, dport, sport, 0x12),
                                    to_vm, 1.0)
        elif kind == "lb":
            res = core.handle_frame(_frame(VM_MAC, R, VM_IP, VIP, sport, VIP_PORT, 0x02),
                                    from_vm, 1.0)
            take(res)
            backend = ip_text(parse_frame(res.held[0][0], 0).dst)
            res = core.handle_frame(_frame(bmac[backend], VM_MAC, backend, VM_IP, BACKEND_PORT,
                                           sport, 0x12), to_vm, 1.0)
        else:
            res = core.handle_frame(_frame(VM_MAC, R, VM_IP, SERVER, sport, SERVER_PORT, 0x02),
                                    from_vm, 1.0)
            take(res)
            ext_port = parse_frame(res.out[0][0], 0).sport
            res = core.handle_frame(_frame(EXT_GW_MAC, R, SERVER, EXT_IP, SERVER_PORT,
                                           ext_port, 0x12), ext_in, 1.0)
        if res.verdict != "allow":
            raise RuntimeError("connection %d (%s) not allowed: %s" % (i, kind, res))
        take(res)
    count = core.conn_count()["total"]
    if count != n:
        raise RuntimeError("built %d connections, not %d" % (count, n))
    return core, flows


class Bridge:
    """A private ovsdb-server + ovs-vswitchd in netns ``mbxb-xfer`` with
    netdev bridges (no ports, no traffic): somewhere real to install flows.
    Ends its two daemons by the PIDs in their pidfiles."""

    def __init__(self, rundir, bridges=("br-src", "br-dst"), prefix=PREFIX):
        self.ns = "%s-xfer" % prefix
        self.dir = os.path.join(rundir, "xfer")
        self.bridges = bridges
        self.pids = []

    def _run(self, cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns] + cmd, check=True,
                              capture_output=True, text=True, timeout=600, **kw)

    def up(self):
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        db = os.path.join(self.dir, "conf.db")
        subprocess.run(["ovsdb-tool", "create", db,
                        "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
        env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_LOGDIR=self.dir, OVS_DBDIR=self.dir)
        self._run(["ovsdb-server", db, "--remote=punix:%s/db.sock" % self.dir,
                   "--pidfile=%s/ovsdb-server.pid" % self.dir,
                   "--unixctl=%s/ovsdb-server.ctl" % self.dir,
                   "--log-file=%s/ovsdb-server.log" % self.dir, "--detach", "--no-chdir"],
                  env=env)
        self.pids.append(self._pid("ovsdb-server"))
        vsctl = ["ovs-vsctl", "--timeout=20", "--db=unix:%s/db.sock" % self.dir]
        self._run(vsctl + ["--no-wait", "init"])
        self._run(["ovs-vswitchd", "unix:%s/db.sock" % self.dir,
                   "--pidfile=%s/ovs-vswitchd.pid" % self.dir,
                   "--unixctl=%s/ovs-vswitchd.ctl" % self.dir,
                   "--log-file=%s/ovs-vswitchd.log" % self.dir, "--detach", "--no-chdir"],
                  env=env)
        self.pids.append(self._pid("ovs-vswitchd"))
        for br in self.bridges:
            self._run(vsctl + ["add-br", br, "--", "set", "bridge", br,
                               "datapath_type=netdev", "fail_mode=secure",
                               "protocols=OpenFlow13"])

    def _pid(self, name):
        with open(os.path.join(self.dir, name + ".pid")) as f:
            return int(f.read().strip())

    def target(self, br):
        return "unix:%s/%s.mgmt" % (self.dir, br)

    def down(self):
        from ovsdb.server import stop as stop_pid
        for name in ("ovs-vswitchd", "ovsdb-server"):
            try:
                pid = self._pid(name)
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    ours = self.dir.encode() in f.read()    # not a reused PID
            except (OSError, ValueError):
                ours = False
            if ours:
                stop_pid(pid)
            if not os.path.exists(os.path.join(self.dir, name + ".pid")):
                continue
            os.unlink(os.path.join(self.dir, name + ".pid"))
        self.pids = []
        if os.path.exists("/run/netns/" + self.ns):
            subprocess.run(["ip", "netns", "del", self.ns], check=False)


def _of_connect(target):
    from middlebox.ofconn import OfConn
    of = OfConn(target)
    of.barriers = set()
    of.errors = []
    of.on_barrier = of.barriers.add
    of.on_error = lambda xid, t, c: of.errors.append((xid, t, c))
    of.connect(timeout=10)
    return of


def _of_until(of, done, timeout):
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no OpenFlow reply within %.0f s" % timeout)
        select.select([of.sock], [of.sock] if of.pending_output else [], [], min(left, 0.2))
        of.run()


def install(of, flows, timeout=600):
    """send_flows + barrier, as mbxd does: (seconds until the barrier reply,
    seconds in send_flows: building and serializing the FLOW_MODs)."""
    t0 = time.perf_counter()
    of.send_flows(list(flows))
    t1 = time.perf_counter()
    xid = of.barrier()
    _of_until(of, lambda: xid in of.barriers, timeout)
    return time.perf_counter() - t0, t1 - t0


class _Pair:
    """A source and a destination ``migchan.Channel`` on 127.0.0.1 with
    certificates from a fresh CA in a temporary directory."""

    def __init__(self):
        from middlebox import migchan, pki
        self.tmp = tempfile.mkdtemp(prefix="mbxb-pki-")
        pki.init_ca(self.tmp)
        self.src = migchan.Channel(SRC_HOST, pki.issue_host(self.tmp, SRC_HOST))
        self.dst = migchan.Channel(DST_HOST, pki.issue_host(self.tmp, DST_HOST),
                                   listen=("127.0.0.1", 0))
        self.src.start()
        self.dst.start()
        self.address = "ssl:%s:%d" % self.dst.listen_address
        self.n = 0
        self.backlog = {}       # events read but not yet wanted, per channel

    def wait(self, chan, want, timeout=120):
        """Events of ``chan`` until ``want(event)``; returns that event."""
        deadline = time.monotonic() + timeout
        backlog = self.backlog.setdefault(id(chan), [])
        while True:
            backlog.extend(chan.events())
            while backlog:
                ev = backlog.pop(0)
                if ev.kind == "closed" and ev.reason not in ("eof", "closed"):
                    raise RuntimeError("migration session %s closed: %s" % (ev.sid, ev.reason))
                if want(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no migration channel event within %.0f s" % timeout)
            select.select([chan.fileno()], [], [], min(left, 0.5))

    def stop(self):
        self.src.stop()
        self.dst.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _move(src, n, pair, of_dst):
    """Gather, transfer, import and install the state of ``n`` connections of
    ``src`` (one move, into a fresh destination core); its figures."""
    import gc
    from middlebox import vmstate
    from middlebox.gcpause import gc_paused
    from middlebox.core import MiddleboxCore
    # gather (service mode)
    gc.collect()
    t0 = time.perf_counter()
    records = src.gather(VM, "service")
    t_gather = time.perf_counter() - t0
    if len(records) != n:
        raise RuntimeError("gathered %d records, not %d" % (len(records), n))
    dst = MiddleboxCore(DST_HOST)
    dst.configure(_slice_config(DST_HOST, DST_TAG), 0.0)
    pair.n += 1
    sid, mig = "out-%d" % pair.n, "bench-%d" % pair.n
    pair.src.connect(sid, pair.address, DST_HOST)
    pair.wait(pair.src, lambda ev: ev.sid == sid and ev.kind == "connected")
    # transfer: the source encodes and sends hello, the snapshot and final
    # (with its digest); the destination has decoded them all.
    # (as mbxd: no cyclic collection while encoding and keying the records).
    t0 = time.perf_counter()
    from middlebox.migration import PROTOCOL_VERSION
    with gc_paused():
        pair.src.send(sid, {"type": "hello", "version": PROTOCOL_VERSION, "migration": mig,
                            "token": "t" * 32, "vm": VM, "source": SRC_HOST,
                            "destination": DST_HOST})
        pair.src.send(sid, {"type": "state", "migration": mig, "seq": 1, "kind": "snapshot",
                            "records": records, "removed": []})
        t_json = time.perf_counter() - t0
        sent = {vmstate.record_key(r): r for r in records}
        pair.src.send(sid, {"type": "final", "migration": mig, "seq": 2, "count": len(sent),
                            "digest": vmstate.digest(sent.values())})
    t_encoded = time.perf_counter() - t0
    del records, sent
    staged, final, sizes = {}, None, 0
    in_sid = None
    while final is None:
        ev = pair.wait(pair.dst, lambda ev: ev.kind in ("accepted", "message"))
        if ev.kind == "accepted":
            in_sid = ev.sid
            continue
        sizes += ev.size or 0
        msg = ev.message
        if msg["type"] == "state":
            with gc_paused():       # as mbxd stages them
                for rec in msg["records"]:
                    staged[vmstate.record_key(rec)] = rec
        elif msg["type"] == "final":
            final = msg
    t_transfer = time.perf_counter() - t0
    gc.collect()
    # import: the destination checks count and digest, then import_vm
    # (which checks every record first).
    t0 = time.perf_counter()
    got = list(staged.values())
    if final["count"] != len(got) or final["digest"] != vmstate.digest(got):
        raise RuntimeError("transfer of %d records arrived corrupt" % n)
    changes, imported = dst.import_vm(VM, got, time.time())
    t_import = time.perf_counter() - t0
    del staged, got
    # flows: the destination's new cache flows into its bridge, to the barrier.
    t_flows, t_serialize = install(of_dst, changes.add)
    pair.dst.send(in_sid, {"type": "ack", "migration": mig, "entries": imported,
                           "flows": len(changes.add)})
    pair.wait(pair.src, lambda ev: ev.sid == sid and ev.kind == "message"
              and ev.message.get("type") == "ack")
    t_total = time.perf_counter() - t0 + t_transfer + t_gather
    sent_bytes, _ = pair.src.stats(sid)
    pair.src.close(sid)
    errors = of_dst.errors
    if errors:
        raise RuntimeError("OpenFlow errors installing flows: %s" % errors[:3])
    if imported != n or dst.conn_count()["total"] != n:
        raise RuntimeError("imported %d of %d" % (dst.conn_count()["total"], n))
    return {"t_gather": t_gather, "t_transfer": t_transfer, "t_import": t_import,
            "t_flows": t_flows, "t_serialize": t_serialize, "t_encoded": t_encoded,
            "t_json": t_json,
            "t_total": t_total, "sent_bytes": sent_bytes, "sizes": sizes,
            "flows": len(changes.add)}


def _profile_top(prof, count=12):
    """The ``count`` functions with the most cumulative time in ``prof``
    (after the move itself): [[function, cumulative ms]]."""
    import pstats
    stats = pstats.Stats(prof).stats
    rows = []
    for (path, line, name), (_, _, _, cum, _) in stats.items():
        if name in ("_move", "<lambda>", "<built-in method gc.collect>") \
                or name.startswith("<method 'disable'"):
            continue
        where = name if path == "~" else "%s:%d(%s)" % (
            "/".join(path.split("/")[-2:]), line, name)
        rows.append([where, round(cum * 1000, 1)])
    rows.sort(key=lambda r: -r[1])
    return rows[:count]


def transfer_one(n, pair, bridge, datapath=False, out=print):
    """One transfer of ``n`` connections; phases in ms."""
    import gc
    from ryu_apps import pipeline as P
    t0 = time.perf_counter()
    src, src_flows = build_source(n)
    build_s = time.perf_counter() - t0
    res = {"connections": n, "build_s": round(build_s, 2), "source_flows": len(src_flows)}
    of_src = _of_connect(bridge.target("br-src"))
    of_dst = _of_connect(bridge.target("br-dst"))
    try:
        if datapath:
            # The source's cache flows in a real bridge, then mbxd's datapath
            # gather: one flow-stats dump of the daemon's cookie, then gather().
            install(of_src, src_flows.values())
            gc.collect()
            t0 = time.perf_counter()
            entries = of_src.dump_flows(P.DAEMON_COOKIE, P.COOKIE_MASK, timeout=120)
            t1 = time.perf_counter()
            dp_records = src.gather(VM, "datapath",
                                    [(f, pk, nb) for f, pk, nb, *_ in entries])
            t2 = time.perf_counter()
            res["gather_datapath"] = {"dump_ms": round((t1 - t0) * 1000, 1),
                                      "gather_ms": round((t2 - t1) * 1000, 1),
                                      "total_ms": round((t2 - t0) * 1000, 1),
                                      "flows_dumped": len(entries),
                                      "records": len(dp_records)}
            del entries, dp_records
        m = _move(src, n, pair, of_dst)
        if of_src.errors:
            raise RuntimeError("OpenFlow errors installing flows: %s" % of_src.errors[:3])
        t_gather, t_transfer, t_import, t_flows = (m["t_gather"], m["t_transfer"],
                                                   m["t_import"], m["t_flows"])
        # The same move again under cProfile (main thread: the channel's
        # threads, TLS and JSON decoding, show as waiting), for where the
        # time goes; into the emptied destination bridge.
        import cProfile
        bridge._run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge.target("br-dst")])
        prof = cProfile.Profile()
        prof.enable()
        _move(src, n, pair, of_dst)
        prof.disable()
        res["profile_top"] = _profile_top(prof)
        phases = {"gather": t_gather, "transfer": t_transfer, "import": t_import,
                  "flows": t_flows}
        res.update({
            "ms": {k: round(v * 1000, 1) for k, v in phases.items()},
            "entries_per_s": {k: round(n / v) for k, v in phases.items()},
            "encode_ms": round(m["t_encoded"] * 1000, 1),
            "encode_json_ms": round(m["t_json"] * 1000, 1),
            "total_ms": round(sum(phases.values()) * 1000, 1),
            "total_with_ack_ms": round(m["t_total"] * 1000, 1),
            "wire_bytes": m["sent_bytes"], "message_bytes": m["sizes"],
            "flows_installed": m["flows"],
            "flows_per_s": round(m["flows"] / t_flows),
            "flows_serialize_ms": round(m["t_serialize"] * 1000, 1)})
        out("transfer %6d connections: gather %.1f ms, transfer %.1f ms, import %.1f ms, "
            "flows %.1f ms (%d flows), %d bytes%s"
            % (n, *(res["ms"][k] for k in ("gather", "transfer", "import", "flows")),
               m["flows"], m["sent_bytes"],
               "; datapath gather %.1f ms" % res["gather_datapath"]["total_ms"]
               if datapath else ""))
        return res
    finally:
        of_src.close()
        of_dst.close()
        # The bridge is reused: leave it empty for the next size.
        for br in bridge.bridges:
            bridge._run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge.target(br)])


def transfer(sizes=SIZES, datapath_for=(10000,), rundir=RUNDIR, out=print, prefix=PREFIX):
    bridge = Bridge(rundir, prefix=prefix)
    pair = None
    try:
        bridge.up()
        pair = _Pair()
        return {str(n): transfer_one(n, pair, bridge, datapath=n in datapath_for, out=out)
                for n in sizes}
    finally:
        if pair is not None:
            pair.stop()
        bridge.down()


# ------------------------------------------------------- 2./3. gaps, survival
HOSTS = ["h1", "h2", "h3"]
PATHS = ("announced", "unannounced")
VM_KINDS = ("fw-in", "fw-out")             # the kinds a switch without middleboxes has too
PLAIN_SWITCH, PLAIN_VNI, PLAIN_TENANT = "ls-plain", 101, "plain"
# The plain twins of mv and peer: same addresses, a switch without steering.
PLAIN_VMS = {"pmv": ("10.0.0.10", "h1"), "ppeer": ("10.0.0.20", "h3")}
PLAIN_MOVER = {"mv": "pmv"}


def _pct(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    rank = max(1, -(-len(xs) * q // 100))
    return xs[int(rank) - 1]


def _dist(values):
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 1),
            "p99": round(_pct(values, 99), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "samples": [round(v, 1) for v in values]}


class _PlainConns:
    """The migscenario's VM-to-VM connections, on the plain switch: pmv
    serves 7000 (fw-in from ppeer), ppeer serves 7001 (fw-out from pmv)."""

    def __init__(self, lab, rundir):
        self.lab, self.rundir = lab, rundir
        self.probes = {}

    def build(self):
        from lab import ctbaseline as CT
        from lab.migscenario import _ok
        _ok(self.lab, "ls-add", PLAIN_SWITCH, "--vni", str(PLAIN_VNI), "--subnet", CT.SUBNET,
            "--tenant", PLAIN_TENANT, "--gateway", CT.GATEWAY_IP)
        for vm, (ip, host) in PLAIN_VMS.items():
            self.lab.vm_add(vm, host, PLAIN_SWITCH, "%s/%d" % (ip, CT.PREFIXLEN))
        py = sys.executable
        for vm, port in (("pmv", CT.FW_IN_PORT), ("ppeer", CT.FW_OUT_PORT)):
            self.lab.spawn(vm, [py, "-m", "lab.probe", "serve", "--port", str(port)],
                           os.path.join(self.rundir, "%s.serve.log" % vm))

    def open(self, per_kind, duration=60):
        from lab import ctbaseline as CT
        from lab.probe import Conns
        from lab.sh import wait_until
        self.total = 2 * per_kind
        self.probes = {
            "pmv": Conns(self.lab, "pmv", [("fw-out", PLAIN_VMS["ppeer"][0], CT.FW_OUT_PORT,
                                            per_kind)],
                         os.path.join(self.rundir, "plain-pmv.json"), duration=duration),
            "ppeer": Conns(self.lab, "ppeer", [("fw-in", PLAIN_VMS["pmv"][0], CT.FW_IN_PORT,
                                                per_kind)],
                           os.path.join(self.rundir, "plain-ppeer.json"), duration=duration)}

        def ready():
            conns = self.snapshot()
            return len(conns) == self.total and all(
                c["connected"] and c["error"] is None and c["received"] >= 10
                for c in conns.values())
        wait_until(ready, 20, interval=0.05, what="the plain connections to exchange echoes")

    def snapshot(self):
        from lab import ctbaseline as CT
        return CT._by_name(*[p.read() for p in self.probes.values()])

    def wait_flowing(self, since, replies=10, timeout=7):
        from lab.migscenario import Scenario
        return Scenario.wait_flowing(self, since, replies, timeout)

    def stop(self):
        from lab import ctbaseline as CT
        finals = [p.stop() for p in self.probes.values()]
        self.probes = {}
        return CT._by_name(*finals)


def _one_move(lab, sc, vm, to, notify, per_kind):
    """Fresh connections, one move, their fate: (summary, gaps by kind)."""
    from lab import ctbaseline as CT
    sc.open(per_kind=per_kind, duration=60)
    try:
        before = sc.snapshot()
        steps = lab.migrate(vm, to, notify=notify)
        at_move = sc.snapshot()
        sc.wait_flowing(at_move, replies=10, timeout=7)
    finally:
        final = sc.stop()
    summary = CT.summarize(before, at_move, final, steps, 0.0)
    by_kind = {}
    for name, gap in summary["max_gap_ms"].items():
        kind = name.split("#")[0]
        by_kind[kind] = max(by_kind.get(kind, 0.0), gap)
    return summary, by_kind


def moves(moves_per_path=10, per_kind=3, rundir=RUNDIR, out=print):
    """The 3-host lab: the migscenario (mv through fw -> lb -> SNAT) and its
    plain twin (pmv, no steering); mv and pmv move h1 <-> h2 in turn, each
    path in turn, ``moves_per_path`` times each, with fresh connections per
    move.  Returns the per-move records."""
    from lab.lab import Lab
    from lab.migscenario import Scenario
    Lab(prefix=PREFIX, rundir=rundir).down(log=lambda *_: None)     # a leftover
    lab = Lab(prefix=PREFIX, rundir=rundir)
    sc, plain = Scenario(lab, rundir), _PlainConns(lab, rundir)
    records = []
    try:
        t0 = time.monotonic()
        lab.up(HOSTS, log=lambda *_: None)
        sc.build(HOSTS)
        plain.build()
        out("migration lab up (%.0f s)" % (time.monotonic() - t0))
        for i in range(moves_per_path):
            for path in PATHS:
                for system, vm, probes in (("mbx", "mv", sc), ("plain", "pmv", plain)):
                    src = lab.state["vms"][vm]["host"]
                    to = "h2" if src == "h1" else "h1"
                    summary, gaps = _one_move(lab, probes, vm, to, path == "announced",
                                              per_kind)
                    row = lab.migration_row(vm)
                    rec = {"system": system, "path": path, "from": src, "to": to,
                           "migrate_ms": summary["migrate_ms"], "gap_by_kind_ms": gaps,
                           "kinds": summary["kinds"], "errors": summary["errors"],
                           "status": row.get("status"), "stats": row.get("stats", {})}
                    records.append(rec)
                    out("move %2d %-11s %-5s %s->%s: %d/%d survived, largest gap %s ms (%s)"
                        % (i + 1, path, system, src, to, summary["survived"],
                           summary["total"], max(gaps.values()) if gaps else "-",
                           rec["status"]))
        return records
    finally:
        try:
            sc.stop()
        except Exception:           # noqa: BLE001 - the lab goes down anyway
            pass
        lab.down(log=lambda *_: None)


def summarize_moves(records):
    """Gap distributions (per path: mbx over the VM-to-VM kinds, mbx over all
    kinds, plain) and extra gaps; survival per path and kind."""
    gaps, survival = {}, {}
    for path in PATHS:
        mbx = [r for r in records if r["system"] == "mbx" and r["path"] == path]
        plain = [r for r in records if r["system"] == "plain" and r["path"] == path]

        def largest(recs, kinds=None):
            return [max(v for k, v in r["gap_by_kind_ms"].items()
                        if kinds is None or k in kinds)
                    for r in recs if any(kinds is None or k in kinds
                                         for k in r["gap_by_kind_ms"])]
        d = {"mbx_vm_to_vm": _dist(largest(mbx, VM_KINDS)), "mbx_all_kinds": _dist(largest(mbx)),
             "plain": _dist(largest(plain))}
        for name in ("mbx_vm_to_vm", "mbx_all_kinds"):
            if d[name]["n"] and d["plain"]["n"]:
                d["extra_%s" % name[4:]] = {
                    "median": round(d[name]["median"] - d["plain"]["median"], 1),
                    "p99": round(d[name]["p99"] - d["plain"]["p99"], 1)}
        d["migrate_total_ms"] = {
            sysname: _dist([r["migrate_ms"]["total"] for r in records
                            if r["system"] == sysname and r["path"] == path])
            for sysname in ("mbx", "plain")}
        d["migrate_total_ms"] = {k: {kk: vv for kk, vv in v.items() if kk != "samples"}
                                 for k, v in d["migrate_total_ms"].items()}
        gaps[path] = d
        kinds = {}
        for r in mbx:
            for kind, c in r["kinds"].items():
                k = kinds.setdefault(kind, {"total": 0, "survived": 0})
                k["total"] += c["total"]
                k["survived"] += c["survived"]
        for k in kinds.values():
            k["share"] = round(k["survived"] / k["total"], 3) if k["total"] else None
        tot = sum(k["total"] for k in kinds.values())
        survival[path] = {"kinds": kinds, "moves": len(mbx),
                          "share": round(sum(k["survived"] for k in kinds.values()) / tot, 3)
                          if tot else None,
                          "statuses": sorted({r["status"] for r in mbx}),
                          "errors": sorted({e for r in mbx for e in r["errors"].values()})[:5]}
    return gaps, survival


def conntrack(runs=2, per_kind=3, settle=3.0, rundir=RUNDIR, out=print):
    """``lab.ctbaseline.run`` on this bench's prefix, ``runs`` times; survivors
    per kind summed over the runs, and their share."""
    from lab import ctbaseline as CT
    kinds, errors, gaps, steps = {}, {}, [], []
    for i in range(runs):
        res = CT.run(hosts=3, per_kind=per_kind, settle=settle, log=lambda *_: None,
                     prefix=PREFIX, rundir=rundir)
        for kind, c in res["kinds"].items():
            k = kinds.setdefault(kind, {"total": 0, "survived": 0})
            k["total"] += c["total"]
            k["survived"] += c["survived"]
        errors.update({"run%d/%s" % (i + 1, n): e for n, e in res["errors"].items()})
        gaps.append(max(res["max_gap_ms"].values()) if res["max_gap_ms"] else None)
        steps.append(res["migrate_ms"].get("total"))
        out("conntrack baseline run %d: %d/%d survived (%s)" % (
            i + 1, res["survived"], res["total"], ", ".join(
                "%s %d/%d" % (kind, k["survived"], k["total"])
                for kind, k in sorted(res["kinds"].items()))))
    for k in kinds.values():
        k["share"] = round(k["survived"] / k["total"], 3) if k["total"] else None
    total = sum(k["total"] for k in kinds.values())
    return {"runs": runs, "kinds": kinds,
            "share": round(sum(k["survived"] for k in kinds.values()) / total, 3),
            "errors": dict(list(errors.items())[:6]), "largest_gap_ms": gaps,
            "migrate_total_ms": steps}


def run(sizes=SIZES, moves_per_path=10, per_kind=3, ct_runs=2, rundir=RUNDIR, out=print):
    """Everything, in order: transfer sizes, moves (gaps, survival), the
    conntrack baseline.  Returns the results dict (see ``summarize``)."""
    t0 = time.monotonic()
    res = {"transfer": transfer(sizes, rundir=rundir, out=out)}
    t1 = time.monotonic()
    records = moves(moves_per_path, per_kind, rundir=rundir, out=out)
    t2 = time.monotonic()
    res["conntrack"] = conntrack(ct_runs, per_kind, rundir=rundir, out=out)
    t3 = time.monotonic()
    res["gaps"], res["survival_mbx"] = summarize_moves(records)
    res["moves"] = records
    res["method"] = {"sizes": list(sizes), "moves_per_path": moves_per_path,
                     "per_kind": per_kind, "conntrack_runs": ct_runs,
                     "seconds": {"transfer": round(t1 - t0), "moves": round(t2 - t1),
                                 "conntrack": round(t3 - t2)}}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.migbench", description=(
        "Migration benchmarks: state transfer time by size, the reply gap a "
        "migration adds, and connection survival against OVS conntrack; prints JSON."))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), type=counts_arg,
                   help="connection counts for the transfer timing (comma-separated)")
    p.add_argument("--moves", type=int, default=10, help="moves per path and system (1-30)")
    p.add_argument("--per-kind", type=int, default=3)
    p.add_argument("--conntrack-runs", type=int, default=2)
    p.add_argument("--only", choices=("transfer",),
                   help="run only this part (transfer: the state-move timing by size)")
    p.add_argument("--rundir", default=RUNDIR, help="run directory (default %(default)s)")
    p.add_argument("--prefix", default=PREFIX,
                   help="name prefix of the namespaces (default %(default)s)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m lab.migbench needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = args.sizes
    if args.only == "transfer":
        res = {"transfer": transfer(sizes, rundir=args.rundir, prefix=args.prefix,
                                    out=lambda msg: print(msg, file=sys.stderr))}
        print(json.dumps(res, indent=1, sort_keys=True))
        return 0
    res = run(sizes, max(1, min(args.moves, 30)), args.per_kind,
              max(1, min(args.conntrack_runs, 10)), out=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
