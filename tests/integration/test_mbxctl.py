"""mbxctl against a real server of the config and southbound databases.

Each test talks to an ovsdb-server started from ovsdb/server.py and runs the
installed console scripts as a user would, asserting on what the user sees:
their output, their one-line errors, and the database content.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from ryu_apps.northd import Northd
from ovsdb import server, validate
from mbxmodel.state import AlertRecord, SharedRecord
from ovsdb.api import MbxNb, MbxSb
from ovsdb.errors import MbxError
from mbxmodel.network import ExternalNetInfo
from mbxmodel.services import AddressSetInfo, MiddleboxInfo, PolicyInfo

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
# This tree's mbxctl (an installed console script may run another tree's).
MBXCTL = [sys.executable, "-m", "ovsdb.ctl"]
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

TOPOLOGY = """\
switches:
  - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24,
     gateway: 10.0.0.254}
  - {name: ls-b, tenant: tenant-b, vni: 102, subnet: 10.0.0.0/24,
     gateway: 10.0.0.254}
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
    """One server for both databases on one socket, as the lab's."""
    db, sb = os.path.join(rundir, "db"), os.path.join(rundir, "sb.db")
    server.ensure_db(db, schema)
    server.ensure_db(sb, server.SB_SCHEMA_PATH)
    sock = os.path.join(rundir, "db.sock")
    pid = server.start(rundir, [db, sb], ["punix:" + sock])
    return pid, "unix:" + sock


# The config database's schema version now (converted files end there).
with open(server.SCHEMA_PATH) as _f:
    NB_VERSION = json.load(_f)["version"]

SB_TABLES = ("SB_Global", "Chassis", "Chassis_Private", "Port_Binding", "Slice",
             "VM_Location", "Datapath", "Shared_State", "IDS_Alert", "Migration")


def database(table):
    return "MBX_Southbound" if table in SB_TABLES else "MBX_Northbound"


def sb_transact(remote, *ops):
    """Southbound rows as the hosts' agents and daemons write them."""
    out = subprocess.run(["ovsdb-client", "transact", remote,
                          json.dumps(["MBX_Southbound", *ops])],
                         check=True, capture_output=True, text=True).stdout
    assert "error" not in out, out
    return json.loads(out)


def add_chassis(remote, *names, migration=False):
    """Chassis rows of hosts h1, h2... as their mbx-chassis publishes them
    (encap 10.200.0.1N; a migration address with ``migration``)."""
    sb_transact(remote, *[
        {"op": "insert", "table": "Chassis",
         "row": {"name": name, "encap_type": "vxlan",
                 "encap_ip": f"10.200.0.1{name[1:]}",
                 "migration_address": f"ssl:10.201.0.1{name[1:]}:6650"
                 if migration else ""}}
        for name in names])


def set_chassis_private(remote, name, nb_cfg, connected):
    """The Chassis_Private row a physical controller writes."""
    sb_transact(remote, {"op": "insert", "table": "Chassis_Private",
                         "row": {"name": name, "controller": "test",
                                 "connected": connected, "nb_cfg": nb_cfg}})


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
    env = {k: v for k, v in os.environ.items() if k not in ("MBX_DB", "MBX_SB")}
    return subprocess.run([*MBXCTL, "--db", remote, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def ok(remote, *args):
    proc = mbxctl(remote, *args)
    assert (proc.returncode, proc.stderr) == (0, ""), args
    return proc.stdout


def dump(remote):
    return "".join(subprocess.run(["ovsdb-client", "dump", remote, name],
                                  check=True, capture_output=True, text=True).stdout
                   for name in ("MBX_Northbound", "MBX_Southbound"))


def row_count(remote, table):
    out = subprocess.run(["ovsdb-client", "-f", "csv", "--no-headings",
                          "dump", remote, database(table), table], check=True,
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
       "--tenant", "tenant-a", "--gateway", "10.0.0.254",
       "--", "vm-add", "a1", "--switch", "ls-a", "--ip", "10.0.0.1",
       "--mac", "02:00:00:00:01:01",
       "--", "ls-add", "ls-b", "--vni", "102", "--subnet", "10.0.0.0/24",
       "--gateway", "10.0.0.254",
       "--", "vm-add", "b1", "--switch", "ls-b", "--ip", "10.0.0.1",
       "--mac", "02:00:00:00:01:01")
    assert ok(nb, "ls-list").splitlines() == [
        "NAME  TENANT    VNI  SUBNET       GATEWAY",
        "ls-a  tenant-a  101  10.0.0.0/24  10.0.0.254",
        "ls-b  ls-b      102  10.0.0.0/24  10.0.0.254"]
    assert ok(nb, "vm-list", "--switch", "ls-b").splitlines() == [
        "NAME  SWITCH  IP        MAC                HOST  EPOCH",
        "b1    ls-b    10.0.0.1  02:00:00:00:01:01  -     0"]
    show = ok(nb, "show").splitlines()
    assert show[:5] == [
        "switch ls-a (tenant tenant-a, vni 101, subnet 10.0.0.0/24, gateway "
        "10.0.0.254)",
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
    "unknown command after a valid one": (
        ["ls-add", "ls-x", "--vni", "9", "--subnet", "10.9.0.0/24", "--",
         "ls-addd", "x"], "unknown command 'ls-addd'"),
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
    "bad middlebox type": (["mb-add", "fw-x", "ls-a", "--type", "router"],
                           "invalid middlebox type 'router': use firewall, "
                           "nat, lb or ids"),
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
        "NAME  TYPE      SWITCH  DEFAULT  RULES  OPTIONS"
        "                         STATUS",
        "fw-a  firewall  ls-a    reject   3      same-host=both, "
        "timeout-udp=60  -",
        "fw-b  firewall  ls-b    deny     0      -"
        "                               -"]
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
        "SWITCH  PRIORITY  CHAIN   MATCH",
        "ls-a    200       bypass  src=$admins",
        "ls-a    100       fw-a    any"]
    assert ok(nb, "show").splitlines() == [
        "switch ls-a (tenant tenant-a, vni 101, subnet 10.0.0.0/24, gateway "
        "10.0.0.1)",
        "    middlebox fw-a (firewall, default reject)",
        "        options: same-host=both, timeout-udp=60",
        "        rule from-vm tenant 50: dst=$admins -> deny",
        "        rule to-vm provider 100: any -> deny",
        "        rule to-vm tenant 100: proto=tcp dport=7000 -> allow",
        "    steering 200: src=$admins -> bypass",
        "    steering 100: any -> fw-a",
        "switch ls-b (tenant tenant-b, vni 102, subnet 10.0.0.0/24, gateway "
        "10.0.0.1)",
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
        "timeout-udp=30", "-"]
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
        "ls-a    100       fw-a   any",
        "ls-b    5         fw-b   any"]
    assert "extra" in ok(nb, "as-list")
    # An unchanged rule keeps its row.
    assert kept[0] in dump(nb)


def test_api_reads_and_slices(nb, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY + FIREWALL)
    ok(nb, "init", "--", "load", str(path))
    add_chassis(nb, "h1", "h2")
    api = MbxNb.connect(nb)
    sb = MbxSb.connect(nb, nb=api)
    try:
        snap = api.snapshot()
        assert snap.middleboxes["fw-a"] == MiddleboxInfo(
            "fw-a", "firewall", "ls-a", "deny", {"same-host": "both"})
        assert snap.policies == (
            PolicyInfo("ls-a", 200, "src=$a-admins", ()),
            PolicyInfo("ls-a", 100, "any", ("fw-a",)))
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
        assert sb.snapshot().slices == {}

        # The slices are southbound rows: a chain of middlebox names on a
        # chassis; a slice of a host that has no chassis is left out.
        fw_a, fw_b = ("fw-a",), ("fw-b",)
        sb.set_slices({(fw_a, "h1"): 1, (fw_b, "h1"): 2,
                       (fw_a, "h2"): 1, (fw_a, "nohost"): 3}).execute(check_error=True)
        assert sb.snapshot().slices == {(fw_a, "h1"): 1,
                                        (fw_b, "h1"): 2,
                                        (fw_a, "h2"): 1}
        sb.set_slices({(fw_a, "h1"): 7, (fw_b, "h1"): 2}).execute(
            check_error=True)
        assert sb.snapshot().slices == {(fw_a, "h1"): 7,
                                        (fw_b, "h1"): 2}
        assert ok(nb, "slice-list").splitlines() == [
            "HOST  TAG  CHAIN  STATUS",
            "h1    2    fw-b   -",
            "h1    7    fw-a   -"]
        assert ok(nb, "slice-list", "--host", "h2").splitlines() == [
            "HOST  TAG  CHAIN  STATUS"]
        with pytest.raises(MbxError, match="invalid slice tag 4095"):
            sb.set_slices({(fw_a, "h1"): 4095})
        assert row_count(nb, "Slice") == 2
        # nothing of it in the config database
        assert "Slice" not in api.tables and "Host" not in api.tables
    finally:
        sb.close()
        api.close()


def test_schema_1_0_0_database_is_converted_and_keeps_its_rows(tmp_path):
    schema = schema_1_2_0()
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
         {"op": "insert", "table": "Host", "uuid-name": "h1",
          "row": {"name": "h1", "encap_type": "vxlan",
                  "encap_ip": "10.200.0.11",
                  "mgmt_address": "tcp:10.201.0.11:6640"}},
         {"op": "insert", "table": "VM",
          "row": {"name": "v", "logical_switch": ["named-uuid", "ls"],
                  "mac": "02:00:00:00:00:07", "ip": "10.7.0.1",
                  "host": ["named-uuid", "h1"], "location_epoch": 3}}])],
        check=True, capture_output=True)
    pid, remote = start_server(str(tmp_path))      # ensure_db converts it
    try:
        assert subprocess.run(["ovsdb-tool", "db-version", str(db)],
                              capture_output=True, text=True,
                              check=True).stdout.strip() == NB_VERSION
        # the VM's host mirror keeps the host's name and the epoch; where
        # the VM runs is the southbound database's, empty until its
        # chassis publishes its port again
        assert nb_query(db, "VM", ["name", "host", "location_epoch"]) == [
            {"name": "v", "host": "h1", "location_epoch": 3}]
        assert ok(remote, "vm-list").splitlines()[1].split() == [
            "v", "old", "10.7.0.1", "02:00:00:00:00:07", "-", "0"]
        assert ok(remote, "host-list").splitlines()[1:] == []
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
    add_chassis(nb, "h1")
    set_chassis_private(nb, "h1", nb_cfg=0, connected=True)
    start = time.monotonic()
    proc = mbxctl(nb, "--wait", "hv", "--timeout", "1", "ls-add", "w",
                  "--vni", "5", "--subnet", "10.5.0.0/24")
    assert 1 <= time.monotonic() - start < 5
    assert_one_line_error(proc, "change committed, but timed out after 1s",
                          "behind: h1 (at 0)")
    assert "w     w       5" in ok(nb, "ls-list")


