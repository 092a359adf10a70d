"""``make demo``: a 3-host lab, two tenants on the same subnet, isolation, a
TCP connection that lives through a VM's live migration (and three through
a real QEMU guest's QEMU live migration) and through the
loss of a database leader and of the serving controllers (3-member Raft
clusters, a standby physical controller and a standby mbx-northd), and tenant red's
distributed firewall allowing, denying and forwarding established connections in the switch alone, then a service chain
(firewall, load balancer, NAT) with an internet server and client outside
the tenants.  Prints a report and
tears everything down, also when a step fails."""

import os
import sys
import time

from lab.lab import Lab
from lab.probe import Probe
from lab.sh import LabError, run as sh_run

TOPOLOGY = os.path.join(os.path.dirname(__file__), "topologies", "demo.yaml")
PROBE_PORT = 7000


def check_pings(lab, out):
    """Each row: (from, to address, expected, observed).  Returns all-as-expected."""
    macs = {name: vm["mac"] for name, vm in lab.state["vms"].items()}
    by_mac = {mac: name for name, mac in macs.items()}
    cases = [("red1", "10.0.0.12", "red2"),    # across hosts, same tenant
             ("red1", "10.0.0.13", "red3"),
             ("blue1", "10.0.0.12", "blue2"),  # same address, other tenant
             ("blue1", "10.0.0.20", "blue3"),
             ("red1", "10.0.0.20", None),      # exists only in tenant blue
             ("blue1", "10.0.0.13", None)]     # exists only in tenant red
    good = True
    out("\n%-6s -> %-10s %-9s %-24s %s" % ("from", "to", "expect", "observed", "verdict"))
    for src, addr, expect in cases:
        ok, rtt, mac = lab.ping(src, addr, count=3)
        who = by_mac.get(mac) if ok else None
        seen = ("reply from %s (%.2f ms)" % (who, rtt)) if ok else "no reply"
        right = (who == expect) if expect else not ok
        good &= right
        out("%-6s -> %-10s %-9s %-24s %s" % (src, addr, expect or "blocked", seen,
                                             "ok" if right else "WRONG"))
    return good


def migration(lab, rundir, out):
    """red1 (h1) keeps a TCP connection to red2 while red2 moves h2 -> h3."""
    probe = Probe(lab, "red1", "red2", "10.0.0.12", PROBE_PORT,
                  os.path.join(rundir, "probe-client.json"), duration=60)
    try:
        at_move = probe.wait(lambda r: r["received"] >= 50, 10,
                             "the TCP probe to get going")["received"]
        steps = lab.migrate("red2", "h3")
        probe.wait(lambda r: r["received"] >= at_move + 100 or r["error"], 15,
                   "replies after the move")
    finally:
        report = probe.stop()
    after_ok = lab.ping("red1", "10.0.0.12", count=3).ok
    survived = (report["error"] is None and report["connected"]
                and report["sent"] == report["received"]
                and report["received"] >= at_move + 100)
    out("\nlive migration of red2 h2 -> h3 with a TCP connection from red1 open")
    out("  re-plumb steps (ms): %s" % ", ".join("%s %.1f" % kv for kv in steps.items()))
    out("  TCP requests %d, replies %d (%d before the move, %d after), error: %s" % (
        report["sent"], report["received"], at_move, report["received"] - at_move,
        report["error"] or "none"))
    out("  migration reply gap: %.1f ms (largest gap between two replies; 10 ms is the send interval)"
        % report["max_gap_ms"])
    out("  connection survived: %s" % ("yes" if survived else "NO"))
    out("  ping red1 -> red2 after the move: %s" % ("ok" if after_ok else "FAILED"))
    return survived and after_ok


def failover(lab, rundir, out):
    """red1 keeps a TCP connection to red2 while the southbound and the
    northbound Raft leaders, the serving physical controller and the active
    mbx-northd are killed with SIGKILL one after the other; red2 then moves
    back h3 -> h2 through the survivors (``lab.habench``)."""
    from lab import habench
    out("\nfailover: red1 -> red2 TCP connection open; each of these is killed with "
        "SIGKILL in turn")
    result = habench.one_round(lab, "red1", "red2", "10.0.0.12", "h2",
                               os.path.join(rundir, "probe-failover.json"))
    habench.print_round(result, out)
    return result["survived"] and len(result["takeovers"]) == len(habench.KINDS)


