"""SNAT port blocks: cutting external addresses' port ranges into per-host blocks.

See docs/services.md, "SNAT port blocks".  The NAT middlebox's option
``ports-per-host`` (B, a power of two 256..32768) cuts each SNAT rule's space
into blocks: for each external IP in numeric order, every aligned block
``[k*B, (k+1)*B-1]`` that lies wholly inside the rule's ``port_range``.  The
controller gives each host serving the NAT middlebox one block (``allocate``),
stable while the host keeps serving it; ``EXTERNAL_IN`` matches a block with a
masked ``tcp_dst``/``udp_dst`` (``block_match``).

A block is a tuple ``(ip, lo, hi)``; in ``Slice.status`` it is written
``<ip>:<lo>-<hi>`` (``format_block`` / ``parse_block``).

Pure: no I/O, no clock.
"""

import ipaddress
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Block = Tuple[str, int, int]

MIN_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 32768
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_PORT_RANGE = (1024, 65535)
STATUS_PREFIX = "snat-block:"     # Slice.status key: snat-block:<NAT_Rule uuid>


def check_size(size) -> int:
    """Return ``size`` as an int if it is a power of two 256..32768, else
    raise ValueError."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError("block size %r is not an integer" % (size,))
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
        raise ValueError("block size %d is not a power of two %d..%d"
                         % (size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE))
    return size


def _check_range(port_range) -> Tuple[int, int]:
    try:
        lo, hi = port_range
        lo, hi = int(lo), int(hi)
    except (TypeError, ValueError):
        raise ValueError("port range %r is not (lo, hi)" % (port_range,)) from None
    if not 0 <= lo <= hi <= 65535:
        raise ValueError("port range %d-%d is not inside 0-65535 with lo <= hi" % (lo, hi))
    return lo, hi


def blocks(external_ips: Iterable[str], port_range: Sequence[int], size: int) -> List[Block]:
    """Every block of ``size`` ports: for each IP in numeric order (duplicates
    dropped), every aligned block ``[k*size, (k+1)*size-1]`` wholly inside the
    inclusive ``port_range``, ascending.  An IP's string is kept as given
    (stripped).  Raises ValueError for a bad size, range or address."""
    size = check_size(size)
    lo, hi = _check_range(port_range)
    seen = {}
    for ip in external_ips:
        text = str(ip).strip()
        addr = ipaddress.ip_address(text)          # ValueError if not an address
        seen.setdefault(addr, text)
    first = -(-lo // size)                          # ceil(lo / size)
    last = (hi + 1) // size - 1                     # last k with (k+1)*size-1 <= hi
    out = []
    for addr in sorted(seen, key=lambda a: (a.version, int(a))):
        for k in range(first, last + 1):
            out.append((seen[addr], k * size, (k + 1) * size - 1))
    return out


def block_match(lo: int, hi: int) -> Tuple[int, int]:
    """``(value, mask)`` of a masked ``tcp_dst``/``udp_dst`` match selecting
    exactly the ports lo..hi of an aligned power-of-two block.  ValueError if
    the block is not aligned."""
    lo, hi = _check_range((lo, hi))
    size = hi - lo + 1
    if size & (size - 1) or lo % size:
        raise ValueError("ports %d-%d are not an aligned power-of-two block" % (lo, hi))
    return lo, 0xFFFF & ~(size - 1)


def _as_block(value) -> Optional[Block]:
    try:
        ip, lo, hi = value
        return (str(ip), int(lo), int(hi))
    except (TypeError, ValueError):
        return None


def allocate(hosts: Iterable[str], blocks: Sequence[Block],
             previous: Optional[Mapping[str, Block]] = None) -> Dict[str, Block]:
    """Give each host one block, stably.

    In host-name order, a host keeps its ``previous`` block if that block is
    still in ``blocks`` and no host before it kept it; then the other hosts,
    in name order, get the lowest free block (in the order of ``blocks``).
    Hosts beyond capacity get nothing (absent from the result).  Previous
    blocks of hosts no longer listed are free.  ``previous`` values may be any
    3-sequences (e.g. lists from JSON)."""
    previous = previous or {}
    names = sorted(set(hosts))
    order = []
    valid = set()
    for b in blocks:
        nb = _as_block(b)
        if nb is not None and nb not in valid:
            valid.add(nb)
            order.append(nb)
    taken = set()
    result: Dict[str, Block] = {}
    for host in names:
        prev = _as_block(previous.get(host))
        if prev is not None and prev in valid and prev not in taken:
            result[host] = prev
            taken.add(prev)
    free = (b for b in order if b not in taken)
    for host in names:
        if host in result:
            continue
        block = next(free, None)
        if block is None:
            break
        result[host] = block
        taken.add(block)
    return result


def format_block(block: Block) -> str:
    """``(ip, lo, hi)`` -> ``"ip:lo-hi"`` (the Slice.status value)."""
    ip, lo, hi = block
    return "%s:%d-%d" % (ip, lo, hi)


def parse_block(text: str) -> Block:
    """``"ip:lo-hi"`` -> ``(ip, lo, hi)``; ValueError if malformed or not an
    aligned power-of-two block."""
    try:
        ip, ports = str(text).strip().rsplit(":", 1)
        lo_s, hi_s = ports.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
        ipaddress.IPv4Address(ip)
    except (ValueError, TypeError):
        raise ValueError("%r is not a port block ip:lo-hi" % (text,)) from None
    block_match(lo, hi)
    return (ip, lo, hi)
