"""A real mbxd while one of its databases goes away and comes back.

One sandbox host (``mbio_host.ScratchHost``: its own ovsdb-server and
ovs-vswitchd, br-int with the middlebox port) named ``hx``; the northbound
and the southbound database each on an ``ovsdb-server`` of its own, so
either can be stopped alone.  fw-red has a slice on hx, red1 is
located on hx, and host hy publishes shared state of fw-red.

While the southbound server is away, mbxd keeps running with what it had:
its slice, its VM's conntrack zone, the flows in the switch and the shared
state it received, even when the northbound database changes meanwhile
(that change is applied once the southbound database is back, as a whole).
The same holds the other way round (the northbound database away while
the runtime changes).  What the daemon holds is read as an operator reads
it, through ``ovs-appctl -t mbxd`` and ``ovs-ofctl``.
"""

import json
import os
import subprocess
import types
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

from mbio_host import MB_PORT, sandbox  # noqa: E402
from ovsdb.server import pid_alive, stop as stop_pid  # noqa: E402
from test_mb_confmon import (Server, chain, chassis, insert,  # noqa: E402
                             located, nb_transact, ref, sb_transact)
from ovsdb import server  # noqa: E402

pytestmark = pytest.mark.lab

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOST = "hx"
DAEMON_COOKIE = "0x4d42440000000000/0xffffff0000000000"


@pytest.fixture(scope="module")
def host():
    yield from sandbox("mbxsb-")


