"""Passive IDS: port-scan and SYN-flood detection.

See docs/services.md, "IDS".  Options on the IDS middlebox:
``scan-threshold`` (distinct destination address:port pairs one source
touches, default 20), ``scan-window`` (s, default 10), ``synflood-threshold``
(SYNs to one destination, default 200), ``synflood-window`` (s, default 2).

* Port scans are counted across hosts (``ids-scan``, shared): every host
  publishes ``ScanDetector.local_targets(now)`` (per source, the targets its
  sensors saw in the window, capped at the threshold); each host computes
  ``combined`` (the union of all hosts' sets).  The alert for a source is
  raised once per window, by the host that sorts first by name among those
  reporting it.  Recommended loop on every host, each round::

      for src, count, hosts in det.combined(local, views, me, now):
          if det.should_alert(src, hosts, me, now):
              raise_alert(...)
          det.mark_alerted(src, now)      # on every host: see mark_alerted

* SYN floods are counted per destination where the destination lives
  (``ids-synflood``, local): ``SynFloodDetector.observe_syn``.

Sliding windows: an event at time ``t`` counts at ``now`` while
``now - t < window``.  All state is bounded.  Pure: no I/O, no clock.
"""

import math
from collections import OrderedDict, deque
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from middlebox.services import option
from ovsdb import validate

SHARED_STATE = ("ids-scan",)
LOCAL_STATE = ("ids-synflood",)

DEFAULTS = {"scan-threshold": 20, "scan-window": 10.0,
            "synflood-threshold": 200, "synflood-window": 2.0}
MAX_SOURCES = 10000
MAX_DESTINATIONS = 10000


def _option(options, key, cast, errors):
    return option(options, key, DEFAULTS[key], cast, validate.middlebox_option, errors)


def _check(threshold, window):
    if isinstance(threshold, bool) or int(threshold) != threshold or threshold < 1:
        raise ValueError("threshold must be an integer >= 1")
    if not window > 0:
        raise ValueError("window must be > 0 seconds")
    return int(threshold), float(window)


class ScanDetector:
    """Distinct ``dst:port`` targets per source over a sliding window.

    At most ``threshold`` targets are kept per source (when full, a new
    target replaces the least recently seen one) and at most ``max_sources``
    sources (the least recently active is evicted)."""

    def __init__(self, threshold: int = 20, window: float = 10.0, max_sources: int = MAX_SOURCES):
        self.threshold, self.window = _check(threshold, window)
        self.max_sources = max(1, int(max_sources))
        self.errors: Tuple[str, ...] = ()
        # src -> OrderedDict(target -> last seen), oldest first; sources oldest first
        self._src: "OrderedDict[str, OrderedDict[str, float]]" = OrderedDict()
        self._last: Dict[str, float] = {}          # src -> last activity
        self._alerted: Dict[str, float] = {}       # src -> time of the alert mark
        self._now = -math.inf                      # latest time seen

    @classmethod
    def from_options(cls, options: Mapping[str, str], max_sources: int = MAX_SOURCES):
        errors: List[str] = []
        d = cls(_option(options, "scan-threshold", int, errors),
                _option(options, "scan-window", float, errors), max_sources)
        d.errors = tuple(errors)
        return d

    def _tick(self, now):
        if now > self._now:
            self._now = now

    def _expired(self, t, now):
        return now - t >= self.window

    def _prune_sources(self, now):
        # sources are ordered by last activity: drop the stale ones from the front
        while self._src:
            src = next(iter(self._src))
            if not self._expired(self._last[src], now):
                break
            del self._src[src]
            del self._last[src]

    def observe(self, src_ip: str, dst_ip: str, dport: int, now: float) -> None:
        """One packet (connection attempt) from ``src_ip`` to ``dst_ip:dport``."""
        self._tick(now)
        src, target = str(src_ip), "%s:%d" % (dst_ip, int(dport))
        targets = self._src.get(src)
        if targets is None:
            targets = self._src[src] = OrderedDict()
        else:
            self._src.move_to_end(src)
            while targets and self._expired(next(iter(targets.values())), now):
                targets.popitem(last=False)
        self._last[src] = now
        if target in targets:
            targets.move_to_end(target)
        elif len(targets) >= self.threshold:
            targets.popitem(last=False)
        targets[target] = now
        while len(self._src) > self.max_sources:
            old, _ = self._src.popitem(last=False)
            del self._last[old]
        self._prune_sources(now)

    def local_targets(self, now: float) -> Dict[str, List[str]]:
        """``{src: sorted ["dst:port", ...]}`` for the sources seen in the
        window (what this host publishes as ``ids-scan``)."""
        self._tick(now)
        self._prune_sources(now)
        out = {}
        for src, targets in self._src.items():
            live = [t for t, seen in targets.items() if not self._expired(seen, now)]
            if live:
                out[src] = sorted(live)
        return out

    def combined(self, local: Mapping[str, Iterable[str]],
                 remote_views: Mapping[str, Mapping[str, Iterable[str]]],
                 my_host: str, now: float) -> List[Tuple[str, int, List[str]]]:
        """``[(src, count, sorted reporting hosts)]``, sorted by source, for
        the sources whose union of targets over ``local`` (this host's, as
        ``my_host``; it replaces ``remote_views[my_host]`` if present) and the
        other hosts' views reaches the threshold.  Malformed views are
        skipped."""
        self._tick(now)
        views = {h: v for h, v in (remote_views or {}).items() if h != my_host}
        views[my_host] = local or {}
        union: Dict[str, set] = {}
        hosts: Dict[str, set] = {}
        for host, view in views.items():
            if not isinstance(view, Mapping):
                continue
            for src, targets in view.items():
                if isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
                    continue
                ts = {str(t) for t in targets}
                if not ts:
                    continue
                union.setdefault(str(src), set()).update(ts)
                hosts.setdefault(str(src), set()).add(str(host))
        return [(src, len(union[src]), sorted(hosts[src]))
                for src in sorted(union) if len(union[src]) >= self.threshold]

    def _alert_live(self, src, now):
        t = self._alerted.get(src)
        if t is None:
            return False
        if self._expired(t, now):
            del self._alerted[src]
            return False
        return True

    def should_alert(self, src: str, reporting_hosts: Iterable[str], my_host: str,
                     now: Optional[float] = None) -> bool:
        """True when ``my_host`` is among ``reporting_hosts`` and sorts first,
        and ``src`` is not marked alerted in the current window (``now``
        defaults to the latest time this detector was given)."""
        now = self._now if now is None else now
        hosts = sorted(reporting_hosts)
        if not hosts or hosts[0] != my_host:
            return False
        return not self._alert_live(src, now)

    def mark_alerted(self, src: str, now: float) -> None:
        """Mark ``src`` alerted for a window from ``now``.  A mark still in its
        window is kept (not extended), so marking on every round and on every
        host both suppresses duplicates (e.g. when the first host stops
        reporting and another becomes first) and allows a re-alert once a
        window has passed since the first mark."""
        self._tick(now)
        if not self._alert_live(src, now):
            self._alerted[src] = now
        if len(self._alerted) > self.max_sources:
            for s in [s for s, t in self._alerted.items() if self._expired(t, now)]:
                del self._alerted[s]
            while len(self._alerted) > self.max_sources:
                del self._alerted[min(self._alerted, key=self._alerted.get)]


