"""middlebox.services.ids: port-scan (shared) and SYN-flood detection."""

import pytest

from middlebox.services import ids
from middlebox.services.ids import ScanDetector, SynFloodDetector

S = "203.0.113.5"


def test_state_declarations():
    assert ids.SHARED_STATE == ("ids-scan",) and ids.LOCAL_STATE == ("ids-synflood",)


def test_scan_local_targets_inside_window_capped_and_sorted():
    d = ScanDetector(threshold=3, window=10)
    d.observe(S, "10.0.0.2", 22, 0.0)
    d.observe(S, "10.0.0.1", 80, 1.0)
    d.observe(S, "10.0.0.1", 80, 2.0)                      # same target: one
    assert d.local_targets(2.0) == {S: ["10.0.0.1:80", "10.0.0.2:22"]}
    d.observe(S, "10.0.0.3", 443, 3.0)
    d.observe(S, "10.0.0.4", 443, 4.0)                     # cap 3: oldest replaced
    assert d.local_targets(4.0) == {S: ["10.0.0.1:80", "10.0.0.3:443", "10.0.0.4:443"]}


def test_scan_window_slides():
    d = ScanDetector(threshold=3, window=10)
    d.observe(S, "10.0.0.1", 1, 0.0)
    d.observe(S, "10.0.0.1", 2, 5.0)
    assert d.local_targets(9.9) == {S: ["10.0.0.1:1", "10.0.0.1:2"]}
    assert d.local_targets(10.0) == {S: ["10.0.0.1:2"]}   # age >= window: forgotten
    d.observe(S, "10.0.0.1", 3, 11.0)
    assert d.combined(d.local_targets(11.0), {}, "hv1", 11.0) == []   # 2 in window
    d.observe(S, "10.0.0.1", 4, 12.0)
    assert d.combined(d.local_targets(12.0), {}, "hv1", 12.0) == [(S, 3, ["hv1"])]
    assert d.local_targets(30.0) == {}
    assert len(d._src) == 0


def test_scan_inside_window_detected_slow_scan_not():
    fast, slow = ScanDetector(5, 10), ScanDetector(5, 10)
    for i in range(5):
        fast.observe(S, "10.0.0.9", 1000 + i, i * 1.0)
        slow.observe(S, "10.0.0.9", 1000 + i, i * 3.0)
    assert fast.combined(fast.local_targets(4.0), {}, "hv1", 4.0) == [(S, 5, ["hv1"])]
    assert slow.combined(slow.local_targets(12.0), {}, "hv1", 12.0) == []


def test_scan_union_across_hosts_counts_one_scan():
    d = ScanDetector(threshold=4, window=10)
    d.observe(S, "10.0.0.1", 22, 0)
    d.observe(S, "10.0.0.2", 22, 0)
    local = d.local_targets(1)
    remote = {"hv2": {S: ["10.0.0.2:22", "10.0.0.3:22"], "198.51.100.1": ["10.0.0.1:1"]},
              "hv0": {S: ["10.0.0.4:22"]},
              "hv1": {S: ["stale:1", "stale:2", "stale:3", "stale:4"]},   # own old row: replaced
              "hv9": "garbage", "hv8": {S: "10.0.0.1:22"}, "hv7": {S: []}}
    got = d.combined(local, remote, "hv1", 1)
    assert got == [(S, 4, ["hv0", "hv1", "hv2"])]          # overlap 10.0.0.2:22 once
    # no single host reaches the threshold
    for h, v in remote.items():
        if isinstance(v, dict) and h != "hv1":
            assert d.combined({}, {h: v}, "hvX", 1) == []


def test_scan_alert_once_by_first_host_and_again_after_window():
    views = {"hv1": {S: ["10.0.0.%d:1" % i for i in range(2)]},
             "hv2": {S: ["10.0.0.%d:1" % i for i in range(2, 4)]}}
    dets = {h: ScanDetector(threshold=4, window=10) for h in ("hv1", "hv2")}

    def round_(now):
        alerts = []
        for h, d in dets.items():
            for src, count, hosts in d.combined(views[h], views, h, now):
                if d.should_alert(src, hosts, h, now):
                    alerts.append((h, src, count))
                d.mark_alerted(src, now)
        return alerts

    assert round_(0) == [("hv1", S, 4)]
    assert round_(1) == [] and round_(9.9) == []
    assert round_(10) == [("hv1", S, 4)]                   # a window passed
    # the first host stops reporting: hv2 is now first but already marked
    views["hv1"] = {}
    views["hv2"][S] = ["x:%d" % i for i in range(4)]
    assert round_(12) == []
    assert round_(20) == [("hv2", S, 4)]


