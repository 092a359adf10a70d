"""Controller failover during VM moves, and stale shared state, in a real
lab of its own (prefix ``$MBX_TEST_PREFIX`` + "h"): two mbx-northd
instances (the lab's default) and two central physical controllers
(``--standby 1``), the migration scenario's TCP connections through the
firewall, the load balancer, SNAT and DNAT (``lab.migscenario``).

* The active mbx-northd killed with SIGKILL: the standby takes the lock
  and, when nothing changed, writes nothing (every southbound row it
  writes keeps its ``_version``).
* The active mbx-northd, then the serving physical controller, killed
  with SIGKILL in the middle of a move of mv (announced and unannounced:
  just before its port appears on the destination, so the survivor has
  to place it): the move completes, every connection carries on.  The
  takeover times are printed: from the kill to the standby mbx-northd
  having finished its first round as active / the standby controller
  serving every host.
* A host's mbxd killed with SIGKILL and kept down while its Shared_State
  says one of its backends is down: within the lease the rows are gone
  and the other hosts count the backend in again; the live hosts' rows
  stay (their daemons refresh them).
"""

import json
import os
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

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "h"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-ha"
HOSTS = ["h1", "h2", "h3"]
LEASE = 3           # s: NB_Global.options:shared-state-lease for the last test


@pytest.fixture(scope="module")
def ha():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    sc = Scenario(lab, RUNDIR)
    try:
        lab.up(HOSTS, log=lambda *_: None, controllers="central", standby=1)
        sc.build(HOSTS)
        wait_until(lambda: sorted(lab.northd_status(k).split("\n")[0]
                                  for k in Lab.NORTHD_KEYS)
                   == ["Status: active", "Status: standby"], 15,
                   what="one mbx-northd active, the other standing by")
        yield lab, sc
    finally:
        sc.stop()
        lab.down(log=lambda *_: None)


# ------------------------------------------------------------- helpers

def sb_remote(lab):
    """One unix socket of the southbound database (read only here)."""
    return lab.sb_remote.split(",")[0]


def select(lab, table, columns, where=()):
    out = subprocess.run(["ovsdb-client", "transact", sb_remote(lab), json.dumps(
        ["MBX_Southbound", {"op": "select", "table": table, "where": list(where),
                            "columns": list(columns)}])],
        check=True, capture_output=True, text=True, timeout=10).stdout
    [res] = json.loads(out)
    assert "error" not in res, res
    return res["rows"]


def versions(lab):
    """{table: {uuid: _version}} of the southbound rows mbx-northd writes."""
    return {t: {r["_uuid"][1]: r["_version"][1]
                for r in select(lab, t, ["_uuid", "_version"])}
            for t in ("Datapath", "Slice", "VM_Location", "SB_Global")}


def assert_all_alive(sc, replies=25):
    dead = sc.stalled(replies=replies)
    assert not dead, dead


def restart_as_standby(lab, key, active):
    """Start the killed mbx-northd ``key`` again: it stands by, ``active``
    keeps the lock."""
    lab.northd_start(key)
    wait_until(lambda: lab.northd_status(key).startswith("Status: standby"), 15,
               what="the restarted %s to stand by" % key)
    assert lab.northd_active() == active


class Watch(threading.Thread):
    """Times ``done()`` from ``start()`` (the kill), polling every 5 ms."""

    def __init__(self, done):
        super().__init__(daemon=True)
        self.done, self.took, self.error = done, None, None

    def run(self):
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 30:
                if self.done():
                    self.took = time.monotonic() - t0
                    return
                time.sleep(0.005)
        except Exception as e:      # noqa: BLE001 - reported by the test
            self.error = e


def move_with_kill(lab, sc, notify, kill):
    """Move mv to another host; ``kill()`` (returns a Watch, started) runs
    just before mv's port is plugged on the destination.  Returns
    (destination, the Watch)."""
    src = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    watch = []
    plug = lab._plug

    def plug_after_kill(host, name):
        watch.append(kill())
        return plug(host, name)
    lab._plug = plug_after_kill
    try:
        lab.migrate(CT.MIGRATING_VM, dst, notify=notify, timeout=30)
    finally:
        del lab._plug
    [w] = watch
    w.join(30)
    return dst, w


