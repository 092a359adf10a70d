"""middlebox.confmon against real database servers.

Two tenants, red and blue, each with a switch, a firewall, rules, an address
set and VMs; three hosts.  The intent (switches, middleboxes, rules, VMs) is
in the northbound database, the runtime (chassis, slices, VM locations,
shared state, migrations) in the southbound one, each served by its own
``ovsdb-server`` so that either can go away alone.  The monitor of h1 must
hold red's config (the slice of fw-red on h1) and nothing of blue in either
database, follow changes, take blue's rows in and drop them again as a blue
slice comes to h1 and goes, and keep its last settled config while a
database is unreachable.  Rows are written with ``ovsdb-client transact``
(raw OVSDB operations), not mbxctl.
"""

import json
import logging
import os
import subprocess
import sys
import time
import types

import pytest

# The middlebox package may not be installed into the venv (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import confmon  # noqa: E402
from mbxmodel.services import RuleInfo  # noqa: E402
from mbxmodel.snapshot import migration_record  # noqa: E402
from middlebox.config import VmSpec  # noqa: E402
from ovsdb import server  # noqa: E402

NB = "MBX_Northbound"
SB = "MBX_Southbound"
WAIT = 5.0


class Server:
    """One ovsdb-server of a test, serving ``schemas`` ({database name:
    schema path}) on its own unix socket; it can be stopped and started
    again on the same files."""

    def __init__(self, rundir, schemas):
        self.rundir = str(rundir)
        os.makedirs(self.rundir, exist_ok=True)
        self.dbs = []
        for name, schema in schemas.items():
            path = os.path.join(self.rundir, name + ".db")
            server.ensure_db(path, schema)
            self.dbs.append(path)
        self.sock = os.path.join(self.rundir, "db.sock")
        self.remote = "unix:" + self.sock
        self.pid = None
        self.start()

    def start(self):
        self.pid = server.start(self.rundir, self.dbs, ["punix:" + self.sock])

    def stop(self):
        server.stop(self.pid)
        self.pid = None


@pytest.fixture
def dbs(tmp_path):
    """The northbound and the southbound database, each on a server of its
    own: ``.nb`` and ``.sb`` (Server), ``.remotes`` (nb, sb)."""
    nb = Server(tmp_path / "nb", {"nb": server.SCHEMA_PATH})
    sb = Server(tmp_path / "sb", {"sb": server.SB_SCHEMA_PATH})
    try:
        yield types.SimpleNamespace(nb=nb, sb=sb, remotes=(nb.remote, sb.remote))
    finally:
        for s in (nb, sb):
            if s.pid is not None:
                s.stop()


@pytest.fixture
def one_server(tmp_path):
    """Both databases on one server, as the lab serves them:
    ``.remotes`` (remote, remote)."""
    both = Server(tmp_path / "both", {"nb": server.SCHEMA_PATH,
                                      "sb": server.SB_SCHEMA_PATH})
    try:
        yield types.SimpleNamespace(nb=both, sb=both,
                                    remotes=(both.remote, both.remote))
    finally:
        both.stop()


