"""L4 load balancer: backend choice, health checks, the merged health view.

See docs/services.md, "Chains in the daemon" and "Load-balancer health".

* ``Balancer`` picks a backend for a new connection to a VIP.  Algorithms are
  per host: ``round-robin`` (rotation over the configured order, skipping
  unhealthy backends), ``least-connections`` (fewest connections this host's
  daemon holds to it, ties in configured order), ``source-hash`` (a stable
  CRC32 of the client address over the healthy backends in configured
  order).  With source-hash a backend going down re-maps new connections of
  some clients; existing connections stay where they are only because the
  caller pins the choice in the connection entry (``lb-pinning``, local).
* ``HealthTracker`` is the rise/fall state machine of this host's own
  backends' TCP probes; the caller sends the probes and feeds the answers.
* ``merge_health`` merges every host's published view (``lb-health``,
  shared).

Pure: no I/O, no clock; every time is the caller's ``now`` (float seconds).
"""

import ipaddress
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

from mbxmodel.state import LB_HEALTH
from middlebox.services import option
from ovsdb import validate

SHARED_STATE = (LB_HEALTH,)
LOCAL_STATE = ("lb-pinning",)

Backend = Tuple[str, int]

ROUND_ROBIN = "round-robin"
LEAST_CONNECTIONS = "least-connections"
SOURCE_HASH = "source-hash"
ALGORITHMS = (ROUND_ROBIN, LEAST_CONNECTIONS, SOURCE_HASH)

UP, DOWN = "up", "down"


def backend_key(backend: Backend) -> str:
    """``(ip, port)`` -> ``"ip:port"`` (the key of health views and LB_VIP.status)."""
    ip, port = backend
    return "%s:%d" % (ip, int(port))


def parse_backend_key(key: str) -> Backend:
    """``"ip:port"`` -> ``(ip, port)``; ValueError if malformed."""
    try:
        ip, port = str(key).rsplit(":", 1)
        return (ip, int(port))
    except (TypeError, ValueError):
        raise ValueError("%r is not a backend ip:port" % (key,)) from None


def _norm_backends(backends) -> Tuple[Backend, ...]:
    out, seen = [], set()
    for ip, port in backends:
        b = (str(ip), int(port))
        if b not in seen:
            seen.add(b)
            out.append(b)
    return tuple(out)


class Balancer:
    """Backend choice for one VIP on this host."""

    def __init__(self, algorithm: str, backends: Iterable[Backend]):
        if algorithm not in ALGORITHMS:
            raise ValueError("unknown load-balancing algorithm %r (one of %s)"
                             % (algorithm, ", ".join(ALGORITHMS)))
        self.algorithm = algorithm
        self.backends = _norm_backends(backends)
        self._next = 0          # round-robin: index of the next backend to try

    def choose(self, client_ip, healthy: Optional[Set[Backend]] = None,
               conn_counts: Optional[Mapping[Backend, int]] = None) -> Optional[Backend]:
        """The backend for a new connection from ``client_ip`` (an int, or an
        address string), among configured backends in ``healthy`` (None: all
        healthy); None when no backend is healthy.  ``conn_counts`` (for
        least-connections; missing = 0) is this host's connections per
        backend.  Round-robin advances its rotation past the chosen backend."""
        n = len(self.backends)
        if not n:
            return None

        def ok(b):
            return healthy is None or b in healthy

        if self.algorithm == ROUND_ROBIN:
            start = self._next % n
            for i in range(n):
                idx = (start + i) % n
                if ok(self.backends[idx]):
                    self._next = (idx + 1) % n
                    return self.backends[idx]
            return None
        candidates = [b for b in self.backends if ok(b)]
        if not candidates:
            return None
        if self.algorithm == LEAST_CONNECTIONS:
            counts = conn_counts or {}
            return min(candidates, key=lambda b: counts.get(b, 0))   # min keeps the first tie
        return candidates[source_hash(client_ip) % len(candidates)]

    def update(self, backends: Iterable[Backend]) -> None:
        """Replace the backends.  Round-robin continues with the backend that
        would have been next if it is kept, else with the next kept one after
        it in the old order, else from the start."""
        new = _norm_backends(backends)
        old = self.backends
        nxt = 0
        if old and new:
            index = {b: i for i, b in enumerate(new)}
            start = self._next % len(old)
            for i in range(len(old)):
                b = old[(start + i) % len(old)]
                if b in index:
                    nxt = index[b]
                    break
        self.backends = new
        self._next = nxt


def source_hash(client_ip) -> int:
    """A deterministic hash of an IPv4 address (int or string): CRC32 of its
    4 bytes, network order.  Stable across processes and hosts."""
    if isinstance(client_ip, int):
        value = client_ip & 0xFFFFFFFF
    else:
        value = int(ipaddress.IPv4Address(str(client_ip)))
    return zlib.crc32(value.to_bytes(4, "big"))


class _Health:
    __slots__ = ("state", "successes", "failures", "next_probe", "sent")

    def __init__(self):
        self.state = UP           # never probed counts as up
        self.successes = 0        # consecutive, while down
        self.failures = 0         # consecutive, while up
        self.next_probe = None    # None: due now (first probe immediately)
        self.sent = None          # time of the outstanding probe, or None


