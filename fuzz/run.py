"""Run the fuzz targets, time-bounded: ``python -m fuzz.run`` (``make fuzz``).

    python -m fuzz.run [--seconds N] [--target NAME]... [--grow] [--out DIR]
    python -m fuzz.run --replay [--target NAME]...

Each target runs in its own process (``fuzz.worker``) for ``--seconds``
(default 60), starting from its corpus in the tree (``fuzz/corpus/NAME``);
inputs that reach new code go to a scratch directory, and with ``--grow``
the ones that add coverage are merged into the tree's corpus.  An input
that makes a target raise anything but the component's documented error is
a finding: its bytes are written to ``--out`` (``crash-…``) with the
fuzzer's log, and the run exits 1.

``--replay`` runs every corpus input through its target once, without the
fuzzer: the regression check of past findings (tests/unit/test_fuzz_corpus.py).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from fuzz import CORPUS
from fuzz.targets import TARGETS

NAMES = ("frame", "transfer", "match", "ctl", "yaml")
PER_INPUT_TIMEOUT = 10          # seconds one input may take: more is a finding
RSS_LIMIT_MB = 1536
MAX_LEN = 8192
GRACE = 120                     # seconds past --seconds before the run is killed


def corpus_inputs(name):
    """(file name, bytes) of every input in the target's corpus."""
    d = os.path.join(CORPUS, name)
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            yield f, fh.read()


def replay(names):
    """Run every corpus input through its target; returns the failures as
    (target, file, exception) tuples."""
    failures = []
    for name in names:
        for f, data in corpus_inputs(name):
            try:
                TARGETS[name].run(data)
            except Exception as err:        # a finding: reported, not raised
                failures.append((name, f, err))
    return failures


def fuzz_one(name, seconds, out, grow=False):
    """Fuzz one target for ``seconds``; returns (ok, summary line)."""
    corpus = os.path.join(CORPUS, name)
    scratch = tempfile.mkdtemp(prefix="mbx-fuzz-%s-" % name)
    log = os.path.join(out, "%s.log" % name)
    args = [sys.executable, "-m", "fuzz.worker", name, scratch, corpus,
            "-max_total_time=%d" % seconds, "-timeout=%d" % PER_INPUT_TIMEOUT,
            "-rss_limit_mb=%d" % RSS_LIMIT_MB, "-max_len=%d" % MAX_LEN,
            "-artifact_prefix=%s/%s-" % (out, name), "-print_final_stats=1"]
    tokens = TARGETS[name].tokens
    if tokens:
        path = os.path.join(out, "%s.dict" % name)
        with open(path, "w") as fh:
            fh.writelines('"%s"\n' % _escape(t) for t in tokens)
        args.append("-dict=" + path)
    t0 = time.monotonic()
    try:
        with open(log, "w") as fh:
            try:
                rc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=seconds + GRACE, cwd=_root()).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        stats = _stats(log)
        if grow and rc == 0:
            subprocess.run([sys.executable, "-m", "fuzz.worker", name, "-merge=1",
                            corpus, scratch], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=_root(), timeout=seconds + GRACE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - t0
    if rc != 0:
        return False, "%s: FINDING after %.0f s (exit %s): see %s" % (name, took, rc, log)
    return True, "%s: no finding in %.0f s, %s" % (name, took, stats)


def _escape(token):
    return "".join(c if c.isprintable() and c not in '"\\' else "\\x%02x" % ord(c)
                   for c in token)


def _stats(log):
    """'N runs, cov C' from libFuzzer's final statistics."""
    runs = cov = "?"
    with open(log, errors="replace") as fh:
        for line in fh:
            if line.startswith("stat::number_of_executed_units:"):
                runs = line.split(":")[-1].strip()
            elif " cov: " in line:
                cov = line.split(" cov: ")[1].split()[0]
    return "%s runs, coverage %s edges" % (runs, cov)


def _root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    p.add_argument("--target", action="append", choices=NAMES, help="default: all")
    p.add_argument("--grow", action="store_true",
                   help="merge inputs that add coverage into fuzz/corpus")
    p.add_argument("--out", default=None, help="findings and logs (default: a new temp dir)")
    p.add_argument("--replay", action="store_true", help="only replay the corpus")
    a = p.parse_args(argv)
    names = a.target or list(NAMES)
    if a.replay:
        failures = replay(names)
        for name, f, err in failures:
            print("%s/%s: %s: %s" % (name, f, type(err).__name__, err))
        print("replayed the corpus of %s: %d failures" % (", ".join(names), len(failures)))
        return 1 if failures else 0
    out = a.out or tempfile.mkdtemp(prefix="mbx-fuzz-out-")
    os.makedirs(out, exist_ok=True)
    ok = True
    for name in names:
        good, line = fuzz_one(name, a.seconds, os.path.abspath(out), a.grow)
        print(line, flush=True)
        ok = ok and good
    print("fuzz: %s (logs in %s)" % ("no findings" if ok else "FINDINGS", out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
