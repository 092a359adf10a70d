"""Property-based tests (hypothesis) of three pieces of pure logic that every
connection depends on:

* rule evaluation (``middlebox.rules.RuleSet``) agrees with a reference
  evaluator written here from the documented semantics (docs/middlebox.md,
  "Rule semantics"): the matching rule of the first tier, highest
  priority, lowest uuid decides, else the default action;
* SNAT port allocation: the blocks ``ovsdb.natblocks`` cuts and gives to
  hosts are aligned, inside the rule's range, disjoint and stable, and the
  switch translates each host's connections to distinct ports of that
  host's block only (``middlebox.dataplane`` in the simulated switch);
* the record encodings: a connection record survives the wire format
  (``conn.encode`` / ``decode``, ``encode_removed`` / ``decode_removed``)
  and the conntrack dump text (``dump_line`` / ``parse_dump``).
"""

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbxmodel.services import NatRuleInfo, RuleInfo
from middlebox import conn as C
from middlebox.config import ServiceSpec
from middlebox.packet import ip_int
from middlebox.rules import ACTIONS, DIRECTIONS, TIER_ORDERS, RuleSet
from ovsdb import natblocks
from test_dataplane import ALLOW_ALL, SNAT_ZONE, A, Host, slice_config, syn

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------ rule evaluation

# A small address space, so that random packets hit random rules often.
NETS = ["10.0.0.0/24", "10.0.0.0/28", "10.0.0.16/28", "10.0.1.0/24", "10.0.0.5/32",
        "0.0.0.0/0", "192.168.0.0/16"]
HOSTS = ["10.0.0.5", "10.0.0.6", "10.0.0.20", "10.0.1.9", "192.168.3.4", "172.16.0.1"]
PORTS = [0, 22, 53, 80, 443, 1024, 8080, 65535]
SET_NAMES = ["web", "db", "none"]       # "none": named by rules, never defined


@st.composite
def addr_terms(draw):
    """(match text, reference) of one address field, or (None, None)."""
    kind = draw(st.sampled_from(["none", "net", "set"]))
    if kind == "none":
        return None, None
    if kind == "net":
        net = draw(st.sampled_from(NETS))
        text = net[:-3] if net.endswith("/32") else net
        return text, ("net", net)
    name = draw(st.sampled_from(SET_NAMES))
    return "$" + name, ("set", name)


@st.composite
def port_terms(draw):
    if not draw(st.booleans()):
        return None
    lo = draw(st.sampled_from(PORTS))
    hi = draw(st.sampled_from([p for p in PORTS if p >= lo]))
    return (lo, hi)


@st.composite
def rules(draw, n):
    """(RuleInfo, its reference fields) of a random valid rule."""
    proto = draw(st.sampled_from([None, 1, 6, 17, 47]))
    src, src_ref = draw(addr_terms())
    dst, dst_ref = draw(addr_terms())
    sport = dport = None
    if proto in (6, 17):
        sport, dport = draw(port_terms()), draw(port_terms())
    terms = []
    if proto is not None:
        terms.append("proto=%s" % {1: "icmp", 6: "tcp", 17: "udp"}.get(proto, proto))
    for name, value in (("src", src), ("dst", dst)):
        if value is not None:
            terms.append("%s=%s" % (name, value))
    for name, value in (("sport", sport), ("dport", dport)):
        if value is not None:
            terms.append("%s=%d-%d" % (name, *value))
    rule = RuleInfo(priority=draw(st.integers(0, 5)),
                    direction=draw(st.sampled_from(DIRECTIONS)),
                    match=", ".join(terms) if terms else "any",
                    action=draw(st.sampled_from(ACTIONS)),
                    tier=draw(st.sampled_from(("provider", "tenant"))),
                    uuid="r%02d" % n)
    return rule, {"proto": proto, "src": src_ref, "dst": dst_ref, "sport": sport,
                  "dport": dport}


def _in(ref, addr, sets):
    if ref is None:
        return True
    kind, value = ref
    nets = [value] if kind == "net" else sets.get(value, [])
    return any(ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(n) for n in nets)


