"""Three systems, the same traffic: the data-path half of ``make bench``.

* **plain**: a switch with no middlebox at all (the lab's physical limit);
* **ct-baseline**: the OVS-conntrack pipeline OVN and Neutron's OVS firewall
  build (``lab.ctbaseline``: ``ct(commit)`` ACLs, ``ct(nat)`` SNAT, select
  groups for the VIPs, no state transfer);
* **mbx**: the same policy through mbx (``lab.migscenario``: firewall ->
  load balancer -> SNAT), compiled by each host's mbxd into the switch's
  service stages: conntrack is the connection cache, mbxd is asked only
  when the switch cannot decide alone.

The policy (tenant red, ``ls-red`` 10.0.0.0/24) is the migration scenario's
plus what the benchmark's traffic needs: a second VIP 10.0.0.100:5201 over
b1..b3:5201 picked by a hash of the client address (iperf3's control and
data connections must reach the same backend: ct-baseline's select group
hashes ``ip_src``, mbx's ``source-hash`` is picked by mbxd at the first
packet and committed into conntrack), UDP steered through the chain like
TCP, and the firewall allowing new connections from every VM and into every
VM on 5201.  The echo VIP 10.0.0.100:80 that the new-connection test uses
is a select group hashing the 5-tuple in both (mbx's default algorithm
``hash``; ct-baseline's group as OVN builds it).  mbx also gets a VIP
10.0.0.101:80 over the same backends with ``round-robin``: its backend is
picked by mbxd (``RR_VIP``), measured on its own (no ct-baseline
counterpart).  The plain twin ``ls-plain`` (10.9.0.0/24, VNI
``CT.PLAIN_VNI``) has a VM in each place that matters: ``pmv`` where mv is
(h1), ``ppe`` where peer is (h3), ``pb1``/``pb2`` where b1 (h2) and b2 (h3)
are.

Both pipelines run under the same conntrack settings: mbxd switches TCP
sequence checking off on its host (``dpctl/ct-disable-tcp-seq-chk``:
imported connections carry no window state), and the conntrack lab's hosts
get the same switch; ``conntrack_settings`` records what each host reports.

Two labs up at once (each lab lives in its own namespaces): the mbx lab
(plain and mbx) and the conntrack lab (ct-baseline, and its plain twin
forwarded by the conntrack pipeline's plain table, ``plain-ct``: the same
physical path as plain, which shows the noise between the labs).  Every
round measures the four in turn, the order reversed every other round.

Measured, per system and round:

* established throughput: TCP (iperf3, ``seconds`` s) across hosts (mv to the
  VIP; plain: pmv to pb1), on one host (peer to b2; ppe to pb2), and to the
  internet server through SNAT; 64-byte UDP packets per second received
  (iperf3 ``-u -l 64 -b 0``) across hosts (mv to b1) and on one host; and
  what the client host's datapath did per packet meanwhile (passes,
  megaflow subtables probed per hit, upcalls);
* new connections: short TCP connections (connect, one echoed line, close)
  from one client thread (the first packet's latency: connect time) and
  from ``workers`` threads (connections per second), to the VIP (plain: to
  pb1), on one host and through SNAT.

Then: the CPU ovs-vswitchd and mbxd spend per new connection on the host of
both ends of the ``same`` case (h3), with ovs-vswitchd's datapath counters
(upcalls, recirculations per connection: ``dpif-netdev/pmd-stats-show``)
and the megaflow subtables probed per hit (``cpu_split``); the same for mbx's
round-robin VIP on the client's host h1, where mbxd picks every backend;
a cProfile of mbxd under that load (``profile_mbxd``); how fast shared state
reaches every host (``shared_state_convergence``).

``run(rounds, seconds, conns, workers, out)`` returns the raw samples and
``summarize(raw)`` the medians and ratios.
"""

import json
import os
import statistics
import sys
import time

from lab import ctbaseline as CT
from lab.lab import Lab
from lab.sh import LabError, wait_until

PREFIX = "mbxb"
RUNDIR = "/run/mbx-bench"
HOSTS = ["h1", "h2", "h3"]
SYSTEMS = ("plain", "ct-baseline", "mbx")
PLAIN_SWITCH, PLAIN_SUBNET = "ls-plain", "10.9.0.0/24"
PLAIN_VMS = {"pmv": ("10.9.0.10", "h1"), "ppe": ("10.9.0.20", "h3"),
             "pb1": ("10.9.0.31", "h2"), "pb2": ("10.9.0.32", "h3")}
