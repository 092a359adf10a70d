"""A controller serving one host reads only the Datapath rows of the
switches present there (ovsdb.southbound with ``hosts``, ovsdb.localdp),
against a real ovsdb-server: nothing of another tenant's switch in its
replica, widening as a VM of another switch binds there, narrowing as it
leaves."""

import json
import queue

import pytest

from sbserver import remote, transact  # noqa: F401 (remote: a fixture)
from ovsdb.southbound import ENGINE_TABLES, NORTHD_TABLES, Southbound

WAIT = 10.0


def config(*vms):
    return json.dumps({"vms": [{"name": vm} for vm in vms], "secret": "x" * 100})


def bind(vm, host, ofport):
    return {"op": "insert", "table": "Port_Binding",
            "row": {"logical_port": vm, "chassis": host, "ofport": ofport,
                    "mac": ""}}


def unbind(vm):
    return {"op": "delete", "table": "Port_Binding",
            "where": [["logical_port", "==", vm]]}


@pytest.fixture
def world(remote):
    """Two hosts; tenant red's ls-red has r1 on h1, blue's ls-blue b1 on
    h2, green's ls-green g1 on h2 and a slice of its chain on h1; ls-gray
    has no VM bound anywhere.  Written as mbx-northd writes them."""
    transact(remote, *[{"op": "insert", "table": "Chassis",
                        "row": {"name": h, "encap_type": "vxlan", "encap_ip": ip}}
                       for h, ip in (("h1", "10.200.0.11"), ("h2", "10.200.0.12"))],
             bind("r1", "h1", 5), bind("b1", "h2", 5), bind("g1", "h2", 6))
    northd = Southbound(remote, runtime_tables=NORTHD_TABLES, datapaths=True)
    northd.start()
    try:
        northd.set_datapaths({"ls-red": ("red", 1, config("r1", "r2")),
                              "ls-blue": ("blue", 2, config("b1", "b2")),
                              "ls-green": ("green", 3, config("g1")),
                              "ls-gray": ("gray", 4, config("y1"))},
                             nb_cfg=1).result(WAIT)
        northd.set_slices({(("fw-g",), "h1"): 1, (("fw-g",), "h2"): 1},
                          datapaths={("fw-g",): "ls-green"}).result(WAIT)
    finally:
        northd.stop()
    return remote


@pytest.fixture
def local(world):
    """A Southbound serving h1 only: its events, in order, on a queue."""
    events = queue.Queue()
    sb = Southbound(world, runtime_tables=ENGINE_TABLES, datapaths=True, hosts={"h1"},
                    on_datapaths=lambda rows, nb_cfg: events.put(("datapaths", set(rows))),
                    on_ports=lambda host, ports: events.put(
                        ("ports", host, set(ports.vm_ports))),
                    on_ready=lambda: events.put(("ready",)))
    sb.start()
    yield sb, events, world
    sb.stop()


def until(events, predicate, seen=None):
    """Events until one satisfies ``predicate``; they are added to ``seen``."""
    while True:
        event = events.get(timeout=WAIT)
        if seen is not None:
            seen.append(event)
        if predicate(event):
            return event


def replica(sb):
    """{name: config} of the Datapath rows the connection's replica holds."""
    return {r.name: r.config for r in list(sb._idl.tables["Datapath"].rows.values())}


def test_the_rows_ports_are_the_switchs_vms(world):
    out = transact(world, {"op": "select", "table": "Datapath", "where": [],
                           "columns": ["name", "ports"]})
    ports = {r["name"]: r["ports"] for r in out[0]["rows"]}
    assert ports["ls-red"] == ["set", ["r1", "r2"]]
    assert ports["ls-green"] == "g1"             # a one-element set
    out = transact(world, {"op": "select", "table": "Slice", "where": [],
                           "columns": ["chassis", "datapath"]})
    assert {(r["chassis"], r["datapath"]) for r in out[0]["rows"]} == {
        ("h1", "ls-green"), ("h2", "ls-green")}


def test_a_one_host_controller_holds_only_its_hosts_switches(local):
    sb, events, _remote = local
    seen = []
    until(events, lambda e: e[0] == "ready", seen)
    # its VM's switch and its slice's switch; nothing of blue or gray
    assert ("datapaths", {"ls-red", "ls-green"}) in seen
    assert set(replica(sb)) == {"ls-red", "ls-green"}
    # every host's bindings still arrive (tunnels to the switch's other VMs)
    assert ("ports", "h2", {"b1", "g1"}) in seen


def test_a_vm_of_another_switch_binding_here_widens_then_leaving_narrows(local):
    sb, events, remote = local
    until(events, lambda e: e[0] == "ready")
    transact(remote, bind("b2", "h1", 7))
    seen = []
    until(events, lambda e: e == ("ports", "h1", {"r1", "b2"}), seen)
    # the switch's record is reported before the binding that needs it
    assert ("datapaths", {"ls-red", "ls-green", "ls-blue"}) in seen
    assert set(replica(sb)) == {"ls-red", "ls-green", "ls-blue"}
    # its last VM here leaves: the record goes from the replica
    transact(remote, unbind("b2"))
    seen = []
    until(events, lambda e: e == ("ports", "h1", {"r1"}), seen)
    assert ("datapaths", {"ls-red", "ls-green"}) in seen
    assert set(replica(sb)) == {"ls-red", "ls-green"}


def test_a_switch_whose_last_vm_and_slice_leave_is_dropped(local):
    sb, events, remote = local
    until(events, lambda e: e[0] == "ready")
    transact(remote, unbind("r1"))
    until(events, lambda e: e == ("datapaths", {"ls-green"}))
    assert set(replica(sb)) == {"ls-green"}
    transact(remote, {"op": "delete", "table": "Slice",
                      "where": [["chassis", "==", "h1"]]})
    until(events, lambda e: e == ("datapaths", set()))
    assert replica(sb) == {}


def test_a_row_written_before_ports_existed_gets_them_when_compared(remote):
    transact(remote, {"op": "insert", "table": "Datapath",
                      "row": {"name": "ls-old", "tenant": "old", "vni": 9,
                              "config": config("o1")}})
    northd = Southbound(remote, runtime_tables=NORTHD_TABLES, datapaths=True)
    northd.start()
    try:
        northd.set_datapaths({"ls-old": ("old", 9, config("o1"))},
                             complete=True).result(WAIT)
    finally:
        northd.stop()
    out = transact(remote, {"op": "select", "table": "Datapath", "where": [],
                            "columns": ["ports"]})
    assert out[0]["rows"] == [{"ports": "o1"}]


def test_slices_changed_one_by_one_carry_their_switch(world):
    northd = Southbound(world, runtime_tables=NORTHD_TABLES, datapaths=True)
    northd.start()
    try:
        northd.update_slices({(("fw-r",), "h1"): (2, {})},
                             datapaths={("fw-r",): "ls-red"}).result(WAIT)
    finally:
        northd.stop()
    out = transact(world, {"op": "select", "table": "Slice", "where": [],
                           "columns": ["chassis", "tag", "datapath"]})
    assert {(r["chassis"], r["tag"], r["datapath"]) for r in out[0]["rows"]} == {
        ("h1", 1, "ls-green"), ("h2", 1, "ls-green"), ("h1", 2, "ls-red")}
