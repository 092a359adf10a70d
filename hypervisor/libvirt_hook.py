"""libvirt integration: drive mbx's announced migration from libvirt.

Two programs, one mapping (docs/libvirt.md has the tables and the install):

* ``mbx-libvirt-hook`` is libvirt's qemu hook (/etc/libvirt/hooks/qemu or
  /etc/libvirt/hooks/qemu.d/mbx).  On the destination it announces the
  migration (``mbxctl migrate-begin VM --to THIS_HOST``) before QEMU starts
  there, and aborts it when the incoming QEMU is torn down after a failure.
* ``mbx-libvirt-events`` is a small daemon on every host listening to the
  domain lifecycle events: the source's pause for the final phase is
  ``migrate-stun VM --wait``, the destination's resume is ``migrate-done VM``,
  a migration that failed is ``migrate-abort VM``.  libvirt resumes a VM
  whose migration failed on its source, where its port never left; mbx's
  part of that rollback is the abort (the source keeps the VM's connection
  state), so the listener retries an abort that could not reach the config
  database (``retry_abort``).

Everything that decides is pure (``hook_actions``, ``event_actions``,
``EventTracker``, ``vm_name``); the steps, the configuration and running
mbxctl (``Action``, ``parse_config``, ``run_actions``, ``retry_abort``) are
shared with the lab's QMP driver in ``hypervisor.adapter``; ``hook_main`` and
``events_main`` do the I/O.
mbx never holds up libvirt: a failing or hanging mbxctl is logged in one line
and the hook still exits 0.  Only the standard library is imported here (the
hook runs for every guest start and stop); the libvirt binding is imported by
``events_main`` alone.
"""

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Callable, Optional

from hypervisor.adapter import (  # noqa: F401 - the hook's public names
    ABORT, ABORT_RETRIES, BEGIN, CONF_PATH, DONE, GRACE, STATE_DIR, STUN, Action,
    Config, ConfigError, _NAME_RE, _stderr_log, load_config, mbxctl_argv,
    parse_config, retry_abort, run_actions)

# --- libvirt facts -------------------------------------------------------------
#
# The qemu hook (libvirt docs/hooks.rst, "Script arguments", "/etc/libvirt/
# hooks/qemu", "QEMU guest migration"): argv is GUEST OPERATION SUB-OPERATION
# EXTRA ('-' when there is none), the full domain XML is on stdin.  In a
# migration the *destination* runs "migrate begin" (a filter: its stdout, if
# not empty, replaces the domain XML, so this hook prints nothing), then
# "prepare begin", "start begin" and "started begin" -- all in the Prepare
# phase, before any memory is transferred: qemuMigrationDstPrepareAny calls
# qemuProcessFinishStartup(..., VIR_DOMAIN_PAUSED_MIGRATION), which runs
# "started begin" on the still-paused incoming QEMU (src/qemu/qemu_migration.c).
# Nothing runs on the destination when the migration completes.  The *source*
# runs "stopped end" and "release end" only once the guest has left.  A QEMU
# torn down runs "stopped end -" then "release end REASON"; REASON is the
# shutoff reason since libvirt 10.5.0 ("failed" when it failed to start, which
# is how a failed incoming migration ends; "migrated" on the source), '-'
# before.  A hook must not call back into libvirt (deadlock) and should return
# quickly: libvirt waits for it.
HOOK_MIGRATE = "migrate"
HOOK_PREPARE = "prepare"
HOOK_RELEASE = "release"
HOOK_BEGIN = "begin"
HOOK_END = "end"
SHUTOFF_FAILED = "failed"          # virDomainShutoffReason string, >= 10.5.0

# Domain lifecycle events (include/libvirt/libvirt-domain.h: virDomainEventID,
# virDomainEventType and the virDomainEvent*DetailType enums; the post-copy
# details since 1.3.3, RESUMED_POSTCOPY_FAILED since 8.5.0).
VIR_DOMAIN_EVENT_ID_LIFECYCLE = 0
VIR_DOMAIN_EVENT_DEFINED = 0
VIR_DOMAIN_EVENT_UNDEFINED = 1
VIR_DOMAIN_EVENT_STARTED = 2
VIR_DOMAIN_EVENT_SUSPENDED = 3
VIR_DOMAIN_EVENT_RESUMED = 4
VIR_DOMAIN_EVENT_STOPPED = 5
VIR_DOMAIN_EVENT_SHUTDOWN = 6
VIR_DOMAIN_EVENT_PMSUSPENDED = 7
VIR_DOMAIN_EVENT_CRASHED = 8

