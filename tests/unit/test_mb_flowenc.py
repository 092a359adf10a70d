"""The fast FLOW_MOD encoder (``ryu_apps.ofmsg.FlowModEncoder``) against
os-ken: for every kind of flow the daemon installs (middlebox/cacheflows.py:
plain allow/deny cache flows of TCP, UDP and port-less protocols, the
translated flows of load-balanced, SNAT (home and away) and DNAT
connections, reply catchers, SNAT forwarders) and every controller flow of
the test topologies, the bytes are exactly those of ``to_flow_mod`` +
``serialize`` with the same command, flags and xid."""

import dataclasses
import os
import sys

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import cacheflows as CF  # noqa: E402
from middlebox.conntrack import ConnEntry, ConnKey, Timeouts, Xlate  # noqa: E402
from middlebox.packet import ip_int  # noqa: E402
from ryu_apps import ofmsg  # noqa: E402
from ryu_apps import pipeline as P  # noqa: E402
from ryu_apps.flows import compute_host_flows  # noqa: E402
from ryu_apps.ofmodel import Flow, canon_match  # noqa: E402
from topologies import two_tenants  # noqa: E402

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
VM_IP, PEER_IP, VIP = ip_int("10.9.0.10"), ip_int("10.9.0.20"), ip_int("10.9.0.100")
BACKEND, EXT, SERVER = ip_int("10.9.0.31"), ip_int("203.0.113.100"), ip_int("198.51.100.10")
VM_MAC, BACKEND_MAC = "02:00:00:09:00:0a", "02:00:00:09:00:1F"


def entry(proto, vm_port, peer_ip, peer_port, verdict="allow", xlate=None, entry_id=77):
    e = ConnEntry(ConnKey(proto, VM_IP, vm_port, peer_ip, peer_port), "out", verdict, 1.0,
                  Timeouts(), entry_id, "r", "mv", 7)
    e.xlate = xlate
    return e


def cache_kinds():
    """(name, Flow) of every kind of flow cacheflows makes."""
    out = []
    for proto in (6, 17, 1, 47):
        for verdict in ("allow", "deny"):
            e = entry(proto, 40000 if proto in (6, 17) else 0, PEER_IP,
                      7000 if proto in (6, 17) else 0, verdict)
            for i, f in enumerate(CF.entry_flows(7, e, 300)):
                out.append(("plain-%d-%s-%d" % (proto, verdict, i), f))
    for proto in (6, 17):
        xlates = {
            "lb": Xlate("lb", VM_IP, 40001, BACKEND, 8080, VM_MAC, BACKEND_MAC, "vip-key"),
            "snat": Xlate("snat", EXT, 61234, SERVER, 80, VM_MAC, "", "snat-1"),
            "snat-away": Xlate("snat", EXT, 61235, SERVER, 80, VM_MAC, "", "snat-1", "h2"),
            "dnat": Xlate("dnat", EXT, 443, PEER_IP, 5555, VM_MAC, "", "dnat-1")}
        for kind, x in xlates.items():
            peer = {"lb": (VIP, 80), "snat": (SERVER, 80), "snat-away": (SERVER, 80),
                    "dnat": (PEER_IP, 5555)}[kind]
            e = entry(proto, 40001 if kind != "dnat" else 443, peer[0], peer[1], xlate=x)
            for i, f in enumerate(CF.entry_flows(7, e, 3600)):
                out.append(("%s-%d-%d" % (kind, proto, i), f))
            catcher = CF.catcher_flow(7, e, 900, 3600)
            if catcher is not None:
                out.append(("%s-%d-catcher" % (kind, proto), catcher))
        out.append(("forwarder-%d" % proto, CF.forwarder_flow(
            7, 99, proto, SERVER, 80, EXT, 61236, VM_MAC, 3600)))
    out.append(("timeout-0", CF.cache_flow(4095, P.STAGE_TO_VM, CF.MAX_ENTRY_ID, 6, VM_IP,
                                           PEER_IP, 65535, 0, "allow", 0)))
    return out


