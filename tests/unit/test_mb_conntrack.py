"""middlebox.conntrack: timeouts, keys, the state machines, per-VM tables."""

import tracemalloc

import pytest

from middlebox import conntrack as CT
from middlebox.conntrack import ConnEntry, Timeouts, VmTable, can_open, key_for
from test_mb_frames import ACK, FIN, ICMP, PSH, RST, SYN, TCP, UDP, ip_int

VM, PEER = ip_int("10.0.0.1"), ip_int("192.0.2.7")
T = Timeouts()


def test_timeout_defaults_and_options():
    assert (T.tcp_syn, T.tcp_established, T.tcp_closing, T.udp, T.udp_replied, T.icmp,
            T.denied) == (30, 3600, 10, 30, 180, 30, 10)
    t = Timeouts.from_options({"timeout-tcp-established": "600", "timeout-udp": " 5 ",
                               "timeout-icmp": "soon", "timeout-denied": "0",
                               "timeout-tcp-syn": "70000", "check": "offload"})
    assert (t.tcp_established, t.udp, t.icmp, t.denied, t.tcp_syn) == (600, 5, 30, 10, 30)
    assert len(t.errors) == 3
    assert any("timeout-icmp" in e and '"soon"' in e for e in t.errors)
    assert Timeouts.from_options({}) == T and Timeouts.from_options(None).errors == ()


def test_timeout_per_state():
    assert T.for_state(TCP, CT.SYN_SENT) == 30
    assert T.for_state(TCP, CT.ESTABLISHED) == 3600
    assert T.for_state(TCP, CT.CLOSING) == 10 and T.for_state(TCP, CT.CLOSED) == 10
    assert T.for_state(UDP, CT.UNREPLIED) == 30 and T.for_state(UDP, CT.REPLIED) == 180
    assert T.for_state(ICMP, CT.ACTIVE) == 30
    assert T.for_state(TCP, CT.ESTABLISHED, CT.DENY) == 10


def test_keys_are_from_the_vms_point_of_view():
    out = key_for(TCP, VM, PEER, 40000, 80, vm_is_src=True)
    back = key_for(TCP, PEER, VM, 80, 40000, vm_is_src=False)
    assert out == back == (TCP, VM, 40000, PEER, 80)
    assert key_for(47, VM, PEER, 1, 2, True) == (47, VM, 0, PEER, 0)


def test_what_may_open_a_connection():
    assert can_open(TCP, SYN)
    for flags in (SYN | ACK, ACK, RST, FIN, SYN | FIN, SYN | RST, PSH | ACK, 0):
        assert not can_open(TCP, flags)
    assert can_open(UDP, 0) and can_open(ICMP, 0) and can_open(47, 0)


def entry(proto=TCP, origin=CT.OUT, verdict=CT.ALLOW, now=100.0):
    return ConnEntry(key_for(proto, VM, PEER, 40000, 80, True), origin, verdict, now, T)


def test_tcp_handshake_offload_and_close():
    e = entry()
    assert e.state == CT.SYN_SENT and e.expires == 130.0
    e.update(True, SYN, 60, 101.0, T)
    e.update(False, SYN | ACK, 60, 102.0, T)            # offload: SYN-ACK establishes
    assert e.state == CT.ESTABLISHED and e.expires == 102.0 + 3600
    e.update(True, FIN | ACK, 60, 200.0, T)
    assert e.state == CT.FIN_WAIT
    e.update(False, ACK, 60, 201.0, T)
    assert e.state == CT.FIN_WAIT
    e.update(False, FIN | ACK, 60, 202.0, T)
    assert e.state == CT.CLOSING and e.expires == 212.0
    assert (e.packets_orig, e.packets_reply, e.bytes_orig) == (2, 3, 120)
    assert e.last_seen == 202.0 and e.created == 100.0