def wait_for(what, predicate, timeout=20.0):
    """Poll ``predicate`` until true; fails naming ``what`` after
    ``timeout`` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


class Mbxd:
    """mbxd on the sandbox host, ended by its PID."""

    def __init__(self, host, nb, sb, logdir):
        self.host = host
        self.log = os.path.join(str(logdir), "mbxd.log")
        cmd = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "middlebox.main",
               "--host", HOST, "--db", nb, "--sb", sb, "--bridge", "br-int",
               "--port", MB_PORT, "--rundir", host.rundir, "--no-migration",
               "--log-file", self.log]
        env = dict(os.environ, OVS_RUNDIR=host.rundir,
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.out = open(self.log + ".out", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def appctl(self, *args):
        proc = subprocess.run(["ovs-appctl", "-t", "mbxd"] + list(args),
                              env=dict(os.environ, OVS_RUNDIR=self.host.rundir),
                              capture_output=True, text=True, timeout=30)
        return proc.stdout if proc.returncode == 0 else ""

    def shared(self):
        """The shared state mbxd knows: (middlebox, service, key, host, value)."""
        text = self.appctl("shared/json")
        rows = json.loads(text)["rows"] if text else []
        return sorted((r["middlebox"], r["service"], r["key"], r["host"],
                       json.dumps(r["value"], sort_keys=True)) for r in rows)

    def logged(self, text):
        """How many log lines of this daemon contain ``text``."""
        with open(self.log) as f:
            return sum(text in line for line in f)

    def flows(self):
        out = self.host.ofctl("dump-flows", "--no-stats", "cookie=" + DAEMON_COOKIE)
        return sorted(line.strip() for line in out.splitlines()
                      if "cookie=" in line)

    def stop(self):
        stop_pid(self.proc.pid)
        self.proc.wait(timeout=10)
        self.out.close()


def populate(world):
    ids = {}
    ops = [
        insert("Logical_Switch", {"name": "ls-red", "tenant": "red", "vni": 101,
                                  "subnet": "10.1.0.0/24"}, "ls_red"),
        insert("VM", {"name": "red1", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:01", "ip": "10.1.0.1"}, "red1"),
        insert("VM", {"name": "red2", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:02", "ip": "10.1.0.2"}, "red2"),
        insert("Firewall_Rule", {"priority": 100, "direction": "to-vm",
                                 "match": "proto=tcp dport=80", "action": "allow",
                                 "tenant": "red"}, "r_web"),
        insert("Middlebox", {"name": "fw-red", "type": "firewall",
                             "logical_switch": ["named-uuid", "ls_red"],
                             "default_action": "deny", "tenant": "red",
                             "rules": ["named-uuid", "r_web"]}, "fw_red"),
    ]
    for op, res in zip(ops, nb_transact(world, *ops)):
        ids[op["uuid-name"]] = res["uuid"][1]
    ops = chassis(HOST, "hy") + [
        insert("Slice", {"chain": chain("fw-red"), "chassis": HOST, "tag": 10},
               "s_red"),
        located("red1", HOST), located("red2", "hy"),
        insert("Shared_State", {"middlebox": "fw-red", "host": "hy",
                                "service": "lb-health", "key": "view",
                                "value": '{"10.1.0.2:80":"up"}', "stamp": 1},
               "ss_hy"),
    ]
    for op, res in zip(ops, sb_transact(world, *ops)):
        ids[op["uuid-name"]] = res["uuid"][1]
    return ids


@pytest.fixture
def world(tmp_path):
    nb = Server(tmp_path / "nb", {"nb": server.SCHEMA_PATH})
    sb = Server(tmp_path / "sb", {"sb": server.SB_SCHEMA_PATH})
    w = types.SimpleNamespace(nb=nb, sb=sb, remotes=(nb.remote, sb.remote))
    try:
        w.ids = populate(w)
        yield w
    finally:
        for s in (nb, sb):
            if s.pid is not None:
                s.stop()


@pytest.fixture
def mbxd(host, world, tmp_path):
    daemon = Mbxd(host, world.nb.remote, world.sb.remote, tmp_path)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_mbxd_keeps_its_config_and_state_while_the_southbound_db_is_away(
        world, mbxd):
    wait_for("slice 10 with red1 zoned",
             lambda: "tag=10 middlebox=fw-red" in mbxd.appctl("slice/list")
             and "vm red1 zone=" in mbxd.appctl("ct-zone/list"))
    hy_view = [("fw-red", "lb-health", "view", "hy", '{"10.1.0.2:80": "up"}')]
    wait_for("hy's shared state", lambda: mbxd.shared() == hy_view)
    slices, zones = mbxd.appctl("slice/list"), mbxd.appctl("ct-zone/list")
    rules = mbxd.appctl("rules/show", "fw-red")
    assert "proto=tcp dport=80" in rules
    flows = wait_for("the daemon's flows", mbxd.flows)

    world.sb.stop()
    wait_for("mbxd to notice", lambda: mbxd.logged(
        "southbound database: connection lost"))
    # The intent changes meanwhile: a new rule.  It reaches mbxd's
    # northbound replica (config/show lists what the replicas hold) but is
    # not applied without the southbound database.
    [_, res, _] = nb_transact(
        world,
        insert("Firewall_Rule", {"priority": 200, "direction": "to-vm",
                                 "match": "proto=udp dport=53", "action": "allow",
                                 "tenant": "red"}, "r_dns"),
        {"op": "select", "table": "Firewall_Rule",
         "where": [["match", "==", "proto=udp dport=53"]], "columns": ["_uuid"]},
        {"op": "mutate", "table": "Middlebox",
         "where": [["_uuid", "==", ref(world.ids["fw_red"])]],
         "mutations": [["rules", "insert", ["named-uuid", "r_dns"]]]})
    [row] = res["rows"]
    wait_for("the new rule in mbxd's replica",
             lambda: row["_uuid"][1] in mbxd.appctl("config/show"))
    assert pid_alive(mbxd.proc.pid)
    assert mbxd.appctl("slice/list") == slices
    assert mbxd.appctl("ct-zone/list") == zones
    assert mbxd.appctl("rules/show", "fw-red") == rules
    assert "proto=udp dport=53" not in mbxd.appctl("rules/show", "fw-red")
    assert mbxd.shared() == hy_view
    assert mbxd.flows() == flows

    world.sb.start()
    wait_for("the new rule to apply (python-ovs reconnects within 8 s)",
             lambda: "proto=udp dport=53" in mbxd.appctl("rules/show", "fw-red"),
             timeout=30)
    assert mbxd.logged("southbound database: monitoring") == 2   # start, back
    assert mbxd.appctl("slice/list") == slices
    assert mbxd.appctl("ct-zone/list") == zones
    assert mbxd.shared() == hy_view
    assert mbxd.flows()
    # And it follows the southbound database again: red1 leaves hx.
    sb_transact(world, {"op": "update", "table": "VM_Location",
                        "where": [["vm", "==", "red1"]],
                        "row": {"chassis": "hy", "epoch": 2}})
    wait_for("red1's zone to go",
             lambda: "vm red1" not in mbxd.appctl("ct-zone/list"))


def test_mbxd_keeps_its_config_while_the_northbound_db_is_away(world, mbxd):
    """The other way round: the runtime changes while the intent is away.
    Shared state keeps flowing; red1 leaving hx is applied only once the
    northbound database is back."""
    wait_for("slice 10 with red1 zoned",
             lambda: "tag=10 middlebox=fw-red" in mbxd.appctl("slice/list")
             and "vm red1 zone=" in mbxd.appctl("ct-zone/list"))
    slices, zones = mbxd.appctl("slice/list"), mbxd.appctl("ct-zone/list")
    flows = wait_for("the daemon's flows", mbxd.flows)

    world.nb.stop()
    wait_for("mbxd to notice", lambda: mbxd.logged(
        "northbound database: connection lost"))
    # One southbound transaction: red1 leaves hx, hy publishes.  Once the
    # published row is visible the location has arrived too.
    sb_transact(world,
                {"op": "update", "table": "VM_Location",
                 "where": [["vm", "==", "red1"]],
                 "row": {"chassis": "hy", "epoch": 2}},
                insert("Shared_State", {"middlebox": "fw-red", "host": "hy",
                                        "service": "lb-health", "key": "other",
                                        "value": "1", "stamp": 2}, "ss2"))
    wait_for("hy's new shared state",
             lambda: ("fw-red", "lb-health", "other", "hy", "1") in mbxd.shared())
    assert pid_alive(mbxd.proc.pid)
    assert mbxd.appctl("slice/list") == slices
    assert mbxd.appctl("ct-zone/list") == zones
    assert mbxd.flows() == flows

    world.nb.start()
    wait_for("red1's zone to go (python-ovs reconnects within 8 s)",
             lambda: "vm red1" not in mbxd.appctl("ct-zone/list"), timeout=30)
    assert mbxd.logged("northbound database: monitoring") == 2   # start, back
    assert "tag=10 middlebox=fw-red" in mbxd.appctl("slice/list")
