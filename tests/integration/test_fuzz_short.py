"""A short run of ``make fuzz`` (every target, coverage-guided, from the
corpus in the tree): no input makes a parser raise anything but its
documented one-line error.  About 90 seconds."""

import os
import subprocess
import sys

from fuzz import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECONDS = 12


def test_a_short_fuzz_run_of_every_target_finds_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fuzz.run", "--seconds", str(SECONDS),
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=len(run.NAMES) * (SECONDS + run.GRACE))
    detail = proc.stdout + "".join(
        "\n--- %s\n%s" % (log.name, log.read_text(errors="replace")[-3000:])
        for log in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, detail
    for name in run.NAMES:
        line = next(l for l in proc.stdout.splitlines() if l.startswith(name + ":"))
        assert "no finding" in line, detail
        runs = int(line.split(", ")[1].split()[0])
        assert runs > 100, "%s ran only %d inputs: %s" % (name, runs, line)