def test_runtime_commands_read_the_southbound_database(nb, tmp_path_factory):
    """host-list, vm-list, show, slice-list, migration-list and ids-alerts
    answer from the southbound database (--sb, default: the --db server),
    not from the config database's status mirrors."""
    path = tmp_path_factory.mktemp("rt") / "t.yaml"
    path.write_text(TOPOLOGY)
    ok(nb, "init", "--", "load", str(path))
    # the config database's mirror says something else: it is not read
    subprocess.run(["ovsdb-client", "transact", nb, json.dumps(
        ["MBX_Northbound", {"op": "update", "table": "VM",
                            "where": [["name", "==", "a1"]],
                            "row": {"host": "h9", "location_epoch": 9}}])],
        check=True, capture_output=True)
    add_chassis(nb, "h1", "h2", migration=True)
    set_chassis_private(nb, "h1", nb_cfg=3, connected=True)
    sb_transact(nb,
                {"op": "insert", "table": "VM_Location",
                 "row": {"vm": "a1", "chassis": "h2", "epoch": 4}},
                {"op": "insert", "table": "Slice",
                 "row": {"chain": ["map", [[0, "fw-a"], [1, "lb-a"]]],
                         "chassis": "h2", "tag": 3,
                         "status": ["map", [["snat-block:x", "203.0.113.5:1024-2047"]]]}},
                {"op": "update", "table": "Chassis", "where": [["name", "==", "h1"]],
                 "row": {"datapath_id": "00000000000000a1"}})
    assert columns(ok(nb, "host-list")) == [
        ["NAME", "ENCAP", "ENCAP_IP", "NB_CFG", "MB_CFG", "CONNECTED", "DATAPATH_ID",
         "MIGRATION_ADDRESS"],
        ["h1", "vxlan", "10.200.0.11", "3", "-", "true", "00000000000000a1",
         "ssl:10.201.0.11:6650"],
        ["h2", "vxlan", "10.200.0.12", "0", "-", "false", "-", "ssl:10.201.0.12:6650"]]
    assert columns(ok(nb, "vm-list")) == [
        ["NAME", "SWITCH", "IP", "MAC", "HOST", "EPOCH"],
        ["a1", "ls-a", "10.0.0.1", "02:00:00:00:01:01", "h2", "4"],
        ["b1", "ls-b", "10.0.0.1", validate.mac_from_name("b1"), "-", "0"]]
    shown = ok(nb, "show").splitlines()
    assert "        host: h2 (epoch 4)" in shown
    i = shown.index("host h1")
    assert shown[i:i + 5] == ["host h1", "    encap: vxlan 10.200.0.11",
                              "    nb_cfg: 3", "    connected: true",
                              "    migration_address: ssl:10.201.0.11:6650"]
    assert columns(ok(nb, "slice-list")) == [
        ["HOST", "TAG", "CHAIN", "STATUS"],
        ["h2", "3", "fw-a,lb-a", "snat-block:x=203.0.113.5:1024-2047"]]

    # --sb names another server: the runtime answers come from there
    pid, other = start_server(str(tmp_path_factory.mktemp("sb2")))
    try:
        assert ok(nb, "--sb", other, "host-list").splitlines()[1:] == []
        assert ok(nb, "--sb", other, "vm-list").splitlines()[1].split()[-2:] == ["-", "0"]
        proc = subprocess.run([*MBXCTL, "--db", nb, "host-list"], cwd=ROOT,
                              env=dict(os.environ, MBX_SB=other),
                              capture_output=True, text=True)
        assert (proc.returncode, proc.stdout.splitlines()[1:]) == (0, [])
    finally:
        server.stop(pid)
    assert_one_line_error(
        mbxctl(nb, "--sb", "unix:/nonexistent/sb.sock", "host-list"),
        "cannot connect to southbound database at unix:/nonexistent/sb.sock",
        "set --sb or MBX_SB")
    # an intent command needs no southbound database
    ok(nb, "--sb", "unix:/nonexistent/sb.sock", "ls-list")


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


def test_a_connection_is_not_told_of_the_changes_it_keeps_quiet(nb):
    changed = []
    one = MbxNb.connect(nb, on_change=changed.append, quiet=Northd.own_status_write)
    try:
        one.ls_add("ls-q", 1, "10.1.0.0/24").execute(check_error=True)
        one.vm_add("vq", "ls-q", ip="10.1.0.5").execute(check_error=True)
        deadline = time.monotonic() + 5
        while "VM" not in changed and time.monotonic() < deadline:
            time.sleep(0.05)
        del changed[:]
        one.set_vm_mirrors({"vq": ("h1", 3)}).execute(check_error=True)
        assert one.snapshot().vm_mirror["vq"] == ("h1", 3)
        # a change after it: reported, and the only VM change reported
        one.vm_add("vr", "ls-q", ip="10.1.0.6").execute(check_error=True)
        deadline = time.monotonic() + 5
        while "VM" not in changed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert changed.count("VM") == 1
    finally:
        one.close()


def columns(text):
    """The cells of each line of an mbxctl table (separated by 2+ spaces)."""
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


SERVICES = """\
switches:
  - {name: ls-s, tenant: ts, vni: 201, subnet: 10.2.0.0/24}
  - {name: ls-t, tenant: ts, vni: 202, subnet: 10.3.0.0/24,
     gateway: 10.3.0.254}
  - {name: ls-u, tenant: tu, vni: 203, subnet: 10.4.0.0/24}
vms:
  - {name: s1, switch: ls-s, ip: 10.2.0.11}
  - {name: s2, switch: ls-s, ip: 10.2.0.12}
  - {name: t1, switch: ls-t, ip: 10.3.0.1}
  - {name: u1, switch: ls-u, ip: 10.4.0.11}
external_networks:
  - {name: ext, cidr: 203.0.113.0/24, gateway_ip: 203.0.113.1,
     gateway_mac: "02:ee:ff:00:00:01"}
middleboxes:
  - {name: fw-s, switch: ls-s}
  - name: nat-s
    type: nat
    switch: ls-s
    options: {ports-per-host: 1024}
    nat_rules:
      - {type: snat, external_ips: [203.0.113.5, 203.0.113.6]}
      - {type: dnat, external_ip: 203.0.113.10, logical_ip: 10.2.0.11,
         protocol: tcp, external_port: 2222, logical_port: 22}
  - name: lb-s
    type: lb
    switch: ls-s
    vips:
      - {vip: "10.2.0.100:80", backends: ["10.2.0.11:8080", "10.3.0.1:8080"],
         options: {health-interval: 1, health-timeout: 0.5}}
  - {name: ids-s, type: ids, switch: ls-s, options: {scan-threshold: 12}}
  - {name: nat-u, type: nat, switch: ls-u}
steering:
  - {switch: ls-s, priority: 100, match: any,
     chain: [fw-s, lb-s, nat-s, ids-s]}
  - {switch: ls-s, priority: 200, match: "proto=udp", chain: []}
  - {switch: ls-s, priority: 300, match: "proto=icmp", middlebox: fw-s}
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A config database holding SERVICES; tests must leave it unchanged."""
    rundir = str(tmp_path_factory.mktemp("nbsvc"))
    pid, remote = start_server(rundir)
    path = os.path.join(rundir, "services.yaml")
    with open(path, "w") as f:
        f.write(SERVICES)
    ok(remote, "init", "--", "load", path)
    yield remote, rundir
    server.stop(pid)


def test_services_load_shows_everything(services):
    remote, _ = services
    assert ok(remote, "ext-list").splitlines() == [
        "NAME  CIDR            GATEWAY_IP   GATEWAY_MAC",
        "ext   203.0.113.0/24  203.0.113.1  02:ee:ff:00:00:01"]
    assert ok(remote, "ls-list").splitlines()[1:] == [
        "ls-s  ts      201  10.2.0.0/24  10.2.0.1",
        "ls-t  ts      202  10.3.0.0/24  10.3.0.254",
        "ls-u  tu      203  10.4.0.0/24  10.4.0.1"]
    assert [line.split()[:5] for line in
            ok(remote, "mb-list").splitlines()] == [
        ["NAME", "TYPE", "SWITCH", "DEFAULT", "RULES"],
        ["fw-s", "firewall", "ls-s", "deny", "0"],
        ["ids-s", "ids", "ls-s", "-", "-"],
        ["lb-s", "lb", "ls-s", "-", "1"],
        ["nat-s", "nat", "ls-s", "-", "2"],
        ["nat-u", "nat", "ls-u", "-", "0"]]
    nat = ok(remote, "nat-list", "nat-s").splitlines()
    assert [line.split()[:-1] for line in nat] == [
        ["MIDDLEBOX", "TYPE", "EXTERNAL_IP", "LOGICAL_IP", "PROTOCOL",
         "PORTS"],
        ["nat-s", "dnat", "203.0.113.10", "10.2.0.11", "tcp", "2222->22"],
        ["nat-s", "snat", "203.0.113.5,203.0.113.6", "-", "tcp,udp",
         "1024-65535"]]
    assert columns(ok(remote, "lb-list")) == [
        ["MIDDLEBOX", "VIP", "PROTOCOL", "ALGORITHM", "BACKENDS", "OPTIONS"],
        ["lb-s", "10.2.0.100:80", "tcp", "hash",
         "10.2.0.11:8080=unknown, 10.3.0.1:8080=unknown",
         "health-interval=1, health-timeout=0.5"]]
    assert ok(remote, "steer-list", "ls-s").splitlines() == [
        "SWITCH  PRIORITY  CHAIN                  MATCH",
        "ls-s    300       fw-s                   proto=icmp",
        "ls-s    200       bypass                 proto=udp",
        "ls-s    100       fw-s,lb-s,nat-s,ids-s  any"]
    show = ok(remote, "show").splitlines()
    start = show.index("    middlebox fw-s (firewall, default deny)")
    assert show[start:start + 17] == [
        "    middlebox fw-s (firewall, default deny)",
        "    middlebox ids-s (ids)",
        "        options: scan-threshold=12",
        "    middlebox lb-s (lb)",
        "        vip 10.2.0.100:80/tcp hash: 10.2.0.11:8080=unknown, "
        "10.3.0.1:8080=unknown",
        "            options: health-interval=1, health-timeout=0.5",
        "    middlebox nat-s (nat)",
        "        options: ports-per-host=1024",
        "        dnat rule 203.0.113.10:2222/tcp -> 10.2.0.11:22",
        "        snat rule 203.0.113.5,203.0.113.6 ports 1024-65535 (from "
        "the switch subnet)",
        "    steering 300: proto=icmp -> fw-s",
        "    steering 200: proto=udp -> bypass",
        "    steering 100: any -> fw-s,lb-s,nat-s,ids-s",
        "switch ls-t (tenant ts, vni 202, subnet 10.3.0.0/24, gateway "
        "10.3.0.254)",
        "    vm t1",
        "        mac: " + validate.mac_from_name("t1"),
        "        ip: 10.3.0.1"]
    assert show[0] == ("switch ls-s (tenant ts, vni 201, subnet 10.2.0.0/24, "
                       "gateway 10.2.0.1)")
    assert "external network ext (cidr 203.0.113.0/24, gateway 203.0.113.1 "\
        "02:ee:ff:00:00:01)" in show
    assert ok(remote, "ids-alerts").splitlines() == [
        "MIDDLEBOX  KIND  SOURCE  TARGET  COUNT  HOSTS  FIRST_SEEN  "
        "LAST_SEEN  REPORTED_BY"]


def test_services_load_twice_changes_nothing(services):
    remote, rundir = services
    before = dump(remote)
    ok(remote, "load", os.path.join(rundir, "services.yaml"))
    assert dump(remote) == before


