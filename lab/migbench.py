"""Migration benchmarks (part of ``make bench``; ``python -m lab.migbench``
alone prints JSON).

1. ``transfer(sizes)``: the time to move the conntrack state of N
   connections of one VM between two real switches, phase by phase, with
   mbxd's own pieces.  Two throwaway Open vSwitch instances (``Switch``:
   ovsdb-server + ovs-vswitchd, userspace datapath, in their own namespaces
   ``PREFIX-xsrc`` and ``PREFIX-xdst``) play the source and the destination
   host.  The source's zones are seeded with N established TCP connections
   of VM ``mv`` as real conntrack entries (``middlebox.ctcommit`` packet-outs),
   the mix of the migration scenario: a third firewalled VM-to-VM (half
   opened by the VM, half by a peer), a third to load-balancer VIPs
   (DNAT in the VM's zone), a third to the internet through SNAT (an
   untranslated entry in the VM's zone and a translated one in the SNAT
   rule's zone), each with the ct_mark and ct_label the dataplane commits.
   Then, as mbxd does it:

   * **gather**: ``dpctl/dump-conntrack`` of the VM's zone and the SNAT zone
     (``middlebox.vswitch``), ``conn.parse_dump``, ``vmstate.gather``;
   * **encode**: ``conn.encode_parts`` and the ``final`` digest;
   * **transfer**: hello, the record parts and ``final`` through a real
     ``migchan.Channel`` pair (TLS, certificates from ``pki``, 127.0.0.1),
     until the destination has the ``final`` message;
   * **decode**: ``conn.decode`` of each part, staged by key as mbxd stages;
   * **verify**: count and digest of the staged set;
   * **localize**: ``vmstate.localize`` into the destination's zones and tag;
   * **commit** (bulk import): ``ctcommit.packet_outs``, sent through
     ``OfConn.send_packet_outs``, then a barrier: usable;
   * **index** (lazy import): ``ctcommit.LazyCommits``, the per-5-tuple
     index mbxd hands to its hold buffer: usable (a connection is committed
     at its first packet); then the first-packet commit latency (its
     packet-outs and a barrier, with the switch idle and behind at most one
     background chunk of ``LAZY_CHUNK`` records) and the background commit of
     the rest, a chunk per barrier as mbxd paces it.

   After each import the destination's zones are dumped and compared with
   the localized records: the same tuples, translations, mark and label.
2. ``moves(...)``: the largest reply gap a migration causes, mbx against the
   same re-plumb on a switch without middleboxes, per path (announced,
   unannounced), over many moves on a 3-host lab (prefix ``mbxb``).
3. ``conntrack(...)``: the share of established connections that survive a
   migration with the OVS-conntrack baseline (``lab.ctbaseline.run``, no
   state transfer), per kind; mbx's share comes from the moves.
"""

import argparse
import gc
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from lab.sh import counts_arg

PREFIX = "mbxb"
RUNDIR = "/run/mbx-bench"
SIZES = (1000, 10000, 100000, 1000000)
PROFILE_AT = 100000             # the size of the target: its phases profiled too
TARGET_MS = 1000                # 100k connections gathered, moved and usable

# ------------------------------------------------------------------ 1. transfer
VM = "mv"
SRC_HOST, DST_HOST = "hsrc", "hdst"
SRC_TAG, DST_TAG = 7, 9
SUBNET, GATEWAY = "10.9.0.0/24", "10.9.0.1"
VM_MAC, VM_IP = "02:00:00:09:00:0a", "10.9.0.10"
PEER_MAC, PEER_IP = "02:00:00:09:00:14", "10.9.0.20"        # mv connects to it
CLIENT_MAC, CLIENT_IP = "02:00:00:09:00:15", "10.9.0.21"    # connects to mv
BACKENDS = (("b1", "02:00:00:09:00:1f", "10.9.0.31"), ("b2", "02:00:00:09:00:20", "10.9.0.32"),
            ("b3", "02:00:00:09:00:21", "10.9.0.33"))
VIP, VIP_PORT, BACKEND_PORT = "10.9.0.100", 80, 8080
FW_IN_PORT, FW_OUT_PORT = 7000, 7001
SERVER, SERVER_PORT = "198.51.100.10", 80
EXT_IP = "203.0.113.100"
SNAT_UUID = "00000000-0000-0000-0000-000000005a47"
RULE_OUT, RULE_IN = "00000000-0000-0000-0000-0000000000a1", \
    "00000000-0000-0000-0000-0000000000a2"
