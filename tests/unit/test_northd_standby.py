"""The logical controller's active/standby logic, Shared_State leases and
migration retention: pure logic on the fake databases of test_engine
(the real lock and processes: tests/integration/test_northd_lock.py and
test_northd_ha.py)."""

import dataclasses
import json

import pytest

from mbxmodel.state import MigrationRecord, SharedRecord
from middlebox.shared import SharedState
from ovsdb import validate
from ovsdb.errors import MbxError
from ryu_apps.expiry import MigrationAges, SharedLeases
from ryu_apps.northd import Northd
from test_engine import VIP_UUID, _done, running_services


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def health(host, stamp=1, **states):
    return SharedRecord("lb-a", host, "lb-health", VIP_UUID, json.dumps(states), stamp)


def fed(h, active, clock=None, wall=None):
    """Another logical controller given every event the harness's one got
    (the same databases, replicas warm)."""
    nd = Northd(h.nb, h.sb, active=active, clock=clock or Clock(), wall=wall or Clock(2e9))
    nd.runtime_changed(h.sb.snapshot())
    for host, ports in sorted(h.northd.bindings.host_ports.items()):
        nd.host_ports_changed(host, ports)
    nd.chassis_status_changed(dict(h.sb.status))
    nd.sb_cfg_changed(h.sb.sb_cfg)
    nd.nb_changed()
    nd.southbound_ready()
    nd.datapaths_changed(dict(h.sb.datapaths), h.sb.nb_cfg)
    return nd


def writes(h):
    return (list(h.nb.writes), list(h.sb.writes), list(h.sb.datapath_writes),
            h.sb.sb_cfg, h.sb.nb_cfg)


# ------------------------------------------------------- active / standby

def test_a_standby_writes_nothing_while_everything_changes():
    h = running_services(shared=(health("h1", **{"10.0.0.4:80": "down"}),))
    before = writes(h)
    standby = fed(h, active=False)
    h.nb.bump_nb_cfg()
    standby.nb_changed()
    standby.chassis_status_changed(dict(h.sb.status))
    standby.tick()
    assert writes(h) == before
    assert standby.status_lines()[0] == "Status: standby"


def test_takeover_of_a_complete_database_writes_nothing():
    h = running_services(shared=(health("h1", **{"10.0.0.4:80": "down"}),))
    before = writes(h)
    standby = fed(h, active=False)
    standby.set_active(True)            # the active instance died
    assert writes(h) == before          # 0 churn: Datapath, Slice, locations, status
    lines = standby.status_lines()
    assert lines[0] == "Status: active" and any(
        line.startswith("First round as active: ") for line in lines)
    assert standby.takeovers == 1


def test_takeover_writes_what_changed_while_no_one_was_active():
    h = running_services()
    standby = fed(h, active=False)
    h.nb.writes.clear()
    nb_cfg = h.nb.bump_nb_cfg()         # a change nobody has written yet
    standby.nb_changed()
    assert h.nb.writes == []
    standby.set_active(True)
    assert h.nb.writes_of("northd_cfg") == [(nb_cfg,)]
    assert h.sb.nb_cfg == nb_cfg


def test_losing_the_lock_stops_the_writes():
    h = running_services()
    h.northd.set_active(False)
    before = writes(h)
    h.nb.bump_nb_cfg()
    h.northd.nb_changed()
    assert writes(h) == before


# ------------------------------------------------------------ leases

def test_a_row_unchanged_for_a_lease_is_expired_and_a_refreshed_one_is_not():
    leases = SharedLeases()
    a, b = health("h1", stamp=1), health("h2", stamp=1)
    leases.observe([a, b], now=0)
    assert leases.expired(now=30, lease=30) == []
    b2 = dataclasses.replace(b, stamp=2)        # h2 refreshed its stamp
    leases.observe([a, b2], now=20)
    assert leases.expired(now=30.5, lease=30) == [a]
    assert leases.age(b2, now=30.5) == 10.5
    leases.observe([b2], now=31)                # a deleted
    assert leases.expired(now=49, lease=30) == [] and len(leases) == 1
    assert leases.expired(now=51, lease=30) == [b2]


def test_the_active_controller_deletes_expired_rows_with_the_lease_of_the_options():
    clock = Clock(0)
    h = running_services(shared=(health("h1", **{"10.0.0.4:80": "down"}),
                                 health("h2", **{"10.0.0.2:80": "up"})))
    h.nb.configure(global_options={"shared-state-lease": "10"})
    deleted = []
    h.sb.delete_shared_state = lambda records: deleted.append(list(records)) or _done(
        len(records))
    h.sb.delete_migrations = lambda uuids: _done(0)
    standby = fed(h, active=False, clock=clock)
    active = fed(h, active=True, clock=clock)
    clock.t = 9
    active.runtime_changed(dataclasses.replace(
        h.sb.snapshot(), shared_state=(health("h1", **{"10.0.0.4:80": "down"}),
                                       health("h2", stamp=2, **{"10.0.0.2:80": "up"}))))
    clock.t = 10.5
    active.tick()
    standby.tick()
    assert [[r.host for r in rows] for rows in deleted] == [["h1"]]
    assert active.expired_rows["shared_state"] == 1
    active.tick()                       # the deletion is not done twice
    assert len(deleted) == 2            # (the fake deletes nothing: asked again)


def test_a_new_controller_counts_a_row_from_when_it_first_saw_it():
    leases = SharedLeases()
    leases.observe([health("h1", stamp=1)], now=500)   # old row, new controller
    assert leases.expired(now=529, lease=30) == []