FIREWALL = [
    ["mb-add", "fw-red", "ls-red", "--default", "deny"],
    ["fw-add", "fw-red", "100", "from-vm", "any", "allow"],
    ["fw-add", "fw-red", "100", "to-vm", "proto=tcp dport=7000", "allow"],
    ["fw-add", "fw-red", "110", "to-vm", "proto=tcp dport=7002", "reject"],
    ["fw-add", "fw-red", "120", "to-vm", "proto=icmp", "allow"],
    ["steer-add", "ls-red", "100", "any", "fw-red"],
]


def firewall(lab, rundir, out):
    """Tenant red gets a stateful firewall; tenant blue has none."""
    out("\nfirewall for tenant red (mbxctl, one transaction):")
    chained = []
    for args in FIREWALL:
        out("  mbxctl %s" % " ".join(a if " " not in a else '"%s"' % a for a in args))
        chained += (["--"] if chained else []) + args
    proc = lab.mbxctl("--wait=hv", *chained)
    if proc.returncode != 0:
        raise LabError(proc.stderr.strip())
    servers = [lab.spawn(vm, [sys.executable, "-m", "lab.probe", "serve", "--port",
                              "7000,7001,7002"], os.path.join(rundir, "serve-%s.log" % vm))
               for vm in ("red1", "red2", "red3", "blue2")]
    where = {name: vm["host"] for name, vm in lab.state["vms"].items()}
    addr = {name: vm["ip"].split("/")[0] for name, vm in lab.state["vms"].items()}
    cases = [("red1", "red2", 7000, "ok", "to-vm allow tcp 7000, across hosts"),
             ("red3", "red2", 7000, "ok", "the same on one host"),
             ("red1", "red2", 7001, "timeout", "no rule: default deny drops"),
             ("red1", "red2", 7002, "refused", "reject: the firewall sends a RST"),
             ("red2", "red1", 7001, "timeout", "unsolicited inbound to red1"),
             ("blue1", "blue2", 7001, "ok", "tenant blue has no firewall")]
    good = True
    try:
        time.sleep(0.5)
        out("\n%-6s -> %-13s %-9s %-9s %s" % ("from", "to", "expect", "observed", "why"))
        for src, dst, port, expect, why in cases:
            res = lab.tcp_try(src, addr[dst], port, timeout=1.0)
            seen = next((k for k in ("ok", "refused", "timeout") if res[k]), "error")
            good &= seen == expect
            out("%-6s -> %-13s %-9s %-9s %s%s" % (
                src, "%s:%d" % (dst, port), expect, seen, why,
                "" if seen == expect else "   WRONG"))
        good &= _offload(lab, rundir, out, where, addr)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
            lab.forget_pid(proc.pid)
    return good


def _offload(lab, rundir, out, where, addr):
    """A long-lived connection: after its first packets, OVS alone forwards it."""
    probe = Probe(lab, "red1", "red2", addr["red2"], 7000,
                  os.path.join(rundir, "probe-offload.json"), duration=30)
    hosts = (where["red1"], where["red2"])
    try:
        probe.wait(lambda r: r["received"] >= 20, 10, "the offload probe to start")
        frames = [lab.mbxd_stats(h)["frames"] for h in hosts]
        cached = [lab.service_flow_packets(h) for h in hosts]
        start = probe.read()["received"]
        probe.wait(lambda r: r["received"] >= start + 100, 15, "100 more replies")
        time.sleep(1.1)          # OVS folds datapath counters into flows once a second
        frames_after = [lab.mbxd_stats(h)["frames"] for h in hosts]
        cached_after = [lab.service_flow_packets(h) for h in hosts]
        listing = lab.mbxd_appctl(where["red1"], "conn/list", "red1")
    finally:
        report = probe.stop()
    flat = frames == frames_after
    rising = all(b >= a + 100 for a, b in zip(cached, cached_after))
    out("\noffload: red1 -> red2:7000, one connection, 100+ request/reply exchanges")
    for h, f0, f1, c0, c1 in zip(hosts, frames, frames_after, cached, cached_after):
        out("  %s: frames seen by mbxd %d -> %d, packets on its conntrack-stage flows %d -> %d"
            % (h, f0, f1, c0, c1))
    out("  daemon untouched while OVS forwards: %s; connection error: %s"
        % ("yes" if flat and rising else "NO", report["error"] or "none"))
    out("  ovs-appctl -t mbxd conn/list red1 (on %s):" % where["red1"])
    for line in listing.splitlines():
        if ":7000 " in line:
            out("    " + line)
    return flat and rising and report["error"] is None