def check_moved(lab, sc, dst, notify):
    assert lab.sb().snapshot().vm_locations[CT.MIGRATING_VM][0] == dst
    row = lab.migration_row(CT.MIGRATING_VM)
    assert (row["status"], row["destination"], row["path"]) == \
        ("done", dst, "announced" if notify else "unannounced"), row
    assert_all_alive(sc)


# --------------------------------------------------------------- tests

def test_a_standby_northd_takes_over_without_writing(ha):
    lab, sc = ha
    active = lab.northd_active()
    standby = next(k for k in Lab.NORTHD_KEYS if k != active)
    before = versions(lab)
    t0 = time.monotonic()
    lab.northd_kill(active)
    wait_until(lambda: "First round as active" in lab.northd_status(standby), 10,
               interval=0.005, what="%s to take over" % standby)
    print("\nmbx-northd takeover (idle cloud): %.3f s" % (time.monotonic() - t0),
          file=sys.stderr)
    assert versions(lab) == before      # 0 churn
    restart_as_standby(lab, active, standby)


@pytest.mark.parametrize("notify", [True, False], ids=["announced", "unannounced"])
def test_active_northd_killed_during_a_move(ha, notify):
    lab, sc = ha
    sc.stop()
    sc.open(per_kind=2)
    active = lab.northd_active()
    standby = next(k for k in Lab.NORTHD_KEYS if k != active)

    def kill():
        lab.northd_kill(active)
        w = Watch(lambda: "First round as active" in lab.northd_status(standby))
        w.start()
        return w
    dst, watch = move_with_kill(lab, sc, notify, kill)
    assert watch.error is None and watch.took is not None, watch.error
    print("\nmbx-northd takeover during an %s move: %.3f s (kill -> lock held and "
          "first round done)" % ("announced" if notify else "unannounced", watch.took),
          file=sys.stderr)
    check_moved(lab, sc, dst, notify)
    restart_as_standby(lab, active, standby)


@pytest.mark.parametrize("notify", [True, False], ids=["announced", "unannounced"])
def test_serving_controller_killed_during_a_move(ha, notify):
    lab, sc = ha
    sc.stop()
    sc.open(per_kind=2)
    wait_until(lambda: all(lab.serving().get(h) for h in HOSTS), 10,
               what="every host to be served")
    name = set(lab.serving().values())
    assert len(name) == 1, name         # central: one instance serves them all
    [victim_name] = name
    victim = lab.controller_key(victim_name)
    survivor = next(k for k in lab.controller_keys() if k != victim)
    survivor_name = lab.controller_name(survivor)

    def kill():
        lab.controller_kill(victim, signal.SIGKILL)
        w = Watch(lambda: lab.serving() == {h: survivor_name for h in HOSTS})
        w.start()
        return w
    dst, watch = move_with_kill(lab, sc, notify, kill)
    assert watch.error is None and watch.took is not None, watch.error
    print("\nphysical controller takeover during an %s move: %.3f s (kill -> %s serves "
          "every host)" % ("announced" if notify else "unannounced", watch.took,
                           survivor_name), file=sys.stderr)
    check_moved(lab, sc, dst, notify)
    log = lab.controller_log(victim)
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    lab.controller_start(victim)

    def settled():
        with open(log) as f:
            f.seek(offset)
            return "locks settled" in f.read() and lab.controllers_connected()
    wait_until(settled, 20, what="%s to stand by again" % victim_name)
    assert lab.serving() == {h: survivor_name for h in HOSTS}


def times_active(lab):
    """{northd key: how many times it got the lock} (``status``)."""
    out = {}
    for key in Lab.NORTHD_KEYS:
        for line in lab.northd_status(key).splitlines():
            if line.startswith("Times active: "):
                out[key] = int(line.split(": ")[1])
    return out


