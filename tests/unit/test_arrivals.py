"""middlebox.arrivals: the packets of a VM whose connection state is arriving,
as the service answers them (``Service.handle_frame`` with the hold buffer
attached): opened connections judged at once, mid-connection packets held
and given back in order when the state lands, dropped when it never does,
and committed one by one in a lazy import."""

from test_mb_frames import tcp_frame, udp_frame

from middlebox import arrivals as AR
from middlebox import ctcommit as K
from middlebox.conn import Conn
from middlebox.arrivals import Arrivals
from mbxmodel.services import RuleInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from middlebox.packet import TCP_ACK, TCP_SYN, build_tcp, ip_int
from middlebox.service import Service
from ryu_apps import pipeline as P

TAG = 9
C1 = VmSpec("c1", "02:00:00:00:01:11", "10.0.0.11", "h2")
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.0.0.21", "h2")
PEER = VmSpec("p1", "02:00:00:00:01:31", "10.0.0.31", "h3")
R = P.ROUTER_MAC
FROM, TO, EXT = (TAG | s << 13 for s in (P.STAGE_FROM_VM, P.STAGE_TO_VM,
                                          P.STAGE_FROM_EXTERNAL))


def service():
    fw = ServiceSpec("fw-a", "firewall", "deny",
                     rules=(RuleInfo(100, "to-vm", "proto=tcp dport=8080", "allow", uuid="r1"),))
    cfg = SliceConfig(tag=TAG, middlebox="fw-a", type="firewall", tenant="t", switch="ls-a",
                      vni=1001, default_action="deny", rules=fw.rules,
                      vms=(C1, B1, PEER), services=(fw,), subnet="10.0.0.0/24",
                      gateway="10.0.0.254")
    svc = Service("h2", zone_of={"c1": 21, "b1": 22}.get)
    svc.configure(HostConfig("h2", {TAG: cfg}))
    svc.arrivals = Arrivals()
    return svc, svc.arrivals


def into_c1(sport=50000, flags=TCP_ACK, seq=6):
    return build_tcp(PEER.mac, C1.mac, ip_int(PEER.ip), ip_int(C1.ip), sport, 8080, seq, 8,
                     flags)


def test_a_vm_nobody_waits_for_is_judged_as_usual():
    svc, arr = service()
    assert svc.handle_frame(into_c1(), TO, 1.0).verdict == "resumed"   # the switch judges it (and drops it)
    assert svc.handle_frame(into_c1(flags=TCP_SYN), TO, 1.0).verdict == "allow"
    assert arr.listing() == [] and arr.expected() == []


def test_mid_connection_packets_are_held_and_given_back_in_order_when_the_state_lands():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    assert arr.expected() == ["c1"] and arr.holding() == {"c1"}
    frames = [into_c1(seq=s) for s in (6, 7, 8)]
    got = [svc.handle_frame(f, TO, 1.5) for f in frames]
    assert [r.verdict for r in got] == ["held"] * 3
    assert all(r.out == [] and r.packet_outs == [] for r in got)     # nothing goes on yet
    assert arr.listing() == [{"vm": "c1", "state": "waiting", "held": 3, "count": 3,
                              "dropped": 0, "lazy": 0}]
    back, count = arr.landed("c1", 2.0)
    assert back == [(f, TO) for f in frames] and count == 3
    assert arr.expected() == [] and arr.landed("c1", 2.1) == ([], 0)
    # From now on the VM's packets are the switch's again.
    assert svc.handle_frame(into_c1(), TO, 2.2).verdict == "resumed"   # the switch judges it (and drops it)


def test_a_packet_that_can_open_a_connection_is_given_back_at_once():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    syn = into_c1(flags=TCP_SYN)
    res = svc.handle_frame(syn, TO, 1.1)
    assert res.out == [(syn, TO)] and res.verdict == "resumed"
    dgram = udp_frame(C1.mac, R, C1.ip, PEER.ip, 5353, 53)
    assert svc.handle_frame(dgram, FROM, 1.1).out == [(dgram, FROM)]
    assert arr.listing()[0]["held"] == 0


def test_another_vm_of_the_slice_is_not_held():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    to_b1 = build_tcp(PEER.mac, B1.mac, ip_int(PEER.ip), ip_int(B1.ip), 50000, 8080, 6, 8,
                      TCP_ACK)
    assert svc.handle_frame(to_b1, TO, 1.1).verdict == "resumed"   # the switch judges it (and drops it)


