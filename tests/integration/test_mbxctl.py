"""mbxctl and mbx-host-register against a real config database server.

Each test talks to an ovsdb-server started from ovsdb/server.py and runs the
installed console scripts as a user would, asserting on what the user sees:
their output, their one-line errors, and the database content.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ovsdb import server
from ovsdb.api import MbxNb

BIN = os.path.dirname(sys.executable)
MBXCTL = os.path.join(BIN, "mbxctl")
HOSTREG = os.path.join(BIN, "mbx-host-register")
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

TOPOLOGY = """\
switches:
  - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24}
  - {name: ls-b, tenant: tenant-b, vni: 102, subnet: 10.0.0.0/24}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.1, mac: "02:00:00:00:01:01"}
  - {name: b1, switch: ls-b, ip: 10.0.0.1}
"""


def start_server(rundir, schema=server.SCHEMA_PATH):
    db = os.path.join(rundir, "db")
    server.ensure_db(db, schema)
    sock = os.path.join(rundir, "db.sock")
    pid = server.start(rundir, db, ["punix:" + sock])
    return pid, "unix:" + sock


@pytest.fixture
def nb(tmp_path_factory):
    """A fresh, empty config database; yields its remote."""
    pid, remote = start_server(str(tmp_path_factory.mktemp("nb")))
    yield remote
    server.stop(pid)
    assert not os.path.exists(f"/proc/{pid}/cmdline") or \
        open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A config database holding TOPOLOGY; tests must leave it unchanged."""
    rundir = str(tmp_path_factory.mktemp("nbpop"))
    pid, remote = start_server(rundir)
    path = os.path.join(rundir, "topo.yaml")
    with open(path, "w") as f:
        f.write(TOPOLOGY)
    assert mbxctl(remote, "init", "--", "load", path).returncode == 0
    yield remote, rundir
    server.stop(pid)


