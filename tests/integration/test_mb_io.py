"""mbxd's two I/O shells against a real ovs-vswitchd (userspace datapath).

* ``middlebox.packetio.PacketPort`` on the internal port ``mbx-mb``: a frame
  br-int tags (slice VID, stage PCP) arrives with that TCI; a frame the
  daemon sends with a TCI re-enters br-int carrying exactly that tag.
* ``middlebox.ofconn.OfConn`` on the bridge's management socket (a service
  connection): cache flows installed and deleted by exact cookie,
  FLOW_REMOVED for an expired entry, flow stats limited to the daemon's
  cookie, errors and a lost connection reported clearly.

Each test prints what it measured (``pytest -s`` shows it).  One sandbox for
the module (``mbio_host.ScratchHost``), removed even when a test fails.
"""

import os
import re
import select
import struct
import sys
import time

import pytest

# ``middlebox`` may not be in the installed package list yet (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mbio_host import MB_PORT, VIF, VM_IF, in_netns, pump, sandbox, sync  # noqa: E402
from middlebox.ofconn import OfConn, OfConnError  # noqa: E402
from middlebox.packetio import PacketPort  # noqa: E402
from ryu_apps.ofmodel import Flow, canon_match  # noqa: E402

pytestmark = pytest.mark.lab

# Values of ryu_apps.pipeline (kept literal here so this shell test does not
# depend on the pipeline module): the daemon's and the controller's cookies,
# the cache tables and where an allowed connection continues.
DAEMON_COOKIE = 0x4D42440000000000
CONTROLLER_COOKIE = 0x4D42580000000000
COOKIE_MASK = 0xFFFFFF0000000000
FROM_VM_CACHE, L2_LOOKUP = 11, 20
PRIO_CACHE_ENTRY = 100
OFPRR_IDLE_TIMEOUT, OFPRR_DELETE = 0, 2

SLICE, STAGE = 5, 1
TCI = STAGE << 13 | SLICE               # 0x2005
VM_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SETUP_COOKIE = 0x5E7


@pytest.fixture(scope="module")
def host():
    yield from sandbox()


def udp_frame(seq, size=64):
    """An Ethernet/IPv4/UDP frame from the "VM" carrying ``seq``."""
    payload = b"mbxio" + struct.pack("!I", seq)
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    frame = (bytes.fromhex(PEER_MAC.replace(":", "")) + bytes.fromhex(VM_MAC.replace(":", ""))
             + b"\x08\x00" + ip + udp)
    return frame + b"\0" * max(0, size - len(frame))


def seq_of(frame):
    """The sequence number of a test frame (untagged), or None for another frame."""
    i = frame.find(b"mbxio")
    return struct.unpack_from("!I", frame, i + 5)[0] if i >= 0 else None