VIR_DOMAIN_EVENT_STARTED_BOOTED = 0
VIR_DOMAIN_EVENT_STARTED_MIGRATED = 1        # incoming migration, destination
VIR_DOMAIN_EVENT_STARTED_RESTORED = 2

VIR_DOMAIN_EVENT_SUSPENDED_PAUSED = 0
VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED = 1      # paused for migration, source
VIR_DOMAIN_EVENT_SUSPENDED_IOERROR = 2
VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR = 6
VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY = 7      # entered post-copy, source
VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED = 8

VIR_DOMAIN_EVENT_RESUMED_UNPAUSED = 0
VIR_DOMAIN_EVENT_RESUMED_MIGRATED = 1        # see below: both sides
VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT = 2
VIR_DOMAIN_EVENT_RESUMED_POSTCOPY = 3        # runs at the destination, post-copy
VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED = 4

VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN = 0
VIR_DOMAIN_EVENT_STOPPED_DESTROYED = 1
VIR_DOMAIN_EVENT_STOPPED_CRASHED = 2
VIR_DOMAIN_EVENT_STOPPED_MIGRATED = 3        # left for another host, source
VIR_DOMAIN_EVENT_STOPPED_SAVED = 4
VIR_DOMAIN_EVENT_STOPPED_FAILED = 5          # incoming migration failed, dest.

# Who emits what in a QEMU migration (src/qemu/qemu_migration.c and
# qemu_process.c; virDomainMigrateStartPostCopy's documentation):
#   destination, end of Prepare: STARTED/MIGRATED (QEMU paused, no memory yet)
#   source, QEMU paused for the last round (or for a non-live migration):
#       SUSPENDED/MIGRATED; switching to post-copy: SUSPENDED/POSTCOPY
#   destination, Finish: RESUMED/MIGRATED (CPUs started; reason
#       RUNNING_MIGRATED), or RESUMED/POSTCOPY then, when post-copy is over,
#       RESUMED/MIGRATED; SUSPENDED/PAUSED if the guest is to stay paused
#       (VIR_MIGRATE_PAUSED); STOPPED/FAILED if the migration failed
#   source, Confirm: STOPPED/MIGRATED on success; on failure its CPUs restart
#       with reason RUNNING_MIGRATION_CANCELED, which is reported as
#       RESUMED/MIGRATED too (qemuDomainRunningReasonToResumeEvent), or
#       SUSPENDED/API_ERROR if they could not be restarted
# RESUMED/MIGRATED therefore means "done" on the destination and "abort" on the
# source: the listener tells them apart by what it saw (STARTED/MIGRATED) or,
# if it did not see it, by the domain's running reason:
VIR_DOMAIN_RUNNING_MIGRATED = 2
VIR_DOMAIN_RUNNING_MIGRATION_CANCELED = 6
VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1
VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN = 4    # virDomainJobOperation

# --- mbx side ------------------------------------------------------------------

MBX_XMLNS = "https://mbx.invalid/libvirt/1"   # <mbx:vm name="..."/> in metadata
MIGRATING_TTL = 120.0  # a "migrate begin" not followed by "prepare begin" in
                       # this time was an offline migration or failed early

# --- which VM ---------------------------------------------------------------------

def vm_name(guest: str, xml_text: Optional[str]) -> str:
    """The mbx VM of a libvirt domain: <metadata><mbx:vm name="..."/> in its
    XML (namespace MBX_XMLNS), else the domain name.  Bad or missing XML, or a
    name mbx could not hold, falls back to the domain name."""
    if not xml_text or not xml_text.strip():
        return guest
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return guest
    element = root.find(f"metadata/{{{MBX_XMLNS}}}vm")
    name = element.get("name", "") if element is not None else ""
    return name if _NAME_RE.fullmatch(name) else guest


# --- the hook: pure mapping -----------------------------------------------------
#
# The hook remembers, per guest on this host, where an incoming migration is
# (a one-word note in MBX_STATE_DIR): "migrating" after "migrate begin",
# "begun" once migrate-begin was sent at "prepare begin".  The announcement
# waits for "prepare begin" (milliseconds later, still before QEMU starts and
# long before any memory moves) because an offline migration, or one refused
# by the destination's checks, runs "migrate begin" and then nothing: it would
# leave an active Migration row for a VM that never comes.

MIGRATING, BEGUN = "migrating", "begun"


