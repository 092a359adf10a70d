"""mbx's systemd units on a booted Debian system.

A Debian bookworm tree from deploy/mkroot (with Open vSwitch and systemd),
mbx installed into it by deploy/install.sh for both roles (controller node
and hypervisor on one machine, userspace datapath), certificates from
mbx-pki and the configuration an operator writes into /etc/mbx; then the
tree boots with systemd as PID 1 in a container (systemd-nspawn, its own
network namespace with only loopback), and the checks are an operator's:
systemctl, mbxctl and ovs-vsctl run inside it.  Everything on the network
is TLS, on the container's loopback.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from lab.sh import wait_until

pytestmark = pytest.mark.lab

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MKROOT = os.path.join(SRC, "deploy", "mkroot")
INSTALL = os.path.join(SRC, "deploy", "install.sh")
NSPAWN = os.path.join(SRC, "deploy", "nspawn")        # systemd-nspawn in a cgroup of its own
PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt")
MACHINE = PREFIX + "-units"
PACKAGES = ("openvswitch-switch", "python3-venv", "systemd-sysv", "iproute2")
DAEMONS = ("mbx-ovsdb@nb", "mbx-ovsdb@sb", "mbx-northd", "mbx-controller",
           "mbx-chassis", "mbxd")
ONESHOTS = ("mbx-rbac", "mbx-host-setup")
HOST = "h1"
MBXCTL = ("/opt/mbx/bin/mbxctl", "--db", "unix:/run/mbx/nb.sock",
          "--sb", "unix:/run/mbx/sb.sock")
# What an operator writes into /etc/mbx for one machine holding both roles.
CONFIG = {
    "hypervisor.conf": {"MBX_HOST": HOST, "MBX_ENCAP_IP": "127.0.0.1",
                        "MBX_MGMT_IP": "127.0.0.1",
                        "MBX_NB": "ssl:127.0.0.1:6641", "MBX_SB": "ssl:127.0.0.1:6642",
                        "MBX_CONTROLLERS": "ssl:127.0.0.1:6653"},
    "controller.conf": {"MBX_OFP_LISTEN": "127.0.0.1"},
}


def run(cmd, timeout, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, "%s failed (%d): %s" % (
        " ".join(cmd), done.returncode, (done.stderr or done.stdout).strip()[-2000:])
    return done.stdout


def configure(root, name, values):
    """Set KEY=VALUE lines of /etc/mbx/NAME, as an operator edits it."""
    path = os.path.join(root, "etc/mbx", name)
    with open(path) as f:
        text = f.read()
    for key, value in values.items():
        text, n = re.subn(r"(?m)^%s=.*$" % re.escape(key), "%s=%s" % (key, value), text)
        assert n == 1, "%s has no %s= line" % (path, key)
    with open(path, "w") as f:
        f.write(text)


def mounts_under(path):
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path + "/")]


class Box:
    """The booted container: its systemd's PID on this machine and a way to
    run commands in all of its namespaces."""

    def __init__(self, proc, leader, root):
        self.proc, self.leader, self.root = proc, leader, root

    def run(self, *cmd, timeout=60, check=True):
        argv = ["nsenter", "-t", str(self.leader), "-a", *cmd]
        if check:
            return run(argv, timeout)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def show(self, unit, *props):
        out = self.run("systemctl", "show", unit, "-p", ",".join(props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit):
        return self.run("journalctl", "-u", unit, "--no-pager", "-n", "30",
                        check=False).stdout

    def host_row(self, name):
        """``mbxctl host-list``'s row of host ``name`` as {column: value}."""
        out = self.run(*MBXCTL, "host-list", check=False)
        if out.returncode != 0:
            return {}
        lines = out.stdout.splitlines()
        if not lines:
            return {}
        head = lines[0].split()
        for line in lines[1:]:
            cells = line.split()
            if cells and cells[0] == name:
                return dict(zip(head, cells))
        return {}


