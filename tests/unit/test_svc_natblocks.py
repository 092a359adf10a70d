"""ovsdb.natblocks: SNAT port blocks, their masked matches and allocation."""

import pytest

from ovsdb import natblocks as NB
from ovsdb.natblocks import allocate, block_match, blocks


def test_blocks_aligned_inside_range_sorted_numerically():
    got = blocks(["10.0.0.10", "10.0.0.9", "10.0.0.9"], (1024, 65535), 16384)
    assert got == [("10.0.0.9", 16384, 32767), ("10.0.0.9", 32768, 49151),
                   ("10.0.0.9", 49152, 65535), ("10.0.0.10", 16384, 32767),
                   ("10.0.0.10", 32768, 49151), ("10.0.0.10", 49152, 65535)]


def test_blocks_default_range_and_partial_edges():
    got = blocks(["192.0.2.1"], NB.DEFAULT_PORT_RANGE, NB.DEFAULT_BLOCK_SIZE)
    assert len(got) == 15 and got[0] == ("192.0.2.1", 4096, 8191) and got[-1][2] == 65535
    for _ip, lo, hi in got:
        assert lo % 4096 == 0 and hi - lo + 1 == 4096 and 1024 <= lo and hi <= 65535
    assert blocks(["192.0.2.1"], (0, 65535), 32768) == [("192.0.2.1", 0, 32767),
                                                         ("192.0.2.1", 32768, 65535)]
    assert blocks(["192.0.2.1"], (1, 511), 256) == [("192.0.2.1", 256, 511)]
    assert blocks(["192.0.2.1"], (1, 510), 256) == []
    assert blocks([], (0, 65535), 256) == []


@pytest.mark.parametrize("size", [0, 128, 255, 300, 65536, 4095, "4096", True, 4096.0])
def test_blocks_bad_size(size):
    with pytest.raises(ValueError):
        blocks(["192.0.2.1"], (0, 65535), size)


@pytest.mark.parametrize("rng", [(5, 4), (-1, 10), (0, 65536), None, (1,)])
def test_blocks_bad_range(rng):
    with pytest.raises(ValueError):
        blocks(["192.0.2.1"], rng, 256)


def test_blocks_bad_ip():
    with pytest.raises(ValueError):
        blocks(["not-an-ip"], (0, 65535), 256)


def test_block_match_selects_exactly_the_block():
    for _ip, lo, hi in blocks(["192.0.2.1"], (1024, 65535), 4096):
        value, mask = block_match(lo, hi)
        assert (value, mask) == (lo, 0xF000)
        assert all((p & mask) == value for p in (lo, lo + 1, hi))
        assert (lo - 1) & mask != value and ((hi + 1) & mask != value if hi < 65535 else True)
    assert block_match(32768, 65535) == (32768, 0x8000)
    assert block_match(256, 511) == (256, 0xFF00)


@pytest.mark.parametrize("lo,hi", [(100, 355), (256, 600), (4096, 4095)])
def test_block_match_unaligned(lo, hi):
    with pytest.raises(ValueError):
        block_match(lo, hi)


def test_allocate_lowest_free_in_host_order():
    bl = blocks(["192.0.2.1"], (1024, 65535), 16384)      # 3 blocks
    got = allocate(["hv3", "hv1", "hv2", "hv4"], bl)
    assert got == {"hv1": bl[0], "hv2": bl[1], "hv3": bl[2]}   # hv4: beyond capacity


def test_allocate_is_stable():
    bl = blocks(["192.0.2.1", "192.0.2.2"], (1024, 65535), 16384)   # 6 blocks
    first = allocate(["b", "c"], bl)
    assert first == {"b": bl[0], "c": bl[1]}
    # a new host sorting first does not move the others
    second = allocate(["a", "b", "c"], bl, first)
    assert second == {"a": bl[2], "b": bl[0], "c": bl[1]}
    # a host leaving frees its block; the rest keep theirs
    third = allocate(["a", "c", "d"], bl, second)
    assert third == {"a": bl[2], "c": bl[1], "d": bl[0]}
    # previous from JSON (lists), and a vanished previous block
    bl2 = blocks(["192.0.2.2"], (1024, 65535), 16384)
    prev = {h: list(b) for h, b in third.items()}
    fourth = allocate(["a", "c", "d"], bl2, prev)
    assert fourth == {"a": bl2[0], "c": bl2[1], "d": bl2[2]}
    assert allocate(["a", "c", "d"], bl2, fourth) == fourth


def test_allocate_conflicting_previous_first_host_wins():
    bl = blocks(["192.0.2.1"], (1024, 65535), 16384)
    got = allocate(["x", "y"], bl, {"x": bl[2], "y": bl[2], "gone": bl[0]})
    assert got == {"x": bl[2], "y": bl[0]}


def test_allocate_capacity_previous_holder_kept():
    bl = blocks(["192.0.2.1"], (32768, 65535), 32768)      # one block
    assert allocate(["a", "b"], bl, {"b": bl[0]}) == {"b": bl[0]}
    assert allocate(["a", "b"], []) == {}


def test_blocks_of_hosts_never_overlap():
    bl = blocks(["192.0.2.2", "192.0.2.1"], (1024, 65535), 1024)
    hosts = ["hv%02d" % i for i in range(40)]
    got = allocate(hosts, bl)
    assert len(got) == 40 and len(set(got.values())) == 40
    ports = {}
    for ip, lo, hi in got.values():
        for p in range(lo, hi + 1):
            assert (ip, p) not in ports
            ports[(ip, p)] = True
    many = ["h%03d" % i for i in range(200)]
    got = allocate(many, bl)
    assert len(got) == len(bl) and sorted(got) == many[:len(bl)]


def test_format_parse_block():
    b = ("192.0.2.1", 4096, 8191)
    assert NB.format_block(b) == "192.0.2.1:4096-8191"
    assert NB.parse_block(" 192.0.2.1:4096-8191 ") == b
    for bad in ("192.0.2.1:4096", "x:0-255", "192.0.2.1:100-355", "192.0.2.1:a-b"):
        with pytest.raises(ValueError):
            NB.parse_block(bad)
