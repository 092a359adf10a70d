"""VMs whose connection state is arriving on this host (docs/migration.md).

From the moment the daemon knows a VM is moving here (an active Migration
row naming this host as its destination) until its state has landed, the
switch sends the VM's new connections to the service (the dataplane's
hold flows) instead of judging them:

* a packet that may open a connection (a TCP SYN, UDP, ICMP) is given back
  at once and judged as usual;
* any other packet (mid-connection TCP) is **held** in a bounded buffer
  (per VM: ``HOLD_MAX_FRAMES`` frames, ``HOLD_MAX_BYTES`` bytes);
* with **lazy** retrieval, a held packet whose connection is among the
  records already received is committed at once (its record, by
  packet-out) and given back after the switch has taken the commit.

When the state has landed (``landed``) the held packets are given back in
order and find their connections; when no state came within the deadline
(``due``), they are dropped as invalid (the rules would refuse them: they
cannot open a connection), and the VM is judged as usual from then on.

Pure: no I/O, no clock.
"""

from middlebox.packet import IPPROTO_TCP, TCP_ACK, TCP_SYN
from middlebox.service import Result

HOLD_MAX_FRAMES = 2048
HOLD_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_WAIT = 3.0          # s a destination holds packets of an unannounced arrival
HOLD_FORGET = 30.0          # s a finished hold is remembered (listing)


class _Hold:
    __slots__ = ("deadline", "frames", "nbytes", "state", "count", "dropped", "since",
                 "lazy")

    def __init__(self, now, deadline):
        self.since = now
        self.deadline = deadline
        self.frames = []
        self.nbytes = 0
        self.state = "waiting"          # -> "landed" | "fallback"
        self.count = 0                  # frames held in all
        self.dropped = 0                # frames refused: buffer full
        self.lazy = None                # ctcommit.LazyCommits of a lazy import


def can_open(pkt):
    return pkt.proto != IPPROTO_TCP or pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN


class Arrivals:
    def __init__(self):
        self.holds = {}                 # VM name -> _Hold
        self._changed = False
        self._unzoned = []              # (frame, tci) of VMs without a zone yet
        self.counters = {"held": 0, "hold_dropped": 0, "fallback_dropped": 0}

    # ------------------------------------------------------------ who
    def expect(self, vm, now, deadline):
        """A migration of ``vm`` to this host began: hold its packets that
        cannot open a connection until the state lands or ``deadline``."""
        h = self.holds.get(vm)
        if h is None or h.state != "waiting":
            self.holds[vm] = _Hold(now, deadline)
            self._changed = True
        else:
            h.deadline = max(h.deadline, deadline)

    def expected(self):
        """VMs being waited for (they need a zone before they are bound here)."""
        return sorted(vm for vm, h in self.holds.items() if h.state == "waiting")

    def holding(self):
        return frozenset(self.expected())

    def changed(self):
        """True once after the set of holding VMs changed (the plane must follow)."""
        changed, self._changed = self._changed, False
        return changed

    # ------------------------------------------------------------ packets
    def unzoned(self, vm, frame, tci, now):
        """A packet of ``vm`` (a VmSpec), which has no zone on this host yet:
        it is arriving.  Held until the daemon has its zone in place
        (``take_unzoned``), then decided again."""
        h = self.holds.get(vm.name)
        if h is None or h.state != "waiting":
            self.expect(vm.name, now, now + DEFAULT_WAIT)
        if len(self._unzoned) >= HOLD_MAX_FRAMES:
            self.counters["hold_dropped"] += 1
            return Result("hold_dropped")
        self._unzoned.append((frame, tci))
        self._changed = True
        self.counters["held"] += 1
        return Result("held")

    def take_unzoned(self):
        frames, self._unzoned = self._unzoned, []
        return frames

    def offer(self, s, vm, pkt, frame, tci, now):
        """A new connection's packet of a slice's VM (None: the external
        stage, any VM of the slice); a ``service.Result``, or None when no arrival
        concerns it (the service decides as usual)."""
        names = [vm.name] if vm is not None else [v.name for v in s.config.vms]
        h = None
        for name in names:
            got = self.holds.get(name)
            if got is not None and got.state == "waiting":
                h = got
                break
        if h is None:
            return None
        if h.lazy is not None:
            # Its connection's record came: commit it, then give it back
            # (whatever the packet: a UDP datagram of a moved flow too).
            commit = h.lazy.take((pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport))
            if commit is not None:
                out = Result("lazy")
                out.messages.extend(commit)
                out.after_barrier.append((frame, tci))
                return out
        if can_open(pkt):
            out = Result("resumed")
            out.out.append((frame, tci))
            return out
        if len(h.frames) >= HOLD_MAX_FRAMES or h.nbytes + len(frame) > HOLD_MAX_BYTES:
            h.dropped += 1
            self.counters["hold_dropped"] += 1
            return Result("hold_dropped")
        h.frames.append((frame, tci, (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)))
        h.nbytes += len(frame)
        h.count += 1
        self.counters["held"] += 1
        return Result("held")

    def offer_lazy(self, vm, commits):
        """A lazy import of ``vm``'s records came (``ctcommit.LazyCommits``):
        its connections are committed when their first packet comes.
        Returns a Result for the packets already held whose connections came:
        their commits, and the packets to give back once the switch took them."""
        res = Result("lazy")
        h = self.holds.get(vm)
        if h is None or h.state != "waiting":
            return res
        h.lazy = commits
        kept = []
        for frame, tci, key in h.frames:
            commit = commits.take(key)
            if commit is None:
                kept.append((frame, tci, key))
                continue
            res.messages.extend(commit)
            res.after_barrier.append((frame, tci))
        h.frames = kept
        h.nbytes = sum(len(f) for f, _, _ in kept)
        return res

    # ------------------------------------------------------------ ends
    def landed(self, vm, now):
        """The VM's state is in conntrack: its held frames, to give back in
        order, and how many were held in all."""
        return self._end(vm, now, "landed")

    def due(self, now):
        """End the holds whose deadline passed without state (fallback);
        returns the VMs."""
        out = []
        for vm, h in list(self.holds.items()):
            if h.state == "waiting" and now >= h.deadline:
                frames, _ = self._end(vm, now, "fallback")
                self.counters["fallback_dropped"] += len(frames)
                out.append(vm)
        for vm in [v for v, h in self.holds.items()
                   if h.state != "waiting" and now - h.since > HOLD_FORGET]:
            del self.holds[vm]
        return out

    def _end(self, vm, now, state):
        h = self.holds.get(vm)
        if h is None or h.state != "waiting":
            return [], 0
        frames, h.frames, h.nbytes = [(f, t) for f, t, _ in h.frames], [], 0
        h.state = state
        h.since = now
        h.lazy = None
        self._changed = True
        return frames, h.count

    def extend(self, vm, deadline):
        """A transfer for the VM is arriving: wait for it (at most ``deadline``)."""
        h = self.holds.get(vm)
        if h is not None and h.state == "waiting":
            h.deadline = max(h.deadline, deadline)

    def listing(self):
        return [{"vm": vm, "state": h.state, "held": len(h.frames), "count": h.count,
                 "dropped": h.dropped, "lazy": len(h.lazy or ())}
                for vm, h in sorted(self.holds.items())]