SVC_BAD_INPUTS = {
    "gateway outside the subnet": (
        ["ls-add", "x", "--vni", "9", "--subnet", "10.9.0.0/24", "--gateway",
         "10.9.1.1"], "gateway 10.9.1.1 is outside subnet 10.9.0.0/24 of "
        "logical switch 'x'"),
    "gateway is the network address": (
        ["ls-add", "x", "--vni", "9", "--subnet", "10.9.0.0/24", "--gateway",
         "10.9.0.0"], "gateway 10.9.0.0 is the network address"),
    "gateway is the broadcast address": (
        ["ls-add", "x", "--vni", "9", "--subnet", "10.9.0.0/24", "--gateway",
         "10.9.0.255"], "gateway 10.9.0.255 is the broadcast address"),
    "ls-add --may-exist, other gateway": (
        ["ls-add", "ls-t", "--vni", "202", "--subnet", "10.3.0.0/24",
         "--tenant", "ts", "--may-exist"],
        "logical switch 'ls-t' already exists with gateway 10.3.0.254 (not "
        "10.3.0.1)"),
    "vm on the default gateway": (
        ["vm-add", "x", "--switch", "ls-s", "--ip", "10.2.0.1"],
        "VM 'x': IP 10.2.0.1 is the gateway of logical switch 'ls-s'; use "
        "another address"),
    "vm on the configured gateway": (
        ["vm-add", "x", "--switch", "ls-t", "--ip", "10.3.0.254"],
        "VM 'x': IP 10.3.0.254 is the gateway of logical switch 'ls-t'"),
    "vm on a vip": (
        ["vm-add", "x", "--switch", "ls-s", "--ip", "10.2.0.100"],
        "VM 'x': IP 10.2.0.100 is a VIP of load balancer 'lb-s' on logical "
        "switch 'ls-s'"),
    "ext-add overlapping": (
        ["ext-add", "ext2", "203.0.113.128/25", "203.0.113.129",
         "02:ee:ff:00:00:02"],
        "external network 'ext2' (203.0.113.128/25) overlaps external "
        "network 'ext' (203.0.113.0/24)"),
    "ext-add gateway outside": (
        ["ext-add", "ext2", "198.51.100.0/24", "198.51.101.1",
         "02:ee:ff:00:00:02"],
        "gateway IP 198.51.101.1 is outside external network "
        "198.51.100.0/24"),
    "ext-add bad mac": (
        ["ext-add", "ext2", "198.51.100.0/24", "198.51.100.1", "01:00:5e:"
         "00:00:01"], "invalid MAC '01:00:5e:00:00:01': it is a multicast"),
    "ext-add missing mac": (
        ["ext-add", "ext2", "198.51.100.0/24", "198.51.100.1"],
        "ext-add: missing GATEWAY_MAC"),
    "duplicate external network": (
        ["ext-add", "ext", "203.0.113.0/24", "203.0.113.1",
         "02:ee:ff:00:00:01"], "external network 'ext' already exists; use "
        "--may-exist"),
    "ext-del in use": (
        ["ext-del", "ext"], "external network 'ext' is still used by "
        "middlebox 'nat-s' dnat rule 203.0.113.10:2222/tcp -> 10.2.0.11:22; "
        "middlebox 'nat-s' snat rule 203.0.113.5,203.0.113.6 ports "
        "1024-65535 (from the switch subnet); delete them first (nat-del)"),
    "ext-del unknown": (["ext-del", "nope"], "unknown external network "
                        "'nope'; use --if-exists"),
    "option of another type": (
        ["mb-add", "x", "ls-s", "--type", "nat", "tier-order=tenant-first"],
        "option tier-order does not apply to nat middlebox 'x'"),
    "mb-set option of another type": (
        ["mb-set", "lb-s", "scan-window=5"],
        "option scan-window does not apply to lb middlebox 'lb-s'"),
    "ports-per-host not a power of two": (
        ["mb-set", "nat-s", "ports-per-host=1000"],
        "invalid value '1000' for option ports-per-host: use a power of two "
        "from 256 to 32768"),
    "ports-per-host too large for a rule": (
        ["nat-add", "nat-s", "snat", "203.0.113.20", "--port-range",
         "4096-8191", "--", "mb-set", "nat-s", "ports-per-host=8192"],
        "port range 4096-8191 holds no aligned block of 8192 ports"),
    "ids option zero": (["mb-set", "ids-s", "synflood-threshold=0"],
                        "invalid value '0' for option synflood-threshold: "
                        "use an integer from 1 to 1000000"),
    "firewall rule on a nat middlebox": (
        ["fw-add", "nat-s", "1", "to-vm", "any", "allow"],
        "middlebox 'nat-s' is a nat middlebox; firewall rules need a "
        "firewall middlebox"),
    "nat-add on a firewall": (
        ["nat-add", "fw-s", "snat", "203.0.113.20"],
        "middlebox 'fw-s' is a firewall middlebox; NAT rules need a nat "
        "middlebox (mb-add --type nat)"),
    "nat-add unknown middlebox": (
        ["nat-add", "nope", "snat", "203.0.113.20"],
        "unknown middlebox 'nope'; create it first (mb-add --type nat)"),
    "nat-add bad type": (["nat-add", "nat-s", "pat", "203.0.113.20"],
                         "invalid NAT type 'pat': use snat or dnat"),
    "snat outside every external network": (
        ["nat-add", "nat-s", "snat", "198.51.100.5"],
        "external IP 198.51.100.5 is not inside any external network; add "
        "one first (ext-add)"),
    "snat on the external gateway": (
        ["nat-add", "nat-s", "snat", "203.0.113.20,203.0.113.1"],
        "external IP 203.0.113.1 is the gateway of external network 'ext'"),
    "snat overlapping another middlebox's snat": (
        ["nat-add", "nat-u", "snat", "203.0.113.6", "--port-range",
         "30000-40959"],
        "snat rule 203.0.113.6 ports 30000-40959 (from the switch subnet) "
        "overlaps middlebox 'nat-s' snat rule 203.0.113.5,203.0.113.6 ports "
        "1024-65535 (from the switch subnet) on external IP 203.0.113.6"),
    "dnat inside an snat port range": (
        ["nat-add", "nat-u", "dnat", "203.0.113.5", "10.4.0.11",
         "--external-port", "8080"],
        "dnat rule 203.0.113.5:8080 -> 10.4.0.11 overlaps middlebox 'nat-s' "
        "snat rule"),
    "dnat on the same port": (
        ["nat-add", "nat-s", "dnat", "203.0.113.10", "10.2.0.12",
         "--external-port", "2222"],
        "dnat rule 203.0.113.10:2222 -> 10.2.0.12 overlaps middlebox 'nat-s' "
        "dnat rule 203.0.113.10:2222/tcp -> 10.2.0.11:22"),
    "dnat of a whole address in use": (
        ["nat-add", "nat-u", "dnat", "203.0.113.10", "10.4.0.11"],
        "dnat rule 203.0.113.10 -> 10.4.0.11 overlaps middlebox 'nat-s' "
        "dnat rule 203.0.113.10:2222/tcp"),
    "dnat outside the subnet": (
        ["nat-add", "nat-s", "dnat", "203.0.113.11", "10.3.0.1"],
        "dnat logical IP 10.3.0.1 is outside subnet 10.2.0.0/24 of logical "
        "switch 'ls-s'"),
    "dnat without logical ip": (
        ["nat-add", "nat-s", "dnat", "203.0.113.11"],
        "a dnat rule needs the logical IP"),
    "dnat logical port alone": (
        ["nat-add", "nat-s", "dnat", "203.0.113.11", "10.2.0.12",
         "--logical-port", "22"],
        "a dnat rule's logical port needs an external port"),
    "snat with a protocol": (
        ["nat-add", "nat-s", "snat", "203.0.113.20", "--protocol", "tcp"],
        "a snat rule takes no protocol"),
    "bad port range": (
        ["nat-add", "nat-s", "snat", "203.0.113.20", "--port-range",
         "5000-4000"], "invalid port range '5000-4000': use LO-HI with "
        "1 <= LO <= HI <= 65535"),
    "port range past 65535": (
        ["nat-add", "nat-s", "snat", "203.0.113.20", "--port-range",
         "1024-70000"], "invalid port range '1024-70000'"),
    "bad external port": (
        ["nat-add", "nat-s", "dnat", "203.0.113.11", "10.2.0.12",
         "--external-port", "0"], "invalid external port '0': use an "
        "integer from 1 to 65535"),
    "snat source outside the subnet": (
        ["nat-add", "nat-s", "snat", "203.0.113.20", "10.3.0.0/24"],
        "snat source 10.3.0.0/24 is not inside subnet 10.2.0.0/24"),
    "duplicate nat rule": (
        ["nat-add", "nat-s", "snat", "203.0.113.6,203.0.113.5"],
        "middlebox 'nat-s' already has a snat rule 203.0.113.5,203.0.113.6 "
        "ports 1024-65535 (from the switch subnet); use --may-exist"),
    "nat rules overlapping in one transaction": (
        ["nat-add", "nat-u", "snat", "203.0.113.30", "--", "nat-add",
         "nat-s", "dnat", "203.0.113.30", "10.2.0.12"],
        "dnat rule 203.0.113.30 -> 10.2.0.12 overlaps middlebox 'nat-u' "
        "snat rule 203.0.113.30"),
    "nat-del missing": (["nat-del", "nat-s", "203.0.113.99"],
                        "middlebox 'nat-s' has no NAT rule for external IP "
                        "203.0.113.99; use --if-exists"),
    "nat-del wrong type": (["nat-del", "nat-s", "203.0.113.10", "--type",
                            "snat"], "middlebox 'nat-s' has no snat rule for "
                           "external IP 203.0.113.10"),
    "nat-del unknown uuid": (
        ["nat-del", "nat-s", "01234567-89ab-cdef-0123-456789abcdef"],
        "middlebox 'nat-s' has no NAT rule "
        "01234567-89ab-cdef-0123-456789abcdef"),
    "nat-del bad uuid": (["nat-del", "nat-s", "nonsense"],
                         "invalid UUID 'nonsense'"),
    "lb-add on a nat middlebox": (
        ["lb-add", "nat-s", "10.2.0.101:80"],
        "middlebox 'nat-s' is a nat middlebox; VIPs need an lb middlebox "
        "(mb-add --type lb)"),
    "vip on a vm": (["lb-add", "lb-s", "10.2.0.12:80"],
                    "VIP 10.2.0.12 is the address of VM 's2' on logical "
                    "switch 'ls-s'"),
    "vip on the gateway": (["lb-add", "lb-s", "10.2.0.1:80"],
                           "VIP 10.2.0.1 is the gateway of logical switch "
                           "'ls-s'"),
    "vip defined twice": (["lb-add", "lb-s", "10.2.0.100:80"],
                          "load balancer 'lb-s' VIP 10.2.0.100:80/tcp "
                          "already exists; use --may-exist"),
    "vip of another load balancer": (
        ["mb-add", "lb-s2", "ls-s", "--type", "lb", "--", "lb-add", "lb-s2",
         "10.2.0.100:80"],
        "VIP 10.2.0.100:80/tcp is already defined by load balancer 'lb-s' "
        "on logical switch 'ls-s'"),
    "backend of another tenant": (
        ["lb-add", "lb-s", "10.2.0.101:80", "10.4.0.11:80"],
        "backend 10.4.0.11:80 is outside every subnet of tenant 'ts'"),
    "duplicate backend": (
        ["lb-add", "lb-s", "10.2.0.101:80", "10.2.0.11:80", "10.2.0.11:80"],
        "backend 10.2.0.11:80 is listed twice"),
    "backend already there": (
        ["lb-backend-add", "lb-s", "10.2.0.100:80", "10.3.0.1:8080"],
        "load balancer 'lb-s' VIP 10.2.0.100:80/tcp already has backend "
        "10.3.0.1:8080"),
    "backend-add outside the tenant": (
        ["lb-backend-add", "lb-s", "10.2.0.100:80", "10.4.0.11:80"],
        "backend 10.4.0.11:80 is outside every subnet of tenant 'ts'"),
    "backend-del missing": (
        ["lb-backend-del", "lb-s", "10.2.0.100:80", "10.2.0.12:8080"],
        "has no backend 10.2.0.12:8080; use --if-exists"),
    "bad vip": (["lb-add", "lb-s", "10.2.0.101"],
                "invalid VIP '10.2.0.101': use IP:PORT"),
    "bad algorithm": (["lb-add", "lb-s", "10.2.0.101:80", "--algorithm",
                       "random"], "invalid algorithm 'random'"),
    "bad lb protocol": (["lb-add", "lb-s", "10.2.0.101:80", "--protocol",
                         "sctp"], "invalid protocol 'sctp': use tcp or udp"),
    "lb-del missing": (["lb-del", "lb-s", "10.2.0.100:80", "--protocol",
                        "udp"], "load balancer 'lb-s' has no VIP "
                       "10.2.0.100:80/udp; use --if-exists"),
    "lb-set unknown option": (["lb-set", "lb-s", "10.2.0.100:80",
                               "weight=3"], "unknown VIP option 'weight'"),
    "lb-set bad value": (["lb-set", "lb-s", "10.2.0.100:80",
                          "health-rise=0"], "invalid value '0' for option "
                         "health-rise: use an integer from 1 to 100"),
    "lb-set timeout above interval": (
        ["lb-set", "lb-s", "10.2.0.100:80", "health-timeout=2"],
        "health-timeout 2s is longer than health-interval 1s"),
    "lb-set unknown vip": (["lb-set", "lb-s", "10.2.0.100:81",
                            "health-rise=3"],
                           "load balancer 'lb-s' has no VIP 10.2.0.100:81"),
    "chain with a middlebox twice": (
        ["steer-add", "ls-s", "5", "any", "fw-s,lb-s,fw-s"],
        "invalid chain 'fw-s,lb-s,fw-s': middlebox 'fw-s' appears twice"),
    "chain with a middlebox of another switch": (
        ["steer-add", "ls-s", "5", "any", "fw-s,nat-u"],
        "middlebox 'nat-u' serves logical switch 'ls-u', not 'ls-s'"),
    "chain with two nat middleboxes": (
        ["mb-add", "nat-s2", "ls-s", "--type", "nat", "--", "steer-add",
         "ls-s", "5", "any", "nat-s,nat-s2"],
        "chain nat-s,nat-s2 has nat middleboxes nat-s, nat-s2; a chain holds "
        "at most one nat middlebox"),
    "chain with two load balancers": (
        ["mb-add", "lb-s2", "ls-s", "--type", "lb", "--", "steer-add",
         "ls-s", "5", "any", "lb-s2,fw-s,lb-s"],
        "a chain holds at most one lb middlebox"),
    "chain with an unknown middlebox": (
        ["steer-add", "ls-s", "5", "any", "fw-s,nope"],
        "unknown middlebox 'nope'"),
    "mb-del of a middlebox in a chain": (
        ["mb-del", "ids-s"], "middlebox 'ids-s' is still used by steering "
        "policy ls-s priority 100; delete it first (steer-del ls-s 100)"),
    "nat-list of an unknown middlebox": (["nat-list", "nope"],
                                         "unknown middlebox 'nope'"),
    "lb-list of an unknown middlebox": (["lb-list", "nope"],
                                        "unknown middlebox 'nope'"),
}


