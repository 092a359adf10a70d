"""Every component recovers by itself, in a real lab of its own (prefix
``$MBX_TEST_PREFIX`` + "r"): two hosts, tenant red's chain firewall -> load
balancer -> SNAT (``lab.migscenario``) and tenant blue with a firewall of
its own, both with VMs on h1 and h2.

* h1's ovs-vswitchd killed and started again (``Lab.vswitchd_restart``):
  h1's mbxd keeps its PID, reconnects and puts its service stages back;
  new connections of both tenants through h1 work again within a bound.
  The switch's conntrack went with it: an established connection is
  judged anew at its next packet (docs/middlebox.md, "Restart").
* h1's ovsdb-server, the config databases' members and h2's mbxd
  restarted: h1's mbxd keeps its PID and both tenants keep working.
"""

import os
import signal
import sys
import threading
import time

import pytest

from lab import ctbaseline as CT
from lab.lab import Lab
from lab.migscenario import Scenario
from lab.sh import LabError, wait_until
from ovsdb.server import pid_alive
from ryu_apps import pipeline

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "r"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-rec"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
HOSTS = ["h1", "h2"]
OUTAGE_BOUND = 30.0         # s: connections may go without replies while a controller restarts
BACK_BOUND = 15.0           # s: new connections through a restarted switch work again

# Tenant blue: its own switch and firewall (default deny; TCP to BLUE_PORT allowed).
BLUE_SWITCH, BLUE_VNI, BLUE_SUBNET = "ls-blue", 200, "10.1.0.0/24"
BLUE_VMS = {"bv1": ("10.1.0.11", "h1"), "bv2": ("10.1.0.12", "h2")}
BLUE_PORT = 7001


@pytest.fixture(scope="module")
def rec():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    sc = Scenario(lab, RUNDIR)
    try:
        lab.up(HOSTS, log=lambda *_: None, controllers=CONTROLLERS)
        sc.build(HOSTS)
        lab.mbxctl_ok("ls-add", BLUE_SWITCH, "--vni", str(BLUE_VNI), "--subnet",
                      BLUE_SUBNET, "--tenant", "blue")
        lab.mbxctl_ok("mb-add", "fw-blue", BLUE_SWITCH, "--type", "firewall",
                      "--default", "deny")
        lab.mbxctl_ok("fw-add", "fw-blue", "100", "from-vm", "proto=tcp", "allow")
        lab.mbxctl_ok("fw-add", "fw-blue", "101", "to-vm",
                      "proto=tcp dport=%d" % BLUE_PORT, "allow")
        lab.mbxctl_ok("steer-add", BLUE_SWITCH, "100", "proto=tcp", "fw-blue")
        for vm, (ip, host) in BLUE_VMS.items():
            lab.vm_add(vm, host, BLUE_SWITCH, ip + "/24")
        sc.servers.append(lab.spawn("bv2", [sys.executable, "-m", "lab.probe", "serve",
                                            "--port", str(BLUE_PORT)],
                                    os.path.join(RUNDIR, "bv2.serve.log")))
        CT.wait_listening([(lab.exec, "bv2", BLUE_PORT)])
        yield lab, sc
    finally:
        sc.stop()
        lab.down(log=lambda *_: None)


def new_connections_work(lab):
    """A new TCP connection of each tenant through h1 works: red's mv (h1)
    to peer (h2) through fw -> lb -> nat, blue's bv1 (h1) to bv2 (h2)."""
    red = lab.tcp_try("mv", CT.VMS["peer"][0], CT.FW_OUT_PORT, timeout=1.0)
    blue = lab.tcp_try("bv1", BLUE_VMS["bv2"][0], BLUE_PORT, timeout=1.0)
    return red["ok"] == 1 and blue["ok"] == 1


def daemons(lab):
    """{pid key: pid} of every mbxd, chassis agent, controller and mbx-northd."""
    return {k: p for k, p in lab.state["pids"].items()
            if k.split("/")[-1] in ("mbxd", "chassis", "controller")
            or k.startswith(("northd", "controller"))}


