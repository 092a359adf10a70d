"""``make bench``: the middleboxes' cost, measured as ratios within one run.

A 2-host lab with two tenants on the same subnet: ``plain`` (no middlebox)
and ``fw`` (a stateful firewall on every VM, default deny, TCP 5201 and 7000
allowed).  On the same hosts, in the same run, alternating between the two:

* established TCP throughput VM to VM across hosts (iperf3, 3 s a run);
* new connections per second (short TCP connections, one at a time: connect,
  one echoed line, close) and their mean time;
* the daemon's memory per tracked connection (tracemalloc over the daemon's
  own tables holding 100k connections, built from real frames).

Also a chain (firewall + load balancer + SNAT): throughput and new
connections to a VIP whose backends are on another host, throughput to the
internet server through SNAT, and how long shared state takes to reach every
host.  Then, with the lab down, the migration benchmarks of ``lab.migbench``
(on the same prefix): the time to move the state of 1k, 10k and 100k
connections phase by phase, the reply gap a migration adds over the same
re-plumb without middleboxes (per path), and the share of established
connections that survive a migration with mbx and with OVS conntrack.
Results go to ``docs/benchmarks/middlebox.json`` and ``.md``.
The machine is shared and noisy: only ratios within one run are meaningful.
"""

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc

from lab.cli import up_from_topology
from lab.lab import Lab

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "docs", "benchmarks")
TOPOLOGY = """
hosts: [h1, h2, h3]
switches:
  - {name: ls-plain, tenant: plain, vni: 3001, subnet: 10.3.0.0/24}
  - {name: ls-fw, tenant: fw, vni: 3002, subnet: 10.3.0.0/24}
  - {name: ls-chain, tenant: chain, vni: 3003, subnet: 10.3.0.0/24}
vms:
  - {name: p1, switch: ls-plain, ip: 10.3.0.11, host: h1}
  - {name: p2, switch: ls-plain, ip: 10.3.0.12, host: h2}
  - {name: f1, switch: ls-fw, ip: 10.3.0.11, host: h1}
  - {name: f2, switch: ls-fw, ip: 10.3.0.12, host: h2}
  - {name: c1, switch: ls-chain, ip: 10.3.0.11, host: h1}
  - {name: c2, switch: ls-chain, ip: 10.3.0.12, host: h2}
  - {name: c3, switch: ls-chain, ip: 10.3.0.13, host: h2}
  - {name: c4, switch: ls-chain, ip: 10.3.0.14, host: h3}
middleboxes:
  - name: fw-chain
    type: firewall
    switch: ls-chain
    default_action: deny
    rules:
      - {priority: 100, direction: from-vm, match: any, action: allow}
      - {priority: 100, direction: to-vm, match: "proto=tcp dport=5201", action: allow}
      - {priority: 110, direction: to-vm, match: "proto=tcp dport=7000", action: allow}
  - name: lb-chain
    type: lb
    switch: ls-chain
    vips:
      - {vip: "10.3.0.100:5201", algorithm: source-hash,
         backends: ["10.3.0.12:5201", "10.3.0.13:5201"]}
      - {vip: "10.3.0.100:7000", algorithm: round-robin,
         backends: ["10.3.0.12:7000", "10.3.0.13:7000"],
         options: {health-interval: "1", health-timeout: "0.5", health-rise: "1",
                   health-fall: "1"}}
  - name: nat-chain
    type: nat
    switch: ls-chain
    nat_rules:
      - {type: snat, external_ips: ["203.0.113.120"]}
  - name: fw
    type: firewall
    switch: ls-fw
    default_action: deny
    rules:
      - {priority: 100, direction: from-vm, match: any, action: allow}
      - {priority: 100, direction: to-vm, match: "proto=tcp dport=5201", action: allow}
      - {priority: 110, direction: to-vm, match: "proto=tcp dport=7000", action: allow}
steering:
  - {switch: ls-fw, priority: 100, match: any, middlebox: fw}
  - {switch: ls-chain, priority: 100, match: any, chain: [fw-chain, lb-chain, nat-chain]}
"""
# (client VM, server address): VM to VM across hosts; the chain reaches its
# backends on h2 through the VIP (firewall + load balancer + SNAT in the chain).
PAIRS = {"plain": ("p1", "10.3.0.12"), "firewall": ("f1", "10.3.0.12"),
         "chain": ("c1", "10.3.0.100")}
