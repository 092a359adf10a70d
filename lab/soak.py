"""The soak: a lab under continuous traffic while everything around it
churns and restarts, watched for lost connections, growth and leftovers.

    python -m lab.soak [--minutes 30] [--out build/soak] [--seed N]

(``make soak``).  It builds a 3-host lab of its own (prefix
``MBX_LAB_PREFIX`` + "s", run dir ``MBX_LAB_DIR`` + "-soak") with two
tenants, each a firewall and VMs on every host carrying checked traffic
(``lab.workload``: long-lived TCP connections round the ring of its VMs, new
connections every second).  Then, one event every ``interval`` seconds, in
a fixed rotation (``EVENTS``) with seeded random targets:

* ``vm-churn``: a short-lived VM added, used (a TCP connection to a tenant
  VM) and deleted; afterwards no namespace, no flow naming its MAC and no
  conntrack entry in its zone may be left;
* ``rules``: a firewall rule added and an older one deleted;
* ``address-set``: an address set created or changed, with a rule using it,
  or deleted with its rule;
* ``migrate-announced`` / ``migrate-unannounced``: a traffic VM moved to
  another host (its connections must survive);
* ``restart-mbxd``, ``restart-vswitchd`` (SIGKILL: flows and conntrack
  lost), ``restart-controller``, ``restart-db`` (a config database member:
  a follower, the next time the leader, alternating NB and SB).

Every ``SAMPLE_EVERY`` seconds it records the RSS and open file descriptors
of every process the lab started (the database members, mbx-northd, the
controllers, each host's ovsdb-server, ovs-vswitchd, mbx-chassis and mbxd).

The verdict (``verdict(report)``):

* **lost connections**: 0 (a long-lived connection reset or stalled for
  ``workload.REPLY_TIMEOUT`` s);
* **new connections** fail only while a switch they cross is restarting
  (counted per event kind; other kinds must have none);
* **growth**: each process instance observed over at least a third of the
  run grows by at most ``RSS_GROWTH_MB`` MB or ``RSS_GROWTH_RATIO`` of its
  size after warm-up (whichever is larger) and at most ``FD_GROWTH`` file
  descriptors, measured from its first sample after the warm-up (the first
  round of events) to its last;
* **leftovers**: none after each VM churn, and none after the teardown
  (every VM and tenant deleted): no VM namespace, each br-int back to the
  flows it had before the tenants came, no conntrack entry on any host;
* every event itself succeeded (a failed migration or a daemon that did
  not come back is reported as the event's error).

It writes ``soak.json`` (samples, events, failures, verdict) and, when
matplotlib is installed (the ``bench`` extra), ``soak.png``: RSS and file
descriptors of each process over time with the events marked.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

from lab.lab import Lab
from lab.sh import LabError, wait_until
from lab.workload import Tenant, Traffic, add_tenant

HOSTS = ["h1", "h2", "h3"]
TENANTS = (
    Tenant("soak-a", "ls-soak-a", 3201, "10.71.0.0/24", 7101,
           {"sa1": ("10.71.0.11", "h1"), "sa2": ("10.71.0.12", "h2"),
            "sa3": ("10.71.0.13", "h3")}),
    Tenant("soak-b", "ls-soak-b", 3202, "10.72.0.0/24", 7102,
           {"sb1": ("10.72.0.11", "h2"), "sb2": ("10.72.0.12", "h3")}),
)
EVENTS = ("vm-churn", "rules", "migrate-announced", "restart-mbxd", "address-set",
          "migrate-unannounced", "restart-controller", "restart-vswitchd", "restart-db")
DISRUPTIVE = ("restart-vswitchd",)      # new connections through the host may fail
SAMPLE_EVERY = 5.0
RSS_GROWTH_MB = 20.0
RSS_GROWTH_RATIO = 0.25
FD_GROWTH = 8
SETTLE = 20.0           # s a restarted daemon has to serve again
CHURN_IPS = range(100, 200)
# mbxd keeps the zone of a VM whose port left for --migration-ttl (60 s: it
# may be an unannounced move), then flushes it: a deleted VM's conntrack
# entries count as left behind only after that.
ZONE_KEPT = 60.0 + 15.0
STARTING = 120.0        # s a (re)started process takes to reach its working set


def process_stats(pids):
    """{key: (pid, rss_kb, fds)} of the live processes among ``pids``."""
    out = {}
    for key, pid in pids.items():
        try:
            with open("/proc/%d/status" % pid) as f:
                rss = int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))
            fds = len(os.listdir("/proc/%d/fd" % pid))
        except (OSError, AttributeError):
            continue
        out[key] = (pid, rss, fds)
    return out


def lab_processes(lab):
    return {k: p for k, p in lab.state["pids"].items() if not k.startswith("vm/")}


_COUNTERS = re.compile(r"\b(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")


def flows(lab, host):
    """The host's br-int flows without their counters."""
    return {_COUNTERS.sub("", line).strip()
            for line in lab.ofctl(host, "dump-flows").splitlines() if "actions=" in line}