SERVICES = [
    ["mb-add", "lb-red", "ls-red", "--type", "lb"],
    ["lb-add", "lb-red", "10.0.0.100:80", "--algorithm", "round-robin",
     "10.0.0.12:7000", "10.0.0.13:7000", "10.0.0.14:7000"],
    ["lb-set", "lb-red", "10.0.0.100:80", "health-interval=1", "health-timeout=0.5"],
    ["mb-add", "nat-red", "ls-red", "--type", "nat"],
    ["nat-add", "nat-red", "snat", "203.0.113.100"],
    ["nat-add", "nat-red", "dnat", "203.0.113.110", "10.0.0.12", "--protocol", "tcp",
     "--external-port", "2222", "--logical-port", "7000"],
    ["steer-del", "ls-red"],
    ["steer-add", "ls-red", "100", "any", "fw-red,lb-red,nat-red"],
    ["mb-add", "nat-blue", "ls-blue", "--type", "nat"],
    ["nat-add", "nat-blue", "snat", "203.0.113.101"],
    ["steer-add", "ls-blue", "100", "any", "nat-blue"],
]


def services(lab, rundir, out):
    """Tenant red's chain firewall -> load balancer -> NAT, blue's own SNAT,
    the internet server and client outside both tenants."""
    from lab import lab as L
    from lab.probe import read_peer_log
    out("\nservice chain for tenant red, SNAT for tenant blue (mbxctl, one transaction):")
    chained = []
    for args in SERVICES:
        out("  mbxctl %s" % " ".join(a if " " not in a else '"%s"' % a for a in args))
        chained += (["--"] if chained else []) + args
    proc = lab.mbxctl("--wait=hv", *chained)
    if proc.returncode != 0:
        raise LabError(proc.stderr.strip())
    lab.vm_add("red4", "h2", "ls-red", "10.0.0.14/24")
    logs = {vm: os.path.join(rundir, "svc-%s.log" % vm) for vm in ("red2", "red3", "red4",
                                                                    "xs")}
    for path in logs.values():
        if os.path.exists(path):
            os.unlink(path)
    procs = [lab.spawn(vm, [sys.executable, "-m", "lab.probe", "serve", "--port", "7000",
                            "--log", logs[vm]], logs[vm] + ".out")
             for vm in ("red2", "red3", "red4")]
    procs.append(lab.ext_spawn("xs", [sys.executable, "-m", "lab.probe", "serve", "--port",
                                      "80", "--log", logs["xs"]], logs["xs"] + ".out"))
    where = {name: vm["host"] for name, vm in lab.state["vms"].items()}
    good = True
    try:
        time.sleep(2.5)             # first health-check round
        out("\n%-6s %-4s -> %-20s %-6s %s" % ("from", "host", "to", "result",
                                              "what the server saw"))
        cases = [("red1", "internet 198.51.100.10:80", L.EXT_SERVER_IP, 80, "xs", 3),
                 ("red3", "internet 198.51.100.10:80", L.EXT_SERVER_IP, 80, "xs", 3),
                 ("blue1", "internet 198.51.100.10:80", L.EXT_SERVER_IP, 80, "xs", 3),
                 ("red1", "VIP 10.0.0.100:80", "10.0.0.100", 80, None, 6),
                 ("xc", "203.0.113.110:2222", "203.0.113.110", 2222, "red2", 2)]
        expect_ext = {"red1": "203.0.113.100", "red3": "203.0.113.100",
                      "blue1": "203.0.113.101"}
        for src, label, addr, port, server, count in cases:
            marks = {vm: len(read_peer_log(path)) for vm, path in logs.items()}
            run = lab.ext_tcp_try if src == "xc" else lab.tcp_try
            res = run(src, addr, port, timeout=2.0, count=count)
            seen = {vm: read_peer_log(path)[marks[vm]:] for vm, path in logs.items()}
            ok = res["ok"] == count
            if server == "xs":
                peers = ["%s:%d" % (ip, p) for ip, p, _ in seen["xs"]]
                ok &= len(peers) == count and all(
                    p.startswith(expect_ext[src] + ":") for p in peers)
                ok &= len(set(peers)) == count
                saw = "from " + ", ".join(peers)
            elif server is None:
                by_port = {p: vm for vm in ("red2", "red3", "red4")
                           for _, p, _ in seen[vm]}
                order = [by_port.get(p, "?") for p in res["local_ports"]]
                ok &= sorted(order) == ["red2", "red2", "red3", "red3", "red4", "red4"]
                saw = "backends in turn: " + " ".join(
                    "%s(%s)" % (vm, where.get(vm, "?")) for vm in order)
            else:
                peers = ["%s:%d" % (ip, p) for ip, p, _ in seen[server]]
                ok &= len(peers) == count
                saw = "%s got %s" % (server, ", ".join(peers))
            good &= ok
            out("%-6s %-4s -> %-20s %-6s %s%s" % (
                src, where.get(src, "inet"), label, "%d/%d" % (res["ok"], count), saw,
                "" if ok else "   WRONG"))
        good &= _chain_offload(lab, rundir, out)
        out("\nmbxctl lb-list lb-red:")
        for line in lab.mbxctl("lb-list", "lb-red").stdout.splitlines():
            out("  " + line)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
            lab.forget_pid(proc.pid)
    return good