def reference(rules_, sets, default, tier_order, direction, proto, src, dst, sport, dport):
    """The documented semantics, written plainly: of the rules of this
    direction that select the packet, the one of the first tier, then the
    highest priority, then the lowest uuid decides; none: the default."""
    tiers = TIER_ORDERS[tier_order]
    hits = []
    for rule, ref in rules_:
        if rule.direction != direction:
            continue
        if ref["proto"] is not None and ref["proto"] != proto:
            continue
        if not (_in(ref["src"], src, sets) and _in(ref["dst"], dst, sets)):
            continue
        if any(ref[f] is not None and not ref[f][0] <= port <= ref[f][1]
               for f, port in (("sport", sport), ("dport", dport))):
            continue
        hits.append(rule)
    if not hits:
        return default, None
    best = min(hits, key=lambda r: (tiers.index(r.tier), -r.priority, r.uuid))
    return best.action, best


packets = st.tuples(st.sampled_from(DIRECTIONS), st.sampled_from([1, 6, 17, 47]),
                    st.sampled_from(HOSTS), st.sampled_from(HOSTS),
                    st.sampled_from(PORTS + [7, 9000]), st.sampled_from(PORTS + [7, 9000]))


@SETTINGS
@given(st.integers(0, 12).flatmap(lambda n: st.tuples(*[rules(i) for i in range(n)])),
       st.fixed_dictionaries({"web": st.lists(st.sampled_from(NETS + HOSTS), max_size=3),
                              "db": st.lists(st.sampled_from(NETS + HOSTS), max_size=3)}),
       st.sampled_from(ACTIONS), st.sampled_from(sorted(TIER_ORDERS)),
       st.lists(packets, min_size=1, max_size=20))
def test_rule_evaluation_agrees_with_the_reference_evaluator(rules_, sets, default, order,
                                                             pkts):
    rs = RuleSet([r for r, _ in rules_], sets, default, order)
    assert rs.errors == []
    for direction, proto, src, dst, sport, dport in pkts:
        if proto not in (6, 17):
            sport = dport = 0
        got = rs.evaluate(direction, proto, ip_int(src), ip_int(dst), sport, dport)
        assert got == reference(rules_, sets, default, order, direction, proto, src, dst,
                                sport, dport)


# ------------------------------------------------------------ SNAT port allocation

SIZES = [256, 512, 1024, 4096, 32768]
EXTERNAL = ["203.0.113.5", "203.0.113.6", "198.51.100.1"]
host_names = st.lists(st.sampled_from(["hv%d" % i for i in range(1, 9)]), unique=True,
                      max_size=8)


@st.composite
def port_ranges(draw):
    lo = draw(st.integers(0, 65535))
    return lo, draw(st.integers(lo, 65535))


@SETTINGS
@given(st.lists(st.sampled_from(EXTERNAL), min_size=1, max_size=3), port_ranges(),
       st.sampled_from(SIZES))