def settled_flows(lab, host, quiet=3.0, timeout=30.0):
    """The host's flows once they stopped changing for ``quiet`` s (the
    uplink's flows, for one, come a moment after the host reports in)."""
    last = [flows(lab, host), time.monotonic()]

    def settled():
        now = flows(lab, host)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= quiet
    wait_until(settled, timeout, interval=0.5, what="%s's flows to settle" % host)
    return last[0]


def conntrack(lab, host, zone=None):
    args = ["dpctl/dump-conntrack"] + (["zone=%d" % zone] if zone is not None else [])
    return [line for line in lab.appctl(host, *args).splitlines() if line.strip()]


def vm_namespaces(lab, names):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    present = {line.split()[0] for line in out.splitlines() if line.strip()}
    return sorted(lab.vm_ns(n) for n in names if lab.vm_ns(n) in present)


def vm_zone(lab, host, vm):
    """The VM's conntrack zone on ``host`` (``ct-zone/list``: "vm NAME
    zone=N"), or None."""
    for line in lab.mbxd_appctl(host, "ct-zone/list", check=False).splitlines():
        m = re.fullmatch(r"vm (\S+) zone=(\d+)", line.strip())
        if m and m.group(1) == vm:
            return int(m.group(2))
    return None


class Soak:
    def __init__(self, lab, rundir, minutes, interval, seed=0, log=print):
        self.lab, self.rundir = lab, rundir
        self.seconds = minutes * 60
        self.interval = interval
        self.rnd = random.Random(seed)
        self.log = log
        self.samples = []           # (t, {key: (pid, rss_kb, fds)})
        self.events = []            # {"t", "kind", "what", "took", "error"}
        self.leftovers = []         # strings
        self.losses = []            # {"t", "tenant", "connection", "error", "during"}
        self.traffic = []
        self.baseline_flows = {}
        self.t0 = None
        self._churn = 0
        self._added_rules = []      # (firewall, direction, priority) added by the soak
        self._sets = []             # address sets the soak made
        self._db_turn = 0
        self._zone_checks = []      # (deadline, VM, host, zone) of deleted VMs

    # ------------------------------------------------------------ setup
    def setup(self):
        # The flows of a host with no tenant: those of a fresh host lack the
        # uplink's until a first switch has come and gone (harmless: with no
        # switch nothing crosses the uplink), so one does first.
        self.lab.mbxctl_ok("ls-add", "ls-soak-probe", "--vni", "3299", "--subnet",
                           "10.79.0.0/24", "--tenant", "soak-probe")
        self.lab.mbxctl_ok("--wait=hv", "sync")
        self.lab.mbxctl_ok("ls-del", "ls-soak-probe")
        self.lab.mbxctl_ok("--wait=hv", "sync")
        self.baseline_flows = {h: settled_flows(self.lab, h) for h in HOSTS}
        for tenant in TENANTS:
            add_tenant(self.lab, tenant)
        for tenant in TENANTS:
            t = Traffic(self.lab, tenant, self.rundir)
            t.start()
            self.traffic.append(t)

    # ------------------------------------------------------------ run
    def run(self):
        self.t0 = time.monotonic()
        started = time.time()
        set_started = self.t0
        next_sample = self.t0
        i = 0
        next_event = self.t0 + self.interval
        while time.monotonic() - self.t0 < self.seconds:
            now = time.monotonic()
            if now >= next_sample:
                self.samples.append((round(now - self.t0, 1),
                                     process_stats(lab_processes(self.lab))))
                self._note_losses(now - self.t0)
                self._check_zones()
                next_sample = now + SAMPLE_EVERY
            if now >= next_event:
                self._event(EVENTS[i % len(EVENTS)])
                i += 1
                next_event = max(time.monotonic(), next_event + self.interval)
            if self.traffic and self.traffic[0].due_rotation(time.monotonic(), set_started):
                for t in self.traffic:
                    t.rotate()
                set_started = time.monotonic()
            time.sleep(0.2)
        self.samples.append((round(time.monotonic() - self.t0, 1),
                             process_stats(lab_processes(self.lab))))
        self._note_losses(time.monotonic() - self.t0)
        self.wall = (started, time.time())

    def _during(self, t):
        """The kind of the event under way at ``t`` (or over within SETTLE s)."""
        return next((e["kind"] for e in reversed(self.events)
                     if e["t"] <= t <= e["end"] + SETTLE), "none")

    def _note_losses(self, t):
        known = {(x["tenant"], x["connection"]) for x in self.losses}
        for traffic in self.traffic:
            for name, error in traffic.lost():
                if (traffic.tenant.name, name) not in known:
                    self.losses.append({"t": round(t, 1), "tenant": traffic.tenant.name,
                                        "connection": name, "error": error,
                                        "during": self._during(t)})

    def _event(self, kind):
        t = round(time.monotonic() - self.t0, 1)
        t0 = time.monotonic()
        rec = {"t": t, "kind": kind, "what": "", "error": None}
        try:
            rec["what"] = getattr(self, "_" + kind.replace("-", "_"))()
        except Exception as err:        # noqa: BLE001 - the event failed: reported
            rec["error"] = "%s: %s" % (type(err).__name__, str(err)[:300])
        rec["took"] = round(time.monotonic() - t0, 1)
        rec["end"] = round(time.monotonic() - self.t0, 1)
        self.events.append(rec)
        self.log("%6.1f s %-20s %s%s" % (t, kind, rec["what"],
                                         " ERROR " + rec["error"] if rec["error"] else ""))

    # ------------------------------------------------------------ events
    def _vm_churn(self):
        tenant = self.rnd.choice(TENANTS)
        host = self.rnd.choice(HOSTS)
        self._churn += 1
        name = "sc%d" % self._churn
        ip = "%s.%d" % (tenant.subnet.rsplit(".", 1)[0],
                        CHURN_IPS[self._churn % len(CHURN_IPS)])
        self.lab.vm_add(name, host, tenant.switch, tenant.cidr(ip))
        mac = self.lab.state["vms"][name]["mac"]
        peer = self.rnd.choice(sorted(tenant.vms))
        got = self.lab.tcp_try(name, tenant.vms[peer][0], tenant.port, timeout=3)
        zone = vm_zone(self.lab, host, name)
        self.lab.vm_del(name)
        self._check_gone(name, host, mac, zone)
        return "%s on %s (%s): connection to %s %s" % (
            name, host, ip, peer, "ok" if got.get("ok") == 1 else "FAILED %s" % got)

    def _check_gone(self, name, host, mac, zone):
        def flows_naming_mac():
            return [(h, line) for h in HOSTS
                    for line in self.lab.ofctl(h, "dump-flows").splitlines()
                    if mac in line]
        try:
            wait_until(lambda: not flows_naming_mac(), 20, interval=0.5,
                       what="the flows of %s to go" % name)
        except LabError:
            self.leftovers.append("after deleting %s: flows naming %s: %s"
                                  % (name, mac, flows_naming_mac()[:3]))
        if vm_namespaces(self.lab, [name]):
            self.leftovers.append("after deleting %s: its namespace is left" % name)
        if zone is not None:
            self._zone_checks.append((time.monotonic() + ZONE_KEPT, name, host, zone))

    def _check_zones(self, final=False):
        """The zones of deleted VMs are empty once mbxd may no longer keep
        them (``final``: wait for the last ones)."""
        for check in list(self._zone_checks):
            deadline, name, host, zone = check
            if not final and time.monotonic() < deadline:
                continue
            if final:
                try:
                    wait_until(lambda: not conntrack(self.lab, host, zone),
                               max(0.0, deadline - time.monotonic()) + 1, interval=1.0,
                               what="zone %d of %s to be flushed" % (zone, name))
                except LabError:
                    pass
            left = conntrack(self.lab, host, zone)
            if left:
                self.leftovers.append("%.0f s after deleting %s: %d conntrack entries in its "
                                      "zone %d on %s, e.g. %s" % (
                                          ZONE_KEPT, name, len(left), zone, host,
                                          left[0][:160]))
            self._zone_checks.remove(check)

    def _rules(self):
        tenant = self.rnd.choice(TENANTS)
        prio = self.rnd.randrange(200, 400)
        while (tenant.firewall, "to-vm", prio) in self._added_rules:
            prio += 1
        port = self.rnd.randrange(20000, 30000)
        self.lab.mbxctl_ok("fw-add", tenant.firewall, str(prio), "to-vm",
                           "proto=udp dport=%d" % port, "deny")
        self._added_rules.append((tenant.firewall, "to-vm", prio))
        what = "%s: +rule %d" % (tenant.firewall, prio)
        if len(self._added_rules) > 3:
            fw, direction, old = self._added_rules.pop(0)
            self.lab.mbxctl_ok("fw-del", fw, direction, str(old))
            what += ", -rule %d of %s" % (old, fw)
        return what

    def _address_set(self):
        tenant = self.rnd.choice(TENANTS)
        name = "soak-set-%s" % tenant.name
        addresses = ["198.51.100.%d" % self.rnd.randrange(1, 255)
                     for _ in range(self.rnd.randrange(1, 4))]
        if name not in self._sets:
            self.lab.mbxctl_ok("as-add", name, tenant.name, *addresses)
            self.lab.mbxctl_ok("fw-add", tenant.firewall, "500", "to-vm",
                               "proto=tcp src=$%s dport=1" % name, "deny")
            self._sets.append(name)
            return "%s created (%s) with a rule" % (name, ", ".join(addresses))
        if self.rnd.random() < 0.3:
            self.lab.mbxctl_ok("fw-del", tenant.firewall, "to-vm", "500")
            self.lab.mbxctl_ok("as-del", name)
            self._sets.remove(name)
            return "%s and its rule deleted" % name
        self.lab.mbxctl_ok("as-set", name, *addresses)
        return "%s set to %s" % (name, ", ".join(addresses))

    def _migrate(self, notify):
        tenant = self.rnd.choice(TENANTS)
        vm = self.rnd.choice(sorted(tenant.vms))
        src = self.lab.state["vms"][vm]["host"]
        dst = self.rnd.choice([h for h in HOSTS if h != src])
        steps = self.lab.migrate(vm, dst, notify=notify)
        return "%s %s -> %s in %.0f ms" % (vm, src, dst, steps["total"])

    def _migrate_announced(self):
        return self._migrate(True)

    def _migrate_unannounced(self):
        return self._migrate(False)

    def _restart_mbxd(self):
        host = self.rnd.choice(HOSTS)
        self.lab.mbxd_stop(host, sig=signal.SIGKILL)
        pid = self.lab.mbxd_start(host)
        wait_until(lambda: self.lab.mbxd_appctl(host, "stats", check=False), SETTLE,
                   interval=0.5, what="mbxd on %s to answer" % host)
        return "mbxd on %s killed, new pid %d" % (host, pid)

    def _restart_vswitchd(self):
        host = self.rnd.choice(HOSTS)
        pid = self.lab.vswitchd_restart(host)
        wait_until(lambda: flows(self.lab, host) >= self.baseline_flows[host], SETTLE,
                   interval=0.5, what="the flows of %s's switch to come back" % host)
        return "ovs-vswitchd on %s killed, new pid %d" % (host, pid)

    def _restart_controller(self):
        key = self.rnd.choice(self.lab.controller_keys())
        self.lab.controller_kill(key)
        pid = self.lab.controller_start(key)
        wait_until(lambda: all(self.lab.serving().values()), SETTLE, interval=0.5,
                   what="every host to have a controller")
        return "controller %s killed, new pid %d" % (key, pid)

    def _restart_db(self):
        kind = ("nb", "sb")[self._db_turn % 2]
        leader = self.lab.db_leader(kind)
        members = self.lab.db_members(kind)
        if (self._db_turn // 2) % 2 and leader is not None:
            member, role = leader, "leader"
        else:
            member, role = next(m for m in members if m != leader), "follower"
        self._db_turn += 1
        self.lab.db_kill(kind, member)
        self.lab.db_start(kind, member)
        return "%s member %d (%s) killed and rejoined" % (kind, member, role)

    # ------------------------------------------------------------ teardown
    def teardown(self):
        """Stop the traffic, delete every VM and tenant, then look for
        anything left."""
        for t in self.traffic:
            t.stop()
        vms = [vm for tenant in TENANTS for vm in tenant.vms]
        for vm in vms:
            self.lab.vm_del(vm)
        for name in list(self._sets):
            tenant = next(t for t in TENANTS if name.endswith(t.name))
            self.lab.mbxctl_ok("fw-del", tenant.firewall, "to-vm", "500")
            self.lab.mbxctl_ok("as-del", name)
        for tenant in TENANTS:
            self.lab.mbxctl_ok("steer-del", tenant.switch)
            self.lab.mbxctl_ok("mb-del", tenant.firewall)
            self.lab.mbxctl_ok("ls-del", tenant.switch)
        self.lab.mbxctl_ok("--wait=hv", "sync")
        self._check_zones(final=True)
        ended = time.monotonic()
        left = []
        for host in HOSTS:
            def extra():
                return sorted(flows(self.lab, host) - self.baseline_flows[host])
            try:
                wait_until(lambda: not extra(), 20, interval=0.5, what="%s's flows" % host)
            except LabError:
                left.append("%s: %d flows the tenants left, e.g. %s"
                            % (host, len(extra()), extra()[:3]))
            try:
                wait_until(lambda: not conntrack(self.lab, host),
                           max(0.0, ended + ZONE_KEPT - time.monotonic()) + 1, interval=1.0,
                           what="%s's conntrack to empty" % host)
            except LabError:
                pass
            entries = conntrack(self.lab, host)
            if entries:
                left.append("%s: %d conntrack entries, e.g. %s" % (host, len(entries),
                                                                   entries[0][:160]))
        ns = vm_namespaces(self.lab, vms + ["sc%d" % i for i in range(1, self._churn + 1)])
        if ns:
            left.append("namespaces left: %s" % ns)
        self.leftovers += ["after the teardown: " + x for x in left]

    # ------------------------------------------------------------ report
    def report(self):
        return {"minutes": self.seconds / 60, "interval": self.interval,
                "events": self.events, "samples": self.samples,
                "traffic": [t.summary() for t in self.traffic],
                "new_failures_by_event": self._failures_by_event(),
                "losses": self.losses,
                "growth": growth(self.samples, warmup=self._warmup()),
                "leftovers": self.leftovers}

    def _warmup(self):
        """The end of the first round of events, at most a third of the run."""
        if len(self.events) >= len(EVENTS):
            return min(self.events[len(EVENTS) - 1]["end"], self.seconds / 3)
        return self.seconds / 3

    def _failures_by_event(self):
        """New-connection failures by the kind of the event under way (or
        just over: within SETTLE s of its end) when they happened."""
        out = {}
        for t in self.traffic:
            for when, *_ in t.new_failures:
                kind = self._during(when - self.wall[0])
                out[kind] = out.get(kind, 0) + 1
        return out


def growth(samples, warmup):
    """Per process instance (key, pid): its RSS (kB) and fds at its first
    sample after the warm-up and ``STARTING`` s into its life (a restarted
    database member gains its clients' connections meanwhile), and at its
    last; only instances seen that way over at least a third of the rest
    of the run."""
    if not samples:
        return {}
    end = samples[-1][0]
    span = max(end - warmup, 1.0)
    born, seen = {}, {}
    for t, stats in samples:
        for key, (pid, rss, fds) in stats.items():
            born.setdefault((key, pid), t)
            if t < warmup or (t - born[(key, pid)] < STARTING and born[(key, pid)] > 0):
                continue
            first = seen.setdefault((key, pid), [t, rss, fds, t, rss, fds])
            first[3:] = [t, rss, fds]
    out = {}
    for (key, pid), (t1, rss1, fd1, t2, rss2, fd2) in seen.items():
        if t2 - t1 >= span / 3:
            out["%s/%d" % (key, pid)] = {"from_s": t1, "to_s": t2, "rss_kb": [rss1, rss2],
                                         "fds": [fd1, fd2]}
    return out


def verdict(report):
    """The failures of a soak report (empty: it passed)."""
    bad = []
    for t in report["traffic"]:
        if t["lost"]:
            during = sorted({x["during"] for x in report["losses"]
                             if x["tenant"] == t["tenant"]})
            bad.append("%s lost %d long-lived connections (during: %s): %s"
                       % (t["tenant"], len(t["lost"]), ", ".join(during) or "?",
                          t["lost"][:3]))
    for kind, n in report["new_failures_by_event"].items():
        if kind not in DISRUPTIVE:
            bad.append("%d new connections failed during %s" % (n, kind))
    if not report["growth"]:
        bad.append("no process was observed long enough to measure growth")
    for name, g in report["growth"].items():
        rss1, rss2 = g["rss_kb"]
        allowed = max(RSS_GROWTH_MB * 1024, RSS_GROWTH_RATIO * rss1)
        if rss2 - rss1 > allowed:
            bad.append("%s: RSS grew %d kB -> %d kB (bound +%d kB)"
                       % (name, rss1, rss2, allowed))
        if g["fds"][1] - g["fds"][0] > FD_GROWTH:
            bad.append("%s: fds grew %d -> %d (bound +%d)"
                       % (name, g["fds"][0], g["fds"][1], FD_GROWTH))
    bad += report["leftovers"]
    bad += ["event %s at %.0f s failed: %s" % (e["kind"], e["t"], e["error"])
            for e in report["events"] if e["error"]]
    return bad


def plot(report, path):
    """RSS and fds of every process over time, events marked; False
    without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    series = {}
    for t, stats in report["samples"]:
        for key, (_pid, rss, fds) in stats.items():
            s = series.setdefault(key, ([], [], []))
            s[0].append(t)
            s[1].append(rss / 1024)
            s[2].append(fds)
    for key, (ts, rss, fds) in sorted(series.items()):
        ax1.plot(ts, rss, label=key, linewidth=1)
        ax2.plot(ts, fds, label=key, linewidth=1)
    for e in report["events"]:
        for ax in (ax1, ax2):
            ax.axvline(e["t"], color="red" if e["error"] else "grey", alpha=0.3, linewidth=0.8)
    ax1.set_ylabel("RSS (MB)")
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("seconds (grey lines: events, red: failed events)")
    ax1.set_title("mbx soak: %.0f min, %d events, lost connections %d"
                  % (report["minutes"], len(report["events"]),
                     sum(len(t["lost"]) for t in report["traffic"])))
    ax1.legend(fontsize=6, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def soak(lab, rundir, out, minutes, interval, seed=0, log=print):
    """Set up, run, tear down and write the report on a lab that is up
    with ``HOSTS``; returns the report (with its ``verdict``)."""
    s = Soak(lab, rundir, minutes, interval, seed, log)
    try:
        s.setup()
        s.run()
    finally:
        try:
            s.teardown()
        except Exception as err:        # noqa: BLE001 - reported as a leftover
            s.leftovers.append("teardown failed: %s: %s" % (type(err).__name__, err))
    report = s.report()
    report["verdict"] = verdict(report)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(report, f, indent=1)
    report["plot"] = plot(report, os.path.join(out, "soak.png")) and \
        os.path.join(out, "soak.png")
    return report


def summary_lines(report):
    lines = ["soak: %.0f min, %d events (%d failed)" % (
        report["minutes"], len(report["events"]),
        sum(1 for e in report["events"] if e["error"]))]
    for t in report["traffic"]:
        lines.append("  %s: %d long-lived connections, %d lost, %d replies, max gap %.0f ms; "
                     "%d new connections, %d failed" % (
                         t["tenant"], t["long_lived"], len(t["lost"]), t["replies"],
                         t["max_gap_ms"], t["new_attempts"], t["new_failures"]))
    lines.append("  new-connection failures by event: %s" % report["new_failures_by_event"])
    lines += ["  lost at %.0f s during %s: %s %s (%s)" % (x["t"], x["during"], x["tenant"],
                                                        x["connection"], x["error"])
              for x in report["losses"]]
    for name, g in sorted(report["growth"].items()):
        lines.append("  %-28s RSS %6.1f -> %6.1f MB  fds %3d -> %3d  (%.0f-%.0f s)" % (
            name, g["rss_kb"][0] / 1024, g["rss_kb"][1] / 1024, g["fds"][0], g["fds"][1],
            g["from_s"], g["to_s"]))
    lines.append("  leftovers: %s" % (report["leftovers"] or "none"))
    lines.append("  verdict: %s" % ("PASS" if not report["verdict"] else "FAIL"))
    lines += ["    - " + v for v in report["verdict"]]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--interval", type=float, default=20.0, help="seconds between events")
    p.add_argument("--out", default="build/soak")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    prefix = os.environ.get("MBX_LAB_PREFIX", "mbx") + "s"
    rundir = os.environ.get("MBX_LAB_DIR", "/run/mbx") + "-soak"
    Lab(prefix=prefix, rundir=rundir).down(log=lambda *_: None)
    lab = Lab(prefix=prefix, rundir=rundir)
    try:
        lab.up(HOSTS, log=lambda *_: None)
        report = soak(lab, rundir, a.out, a.minutes, a.interval, a.seed,
                      log=lambda line: print(line, flush=True))
    finally:
        lab.down(log=lambda *_: None)
    print("\n".join(summary_lines(report)))
    print("report: %s%s" % (os.path.join(a.out, "soak.json"),
                            ", plot: %s" % report["plot"] if report["plot"] else ""))
    return 0 if not report["verdict"] else 1


if __name__ == "__main__":
    sys.exit(main())