def test_a_packet_from_outside_is_held_for_any_arriving_vm_of_its_slice():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    frame = build_tcp(R, R, ip_int("198.51.100.20"), ip_int("203.0.113.6"), 40000, 8080,
                      6, 8, TCP_ACK)
    assert svc.handle_frame(frame, EXT, 1.1).verdict == "held"
    assert arr.landed("c1", 1.2)[0] == [(frame, EXT)]


def test_no_state_by_the_deadline_drops_the_held_packets():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    svc.handle_frame(into_c1(), TO, 1.5)
    assert arr.due(3.9) == []
    assert arr.due(4.0) == ["c1"]
    assert arr.counters["fallback_dropped"] == 1
    assert arr.listing()[0]["state"] == "fallback" and arr.listing()[0]["held"] == 0
    # Nothing to give back any more, and the VM is judged by the rules.
    assert arr.landed("c1", 4.1) == ([], 0)
    assert svc.handle_frame(into_c1(), TO, 4.2).verdict == "resumed"   # the switch judges it (and drops it)
    assert arr.due(5.0) == []


def test_a_transfer_arriving_extends_the_hold_and_a_finished_hold_is_forgotten():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    arr.extend("c1", 60.0)
    arr.expect("c1", 1.5, 2.0)              # an earlier bound never shortens it
    assert arr.due(10.0) == [] and arr.expected() == ["c1"]
    arr.landed("c1", 11.0)
    arr.due(11.0 + AR.HOLD_FORGET - 1)
    assert [h["vm"] for h in arr.listing()] == ["c1"]
    arr.due(11.0 + AR.HOLD_FORGET + 1)
    assert arr.listing() == []


def test_the_set_of_holding_vms_reports_each_change_once():
    _, arr = service()
    assert not arr.changed()
    arr.expect("c1", 1.0, 4.0)
    assert arr.changed() and not arr.changed()
    arr.expect("c1", 1.0, 5.0)              # the same hold: no change
    assert not arr.changed()
    arr.landed("c1", 2.0)
    assert arr.changed() and not arr.changed()


def test_the_hold_buffer_is_bounded_in_frames():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    frame = into_c1()
    verdicts = [svc.handle_frame(frame, TO, 1.1).verdict for _ in range(AR.HOLD_MAX_FRAMES + 2)]
    assert verdicts.count("held") == AR.HOLD_MAX_FRAMES
    assert verdicts[-2:] == ["hold_dropped"] * 2
    [h] = arr.listing()
    assert (h["held"], h["dropped"]) == (AR.HOLD_MAX_FRAMES, 2)
    assert len(arr.landed("c1", 2.0)[0]) == AR.HOLD_MAX_FRAMES


def test_the_hold_buffer_is_bounded_in_bytes():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    big = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, TCP_ACK, pad=1000000)
    fits = AR.HOLD_MAX_BYTES // len(big)
    verdicts = [svc.handle_frame(big, TO, 1.1).verdict for _ in range(fits + 1)]
    assert verdicts == ["held"] * fits + ["hold_dropped"]
    # A small frame still fits beside them.
    assert svc.handle_frame(into_c1(), TO, 1.2).verdict == "held"


INBOUND = Conn(6, ip_int(PEER.ip), 50000, ip_int(C1.ip), 8080, ip_int(C1.ip), 8080,
               ip_int(PEER.ip), 50000, 21, 0x1005, 7, "ESTABLISHED")
OUTBOUND = Conn(6, ip_int(C1.ip), 40000, ip_int(PEER.ip), 80, ip_int(PEER.ip), 80,
                ip_int(C1.ip), 40000, 21, 0x1005, 7, "ESTABLISHED")
DATAGRAM = Conn(17, ip_int(C1.ip), 5353, ip_int(PEER.ip), 53, ip_int(PEER.ip), 53,
                ip_int(C1.ip), 5353, 21, 0x1005, 7, "")


def commits(c):
    return K.commit_messages(c, c.zone, c.mark, c.label)


