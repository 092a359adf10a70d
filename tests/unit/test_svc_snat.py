"""middlebox.services.snat: port allocation inside a host's block."""

import pytest

from middlebox.services import snat
from middlebox.services.snat import PortAllocator
from ovsdb.natblocks import allocate, blocks

PEER = ("198.51.100.7", 443)


def test_state_declarations():
    assert snat.SNAT_STATE == "local"
    assert snat.SHARED_STATE == () and snat.LOCAL_STATE == ("nat-mappings",)


def test_allocate_whole_block_distinct_in_range_then_exhausted():
    a = PortAllocator("192.0.2.1", 4096, 8191)
    got = [a.allocate("tcp", *PEER, now=1.0) for _ in range(4096)]
    assert len(set(got)) == 4096 and all(4096 <= p <= 8191 for p in got)
    assert a.in_use("tcp") == 4096 and a.size == 4096
    assert a.allocate("tcp", "203.0.113.9", 80, 2.0) is None       # exhausted, any peer
    # udp is separate
    assert a.allocate("udp", *PEER, now=2.0) == 4096 and a.in_use("udp") == 1
    assert a.in_use(6) == 4096 and a.in_use(17) == 1                  # numbers = names


def test_release_makes_port_reusable():
    a = PortAllocator("192.0.2.1", 1024, 1279)
    got = [a.allocate("udp", *PEER, now=0) for _ in range(256)]
    assert a.allocate("udp", *PEER, now=0) is None
    assert a.release("udp", 1100) and not a.release("udp", 1100)
    assert not a.release("tcp", 1100) and not a.release("udp", 5)
    assert a.allocate("udp", *PEER, now=1) == 1100
    assert a.allocate("udp", *PEER, now=1) is None
    assert len(got) == 256


def test_released_ports_reused_fifo_after_fresh_ones():
    a = PortAllocator("192.0.2.1", 0, 9)
    assert [a.allocate("tcp", now=0) for _ in range(3)] == [0, 1, 2]
    a.release("tcp", 1)
    a.release("tcp", 0)
    assert [a.allocate("tcp", now=0) for _ in range(7)] == [3, 4, 5, 6, 7, 8, 9]
    assert [a.allocate("tcp", now=0) for _ in range(3)] == [1, 0, None]


def test_no_collision_under_churn():
    a = PortAllocator("192.0.2.1", 256, 511)
    held = set()
    for i in range(5000):
        if i % 3 == 2 and held:
            p = min(held) if i % 2 else max(held)
            assert a.release("tcp", p)
            held.discard(p)
        else:
            p = a.allocate("tcp", "198.51.100.%d" % (i % 250), i, now=i)
            if p is None:
                assert len(held) == 256
                continue
            assert p not in held and 256 <= p <= 511
            held.add(p)
        assert a.in_use("tcp") == len(held)


def test_reserve():
    a = PortAllocator("192.0.2.1", 1024, 1031)
    assert a.reserve("tcp", 1024) and a.reserve("tcp", 1027)
    assert not a.reserve("tcp", 1024)                                  # already used
    assert not a.reserve("tcp", 1023) and not a.reserve("tcp", 1032)   # out of range
    assert not a.reserve("tcp", "1025") and not a.reserve("tcp", True)
    assert a.is_used("tcp", 1027) and not a.is_used("udp", 1027)
    got = [a.allocate("tcp", now=0) for _ in range(6)]
    assert sorted(got) == [1025, 1026, 1028, 1029, 1030, 1031]
    assert a.allocate("tcp", now=0) is None
    # reserve a released port queued for reuse: never handed out twice
    a.release("tcp", 1025)
    a.release("tcp", 1026)
    assert a.reserve("tcp", 1025)
    assert a.allocate("tcp", now=0) == 1026
    assert a.allocate("tcp", now=0) is None
    a.release("tcp", 1025)
    assert a.allocate("tcp", now=0) == 1025


def test_reserve_release_cycles_keep_queue_bounded():
    a = PortAllocator("192.0.2.1", 0, 3)
    for _ in range(4):
        a.allocate("tcp", now=0)
    for _ in range(1000):
        a.release("tcp", 2)
        assert a.reserve("tcp", 2)
    assert len(a._pools["tcp"].free) <= 4
    a.release("tcp", 2)
    assert a.allocate("tcp", now=0) == 2 and a.allocate("tcp", now=0) is None


def test_bad_range():
    with pytest.raises(ValueError):
        PortAllocator("192.0.2.1", 10, 9)
    with pytest.raises(ValueError):
        PortAllocator("192.0.2.1", 0, 65536)


def test_two_hosts_blocks_never_collide():
    bl = blocks(["192.0.2.1"], (1024, 65535), 4096)
    own = allocate(["hv1", "hv2"], bl)
    allocs = {h: PortAllocator(*own[h]) for h in own}
    seen = set()
    for a in allocs.values():
        for _ in range(a.size):
            p = a.allocate("tcp", *PEER, now=0)
            assert (a.ip, p) not in seen
            seen.add((a.ip, p))
    assert len(seen) == 8192


def test_churn_when_nearly_full_stays_cheap():
    a = PortAllocator("192.0.2.1", 0, 65535)
    for _ in range(65536):
        a.allocate("udp", now=0)
    pool = a._pools["udp"]
    for i in range(20000):                     # one free port at a time
        p = (i * 7919) % 65536
        a.release("udp", p)
        assert a.allocate("udp", now=i) == p
        assert pool.cursor == 65536 and len(pool.free) == 0