def test_tcp_every_packet_passes_through_syn_recv():
    e = entry()
    e.update(False, SYN | ACK, 60, 101.0, T, syn_ack_establishes=False)
    assert e.state == CT.SYN_RECV and e.expires == 131.0
    e.update(False, SYN | ACK, 60, 102.0, T, syn_ack_establishes=False)   # retransmit
    assert e.state == CT.SYN_RECV
    e.update(True, ACK, 60, 103.0, T, syn_ack_establishes=False)
    assert e.state == CT.ESTABLISHED


def test_tcp_syn_from_orig_does_not_establish_and_rst_closes():
    e = entry()
    e.update(True, SYN, 60, 101.0, T)
    e.update(True, ACK, 60, 102.0, T)             # no SYN-ACK seen: still syn_sent
    assert e.state == CT.SYN_SENT
    e.update(False, RST | ACK, 60, 103.0, T)
    assert e.state == CT.CLOSED and e.expires == 113.0
    e.update(True, ACK, 60, 104.0, T)
    assert e.state == CT.CLOSED


def test_inbound_origin_directions():
    e = ConnEntry(key_for(TCP, PEER, VM, 5555, 22, False), CT.IN, CT.ALLOW, 0.0, T)
    assert e.is_orig(vm_is_src=False) and not e.is_orig(vm_is_src=True)
    e.update(e.is_orig(True), SYN | ACK, 60, 1.0, T)
    assert e.state == CT.ESTABLISHED and e.packets_reply == 1


def test_udp_replied_and_icmp():
    e = entry(UDP)
    assert e.state == CT.UNREPLIED and e.expires == 130.0
    e.update(True, 0, 100, 110.0, T)
    assert e.state == CT.UNREPLIED and e.expires == 140.0
    e.update(False, 0, 100, 111.0, T)
    assert e.state == CT.REPLIED and e.expires == 111.0 + 180
    i = entry(ICMP)
    assert i.state == CT.ACTIVE and i.key == (ICMP, VM, 0, PEER, 0)
    i.update(False, 0, 98, 101.0, T)
    assert i.state == CT.ACTIVE and i.expires == 131.0


def test_denied_entries_use_the_denied_timeout():
    e = entry(verdict=CT.DENY)
    assert e.expires == 110.0
    e.update(True, SYN, 60, 105.0, T)
    assert e.expires == 115.0


def test_vm_table_lookup_and_expiry():
    table = VmTable("a1")
    a, b = entry(now=0.0), entry(UDP, now=0.0)
    c = ConnEntry(key_for(TCP, VM, PEER, 40001, 80, True), CT.OUT, CT.ALLOW, 0.0, T)
    c.flows = CT.FLOW_BOTH                       # offloaded: the datapath decides
    for e in (a, b, c):
        table.add(e)
    assert len(table) == 3 and table.get(key_for(UDP, PEER, VM, 80, 40000, False)) is b
    b.update(True, 0, 10, 20.0, T)               # UDP now expires at 50
    assert {e.key for e in table.expire(29.9)} == set()
    assert table.expire(30.0) == [a]
    assert table.expire(50.0) == [b]
    assert table.expire(60.0) == []              # c: expired at 30, grace 60
    assert table.expire(90.0) == [c]
    assert len(table) == 0


def test_an_entry_is_small():
    """The project targets <= 1 KB per tracked connection (entry, key, table slot)."""
    table = VmTable("a1")
    n = 5000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        e = ConnEntry(key_for(TCP, VM, PEER + i, 10000 + i, 443, True), CT.OUT, CT.ALLOW,
                      1.0e9 + i, T, i + 1, "rule-uuid", "a1", 5)
        e.update(False, SYN | ACK, 60, 1.0e9 + i + 0.5, T)
        table.add(e)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / n < 1024, used / n


@pytest.mark.parametrize("flags", [SYN | ACK, FIN, RST, ACK])
def test_first_packet_flags_other_than_syn_cannot_open(flags):
    assert not can_open(TCP, flags)