def assert_daemons_kept(lab, before):
    """The same processes as ``before``, every one alive (none exited)."""
    now = daemons(lab)
    assert now == before and all(pid_alive(p) for p in now.values()), \
        {k: (p, pid_alive(p)) for k, p in now.items()}


def service_flows(lab, host):
    """mbxd's flows on ``host``'s br-int (its cookie)."""
    return lab.ofctl(host, "dump-flows", "--no-stats", "cookie=%#x/%#x" % (
        pipeline.DAEMON_COOKIE, pipeline.COOKIE_MASK)).count("cookie=")


def config_reaches_every_host(lab, port):
    """A change of tenant blue's firewall is applied by every host's mbxd
    (``--wait=hv`` waits for their ``mb_cfg``)."""
    proc = lab.mbxctl("--wait=hv", "--timeout=20", "fw-add", "fw-blue", str(port), "to-vm",
                      "proto=tcp dport=%d" % port, "allow")
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------- tests

@pytest.mark.parametrize("sig", [signal.SIGKILL, None], ids=["crash", "exit-cleanup"])
def test_mbxd_survives_its_switch_restarting_and_both_tenants_recover(rec, sig):
    """h1's ovs-vswitchd killed (a crash), or ended with ``exit --cleanup``
    (its internal ports go too: mbx-mb and br-phy come back as new
    interfaces), and started again: mbxd (same PID) puts its flows back,
    reopens its port, and gives the new switch the connections of its last
    census, so both tenants' new connections work within BACK_BOUND and
    the established ones through h1's middleboxes carry on."""
    lab, sc = rec
    assert new_connections_work(lab)
    sc.stop()
    sc.open(per_kind=1, reply_timeout=OUTAGE_BOUND)
    # Every connection involves mv (h1): a census there after they opened.
    taken = lab.mbxd_stats("h1")["checkpoints"]
    wait_until(lambda: lab.mbxd_stats("h1")["checkpoints"] > taken, 15, interval=0.2,
               what="a census of h1's connections")
    restored = lab.mbxd_stats("h1")["conns_restored"]
    before = daemons(lab)
    flows = service_flows(lab, "h1")
    assert flows > 0
    lab.vswitchd_restart("h1", sig)
    t0 = time.monotonic()
    wait_until(lambda: new_connections_work(lab), BACK_BOUND, interval=0.2,
               what="new connections of both tenants through h1 again")
    print("\nh1's ovs-vswitchd restarted: new connections of both tenants work "
          "again after %.1f s" % (time.monotonic() - t0), file=sys.stderr)
    since = sc.snapshot()
    stalled = sc.stalled(since)
    assert not stalled, {n: (since[n]["received"], c["received"], c["error"])
                         for n, c in sc.snapshot().items()}
    assert_daemons_kept(lab, before)
    stats = lab.mbxd_stats("h1")
    assert stats["conns_restored"] >= restored + sc.total and stats["switch_losses"] >= 1
    assert service_flows(lab, "h1") == flows
    config_reaches_every_host(lab, 7100 + (sig or 0))


def test_mbxd_survives_its_hosts_ovsdb_server_restarting(rec):
    lab, sc = rec
    before = daemons(lab)
    lab.host_ovsdb_restart("h1", signal.SIGKILL)
    wait_until(lambda: new_connections_work(lab), BACK_BOUND, interval=0.2,
               what="new connections of both tenants through h1")
    config_reaches_every_host(lab, 7102)
    assert_daemons_kept(lab, before)


def test_every_daemon_survives_the_config_databases_restarting(rec):
    """Every member of both clusters killed at once and started again."""
    lab, sc = rec
    before = daemons(lab)
    for kind in ("nb", "sb"):
        for n in lab.db_members(kind):
            lab.db_kill(kind, n)
    for kind in ("nb", "sb"):
        for n in lab.db_members(kind):
            lab.db_start(kind, n, wait=False)
    for kind in ("nb", "sb"):
        wait_until(lambda: lab.db_leader(kind), 30, interval=0.2,
                   what="the %s cluster to elect a leader" % kind)
    config_reaches_every_host(lab, 7103)
    assert new_connections_work(lab)
    assert_daemons_kept(lab, before)