def hook_actions(guest: str, operation: str, sub_op: str, extra: str,
                 this_host: str, phase: Optional[str] = None) -> list:
    """mbxctl steps for one qemu hook call on this host.  guest: the mbx VM
    (vm_name); phase: the note this host holds for the guest (None, MIGRATING
    or BEGUN)."""
    if (operation, sub_op) == (HOOK_PREPARE, HOOK_BEGIN) and phase == MIGRATING:
        return [Action(BEGIN, guest, this_host)]
    if ((operation, sub_op) == (HOOK_RELEASE, HOOK_END) and phase == BEGUN
            and extra == SHUTOFF_FAILED):
        return [Action(ABORT, guest, this_host)]
    return []


def next_hook_phase(operation: str, sub_op: str,
                    phase: Optional[str]) -> Optional[str]:
    """The note after this hook call."""
    if (operation, sub_op) == (HOOK_MIGRATE, HOOK_BEGIN):
        return MIGRATING
    if (operation, sub_op) == (HOOK_PREPARE, HOOK_BEGIN):
        return BEGUN if phase == MIGRATING else None
    if (operation, sub_op) == (HOOK_RELEASE, HOOK_END):
        return None
    return phase


# --- the event listener: pure mapping ---------------------------------------------

def event_actions(domain_name: str, event: int, detail: int, this_host: str,
                  incoming: bool, stunned: bool = False) -> list:
    """mbxctl steps for one lifecycle event of a domain on this host.
    domain_name: the mbx VM; incoming: this host is the destination of a
    migration of it (STARTED/MIGRATED seen, not yet over); stunned: this host
    is its source and already sent migrate-stun."""
    vm, here = domain_name, this_host
    if incoming:
        if (event, detail) in ((VIR_DOMAIN_EVENT_RESUMED,
                                VIR_DOMAIN_EVENT_RESUMED_MIGRATED),
                               (VIR_DOMAIN_EVENT_RESUMED,
                                VIR_DOMAIN_EVENT_RESUMED_POSTCOPY),
                               (VIR_DOMAIN_EVENT_SUSPENDED,
                                VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)):
            # It runs here now (post-copy: it cannot go back either), or the
            # migration finished and left it paused (VIR_MIGRATE_PAUSED).
            return [Action(DONE, vm, here)]
        if event == VIR_DOMAIN_EVENT_STOPPED:
            # The incoming QEMU went away before the guest ran here.
            return [Action(ABORT, vm, here)]
        return []
    if event == VIR_DOMAIN_EVENT_SUSPENDED and detail in (
            VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
            VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY):
        return [] if stunned else [Action(STUN, vm, here)]
    if (event, detail) == (VIR_DOMAIN_EVENT_RESUMED,
                           VIR_DOMAIN_EVENT_RESUMED_MIGRATED):
        # Source: the migration was cancelled and the guest runs on here.
        return [Action(ABORT, vm, here)]
    if (event, detail) == (VIR_DOMAIN_EVENT_SUSPENDED,
                           VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR) and stunned:
        # Source: migration failed and the guest could not even be resumed.
        return [Action(ABORT, vm, here)]
    return []


class EventTracker:
    """What the listener remembers between events (no I/O): the domains that
    are migrating in, the ones it stunned as a source, and the incoming ones
    already finished (done or abort is sent once per migration)."""

    def __init__(self, this_host: str):
        self.host = this_host
        self.incoming, self.stunned, self.finished = set(), set(), set()

    def handle(self, vm: str, event: int, detail: int,
               incoming: Optional[bool] = None) -> list:
        """Actions for one event; incoming overrides what was tracked (the
        listener's answer for a domain it did not see arrive)."""
        if (event, detail) == (VIR_DOMAIN_EVENT_STARTED,
                               VIR_DOMAIN_EVENT_STARTED_MIGRATED):
            self.incoming.add(vm)
            self.finished.discard(vm)
            self.stunned.discard(vm)
        if incoming is None:
            incoming = vm in self.incoming
        actions = event_actions(vm, event, detail, self.host, incoming,
                                stunned=vm in self.stunned)
        if incoming:
            if vm in self.finished:
                actions = []
            elif actions:
                self.finished.add(vm)
            if (event == VIR_DOMAIN_EVENT_STOPPED
                    or (event, detail) in ((VIR_DOMAIN_EVENT_RESUMED,
                                            VIR_DOMAIN_EVENT_RESUMED_MIGRATED),
                                           (VIR_DOMAIN_EVENT_SUSPENDED,
                                            VIR_DOMAIN_EVENT_SUSPENDED_PAUSED))):
                self.incoming.discard(vm)     # arrived, or gone: it is over
                self.finished.discard(vm)
        else:
            if any(a.verb == STUN for a in actions):
                self.stunned.add(vm)
            if (event in (VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_RESUMED)
                    or any(a.verb == ABORT for a in actions)):
                self.stunned.discard(vm)
        return actions


