"""What mbx does when a hypervisor migrates a VM: the steps (``Action``:
begin, stun, done, abort), the host's configuration for sending them
(``Config``, ``parse_config``, ``load_config``), running them with mbxctl
(``mbxctl_argv``, ``run_actions``, ``retry_abort``), and the mapping of QEMU's
own migration events (QMP ``MIGRATION``) onto them (``QmpTracker``).

Two drivers use it: the libvirt hook and event listener
(``hypervisor.libvirt_hook``, libvirt's lifecycle events) and the lab's QMP
migration driver (``lab.qemu``, QEMU's events on its monitor).  Everything
here except ``run_actions``/``retry_abort`` is pure; only the standard
library is imported (the libvirt hook runs for every guest start and stop).
docs/libvirt.md has the tables.
"""

import os
import re
import subprocess
import sys
import time
from typing import Callable, Mapping, NamedTuple, Optional

CONF_PATH = "/etc/mbx/libvirt-hook.conf"
STATE_DIR = "/run/mbx/libvirt-hook"
GRACE = 3.0            # seconds on top of mbxctl's --timeout before it is killed
ABORT_RETRIES = (1.0, 2.0, 4.0, 8.0, 15.0)  # s before each retry of a failed abort

BEGIN, STUN, DONE, ABORT = "begin", "stun", "done", "abort"

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Action(NamedTuple):
    """One mbxctl step.  host: the destination for begin, else this host."""
    verb: str
    vm: str
    host: str


class ConfigError(Exception):
    """A bad configuration; str() is one line."""


class Config(NamedTuple):
    host: str                    # MBX_HOST: this host's mbx name
    db: Optional[str] = None     # MBX_DB: --db for mbxctl (None: its default)
    mbxctl: str = "mbxctl"       # MBXCTL
    sb: Optional[str] = None     # MBX_SB: --sb for mbxctl, where the Migration
    #                              rows are (None: the --db server)
    stun_wait: float = 5.0       # MBX_STUN_WAIT: migrate-stun --wait bound
    timeout: float = 5.0         # MBX_TIMEOUT: bound for the other steps
    state_dir: str = STATE_DIR   # MBX_STATE_DIR: the hook's per-guest notes
    # MBX_PRIVATE_KEY, MBX_CERTIFICATE, MBX_CA_CERT: mbxctl -p/-c/-C, for
    # ssl: remotes (the host's certificate, mbx-pki)
    private_key: Optional[str] = None
    certificate: Optional[str] = None
    ca_cert: Optional[str] = None


_KEYS = ("MBX_DB", "MBX_SB", "MBX_HOST", "MBXCTL", "MBX_STUN_WAIT",
         "MBX_TIMEOUT", "MBX_STATE_DIR", "MBX_PRIVATE_KEY", "MBX_CERTIFICATE",
         "MBX_CA_CERT")
_TLS_KEYS = (("MBX_PRIVATE_KEY", "-p"), ("MBX_CERTIFICATE", "-c"), ("MBX_CA_CERT", "-C"))


# --- configuration ---------------------------------------------------------------

