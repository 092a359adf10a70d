"""The controllers' southbound connection (ovsdb.southbound) against a real
ovsdb-server: the runtime rows it reports and the ones it writes."""

import json
import queue
import subprocess
import threading

import pytest

from mbxmodel.network import ChassisStatus
from mbxmodel.snapshot import SbRuntime
from ovsdb.errors import MbxError
from sbserver import remote, transact  # noqa: F401 (remote: a fixture)
from ovsdb.southbound import ENGINE_TABLES, NORTHD_TABLES, Southbound

WAIT = 10.0


def chassis(name, ip):
    return {"op": "insert", "table": "Chassis",
            "row": {"name": name, "encap_type": "geneve", "encap_ip": ip}}


class Reports:
    """What the connection reports (SbDelta values), kept as a consumer
    keeps them (``SbRuntime``, ``kept``)."""

    def __init__(self):
        self.queue = queue.Queue()
        self.kept = SbRuntime()

    def put(self, delta):
        self.queue.put(delta)

    def get(self, timeout):
        """The next report (what changed), applied to ``kept``."""
        delta = self.queue.get(timeout=timeout)
        self.kept.apply(delta)
        return delta


@pytest.fixture
def connect(remote):
    started = []

    def start(tables):
        runtime, ready = Reports(), queue.Queue()
        sb = Southbound(remote, on_runtime=runtime.put, on_ready=lambda: ready.put(True),
                        runtime_tables=tables)
        sb.start()
        started.append(sb)
        ready.get(timeout=WAIT)
        return sb, runtime
    yield start
    for sb in started:
        sb.stop()


def next_runtime(runtime, predicate):
    """The runtime rows as kept from the reports, once they satisfy
    ``predicate``."""
    while True:
        runtime.get(timeout=WAIT)
        if predicate(runtime.kept):
            return runtime.kept


def test_runtime_rows_arrive_as_what_changed_with_the_hosts_encap(remote, connect):
    transact(remote, chassis("h1", "10.200.0.11"), chassis("h2", "10.200.0.12"))
    sb, runtime = connect(NORTHD_TABLES)
    snap = next_runtime(runtime, lambda s: len(s.hosts) == 2)
    assert {h.name: (h.encap_type, h.encap_ip) for h in snap.hosts.values()} == {
        "h1": ("geneve", "10.200.0.11"), "h2": ("geneve", "10.200.0.12")}
    # what the logical controller writes comes back
    sb.set_slices({(("fw", "lb"), "h1"): 4, (("fw",), "h9"): 5},
                  {(("fw", "lb"), "h1"): {"snat-block:r": "203.0.113.5:1024-2047"}}
                  ).result(WAIT)
    sb.set_vm_location("a1", "h1", 2).result(WAIT)
    snap = next_runtime(runtime, lambda s: s.slices and s.vm_locations)
    assert snap.slices == {(("fw", "lb"), "h1"): 4}         # h9 has no chassis
    assert snap.slice_status == {(("fw", "lb"), "h1"): {
        "snat-block:r": "203.0.113.5:1024-2047"}}
    assert snap.vm_locations == {"a1": ("h1", 2)}
    sb.set_vm_location("a1", None, 2).result(WAIT)
    assert next_runtime(runtime, lambda s: s.vm_locations["a1"][0] is None
                        ).vm_locations == {"a1": (None, 2)}
    # the daemons' rows, for the logical controller
    transact(remote, {"op": "insert", "table": "IDS_Alert",
                      "row": {"middlebox": "ids", "kind": "port-scan", "source": "1.2.3.4",
                              "count": 3, "first_seen": 1, "last_seen": 2,
                              "reported_by": "h1"}})
    assert [a.source for a in next_runtime(runtime, lambda s: s.ids_alerts).ids_alerts] == [
        "1.2.3.4"]


def test_an_unannounced_migration_is_committed_before_the_future_is_done(remote, connect):
    transact(remote, chassis("h1", "10.200.0.11"), chassis("h2", "10.200.0.12"))
    sb, runtime = connect(ENGINE_TABLES)
    uuid = sb.record_migration("a1", "h1", "h2", "unannounced", 750).result(WAIT)
    out = subprocess.run(["ovsdb-client", "-f", "json", "dump", remote, "MBX_Southbound",
                          "Migration"], check=True, capture_output=True, text=True).stdout
    [row] = json.loads(out)["data"]
    assert row[0][1] == uuid            # the row is there when the future is done
    m, = next_runtime(runtime, lambda s: s.migrations).migrations
    assert (m.uuid, m.vm, m.source, m.destination, m.path, m.status, m.options) == (
        uuid, "a1", "h1", "h2", "unannounced", "begun", {"wait-ms": "750"})
    # refused: a second active migration of the VM, an unknown host
    with pytest.raises(MbxError, match="VM 'a1' already has an active migration h1 -> h2"):
        sb.record_migration("a1", "h2", "h1", "unannounced", 750).result(WAIT)
    with pytest.raises(MbxError, match="unknown host 'h9'"):
        sb.record_migration("b1", "h1", "h9", "unannounced", 750).result(WAIT)