PORT = CT.BENCH_PORT
ECHO = CT.BACKEND_PORT
B1, B2 = CT.VMS["b1"][0], CT.VMS["b2"][0]
RR_VIP = "10.0.0.101"           # mbx only: mbxd picks the backend (round-robin)

# case -> (what, {"plain": (client, address), "chain": (client, address)})
THROUGHPUT = {
    "tcp-across": ("TCP across hosts, to the VIP (firewall + LB)",
                   {"plain": ("pmv", "10.9.0.31"), "chain": ("mv", CT.VIP)}),
    "tcp-same": ("TCP on one host (firewall)",
                 {"plain": ("ppe", "10.9.0.32"), "chain": ("peer", B2)}),
    "tcp-snat": ("TCP to the internet through SNAT (firewall + SNAT)",
                 {"chain": ("mv", CT.EXT_SERVER_IP)}),
    "udp-across": ("64-byte UDP across hosts (firewall)",
                   {"plain": ("pmv", "10.9.0.31"), "chain": ("mv", CT.VMS["b1"][0])}),
    "udp-same": ("64-byte UDP on one host (firewall)",
                 {"plain": ("ppe", "10.9.0.32"), "chain": ("peer", B2)}),
}
# case -> (what, {"plain": (client, address, port), "chain": (...)})
NEWCONN = {
    "across": ("across hosts, to the VIP (firewall + LB)",
               {"plain": ("pmv", "10.9.0.31", ECHO), "chain": ("mv", CT.VIP, CT.VIP_PORT)}),
    "same": ("on one host (firewall)",
             {"plain": ("ppe", "10.9.0.32", ECHO), "chain": ("peer", B2, ECHO)}),
    "snat": ("to the internet through SNAT (firewall + SNAT)",
             {"chain": ("mv", CT.EXT_SERVER_IP, CT.EXT_SERVER_PORT)}),
}



def _plain_switch(lab):
    lab.mbxctl_ok("ls-add", PLAIN_SWITCH, "--vni", str(CT.PLAIN_VNI), "--subnet", PLAIN_SUBNET,
        "--tenant", "plain")
    for vm, (ip, host) in PLAIN_VMS.items():
        lab.vm_add(vm, host, PLAIN_SWITCH, ip + "/24")


def _servers(lab, rundir, chain_vms):
    """iperf3 and echo servers: the backends' (or their plain twins') and the
    internet server's."""
    procs = []
    for vm in chain_vms:
        procs.append(lab.spawn(vm, ["iperf3", "-s", "-p", str(PORT)],
                               os.path.join(rundir, "iperf-%s.log" % vm)))
    for vm in ("pb1", "pb2"):
        procs.append(lab.spawn(vm, ["iperf3", "-s", "-p", str(PORT)],
                               os.path.join(rundir, "iperf-%s.log" % vm)))
        procs.append(lab.spawn(vm, [sys.executable, "-m", "lab.probe", "serve", "--port",
                                    str(ECHO)], os.path.join(rundir, "echo-%s.log" % vm)))
    procs.append(lab.ext_spawn(CT.EXT_SERVER, ["iperf3", "-s", "-p", str(PORT)],
                               os.path.join(rundir, "iperf-xs.log")))
    return procs


