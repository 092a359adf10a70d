"""mbxctl and mbx-host-register against a real config database server.

Each test talks to an ovsdb-server started from ovsdb/server.py and runs the
installed console scripts as a user would, asserting on what the user sees:
their output, their one-line errors, and the database content.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ovsdb import server
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError
from ryu_apps.model import AddressSetInfo, MiddleboxInfo, PolicyInfo

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

FIREWALL = """\
address_sets:
  - {name: a-admins, tenant: tenant-a, addresses: [10.0.0.11]}
  - {name: b-admins, tenant: tenant-b, addresses: [10.0.0.12]}
middleboxes:
  - name: fw-a
    switch: ls-a
    options: {same-host: both}
    rules:
      - {priority: 100, direction: to-vm, match: "proto=tcp dport=7000",
         action: allow}
      - {priority: 90, direction: from-vm, match: "dst=$a-admins",
         action: deny, tier: provider}
  - {name: fw-b, switch: ls-b}
steering:
  - {switch: ls-a, priority: 100, match: any, middlebox: fw-a}
  - {switch: ls-a, priority: 200, match: "src=$a-admins", middlebox: bypass}
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
    """A config database holding TOPOLOGY and FIREWALL; tests must leave it
    unchanged."""
    rundir = str(tmp_path_factory.mktemp("nbpop"))
    pid, remote = start_server(rundir)
    path = os.path.join(rundir, "topo.yaml")
    with open(path, "w") as f:
        f.write(TOPOLOGY + FIREWALL)
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