def controller_flows():
    flows = sorted({f for h in ("h1", "h2", "h3", "h9")
                    for f in compute_host_flows(two_tenants(), h)}, key=repr)
    vlan = Flow(30, 10, canon_match(in_port=4, eth_dst=("01:00:00:00:00:00",
                                                        "01:00:00:00:00:00")),
                (("apply", (("push_vlan", 0x8100), ("set_field", "vlan_vid", 0x1000 | 7),
                            ("output", 9), ("pop_vlan",), ("output", 10))),),
                cookie=P.COOKIE | 3, idle_timeout=60, hard_timeout=600)
    return [("controller-%d" % i, f) for i, f in enumerate(flows)] + [("vlan", vlan)]


def oskken_bytes(flow, command, flags, xid):
    msg = ofmsg.to_flow_mod(DP, flow, command)
    msg.flags = flags
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


KINDS = cache_kinds()


def test_cache_flow_matches_are_canonical():
    """cacheflows builds its matches directly: they must be what canon_match
    makes of the same fields (a flow read back from the switch compares
    equal to the one installed)."""
    for name, f in KINDS:
        assert f.match == canon_match(**dict(f.match)), name


def test_every_cache_flow_kind_is_covered():
    names = {n.split("-")[0] for n, _ in KINDS}
    assert names == {"plain", "lb", "snat", "dnat", "forwarder", "timeout"}
    # Every table the daemon writes to, and both cache-flow priorities.
    assert {f.table for _, f in KINDS} >= {t.table_id for t in P.CACHE_TABLES.values()} | {
        P.TO_VM_STEERING.table_id, P.FROM_VM_STEERING.table_id}
    assert any(a == ("set_field", "in_port", 0) for _, f in KINDS
               for inst in f.instructions if inst[0] == "apply" for a in inst[1])