def build_mbx(lab, rundir, out):
    """The mbx lab: the migration scenario's chain, the benchmark's additions,
    the plain twin."""
    from lab.migscenario import Scenario
    lab.up(HOSTS, log=lambda *_: None)
    sc = Scenario(lab, rundir)
    sc.build(HOSTS)
    lab.mbxctl_ok("lb-set", "lb-red", "%s:%d" % (CT.VIP, CT.VIP_PORT), "health-interval=1",
        "health-timeout=0.5", "health-rise=1", "health-fall=1")
    lab.mbxctl_ok("fw-add", "fw-red", "99", "from-vm", "proto=udp", "allow")
    lab.mbxctl_ok("fw-add", "fw-red", "103", "to-vm", "proto=tcp dport=%d" % PORT, "allow")
    lab.mbxctl_ok("fw-add", "fw-red", "104", "to-vm", "proto=udp dport=%d" % PORT, "allow")
    lab.mbxctl_ok("lb-add", "lb-red", "%s:%d" % (CT.VIP, PORT),
        *["%s:%d" % (CT.VMS[b][0], PORT) for b in CT.BACKENDS], "--algorithm", "source-hash")
    lab.mbxctl_ok("lb-add", "lb-red", "%s:%d" % (RR_VIP, CT.VIP_PORT),
                  *["%s:%d" % (CT.VMS[b][0], CT.BACKEND_PORT) for b in CT.BACKENDS],
                  "--algorithm", "round-robin")
    lab.mbxctl_ok("steer-add", CT.SWITCH, "99", "proto=udp", ",".join(("fw-red", "lb-red",
                                                                   "nat-red")))
    _plain_switch(lab)
    _servers(lab, rundir, CT.BACKENDS)
    out("mbx lab up: chain fw-red -> lb-red -> nat-red on ls-red, plain twin ls-plain")
    return sc.servers[0]                # b1's echo server (CT._servers' order)


def build_ct(lab, rundir, out):
    """The conntrack lab: the same VMs (placed by mbx's controller), then the
    conntrack pipeline instead of mbx's on every host."""
    lab.up(HOSTS, log=lambda *_: None)
    lab.mbxctl_ok("ls-add", CT.SWITCH, "--vni", str(CT.VNI), "--subnet", CT.SUBNET,
        "--tenant", CT.TENANT, "--gateway", CT.GATEWAY_IP)
    for vm, (ip, host) in CT.VMS.items():
        lab.vm_add(vm, host, CT.SWITCH, "%s/%d" % (ip, CT.PREFIXLEN))
    _plain_switch(lab)
    CT.take_over(lab, log=lambda *_: None)
    CT.install(lab)
    for host in HOSTS:
        # The same conntrack settings as mbx's hosts (mbxd switches TCP
        # sequence checking off; the stopped mbxd may or may not have).
        lab.appctl(host, "dpctl/ct-disable-tcp-seq-chk")
    CT._servers(lab, rundir)
    CT._wait_listening(lab)
    _servers(lab, rundir, CT.BACKENDS)
    out("conntrack lab up: the ct(commit)/ct(nat) pipeline on every host, plain twin")


def conntrack_settings(lab):
    """What each host's ovs-vswitchd says of TCP sequence checking."""
    return {h: lab.appctl(h, "dpctl/ct-get-tcp-seq-chk").strip() for h in HOSTS}


def lb_algorithms(lab, host="h1"):
    """{VIP: algorithm} as mbxd on ``host`` has them (``lb/json``)."""
    try:
        vips = json.loads(lab.mbxd_appctl(host, "lb/json"))
    except (LabError, ValueError):
        return {}
    if isinstance(vips, dict):
        vips = vips.get("vips", list(vips.values()))
    return {str(v.get("vip") or v.get("key")): v.get("algorithm") for v in vips
            if isinstance(v, dict)}


def shared_state_convergence(lab, rundir, server, toggles=6, out=print):
    """Milliseconds from a host publishing shared state (h2's health view of
    its backend b1, flipped by stopping and starting b1's echo server) to
    the row arriving at every other host serving the slice (h1, h3): the
    receiving daemon's arrival time minus the publisher's stamp (one
    machine, one clock)."""
    key = "%s:%d" % (CT.VMS["b1"][0], ECHO)
    delays = []
    for i in range(toggles):
        want = "down" if i % 2 == 0 else "up"
        if want == "down":
            server.terminate()
            server.wait(10)
            lab.forget_pid(server.pid)
        else:
            server = lab.spawn("b1", [sys.executable, "-m", "lab.probe", "serve", "--port",
                                      str(ECHO)], os.path.join(rundir, "echo-b1-%d.log" % i))
        deadline = time.monotonic() + 15
        seen = {}
        while time.monotonic() < deadline and len(seen) < 2:
            for host in ("h1", "h3"):
                if host in seen:
                    continue
                for r in json.loads(lab.mbxd_appctl(host, "shared/json"))["rows"]:
                    if r["service"] == "lb-health" and r["host"] == "h2" \
                            and r["value"].get(key) == want:
                        seen[host] = r["received"] - r["stamp"]
            time.sleep(0.05)
        if len(seen) == 2:
            delays.append(max(seen.values()))
            out("shared state: b1 %s on h2 -> on every host after %.1f ms"
                % (want, max(seen.values())))
    return delays