@pytest.mark.parametrize("args,message", SVC_BAD_INPUTS.values(),
                         ids=SVC_BAD_INPUTS.keys())
def test_bad_service_input_is_one_line_and_changes_nothing(services, args,
                                                           message):
    remote, _ = services
    before = dump(remote)
    assert_one_line_error(mbxctl(remote, *args), message)
    assert dump(remote) == before


SVC_BAD_FILES = {
    "unknown nat key": (
        "middleboxes:\n  - {name: nat-x, type: nat, switch: ls-s, nat_rules: "
        "[{type: snat, external_ip: 203.0.113.20}]}\n",
        "middleboxes[0] (nat-x): nat_rules[0]: unknown key 'external_ip'; "
        "expected type, external_ips, logical_ip, port_range"),
    "nat overlap with the database": (
        "middleboxes:\n  - {name: nat-x, type: nat, switch: ls-s, nat_rules: "
        "[{type: dnat, external_ip: 203.0.113.6, logical_ip: 10.2.0.12, "
        "external_port: 4000}]}\n",
        "middleboxes[0] (nat-x): nat_rules[0]: dnat rule 203.0.113.6:4000 -> "
        "10.2.0.12 overlaps middlebox 'nat-s' snat rule"),
    "external network taken away": (
        "external_networks:\n  - {name: ext, cidr: 198.51.100.0/24, "
        "gateway_ip: 198.51.100.1, gateway_mac: \"02:ee:ff:00:00:01\"}\n",
        "middlebox 'nat-s' dnat rule 203.0.113.10:2222/tcp -> 10.2.0.11:22: "
        "external IP 203.0.113.10 is not inside any external network"),
    "gateway moved onto a vm": (
        "switches:\n  - {name: ls-s, tenant: ts, vni: 201, subnet: "
        "10.2.0.0/24, gateway: 10.2.0.12}\n",
        "VM 's2': IP 10.2.0.12 is the gateway of logical switch 'ls-s'"),
    "gateway moved onto a vip": (
        "switches:\n  - {name: ls-s, tenant: ts, vni: 201, subnet: "
        "10.2.0.0/24, gateway: 10.2.0.100}\n",
        "load balancer 'lb-s' VIP 10.2.0.100:80/tcp: VIP 10.2.0.100 is the "
        "gateway of logical switch 'ls-s'"),
    "vip backend outside the tenant": (
        "middleboxes:\n  - name: lb-s\n    type: lb\n    switch: ls-s\n"
        "    vips: [{vip: \"10.2.0.100:80\", backends: [\"10.4.0.11:80\"]}]\n",
        "middleboxes[0] (lb-s): vips[0]: backend 10.4.0.11:80 is outside "
        "every subnet of tenant 'ts'"),
    "misspelt top-level key": (
        "middlebox:\n", "topology: unknown key 'middlebox'"),
    "vip on a vm of the database": (
        "middleboxes:\n  - name: lb-s\n    type: lb\n    switch: ls-s\n"
        "    vips: [{vip: \"10.2.0.11:80\"}]\n",
        "middleboxes[0] (lb-s): vips[0]: VIP 10.2.0.11 is the address of VM "
        "'s1'"),
    "type changed under a chain": (
        "middleboxes:\n  - {name: fw-s, type: nat, switch: ls-s}\n",
        "logical switch 'ls-s' steering policy at priority 100 (any -> "
        "fw-s,lb-s,nat-s,ids-s): chain fw-s,lb-s,nat-s,ids-s has nat "
        "middleboxes fw-s, nat-s"),
    "chain and middlebox": (
        "steering:\n  - {switch: ls-s, priority: 1, match: any, chain: "
        "[fw-s], middlebox: fw-s}\n",
        "steering[0] (ls-s priority 1): give chain or middlebox, not both"),
    "chain twice": (
        "steering:\n  - {switch: ls-s, priority: 1, match: any, chain: "
        "[fw-s, fw-s]}\n", "steering[0] (ls-s priority 1): invalid chain"),
}


@pytest.mark.parametrize("text,message", SVC_BAD_FILES.values(),
                         ids=SVC_BAD_FILES.keys())
def test_bad_service_file_is_one_line_and_changes_nothing(services, text,
                                                          message):
    remote, rundir = services
    path = os.path.join(rundir, "bad.yaml")
    with open(path, "w") as f:
        f.write(text)
    before = dump(remote)
    assert_one_line_error(mbxctl(remote, "ext-add", "x", "198.51.100.0/24",
                                 "198.51.100.1", "02:00:00:00:00:01", "--",
                                 "load", path), path, message)
    assert dump(remote) == before


def test_service_commands_appear_in_lists_and_show(nb):
    ok(nb, "ls-add", "ls-a", "--vni", "101", "--subnet", "10.0.0.0/24",
       "--tenant", "ta", "--gateway", "10.0.0.254",
       "--", "ls-add", "ls-b", "--vni", "102", "--subnet", "10.0.1.0/24",
       "--tenant", "ta",
       "--", "vm-add", "a1", "--switch", "ls-a", "--ip", "10.0.0.1",
       "--", "vm-add", "a2", "--switch", "ls-a", "--ip", "10.0.0.2",
       "--", "vm-add", "b1", "--switch", "ls-b", "--ip", "10.0.1.11",
       "--", "ext-add", "ext", "203.0.113.0/24", "203.0.113.1",
       "02:EE:FF:00:00:01",
       "--", "ext-add", "ext", "203.0.113.0/24", "203.0.113.1",
       "02:ee:ff:00:00:01", "--may-exist")
    ok(nb, "mb-add", "fw-a", "ls-a",
       "--", "mb-add", "nat-a", "ls-a", "--type", "nat",
       "ports-per-host=512",
       "--", "mb-add", "lb-a", "ls-a", "--type", "lb", "timeout-tcp-syn=5",
       "--", "mb-add", "ids-a", "ls-a", "--type", "ids", "scan-threshold=5",
       "scan-window=30", "synflood-threshold=100", "synflood-window=3",
       "--", "nat-add", "nat-a", "snat", "203.0.113.5,203.0.113.6",
       "10.0.0.0/25", "--port-range", "1024-32767",
       "--", "nat-add", "nat-a", "snat", "203.0.113.6", "--port-range",
       "32768-65535",
       "--", "nat-add", "nat-a", "dnat", "203.0.113.6", "10.0.0.2",
       "--protocol", "udp", "--external-port", "53",
       "--", "nat-add", "nat-a", "dnat", "203.0.113.6", "10.0.0.2",
       "--protocol", "tcp", "--external-port", "53",
       "--", "nat-add", "nat-a", "dnat", "203.0.113.7", "10.0.0.1",
       "--", "nat-add", "nat-a", "dnat", "203.0.113.7", "10.0.0.1",
       "--may-exist",
       "--", "lb-add", "lb-a", "10.0.0.100:80", "10.0.0.1:8080",
       "10.0.1.11:8080", "--algorithm", "least-connections",
       "--", "lb-add", "lb-a", "10.0.0.100:80", "--protocol", "udp",
       "--", "lb-backend-add", "lb-a", "10.0.0.100:80", "10.0.0.2:8080",
       "--protocol", "tcp",
       "--", "lb-backend-add", "lb-a", "10.0.0.100:80", "10.0.0.2:8080",
       "--protocol", "tcp", "--may-exist",
       "--", "lb-set", "lb-a", "10.0.0.100:80", "--protocol", "tcp",
       "health-interval=1.5", "health-timeout=0.5", "health-fall=3",
       "--", "steer-add", "ls-a", "100", "any", "fw-a,lb-a,nat-a,ids-a",
       "--", "steer-add", "ls-a", "200", "proto=icmp", "ids-a")
    assert [line.split()[:6] for line in ok(nb, "nat-list").splitlines()] \
        == [["MIDDLEBOX", "TYPE", "EXTERNAL_IP", "LOGICAL_IP", "PROTOCOL",
             "PORTS"],
            ["nat-a", "dnat", "203.0.113.6", "10.0.0.2", "tcp", "53"],
            ["nat-a", "dnat", "203.0.113.6", "10.0.0.2", "udp", "53"],
            ["nat-a", "dnat", "203.0.113.7", "10.0.0.1", "any", "-"],
            ["nat-a", "snat", "203.0.113.5,203.0.113.6", "10.0.0.0/25",
             "tcp,udp", "1024-32767"],
            ["nat-a", "snat", "203.0.113.6", "-", "tcp,udp", "32768-65535"]]
    assert columns(ok(nb, "lb-list", "lb-a")) == [
        ["MIDDLEBOX", "VIP", "PROTOCOL", "ALGORITHM", "BACKENDS", "OPTIONS"],
        ["lb-a", "10.0.0.100:80", "tcp", "least-connections",
         "10.0.0.1:8080=unknown, 10.0.0.2:8080=unknown, "
         "10.0.1.11:8080=unknown",
         "health-fall=3, health-interval=1.5, health-timeout=0.5"],
        ["lb-a", "10.0.0.100:80", "udp", "hash", "-", "-"]]
    assert ok(nb, "steer-list").splitlines()[1:] == [
        "ls-a    200       ids-a                  proto=icmp",
        "ls-a    100       fw-a,lb-a,nat-a,ids-a  any"]
    show = ok(nb, "show").splitlines()
    assert "    middlebox ids-a (ids)" in show
    assert ("        options: scan-threshold=5, scan-window=30, "
            "synflood-threshold=100, synflood-window=3") in show
    assert "        dnat rule 203.0.113.7 -> 10.0.0.1" in show
    assert "        vip 10.0.0.100:80/udp hash: -" in show

    # status written by the controller shows in lb-list, mb-list and show
    api = MbxNb.connect(nb)
    try:
        snap = api.snapshot()
        tcp = [v for v in snap.vips["lb-a"] if v.protocol == "tcp"][0]
        api.set_vip_status(tcp.uuid, {"10.0.0.1:8080": "up",
                                      "10.0.0.2:8080": "down"}).execute(
            check_error=True)
        api.set_middlebox_status("ids-a", {"alerts": "1"}).execute(
            check_error=True)
    finally:
        api.close()
    assert "10.0.0.1:8080=up, 10.0.0.2:8080=down, 10.0.1.11:8080=unknown" \
        in ok(nb, "lb-list")
    assert ok(nb, "mb-list").splitlines()[2].split() == [
        "ids-a", "ids", "ls-a", "-", "-", "scan-threshold=5,",
        "scan-window=30,", "synflood-threshold=100,", "synflood-window=3",
        "alerts=1"]
    assert "        status: alerts=1" in ok(nb, "show").splitlines()
    subprocess.run(["ovsdb-client", "transact", nb, json.dumps(
        ["MBX_Southbound",
         {"op": "insert", "table": "IDS_Alert",
          "row": {"middlebox": "ids-a", "kind": "port-scan",
                  "source": "10.0.0.1", "target": "10.0.0.2", "count": 16,
                  "hosts": ["set", ["h2", "h1"]], "first_seen": 1000,
                  "last_seen": 2000, "reported_by": "h1"}}])],
        check=True, capture_output=True)
    assert columns(ok(nb, "ids-alerts", "ids-a")) == [
        ["MIDDLEBOX", "KIND", "SOURCE", "TARGET", "COUNT", "HOSTS",
         "FIRST_SEEN", "LAST_SEEN", "REPORTED_BY"],
        ["ids-a", "port-scan", "10.0.0.1", "10.0.0.2", "16", "h1,h2",
         "1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z", "h1"]]
    assert ok(nb, "ids-alerts", "fw-a").splitlines()[1:] == []

    # deletions
    dnat_udp = [line.split()[-1] for line in ok(nb, "nat-list").splitlines()
                if " udp " in line][0]
    assert_one_line_error(
        mbxctl(nb, "nat-del", "nat-a", "203.0.113.6"),
        "middlebox 'nat-a' has 4 NAT rules for external IP 203.0.113.6: ",
        "choose one with --type and --external-port, or by UUID (nat-list)")
    assert_one_line_error(
        mbxctl(nb, "nat-del", "nat-a", "203.0.113.6", "--type", "dnat"),
        "middlebox 'nat-a' has 2 NAT rules")
    ok(nb, "nat-del", "nat-a", dnat_udp,
       "--", "nat-del", "nat-a", "203.0.113.6", "--type", "dnat",
       "--external-port", "53",
       "--", "nat-del", "nat-a", "203.0.113.7",
       "--", "nat-del", "nat-a", "203.0.113.7", "--if-exists",
       "--", "nat-del", "nat-a", "203.0.113.5")
    assert len(ok(nb, "nat-list").splitlines()) == 2
    assert row_count(nb, "NAT_Rule") == 1
    ok(nb, "lb-backend-del", "lb-a", "10.0.0.100:80", "10.0.0.1:8080",
       "--protocol", "tcp",
       "--", "lb-backend-del", "lb-a", "10.0.0.100:80", "10.0.0.1:8080",
       "--protocol", "tcp", "--if-exists",
       "--", "lb-set", "lb-a", "10.0.0.100:80", "--protocol", "tcp",
       "health-fall=", "--algorithm", "source-hash")
    assert ok(nb, "lb-list").splitlines()[1].split()[3:] == [
        "source-hash", "10.0.0.2:8080=down,", "10.0.1.11:8080=unknown",
        "health-interval=1.5,", "health-timeout=0.5"]
    assert_one_line_error(mbxctl(nb, "lb-del", "lb-a", "10.0.0.100:80"),
                          "load balancer 'lb-a' has VIPs 10.0.0.100:80 for "
                          "tcp and udp; choose one with --protocol")
    ok(nb, "lb-del", "lb-a", "10.0.0.100:80", "--protocol", "udp",
       "--", "lb-del", "lb-a", "10.0.0.100:80",
       "--", "lb-del", "lb-a", "10.0.0.100:80", "--if-exists")
    assert row_count(nb, "LB_VIP") == 0
    ok(nb, "steer-del", "ls-a", "--", "mb-del", "nat-a", "--", "mb-del",
       "lb-a", "--", "mb-del", "ids-a", "--", "mb-del", "fw-a",
       "--", "ext-del", "ext", "--", "ext-del", "ext", "--if-exists")
    assert row_count(nb, "NAT_Rule") == 0
    assert ok(nb, "ext-list").splitlines() == [
        "NAME  CIDR  GATEWAY_IP  GATEWAY_MAC"]


