"""Moving a VM's connection state between two daemon cores (middlebox.vmstate):
gather in each mode, check, import, release with SNAT forwarders, and the
destination's hold buffer.  Seen from outside: frames, flows, entries."""

import copy
import dataclasses
import json

import pytest

from middlebox import cacheflows as CF
from middlebox.config import HostConfig, VmSpec
from middlebox.core import MiddleboxCore
from middlebox.vmstate import GATHER_MODES, RecordError, digest
from ryu_apps import pipeline as P
from test_mb_chain import (B1, B2, B3, C1, EXT, EXT_MAC, FW, NAT, R, SERVER, TAG, VIP,
                           VPORT, chain_cfg, checked, fields, lb)
from test_mb_frames import ACK, FIN, SYN, tcp_frame, tci

TAG2 = 9                                        # the destination's tag of the same chain
PEER = VmSpec("p1", "02:00:00:00:01:31", "10.1.0.31", "h1")


def host_cfg(host, tag, c1_host, block, gather=None):
    vms = (dataclasses.replace(C1, host=c1_host), B1, B2, B3,
           dataclasses.replace(PEER, host="h1"))
    cfg = chain_cfg([FW, lb(), NAT], block=block, vms=vms)
    options = {"migration-gather": gather} if gather else {}
    return HostConfig(host, {tag: dataclasses.replace(cfg, tag=tag, options=options)})


def source(gather=None):
    core = MiddleboxCore("h1")
    core.configure(host_cfg("h1", TAG, "h1", (EXT, 4096, 4099), gather), 0.0)
    return core


def destination(c1_host="h1"):
    core = MiddleboxCore("h2")
    core.configure(host_cfg("h2", TAG2, c1_host, (EXT, 8192, 8195)), 0.0)
    return core


FROM, TO, EXT_IN = (tci(TAG, P.STAGE_FROM_VM), tci(TAG, P.STAGE_TO_VM),
                    tci(TAG, P.STAGE_FROM_EXTERNAL))
FROM2, TO2 = tci(TAG2, P.STAGE_FROM_VM), tci(TAG2, P.STAGE_TO_VM)


def open_connections(core):
    """C1's connections: to the VIP (LB), to the internet (SNAT), and one
    INTO C1 from p1 on 8080 (allowed only because the firewall saw it start).
    Returns {kind: what identifies it} and the flows installed."""
    flows = []
    res = core.handle_frame(tcp_frame(C1.mac, R, C1.ip, VIP, 40000, VPORT, SYN, 100), FROM, 1.0)
    [(frame, _)] = res.held
    flows += res.add
    backend = fields(frame)[4]
    bmac = {B1.ip: B1.mac, B2.ip: B2.mac, B3.ip: B3.mac}[backend]
    res = core.handle_frame(tcp_frame(bmac, C1.mac, backend, C1.ip, 8080, 40000,
                                      SYN | ACK, 900, 101), TO, 1.1)
    flows += res.add
    res = core.handle_frame(tcp_frame(C1.mac, R, C1.ip, SERVER, 40001, 80, SYN, 100), FROM, 1.2)
    [(frame, _)] = res.out
    ext_port = fields(frame)[3]
    res = core.handle_frame(tcp_frame(EXT_MAC, R, SERVER, EXT, 80, ext_port, SYN | ACK,
                                      900, 101), EXT_IN, 1.3)
    flows += res.add
    res = core.handle_frame(tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, SYN,
                                      5), TO, 1.4)
    assert res.verdict == "allow"
    res = core.handle_frame(tcp_frame(C1.mac, PEER.mac, C1.ip, PEER.ip, 8080, 50000,
                                      SYN | ACK, 7, 6), FROM, 1.5)
    flows += res.add
    return {"backend": backend, "bmac": bmac, "ext_port": ext_port}, checked(flows)


def through(records):
    """Records as they arrive on the other host (JSON on the wire)."""
    return json.loads(json.dumps(records))


def installed(changes):
    """Flows without cookies (tags/ids are per host), for comparisons."""
    return sorted((f.table, f.priority, f.match, f.instructions) for f in changes.add)


