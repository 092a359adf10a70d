"""A real namespace lab for the integration tests (prefix ``mbxt``, run dir
/run/mbx-test, so it never touches a demo lab that may be up)."""

import os
import subprocess

import pytest

from lab.cli import up_from_topology
from lab.lab import Lab
from ovsdb import server

# Which physical controllers the lab runs: "central" (one for every host) or
# "per-host" (one on each host); `make test` runs the suite on both.
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt")
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test")
TOPOLOGY = os.path.join(os.path.dirname(__file__), "..", "..", "lab",
                        "topologies", "demo.yaml")


def lab_namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split()[0].startswith(PREFIX + "-")]


@pytest.fixture(scope="session")
def lab():
    assert os.geteuid() == 0, "the lab tests need root (network namespaces)"
    stale = Lab(prefix=PREFIX, rundir=RUNDIR)
    stale.down(log=lambda *_: None)          # a previous run that died half-way
    the_lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    try:
        up_from_topology(the_lab, TOPOLOGY, "vxlan", CONTROLLERS)
        yield the_lab
    finally:
        pids = list(the_lab.state["pids"].values())
        the_lab.down(log=lambda *_: None)
    # The suite leaves nothing behind: no namespace, no process.
    assert lab_namespaces() == []
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z", pid


@pytest.fixture
def nb(tmp_path):
    """A server of its own serving both databases (current schemas, empty)
    on one unix socket, as the lab's does: (remote, pid, rundir)."""
    rundir = str(tmp_path)
    db, sb = os.path.join(rundir, "db"), os.path.join(rundir, "sb.db")
    server.ensure_db(db)
    server.ensure_db(sb, server.SB_SCHEMA_PATH)
    sock = os.path.join(rundir, "db.sock")
    pid = server.start(rundir, [db, sb], ["punix:" + sock])
    yield "unix:" + sock, pid, rundir
    server.stop(pid)