def test_a_lazy_import_commits_a_held_packets_connection_by_either_direction():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    tally = {"lazy_commits": 0}
    arr.offer_lazy("c1", K.LazyCommits([INBOUND, OUTBOUND], tally=tally))
    assert arr.listing()[0]["lazy"] == 2
    frame = into_c1()
    res = svc.handle_frame(frame, TO, 1.1)
    # Committed first; the packet goes on once the switch has the entry.
    assert res.verdict == "lazy" and res.messages == commits(INBOUND)
    assert res.after_barrier == [(frame, TO)] and res.out == []
    assert arr.listing()[0]["lazy"] == 1
    # Committed once: the next packet of the connection (which came before
    # the switch took the commit) just goes on after a barrier.
    res = svc.handle_frame(frame, TO, 1.2)
    assert res.verdict == "lazy" and res.messages == [] and res.after_barrier == [(frame, TO)]
    # A reply of a connection c1 opened finds its record by the reply tuple.
    reply = build_tcp(PEER.mac, C1.mac, ip_int(PEER.ip), ip_int(C1.ip), 80, 40000, 8, 7,
                      TCP_ACK)
    res = svc.handle_frame(reply, TO, 1.3)
    assert res.verdict == "lazy" and res.messages == commits(OUTBOUND)
    assert res.after_barrier == [(reply, TO)]
    assert tally["lazy_commits"] == 2
    # Records of a VM nobody waits for are not kept.
    assert arr.offer_lazy("b1", K.LazyCommits([INBOUND])).messages == []
    assert [h["vm"] for h in arr.listing()] == ["c1"]


def test_a_datagram_of_a_moved_flow_is_committed_before_it_goes_on():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    arr.offer_lazy("c1", K.LazyCommits([DATAGRAM]))
    dgram = udp_frame(C1.mac, R, C1.ip, PEER.ip, 5353, 53)
    res = svc.handle_frame(dgram, FROM, 1.1)
    assert res.messages == commits(DATAGRAM) and res.after_barrier == [(dgram, FROM)]
    assert res.out == []


def test_packets_held_before_their_records_came_are_committed_when_they_come():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    first, second = into_c1(seq=6), into_c1(seq=7)
    orphan = into_c1(sport=50009)
    for f in (first, orphan, second):
        assert svc.handle_frame(f, TO, 1.1).verdict == "held"
    res = arr.offer_lazy("c1", K.LazyCommits([INBOUND]))
    # One commit for the connection; both its packets go on after it, in order.
    assert res.messages == commits(INBOUND)
    assert res.after_barrier == [(first, TO), (second, TO)] and res.out == []
    # The packet of no connection waits for the landing.
    assert arr.listing()[0]["held"] == 1
    assert arr.landed("c1", 2.0)[0] == [(orphan, TO)]


def test_a_connection_committed_in_the_background_is_not_committed_again():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    lazy = K.LazyCommits([OUTBOUND, INBOUND])
    arr.offer_lazy("c1", lazy)
    assert lazy.chunk(1) == commits(INBOUND) and len(lazy) == 1
    res = svc.handle_frame(into_c1(), TO, 1.1)
    assert res.verdict == "lazy" and res.messages == []
    assert lazy.chunk(5) == commits(OUTBOUND) and len(lazy) == 0 and lazy.chunk(5) == []


def test_landing_forgets_the_records_still_to_commit():
    svc, arr = service()
    arr.expect("c1", 1.0, 4.0)
    arr.offer_lazy("c1", K.LazyCommits([INBOUND]))
    arr.landed("c1", 2.0)
    assert arr.listing()[0]["lazy"] == 0
    assert svc.handle_frame(into_c1(), TO, 2.1).verdict == "resumed"   # the switch judges it (and drops it)


def test_a_vm_with_no_zone_yet_is_arriving_its_packets_wait_for_the_zone():
    """Its port came before the row: the first packet makes it an arrival;
    its packets (a SYN too) wait until the daemon has its zone in place,
    then are decided again: mid-connection ones held for the state."""
    zones = {"c1": 21, "b1": 22}
    svc, arr = service()
    svc.zone_of = zones.get
    to_peer = build_tcp(PEER.mac, R, ip_int(PEER.ip), ip_int("10.0.0.99"), 40000, 80, 1, 1,
                        TCP_ACK)
    syn = build_tcp(PEER.mac, R, ip_int(PEER.ip), ip_int("10.0.0.99"), 40001, 80, 1, 0,
                    TCP_SYN)
    assert svc.handle_frame(to_peer, FROM, 1.0).verdict == "held"
    assert svc.handle_frame(syn, FROM, 1.0).verdict == "held"
    assert arr.expected() == ["p1"] and arr.changed()
    # The daemon gave p1 a zone: the packets are decided again.
    zones["p1"] = 23
    again = [svc.handle_frame(f, t, 1.1) for f, t in arr.take_unzoned()]
    assert [r.verdict for r in again] == ["held", "resumed"]
    assert arr.take_unzoned() == []
    frames, held = arr.landed("p1", 1.2)
    assert [f for f, _ in frames] == [to_peer] and held == 1