SERVERS = ("p2", "f2", "c2", "c3")


def iperf(lab, client, server_ip, seconds):
    proc = lab.exec(client, ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                    capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(proc.stdout)
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def shared_state_convergence(lab, server, toggles, out):
    """Seconds from a host publishing shared state (here: h2's health view of
    its backend c3, flipped by stopping and starting c3's service) to the row
    arriving at every other host serving the slice (h1, h3): the receiving
    daemon's arrival time minus the publisher's stamp (one machine, one clock)."""
    delays = []
    for i in range(toggles):
        want = "down" if i % 2 == 0 else "up"
        if want == "down":
            server.terminate()
            server.wait(10)
            lab.forget_pid(server.pid)
        else:
            server = lab.spawn("c3", [sys.executable, "-m", "lab.probe", "serve", "--port",
                                      "7000"], "/run/mbx-bench/echo-c3-%d.log" % i)
        deadline = time.monotonic() + 15
        seen = {}
        while time.monotonic() < deadline and len(seen) < 2:
            for host in ("h1", "h3"):
                if host in seen:
                    continue
                rows = json.loads(lab.mbxd_appctl(host, "shared/json"))["rows"]
                for r in rows:
                    if r["service"] == "lb-health" and r["host"] == "h2" \
                            and r["value"].get("10.3.0.13:7000") == want:
                        seen[host] = (r["received"] - r["stamp"]) / 1000.0
            time.sleep(0.05)
        if len(seen) == 2:
            delays.append(max(seen.values()))
            out("shared state: c3 %s on h2 -> on every host after %.1f ms"
                % (want, 1000 * max(seen.values())))
    return delays, server


def new_connections(lab, client, server_ip, count):
    res = lab.tcp_try(client, server_ip, 7000, timeout=2.0, count=count)
    return {"ok": res["ok"], "failed": count - res["ok"], "seconds": res["seconds"],
            "per_second": res["ok"] / res["seconds"] if res["seconds"] else 0.0}


def daemon_bytes_per_connection(n=100_000):
    """Memory the daemon's tables hold per connection, measured with
    tracemalloc while a core built from a real config tracks ``n`` TCP
    connections (SYN and SYN-ACK frames through ``handle_frame``)."""
    from middlebox.config import HostConfig, RuleSpec, SliceConfig, VmSpec
    from middlebox.core import MiddleboxCore
    from middlebox.packet import checksum  # noqa: F401  (import before measuring)
    from ryu_apps import pipeline as P

    vm_mac, peer_mac = "02:00:00:00:00:01", "02:00:00:00:00:02"
    cfg = HostConfig("h1", {1: SliceConfig(
        tag=1, middlebox="fw", type="firewall", tenant="t", switch="ls", vni=1,
        rules=(RuleSpec(100, "from-vm", "any", "allow", uuid="r1"),),
        vms=(VmSpec("vm1", vm_mac, "10.0.0.1", "h1"), VmSpec("vm2", peer_mac, "10.0.0.2", None)))})
    core = MiddleboxCore("h1")
    core.configure(cfg, 0.0)

    def frame(src_mac, dst_mac, src, dst, sport, dport, flags):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                         bytes(src), bytes(dst))
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1 if flags & 0x10 else 0,
                          0x50, flags, 1024, 0, 0)
        return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
                + b"\x08\x00" + ip + tcp)

    from_vm = P.STAGE_FROM_VM << 13 | 1
    to_vm = P.STAGE_TO_VM << 13 | 1
    a, b = [10, 0, 0, 1], [10, 0, 0, 2]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        sport, dport = 1024 + i % 60000, 7000 + i // 60000
        core.handle_frame(frame(vm_mac, peer_mac, a, b, sport, dport, 0x02), from_vm, 1.0)
        core.handle_frame(frame(peer_mac, vm_mac, b, a, dport, sport, 0x12), to_vm, 1.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    count = core.conn_count()["total"]
    return {"connections": count, "bytes": used, "bytes_per_connection": used / max(count, 1)}


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def run(rounds, seconds, conns, out=print, migration=None):
    lab = Lab(prefix="mbxb", rundir="/run/mbx-bench")
    lab.down(log=lambda *_: None)
    lab = Lab(prefix="mbxb", rundir="/run/mbx-bench")
    topo = os.path.join("/run/mbx-bench-topology.yaml")
    with open(topo, "w") as f:
        f.write(TOPOLOGY)
    results = {"throughput_gbps": {k: [] for k in PAIRS},
               "new_conn": {k: [] for k in PAIRS}}
    try:
        up_from_topology(lab, topo, "vxlan")
        servers, echo = [], {}
        for srv in SERVERS:
            servers.append(lab.spawn(srv, ["iperf3", "-s"], "/run/mbx-bench/iperf-%s.log" % srv))
            echo[srv] = lab.spawn(srv, [sys.executable, "-m", "lab.probe", "serve",
                                        "--port", "7000"], "/run/mbx-bench/echo-%s.log" % srv)
        servers.append(lab.ext_spawn("xs", ["iperf3", "-s"], "/run/mbx-bench/iperf-xs.log"))
        time.sleep(2.5)                 # the first health-check rounds
        rss_before = rss_kib(lab.state["pids"]["h1/mbxd"])
        results["throughput_gbps"]["chain_snat_internet"] = []
        for r in range(rounds):
            for name, (cli, addr) in PAIRS.items():
                gbps = iperf(lab, cli, addr, seconds)
                results["throughput_gbps"][name].append(gbps)
                out("round %d %-8s TCP %.3f Gbit/s" % (r + 1, name, gbps))
            gbps = iperf(lab, "c1", "198.51.100.10", seconds)
            results["throughput_gbps"]["chain_snat_internet"].append(gbps)
            out("round %d %-8s TCP %.3f Gbit/s (c1 -> internet server through SNAT)"
                % (r + 1, "chain", gbps))
            for name, (cli, addr) in PAIRS.items():
                nc = new_connections(lab, cli, addr, conns)
                results["new_conn"][name].append(nc)
                out("round %d %-8s %d new connections: %.0f/s (%d failed)"
                    % (r + 1, name, conns, nc["per_second"], nc["failed"]))
        results["daemon_rss_kib"] = {"before": rss_before,
                                     "after": rss_kib(lab.state["pids"]["h1/mbxd"])}
        results["daemon_stats_h1"] = lab.mbxd_appctl("h1", "stats")
        results["shared_state_convergence_s"], echo["c3"] = shared_state_convergence(
            lab, echo["c3"], 6, out)
        servers.extend(echo.values())
        for proc in servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            lab.forget_pid(proc.pid)
    finally:
        lab.down(log=lambda *_: None)
        os.unlink(topo)
    results["memory"] = daemon_bytes_per_connection()
    out("daemon memory: %.0f bytes per connection (%d connections)"
        % (results["memory"]["bytes_per_connection"], results["memory"]["connections"]))
    if migration is not None:
        from lab import migbench
        results["migration"] = migbench.run(out=out, **migration)
    return results


def summarize(results, rounds, seconds, conns):
    tp = {k: statistics.median(v) for k, v in results["throughput_gbps"].items()}
    cps = {k: statistics.median(x["per_second"] for x in v) for k, v in results["new_conn"].items()}
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout
    return {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "ovs": ovs.splitlines()[0] if ovs else "?"},
        "method": {"rounds": rounds, "iperf_seconds": seconds, "connections_per_round": conns},
        "tcp_throughput_gbps_median": tp,
        "tcp_throughput_ratio_firewall_to_plain": tp["firewall"] / tp["plain"],
        "new_connections_per_second_median": cps,
        "new_connections_ratio_firewall_to_plain": cps["firewall"] / cps["plain"],
        "tcp_throughput_ratio_chain_to_plain": tp["chain"] / tp["plain"],
        "new_connections_ratio_chain_to_plain": cps["chain"] / cps["plain"],
        "shared_state_convergence_ms": {
            "samples": len(results["shared_state_convergence_s"]),
            "median": 1000 * statistics.median(results["shared_state_convergence_s"] or [0]),
            "max": 1000 * max(results["shared_state_convergence_s"] or [0])},
        "daemon_bytes_per_connection": results["memory"]["bytes_per_connection"],
        "migration": summarize_migration(results.get("migration")),
        "raw": results,
    }