def _listening(lab):
    CT.wait_listening([(lab.exec, vm, PORT) for vm in CT.BACKENDS + ("pb1", "pb2")]
                      + [(lab.exec, vm, ECHO) for vm in ("pb1", "pb2")]
                      + [(lab.ext_exec, CT.EXT_SERVER, PORT)])


def iperf(lab, client, addr, seconds, udp=False):
    """TCP: Gbit/s received; UDP (64-byte datagrams, unlimited rate):
    datagrams per second received."""
    cmd = ["iperf3", "-c", addr, "-p", str(PORT), "-t", str(seconds), "-J"]
    if udp:
        cmd += ["-u", "-l", "64", "-b", "0"]
    for attempt in range(3):
        proc = lab.exec(client, cmd, capture_output=True, text=True, timeout=seconds + 30)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = {"error": proc.stderr.strip() or "no output"}
        if "error" not in data:
            break
        time.sleep(1)           # the server was still busy with the last test
    else:
        raise LabError("iperf3 %s -> %s: %s" % (client, addr, data["error"]))
    s = data["end"]["sum"] if udp else data["end"]["sum_received"]
    if udp:
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    return s["bits_per_second"] / 1e9


def new_conns(lab, client, addr, port, count, workers):
    proc = lab.exec(client, [sys.executable, "-m", "lab.probe", "rate", "--to", addr,
                             "--port", str(port), "--count", str(count), "--workers",
                             str(workers), "--timeout", "2", "--max-seconds", "30"],
                    capture_output=True, text=True, timeout=90)
    if proc.returncode != 0:
        raise LabError("probe rate in %s: %s" % (client, proc.stderr.strip()[-300:]))
    return json.loads(proc.stdout)


def _measure(lab, system, rnd, seconds, conns, workers, raw, out):
    side = "plain" if system.startswith("plain") else "chain"
    for case, (_, pairs) in THROUGHPUT.items():
        if side not in pairs:
            continue
        client, addr = pairs[side]
        host = lab.state["vms"][client]["host"]
        dp0 = datapath_counters(lab, host)
        value = iperf(lab, client, addr, seconds, udp=case.startswith("udp"))
        dp1 = datapath_counters(lab, host)
        raw["throughput"][case][system].append(value)
        raw.setdefault("throughput_datapath", {}).setdefault(case, {}).setdefault(
            system, []).append(per_packet(dp0, dp1))
        out("round %d %-11s %-10s %s" % (rnd, system, case, "%.3f Gbit/s" % value
                                         if not case.startswith("udp") else "%.0f pps" % value))
    for case, (_, pairs) in NEWCONN.items():
        if side not in pairs:
            continue
        client, addr, port = pairs[side]
        one = new_conns(lab, client, addr, port, conns, 1)
        many = new_conns(lab, client, addr, port, conns * 2, workers)
        raw["newconn"][case][system].append({"serial": one, "parallel": many})
        out("round %d %-11s new/%-6s %.0f/s serial (connect %.2f ms median), %.0f/s with %d "
            "workers (%d+%d failed)" % (
                rnd, system, case, one["per_second"], (one["connect_ms"] or {}).get("median", 0),
                many["per_second"], workers, one["failed"], many["failed"]))