def transact(remote, *ops, db=NB):
    """Run OVSDB operations on database ``db``; returns the result list
    (raises on any error)."""
    proc = subprocess.run(["ovsdb-client", "transact", remote,
                           json.dumps([db, *ops])],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    errors = [r for r in results if r and "error" in r]
    assert not errors, errors
    return results


def nb_transact(world, *ops):
    return transact(world.remotes[0], *ops, db=NB)


def sb_transact(world, *ops):
    return transact(world.remotes[1], *ops, db=SB)


def ref(u):
    return ["uuid", u]


def refs(us):
    return ["set", [ref(u) for u in us]]


def chain(*middleboxes):
    """A Slice.chain value: positions 0, 1, ... -> the given middlebox names."""
    return ["map", [[i, mb] for i, mb in enumerate(middleboxes)]]


def insert(table, row, name):
    return {"op": "insert", "table": table, "row": row, "uuid-name": name}


def chassis(*names):
    """Chassis rows as mbx-chassis writes them, h1 -> 192.0.2.1 and so on."""
    return [insert("Chassis", {"name": h, "encap_type": "vxlan",
                               "encap_ip": "192.0.2.%s" % h[1:],
                               "migration_address": "ssl:192.0.2.%s:6650"
                               % h[1:]}, h)
            for h in names]


def located(vm, host, epoch=1):
    """A VM_Location row (``host`` None: no location)."""
    return insert("VM_Location", {"vm": vm, "epoch": epoch,
                                  "chassis": ["set", [host] if host else []]},
                  "loc_" + vm)


def _ids(ops, results):
    return {op["uuid-name"]: result["uuid"][1]
            for op, result in zip(ops, results)}


def populate(world):
    """Two tenants, three hosts; slices: fw-red on h1 (10) and on h2 (11),
    fw-blue on h2 (12); red2's northbound VM.host mirror is stale (h1) while
    its location is h2.  Shared state of both firewalls, published by h2; a
    migration of blue1 from h2 to h3.  Returns {name: uuid} of interesting
    rows."""
    nb_ops = [
        insert("Logical_Switch", {"name": "ls-red", "tenant": "red",
                                  "vni": 101, "subnet": "10.1.0.0/24"},
               "ls_red"),
        insert("Logical_Switch", {"name": "ls-blue", "tenant": "blue",
                                  "vni": 102, "subnet": "10.2.0.0/24"},
               "ls_blue"),
        insert("VM", {"name": "red1", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:01", "ip": "10.1.0.1",
                      "host": "h1"}, "red1"),
        insert("VM", {"name": "red2", "logical_switch": ["named-uuid", "ls_red"],
                      "mac": "02:00:00:01:00:02", "ip": "10.1.0.2",
                      "host": "h1"}, "red2"),
        insert("VM", {"name": "blue1",
                      "logical_switch": ["named-uuid", "ls_blue"],
                      "mac": "02:00:00:02:00:01", "ip": "10.2.0.1",
                      "host": "h2"}, "blue1"),
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
                                 "action": "allow", "tenant": "red"},
               "r_web"),
        insert("Firewall_Rule", {"priority": 200, "direction": "to-vm",
                                 "match": "proto=icmp", "action": "reject"},
               "r_icmp"),
        insert("Firewall_Rule", {"priority": 100, "direction": "to-vm",
                                 "match": "proto=tcp src=$blue-db",
                                 "address_sets": ["named-uuid", "blue_db"],
                                 "action": "deny", "tenant": "blue"},
               "b_db"),
        insert("Middlebox", {"name": "fw-red", "type": "firewall",
                             "logical_switch": ["named-uuid", "ls_red"],
                             "default_action": "deny",
                             "tenant": "red",
                             "rules": ["named-uuid", "r_web"],
                             "provider_rules": ["named-uuid", "r_icmp"],
                             "options": ["map", [["check", "offload"]]]},
               "fw_red"),
        insert("Middlebox", {"name": "fw-blue", "type": "firewall",
                             "logical_switch": ["named-uuid", "ls_blue"],
                             "default_action": "allow", "tenant": "blue",
                             "rules": ["named-uuid", "b_db"]}, "fw_blue"),
    ]
    sb_ops = chassis("h1", "h2", "h3") + [
        insert("Slice", {"chain": chain("fw-red"), "chassis": "h1",
                         "tag": 10}, "s_red_h1"),
        insert("Slice", {"chain": chain("fw-red"), "chassis": "h2",
                         "tag": 11}, "s_red_h2"),
        insert("Slice", {"chain": chain("fw-blue"), "chassis": "h2",
                         "tag": 12}, "s_blue_h2"),
        located("red1", "h1"), located("red2", "h2"),
        located("blue1", "h2"), located("blue2", None),
        insert("Shared_State", {"middlebox": "fw-red", "host": "h2",
                                "service": "vm-state", "key": "red2",
                                "value": "1", "stamp": 1}, "ss_red"),
        insert("Shared_State", {"middlebox": "fw-blue", "host": "h2",
                                "service": "vm-state", "key": "blue1",
                                "value": "1", "stamp": 1}, "ss_blue"),
        insert("Migration", {"vm": "blue1", "source": "h2",
                             "destination": "h3", "path": "announced",
                             "status": "begun", "token": "t"}, "m_blue"),
    ]
    ids = _ids(nb_ops, nb_transact(world, *nb_ops))
    ids.update(_ids(sb_ops, sb_transact(world, *sb_ops)))
    return ids


@pytest.fixture
def world(dbs):
    dbs.ids = populate(dbs)
    return dbs