def summarize_migration(mig):
    """The migration benchmarks' headline figures (``lab.migbench``)."""
    if not mig:
        return None
    transfer = {}
    for n, t in mig["transfer"].items():
        transfer[n] = {k: t[k] for k in ("ms", "entries_per_s", "total_ms", "flows_installed",
                                         "flows_per_s", "flows_serialize_ms", "wire_bytes")}
        if "gather_datapath" in t:
            transfer[n]["gather_datapath_ms"] = t["gather_datapath"]
            transfer[n]["gather_ratio_datapath_to_service"] = round(
                t["gather_datapath"]["total_ms"] / max(t["ms"]["gather"], 0.1), 1)
    gaps = {path: {k: ({kk: vv for kk, vv in v.items() if kk != "samples"}
                       if isinstance(v, dict) and "n" in v else v)
                   for k, v in d.items() if k != "migrate_total_ms"}
            for path, d in mig["gaps"].items()}
    for path, d in gaps.items():
        if d["plain"].get("n") and d["mbx_vm_to_vm"].get("n"):
            d["ratio_median_mbx_to_plain"] = round(
                d["mbx_vm_to_vm"]["median"] / d["plain"]["median"], 3)
        d["migrate_total_ms"] = mig["gaps"][path]["migrate_total_ms"]
    ct = mig["conntrack"]
    return {
        "state_transfer": transfer,
        "reply_gap_ms": gaps,
        "survival": {"mbx": mig["survival_mbx"], "conntrack": ct},
        "survival_ratio_mbx_to_conntrack": {
            path: round(s["share"] / ct["share"], 3) if ct["share"] else None
            for path, s in mig["survival_mbx"].items()},
        "method": mig["method"],
    }


