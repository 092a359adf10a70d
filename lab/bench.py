"""``make bench``: mbx against the pipelines users run today, in one run.

1. The data path (``lab.perfbench``): the same traffic through **plain** (a
   switch with no middlebox), **ct-baseline** (the OVS-conntrack pipeline of
   OVN and Neutron's OVS firewall, ``lab.ctbaseline``) and **mbx** (the same
   policy, firewall -> LB -> SNAT, through mbx): established throughput (TCP
   and 64-byte UDP, on one host and across hosts, through SNAT), new
   connections per second and the first packet's latency, where a new
   connection's CPU goes, mbxd's profile, shared-state convergence.
2. Migration (``lab.migbench``): the time to move the state of 1k, 10k and
   100k connections by phase, the extra reply gap over the bare re-plumb per
   path, and the share of connections that survive, against ct-baseline.
3. The control plane at scale (``lab.cpbench``): 1,000 simulated hosts x 50
   VMs.
4. Memory (``lab.membench``): daemon bytes per connection at 100k and 1M,
   OVS flows per connection.

Results: ``docs/benchmarks/results.json`` and ``docs/benchmarks.md`` with its
plots (``docs/benchmarks/*.png``).  The machine is shared and noisy: every
comparison is a ratio of figures measured in the same run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from lab import report
from lab.sh import counts_arg

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")
OUT_DIR = os.path.join(DOCS, "benchmarks")


def machine():
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
        except OSError:
            return "?"
        return out.splitlines()[0].strip() if out else "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem_gb = 0
    try:
        from importlib.metadata import version
        osken = version("os-ken")
    except Exception:           # noqa: BLE001 - informational only
        osken = "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_gb, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "ovs": first_line(["ovs-vswitchd", "--version"]),
            "iperf3": first_line(["iperf3", "--version"]), "os_ken": osken,
            "datapath": "userspace (netdev), no kernel module"}


def save(results, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, default=str)  # in run order: --render gives the same page
        f.write("\n")
    os.replace(path + ".tmp", path)


def run(args, out=print):
    """Every part in turn; results.json is written after each, so a part
    that fails loses nothing measured before it."""
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "options": vars(args)}
    if args.update:
        # Re-run only the parts not skipped; keep the others' figures.
        with open(os.path.join(args.out_dir, "results.json")) as f:
            kept = json.load(f)
        kept.update({k: v for k, v in results.items() if k != "started"})
        results = kept
    t0 = time.monotonic()
    if not args.skip_dataplane:
        from lab import perfbench
        raw = perfbench.run(args.rounds, args.seconds, args.connections, args.workers, out=out)
        results["dataplane"] = perfbench.summarize(raw)
        save(results, args.out_dir)
    if not args.no_migration:
        from lab import migbench
        mig = migbench.run(sizes=args.migration_sizes,
                           moves_per_path=max(1, min(args.migration_moves, 30)), out=out)
        results["migration"] = report.summarize_migration(mig)
        save(results, args.out_dir)
    if not args.skip_control_plane:
        from lab import cpbench
        results["control_plane"] = cpbench.run(hosts=args.cp_hosts, vms_per_host=50, out=out)
        save(results, args.out_dir)
    if not args.skip_memory:
        from lab import membench
        results["memory"] = membench.run(
            args.memory_sizes, out=out)
    results["seconds"] = round(time.monotonic() - t0 + (
        results.get("seconds", 0) if args.update else 0), 1)
    save(results, args.out_dir)
    return results


def _t(target, measured, met):
    return {"target": target, "measured": measured, "met": met}


def targets(r):
    """The issue's targets, each with what this run measured."""
    out = []
    d = r.get("dataplane")
    if d:
        for case, row in d["throughput"].items():
            mp, mc = row["mbx_to_plain"], row["mbx_to_ct"]
            if mp is not None:
                out.append(_t("throughput %s: mbx >= 0.95 x plain" % case, "%.2f x" % mp,
                              mp >= 0.95))
            if mc is not None:
                out.append(_t("throughput %s: mbx >= 1.0 x ct-baseline" % case, "%.2f x" % mc,
                              mc >= 1.0))
        for case, row in d["newconn"].items():
            mc = row["parallel"]["mbx_to_ct"]
            if mc is not None:
                out.append(_t("new connections/s %s: mbx >= 1.0 x ct-baseline" % case,
                              "%.2f x (%s vs %s)" % (mc, report._cps(
                                  row["parallel"]["per_second"]["mbx"]), report._cps(
                                  row["parallel"]["per_second"]["ct-baseline"])), mc >= 1.0))
    m = r.get("migration")
    if m:
        for path, s in m["survival"]["mbx"].items():
            out.append(_t("established connections surviving a migration, %s: 100%%" % path,
                          "%.0f%% (ct-baseline %.0f%%)" % (100 * (s["share"] or 0),
                                                          100 * (m["survival"]["conntrack"]
                                                                 ["share"] or 0)),
                          s["share"] == 1.0))
        big = m["state_transfer"].get("100000") or m["state_transfer"].get(100000)
        if big:
            out.append(_t("state of 100k connections moved and installed <= 1 s",
                          "%.2f s" % (big["total_ms"] / 1000), big["total_ms"] <= 1000))
        for path, limit in (("announced", 10), ("unannounced", 50)):
            g = m["reply_gap_ms"].get(path, {}).get("extra_all_kinds")
            if g:
                out.append(_t("extra reply gap p99, %s: <= %d ms" % (path, limit),
                              "%+.0f ms (median %+.0f ms)" % (g["p99"], g["median"]),
                              g["p99"] <= limit))
    cp = r.get("control_plane")
    if cp:
        n = "%d hosts x %d VMs" % (cp["hosts"], cp["vms_per_host"])
        out.append(_t("control plane at %s: full computation <= 2 s" % n,
                      "%.2f s" % cp["full"]["seconds"], cp["full"]["met"]))
        mv = cp["move"]["reaction_ms"]
        out.append(_t("control plane at %s: one VM move <= 20 ms" % n,
                      "%.0f ms median, %.0f ms max" % (mv["median"], mv["max"]),
                      cp["move"]["met"]))
        sc = cp.get("scales") or []
        if sc:
            meds = [x["median_flows"] for x in sc]
            out.append(_t("flows per host grow with what the host runs, not with the cloud",
                          "median %s at %s hosts" % (" / ".join("%g" % m for m in meds),
                                                     " / ".join(str(x["hosts"]) for x in sc)),
                          max(meds) <= min(meds) * 1.1))
        cb = cp.get("config_bytes") or {}
        if "other_tenant_bytes_max" in cb:
            real = cp.get("config_bytes_real") or {}
            out.append(_t("config bytes a host receives for tenants it does not run: 0",
                          "%d B (max over %d hosts)%s" % (
                              cb["other_tenant_bytes_max"], cb.get("hosts_sampled", 0),
                              "; real ovsdb-server: %d B" % real["other_tenant_bytes_max"]
                              if "other_tenant_bytes_max" in real else ""),
                          cb["other_tenant_bytes_max"] == 0
                          and real.get("other_tenant_bytes_max", 0) == 0))
    mem = r.get("memory")
    if mem:
        for n, v in mem.items():
            if n.isdigit():
                out.append(_t("daemon <= 1 KB per tracked connection at %s" % report._k(n),
                              "%.0f B" % v["rss_bytes_per_connection"],
                              v["rss_bytes_per_connection"] <= 1024))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--report", default=os.path.join(DOCS, "benchmarks.md"))
    p.add_argument("--migration-sizes", default="1000,10000,100000", type=counts_arg,
                   help="connection counts for the state-transfer timing")
    p.add_argument("--migration-moves", type=int, default=10,
                   help="moves per path and system for the reply gap (1-30)")
    p.add_argument("--memory-sizes", default="100000,1000000", type=counts_arg)
    p.add_argument("--cp-hosts", type=int, default=1000)
    p.add_argument("--no-migration", action="store_true",
                   help="skip the migration benchmarks (lab.migbench)")
    p.add_argument("--skip-dataplane", action="store_true")
    p.add_argument("--skip-control-plane", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--update", action="store_true",
                   help="run only the parts not skipped and keep the others from results.json")
    p.add_argument("--render", action="store_true",
                   help="only write docs/benchmarks.md again from results.json")
    args = p.parse_args(argv)
    args.rounds = max(1, min(args.rounds, 10))
    args.seconds = max(1, min(args.seconds, 30))
    args.connections = max(10, min(args.connections, 5000))
    args.workers = max(1, min(args.workers, 16))
    if args.render or args.update:
        if not os.path.exists(os.path.join(args.out_dir, "results.json")):
            p.error("--render and --update need the results.json of a run in %s"
                    % args.out_dir)
    if args.render:
        # Only the page again, from the results a run wrote.
        with open(os.path.join(args.out_dir, "results.json")) as f:
            results = json.load(f)
    else:
        results = run(args)
    results["targets"] = targets(results)
    save(results, args.out_dir)
    text = report.write(results, args.out_dir, args.report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