def recv_until(port, want, timeout=2.0):
    """Frames read from ``port`` until ``want`` test frames came (bounded)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        select.select([port], [], [], 0.05)
        got += [(f, t) for f, t in port.recv_batch() if seq_of(f) is not None]
    return got


@pytest.fixture(scope="module")
def ports(host):
    """PacketPorts on mbx-mb (the daemon's) and on the VM's veth end, and
    br-int flows steering the VM's frames to mbx-mb tagged (slice 5, stage
    1) and frames coming back from mbx-mb with that tag to the VM."""
    mb, vif = host.ofport(MB_PORT), host.ofport(VIF)
    host.ofctl("add-flow", "cookie=%#x,table=0,priority=10,in_port=%d,actions="
               "push_vlan:0x8100,set_field:%d->vlan_vid,set_field:%d->vlan_pcp,output:%d"
               % (SETUP_COOKIE, vif, 0x1000 | SLICE, STAGE, mb))
    host.ofctl("add-flow", "cookie=%#x,table=0,priority=10,in_port=%d,dl_vlan=%d,"
               "dl_vlan_pcp=%d,actions=pop_vlan,output:%d"
               % (SETUP_COOKIE, mb, SLICE, STAGE, vif))
    with in_netns(host.ns):
        mb_port, vm_port = PacketPort(MB_PORT), PacketPort(VM_IF)
    yield mb_port, vm_port
    mb_port.close()
    vm_port.close()


def packet_count(host, match):
    out = host.ofctl("dump-flows", match)
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))


# --------------------------------------------------------------- PacketPort
def test_tagged_frame_from_br_int_arrives_with_its_tci(host, ports):
    mb_port, vm_port = ports
    frame = udp_frame(1)
    assert vm_port.send(frame, None)
    got = recv_until(mb_port, 1)
    assert len(got) == 1, "no frame on mbx-mb"
    received, tci = got[0]
    assert tci is not None, "the kernel reported no VLAN tag"
    assert (tci & 0xFFF, tci >> 13) == (SLICE, STAGE)
    assert received == frame            # the tag is not inline: the frame is the VM's


def test_frame_sent_with_a_tci_reenters_br_int_with_that_tag(host, ports):
    mb_port, vm_port = ports
    before = packet_count(host, "in_port=%s,dl_vlan=%d" % (MB_PORT, SLICE))
    frame = udp_frame(2)
    assert mb_port.send(frame, TCI)
    got = recv_until(vm_port, 1)
    assert [(f, t) for f, t in got] == [(frame, None)]  # popped, delivered unchanged
    assert packet_count(host, "in_port=%s,dl_vlan=%d" % (MB_PORT, SLICE)) == before + 1
    # A tag of another slice matches no return flow: br-int drops it.
    assert mb_port.send(udp_frame(3), STAGE << 13 | (SLICE + 1))
    assert recv_until(vm_port, 1, timeout=0.3) == []


def test_echo_burst_rate(host, ports):
    """What the daemon's loop does: read a tagged frame, write it back tagged.
    The "VM" keeps a window of frames in flight; bounded to 20k frames and 5 s."""
    mb_port, vm_port = ports
    total, window, limit = 20000, 128, 5.0
    sent = echoed = lost = 0
    t_recv = t_send = 0.0               # time inside the daemon-side PacketPort
    tcis = set()
    start = last_progress = time.perf_counter()
    frames = [udp_frame(i) for i in range(window)]
    while echoed + lost < total and time.perf_counter() < start + limit:
        while sent < total and sent - echoed - lost < window:
            if not vm_port.send(frames[sent % window], None):
                break
            sent += 1
        t0 = time.perf_counter()
        batch = mb_port.recv_batch(64)
        t1 = time.perf_counter()
        for frame, tci in batch:
            tcis.add(tci)
            mb_port.send(frame, tci)
        t_recv += t1 - t0
        t_send += time.perf_counter() - t1
        back = sum(seq_of(f) is not None for f, _ in vm_port.recv_batch(256))
        echoed += back
        now = time.perf_counter()
        if batch or back:
            last_progress = now
        elif now - last_progress > 0.05:    # nothing moves: the rest was dropped
            lost = sent - echoed
            last_progress = now
        else:
            select.select([mb_port, vm_port], [], [], 0.005)
    elapsed = time.perf_counter() - start
    n = max(1, mb_port.sent)
    print("\nPacketPort echo burst: VM sent %d, daemon port echoed %d, VM got back %d "
          "(%d lost) in %.2fs = %.0f frames/s through recv+send; daemon side "
          "recv_batch %.1f us/frame, send %.1f us/frame; counters %s"
          % (sent, mb_port.sent, echoed, lost, elapsed, echoed / elapsed,
             1e6 * t_recv / n, 1e6 * t_send / n, mb_port.counters()))
    assert tcis == {TCI}
    assert mb_port.truncated == 0 and mb_port.send_errors == 0
    assert echoed > total // 2


# ------------------------------------------------------------------- OfConn
class Events:
    """What an OfConn reported, for the tests to wait on."""

    def __init__(self):
        self.removed, self.stats, self.barriers, self.errors = [], {}, [], []

    def conn(self, target):
        return OfConn(target,
                      on_flow_removed=lambda *args: self.removed.append(args),
                      on_flow_stats=lambda xid, entries: self.stats.__setitem__(xid, entries),
                      on_barrier=self.barriers.append,
                      on_error=lambda *args: self.errors.append(args))




def cache_flow(entry, sport, dport=80, idle=30, allow=True, proto=6):
    l4 = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst")}[proto]
    return Flow(FROM_VM_CACHE, PRIO_CACHE_ENTRY,
                canon_match(reg4=SLICE, eth_type=0x0800, ip_proto=proto,
                            ipv4_src="10.0.0.1", ipv4_dst="10.0.0.2",
                            **{l4[0]: sport, l4[1]: dport}),
                (("goto", L2_LOOKUP),) if allow else (),
                cookie=DAEMON_COOKIE | SLICE << 28 | entry, idle_timeout=idle)


def dumped_cookies(host):
    out = host.ofctl("dump-flows", "table=%d" % FROM_VM_CACHE)
    return {int(c, 16) for c in re.findall(r"cookie=(0x[0-9a-f]+)", out)}


@pytest.fixture
def ofconn(host):
    events = Events()
    conn = events.conn(host.mgmt())
    conn.connect()
    yield conn, events
    conn.close()
    host.ofctl("del-flows", "table=%d" % FROM_VM_CACHE)


def test_cache_flows_installed_deleted_by_exact_cookie_and_read_back(host, ofconn):
    conn, events = ofconn
    flows = [cache_flow(1, 1001), cache_flow(2, 1002, allow=False),
             cache_flow(3, 1003, proto=17)]
    # The controller's flow in the same table, which the daemon must never see.
    host.ofctl("add-flow", "cookie=%#x,table=%d,priority=1,actions=drop"
               % (CONTROLLER_COOKIE | 1, FROM_VM_CACHE))
    conn.send_flows(add=flows)
    sync(conn, events.barriers)
    assert dumped_cookies(host) == {f.cookie for f in flows} | {CONTROLLER_COOKIE | 1}
    assert "send_flow_rem" in host.ofctl("dump-flows", "table=%d,cookie=%#x/-1"
                                         % (FROM_VM_CACHE, flows[0].cookie))

    xid = conn.request_flow_stats(DAEMON_COOKIE, COOKIE_MASK)
    pump(conn, lambda: xid in events.stats)
    assert sorted((e[0] for e in events.stats[xid]), key=repr) == sorted(flows, key=repr)

    # delete_strict with the exact cookie: a wrong cookie deletes nothing.
    conn.send_flows(delete=[Flow(**{**flows[0].__dict__, "cookie": flows[0].cookie + 99})])
    sync(conn, events.barriers)
    assert flows[0].cookie in dumped_cookies(host)
    conn.send_flows(delete=[flows[0]])
    sync(conn, events.barriers)
    assert dumped_cookies(host) == {flows[1].cookie, flows[2].cookie, CONTROLLER_COOKIE | 1}
    assert sorted((e[0] for e in conn.dump_flows(DAEMON_COOKIE, COOKIE_MASK)),
                  key=repr) == sorted(flows[1:], key=repr)
    # The daemon's own delete of a SEND_FLOW_REM entry is reported too (reason DELETE).
    pump(conn, lambda: events.removed, timeout=2)
    assert [(r[0], r[4]) for r in events.removed] == [(flows[0].cookie, OFPRR_DELETE)]
    assert not events.errors


def test_flow_removed_reaches_the_service_connection(host, ofconn):
    conn, events = ofconn
    flow = cache_flow(7, 2007, idle=1)
    start = time.monotonic()
    conn.send_flows(add=[flow])
    pump(conn, lambda: events.removed, timeout=3.5)
    waited = time.monotonic() - start
    (cookie, table, priority, match_flow, reason, packets, nbytes, duration), = events.removed
    assert (cookie, table, priority, reason) == (flow.cookie, flow.table, flow.priority,
                                                 OFPRR_IDLE_TIMEOUT)
    assert match_flow.match == flow.match and match_flow.idle_timeout == 1
    assert (packets, nbytes) == (0, 0)
    print("\nFLOW_REMOVED (idle_timeout=1) arrived %.2fs after the add" % waited)


def test_switch_error_names_the_request(host, ofconn):
    conn, events = ofconn
    backwards = Flow(FROM_VM_CACHE, 1, (), (("goto", 3),), cookie=DAEMON_COOKIE | 9)
    good = cache_flow(8, 3008)
    xids = conn.send_flows(add=[backwards, good])
    sync(conn, events.barriers)
    assert [e[0] for e in events.errors] == [xids[0]]       # goto to an earlier table
    assert dumped_cookies(host) == {good.cookie}


def test_a_large_batch_is_installed_whole_or_not_at_all(host, ofconn):
    """Bundles (BUNDLE_MIN or more flow-mods): all of a good batch is in the
    datapath at the barrier; a batch with one flow the switch refuses leaves
    nothing of itself, and the error names that flow's xid."""
    from middlebox import ofconn as O
    conn, events = ofconn
    flows = [cache_flow(100 + i, 10000 + i) for i in range(O.BUNDLE_MIN + 10)]
    conn.send_flows(add=flows)
    sync(conn, events.barriers)
    assert dumped_cookies(host) == {f.cookie for f in flows}
    assert conn.bundles_committed == 1 and not events.errors
    backwards = Flow(FROM_VM_CACHE, 1, (), (("goto", 3),), cookie=DAEMON_COOKIE | 9)
    more = [cache_flow(1000 + i, 20000 + i) for i in range(O.BUNDLE_MIN)]
    xids = conn.send_flows(add=more[:5] + [backwards] + more[5:], delete=flows[:3])
    sync(conn, events.barriers)
    assert [e[0] for e in events.errors] == [xids[3 + 5]]
    assert conn.bundles_discarded == 1
    assert dumped_cookies(host) == {f.cookie for f in flows}      # the deletes too: undone


