"""``make bench``: mbx against the pipelines users run today, in one run.

1. The data path (``lab.perfbench``): the same traffic through **plain** (a
   switch with no middlebox), **ct-baseline** (the OVS-conntrack pipeline of
   OVN and Neutron's OVS firewall, ``lab.ctbaseline``) and **mbx** (the same
   policy, firewall -> LB -> NAT, compiled by mbxd into the switch's
   conntrack pipeline): established throughput (TCP and 64-byte UDP, on one
   host and across hosts, through SNAT), new connections per second and the
   first packet's latency, where a new connection's CPU goes, mbxd's
   profile, shared-state convergence.
2. Migration (``lab.migbench``): moving the conntrack state of 1k, 10k,
   100k and 1M connections between two real switches by phase, usable at
   the destination with bulk and lazy import; the extra reply gap over the
   bare re-plumb per path; the share of connections that survive, against
   ct-baseline.
3. The control plane at scale (``lab.cpbench``, issue 14): 1,000 simulated
   hosts x 50 VMs.
4. Memory (``lab.membench``): what mbxd holds per connection while a VM
   moves, and ovs-vswitchd's memory per conntrack entry, at 100k and 1M.
5. Failover (``lab.habench``, issue 15): the Raft leaders of both
   databases, the serving physical controller and the active mbx-northd
   killed in turn under a live TCP connection; the takeover times.
6. Noisy neighbour (``lab.noisybench``): another tenant's new connections
   (success, connect time median and p99) quiet and while one VM floods,
   with the per-VM limits on and off.

Results: ``docs/benchmarks/results.json`` and ``docs/benchmarks.md`` with its
plots (``docs/benchmarks/*.png``); the targets of issue 13 are checked by
``lab.report.targets``.  The machine is shared and noisy: every comparison
is a ratio of figures measured in the same run.
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


def _commit():
    """The repository's HEAD (and whether the tree had changes), or None."""
    try:
        head = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--",
                                "middlebox", "ryu_apps", "lab", "ovsdb"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + (" with local changes" if dirty else "")) if head else None


PARTS = ("dataplane", "migration", "control_plane", "memory", "failover")


def run(args, out=print):
    """Every part in turn; results.json is written after each, so a part
    that fails loses nothing measured before it."""
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "commit": _commit(), "options": vars(args)}
    if args.update:
        # Re-run only the parts not skipped; keep the others' figures.
        with open(os.path.join(args.out_dir, "results.json")) as f:
            kept = json.load(f)
        measured = kept.get("measured_at") or {
            part: kept.get("commit") for part in PARTS if part in kept}
        kept.update({k: v for k, v in results.items() if k != "started"})
        kept["measured_at"] = measured
        results = kept
    at = results.setdefault("measured_at", {})
    t0 = time.monotonic()
    if not args.skip_dataplane:
        from lab import perfbench
        raw = perfbench.run(args.rounds, args.seconds, args.connections, args.workers,
                            rundir=args.rundir, prefix=args.prefix, out=out)
        results["dataplane"] = perfbench.summarize(raw)
        at["dataplane"] = results["commit"]
        save(results, args.out_dir)
    if not args.no_migration:
        from lab import migbench
        mig = migbench.run(sizes=args.migration_sizes,
                           moves_per_path=max(1, min(args.migration_moves, 30)),
                           per_kind=args.per_kind, ct_runs=args.conntrack_runs,
                           rundir=args.rundir, prefix=args.prefix, out=out)
        results["migration"] = report.summarize_migration(mig)
        at["migration"] = results["commit"]
        save(results, args.out_dir)
    if not args.skip_control_plane:
        from lab import cpbench
        results["control_plane"] = cpbench.run(hosts=args.cp_hosts,
                                               vms_per_host=args.cp_vms_per_host, out=out,
                                               scales=tuple(n for n in cpbench.SCALES
                                                            if n <= args.cp_hosts),
                                               moves=args.cp_moves)
        at["control_plane"] = results["commit"]
        save(results, args.out_dir)
    if not args.skip_memory:
        from lab import membench
        results["memory"] = membench.run(args.memory_sizes, out=out,
                                         rundir=args.rundir + "-mem", prefix=args.prefix)
        at["memory"] = results["commit"]
        save(results, args.out_dir)
    if not args.skip_failover:
        from lab import habench
        results["failover"] = habench.run(args.failover_rounds, rundir=args.rundir + "-ha",
                                          prefix=args.prefix + "f", out=out)
        at["failover"] = results["commit"]
        save(results, args.out_dir)
    if not args.skip_noisy:
        from lab import noisybench
        results["noisy"] = noisybench.run(args.noisy_probes, args.noisy_flood_rate,
                                          args.noisy_flood_seconds,
                                          rundir=args.rundir + "-noisy",
                                          prefix=args.prefix + "n", out=out)
        at["noisy"] = results["commit"]
    results["seconds"] = round(time.monotonic() - t0 + (
        results.get("seconds", 0) if args.update else 0), 1)
    save(results, args.out_dir)
    return results


def targets(r):
    """The issue's targets, each with what this run measured."""
    return report.targets(r)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--report", default=os.path.join(DOCS, "benchmarks.md"))
    p.add_argument("--migration-sizes", default="1000,10000,100000,1000000",
                   type=counts_arg, help="connection counts for the state-transfer timing")
    p.add_argument("--migration-moves", type=int, default=10,
                   help="moves per path and system for the reply gap (1-30)")
    p.add_argument("--per-kind", type=int, default=3,
                   help="connections of each kind per migration move")
    p.add_argument("--conntrack-runs", type=int, default=2,
                   help="runs of the conntrack baseline's migration")
    p.add_argument("--memory-sizes", default="100000,1000000", type=counts_arg)
    p.add_argument("--cp-hosts", type=int, default=1000)
    p.add_argument("--cp-vms-per-host", type=int, default=50)
    p.add_argument("--cp-moves", type=int, default=5)
    p.add_argument("--rundir", default="/run/mbx-bench",
                   help="run directory of the labs and switches (default %(default)s)")
    p.add_argument("--prefix", default="mbxb",
                   help="name prefix of their namespaces (default %(default)s)")
    p.add_argument("--no-migration", action="store_true",
                   help="skip the migration benchmarks (lab.migbench)")
    p.add_argument("--skip-dataplane", action="store_true")
    p.add_argument("--skip-control-plane", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-failover", action="store_true")
    p.add_argument("--failover-rounds", type=int, default=5,
                   help="rounds of lab.habench's kills (1-20)")
    p.add_argument("--skip-noisy", action="store_true")
    p.add_argument("--noisy-probes", type=int, default=1000,
                   help="the quiet tenant's connections per phase of lab.noisybench")
    p.add_argument("--noisy-flood-rate", type=int, default=5000,
                   help="SYNs a second the noisy VM sends (lab.noisybench)")
    p.add_argument("--noisy-flood-seconds", type=float, default=20)
    p.add_argument("--update", action="store_true",
                   help="run only the parts not skipped and keep the others from results.json")
    p.add_argument("--render", action="store_true",
                   help="only write docs/benchmarks.md again from results.json")
    args = p.parse_args(argv)
    args.rounds = max(1, min(args.rounds, 10))
    args.seconds = max(1, min(args.seconds, 30))
    args.connections = max(10, min(args.connections, 5000))
    args.workers = max(1, min(args.workers, 16))
    args.per_kind = max(1, min(args.per_kind, 20))
    args.conntrack_runs = max(1, min(args.conntrack_runs, 10))
    if not args.render and os.geteuid() != 0:
        p.error("needs root (network namespaces); --render only needs results.json")
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