KINDS = ("fw", "lb", "snat")
PORTS_PER_PAIR = 64000          # source ports per (client, server) pair
MAX_CONNS = 2_000_000
SPREAD = -(-MAX_CONNS // 3 // PORTS_PER_PAIR)   # VIP ports, servers, ... per kind
SEED_CHUNK = 20000              # connections per seeding batch


def _slice_config(host, tag):
    """The chain fw-x -> lb-x -> nat-x on ``host`` (slice ``tag``): the
    rules, VIPs and SNAT rule the seeded connections were decided by."""
    from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo
    from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
    rules = (RuleInfo(100, "from-vm", "proto=tcp", "allow", "tenant", RULE_OUT),
             RuleInfo(100, "to-vm", "proto=tcp dport=%d-%d" % (FW_IN_PORT, FW_IN_PORT + SPREAD),
                      "allow", "tenant", RULE_IN))
    fw = ServiceSpec("fw-x", "firewall", "deny", {}, rules)
    lb = ServiceSpec("lb-x", "lb", vips=tuple(VipInfo(
        "vip-%d" % k, "lb-x", VIP, VIP_PORT + k, "tcp", "hash",
        tuple(sorted((ip, BACKEND_PORT + k) for _, _, ip in BACKENDS)),
        {"health-check": "none"}) for k in range(SPREAD)))
    snat = NatRuleInfo(SNAT_UUID, "nat-x", "snat", (EXT_IP,), "", port_range=(1024, 65535))
    nat = ServiceSpec("nat-x", "nat", nat_rules=(snat,))
    vms = (VmSpec(VM, VM_MAC, VM_IP, SRC_HOST), VmSpec("peer", PEER_MAC, PEER_IP, "hpeer"),
           VmSpec("client", CLIENT_MAC, CLIENT_IP, "hpeer")) \
        + tuple(VmSpec(n, m, ip, "hpeer") for n, m, ip in BACKENDS)
    return HostConfig(host, {tag: SliceConfig(
        tag=tag, middlebox="fw-x", type="firewall", tenant="x", switch="ls-x", vni=900,
        default_action="deny", options={}, rules=rules, vms=vms, services=(fw, lb, nat),
        subnet=SUBNET, gateway=GATEWAY, snat_blocks={SNAT_UUID: (EXT_IP, 1024, 65535)})})


def _host(name, tag, first_zone):
    """(service, zones) of a host as mbxd holds them: the slices of
    ``_slice_config`` and a zone map with the VM's and the SNAT rule's zone."""
    from middlebox.service import Service
    from middlebox.zones import ZoneMap
    zones = ZoneMap(first=first_zone)
    zones.update([("vm", VM), ("snat", SNAT_UUID)])
    service = Service(name, zone_of=zones.vm)
    service.configure(_slice_config(name, tag))
    return service, zones


def connections(n, vm_zone, snat_zone, start=0):
    """The source's conntrack entries of established TCP connections
    ``start`` .. ``n - 1`` of ``mv`` (kinds in turn: fw, lb, snat):
    (entries of the VM's zone, entries of the SNAT zone), as the dataplane
    commits them."""
    from middlebox import dataplane as D
    from middlebox.conn import Conn
    from mbxmodel.services import RuleInfo
    from middlebox.packet import ip_int
    vm, peer, client = ip_int(VM_IP), ip_int(PEER_IP), ip_int(CLIENT_IP)
    backends = [ip_int(ip) for _, _, ip in BACKENDS]
    vip, server, ext = ip_int(VIP), ip_int(SERVER), ip_int(EXT_IP)
    r_out = D.rule_id(RuleInfo(100, "from-vm", "", "allow", uuid=RULE_OUT))
    r_in = D.rule_id(RuleInfo(100, "to-vm", "", "allow", uuid=RULE_IN))
    vip_sid = [D.service_id("%s:%d/tcp" % (VIP, VIP_PORT + k)) << D.LABEL_SERVICE_OFS
               for k in range(SPREAD)]
    snat_sid = D.service_id(SNAT_UUID) << D.LABEL_SERVICE_OFS
    out, mark_in = SRC_TAG, SRC_TAG | D.MARK_IN
    est = "ESTABLISHED"
    vm_conns, snat_conns = [], []
    add, add_snat = vm_conns.append, snat_conns.append
    for i in range(start, n):
        kind, j = i % 3, i // 3
        port, k = 1024 + j % PORTS_PER_PAIR, j // PORTS_PER_PAIR
        if kind == 0 and j % 2 == 0:        # fw, opened by mv
            add(Conn(6, vm, port, peer, FW_OUT_PORT + 2 * k, peer, FW_OUT_PORT + 2 * k, vm,
                     port, vm_zone, out, r_out, est))
        elif kind == 0:                     # fw, opened by a peer
            add(Conn(6, client, port, vm, FW_IN_PORT + 2 * k, vm, FW_IN_PORT + 2 * k, client,
                     port, vm_zone, mark_in, r_in, est))
        elif kind == 1:                     # lb: DNAT to the hash-picked backend
            b = backends[j % 3]
            add(Conn(6, vm, port, vip, VIP_PORT + k, b, BACKEND_PORT + k, vm, port, vm_zone,
                     out, r_out | vip_sid[k], est))
        else:                               # snat: both zones
            s = server + k
            add(Conn(6, vm, port, s, SERVER_PORT, s, SERVER_PORT, vm, port, vm_zone, out,
                     r_out, est))
            add_snat(Conn(6, vm, port, s, SERVER_PORT, s, SERVER_PORT, ext, port, snat_zone,
                          out, snat_sid, est))
    return vm_conns, snat_conns


class Switch:
    """A throwaway ovsdb-server + ovs-vswitchd in network namespace
    ``PREFIX-NAME`` with one netdev bridge (no ports, no traffic): a real
    datapath to hold conntrack entries.  Ends its two daemons by the PIDs of
    their pidfiles, only if they still run from its directory."""

    def __init__(self, rundir, name, prefix=PREFIX, bridge="br-int"):
        self.ns = "%s-%s" % (prefix, name)
        self.dir = os.path.join(rundir, name)
        self.bridge = bridge

    def _run(self, cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns] + cmd, check=True,
                              capture_output=True, text=True, timeout=kw.pop("timeout", 600),
                              **kw)

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
        vsctl = ["ovs-vsctl", "--timeout=20", "--db=unix:%s/db.sock" % self.dir]
        self._run(vsctl + ["--no-wait", "init"])
        self._run(["ovs-vswitchd", "unix:%s/db.sock" % self.dir,
                   "--pidfile=%s/ovs-vswitchd.pid" % self.dir,
                   "--unixctl=%s/ovs-vswitchd.ctl" % self.dir,
                   "--log-file=%s/ovs-vswitchd.log" % self.dir, "--detach", "--no-chdir"],
                  env=env)
        self._run(vsctl + ["add-br", self.bridge, "--", "set", "bridge", self.bridge,
                           "datapath_type=netdev", "fail_mode=secure",
                           "protocols=OpenFlow13"])
        # As mbxd sets it on every host: imported entries carry no TCP window.
        self.appctl("dpctl/ct-disable-tcp-seq-chk")
        return self

    def pid(self, name="ovs-vswitchd"):
        with open(os.path.join(self.dir, name + ".pid")) as f:
            return int(f.read().strip())

    @property
    def target(self):
        return "unix:%s/%s.mgmt" % (self.dir, self.bridge)

    def appctl(self, *args, timeout=600):
        return subprocess.run(["ovs-appctl", "--timeout=%d" % timeout, "-t",
                               os.path.join(self.dir, "ovs-vswitchd.ctl")] + list(args),
                              check=True, capture_output=True, text=True,
                              timeout=timeout + 30).stdout

    def vswitch(self):
        from middlebox.vswitch import Vswitch
        return Vswitch(os.path.join(self.dir, "ovs-vswitchd.ctl"), timeout=600)

    def rss(self):
        """ovs-vswitchd's resident memory, bytes."""
        return _rss_of(self.pid())

    def entries(self):
        """Conntrack entries in the datapath (``dpctl/ct-stats-show``)."""
        text = self.appctl("dpctl/ct-stats-show")
        for line in text.splitlines():
            if "Connections" in line or "Total" in line:
                digits = [w.strip(":,") for w in line.split() if w.strip(":,").isdigit()]
                if digits:
                    return int(digits[-1])
        return None

    def down(self):
        from ovsdb.server import stop as stop_pid
        for name in ("ovs-vswitchd", "ovsdb-server"):
            path = os.path.join(self.dir, name + ".pid")
            try:
                pid = self.pid(name)
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    ours = self.dir.encode() in f.read()    # not a reused PID
            except (OSError, ValueError):
                ours = False
            if ours:
                stop_pid(pid)
            if os.path.exists(path):
                os.unlink(path)
        if os.path.exists("/run/netns/" + self.ns):
            subprocess.run(["ip", "netns", "del", self.ns], check=False)