def test_port_blocks_are_aligned_inside_the_range_and_disjoint(ips, port_range, size):
    got = natblocks.blocks(ips, port_range, size)
    lo, hi = port_range
    per_ip = len(range(-(-lo // size), (hi + 1) // size))
    assert len(got) == len(set(ips)) * per_ip
    seen = set()
    for ip, first, last in got:
        assert last - first + 1 == size and first % size == 0
        assert lo <= first and last <= hi
        assert natblocks.block_match(first, last) == (first, 0xFFFF & ~(size - 1))
        assert natblocks.parse_block(natblocks.format_block((ip, first, last))) == \
            (ip, first, last)
        ports = {(ip, p) for p in range(first, last + 1, 97)} | {(ip, last)}
        assert not ports & seen
        seen |= ports


@SETTINGS
@given(st.lists(st.sampled_from(EXTERNAL), min_size=1, max_size=2), port_ranges(),
       st.sampled_from(SIZES), host_names, host_names, st.randoms(use_true_random=False))
def test_each_host_gets_its_own_block_and_keeps_it_while_it_stays(ips, port_range, size,
                                                                  before, after, rnd):
    blocks = natblocks.blocks(ips, port_range, size)
    first = natblocks.allocate(before, blocks)
    assert len(first) == min(len(before), len(blocks))
    assert set(first) <= set(before)
    assert len(set(first.values())) == len(first)               # no block shared
    assert set(first.values()) <= set(blocks)
    # Hosts come and go (and previous blocks arrive as JSON lists):
    previous = {h: list(b) for h, b in first.items()}
    second = natblocks.allocate(rnd.sample(after, len(after)), blocks, previous)
    assert len(set(second.values())) == len(second) == min(len(after), len(blocks))
    for host in set(before) & set(after):
        if host in first:
            assert second[host] == first[host], "a staying host keeps its block"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(port_ranges().filter(lambda r: r[1] - r[0] >= 1024), st.sampled_from([256, 512, 1024]),
       st.integers(1, 4), st.lists(st.integers(1024, 65535), min_size=1, max_size=12,
                                   unique=True))
def test_the_switch_translates_each_hosts_connections_to_distinct_ports_of_its_block(
        port_range, size, n_hosts, sports):
    blocks = natblocks.blocks([EXTERNAL[0]], port_range, size)
    given_out = natblocks.allocate(["hv%d" % i for i in range(n_hosts)], blocks)
    used = {}
    for host, block in sorted(given_out.items()):
        nat = ServiceSpec("nat", "nat", nat_rules=(
            NatRuleInfo("s1", "nat", "snat", (EXTERNAL[0],), "", port_range=port_range),))
        sw = Host(slice_config(ALLOW_ALL, services=(nat,), snat_blocks={"s1": block}),
                  snat_zones={"s1": SNAT_ZONE})
        translated = []
        for sport in sports:
            out = sw.from_vm(A, syn(A, "198.51.100.9", sport, 443))
            assert out.get("ipv4_src") == block[0]
            translated.append(out.get("tcp_src"))
        assert all(block[1] <= p <= block[2] for p in translated), (block, translated)
        assert len(set(translated)) == len(translated), "two connections share a port"
        for p in translated:
            assert p not in used, "hosts %s and %s both use port %d" % (used.get(p), host, p)
            used[p] = host


# ------------------------------------------------------------ record encodings

u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@st.composite
def conns(draw):
    proto = draw(st.sampled_from(C.PROTOS))
    state = draw(st.sampled_from(C.TCP_STATES)) if proto == C.IPPROTO_TCP else ""
    sport, dport, rsport, rdport = draw(u16), draw(u16), draw(u16), draw(u16)
    return C.Conn(proto, draw(u32), sport, draw(u32), dport, draw(u32), rsport, draw(u32),
                  rdport, zone=draw(u16), mark=draw(u32),
                  label=draw(st.integers(0, (1 << 128) - 1)), state=state,
                  timeout=draw(st.none() | st.integers(0, 0xFFFFFFFE)))


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                max_size=12)
slices = st.builds(C.Slice, st.lists(names, max_size=4).map(tuple),
                   st.sampled_from(C.ROLES), u32)


@SETTINGS
@given(st.lists(st.tuples(conns(), slices), max_size=30))
def test_records_and_their_slices_survive_the_wire_format(records):
    conns_, owners = [c for c, _ in records], [s for _, s in records]
    data = C.encode(conns_, owners)
    assert C.decode(data) == (conns_, owners)
    parts = list(C.encode_parts(conns_, owners, size=7))
    decoded = [C.decode(p) for p in parts]
    assert [c for cs, _ in decoded for c in cs] == conns_
    assert [s for _, ss in decoded for s in ss] == owners


@SETTINGS
@given(st.lists(st.tuples(slices, conns().map(lambda c: c.key)), max_size=20))
def test_removed_connections_survive_their_json_items(keys):
    import json
    items = json.loads(json.dumps(C.encode_removed(keys)))
    assert C.decode_removed(items) == keys


@SETTINGS
@given(st.lists(conns(), max_size=20), st.sampled_from([None, False]))
def test_a_record_reads_back_from_its_conntrack_dump_line(records, stats):
    # stats None: the timeout is printed when it is known (as ``-s`` would).
    text = "\n".join(C.dump_line(c, stats) for c in records)
    got = list(C.parse_dump(text))
    want = [c if stats is None else c._replace(timeout=None) for c in records]
    assert got == want