def parse_config(text: str, env: Optional[Mapping[str, str]] = None,
                 source: str = CONF_PATH) -> Config:
    """Config from KEY=VALUE lines (# comments, blank lines, optional quotes);
    a non-empty environment variable of the same name overrides the file.
    Raises ConfigError with one line naming the file and line."""
    values, where = {}, {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ConfigError(f"{source}:{n}: expected KEY=VALUE, got {line!r}")
        if key not in _KEYS:
            raise ConfigError(f"{source}:{n}: unknown key {key!r}; keys are "
                              f"{', '.join(_KEYS)}")
        if key in values:
            raise ConfigError(f"{source}:{n}: {key} set twice (first on line "
                              f"{where[key].rsplit(':', 1)[1]})")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key], where[key] = value, f"{source}:{n}"
    for key in _KEYS:
        if (env or {}).get(key):
            values[key], where[key] = env[key], f"environment {key}"

    host = values.get("MBX_HOST", "")
    if not host:
        raise ConfigError(f"{source}: MBX_HOST is not set (this host's mbx "
                          "name: its Open_vSwitch external_ids:system-id)")
    if not _NAME_RE.fullmatch(host):
        raise ConfigError(f"{where['MBX_HOST']}: invalid MBX_HOST {host!r}: "
                          "use 1-64 characters from A-Z a-z 0-9 _ . -")

    def seconds(key, default):
        if key not in values:
            return default
        try:
            value = float(values[key])
        except ValueError:
            value = 0.0
        if not 0 < value <= 3600:
            raise ConfigError(f"{where[key]}: {key} must be a number of "
                              f"seconds in (0, 3600], got {values[key]!r}")
        return value

    return Config(host=host, db=values.get("MBX_DB") or None,
                  mbxctl=values.get("MBXCTL") or "mbxctl",
                  sb=values.get("MBX_SB") or None,
                  stun_wait=seconds("MBX_STUN_WAIT", 5.0),
                  timeout=seconds("MBX_TIMEOUT", 5.0),
                  state_dir=values.get("MBX_STATE_DIR") or STATE_DIR,
                  private_key=values.get("MBX_PRIVATE_KEY") or None,
                  certificate=values.get("MBX_CERTIFICATE") or None,
                  ca_cert=values.get("MBX_CA_CERT") or None)


def load_config(path: str = CONF_PATH,
                env: Optional[Mapping[str, str]] = None) -> Config:
    """parse_config of the file at path (a missing file is empty: the
    environment may carry everything)."""
    env = os.environ if env is None else env
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, env, path)


# --- running mbxctl -----------------------------------------------------------------

def mbxctl_argv(action: Action, config: Config) -> list:
    """The mbxctl command line of one action."""
    wait = config.stun_wait if action.verb == STUN else config.timeout
    argv = [config.mbxctl]
    if config.db:
        argv += ["--db", config.db]
    if config.sb:
        argv += ["--sb", config.sb]
    for (_key, option), path in zip(_TLS_KEYS, (config.private_key, config.certificate,
                                                config.ca_cert)):
        if path:
            argv += [option, path]
    argv += ["--timeout", f"{wait:g}"]
    if action.verb == BEGIN:
        return argv + ["migrate-begin", action.vm, "--to", action.host]
    if action.verb == STUN:
        return argv + ["migrate-stun", action.vm, "--wait"]
    if action.verb == DONE:
        return argv + ["migrate-done", action.vm]
    if action.verb == ABORT:
        # Whoever aborts first ends the row; the others find none (ok).
        return argv + ["migrate-abort", action.vm, "--if-exists"]
    raise ValueError(f"unknown action {action.verb!r}")


def run_actions(actions, config: Config, runner=subprocess.run,
                log: Optional[Callable[[str], None]] = None) -> list:
    """Run each action's mbxctl, bounded by its --timeout plus GRACE seconds.
    Output is captured (the hook's stdout must stay empty: libvirt reads the
    "migrate" hook's stdout as domain XML).  A failure, a timeout or a missing
    mbxctl is one log line; nothing raises.  Returns [ok] per action."""
    log = log or _stderr_log
    results = []
    for action in actions:
        argv = mbxctl_argv(action, config)
        wait = config.stun_wait if action.verb == STUN else config.timeout
        step = " ".join(argv[argv.index("--timeout") + 2:])
        try:
            proc = runner(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=wait + GRACE, check=False)
        except subprocess.TimeoutExpired:
            log(f"mbx: {step}: no answer within {wait + GRACE:g} s; "
                "libvirt goes on")
            results.append(False)
            continue
        except OSError as e:
            log(f"mbx: {step}: cannot run {config.mbxctl}: {e.strerror}")
            results.append(False)
            continue
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            log(f"mbx: {step}: failed (exit {proc.returncode})"
                + (f": {lines[-1]}" if lines else ""))
            results.append(False)
        else:
            log(f"mbx: {step}: ok")
            results.append(True)
    return results


