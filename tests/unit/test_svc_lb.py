"""middlebox.services.lb: backend choice, health state machine, merged health."""

import zlib
from collections import Counter

import pytest

from middlebox.services import lb
from middlebox.services.lb import Balancer, HealthTracker, merge_health

A, B, C = ("10.0.0.11", 80), ("10.0.0.12", 80), ("10.0.0.13", 8080)
ALL = {A, B, C}


def test_state_declarations():
    assert lb.SHARED_STATE == ("lb-health",) and lb.LOCAL_STATE == ("lb-pinning",)


def test_unknown_algorithm():
    with pytest.raises(ValueError):
        Balancer("random", [A])


def test_round_robin_order_and_skip_unhealthy():
    bal = Balancer("round-robin", [A, B, C])
    assert [bal.choose(1, ALL, {}) for _ in range(6)] == [A, B, C, A, B, C]
    assert [bal.choose(1, {A, C}, {}) for _ in range(4)] == [A, C, A, C]
    assert bal.choose(1, {B}, {}) == B and bal.choose(1, {B}, {}) == B
    assert bal.choose(1, set(), {}) is None
    assert bal.choose(1, None, None) == C                  # None: all healthy
    assert bal.choose(1, {("10.9.9.9", 1)}, {}) is None    # not configured


def test_round_robin_update_keeps_position():
    bal = Balancer("round-robin", [A, B, C])
    assert bal.choose(1, ALL, {}) == A                     # next: B
    bal.update([C, B])
    assert bal.choose(1, ALL, {}) == B and bal.choose(1, ALL, {}) == C
    bal = Balancer("round-robin", [A, B, C])
    bal.choose(1, ALL, {})                                 # next: B, removed
    bal.update([A, C])
    assert bal.choose(1, ALL, {}) == C                     # the next kept one after B
    bal.update([])
    assert bal.choose(1, ALL, {}) is None
    bal.update([A, B])
    assert bal.choose(1, ALL, {}) == A


def test_least_connections_min_ties_in_order():
    bal = Balancer("least-connections", [A, B, C])
    assert bal.choose(1, ALL, {A: 3, B: 1, C: 2}) == B
    assert bal.choose(1, ALL, {A: 2, B: 1, C: 1}) == B     # tie: configured order
    assert bal.choose(1, ALL, {}) == A                     # missing counts are 0
    assert bal.choose(1, {A, C}, {A: 5, B: 0, C: 6}) == A  # B unhealthy
    assert bal.choose(1, ALL, {A: 1, B: 1}) == C
    assert bal.choose(1, set(), {}) is None


def test_least_connections_spreads_when_caller_counts():
    bal = Balancer("least-connections", [A, B, C])
    counts = Counter()
    for _ in range(30):
        counts[bal.choose(1, ALL, counts)] += 1
    assert counts == {A: 10, B: 10, C: 10}


def test_source_hash_stable_deterministic_and_spreads():
    bal = Balancer("source-hash", [A, B, C])
    ip = 0x0A000105
    assert lb.source_hash(ip) == zlib.crc32(bytes([10, 0, 1, 5]))
    assert lb.source_hash("10.0.1.5") == lb.source_hash(ip)
    first = bal.choose(ip, ALL, {})
    assert all(bal.choose(ip, ALL, {A: i}) == first for i in range(20))
    assert Balancer("source-hash", [A, B, C]).choose("10.0.1.5", ALL, {}) == first
    assert first == [A, B, C][zlib.crc32(bytes([10, 0, 1, 5])) % 3]
    spread = Counter(bal.choose(0x0A000000 + i, ALL, {}) for i in range(3000))
    assert set(spread) == ALL and min(spread.values()) > 800
    # a backend going down re-maps only clients that were on it among the
    # healthy list order (here: hash over [A, C]); never chooses the down one
    assert all(bal.choose(0x0A000000 + i, {A, C}, {}) in {A, C} for i in range(300))
    assert bal.choose(ip, set(), {}) is None


def _probe_round(t, now, answers):
    """Send every due probe and answer it; return state changes."""
    changes = {}
    for b in t.due(now):
        t.probe_sent(b, now)
        if b in answers:
            r = t.result(b, answers[b], now + 0.1)
            if r:
                changes[b] = r
    return changes


def test_health_initial_up_first_probe_immediate_then_interval():
    t = HealthTracker(interval=2, timeout=1, rise=2, fall=2, backends=[A, B])
    assert t.state(A) == "up" and t.state(B) == "up"
    assert t.due(0.0) == [A, B]
    t.probe_sent(A, 0.0)
    assert t.due(0.0) == [B]                               # one outstanding probe
    t.result(A, True, 0.2)
    assert t.due(1.9) == [B] and t.due(2.0) == [A, B]
    assert t.next_deadline(0.5) == 0.5                     # B never probed: due now
    t.probe_sent(B, 0.5)
    assert t.next_deadline(0.5) == 1.5                     # B's timeout
    with pytest.raises(KeyError):
        t.state(C)


