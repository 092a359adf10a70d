"""middlebox.shared.SharedState without a database: the pure bookkeeping
(what get/listing show, which OVSDB operations a flush would send)."""

import os
import sys
from types import SimpleNamespace as Row

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import appctl  # noqa: E402
from middlebox.config import HostConfig, ServiceSpec, SliceConfig  # noqa: E402
from middlebox.shared import SharedState, convergence_delays  # noqa: E402


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def host_config(host, chains):
    """{tag: [(name, type), ...]} -> HostConfig."""
    slices = {}
    for tag, chain in chains.items():
        services = tuple(ServiceSpec(name=n, type=t) for n, t in chain)
        slices[tag] = SliceConfig(tag=tag, middlebox=",".join(n for n, _ in chain),
                                  type="chain", tenant="t", switch="ls", vni=1,
                                  services=services)
    return HostConfig(host=host, slices=slices)


def srow(mb, host, service, key, value, stamp=1):
    return Row(middlebox=mb, host=host, service=service, key=key, value=value,
               stamp=stamp)


def where(mb, host, service, key):
    return [["middlebox", "==", mb], ["host", "==", host],
            ["service", "==", service], ["key", "==", key]]


@pytest.fixture
def sh():
    clock = Clock()
    st = SharedState("h1", clock=clock)
    st.clock = clock
    return st


def test_nothing_is_written_before_the_config(sh):
    assert sh.publish("lb-a", "lb-health", "view", {"10.0.0.1:80": "up"})
    assert sh.pending_ops() == []
    assert sh.get("lb-a", "lb-health") == {"view": {"h1": {"10.0.0.1:80": "up"}}}
    assert sh.middleboxes() == []


def test_publish_plans_cleanup_then_upsert(sh):
    sh.set_config(host_config("h1", {10: [("fw-a", "firewall"), ("lb-a", "lb")]}))
    assert sh.middleboxes() == ["fw-a", "lb-a"]
    assert sh.config("lb-a") == ServiceSpec(name="lb-a", type="lb")
    assert sh.config("other") is None
    sh.clock.t = 1000.5
    sh.publish("lb-a", "lb-health", "view", {"b": 1, "a": [1, 2]})
    ops = sh.pending_ops()
    assert ops[0] == {"op": "delete", "table": "Shared_State",
                      "where": [["host", "==", "h1"], ["middlebox", "!=", "fw-a"],
                                ["middlebox", "!=", "lb-a"]]}
    w = where("lb-a", "h1", "lb-health", "view")
    assert ops[1:] == [
        {"op": "delete", "table": "Shared_State", "where": w},
        {"op": "insert", "table": "Shared_State",
         "row": {"middlebox": "lb-a", "host": "h1", "service": "lb-health",
                 "key": "view", "value": '{"a":[1,2],"b":1}', "stamp": 1000500}}]
    # Unchanged value: no-op.
    assert not sh.publish("lb-a", "lb-health", "view", {"a": [1, 2], "b": 1})


def test_known_rows_are_updated_or_deleted(sh):
    sh.set_config(host_config("h1", {10: [("lb-a", "lb")]}))
    sh._cleanup = None                      # as after a successful commit
    # The replica shows this host's rows (e.g. of a previous run).
    sh.update_rows([srow("lb-a", "h1", "lb-health", "view", '{"x":"up"}'),
                    srow("lb-a", "h1", "lb-health", "old", '1')])
    sh.publish("lb-a", "lb-health", "view", {"x": "down"})
    ops = sh.pending_ops()
    assert ops == [
        {"op": "delete", "table": "Shared_State",
         "where": where("lb-a", "h1", "lb-health", "old")},
        {"op": "update", "table": "Shared_State",
         "where": where("lb-a", "h1", "lb-health", "view"),
         "row": {"value": '{"x":"down"}', "stamp": 1000000}}]
    # The value the DB holds already: nothing to do for it.
    sh.publish("lb-a", "lb-health", "view", {"x": "up"})
    assert [op["op"] for op in sh.pending_ops()] == ["delete"]
    # Withdraw: delete.
    assert sh.withdraw("lb-a", "lb-health", "view")
    assert not sh.withdraw("lb-a", "lb-health", "view")
    assert [op["op"] for op in sh.pending_ops()] == ["delete", "delete"]


def test_covered_replica_prunes_rows_that_are_gone(sh):
    sh.set_config(host_config("h1", {10: [("lb-a", "lb")]}))
    sh._cleanup = None
    sh.update_rows([srow("lb-a", "h1", "s", "k", '1')])
    sh.publish("lb-a", "s", "k", 1)
    assert sh.pending_ops() == []
    # Deleted behind our back; the replica (covering lb-a) shows it: insert.
    sh.update_rows([], covered=None)
    assert sh.pending_ops() == []           # not known to be gone
    sh.update_rows([], covered={"lb-a"})
    assert [op["op"] for op in sh.pending_ops()] == ["delete", "insert"]


def test_config_change_drops_state_and_plans_cleanup(sh):
    sh.set_config(host_config("h1", {10: [("lb-a", "lb")], 11: [("ids-b", "ids")]}))
    sh._cleanup = None
    sh.publish("lb-a", "lb-health", "view", {})
    sh.publish("ids-b", "ids-scan", "10.0.0.9", ["10.0.0.1:22"])
    sh.set_config(host_config("h1", {11: [("ids-b", "ids")]}))
    assert sh.get("lb-a", "lb-health") == {}
    ops = sh.pending_ops()
    assert ops[0]["where"] == [["host", "==", "h1"], ["middlebox", "!=", "ids-b"]]
    assert [op["op"] for op in ops[1:]] == ["delete", "insert"]
    assert ops[2]["row"]["middlebox"] == "ids-b"
    # The same set of middleboxes again: no new cleanup.
    sh._cleanup = None
    sh.set_config(host_config("h1", {12: [("ids-b", "ids")]}))
    assert sh._cleanup is None


