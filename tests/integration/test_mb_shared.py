"""middlebox.shared against real database servers.

Four "hosts" in one process, each a ConfigMonitor + SharedState pair driven
like mbxd's loop drives them.  Tenant a: fw-a and lb-a on ls-a; h1 serves the
chain [fw-a, lb-a], h2 the chain [lb-a].  Tenant b: ids-b on ls-b, served by
h3.  h4 has no slice at first.  Shared state of lb-a must reach h1 and h2
and never h3; a host that starts serving lb-a gets the current rows; rows
follow publish / update / withdraw and the daemon's config; IDS alerts are
written as IDS_Alert rows.  Shared_State and IDS_Alert are southbound
tables; the middleboxes are northbound intent.  Most tests serve both
databases on one server, as the lab does; the southbound connection
dropping is tested with each database on its own server.
"""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

from middlebox import confmon, shared  # noqa: E402
from test_mb_confmon import (chain, chassis, insert, nb_transact,  # noqa: E402
                             ref, sb_transact)
# The database fixtures (imported into this module, pytest finds them here).
from test_mb_confmon import dbs, one_server  # noqa: E402,F401

WAIT = 5.0
HEALTH = "lb-health"


def populate(world):
    ops = [
        insert("Logical_Switch", {"name": "ls-a", "tenant": "a", "vni": 101,
                                  "subnet": "10.1.0.0/24"}, "ls_a"),
        insert("Logical_Switch", {"name": "ls-b", "tenant": "b", "vni": 102,
                                  "subnet": "10.2.0.0/24",
                                  "gateway": "10.2.0.254"}, "ls_b"),
        insert("LB_VIP", {"vip": "10.1.0.100", "port": 80, "protocol": "tcp",
                          "algorithm": "round-robin",
                          "backends": ["set", ["10.1.0.2:8080",
                                               "10.1.0.1:8080"]]}, "vip"),
        insert("Middlebox", {"name": "fw-a", "type": "firewall", "tenant": "a",
                             "logical_switch": ["named-uuid", "ls_a"],
                             "default_action": "allow"}, "fw_a"),
        insert("Middlebox", {"name": "lb-a", "type": "lb", "tenant": "a",
                             "logical_switch": ["named-uuid", "ls_a"],
                             "default_action": "allow",
                             "vips": ["named-uuid", "vip"]}, "lb_a"),
        insert("Middlebox", {"name": "ids-b", "type": "ids", "tenant": "b",
                             "logical_switch": ["named-uuid", "ls_b"],
                             "default_action": "allow",
                             "options": ["map", [["scan-threshold", "5"]]]},
               "ids_b"),
    ]
    results = nb_transact(world, *ops)
    ids = {op["uuid-name"]: result["uuid"][1]
           for op, result in zip(ops, results)}
    ops = chassis("h1", "h2", "h3", "h4") + [
        insert("Slice", {"chain": chain("fw-a", "lb-a"), "chassis": "h1",
                         "tag": 10}, "s_h1"),
        insert("Slice", {"chain": chain("lb-a"), "chassis": "h2",
                         "tag": 11}, "s_h2"),
        insert("Slice", {"chain": chain("ids-b"), "chassis": "h3",
                         "tag": 12}, "s_h3"),
    ]
    results = sb_transact(world, *ops)
    ids.update({op["uuid-name"]: result["uuid"][1]
                for op, result in zip(ops, results)})
    return ids


def db_rows(world, table):
    [result] = sb_transact(world, {"op": "select", "table": table,
                                   "where": []})
    return result["rows"]


def db_shared(world):
    return sorted((r["middlebox"], r["host"], r["service"], r["key"],
                   r["value"]) for r in db_rows(world, "Shared_State"))


@pytest.fixture
def world(one_server):
    one_server.ids = populate(one_server)
    return one_server


@pytest.fixture
def hosts():
    opened = []

    def open_host(world, name):
        nb, sb = world.remotes
        st = shared.SharedState(name, confmon.ConfigMonitor(nb, name,
                                                            sb_remote=sb))
        opened.append(st)
        return st
    yield open_host
    for st in opened:
        st.monitor.close()