def run(rounds=3, seconds=3, conns=200, workers=4, rundir=RUNDIR, out=print, prefix=PREFIX):
    """Both labs up at once (a lab lives in its own namespaces), then
    ``rounds`` rounds of every (lab, system) in turn, the order reversed
    every other round.  ``plain-ct`` is the plain twin in the conntrack lab:
    the same physical path as ``plain``, a check of the noise between the
    two labs.  Both labs are torn down, also on failure."""
    labs = {"mbx": Lab(prefix=prefix, rundir=rundir),
            "ct": Lab(prefix=prefix + "c", rundir=rundir + "-ct")}
    systems = {"plain": "mbx", "mbx": "mbx", "plain-ct": "ct", "ct-baseline": "ct"}
    raw = {"throughput": {c: {s: [] for s in systems} for c in THROUGHPUT},
           "newconn": {c: {s: [] for s in systems} for c in NEWCONN}}
    t0 = time.monotonic()
    try:
        for kind, lab in labs.items():
            Lab(prefix=lab.prefix, rundir=lab.rundir).down(log=lambda *_: None)  # a leftover
            os.makedirs(lab.rundir, exist_ok=True)
            t1 = time.monotonic()
            if kind == "mbx":
                echo_b1 = build_mbx(lab, lab.rundir, out)
            else:
                build_ct(lab, lab.rundir, out)
            _listening(lab)
            out("  (%.0f s)" % (time.monotonic() - t1))
        time.sleep(2.0)         # the load balancer's first health checks
        raw["conntrack_settings"] = {kind: conntrack_settings(lab)
                                     for kind, lab in labs.items()}
        raw["lb_algorithms"] = {"mbx": lb_algorithms(labs["mbx"]), "ct-baseline": {
            "%s:%d/tcp" % (CT.VIP, CT.VIP_PORT): "select group, OVS's default hash "
            "(5-tuple)", "%s:%d/tcp" % (CT.VIP, PORT): "select group, hash of ip_src"}}
        out("conntrack settings: %s; mbx VIPs: %s" % (raw["conntrack_settings"],
                                                     raw["lb_algorithms"]["mbx"]))
        order = list(systems)
        for rnd in range(1, rounds + 1):
            for system in (order if rnd % 2 else reversed(order)):
                _measure(labs[systems[system]], system, rnd, seconds, conns, workers, raw, out)
        raw["flows_per_host"] = {kind: {h: _flow_count(lab, h) for h in HOSTS}
                                 for kind, lab in labs.items()}
        raw["cpu_split"] = {s: cpu_split(labs[systems[s]], s, conns=conns * 3, workers=workers)
                            for s in systems}
        raw["cpu_split_rr"] = cpu_split(labs["mbx"], "mbx", case="rr", conns=conns * 3,
                                        workers=workers)
        out("CPU per new connection on h3: %s; mbx round-robin VIP on h1: %s" % (
            {s: v["cpu_ms_per_connection"] for s, v in raw["cpu_split"].items()},
            raw["cpu_split_rr"]["cpu_ms_per_connection"]))
        raw["shared_state_ms"] = shared_state_convergence(labs["mbx"], labs["mbx"].rundir,
                                                          echo_b1, out=out)
        raw["mbxd_profile"] = profile_mbxd(labs["mbx"], labs["mbx"].rundir, conns=conns * 3,
                                           workers=workers)
    finally:
        for lab in labs.values():
            lab.down(log=lambda *_: None)
    raw["method"] = {"rounds": rounds, "iperf_seconds": seconds, "connections": conns,
                     "workers": workers, "seconds": round(time.monotonic() - t0, 1)}
    return raw


def _cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_PMD_STATS = ("packets received", "packet recirculations", "emc hits", "smc hits",
              "megaflow hits", "miss with success upcall", "miss with failed upcall")
_SUBTABLES = "avg. subtable lookups per megaflow hit"


def datapath_counters(lab, host):
    """ovs-vswitchd's userspace datapath counters, every thread summed, and
    the subtable lookups behind its megaflow hits (average x hits)."""
    stats = dict.fromkeys(_PMD_STATS + ("subtable lookups",), 0.0)
    hits = 0
    for line in lab.appctl(host, "dpif-netdev/pmd-stats-show").splitlines():
        name, _, value = line.strip().partition(":")
        try:
            value = float(value)
        except ValueError:
            continue
        if name in stats:
            stats[name] += value
            if name == "megaflow hits":
                hits = value
        elif name == _SUBTABLES:
            stats["subtable lookups"] += value * hits
    return stats


def per_packet(dp0, dp1):
    """What the datapath did per packet received between two
    ``datapath_counters``: datapath passes (1 + recirculations), megaflow
    subtables probed per hit, upcalls."""
    n = dp1["packets received"] - dp0["packets received"]
    hits = dp1["megaflow hits"] - dp0["megaflow hits"]
    up = sum(dp1[k] - dp0[k] for k in ("miss with success upcall", "miss with failed upcall"))
    return {"packets": n,
            "passes": round(1 + (dp1["packet recirculations"]
                                 - dp0["packet recirculations"]) / n, 3) if n else None,
            "subtables_per_hit": round((dp1["subtable lookups"] - dp0["subtable lookups"])
                                       / hits, 3) if hits else None,
            "upcalls_per_1000": round(1000 * up / n, 3) if n else None}