def test_load_keeps_rows_that_stay_and_vip_status(nb, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SERVICES)
    ok(nb, "load", str(path))
    api = MbxNb.connect(nb)
    try:
        snap = api.snapshot()
        [vip] = snap.vips["lb-s"]
        api.set_vip_status(vip.uuid, {"10.2.0.11:8080": "up"}).execute(
            check_error=True)
        # Changed backends and algorithm: the row stays, with its status.
        path.write_text(SERVICES.replace(
            'backends: ["10.2.0.11:8080", "10.3.0.1:8080"]',
            'algorithm: source-hash, backends: ["10.2.0.11:8080"]').replace(
            "{type: snat, external_ips: [203.0.113.5, 203.0.113.6]}",
            "{type: snat, external_ips: [203.0.113.5, 203.0.113.6]}\n"
            "      - {type: snat, external_ips: [203.0.113.7]}").replace(
            "chain: [fw-s, lb-s, nat-s, ids-s]", "chain: [ids-s, nat-s]"))
        ok(nb, "load", str(path))
        after = api.snapshot()
        [changed] = after.vips["lb-s"]
        assert changed.uuid == vip.uuid
        assert changed.algorithm == "source-hash"
        assert changed.backends == (("10.2.0.11", 8080),)
        assert changed.status == {"10.2.0.11:8080": "up"}
        before_uuids = {r.uuid for r in snap.nat_rules["nat-s"]}
        assert before_uuids < {r.uuid for r in after.nat_rules["nat-s"]}
        assert len(after.nat_rules["nat-s"]) == 3
        assert after.policies[-1].chain == ("ids-s", "nat-s")
        # A middlebox listed without VIPs loses them.
        path.write_text(SERVICES.replace(
            "  - name: lb-s\n    type: lb\n    switch: ls-s\n    vips:\n"
            "      - {vip: \"10.2.0.100:80\", backends: [\"10.2.0.11:8080\", "
            "\"10.3.0.1:8080\"],\n         options: {health-interval: 1, "
            "health-timeout: 0.5}}\n",
            "  - {name: lb-s, type: lb, switch: ls-s}\n"))
        ok(nb, "load", str(path))
        assert api.snapshot().vips == {}
        assert row_count(nb, "LB_VIP") == 0
    finally:
        api.close()


def test_api_snapshot_of_services_and_status_writers(nb, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SERVICES)
    ok(nb, "init", "--", "load", str(path))
    sb_transact(
        nb,
        {"op": "insert", "table": "Shared_State",
         "row": {"middlebox": "lb-s", "host": "h2", "service": "lb-health",
                 "key": "10.2.0.11:8080", "value": "up", "stamp": 7}},
        {"op": "insert", "table": "Shared_State",
         "row": {"middlebox": "lb-s", "host": "h1", "service": "lb-health",
                 "key": "10.2.0.11:8080", "value": "down", "stamp": 5}},
        {"op": "insert", "table": "IDS_Alert",
         "row": {"middlebox": "ids-s", "kind": "syn-flood",
                 "source": "10.2.0.12", "target": "10.2.0.11:80",
                 "count": 300, "hosts": ["set", ["h1"]], "first_seen": 5,
                 "last_seen": 6, "reported_by": "h1"}})
    add_chassis(nb, "h1", "h2")
    api = MbxNb.connect(nb)
    sb = MbxSb.connect(nb, nb=api)
    try:
        snap = api.snapshot()
        assert snap.switches["ls-s"].gateway == "10.2.0.1"
        assert snap.switches["ls-t"].gateway == "10.3.0.254"
        assert snap.external_networks == {"ext": ExternalNetInfo(
            "ext", "203.0.113.0/24", "203.0.113.1", "02:ee:ff:00:00:01")}
        assert [(r.type, r.external_ips) for r in snap.nat_rules["nat-s"]] \
            == [("dnat", ("203.0.113.10",)),
                ("snat", ("203.0.113.5", "203.0.113.6"))]
        assert all(r.uuid and r.middlebox == "nat-s"
                   for r in snap.nat_rules["nat-s"])
        assert "nat-u" not in snap.nat_rules
        [vip] = snap.vips["lb-s"]
        assert (vip.vip, vip.port, vip.protocol, vip.backends) == (
            "10.2.0.100", 80, "tcp", (("10.2.0.11", 8080),
                                      ("10.3.0.1", 8080)))
        assert snap.policies[-1] == PolicyInfo(
            "ls-s", 100, "any", ("fw-s", "lb-s", "nat-s", "ids-s"))
        assert [r.type for r in api.nat_list("nat-s")] == ["dnat", "snat"]
        assert api.lb_list() == [vip]
        assert [e.name for e in api.ext_list()] == ["ext"]

        # What the daemons publish is in the southbound database.
        runtime = sb.snapshot()
        assert runtime.shared_state == (
            SharedRecord("lb-s", "h1", "lb-health", "10.2.0.11:8080", "down",
                         5),
            SharedRecord("lb-s", "h2", "lb-health", "10.2.0.11:8080", "up",
                         7))
        assert runtime.ids_alerts == (AlertRecord(
            "ids-s", "syn-flood", "10.2.0.12", "10.2.0.11:80", 300, ("h1",),
            5, 6, "h1"),)
        assert sb.ids_alerts("fw-s") == []
        assert [h.name for h in sb.host_list()] == ["h1", "h2"]

        chain = ("fw-s", "lb-s", "nat-s", "ids-s")
        block = "snat-block:" + snap.nat_rules["nat-s"][1].uuid
        sb.set_slices({(chain, "h1"): 3, (chain, "h2"): 3,
                       (("fw-s",), "h1"): 4, (chain, "h9"): 6},
                      {(chain, "h1"): {block: "203.0.113.5:1024-2047"},
                       (chain, "h2"): {block: "203.0.113.5:2048-3071"}}
                      ).execute(check_error=True)
        runtime = sb.snapshot()
        assert runtime.slices == {(chain, "h1"): 3, (chain, "h2"): 3,
                                  (("fw-s",), "h1"): 4}
        assert runtime.slice_status[(chain, "h2")] == {
            block: "203.0.113.5:2048-3071"}
        assert runtime.slice_status[(("fw-s",), "h1")] == {}
        first = dump(nb)
        sb.set_slices(runtime.slices, runtime.slice_status).execute(
            check_error=True)
        assert dump(nb) == first                # nothing to change
        sb.set_slices({(chain, "h1"): 3}).execute(check_error=True)
        runtime = sb.snapshot()
        assert runtime.slices == {(chain, "h1"): 3}
        assert runtime.slice_status == {(chain, "h1"): {}}
        assert row_count(nb, "Slice") == 1
        with pytest.raises(MbxError, match="a slice's chain names at least "
                                           "one middlebox"):
            sb.set_slices({((), "h1"): 3})
        with pytest.raises(MbxError, match="invalid slice status"):
            sb.set_slices({(chain, "h1"): 3}, {(chain, "h1"): {"a": 1}})

        api.set_vip_status(vip.uuid, {"10.2.0.11:8080": "up",
                                      "10.3.0.1:8080": "down"}).execute(
            check_error=True)
        # a VIP or middlebox that is gone: nothing happens
        api.set_vip_status("01234567-89ab-cdef-0123-456789abcdef",
                           {"a": "b"}).execute(check_error=True)
        api.set_middlebox_status("gone", {"a": "b"}).execute(
            check_error=True)
        api.set_middlebox_status("nat-s", {"blocks": "2"}).execute(
            check_error=True)
        snap = api.snapshot()
        assert snap.vips["lb-s"][0].status == {"10.2.0.11:8080": "up",
                                               "10.3.0.1:8080": "down"}
        assert snap.middlebox_status["nat-s"] == {"blocks": "2"}
        assert snap.middlebox_status["fw-s"] == {}
        with pytest.raises(MbxError, match="invalid UUID"):
            api.set_vip_status("nope", {})

        # A chain with a position missing (a row written behind mbx's back)
        # is ignored, and the next set_slices deletes it.
        sb.set_slices({(("fw-s", "lb-s", "nat-s"), "h1"): 5}).execute(
            check_error=True)
        sb_transact(nb, {"op": "mutate", "table": "Slice", "where": [],
                         "mutations": [["chain", "delete", ["set", [1]]]]})
        # That change reaches the API's replica asynchronously: wait for it.
        deadline = time.monotonic() + 5
        while sb.snapshot().slices and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sb.snapshot().slices == {}
        assert row_count(nb, "Slice") == 1
        sb.set_slices({}).execute(check_error=True)
        assert row_count(nb, "Slice") == 0
    finally:
        sb.close()
        api.close()