def markdown(s):
    tp, cps = s["tcp_throughput_gbps_median"], s["new_connections_per_second_median"]
    m = s["machine"]
    return "\n".join([
        "# Middlebox benchmark (`make bench`)",
        "",
        "Generated by `lab/bench.py`: a 3-host namespace lab, clients and servers on different hosts, "
        "tenant `plain` (no middlebox), tenant `fw` (stateful firewall, default "
        "deny) and tenant `chain` (firewall, load balancer on a VIP with backends "
        "on another host, SNAT) measured alternately in one run. Machine: %d CPUs, kernel %s, Python %s, %s. "
        "Shared and noisy: compare the ratios, not the absolute figures."
        % (m["cpus"], m["kernel"], m["python"], m["ovs"]),
        "",
        "| measure | no middlebox | through the firewall | ratio |",
        "|---|---|---|---|",
        "| established TCP throughput, across hosts (iperf3 %ds, median of %d) | %.3f Gbit/s | %.3f Gbit/s | %.3f |"
        % (s["method"]["iperf_seconds"], s["method"]["rounds"], tp["plain"], tp["firewall"],
           s["tcp_throughput_ratio_firewall_to_plain"]),
        "| new TCP connections per second, one client (%d a round, median) | %.0f | %.0f | %.3f |"
        % (s["method"]["connections_per_round"], cps["plain"], cps["firewall"],
           s["new_connections_ratio_firewall_to_plain"]),
        "",
        "| measure | no middlebox | through the chain firewall + LB + SNAT | ratio |",
        "|---|---|---|---|",
        "| established TCP throughput to a VIP, backends across hosts | %.3f Gbit/s | %.3f Gbit/s | %.3f |"
        % (tp["plain"], tp["chain"], s["tcp_throughput_ratio_chain_to_plain"]),
        "| new TCP connections per second to the VIP | %.0f | %.0f | %.3f |"
        % (cps["plain"], cps["chain"], s["new_connections_ratio_chain_to_plain"]),
        "| established TCP throughput to the internet server through SNAT (and the "
        "lab's router namespace) | | %.3f Gbit/s | %.3f |"
        % (tp["chain_snat_internet"], tp["chain_snat_internet"] / tp["plain"]),
        "",
        "Shared state: a host publishes a change (here the health of a "
        "load-balancer backend flips as its service stops and starts) and every "
        "other host serving the slice has it after **%.1f ms** (median of %d, max "
        "%.1f ms; the receiving daemon's arrival time minus the publisher's stamp)."
        % (s["shared_state_convergence_ms"]["median"],
           s["shared_state_convergence_ms"]["samples"],
           s["shared_state_convergence_ms"]["max"]),
        "",
        "Daemon memory per tracked connection: **%.0f bytes** (tracemalloc over "
        "mbxd's tables holding %d TCP connections built from real frames)."
        % (s["daemon_bytes_per_connection"], s["raw"]["memory"]["connections"]),
        "",
        "Established connections are forwarded by OVS alone (the daemon installs "
        "exact-match cache flows once the handshake is answered), so throughput "
        "through the firewall tracks the plain path. A new connection costs the "
        "daemon its SYN and SYN-ACK at each end (4 trips through Python across two "
        "hosts) plus two flow installs per host; that is where the connection-rate "
        "gap comes from. Through the chain a new connection also waits for its "
        "reply catcher to be in OVS (an OpenFlow barrier before its SYN is "
        "released) and is judged again at the backend's to-VM stage. Making the "
        "first packets cheaper is the performance issue's work.",
        "",
    ] + migration_markdown(s.get("migration")))