@pytest.fixture
def monitors():
    opened = []

    def open_monitor(world, host):
        nb, sb = world.remotes
        mon = confmon.ConfigMonitor(nb, host, sb_remote=sb)
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
        "Chassis": ["h1"],
        "Slice": [ids["s_red_h1"]],
        "VM_Location": ["red1", "red2"],
        "Shared_State": ["fw-red/vm-state/red2@h2"],
        "Migration": [],                # none names h1
        "Middlebox": ["fw-red"],
        "Firewall_Rule": sorted([ids["r_web"], ids["r_icmp"]]),
        "Address_Set": ["red-web"],
        "Logical_Switch": ["ls-red"],
        "VM": ["red1", "red2"],
        "NAT_Rule": [],
        "LB_VIP": [],
        "External_Network": [],
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
    # red2's location is h2 (VM_Location), whatever the NB mirror says.
    assert red.vms == (VmSpec("red1", "02:00:00:01:00:01", "10.1.0.1", "h1"),
                       VmSpec("red2", "02:00:00:01:00:02", "10.1.0.2", None))


def assert_nothing_of_blue(mon, ids):
    # (h2 appears only as the publisher of red's shared state.)
    assert mon.held_rows()["Chassis"] == ["h1"]
    flat = repr(mon.held_rows()) + repr(mon.conditions())
    for name in ("blue", "h3", ids["b_db"], ids["s_blue_h2"],
                 ids["s_red_h2"], ids["m_blue"], ids["fw_blue"],
                 ids["ls_blue"], "red-unused"):
        assert name not in flat, name
    # Nor in the replicas themselves, of either database.
    for idl in (mon.sb_idl, mon.nb_idl):
        rows = repr([(t, sorted(map(str, table.rows)))
                     for t, table in idl.tables.items()])
        for u in (ids["s_blue_h2"], ids["ss_blue"], ids["m_blue"],
                  ids["loc_blue1"], ids["fw_blue"], ids["b_db"],
                  ids["blue_db"], ids["ls_blue"], ids["blue1"]):
            assert u not in rows, u


def test_h1_holds_red_and_nothing_of_blue(world, monitors):
    ids = world.ids
    mon = monitors(world, "h1")
    assert mon.config().slices == {} and not mon.synced()
    settle(mon)
    assert_red_config(mon.config(), ids)
    assert mon.held_rows() == red_held(ids)
    assert_nothing_of_blue(mon, ids)
    assert mon.connected() == {"sb": True, "nb": True}


def test_one_server_serving_both_databases(one_server, monitors):
    """The lab's layout: both databases on one remote, the southbound
    remote defaulting to the northbound one."""
    ids = populate(one_server)
    mon = confmon.ConfigMonitor(one_server.remotes[0], "h1")
    try:
        settle(mon)
        assert_red_config(mon.config(), ids)
        assert mon.held_rows() == red_held(ids)
        assert_nothing_of_blue(mon, ids)
    finally:
        mon.close()


def test_h2_holds_blue_and_its_red_slice(world, monitors):
    mon = monitors(world, "h2")
    settle(mon)
    cfg = mon.config()
    assert sorted(cfg.slices) == [11, 12]
    blue = cfg.slices[12]
    assert blue.address_sets == {"blue-db": ("10.2.0.5",)}
    assert blue.vms == (VmSpec("blue1", "02:00:00:02:00:01", "10.2.0.1", "h2"),
                        VmSpec("blue2", "02:00:00:02:00:02", "10.2.0.2", None))
    assert cfg.slices[11].vms[1] == VmSpec("red2", "02:00:00:01:00:02",
                                           "10.1.0.2", "h2")
    held = mon.held_rows()
    # Its own chassis and that of the host its migration goes to.
    assert held["Chassis"] == ["h2", "h3"]
    # The row as the migration manager takes it: columns the server left
    # out (their defaults) read as their defaults.
    [m] = [migration_record(row) for row in mon.migrations()]
    assert (m.vm, m.source, m.destination, m.path, m.status, m.timeline,
            m.stats, m.outcome, m.options) == (
        "blue1", "h2", "h3", "announced", "begun", {}, {}, "", {})
    assert mon.peers()["h3"].migration_address == "ssl:192.0.2.3:6650"
    assert held["Shared_State"] == ["fw-blue/vm-state/blue1@h2",
                                    "fw-red/vm-state/red2@h2"]