# case -> (host measured, what)
CPU_CASES = {"same": ("h3", "on one host (firewall), both ends on h3"),
             "rr": ("h1", "to mbx's round-robin VIP, the client's host h1")}


def cpu_split(lab, system, case="same", conns=600, workers=4):
    """Where a new connection's time goes on one host: the CPU its
    ovs-vswitchd and (mbx) mbxd spend per new connection while ``workers``
    clients make ``conns`` short connections (``case``: ``same``, both ends
    on h3; ``rr``, mv on h1 to the round-robin VIP, mbx only), and what
    ovs-vswitchd's datapath did per connection: packets, recirculations
    (passes after a ``ct()``), megaflow hits and the subtables probed per
    hit, upcalls (cache misses handled by the slow path)."""
    host = CPU_CASES[case][0]
    pids = {k.split("/")[1]: v for k, v in lab.state["pids"].items()
            if k.startswith(host + "/") and k.split("/")[1] in ("mbxd", "ovs-vswitchd")}
    if case == "rr":
        client, addr, port = "mv", RR_VIP, CT.VIP_PORT
    else:
        side = "plain" if system.startswith("plain") else "chain"
        client, addr, port = NEWCONN["same"][1][side]
    dp0 = datapath_counters(lab, host)
    before = {k: _cpu_seconds(pid) for k, pid in pids.items()}
    res = new_conns(lab, client, addr, port, conns, workers)
    used = {k: _cpu_seconds(pid) - before[k] for k, pid in pids.items()}
    dp1 = datapath_counters(lab, host)
    ok = max(res["ok"], 1)
    per = {k: round((dp1[k] - dp0[k]) / ok, 2) for k in dp1}
    hits = dp1["megaflow hits"] - dp0["megaflow hits"]
    return {"host": host, "connections": res["ok"], "failed": res["failed"],
            "per_second": res["per_second"],
            "cpu_ms_per_connection": {k: round(1000 * v / ok, 3) for k, v in used.items()},
            "datapath_per_connection": per,
            "subtables_per_megaflow_hit": round(
                (dp1["subtable lookups"] - dp0["subtable lookups"]) / hits, 2) if hits else None}


_WAITING = ("select.select", "'poll' of 'select.poll'", "select.epoll")


def profile_mbxd(lab, rundir, host="h1", conns=600, workers=4, top=18):
    """cProfile of ``host``'s mbxd (restarted with ``--profile``) while
    clients make short connections to the round-robin VIP, whose backend
    mbxd picks and commits (the only new connections it sees: a firewalled
    or hash-balanced one is decided by the switch alone); the top functions
    by own time and the daemon loop's parts by cumulative time."""
    import pstats
    path = os.path.join(rundir, "mbxd-%s.prof" % host)
    lab.mbxd_stop(host)
    lab.mbxd_start(host, ["--profile", path])
    wait_until(lambda: os.path.exists(os.path.join(lab.host_dir(host), "mbxd.pid")) and
               lab.mbxd_appctl(host, "stats", check=False), 15, interval=0.2,
               what="mbxd on %s to answer" % host)
    time.sleep(2.0)
    stats0 = lab.mbxd_stats(host)
    res = new_conns(lab, "mv", RR_VIP, CT.VIP_PORT, conns, workers)
    stats1 = lab.mbxd_stats(host)
    lab.mbxd_stop(host)
    wait_until(lambda: os.path.exists(path), 15, interval=0.2, what="the profile")
    lab.mbxd_start(host)
    st = pstats.Stats(path)
    total = st.total_tt
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": "%s:%d(%s)" % (os.path.relpath(fname) if fname.startswith("/")
                                                else fname, line, func),
                     "calls": nc, "own_ms": round(1000 * tt, 1),
                     "cumulative_ms": round(1000 * ct, 1)})
    rows.sort(key=lambda r: -r["own_ms"])
    waiting = [r for r in rows if any(w in r["function"] for w in _WAITING)]
    rows = [r for r in rows if r not in waiting]
    loop = [r for r in rows if r["function"].startswith("middlebox/main.py")]
    loop.sort(key=lambda r: -r["cumulative_ms"])
    return {"host": host, "connections": res["ok"], "failed": res["failed"],
            "seconds": res["seconds"], "per_second": res["per_second"],
            "profiled_ms": round(1000 * total, 1),
            "waiting_ms": round(sum(r["own_ms"] for r in waiting), 1),
            "counters": {k: stats1.get(k, 0) - v for k, v in stats0.items()
                         if stats1.get(k, 0) - v},
            "top_own": rows[:top], "daemon_loop": loop[:10]}