def row_count(remote, table):
    out = subprocess.run(["ovsdb-client", "-f", "csv", "--no-headings",
                          "dump", remote, table], check=True,
                         capture_output=True, text=True).stdout
    return len(out.splitlines()) - 1        # the "TABLE table" caption


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
    "bad cidr in as-add": (["as-add", "x", "tenant-a", "10.0.0.1",
                            "10.0.0.5/24"],
                           'bad address "10.0.0.5/24": expected an IPv4 '
                           "address or CIDR with no host bits set"),
    "set in set": (["as-add", "x", "tenant-a", "$a-admins"],
                   "address sets cannot contain other sets"),
    "duplicate address set": (["as-add", "a-admins", "tenant-a"],
                              'address set "a-admins" already exists'),
    "as-add --may-exist, different": (
        ["as-add", "a-admins", "tenant-a", "--may-exist"],
        "already exists with addresses [10.0.0.11] (not [])"),
    "as-set unknown set": (["as-set", "nope", "10.0.0.1"],
                           'unknown address set "nope"'),
    "unknown address set": (["fw-add", "fw-a", "1", "to-vm", "src=$nope",
                             "allow"], 'unknown address set "nope"'),
    "set of another tenant": (["fw-add", "fw-a", "1", "to-vm",
                               "src=$b-admins", "allow"],
                              'address set "b-admins" belongs to tenant '
                              "'tenant-b', not to tenant 'tenant-a' of "
                              "middlebox 'fw-a'"),
    "steering set of another tenant": (
        ["steer-add", "ls-a", "5", "dst=$b-admins", "bypass"],
        'address set "b-admins" belongs to tenant \'tenant-b\', not to '
        "tenant 'tenant-a' of logical switch 'ls-a'"),
    "fw priority out of range": (["fw-add", "fw-a", "32768", "to-vm", "any",
                                  "allow"], "invalid rule priority '32768': "
                                 "use an integer from 0 to 32767"),
    "negative fw priority": (["fw-add", "fw-a", "-1", "to-vm", "any",
                              "allow"], "invalid rule priority '-1'"),
    "steer priority out of range": (["steer-add", "ls-a", "30001", "any",
                                     "bypass"], "invalid steering priority "
                                    "'30001': use an integer from 0 to "
                                    "30000"),
    "non-integer fw priority": (["fw-add", "fw-a", "ten", "to-vm", "any",
                                 "allow"], "invalid rule priority 'ten'"),
    "non-integer steer priority": (["steer-del", "ls-a", "1.5"],
                                   "invalid steering priority '1.5'"),
    "duplicate priority within a tier": (
        ["fw-add", "fw-a", "100", "to-vm", "any", "deny"],
        "middlebox 'fw-a' already has a tenant to-vm rule at priority 100 "
        "(proto=tcp dport=7000 -> allow); choose another priority"),
    "duplicate priority, chained": (
        ["fw-add", "fw-a", "5", "from-vm", "any", "deny", "--tier",
         "provider", "--", "fw-add", "fw-a", "5", "from-vm", "proto=udp",
         "allow", "--tier", "provider"],
        "already has a provider from-vm rule at priority 5 (any -> deny)"),
    "duplicate steering priority": (["steer-add", "ls-a", "100", "any",
                                     "bypass"], "logical switch 'ls-a' "
                                    "already has a steering policy at "
                                    "priority 100 (any -> fw-a)"),
    "unknown middlebox in fw-add": (["fw-add", "nope", "1", "to-vm", "any",
                                     "allow"], "unknown middlebox 'nope'"),
    "unknown middlebox in steer-add": (["steer-add", "ls-a", "5", "any",
                                        "nope"], "unknown middlebox 'nope'"),
    "middlebox of another switch": (["steer-add", "ls-a", "5", "any",
                                     "fw-b"], "middlebox 'fw-b' serves "
                                    "logical switch 'ls-b', not 'ls-a'"),
    "steer-add unknown switch": (["steer-add", "ls-z", "5", "any", "bypass"],
                                 "unknown logical switch 'ls-z'"),
    "bad direction": (["fw-add", "fw-a", "1", "inbound", "any", "allow"],
                      "invalid direction 'inbound': use from-vm or to-vm"),
    "bad action": (["fw-add", "fw-a", "1", "to-vm", "any", "permit"],
                   "invalid action 'permit': use allow, deny or reject"),
    "bad tier": (["fw-add", "fw-a", "1", "to-vm", "any", "allow", "--tier",
                  "admin"], "invalid tier 'admin': use provider or tenant"),
    "bad match": (["fw-add", "fw-a", "1", "to-vm", "proto=tcp dport=99999",
                   "allow"], 'bad match "proto=tcp dport=99999": dport 99999 '
                  "out of range"),
    "missing action": (["fw-add", "fw-a", "1", "to-vm", "any"],
                       "fw-add: missing ACTION"),
    "bad option": (["mb-set", "fw-a", "colour=red"],
                   "unknown middlebox option 'colour'; known options: "
                   "check, same-host, tier-order, timeout-tcp-syn"),
    "bad option value": (["mb-add", "fw-x", "ls-a", "timeout-udp=0"],
                         "invalid value '0' for option timeout-udp"),
    "option without value": (["mb-add", "fw-x", "ls-a", "same-host"],
                             "mb-add: invalid option 'same-host': use "
                             "KEY=VALUE"),
    "bad default action": (["mb-set", "fw-a", "--default", "drop"],
                           "invalid default action 'drop'"),
    "bad middlebox type": (["mb-add", "fw-x", "ls-a", "--type", "nat"],
                           "invalid middlebox type 'nat': use firewall"),
    "duplicate middlebox": (["mb-add", "fw-a", "ls-a"],
                            "middlebox 'fw-a' already exists; use "
                            "--may-exist"),
    "mb-add --may-exist, different": (
        ["mb-add", "fw-a", "ls-a", "--may-exist"],
        "middlebox 'fw-a' already exists with options {same-host=both} "
        "(not {})"),
    "middlebox on unknown switch": (["mb-add", "fw-x", "ls-z"],
                                    "middlebox 'fw-x': unknown logical "
                                    "switch 'ls-z'"),
    "mb-set unknown middlebox": (["mb-set", "nope", "--default", "allow"],
                                 "unknown middlebox 'nope'"),
    "as-del of a set in use": (["as-del", "a-admins"],
                               'address set "a-admins" is still used by '
                               "middlebox 'fw-a' provider from-vm rule at "
                               "priority 90 (dst=$a-admins -> deny); logical "
                               "switch 'ls-a' steering policy at priority "
                               "200 (src=$a-admins -> bypass)"),
    "mb-del of a middlebox in use": (["mb-del", "fw-a"],
                                     "middlebox 'fw-a' is still used by "
                                     "steering policy ls-a priority 100; "
                                     "delete it first (steer-del ls-a "
                                     "100)"),
    "ls-del of a switch with a middlebox": (
        ["vm-del", "b1", "--", "ls-del", "ls-b"],
        "logical switch 'ls-b' still has middleboxes fw-b; delete them "
        "first (mb-del)"),
    "ls-del of a switch with steering": (
        ["vm-del", "a1", "--", "ls-del", "ls-a"],
        "logical switch 'ls-a' still has steering policies at priority "
        "200, 100; delete them first (steer-del ls-a)"),
    "fw-del of a missing rule": (["fw-del", "fw-a", "to-vm", "90"],
                                 "middlebox 'fw-a' has no tenant to-vm rule "
                                 "at priority 90; use --if-exists"),
    "fw-del direction without priority": (
        ["fw-del", "fw-a", "to-vm"],
        "fw-del: give both DIRECTION and PRIORITY"),
    "steer-del of a missing policy": (["steer-del", "ls-a", "7"],
                                      "logical switch 'ls-a' has no "
                                      "steering policy at priority 7"),
    "fw-list of an unknown middlebox, chained": (
        ["fw-del", "fw-a", "--", "fw-list", "nope"],
        "unknown middlebox 'nope'"),
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
    "unknown set in rule": (
        "middleboxes:\n  - name: fw-x\n    switch: ls-a\n    rules:\n"
        "      - {priority: 1, direction: to-vm, match: src=$nope, "
        "action: allow}\n",
        'middleboxes[0] (fw-x): rules[0]: unknown address set "nope"'),
    "set of another tenant in rule": (
        "middleboxes:\n  - name: fw-x\n    switch: ls-a\n    rules:\n"
        "      - {priority: 1, direction: to-vm, match: src=$b-admins, "
        "action: allow}\n",
        'middleboxes[0] (fw-x): rules[0]: address set "b-admins" belongs to '
        "tenant 'tenant-b'"),
    "duplicate rule priority in file": (
        "middleboxes:\n  - name: fw-x\n    switch: ls-a\n    rules:\n"
        "      - {priority: 1, direction: to-vm, match: any, action: allow}"
        "\n      - {priority: 1, direction: to-vm, match: any, action: deny}"
        "\n", "middleboxes[0] (fw-x): rules[1]: middlebox 'fw-x' already "
        "has a tenant to-vm rule at priority 1"),
    "bad option in file": (
        "middleboxes:\n  - {name: fw-x, switch: ls-a, options: {check: "
        "never}}\n", "middleboxes[0] (fw-x): invalid value 'never' for "
        "option check"),
    "middlebox of another switch in file": (
        "steering:\n  - {switch: ls-a, priority: 5, match: any, middlebox: "
        "fw-b}\n", "steering[0] (ls-a priority 5): middlebox 'fw-b' serves "
        "logical switch 'ls-b', not 'ls-a'"),
    "set tenant change breaks a rule in the db": (
        "address_sets:\n  - {name: a-admins, tenant: tenant-b}\n",
        "middlebox 'fw-a' provider from-vm rule at priority 90 "
        '(dst=$a-admins -> deny): address set "a-admins" belongs to tenant '
        "'tenant-b', not to tenant 'tenant-a' of middlebox 'fw-a'"),
    "moving a middlebox away from its policies": (
        "middleboxes:\n  - {name: fw-a, switch: ls-b}\n",
        "logical switch 'ls-a' steering policy at priority 100 (any -> fw-a)"
        ": middlebox 'fw-a' serves logical switch 'ls-b', not 'ls-a'"),
    "bad cidr in file": (
        "address_sets:\n  - {name: x, tenant: t, addresses: [10.0.0.1/8]}\n",
        'address_sets[0] (x): bad address "10.0.0.1/8"'),
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
    path.write_text(TOPOLOGY + FIREWALL)
    ok(nb, "load", str(path))
    first = dump(nb)
    ok(nb, "load", str(path))
    assert dump(nb) == first
    # Declarative: a changed IP is updated, rows not in the file stay.
    ok(nb, "ls-add", "keep", "--vni", "5", "--subnet", "10.5.0.0/24")
    path.write_text((TOPOLOGY + FIREWALL).replace("ip: 10.0.0.1, mac",
                                                  "ip: 10.0.0.7, mac"))
    ok(nb, "load", str(path))
    vms = ok(nb, "vm-list").splitlines()
    assert vms[1].split()[:3] == ["a1", "ls-a", "10.0.0.7"]
    assert vms[2].split()[:3] == ["b1", "ls-b", "10.0.0.1"]
    assert "keep" in ok(nb, "ls-list")