def test_the_engine_is_not_told_of_status_and_rows_it_does_not_monitor(remote, connect):
    transact(remote, chassis("h1", "10.200.0.11"))
    sb, runtime = connect(ENGINE_TABLES)
    next_runtime(runtime, lambda s: s.hosts)
    # a host's status, the daemons' rows, a chassis's ports: no runtime news
    sb.set_chassis_statuses([ChassisStatus("h1", "ctl", True, 3, 4)]).result(WAIT)
    transact(remote,
             {"op": "insert", "table": "Shared_State",
              "row": {"middlebox": "lb", "host": "h1", "service": "lb-health",
                      "key": "k", "value": "{}", "stamp": 1}},
             {"op": "update", "table": "Chassis", "where": [["name", "==", "h1"]],
              "row": {"tunnel_ofport": 7}})
    # ... the next report is the slice written after them, alone
    sb.set_slices({(("fw",), "h1"): 2}).result(WAIT)
    delta = runtime.get(timeout=WAIT)
    assert delta.slices == {(("fw",), "h1"): (2, {})}
    assert (delta.hosts, delta.vm_locations, delta.shared_state) == ({}, {}, None)
    assert runtime.kept.slices == {(("fw",), "h1"): 2}
    assert runtime.kept.shared_state == ()
    # a new tunnel endpoint is news: that host's record
    transact(remote, {"op": "update", "table": "Chassis", "where": [["name", "==", "h1"]],
                      "row": {"encap_ip": "10.200.0.21"}})
    delta = runtime.get(timeout=WAIT)
    assert set(delta.hosts) == {"h1"} and delta.hosts["h1"].encap_ip == "10.200.0.21"


def chassis_private(remote):
    out = subprocess.run(["ovsdb-client", "transact", remote, json.dumps(
        ["MBX_Southbound", {"op": "select", "table": "Chassis_Private", "where": [],
                            "columns": ["name", "controller", "connected", "nb_cfg",
                                        "mb_cfg"]}])],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["rows"]


def test_the_controllers_status_keeps_the_daemons_mb_cfg(remote, connect):
    """mbxd writes only Chassis_Private.mb_cfg of its host, creating the row
    if the controller has not; the controller's writes leave it alone."""
    transact(remote, {"op": "insert", "table": "Chassis_Private",
                      "row": {"name": "h1", "mb_cfg": 5}})       # the daemon first
    sb, _ = connect(ENGINE_TABLES)
    sb.set_chassis_statuses([ChassisStatus("h1", "ctl", True, 3, 4),
                             ChassisStatus("h2", "ctl", True, 3, 4)]).result(WAIT)
    transact(remote, {"op": "update", "table": "Chassis_Private",
                      "where": [["name", "==", "h2"]], "row": {"mb_cfg": 2}})
    sb.set_chassis_statuses([ChassisStatus("h1", "ctl", True, 7, 4),
                             ChassisStatus("h2", "ctl", False, 7, 4)]).result(WAIT)
    assert sorted((r["name"], r["controller"], r["connected"], r["nb_cfg"], r["mb_cfg"])
                  for r in chassis_private(remote)) == [
        ("h1", "ctl", True, 7, 5), ("h2", "ctl", False, 7, 2)]


def test_a_status_whose_row_the_daemon_created_meanwhile_is_written_all_the_same(
        remote, connect):
    """The daemon creates the row while the controller's replica does not
    hold it yet: the controller's insert meets it (one row per name) and is
    written again, as an update; both keep their columns."""
    sb, _ = connect(ENGINE_TABLES)
    hold = threading.Event()
    # the connection's thread is busy: what the server sends waits unread
    held = sb.write(lambda idl_, txn: hold.wait(WAIT), "a slow write")
    transact(remote, {"op": "insert", "table": "Chassis_Private",
                      "row": {"name": "h1", "mb_cfg": 5}})
    status = sb.set_chassis_statuses([ChassisStatus("h1", "ctl", True, 3, 4)])
    hold.set()
    held.result(WAIT)
    status.result(WAIT)
    assert [(r["name"], r["controller"], r["connected"], r["nb_cfg"], r["mb_cfg"])
            for r in chassis_private(remote)] == [("h1", "ctl", True, 3, 5)]


def test_some_slices_are_written_without_touching_the_others(remote, connect):
    transact(remote, chassis("h1", "10.200.0.11"), chassis("h2", "10.200.0.12"))
    sb, runtime = connect(NORTHD_TABLES)
    next_runtime(runtime, lambda s: len(s.hosts) == 2)
    sb.set_slices({(("fw",), "h1"): 1, (("fw",), "h2"): 1, (("lb",), "h1"): 2}).result(WAIT)
    next_runtime(runtime, lambda s: len(s.slices) == 3)
    sb.update_slices({(("fw",), "h1"): (3, {"snat-block:r": "203.0.113.5:1024-2047"}),
                      (("lb",), "h1"): None, (("lb",), "h2"): (2, {}),
                      (("ids",), "h9"): (1, {})}).result(WAIT)       # h9: no chassis
    kept = next_runtime(runtime, lambda s: (("lb",), "h2") in s.slices)
    assert kept.slices == {(("fw",), "h1"): 3, (("fw",), "h2"): 1, (("lb",), "h2"): 2}
    assert kept.slice_status[(("fw",), "h1")] == {"snat-block:r": "203.0.113.5:1024-2047"}
