"""An unannounced move of the last VM of a tenant on its host (its own lab,
prefix ``<MBX_TEST_PREFIX>l``).

Tenant blue: bv1 on h1, bv2 on h2, nothing else of blue on h2.  A firewall
(default deny) lets into a VM only new TCP to its own port, so every
connection lives on its conntrack entry.  bv2 moves unannounced (the
controller only sees its port appear): every connection in both directions
carries on, whether bv2 lands beside bv1 or on a third host.
"""

import os
import sys

import pytest

from lab.lab import Lab
from lab.probe import Conns
from lab.sh import wait_until

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "l"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-last"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
HOSTS = ["h1", "h2", "h3"]
SWITCH = "ls-blue"
VMS = {"bv1": ("10.7.0.11", "h1"), "bv2": ("10.7.0.12", "h2")}
PORT = {"bv1": 7301, "bv2": 7302}       # each VM's server
PER_DIRECTION = 2


@pytest.fixture(scope="module")
def blue():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    try:
        lab.up(HOSTS, log=lambda *_: None, controllers=CONTROLLERS)
        lab.mbxctl_ok("ls-add", SWITCH, "--vni", "307", "--subnet", "10.7.0.0/24",
                      "--tenant", "blue")
        lab.mbxctl_ok("mb-add", "fw-blue", SWITCH, "--type", "firewall", "--default", "deny")
        lab.mbxctl_ok("fw-add", "fw-blue", "100", "from-vm", "proto=tcp", "allow")
        for prio, (vm, port) in enumerate(sorted(PORT.items()), 101):
            lab.mbxctl_ok("fw-add", "fw-blue", str(prio), "to-vm",
                          "proto=tcp dst=%s dport=%d" % (VMS[vm][0], port), "allow")
        lab.mbxctl_ok("steer-add", SWITCH, "100", "proto=tcp", "fw-blue")
        for vm, (ip, host) in VMS.items():
            lab.vm_add(vm, host, SWITCH, ip + "/24")
            lab.spawn(vm, [sys.executable, "-m", "lab.probe", "serve", "--port",
                           str(PORT[vm])], os.path.join(RUNDIR, "%s.serve.log" % vm))
        proc = lab.mbxctl("global-set", "migration-wait-ms=1500")
        assert proc.returncode == 0, proc.stderr
        yield lab
    finally:
        lab.down(log=lambda *_: None)


def open_conns(lab, tag):
    """Long-lived connections bv1 -> bv2 and bv2 -> bv1, exchanging."""
    probes = [Conns(lab, vm, [("%s-%s" % (tag, vm), VMS[peer][0], PORT[peer],
                               PER_DIRECTION)],
                    os.path.join(RUNDIR, "%s-%s.json" % (tag, vm)), duration=120)
              for vm, peer in (("bv1", "bv2"), ("bv2", "bv1"))]
    for p in probes:
        p.wait(lambda r: len(r.get("connections", [])) == PER_DIRECTION and all(
            c["connected"] and c["error"] is None and c["received"] >= 10
            for c in r["connections"]), 30, "the connections to exchange")
    return probes


def snapshot(probes):
    return {c["name"] if "name" in c else "%s#%d" % (i, n): c
            for i, p in enumerate(probes)
            for n, c in enumerate(p.read().get("connections", []))}


def stalled(probes, replies=25, timeout=15):
    """{connection: (received more, error)} of those that did not get
    ``replies`` more echoes within ``timeout`` s."""
    since = snapshot(probes)

    def check():
        now = snapshot(probes)
        return now if all(c["error"] is None and
                          c["received"] >= since[n]["received"] + replies
                          for n, c in now.items()) else None
    try:
        now = wait_until(check, timeout, interval=0.1, what="the connections to carry on")
    except Exception:                   # noqa: BLE001 - reported below
        now = snapshot(probes)
    return {n: (c["received"] - since[n]["received"], c["error"]) for n, c in now.items()
            if c["error"] is not None or c["received"] < since[n]["received"] + replies}


def stop(probes):
    for p in probes:
        try:
            p.stop()
        except Exception:               # noqa: BLE001 - the next test opens anew
            pass


@pytest.mark.parametrize("to", ["h1", "h3"])
def test_unannounced_move_of_the_tenants_last_vm_on_its_host_keeps_its_connections(
        blue, to):
    lab = blue
    src = lab.state["vms"]["bv2"]["host"]
    if src != "h2":                     # (the other case ran first)
        lab.migrate("bv2", "h2", notify=True)
        src = "h2"
    probes = open_conns(lab, "to-%s" % to)
    try:
        assert len(snapshot(probes)) == 2 * PER_DIRECTION
        lab.migrate("bv2", to, notify=False)
        row = lab.migration_row("bv2")
        assert (row["source"], row["destination"], row["path"], row["status"]) == \
            (src, to, "unannounced", "done"), row
        assert row["stats"]["entries"] >= 2 * PER_DIRECTION, row
        dead = stalled(probes)
        assert not dead, dead
    finally:
        stop(probes)
