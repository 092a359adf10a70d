"""middlebox.confmon against a real config database server.

Two tenants, red and blue, each with a switch, a firewall, rules, an address
set and VMs; two hosts.  The monitor of h1 must hold red's config (the slice
of fw-red on h1) and nothing of blue, follow changes, and take blue's rows in
and drop them again as a blue slice comes to h1 and goes.  Rows are written
with ``ovsdb-client transact`` (raw OVSDB operations), not mbxctl.
"""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

# The middlebox package may not be installed into the venv (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import confmon  # noqa: E402
from mbxmodel.services import RuleInfo  # noqa: E402
from middlebox.config import VmSpec  # noqa: E402
from ovsdb import server  # noqa: E402

DB = "MBX_Northbound"
WAIT = 5.0


def transact(remote, *ops):
    """Run OVSDB operations; returns the result list (raises on any error)."""
    proc = subprocess.run(["ovsdb-client", "transact", remote,
                           json.dumps([DB, *ops])],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    errors = [r for r in results if r and "error" in r]
    assert not errors, errors
    return results


def uuid_of(remote, table, name):
    [result] = transact(remote, {"op": "select", "table": table,
                                 "where": [["name", "==", name]],
                                 "columns": ["_uuid"]})
    [row] = result["rows"]
    return row["_uuid"][1]


def ref(u):
    return ["uuid", u]


def refs(us):
    return ["set", [ref(u) for u in us]]


def chain(*middleboxes):
    """A Slice.chain value: positions 0, 1, ... -> the given references."""
    return ["map", [[i, mb] for i, mb in enumerate(middleboxes)]]


def insert(table, row, name):
    return {"op": "insert", "table": table, "row": row, "uuid-name": name}


def populate(remote):
    """Two tenants, two hosts; slices: fw-red on h1 (10) and on h2 (11),
    fw-blue on h2 (12).  Returns {name: uuid} of interesting rows."""
    ops = [
        insert("Host", {"name": "h1", "encap_type": "vxlan",
                        "encap_ip": "192.0.2.1"}, "h1"),
        insert("Host", {"name": "h2", "encap_type": "vxlan",
                        "encap_ip": "192.0.2.2"}, "h2"),
        insert("Logical_Switch", {"name": "ls-red", "tenant": "red",
                                  "vni": 101, "subnet": "10.1.0.0/24"},
               "ls_red"),
        insert("Logical_Switch", {"name": "ls-blue", "tenant": "blue",
                                  "vni": 102, "subnet": "10.2.0.0/24"},
               "ls_blue"),
        insert("VM", {"name": "red1", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:01", "ip": "10.1.0.1",
                      "host": ["named-uuid", "h1"]}, "red1"),
        insert("VM", {"name": "red2", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:02", "ip": "10.1.0.2",
                      "host": ["named-uuid", "h2"]}, "red2"),
        insert("VM", {"name": "blue1",
                      "logical_switch": ["named-uuid", "ls_blue"],
                      "mac": "02:00:00:02:00:01", "ip": "10.2.0.1",
                      "host": ["named-uuid", "h2"]}, "blue1"),
        insert("VM", {"name": "blue2",
                      "logical_switch": ["named-uuid", "ls_blue"],
                      "mac": "02:00:00:02:00:02", "ip": "10.2.0.2"}, "blue2"),
        insert("Address_Set", {"name": "red-web", "tenant": "red",
                               "addresses": ["set", ["10.1.0.10",
                                                     "10.1.0.11"]]},
               "red_web"),
        insert("Address_Set", {"name": "red-unused", "tenant": "red",
                               "addresses": "10.1.0.99"}, "red_unused"),
        insert("Address_Set", {"name": "blue-db", "tenant": "blue",
                               "addresses": "10.2.0.5"}, "blue_db"),
        insert("Firewall_Rule", {"priority": 100, "direction": "from-vm",
                                 "match": "proto=tcp dst=$red-web dport=80",
                                 "address_sets": ["named-uuid", "red_web"],
                                 "action": "allow", "tier": "tenant"},
               "r_web"),
        insert("Firewall_Rule", {"priority": 200, "direction": "to-vm",
                                 "match": "proto=icmp", "action": "reject",
                                 "tier": "provider"}, "r_icmp"),
        insert("Firewall_Rule", {"priority": 100, "direction": "to-vm",
                                 "match": "proto=tcp src=$blue-db",
                                 "address_sets": ["named-uuid", "blue_db"],
                                 "action": "deny", "tier": "tenant"},
               "b_db"),
        insert("Middlebox", {"name": "fw-red", "type": "firewall",
                             "logical_switch": ["named-uuid", "ls_red"],
                             "default_action": "deny",
                             "rules": ["set", [["named-uuid", "r_web"],
                                               ["named-uuid", "r_icmp"]]],
                             "options": ["map", [["check", "offload"]]]},
               "fw_red"),
        insert("Middlebox", {"name": "fw-blue", "type": "firewall",
                             "logical_switch": ["named-uuid", "ls_blue"],
                             "default_action": "allow",
                             "rules": ["named-uuid", "b_db"]}, "fw_blue"),
        insert("Slice", {"chain": chain(["named-uuid", "fw_red"]),
                         "host": ["named-uuid", "h1"], "tag": 10},
               "s_red_h1"),
        insert("Slice", {"chain": chain(["named-uuid", "fw_red"]),
                         "host": ["named-uuid", "h2"], "tag": 11},
               "s_red_h2"),
        insert("Slice", {"chain": chain(["named-uuid", "fw_blue"]),
                         "host": ["named-uuid", "h2"], "tag": 12},
               "s_blue_h2"),
    ]
    results = transact(remote, *ops)
    return {op["uuid-name"]: result["uuid"][1]
            for op, result in zip(ops, results)}


@pytest.fixture
def world(nb):
    remote = nb[0]
    return remote, populate(remote)


@pytest.fixture
def monitors():
    opened = []

    def open_monitor(remote, host):
        mon = confmon.ConfigMonitor(remote, host)
        opened.append(mon)
        return mon
    yield open_monitor
    for mon in opened:
        mon.close()


def settle(mon, predicate=None, timeout=WAIT):
    """Run ``mon`` until synced (and ``predicate``); seconds it took."""
    start = time.monotonic()
    ok = confmon.run_until(
        mon, lambda: mon.synced() and (predicate is None or predicate()),
        timeout)
    assert ok, (mon.conditions(), mon.held_rows())
    return time.monotonic() - start


def red_held(ids):
    return {
        "Host": ["h1"],
        "Slice": [ids["s_red_h1"]],
        "Middlebox": ["fw-red"],
        "Firewall_Rule": sorted([ids["r_web"], ids["r_icmp"]]),
        "Address_Set": ["red-web"],
        "Logical_Switch": ["ls-red"],
        "VM": ["red1", "red2"],
        "NAT_Rule": [],
        "LB_VIP": [],
        "External_Network": [],
        "Shared_State": [],
        "Migration": [],                # none names h1
    }


def assert_red_config(cfg, ids, web=("10.1.0.10", "10.1.0.11")):
    assert cfg.host == "h1"
    assert list(cfg.slices) == [10]
    red = cfg.slices[10]
    assert (red.middlebox, red.type, red.tenant, red.switch, red.vni,
            red.default_action, dict(red.options)) == (
        "fw-red", "firewall", "red", "ls-red", 101, "deny",
        {"check": "offload"})
    assert red.rules == (
        RuleInfo(200, "to-vm", "proto=icmp", "reject", "provider",
                 ids["r_icmp"]),
        RuleInfo(100, "from-vm", "proto=tcp dst=$red-web dport=80", "allow",
                 "tenant", ids["r_web"]))
    assert red.address_sets == {"red-web": web}
    assert red.vms == (VmSpec("red1", "02:00:00:01:00:01", "10.1.0.1", "h1"),
                       VmSpec("red2", "02:00:00:01:00:02", "10.1.0.2", None))


def test_h1_holds_red_and_nothing_of_blue(world, monitors):
    remote, ids = world
    mon = monitors(remote, "h1")
    assert mon.config().slices == {} and not mon.synced()
    settle(mon)
    assert_red_config(mon.config(), ids)
    held = mon.held_rows()
    assert held == red_held(ids)
    flat = repr(held)
    for name in ("blue", "h2", ids["b_db"], ids["s_blue_h2"],
                 ids["s_red_h2"], "red-unused"):
        assert name not in flat
    # Conditions name exactly the red rows.
    conds = repr(mon.conditions())
    assert ids["fw_red"] in conds and ids["fw_blue"] not in conds


def test_h2_holds_blue_and_its_red_slice(world, monitors):
    remote, ids = world
    mon = monitors(remote, "h2")
    settle(mon)
    cfg = mon.config()
    assert sorted(cfg.slices) == [11, 12]
    blue = cfg.slices[12]
    assert blue.address_sets == {"blue-db": ("10.2.0.5",)}
    assert blue.vms == (VmSpec("blue1", "02:00:00:02:00:01", "10.2.0.1", "h2"),
                        VmSpec("blue2", "02:00:00:02:00:02", "10.2.0.2", None))
    assert cfg.slices[11].vms[1] == VmSpec("red2", "02:00:00:01:00:02",
                                           "10.1.0.2", "h2")
    assert mon.held_rows()["Host"] == ["h2"]


def test_changes_follow_and_blue_comes_and_goes(world, monitors):
    remote, ids = world
    mon = monitors(remote, "h1")
    settle(mon)
    # A new member in red's address set.
    transact(remote, {"op": "update", "table": "Address_Set",
                      "where": [["_uuid", "==", ref(ids["red_web"])]],
                      "row": {"addresses": ["set", ["10.1.0.10",
                                                    "10.1.0.12"]]}})
    settle(mon, lambda: mon.config().slices[10].address_sets["red-web"]
           == ("10.1.0.10", "10.1.0.12"))
    assert_red_config(mon.config(), ids, web=("10.1.0.10", "10.1.0.12"))

    # fw-blue gets a slice on h1: the whole blue chain arrives.
    [res] = transact(remote, {"op": "insert", "table": "Slice",
                              "row": {"chain": chain(ref(ids["fw_blue"])),
                                      "host": ref(ids["h1"]), "tag": 13}})
    s_blue_h1 = res["uuid"][1]
    took = settle(mon, lambda: 13 in mon.config().slices)
    blue = mon.config().slices[13]
    assert (blue.middlebox, blue.tenant, blue.switch, blue.default_action) \
        == ("fw-blue", "blue", "ls-blue", "allow")
    assert blue.rules == (RuleInfo(100, "to-vm", "proto=tcp src=$blue-db",
                                   "deny", "tenant", ids["b_db"]),)
    assert blue.address_sets == {"blue-db": ("10.2.0.5",)}
    assert [vm.name for vm in blue.vms] == ["blue1", "blue2"]
    assert all(vm.host is None for vm in blue.vms)
    held = mon.held_rows()
    assert held["Middlebox"] == ["fw-blue", "fw-red"]
    assert held["VM"] == ["blue1", "blue2", "red1", "red2"]
    assert held["Address_Set"] == ["blue-db", "red-web"]
    assert held["Host"] == ["h1"]
    assert held["Slice"] == sorted([ids["s_red_h1"], s_blue_h1])
    assert took < WAIT

    # ... and goes: blue leaves the config and the replica.
    transact(remote, {"op": "delete", "table": "Slice",
                      "where": [["_uuid", "==", ref(s_blue_h1)]]})
    settle(mon, lambda: mon.held_rows() == red_held(ids))
    assert_red_config(mon.config(), ids, web=("10.1.0.10", "10.1.0.12"))


def test_rule_and_switch_changes(world, monitors):
    remote, ids = world
    mon = monitors(remote, "h1")
    settle(mon)
    # A new rule with its own new address set, a new VM; red2 moves to h1.
    transact(
        remote,
        insert("Address_Set", {"name": "red-admin", "tenant": "red",
                               "addresses": "192.0.2.0/24"}, "adm"),
        insert("Firewall_Rule", {"priority": 300, "direction": "to-vm",
                                 "match": "proto=tcp src=$red-admin dport=22",
                                 "address_sets": ["named-uuid", "adm"],
                                 "action": "allow", "tier": "provider"},
               "r_ssh"),
        {"op": "mutate", "table": "Middlebox",
         "where": [["_uuid", "==", ref(ids["fw_red"])]],
         "mutations": [["rules", "insert", ["named-uuid", "r_ssh"]]]},
        insert("VM", {"name": "red3", "logical_switch": ref(ids["ls_red"]),
                      "mac": "02:00:00:01:00:03", "ip": "10.1.0.3"}, "red3"),
        {"op": "update", "table": "VM",
         "where": [["_uuid", "==", ref(ids["red2"])]],
         "row": {"host": ref(ids["h1"])}})
    settle(mon, lambda: len(mon.config().slices[10].rules) == 3)
    red = mon.config().slices[10]
    assert red.rules[0].match == "proto=tcp src=$red-admin dport=22"
    assert red.address_sets == {"red-admin": ("192.0.2.0/24",),
                                "red-web": ("10.1.0.10", "10.1.0.11")}
    assert [(vm.name, vm.host) for vm in red.vms] == [
        ("red1", "h1"), ("red2", "h1"), ("red3", None)]
    # Dropping the rule drops its address set from the replica (the
    # set itself stays in the DB).
    transact(remote, {"op": "mutate", "table": "Middlebox",
                      "where": [["_uuid", "==", ref(ids["fw_red"])]],
                      "mutations": [["rules", "delete",
                                     refs([ids["r_web"]])]]})
    settle(mon, lambda: "red-web" not in mon.held_rows()["Address_Set"])
    assert mon.config().slices[10].address_sets == {
        "red-admin": ("192.0.2.0/24",)}
    assert len(mon.config().slices[10].rules) == 2


def test_bad_rule_is_skipped_with_one_log_line(world, monitors, caplog):
    remote, ids = world
    mon = monitors(remote, "h1")
    settle(mon)
    caplog.set_level(logging.WARNING, logger="middlebox.confmon")
    # The server refuses an empty direction (enum constraint; the unit test
    # covers it); what it accepts but mbxd cannot use: a match that does not
    # parse, and an address set member that is not an address.
    transact(
        remote,
        insert("Firewall_Rule", {"priority": 6, "direction": "to-vm",
                                 "match": "proto=tcp dport=70000",
                                 "action": "deny", "tier": "tenant"},
               "badmatch"),
        {"op": "mutate", "table": "Middlebox",
         "where": [["_uuid", "==", ref(ids["fw_red"])]],
         "mutations": [["rules", "insert", ["named-uuid", "badmatch"]]]},
        {"op": "mutate", "table": "Address_Set",
         "where": [["_uuid", "==", ref(ids["red_web"])]],
         "mutations": [["addresses", "insert", "10.1.0.300"]]})
    settle(mon, lambda: len(mon.held_rows()["Firewall_Rule"]) == 3)
    assert_red_config(mon.config(), ids)
    # Further changes do not repeat the warnings.
    transact(remote, {"op": "mutate", "table": "Address_Set",
                      "where": [["_uuid", "==", ref(ids["red_web"])]],
                      "mutations": [["addresses", "delete", "10.1.0.11"]]})
    settle(mon, lambda: mon.config().slices[10].address_sets["red-web"]
           == ("10.1.0.10",))
    assert len(mon.config().slices[10].rules) == 2
    lines = [r.getMessage() for r in caplog.records
             if r.name == "middlebox.confmon"]
    assert len(lines) == 2, lines
    assert any("70000" in line for line in lines)
    assert any("10.1.0.300" in line for line in lines)


def test_host_registered_later(nb, monitors):
    remote = nb[0]
    mon = monitors(remote, "h1")
    settle(mon)                         # an empty, settled view
    assert mon.config().slices == {}
    assert all(rows == [] for rows in mon.held_rows().values())
    ids = populate(remote)
    settle(mon, lambda: 10 in mon.config().slices)
    assert_red_config(mon.config(), ids)
    assert mon.held_rows() == red_held(ids)


def test_db_unreachable_keeps_last_config(nb, monitors):
    remote, pid, rundir = nb
    ids = populate(remote)
    mon = monitors(remote, "h1")
    settle(mon)
    before = mon.config()
    server.stop(pid)
    deadline = time.monotonic() + WAIT
    while mon.synced() and time.monotonic() < deadline:
        mon.run()
        time.sleep(0.02)
    assert not mon.synced()
    for _ in range(20):
        assert mon.run() is False
        time.sleep(0.01)
    assert mon.config() == before
    # The server comes back (same database): the monitor reconnects by itself
    # (python-ovs backs off up to 8 s between attempts).
    new_pid = server.start(rundir, os.path.join(rundir, "db"),
                           ["punix:" + remote[len("unix:"):]])
    try:
        transact(remote, {"op": "update", "table": "Address_Set",
                          "where": [["_uuid", "==", ref(ids["red_web"])]],
                          "row": {"addresses": "10.1.0.77"}})
        settle(mon, lambda: mon.config().slices[10].address_sets["red-web"]
               == ("10.1.0.77",), timeout=20)
        assert mon.held_rows() == red_held(ids)
    finally:
        server.stop(new_pid)
