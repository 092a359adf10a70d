"""Memory per connection: what mbxd holds of a connection while it moves,
and what a connection costs the datapath (ovs-vswitchd's conntrack).

Connections live in the switch's conntrack; mbxd holds records of them only
while a VM migrates: the destination stages the records it receives
(``MigrationManager._state_in``: ``{(slice, 5-tuple): (slice, Conn)}``), the
source keeps the same mirror of what it sent.

* ``measure_mbxd(n, trace)``: in a fresh Python process, the wire parts of
  ``n`` connections of the migration benchmark's mix (``lab.migbench``: a
  third firewalled, a third through a load-balancer VIP, a third through
  SNAT, which adds the SNAT zone's record) are made first; then they are
  decoded (``conn.decode``) and staged as mbxd stages them.  Bytes per
  connection = the growth of the process's resident memory over the
  staging / n (``trace``: also tracemalloc's count of the bytes still
  allocated, in a separate run; its own bookkeeping inflates the RSS).
* ``measure_datapath(n)``: a throwaway switch (``lab.migbench.Switch``: its
  own ovsdb-server and ovs-vswitchd in their own namespace); the same
  connections committed as conntrack entries (``middlebox.ctcommit``
  packet-outs); bytes per entry and per connection = the growth of
  ovs-vswitchd's resident memory / the entries (``dpctl/ct-stats-show``)
  and / n.

``python -m lab.membench [--sizes 100000,1000000] [--no-datapath]`` prints
the JSON.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

from lab.sh import counts_arg

SIZES = (100_000, 1_000_000)
RUNDIR = "/run/mbx-bench-mem"
PREFIX = "mbxb"
PART = 10000


def _rss_bytes(pid="self"):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wire_parts(n):
    """The wire parts (``conn.encode``) of ``n`` connections as a source
    gathers them, made ``PART`` connections at a time (few objects alive at
    once): (parts, records)."""
    from lab import migbench as M
    from middlebox import conn as C, vmstate
    service, zones = M._host(M.SRC_HOST, M.SRC_TAG, 1)
    vm_zone, snat_zone = zones.vm(M.VM), zones.get(("snat", M.SNAT_UUID))
    parts, records = [], 0
    for start in range(0, n, PART):
        vm, snat = M.connections(min(start + PART, n), vm_zone, snat_zone, start)
        recs = vmstate.gather(M.VM, service.slices, vm, {M.SNAT_UUID: snat})
        parts.append(C.encode([c for _, c in recs], [sl for sl, _ in recs]))
        records += len(recs)
    return parts, records


def _one(n, trace):
    """In this (fresh) process: the staged records of ``n`` connections."""
    import tracemalloc
    from middlebox import conn as C
    parts, records = wire_parts(n)
    gc.collect()
    if trace:
        tracemalloc.start()
        base_traced = tracemalloc.get_traced_memory()[0]
    base_rss = _rss_bytes()
    t0 = time.perf_counter()
    staged = {}
    for data in parts:
        conns, slices = C.decode(data)
        for sl, c in zip(slices, conns):
            staged[(sl, c.key)] = (sl, c)
    seconds = time.perf_counter() - t0
    gc.collect()
    rss = _rss_bytes() - base_rss
    traced = tracemalloc.get_traced_memory()[0] - base_traced if trace else None
    if trace:
        tracemalloc.stop()
    if len(staged) != records:
        raise RuntimeError("staged %d records of %d" % (len(staged), records))
    return {"connections": n, "records": records, "rss_bytes": rss,
            "rss_bytes_per_connection": round(rss / n, 1),
            "rss_bytes_per_record": round(rss / records, 1),
            "traced_bytes_per_connection": round(traced / n, 1) if trace else None,
            "wire_bytes_per_record": round(sum(map(len, parts)) / records, 1),
            "staged_per_second": round(records / seconds) if seconds else None}


def measure_mbxd(n, trace=False, timeout=1800):
    """``_one`` in a fresh interpreter (a clean heap, a clean RSS)."""
    proc = subprocess.run([sys.executable, "-m", "lab.membench", "--one", str(n)]
                          + (["--trace"] if trace else []),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("membench %d: %s" % (n, proc.stderr.strip()[-500:]))
    return json.loads(proc.stdout)


def measure_datapath(n, rundir=RUNDIR, prefix=PREFIX):
    """ovs-vswitchd's resident memory growth for the conntrack entries of
    ``n`` connections, in a throwaway switch (always torn down)."""
    from lab import migbench as M
    sw = M.Switch(rundir, "xmem", prefix)
    of = None
    try:
        sw.up()
        of = M.of_connect(sw.target)
        # A first commit and flush, so what the first packet-outs allocate
        # once (ofproto, conntrack's own tables) is not counted.
        vm, snat = M.connections(300, 1, 2)
        M.seed(of, vm + snat)
        sw.appctl("dpctl/flush-conntrack")
        time.sleep(0.5)
        base = sw.rss()
        seconds = 0.0
        for start in range(0, n, 100_000):
            vm, snat = M.connections(min(start + 100_000, n), 1, 2, start)
            seconds += M.seed(of, vm + snat)
            del vm, snat
        time.sleep(0.5)
        grown = sw.rss() - base
        entries = sw.entries()
        if entries is None:
            entries = len(sw.appctl("dpctl/dump-conntrack").splitlines())
        return {"connections": n, "entries": entries, "rss_bytes": grown,
                "rss_bytes_per_entry": round(grown / max(entries, 1), 1),
                "rss_bytes_per_connection": round(grown / n, 1),
                "committed_per_second": round(entries / seconds) if seconds else None}
    finally:
        if of is not None:
            of.close()
        sw.down()


def run(sizes=SIZES, out=print, datapath=True, rundir=RUNDIR, prefix=PREFIX):
    results = {"mbxd": {}, "datapath": {}}
    for n in sizes:
        r = measure_mbxd(n)
        if n <= 100_000:
            # tracemalloc's own records inflate the RSS: a separate run.
            r["traced_bytes_per_connection"] = measure_mbxd(n, trace=True)[
                "traced_bytes_per_connection"]
        results["mbxd"][str(n)] = r
        out("memory: mbxd holds %d connections (%d records) in %.0f bytes each (RSS)%s"
            % (n, r["records"], r["rss_bytes_per_connection"],
               ", %.0f traced" % r["traced_bytes_per_connection"]
               if r["traced_bytes_per_connection"] else ""))
        if datapath:
            d = measure_datapath(n, rundir, prefix)
            results["datapath"][str(n)] = d
            out("memory: ovs-vswitchd holds %d connections (%d conntrack entries) in %.0f "
                "bytes each, %.0f per entry" % (n, d["entries"], d["rss_bytes_per_connection"],
                                                 d["rss_bytes_per_entry"]))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.membench")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), type=counts_arg)
    p.add_argument("--no-datapath", action="store_true",
                   help="only mbxd's records (no switch, no root needed)")
    p.add_argument("--rundir", default=RUNDIR)
    p.add_argument("--prefix", default=PREFIX, help="name prefix of the switch's namespace")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(min(args.one, 2_000_000), args.trace)))
        return 0
    if not args.no_datapath and os.geteuid() != 0:
        print("python -m lab.membench needs root for the datapath part (or --no-datapath)",
              file=sys.stderr)
        return 2
    print(json.dumps(run(args.sizes, out=lambda line: print(line, file=sys.stderr),
                         datapath=not args.no_datapath, rundir=args.rundir,
                         prefix=args.prefix), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