def _rss_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def of_connect(target):
    """An ``OfConn`` with its barrier replies and errors collected."""
    from middlebox.ofconn import OfConn
    of = OfConn(target)
    of.barriers = set()
    of.errors = []
    of.on_barrier = of.barriers.add
    of.on_error = lambda xid, t, c: of.errors.append((xid, t, c))
    of.connect(timeout=10)
    return of


def of_until(of, done, timeout):
    """Run ``of`` (writing what it queued, reading replies) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no OpenFlow reply within %.0f s" % timeout)
        select.select([of.sock], [of.sock] if of.pending_output else [], [], min(left, 0.2))
        of.run()


def barrier(of, timeout=600):
    """A barrier after everything queued, and its reply."""
    xid = of.barrier()
    of_until(of, lambda: xid in of.barriers, timeout)
    if of.errors:
        raise RuntimeError("OpenFlow errors: %s" % of.errors[:3])


def seed(of, conns, chunk=SEED_CHUNK, timeout=900):
    """Commit ``conns`` into their zones with their mark and label
    (``ctcommit.packet_outs``), in batches; returns the seconds."""
    from middlebox import ctcommit
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    for start in range(0, len(conns), chunk):
        data = ctcommit.packet_outs(conns[start:start + chunk], lambda c: c.zone,
                                    lambda c: c.mark, lambda c: c.label)
        of.send_packet_outs([data])
        of_until(of, lambda: not of.pending_output, max(1, deadline - time.monotonic()))
    barrier(of, max(1, deadline - time.monotonic()))
    return time.perf_counter() - t0


class _Pair:
    """A source and a destination ``migchan.Channel`` on 127.0.0.1 with
    certificates from a fresh CA in a temporary directory."""

    def __init__(self):
        from middlebox import migchan, pki
        self.tmp = tempfile.mkdtemp(prefix="mbx-migbench-pki-")
        pki.init_ca(self.tmp)
        self.src = migchan.Channel(SRC_HOST, pki.issue_host(self.tmp, SRC_HOST))
        self.dst = migchan.Channel(DST_HOST, pki.issue_host(self.tmp, DST_HOST),
                                   listen=("127.0.0.1", 0))
        self.src.start()
        self.dst.start()
        self.address = "ssl:%s:%d" % self.dst.listen_address
        self.n = 0
        self.backlog = {}       # events read but not yet wanted, per channel

    def wait(self, chan, want, timeout=300):
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


class Bench:
    """The two switches, their OpenFlow connections, the two hosts' slices
    and zones, and the TLS channel pair."""

    def __init__(self, rundir, prefix):
        self.src = Switch(rundir, "xsrc", prefix)
        self.dst = Switch(rundir, "xdst", prefix)
        self.pair = None
        self.of_src = self.of_dst = None

    def __enter__(self):
        try:
            self.src.up()
            self.dst.up()
            self.of_src = of_connect(self.src.target)
            self.of_dst = of_connect(self.dst.target)
            self.pair = _Pair()
        except BaseException:
            self.close()
            raise
        self.src_service, self.src_zones = _host(SRC_HOST, SRC_TAG, 1)
        self.dst_service, self.dst_zones = _host(DST_HOST, DST_TAG, 101)
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for of in (self.of_src, self.of_dst):
            if of is not None:
                of.close()
        if self.pair is not None:
            self.pair.stop()
            self.pair = None
        self.src.down()
        self.dst.down()

    def fresh(self, which):
        """A new OpenFlow connection to a switch (outside any timing): the
        switch drops one that left its echo requests unanswered for a
        minute, as this single-threaded bench does during long phases."""
        if which == "src":
            self.of_src.close()
            self.of_src = of_connect(self.src.target)
        else:
            self.of_dst.close()
            self.of_dst = of_connect(self.dst.target)

    def zones(self, which):
        zones = self.src_zones if which == "src" else self.dst_zones
        return zones.vm(VM), zones.get(("snat", SNAT_UUID))

    def flush(self, which):
        sw = self.src if which == "src" else self.dst
        for zone in self.zones(which):
            sw.appctl("dpctl/flush-conntrack", "zone=%d" % zone)


def _ms(seconds):
    return round(seconds * 1000, 1)


def _lat(values):
    """Median, p99 and extremes of latencies in ms."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "p99": round(_pct(values, 99), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def gather(b):
    """The source's part up to the bytes on the wire, as mbxd's
    ``MigrationManager._records`` and ``_send_records``/``_final`` do it:
    (records, parts, digest, times in seconds)."""
    from middlebox import conn as C, vmstate
    from middlebox.migration import SNAPSHOT_PART
    vs = b.src.vswitch()
    vm_zone, snat_zone = b.zones("src")
    t = {}
    t0 = time.perf_counter()
    texts = (vs.dump_zone(vm_zone), vs.dump_zone(snat_zone))
    t1 = time.perf_counter()
    vm_conns, snat_conns = (C.parse_dump(x) for x in texts)
    del texts
    t2 = time.perf_counter()
    records = vmstate.gather(VM, b.src_service.slices, vm_conns, {SNAT_UUID: snat_conns})
    t3 = time.perf_counter()
    t.update(dump=t1 - t0, parse=t2 - t1, records=t3 - t2, gather=t3 - t0)
    del vm_conns, snat_conns
    t0 = time.perf_counter()
    parts = list(C.encode_parts([c for _, c in records], [sl for sl, _ in records],
                                SNAPSHOT_PART))
    t1 = time.perf_counter()
    digest = vmstate.digest(records)
    t2 = time.perf_counter()
    t.update(encode_parts=t1 - t0, digest=t2 - t1, encode=t2 - t0)
    return records, parts, digest, t


