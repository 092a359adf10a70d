"""mbxd's shell holds new cache flows back for OFFLOAD_DELAY
(middlebox/main.py): a connection that ends within it never reaches OVS,
everything else reaches it in order, and a frame held for its flows gets
them at once."""

from middlebox import main as M
from ryu_apps.ofmodel import Flow


class FakeOf:
    def __init__(self):
        self.sent = []          # (add keys, delete keys) per send_flows
        self.barriers = 0

    def send_flows(self, add, delete):
        self.sent.append(([f.key for f in add], [f.key for f in delete]))

    def barrier(self):
        self.barriers += 1
        return self.barriers


class FakePort:
    def __init__(self):
        self.frames = []

    def send(self, frame, tci):
        self.frames.append(frame)


class Res:
    def __init__(self, add=(), delete=(), out=(), held=()):
        self.add, self.delete, self.out, self.held = list(add), list(delete), list(out), \
            list(held)


def flow(n):
    return Flow(40, 100, (("ipv4_src", "10.0.0.%d" % n),), (), cookie=n)


def daemon():
    d = M.Daemon.__new__(M.Daemon)      # the shell alone: no config DB, no switch
    d.of, d.port = FakeOf(), FakePort()
    d.dirty = False
    d._held = {}
    d._pending_add, d._pending_del, d._pending_since = {}, [], None
    return d


def test_a_flow_added_and_deleted_within_the_delay_never_reaches_ovs():
    d = daemon()
    d._send_results([Res(add=[flow(1), flow(2)], out=[(b"syn", 0)])])
    assert d.of.sent == []                  # waiting
    assert d.port.frames == [b"syn"]        # the packet itself is not held
    d._send_results([Res(delete=[flow(1), flow(2)])])   # FIN within the delay
    d._flush_flows()
    assert d.of.sent == []


def test_waiting_changes_go_after_the_delay_deletes_first():
    d = daemon()
    d._send_results([Res(delete=[flow(3)])])            # installed before
    d._send_results([Res(add=[flow(3)])])               # and added again
    d._send_results([Res(add=[flow(4)])])
    assert not d._flows_due(d._pending_since + M.OFFLOAD_DELAY / 2)
    assert d._flows_due(d._pending_since + M.OFFLOAD_DELAY)
    d._flush_flows()
    assert d.of.sent == [([flow(3).key, flow(4).key], [flow(3).key])]
    assert d._pending_since is None and d.dirty


def test_a_held_frame_sends_the_waiting_flows_at_once_then_a_barrier():
    d = daemon()
    d._send_results([Res(add=[flow(5)])])
    d._send_results([Res(add=[flow(6)], held=[(b"first", 0)])])
    assert d.of.sent == [([flow(5).key, flow(6).key], [])]
    assert d._held == {1: [(b"first", 0)]}
    assert d.port.frames == []              # not before its flows


def test_apply_sends_at_once_after_what_waits():
    d = daemon()
    d._send_results([Res(add=[flow(7)])])
    d._apply([flow(8)], [])
    assert d.of.sent == [([flow(7).key, flow(8).key], [])]