SCHEMA_1_5_0 = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "mbx_nb-1.5.0.ovsschema")


def nb_query(db_path, table, columns):
    """The rows of a config database file's table (``ovsdb-tool query``)."""
    reply = json.loads(subprocess.run(
        ["ovsdb-tool", "query", str(db_path), json.dumps(
            ["MBX_Northbound", {"op": "select", "table": table, "where": [],
                                "columns": columns}])],
        check=True, capture_output=True, text=True).stdout)
    return reply[0]["rows"]


def schema_1_5_0():
    """The last 1.x schema: the runtime tables still in it."""
    with open(SCHEMA_1_5_0) as f:
        return json.load(f)


def schema_1_2_0():
    """The 1.2.0 schema: before migrations."""
    schema = schema_1_5_0()
    schema["version"] = "1.2.0"
    del schema["tables"]["Migration"]
    del schema["tables"]["Host"]["columns"]["migration_address"]
    return schema


def schema_1_1_0():
    """The 1.1.0 schema: before gateways, services and chains."""
    schema = schema_1_2_0()
    schema["version"] = "1.1.0"
    tables = schema["tables"]
    for name in ("NAT_Rule", "LB_VIP", "External_Network", "Shared_State",
                 "IDS_Alert"):
        del tables[name]
    del tables["Logical_Switch"]["columns"]["gateway"]
    mb = tables["Middlebox"]["columns"]
    mb["type"]["type"]["key"]["enum"] = ["set", ["firewall"]]
    for column in ("nat_rules", "vips", "status"):
        del mb[column]

    def ref(kind):
        return {"type": {"key": {"type": "uuid", "refTable": "Middlebox",
                                 "refType": kind}, "min": 0, "max": 1}}
    del tables["Steering_Policy"]["columns"]["chain"]
    tables["Steering_Policy"]["columns"]["middlebox"] = ref("strong")
    del tables["Slice"]["columns"]["chain"]
    del tables["Slice"]["columns"]["status"]
    tables["Slice"]["columns"]["middlebox"] = ref("weak")
    return schema


def test_schema_1_1_0_database_is_converted_and_keeps_its_policies(tmp_path):
    old_schema = tmp_path / "mbx_nb-1.1.0.ovsschema"
    old_schema.write_text(json.dumps(schema_1_1_0()))
    db = tmp_path / "db"
    subprocess.run(["ovsdb-tool", "create", str(db), str(old_schema)],
                   check=True)
    subprocess.run(["ovsdb-tool", "transact", str(db), json.dumps(
        ["MBX_Northbound",
         {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls",
          "row": {"name": "old", "tenant": "t", "vni": 7,
                  "subnet": "10.7.0.0/24"}},
         {"op": "insert", "table": "Host", "uuid-name": "h1",
          "row": {"name": "h1", "encap_type": "vxlan",
                  "encap_ip": "10.200.0.11",
                  "mgmt_address": "tcp:10.201.0.11:6640"}},
         {"op": "insert", "table": "Middlebox", "uuid-name": "fw",
          "row": {"name": "fw", "type": "firewall",
                  "logical_switch": ["named-uuid", "ls"],
                  "default_action": "deny"}},
         {"op": "insert", "table": "Middlebox", "uuid-name": "fw2",
          "row": {"name": "fw2", "type": "firewall",
                  "logical_switch": ["named-uuid", "ls"],
                  "default_action": "allow"}},
         {"op": "insert", "table": "Steering_Policy",
          "row": {"logical_switch": ["named-uuid", "ls"], "priority": 100,
                  "match": "any", "middlebox": ["named-uuid", "fw"]}},
         {"op": "insert", "table": "Steering_Policy",
          "row": {"logical_switch": ["named-uuid", "ls"], "priority": 90,
                  "match": "proto=udp", "middlebox": ["named-uuid", "fw2"]}},
         {"op": "insert", "table": "Steering_Policy",
          "row": {"logical_switch": ["named-uuid", "ls"], "priority": 200,
                  "match": "proto=icmp"}},
         {"op": "insert", "table": "Slice",
          "row": {"middlebox": ["named-uuid", "fw"],
                  "host": ["named-uuid", "h1"], "tag": 1}}])],
        check=True, capture_output=True)
    pid, remote = start_server(str(tmp_path))      # ensure_db converts it
    try:
        assert subprocess.run(["ovsdb-tool", "db-version", str(db)],
                              capture_output=True, text=True,
                              check=True).stdout.strip() == NB_VERSION
        assert not os.path.exists(str(db) + ".converting")
        assert ok(remote, "steer-list").splitlines() == [
            "SWITCH  PRIORITY  CHAIN   MATCH",
            "old     200       bypass  proto=icmp",
            "old     100       fw      any",
            "old     90        fw2     proto=udp"]
        assert row_count(remote, "Slice") == 0      # southbound: empty
        assert_one_line_error(mbxctl(remote, "mb-del", "fw"),
                              "still used by steering policy old priority "
                              "100")
        assert "old   t       7    10.7.0.0/24  10.7.0.1" in ok(
            remote, "ls-list")
        ok(remote, "steer-add", "old", "1", "any", "fw2,fw")
        assert "    steering 1: any -> fw2,fw" in ok(remote,
                                                     "show").splitlines()
    finally:
        server.stop(pid)
    # converting again is a no-op
    before = db.read_bytes()
    server.ensure_db(str(db))
    assert db.read_bytes() == before


# --- schema 1.3.0: migrations (docs/migration.md) ---------------------------

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                     r"[0-9a-f]{12}")


def sb_api(remote):
    """An MbxSb on ``remote`` that checks VMs in the config database there
    (as mbxctl's); closing it closes both."""
    nb = MbxNb.connect(remote)
    sb = MbxSb.connect(remote, nb=nb)
    close = sb.close

    def close_both():
        close()
        nb.close()
    sb.close = close_both
    return sb


def setup_migrations(remote, rundir):
    """TOPOLOGY plus VM a2 (on no host); hosts h1-h3; a1 on h2, b1 on h1."""
    path = os.path.join(rundir, "mig.yaml")
    with open(path, "w") as f:
        f.write(TOPOLOGY + "  - {name: a2, switch: ls-a, ip: 10.0.0.2}\n")
    ok(remote, "init", "--", "load", path)
    add_chassis(remote, "h1", "h2", "h3", migration=True)
    api = sb_api(remote)
    try:
        api.set_vm_location("a1", "h2", 1).execute(check_error=True)
        api.set_vm_location("b1", "h1", 1).execute(check_error=True)
    finally:
        api.close()


@pytest.fixture(scope="module")
def migrating(tmp_path_factory):
    """setup_migrations(), then: a1 has an active migration h2 -> h3
    (begun); b1 had one h1 -> h3, aborted.  Tests must leave it unchanged."""
    rundir = str(tmp_path_factory.mktemp("nbmig"))
    pid, remote = start_server(rundir)
    setup_migrations(remote, rundir)
    ok(remote, "migrate-begin", "b1", "--to", "h3")
    ok(remote, "migrate-abort", "b1")
    ok(remote, "migrate-begin", "a1", "--to", "h3")
    yield remote
    server.stop(pid)


def test_announced_migration_from_begin_to_done(nb, tmp_path):
    setup_migrations(nb, str(tmp_path))
    out = ok(nb, "migrate-begin", "a1", "--to", "h3")
    assert UUID_RE.fullmatch(out.strip())
    uuid = out.strip()
    api = sb_api(nb)
    try:
        m, = api.snapshot().migrations
        assert (m.uuid, m.vm, m.source, m.destination, m.path, m.status,
                m.stats, m.outcome, m.options) == (
            uuid, "a1", "h2", "h3", "announced", "begun", {}, "",
            {"wait-ms": "3000"})
        assert re.fullmatch(r"[0-9a-f]{32}", m.token)
        assert list(m.timeline) == ["begun"]
        assert abs(m.timeline["begun"] / 1000 - time.time()) < 10
        assert columns(ok(nb, "migration-list")) == [
            ["VM", "HOSTS", "PATH", "STATUS", "ENTRIES", "BYTES", "OUTCOME"],
            ["a1", "h2 -> h3", "announced", "begun", "-", "-", "-"]]
        # the source daemon streams: its keys, written one by one
        api.migration_update(uuid, status="streaming", timeline={
            "streaming": m.timeline["begun"] + 3}).execute(check_error=True)
        api.migration_update(uuid, timeline={"snapshot": m.timeline["begun"]
                                             + 5},
                             stats={"messages": 2}).execute(check_error=True)
        ok(nb, "migrate-stun", "a1")
        m, = api.migrations("a1")
        assert m.status == "stunned"
        assert sorted(m.timeline) == ["begun", "snapshot", "streaming",
                                      "stunned"]
        # the destination imports (its keys; the source's stay)
        api.migration_update(uuid, status="imported", expect=("stunned",),
                             timeline={"imported": m.timeline["stunned"] + 9},
                             stats={"entries": 12, "flows": 24}).execute(
            check_error=True)
        api.migration_update(uuid, stats={"bytes": 4096}).execute(
            check_error=True)
        ok(nb, "migrate-done", "a1")
        m, = api.migrations()
        assert (m.status, m.outcome) == ("done", "ok: 12 connections")
        assert m.stats == {"bytes": 4096, "entries": 12, "flows": 24,
                           "messages": 2}
        assert sorted(m.timeline) == ["begun", "done", "imported",
                                      "snapshot", "streaming", "stunned"]
        # done again: nothing to do
        before = dump(nb)
        ok(nb, "migrate-done", "a1")
        assert dump(nb) == before
        # a final row's status stays; its keys may still be written
        with pytest.raises(MbxError, match=f"migration {uuid} of VM 'a1' "
                           r"has ended \(done\)"):
            api.migration_update(uuid, status="aborted").execute(
                check_error=True)
        with pytest.raises(MbxError, match="is done, not stunned"):
            api.migration_update(uuid, expect=("stunned",)).execute(
                check_error=True)
        assert dump(nb) == before
        # show: fixed times for a fixed text
        api.migration_update(uuid, timeline={
            "begun": 1767323045000, "streaming": 1767323045003,
            "snapshot": 1767323045012, "stunned": 1767323046500,
            "imported": 1767323046512, "done": 1767323046700,
            "cleaned": 1767323046800}).execute(check_error=True)
    finally:
        api.close()
    assert ok(nb, "migration-show", "a1").splitlines() == [
        "migration of VM a1: h2 -> h3 (announced)",
        f"uuid: {uuid}",
        "status: done",
        "begun: 2026-01-02T03:04:05.000Z",
        "timeline:",
        "  +   0.0 ms  begun",
        "  +   3.0 ms  streaming",
        "  +  12.0 ms  snapshot",
        "  +1500.0 ms  stunned",
        "  +1512.0 ms  imported",
        "  +1700.0 ms  done",
        "  +1800.0 ms  cleaned",
        "stats: entries=12, bytes=4096, messages=2, flows=24",
        "options: wait-ms=3000",
        "outcome: ok: 12 connections"]
    # the next migration; the list is oldest first, show the latest
    ok(nb, "migrate-begin", "a1", "--to", "h1")
    assert [row[:4] for row in columns(ok(nb, "migration-list", "a1"))] == [
        ["VM", "HOSTS", "PATH", "STATUS"],
        ["a1", "h2 -> h3", "announced", "done"],
        ["a1", "h2 -> h1", "announced", "begun"]]
    show = ok(nb, "migration-show", "a1").splitlines()
    assert show[0] == "migration of VM a1: h2 -> h1 (announced)"
    assert show[4:] == ["timeline:", "  +   0.0 ms  begun", "stats: -",
                        "options: wait-ms=3000", "outcome: -"]
    ok(nb, "migrate-abort", "a1")
    # the record outlives the VM
    ok(nb, "vm-del", "a1")
    assert [row[3] for row in columns(ok(nb, "migration-list"))] == [
        "STATUS", "done", "aborted"]
    assert columns(ok(nb, "migration-list", "a1"))[2][-1] == \
        "aborted by operator"
    assert "status: aborted" in ok(nb, "migration-show", "a1").splitlines()