class HealthTracker:
    """Health of this host's backends.

    Each backend is probed every ``interval`` seconds, the first time
    immediately (``due``); a backend has at most one outstanding probe.  The
    caller sends the probes due (``probe_sent``), feeds answers
    (``result(b, ok, now)``: SYN-ACK ok, RST failure) and, for each backend
    ``timeouts(now)`` returns (no answer within ``timeout`` seconds), calls
    ``result(b, False, now)``.  A result without an outstanding probe (late
    answer after its timeout was counted) is ignored.

    A backend starts ``up``.  ``fall`` consecutive failures take an up backend
    down; ``rise`` consecutive successes take a down backend up.
    """

    DEFAULTS = {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 2}

    def __init__(self, interval: float = 2.0, timeout: float = 1.0, rise: int = 2, fall: int = 2,
                 backends: Iterable[Backend] = ()):
        if not interval > 0 or not timeout > 0:
            raise ValueError("health interval and timeout must be > 0")
        if int(rise) < 1 or int(fall) < 1:
            raise ValueError("health rise and fall must be >= 1")
        self.interval, self.timeout = float(interval), float(timeout)
        self.rise, self.fall = int(rise), int(fall)
        self.errors: Tuple[str, ...] = ()
        self._b: Dict[Backend, _Health] = {}
        self.set_backends(backends)

    @classmethod
    def from_options(cls, options: Mapping[str, str], backends: Iterable[Backend] = ()):
        """From LB_VIP options ``health-interval``, ``health-timeout``,
        ``health-rise``, ``health-fall``; an invalid value keeps the default
        and is reported in ``errors``."""
        errors: List[str] = []
        d = cls.DEFAULTS
        check = validate.vip_option
        t = cls(option(options, "health-interval", d["interval"], float, check, errors),
                option(options, "health-timeout", d["timeout"], float, check, errors),
                option(options, "health-rise", d["rise"], int, check, errors),
                option(options, "health-fall", d["fall"], int, check, errors),
                backends)
        t.errors = tuple(errors)
        return t

    @staticmethod
    def enabled(options: Mapping[str, str]) -> bool:
        """False when LB_VIP option ``health-check`` is ``none`` (then every
        backend counts as up)."""
        return str((options or {}).get("health-check", "tcp")).strip().lower() != "none"

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Track exactly ``backends``: new ones start up and due now, kept
        ones keep their state, removed ones are forgotten."""
        wanted = _norm_backends(backends)
        self._b = {b: self._b.get(b) or _Health() for b in wanted}

    @property
    def backends(self) -> Tuple[Backend, ...]:
        return tuple(self._b)

    def due(self, now: float) -> List[Backend]:
        """Backends to probe now: no outstanding probe and never probed or
        ``interval`` elapsed since the last probe."""
        return [b for b, h in self._b.items()
                if h.sent is None and (h.next_probe is None or now >= h.next_probe)]

    def probe_sent(self, backend: Backend, now: float) -> None:
        h = self._b.get(backend)
        if h is not None:
            h.sent = now
            h.next_probe = now + self.interval

    def timeouts(self, now: float) -> List[Backend]:
        """Backends whose outstanding probe got no answer within ``timeout``."""
        return [b for b, h in self._b.items() if h.sent is not None and now - h.sent >= self.timeout]

    def result(self, backend: Backend, ok: bool, now: float) -> Optional[str]:
        """Count a probe's outcome; the new state if it changed, else None."""
        h = self._b.get(backend)
        if h is None or h.sent is None:
            return None
        h.sent = None
        if h.state == UP:
            if ok:
                h.failures = 0
                return None
            h.failures += 1
            if h.failures >= self.fall:
                h.state, h.failures, h.successes = DOWN, 0, 0
                return DOWN
            return None
        if not ok:
            h.successes = 0
            return None
        h.successes += 1
        if h.successes >= self.rise:
            h.state, h.failures, h.successes = UP, 0, 0
            return UP
        return None

    def state(self, backend: Backend) -> str:
        """``"up"`` or ``"down"``; KeyError for an untracked backend."""
        return self._b[backend].state

    def view(self) -> Dict[str, str]:
        """``{"ip:port": "up"|"down"}``: what this host publishes as ``lb-health``."""
        return {backend_key(b): h.state for b, h in self._b.items()}

    def healthy(self) -> Set[Backend]:
        return {b for b, h in self._b.items() if h.state == UP}

    def next_deadline(self, now: float) -> Optional[float]:
        """The earliest time (>= ``now`` for never-probed backends: ``now``)
        a probe falls due or times out, for the caller's timer; None when no
        backend is tracked."""
        times = []
        for h in self._b.values():
            if h.sent is not None:
                times.append(h.sent + self.timeout)
            elif h.next_probe is None:
                times.append(now)
            else:
                times.append(h.next_probe)
        return min(times) if times else None


def merge_health(views: Mapping[str, Mapping[str, str]],
                 backends: Iterable[Backend]) -> Dict[Backend, str]:
    """Merge every host's ``lb-health`` view (``{host: {"ip:port": state}}``)
    for ``backends``: a backend is down if any host reports it ``"down"``, up
    otherwise (unreported = up).  Each backend is normally reported only by
    the host it runs on; a stale view of a host that stopped serving is
    withdrawn by the shared-state manager.  Malformed views are ignored."""
    down = set()
    for view in (views or {}).values():
        if not isinstance(view, Mapping):
            continue
        for key, state in view.items():
            if state == DOWN:
                down.add(str(key))
    return {b: (DOWN if backend_key(b) in down else UP) for b in _norm_backends(backends)}
