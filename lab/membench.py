"""Daemon memory per tracked connection, and OVS flows per connection.

``measure(n, trace)`` builds, in a fresh Python process, a ``MiddleboxCore``
configured like a host of a real slice (a default-deny firewall with one
allow rule) and feeds it ``n`` TCP connections as real frames through
``handle_frame`` (each connection's SYN from the VM and SYN-ACK from its
peer, so each ends established with both cache flows offloaded).  It
reports the process's resident memory before and after (``/proc/self``
VmRSS: everything Python allocated for the tables, fragmentation included),
with ``trace`` also tracemalloc's count of the bytes still allocated, and
the cache flows the daemon asked OVS to hold per connection.

``flows_per_kind()`` counts the OVS flows per connection of each kind the
chain makes (firewall, load balancer, SNAT), from ``lab.migbench``'s source
core.

``python -m lab.membench [--sizes 100000,1000000]`` prints the JSON.
"""

import argparse
import json
import struct
import subprocess
import sys
import time

from lab.sh import counts_arg


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _frame(src_mac, dst_mac, src, dst, sport, dport, flags):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1 if flags & 0x10 else 0,
                      0x50, flags, 1024, 0, 0)
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def _one(n, trace):
    import gc
    import tracemalloc
    from middlebox.config import HostConfig, RuleSpec, SliceConfig, VmSpec
    from middlebox.core import MiddleboxCore
    from ryu_apps import pipeline as P

    vm_mac, peer_mac = "02:00:00:00:00:01", "02:00:00:00:00:02"
    cfg = HostConfig("h1", {1: SliceConfig(
        tag=1, middlebox="fw", type="firewall", tenant="t", switch="ls", vni=1,
        default_action="deny",
        rules=(RuleSpec(100, "from-vm", "proto=tcp", "allow", uuid="r1"),),
        vms=(VmSpec("vm1", vm_mac, "10.0.0.1", "h1"), VmSpec("vm2", peer_mac, "10.0.0.2", None)))})
    core = MiddleboxCore("h1")
    core.configure(cfg, 0.0)
    vmb, peerb = bytes.fromhex(vm_mac.replace(":", "")), bytes.fromhex(peer_mac.replace(":", ""))
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    from_vm, to_vm = P.STAGE_FROM_VM << 13 | 1, P.STAGE_TO_VM << 13 | 1
    gc.collect()
    if trace:
        tracemalloc.start()
        base_traced = tracemalloc.get_traced_memory()[0]
    base_rss = _rss_bytes()
    t0 = time.perf_counter()
    for i in range(n):
        sport, dport = 1024 + i % 64000, 7000 + i // 64000
        core.handle_frame(_frame(vmb, peerb, a, b, sport, dport, 0x02), from_vm, 1.0)
        core.handle_frame(_frame(peerb, vmb, b, a, dport, sport, 0x12), to_vm, 1.0)
    seconds = time.perf_counter() - t0
    gc.collect()
    rss = _rss_bytes() - base_rss
    traced = tracemalloc.get_traced_memory()[0] - base_traced if trace else None
    if trace:
        tracemalloc.stop()
    count = core.conn_count()["total"]
    c = core.counters
    flows = c["flows_added"] - c["flows_deleted"]
    return {"connections": count, "rss_bytes": rss,
            "rss_bytes_per_connection": round(rss / max(count, 1), 1),
            "traced_bytes_per_connection": round(traced / max(count, 1), 1) if trace else None,
            "cache_flows": flows, "flows_per_connection": round(flows / max(count, 1), 3),
            "build_seconds": round(seconds, 2),
            "connections_per_second_built": round(count / seconds) if seconds else None}


def measure(n, trace=False, timeout=900):
    """``_one`` in a fresh interpreter (a clean heap, a clean RSS)."""
    proc = subprocess.run([sys.executable, "-m", "lab.membench", "--one", str(n)]
                          + (["--trace"] if trace else []),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("membench %d: %s" % (n, proc.stderr.strip()[-500:]))
    return json.loads(proc.stdout)


def flows_per_kind(n=3000):
    """OVS flows the daemon holds per established connection of each kind
    of the chain (lab.migbench's source core: firewall, LB, SNAT)."""
    from lab.migbench import KINDS, build_source
    from middlebox import cacheflows as CF
    core, flows = build_source(n)
    per = {k: 0 for k in KINDS}
    counts = {}
    for f in flows.values():
        parsed = CF.split_cookie(f.cookie)
        if parsed is not None:
            counts[parsed[1]] = counts.get(parsed[1], 0) + 1
    for e in core._entries.values():
        kind = "fw" if e.xlate is None else e.xlate.kind
        per[kind] = per.get(kind, 0) + counts.get(e.entry_id, 0)
    each = n // len(KINDS)
    return {k: round(v / each, 2) for k, v in per.items()}


def run(sizes=(100_000, 1_000_000), out=print):
    results = {}
    for n in sizes:
        r = measure(n)
        if n <= 100_000:
            # tracemalloc's own records inflate the RSS: a separate run.
            r["traced_bytes_per_connection"] = measure(n, trace=True)[
                "traced_bytes_per_connection"]
        results[str(n)] = r
        out("memory: %d connections: %.0f bytes each (RSS)%s, %.1f cache flows each"
            % (r["connections"], r["rss_bytes_per_connection"],
               ", %.0f traced" % r["traced_bytes_per_connection"]
               if r["traced_bytes_per_connection"] else "", r["flows_per_connection"]))
    results["flows_per_kind"] = flows_per_kind()
    out("OVS flows per connection: %s" % results["flows_per_kind"])
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.membench")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="100000,1000000", type=counts_arg)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(min(args.one, 2_000_000), args.trace)))
        return 0
    print(json.dumps(run(args.sizes,
                         out=lambda line: print(line, file=sys.stderr)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
