"""The soak's CI version (``make soak`` runs 30 minutes): 3 minutes of
continuous traffic of two tenants on a 3-host lab of its own (prefix
``$MBX_TEST_PREFIX`` + "s") while every kind of event in ``lab.soak.EVENTS``
happens once (VM churn, rules, address sets, both migration paths, restarts
of mbxd, ovs-vswitchd, the controller and a config database member).  About
5 minutes with setup and teardown.  Every check is ``lab.soak.verdict``'s:
no lost connection, new connections fail only around a switch restart,
flat memory and file descriptors, nothing left behind, every event done."""

import os

import pytest

from lab import soak
from lab.lab import Lab

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "s"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-soak"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
MINUTES = 3
INTERVAL = MINUTES * 60 / (len(soak.EVENTS) + 1)


@pytest.fixture(scope="module")
def report():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    try:
        lab.up(soak.HOSTS, log=lambda *_: None, controllers=CONTROLLERS)
        yield soak.soak(lab, RUNDIR, os.path.join(RUNDIR, "report"), MINUTES, INTERVAL,
                        log=lambda *_: None)
    finally:
        lab.down(log=lambda *_: None)


def _show(report):
    return "\n".join(soak.summary_lines(report))


def test_every_kind_of_event_happened_and_succeeded(report):
    assert sorted({e["kind"] for e in report["events"]}) == sorted(soak.EVENTS), _show(report)
    assert [e for e in report["events"] if e["error"]] == [], _show(report)


def test_no_connection_is_lost(report):
    for t in report["traffic"]:
        assert t["long_lived"] > 0 and t["replies"] > 0, _show(report)
        assert t["lost"] == [], _show(report)


def test_new_connections_fail_only_around_a_switch_restart(report):
    assert all(t["new_attempts"] > 0 for t in report["traffic"]), _show(report)
    assert set(report["new_failures_by_event"]) <= set(soak.DISRUPTIVE), _show(report)


def test_memory_and_file_descriptors_stay_flat(report):
    assert report["growth"], _show(report)
    assert [v for v in report["verdict"] if "grew" in v] == [], _show(report)


def test_nothing_is_left_behind(report):
    assert report["leftovers"] == [], _show(report)