def test_install_2000_flows_rate(host, ofconn):
    conn, events = ofconn
    flows = [cache_flow(100 + i, 10000 + i) for i in range(2000)]
    start = time.perf_counter()
    conn.send_flows(add=flows)
    queued = time.perf_counter()
    sync(conn, events.barriers, timeout=10)
    installed = time.perf_counter()
    xid = conn.request_flow_stats(DAEMON_COOKIE, COOKIE_MASK)
    pump(conn, lambda: xid in events.stats, timeout=10)     # a multipart reply
    read = time.perf_counter()
    assert {e[0] for e in events.stats[xid]} == set(flows)
    conn.send_flows(delete=flows)
    sync(conn, events.barriers, timeout=10)
    deleted = time.perf_counter()
    assert dumped_cookies(host) == set()
    assert not events.errors
    print("\nOfConn 2000 cache flows: serialize+queue %.0f ms (%.0f us/flow), installed "
          "(barrier) after %.0f ms = %.0f us/flow; flow stats read back in %.0f ms; "
          "2000 delete_strict + barrier %.0f ms"
          % (1e3 * (queued - start), 1e6 * (queued - start) / 2000, 1e3 * (installed - start),
             1e6 * (installed - start) / 2000, 1e3 * (read - installed),
             1e3 * (deleted - read)))