def test_firewall_commands_appear_in_lists_and_show(nb):
    ok(nb, "ls-add", "ls-a", "--vni", "101", "--subnet", "10.0.0.0/24",
       "--tenant", "tenant-a",
       "--", "ls-add", "ls-b", "--vni", "102", "--subnet", "10.0.0.0/24",
       "--tenant", "tenant-b")
    ok(nb, "as-add", "admins", "tenant-a", "10.0.0.11", "10.0.1.0/24",
       "10.0.0.2/32",
       "--", "mb-add", "fw-a", "ls-a", "same-host=both", "--default",
       "reject", "timeout-udp=60",
       "--", "fw-add", "fw-a", "100", "to-vm", "proto=tcp,dport=7000",
       "allow",
       "--", "fw-add", "fw-a", "100", "to-vm", "any", "deny", "--tier",
       "provider",
       "--", "fw-add", "fw-a", "50", "from-vm", "dst=$admins", "deny",
       "--", "steer-add", "ls-a", "100", "any", "fw-a",
       "--", "steer-add", "ls-a", "200", "src=$admins", "bypass",
       "--", "mb-add", "fw-b", "ls-b")
    assert ok(nb, "mb-list").splitlines() == [
        "NAME  TYPE      SWITCH  DEFAULT  RULES  OPTIONS",
        "fw-a  firewall  ls-a    reject   3      same-host=both, "
        "timeout-udp=60",
        "fw-b  firewall  ls-b    deny     0      -"]
    assert ok(nb, "fw-list", "fw-a").splitlines() == [
        "DIRECTION  TIER      PRIORITY  ACTION  MATCH",
        "from-vm    tenant    50        deny    dst=$admins",
        "to-vm      provider  100       deny    any",
        "to-vm      tenant    100       allow   proto=tcp dport=7000"]
    assert ok(nb, "as-list").splitlines() == [
        "NAME    TENANT    ADDRESSES",
        "admins  tenant-a  10.0.0.2, 10.0.0.11, 10.0.1.0/24"]
    assert ok(nb, "as-list", "tenant-b").splitlines() == [
        "NAME  TENANT  ADDRESSES"]
    assert ok(nb, "steer-list").splitlines() == [
        "SWITCH  PRIORITY  MIDDLEBOX  MATCH",
        "ls-a    200       bypass     src=$admins",
        "ls-a    100       fw-a       any"]
    assert ok(nb, "show").splitlines() == [
        "switch ls-a (tenant tenant-a, vni 101, subnet 10.0.0.0/24)",
        "    middlebox fw-a (firewall, default reject)",
        "        options: same-host=both, timeout-udp=60",
        "        rule from-vm tenant 50: dst=$admins -> deny",
        "        rule to-vm provider 100: any -> deny",
        "        rule to-vm tenant 100: proto=tcp dport=7000 -> allow",
        "    steering 200: src=$admins -> bypass",
        "    steering 100: any -> fw-a",
        "switch ls-b (tenant tenant-b, vni 102, subnet 10.0.0.0/24)",
        "    middlebox fw-b (firewall, default deny)",
        "address set admins (tenant tenant-a)",
        "    addresses: 10.0.0.2, 10.0.0.11, 10.0.1.0/24"]

    # tier-order decides the listing order; "KEY=" removes an option
    ok(nb, "mb-set", "fw-a", "--default", "allow", "tier-order=tenant-first",
       "same-host=", "timeout-udp=30")
    assert ok(nb, "fw-list", "fw-a").splitlines()[2:] == [
        "to-vm      tenant    100       allow   proto=tcp dport=7000",
        "to-vm      provider  100       deny    any"]
    assert ok(nb, "mb-list").splitlines()[1].split() == [
        "fw-a", "firewall", "ls-a", "allow", "3", "tier-order=tenant-first,",
        "timeout-udp=30"]
    ok(nb, "mb-add", "fw-b", "ls-b", "--may-exist")
    ok(nb, "as-add", "admins", "tenant-a", "10.0.1.0/24", "10.0.0.2",
       "10.0.0.11", "--may-exist")

    # deletions
    ok(nb, "fw-del", "fw-a", "to-vm", "100", "--tier", "provider")
    ok(nb, "fw-del", "fw-a", "to-vm", "100", "--tier", "provider",
       "--if-exists")
    assert len(ok(nb, "fw-list", "fw-a").splitlines()) == 3
    ok(nb, "as-set", "admins", "10.0.0.12")
    assert "admins  tenant-a  10.0.0.12" in ok(nb, "as-list")
    ok(nb, "steer-del", "ls-a", "200", "--", "fw-del", "fw-a")
    assert ok(nb, "fw-list", "fw-a").splitlines() == [
        "DIRECTION  TIER  PRIORITY  ACTION  MATCH"]
    ok(nb, "as-del", "admins", "--", "as-del", "admins", "--if-exists")
    ok(nb, "steer-del", "ls-a", "--", "mb-del", "fw-a", "--", "mb-del",
       "fw-b", "--", "mb-del", "fw-b", "--if-exists", "--", "ls-del", "ls-a",
       "--", "ls-del", "ls-b", "--", "steer-del", "ls-z", "--if-exists")
    assert ok(nb, "show") == ""
    for table in ("Middlebox", "Firewall_Rule", "Address_Set",
                  "Steering_Policy"):
        assert row_count(nb, table) == 0, table