def test_mbxd_survives_its_peer_restarting_and_migrates_to_it_afterwards(rec):
    lab, sc = rec
    lab.mbxd_stop("h2", signal.SIGKILL)
    lab.mbxd_start("h2")
    wait_until(lambda: lab.mbxd_appctl("h2", "stats", check=False), 15, interval=0.2,
               what="h2's mbxd to answer")
    config_reaches_every_host(lab, 7104)
    before = daemons(lab)
    sc.stop()
    sc.open(per_kind=1)
    src = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    lab.migrate(CT.MIGRATING_VM, dst, notify=True, timeout=30)
    row = lab.migration_row(CT.MIGRATING_VM)
    assert (row["status"], row["destination"]) == ("done", dst), row
    assert not sc.stalled()
    assert_daemons_kept(lab, before)


def serving_controller(lab):
    """The pid key of the physical controller serving the hosts (one)."""
    wait_until(lambda: all(lab.serving().get(h) for h in HOSTS), 10,
               what="every host to be served")
    names = set(lab.serving().values())
    assert len(names) == 1 or CONTROLLERS == "per-host", names
    return lab.controller_key(lab.serving()[HOSTS[0]])


def move_with(lab, at_plug, after=False, timeout=30):
    """An announced move of mv to the other host; ``at_plug()`` runs once,
    just before its port is plugged on the destination (``after``: just
    after).  Returns (source, destination, the LabError of migrate or None)."""
    src = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    plug, done = lab._plug, []

    def hooked(host, name):
        first = host == dst and not done
        done.append(host)
        if first and not after:
            at_plug()
        plug(host, name)
        if first and after:
            at_plug()
    lab._plug = hooked
    try:
        lab.migrate(CT.MIGRATING_VM, dst, notify=True, timeout=timeout)
        return src, dst, None
    except LabError as err:
        return src, dst, err
    finally:
        del lab._plug


def move_restarting_the_controller(lab, sc, restart_after, timeout=30):
    """``move_with`` of mv, its connections open, the controller serving the
    hosts killed just before the plug and started again ``restart_after``
    seconds later."""
    sc.stop()
    sc.open(per_kind=1, reply_timeout=OUTAGE_BOUND)
    key = serving_controller(lab)
    timers = []

    def kill():
        lab.controller_kill(key, signal.SIGKILL)
        timers.append(threading.Timer(restart_after, lab.controller_start, (key,)))
        timers[-1].start()
    try:
        return move_with(lab, kill, timeout=timeout)
    finally:
        for t in timers:
            t.join(60)


def test_a_controller_restarted_during_an_announced_migration_completes_it(rec):
    lab, sc = rec
    t0 = time.monotonic()
    src, dst, error = move_restarting_the_controller(lab, sc, restart_after=0.5)
    print("\nannounced migration with its controller restarted: %.1f s"
          % (time.monotonic() - t0), file=sys.stderr)
    assert error is None, error
    row = lab.migration_row(CT.MIGRATING_VM)
    assert (row["status"], row["destination"]) == ("done", dst), row
    assert not sc.stalled()


def announced(lab, vm):
    """(status, destination) of the VM's latest announced migration (an
    unannounced one may follow it: the controller's record of the VM's
    port coming back to its source)."""
    rows = [m for m in lab.sb().snapshot().migrations if m.vm == vm and m.path == "announced"]
    latest = max(rows, key=lambda m: m.timeline.get("begun", 0))
    return latest.status, latest.destination


def assert_runs_on(lab, sc, vm, host, since):
    """``vm`` is placed on ``host``, its port there and its link up; its
    connections carry on and a new one works."""
    assert lab.state["vms"][vm]["host"] == host
    assert lab.sb().snapshot().vm_locations[vm][0] == host
    link = lab.exec(vm, ["ip", "-o", "link", "show", "eth0"], capture_output=True,
                    text=True).stdout
    assert "LOWER_UP" in link, link
    assert lab.vsctl(host, "--bare", "--columns=name", "find", "Interface",
                                "external_ids:iface-id=%s" % vm).strip()
    assert not sc.stalled(since), sc.snapshot()
    assert lab.tcp_try(vm, CT.VMS["peer"][0], CT.FW_OUT_PORT, timeout=1.0)["ok"] == 1


