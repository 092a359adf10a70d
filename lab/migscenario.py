"""The migration scenario on mbx: the same VMs, servers and connections as
the conntrack baseline (``lab.ctbaseline``), with mbx's middleboxes instead
of conntrack flows, so tests, ``make bench`` and the demo compare like with
like.

Tenant red's switch ``ls-red`` gets one chain for its TCP traffic, firewall
-> load balancer -> SNAT:

* ``fw-red`` (default deny): from a VM, any new connection; into mv only new
  TCP to 7000, into peer to 7001, into the backends to 8080.  Everything
  else only as part of a connection the firewall saw start (a SYN).
* ``lb-red``: VIP 10.0.0.100:80 over b1, b2, b3 :8080 (the default
  algorithm: the switch's select group).
* ``nat-red``: SNAT of the subnet to 203.0.113.100 (per-host port blocks),
  and DNAT of 203.0.113.120:7100 to mv:7000.

The connections of each kind (``KINDS``): the baseline's (``fw-in``,
``fw-out``, ``snat``, ``lb``) and ``dnat``: the lab's internet client xc
to mv through the DNAT address (the baseline has no DNAT).

``Scenario(lab)``: ``build()`` (switch, VMs, middleboxes, servers),
``open(per_kind)`` (the long-lived connections, ``lab.probe conns``),
``reports()``, ``stop()``; ``snapshot()`` and ``summary(before, moved,
final)`` as the baseline computes them.
"""

import json
import os
import sys

from lab import ctbaseline as CT
from lab.probe import Conns
from lab.sh import LabError, wait_until

CHAIN = ("fw-red", "lb-red", "nat-red")
DNAT_IP, DNAT_PORT = "203.0.113.120", 7100
# kind -> (client, target address, target port, the client is outside)
KINDS = {**{k: (c, a, p, False) for k, (c, a, p) in CT.KINDS.items()},
         "dnat": ("xc", DNAT_IP, DNAT_PORT, True)}       # the internet client
RULES = (
    ("from-vm", 100, "proto=tcp", "allow"),
    ("to-vm", 100, "proto=tcp dst=10.0.0.10 dport=%d" % CT.FW_IN_PORT, "allow"),
    ("to-vm", 101, "proto=tcp dst=10.0.0.20 dport=%d" % CT.FW_OUT_PORT, "allow"),
    ("to-vm", 102, "proto=tcp dport=%d" % CT.BACKEND_PORT, "allow"),
)