def _k(n):
    n = int(n)
    return "%dk" % (n // 1000) if n % 1000 == 0 else str(n)


def _rate(v):
    return "%.0fk/s" % (v / 1000) if v >= 10000 else "%.1fk/s" % (v / 1000)


def migration_markdown(m):
    if not m:
        return []
    tr = m["state_transfer"]
    lines = [
        "## Migration (`lab/migbench.py`)",
        "",
        "### Moving the state of N connections of one VM",
        "",
        "| connections | gather | transfer | import | flows installed | total | flows | bytes on the wire |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, t in tr.items():
        ms, eps = t["ms"], t["entries_per_s"]
        lines.append("| %s | %s | %s | %s | %s | %.0f ms | %d (%s; %.0f ms building them) | %.1f MB |" % (
            _k(n), *("%.1f ms (%s)" % (ms[p], _rate(eps[p]))
                     for p in ("gather", "transfer", "import", "flows")),
            t["total_ms"], t["flows_installed"], _rate(t["flows_per_s"]).replace("/s", " flows/s"),
            t["flows_serialize_ms"], t["wire_bytes"] / 1e6))
    dp = [(n, t) for n, t in tr.items() if "gather_datapath_ms" in t]
    lines += [
        "",
        "How measured: a source `MiddleboxCore` (chain firewall -> LB -> SNAT) with N "
        "established TCP connections of one VM built from real SYN and SYN-ACK frames "
        "through `handle_frame` (a third VM-to-VM through the firewall, a third to a VIP, "
        "a third SNATed to the internet); **gather** = `gather(vm, \"service\")`; "
        "**transfer** = the protocol's hello, one `state` snapshot and `final` (count, "
        "digest) encoded and sent through a real `migchan.Channel` pair (TLS, "
        "certificates from `pki`, 127.0.0.1) until the destination decoded `final`; "
        "**import** = the destination's count/digest check and `import_vm`; **flows "
        "installed** = the resulting cache flows sent with `OfConn.send_flows` to a "
        "netdev bridge of a private ovs-vswitchd, until the barrier reply (the part "
        "spent building and serializing the FLOW_MODs in Python is given in the flows "
        "column). Rates are connections per second of each phase. The ack back is not "
        "in the total.",
    ]
    for n, t in dp:
        g = t["gather_datapath_ms"]
        lines += ["", "Datapath gather (`migration-gather=datapath`) at %s: %.0f ms "
                  "(flow-stats dump of %d flows %.0f ms + `gather` %.0f ms), %.0fx the "
                  "service gather." % (_k(n), g["total_ms"], g["flows_dumped"], g["dump_ms"],
                                      g["gather_ms"], t["gather_ratio_datapath_to_service"])]
    lines += [
        "",
        "The benchmark sends the snapshot as one message; mbxd sends it in parts of "
        "20,000 records (`middlebox.migration.SNAPSHOT_PART`).",
        "",
        "### Reply gap of a migration",
        "",
        "| path | plain re-plumb, median / p99 | mbx (VM-to-VM kinds), median / p99 | "
        "extra, median / p99 | mbx (all kinds, with LB and SNAT), median / p99 | extra |",
        "|---|---|---|---|---|---|",
    ]
    for path, d in m["reply_gap_ms"].items():
        p, v, a = d["plain"], d["mbx_vm_to_vm"], d["mbx_all_kinds"]
        ev, ea = d.get("extra_vm_to_vm", {}), d.get("extra_all_kinds", {})
        lines.append("| %s (%d moves each) | %.0f / %.0f ms | %.0f / %.0f ms | %+.0f / %+.0f ms "
                     "| %.0f / %.0f ms | %+.0f / %+.0f ms |" % (
                         path, v["n"], p["median"], p["p99"], v["median"], v["p99"],
                         ev.get("median", 0), ev.get("p99", 0), a["median"], a["p99"],
                         ea.get("median", 0), ea.get("p99", 0)))
    lines += [
        "",
        "How measured: a 3-host lab with the migration scenario (`lab.migscenario`: mv "
        "behind firewall -> LB -> SNAT, 3 connections of each kind) and, on a switch "
        "without any steering policy, its plain twin (same addresses, the VM-to-VM kinds "
        "fw-in and fw-out). mv and its twin move h1 <-> h2 in turn with `Lab.migrate` "
        "(announced: `notify=True`; unannounced: `notify=False`), fresh connections "
        "(`lab.probe conns`, a request every 20 ms) for every move; a move's gap is the "
        "largest gap between two replies of any surviving connection. Extra = mbx - "
        "plain. p99 of %d samples is their maximum. TCP's retransmission timer (200 ms "
        "minimum) sets the floor of every gap: time mbx adds below it is hidden."
        % m["method"]["moves_per_path"],
        "",
        "`Lab.migrate` itself (announced: begin to link up, waiting for the snapshot and "
        "the import; unannounced: unplug until the migration is done), median: %s."
        % "; ".join("%s mbx %.0f ms, plain %.0f ms" % (
            path, d["migrate_total_ms"]["mbx"]["median"], d["migrate_total_ms"]["plain"]["median"])
            for path, d in m["reply_gap_ms"].items()),
        "",
        "### Connections that survive a migration",
        "",
        "| kind | mbx, announced | mbx, unannounced | OVS conntrack, no state transfer |",
        "|---|---|---|---|",
    ]
    sv, ct = m["survival"]["mbx"], m["survival"]["conntrack"]

    def cell(k):
        return "%d/%d (%.0f%%)" % (k["survived"], k["total"], 100 * k["survived"] / k["total"]) \
            if k and k["total"] else "-"
    for kind in ct["kinds"]:
        lines.append("| %s | %s | %s | %s |" % (kind, cell(sv["announced"]["kinds"].get(kind)),
                                                cell(sv["unannounced"]["kinds"].get(kind)),
                                                cell(ct["kinds"][kind])))

    def total(kinds):
        return {"survived": sum(k["survived"] for k in kinds.values()),
                "total": sum(k["total"] for k in kinds.values())}
    lines += [
        "| all | %s | %s | %s |" % (cell(total(sv["announced"]["kinds"])),
                                   cell(total(sv["unannounced"]["kinds"])),
                                   cell(total(ct["kinds"]))),
        "",
        "How measured: mbx: the moves above (every connection of each move; it survived if "
        "it has no error and got replies after the move); conntrack: `lab.ctbaseline.run()` "
        "(its OVN-like `ct(commit)`/`ct(nat)` pipeline on the same VMs and "
        "traffic, mv moved h1 -> h2 once per run, nothing copies conntrack entries), "
        "%d runs. Ratio of the shares, mbx / conntrack: %s."
        % (m["method"]["conntrack_runs"], ", ".join(
            "%s %.2f" % (p, r) for p, r in m["survival_ratio_mbx_to_conntrack"].items())),
        "",
    ]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--migration-sizes", default="1000,10000,100000",
                   help="connection counts for the state-transfer timing")
    p.add_argument("--migration-moves", type=int, default=10,
                   help="moves per path and system for the reply gap (1-30)")
    p.add_argument("--no-migration", action="store_true",
                   help="skip the migration benchmarks (lab.migbench)")
    args = p.parse_args(argv)
    migration = None if args.no_migration else {
        "sizes": tuple(int(x) for x in args.migration_sizes.split(",") if x),
        "moves_per_path": max(1, min(args.migration_moves, 30))}
    results = run(args.rounds, args.seconds, args.connections, migration=migration)
    summary = summarize(results, args.rounds, args.seconds, args.connections)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "middlebox.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    with open(os.path.join(args.out_dir, "middlebox.md"), "w") as f:
        f.write(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