class SynFloodDetector:
    """SYNs per destination over a sliding window.

    Keeps, per destination, the times of its last ``threshold`` SYNs (the
    count in the window reaches the threshold exactly when the oldest of
    those is inside the window), for at most ``max_destinations``
    destinations (least recently active evicted first)."""

    def __init__(self, threshold: int = 200, window: float = 2.0,
                 max_destinations: int = MAX_DESTINATIONS):
        self.threshold, self.window = _check(threshold, window)
        self.max_destinations = max(1, int(max_destinations))
        self.errors: Tuple[str, ...] = ()
        # dst -> [deque of times (maxlen threshold), alert time or None]
        self._dst: "OrderedDict[str, list]" = OrderedDict()

    @classmethod
    def from_options(cls, options: Mapping[str, str], max_destinations: int = MAX_DESTINATIONS):
        errors: List[str] = []
        d = cls(_option(options, "synflood-threshold", int, errors),
                _option(options, "synflood-window", float, errors), max_destinations)
        d.errors = tuple(errors)
        return d

    def _expired(self, t, now):
        return now - t >= self.window

    def observe_syn(self, dst_ip: str, now: float) -> bool:
        """Count a SYN to ``dst_ip``; True exactly when this SYN makes the
        count in the window reach the threshold (again only after it fell
        below and crossed again, or while it stays at or above the threshold
        a window after the previous alert)."""
        dst = str(dst_ip)
        rec = self._dst.get(dst)
        if rec is None:
            rec = self._dst[dst] = [deque(maxlen=self.threshold), None]
        else:
            self._dst.move_to_end(dst)
        times = rec[0]
        while times and self._expired(times[0], now):
            times.popleft()
        if len(times) < self.threshold:
            rec[1] = None                   # below the threshold: re-armed
        times.append(now)
        fire = False
        if len(times) >= self.threshold and (rec[1] is None or self._expired(rec[1], now)):
            rec[1] = now
            fire = True
        # drop destinations idle for a window (count 0), then enforce the cap
        while len(self._dst) > 1:
            first = next(iter(self._dst))
            last_times = self._dst[first][0]
            if last_times and not self._expired(last_times[-1], now):
                break
            del self._dst[first]
        while len(self._dst) > self.max_destinations:
            self._dst.popitem(last=False)
        return fire

    def count(self, dst_ip: str, now: float) -> int:
        """SYNs to ``dst_ip`` in the window, saturating at the threshold."""
        rec = self._dst.get(str(dst_ip))
        if rec is None:
            return 0
        return sum(1 for t in rec[0] if not self._expired(t, now))

    def __len__(self):
        return len(self._dst)