def _flow_count(lab, host):
    return len([ln for ln in lab.ofctl(host, "dump-flows").splitlines()
                if "cookie=" in ln])


def _med(values):
    return statistics.median(values) if values else None


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def summarize(raw):
    """Medians per case and system, and the ratios to plain and mbx /
    ct-baseline (all measured in the same rounds)."""
    out = {"throughput": {}, "newconn": {}, "method": raw["method"],
           "flows_per_host": raw.get("flows_per_host"), "cpu_split": raw.get("cpu_split"),
           "cpu_split_rr": raw.get("cpu_split_rr"), "mbxd_profile": raw.get("mbxd_profile"),
           "conntrack_settings": raw.get("conntrack_settings"),
           "lb_algorithms": raw.get("lb_algorithms")}
    conv = raw.get("shared_state_ms")
    if conv:
        out["shared_state_ms"] = {"samples": len(conv), "median": statistics.median(conv),
                                  "max": max(conv)}
    for case, per in raw["throughput"].items():
        med = {s: _med(v) for s, v in per.items()}
        dps = (raw.get("throughput_datapath") or {}).get(case, {})
        datapath = {s: {k: _med([x[k] for x in v if x.get(k) is not None])
                        for k in ("passes", "subtables_per_hit", "upcalls_per_1000")}
                    for s, v in dps.items()}
        out["throughput"][case] = {
            "what": THROUGHPUT[case][0],
            "unit": "pps" if case.startswith("udp") else "Gbit/s",
            "median": med, "samples": per,
            "mbx_to_plain": _ratio(med["mbx"], med["plain"]),
            "ct-baseline_to_plain": _ratio(med["ct-baseline"], med["plain"]),
            "mbx_to_ct": _ratio(med["mbx"], med["ct-baseline"]),
            "plain-ct_to_plain": _ratio(med["plain-ct"], med["plain"]),
            "datapath_per_packet": datapath}
    for case, per in raw["newconn"].items():
        row = {"what": NEWCONN[case][0]}
        for mode in ("serial", "parallel"):
            med = {s: _med([x[mode]["per_second"] for x in v]) for s, v in per.items()}
            row[mode] = {"per_second": med,
                         "mbx_to_plain": _ratio(med["mbx"], med["plain"]),
                         "ct-baseline_to_plain": _ratio(med["ct-baseline"], med["plain"]),
                         "mbx_to_ct": _ratio(med["mbx"], med["ct-baseline"])}
        for q in ("median", "p99"):
            row["connect_ms_" + q] = {s: _med([x["serial"]["connect_ms"][q] for x in v
                                               if x["serial"]["connect_ms"]])
                                      for s, v in per.items()}
        row["connect_median_mbx_to_ct"] = _ratio(row["connect_ms_median"]["mbx"],
                                                 row["connect_ms_median"]["ct-baseline"])
        row["failed"] = {s: sum(x["serial"]["failed"] + x["parallel"]["failed"] for x in v)
                         for s, v in per.items()}
        out["newconn"][case] = row
    return out


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m lab.perfbench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rundir", default=RUNDIR, help="run directory (default %(default)s)")
    p.add_argument("--prefix", default=PREFIX,
                   help="name prefix of the labs' namespaces (default %(default)s)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m lab.perfbench needs root (network namespaces)", file=sys.stderr)
        return 2
    raw = run(max(1, min(args.rounds, 10)), max(1, min(args.seconds, 30)),
              max(10, min(args.connections, 5000)), max(1, min(args.workers, 16)),
              rundir=args.rundir, prefix=args.prefix,
              out=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(summarize(raw), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