BAD_MIGRATIONS = {
    "begin: unknown VM": (["migrate-begin", "nope", "--to", "h1"],
                          "unknown VM 'nope'"),
    "begin: bad VM name": (["migrate-begin", "a b", "--to", "h1"],
                           "invalid VM name 'a b'"),
    "begin: no --to": (["migrate-begin", "a2"],
                       "migrate-begin: missing option --to"),
    "begin: VM on no host": (["migrate-begin", "a2", "--to", "h3"],
                             "VM 'a2' runs on no host (its port exists "
                             "nowhere); nothing to migrate"),
    "begin: unknown host": (["migrate-begin", "b1", "--to", "h9"],
                            "unknown host 'h9'; a host registers itself "
                            "when mbx-chassis starts on it"),
    "begin with an intent change": (
        ["vm-add", "a9", "--switch", "ls-a", "--ip", "10.0.0.9", "--",
         "migrate-begin", "a1", "--to", "h1"],
        "commands on the config database and on the southbound database "
        "(migrate-begin) cannot share one transaction; run them separately"),
    "begin: to its own host": (["migrate-begin", "b1", "--to", "h1"],
                               "VM 'b1' is already on host 'h1'"),
    "begin: while one is active": (
        ["migrate-begin", "a1", "--to", "h1"],
        "VM 'a1' already has an active migration h2 -> h3 (status begun); "
        "end it first (migrate-done or migrate-abort)"),
    "stun: no active migration": (
        ["migrate-stun", "b1"],
        "VM 'b1' has no active migration; begin one first (migrate-begin)"),
    "stun: unknown VM": (["migrate-stun", "nope"], "unknown VM 'nope'"),
    "stun twice in one transaction": (
        ["migrate-stun", "a1", "--", "migrate-stun", "a1"],
        "VM 'a1': its migration h2 -> h3 is already stunned"),
    "stun --wait=hv": (["migrate-stun", "a1", "--wait=hv"],
                       "migrate-stun: argument --wait: ignored explicit "
                       "argument 'hv'"),
    "done: not imported yet": (
        ["migrate-done", "a1"],
        "VM 'a1': its state has not been imported at h3 yet (status begun)"),
    "done: not imported after stun": (
        ["migrate-stun", "a1", "--", "migrate-done", "a1"],
        "VM 'a1': its state has not been imported at h3 yet (status "
        "stunned)"),
    "done: latest aborted": (
        ["migrate-done", "b1"],
        "VM 'b1': its latest migration h1 -> h3 ended aborted (aborted by "
        "operator); nothing to finish"),
    "done: none": (["migrate-done", "a2"], "VM 'a2' has no migration"),
    "done: unknown VM": (["migrate-done", "nope"], "unknown VM 'nope'"),
    "abort: none active": (["migrate-abort", "b1"],
                           "VM 'b1' has no active migration; use "
                           "--if-exists to ignore that"),
    "abort: unknown VM": (["migrate-abort", "nope"], "unknown VM 'nope'"),
    "abort then a failing begin": (
        ["migrate-abort", "a1", "--", "migrate-begin", "a2", "--to", "h3"],
        "VM 'a2' runs on no host"),
    "show: none": (["migration-show", "a2"], "VM 'a2' has no migration"),
    "show: unknown VM": (["migration-show", "nope"], "unknown VM 'nope'"),
    "show: no VM": (["migration-show"], "migration-show: missing VM"),
    "list: unknown VM": (["migration-list", "nope"], "unknown VM 'nope'"),
    "global-set: nothing": (["global-set"],
                            "global-set: give at least one KEY=VALUE"),
    "global-set: too small": (["global-set", "migration-wait-ms=99"],
                              "invalid migration-wait-ms '99': use an "
                              "integer from 100 to 60000"),
    "global-set: too large": (["global-set", "migration-wait-ms=60001"],
                              "invalid migration-wait-ms '60001'"),
    "global-set: not a number": (["global-set", "migration-wait-ms=3s"],
                                 "invalid migration-wait-ms '3s'"),
    "global-set: lease too short": (["global-set", "shared-state-lease=2"],
                                    "invalid shared-state-lease '2': use an "
                                    "integer from 3 to 3600"),
    "global-set: lease too long": (["global-set", "shared-state-lease=3601"],
                                   "invalid shared-state-lease '3601'"),
    "global-set: retention too short": (["global-set", "migration-retention=9"],
                                        "invalid migration-retention '9': use an "
                                        "integer from 10 to 31536000"),
    "global-set: unknown key": (["global-set", "wait=5"],
                                "unknown global option 'wait'; known "
                                "options: migration-wait-ms"),
    "global-set: no =": (["global-set", "migration-wait-ms"],
                         "global-set: invalid option 'migration-wait-ms': "
                         "use KEY=VALUE, e.g. migration-wait-ms=5000"),
    "global-set then a failing command": (
        ["global-set", "migration-wait-ms=500", "--", "vm-del", "nope"],
        "unknown VM 'nope'; use --if-exists to ignore a missing one"),
    "global-set with a migration command": (
        ["global-set", "migration-wait-ms=500", "--", "migrate-done", "a2"],
        "(migrate-done) cannot share one transaction; run them separately"),
}


@pytest.mark.parametrize("args,message", BAD_MIGRATIONS.values(),
                         ids=BAD_MIGRATIONS.keys())
def test_bad_migration_input_is_one_line_and_changes_nothing(migrating, args,
                                                             message):
    before = dump(migrating)
    assert_one_line_error(mbxctl(migrating, *args), message)
    assert dump(migrating) == before


def test_migration_reads_and_if_exists_change_nothing(migrating):
    before = dump(migrating)
    ok(migrating, "migrate-abort", "b1", "--if-exists")
    ok(migrating, "migrate-abort", "a2", "--if-exists")
    assert [row[:4] for row in columns(ok(migrating, "migration-list"))] == [
        ["VM", "HOSTS", "PATH", "STATUS"],
        ["b1", "h1 -> h3", "announced", "aborted"],
        ["a1", "h2 -> h3", "announced", "begun"]]
    assert columns(ok(migrating, "migration-list", "a2")) == [
        ["VM", "HOSTS", "PATH", "STATUS", "ENTRIES", "BYTES", "OUTCOME"]]
    show = ok(migrating, "migration-show", "b1").splitlines()
    assert show[:3] == ["migration of VM b1: h1 -> h3 (announced)",
                        show[1], "status: aborted"]
    assert [line.split()[-1] for line in show[5:7]] == ["begun", "aborted"]
    assert show[-1] == "outcome: aborted by operator"
    assert dump(migrating) == before


def wait_stun(remote, after, *args):
    """migrate-stun a1 --wait, while ``after`` (run in a thread 0.3 s after
    the stun, with an API connection and the migration) writes the
    outcome."""
    api = sb_api(remote)
    try:
        m, = api.migrations("a1")

        def destination():
            deadline = time.monotonic() + 5
            while api.migrations("a1")[0].status != "stunned" and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
            after(api, m.uuid)

        thread = threading.Thread(target=destination)
        thread.start()
        try:
            start = time.monotonic()
            proc = mbxctl(remote, "--timeout", "3", "migrate-stun", "a1",
                          "--wait", *args)
            took = time.monotonic() - start
        finally:
            thread.join()
        return proc, took, api.migrations("a1")[0]
    finally:
        api.close()


def test_migrate_stun_waits_for_the_import(nb, tmp_path):
    setup_migrations(nb, str(tmp_path))
    ok(nb, "migrate-begin", "a1", "--to", "h3")
    proc, took, m = wait_stun(nb, lambda api, uuid: api.migration_update(
        uuid, status="imported",
        timeline={"imported": int(time.time() * 1000)},
        expect=("stunned",)).execute(check_error=True))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert 0.3 <= took < 3          # it waited for the import
    assert m.status == "imported"
    ok(nb, "migrate-done", "a1")


def test_migrate_stun_wait_fails_when_the_migration_ends_otherwise(nb,
                                                                   tmp_path):
    setup_migrations(nb, str(tmp_path))
    ok(nb, "migrate-begin", "a1", "--to", "h3")
    proc, took, m = wait_stun(nb, lambda api, uuid: api.migration_update(
        uuid, status="aborted", outcome="aborted: destination h3 "
        "unreachable: connection refused").execute(check_error=True))
    assert_one_line_error(proc, "mbxctl: VM 'a1' is stunned, but its "
                          "migration h2 -> h3 ended aborted (aborted: "
                          "destination h3 unreachable: connection refused)")
    assert took < 3 and m.status == "aborted"


def test_migrate_stun_wait_times_out(nb, tmp_path):
    setup_migrations(nb, str(tmp_path))
    ok(nb, "migrate-begin", "a1", "--to", "h3")
    start = time.monotonic()
    proc = mbxctl(nb, "--timeout", "1", "migrate-stun", "a1", "--wait")
    assert 1 <= time.monotonic() - start < 5
    assert_one_line_error(proc, "mbxctl: VM 'a1' is stunned, but timed out "
                          "after 1s waiting for its state to be imported at "
                          "h3 (status stunned)")
    assert [row[3] for row in columns(ok(nb, "migration-list"))] == [
        "STATUS", "stunned"]


def test_global_set_and_the_wait_of_new_migrations(nb, tmp_path):
    ok(nb, "global-set", "migration-wait-ms=0500")     # creates NB_Global
    assert ok(nb, "show").splitlines()[-1] == \
        "global options: migration-wait-ms=500"
    setup_migrations(nb, str(tmp_path))
    ok(nb, "migrate-begin", "a1", "--to", "h3")
    assert "options: wait-ms=500" in ok(nb, "migration-show",
                                        "a1").splitlines()
    before = dump(nb)
    ok(nb, "global-set", "migration-wait-ms=500")      # unchanged
    assert dump(nb) == before
    ok(nb, "global-set", "migration-wait-ms=")
    assert "global options" not in ok(nb, "show")
    ok(nb, "migrate-abort", "a1", "--", "migrate-begin", "a1", "--to", "h1")
    assert "options: wait-ms=3000" in ok(nb, "migration-show",
                                         "a1").splitlines()