class Scenario:
    def __init__(self, lab, rundir, gather=None, kinds=None):
        self.lab = lab
        self.rundir = rundir
        self.gather = gather
        self.kinds = kinds or {}        # VM -> lab VM kind ("qemu": a QEMU guest)
        self.probes = {}
        self.servers = []

    def build(self, hosts):
        lab = self.lab
        lab.mbxctl_ok("ls-add", CT.SWITCH, "--vni", str(CT.VNI), "--subnet", CT.SUBNET,
            "--tenant", CT.TENANT, "--gateway", CT.GATEWAY_IP)
        options = ["migration-gather=%s" % self.gather] if self.gather else []
        lab.mbxctl_ok("mb-add", "fw-red", CT.SWITCH, "--type", "firewall", "--default", "deny",
            *options)
        for direction, prio, match, action in RULES:
            lab.mbxctl_ok("fw-add", "fw-red", str(prio), direction, match, action)
        lab.mbxctl_ok("mb-add", "lb-red", CT.SWITCH, "--type", "lb")
        lab.mbxctl_ok("lb-add", "lb-red", "%s:%d" % (CT.VIP, CT.VIP_PORT),
            *["%s:%d" % (CT.VMS[b][0], CT.BACKEND_PORT) for b in CT.BACKENDS])
        lab.mbxctl_ok("mb-add", "nat-red", CT.SWITCH, "--type", "nat")
        lab.mbxctl_ok("nat-add", "nat-red", "snat", CT.SNAT_IP)
        lab.mbxctl_ok("nat-add", "nat-red", "dnat", DNAT_IP, CT.VMS[CT.MIGRATING_VM][0],
                      "--protocol", "tcp", "--external-port", str(DNAT_PORT),
                      "--logical-port", str(CT.FW_IN_PORT))
        lab.mbxctl_ok("steer-add", CT.SWITCH, "100", "proto=tcp", ",".join(CHAIN))
        for vm, (ip, host) in CT.VMS.items():
            if host not in hosts:
                host = hosts[-1]
            lab.vm_add(vm, host, CT.SWITCH, "%s/%d" % (ip, CT.PREFIXLEN),
                       kind=self.kinds.get(vm, "netns"))
        self.servers = CT._servers(lab, self.rundir)
        # A QEMU guest's Python starts in seconds under TCG.
        CT._wait_listening(lab, 60 if self.kinds else 10)

    # A switch without middleboxes: the same re-plumb with nothing to move.
    PLAIN = ("ls-plain", "101", "10.9.0.0/24", {"pv": ("10.9.0.10", "h1"),
                                                 "pq": ("10.9.0.20", "h3")})

    def build_plain(self, hosts):
        name, vni, subnet, vms = self.PLAIN
        self.lab.mbxctl_ok("ls-add", name, "--vni", vni, "--subnet", subnet, "--tenant", "plain")
        for vm, (ip, host) in vms.items():
            self.lab.vm_add(vm, host if host in hosts else hosts[-1], name, ip + "/24")
        self.servers.append(self.lab.spawn("pq", [sys.executable, "-m", "lab.probe", "serve",
                                                  "--port", str(CT.FW_OUT_PORT)],
                                           os.path.join(self.rundir, "pq.serve.log")))

    def open_plain(self, n=2, duration=120):
        """``n`` connections pv -> pq (no middlebox); returns the probe."""
        probe = Conns(self.lab, "pv", [("plain", self.PLAIN[3]["pq"][0], CT.FW_OUT_PORT, n)],
                      os.path.join(self.rundir, "mig-plain.json"), duration=duration)
        wait_until(lambda: len(probe.read().get("connections", [])) == n and all(
            c["received"] >= 10 for c in probe.read()["connections"]), 20, interval=0.1,
            what="the plain connections to exchange")
        return probe

    def open(self, per_kind=3, duration=300, reply_timeout=5.0):
        """The long-lived connections; each counts as failed once it got no
        reply for ``reply_timeout`` seconds."""
        targets = {}
        for kind, (client, addr, port, outside) in KINDS.items():
            targets.setdefault((client, outside), []).append((kind, addr, port, per_kind))
        for (client, outside), tlist in targets.items():
            self.probes[client] = Conns(self.lab, client, tlist,
                                        os.path.join(self.rundir, "mig-%s.json" % client),
                                        duration=duration, ext=outside,
                                        reply_timeout=reply_timeout)
        self.total = per_kind * len(KINDS)
        try:
            wait_until(lambda: self._exchanging(10), 20, interval=0.1,
                       what="all %d connections to exchange 10 echoes" % self.total)
        except LabError:
            raise LabError("the connections do not work before the move: %s" % {
                n: (c["connected"], c["received"], c["error"])
                for n, c in sorted(self.snapshot().items())})

    def _exchanging(self, min_replies):
        conns = self.snapshot()
        return len(conns) == self.total and all(
            c["connected"] and c["error"] is None and c["received"] >= min_replies
            for c in conns.values())

    def snapshot(self):
        """{connection name: its probe record} right now."""
        return CT._by_name(*[p.read() for p in self.probes.values()])

    def wait_flowing(self, since, replies=20, timeout=10):
        """Every connection still without error got ``replies`` more echoes
        than in ``since`` (a snapshot); returns the new snapshot."""
        def check():
            now = self.snapshot()
            alive = [n for n, c in now.items() if c["error"] is None]
            if all(now[n]["received"] >= since[n]["received"] + replies for n in alive):
                return now
            return None
        try:
            return wait_until(check, timeout, interval=0.05,
                              what="the connections to carry on")
        except LabError:
            return self.snapshot()

    def stalled(self, since=None, replies=25):
        """{connection: error} of those that did not carry on: got fewer
        than ``replies`` more echoes than in ``since`` (default: a snapshot
        taken now, so echoes from before never count) within 10 s, or
        ended with an error.  Empty when every connection carries on."""
        since = self.snapshot() if since is None else since
        now = self.wait_flowing(since, replies=replies, timeout=10)
        return {n: c["error"] for n, c in now.items() if c["error"] is not None
                or c["received"] < since[n]["received"] + replies}

    def stop(self):
        finals = []
        for probe in self.probes.values():
            try:
                finals.append(probe.stop())
            except Exception:          # noqa: BLE001 - the lab goes down anyway
                pass
        self.probes.clear()
        return CT._by_name(*finals)

    def translations(self, host, vm=CT.MIGRATING_VM):
        """{(VM's local port, peer port): (kind, wire address)} of its
        established translated connections on ``host``: each one's SNAT
        port, backend or DNAT address."""
        conns = json.loads(self.lab.mbxd_appctl(host, "conn/json", vm))
        return {(c["vm_port"], c["peer_port"]): (
                    c["xlate"]["kind"], c["xlate"]["wire_peer"] if c["xlate"]["kind"] == "lb"
                    else c["xlate"]["wire_vm"])
                for c in conns if c["xlate"] and c["state"] == "established"}

    @staticmethod
    def summary(before, moved, final, steps=None, settle=0.0):
        out = CT.summarize(before, moved, final, steps, settle)
        out["pipeline"] = "mbx"
        return out