def test_changes_follow_and_blue_comes_and_goes(world, monitors):
    ids = world.ids
    mon = monitors(world, "h1")
    settle(mon)
    # A new member in red's address set.
    nb_transact(world, {"op": "update", "table": "Address_Set",
                        "where": [["_uuid", "==", ref(ids["red_web"])]],
                        "row": {"addresses": ["set", ["10.1.0.10",
                                                      "10.1.0.12"]]}})
    settle(mon, lambda: mon.config().slices[10].address_sets["red-web"]
           == ("10.1.0.10", "10.1.0.12"))
    assert_red_config(mon.config(), ids, web=("10.1.0.10", "10.1.0.12"))

    # fw-blue gets a slice on h1: the whole blue chain arrives, from both
    # databases.
    [res] = sb_transact(world, {"op": "insert", "table": "Slice",
                                "row": {"chain": chain("fw-blue"),
                                        "chassis": "h1", "tag": 13}})
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
    assert held["VM_Location"] == ["blue1", "blue2", "red1", "red2"]
    assert held["Address_Set"] == ["blue-db", "red-web"]
    assert held["Shared_State"] == ["fw-blue/vm-state/blue1@h2",
                                    "fw-red/vm-state/red2@h2"]
    assert held["Chassis"] == ["h1"]
    assert held["Slice"] == sorted([ids["s_red_h1"], s_blue_h1])
    assert took < WAIT

    # ... and goes: blue leaves the config and both replicas.
    sb_transact(world, {"op": "delete", "table": "Slice",
                        "where": [["_uuid", "==", ref(s_blue_h1)]]})
    settle(mon, lambda: mon.held_rows() == red_held(ids))
    assert_red_config(mon.config(), ids, web=("10.1.0.10", "10.1.0.12"))
    assert_nothing_of_blue(mon, ids)


def test_rule_switch_and_location_changes(world, monitors):
    ids = world.ids
    mon = monitors(world, "h1")
    settle(mon)
    # A new rule with its own new address set, a new VM (no location yet).
    nb_transact(
        world,
        insert("Address_Set", {"name": "red-admin", "tenant": "red",
                               "addresses": "192.0.2.0/24"}, "adm"),
        insert("Firewall_Rule", {"priority": 300, "direction": "to-vm",
                                 "match": "proto=tcp src=$red-admin dport=22",
                                 "address_sets": ["named-uuid", "adm"],
                                 "action": "allow"},
               "r_ssh"),
        {"op": "mutate", "table": "Middlebox",
         "where": [["_uuid", "==", ref(ids["fw_red"])]],
         "mutations": [["provider_rules", "insert",
                        ["named-uuid", "r_ssh"]]]},
        insert("VM", {"name": "red3", "logical_switch": ref(ids["ls_red"]),
                      "mac": "02:00:00:01:00:03", "ip": "10.1.0.3"}, "red3"))
    settle(mon, lambda: len(mon.config().slices[10].rules) == 3
           and len(mon.config().slices[10].vms) == 3)
    red = mon.config().slices[10]
    assert red.rules[0].match == "proto=tcp src=$red-admin dport=22"
    assert red.address_sets == {"red-admin": ("192.0.2.0/24",),
                                "red-web": ("10.1.0.10", "10.1.0.11")}
    assert [(vm.name, vm.host) for vm in red.vms] == [
        ("red1", "h1"), ("red2", None), ("red3", None)]
    # red2 moves to h1 and red3 is placed on h2: the southbound locations
    # say so (the northbound mirror is not touched).
    sb_transact(world,
                {"op": "update", "table": "VM_Location",
                 "where": [["vm", "==", "red2"]],
                 "row": {"chassis": "h1", "epoch": 2}},
                located("red3", "h2"))
    settle(mon, lambda: [vm.host for vm in mon.config().slices[10].vms]
           == ["h1", "h1", None])
    assert mon.held_rows()["VM_Location"] == ["red1", "red2", "red3"]
    # Dropping the rule drops its address set from the replica (the
    # set itself stays in the DB).
    nb_transact(world, {"op": "mutate", "table": "Middlebox",
                        "where": [["_uuid", "==", ref(ids["fw_red"])]],
                        "mutations": [["rules", "delete",
                                       refs([ids["r_web"]])]]})
    settle(mon, lambda: "red-web" not in mon.held_rows()["Address_Set"])
    assert mon.config().slices[10].address_sets == {
        "red-admin": ("192.0.2.0/24",)}
    assert len(mon.config().slices[10].rules) == 2