def test_health_fall_and_rise():
    t = HealthTracker(interval=2, timeout=1, rise=3, fall=2, backends=[A])
    assert _probe_round(t, 0, {A: False}) == {}
    assert _probe_round(t, 2, {A: True}) == {}             # success resets failures
    assert _probe_round(t, 4, {A: False}) == {}
    assert _probe_round(t, 6, {A: False}) == {A: "down"}
    assert t.state(A) == "down" and t.view() == {"10.0.0.11:80": "down"}
    assert t.healthy() == set()
    assert _probe_round(t, 8, {A: True}) == {}
    assert _probe_round(t, 10, {A: True}) == {}
    assert _probe_round(t, 12, {A: False}) == {}           # failure resets successes
    assert _probe_round(t, 14, {A: True}) == {}
    assert _probe_round(t, 16, {A: True}) == {}
    assert _probe_round(t, 18, {A: True}) == {A: "up"}
    assert _probe_round(t, 20, {A: False}) == {}           # fall counts afresh


def test_health_timeouts():
    t = HealthTracker(interval=2, timeout=1, rise=1, fall=2, backends=[A, B])
    for b in t.due(0):
        t.probe_sent(b, 0)
    assert t.result(B, True, 0.5) is None
    assert t.timeouts(0.9) == []
    assert t.timeouts(1.0) == [A]
    assert t.result(A, False, 1.0) is None
    assert t.timeouts(1.5) == []                           # counted once
    assert t.result(A, True, 1.6) is None                  # late answer: ignored
    assert t.due(1.9) == [] and t.due(2.0) == [A, B]
    for b in t.due(2.0):
        t.probe_sent(b, 2.0)
    assert t.timeouts(3.0) == [A, B]
    assert t.result(A, False, 3.0) == "down" and t.result(B, False, 3.0) is None
    assert t.result(A, True, 3.1) is None                  # no outstanding probe
    t.probe_sent(A, 4.0)
    assert t.result(A, True, 4.1) == "up"                  # rise=1


def test_health_timeout_longer_than_interval():
    t = HealthTracker(interval=1, timeout=3, rise=1, fall=1, backends=[A])
    t.probe_sent(A, 0)
    assert t.due(2) == [] and t.timeouts(2) == []
    assert t.timeouts(3) == [A]
    assert t.result(A, False, 3) == "down"
    assert t.due(3) == [A]


def test_health_set_backends_keeps_state():
    t = HealthTracker(interval=2, timeout=1, rise=2, fall=1, backends=[A, B])
    t.probe_sent(A, 0)
    assert t.result(A, False, 0.1) == "down"
    t.set_backends([C, A])
    assert t.backends == (C, A) and t.state(A) == "down" and t.state(C) == "up"
    assert t.due(0.5) == [C]
    with pytest.raises(KeyError):
        t.state(B)
    t.probe_sent(B, 1)                                     # untracked: ignored
    assert t.result(B, True, 1) is None


def test_health_validation_and_options():
    with pytest.raises(ValueError):
        HealthTracker(interval=0)
    with pytest.raises(ValueError):
        HealthTracker(rise=0)
    t = HealthTracker.from_options({"health-interval": "5", "health-timeout": "0.5",
                                    "health-rise": "3", "health-fall": "x"})
    assert (t.interval, t.timeout, t.rise, t.fall) == (5.0, 0.5, 3, 2)
    assert len(t.errors) == 1 and "health-fall" in t.errors[0]
    t = HealthTracker.from_options({"health-interval": "nan", "health-rise": "-1"})
    assert (t.interval, t.rise) == (2.0, 2) and len(t.errors) == 2
    assert HealthTracker.enabled({}) and HealthTracker.enabled({"health-check": "tcp"})
    assert not HealthTracker.enabled({"health-check": "none"})


def test_merge_health():
    views = {"hv1": {"10.0.0.11:80": "up", "10.0.0.12:80": "down"},
             "hv2": {"10.0.0.11:80": "down"},
             "hv3": "garbage"}
    assert merge_health(views, [A, B, C]) == {A: "down", B: "down", C: "up"}
    assert merge_health({}, [A]) == {A: "up"}
    assert merge_health({"hv1": {"10.0.0.11:80": "up"}}, [A]) == {A: "up"}


def test_backend_keys():
    assert lb.backend_key(A) == "10.0.0.11:80"
    assert lb.parse_backend_key("10.0.0.11:80") == A
    with pytest.raises(ValueError):
        lb.parse_backend_key("10.0.0.11")