def retry_abort(action: Action, config: Config, runner=subprocess.run,
                log: Optional[Callable[[str], None]] = None, sleep=time.sleep,
                delays=ABORT_RETRIES) -> bool:
    """Run an abort until mbxctl takes it (the VM's migration ended, by this
    abort or another party's), trying again after each of ``delays`` while
    it fails (config database unreachable, no answer in time).  A migration
    left active would keep the destination's copy of the VM's state and
    hold its row for the operator.  Returns whether it went through."""
    log = log or _stderr_log
    for delay in (0.0,) + tuple(delays):
        if delay:
            sleep(delay)
        if run_actions([action], config, runner, log)[0]:
            return True
    log(f"mbx: {action.vm}: abort did not go through within {sum(delays):g} s; "
        f"end its migration by hand: mbxctl migrate-abort {action.vm}")
    return False


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- QEMU's own migration events (QMP) ----------------------------------------------
#
# With the "events" migration capability QEMU reports every change of its
# migration state as a MIGRATION event ({"status": S}, S a MigrationStatus of
# qapi/migration.json).  The outgoing QEMU goes setup -> active -> ... ->
# completed (or failed / cancelling -> cancelled); with the capability
# "pause-before-switchover" it stops the guest, reports "pre-switchover" and
# waits for "migrate-continue" before it sends the devices' state ("device")
# and hands the guest over.  The incoming QEMU (-incoming) goes
# active -> completed (or failed) and then resumes the guest (event RESUME).
QMP_SETUP = "setup"
QMP_ACTIVE = "active"
QMP_PRE_SWITCHOVER = "pre-switchover"
QMP_DEVICE = "device"
QMP_COMPLETED = "completed"
QMP_FAILED = "failed"
QMP_CANCELLING = "cancelling"
QMP_CANCELLED = "cancelled"
SOURCE, DESTINATION = "source", "destination"


def qmp_actions(vm: str, role: str, status: str, source: str, destination: str,
                sent=()) -> list:
    """mbxctl steps for one MIGRATION event of the QEMU running ``vm`` as
    ``role`` (SOURCE: the outgoing QEMU on ``source``; DESTINATION: the
    incoming one on ``destination``).  ``sent``: the verbs already sent for
    this migration.  Begin goes out once, at the source's setup; stun at the
    source's pre-switchover (the guest is stopped and waits until the
    destination has imported); done when the destination completed; abort
    when either side failed or was cancelled after begin.  Nothing follows
    done or abort."""
    if DONE in sent or ABORT in sent:
        return []
    if status in (QMP_FAILED, QMP_CANCELLED):
        return [Action(ABORT, vm, source if role == SOURCE else destination)] \
            if BEGIN in sent else []
    if role == SOURCE:
        if status == QMP_SETUP and BEGIN not in sent:
            return [Action(BEGIN, vm, destination)]
        if status == QMP_PRE_SWITCHOVER and BEGIN in sent and STUN not in sent:
            return [Action(STUN, vm, source)]
        return []
    if role == DESTINATION and status == QMP_COMPLETED and BEGIN in sent:
        return [Action(DONE, vm, destination)]
    return []


class QmpTracker:
    """One migration of one VM followed through the MIGRATION events of its
    two QEMUs (no I/O): which steps went out, and whether it is over."""

    def __init__(self, vm: str, source: str, destination: str):
        self.vm, self.source, self.destination = vm, source, destination
        self.sent = []

    def handle(self, role: str, status: str) -> list:
        actions = qmp_actions(self.vm, role, status, self.source, self.destination,
                              self.sent)
        self.sent += [a.verb for a in actions]
        return actions

    @property
    def over(self) -> bool:
        return DONE in self.sent or ABORT in self.sent
