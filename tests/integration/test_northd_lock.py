"""mbx-northd active/standby on a real ovsdb-server (``nb``: one server
serving both databases, as a single-member lab does), with real
mbx-northd processes: the first holds the lock ``mbx_northd`` and writes,
the second stands by; killed with SIGKILL, the active one is replaced by
the standby, which writes nothing when the databases are complete (every
southbound row keeps its ``_version``); the active one deletes the
Shared_State rows no one refreshed for a lease and the finished
migrations past their retention, and none other."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab.sh import wait_until

PY = sys.executable


def transact(remote, *ops):
    out = subprocess.run(["ovsdb-client", "transact", remote,
                          json.dumps(["MBX_Southbound", *ops])],
                         check=True, capture_output=True, text=True).stdout
    assert "error" not in out, out
    return json.loads(out)


def versions(remote):
    """{table: {uuid: _version}} of the rows mbx-northd writes."""
    out = {}
    for table in ("Datapath", "Slice", "VM_Location", "SB_Global", "Shared_State",
                  "Migration"):
        [res] = transact(remote, {"op": "select", "table": table, "where": [],
                                  "columns": ["_uuid", "_version"]})
        out[table] = {r["_uuid"][1]: r["_version"][1] for r in res["rows"]}
    return out


def mbxctl(remote, *args):
    proc = subprocess.run([PY, "-m", "ovsdb.ctl", "--db", remote] + list(args),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Northd:
    def __init__(self, remote, rundir, name):
        self.ctl = os.path.join(rundir, name + ".ctl")
        self.log = os.path.join(rundir, name + ".log")
        self.proc = subprocess.Popen(
            [PY, "-m", "ryu_apps.northd_main", "--db", remote, "--sb", remote,
             "--log-file", self.log, "--unixctl", self.ctl],
            stdout=subprocess.DEVNULL, stderr=open(self.log + ".err", "wb"))

    def status(self):
        return subprocess.run(["ovs-appctl", "--timeout=5", "-t", self.ctl, "status"],
                              capture_output=True, text=True).stdout

    def ready(self):
        return "Southbound ready: yes" in self.status()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def pair(nb):
    remote, _pid, rundir = nb
    started = []
    try:
        first = Northd(remote, rundir, "n1")
        started.append(first)
        wait_until(lambda: first.status().startswith("Status: active") and first.ready(),
                   15, what="the first mbx-northd to be active")
        second = Northd(remote, rundir, "n2")
        started.append(second)
        wait_until(second.ready, 15, what="the second mbx-northd to read the databases")
        yield remote, first, second
    finally:
        for n in started:
            n.stop()


def test_the_standby_takes_over_a_killed_active_northd_and_writes_nothing(pair):
    remote, first, second = pair
    assert second.status().startswith("Status: standby")
    # --wait=hv: the active one wrote its Datapath row and hv_cfg (no host)
    mbxctl(remote, "--wait=hv", "ls-add", "ls-x", "--vni", "77", "--subnet", "10.7.0.0/24",
           "--tenant", "x", "--", "vm-add", "vx1", "--switch", "ls-x", "--ip", "10.7.0.5")
    before = versions(remote)
    assert len(before["Datapath"]) == 1 and len(before["SB_Global"]) == 1
    t0 = time.monotonic()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    wait_until(lambda: "First round as active" in second.status(), 10, interval=0.005,
               what="the standby to take over")
    took = time.monotonic() - t0
    print("\nmbx-northd takeover after SIGKILL: %.3f s (lock + first round)" % took,
          file=sys.stderr)
    assert versions(remote) == before          # 0 churn
    with open(second.log) as f:
        log = f.read()
    assert "standby: lock mbx_northd" in log and "active: first round done" in log
    # it writes from now on
    mbxctl(remote, "ls-add", "ls-y", "--vni", "78", "--subnet", "10.8.0.0/24", "--tenant", "y")
    wait_until(lambda: len(versions(remote)["Datapath"]) == 2, 10,
               what="the new active mbx-northd to write ls-y's Datapath row")


def shared_row(host, stamp, value='{"10.0.0.4:80":"down"}'):
    return {"op": "insert", "table": "Shared_State",
            "row": {"middlebox": "lb-a", "host": host, "service": "lb-health",
                    "key": "vip", "value": value, "stamp": stamp}}


def test_the_active_northd_expires_stale_shared_state_and_old_migrations(pair):
    remote, first, second = pair
    mbxctl(remote, "global-set", "shared-state-lease=3", "migration-retention=10")
    now_ms = int(time.time() * 1000)
    transact(remote, shared_row("dead", 1), shared_row("live", 1),
             {"op": "insert", "table": "Migration", "row": {
                 "vm": "v1", "source": "a", "destination": "b", "path": "announced",
                 "status": "done", "token": "0" * 32,
                 "timeline": ["map", [["begun", now_ms - 20000], ["done", now_ms - 11000]]]}},
             {"op": "insert", "table": "Migration", "row": {
                 "vm": "v2", "source": "a", "destination": "b", "path": "announced",
                 "status": "done", "token": "1" * 32,
                 "timeline": ["map", [["begun", now_ms - 2000], ["done", now_ms - 1000]]]}},
             {"op": "insert", "table": "Migration", "row": {
                 "vm": "v3", "source": "a", "destination": "b", "path": "announced",
                 "status": "streaming", "token": "2" * 32,
                 "timeline": ["map", [["begun", now_ms - 60000]]]}})
    t0 = time.monotonic()

    def rows(table, column):
        [res] = transact(remote, {"op": "select", "table": table, "where": [],
                                  "columns": [column]})
        return sorted(r[column] for r in res["rows"])

    # "live" refreshes its stamp every second, as mbxd does every lease/3
    stamp = 1
    while rows("Shared_State", "host") != ["live"]:
        assert time.monotonic() - t0 < 15, rows("Shared_State", "host")
        stamp += 1
        transact(remote, {"op": "update", "table": "Shared_State",
                          "where": [["host", "==", "live"]], "row": {"stamp": stamp}})
        time.sleep(1.0)
    print("\nthe dead host's row went %.1f s after it last changed (lease 3 s)"
          % (time.monotonic() - t0), file=sys.stderr)
    assert rows("Migration", "vm") == ["v2", "v3"]     # v1 ended 11 s ago, retention 10 s
    assert "Status: standby" in second.status()
    assert "Expired: 1 Shared_State rows, 1 migrations" in first.status()