def test_gathered_state_imports_into_the_destination_slice_and_keeps_working():
    src = source()
    conns, _ = open_connections(src)
    records = src.gather("c1")
    assert len(records) == 3 and {tuple(r["chain"]) for r in records} == {("fw", "lb", "nat")}
    dst = destination()
    changes, n = dst.import_vm("c1", through(records), 2.0)
    assert n == 3
    checked(changes.add)
    assert {f.cookie >> CF.TAG_SHIFT & CF.TAG_MASK for f in changes.add} == {TAG2}
    by = {c["peer_ip"]: c for c in dst.conn_list("c1")}
    assert by[VIP]["xlate"]["wire_peer"] == "%s:8080" % conns["backend"]     # same backend
    assert by[SERVER]["xlate"]["wire_vm"] == "%s:%d" % (EXT, conns["ext_port"])  # same port
    assert by[PEER.ip]["origin"] == "in" and by[PEER.ip]["offloaded"]
    # Mid-connection packets now pass at the destination, translated as before.
    res = dst.handle_frame(tcp_frame(C1.mac, R, C1.ip, VIP, 40000, VPORT, ACK, 101, 901),
                           FROM2, 3.0)
    [(frame, _)] = res.out
    assert fields(frame)[4:] == (conns["backend"], 8080)
    res = dst.handle_frame(tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK,
                                     6, 8), TO2, 3.1)
    assert res.verdict == "allow"
    # Without the state the same packet is not part of any connection.
    fresh = destination(c1_host="h2")
    res = fresh.handle_frame(tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK,
                                       6, 8), TO2, 3.1)
    assert res.verdict == "invalid"


def test_a_snat_port_from_the_source_block_lands_at_the_destination():
    src = source()
    conns, _ = open_connections(src)
    dst = destination()
    changes, _ = dst.import_vm("c1", through(src.gather("c1")), 2.0)
    port = conns["ext_port"]
    catcher = [f for f in changes.add if f.table == P.TO_VM_STEERING.table_id
               and dict(f.match).get("tcp_dst") == port]
    landing = [f for f in changes.add if f.table == P.TO_VM_CACHE.table_id
               and dict(f.match).get("tcp_dst") == port]
    assert len(catcher) == 1 and len(landing) == 1
    assert ("set_field", "ipv4_dst", C1.ip) in landing[0].instructions[0][1]
    # A reply the source forwarded (to C1's MAC, untranslated) is translated here.
    res = dst.handle_frame(tcp_frame(R, C1.mac, SERVER, EXT, 80, port, FIN | ACK, 950, 150),
                           TO2, 3.0)
    [(frame, _)] = res.out
    assert fields(frame) == (R, C1.mac, SERVER, 80, C1.ip, 40001)
    assert 4096 <= port <= 4099     # the source's block, not the destination's


def test_release_keeps_the_snat_port_behind_a_forwarder_until_it_idles_out():
    src = source()
    conns, _ = open_connections(src)
    port = conns["ext_port"]
    changes = src.release_vm("c1")
    [fwd] = checked(changes.add)
    assert fwd.table == P.EXTERNAL_CACHE.table_id
    assert ("set_field", "eth_dst", C1.mac) in fwd.instructions[0][1]
    assert ("set_field", P.REG_FROM_TUNNEL, 0) in fwd.instructions[0][1]
    assert fwd.instructions[1] == ("goto", P.L2_LOOKUP.table_id)
    assert src.conn_list("c1") == []
    # The port stays taken: new connections get the other three, then none.
    got = set()
    for sport in range(41000, 41004):
        res = src.handle_frame(tcp_frame(B1.mac, R, B1.ip, SERVER, sport, 80, SYN, 1),
                               FROM, 5.0)
        if res.out:
            got.add(fields(res.out[0][0])[3])
    assert port not in got and len(got) == 3
    # A FIN from outside reaches the daemon (flags flow): on to the VM, as is.
    res = src.handle_frame(tcp_frame(EXT_MAC, R, SERVER, EXT, 80, port, FIN | ACK, 9, 9),
                           EXT_IN, 5.1)
    [(frame, out_tci)] = res.out
    assert out_tci >> 13 == P.STAGE_FROM_VM
    assert fields(frame) == (R, C1.mac, SERVER, 80, EXT, port)
    # The stats poll leaves the forwarder alone; its removal frees the port.
    assert src.flow_stats([(fwd, 3, 300)], 6.0) == []
    src.flow_removed(fwd.cookie, 3, 300, 7.0, table_id=fwd.table)
    res = src.handle_frame(tcp_frame(B1.mac, R, B1.ip, SERVER, 41010, 80, SYN, 1), FROM, 8.0)
    assert fields(res.out[0][0])[3] == port


