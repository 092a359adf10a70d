"""QEMU's MIGRATION events mapped onto mbx's steps (hypervisor.adapter), fed
the orders QEMU really emits them in."""

import pytest

from hypervisor import adapter
from hypervisor.adapter import (
    ABORT, BEGIN, DESTINATION, DONE, SOURCE, STUN, Action, Config, QmpTracker,
    mbxctl_argv, qmp_actions)

SRC, DST = SOURCE, DESTINATION


def run(events, vm="mv", source="h1", destination="h2"):
    """The steps a tracker sends for ``events`` [(role, status)], in order."""
    tracker = QmpTracker(vm, source, destination)
    steps = []
    for role, status in events:
        steps += tracker.handle(role, status)
    return steps, tracker


def test_a_successful_migration_is_begin_stun_done():
    # Outgoing: setup, active, pre-switchover (paused), device, completed;
    # incoming: active, completed.
    steps, tracker = run([(SRC, "setup"), (SRC, "active"), (DST, "active"),
                          (SRC, "pre-switchover"), (SRC, "device"), (DST, "completed"),
                          (SRC, "completed")])
    assert steps == [Action(BEGIN, "mv", "h2"), Action(STUN, "mv", "h1"),
                     Action(DONE, "mv", "h2")]
    assert tracker.over


def test_the_source_completing_first_does_not_end_it():
    steps, tracker = run([(SRC, "setup"), (SRC, "pre-switchover"), (SRC, "completed")])
    assert [a.verb for a in steps] == [BEGIN, STUN]
    assert not tracker.over
    assert tracker.handle(DST, "completed") == [Action(DONE, "mv", "h2")]


def test_failure_before_the_pause_aborts_once():
    steps, tracker = run([(SRC, "setup"), (SRC, "active"), (SRC, "failed"),
                          (DST, "failed")])
    assert steps == [Action(BEGIN, "mv", "h2"), Action(ABORT, "mv", "h1")]
    assert tracker.over


def test_cancelled_during_the_pause_aborts_and_nothing_follows():
    steps, _ = run([(SRC, "setup"), (SRC, "pre-switchover"), (SRC, "cancelling"),
                    (SRC, "cancelled"), (DST, "completed")])
    assert [a.verb for a in steps] == [BEGIN, STUN, ABORT]


def test_the_destination_failing_aborts_on_the_destination():
    steps, _ = run([(SRC, "setup"), (SRC, "pre-switchover"), (DST, "failed"),
                    (SRC, "failed")])
    assert steps[-1] == Action(ABORT, "mv", "h2")
    assert [a.verb for a in steps] == [BEGIN, STUN, ABORT]


def test_nothing_is_sent_for_a_migration_that_was_never_begun():
    # Events of an incoming QEMU alone, or a failure before setup was seen.
    assert run([(DST, "setup"), (DST, "active"), (DST, "completed")])[0] == []
    assert run([(SRC, "failed")])[0] == []
    assert qmp_actions("mv", SRC, "pre-switchover", "h1", "h2", sent=()) == []


def test_repeated_events_send_each_step_once():
    steps, _ = run([(SRC, "setup"), (SRC, "setup"), (SRC, "pre-switchover"),
                    (SRC, "pre-switchover"), (DST, "completed"), (DST, "completed")])
    assert [a.verb for a in steps] == [BEGIN, STUN, DONE]


def test_unknown_statuses_are_ignored():
    assert run([(SRC, "setup"), (SRC, "postcopy-active"), (SRC, "colo"),
                (SRC, "wait-unplug")])[0] == [Action(BEGIN, "mv", "h2")]


def test_the_steps_run_as_the_hook_runs_them():
    """The QMP driver's steps are the hook's mbxctl command lines (one
    home); the lab runs them in its own process."""
    config = Config(host="h1", db="unix:/x/nb.sock", sb="unix:/x/sb.sock", stun_wait=20)
    argv = mbxctl_argv(Action(STUN, "mv", "h1"), config)
    assert argv[0] == "mbxctl"
    assert argv[-5:] == ["--timeout", "20", "migrate-stun", "mv", "--wait"]
    assert mbxctl_argv(Action(BEGIN, "mv", "h2"), config)[-4:] == [
        "migrate-begin", "mv", "--to", "h2"]
    assert adapter.mbxctl_argv is __import__(
        "hypervisor.libvirt_hook", fromlist=["x"]).mbxctl_argv


def test_the_lab_runs_mbxctl_in_process_and_reports_its_error(tmp_path):
    from lab import qemu
    argv = ["mbxctl", "--db", "unix:%s/none.sock" % tmp_path, "--timeout", "1",
            "migrate-abort", "mv", "--if-exists"]
    proc = qemu.mbxctl_runner(argv, timeout=4)
    assert proc.returncode == 1 and proc.stderr.startswith("mbxctl: "), proc
    with pytest.raises(OSError):
        qemu.mbxctl_runner(["rm", "-rf", "/"])