def _chain_offload(lab, rundir, out):
    """red1's long-lived connection to the internet through the chain."""
    from lab import lab as L
    report = os.path.join(rundir, "probe-chain.json")
    client = lab.spawn("red1", [sys.executable, "-m", "lab.probe", "client", "--to",
                                L.EXT_SERVER_IP, "--port", "80", "--interval-ms", "10",
                                "--duration", "8", "--out", report], report + ".log")
    host = lab.state["vms"]["red1"]["host"]

    def received():
        try:
            import json
            with open(report) as f:
                return json.load(f).get("received", 0)
        except (OSError, ValueError):
            return 0
    try:
        deadline = time.monotonic() + 10
        while received() < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)             # the closes of the connections before have settled
        passed0, cached0 = lab.mbxd_stats(host)["passed"], lab.service_flow_packets(host)
        start = received()
        while received() < start + 150 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        time.sleep(1.1)
        passed1, cached1 = lab.mbxd_stats(host)["passed"], lab.service_flow_packets(host)
        listing = [line for line in lab.mbxd_appctl(host, "conn/list", "red1").splitlines()
                   if "snat=" in line and ":80 " in line]
    finally:
        client.terminate()
        client.wait(10)
        lab.forget_pid(client.pid)
    ok = passed1 == passed0 and cached1 >= cached0 + 300
    out("\noffload through the chain: red1 -> internet server, one connection, 150+ "
        "exchanges")
    out("  %s: packets passed by mbxd %d -> %d, packets on its conntrack-stage flows %d -> %d: %s"
        % (host, passed0, passed1, cached0, cached1, "offloaded" if ok else "NOT OFFLOADED"))
    for line in listing[-1:]:
        out("  ovs-appctl -t mbxd conn/list red1: " + line)
    return ok


QEMU_VM, QEMU_IP = "redq", "10.0.0.15"
QEMU_DNAT = ("203.0.113.115", 2223)     # -> redq:7000


