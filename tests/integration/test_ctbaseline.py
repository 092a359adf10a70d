"""The conntrack baseline of the migration benchmark (lab/ctbaseline.py):
one ``run()`` on its own lab (prefix mbxc, /run/mbx-ct).  It must have been a
working pipeline before the move, and its result must add up; how many
connections survive is what it measures, so no number is asserted."""

import os
import subprocess

import pytest

from lab import ctbaseline as cb

pytestmark = pytest.mark.lab


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split()[0].startswith(cb.PREFIX + "-")]


@pytest.fixture(scope="module")
def result():
    assert os.geteuid() == 0, "the lab tests need root (network namespaces)"
    lines = []
    res = cb.run(hosts=3, per_kind=3, settle=3.0, log=lines.append)
    res["log"] = lines
    return res


def test_the_pipeline_worked_before_the_move(result):
    assert result["pipeline"] == "ovs-conntrack"
    assert result["before"] == {"connected": 12, "exchanging": 12}
    assert any("migrated mv h1 -> h2" in line for line in result["log"])
    assert result["migrate_ms"]["total"] > 0


def test_the_result_adds_up(result):
    kinds = result["kinds"]
    assert set(kinds) == {"fw-in", "fw-out", "snat", "lb"}
    for kind in kinds.values():
        assert kind["total"] == 3 and 0 <= kind["survived"] <= 3
    assert result["total"] == 12 == sum(k["total"] for k in kinds.values())
    assert result["survived"] == sum(k["survived"] for k in kinds.values())
    # Every connection either survived (with a reply gap) or has an error.
    assert len(result["errors"]) == result["total"] - result["survived"]
    assert len(result["max_gap_ms"]) == result["survived"]
    assert not set(result["errors"]) & set(result["max_gap_ms"])
    for name in list(result["errors"]) + list(result["max_gap_ms"]):
        assert name.split("#")[0] in kinds
    for name, error in result["errors"].items():
        assert isinstance(error, str) and error, name
    survivors = {kind: sum(1 for n in result["max_gap_ms"] if n.split("#")[0] == kind)
                 for kind in kinds}
    assert survivors == {kind: k["survived"] for kind, k in kinds.items()}
    # A surviving LB connection kept its backend (or it would have been reset).
    assert set(result["lb_backends"]) == {"lb", "lb#2", "lb#3"}
    backends = {cb.VMS[b][0] for b in cb.BACKENDS}
    for name, picked in result["lb_backends"].items():
        assert picked["before"] in backends, (name, picked)
        if name in result["max_gap_ms"]:
            assert picked["after"] == picked["before"], (name, picked)


def test_the_lab_is_gone(result):
    assert namespaces() == []
    assert not os.path.exists(os.path.join(cb.RUNDIR, "state.json"))