def test_a_slice_naming_an_unknown_middlebox_waits_for_it(world, monitors):
    """A slice whose middlebox the northbound database does not (yet) hold
    is not configured; it is once the middlebox is created."""
    mon = monitors(world, "h1")
    settle(mon)
    sb_transact(world, {"op": "insert", "table": "Slice",
                        "row": {"chain": chain("fw-later"), "chassis": "h1",
                                "tag": 14}})
    settle(mon, lambda: ["name", "==", "fw-later"]
           in mon.conditions()["Middlebox"])
    assert sorted(mon.config().slices) == [10]
    nb_transact(world, insert("Middlebox", {
        "name": "fw-later", "type": "firewall", "tenant": "red",
        "logical_switch": ref(world.ids["ls_red"]),
        "default_action": "allow"}, "later"))
    settle(mon, lambda: 14 in mon.config().slices)
    assert mon.config().slices[14].middlebox == "fw-later"


def test_bad_rule_is_skipped_with_one_log_line(world, monitors, caplog):
    ids = world.ids
    mon = monitors(world, "h1")
    settle(mon)
    caplog.set_level(logging.WARNING, logger="middlebox.confmon")
    # The server refuses an empty direction (enum constraint; the unit test
    # covers it); what it accepts but mbxd cannot use: a match that does not
    # parse, and an address set member that is not an address.
    nb_transact(
        world,
        insert("Firewall_Rule", {"priority": 6, "direction": "to-vm",
                                 "match": "proto=tcp dport=70000",
                                 "action": "deny", "tenant": "red"},
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
    nb_transact(world, {"op": "mutate", "table": "Address_Set",
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


def test_slices_allocated_later(dbs, monitors):
    mon = monitors(dbs, "h1")
    settle(mon)                         # an empty, settled view
    assert mon.config().slices == {}
    assert all(rows == [] for rows in mon.held_rows().values())
    ids = populate(dbs)
    settle(mon, lambda: 10 in mon.config().slices)
    assert_red_config(mon.config(), ids)
    assert mon.held_rows() == red_held(ids)


def idl_row(idl, table, column, value):
    """The row of ``idl``'s replica whose ``column`` is ``value``, or None."""
    for row in idl.tables[table].rows.values():
        if getattr(row, column) == value:
            return row
    return None


def run_while(mon, predicate, timeout=WAIT):
    """Run ``mon`` until ``predicate()``; each round's return value (config
    changed) must be False: a monitor that is not synced keeps its config."""
    ok = confmon.run_until(mon, predicate, timeout)
    assert ok
    assert mon.run() is False


@pytest.mark.parametrize("gone", ["sb", "nb"])
def test_a_database_unreachable_keeps_the_last_config(world, monitors, gone):
    """Either database goes away: the monitor keeps the last settled config
    (even as the other database changes), and follows both again once it is
    back (python-ovs reconnects by itself, backing off up to 8 s)."""
    ids = world.ids
    mon = monitors(world, "h1")
    settle(mon)
    before = mon.config()
    if gone == "sb":
        # red3's location is decided before the VM is in the northbound
        # database (two databases: no order between them).
        sb_transact(world, located("red3", "h1"))
    getattr(world, gone).stop()
    run_while(mon, lambda: not mon.synced() and not mon.connected()[gone])
    assert mon.connected()["sb" if gone == "nb" else "nb"]
    if gone == "sb":
        # The intent changes meanwhile: it arrives, but is not applied
        # without the runtime that goes with it.  A new VM widens the
        # southbound VM_Location condition while that database is away.
        nb_transact(world, {"op": "update", "table": "Address_Set",
                            "where": [["_uuid", "==", ref(ids["red_web"])]],
                            "row": {"addresses": "10.1.0.77"}},
                    insert("VM", {"name": "red3",
                                  "logical_switch": ref(ids["ls_red"]),
                                  "mac": "02:00:00:01:00:03",
                                  "ip": "10.1.0.3"}, "red3"))
        run_while(mon, lambda: idl_row(mon.nb_idl, "Address_Set", "name",
                                       "red-web").addresses == ["10.1.0.77"]
                  and idl_row(mon.nb_idl, "VM", "name", "red3") is not None)
    else:
        # red2 moves here meanwhile: the location arrives, but is not
        # applied without the intent that goes with it.
        sb_transact(world, {"op": "update", "table": "VM_Location",
                            "where": [["vm", "==", "red2"]],
                            "row": {"chassis": "h1", "epoch": 2}})
        run_while(mon, lambda: idl_row(mon.sb_idl, "VM_Location", "vm",
                                       "red2").chassis == ["h1"])
    assert not mon.synced()
    assert mon.config() == before
    getattr(world, gone).start()
    if gone == "sb":
        settle(mon, lambda: mon.config().slices[10].address_sets["red-web"]
               == ("10.1.0.77",), timeout=20)
        assert [(vm.name, vm.host) for vm in mon.config().slices[10].vms] \
            == [("red1", "h1"), ("red2", None), ("red3", "h1")]
        held = dict(red_held(ids), VM=["red1", "red2", "red3"],
                    VM_Location=["red1", "red2", "red3"])
    else:
        settle(mon, lambda: mon.config().slices[10].vms[1].host == "h1",
               timeout=20)
        held = red_held(ids)
    assert mon.held_rows() == held
    assert_nothing_of_blue(mon, ids)
    # And it follows both databases again.
    sb_transact(world, {"op": "update", "table": "Slice",
                        "where": [["_uuid", "==", ref(ids["s_red_h1"])]],
                        "row": {"tag": 20}})
    settle(mon, lambda: list(mon.config().slices) == [20])


# ------------------------------------------------------------ mb_cfg

def private_rows(world):
    rows = sb_transact(world, {"op": "select", "table": "Chassis_Private",
                               "where": [], "columns": ["name", "controller",
                                                        "nb_cfg", "mb_cfg"]})[0]["rows"]
    return {r["name"]: (r["controller"], r["nb_cfg"], r["mb_cfg"]) for r in rows}


def reported(world, host):
    row = private_rows(world).get(host)
    return None if row is None else row[2]


def set_cfg(world, nb=None, sb=None):
    for value, do, table in ((nb, nb_transact, "NB_Global"), (sb, sb_transact, "SB_Global")):
        if value is not None:
            do(world, {"op": "update", "table": table, "where": [],
                       "row": {"nb_cfg": value}})


def test_mb_cfg_reports_the_generation_applied_across_a_reconnect(world, monitors):
    """What mbxd writes into its host's Chassis_Private.mb_cfg (middlebox.
    mbcfg), driven as the daemon does (the switch answering each barrier at
    once): the lower of the two databases' nb_cfg once settled, a change of
    another tenant too, the row created when missing and written again when
    lost, through a southbound reconnect; the controller's columns kept."""
    from middlebox import mbcfg
    nb_transact(world, {"op": "insert", "table": "NB_Global", "row": {"nb_cfg": 3}})
    sb_transact(world, {"op": "insert", "table": "SB_Global", "row": {"nb_cfg": 2}},
                {"op": "insert", "table": "Chassis_Private",
                 "row": {"name": "h2", "controller": "ctl", "nb_cfg": 2}})
    mon = monitors(world, "h1")
    writer = mbcfg.Writer(mon, "h1")

    sent = []

    def barrier():
        sent.append(len(sent) + 1)
        return sent[-1]

    def drive(value, timeout=WAIT):
        def step():
            writer.reporter.settled(mon.generation(), barrier)
            if sent:
                writer.reporter.on_barrier(sent[-1])    # the switch answers
            writer.flush()
            return reported(world, "h1") == value
        assert confmon.run_until(mon, step, timeout), (value, private_rows(world))

    drive(2)                                # no row: created with name and mb_cfg only
    assert private_rows(world)["h1"] == ("", 0, 2)
    set_cfg(world, sb=3)
    drive(3)
    # blue only (h1 holds nothing of blue): the generation advances all the same
    nb_transact(world, {"op": "update", "table": "Firewall_Rule",
                        "where": [["_uuid", "==", ref(world.ids["b_db"])]],
                        "row": {"priority": 321}},
                {"op": "update", "table": "NB_Global", "where": [], "row": {"nb_cfg": 4}})
    set_cfg(world, sb=4)
    drive(4)
    # the controller writes its columns: the daemon's stays, and the other way round
    sb_transact(world, {"op": "update", "table": "Chassis_Private",
                        "where": [["name", "==", "h1"]],
                        "row": {"controller": "ctl", "nb_cfg": 4}})
    set_cfg(world, nb=5, sb=5)
    drive(5)
    assert private_rows(world)["h1"] == ("ctl", 4, 5)
    assert private_rows(world)["h2"] == ("ctl", 2, ["set", []])   # not h1's to write
    # the southbound server goes away; the intent changes meanwhile
    world.sb.stop()
    run_while(mon, lambda: not mon.synced())
    set_cfg(world, nb=6)
    world.sb.start()
    set_cfg(world, sb=6)
    drive(6, timeout=20)
    # the row is lost (deleted behind its back): written again
    sb_transact(world, {"op": "delete", "table": "Chassis_Private",
                        "where": [["name", "==", "h1"]]})
    drive(6)
    assert private_rows(world)["h1"] == ("", 0, 6)