def qemu_migration(lab, rundir, out):
    """A QEMU guest of tenant red keeps three TCP streams through the chain
    (out through SNAT, to the VIP, in through DNAT and the firewall) while
    it live-migrates h1 -> h3: a real QEMU migration over QMP, announced
    to mbx by QEMU's own migration events (docs/libvirt.md)."""
    from lab import lab as L
    from lab.ctbaseline import wait_listening
    from lab.probe import Conns
    proc = lab.mbxctl("--wait=hv", "nat-add", "nat-red", "dnat", QEMU_DNAT[0], QEMU_IP,
                      "--protocol", "tcp", "--external-port", str(QEMU_DNAT[1]),
                      "--logical-port", "7000")
    if proc.returncode != 0:
        raise LabError(proc.stderr.strip())
    out("\nQEMU guest %s (%s) on h1: booting a real VM (TCG, 128 MB) ..." % (QEMU_VM,
                                                                           QEMU_IP))
    t0 = time.monotonic()
    lab.vm_add(QEMU_VM, "h1", "ls-red", QEMU_IP + "/24", kind="qemu")
    out("  booted and on br-int in %.1f s" % (time.monotonic() - t0))
    py = sys.executable
    servers = [lab.spawn(vm, [py, "-m", "lab.probe", "serve", "--port", "7000"],
                         os.path.join(rundir, "q-serve-%s.log" % vm))
               for vm in ("red2", "red3", "red4", QEMU_VM)]
    servers.append(lab.ext_spawn("xs", [py, "-m", "lab.probe", "serve", "--port", "80"],
                                 os.path.join(rundir, "q-serve-xs.log")))
    probes = []
    try:
        wait_listening([(lab.exec, vm, 7000) for vm in ("red2", "red3", "red4", QEMU_VM)]
                       + [(lab.ext_exec, "xs", 80)], 60)
        probes = [Conns(lab, QEMU_VM, [("snat", L.EXT_SERVER_IP, 80, 1),
                                       ("vip", "10.0.0.100", 80, 1)],
                        os.path.join(rundir, "q-conns.json"), duration=120),
                  Conns(lab, "xc", [("dnat", QEMU_DNAT[0], QEMU_DNAT[1], 1)],
                        os.path.join(rundir, "q-conns-xc.json"), duration=120, ext=True)]

        def streams():
            return {c["name"]: c for p in probes for c in p.read().get("connections", [])}

        def all_past(counts):
            now = streams()
            return now if len(now) == 3 and all(
                c["error"] is None and c["received"] >= counts.get(n, 0) for n, c in
                now.items()) else None
        from lab.sh import wait_until
        before = wait_until(lambda: all_past({"snat": 20, "vip": 20, "dnat": 20}), 60,
                            interval=0.2, what="the guest's three streams to get going")
        steps = lab.migrate(QEMU_VM, "h3")
        row = lab.migration_row(QEMU_VM)
        after = streams()
        wait_until(lambda: all_past({n: after[n]["received"] + 30 for n in after}), 30,
                   interval=0.2, what="the guest's streams to carry on")
    except LabError as err:
        out("  FAILED: %s" % err)
        return False
    finally:
        finals = {}
        for probe in probes:
            finals.update({c["name"]: c for c in probe.stop().get("connections", [])})
        for server in servers:
            server.terminate()
            server.wait(10)
            lab.forget_pid(server.pid)
    survived = [n for n, c in sorted(finals.items()) if c["error"] is None]
    out("  live migration h1 -> h3 (QMP; begin/stun/done from QEMU's events): "
        "QEMU total %s ms, downtime %s ms; mbx moved %s connections (%s)" % (
            steps.get("qemu_total_ms"), steps.get("qemu_downtime_ms"),
            row.get("stats", {}).get("entries"), row.get("status")))
    pid = lab.state["pids"].get("vm/%s/qemu" % QEMU_VM)
    out("  the guest's QEMU (pid %s) now runs in namespace %s" % (
        pid, sh_run(["ip", "netns", "identify", str(pid)], check=False).strip() or "?"))
    for name, c in sorted(finals.items()):
        out("  %-5s %-22s replies %4d (%d before the move)  largest gap %6.1f ms  %s" % (
            name, c["target"], c["received"], before[name]["received"], c["max_gap_ms"],
            "alive" if c["error"] is None else "BROKEN: %s" % c["error"]))
    out("  (snat and vip are timed by the guest, whose clock stops while QEMU holds it; "
        "dnat by the internet client)")
    return sorted(survived) == ["dnat", "snat", "vip"] and row.get("status") == "done"


def created(lab, out):
    """What the databases hold now, in a few lines."""
    snap, runtime = lab.nb().snapshot(), lab.sb().snapshot()
    out("\ncreated: %d hosts (%s)" % (len(runtime.hosts), ", ".join(
        "%s tunnel %s%s" % (h, r.encap_ip, "" if r.connected else " NOT CONNECTED")
        for h, r in sorted(runtime.hosts.items()))))
    for name, ls in sorted(snap.switches.items()):
        vms = [v for v in snap.vms.values() if v.switch == name]
        out("  tenant %-5s switch %-8s vni %d %s: %s" % (
            ls.tenant, name, ls.vni, ls.subnet, ", ".join(
                "%s %s on %s" % (v.name, v.ip,
                                 runtime.vm_locations.get(v.name, (None,))[0])
                for v in sorted(vms, key=lambda v: v.name))))