def test_connect_errors_are_one_clear_line(host):
    with pytest.raises(OfConnError) as err:
        OfConn("unix:%s/no-such-bridge.mgmt" % host.rundir).connect(timeout=1)
    assert "no-such-bridge.mgmt" in str(err.value) and "\n" not in str(err.value)
    host.vsctl("add-br", "br-of10", "--", "set", "bridge", "br-of10",
               "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow10")
    try:
        with pytest.raises(OfConnError, match="does not speak OpenFlow 1.3"):
            OfConn(host.mgmt("br-of10")).connect(timeout=2)
    finally:
        host.vsctl("del-br", "br-of10")


def test_lost_connection_is_reported(host):
    host.vsctl("add-br", "br-gone", "--", "set", "bridge", "br-gone",
               "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13")
    conn = OfConn(host.mgmt("br-gone"))
    conn.connect()
    host.vsctl("del-br", "br-gone")
    with pytest.raises(OfConnError, match="closed"):
        pump(conn, lambda: False, timeout=3)
    assert not conn.connected


def test_port_down_up_and_deleted(host):
    """A port flap costs one ENETDOWN and the socket keeps working; a deleted
    port leaves the socket silent, which ``gone()`` reports."""
    port = "mbx-flap"
    host.vsctl("add-port", "br-int", port, "--", "set", "interface", port, "type=internal")
    host.ns_run("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % port)
    host.ns_run("ip", "link", "set", port, "up")
    try:
        with in_netns(host.ns):
            pp = PacketPort(port)
        host.ns_run("ip", "link", "set", port, "down")
        host.ns_run("ip", "link", "set", port, "up")
        assert pp.recv_batch() == [] and pp.link_down == 1
        assert not pp.gone()
        deadline = time.monotonic() + 1             # sends fail for a moment after up
        while not pp.send(udp_frame(9), TCI) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pp.sent == 1
        host.vsctl("del-port", "br-int", port)
        assert pp.gone()
        pp.close()
    finally:
        host.vsctl("--if-exists", "del-port", "br-int", port)
