"""Every ``make bench`` module, once, at tiny sizes: a refactor that breaks
``make bench`` fails here, in ``make test``, not after the first ten minutes
of a real run.

Each test runs a module's command-line entry point (``python -m lab.X``, as
``make bench`` runs its ``run``), reads the JSON it prints and checks that
its figures are there and sane (not only that nothing raised); the last
renders the report (``lab.bench --render``) from what the others measured.
Labs and switches use their own prefixes (``mbxy``, ``mbxz``) and run
directories, and are torn down after each test even when it fails (the
modules tear down themselves; the fixture catches a module that was
killed).
"""

import json
import os
import subprocess
import sys

import pytest

from lab.lab import Lab

pytestmark = pytest.mark.lab

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PERF_PREFIX, PERF_RUNDIR = "mbxy", "/run/mbx-test-bench-perf"
MIG_PREFIX, MIG_RUNDIR = "mbxz", "/run/mbx-test-bench-mig"
MEM_RUNDIR = "/run/mbx-test-bench-mem"
HA_PREFIX, HA_RUNDIR = "mbxw", "/run/mbx-test-bench-ha"
NOISY_PREFIX, NOISY_RUNDIR = "mbxn", "/run/mbx-test-bench-noisy"
RESULTS = {}                    # what each test measured, for the report test


def namespaces(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split()[0].startswith(prefix + "-")
            or line.split()[0].startswith(prefix + "c-")]


def teardown_all():
    from lab import migbench
    for prefix, rundir in ((PERF_PREFIX, PERF_RUNDIR), (PERF_PREFIX + "c", PERF_RUNDIR + "-ct"),
                           (MIG_PREFIX, MIG_RUNDIR), (HA_PREFIX, HA_RUNDIR),
                           (NOISY_PREFIX, NOISY_RUNDIR)):
        Lab(prefix=prefix, rundir=rundir).down(log=lambda *_: None)
    for rundir, name in ((MIG_RUNDIR, "xsrc"), (MIG_RUNDIR, "xdst"), (MEM_RUNDIR, "xmem")):
        migbench.Switch(rundir, name, MIG_PREFIX).down()


@pytest.fixture
def clean():
    assert os.geteuid() == 0, "the bench modules need root (network namespaces)"
    teardown_all()                      # a run that was killed half-way
    try:
        yield
    finally:
        teardown_all()
    assert namespaces(PERF_PREFIX) == [] and namespaces(MIG_PREFIX) == []
    assert namespaces(HA_PREFIX) == [] and namespaces(NOISY_PREFIX) == []