def mbxctl(remote, *args, timeout=20):
    env = {k: v for k, v in os.environ.items() if k != "MBX_DB"}
    return subprocess.run([MBXCTL, "--db", remote, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(remote, *args):
    proc = mbxctl(remote, *args)
    assert (proc.returncode, proc.stderr) == (0, ""), args
    return proc.stdout


def dump(remote):
    return subprocess.run(["ovsdb-client", "dump", remote], check=True,
                          capture_output=True, text=True).stdout


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbxctl: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_created_rows_appear_in_lists_and_show(nb):
    ok(nb, "ls-add", "ls-a", "--vni", "101", "--subnet", "10.0.0.0/24",
       "--tenant", "tenant-a",
       "--", "vm-add", "a1", "--switch", "ls-a", "--ip", "10.0.0.1",
       "--mac", "02:00:00:00:01:01",
       "--", "ls-add", "ls-b", "--vni", "102", "--subnet", "10.0.0.0/24",
       "--", "vm-add", "b1", "--switch", "ls-b", "--ip", "10.0.0.1",
       "--mac", "02:00:00:00:01:01")
    assert ok(nb, "ls-list").splitlines() == [
        "NAME  TENANT    VNI  SUBNET",
        "ls-a  tenant-a  101  10.0.0.0/24",
        "ls-b  ls-b      102  10.0.0.0/24"]
    assert ok(nb, "vm-list", "--switch", "ls-b").splitlines() == [
        "NAME  SWITCH  IP        MAC                HOST  EPOCH",
        "b1    ls-b    10.0.0.1  02:00:00:00:01:01  -     0"]
    show = ok(nb, "show").splitlines()
    assert show[:5] == [
        "switch ls-a (tenant tenant-a, vni 101, subnet 10.0.0.0/24)",
        "    vm a1",
        "        mac: 02:00:00:00:01:01",
        "        ip: 10.0.0.1",
        "        host: - (epoch 0)"]
    ok(nb, "vm-del", "a1", "--", "ls-del", "ls-a")
    assert [line.split()[0] for line in ok(nb, "ls-list").splitlines()] == [
        "NAME", "ls-b"]


def test_may_exist_accepts_identical_and_names_the_difference(nb):
    add = ("ls-add", "s", "--vni", "7", "--subnet", "10.7.0.0/24")
    ok(nb, *add)
    ok(nb, *add, "--may-exist")
    assert_one_line_error(mbxctl(nb, *add), "already exists", "--may-exist")
    assert_one_line_error(
        mbxctl(nb, "ls-add", "s", "--vni", "8", "--subnet", "10.7.0.0/24",
               "--may-exist"), "'s' already exists with vni 7 (not 8)")


BAD_INPUTS = {
    "unknown command": (["ls-addd", "x"], "unknown command 'ls-addd'"),
    "option typo": (["ls-add", "x", "--vnii", "5", "--subnet", "10.5.0.0/24"],
                    "unrecognized arguments: --vnii 5"),
    "missing option": (["vm-add", "x", "--switch", "ls-a"],
                       "missing option --ip"),
    "global option typo": (["--wait=hb", "init"], "--wait=hv"),
    "unknown switch": (["vm-add", "x", "--switch", "nope", "--ip", "10.0.0.9"],
                       "unknown logical switch 'nope'"),
    "duplicate vni": (["ls-add", "x", "--vni", "101", "--subnet",
                       "10.9.0.0/24"], "VNI 101 is already used by logical "
                      "switch 'ls-a'"),
    "duplicate switch": (["ls-add", "ls-a", "--vni", "9", "--subnet",
                          "10.9.0.0/24"], "'ls-a' already exists"),
    "host bits in cidr": (["ls-add", "x", "--vni", "9", "--subnet",
                           "10.9.0.5/24"], "did you mean 10.9.0.0/24?"),
    "bad mac": (["vm-add", "x", "--switch", "ls-a", "--ip", "10.0.0.9",
                 "--mac", "03:00:00:00:00:01"], "multicast"),
    "bad ip": (["vm-add", "x", "--switch", "ls-a", "--ip", "10.0.0.999"],
               "invalid IP address '10.0.0.999'"),
    "ip outside subnet": (["vm-add", "x", "--switch", "ls-a", "--ip",
                           "10.1.0.9"], "outside subnet 10.0.0.0/24"),
    "duplicate ip": (["vm-add", "x", "--switch", "ls-a", "--ip", "10.0.0.1"],
                     "IP 10.0.0.1 is already used by VM 'a1'"),
    "duplicate mac": (["vm-add", "x", "--switch", "ls-a", "--ip", "10.0.0.9",
                       "--mac", "02:00:00:00:01:01"],
                      "MAC 02:00:00:00:01:01 is already used by VM 'a1'"),
    "delete switch with vms": (["ls-del", "ls-a"], "still has VMs a1"),
    "delete unknown vm": (["vm-del", "nope"], "unknown VM 'nope'"),
    "chain, second bad": (["ls-add", "x", "--vni", "9", "--subnet",
                           "10.9.0.0/24", "--", "vm-add", "x1", "--switch",
                           "x", "--ip", "10.8.0.1"], "outside subnet"),
    "chain, empty command": (["init", "--"], "missing command"),
    "missing file": (["load", "/nonexistent/t.yaml"],
                     "cannot read /nonexistent/t.yaml"),
}

BAD_FILES = {
    "malformed yaml": ("switches: [\n", "invalid YAML"),
    "unknown key": ("vms:\n  - {name: a3, switch: ls-a, ipp: 10.0.0.3}\n",
                    "vms[0] (a3): unknown key 'ipp'"),
    "vni taken in db": ("switches:\n  - {name: ls-c, vni: 102, "
                        "subnet: 10.2.0.0/24}\n",
                        "switches[0] (ls-c): VNI 102 is already used by "
                        "logical switch 'ls-b'"),
    "ip taken in db": ("vms:\n  - {name: a2, switch: ls-a, ip: 10.0.0.1}\n",
                       "vms[0] (a2): IP 10.0.0.1 is already used by VM 'a1'"),
    "switch nowhere": ("vms:\n  - {name: z1, switch: ls-z, ip: 10.0.0.7}\n",
                       "vms[0] (z1): unknown logical switch 'ls-z'"),
    "lab placement": ("hosts: [h1]\n", "unknown key 'hosts'"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(),
                         ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_and_changes_nothing(populated, args, message):
    remote, _ = populated
    before = dump(remote)
    assert_one_line_error(mbxctl(remote, *args), message)
    assert dump(remote) == before


@pytest.mark.parametrize("text,message", BAD_FILES.values(),
                         ids=BAD_FILES.keys())
def test_bad_file_is_one_line_and_changes_nothing(populated, text, message):
    remote, rundir = populated
    path = os.path.join(rundir, "bad.yaml")
    with open(path, "w") as f:
        f.write(text)
    before = dump(remote)
    assert_one_line_error(mbxctl(remote, "ls-add", "x", "--vni", "9",
                                 "--subnet", "10.9.0.0/24", "--",
                                 "load", path), path, message)
    assert dump(remote) == before


def test_load_creates_updates_and_is_idempotent(nb, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY)
    ok(nb, "load", str(path))
    first = dump(nb)
    ok(nb, "load", str(path))
    assert dump(nb) == first
    # Declarative: a changed IP is updated, rows not in the file stay.
    ok(nb, "ls-add", "keep", "--vni", "5", "--subnet", "10.5.0.0/24")
    path.write_text(TOPOLOGY.replace("ip: 10.0.0.1, mac", "ip: 10.0.0.7, mac"))
    ok(nb, "load", str(path))
    vms = ok(nb, "vm-list").splitlines()
    assert vms[1].split()[:3] == ["a1", "ls-a", "10.0.0.7"]
    assert vms[2].split()[:3] == ["b1", "ls-b", "10.0.0.1"]
    assert "keep" in ok(nb, "ls-list")


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("remote", ["unix:/nonexistent/nb.sock",
                                    f"tcp:127.0.0.1:{free_tcp_port()}"])
def test_unreachable_database_fails_fast_in_one_line(remote):
    start = time.monotonic()
    proc = mbxctl(remote, "ls-add", "x", "--vni", "5", "--subnet",
                  "10.5.0.0/24")
    assert time.monotonic() - start < 5
    assert_one_line_error(proc, f"cannot connect to config database at "
                          f"{remote}", "set --db or MBX_DB")


def test_wait_hv_returns_once_hosts_caught_up(nb):
    ok(nb, "init")
    api = MbxNb.connect(nb)
    try:
        done = threading.Event()

        def controller():
            while not done.is_set():
                snap = api.snapshot()
                if snap.nb_cfg > snap.hv_cfg:
                    time.sleep(0.3)     # "installing flows"
                    api.set_hv_cfg(snap.nb_cfg).execute(check_error=True)
                time.sleep(0.02)

        thread = threading.Thread(target=controller)
        thread.start()
        try:
            start = time.monotonic()
            ok(nb, "--wait=hv", "--timeout", "5", "ls-add", "w", "--vni",
               "5", "--subnet", "10.5.0.0/24")
            assert time.monotonic() - start >= 0.3
            snap = api.snapshot()
            assert (snap.nb_cfg, snap.hv_cfg) == (1, 1)
        finally:
            done.set()
            thread.join()
    finally:
        api.close()


def test_wait_hv_times_out_naming_the_host_behind(nb):
    ok(nb, "init")
    api = MbxNb.connect(nb)
    try:
        api.host_register("h1", "vxlan", "10.200.0.11",
                          "tcp:10.201.0.11:6640").execute(check_error=True)
        api.set_host_status("h1", nb_cfg=0, connected=True).execute(
            check_error=True)
    finally:
        api.close()
    start = time.monotonic()
    proc = mbxctl(nb, "--wait", "hv", "--timeout", "1", "ls-add", "w",
                  "--vni", "5", "--subnet", "10.5.0.0/24")
    assert 1 <= time.monotonic() - start < 5
    assert_one_line_error(proc, "change committed, but timed out after 1s",
                          "behind: h1 (at 0)")
    assert "w     w       5" in ok(nb, "ls-list")


def test_two_connections_to_two_servers_in_one_process(nb, tmp_path_factory):
    pid, other = start_server(str(tmp_path_factory.mktemp("nb2")))
    try:
        changed = []
        one = MbxNb.connect(nb, on_change=changed.append)
        two = MbxNb.connect(other)
        try:
            one.ls_add("one", 1, "10.1.0.0/24").execute(check_error=True)
            two.ls_add("two", 1, "10.1.0.0/24").execute(check_error=True)
            assert list(one.snapshot().switches) == ["one"]
            assert list(two.snapshot().switches) == ["two"]
            assert changed == ["Logical_Switch"]
        finally:
            one.close()
            two.close()
    finally:
        server.stop(pid)


def test_host_register_from_local_ovsdb(nb, tmp_path_factory):
    pid, local = start_server(str(tmp_path_factory.mktemp("ovs")),
                              VSWITCH_SCHEMA)
    try:
        vsctl = ["ovs-vsctl", f"--db={local}", "--no-wait"]
        subprocess.run(vsctl + ["init"], check=True)
        subprocess.run(vsctl + ["set", "Open_vSwitch", ".",
                                "external_ids:system-id=h1",
                                "external_ids:mbx-encap-ip=10.200.0.11"],
                       check=True)
        register = [HOSTREG, "--db", nb, "--local-db", local]
        proc = subprocess.run(register, capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            "mbx-host-register: external_ids:mbx-mgmt-address is not set in "
            "the local OVS database; set it with ovs-vsctl set Open_vSwitch "
            ". external_ids:mbx-mgmt-address=VALUE"]
        subprocess.run(vsctl + ["set", "Open_vSwitch", ".",
                                "external_ids:mbx-mgmt-address="
                                "tcp:10.201.0.11:6640"], check=True)
        subprocess.run(register, check=True)
        api = MbxNb.connect(nb)
        try:
            api.set_host_status("h1", nb_cfg=3, connected=True,
                                datapath_id="00000000000000a1").execute(
                check_error=True)
        finally:
            api.close()
        subprocess.run(vsctl + ["set", "Open_vSwitch", ".",
                                "external_ids:mbx-encap-ip=10.200.0.12"],
                       check=True)
        subprocess.run(register, check=True)    # update keeps the status
        assert ok(nb, "host-list").splitlines()[1].split() == [
            "h1", "vxlan", "10.200.0.12", "tcp:10.201.0.11:6640", "3", "true",
            "00000000000000a1"]
    finally:
        server.stop(pid)