def test_moving_back_home_replaces_stale_state_and_drops_the_forwarder():
    src = source()
    open_connections(src)
    records = through(src.gather("c1"))
    dst = destination()
    dst.import_vm("c1", records, 2.0)
    src.release_vm("c1")
    assert len(src.forwarders()) == 1
    back = through(dst.gather("c1"))
    snat = next(r for r in back if r["xlate"] and r["xlate"][0] == "snat")
    assert snat["home"] == "h1"
    changes, n = src.import_vm("c1", back, 9.0)
    assert n == 3 and src.forwarders() == []
    assert any(f.table == P.EXTERNAL_CACHE.table_id for f in changes.delete)
    # Home again: the reply path is EXTERNAL_CACHE, not a landing flow.
    assert not any(f.table == P.TO_VM_CACHE.table_id and dict(f.match).get("tcp_src") == 80
                   for f in changes.add)


@pytest.mark.parametrize("mode", GATHER_MODES)
def test_every_gather_mode_gives_the_destination_the_same_flows(mode):
    src = source(gather=mode)
    _, flows = open_connections(src)
    assert src.gather_mode("c1") == mode
    dump = [(f, 10, 1000) for f in flows]
    reference = installed(destination().import_vm("c1", through(src.gather("c1")), 2.0)[0])
    records = src.gather("c1", mode, dump)
    dst = destination()
    changes, n = dst.import_vm("c1", through(records), 2.0)
    assert n == 3
    assert installed(changes) == reference
    if mode != "service":
        # Counters from the datapath are newer than the service's last poll.
        assert sum(r["counts"][0] + r["counts"][2] for r in records) >= 10


def test_datapath_review_drops_connections_the_service_closed():
    src = source(gather="datapath+review")
    _, flows = open_connections(src)
    src.handle_frame(tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, FIN | ACK,
                               6, 8), TO, 2.0)
    src.handle_frame(tcp_frame(C1.mac, PEER.mac, C1.ip, PEER.ip, 8080, 50000, FIN | ACK,
                               8, 7), FROM, 2.1)
    dump = [(f, 1, 100) for f in flows]
    ports = {r["conn"][4] for r in src.gather("c1", "datapath+review", dump)}
    assert 50000 not in ports
    assert 50000 in {r["conn"][4] for r in src.gather("c1", "datapath", dump)}


@pytest.mark.parametrize("change, why", [
    (lambda rs: rs[0].update(vm="b1"), "is for VM"),
    (lambda rs: rs[0].update(chain=["other"]), "is not a slice"),
    (lambda rs: rs[0]["conn"].__setitem__(1, "10.1.0.99"), "is not c1's"),
    (lambda rs: rs[0].update(verdict="maybe"), "bad origin or verdict"),
    (lambda rs: rs[0].update(counts=[1, 2]), "bad counters"),
    (lambda rs: rs.append(copy.deepcopy(rs[0])), "listed twice"),
    (lambda rs: rs[0].pop("state"), "malformed"),
])
def test_a_bad_record_refuses_the_whole_transfer(change, why):
    src = source()
    open_connections(src)
    records = through(src.gather("c1"))
    records.sort(key=lambda r: r["xlate"] is None)     # a translated one first
    change(records)
    dst = destination()
    before = dst.conn_list()
    with pytest.raises(RecordError, match=why):
        dst.import_vm("c1", records, 2.0)
    assert dst.conn_list() == before and dst.stats()["entries"] == 0


def test_a_translation_for_another_vms_mac_is_refused():
    src = source()
    open_connections(src)
    records = through(src.gather("c1"))
    rec = next(r for r in records if r["xlate"])
    rec["xlate"][5] = B1.mac
    with pytest.raises(RecordError, match="bad translation"):
        destination().import_vm("c1", records, 2.0)


