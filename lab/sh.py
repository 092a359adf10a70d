"""Small shell helpers for the namespace lab: run a command (optionally inside a
network namespace), wait for a condition, read a pidfile.  Processes are
ended by PID with ``ovsdb.server.stop``."""

import os
import subprocess
import time


class LabError(Exception):
    """A lab step failed; the message says which step and why."""


def run(cmd, netns=None, check=True, env=None, timeout=30, input=None):
    """Run ``cmd`` (a list) and return its stdout as text."""
    if netns:
        cmd = ["ip", "netns", "exec", netns] + list(cmd)
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                          timeout=timeout, input=input)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError("%s: %s" % (" ".join(cmd), msg[-1] if msg else
                                   "exit status %d" % proc.returncode))
    return proc.stdout


class TryEach:
    """Runs the steps of an undo, each tried whatever the ones before did:
    ``step(what, fn)``; ``problems`` holds one line per step that failed."""

    def __init__(self):
        self.problems = []

    def __call__(self, what, fn):
        try:
            fn()
        except Exception as err:        # noqa: BLE001 - every step is tried
            self.problems.append("%s: %s" % (what, err))


def wait_until(predicate, timeout, interval=0.01, what="condition"):
    """Poll ``predicate`` until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def read_pidfile(path, timeout=5.0):
    def _read():
        try:
            with open(path) as f:
                text = f.read().strip()
            return int(text) if text else None
        except (FileNotFoundError, ValueError):
            return None
    return wait_until(_read, timeout, what="pidfile %s" % path)


def counts_arg(text, most=2_000_000):
    """argparse type: comma-separated connection counts, each 1..``most``
    (a typo is refused before any benchmark runs, not after ten minutes)."""
    import argparse
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(1 <= v <= most for v in values):
        raise argparse.ArgumentTypeError(
            "wants comma-separated counts 1-%d, e.g. 1000,10000; got %r" % (most, text))
    return values