def test_controller_creates_unannounced_migrations(nb, tmp_path):
    setup_migrations(nb, str(tmp_path))
    ok(nb, "global-set", "migration-wait-ms=800")
    api = sb_api(nb)
    try:
        # a2 has no host: the controller names both hosts
        uuid = api.migration_create("a2", "h1", "h2", "unannounced").execute(
            check_error=True)
        assert UUID_RE.fullmatch(uuid)
        m, = api.migrations("a2")
        assert (m.uuid, m.source, m.destination, m.path, m.status,
                m.options) == (uuid, "h1", "h2", "unannounced", "begun",
                               {"wait-ms": "800"})
        before = dump(nb)
        for command, message in (
                (lambda: api.migration_create("a2", "h2", "h3",
                                              "unannounced", 1000),
                 "VM 'a2' already has an active migration h1 -> h2 (status "
                 "begun)"),
                (lambda: api.migration_create("nope", "h2", "h3"),
                 "unknown VM 'nope'"),
                (lambda: api.migration_create("b1", "h1", "h9"),
                 "unknown host 'h9'"),
                (lambda: api.migration_create("b1", "h1", "h1"),
                 "a migration of VM 'b1' needs two hosts, not 'h1' twice"),
                (lambda: api.migration_create("b1", "h1", "h2", "sideways"),
                 "invalid migration path 'sideways': use announced or "
                 "unannounced"),
                (lambda: api.migration_create("b1", "h1", "h2",
                                              wait_ms=50),
                 "invalid wait-ms 50: use an integer from 100 to 60000"),
                (lambda: api.migrate_stun("a2"),
                 "VM 'a2': its migration h1 -> h2 is unannounced; only an "
                 "announced migration is stunned"),
                (lambda: api.migration_update(uuid, status="lost"),
                 "invalid migration status 'lost'"),
                (lambda: api.migration_update(uuid, stats={"entries": -1}),
                 "invalid migration stats"),
                (lambda: api.migration_update(
                    "00000000-0000-0000-0000-000000000000", status="done"),
                 "unknown migration 00000000-0000-0000-0000-000000000000")):
            with pytest.raises(MbxError) as err:
                command().execute(check_error=True)
            assert message in str(err.value)
            assert dump(nb) == before
        api.migration_create("b1", "h1", "h3", wait_ms=2000).execute(
            check_error=True)
        # the destination imports and finishes an unannounced migration
        api.migration_update(uuid, status="done", timeline={"done": 1},
                             stats={"entries": 1, "buffered": 3},
                             outcome="ok: 1 connection").execute(
            check_error=True)
        assert sorted((m.vm, m.status, m.options["wait-ms"])
                      for m in api.migrations()) == [
            ("a2", "done", "800"), ("b1", "begun", "2000")]
    finally:
        api.close()
    row = [r for r in columns(ok(nb, "migration-list", "a2"))][1]
    assert row == ["a2", "h1 -> h2", "unannounced", "done", "1", "-",
                   "ok: 1 connection"]


def test_schema_1_5_0_database_converts_to_intent_only(tmp_path):
    """A 1.x config database (runtime tables in it) opens as 2.1.0: every
    intent row is kept as it was, VM.host names its host instead of
    referencing its Host row, the runtime tables are gone (the hosts
    republish their chassis, northd writes the slices again; migration
    history and alerts are lost), and mbxctl works on it."""
    old_schema = tmp_path / "mbx_nb-1.5.0.ovsschema"
    old_schema.write_text(json.dumps(schema_1_5_0()))
    db = tmp_path / "db"
    subprocess.run(["ovsdb-tool", "create", str(db), str(old_schema)], check=True)
    subprocess.run(["ovsdb-tool", "transact", str(db), json.dumps(
        ["MBX_Northbound",
         {"op": "insert", "table": "NB_Global",
          "row": {"nb_cfg": 4, "hv_cfg": 4, "northd_cfg": 4,
                  "options": ["map", [["migration-wait-ms", "750"]]]}},
         {"op": "insert", "table": "Host", "uuid-name": "h1",
          "row": {"name": "h1", "encap_type": "vxlan", "encap_ip": "10.200.0.11",
                  "mgmt_address": "tcp:10.201.0.11:6640", "nb_cfg": 4,
                  "connected": True,
                  "migration_address": "ssl:10.201.0.11:6650"}},
         {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls",
          "row": {"name": "ls-a", "tenant": "t", "vni": 7, "subnet": "10.7.0.0/24"}},
         {"op": "insert", "table": "VM",
          "row": {"name": "a1", "logical_switch": ["named-uuid", "ls"],
                  "mac": "02:00:00:00:00:07", "ip": "10.7.0.2",
                  "host": ["named-uuid", "h1"], "location_epoch": 3}},
         {"op": "insert", "table": "VM",
          "row": {"name": "a2", "logical_switch": ["named-uuid", "ls"],
                  "mac": "02:00:00:00:00:08", "ip": "10.7.0.3", "location_epoch": 1}},
         {"op": "insert", "table": "Middlebox", "uuid-name": "fw",
          "row": {"name": "fw", "type": "firewall", "logical_switch": ["named-uuid", "ls"],
                  "default_action": "deny"}},
         {"op": "insert", "table": "Steering_Policy",
          "row": {"logical_switch": ["named-uuid", "ls"], "priority": 100,
                  "match": "any", "chain": ["map", [[0, ["named-uuid", "fw"]]]]}},
         {"op": "insert", "table": "Slice",
          "row": {"chain": ["map", [[0, ["named-uuid", "fw"]]]],
                  "host": ["named-uuid", "h1"], "tag": 5}},
         {"op": "insert", "table": "Shared_State",
          "row": {"middlebox": "fw", "host": "h1", "service": "vm-state",
                  "key": "a1", "value": "1", "stamp": 1}},
         {"op": "insert", "table": "IDS_Alert",
          "row": {"middlebox": "fw", "kind": "port-scan", "source": "10.7.0.9",
                  "count": 3, "first_seen": 1, "last_seen": 2, "reported_by": "h1"}},
         {"op": "insert", "table": "Migration",
          "row": {"vm": "a1", "source": "h2", "destination": "h1",
                  "path": "announced", "status": "done", "token": "0" * 32}}])],
        check=True, capture_output=True)
    intent = ("NB_Global", "Logical_Switch", "VM", "Middlebox", "Steering_Policy")

    def rows(schema_tables):
        out = {}
        for table in intent:
            columns = sorted(c for c in schema_tables[table]["columns"])
            found = nb_query(db, table, ["_uuid"] + columns)
            out[table] = sorted(found, key=lambda r: r["_uuid"][1])
        return out

    before = rows(schema_1_5_0()["tables"])
    pid, remote = start_server(str(tmp_path))      # ensure_db converts it
    try:
        assert subprocess.run(["ovsdb-tool", "db-version", str(db)],
                              capture_output=True, text=True,
                              check=True).stdout.strip() == NB_VERSION
        assert not [n for n in os.listdir(tmp_path)
                    if n.startswith("db.") and n != "db.sock"]   # no leftover file
        with open(server.SCHEMA_PATH) as f:
            after = rows(json.load(f)["tables"])
        for vm in before["VM"]:
            if vm["host"] != ["set", []]:
                vm["host"] = "h1"           # the reference became the name
        # 2.1.0's tenant columns come from the switch
        assert [(mb.pop("tenant"), mb.pop("provider_rules"))
                for mb in after["Middlebox"]] == [("t", ["set", []])]
        assert [p.pop("tenant") for p in after["Steering_Policy"]] == ["t"]
        assert [g.pop("connections") for g in after["NB_Global"]] == [
            ["set", []]]
        # 2.2.0's status columns start empty
        assert [r.pop("status") for table in ("Logical_Switch", "VM",
                                              "Steering_Policy")
                for r in after[table]] == [""] * sum(
            len(after[t]) for t in ("Logical_Switch", "VM", "Steering_Policy"))
        assert after == before
        assert ok(remote, "steer-list").splitlines()[1].split() == [
            "ls-a", "100", "fw", "any"]
        # nothing of the runtime tables: the southbound database fills again
        assert ok(remote, "host-list").splitlines()[1:] == []
        assert ok(remote, "migration-list").splitlines()[1:] == []
        assert ok(remote, "ids-alerts").splitlines()[1:] == []
        assert ok(remote, "slice-list").splitlines()[1:] == []
        assert "a1    ls-a    10.7.0.2  02:00:00:00:00:07  -     0" in ok(remote, "vm-list")
        ok(remote, "vm-add", "a3", "--switch", "ls-a", "--ip", "10.7.0.4")
    finally:
        server.stop(pid)
    # converting again is a no-op
    again = db.read_bytes()
    server.ensure_db(str(db))
    assert db.read_bytes() == again


SCHEMA_2_0_0 = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "mbx_nb-2.0.0.ovsschema")


def test_schema_2_0_0_database_converts_its_tiers_and_tenants(tmp_path):
    """2.0.0 -> 2.1.0: a provider rule (Firewall_Rule.tier) moves to
    Middlebox.provider_rules, the tenant columns come from the switch."""
    db = tmp_path / "db"
    subprocess.run(["ovsdb-tool", "create", str(db), SCHEMA_2_0_0], check=True)

    def rule(name, priority, tier):
        return {"op": "insert", "table": "Firewall_Rule", "uuid-name": name,
                "row": {"priority": priority, "direction": "to-vm",
                        "match": "any", "action": "allow", "tier": tier}}
    subprocess.run(["ovsdb-tool", "transact", str(db), json.dumps(
        ["MBX_Northbound",
         {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls",
          "row": {"name": "ls-t", "tenant": "tee", "vni": 7,
                  "subnet": "10.7.0.0/24"}},
         rule("p", 10, "provider"), rule("t", 20, "tenant"),
         {"op": "insert", "table": "Middlebox", "uuid-name": "fw",
          "row": {"name": "fw", "type": "firewall", "default_action": "deny",
                  "logical_switch": ["named-uuid", "ls"],
                  "rules": ["set", [["named-uuid", "p"],
                                    ["named-uuid", "t"]]]}},
         {"op": "insert", "table": "Steering_Policy",
          "row": {"logical_switch": ["named-uuid", "ls"], "priority": 5,
                  "match": "any",
                  "chain": ["map", [[0, ["named-uuid", "fw"]]]]}}])],
        check=True, capture_output=True)
    server.ensure_db(str(db))
    assert subprocess.run(["ovsdb-tool", "db-version", str(db)],
                          capture_output=True, text=True,
                          check=True).stdout.strip() == NB_VERSION
    rules = {r["_uuid"][1]: r for r in nb_query(
        db, "Firewall_Rule", ["_uuid", "priority", "tenant"])}
    [mb] = nb_query(db, "Middlebox", ["tenant", "rules", "provider_rules"])
    assert mb["tenant"] == "tee"
    assert [rules[mb["rules"][1]]["priority"]] == [20]
    assert [rules[mb["provider_rules"][1]]["priority"]] == [10]
    assert sorted((r["priority"], r["tenant"]) for r in rules.values()) == [
        (10, ""), (20, "tee")]
    assert nb_query(db, "Steering_Policy", ["tenant"]) == [{"tenant": "tee"}]
    pid, remote = start_server(str(tmp_path))
    try:
        assert ok(remote, "fw-list", "fw").splitlines()[1:] == [
            "to-vm      provider  10        allow   any",
            "to-vm      tenant    20        allow   any"]
    finally:
        server.stop(pid)


def test_a_switch_changing_tenant_takes_its_rows_along(tmp_path):
    """The tenant columns RBAC authorizes on follow the switch's tenant
    when mbxctl load changes it (provider rules keep "")."""
    pid, remote = start_server(str(tmp_path))
    try:
        path = tmp_path / "t.yaml"
        spec = """\
switches:
  - {{name: ls-m, tenant: {tenant}, vni: 77, subnet: 10.7.0.0/24}}
middleboxes:
  - name: fw-m
    switch: ls-m
    rules:
      - {{priority: 10, direction: to-vm, match: any, action: allow}}
      - {{priority: 20, direction: to-vm, match: "proto=icmp", action: deny,
         tier: provider}}
steering:
  - {{switch: ls-m, priority: 5, match: any, chain: [fw-m]}}
"""
        for tenant in ("one", "two"):
            path.write_text(spec.format(tenant=tenant))
            ok(remote, "init", "--", "load", str(path))
            db = tmp_path / "db"
            assert [r["tenant"] for r in nb_query(db, "Middlebox", ["tenant"])] == [tenant]
            assert [r["tenant"] for r in nb_query(db, "Steering_Policy", ["tenant"])] == [tenant]
            assert sorted(r["tenant"] for r in nb_query(db, "Firewall_Rule", ["tenant"])) \
                == ["", tenant]
        assert "ignored" not in ok(remote, "show")
    finally:
        server.stop(pid)