def test_load_firewall_replaces_declared_rules_and_policies(nb, tmp_path):
    # (loading the same file twice is a no-op: test_load_creates_updates_...)
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY + FIREWALL)
    ok(nb, "load", str(path))
    first = dump(nb)
    kept = [line for line in first.splitlines() if "proto=tcp dport=7000"
            in line]
    # Rows the file does not declare stay: ls-b's policy, a set, fw-b's rule.
    ok(nb, "steer-add", "ls-b", "5", "any", "fw-b",
       "--", "as-add", "extra", "tenant-b",
       "--", "fw-add", "fw-b", "1", "from-vm", "any", "allow")
    path.write_text((TOPOLOGY + FIREWALL)
                    .replace("action: deny, tier: provider",
                             "action: reject, tier: provider")
                    .replace("  - {switch: ls-a, priority: 200, match: "
                             "\"src=$a-admins\", middlebox: bypass}\n", "")
                    .replace("{name: fw-b, switch: ls-b}",
                             "{name: fw-b, switch: ls-b, "
                             "default_action: allow}"))
    ok(nb, "load", str(path))
    assert ok(nb, "fw-list", "fw-a").splitlines()[1:] == [
        "from-vm    provider  90        reject  dst=$a-admins",
        "to-vm      tenant    100       allow   proto=tcp dport=7000"]
    # fw-b is declared without rules: its rules are replaced by none
    assert ok(nb, "fw-list", "fw-b").splitlines()[1:] == []
    assert ok(nb, "steer-list").splitlines()[1:] == [
        "ls-a    100       fw-a       any",
        "ls-b    5         fw-b       any"]
    assert "extra" in ok(nb, "as-list")
    # An unchanged rule keeps its row.
    assert kept[0] in dump(nb)