def _leader(proc):
    """The container's PID 1 (systemd) as seen from this machine."""
    try:
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as f:
            children = f.read().split()
    except FileNotFoundError:
        return None
    for pid in children:
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() == "systemd":
                    return int(pid)
        except FileNotFoundError:
            pass
    return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stop(proc, leader):
    """Shut the container down: SIGTERM to systemd-nspawn (a clean poweroff);
    if the container's systemd is still there after a minute, SIGKILL to it
    (which ends every process of the container), then to systemd-nspawn.
    True once both are gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    if leader is not None and _alive(leader):
        os.kill(leader, signal.SIGKILL)
    if proc.poll() is None:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    if leader is not None:
        try:
            wait_until(lambda: not _alive(leader), 30, interval=0.1,
                       what="the container's processes to end")
        except Exception:
            return False
    return True


@pytest.fixture(scope="module")
def box():
    assert os.geteuid() == 0, "needs root (debootstrap, chroot, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        assert shutil.which(tool), "%s is missing (make deps installs it)" % tool
    work = tempfile.mkdtemp(prefix=PREFIX + "-units-", dir="/var/tmp")
    root = os.path.join(work, "root")
    proc = leader = None
    try:
        run([MKROOT, "--dest", root, *PACKAGES], timeout=900)
        pip = os.path.join(os.path.dirname(sys.executable), "pip")
        run([INSTALL, "--role", "all", "--root", root, "--datapath", "netdev"],
            timeout=600, env=dict(os.environ, MBX_PIP=pip))
        # The operator's part: certificates (one CA; a database member, the
        # physical controller and the host), then the configuration.
        pki = ("chroot", root, "/opt/mbx/bin/mbx-pki")
        run([*pki, "init", "/etc/mbx/pki"], timeout=60)
        for name, role in (("db1", "server"), ("controller", "controller"),
                           (HOST, "host")):
            run([*pki, "issue", "/etc/mbx/pki", name, "--role", role], timeout=60)
        for name, values in CONFIG.items():
            configure(root, name, values)
        console = os.path.join(work, "console.log")
        with open(console, "w") as out:
            proc = subprocess.Popen(
                [NSPAWN, "-D", root, "-M", MACHINE, "-b", "--register=no",
                 "--keep-unit", "--private-network", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        leader = wait_until(lambda: proc.poll() is None and _leader(proc), 30,
                            what="the container's systemd")
        the_box = Box(proc, leader, root)
        # systemctl says "offline" until systemd's private socket is up;
        # then wait for the end of the boot transaction.
        wait_until(lambda: the_box.run("systemctl", "is-system-running",
                                       check=False).stdout.strip() not in ("", "offline"),
                   120, interval=0.2, what="the container's systemd to answer")
        booted = the_box.run("systemctl", "is-system-running", "--wait",
                             timeout=180, check=False)
        if booted.stdout.strip() != "running":
            with open(console, errors="replace") as f:
                tail = f.read()[-3000:]
            failed = the_box.run("systemctl", "--failed", "--no-pager", check=False)
            raise AssertionError("the container booted %r (%s); failed units: %s%s\n"
                                 "console:\n%s" % (
                                     booted.stdout.strip(), booted.stderr.strip(),
                                     failed.stdout, failed.stderr, tail))
        yield the_box
    finally:
        stopped = proc is None or _stop(proc, leader)
        subprocess.run([NSPAWN, "--cleanup"], check=False, timeout=30)
        shutil.rmtree("/run/systemd/nspawn/propagate/" + MACHINE, ignore_errors=True)
        left = mounts_under(work)
        # Never remove a tree a container may still run from.
        assert stopped and not left, "container %s not stopped or still mounted " \
            "(%s); %s left in place" % (leader, left, work)
        shutil.rmtree(work)


def test_every_mbx_unit_is_active_after_boot(box):
    for unit in DAEMONS:
        props = box.show(unit, "ActiveState", "SubState")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), \
            "%s: %s\n%s" % (unit, props, box.journal(unit))
    for unit in ONESHOTS:
        props = box.show(unit, "ActiveState", "Result")
        assert (props["ActiveState"], props["Result"]) == ("active", "success"), \
            "%s: %s\n%s" % (unit, props, box.journal(unit))


def test_the_host_registers_and_applies_the_config(box):
    """mbx-chassis published the host (over TLS, with its certificate), its
    br-int is connected to the physical controller (OpenFlow over TLS), and
    a change made with mbxctl --wait=hv is applied by the host's switch and
    its mbxd."""
    row = wait_until(lambda: box.host_row(HOST).get("CONNECTED") == "true"
                     and box.host_row(HOST), 60, what="%s to register" % HOST)
    assert row["ENCAP_IP"] == "127.0.0.1" and row["MIGRATION_ADDRESS"] == "ssl:127.0.0.1:6650"
    wait_until(lambda: box.run("ovs-vsctl", "--columns=is_connected", "--bare", "list",
                               "Controller").strip() == "true", 60,
               what="br-int to connect to mbx-controller")
    box.run(*MBXCTL, "--wait=hv", "ls-add", "ls-red", "--vni", "1001",
            "--subnet", "10.0.0.0/24", "--tenant", "red", timeout=90)
    row = box.host_row(HOST)
    assert int(row["NB_CFG"]) >= 1 and int(row["MB_CFG"]) >= 1, row
    # The daemons answer ovs-appctl where docs/deploy.md says.
    status = box.run("env", "OVS_RUNDIR=/run/mbx", "ovs-appctl", "-t", "mbx-northd", "status")
    assert status.startswith("Status: active"), status
    assert box.run("ovs-appctl", "-t", "mbxd", "stats").strip()
    # Nothing crashed on the way.
    for unit in DAEMONS:
        assert box.show(unit, "NRestarts")["NRestarts"] == "0", box.journal(unit)


@pytest.mark.parametrize("unit", DAEMONS)
def test_a_unit_killed_with_sigkill_is_restarted(box, unit):
    before = box.show(unit, "MainPID", "NRestarts")
    pid = before["MainPID"]
    assert pid != "0", "%s has no main process" % unit
    box.run("kill", "-KILL", pid)

    def back():
        props = box.show(unit, "MainPID", "ActiveState", "SubState", "NRestarts")
        return props["MainPID"] not in ("0", pid) and props["SubState"] == "running" \
            and props
    props = wait_until(back, 60, interval=0.2, what="systemd to restart %s" % unit)
    assert int(props["NRestarts"]) == int(before["NRestarts"]) + 1, props


def test_a_rejected_hypervisor_conf_changes_nothing(box):
    """An edited hypervisor.conf with a bad value: re-running the host's
    setup fails with one line naming the key, and neither Open vSwitch's
    configuration nor the running daemons change; fixed, it runs again."""
    ids = ("ovs-vsctl", "get", "Open_vSwitch", ".", "external_ids")
    before = box.run(*ids)
    pids = {unit: box.show(unit, "MainPID")["MainPID"] for unit in ("mbx-chassis", "mbxd")}
    configure(box.root, "hypervisor.conf", {"MBX_ENCAP_TYPE": "vxlam"})
    try:
        assert box.run("systemctl", "restart", "mbx-host-setup", check=False).returncode != 0
        wait_until(lambda: "mbx-host-setup: MBX_ENCAP_TYPE: vxlan or geneve, not 'vxlam'"
                   in box.journal("mbx-host-setup"), 10, interval=0.2,
                   what="the setup's error in the journal")
        assert box.run(*ids) == before
        for unit, pid in pids.items():
            props = box.show(unit, "MainPID", "SubState")
            assert props == {"MainPID": pid, "SubState": "running"}, (unit, props)
    finally:
        configure(box.root, "hypervisor.conf", {"MBX_ENCAP_TYPE": "vxlan"})
    box.run("systemctl", "restart", "mbx-host-setup")
    assert box.show("mbx-host-setup", "ActiveState")["ActiveState"] == "active"
    assert box.run(*ids) == before


def test_the_host_is_served_again_after_the_restarts(box):
    box.run(*MBXCTL, "--wait=hv", "ls-add", "ls-blue", "--vni", "1002",
            "--subnet", "10.0.1.0/24", "--tenant", "blue", timeout=120)
    assert box.host_row(HOST)["CONNECTED"] == "true"
