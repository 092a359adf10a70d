"""The libvirt integration's mapping, fed libvirt's real call and event order."""

import io
import os
import subprocess
import sys
import time

import pytest

from hypervisor import libvirt_hook as lh
from hypervisor.libvirt_hook import (
    ABORT, BEGIN, DONE, STUN, Action, Config, ConfigError, EventListener,
    EventTracker, event_actions, hook_actions, mbxctl_argv, parse_config,
    run_actions, vm_name)

STARTED, SUSPENDED, RESUMED, STOPPED = (
    lh.VIR_DOMAIN_EVENT_STARTED, lh.VIR_DOMAIN_EVENT_SUSPENDED,
    lh.VIR_DOMAIN_EVENT_RESUMED, lh.VIR_DOMAIN_EVENT_STOPPED)
DEFINED, UNDEFINED = lh.VIR_DOMAIN_EVENT_DEFINED, lh.VIR_DOMAIN_EVENT_UNDEFINED

DOMAIN_XML = """<domain type='kvm'>
  <name>{guest}</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  {metadata}
  <devices><interface type='bridge'/></devices>
</domain>"""
MBX_METADATA = ("<metadata><mbx:vm xmlns:mbx='https://mbx.invalid/libvirt/1' "
                "name='{name}'/></metadata>")


def domain_xml(guest="red2", mbx=None):
    return DOMAIN_XML.format(
        guest=guest, metadata=MBX_METADATA.format(name=mbx) if mbx else "")


class FakeRunner:
    """subprocess.run stand-in: records argv and keyword arguments."""

    def __init__(self, returncode=0, stderr="", exc=None):
        self.calls, self.returncode, self.stderr, self.exc = [], returncode, \
            stderr, exc

    def __call__(self, argv, **kw):
        self.calls.append((argv, kw))
        if self.exc is not None:
            raise self.exc
        return subprocess.CompletedProcess(argv, self.returncode, "ok\n",
                                           self.stderr)


class Host:
    """One hypervisor host: its qemu hook (the real hook_main, notes in a
    temporary directory) and its event listener's tracker."""

    def __init__(self, name, tmp_path, runner=None):
        self.name = name
        self.conf = tmp_path / f"{name}.conf"
        self.conf.write_text(f"MBX_HOST={name}\nMBXCTL=/opt/mbx/bin/mbxctl\n"
                             f"MBX_STATE_DIR={tmp_path / name}\n")
        self.runner = runner or FakeRunner()
        self.tracker = EventTracker(name)
        self.logged = []
        self.stdout = []
        self.clock = 0.0          # seconds added to the real time

    def hook(self, guest, operation, sub_op, extra="-", xml=None):
        out = io.StringIO()
        old, sys.stdout = sys.stdout, out
        try:
            rc = lh.hook_main([guest, operation, sub_op, extra],
                              stdin=io.StringIO(xml or domain_xml(guest)),
                              env={}, conf_path=str(self.conf),
                              runner=self.runner, log=self.logged.append,
                              now=lambda: time.time() + self.clock)
        finally:
            sys.stdout = old
        assert rc == 0
        self.stdout.append(out.getvalue())
        return rc

    def event(self, vm, event, detail, incoming=None):
        return self.tracker.handle(vm, event, detail, incoming)

    def verbs(self):
        return [argv[argv.index("--timeout") + 2] for argv, _ in
                self.runner.calls]


def destination_prepare(dst, guest="red2", xml=None):
    """What the destination's hook sees in the Prepare phase."""
    for op in ("migrate", "prepare", "start", "started"):
        dst.hook(guest, op, "begin", "-", xml)


# --- full migrations, both sides ------------------------------------------------