def send(b, parts, count, digest):
    """hello, the parts and final through the channel pair, until the
    destination has ``final``: (state messages received, final, bytes,
    seconds)."""
    from middlebox.migration import PROTOCOL_VERSION
    pair = b.pair
    pair.n += 1
    sid, mig = "out-%d" % pair.n, "bench-%d" % pair.n
    pair.src.connect(sid, pair.address, DST_HOST)
    pair.wait(pair.src, lambda ev: ev.sid == sid and ev.kind == "connected")
    t0 = time.perf_counter()
    pair.src.send(sid, {"type": "hello", "version": PROTOCOL_VERSION, "migration": mig,
                        "token": "t" * 32, "vm": VM, "source": SRC_HOST,
                        "destination": DST_HOST})
    for i, data in enumerate(parts):
        pair.src.send(sid, {"type": "state", "migration": mig, "seq": i + 1,
                            "kind": "snapshot" if i == 0 else "changes", "removed": [],
                            "data": data})
    pair.src.send(sid, {"type": "final", "migration": mig, "seq": len(parts) + 1,
                        "count": count, "digest": digest})
    states, final = [], None
    while final is None:
        ev = pair.wait(pair.dst, lambda ev: ev.kind in ("accepted", "message"))
        if ev.kind != "message":
            continue
        msg = ev.message
        if msg["type"] == "state":
            states.append(msg)
        elif msg["type"] == "final":
            final = msg
    seconds = time.perf_counter() - t0
    sent, _ = pair.src.stats(sid)
    pair.src.close(sid)
    return states, final, sent, seconds


