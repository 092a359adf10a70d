"""A tenant with continuously checked traffic, for the raw-row fuzzer
(``lab.rowfuzz``) and the soak (``lab.soak``).

``add_tenant(lab, tenant)`` creates a tenant's switch, its firewall (default
deny; any TCP out of a VM, TCP into a VM only to ``tenant.port``), the
steering policy and its VMs.  ``Traffic(lab, tenant, rundir)`` then keeps,
in every VM, an echo server on ``tenant.port`` and long-lived connections
to the next VM of the tenant (``lab.probe conns``: a line every 50 ms, a
reply missing for ``REPLY_TIMEOUT`` s is a stalled connection), and, in a
thread, opens new short connections round the ring every second.

A failure is anything a user of the tenant would notice: a long-lived
connection reset or stalled (``lost``), a new connection that failed
(``new_failures``).  Connection probes last at most ``lab.probe``'s
600 s: ``rotate()`` starts a fresh set and retires the old one (whose
final report still counts)."""

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Tuple

from lab import ctbaseline as CT
from lab.probe import Conns

REPLY_TIMEOUT = 5.0         # s without an echo: the connection is lost
PROBE_SECONDS = 540         # one set of long-lived connections (probe max 600)
NEW_CONN_INTERVAL = 1.0     # s between two rounds of new connections
NEW_CONN_TIMEOUT = 3.0      # s a new connection may take


@dataclass
class Tenant:
    name: str
    switch: str
    vni: int
    subnet: str                                 # e.g. 10.7.0.0/24
    port: int                                   # the TCP port its VMs serve
    vms: Dict[str, Tuple[str, str]] = field(default_factory=dict)   # name -> (ip, host)

    @property
    def firewall(self):
        return "fw-" + self.name

    def cidr(self, ip):
        return "%s/%s" % (ip, self.subnet.split("/")[1])


def add_tenant(lab, tenant):
    """The tenant's switch, firewall, steering policy and VMs."""
    lab.mbxctl_ok("ls-add", tenant.switch, "--vni", str(tenant.vni), "--subnet",
                  tenant.subnet, "--tenant", tenant.name)
    lab.mbxctl_ok("mb-add", tenant.firewall, tenant.switch, "--type", "firewall",
                  "--default", "deny")
    lab.mbxctl_ok("fw-add", tenant.firewall, "100", "from-vm", "proto=tcp", "allow")
    lab.mbxctl_ok("fw-add", tenant.firewall, "101", "to-vm",
                  "proto=tcp dport=%d" % tenant.port, "allow")
    lab.mbxctl_ok("steer-add", tenant.switch, "100", "proto=tcp", tenant.firewall)
    for vm, (ip, host) in tenant.vms.items():
        lab.vm_add(vm, host, tenant.switch, tenant.cidr(ip))


class Traffic:
    """A tenant's checked traffic (module docstring)."""

    def __init__(self, lab, tenant, rundir, conns_per_vm=2, interval_ms=50):
        self.lab, self.tenant, self.rundir = lab, tenant, rundir
        self.conns_per_vm, self.interval_ms = conns_per_vm, interval_ms
        self.servers = []
        self.probes = []            # [(set number, [Conns])], the current set last
        self.retired = []           # [(set number, final report)] of rotated sets
        self.attempts = 0
        self.new_failures = []      # (time, client, target, result)
        self._stop = threading.Event()
        self._thread = None
        self._sets = 0

    def _ring(self):
        names = sorted(self.tenant.vms)
        return [(vm, names[(i + 1) % len(names)]) for i, vm in enumerate(names)]

    def start(self):
        py = sys.executable
        for vm in sorted(self.tenant.vms):
            self.servers.append(self.lab.spawn(
                vm, [py, "-m", "lab.probe", "serve", "--port", str(self.tenant.port)],
                os.path.join(self.rundir, "%s.serve.log" % vm)))
        CT.wait_listening([(self.lab.exec, vm, self.tenant.port)
                           for vm in sorted(self.tenant.vms)])
        self._open_set()
        self._thread = threading.Thread(target=self._new_connections, daemon=True,
                                        name="traffic-" + self.tenant.name)
        self._thread.start()

    def _open_set(self):
        self._sets += 1
        opened = []
        for client, server in self._ring():
            report = os.path.join(self.rundir, "%s.conns.%d.json" % (client, self._sets))
            probe = Conns(self.lab, client, [(server, self.tenant.vms[server][0],
                                              self.tenant.port, self.conns_per_vm)],
                          report, duration=PROBE_SECONDS, interval_ms=self.interval_ms,
                          reply_timeout=REPLY_TIMEOUT)
            opened.append(probe)
        for probe in opened:
            probe.wait(lambda r: sum(c["connected"] for c in r.get("connections", []))
                       == self.conns_per_vm, 20, "the long-lived connections to open")
        self.probes.append((self._sets, opened))

    def rotate(self):
        """A fresh set of long-lived connections; the old set ends cleanly."""
        number, old = self.probes[-1]
        self._open_set()
        self.retired += [(number, p.stop()) for p in old]
        self.probes.remove((number, old))

    def due_rotation(self, now, started):
        return now - started > PROBE_SECONDS - 60

    def _new_connections(self):
        while not self._stop.wait(NEW_CONN_INTERVAL):
            for client, server in self._ring():
                if self._stop.is_set():
                    return
                got = self.lab.tcp_try(client, self.tenant.vms[server][0], self.tenant.port,
                                       timeout=NEW_CONN_TIMEOUT)
                self.attempts += 1
                if got.get("ok") != 1:
                    self.new_failures.append((time.time(), client, server, got))

    def reports(self):
        """(set number, latest report) of every long-lived connection probe."""
        return self.retired + [(n, p.read()) for n, probes in self.probes for p in probes]

    def connections(self):
        """Every long-lived connection's report, its ``name`` with its set
        (a rotation opens connections of the same names again)."""
        return [dict(c, name="%s/%d" % (c["name"], n))
                for n, r in self.reports() for c in r.get("connections", [])]

    def lost(self):
        """The long-lived connections that failed: [(name, error)]."""
        return [(c["name"], c.get("error") or "never connected")
                for c in self.connections() if c.get("error") or not c.get("connected")]

    def summary(self):
        conns = self.connections()
        return {"tenant": self.tenant.name, "long_lived": len(conns),
                "lost": self.lost(), "replies": sum(c.get("received", 0) for c in conns),
                "max_gap_ms": max((c.get("max_gap_ms") or 0 for c in conns), default=0),
                "new_attempts": self.attempts, "new_failures": len(self.new_failures),
                "new_failure_examples": [f[1:3] + (f[3],) for f in self.new_failures[:5]]}

    def stop(self):
        """End the checker, the probes (final reports) and the servers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for n, probes in self.probes:
            self.retired += [(n, p.stop()) for p in probes]
        self.probes = []
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            self.lab.forget_pid(proc.pid)
        self.servers = []