def test_api_reads_and_slices(nb, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY + FIREWALL)
    ok(nb, "init", "--", "load", str(path))
    api = MbxNb.connect(nb)
    try:
        for i, host in enumerate(("h1", "h2")):
            api.host_register(host, "vxlan", f"10.200.0.1{i}",
                              f"tcp:10.201.0.1{i}:6640").execute(
                check_error=True)
        snap = api.snapshot()
        assert snap.middleboxes["fw-a"] == MiddleboxInfo(
            "fw-a", "firewall", "ls-a", "deny", {"same-host": "both"})
        assert snap.policies == (
            PolicyInfo("ls-a", 200, "src=$a-admins", None),
            PolicyInfo("ls-a", 100, "any", "fw-a"))
        assert snap.address_sets["b-admins"] == AddressSetInfo(
            "b-admins", "tenant-b", ("10.0.0.12",))
        assert [r.priority for r in snap.rules["fw-a"]] == [90, 100]
        assert all(r.uuid for r in snap.rules["fw-a"])
        assert api.fw_list("fw-a") == list(snap.rules["fw-a"])
        assert [mb.name for mb in api.mb_list()] == ["fw-a", "fw-b"]
        assert [s.name for s in api.as_list("tenant-b")] == ["b-admins"]
        assert api.steer_list("ls-b") == []
        with pytest.raises(MbxError, match="unknown middlebox 'nope'"):
            api.fw_list("nope")
        assert snap.slices == {}

        api.set_slices({("fw-a", "h1"): 1, ("fw-b", "h1"): 2,
                        ("fw-a", "h2"): 1, ("fw-a", "nohost"): 3,
                        ("nomb", "h1"): 4}).execute(check_error=True)
        assert api.snapshot().slices == {("fw-a", "h1"): 1,
                                         ("fw-b", "h1"): 2,
                                         ("fw-a", "h2"): 1}
        api.set_slices({("fw-a", "h1"): 7, ("fw-b", "h1"): 2}).execute(
            check_error=True)
        assert api.snapshot().slices == {("fw-a", "h1"): 7,
                                         ("fw-b", "h1"): 2}
        with pytest.raises(MbxError, match="invalid slice tag 4095"):
            api.set_slices({("fw-a", "h1"): 4095})
        # Deleting a middlebox clears the weak reference: the row is
        # ignored, and the next set_slices deletes it.
        api.mb_del("fw-b").execute(check_error=True)
        assert api.snapshot().slices == {("fw-a", "h1"): 7}
        assert row_count(nb, "Slice") == 2
        api.set_slices({("fw-a", "h1"): 7}).execute(check_error=True)
        assert row_count(nb, "Slice") == 1
    finally:
        api.close()