def test_the_lock_is_taken_again_on_a_new_southbound_leader(ha):
    lab, sc = ha
    assert len(lab.db_members("sb")) == 3, "the lab's default: 3-member clusters"
    sc.stop()
    sc.open(per_kind=2)
    before = times_active(lab)
    leader = lab.db_leader("sb")
    t0 = time.monotonic()
    lab.db_kill("sb", leader, signal.SIGKILL)

    def again():
        now = times_active(lab)
        actives = [k for k in Lab.NORTHD_KEYS
                   if lab.northd_status(k).startswith("Status: active")]
        return len(actives) == 1 and sum(now.values()) > sum(before.values()) and \
            "First round as active" in lab.northd_status(actives[0])
    wait_until(again, 30, interval=0.01, what="one mbx-northd to hold the lock again")
    print("\nSB leader member %d killed: mbx-northd active again on the new leader "
          "(%s) after %.3f s" % (leader, lab.northd_active(), time.monotonic() - t0),
          file=sys.stderr)
    src = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    lab.migrate(CT.MIGRATING_VM, dst, notify=True, timeout=30)
    check_moved(lab, sc, dst, True)
    lab.db_start("sb", leader)


def lb_health(lab, host, backend):
    vips = json.loads(lab.mbxd_appctl(host, "lb/json"))
    [vip] = [v for v in vips if v["vip"] == "%s:%d/tcp" % (CT.VIP, CT.VIP_PORT)]
    return {b["backend"]: b["health"] for b in vip["backends"]}[backend]


def test_a_dead_hosts_shared_state_expires_and_its_backend_comes_back(ha):
    lab, sc = ha
    sc.stop()
    lab.mbxctl_ok("global-set", "shared-state-lease=%d" % LEASE)
    mv_host = lab.state["vms"][CT.MIGRATING_VM]["host"]
    vm = next(b for b in CT.BACKENDS if lab.state["vms"][b]["host"] != mv_host)
    dead = lab.state["vms"][vm]["host"]
    others = [h for h in HOSTS if h != dead]
    backend = "%s:%d" % (CT.VMS[vm][0], CT.BACKEND_PORT)
    server = sc.servers[CT.BACKENDS.index(vm)]
    server.terminate()
    server.wait(10)
    lab.forget_pid(server.pid)
    wait_until(lambda: all(lb_health(lab, h, backend) == "down" for h in others), 20,
               what="%s's host %s to mark it down for every host" % (vm, dead))

    def rows_of(host):
        return select(lab, "Shared_State", ["service", "key", "value"],
                      [["host", "==", host]])
    assert any(backend in r["value"] and "down" in r["value"] for r in rows_of(dead))
    live = {h: len(rows_of(h)) for h in others}
    t0 = time.monotonic()
    lab.mbxd_stop(dead, sig=signal.SIGKILL)        # and it stays down
    wait_until(lambda: not rows_of(dead), 3 * LEASE + 10, interval=0.05,
               what="the dead host's Shared_State rows to go")
    gone = time.monotonic() - t0
    wait_until(lambda: all(lb_health(lab, h, backend) == "up" for h in others), 10,
               what="the other hosts to count %s in again" % backend)
    back = time.monotonic() - t0
    wait_until(lambda: "%s=down" % backend not in lab.mbxctl_ok("lb-list", "lb-red"), 10,
               what="LB_VIP.status to stop saying %s is down" % backend)
    print("\n%s's Shared_State gone %.1f s after its mbxd was killed (lease %d s); "
          "%s up again on %s after %.1f s" % (dead, gone, LEASE, backend,
                                              ", ".join(others), back), file=sys.stderr)
    # the live hosts' rows outlive two more leases: their daemons refresh them
    deadline = time.monotonic() + 2 * LEASE
    while time.monotonic() < deadline:
        assert {h: len(rows_of(h)) for h in others} == live
        time.sleep(0.5)
    lab.mbxd_start(dead)
