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

    def __init__(self, rundir, bridges=("br-src", "br-dst")):
        self.ns = "%s-xfer" % PREFIX
        self.dir = os.path.join(rundir, "xfer")
        self.bridges = bridges
        self.pids = []

    def _run(self, cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns] + cmd, check=True,
                              capture_output=True, text=True, timeout=60, **kw)

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
                               "protocols=OpenFlow13,OpenFlow14"])

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


def install(of, flows, timeout=300):
    """send_flows + barrier; seconds until the barrier reply."""
    t0 = time.perf_counter()
    of.send_flows(list(flows))
    xid = of.barrier()
    _of_until(of, lambda: xid in of.barriers, timeout)
    return time.perf_counter() - t0


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


def transfer_one(n, pair, bridge, datapath=False, out=print):
    """One transfer of ``n`` connections; phases in ms."""
    import gc
    from middlebox import vmstate
    from middlebox.core import MiddleboxCore
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
        t0 = time.perf_counter()
        pair.src.send(sid, {"type": "hello", "version": 1, "migration": mig, "token": "t" * 32,
                            "vm": VM, "source": SRC_HOST, "destination": DST_HOST})
        pair.src.send(sid, {"type": "state", "migration": mig, "seq": 1, "kind": "snapshot",
                            "records": records, "removed": []})
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
                for rec in msg["records"]:
                    staged[vmstate.record_key(rec)] = rec
            elif msg["type"] == "final":
                final = msg
        t_transfer = time.perf_counter() - t0
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
        t_flows = install(of_dst, changes.add)
        pair.dst.send(in_sid, {"type": "ack", "migration": mig, "entries": imported,
                               "flows": len(changes.add)})
        pair.wait(pair.src, lambda ev: ev.sid == sid and ev.kind == "message"
                  and ev.message.get("type") == "ack")
        t_total = time.perf_counter() - t0 + t_transfer + t_gather
        sent_bytes, _ = pair.src.stats(sid)
        pair.src.close(sid)
        errors = of_dst.errors + of_src.errors
        if errors:
            raise RuntimeError("OpenFlow errors installing flows: %s" % errors[:3])
        if imported != n or dst.conn_count()["total"] != n:
            raise RuntimeError("imported %d of %d" % (dst.conn_count()["total"], n))
        phases = {"gather": t_gather, "transfer": t_transfer, "import": t_import,
                  "flows": t_flows}
        res.update({
            "ms": {k: round(v * 1000, 1) for k, v in phases.items()},
            "entries_per_s": {k: round(n / v) for k, v in phases.items()},
            "encode_ms": round(t_encoded * 1000, 1),
            "total_ms": round(sum(phases.values()) * 1000, 1),
            "total_with_ack_ms": round(t_total * 1000, 1),
            "wire_bytes": sent_bytes, "message_bytes": sizes,
            "flows_installed": len(changes.add)})
        out("transfer %6d connections: gather %.1f ms, transfer %.1f ms, import %.1f ms, "
            "flows %.1f ms (%d flows), %d bytes%s"
            % (n, *(res["ms"][k] for k in ("gather", "transfer", "import", "flows")),
               len(changes.add), sent_bytes,
               "; datapath gather %.1f ms" % res["gather_datapath"]["total_ms"]
               if datapath else ""))
        return res
    finally:
        of_src.close()
        of_dst.close()
        # The bridge is reused: leave it empty for the next size.
        for br in bridge.bridges:
            bridge._run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge.target(br)])


def transfer(sizes=SIZES, datapath_for=(10000,), rundir=RUNDIR, out=print):
    bridge = Bridge(rundir)
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