def test_schema_1_0_0_database_is_converted_and_keeps_its_rows(tmp_path):
    with open(server.SCHEMA_PATH) as f:
        schema = json.load(f)
    old_tables = ("NB_Global", "Host", "Logical_Switch", "VM")
    schema["version"] = "1.0.0"
    schema["tables"] = {name: table for name, table
                        in schema["tables"].items() if name in old_tables}
    old_schema = tmp_path / "mbx_nb-1.0.0.ovsschema"
    old_schema.write_text(json.dumps(schema))
    db = tmp_path / "db"
    subprocess.run(["ovsdb-tool", "create", str(db), str(old_schema)],
                   check=True)
    subprocess.run(["ovsdb-tool", "transact", str(db), json.dumps(
        ["MBX_Northbound",
         {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls",
          "row": {"name": "old", "tenant": "t", "vni": 7,
                  "subnet": "10.7.0.0/24"}},
         {"op": "insert", "table": "VM",
          "row": {"name": "v", "logical_switch": ["named-uuid", "ls"],
                  "mac": "02:00:00:00:00:07", "ip": "10.7.0.1",
                  "location_epoch": 3}}])],
        check=True, capture_output=True)
    pid, remote = start_server(str(tmp_path))      # ensure_db converts it
    try:
        assert subprocess.run(["ovsdb-tool", "db-version", str(db)],
                              capture_output=True, text=True,
                              check=True).stdout.strip() == "1.1.0"
        assert ok(remote, "vm-list").splitlines()[1].split() == [
            "v", "old", "10.7.0.1", "02:00:00:00:00:07", "-", "3"]
        ok(remote, "mb-add", "fw", "old", "--", "fw-add", "fw", "1", "to-vm",
           "any", "allow", "--", "steer-add", "old", "1", "any", "fw")
        assert "    steering 1: any -> fw" in ok(remote, "show").splitlines()
    finally:
        server.stop(pid)


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