def migration_report(prefix, rundir, out):
    """The migration report: mv's connections through firewall, LB and SNAT
    across an announced and an unannounced move, next to a plain re-plumb
    and to an OVS-conntrack pipeline without state transfer."""
    from lab import ctbaseline
    from lab.migscenario import Scenario
    hosts = ["h1", "h2", "h3"]
    lab = Lab(prefix=prefix + "mig", rundir=rundir + "-mig")
    sc = Scenario(lab, lab.rundir)
    rows = []
    try:
        out("\n== connection-state migration: VM mv (h1) with 2 connections of each kind "
            "through firewall -> LB -> SNAT")
        lab.up(hosts, log=lambda *_: None)
        sc.build(hosts)
        sc.build_plain(hosts)
        for label, to, notify in (("announced", "h2", True), ("unannounced", "h3", False)):
            sc.stop()
            sc.open(per_kind=2)
            before = sc.snapshot()
            host = lab.state["vms"]["mv"]["host"]
            kept = sc.translations(host)
            lab.migrate("mv", to, notify=notify)
            row = lab.migration_row("mv")
            after = sc.wait_flowing(sc.snapshot(), replies=30, timeout=10)
            alive = [n for n, c in after.items() if c["error"] is None]
            now = sc.translations(to)
            same = {k: sum(1 for p, v in kept.items() if v[0] == k and now.get(p) == v)
                    for k in ("snat", "lb")}
            plain = sc.open_plain()
            pv_to = "h2" if lab.state["vms"]["pv"]["host"] != "h2" else "h1"
            lab.migrate("pv", pv_to, notify=False, wait_state=False)
            time.sleep(1.0)
            plain_gap = max(c["max_gap_ms"] for c in plain.stop()["connections"])
            gap = max(c["max_gap_ms"] for c in after.values())
            rows.append((label, len(before), len(alive), same, row, gap, plain_gap))
        sc.stop()
    finally:
        sc.stop()
        lab.down(log=lambda *_: None)
    out("%-12s %6s %6s %9s %10s %9s %8s %9s %8s %8s" % (
        "path", "before", "after", "survived", "snat ports", "backends", "entries",
        "transfer", "max gap", "extra"))
    ok = True
    for label, n, alive, same, row, gap, plain_gap in rows:
        st = row.get("stats", {})
        out("%-12s %6d %6d %6d/%-2d %7d/%-2d %6d/%-2d %8d %6d ms %5.0f ms %5.0f ms" % (
            label, n, alive, alive, n, same["snat"], 2, same["lb"], 2, st.get("entries", 0),
            st.get("transfer_ms", 0), gap, gap - plain_gap))
        ok &= alive == n and same == {"snat": 2, "lb": 2} and row.get("status") == "done"
    out("  (extra: largest reply gap minus that of the same re-plumb of a VM without "
        "middleboxes, %s ms)" % ", ".join("%.0f" % r[6] for r in rows))
    out("\n== the same traffic on an OVS-conntrack pipeline (ct commit + ct nat, no state "
        "transfer), mv h1 -> h2")
    base = ctbaseline.run(per_kind=2, log=lambda *_: None, prefix=prefix + "ct",
                          rundir=rundir + "-ct")
    out("  survived %d/%d: %s" % (base["survived"], base["total"], ", ".join(
        "%s %d/%d" % (k, v["survived"], v["total"]) for k, v in base["kinds"].items())))
    out("  with mbx: %s" % ", ".join("%s %d/%d" % (r[0], r[2], r[1]) for r in rows))
    return ok


def run(prefix, rundir, out=print):
    from lab.cli import up_from_topology
    lab = Lab(prefix=prefix, rundir=rundir)
    if lab.is_up:
        raise LabError("a lab '%s' is already up; run 'mbx-lab down' first" % prefix)
    ok = False
    try:
        out("== mbx demo: 3 hosts, tenants red and blue on the same subnet 10.0.0.0/24")
        up_from_topology(lab, TOPOLOGY, "vxlan", standby=1)
        created(lab, out)
        pings_ok = check_pings(lab, out)
        moved_ok = migration(lab, rundir, out)
        failover_ok = failover(lab, rundir, out)
        fw_ok = firewall(lab, rundir, out)
        svc_ok = services(lab, rundir, out)
        qemu_ok = qemu_migration(lab, rundir, out)
        ok = pings_ok and moved_ok and failover_ok and fw_ok and svc_ok and qemu_ok
    finally:
        lab.down(log=out)
    ok = migration_report(prefix, rundir, out) and ok
    out("\nresult: %s" % ("all checks passed" if ok else "SOME CHECKS FAILED"))
    return 0 if ok else 1