def run(nodes, predicate, timeout=WAIT):
    """Drive ``nodes`` (mbxd's loop: monitor, config, pull, flush) until
    ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while True:
        shared.drive(nodes)
        if predicate():
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, [
            (st.host, st.monitor.conditions(), st.stats()) for st in nodes]


def settled(nodes):
    return all(st.monitor.synced() and st.host_config is st.monitor.config()
               and not st.busy() for st in nodes)


def test_publish_reaches_only_the_hosts_serving_the_middlebox(world, hosts):
    h1, h2, h3 = (hosts(world, h) for h in ("h1", "h2", "h3"))
    nodes = [h1, h2, h3]
    run(nodes, lambda: settled(nodes))
    assert (h1.middleboxes(), h2.middleboxes(), h3.middleboxes()) == (
        ["fw-a", "lb-a"], ["lb-a"], ["ids-b"])
    assert h1.config("lb-a").vips[0].backends == (("10.1.0.1", 8080),
                                                  ("10.1.0.2", 8080))
    assert h3.config("ids-b").options == {"scan-threshold": "5"}

    builds = [st.monitor.builds for st in nodes]
    view = {"10.1.0.1:8080": "up", "10.1.0.2:8080": "down"}
    took = shared.measure_convergence(h1, [h2], "lb-a", HEALTH, "view", view,
                                      others=[h3])
    assert set(took) == {"h2"} and took["h2"] < 2.0, took
    print("publish h1 -> visible on h2: %.2f ms" % (took["h2"] * 1000))
    assert h2.get("lb-a", HEALTH) == {"view": {"h1": view}}
    [row] = h2.listing(11)
    assert (row["host"], row["value"]) == ("h1", view)
    [delay] = shared.convergence_delays(h2.listing(), publisher="h1")
    assert 0 <= delay < 2000

    h2.publish("lb-a", HEALTH, "view", {"10.1.0.2:8080": "up"})
    h3.publish("ids-b", "ids-scan", "10.9.9.9", ["10.2.0.1:22"])
    run(nodes, lambda: "h2" in h1.get("lb-a", HEALTH).get("view", {})
        and not any(st.busy() for st in nodes))
    for _ in range(20):            # give a stray row every chance to arrive
        shared.drive(nodes)
    assert h1.get("lb-a", HEALTH) == {"view": {"h1": view, "h2": {
        "10.1.0.2:8080": "up"}}}
    # Conditional monitoring: h3 never holds lb-a's rows, h1/h2 never ids-b's.
    assert h3.monitor.held_rows()["Shared_State"] == [
        "ids-b/ids-scan/10.9.9.9@h3"]
    assert h3.get("lb-a", HEALTH) == {}
    for st in (h1, h2):
        assert {r.middlebox for r in st.monitor.shared_rows()} == {"lb-a"}
        assert st.get("ids-b", "ids-scan") == {}
    # Shared state traffic never rebuilt a HostConfig.
    assert [st.monitor.builds for st in nodes] == builds
    assert db_shared(world) == [
        ("ids-b", "h3", "ids-scan", "10.9.9.9", '["10.2.0.1:22"]'),
        ("lb-a", "h1", HEALTH, "view",
         '{"10.1.0.1:8080":"up","10.1.0.2:8080":"down"}'),
        ("lb-a", "h2", HEALTH, "view", '{"10.1.0.2:8080":"up"}')]


def test_update_and_withdraw(world, hosts):
    h1, h2 = hosts(world, "h1"), hosts(world, "h2")
    nodes = [h1, h2]
    run(nodes, lambda: settled(nodes))
    h1.publish("lb-a", HEALTH, "view", {"a": "up"})
    h1.publish("lb-a", HEALTH, "other", 1)
    run(nodes, lambda: len(h2.get("lb-a", HEALTH)) == 2)
    stamp = h2.listing()[1]["stamp"]
    time.sleep(0.01)
    h1.publish("lb-a", HEALTH, "view", {"a": "down"})
    run(nodes, lambda: h2.get("lb-a", HEALTH)["view"] == {"h1": {"a": "down"}})
    assert h2.listing()[1]["stamp"] > stamp
    assert h1.withdraw("lb-a", HEALTH, "other")
    run(nodes, lambda: "other" not in h2.get("lb-a", HEALTH)
        and not h1.busy())
    assert db_shared(world) == [("lb-a", "h1", HEALTH, "view",
                                  '{"a":"down"}')]
    assert h1.stats()["commit_failures"] == 0


def test_a_host_that_joins_gets_the_current_rows(world, hosts):
    ids = world.ids
    h1, h2, h4 = (hosts(world, h) for h in ("h1", "h2", "h4"))
    nodes = [h1, h2, h4]
    run(nodes, lambda: settled(nodes))
    assert h4.middleboxes() == []
    h1.publish("lb-a", HEALTH, "view", {"x": "up"})
    h2.publish("lb-a", HEALTH, "view", {"y": "down"})
    run(nodes, lambda: not h1.busy() and not h2.busy())
    assert h4.monitor.shared_rows() == []
    # lb-a gets a slice on h4: its rows come with the widened condition.
    sb_transact(world, insert("Slice", {"chain": chain("lb-a"),
                                        "chassis": "h4", "tag": 13}, "s_h4"))
    # The rows and the config that names lb-a arrive in separate monitor
    # updates, possibly in separate loop rounds: drive until both are in.
    took = run(nodes, lambda: set(h4.get("lb-a", HEALTH).get("view", {}))
               == {"h1", "h2"} and h4.middleboxes() == ["lb-a"])
    print("slice added -> h4 holds the current rows: %.2f ms" % (took * 1000))
    assert h4.middleboxes() == ["lb-a"]
    assert set(h4.get("lb-a", HEALTH)["view"]) == {"h1", "h2"}
    # A daemon that starts later gets them in its first update as well.
    late = hosts(world, "h2")
    run([late], lambda: late.get("lb-a", HEALTH).get("view", {}).get("h1")
        == {"x": "up"})


def test_rows_follow_the_config(world, hosts):
    ids = world.ids
    # Rows a previous run of h1 left: of lb-a (served) and of ids-b (not).
    sb_transact(world,
             insert("Shared_State", {"middlebox": "ids-b", "host": "h1",
                                     "service": "ids-scan", "key": "k",
                                     "value": "1", "stamp": 1}, "stale1"),
             insert("Shared_State", {"middlebox": "lb-a", "host": "h1",
                                     "service": HEALTH, "key": "view",
                                     "value": '{"old":"up"}', "stamp": 1},
                    "stale2"),
             insert("Shared_State", {"middlebox": "lb-a", "host": "h9",
                                     "service": HEALTH, "key": "view",
                                     "value": '{"z":"up"}', "stamp": 1},
                    "other"))
    h1, h2 = hosts(world, "h1"), hosts(world, "h2")
    nodes = [h1, h2]
    h1.publish("lb-a", HEALTH, "view", {"new": "up"})
    run(nodes, lambda: settled(nodes))
    assert db_shared(world) == [
        ("lb-a", "h1", HEALTH, "view", '{"new":"up"}'),
        ("lb-a", "h9", HEALTH, "view", '{"z":"up"}')]
    assert set(h1.get("lb-a", HEALTH)["view"]) == {"h1", "h9"}
    run(nodes, lambda: h2.get("lb-a", HEALTH)["view"].get("h1")
        == {"new": "up"})
    # h1 stops serving lb-a (its slice goes): its rows are withdrawn.
    sb_transact(world, {"op": "delete", "table": "Slice",
                        "where": [["_uuid", "==", ref(ids["s_h1"])]]})
    run(nodes, lambda: "h1" not in h2.get("lb-a", HEALTH)["view"]
        and settled(nodes))
    assert h1.middleboxes() == [] and h1.get("lb-a", HEALTH) == {}
    assert db_shared(world) == [("lb-a", "h9", HEALTH, "view", '{"z":"up"}')]


def test_alert_rows(world, hosts):
    h1, h2, h3 = (hosts(world, h) for h in ("h1", "h2", "h3"))
    nodes = [h1, h2, h3]
    run(nodes, lambda: settled(nodes))
    h3.report_alert("ids-b", "port-scan", "10.2.0.66", "", 5, ["h3"],
                    100.0, 100.5)
    run(nodes, lambda: not h3.busy())
    [row] = db_rows(world, "IDS_Alert")
    assert (row["middlebox"], row["kind"], row["source"], row["count"],
            row["hosts"], row["first_seen"], row["last_seen"],
            row["reported_by"]) == ("ids-b", "port-scan", "10.2.0.66", 5,
                                    "h3", 100000, 100500, "h3")
    # Re-alert: the same row, updated; first_seen kept.
    h3.report_alert("ids-b", "port-scan", "10.2.0.66", "", 7, ["h3", "h2"],
                    110.0, 111.0)
    # Another host alerts the same source: its own row (RBAC: a host
    # writes only rows it reported).
    h2.report_alert("ids-b", "port-scan", "10.2.0.66", "", 9, ["h2"],
                    120.0, 121.0)
    # SYN floods: one row per destination (times in ms, as the core gives).
    t = 1_700_000_000_000
    h2.report_alert("ids-b", "syn-flood", "*", "10.2.0.1:80", 300,
                    ["h2"], t, t + 2000)
    h2.report_alert("ids-b", "syn-flood", "*", "10.2.0.2:80", 300,
                    ["h2"], t, t + 2000)
    h3.report_alert("ids-b", "syn-flood", "*", "10.2.0.1:80", 310,
                    ["h3"], t + 3000, t + 4000)
    run(nodes, lambda: not h2.busy() and not h3.busy())
    rows = sorted(db_rows(world, "IDS_Alert"),
                  key=lambda r: (r["kind"], r["target"], r["reported_by"]))
    assert [(r["kind"], r["source"], r["target"], r["count"], r["first_seen"],
             r["last_seen"], r["reported_by"]) for r in rows] == [
        ("port-scan", "10.2.0.66", "", 9, 120000, 121000, "h2"),
        ("port-scan", "10.2.0.66", "", 7, 100000, 111000, "h3"),
        ("syn-flood", "*", "10.2.0.1:80", 300, t, t + 2000, "h2"),
        ("syn-flood", "*", "10.2.0.1:80", 310, t + 3000, t + 4000, "h3"),
        ("syn-flood", "*", "10.2.0.2:80", 300, t, t + 2000, "h2")]
    # readers see one record per alert, the hosts' rows merged
    from types import SimpleNamespace
    from mbxmodel.snapshot import alert_records
    merged = alert_records(
        SimpleNamespace(**dict(r, hosts=r["hosts"][1] if isinstance(r["hosts"], list)
                               else [r["hosts"]]))
        for r in db_rows(world, "IDS_Alert"))
    assert [(a.kind, a.target, a.count, a.first_seen, a.last_seen, a.reported_by)
            for a in sorted(merged, key=lambda a: (a.kind, a.target))] == [
        ("port-scan", "", 9, 100000, 121000, "h2,h3"),
        ("syn-flood", "10.2.0.1:80", 310, t, t + 4000, "h2,h3"),
        ("syn-flood", "10.2.0.2:80", 300, t, t + 2000, "h2")]
    assert [a["kind"] for a in h2.alerts()] == ["port-scan", "syn-flood",
                                                "syn-flood"]
    # Written, never monitored.
    assert "IDS_Alert" not in h1.monitor.sb_idl.tables
    assert h3.stats()["alerts_written"] == 3
    assert h2.stats()["alert_failures"] == h3.stats()["alert_failures"] == 0


def test_failed_commit_is_retried(world, hosts):
    h1 = hosts(world, "h1")
    run([h1], lambda: settled([h1]))
    plan = h1._plan

    def bad_plan_once():
        ops, effects, cleanup = plan()
        h1._plan = plan
        return ops + [{"op": "insert", "table": "Shared_State",
                       "row": {"no-such-column": 1}}], effects, cleanup
    h1._plan = bad_plan_once
    h1.publish("lb-a", HEALTH, "view", {"x": "up"})
    run([h1], lambda: not h1.busy())
    assert h1.stats()["commit_failures"] == 1
    assert db_shared(world) == [("lb-a", "h1", HEALTH, "view", '{"x":"up"}')]


def test_southbound_connection_drops_and_returns(dbs, hosts):
    """The southbound server goes away and comes back: each host keeps its
    config and the shared state it knew, a publish made meanwhile is
    written once the server is back and reaches the other host, and the
    database holds each row once."""
    dbs.ids = populate(dbs)
    h1, h2 = hosts(dbs, "h1"), hosts(dbs, "h2")
    nodes = [h1, h2]
    run(nodes, lambda: settled(nodes))
    h1.publish("lb-a", HEALTH, "view", {"a": "up"})
    h2.publish("lb-a", HEALTH, "view", {"b": "up"})
    run(nodes, lambda: "h2" in h1.get("lb-a", HEALTH).get("view", {})
        and "h1" in h2.get("lb-a", HEALTH).get("view", {})
        and not h1.busy() and not h2.busy())
    configs = [st.monitor.config() for st in nodes]
    dbs.sb.stop()
    run(nodes, lambda: not any(st.monitor.connected()["sb"] for st in nodes))
    h1.publish("lb-a", HEALTH, "view", {"a": "down"})
    # The northbound database changes meanwhile: not applied without the
    # southbound one.
    nb_transact(dbs, {"op": "update", "table": "Middlebox",
                      "where": [["name", "==", "lb-a"]],
                      "row": {"options": ["map", [["lb-only", "1"]]]}})
    run(nodes, lambda: all(
        any(row.name == "lb-a" and row.options == {"lb-only": "1"}
            for row in st.monitor.nb_idl.tables["Middlebox"].rows.values())
        for st in nodes))
    assert [st.monitor.config() for st in nodes] == configs
    assert all(not st.monitor.synced() for st in nodes)
    assert h1.middleboxes() == ["fw-a", "lb-a"] and h2.middleboxes() == ["lb-a"]
    assert h1.get("lb-a", HEALTH) == {"view": {"h1": {"a": "down"},
                                               "h2": {"b": "up"}}}
    assert h2.get("lb-a", HEALTH) == {"view": {"h1": {"a": "up"},
                                               "h2": {"b": "up"}}}
    assert h1.busy()                    # the publish waits for the server
    dbs.sb.start()
    run(nodes, lambda: h2.get("lb-a", HEALTH)["view"].get("h1") == {"a": "down"}
        and settled(nodes), timeout=20)
    assert h1.get("lb-a", HEALTH)["view"]["h2"] == {"b": "up"}
    assert h2.config("lb-a").options == {"lb-only": "1"}
    assert db_shared(dbs) == [
        ("lb-a", "h1", HEALTH, "view", '{"a":"down"}'),
        ("lb-a", "h2", HEALTH, "view", '{"b":"up"}')]


def test_commit_retried_when_the_server_comes_back(one_server, hosts):
    world = one_server
    world.ids = populate(world)
    h1 = hosts(world, "h1")
    run([h1], lambda: settled([h1]))
    world.sb.stop()
    h1.publish("lb-a", HEALTH, "view", {"while": "down"})
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        shared.drive([h1], timeout=0.05)
    assert h1.busy()
    world.sb.start()
    run([h1], lambda: not h1.busy(), timeout=20)
    assert db_shared(world) == [("lb-a", "h1", HEALTH, "view",
                                 '{"while":"down"}')]