def receive(b, states, final):
    """The destination's part before committing, as mbxd's
    ``_state_in`` and ``_import``: decode and stage, verify, localize."""
    from middlebox import conn as C, vmstate
    t = {}
    t0 = time.perf_counter()
    staged = {}
    for msg in states:
        conns, slices = C.decode(msg["data"])
        for sl, c in zip(slices, conns):
            staged[(sl, c.key)] = (sl, c)
    t1 = time.perf_counter()
    records = list(staged.values())
    if final["count"] != len(records) or final["digest"] != vmstate.digest(records):
        raise RuntimeError("the transfer arrived corrupt: %d records, %d announced"
                           % (len(records), final["count"]))
    t2 = time.perf_counter()
    local = vmstate.localize(VM, records, b.dst_service.slices, b.dst_zones)
    t3 = time.perf_counter()
    t.update(decode=t1 - t0, verify=t2 - t1, localize=t3 - t2)
    return local, vmstate.count_connections(records), t


def overlapped(b, states, final):
    """mbxd's bulk import on the unannounced path (``_state_in`` and
    ``_commit_early``, then ``_import``): each part decoded, staged, its VM
    zone's records localized and committed as it comes (the switch works
    while the next part is decoded); at ``final`` the check, the SNAT zone's
    records, a barrier.  Returns (localized records, packet-outs, seconds
    from the first part to the barrier reply)."""
    from middlebox import conn as C, ctcommit, vmstate
    of, slices, zones = b.of_dst, b.dst_service.slices, b.dst_zones
    t0 = time.perf_counter()
    staged, local, n = {}, [], 0
    for msg in states:
        conns, owners = C.decode(msg["data"])
        mine = []
        for sl, c in zip(owners, conns):
            staged[(sl, c.key)] = (sl, c)
            if sl.role == "vm":
                mine.append((sl, c))
        part = vmstate.localize(VM, mine, slices, zones)
        n += len(of.send_packet_outs([ctcommit.packet_outs([c for c, _ in part])]))
        local += part
        of.run()                        # write what the socket takes meanwhile
    records = list(staged.values())
    if final["count"] != len(records) or final["digest"] != vmstate.digest(records):
        raise RuntimeError("the transfer arrived corrupt")
    rest = vmstate.localize(VM, [r for r in records if r[0].role != "vm"], slices, zones)
    n += len(of.send_packet_outs([ctcommit.packet_outs([c for c, _ in rest])]))
    barrier(of)
    return local + rest, n, time.perf_counter() - t0


def bulk(b, local):
    """Commit every record, then a barrier (mbxd's bulk import,
    ``MigrationManager._import``)."""
    from middlebox import ctcommit
    t0 = time.perf_counter()
    data = ctcommit.packet_outs([c for c, _ in local])
    t1 = time.perf_counter()
    n = len(b.of_dst.send_packet_outs([data]))
    barrier(b.of_dst)
    t2 = time.perf_counter()
    return n, {"build": t1 - t0, "switch": t2 - t1, "commit": t2 - t0}


