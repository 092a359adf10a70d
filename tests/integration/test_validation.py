"""Rows written straight into the config database, bypassing mbxctl, on a
real lab: each bad row is refused by mbxctl, and when a privileged client
writes it anyway, mbx-northd, the physical controllers and every mbxd skip
it, mbx-northd says why in the row's status (one log line), `mbxctl show`
and the -list commands print it, and the other tenant's changes, waits and
traffic go on as before.  Fixing or deleting the row heals it.

The bad rows go in with ``ovsdb-client transact`` on the lab's privileged
unix socket, as a hostile or careless operator's script would.
"""

import json
import os
import re
import subprocess

import pytest

from lab.sh import wait_until
from ovsdb import server, validate
from ovsdb.server import pid_alive

WAIT = 20           # seconds: mbxctl's --wait=hv bound, and the status waits


def transact(lab, *ops):
    """``ops`` on the config database, privileged (its unix socket)."""
    remote = lab.nb_remote.split(",")[0]
    out = subprocess.run(["ovsdb-client", "--timeout=10", "transact", remote,
                          json.dumps(["MBX_Northbound", *ops])],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert not [r for r in reply if r and "error" in r], reply
    return reply


def uuid_of(lab, table, name):
    rows = transact(lab, {"op": "select", "table": table,
                          "where": [["name", "==", name]],
                          "columns": ["_uuid"]})[0]["rows"]
    return rows[0]["_uuid"]


def ctl(lab, *args):
    return lab.mbxctl("--timeout", str(WAIT), *args, timeout=WAIT + 30)


def ctl_ok(lab, *args):
    proc = ctl(lab, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(lab, *args):
    """mbxctl refuses ``args`` with one line and changes nothing."""
    before = ctl_ok(lab, "show")
    proc = ctl(lab, *args)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ctl_ok(lab, "show") == before
    return proc.stderr


def listed_status(lab, command, cells, *args):
    """The STATUS cell of the row of ``mbxctl COMMAND ARGS`` whose first
    cells are ``cells`` ("" when the table has no STATUS column)."""
    lines = ctl_ok(lab, command, *args).splitlines()
    if not lines or "STATUS" not in lines[0].split():
        return ""
    start = lines[0].index("STATUS")
    for line in lines[1:]:
        if line.split()[:len(cells)] == list(cells):
            return line[start:].strip()
    return ""


def wait_status(lab, command, cells, words, *args):
    """The row's STATUS once it holds ``words`` (bounded wait)."""
    def shown():
        status = listed_status(lab, command, cells, *args)
        return status if words in status else None
    return wait_until(shown, WAIT, interval=0.2,
                      what=f"{command} to show '{words}' for {cells}")


def northd_mark(lab):
    """Where the active mbx-northd's log ends now (see northd_lines)."""
    return os.path.getsize(lab.northd_log(lab.northd_active()))


def northd_lines(lab, text, since):
    """The lines the active mbx-northd logged after ``since`` (a
    northd_mark) that hold ``text``."""
    with open(lab.northd_log(lab.northd_active())) as f:
        f.seek(since)
        return [line for line in f if text in line]


def alive(lab):
    """Every lab process is still running (mbxd, controllers, northd,
    chassis, switches, databases)."""
    dead = sorted(name for name, pid in lab.state["pids"].items()
                  if not pid_alive(pid))
    assert dead == []


def other_tenant_works(lab, name, ip):
    """Another tenant's VM is added with --wait=hv within the bound (a
    wedged controller never raises hv_cfg), its traffic flows, and it goes
    again."""
    ctl_ok(lab, "--wait=hv", "vm-add", name, "--switch", "ls-blue", "--ip", ip)
    assert lab.ping("blue1", "10.0.0.12").ok
    assert lab.ping("blue3", "10.0.0.11").ok
    ctl_ok(lab, "--wait=hv", "vm-del", name)


@pytest.fixture(scope="module")
def v(lab):
    """A firewall steering all of each tenant's traffic (so every mbxd has
    a slice of each switch and reads its VMs and rules), removed after."""
    for sw, fw in (("ls-red", "fw-red"), ("ls-blue", "fw-blue")):
        ctl_ok(lab, "mb-add", fw, sw, "--default", "allow")
        ctl_ok(lab, "fw-add", fw, "100", "to-vm", "proto=tcp dport=9", "deny")
        ctl_ok(lab, "--wait=hv", "steer-add", sw, "100", "any", fw)
    yield lab
    for sw, fw in (("ls-red", "fw-red"), ("ls-blue", "fw-blue")):
        ctl(lab, "steer-del", sw, "--if-exists")
        ctl(lab, "mb-del", fw, "--if-exists")
    ctl_ok(lab, "--wait=hv", "sync")


def test_a_malformed_vm_row_is_skipped_with_a_status_and_heals(v):
    lab = v
    # mbxctl refuses it at the source
    assert "invalid MAC" in refused(lab, "vm-add", "bad-vm", "--switch", "ls-red",
                                    "--ip", "10.0.0.40", "--mac", "zz:zz:zz:00:11")
    ls = uuid_of(lab, "Logical_Switch", "ls-red")
    mark = northd_mark(lab)
    transact(lab, {"op": "insert", "table": "VM", "row": {
        "name": "bad-vm", "logical_switch": ls, "mac": "zz:zz:zz:00:11",
        "ip": "not-an-ip"}})
    # its port plugged on h1, as a VM's would be
    lab.vsctl("h1", "add-port", "br-int", "badvif", "--", "set", "interface",
              "badvif", "type=internal", "external_ids:iface-id=bad-vm",
              "external_ids:attached-mac=zz:zz:zz:00:11")
    try:
        status = wait_status(lab, "vm-list", ("bad-vm",), "invalid MAC")
        assert "zz:zz:zz:00:11" in status
        assert re.search(r"vm bad-vm\n(        .*\n)*        status: VM 'bad-vm': "
                         r"invalid MAC", ctl_ok(lab, "show"))
        other_tenant_works(lab, "blue-v1", "10.0.0.41")
        # red's own traffic through its firewall too
        assert lab.ping("red1", "10.0.0.12").ok
        # mbxd skipped it and says so where the docs say
        assert "skipping VM bad-vm: invalid MAC" in lab.mbxd_appctl(
            "h1", "rules/show", "fw-red")
        alive(lab)
        # one log line for the row, however many events came since
        assert len(northd_lines(lab, "ignoring VM 'bad-vm'", mark)) == 1

        # fixed: usable again, placed on h1, status cleared
        transact(lab, {"op": "update", "table": "VM",
                       "where": [["name", "==", "bad-vm"]],
                       "row": {"mac": "02:00:00:00:0b:ad", "ip": "10.0.0.40"}})
        # (a port is bound to the VM whose MAC it carries)
        lab.vsctl("h1", "set", "interface", "badvif",
                  "external_ids:attached-mac=02:00:00:00:0b:ad")
        wait_until(lambda: listed_status(lab, "vm-list", ("bad-vm",)) == "",
                   WAIT, interval=0.2, what="the fixed VM's status to clear")
        wait_until(lambda: lab.sb().snapshot().vm_locations.get(
            "bad-vm", (None,))[0] == "h1", WAIT, interval=0.1,
            what="the fixed VM to be placed on h1")
        ctl_ok(lab, "--wait=hv", "sync")

        # broken again, then deleted: the others are not affected
        transact(lab, {"op": "update", "table": "VM",
                       "where": [["name", "==", "bad-vm"]],
                       "row": {"ip": "not-an-ip"}})
        wait_status(lab, "vm-list", ("bad-vm",), "invalid VM IP 'not-an-ip'")
    finally:
        lab.vsctl("h1", "--if-exists", "del-port", "br-int", "badvif")
        transact(lab, {"op": "delete", "table": "VM",
                       "where": [["name", "==", "bad-vm"]]})
    other_tenant_works(lab, "blue-v2", "10.0.0.42")
    alive(lab)


BAD_SWITCH = dict(
    mbxctl=("ls-add", "ls-bad", "--tenant", "red", "--vni", "1099", "--subnet",
            "10.9.0.0/33"),
    table="Logical_Switch", name="ls-bad",
    row=lambda lab: {"name": "ls-bad", "tenant": "red", "vni": 1099,
                     "subnet": "10.9.0.0/33"},
    refusal="/33", listing="ls-list", status="invalid subnet '10.9.0.0/33'")
FAR_VM = dict(
    mbxctl=("vm-add", "far-vm", "--switch", "ls-red", "--ip", "10.9.9.9"),
    table="VM", name="far-vm",
    row=lambda lab: {"name": "far-vm", "mac": "02:00:00:00:0f:01", "ip": "10.9.9.9",
                     "logical_switch": uuid_of(lab, "Logical_Switch", "ls-red")},
    refusal="outside subnet", listing="vm-list",
    status="IP 10.9.9.9 is outside subnet 10.0.0.0/24")


@pytest.mark.parametrize("case,vm,ip", [(BAD_SWITCH, "blue-v3", "10.0.0.43"),
                                        (FAR_VM, "blue-v4", "10.0.0.44")],
                         ids=["subnet-33", "vm-ip-outside-subnet"])
def test_a_value_out_of_range_is_refused_and_ignored_with_a_status(v, case, vm, ip):
    lab = v
    assert case["refusal"] in refused(lab, *case["mbxctl"])
    transact(lab, {"op": "insert", "table": case["table"], "row": case["row"](lab)})
    try:
        wait_status(lab, case["listing"], (case["name"],), case["status"])
        other_tenant_works(lab, vm, ip)
        alive(lab)
    finally:
        transact(lab, {"op": "delete", "table": case["table"],
                       "where": [["name", "==", case["name"]]]})


def test_a_policy_chaining_another_tenants_middlebox_is_ignored_with_a_status(v):
    lab = v
    assert "serves logical switch 'ls-blue'" in refused(
        lab, "steer-add", "ls-red", "300", "any", "fw-blue")
    mark = northd_mark(lab)
    transact(lab, {"op": "insert", "table": "Steering_Policy", "row": {
        "logical_switch": uuid_of(lab, "Logical_Switch", "ls-red"),
        "tenant": "red", "priority": 300, "match": "any",
        "chain": ["map", [[0, uuid_of(lab, "Middlebox", "fw-blue")]]]}})
    try:
        status = wait_status(lab, "steer-list", ("ls-red", "300"), "fw-blue",
                             "ls-red")
        assert "serves switch 'ls-blue'" in status
        assert northd_lines(lab, "steering policy ls-red 300", mark)
        # red's traffic is not blackholed: its own firewall still decides
        ctl_ok(lab, "--wait=hv", "sync")
        assert lab.ping("red1", "10.0.0.12").ok
        assert lab.ping("red3", "10.0.0.11").ok
        other_tenant_works(lab, "blue-v5", "10.0.0.45")
        alive(lab)
    finally:
        transact(lab, {"op": "delete", "table": "Steering_Policy",
                       "where": [["priority", "==", 300]]})


def test_a_garbage_firewall_match_is_ignored_listed_and_shown(v):
    lab = v
    assert "banana" in refused(lab, "fw-add", "fw-red", "200", "to-vm",
                               "proto=tcp dport=banana", "deny")
    transact(lab, {"op": "insert", "table": "Firewall_Rule", "uuid-name": "r",
                   "row": {"priority": 200, "direction": "to-vm",
                           "match": "proto=tcp dport=banana",
                           "action": "deny", "tenant": "red"}},
             {"op": "mutate", "table": "Middlebox",
              "where": [["name", "==", "fw-red"]],
              "mutations": [["rules", "insert", ["set", [["named-uuid", "r"]]]]]})
    try:
        assert "banana" in wait_status(lab, "fw-list", ("to-vm", "tenant", "200"),
                                       "banana", "fw-red")
        assert re.search(r"rule to-vm tenant 200: proto=tcp dport=banana -> deny\n"
                         r"            status: .*banana", ctl_ok(lab, "show"))
        shown = wait_until(lambda: re.search(
            r"error: skipping firewall rule .*banana",
            lab.mbxd_appctl("h1", "rules/show", "fw-red")), WAIT, interval=0.2,
            what="rules/show to list the skipped rule")
        assert shown
        # the rest of the firewall still works: its deny rule and default allow
        assert lab.ping("red1", "10.0.0.12").ok
        assert lab.tcp_try("red1", "10.0.0.12", 9)["ok"] == 0
        other_tenant_works(lab, "blue-v6", "10.0.0.46")
        alive(lab)
    finally:
        rows = transact(lab, {"op": "select", "table": "Firewall_Rule",
                              "where": [["priority", "==", 200]],
                              "columns": ["_uuid"]})[0]["rows"]
        transact(lab, {"op": "mutate", "table": "Middlebox",
                       "where": [["name", "==", "fw-red"]],
                       "mutations": [["rules", "delete",
                                      ["set", [r["_uuid"] for r in rows]]]]})


def test_an_address_set_member_that_is_not_an_address_is_left_out(v):
    lab = v
    ctl_ok(lab, "as-add", "red-admins", "red", "10.0.0.11")
    ctl_ok(lab, "--wait=hv", "fw-add", "fw-red", "150", "to-vm",
           "src=$red-admins proto=tcp dport=7", "deny")
    try:
        assert "garbage" in refused(lab, "as-set", "red-admins", "10.0.0.11", "garbage")
        transact(lab, {"op": "update", "table": "Address_Set",
                       "where": [["name", "==", "red-admins"]],
                       "row": {"addresses": ["set", ["10.0.0.11", "garbage"]]}})
        assert "member 'garbage' left out" in wait_status(
            lab, "as-list", ("red-admins",), "garbage")
        ctl_ok(lab, "--wait=hv", "sync")
        # the set still holds 10.0.0.11 (red1): its deny rule still applies
        assert lab.tcp_try("red1", "10.0.0.12", 7)["ok"] == 0
        assert lab.ping("red1", "10.0.0.12").ok
        other_tenant_works(lab, "blue-v8", "10.0.0.48")
        alive(lab)
    finally:
        ctl(lab, "fw-del", "fw-red", "to-vm", "150", "--if-exists")
        ctl(lab, "as-del", "red-admins", "--if-exists")


def test_an_external_network_that_cannot_be_used_is_ignored_with_a_status(v):
    lab = v
    assert "CIDR" in refused(lab, "ext-add", "ext-bad", "198.51.100.0/33",
                             "198.51.100.1", "02:ee:00:00:00:09")
    mark = northd_mark(lab)
    transact(lab, {"op": "insert", "table": "External_Network",
                   "row": {"name": "ext-bad", "cidr": "198.51.100.0/33",
                           "gateway_ip": "198.51.100.1",
                           "gateway_mac": "02:ee:00:00:00:09"}})
    try:
        assert "/33" in wait_status(lab, "ext-list", ("ext-bad",), "CIDR")
        assert "status: external network 'ext-bad'" in ctl_ok(lab, "show")
        ctl_ok(lab, "--wait=hv", "sync")
        other_tenant_works(lab, "blue-v9", "10.0.0.49")
        assert len(northd_lines(lab, "ext-bad", mark)) == 1
        alive(lab)
    finally:
        transact(lab, {"op": "delete", "table": "External_Network",
                       "where": [["name", "==", "ext-bad"]]})


def test_lb_and_middlebox_options_out_of_range_are_refused_and_ignored(v):
    lab = v
    ctl_ok(lab, "mb-add", "lb-blue", "ls-blue", "--type", "lb")
    ctl_ok(lab, "lb-add", "lb-blue", "10.0.0.100:80", "10.0.0.11:80")
    try:
        assert "health-interval" in refused(lab, "lb-set", "lb-blue", "10.0.0.100:80",
                                            "health-interval=1e308")
        transact(lab, {"op": "update", "table": "LB_VIP",
                       "where": [["vip", "==", "10.0.0.100"]],
                       "row": {"options": ["map", [["health-interval", "1e308"]]]}})
        status = wait_status(lab, "lb-list", ("lb-blue",), "health-interval",
                             "lb-blue")
        assert "1e308" in status
        # a middlebox option out of its range: the middlebox is left out
        assert "check-interval" in refused(lab, "mb-set", "lb-blue", "check-interval=1")
        transact(lab, {"op": "update", "table": "Middlebox",
                       "where": [["name", "==", "lb-blue"]],
                       "row": {"options": ["map", [["check-interval", "1"]]]}})
        assert "check-interval" in wait_status(lab, "mb-list", ("lb-blue",), "error=")
        other_tenant_works(lab, "blue-v7", "10.0.0.47")
        alive(lab)
    finally:
        ctl(lab, "mb-del", "lb-blue", "--if-exists")


def test_a_2_1_0_database_is_converted_with_empty_statuses(tmp_path):
    """The status columns 2.2.0 added start empty in a converted file, and
    its rows are kept."""
    with open(server.SCHEMA_PATH) as f:
        schema = json.load(f)
    current, schema["version"] = schema["version"], "2.1.0"
    for table in validate.STATUS_TABLES.values():
        del schema["tables"][table]["columns"]["status"]
    old_schema = tmp_path / "mbx_nb-2.1.0.ovsschema"
    old_schema.write_text(json.dumps(schema))
    db = str(tmp_path / "db")
    subprocess.run(["ovsdb-tool", "create", db, str(old_schema)], check=True)
    subprocess.run(["ovsdb-tool", "transact", db, json.dumps(
        ["MBX_Northbound",
         {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls",
          "row": {"name": "old", "tenant": "t", "vni": 7, "subnet": "10.7.0.0/24"}},
         {"op": "insert", "table": "VM",
          "row": {"name": "v", "logical_switch": ["named-uuid", "ls"],
                  "mac": "02:00:00:00:00:07", "ip": "10.7.0.2"}}])],
        check=True, capture_output=True)
    server.ensure_db(db)
    version = subprocess.run(["ovsdb-tool", "db-version", db], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == current != "2.1.0"
    rows = json.loads(subprocess.run(
        ["ovsdb-tool", "query", db, json.dumps(
            ["MBX_Northbound", {"op": "select", "table": "VM", "where": [],
                                "columns": ["name", "status"]}])],
        capture_output=True, text=True, check=True).stdout)[0]["rows"]
    assert rows == [{"name": "v", "status": ""}]