def assert_rolled_back(lab, sc, src, dst, error):
    assert error is not None and "rolled back to %s" % src in str(error), error
    assert "but:" not in str(error), error
    assert announced(lab, CT.MIGRATING_VM) == ("aborted", dst)
    assert_runs_on(lab, sc, CT.MIGRATING_VM, src, sc.snapshot())


def test_a_migration_whose_controller_stays_away_rolls_back_to_the_source(rec):
    """The controller is back only after the migration's bound (4 s)
    passed: the move fails, and is rolled back."""
    lab, sc = rec
    assert_rolled_back(lab, sc, *move_restarting_the_controller(
        lab, sc, restart_after=6.0, timeout=4))


def test_a_migration_aborted_after_the_vm_left_rolls_back_to_the_source(rec):
    """Aborted once the VM's port is gone from its source (an operator's
    migrate-abort here; a refused transfer or a dead destination the
    same): the VM is plugged on its source again and keeps its
    connections, whose state never left."""
    lab, sc = rec
    sc.stop()
    sc.open(per_kind=1, reply_timeout=OUTAGE_BOUND)
    assert_rolled_back(lab, sc, *move_with(
        lab, lambda: lab.mbxctl_ok("migrate-abort", CT.MIGRATING_VM), after=True))


def test_a_migration_whose_transfer_is_refused_leaves_the_vm_where_it_runs(rec):
    """The destination refuses the transfer (its daemon is down here; a
    full handshake queue the same): the source aborts the row before the
    VM's port moved, and migrate says so without ever unplugging it."""
    lab, sc = rec
    sc.stop()
    sc.open(per_kind=1)
    src = lab.state["vms"][CT.MIGRATING_VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    unplugged = []
    vsctl = lab.vsctl
    lab.vsctl = lambda host, *args: (unplugged.append(host) if "del-port" in args
                                     else None) or vsctl(host, *args)
    lab.mbxd_stop(dst, signal.SIGKILL)
    try:
        with pytest.raises(LabError, match="rolled back to %s" % src) as error:
            lab.migrate(CT.MIGRATING_VM, dst, notify=True, timeout=15)
    finally:
        del lab.vsctl
        lab.mbxd_start(dst)
    assert "but:" not in str(error.value) and unplugged == [], (error.value, unplugged)
    assert announced(lab, CT.MIGRATING_VM) == ("aborted", dst)
    assert_runs_on(lab, sc, CT.MIGRATING_VM, src, sc.snapshot())
    wait_until(lambda: lab.mbxd_appctl(dst, "stats", check=False), 15, interval=0.1,
               what="the restarted mbxd on %s to answer" % dst)


def test_an_unannounced_move_of_a_tenants_last_vm_on_its_host_keeps_its_connections(rec):
    """bv2 is blue's only VM on its host: at the unplug the host loses
    blue's slice and the VM's binding before the controller's unannounced
    row (written once the port shows up at the destination) arrives; the
    source still hands over its connections."""
    from lab.probe import Conns
    lab, sc = rec
    src = lab.state["vms"]["bv2"]["host"]
    dst = next(h for h in HOSTS if h != src)
    assert [v for v, info in lab.state["vms"].items()
            if info["host"] == src and v in BLUE_VMS] == ["bv2"]
    probe = Conns(lab, "bv1", [("blue", BLUE_VMS["bv2"][0], BLUE_PORT, 2)],
                  os.path.join(RUNDIR, "blue.json"), reply_timeout=OUTAGE_BOUND)
    try:
        probe.wait(lambda r: len(r["connections"]) == 2 and all(
            c["received"] >= 10 for c in r["connections"]), 20, "blue's connections")
        lab.migrate("bv2", dst, notify=False)
        row = lab.migration_row("bv2")
        assert (row["path"], row["status"], row["stats"]["entries"]) == (
            "unannounced", "done", 2), row
        since = {c["name"]: c["received"] for c in probe.read()["connections"]}
        probe.wait(lambda r: all(c["error"] is None and c["received"] >= since[c["name"]] + 25
                                 for c in r["connections"]), 15, "blue's connections to go on")
    finally:
        probe.stop()