def lazy(b, local, samples=50, interval=0.025, most=400):
    """mbxd's lazy import (``MigrationManager._import`` and ``_lazy_run``):
    the index (``ctcommit.LazyCommits``; then usable: a connection is
    committed at its first packet), then the background commit,
    ``LAZY_CHUNK`` records at a time, each chunk after the switch answered
    the barrier behind the last.  First packets (``LazyCommits.take`` and a
    barrier, as ``arrivals.offer`` and the daemon do) arrive every
    ``interval`` s during the background commit, and ``samples`` more once
    it is done (the switch idle).  Latencies in ms from the commit queued to
    the barrier reply."""
    from middlebox import ctcommit
    from middlebox.migration import LAZY_CHUNK
    t0 = time.perf_counter()
    commits = ctcommit.LazyCommits([c for c, _ in local])
    t_index = time.perf_counter() - t0
    of = b.of_dst
    replies, sent = {}, {}
    of.on_barrier = lambda xid: replies.__setitem__(xid, time.perf_counter())
    # The background takes records from the end of the list: first packets
    # come for those at its start, committed last.
    keys = [ctcommit.packet_keys(c)[0] for c, _ in local]
    nxt = 0

    def first_packet(index=commits):
        nonlocal nxt
        while nxt < len(keys):
            msgs = index.take(keys[nxt])
            nxt += 1
            if msgs:
                of.send_packet_outs(msgs)
                xid = of.barrier()
                sent[xid] = time.perf_counter()
                return xid
        return None
    try:
        t0 = time.perf_counter()
        during = []
        next_sample = t0
        chunk_xid = None
        while commits or (chunk_xid is not None and chunk_xid not in replies):
            if chunk_xid is None or chunk_xid in replies:
                of.send_packet_outs(commits.chunk(LAZY_CHUNK))
                chunk_xid = of.barrier()
            now = time.perf_counter()
            if now >= next_sample and len(during) < most:
                xid = first_packet()
                if xid is not None:
                    during.append(xid)
                next_sample = now + interval
            select.select([of.sock], [of.sock] if of.pending_output else [], [],
                          max(0.0, min(0.05, next_sample - time.perf_counter())))
            of.run()
            if time.perf_counter() - t0 > 900:
                raise TimeoutError("the background commit took over 900 s")
        background = replies[chunk_xid] - t0 if chunk_xid is not None else 0.0
        of_until(of, lambda: all(x in replies for x in during), 600)
        # Everything is committed now: the same commits again (an entry's
        # commit repeated changes nothing) show a first packet's latency
        # with the switch idle.
        idle, nxt = [], 0
        again = ctcommit.LazyCommits([c for c, _ in local[:samples]])
        for _ in range(samples):
            xid = first_packet(again)
            if xid is None:
                break
            of_until(of, lambda: xid in replies, 60)
            idle.append(xid)
    finally:
        of.on_barrier = of.barriers.add
    if of.errors:
        raise RuntimeError("OpenFlow errors: %s" % of.errors[:3])

    def lat(xids):
        return _lat([(replies[x] - sent[x]) * 1000 for x in xids if x is not None])
    return {"index": t_index, "first_packet_during_ms": lat(during),
            "first_packet_idle_ms": lat(idle), "background": background,
            "chunk": LAZY_CHUNK, "sample_interval_ms": interval * 1000}


def check_zone(b, local):
    """The destination's zones hold exactly the localized records (tuples,
    translations, mark, label, state)."""
    from middlebox import conn as C
    vs = b.dst.vswitch()
    got = set()
    for zone in b.zones("dst"):
        dump = C.parse_dump(vs.dump_zone(zone))
        if dump.malformed:
            raise RuntimeError("%d malformed dump lines" % dump.malformed)
        got.update(dump)
    want = {c for c, _ in local}
    if got != want:
        missing, extra = want - got, got - want
        raise RuntimeError("the destination's zones differ from the records: %d missing "
                           "(e.g. %s), %d extra (e.g. %s)" % (
                               len(missing), next(iter(missing), None), len(extra),
                               next(iter(extra), None)))
    return len(got)


def _profile_top(prof, count=14):
    """The ``count`` functions with the most cumulative time in ``prof``:
    [[function, cumulative ms]]."""
    import pstats
    stats = pstats.Stats(prof).stats
    rows = []
    for (path, line, name), (_, _, _, cum, _) in stats.items():
        if name in ("<lambda>", "<built-in method gc.collect>", "_python_phases") \
                or name.startswith("<method 'disable'"):
            continue
        where = name if path == "~" else "%s:%d(%s)" % (
            "/".join(path.split("/")[-2:]), line, name)
        rows.append([where, round(cum * 1000, 1)])
    rows.sort(key=lambda r: -r[1])
    return rows[:count]


def _python_phases(b):
    records, parts, digest, _ = gather(b)
    states, final, _, _ = send(b, parts, len(records), digest)
    local, _, _ = receive(b, states, final)
    return bulk(b, local)