def _hook_log(message: str) -> None:
    """The hook's log: syslog (libvirt drops a successful hook's stderr) and
    stderr."""
    try:
        import syslog
        syslog.openlog("mbx-libvirt-hook", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, message)
    except (ImportError, OSError):
        pass
    _stderr_log(message)


# --- the hook program ---------------------------------------------------------------

def _note_path(state_dir: str, guest: str) -> str:
    return os.path.join(state_dir, urllib.parse.quote(guest, safe="") + ".mig")


def _read_phase(state_dir: str, guest: str, now: float) -> Optional[str]:
    path = _note_path(state_dir, guest)
    try:
        with open(path) as f:
            phase = f.read().strip()
        age = now - os.stat(path).st_mtime
    except OSError:
        return None
    if phase == MIGRATING and age > MIGRATING_TTL:
        return None
    return phase if phase in (MIGRATING, BEGUN) else None


def _write_phase(state_dir: str, guest: str, phase: Optional[str]) -> None:
    path = _note_path(state_dir, guest)
    if phase is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(phase + "\n")
    os.replace(tmp, path)


def hook_main(argv=None, *, stdin=None, env=None, conf_path: str = CONF_PATH,
              runner=subprocess.run, log=None, now=time.time) -> int:
    """libvirt's qemu hook: GUEST OPERATION SUB-OPERATION EXTRA, domain XML on
    stdin.  Always exits 0 and prints nothing on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    stdin = sys.stdin if stdin is None else stdin
    log = log or _hook_log
    xml_text = ""
    try:
        if not stdin.isatty():
            xml_text = stdin.read()
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    if len(argv) < 3:
        log("mbx-libvirt-hook: usage: GUEST OPERATION SUB-OPERATION [EXTRA] "
            "(called by libvirt as /etc/libvirt/hooks/qemu)")
        return 0
    guest, operation, sub_op = argv[:3]
    extra = argv[3] if len(argv) > 3 else "-"
    if operation not in (HOOK_MIGRATE, HOOK_PREPARE, HOOK_RELEASE):
        return 0                  # every other call: nothing to do, at once
    try:
        config = load_config(conf_path, os.environ if env is None else env)
    except ConfigError as e:
        log(f"mbx: {e}; libvirt goes on without mbx")
        return 0
    phase = _read_phase(config.state_dir, guest, now())
    actions = hook_actions(vm_name(guest, xml_text), operation, sub_op, extra,
                           config.host, phase)
    try:
        _write_phase(config.state_dir, guest,
                     next_hook_phase(operation, sub_op, phase))
    except OSError as e:
        log(f"mbx: cannot keep migration notes in {config.state_dir}: "
            f"{e.strerror}")
    run_actions(actions, config, runner, log)
    return 0


# --- the event listener program ----------------------------------------------------

class _KeyedWorkers:
    """Runs jobs in order per key (one VM's steps never overtake each other)
    and concurrently across keys (one VM's stun --wait does not delay
    another's)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queues = {}

    def submit(self, key, job: Callable[[], object]) -> None:
        with self._lock:
            q = self._queues.get(key)
            if q is not None:
                q.put(job)
                return
            q = self._queues[key] = queue.SimpleQueue()
            q.put(job)
        threading.Thread(target=self._drain, args=(key, q), daemon=True,
                         name=f"mbx-{key}").start()

    def _drain(self, key, q) -> None:
        while True:
            with self._lock:
                if q.empty():
                    del self._queues[key]
                    return
                job = q.get()
            try:
                job()
            except Exception as e:          # noqa: BLE001 - a worker never dies
                _stderr_log(f"mbx: {key}: {e}")


class EventListener:
    """Turns libvirt lifecycle callbacks into mbxctl steps.  handle() is what
    the processing thread runs per event; it is synchronous and takes any
    object with libvirt's virDomain methods (name, UUIDString, XMLDesc,
    state), so it runs in tests without libvirt."""

    def __init__(self, config: Config, runner=subprocess.run, log=None,
                 submit=None, sleep=time.sleep):
        self.config = config
        self.sleep = sleep
        self.tracker = EventTracker(config.host)
        self.runner = runner
        self.log = log or _stderr_log
        self.submit = submit or _KeyedWorkers().submit
        self.events = queue.SimpleQueue()
        self._names = {}

    def callback(self, conn, dom, event, detail, opaque=None) -> int:
        """The libvirt callback: only queue (it runs in the event loop)."""
        self.events.put((dom, event, detail))
        return 0

    def vm_of(self, dom) -> str:
        try:
            key = dom.UUIDString()
        except Exception:                   # noqa: BLE001
            key = None
        if key in self._names:
            return self._names[key]
        name = dom.name()
        try:
            name = vm_name(name, dom.XMLDesc(0))
        except Exception:                   # noqa: BLE001 - e.g. gone already
            pass
        if key is not None:
            self._names[key] = name
        return name

    def handle(self, dom, event: int, detail: int) -> list:
        vm = self.vm_of(dom)
        incoming = None
        if ((event, detail) == (VIR_DOMAIN_EVENT_RESUMED,
                                VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                and vm not in self.tracker.incoming
                and vm not in self.tracker.stunned):
            # Not seen arriving nor leaving (listener restarted meanwhile?):
            # the running reason says which side this is.
            try:
                reason = dom.state()[1]
            except Exception:               # noqa: BLE001
                reason = None
            if reason == VIR_DOMAIN_RUNNING_MIGRATED:
                incoming = True
            elif reason != VIR_DOMAIN_RUNNING_MIGRATION_CANCELED:
                self.log(f"mbx: {vm}: resumed after a migration, but which "
                         "side this host was is unknown; doing nothing")
                return []
        actions = self.tracker.handle(vm, event, detail, incoming)
        for action in actions:
            if action.verb == ABORT:
                self.submit(action.vm, lambda a=action: retry_abort(
                    a, self.config, self.runner, self.log, self.sleep))
            else:
                self.submit(action.vm, lambda a=action: run_actions(
                    [a], self.config, self.runner, self.log))
        if event in (VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_UNDEFINED):
            self._names = {k: v for k, v in self._names.items() if v != vm}
        return actions

    def seed(self, conn) -> None:
        """After (re)connecting: domains migrating in now are incoming."""
        try:
            domains = conn.listAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except Exception:                   # noqa: BLE001
            return
        for dom in domains:
            try:
                stats = dom.jobStats()
            except Exception:               # noqa: BLE001
                continue
            if stats.get("operation") == VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN:
                self.tracker.incoming.add(self.vm_of(dom))

    def process_forever(self) -> None:
        while True:
            item = self.events.get()
            try:
                if item[0] == "seed":
                    self.seed(item[1])
                else:
                    self.handle(*item)
            except Exception as e:          # noqa: BLE001 - keep listening
                self.log(f"mbx: event {item[1:]}: {e}")


def events_main(argv=None) -> int:
    """mbx-libvirt-events: listen to libvirt's domain lifecycle events on this
    host and drive mbxctl (run by systemd, see docs/libvirt.md)."""
    parser = argparse.ArgumentParser(
        prog="mbx-libvirt-events",
        description="Drive mbx's announced migrations from libvirt's domain "
                    "lifecycle events.")
    parser.add_argument("--config", default=CONF_PATH,
                        help=f"configuration file (default {CONF_PATH})")
    parser.add_argument("--uri", default="qemu:///system",
                        help="libvirt connection (default qemu:///system)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        _stderr_log(f"mbx-libvirt-events: {e}")
        return 2
    try:
        import libvirt
    except ImportError:
        _stderr_log("mbx-libvirt-events: the libvirt Python binding is not "
                    "installed (Debian: apt install python3-libvirt; pip: "
                    "libvirt-python)")
        return 1
    listener = EventListener(config)
    libvirt.virEventRegisterDefaultImpl()

    def event_loop():
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=event_loop, daemon=True, name="libvirt").start()
    threading.Thread(target=listener.process_forever, daemon=True,
                     name="mbx-events").start()
    failing = False
    try:
        while True:
            try:
                conn = libvirt.openReadOnly(args.uri)
            except libvirt.libvirtError as e:
                if not failing:
                    _stderr_log(f"mbx-libvirt-events: cannot connect to "
                                f"{args.uri}: {e}; retrying every 5 s")
                failing = True
                time.sleep(5)
                continue
            failing = False
            closed = threading.Event()
            conn.registerCloseCallback(lambda *_: closed.set(), None)
            conn.setKeepAlive(5, 3)
            cb = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, listener.callback,
                None)
            listener.events.put(("seed", conn))
            _stderr_log(f"mbx-libvirt-events: listening on {args.uri} as "
                        f"host {config.host}")
            closed.wait()
            _stderr_log(f"mbx-libvirt-events: lost {args.uri}; reconnecting")
            for step in (lambda: conn.domainEventDeregisterAny(cb), conn.close):
                try:
                    step()
                except libvirt.libvirtError:
                    pass
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":      # pragma: no cover
    sys.exit(hook_main())