@pytest.mark.parametrize("name,flow", KINDS + controller_flows(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_fast_encoding_is_byte_identical_to_os_ken(name, flow):
    enc = ofmsg.FlowModEncoder()
    for command, flags, xid in (("add", ofp.OFPFF_SEND_FLOW_REM, 1),
                                ("add", 0, 0xFFFFFFFF),
                                ("modify_strict", 0, 12345),
                                ("delete_strict", 0, 99)):
        want = oskken_bytes(flow, command, flags, xid)
        assert enc.encode(flow, command, flags, xid) == want, (name, command)
        # Twice: the second time from the cached plan and instructions.
        assert enc.encode(flow, command, flags, xid) == want, (name, command)
    bare = dataclasses.replace(flow, instructions=())
    assert enc.encode(flow, "delete_strict", 0, 5, bare=True) \
        == oskken_bytes(bare, "delete_strict", 0, 5)
    assert enc.fallbacks == 0, "%s went through os-ken" % name


def test_values_change_within_one_shape():
    """One plan serves flows of the same shape with other values."""
    enc = ofmsg.FlowModEncoder()
    for i in range(50):
        x = Xlate("snat", EXT + i, 1024 + 997 * i, SERVER, 80 + i, VM_MAC, "", "snat-1")
        e = entry(6, 30000 + i, SERVER, 80 + i, xlate=x, entry_id=i)
        for f in CF.entry_flows(i % 4096, e, i * 13):
            assert enc.encode(f, "add", 1, i) == oskken_bytes(f, "add", 1, i)
    assert enc.fallbacks == 0


def test_what_the_fast_path_cannot_take_goes_through_os_ken():
    enc = ofmsg.FlowModEncoder()
    # A masked address is packed, an IPv6 one is not (no cache flow has one).
    masked = Flow(P.FROM_VM_CACHE.table_id, 100,
                  (("eth_type", 0x800), ("ipv4_src", ("10.1.0.0", "255.255.0.0"))), ())
    assert enc.encode(masked, "add", 1, 3) == oskken_bytes(masked, "add", 1, 3)
    assert enc.fallbacks == 0
    v6 = Flow(P.FROM_VM_CACHE.table_id, 100, (("eth_type", 0x86dd), ("ipv6_src", "fe80::1")),
              (("goto", P.L2_LOOKUP.table_id),))
    assert enc.encode(v6, "add", 1, 4) == oskken_bytes(v6, "add", 1, 4)
    assert enc.fallbacks == 1
    # A non-canonical address is not packed as the fast path would read it:
    # os-ken gets it, and refuses it as it always did.
    odd = Flow(P.FROM_VM_CACHE.table_id, 100, (("eth_type", 0x800), ("ipv4_src", "10.1.1.01")),
               (("goto", P.L2_LOOKUP.table_id),), cookie=1)
    with pytest.raises(Exception) as refused:
        oskken_bytes(odd, "add", 1, 3)
    with pytest.raises(type(refused.value)):
        enc.encode(odd, "add", 1, 3)
    assert enc.fallbacks == 2


def test_rewrite_values_unique_to_each_flow():
    """Translated flows whose rewrite values are all different (as SNAT's
    are: one external port per connection) are byte-identical too, and none
    goes through os-ken however many there are."""
    enc = ofmsg.FlowModEncoder()
    kinds = ("lb", "snat", "dnat")
    for i in range(3000):
        kind = kinds[i % 3]
        x = Xlate(kind, EXT + i, (7 * i) % 65536, BACKEND + i, (13 * i) % 65536,
                  "02:00:00:%02X:%02x:0A" % (i % 256, i // 256),
                  "02:00:00:09:%02X:1f" % (i % 256), "svc", "h2" if i % 6 == 1 else None)
        e = entry(6 if i % 2 else 17, i % 65536, SERVER + i, (3 * i) % 65536, xlate=x,
                  entry_id=i)
        flows = list(CF.entry_flows(i % 4096, e, i))
        catcher = CF.catcher_flow(i % 4096, e, i, i)
        if catcher is not None:
            flows.append(catcher)
        flows.append(CF.forwarder_flow(i % 4096, i, 6, SERVER + i, i % 65536, EXT, i % 65536,
                                       "02:00:00:09:%02X:1F" % (i % 256), i))
        for f in flows:
            assert enc.encode(f, "add", 1, i) == oskken_bytes(f, "add", 1, i), (i, f)
    assert enc.fallbacks == 0


def test_unusual_rewrites_go_through_os_ken():
    """A rewrite the compiled path cannot take (a masked or boolean value, an
    action without its value) is os-ken's: same bytes, or the same refusal."""
    enc = ofmsg.FlowModEncoder()
    match = (("eth_type", 0x800), ("ip_proto", 6))
    odd = [(("apply", (("set_field", "tcp_src", True),)), ("goto", 41)),
           (("apply", (("set_field", "ipv4_src", ("10.0.0.1", "255.0.0.0")),)),),
           (("apply", (("set_field", "ipv4_src"),)),),
           (("apply", (("set_field", "ipv4_src", "10.0.0.01"),)),),
           (("apply", (("set_field", "tcp_src", 70000),)),)]
    for n, inst in enumerate(odd):
        f = Flow(P.FROM_VM_CACHE.table_id, 100, match, inst, cookie=n)
        try:
            want = oskken_bytes(f, "add", 1, n)
        except Exception as err:                # noqa: BLE001 - os-ken's refusal
            with pytest.raises(type(err)):
                enc.encode(f, "add", 1, n)
        else:
            assert enc.encode(f, "add", 1, n) == want, inst
        assert enc.fallbacks == n + 1, inst
    # The usual shape again, after those: the compiled path.
    f = Flow(P.FROM_VM_CACHE.table_id, 100, match,
             (("apply", (("set_field", "tcp_src", 5),)), ("goto", 41)))
    assert enc.encode(f, "add", 1, 9) == oskken_bytes(f, "add", 1, 9)
    assert enc.fallbacks == len(odd)