def transfer_one(b, n, profile=False, out=print):
    """Seed ``n`` connections at the source, move them twice (bulk, lazy);
    the phases in ms and what was checked."""
    from middlebox import vmstate
    res = {"connections": n}
    b.flush("src")
    vm_zone, snat_zone = b.zones("src")
    vm_conns, snat_conns = connections(n, vm_zone, snat_zone)
    res["entries"] = {"vm_zone": len(vm_conns), "snat_zone": len(snat_conns)}
    b.fresh("src")
    res["seed_s"] = round(seed(b.of_src, vm_conns + snat_conns), 2)
    del vm_conns, snat_conns
    gc.collect()
    t = {}
    records, parts, digest, tg = gather(b)
    if vmstate.count_connections(records) != n or len(records) != sum(res["entries"].values()):
        raise RuntimeError("gathered %d records of %d connections, not %d"
                           % (len(records), vmstate.count_connections(records), n))
    t.update(tg)
    t0 = time.perf_counter()
    kept, _ = vmstate.review(records, b.src_service.slices)
    res["review_ms"] = _ms(time.perf_counter() - t0)
    del kept
    count = len(records)
    del records
    states, final, wire, t["transfer"] = send(b, parts, count, digest)
    res["wire_bytes"], res["parts"] = wire, len(parts)
    del parts
    local, moved, tr = receive(b, states, final)
    t.update(tr)
    # Bulk import.
    b.flush("dst")
    b.fresh("dst")
    gc.collect()
    res["packet_outs"], tb = bulk(b, local)
    t.update(tb)
    res["checked"] = {"bulk": check_zone(b, local)}
    # Bulk import overlapped with the parts' arrival (the unannounced path).
    b.flush("dst")
    b.fresh("dst")
    gc.collect()
    local_o, _, t["overlapped"] = overlapped(b, states, final)
    res["checked"]["overlapped"] = check_zone(b, local_o)
    del local_o, states
    # Lazy import of the same records.
    b.flush("dst")
    b.fresh("dst")
    gc.collect()
    lz = lazy(b, local)
    t["index"], t["background"] = lz.pop("index"), lz.pop("background")
    res["checked"]["lazy"] = check_zone(b, local)
    res["lazy"] = lz
    res["ms"] = {k: _ms(v) for k, v in t.items()}
    ms = res["ms"]
    before = sum(ms[p] for p in ("gather", "encode", "transfer", "decode", "verify",
                                 "localize"))
    res["usable_bulk_ms"] = round(before + ms["commit"], 1)
    res["usable_overlapped_ms"] = round(ms["gather"] + ms["encode"] + ms["transfer"]
                                        + ms["overlapped"], 1)
    res["usable_lazy_ms"] = round(before + ms["index"], 1)
    res["lazy"]["background_ms"] = ms["background"]
    res["per_s"] = {p: round(n / max(v / 1000, 1e-9)) for p, v in ms.items()}
    del local
    if profile:
        import cProfile
        b.flush("dst")
        b.fresh("dst")
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        _python_phases(b)
        prof.disable()
        res["profile_top"] = _profile_top(prof)
        b.flush("dst")
    b.flush("src")
    out("transfer %7d connections: gather %.0f, encode %.0f, transfer %.0f, decode %.0f, "
        "verify %.0f, localize %.0f, commit %.0f (build %.0f) ms: usable %.0f ms bulk, "
        "%.0f ms lazy (background %.0f ms, first packet %s ms during it); %d bytes"
        % (n, *(ms[p] for p in ("gather", "encode", "transfer", "decode", "verify",
                                "localize", "commit", "build")),
           res["usable_bulk_ms"], res["usable_lazy_ms"], ms["background"],
           lz["first_packet_during_ms"].get("median", "-"), wire))
    return res


