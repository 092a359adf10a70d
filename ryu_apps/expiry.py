"""Stale southbound rows that the active logical controller deletes (pure:
no I/O, every time is the caller's).

* **Shared_State leases.**  A daemon (``middlebox.shared``) refreshes the
  ``stamp`` of its own rows at least every third of the lease
  (``NB_Global.options:shared-state-lease``), so a row that nobody changed
  for a whole lease belongs to a host whose daemon is gone (killed, the
  host dead for good, cut off from the database): ``SharedLeases`` notes
  when this controller last saw each row change -- on its own monotonic
  clock, so the hosts' clocks need not agree with it -- and names the rows
  older than the lease.  A controller that starts (or a standby that has
  just taken over) counts from when it first saw a row: it never deletes a
  row sooner than one lease after it could have seen it refreshed.
* **Migration retention.**  A finished migration (``FINAL_MIGRATION``:
  done, aborted, fallback) is kept for ``NB_Global.options:
  migration-retention`` seconds after it ended: its newest ``timeline``
  stamp (the writers' wall clocks, ms), or, for a row without one, when
  this controller first saw it finished (its monotonic clock).
"""

from typing import Dict, Iterable, List, Tuple

from mbxmodel.state import FINAL_MIGRATION


def shared_key(record):
    """What names one Shared_State row: (middlebox, host, service, key)."""
    return (record.middlebox, record.host, record.service, record.key)


class SharedLeases:
    """When each Shared_State row last changed, as this controller saw it."""

    def __init__(self):
        self._seen: Dict[Tuple, Tuple[object, Tuple[str, int], float]] = {}
        #   key -> (the record, (value, stamp), monotonic time of the change)

    def observe(self, records: Iterable, now: float):
        """The rows now (SharedRecord values); ``now``: monotonic seconds.
        A row that is new or whose value or stamp changed counts from
        ``now``; rows that are gone are forgotten."""
        seen = {}
        for r in records:
            key = shared_key(r)
            old = self._seen.get(key)
            if old is not None and old[1] == (r.value, r.stamp):
                seen[key] = (r, old[1], old[2])
            else:
                seen[key] = (r, (r.value, r.stamp), now)
        self._seen = seen

    def expired(self, now: float, lease: float) -> List:
        """The rows (SharedRecord values) unchanged for more than ``lease``
        seconds, by host, middlebox, service and key."""
        return sorted((rec for rec, _vs, t in self._seen.values() if now - t > lease),
                      key=lambda r: (r.host, r.middlebox, r.service, r.key))

    def age(self, record, now: float):
        """Seconds since ``record``'s row last changed (None: not seen)."""
        found = self._seen.get(shared_key(record))
        return None if found is None else now - found[2]

    def __len__(self):
        return len(self._seen)


class MigrationAges:
    """How long ago each finished migration ended."""

    def __init__(self):
        self._finished_seen: Dict[str, float] = {}   # uuid -> monotonic time first seen final

    def observe(self, migrations: Iterable, now: float):
        seen = {}
        for m in migrations:
            if m.status in FINAL_MIGRATION:
                seen[m.uuid] = self._finished_seen.get(m.uuid, now)
        self._finished_seen = seen

    def expired(self, migrations: Iterable, now: float, now_ms: int,
                retention: float) -> List:
        """The finished migrations that ended more than ``retention``
        seconds ago: by their newest timeline stamp (``now_ms``: wall clock,
        ms), or, with no timeline, by when first seen finished (``now``:
        monotonic s).  Oldest first."""
        out = []
        for m in migrations:
            if m.status not in FINAL_MIGRATION:
                continue
            stamps = [v for v in (m.timeline or {}).values() if isinstance(v, int)]
            if stamps:
                old = now_ms - max(stamps) > retention * 1000
            else:
                old = now - self._finished_seen.get(m.uuid, now) > retention
            if old:
                out.append(m)
        return sorted(out, key=lambda m: (max(m.timeline.values(), default=0), m.uuid))