def test_other_hosts_rows_and_listing(sh):
    sh.set_config(host_config("h1", {10: [("fw-a", "firewall"), ("lb-a", "lb")],
                                     11: [("ids-b", "ids")]}))
    sh.clock.t = 2000.0
    sh.update_rows([srow("lb-a", "h2", "lb-health", "view", '{"x":"down"}', 1999000),
                    srow("lb-a", "h3", "lb-health", "view", '{"y":"up"}', 1999500),
                    srow("lb-a", "h3", "lb-health", "bad", 'not json', 1),
                    srow("ids-b", "h2", "ids-scan", "10.9.9.9", '["a"]', 5)])
    sh.publish("lb-a", "lb-health", "view", {"z": "up"})
    assert sh.get("lb-a", "lb-health") == {"view": {"h2": {"x": "down"},
                                                    "h3": {"y": "up"},
                                                    "h1": {"z": "up"}}}
    assert sh.get("ids-b", "ids-scan") == {"10.9.9.9": {"h2": ["a"]}}
    rows = sh.listing(10)
    assert [(r["host"], r["stamp"], r["received"]) for r in rows] == [
        ("h1", 2000000, 2000000), ("h2", 1999000, 2000000),
        ("h3", 1999500, 2000000)]
    assert [r["middlebox"] for r in sh.listing()] == ["ids-b"] + ["lb-a"] * 3
    assert [r["middlebox"] for r in sh.listing(11)] == ["ids-b"]
    with pytest.raises(KeyError):
        sh.listing(99)
    assert sorted(convergence_delays(rows)) == [0, 500, 1000]
    assert convergence_delays(rows, publisher="h2") == [1000]
    # A row unchanged keeps its arrival time; a changed one gets a new one.
    sh.clock.t = 2001.0
    sh.update_rows([srow("lb-a", "h2", "lb-health", "view", '{"x":"down"}', 1999000),
                    srow("lb-a", "h3", "lb-health", "view", '{"y":"down"}', 2000900)])
    got = {r["host"]: r["received"] for r in sh.listing(10)}
    assert got == {"h1": 2000000, "h2": 2000000, "h3": 2001000}
    assert {r["middlebox"] for r in sh.listing()} == {"lb-a"}
    assert sh.get("ids-b", "ids-scan") == {}


def test_report_alert_keeps_one_per_key(sh):
    sh.report_alert("ids-b", "port-scan", "10.9.9.9", "", 20, ["h2", "h1"],
                    100.0, 101.5)
    sh.report_alert("ids-b", "syn-flood", "10.9.9.8", "10.0.0.1:80", 500, ["h1"],
                    102.0, 103.0)
    sh.report_alert("ids-b", "port-scan", "10.9.9.9", "", 25, ["h1"],
                    110.0, 111.0)
    alerts = sh.alerts()
    assert [(a["kind"], a["count"], a["first_seen"], a["last_seen"]) for a in alerts] \
        == [("syn-flood", 500, 102000, 103000), ("port-scan", 25, 100000, 111000)]
    assert alerts[1]["hosts"] == ["h1"] and alerts[1]["reported_by"] == "h1"
    assert len(sh._alert_pending) == 2
    # SYN floods: one per destination; times may come in ms (as the core's).
    t = 1_700_000_000
    sh.report_alert("ids-b", "syn-flood", "*", "10.0.0.2:80", 400, ["h1"],
                    t * 1000, t * 1000 + 500)
    sh.report_alert("ids-b", "syn-flood", "*", "10.0.0.3:80", 400, ["h1"],
                    t, t + 0.5)
    assert [(a["target"], a["first_seen"], a["last_seen"]) for a in sh.alerts()[2:]] \
        == [("10.0.0.2:80", t * 1000, t * 1000 + 500),
            ("10.0.0.3:80", t * 1000, t * 1000 + 500)]
    assert len(sh._alert_pending) == 4
    with pytest.raises(ValueError):
        sh.report_alert("ids-b", "worm", "x", "", 1, [], 0, 0)


def test_appctl_tables(sh):
    sh.set_config(host_config("h1", {10: [("lb-a", "lb")]}))
    sh.clock.t = 100.0
    sh.update_rows([srow("lb-a", "h2", "lb-health", "view", '{"x":"down"}', 98000)])
    sh.publish("lb-a", "lb-health", "view", {"x": "up"})
    text = appctl._shared_table(sh.listing(10), 100.5)
    lines = text.splitlines()
    assert lines[0].split() == ["MIDDLEBOX", "SERVICE", "KEY", "HOST", "VALUE", "AGE"]
    assert lines[1].split() == ["lb-a", "lb-health", "view", "h1", '{"x":"up"}', "0.5s"]
    assert lines[2].split() == ["lb-a", "lb-health", "view", "h2", '{"x":"down"}', "2.5s"]
    assert appctl._shared_table([], 0) == "no shared state\n"
    sh.report_alert("lb-a", "port-scan", "10.9.9.9", "", 20, ["h2", "h1"], 100.0, 101.5)
    line = appctl._alert_line(sh.alerts()[0])
    assert line.startswith("kind=port-scan middlebox=lb-a source=10.9.9.9 target=- "
                           "count=20 hosts=h1,h2 first_seen=")
    assert line.endswith(" reported_by=h1")
