"""Clustered databases in a real lab (its own, prefix ``<suite>c``): the
leader of the northbound, then of the southbound Raft cluster is killed
with SIGKILL while clients write and TCP connections run through the
middlebox chain (``lab.migscenario``).

* Northbound: 500 changes by the ``ovsdb.api`` client mbxctl is made of
  (one transaction each, a change whose outcome was not acknowledged is
  retried) and, alongside, real ``mbxctl`` processes in two parallel
  loops; the leader dies after the first 150.  Every acknowledged write is
  there afterwards, the clients' reconnection (kill to the next
  acknowledged write) is measured and printed, and no connection breaks.
* Southbound (its clients: mbx-northd, the physical controllers, every
  host's mbxd and mbx-chassis, over ssl: with the hosts' certificates):
  no connection breaks, the controllers ask the new leader for their
  locks, a VM added afterwards is programmed and an announced migration
  moves its state.  The time from the kill to each is printed.

The killed member is started again after each test and rejoins.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab import ctbaseline as CT
from lab.lab import Lab
from lab.migscenario import Scenario
from lab.sh import wait_until
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "c"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-cl"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
HOSTS = ["h1", "h2", "h3"]
CHANGES = 500               # the API client's changes
KILL_AFTER = 150            # acknowledged changes before the leader dies
RECONNECT_BOUND = 5.0       # issue 15: clients reconnect within 5 s
WRITE_DEADLINE = 120.0      # the writers give up (and the test fails) after this


@pytest.fixture(scope="module")
def cl():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    sc = Scenario(lab, RUNDIR)
    try:
        lab.up(HOSTS, log=lambda *_: None, controllers=CONTROLLERS, db_cluster=3)
        sc.build(HOSTS)
        yield lab, sc
    finally:
        sc.stop()
        lab.down(log=lambda *_: None)


def assert_all_alive(sc, replies=25):
    dead = sc.stalled(replies=replies)
    assert not dead, dead


class ApiWriter(threading.Thread):
    """``CHANGES`` address sets, one transaction each, through MbxNb (what
    mbxctl runs); a change without an acknowledgement is tried again
    (``--may-exist``: it may have committed)."""

    def __init__(self, remote):
        super().__init__(daemon=True)
        self.remote = remote
        self.acked = []             # (name, monotonic time of the acknowledgement)
        self.begun = []             # monotonic time each acknowledged change's last try began
        self.failures = []          # (monotonic time, error)
        self.error = None

    def run(self):
        deadline = time.monotonic() + WRITE_DEADLINE
        nb = MbxNb.connect(self.remote, timeout=10)
        try:
            for i in range(CHANGES):
                name = "api-%03d" % i
                while True:
                    if time.monotonic() > deadline:
                        self.error = "gave up at %s" % name
                        return
                    begun = time.monotonic()
                    try:
                        nb.as_add(name, CT.TENANT, ["10.99.%d.%d" % (i // 250, i % 250)],
                                  may_exist=True).execute(check_error=True)
                        self.acked.append((name, time.monotonic()))
                        self.begun.append(begun)
                        break
                    except MbxError as err:
                        self.failures.append((time.monotonic(), str(err)))
        finally:
            nb.close()


class CliWriter(threading.Thread):
    """Real ``mbxctl as-add`` processes, one change each, until told to
    stop; a change that failed is tried again with ``--may-exist``."""

    def __init__(self, lab, tag, stop):
        super().__init__(daemon=True)
        self.lab, self.tag, self.stop = lab, tag, stop
        self.acked = []
        self.begun = []
        self.failures = []

    def run(self):
        deadline = time.monotonic() + WRITE_DEADLINE
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            name = "cli-%s-%03d" % (self.tag, i)
            extra = []
            while time.monotonic() < deadline:
                begun = time.monotonic()
                proc = self.lab.mbxctl("as-add", name, CT.TENANT, "10.98.%d.%d"
                                       % (i // 250, i % 250), *extra, timeout=60)
                if proc.returncode == 0:
                    self.acked.append((name, time.monotonic()))
                    self.begun.append(begun)
                    break
                self.failures.append((time.monotonic(), proc.stderr.strip()))
                extra = ["--may-exist"]
            i += 1


def first_after(writer, t):
    """When the first change whose (last) try began after ``t`` was
    acknowledged: a change in flight at ``t`` may have committed on the
    old leader just before it died."""
    return next((at for (_name, at), begun in zip(list(writer.acked), list(writer.begun))
                 if begun > t), None)


def test_nb_leader_killed_during_writes(cl):
    lab, sc = cl
    leader = lab.db_leader("nb")
    assert leader is not None
    sc.open(per_kind=2)
    api = ApiWriter(lab.nb_remote)
    stop = threading.Event()
    clis = [CliWriter(lab, str(n), stop) for n in (1, 2)]
    t_start = time.monotonic()
    api.start()
    for w in clis:
        w.start()
    wait_until(lambda: len(api.acked) >= KILL_AFTER or not api.is_alive(), 60,
               what="%d acknowledged changes" % KILL_AFTER)
    acked_before = len(api.acked)
    lab.db_kill("nb", leader, signal.SIGKILL)
    # From here on (the process is gone) every acknowledgement comes from
    # the new leader.
    t_kill = time.monotonic()
    wait_until(lambda: lab.db_leader("nb"), 10, what="a new northbound leader")
    t_elected = time.monotonic()
    # Bounded waits (RECONNECT_BOUND): each kind of client writes again.
    wait_until(lambda: first_after(api, t_kill), RECONNECT_BOUND,
               what="the API client to write again after the kill")
    # An mbxctl process takes seconds on a loaded machine (Python start-up,
    # imports): its figures are printed next to its usual duration.
    wait_until(lambda: all(first_after(w, t_kill) for w in clis), WRITE_DEADLINE,
               what="mbxctl to write again after the kill")
    api.join(WRITE_DEADLINE)
    stop.set()
    for w in clis:
        w.join(WRITE_DEADLINE)
    elapsed = time.monotonic() - t_start
    assert api.error is None, api.error
    assert len(api.acked) == CHANGES

    api_gap = first_after(api, t_kill) - t_kill
    cli_gap = max(first_after(w, t_kill) for w in clis) - t_kill
    before = sorted(at - begun for w in clis for (_n, at), begun in zip(w.acked, w.begun)
                    if at < t_kill)
    after = [next(at - begun for (_n, at), begun in zip(w.acked, w.begun) if begun > t_kill)
             for w in clis]
    cli_usual = before[len(before) // 2] if before else float("nan")
    cli_count = sum(len(w.acked) for w in clis)
    print("\nNB leader (member %d) killed after %d changes; new leader %d after %.3f s; "
          "API client wrote again after %.3f s (%d failed attempts); mbxctl processes "
          "after %.3f s (%d changes, %d failed attempts; one mbxctl took %.3f s "
          "before the kill (median), the first begun after it %s s); %d + %d changes "
          "in %.1f s"
          % (leader, acked_before, lab.db_leader("nb"), t_elected - t_kill, api_gap,
             len(api.failures), cli_gap, cli_count, sum(len(w.failures) for w in clis),
             cli_usual, "/".join("%.3f" % d for d in after), CHANGES, cli_count, elapsed),
          file=sys.stderr)

    # Every acknowledged write is there, read through a new connection.
    nb = MbxNb.connect(lab.nb_remote)
    try:
        names = {r["name"] for r in nb.db_list("Address_Set", columns=["name"]
                                              ).execute(check_error=True)}
    finally:
        nb.close()
    acked = {n for n, _ in api.acked} | {n for w in clis for n, _ in w.acked}
    assert acked - names == set()
    assert_all_alive(sc)
    # The northbound's other clients follow the new leader too: a rule
    # change reaches every host (--wait=hv: mbx-northd, the controllers and
    # every mbxd's monitor saw it) and a new VM is programmed.
    t0 = time.monotonic()
    lab.mbxctl_ok("--wait=hv", "fw-add", "fw-red", "200", "from-vm", "proto=udp", "allow")
    lab.vm_add("late-nb", HOSTS[2], CT.SWITCH, "10.0.0.78/%d" % CT.PREFIXLEN, timeout=30)
    print("after the NB leader change: a rule applied on every host and a new VM "
          "programmed in %.3f s" % (time.monotonic() - t0), file=sys.stderr)
    assert_all_alive(sc)
    sc.stop()

    lab.db_start("nb", leader)          # rejoins from its file
    assert lab.db_status("nb", leader).get("Status") == "cluster member"


def test_sb_leader_killed_under_traffic(cl):
    lab, sc = cl
    leader = lab.db_leader("sb")
    assert leader is not None
    sc.open(per_kind=2)
    logs = {key: Log(lab.controller_log(key)) for key in lab.controller_keys()}
    lab.db_kill("sb", leader, signal.SIGKILL)
    t_kill = time.monotonic()
    wait_until(lambda: lab.db_leader("sb"), 10, what="a new southbound leader")
    t_elected = time.monotonic()
    # Every controller asks the new leader for its locks (ovsdb.locks).
    lead = re.compile(r"sb\.sock leads MBX_Southbound|:6642 leads MBX_Southbound")
    t_locks = {}

    def relocked():
        for key, log in logs.items():
            if key not in t_locks and lead.search(log.text()):
                t_locks[key] = time.monotonic()
        return len(t_locks) == len(logs)
    wait_until(relocked, RECONNECT_BOUND + 5, interval=0.01,
               what="every controller to ask the new leader for its locks")
    assert_all_alive(sc)
    # A new VM, then an announced migration: northd, the controllers, the
    # chassis agents and mbxd all work on the new leader.
    vm_host = HOSTS[1]
    lab.vm_add("late", vm_host, CT.SWITCH, "10.0.0.77/%d" % CT.PREFIXLEN, timeout=30)
    t_vm = time.monotonic()
    mv_host = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != mv_host)
    steps = lab.migrate(CT.MIGRATING_VM, dst, notify=True, timeout=30)
    assert_all_alive(sc)
    print("\nSB leader (member %d) killed; new leader %d after %.3f s; controllers "
          "re-asked for their locks after %s s; a new VM was programmed %.3f s after "
          "the kill; then a migration took %.1f ms"
          % (leader, lab.db_leader("sb"), t_elected - t_kill,
             ", ".join("%s %.3f" % (k, t - t_kill) for k, t in sorted(t_locks.items())),
             t_vm - t_kill, steps["total"]), file=sys.stderr)
    assert lab.ping("late", CT.VMS["peer"][0]).ok
    sc.stop()
    lab.db_start("sb", leader)
    assert lab.db_status("sb", leader).get("Status") == "cluster member"


class Log:
    """A log file from now on."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def text(self):
        if not os.path.exists(self.path):
            return ""
        with open(self.path) as f:
            f.seek(self.offset)
            return f.read()


def test_lab_down_leaves_nothing(cl):
    """Checked by the module fixture's down; here: every database member
    is a process of the lab's state, each in its node's namespace."""
    lab, _ = cl
    for kind in ("nb", "sb"):
        for n in lab.db_members(kind):
            pid = lab.state["pids"][lab.db_key(kind, n)]
            ns = subprocess.run(["ip", "netns", "identify", str(pid)],
                                capture_output=True, text=True).stdout.strip()
            assert ns == lab.db_node_ns(n)