def test_digest_depends_on_content_not_order():
    src = source()
    open_connections(src)
    records = src.gather("c1")
    assert digest(records) == digest(list(reversed(through(records))))
    changed = through(records)
    changed[0]["counts"][0] += 1
    assert digest(changed) != digest(records)


def test_an_arriving_vms_stray_packets_wait_for_its_state():
    src = source()
    open_connections(src)
    dst = destination(c1_host=None)        # c1 is not bound to h2 yet
    ack = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK, 6, 8)
    res = dst.handle_frame(ack, TO2, 3.0)
    assert res.verdict == "held" and res.out == []
    syn = tcp_frame(C1.mac, R, C1.ip, "10.1.0.22", 40500, 8080, SYN, 1)
    assert dst.handle_frame(syn, FROM2, 3.0).verdict == "allow"      # new: judged
    dst.import_vm("c1", through(src.gather("c1")), 3.1)
    results, held = dst.release_held("c1", 3.2, landed=True)
    assert held == 1 and [r.verdict for r in results] == ["allow"]
    assert results[0].out[0][0] == ack


def test_without_state_the_hold_ends_by_the_rules_at_its_deadline():
    dst = destination(c1_host=None)
    dst.expect_vm("c1", 1.0, 4.0)
    ack = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK, 6, 8)
    assert dst.handle_frame(ack, TO2, 2.0).verdict == "held"
    assert dst.holds_due(3.9) == [] and dst.holds_due(4.0) == ["c1"]
    results, held = dst.release_held("c1", 4.0, landed=False)
    assert held == 1 and [r.verdict for r in results] == ["invalid"]
    # Over: later stray packets are judged at once.
    assert dst.handle_frame(ack, TO2, 4.1).verdict == "invalid"


def test_the_hold_buffer_is_bounded():
    from middlebox import vmstate
    dst = destination(c1_host=None)
    ack = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK, 6, 8)
    verdicts = [dst.handle_frame(ack, TO2, 2.0).verdict
                for _ in range(vmstate.HOLD_MAX_FRAMES + 5)]
    assert verdicts.count("held") == vmstate.HOLD_MAX_FRAMES
    assert verdicts[-1] == "invalid" and dst.stats()["hold_dropped"] == 5


def test_a_local_vm_is_never_held():
    dst = destination(c1_host="h2")
    ack = tcp_frame(PEER.mac, C1.mac, PEER.ip, C1.ip, 50000, 8080, ACK, 6, 8)
    assert dst.handle_frame(ack, TO2, 2.0).verdict == "invalid"


def test_a_restarted_daemon_keeps_its_forwarders():
    src = source()
    conns, _ = open_connections(src)
    [fwd] = src.release_vm("c1").add
    state = json.loads(json.dumps(src.export_state()))
    again = source()
    changes = again.import_state(state, [fwd], 10.0)
    assert changes.delete == [] and len(again.forwarders()) == 1
    # Still forwarding FINs, and the port still taken until the flow goes.
    res = again.handle_frame(tcp_frame(EXT_MAC, R, SERVER, EXT, 80, conns["ext_port"],
                                       FIN | ACK, 9, 9), EXT_IN, 11.0)
    assert res.out and fields(res.out[0][0])[1] == C1.mac
    assert again.flow_stats([(fwd, 5, 500)], 12.0) == []
    # Without its flow in the datapath it is gone.
    assert source().import_state(state, [], 10.0).delete == []


def test_gc_paused_keeps_collecting_cycles():
    """After a pause the collector runs again, nothing stays frozen, and a
    reference cycle dropped meanwhile is still collected."""
    import gc
    import weakref

    from middlebox.gcpause import gc_paused

    class Node:
        pass

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None


def test_digest_is_the_protocols():
    """Protocol 2's digest: sha256 of the compact JSON array of the records'
    fields (RECORD_FIELDS order), sorted by slice and connection."""
    import hashlib

    from middlebox.vmstate import RECORD_FIELDS
    src = source()
    open_connections(src)
    records = through(src.gather("c1"))
    rows = sorted(([r[f] for f in RECORD_FIELDS] for r in records),
                  key=lambda row: (row[0], row[3]))
    body = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    assert digest(list(reversed(records))) == hashlib.sha256(body.encode()).hexdigest()