def transfer(sizes=SIZES, rundir=RUNDIR, out=print, prefix=PREFIX, profile_at=PROFILE_AT):
    """``transfer_one`` for each size on one pair of switches; a size above
    the target's that fails is reported with its error, the others raise."""
    results = {}
    with Bench(rundir, prefix) as b:
        for n in sizes:
            try:
                results[str(n)] = transfer_one(b, n, profile=n == profile_at, out=out)
            except Exception as err:        # noqa: BLE001 - reported; smaller sizes stand
                if n <= PROFILE_AT:
                    raise
                results[str(n)] = {"connections": n, "error": "%s: %s" % (
                    type(err).__name__, str(err)[:300])}
                out("transfer %d connections failed: %s" % (n, results[str(n)]["error"]))
                for which in ("src", "dst"):
                    try:
                        b.flush(which)
                    except Exception:       # noqa: BLE001 - the switches go anyway
                        pass
    return results


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
        self.lab.mbxctl_ok("ls-add", PLAIN_SWITCH, "--vni", str(PLAIN_VNI), "--subnet", CT.SUBNET,
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


def _one_move(lab, conns, vm, to, notify, per_kind):
    """Fresh connections, one move, their fate: (summary, gaps by kind)."""
    from lab import ctbaseline as CT
    conns.open(per_kind=per_kind, duration=60)
    try:
        before = conns.snapshot()
        steps = lab.migrate(vm, to, notify=notify)
        at_move = conns.snapshot()
        conns.wait_flowing(at_move, replies=10, timeout=7)
    finally:
        final = conns.stop()
    summary = CT.summarize(before, at_move, final, steps, 0.0)
    by_kind = {}
    for name, gap in summary["max_gap_ms"].items():
        kind = name.split("#")[0]
        by_kind[kind] = max(by_kind.get(kind, 0.0), gap)
    return summary, by_kind


def moves(moves_per_path=10, per_kind=3, rundir=RUNDIR, out=print, prefix=PREFIX):
    """The 3-host lab: the migscenario (mv through fw -> lb -> SNAT, and
    DNAT from the internet client to mv) and its plain twin (pmv, no steering);
    mv and pmv move h1 <-> h2 in turn, each
    path in turn, ``moves_per_path`` times each, with fresh connections per
    move.  Returns the per-move records."""
    from lab.lab import Lab
    from lab.migscenario import Scenario
    Lab(prefix=prefix, rundir=rundir).down(log=lambda *_: None)     # a leftover
    lab = Lab(prefix=prefix, rundir=rundir)
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
        for probes in (sc, plain):
            try:
                probes.stop()
            except Exception:       # noqa: BLE001 - the lab goes down anyway
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
        kinds_seen = sorted({k for r in mbx for k in r["gap_by_kind_ms"]})
        d["mbx_by_kind"] = {k: {kk: vv for kk, vv in _dist(
            [r["gap_by_kind_ms"][k] for r in mbx if k in r["gap_by_kind_ms"]]).items()
            if kk != "samples"} for k in kinds_seen}
        d["mbx_buffered"] = _dist([r["stats"].get("buffered", 0) for r in mbx])
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


def conntrack(runs=2, per_kind=3, settle=3.0, rundir=RUNDIR, out=print, prefix=PREFIX):
    """``lab.ctbaseline.run`` on this bench's prefix, ``runs`` times; survivors
    per kind summed over the runs, and their share."""
    from lab import ctbaseline as CT
    kinds, errors, gaps, steps = {}, {}, [], []
    for i in range(runs):
        res = CT.run(hosts=3, per_kind=per_kind, settle=settle, log=lambda *_: None,
                     prefix=prefix, rundir=rundir)
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


def run(sizes=SIZES, moves_per_path=10, per_kind=3, ct_runs=2, rundir=RUNDIR, out=print,
        prefix=PREFIX, parts=("transfer", "moves", "conntrack")):
    """The parts asked for, in order: transfer sizes, moves (gaps, survival),
    the conntrack baseline.  Returns the raw results (``report.summarize_migration``
    makes the report's figures of them)."""
    res, seconds = {}, {}
    if "transfer" in parts:
        t0 = time.monotonic()
        res["transfer"] = transfer(sizes, rundir=rundir, out=out, prefix=prefix)
        seconds["transfer"] = round(time.monotonic() - t0)
    if "moves" in parts:
        t0 = time.monotonic()
        records = moves(moves_per_path, per_kind, rundir=rundir, out=out, prefix=prefix)
        seconds["moves"] = round(time.monotonic() - t0)
        res["gaps"], res["survival_mbx"] = summarize_moves(records)
        res["moves"] = records
    if "conntrack" in parts:
        t0 = time.monotonic()
        res["conntrack"] = conntrack(ct_runs, per_kind, rundir=rundir, out=out, prefix=prefix)
        seconds["conntrack"] = round(time.monotonic() - t0)
    res["method"] = {"sizes": list(sizes), "moves_per_path": moves_per_path,
                     "per_kind": per_kind, "conntrack_runs": ct_runs, "seconds": seconds,
                     "profile_at": PROFILE_AT}
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
    p.add_argument("--only", choices=("transfer", "moves", "conntrack"), action="append",
                   help="run only this part (repeatable; default: all three)")
    p.add_argument("--rundir", default=RUNDIR, help="run directory (default %(default)s)")
    p.add_argument("--prefix", default=PREFIX,
                   help="name prefix of the namespaces (default %(default)s)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m lab.migbench needs root (network namespaces)", file=sys.stderr)
        return 2
    res = run(args.sizes, max(1, min(args.moves, 30)), max(1, min(args.per_kind, 20)),
              max(1, min(args.conntrack_runs, 10)), rundir=args.rundir,
              out=lambda msg: print(msg, file=sys.stderr), prefix=args.prefix,
              parts=tuple(args.only or ("transfer", "moves", "conntrack")))
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
