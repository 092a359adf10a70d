"""SNAT: external port allocation inside this host's port block.

See docs/services.md, "SNAT port blocks".  The controller gives each host a
block ``ip:lo-hi`` per SNAT rule (``ovsdb.natblocks``); the daemon allocates
external ports for new connections inside its own block only, so no two hosts
ever pick the same external port and no per-connection coordination is
needed.  SNAT state is therefore **local** (``SNAT_STATE``): the mappings live
in the host's connection entries and never leave the host
(``LOCAL_STATE = ("nat-mappings",)``, nothing shared).

Allocation rule (simplest correct one): a port is in use, per protocol, from
``allocate`` (or ``reserve``) until ``release``; a port is never handed out
twice while a mapping holds it, whatever the peer.  Ports never used yet are
handed out first in ascending order, then released ports in the order they
were released (FIFO, so a just-freed port is reused as late as possible).
Every call is O(1) amortized.  ``allocate`` returns None when every port of
the block is in use: the caller refuses the connection with a clear error.

Pure: no I/O, no clock (``now`` is accepted for the callers' uniformity).
"""

from collections import deque
from typing import Dict, Hashable, Optional

SNAT_STATE = "local"
SHARED_STATE = ()
LOCAL_STATE = ("nat-mappings",)

_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}


def _proto(proto) -> Hashable:
    return _PROTO_NAMES.get(proto, proto) if isinstance(proto, int) else proto


class _Pool:
    __slots__ = ("cursor", "used", "free", "queued")

    def __init__(self, lo):
        self.cursor = lo          # every port >= cursor has never been handed out by it
        self.used = set()
        self.free = deque()       # released ports below the cursor, FIFO
        self.queued = set()       # ports in ``free`` (each at most once)


class PortAllocator:
    """Ports ``lo..hi`` (inclusive) of external address ``ip``, per protocol
    (``"tcp"``/``"udp"``, or the numbers 6/17 which mean the same)."""

    def __init__(self, ip: str, lo: int, hi: int):
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= 65535:
            raise ValueError("port range %d-%d is not inside 0-65535 with lo <= hi" % (lo, hi))
        self.ip, self.lo, self.hi = ip, lo, hi
        self._pools: Dict[Hashable, _Pool] = {}

    @property
    def size(self) -> int:
        """How many ports the block has (per protocol)."""
        return self.hi - self.lo + 1

    def _pool(self, proto) -> _Pool:
        key = _proto(proto)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self.lo)
        return pool

    def allocate(self, proto, peer_ip=None, peer_port=None, now: float = 0.0) -> Optional[int]:
        """A free port for a new mapping, now marked used; None when the block
        is exhausted for ``proto``.  ``peer_ip``/``peer_port`` do not change
        the choice (a port is exclusive per protocol)."""
        pool = self._pool(proto)
        if len(pool.used) >= self.size:
            return None
        while pool.cursor <= self.hi:
            port = pool.cursor
            pool.cursor += 1
            if port not in pool.used:
                pool.used.add(port)
                return port
        while pool.free:
            port = pool.free.popleft()
            pool.queued.discard(port)
            if port not in pool.used:        # may have been reserved meanwhile
                pool.used.add(port)
                return port
        return None                          # not reached: used < size means a free port

    def release(self, proto, port: int) -> bool:
        """Free ``port``; True if it was in use."""
        pool = self._pool(proto)
        if port not in pool.used:
            return False
        pool.used.discard(port)
        if port < pool.cursor and port not in pool.queued:
            pool.free.append(port)
            pool.queued.add(port)
        return True

    def reserve(self, proto, port: int) -> bool:
        """Mark ``port`` used (restoring mappings after a daemon restart);
        False if it is outside the block or already used."""
        if isinstance(port, bool) or not isinstance(port, int) or not self.lo <= port <= self.hi:
            return False
        pool = self._pool(proto)
        if port in pool.used:
            return False
        pool.used.add(port)
        return True

    def in_use(self, proto) -> int:
        """How many ports of ``proto`` are in use."""
        pool = self._pools.get(_proto(proto))
        return len(pool.used) if pool else 0

    def is_used(self, proto, port: int) -> bool:
        pool = self._pools.get(_proto(proto))
        return bool(pool) and port in pool.used

    def __repr__(self):
        return "PortAllocator(%s:%d-%d, %s)" % (
            self.ip, self.lo, self.hi,
            ", ".join("%s=%d" % (k, len(p.used)) for k, p in sorted(self._pools.items(), key=str)))
