"""``make demo``: a 3-host lab, two tenants on the same subnet, isolation, and a
TCP connection that lives through a VM's live migration.  Prints a report and
tears everything down, also when a step fails."""

import os

from lab.lab import Lab
from lab.probe import Probe
from lab.sh import LabError

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


def created(lab, out):
    """What the config database holds now, in a few lines."""
    snap = lab.nb().snapshot()
    out("\ncreated: %d hosts (%s)" % (len(snap.hosts), ", ".join(
        "%s tunnel %s%s" % (h, r.encap_ip, "" if r.connected else " NOT CONNECTED")
        for h, r in sorted(snap.hosts.items()))))
    for name, ls in sorted(snap.switches.items()):
        vms = [v for v in snap.vms.values() if v.switch == name]
        out("  tenant %-5s switch %-8s vni %d %s: %s" % (
            ls.tenant, name, ls.vni, ls.subnet, ", ".join(
                "%s %s on %s" % (v.name, v.ip, snap.vm_locations[v.name][0])
                for v in sorted(vms, key=lambda v: v.name))))


def run(prefix, rundir, out=print):
    from lab.cli import up_from_topology
    lab = Lab(prefix=prefix, rundir=rundir)
    if lab.is_up:
        raise LabError("a lab '%s' is already up; run 'mbx-lab down' first" % prefix)
    ok = False
    try:
        out("== mbx demo: 3 hosts, tenants red and blue on the same subnet 10.0.0.0/24")
        up_from_topology(lab, TOPOLOGY, "vxlan")
        created(lab, out)
        pings_ok = check_pings(lab, out)
        moved_ok = migration(lab, rundir, out)
        ok = pings_ok and moved_ok
        out("\nresult: %s" % ("all checks passed" if ok else "SOME CHECKS FAILED"))
    finally:
        lab.down(log=out)
    return 0 if ok else 1
