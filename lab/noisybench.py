"""Noisy neighbour: another tenant's new connections while one VM floods.

Two tenants share a host pair (h1 and h2 of a lab of their own), each
behind its own firewall.  The *quiet* tenant's VM on h1 opens short
connections (connect, one echoed line, close) one after another to a
round-robin VIP (mbxd on h1 picks each backend: every new connection needs
the daemon) whose backend is its server on h2; the *noisy* tenant's VM on
h1 floods with new connections, half to a port its peer's firewall drops
(half-open entries in its zone), half to a port its own firewall rejects
(each answered by mbxd on h1).  Measured, for the quiet tenant, with the same probe,
in four phases (``PHASES``): quiet; during the flood with the limits on
(``new-conn-rate-vm`` = ``--rate``, ``conn-limit-vm`` its default); during
the flood with them at their maximum (what a flood does without them);
quiet again: how many connections succeeded, the connect time (SYN to
SYN-ACK through both hosts' pipelines) median and p99.  Also: how many
entries the flooding VM's zone held at most and how many of its new
connections its meter dropped.  Target: no failure, p99 during the flood
(limits on) at most 2x the quiet p99 (a ratio within one run: the machine
is shared).

The flood (``python -m lab.noisybench flood``, run inside the VM) sends
TCP SYNs from a raw socket with a new source port each, to the given ports
in turn; it is bounded in packets, rate and time.  ``idle`` parks idle TCP
connections on a port (tests/integration/test_limits.py: the migration
port).

``python -m lab.noisybench [--flood-seconds S] [--rate R] [--probes N]``
prints the JSON ``run`` returns; ``make bench`` runs it as its noisy-neighbour
part (``lab.bench``), ``lab.report`` renders its table.
"""

import argparse
import json
import os
import random
import socket
import struct
import sys
import time

from middlebox.packet import checksum

MAX_SECONDS = 120.0
MAX_PACKETS = 2_000_000