def test_lease_and_retention_options_are_validated():
    assert validate.global_option("shared-state-lease", "3") == "3"
    assert validate.global_option("shared-state-lease", "3600") == "3600"
    for bad in ("2", "3601", "x", "-5"):
        with pytest.raises(MbxError):
            validate.global_option("shared-state-lease", bad)
    assert validate.global_option("migration-retention", "10") == "10"
    with pytest.raises(MbxError):
        validate.global_option("migration-retention", "9")
    assert validate.global_shared_state_lease({}) == 30
    assert validate.global_shared_state_lease({"shared-state-lease": "oops"}) == 30
    assert validate.global_migration_retention({}) == 3600
    assert validate.global_migration_retention({"migration-retention": "60"}) == 60


def test_the_daemon_refreshes_its_stamps_every_third_of_the_lease_when_it_has_rows():
    mono, wall = Clock(0), Clock(1000)
    st = SharedState("h1", clock=wall, monotonic=mono, lease_s=9)

    class Cfg:
        slices = {}
    st.set_config(Cfg())
    mono.t = 100
    assert st.refresh_op() is None      # no rows: nothing to refresh
    st.publish("lb-a", "lb-health", "k", {"10.0.0.4:80": "down"})
    op = st.refresh_op()
    assert op == {"op": "update", "table": "Shared_State",
                  "where": [["host", "==", "h1"]], "row": {"stamp": 1000000}}
    st._refreshed = 100                 # (as flush does once the refresh committed)
    mono.t = 102.9
    assert st.refresh_op() is None
    mono.t = 103
    assert st.refresh_op() is not None


# ----------------------------------------------------------- retention

def migration(uuid, status, timeline):
    return MigrationRecord(uuid, "vm1", "h1", "h2", "announced", status, "t" * 32,
                           timeline, {}, "", {})


def test_finished_migrations_past_their_retention_are_named():
    now_ms = 10_000_000
    old_done = migration("m1", "done", {"begun": now_ms - 4_000_000, "done": now_ms - 3_700_000})
    recent = migration("m2", "aborted", {"begun": now_ms - 100_000, "aborted": now_ms - 90_000})
    active = migration("m3", "streaming", {"begun": now_ms - 9_000_000})
    bare = migration("m4", "fallback", {})
    ages = MigrationAges()
    ms = [old_done, recent, active, bare]
    ages.observe(ms, now=0)
    assert ages.expired(ms, now=10, now_ms=now_ms, retention=3600) == [old_done]
    assert ages.expired(ms, now=3601, now_ms=now_ms, retention=3600) == [bare, old_done]
    assert ages.expired(ms, now=10, now_ms=now_ms, retention=60) == [old_done, recent]


def test_the_active_controller_deletes_old_migrations():
    h = running_services()
    now_ms = int(2e12)
    h.sb.configure(migrations=(
        migration("m1", "done", {"done": now_ms - 3_601_000}),
        migration("m2", "done", {"done": now_ms - 100_000})))
    asked = []
    h.sb.delete_shared_state = lambda records: _done(0)
    h.sb.delete_migrations = lambda uuids: asked.append(list(uuids)) or _done(len(uuids))
    nd = fed(h, active=True, wall=Clock(now_ms / 1000))
    nd.tick()
    assert asked == [["m1"]]
    assert nd.expired_rows["migrations"] == 1


def test_the_refresh_timer_wakes_the_daemon_only_before_the_refresh_is_due():
    mono = Clock(0)
    st = SharedState("h1", clock=Clock(1000), monotonic=mono, lease_s=9)

    class Cfg:
        slices = {}

    class Poller:
        def __init__(self):
            self.timers = []

        def timer_wait(self, ms):
            self.timers.append(ms)
    st.set_config(Cfg())
    st.publish("lb-a", "lb-health", "k", {"10.0.0.4:80": "up"})
    mono.t = 1
    poller = Poller()
    st.wait(poller)
    assert poller.timers == [2001]      # due at 3 s
    mono.t = 5                          # due, but not sent yet (database away, ...)
    poller = Poller()
    st.wait(poller)
    assert poller.timers == []          # no zero timeout: the loop does not spin


def test_no_northbound_write_once_the_connection_lost_the_lock_before_the_news():
    h = running_services()
    h.sb.lock_held = lambda: False      # lost; set_active(False) still queued
    before = list(h.nb.writes)
    h.nb.bump_nb_cfg()
    h.northd.nb_changed()
    assert h.nb.writes == before


def test_a_northbound_status_write_that_fails_is_written_at_the_next_tick(caplog):
    """A status write the database does not take (a timeout under load, a
    leader change) raises nothing out of the event: one warning, and the
    timer writes it again, with the VM.host mirrors of the same round."""
    h = running_services(shared=(health("h1", **{"10.0.0.4:80": "down"}),))
    nd = h.northd
    real_apply, failing = h.nb.apply, {"left": 2}

    def flaky(write):
        if write[0] in ("vip", "mirror") and failing["left"]:
            failing["left"] -= 1
            raise MbxError("config database transaction failed: exceeded timeout 5 seconds")
        real_apply(write)
    h.nb.apply = flaky
    h.sb.configure(shared_state=(health("h1", **{"10.0.0.4:80": "up"}),))
    h.notify()                                  # the vip write fails: no exception
    assert h.nb.snap.vips["lb-a"][0].status == {"10.0.0.4:80": "down"}
    assert nd.nb_write_failures == 1
    nd.tick()                                   # fails again: still one warning
    nd.tick()
    assert h.nb.snap.vips["lb-a"][0].status == {"10.0.0.4:80": "up"}
    warned = [r for r in caplog.records if "northbound status write" in r.getMessage()]
    assert len(warned) == 1
    assert any(line == "Northbound status writes failed: 2" for line in nd.status_lines())
    before = len(h.nb.writes)
    nd.tick()                                   # nothing owed any more
    assert len(h.nb.writes) == before