def test_should_alert_rules():
    d = ScanDetector(3, 10)
    assert d.should_alert(S, ["hv2", "hv1"], "hv1", 0)
    assert not d.should_alert(S, ["hv2", "hv1"], "hv2", 0)
    assert not d.should_alert(S, ["hv2"], "hv1", 0)        # not reporting
    assert not d.should_alert(S, [], "hv1", 0)
    d.mark_alerted(S, 5)
    assert not d.should_alert(S, ["hv1"], "hv1")           # now: latest seen (5)
    d.mark_alerted(S, 9)                                   # not extended
    assert not d.should_alert(S, ["hv1"], "hv1", 14.9)
    assert d.should_alert(S, ["hv1"], "hv1", 15)


def test_scan_memory_bounded():
    d = ScanDetector(threshold=5, window=100, max_sources=50)
    for i in range(1000):
        src = "198.51.%d.%d" % (i // 250, i % 250)
        for p in range(20):
            d.observe(src, "10.0.0.1", p, float(i))
    assert len(d._src) == 50 and all(len(t) <= 5 for t in d._src.values())
    local = d.local_targets(999.0)
    assert len(local) == 50 and "198.51.3.249" in local and "198.51.0.0" not in local
    for i in range(200):
        d.mark_alerted("x%d" % i, float(i))
    assert len(d._alerted) <= 50


def test_scan_options():
    d = ScanDetector.from_options({"scan-threshold": "7", "scan-window": "bad"})
    assert (d.threshold, d.window) == (7, 10.0) and len(d.errors) == 1
    assert (ScanDetector.from_options({}).threshold, ScanDetector.from_options({}).window) == (20, 10.0)
    with pytest.raises(ValueError):
        ScanDetector(0, 10)
    with pytest.raises(ValueError):
        ScanDetector(3, 0)


def test_synflood_threshold_once():
    f = SynFloodDetector(threshold=5, window=2)
    D = "10.0.0.7"
    fired = [f.observe_syn(D, 0.1 * i) for i in range(20)]
    assert fired == [False] * 4 + [True] + [False] * 15
    assert f.count(D, 1.9) == 5                            # saturates at the threshold
    assert not f.observe_syn("10.0.0.8", 1.0)              # other destination


def test_synflood_window_slides_slow_rate_never_fires():
    f = SynFloodDetector(threshold=5, window=2)
    assert not any(f.observe_syn("10.0.0.7", 0.5 * i) for i in range(40))   # 4 per window


def test_synflood_rearm_after_falling_below():
    f = SynFloodDetector(threshold=3, window=2)
    D = "10.0.0.7"
    assert [f.observe_syn(D, t) for t in (0, 0.1, 0.2)] == [False, False, True]
    assert not f.observe_syn(D, 0.3)
    # quiet: the count falls to 0, then crosses again
    assert [f.observe_syn(D, t) for t in (5, 5.1, 5.2)] == [False, False, True]


def test_synflood_realert_after_window_while_sustained():
    f = SynFloodDetector(threshold=3, window=2)
    D = "10.0.0.7"
    times = [i * 0.1 for i in range(60)]                   # 20 per window, sustained
    fired = [t for t in times if f.observe_syn(D, t)]
    assert fired == pytest.approx([0.2, 2.2, 4.2])


def test_synflood_memory_bounded():
    f = SynFloodDetector(threshold=100, window=10, max_destinations=30)
    for i in range(500):
        for _ in range(200):
            f.observe_syn("10.1.%d.%d" % (i // 250, i % 250), float(i) / 100)
    assert len(f) == 30 and all(len(r[0]) <= 100 for r in f._dst.values())
    f2 = SynFloodDetector(threshold=3, window=1)
    for i in range(100):
        f2.observe_syn("10.2.0.%d" % i, float(i))          # each idle a window later
    assert len(f2) == 1


def test_synflood_options():
    f = SynFloodDetector.from_options({"synflood-threshold": "50", "synflood-window": "5"})
    assert (f.threshold, f.window) == (50, 5.0) and f.errors == ()
    f = SynFloodDetector.from_options({"synflood-threshold": "0"})
    assert (f.threshold, f.window) == (200, 2.0) and len(f.errors) == 1
    # the documented range (ovsdb/mbx_nb.md): whole seconds, 1-65535, as
    # mbxctl checks it
    for window in ("0.5", "1e308", "65536"):
        f = SynFloodDetector.from_options({"synflood-window": window})
        assert f.window == 2.0 and "synflood-window" in f.errors[0]