# ----------------------------------------------------------------- flooder
def syn_segment(src, dst, sport, dport, seq):
    """A TCP SYN segment (no IP header) with its checksum, from ``src`` to
    ``dst`` (dotted IPv4)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6,
                                                                         len(header))
    csum = checksum(pseudo + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def flood(dst, ports, rate, seconds, count, src=None):
    """Send at most ``count`` SYNs to ``dst`` (to ``ports`` in turn) at
    ``rate`` per second for at most ``seconds``, each from a new source
    port; prints {"sent", "seconds", "per_second"} as JSON."""
    seconds = min(float(seconds), MAX_SECONDS)
    count = min(int(count), MAX_PACKETS)
    if src is None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect((dst, ports[0]))
        src = probe.getsockname()[0]
        probe.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sport = random.randrange(1024, 65536)
    sent, t0 = 0, time.monotonic()
    batch = max(1, int(rate) // 200)            # paced in slices of 5 ms
    while sent < count:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        due = min(count, int(now * rate) + batch)
        while sent < due:
            sport = sport + 1 if sport < 65535 else 1024
            seg = syn_segment(src, dst, sport, ports[sent % len(ports)],
                              random.getrandbits(32))
            try:
                sock.sendto(seg, (dst, 0))
            except OSError:
                pass                    # a full queue: that SYN is lost, as on a wire
            sent += 1
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    sock.close()
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3),
                      "per_second": round(sent / elapsed, 1) if elapsed else 0.0}))
    return 0


def idle(dst, port, count, seconds):
    """Keep ``count`` TCP connections to ``dst``:``port`` open that never say
    a word, for up to ``seconds``: one the peer closes is opened again (the
    idle connections an attacker parks on a host's migration port; at most
    20 x ``count`` connections in all).  Prints {"parked": N} once the first
    ``count`` are open, and at the end {"opened", "failed",
    "cut_by_peer", "cut_after_s" (median seconds a connection stayed before
    the peer closed it), "seconds"} as JSON at the end."""
    import selectors
    count, seconds = min(int(count), 1000), min(float(seconds), MAX_SECONDS)
    sel = selectors.DefaultSelector()
    opened, failed, cut_after = 0, 0, []
    t0 = time.monotonic()

    def open_one():
        nonlocal opened, failed
        try:
            s = socket.create_connection((dst, port), timeout=2)
        except OSError:
            failed += 1
            return
        opened += 1
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, time.monotonic())

    while len(sel.get_map()) < count and opened + failed < count:
        open_one()
    print(json.dumps({"parked": len(sel.get_map())}), flush=True)
    while time.monotonic() - t0 < seconds:
        while len(sel.get_map()) < count and opened + failed < 20 * count:
            open_one()
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                cut_after.append(time.monotonic() - key.data)
                sel.unregister(key.fileobj)
                key.fileobj.close()
        if opened + failed >= 20 * count and not sel.get_map():
            break
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    cut_after.sort()
    print(json.dumps({"opened": opened, "failed": failed, "cut_by_peer": len(cut_after),
                      "cut_after_s": round(cut_after[len(cut_after) // 2], 3)
                      if cut_after else None,
                      "seconds": round(time.monotonic() - t0, 3)}))
    return 0


# ------------------------------------------------------------------- bench
PREFIX, RUNDIR = "mbxn", "/run/mbx-bench-noisy"
SUBNET = "10.8.0.0/24"
QUIET = {"q1": ("h1", "10.8.0.11"), "q2": ("h2", "10.8.0.12")}
NOISY = {"n1": ("h1", "10.8.0.11"), "n2": ("h2", "10.8.0.12")}
OPEN, DROPPED, REJECTED = 7000, 7001, 7002
VIP = "10.8.0.100"              # the quiet tenant's round-robin VIP: mbxd picks its backend
RATE = 1000                     # new-conn-rate-vm during the bench
UNLIMITED = {"new-conn-rate-vm": "1000000", "conn-limit-vm": "3000000"}
PHASES = ("quiet", "flood-limited", "flood-unlimited", "quiet-again")


def _build(lab, rate):
    lab.up(["h1", "h2"], log=lambda *_: None, db_cluster=1)
    for n, (t, vms) in enumerate((("quiet", QUIET), ("noisy", NOISY))):
        lab.mbxctl_ok("--wait=hv", "ls-add", "ls-" + t, "--vni", str(4001 + n), "--subnet",
                      SUBNET, "--tenant", t)
        chain = ["fw-" + t]
        lab.mbxctl_ok("--wait=hv", "mb-add", "fw-" + t, "ls-" + t, "--default", "deny",
                      "--", "fw-add", "fw-" + t, "100", "from-vm", "any", "allow",
                      "--", "fw-add", "fw-" + t, "110", "from-vm",
                      "proto=tcp dport=%d" % REJECTED, "reject",
                      "--", "fw-add", "fw-" + t, "100", "to-vm", "proto=tcp dport=%d" % OPEN,
                      "allow")
        if t == "quiet":
            chain.append("lb-quiet")
            lab.mbxctl_ok("--wait=hv", "mb-add", "lb-quiet", "ls-quiet", "--type", "lb",
                          "--", "lb-add", "lb-quiet", "%s:%d" % (VIP, OPEN),
                          "%s:%d" % (QUIET["q2"][1], OPEN), "--algorithm", "round-robin")
        lab.mbxctl_ok("--wait=hv", "steer-add", "ls-" + t, "100", "any", ",".join(chain))
        for name, (host, ip) in vms.items():
            lab.vm_add(name, host, "ls-" + t, ip + "/24")
    lab.mbxctl_ok("--wait=hv", "global-set", "new-conn-rate-vm=%d" % rate)
    lab.spawn("q2", [sys.executable, "-m", "lab.probe", "serve", "--port", str(OPEN)],
              os.path.join(lab.rundir, "noisy-serve.log"))
    from lab.sh import wait_until
    # The backend counts only once h1's health probes found it up.
    wait_until(lambda: " up " in lab.mbxd_appctl("h1", "lb/list") and
               lab.tcp_try("q1", VIP, OPEN, count=5)["ok"] == 5, 30, interval=0.5,
               what="the quiet tenant's server up behind its VIP")


def _victim(lab, probes):
    """The quiet tenant's short connections, one after another."""
    proc = lab.exec("q1", [sys.executable, "-m", "lab.probe", "rate", "--to", VIP,
                           "--port", str(OPEN), "--count", str(probes), "--workers", "1",
                           "--timeout", "3"], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError("victim probe: %s" % proc.stderr.strip()[-300:])
    return json.loads(proc.stdout)


def _noisy_vm(lab):
    found = [v for v in json.loads(lab.mbxd_appctl("h1", "limits/json"))["vms"]
             if v["vm"] == "n1"]
    return found[0] if found else {}


CPU_OF = ("h1/mbxd", "h1/ovs-vswitchd", "h2/mbxd", "h2/ovs-vswitchd")


def _cpu(lab):
    """(wall clock, {process: CPU seconds}) of the daemons in ``CPU_OF``."""
    from lab.perfbench import _cpu_seconds
    return time.monotonic(), {k: _cpu_seconds(lab.state["pids"][k]) for k in CPU_OF
                              if k in lab.state["pids"]}


def _cpu_share(start, end):
    """{process: share of one CPU} between two ``_cpu`` readings."""
    wall = end[0] - start[0]
    return {k: round((end[1][k] - start[1][k]) / wall, 3) for k in start[1]
            if k in end[1] and wall > 0}


def _phase(lab, name, probes, flood_rate, flood_seconds, out):
    import threading
    flooder, zone_max, stop = None, [0], threading.Event()
    before = _noisy_vm(lab)
    cpu_start = _cpu(lab)
    if name.startswith("flood"):
        log = os.path.join(lab.rundir, "noisy-%s.log" % name)
        flooder = lab.spawn("n1", [sys.executable, "-m", "lab.noisybench", "flood", "--to",
                                   NOISY["n2"][1], "--port", "%d,%d" % (DROPPED, REJECTED),
                                   "--rate",
                                   str(flood_rate), "--seconds", str(flood_seconds)], log)

        def sample():
            while not stop.wait(0.5):
                zone_max[0] = max(zone_max[0], _noisy_vm(lab).get("count") or 0)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(min(10.0, flood_seconds / 2))    # the noisy zone in its steady state
    try:
        res = _victim(lab, probes)
    finally:
        stop.set()
        if flooder is not None:
            flooder.wait(flood_seconds + 30)
            lab.forget_pid(flooder.pid)
    after = _noisy_vm(lab)
    res["phase"] = name
    res["cpu"] = _cpu_share(cpu_start, _cpu(lab))
    if flooder is not None:
        with open(os.path.join(lab.rundir, "noisy-%s.log" % name)) as f:
            res["flood"] = json.loads(f.read().strip().splitlines()[-1])
        res["noisy_zone_max"] = zone_max[0]
        res["noisy_meter_dropped"] = (after.get("new_conn_dropped") or 0) - (
            before.get("new_conn_dropped") or 0)
        res["noisy_limit"] = after.get("limit")
        res["noisy_rate"] = after.get("new_conn_rate")
    out("%s: %d ok, %d failed, connect median %s ms, p99 %s ms; CPU %s%s" % (
        name, res["ok"], res["failed"], (res["connect_ms"] or {}).get("median"),
        (res["connect_ms"] or {}).get("p99"),
        ", ".join("%s %.0f%%" % (k, 100 * v) for k, v in res["cpu"].items()),
        "; flood %s/s, noisy zone at most %d entries, %d dropped by its meter" % (
            res["flood"]["per_second"], res["noisy_zone_max"], res["noisy_meter_dropped"])
        if flooder is not None else ""))
    return res


def run(probes=1000, flood_rate=5000, flood_seconds=20, rate=RATE, rundir=RUNDIR,
        prefix=PREFIX, out=print):
    """The noisy-neighbour benchmark: the quiet tenant's new connections in
    each of ``PHASES`` (quiet; one VM flooding with the limits on; flooding
    with them off; quiet again)."""
    from lab.lab import Lab
    probes = max(10, min(int(probes), 5000))
    flood_seconds = max(2.0, min(float(flood_seconds), 60.0))
    lab = Lab(prefix=prefix, rundir=rundir)
    lab.down(log=lambda *_: None)           # one left by a killed run
    phases = {}
    try:
        _build(lab, rate)
        _victim(lab, min(probes, 100))      # warm-up: caches, the VIP's first picks
        for name in PHASES:
            if name == "flood-unlimited":
                lab.mbxctl_ok("--wait=hv", "global-set",
                              *("%s=%s" % kv for kv in UNLIMITED.items()))
            elif name == "quiet-again":
                lab.mbxctl_ok("--wait=hv", "global-set", "new-conn-rate-vm=%d" % rate,
                              "conn-limit-vm=")
            phases[name] = _phase(lab, name, probes, flood_rate, flood_seconds, out)
            if name.startswith("flood"):
                # The flood's half-open entries gone (timeout-tcp-syn and the
                # switch's sweeper) before the next phase.
                time.sleep(2)
    finally:
        lab.down(log=lambda *_: None)
    return summarize(phases, {"probes": probes, "flood_rate": flood_rate,
                              "flood_seconds": flood_seconds, "new_conn_rate_vm": rate})


def _p99(res):
    return (res.get("connect_ms") or {}).get("p99")


def summarize(phases, method):
    quiet = _p99(phases["quiet"])
    ratios = {name: round(_p99(res) / quiet, 2) if quiet and _p99(res) else None
              for name, res in phases.items() if name != "quiet"}
    limited = phases["flood-limited"]
    met = limited["failed"] == 0 and ratios["flood-limited"] is not None and \
        ratios["flood-limited"] <= 2.0
    return {"phases": phases, "p99_to_quiet": ratios, "target_met": met, "method": method}


def markdown(r):
    """The noisy-neighbour section of docs/benchmarks.md."""
    m = r["method"]
    lines = [
        "## Noisy neighbour (`lab/noisybench.py`)", "",
        "Tenant *quiet*'s VM on h1 opens %d short connections (connect, one echoed line, "
        "close; `lab.probe rate`, one after another) to a round-robin VIP whose backend is "
        "its server on h2: mbxd on h1 picks the backend of every one, so each needs the "
        "daemon. Tenant *noisy*'s VM on the same host sends %d TCP SYNs a second for %g s "
        "(a raw socket, a new source port each), half to a port its peer's firewall drops "
        "(each a half-open connection in its zone), half to a port its own firewall "
        "rejects (each answered by mbxd on h1 with a RST). `new-conn-rate-vm` is %d/s, "
        "`conn-limit-vm` its default (100,000); in *flood-unlimited* both are set to their "
        "maximum. Connect time = SYN to SYN-ACK through both hosts' pipelines."
        % (m["probes"], m["flood_rate"], m["flood_seconds"], m["new_conn_rate_vm"]), "",
        "| phase | quiet tenant: ok / failed | connect median | connect p99 | p99 / quiet "
        "| flood sent | noisy zone at most | dropped by its meter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in r["phases"].items():
        c = res.get("connect_ms") or {}
        fl = res.get("flood")
        lines.append("| %s | %d / %d | %s ms | %s ms | %s | %s | %s | %s |" % (
            name, res["ok"], res["failed"], c.get("median", "-"), c.get("p99", "-"),
            "**%.2f**" % r["p99_to_quiet"][name] if r["p99_to_quiet"].get(name) else "-",
            "%d (%.0f/s)" % (fl["sent"], fl["per_second"]) if fl else "-",
            "{:,}".format(res["noisy_zone_max"]) if fl else "-",
            "{:,}".format(res["noisy_meter_dropped"]) if fl else "-"))
    lines += ["", "CPU of the daemons over each phase (share of one CPU; a flood phase "
              "from its start to its end, a quiet phase while the probe ran):", "",
              "| phase | " + " | ".join(CPU_OF) + " |",
              "|---|" + "---|" * len(CPU_OF)]
    for name, res in r["phases"].items():
        cpu = res.get("cpu") or {}
        lines.append("| %s | %s |" % (name, " | ".join(
            "%.0f%%" % (100 * cpu[k]) if k in cpu else "-" for k in CPU_OF)))
    lines += ["", "Target: no failure and p99 at most 2x the quiet p99 while one VM floods "
              "(limits on): **%s**." % ("met" if r["target_met"] else "not met"), ""]
    ph = r["phases"]
    lim, unl = ph["flood-limited"], ph["flood-unlimited"]
    lines += [
        "What it shows: a flooding VM's SYNs cost the switch's datapath, fill its "
        "conntrack zone and (the rejected half) load mbxd. Without the limits that zone "
        "grew to %s entries (the "
        "switch's count, which holds expired entries until its sweeper frees them; "
        "`timeout-tcp-syn`, 10 s, ages them), with them to %s: the VM's meter dropped "
        "%s SYNs before any "
        "rule, commit, tunnel or trip to mbxd. mbxd used at most %s of a CPU on either "
        "host during a flood. At this rate (about what the lab's Python flooder gets "
        "through the VM's port) neither the switch nor mbxd is saturated, so the limits "
        "do not change the other tenant's figures here: they bound what the flooding VM "
        "takes. The other tenant's p99 ratio with the limits off (%s) and in the second "
        "quiet phase (%s) show how much this shared machine's noise alone moves it."
        % ("{:,}".format(unl["noisy_zone_max"]), "{:,}".format(lim["noisy_zone_max"]),
           "{:,}".format(lim["noisy_meter_dropped"]),
           "%.0f%%" % (100 * max([v for res in (lim, unl) for k, v in
                                  (res.get("cpu") or {}).items() if k.endswith("mbxd")]
                                 or [0])),
           _ratio(r, "flood-unlimited"), _ratio(r, "quiet-again")), ""]
    return lines


def _ratio(r, name):
    v = r["p99_to_quiet"].get(name)
    return "-" if v is None else "%.2f x" % v


def _ports(text):
    ports = tuple(int(p) for p in text.split(","))
    if not all(1 <= p <= 65535 for p in ports):
        raise ValueError(text)
    return ports


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.noisybench")
    sub = p.add_subparsers(dest="cmd")
    for name, help_, options in (
            ("flood", "(inside a VM) send a bounded SYN flood",
             (("--rate", float, 2000), ("--seconds", float, 10), ("--count", int, 100000))),
            ("idle", "hold idle TCP connections to a port",
             (("--count", int, 200), ("--seconds", float, 30)))):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--to", required=True)
        sp.add_argument("--port", type=_ports, required=True, help="PORT[,PORT...]")
        for option, kind, default in options:
            sp.add_argument(option, type=kind, default=default)
    p.add_argument("--probes", type=int, default=1000)
    p.add_argument("--flood-rate", type=int, default=5000)
    p.add_argument("--flood-seconds", type=float, default=20)
    p.add_argument("--rate", type=int, default=RATE, help="new-conn-rate-vm in the bench")
    p.add_argument("--prefix", default=PREFIX)
    p.add_argument("--rundir", default=RUNDIR)
    args = p.parse_args(argv)
    if args.cmd == "flood":
        return flood(args.to, args.port, args.rate, args.seconds, args.count)
    if args.cmd == "idle":
        return idle(args.to, args.port[0], args.count, args.seconds)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    res = run(args.probes, min(args.flood_rate, 50000), args.flood_seconds, args.rate,
              args.rundir, args.prefix, out=lambda line: print(line, file=sys.stderr))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