def entry(module, *args, timeout=240):
    """``python -m lab.MODULE ARGS``; its JSON output."""
    proc = subprocess.run([sys.executable, "-m", "lab." + module] + list(args),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_perfbench_measures_three_systems_on_every_path(clean):
    d = entry("perfbench", "--rounds", "1", "--seconds", "1", "--connections", "20",
              "--workers", "2", "--prefix", PERF_PREFIX, "--rundir", PERF_RUNDIR)
    for case, row in d["throughput"].items():
        for system, value in row["median"].items():
            if case != "tcp-snat" or not system.startswith("plain"):
                assert value and value > 0, (case, system, value)
        assert row["mbx_to_ct"] > 0
    for case, row in d["newconn"].items():
        for system, cps in row["parallel"]["per_second"].items():
            if case != "snat" or not system.startswith("plain"):
                assert cps > 0 and row["connect_ms_median"][system] > 0, (case, system)
        assert row["connect_median_mbx_to_ct"] > 0
        assert sum(row["failed"].values()) <= 4, row["failed"]
    # Both pipelines under the same conntrack settings.
    for lab_hosts in d["conntrack_settings"].values():
        assert set(lab_hosts.values()) == {"TCP sequence checking: disabled"}
    assert d["lb_algorithms"]["mbx"] == {"10.0.0.100:80/tcp": "hash",
                                         "10.0.0.100:5201/tcp": "source-hash",
                                         "10.0.0.101:80/tcp": "round-robin"}
    for system, split in d["cpu_split"].items():
        assert split["connections"] > 0 and split["cpu_ms_per_connection"]["ovs-vswitchd"] >= 0
        # a connection is at least a SYN, SYN-ACK, data, FIN each way
        assert split["datapath_per_connection"]["packets received"] >= 5, (system, split)
    # mbxd picks every backend of the round-robin VIP: seen in its profile.
    prof = d["mbxd_profile"]
    assert prof["connections"] > 0 and prof["counters"].get("lb_picks", 0) >= prof["connections"]
    assert prof["top_own"] and prof["profiled_ms"] > 0
    assert d["shared_state_ms"]["samples"] > 0
    RESULTS["dataplane"] = d


def test_migbench_moves_state_between_switches_and_vms_between_hosts(clean):
    sizes = (100, 300)
    res = entry("migbench", "--sizes", ",".join(map(str, sizes)), "--moves", "1",
                "--per-kind", "1", "--conntrack-runs", "1", "--prefix", MIG_PREFIX,
                "--rundir", MIG_RUNDIR)
    for n in sizes:
        t = res["transfer"][str(n)]
        records = sum(t["entries"].values())
        assert t["entries"] == {"vm_zone": n, "snat_zone": n // 3}
        # The destination's zones held exactly the records, after each import.
        assert t["checked"] == {"bulk": records, "overlapped": records, "lazy": records}
        assert t["packet_outs"] == 3 * records             # three ACKs per entry
        for phase in ("gather", "encode", "transfer", "decode", "verify", "localize",
                      "commit", "overlapped", "index", "background"):
            assert t["ms"][phase] > 0, phase
        assert t["usable_lazy_ms"] < t["usable_bulk_ms"] < 60000
        assert 0 < t["usable_overlapped_ms"] < 60000
        assert 54 * records < t["wire_bytes"] < 54 * records + 4096
        assert t["lazy"]["first_packet_idle_ms"]["n"] > 0
    surv = res["survival_mbx"]
    for path in ("announced", "unannounced"):
        assert surv[path]["moves"] == 1
        assert set(surv[path]["kinds"]) == {"fw-in", "fw-out", "snat", "lb", "dnat"}
        g = res["gaps"][path]
        assert g["mbx_all_kinds"]["n"] == 1 and g["plain"]["n"] == 1
        assert 0 < g["plain"]["median"] < 5000
    assert res["conntrack"]["runs"] == 1
    assert sum(k["total"] for k in res["conntrack"]["kinds"].values()) == 4
    RESULTS["migration"] = res


def test_membench_reports_memory_per_connection_for_mbxd_and_the_datapath(clean):
    n = 3000
    mem = entry("membench", "--sizes", str(n), "--prefix", MIG_PREFIX,
                "--rundir", MEM_RUNDIR)
    mb, dp = mem["mbxd"][str(n)], mem["datapath"][str(n)]
    assert mb["records"] == n + n // 3
    assert 100 < mb["traced_bytes_per_connection"] < 10000, mb
    assert mb["rss_bytes_per_connection"] < 20000, mb
    assert dp["entries"] == n + n // 3
    assert dp["rss_bytes_per_entry"] >= 0 and dp["committed_per_second"] > 0
    RESULTS["memory"] = mem


def test_cpbench_computes_a_small_cloud(tmp_path):
    path = str(tmp_path / "cp.json")
    proc = subprocess.run([sys.executable, "-m", "lab.cpbench", "--hosts", "20",
                           "--vms-per-host", "10", "--moves", "1", "--json", path],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(path) as f:
        cp = json.load(f)
    assert cp["hosts"] == 20 and cp["full"]["seconds"] > 0 and cp["full"]["flow_mods"] > 0
    assert cp["flows_per_host"]["median"] > 0
    assert 0 < cp["move"]["reaction_ms"]["median"] < 60000
    assert cp["config_bytes"]["other_tenant_bytes_max"] == 0
    assert "## Control plane" in proc.stdout
    RESULTS["control_plane"] = cp


def test_habench_kills_leaders_and_controllers_under_a_live_connection(clean):
    ha = entry("habench", "--rounds", "1", "--prefix", HA_PREFIX, "--rundir", HA_RUNDIR,
               timeout=300)
    assert (ha["survived"], ha["total"]) == (1, 1), ha
    [rnd] = ha["rounds"]
    assert [t["kind"] for t in rnd["takeovers"]] == \
        ["sb_leader", "nb_leader", "controller", "northd"]
    for t in rnd["takeovers"]:
        assert t["successor"] and t["killed"] not in t["successor"].split(", "), t
        assert 0 <= t["usable_s"] < 60, t
        if t["kind"] == "controller":
            assert t["served"], t           # it served hosts when it was killed
        if "elected_s" in t:
            assert 0 < t["elected_s"] <= t["usable_s"], t
    assert rnd["probe"]["error"] is None and rnd["probe"]["sent"] == rnd["probe"]["received"]
    assert set(ha["summary"]) == {"sb_leader", "nb_leader", "controller", "northd"}
    RESULTS["failover"] = ha


def test_noisybench_measures_another_tenant_quiet_and_while_one_vm_floods(clean):
    res = entry("noisybench", "--probes", "30", "--flood-seconds", "3", "--flood-rate", "1500",
                "--rate", "300", "--prefix", NOISY_PREFIX, "--rundir", NOISY_RUNDIR,
                timeout=300)
    from lab import noisybench
    assert list(res["phases"]) == list(noisybench.PHASES)
    for name, ph in res["phases"].items():
        assert ph["ok"] + ph["failed"] == 30 and ph["connect_ms"]["p99"] > 0, (name, ph)
        if name.startswith("flood"):
            assert ph["flood"]["sent"] > 1000 and ph["noisy_zone_max"] > 0, (name, ph)
    # The meter works only with the limits on: 1500 SYN/s against 300/s.
    assert res["phases"]["flood-limited"]["noisy_meter_dropped"] > 1000
    assert res["phases"]["flood-limited"]["noisy_rate"] == 300
    assert res["phases"]["flood-unlimited"]["noisy_meter_dropped"] == 0
    assert set(res["p99_to_quiet"]) == {"flood-limited", "flood-unlimited", "quiet-again"}
    RESULTS["noisy"] = res


def test_the_report_renders_every_target_from_the_tiny_results(tmp_path):
    from lab import bench, report
    missing = [k for k in ("dataplane", "migration", "memory", "control_plane", "failover",
                           "noisy") if k not in RESULTS]
    if missing:
        pytest.skip("an earlier bench module failed: no %s results" % ", ".join(missing))
    results = {"machine": bench.machine(), "started": "tiny", "seconds": 1,
               "dataplane": RESULTS["dataplane"],
               "migration": report.summarize_migration(RESULTS["migration"]),
               "control_plane": RESULTS["control_plane"], "memory": RESULTS["memory"],
               "failover": RESULTS["failover"], "noisy": RESULTS["noisy"]}
    out = tmp_path / "benchmarks"
    out.mkdir()
    with open(out / "results.json", "w") as f:
        json.dump(results, f)
    md = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "lab.bench", "--render", "--out-dir", str(out),
                           "--report", str(md)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.json") as f:
        targets = json.load(f)["targets"]
    names = " | ".join(t["target"] for t in targets)
    for want in ("new connections/s across", "new connections/s same", "new connections/s snat",
                 "median connect time across", "throughput tcp-across: mbx >= 1.0 x ct-baseline",
                 "throughput udp-same: mbx >= 0.95 x plain",
                 "survive the announced path", "survive the unannounced path",
                 "extra reply gap p99, announced", "extra reply gap p99, unannounced",
                 "memory per connection reported: mbxd",
                 "memory per connection reported: datapath",
                 "(issue 15) southbound leader killed", "(issue 15) northbound leader killed",
                 "(issue 15) serving physical controller killed",
                 "(issue 15) active mbx-northd killed",
                 "noisy neighbour: another tenant's new connections while one VM floods"):
        assert want in names, want
    assert all(t["met"] in (True, False) for t in targets)
    text = md.read_text()
    for section in ("## Targets", "### Established connections", "### New connections",
                    "### Moving the state of N connections of one VM",
                    "### Reply gap of a migration", "### Connections that survive a migration",
                    "## Control plane", "## Memory", "## Failover of the control plane",
                    "## Noisy neighbour"):
        assert section in text, section
    assert text.count("| **no** |") + text.count("| yes |") == len(targets)