def test_successful_migration_begin_stun_done_once(tmp_path):
    src, dst = Host("h1", tmp_path), Host("h2", tmp_path)
    events = []
    destination_prepare(dst)                                  # hook, dest.
    events += dst.event("red2", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    events += src.event("red2", SUSPENDED,
                        lh.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
    events += dst.event("red2", RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
    events += dst.event("red2", DEFINED, 0)                   # --persistent
    src.hook("red2", "stopped", "end", "-")
    src.hook("red2", "release", "end", "migrated")
    events += src.event("red2", STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
    events += src.event("red2", UNDEFINED, 0)                 # --undefinesource

    assert dst.verbs() == ["migrate-begin"] and src.verbs() == []
    assert dst.runner.calls[0][0] == ["/opt/mbx/bin/mbxctl", "--timeout", "5",
                                      "migrate-begin", "red2", "--to", "h2"]
    assert events == [Action(STUN, "red2", "h1"), Action(DONE, "red2", "h2")]
    assert set(dst.stdout + src.stdout) == {""}    # the migrate filter: no XML
    assert not dst.tracker.incoming and not src.tracker.stunned


def test_successful_migration_old_libvirt_release_dash(tmp_path):
    src, dst = Host("h1", tmp_path), Host("h2", tmp_path)
    destination_prepare(dst)
    src.hook("red2", "stopped", "end", "-")
    src.hook("red2", "release", "end", "-")         # libvirt < 10.5.0
    assert dst.verbs() == ["migrate-begin"] and src.verbs() == []


def test_postcopy_migration_done_once(tmp_path):
    src, dst = Host("h1", tmp_path), Host("h2", tmp_path)
    destination_prepare(dst)
    events = dst.event("red2", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    events += src.event("red2", SUSPENDED,
                        lh.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
    events += src.event("red2", SUSPENDED,
                        lh.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY)
    events += dst.event("red2", RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY)
    events += dst.event("red2", RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
    events += src.event("red2", STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
    assert events == [Action(STUN, "red2", "h1"), Action(DONE, "red2", "h2")]


def test_migration_left_paused_at_destination_is_done(tmp_path):
    dst = Host("h2", tmp_path)
    dst.event("red2", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    assert dst.event("red2", SUSPENDED, lh.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED) \
        == [Action(DONE, "red2", "h2")]
    # A later, ordinary pause of the guest is nothing to mbx.
    assert dst.event("red2", SUSPENDED,
                     lh.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED) == []


def test_failed_migration_after_pause_aborts_and_never_done(tmp_path):
    src, dst = Host("h1", tmp_path), Host("h2", tmp_path)
    destination_prepare(dst)
    events = dst.event("red2", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    events += src.event("red2", SUSPENDED,
                        lh.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
    # Finish fails at the destination: QEMU stopped (hooks), STOPPED/FAILED.
    dst.hook("red2", "stopped", "end", "-")
    dst.hook("red2", "release", "end", "failed")
    events += dst.event("red2", STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_FAILED)
    # Confirm(cancelled) at the source: CPUs restart, reported as RESUMED/MIGRATED.
    events += src.event("red2", RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)

    assert dst.verbs() == ["migrate-begin", "migrate-abort"]
    assert events == [Action(STUN, "red2", "h1"), Action(ABORT, "red2", "h2"),
                      Action(ABORT, "red2", "h1")]
    assert not any(a.verb == DONE for a in events)


def test_failed_migration_before_pause_aborts_from_destination(tmp_path):
    dst = Host("h2", tmp_path)
    destination_prepare(dst)
    events = dst.event("red2", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    # domjobabort during pre-copy: the source never paused, emits nothing.
    dst.hook("red2", "stopped", "end", "-")
    dst.hook("red2", "release", "end", "-")          # libvirt < 10.5.0
    events += dst.event("red2", STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_FAILED)
    assert dst.verbs() == ["migrate-begin"]          # '-': the hook cannot tell
    assert events == [Action(ABORT, "red2", "h2")]   # the listener can


def test_offline_migration_announces_nothing(tmp_path):
    dst = Host("h2", tmp_path)
    dst.hook("red2", "migrate", "begin")   # virsh migrate --offline: no QEMU
    assert dst.verbs() == []
    # A day later an ordinary start here must not announce a migration.
    dst.clock = 86400
    for op in ("prepare", "start", "started"):
        dst.hook("red2", op, "begin")
    assert dst.verbs() == []


def test_stale_migrate_note_expires(tmp_path):
    dst = Host("h2", tmp_path)
    dst.hook("red2", "migrate", "begin")
    note = tmp_path / "h2" / "red2.mig"
    old = note.stat().st_mtime - lh.MIGRATING_TTL - 1
    os.utime(note, (old, old))
    dst.hook("red2", "prepare", "begin")
    assert dst.verbs() == []


@pytest.mark.parametrize("hooks,events", [
    ([("prepare", "begin", "-"), ("start", "begin", "-"),
      ("started", "begin", "-"), ("stopped", "end", "-"),
      ("release", "end", "shutdown")],
     [(STARTED, lh.VIR_DOMAIN_EVENT_STARTED_BOOTED),
      (SUSPENDED, lh.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
      (RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
      (STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)]),
    ([("prepare", "begin", "-"), ("stopped", "end", "-"),
      ("release", "end", "failed")],                       # failed boot
     [(STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_FAILED)]),
    ([("restore", "begin", "-"), ("prepare", "begin", "-"),
      ("reconnect", "begin", "-"), ("release", "end", "saved")],
     [(STARTED, lh.VIR_DOMAIN_EVENT_STARTED_RESTORED),
      (STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_SAVED),
      (STOPPED, lh.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
      (SUSPENDED, lh.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR)]),
])
def test_non_migration_lifecycle_does_nothing(tmp_path, hooks, events):
    host = Host("h1", tmp_path)
    for op, sub, extra in hooks:
        host.hook("red2", op, sub, extra)
    assert host.verbs() == []
    assert [a for e, d in events for a in host.event("red2", e, d)] == []


# --- the pure mappings directly --------------------------------------------------

def test_hook_actions_table():
    assert hook_actions("vm1", "prepare", "begin", "-", "h2",
                        lh.MIGRATING) == [Action(BEGIN, "vm1", "h2")]
    assert hook_actions("vm1", "migrate", "begin", "-", "h2", None) == []
    assert hook_actions("vm1", "started", "begin", "-", "h2", lh.BEGUN) == []
    assert hook_actions("vm1", "release", "end", "failed", "h2",
                        lh.BEGUN) == [Action(ABORT, "vm1", "h2")]
    assert hook_actions("vm1", "release", "end", "failed", "h2", None) == []
    assert hook_actions("vm1", "release", "end", "shutdown", "h2",
                        lh.BEGUN) == []
    assert lh.next_hook_phase("migrate", "begin", None) == lh.MIGRATING
    assert lh.next_hook_phase("prepare", "begin", lh.MIGRATING) == lh.BEGUN
    assert lh.next_hook_phase("started", "begin", lh.BEGUN) == lh.BEGUN
    assert lh.next_hook_phase("release", "end", lh.BEGUN) is None


def test_event_actions_sides():
    mig = lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED
    assert event_actions("vm1", RESUMED, mig, "h2", True) == [
        Action(DONE, "vm1", "h2")]
    assert event_actions("vm1", RESUMED, mig, "h1", False) == [
        Action(ABORT, "vm1", "h1")]
    assert event_actions("vm1", SUSPENDED,
                         lh.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY, "h1", False,
                         stunned=True) == []
    assert event_actions("vm1", SUSPENDED,
                         lh.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR, "h1", False,
                         stunned=True) == [Action(ABORT, "vm1", "h1")]
    assert event_actions("vm1", SUSPENDED,
                         lh.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR, "h1",
                         False) == []
    assert event_actions("vm1", STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED,
                         "h2", True) == []
    assert event_actions("vm1", RESUMED,
                         lh.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED, "h2",
                         True) == []


def test_tracker_override_for_a_domain_not_seen_arriving():
    t = EventTracker("h2")
    assert t.handle("vm1", RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
                    incoming=True) == [Action(DONE, "vm1", "h2")]
    assert not t.incoming and not t.finished


# --- the listener's side detection (no libvirt needed) --------------------------

class FakeDom:
    def __init__(self, name, xml="", reason=None):
        self._name, self._xml, self._reason = name, xml, reason

    def name(self):
        return self._name

    def UUIDString(self):
        return f"uuid-{self._name}"

    def XMLDesc(self, flags=0):
        return self._xml

    def state(self):
        return [1, self._reason]


def listener():
    submitted = []
    lst = EventListener(Config(host="h2"), runner=FakeRunner(),
                        log=lambda m: None,
                        submit=lambda key, job: submitted.append(key))
    return lst, submitted


@pytest.mark.parametrize("reason,expected", [
    (lh.VIR_DOMAIN_RUNNING_MIGRATED, [Action(DONE, "blue1", "h2")]),
    (lh.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED, [Action(ABORT, "blue1", "h2")]),
    (5, []),                                   # unpaused?  unknown: nothing
])
def test_listener_asks_libvirt_which_side_when_untracked(reason, expected):
    lst, submitted = listener()
    dom = FakeDom("guest-7", domain_xml("guest-7", mbx="blue1"), reason)
    assert lst.handle(dom, RESUMED,
                      lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED) == expected
    assert submitted == [a.vm for a in expected]


def test_listener_tracks_arrival_and_uses_metadata_name():
    lst, submitted = listener()
    dom = FakeDom("guest-7", domain_xml("guest-7", mbx="blue1"), reason=None)
    lst.handle(dom, STARTED, lh.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
    assert lst.handle(dom, RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED) == [
        Action(DONE, "blue1", "h2")]
    assert submitted == ["blue1"]


def test_listener_seeds_incoming_migrations():
    class Conn:
        def listAllDomains(self, flags):
            return [Migrating("in1", lh.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN),
                    Migrating("out1", 5)]

    class Migrating(FakeDom):
        def __init__(self, name, operation):
            super().__init__(name)
            self.operation = operation

        def jobStats(self):
            return {"type": 2, "operation": self.operation}

    lst, _ = listener()
    lst.seed(Conn())
    assert lst.tracker.incoming == {"in1"}


def test_keyed_workers_run_in_order_per_key():
    import threading
    done, seen = threading.Event(), []
    workers = lh._KeyedWorkers()
    for i in range(5):
        workers.submit("vm1", lambda i=i: seen.append(i))
    workers.submit("vm1", done.set)
    assert done.wait(5)
    assert seen == [0, 1, 2, 3, 4]


# --- which VM ----------------------------------------------------------------------

@pytest.mark.parametrize("xml,expected", [
    (domain_xml("guest-7", mbx="red2"), "red2"),
    (domain_xml("guest-7"), "guest-7"),
    ("<domain><name>x</name><metadata><vm name='red2'/></metadata></domain>",
     "guest-7"),                                          # not our namespace
    (domain_xml("guest-7", mbx="bad name/"), "guest-7"),  # not an mbx name
    ("<domain><metadata", "guest-7"),                     # broken XML
    ("", "guest-7"),
    (None, "guest-7"),
])
def test_vm_name(xml, expected):
    assert vm_name("guest-7", xml) == expected


def test_hook_announces_the_metadata_name(tmp_path):
    dst = Host("h2", tmp_path)
    destination_prepare(dst, guest="guest-7",
                        xml=domain_xml("guest-7", mbx="red2"))
    assert dst.runner.calls[0][0][-4:] == ["migrate-begin", "red2", "--to",
                                            "h2"]


# --- configuration ------------------------------------------------------------------

def test_parse_config_full():
    text = """# mbx on this host
MBX_HOST=h2
MBX_DB="tcp:10.201.0.1:6641"
MBX_SB=tcp:10.201.0.1:6642
MBXCTL = /opt/mbx/bin/mbxctl

MBX_STUN_WAIT=8
MBX_TIMEOUT='2.5'
"""
    assert parse_config(text, {}) == Config(
        host="h2", db="tcp:10.201.0.1:6641", mbxctl="/opt/mbx/bin/mbxctl",
        sb="tcp:10.201.0.1:6642", stun_wait=8.0, timeout=2.5, state_dir=lh.STATE_DIR)


def test_parse_config_environment_overrides():
    config = parse_config("MBX_HOST=h2\nMBX_DB=unix:/a\n",
                          {"MBX_DB": "tcp:1.2.3.4:6641", "MBX_HOST": "",
                           "PATH": "/bin"})
    assert (config.host, config.db, config.mbxctl) == (
        "h2", "tcp:1.2.3.4:6641", "mbxctl")
    assert parse_config("", {"MBX_HOST": "h9"}).host == "h9"


@pytest.mark.parametrize("text,message", [
    ("MBX_HOST=h2\nthis is not a setting\n",
     "/etc/mbx/libvirt-hook.conf:2: expected KEY=VALUE, got 'this is not a "
     "setting'"),
    ("MBX_HOST=h2\nMBX_HOTS=h3\n", ":2: unknown key 'MBX_HOTS'; keys are "
     "MBX_DB, MBX_SB, MBX_HOST, MBXCTL"),
    ("MBX_DB=unix:/a\n", "MBX_HOST is not set"),
    ("MBX_HOST=my host\n", ":1: invalid MBX_HOST 'my host'"),
    ("MBX_HOST=h2\nMBX_STUN_WAIT=soon\n",
     ":2: MBX_STUN_WAIT must be a number of seconds in (0, 3600], got 'soon'"),
    ("MBX_HOST=h2\nMBX_TIMEOUT=0\n", ":2: MBX_TIMEOUT must be"),
    ("MBX_HOST=h2\nMBX_HOST=h3\n", ":2: MBX_HOST set twice (first on line 1)"),
    ("=h2\n", ":1: expected KEY=VALUE"),
])
def test_parse_config_errors_are_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_hook_with_bad_config_logs_and_lets_libvirt_go_on(tmp_path):
    dst = Host("h2", tmp_path)
    dst.conf.write_text("MBX_HOST=h2\nnonsense\n")
    destination_prepare(dst)
    assert dst.verbs() == [] and dst.stdout == ["", "", "", ""]
    assert any("expected KEY=VALUE" in line and "without mbx" in line
               for line in dst.logged)


def test_hook_ignores_other_operations_without_reading_config(tmp_path):
    host = Host("h2", tmp_path)
    host.conf.write_text("garbage\n")
    host.hook("red2", "started", "begin")
    host.hook("red2", "reconnect", "begin")
    assert host.logged == []


def test_hook_bad_arguments_exit_zero():
    logged = []
    assert lh.hook_main(["red2"], stdin=io.StringIO(""), env={},
                        log=logged.append) == 0
    assert logged and "usage" in logged[0]


# --- running mbxctl -------------------------------------------------------------------

def test_mbxctl_command_lines():
    config = Config(host="h1", db="tcp:10.201.0.1:6641", mbxctl="/usr/bin/mbxctl",
                    stun_wait=8, timeout=2.5)
    base = ["/usr/bin/mbxctl", "--db", "tcp:10.201.0.1:6641", "--timeout"]
    assert mbxctl_argv(Action(BEGIN, "red2", "h2"), config) == base + [
        "2.5", "migrate-begin", "red2", "--to", "h2"]
    assert mbxctl_argv(Action(STUN, "red2", "h1"), config) == base + [
        "8", "migrate-stun", "red2", "--wait"]
    assert mbxctl_argv(Action(DONE, "red2", "h2"), config) == base + [
        "2.5", "migrate-done", "red2"]
    assert mbxctl_argv(Action(ABORT, "red2", "h1"), config) == base + [
        "2.5", "migrate-abort", "red2", "--if-exists"]
    assert mbxctl_argv(Action(DONE, "red2", "h2"), Config(host="h2")) == [
        "mbxctl", "--timeout", "5", "migrate-done", "red2"]
    # the Migration rows are in the southbound database
    assert mbxctl_argv(Action(DONE, "red2", "h2"), Config(host="h2", sb="unix:/sb")) == [
        "mbxctl", "--sb", "unix:/sb", "--timeout", "5", "migrate-done", "red2"]


def test_run_actions_captures_output_and_bounds_time():
    runner, logged = FakeRunner(), []
    config = Config(host="h1", stun_wait=8, timeout=2)
    assert run_actions([Action(STUN, "red2", "h1"), Action(DONE, "red2", "h1")],
                       config, runner, logged.append) == [True, True]
    (_, stun_kw), (_, done_kw) = runner.calls
    assert stun_kw["timeout"] == 8 + lh.GRACE and done_kw["timeout"] == 2 + \
        lh.GRACE
    assert stun_kw["capture_output"] and stun_kw["stdin"] == subprocess.DEVNULL
    assert logged == ["mbx: migrate-stun red2 --wait: ok",
                      "mbx: migrate-done red2: ok"]


def test_run_actions_tolerates_failure():
    runner = FakeRunner(returncode=1,
                        stderr="mbxctl: no active migration of VM red2\n")
    logged = []
    assert run_actions([Action(ABORT, "red2", "h1"), Action(DONE, "red2", "h1")],
                       Config(host="h1"), runner, logged.append) == [False,
                                                                     False]
    assert len(runner.calls) == 2                 # the second still ran
    assert logged[0] == ("mbx: migrate-abort red2 --if-exists: failed (exit 1): "
                         "mbxctl: no active migration of VM red2")


def test_run_actions_timeout_and_missing_mbxctl():
    logged = []
    hung = FakeRunner(exc=subprocess.TimeoutExpired(["mbxctl"], 8))
    assert run_actions([Action(STUN, "red2", "h1")],
                       Config(host="h1", stun_wait=5), hung,
                       logged.append) == [False]
    missing = FakeRunner(exc=FileNotFoundError(2, "No such file or directory"))
    assert run_actions([Action(BEGIN, "red2", "h2")],
                       Config(host="h2", mbxctl="/nope/mbxctl"), missing,
                       logged.append) == [False]
    assert logged == [
        "mbx: migrate-stun red2 --wait: no answer within 8 s; libvirt goes on",
        "mbx: migrate-begin red2 --to h2: cannot run /nope/mbxctl: No such "
        "file or directory"]


def test_hook_exits_zero_when_mbxctl_fails(tmp_path):
    dst = Host("h2", tmp_path, runner=FakeRunner(returncode=1,
                                                 stderr="cannot connect\n"))
    destination_prepare(dst)
    assert dst.verbs() == ["migrate-begin"]
    assert dst.logged == ["mbx: migrate-begin red2 --to h2: failed (exit 1): "
                          "cannot connect"]


# --- the event listener program ----------------------------------------------------------

def test_events_main_without_libvirt_binding(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "c.conf"
    conf.write_text("MBX_HOST=h1\n")
    monkeypatch.setitem(sys.modules, "libvirt", None)
    assert lh.events_main(["--config", str(conf)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "libvirt Python binding is not installed" in err


def test_events_main_bad_config(tmp_path, capsys):
    conf = tmp_path / "c.conf"
    conf.write_text("MBX_DB=x\n")
    assert lh.events_main(["--config", str(conf)]) == 2
    assert "MBX_HOST is not set" in capsys.readouterr().err


class FlakyRunner(FakeRunner):
    """Fails (exit 1, the config database unreachable) ``failures`` times."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def __call__(self, argv, **kw):
        self.calls.append((argv, kw))
        rc = 1 if len(self.calls) <= self.failures else 0
        return subprocess.CompletedProcess(
            argv, rc, "", "mbxctl: ssl:10.201.0.2:6642: connection refused\n" if rc else "")


def test_the_source_listener_retries_an_abort_until_it_goes_through():
    """The migration failed and the VM resumed on its source while the
    config database was away: the abort is tried again with backoff until
    mbxctl takes it, so the row does not stay active."""
    runner, logged, slept, jobs = FlakyRunner(failures=3), [], [], []
    lst = EventListener(Config(host="h1"), runner=runner, log=logged.append,
                        submit=lambda key, job: jobs.append(job), sleep=slept.append)
    lst.tracker.stunned.add("red2")
    dom = FakeDom("red2", domain_xml("red2"))
    assert lst.handle(dom, RESUMED, lh.VIR_DOMAIN_EVENT_RESUMED_MIGRATED) == [
        Action(ABORT, "red2", "h1")]
    [job] = jobs
    assert job() is True
    assert [argv[-3:] for argv, _ in runner.calls] == [
        ["migrate-abort", "red2", "--if-exists"]] * 4
    assert slept == list(lh.ABORT_RETRIES[:3])
    assert logged[-1] == "mbx: migrate-abort red2 --if-exists: ok"


def test_an_abort_that_never_goes_through_says_what_to_do_in_one_line():
    runner, logged, slept = FlakyRunner(failures=100), [], []
    assert lh.retry_abort(Action(ABORT, "red2", "h1"), Config(host="h1"), runner,
                          logged.append, slept.append) is False
    assert len(runner.calls) == 1 + len(lh.ABORT_RETRIES)
    assert logged[-1] == ("mbx: red2: abort did not go through within %g s; end its "
                          "migration by hand: mbxctl migrate-abort red2"
                          % sum(lh.ABORT_RETRIES))
