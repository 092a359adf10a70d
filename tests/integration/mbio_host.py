"""A one-host OVS sandbox for the middlebox daemon's I/O tests.

One scratch network namespace ``mbxio-<pid>`` with its own ovsdb-server and
ovs-vswitchd (userspace datapath, run directory in a temp dir), ``br-int``
(netdev, fail-mode secure, OpenFlow13), the internal middlebox port ``mbx-mb``
and a veth "VM" (``vm0`` in the namespace, its peer ``vif0`` on br-int).
``ScratchHost.down()`` ends exactly the processes it started, by PID, and
deletes the namespace and the run directory; it is safe after a failed up().
``remove_stale()`` does the same for a sandbox whose test process was killed
(run directory ``TMP/mbxio-<pid>`` of a pid that no longer runs).
"""

import contextlib
import ctypes
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time

import ovs.poller

from lab.sh import read_pidfile, run
from ovsdb.server import pid_alive, stop as stop_pid

NS_PREFIX = "mbxio-"
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
MB_PORT = "mbx-mb"
VIF = "vif0"
VM_IF = "vm0"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name):
    """Run the body (in this thread) inside network namespace ``name``:
    sockets created there stay in it after the body ends."""
    own = os.open("/proc/self/task/%d/ns/net" % threading.get_native_id(), os.O_RDONLY)
    target = os.open("/run/netns/%s" % name, os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (name, os.strerror(err)))
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(own)
        os.close(target)


class ScratchHost:
    """``prefix``: the sandbox's name is ``<prefix><pid>``; each test module
    has its own, so sandboxes of modules never meet."""

    def __init__(self, prefix=NS_PREFIX):
        self.prefix = prefix
        self.ns = "%s%d" % (prefix, os.getpid())
        self.rundir = None
        self.pids = []                  # in start order
        self.ns_created = False

    # ------------------------------------------------------------- helpers
    def mgmt(self, bridge="br-int"):
        return "unix:%s/%s.mgmt" % (self.rundir, bridge)

    def vsctl(self, *args):
        return run(["ovs-vsctl", "--timeout=10", "--db=unix:%s/db.sock" % self.rundir]
                   + list(args))

    def ofctl(self, command, *args, bridge="br-int"):
        return run(["ovs-ofctl", "-O", "OpenFlow13", command, self.mgmt(bridge)] + list(args))

    def ns_run(self, *cmd):
        return run(list(cmd), netns=self.ns)

    def appctl(self, *args):
        return subprocess.run(["ovs-appctl", "-t", "%s/ovs-vswitchd.ctl" % self.rundir]
                              + list(args), capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def ofport(self, name):
        return int(self.vsctl("get", "Interface", name, "ofport").strip())

    # ------------------------------------------------------------- up/down
    def up(self):
        remove_stale(self.prefix)
        rundir = os.path.join(tempfile.gettempdir(), self.ns)
        if os.path.exists(rundir):      # left by a dead process that had our pid
            _remove_sandbox(rundir)
        os.mkdir(rundir)
        self.rundir = rundir
        run(["ip", "netns", "add", self.ns])
        self.ns_created = True
        self.ns_run("ip", "link", "set", "lo", "up")
        d = self.rundir
        db = os.path.join(d, "conf.db")
        run(["ovsdb-tool", "create", db, VSWITCH_SCHEMA])
        env = {"OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d}
        run(["ovsdb-server", db, "--remote=punix:%s/db.sock" % d,
             "--pidfile=%s/ovsdb-server.pid" % d, "--unixctl=%s/ovsdb-server.ctl" % d,
             "--log-file=%s/ovsdb-server.log" % d, "--detach", "--no-chdir"],
            netns=self.ns, env=env)
        self.pids.append(read_pidfile("%s/ovsdb-server.pid" % d))
        self.vsctl("--no-wait", "init")
        run(["ovs-vswitchd", "unix:%s/db.sock" % d,
             "--pidfile=%s/ovs-vswitchd.pid" % d, "--unixctl=%s/ovs-vswitchd.ctl" % d,
             "--log-file=%s/ovs-vswitchd.log" % d, "--detach", "--no-chdir"],
            netns=self.ns, env=env)
        self.pids.append(read_pidfile("%s/ovs-vswitchd.pid" % d))
        # The kernel must not send anything of its own on the test ports.
        self.ns_run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        self.ns_run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.ns_run("ip", "link", "add", VIF, "type", "veth", "peer", "name", VM_IF)
        for ifname in (VIF, VM_IF):
            self.ns_run("ip", "link", "set", ifname, "up")
        self.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int",
                   "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13",
                   "other-config:disable-in-band=true",
                   "--", "add-port", "br-int", MB_PORT,
                   "--", "set", "interface", MB_PORT, "type=internal",
                   "external_ids:mbx-role=middlebox",
                   "--", "add-port", "br-int", VIF)
        self.ns_run("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % MB_PORT)
        self.ns_run("ip", "link", "set", MB_PORT, "up")
        return self

    def down(self):
        for pid in reversed(self.pids):         # vswitchd first, then its database
            stop_pid(pid)
        self.pids = []
        if self.ns_created:
            run(["ip", "netns", "del", self.ns], check=False)
            self.ns_created = False
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)


def sandbox(prefix=NS_PREFIX):
    """A module fixture's body: a sandbox up for the module, down after it
    (even when a test fails), and its namespace gone."""
    assert os.geteuid() == 0, "these tests need root (network namespaces)"
    host = ScratchHost(prefix)
    try:
        host.up()
        yield host
    finally:
        host.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert host.ns not in listed


def pump(conn, until, timeout=5.0):
    """Run an ``OfConn`` in an ovs.poller loop until ``until()`` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "timed out after %.1fs" % timeout
        poller = ovs.poller.Poller()
        conn.wait(poller)
        poller.timer_wait(int(remaining * 1000) + 1)
        poller.block()
        conn.run()


def sync(conn, barriers, timeout=5.0):
    """A barrier, and its reply in ``barriers`` (what on_barrier fills)."""
    xid = conn.barrier()
    pump(conn, lambda: xid in barriers, timeout)


def remove_stale(prefix=NS_PREFIX):
    """Remove sandboxes of test processes that died without cleaning up: end
    the daemons their pidfiles name (only if that process still runs from
    that directory), delete their namespace and directory."""
    for rundir in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")):
        suffix = os.path.basename(rundir)[len(prefix):]
        if suffix.isdigit() and not pid_alive(int(suffix)):
            _remove_sandbox(rundir)


def _remove_sandbox(rundir):
    for name in ("ovs-vswitchd", "ovsdb-server"):
        try:
            with open(os.path.join(rundir, name + ".pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                ours = rundir.encode() in f.read()
        except (OSError, ValueError):
            continue
        if ours:
            stop_pid(pid)
    run(["ip", "netns", "del", os.path.basename(rundir)], check=False)
    shutil.rmtree(rundir, ignore_errors=True)
