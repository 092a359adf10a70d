"""Random invalid rows written straight into the config databases of a live
lab (``lab.rowfuzz``: over the privileged unix sockets, past mbxctl) by one
tenant, while another tenant's traffic is checked all along: no daemon
dies, the other tenant sees no failure, the hosts keep applying
configuration, and the daemons log no traceback and no warning at every
event.  A lab of its own (prefix
``$MBX_TEST_PREFIX`` + "w"): two hosts, tenants rf-red (the writer) and
rf-blue (long-lived connections and new ones between its VMs on both
hosts).  About two minutes; ``MBX_ROWFUZZ_SEED`` picks another sequence
(``python -m lab.rowfuzz --seed N`` replays one by hand)."""

import json
import os

import pytest

from lab import rowfuzz as RF
from lab.lab import Lab

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "w"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-rowfuzz"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
SEED = int(os.environ.get("MBX_ROWFUZZ_SEED", "1"))
SECONDS = 60


@pytest.fixture(scope="module")
def fuzzed():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    traffic = None
    try:
        lab.up(["h1", "h2"], log=lambda *_: None, controllers=CONTROLLERS)
        traffic = RF.setup(lab, RUNDIR)
        report = RF.run(lab, [traffic], SECONDS, SEED, RF.ATTACKER.name,
                        [RF.ATTACKER.switch], list(RF.ATTACKER.vms))
        traffic.stop()
        report["traffic"] = [traffic.summary()]
        report["attacker_after_cleanup"] = RF.attacker_still_works(lab)
        yield report
    finally:
        if traffic is not None:
            traffic.stop()
        lab.down(log=lambda *_: None)


def _show(report):
    brief = {k: v for k, v in report.items() if k != "outcomes"}
    return "seed %d: %s" % (SEED, json.dumps(brief, indent=1)[:6000])


def test_the_fuzzer_wrote_many_rows_the_schema_accepted(fuzzed):
    assert fuzzed["committed"] >= 50, _show(fuzzed)
    assert fuzzed["db_errors"] == [], _show(fuzzed)


def test_no_daemon_dies(fuzzed):
    assert fuzzed["died"] == [], _show(fuzzed)


def test_the_other_tenant_sees_no_failure(fuzzed):
    victim = fuzzed["traffic"][0]
    assert victim["long_lived"] > 0 and victim["replies"] > 0, _show(fuzzed)
    assert victim["lost"] == [], _show(fuzzed)
    assert victim["new_attempts"] > 0 and victim["new_failures"] == 0, _show(fuzzed)


def test_every_host_keeps_applying_configuration(fuzzed):
    assert fuzzed["wait_hv_failures"] == [], _show(fuzzed)


def test_a_bad_row_is_logged_without_a_traceback(fuzzed):
    assert fuzzed["new_tracebacks"] == {}, _show(fuzzed)


def test_a_bad_row_is_logged_once_not_at_every_event(fuzzed):
    assert fuzzed["repeated_warnings"] == {}, _show(fuzzed)


def test_the_writers_own_good_rows_work_after_its_bad_ones_are_gone(fuzzed):
    assert fuzzed["attacker_after_cleanup"] is None, _show(fuzzed)
