"""The flow-table simulator itself: OpenFlow lookups, groups, conjunctions,
Nicira actions and the conntrack model the service-stage tests rely on."""

import pytest

from fakeoftable import (CT_DNAT, CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_SNAT, CT_TRK,
                         TCP_ACK, TCP_RST, TCP_SYN, FakeOFTable, FlowRejected, icmp_echo,
                         icmp_error, reply_to, tcp, udp)
from ryu_apps.ofmodel import Flow, Group, canon_match

IP = 0x0800
CLIENT, SERVER, PUBLIC = "10.0.0.5", "198.51.100.9", "203.0.113.1"


def flow(table, prio, insts, **match):
    return Flow(table, prio, canon_match(**match), tuple(insts))


def apply(*actions):
    return ("apply", tuple(actions))


def ct(commit=False, zone=1, table=None, nat=None, exec_=()):
    return ("ct", commit, zone, table, nat, tuple(exec_))


def state_recorder(table=1, port=9):
    """A flow in ``table`` that outputs everything it gets: the tests read
    the recirculated packet at that point from the trace."""
    return flow(table, 0, [apply(("output", port))])


def firewall(nat_action=None, zone=1):
    """Table 0: ct(nat) in ``zone``, recirculate to 1; table 1: commit what is
    new (with ``nat_action``), pass est/rel, drop the rest (e.g. +inv)."""
    return FakeOFTable([
        flow(0, 10, [apply(ct(False, zone, 1, ("nat",)))], eth_type=IP),
        flow(1, 30, [apply(ct(True, zone, 2, nat_action, (("set_field", "ct_mark", 7),)))],
             eth_type=IP, ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW)),
        flow(1, 20, [("goto", 2)], ct_state=(CT_TRK | CT_EST, CT_TRK | CT_EST)),
        flow(1, 20 - 1, [("goto", 2)], ct_state=(CT_TRK | CT_REL, CT_TRK | CT_REL)),
        flow(2, 0, [apply(("output", 2))]),
    ])


def states(table, packet):
    """ct_state of the packet each time it entered table 1."""
    return [s.get("ct_state") for s in table.trace(packet).at(1)]


# ------------------------------------------------------------ OpenFlow basics

def test_highest_priority_wins_and_a_miss_drops():
    t = FakeOFTable([flow(0, 1, [apply(("output", 1))]),
                     flow(0, 5, [apply(("output", 5))], eth_type=IP)])
    assert t.output_ports({"eth_type": IP}) == [5]
    assert t.output_ports({"eth_type": 0x0806}) == [1]
    assert FakeOFTable([]).lookup({"eth_type": IP}) == []


def test_lookup_can_start_in_any_table_and_the_trace_says_where_it_went():
    t = FakeOFTable([flow(3, 0, [("goto", 7)]), flow(0, 0, [apply(("output", 1))])])
    trace = t.trace({"eth_type": IP}, table=3)
    assert trace.tables() == [3, 7] and trace.reached(7) and not trace.reached(0)
    assert trace.outputs == []


def test_a_flow_ovs_would_refuse_is_refused_unless_not_strict():
    no_eth_type = flow(0, 1, [apply(ct())])
    with pytest.raises(FlowRejected, match="eth_type"):
        FakeOFTable([no_eth_type])
    with pytest.raises(FlowRejected, match="group"):
        FakeOFTable([flow(0, 1, [apply(("group", 9))])])
    with pytest.raises(FlowRejected, match="prerequisite|eth_type"):
        FakeOFTable([flow(0, 1, [], ipv4_dst="10.0.0.1")])
    with pytest.raises(FlowRejected, match="conjunction"):
        FakeOFTable([flow(0, 1, [apply(("conjunction", 1, 1, 2), ("output", 1))])])
    t = FakeOFTable([no_eth_type], strict=False)
    assert [f for f, _ in t.rejected] == [no_eth_type]


def test_load_move_and_resubmit_to_an_earlier_table():
    t = FakeOFTable([
        flow(0, 1, [apply(("load", "reg3", 0xAB, 8, 8), ("move", "reg3", 8, "reg9", 0, 8)),
                    ("goto", 5)]),
        flow(5, 1, [apply(("resubmit", 2), ("output", 1))]),
        flow(2, 1, [apply(("load", "eth_dst", 0x42, 0, 8), ("output", 2))], reg9=0xAB),
    ])
    outs = t.lookup({"eth_dst": "02:00:00:00:00:00"})
    assert [o.port for o in outs] == [2, 1]
    assert outs[0].get("eth_dst") == "02:00:00:00:00:42"


def test_resubmit_loops_are_bounded():
    t = FakeOFTable([flow(0, 1, [apply(("resubmit", 0))])])
    with pytest.raises(AssertionError, match="too deep"):
        t.lookup({})


def test_conjunction_matches_only_when_every_clause_does():
    t = FakeOFTable([
        flow(0, 10, [apply(("conjunction", 7, 1, 2))], eth_type=IP, ipv4_src="10.0.0.1"),
        flow(0, 10, [apply(("conjunction", 7, 1, 2))], eth_type=IP, ipv4_src="10.0.0.2"),
        flow(0, 10, [apply(("conjunction", 7, 2, 2))], eth_type=IP, ip_proto=6, tcp_dst=80),
        flow(0, 10, [apply(("output", 1))], conj_id=7),
        flow(0, 1, [apply(("output", 2))]),
    ])
    assert t.output_ports(tcp("10.0.0.2", SERVER, 999, 80)) == [1]
    assert t.output_ports(tcp("10.0.0.3", SERVER, 999, 80)) == [2]
    assert t.output_ports(tcp("10.0.0.1", SERVER, 999, 81)) == [2]


def test_select_group_hashes_the_five_tuple_and_a_test_can_force_a_bucket():
    buckets = tuple((1, (("set_field", "reg1", i), ("output", 10 + i))) for i in range(4))
    t = FakeOFTable([flow(0, 1, [apply(("group", 1), ("output", 99))])],
                    groups=[Group(1, "select", buckets)])
    pkt = tcp(CLIENT, SERVER, 1000, 80)
    first = t.output_ports(pkt)
    assert len(first) == 2 and 99 in first and t.output_ports(pkt) == first
    assert len({tuple(t.output_ports(tcp(CLIENT, SERVER, p, 80))) for p in range(1000, 1040)}) > 1
    t.force_bucket(1, 3)
    assert t.output_ports(pkt) == [13, 99]


def test_an_all_group_runs_every_bucket_on_a_copy():
    buckets = ((0, (("set_field", "eth_dst", "02:00:00:00:00:01"), ("output", 1))),
               (0, (("output", 2),)))
    t = FakeOFTable([flow(0, 1, [apply(("group", 5), ("output", 3))])],
                    groups=[Group(5, "all", buckets)])
    outs = {o.port: o.get("eth_dst") for o in t.lookup({"eth_dst": "02:00:00:00:00:09"})}
    assert outs == {1: "02:00:00:00:00:01", 2: "02:00:00:00:00:09", 3: "02:00:00:00:00:09"}


# ------------------------------------------------------------ conntrack

def test_a_tcp_connection_goes_new_established_reply_and_only_a_commit_remembers_it():
    t = firewall()
    syn = tcp(CLIENT, SERVER, 40000, 80)
    lone = FakeOFTable([flow(0, 1, [apply(ct(False, 1, 1))], eth_type=IP), state_recorder()])
    assert states(lone, syn) == [CT_TRK | CT_NEW] and lone.conntrack.dump() == []
    assert states(t, syn) == [CT_TRK | CT_NEW]
    assert states(t, syn) == [CT_TRK | CT_NEW]          # retransmitted before any reply
    assert states(t, reply_to(syn)) == [CT_TRK | CT_EST | CT_RPL]
    assert states(t, tcp(CLIENT, SERVER, 40000, 80, TCP_ACK)) == [CT_TRK | CT_EST]
    [entry] = t.conntrack.dump(1)
    assert entry.orig == (CLIENT, 40000, SERVER, 80) and entry.mark == 7


def test_what_tcp_cannot_open_with_is_new_or_invalid_as_in_ovs():
    t = firewall()
    # A plain ACK with no entry is +new (OVS picks up mid-stream connections).
    assert states(t, tcp(CLIENT, SERVER, 1, 80, TCP_ACK)) == [CT_TRK | CT_NEW]
    assert states(t, tcp(CLIENT, SERVER, 2, 80, TCP_SYN | TCP_ACK)) == [CT_TRK | CT_INV]
    assert states(t, tcp(CLIENT, SERVER, 3, 80, 0)) == [CT_TRK | CT_INV]
    assert states(t, icmp_echo(SERVER, CLIENT, reply=True)) == [CT_TRK | CT_INV]


def test_after_a_reset_a_new_syn_opens_the_connection_again():
    t = firewall()
    syn = tcp(CLIENT, SERVER, 40000, 80)
    t.lookup(syn)
    t.lookup(reply_to(syn))
    assert states(t, tcp(CLIENT, SERVER, 40000, 80, TCP_RST | TCP_ACK)) == [CT_TRK | CT_EST]
    assert states(t, syn) == [CT_TRK | CT_NEW]


def test_zones_are_separate():
    t = FakeOFTable([
        flow(0, 1, [apply(ct(True, "reg5", 1))], eth_type=IP),
        state_recorder(),
    ])
    t.lookup(udp(CLIENT, SERVER, 5, 53, reg5=0x10001))       # zone = low 16 bits: 1
    assert [e.zone for e in t.conntrack.dump()] == [1]
    assert states(t, udp(CLIENT, SERVER, 5, 53, reg5=1)) == [CT_TRK | CT_EST]
    assert states(t, udp(CLIENT, SERVER, 5, 53, reg5=2)) == [CT_TRK | CT_NEW]


def test_snat_takes_the_first_free_port_and_translates_the_reply_back():
    t = firewall(("nat", "src", PUBLIC, PUBLIC, 2000, 2001))
    first = t.lookup(udp(CLIENT, SERVER, 5000, 53))
    other = t.lookup(udp("10.0.0.6", SERVER, 5000, 53))
    assert [(o.get("ipv4_src"), o.get("udp_src")) for o in first + other] == \
        [(PUBLIC, 2000), (PUBLIC, 2001)]
    # No port left: OVS commits nothing and the packet stays +new, untranslated.
    full = t.trace(udp("10.0.0.7", SERVER, 5000, 53))
    assert full.at(2)[0]["ct_state"] == CT_TRK | CT_NEW
    assert full.outputs[0].get("ipv4_src") == "10.0.0.7" and len(t.conntrack.dump()) == 2
    trace = t.trace(udp(SERVER, PUBLIC, 53, 2001))
    [back] = trace.outputs
    assert (back.get("ipv4_dst"), back.get("udp_dst")) == ("10.0.0.6", 5000)
    assert trace.at(1)[0]["ct_state"] == CT_TRK | CT_EST | CT_RPL | CT_DNAT


def test_dnat_translates_later_packets_only_with_the_nat_option():
    t = firewall(("nat", "dst", "10.0.0.9", "10.0.0.9", 8080, 8080))
    syn = tcp(CLIENT, "10.0.0.100", 40000, 80)
    [out] = t.lookup(syn)
    assert (out.get("ipv4_dst"), out.get("tcp_dst")) == ("10.0.0.9", 8080)
    ack = tcp(CLIENT, "10.0.0.100", 40000, 80, TCP_ACK)
    trace = t.trace(ack)
    assert trace.outputs[0].get("ipv4_dst") == "10.0.0.9"
    assert trace.at(1)[0]["ct_state"] == CT_TRK | CT_EST | CT_DNAT
    [back] = t.lookup(tcp("10.0.0.9", CLIENT, 8080, 40000, TCP_SYN | TCP_ACK))
    assert (back.get("ipv4_src"), back.get("tcp_src")) == ("10.0.0.100", 80)
    plain = FakeOFTable([flow(0, 1, [apply(ct(False, 1, 1))], eth_type=IP), state_recorder()],
                        conntrack=t.conntrack)
    [untranslated] = plain.lookup(ack)
    assert untranslated.get("ipv4_dst") == "10.0.0.100"


def test_an_icmp_error_is_related_and_translated_like_its_entry():
    t = firewall(("nat", "src", PUBLIC, PUBLIC, 2000, 2000))
    sent = udp(CLIENT, SERVER, 5000, 53)
    [out] = t.lookup(sent)
    error = icmp_error(dict(out.fields), "192.0.2.1", PUBLIC)
    trace = t.trace(error)
    [back] = trace.outputs
    assert trace.at(1)[0]["ct_state"] & ~(CT_SNAT | CT_DNAT) == CT_TRK | CT_REL | CT_RPL
    assert back.get("ipv4_dst") == CLIENT and back.get("ipv4_src") == "192.0.2.1"
    quoted = dict(back.get("icmpv4_quote"))
    assert (quoted["ipv4_src"], quoted["udp_src"]) == (CLIENT, 5000)
    stray = icmp_error(udp(PUBLIC, SERVER, 2999, 53), "192.0.2.1", PUBLIC)
    assert t.lookup(stray) == []                            # quotes no entry: +inv


def test_icmp_echo_is_a_connection_by_its_id():
    t = firewall(("nat", "src", PUBLIC, PUBLIC, 2000, 2010))
    [out] = t.lookup(icmp_echo(CLIENT, SERVER, ident=77))
    assert out.get("ipv4_src") == PUBLIC and out.get("icmp_id") == 77   # ICMP keeps its id
    [back] = t.lookup(icmp_echo(SERVER, PUBLIC, ident=77, reply=True))
    assert back.get("ipv4_dst") == CLIENT
    assert t.lookup(icmp_echo(SERVER, PUBLIC, ident=78, reply=True)) == []


def test_recirculation_keeps_registers_and_the_original_goes_on_untracked():
    t = FakeOFTable([
        flow(0, 1, [apply(("load", "reg7", 3, 0, 32), ct(False, 1, 4), ("resubmit", 2))],
             eth_type=IP),
        flow(2, 1, [apply(("output", 20))], ct_state=0),           # untracked
        flow(4, 1, [apply(("output", 40))], reg7=3, ct_state=(CT_TRK, CT_TRK)),
    ])
    assert t.output_ports(udp(CLIENT, SERVER, 1, 2)) == [20, 40]


def test_ct_without_a_table_goes_on_with_its_nat_but_untracked():
    t = FakeOFTable([
        flow(0, 1, [apply(ct(True, 1, None, ("nat", "src", PUBLIC, PUBLIC, None, None))),
                    ("goto", 1)], eth_type=IP),
        flow(1, 5, [apply(("output", 5))], ct_state=(CT_TRK, CT_TRK)),
        flow(1, 1, [apply(("output", 1))]),
    ])
    [out] = t.lookup(udp(CLIENT, SERVER, 1, 2))
    assert out.port == 1 and out.get("ipv4_src") == PUBLIC


def test_ct_needs_an_ipv4_packet():
    # (A flow's own ct needs eth_type=IPv4 in its match; a group's bucket
    # is where a non-IPv4 packet can reach one.)
    t = FakeOFTable([flow(0, 1, [apply(("group", 1))])],
                    groups=[Group(1, "indirect", ((0, (ct(),)),))])
    with pytest.raises(AssertionError, match="IPv4"):
        t.lookup({"eth_type": 0x86DD})


def test_recommitting_only_updates_mark_and_label_and_a_natted_packet_finds_its_entry():
    counting = (("load", "ct_mark", 1, 16, 8), ("move", "reg8", 0, "ct_label", 32, 32))
    t = FakeOFTable([
        flow(0, 1, [apply(ct(False, 1, 1, ("nat",)))], eth_type=IP),
        flow(1, 1, [apply(("load", "reg8", 0xBEEF, 0, 32), ct(True, 1, 2, None, counting))],
             eth_type=IP),
        state_recorder(table=2),
    ], conntrack=None)
    t.conntrack.commit_entry(1, 6, CLIENT, 40000, "10.0.0.100", 80,
                             nat=("dst", "10.0.0.9", 8080), mark=5)
    trace = t.trace(tcp(CLIENT, "10.0.0.100", 40000, 80, TCP_ACK))
    [entry] = t.conntrack.dump(1)                 # no second entry for the translated tuple
    assert entry.mark == 5 | 1 << 16 and entry.label == 0xBEEF << 32
    assert trace.at(2)[0]["ct_mark"] == entry.mark
    assert trace.outputs[0].get("ipv4_dst") == "10.0.0.9"


def test_a_seeded_entry_is_established_and_dump_lists_it_by_zone():
    t = firewall()
    t.conntrack.commit_entry(3, 17, CLIENT, 5, SERVER, 53, mark=9, label=1)
    t.conntrack.commit_entry(4, 17, CLIENT, 5, SERVER, 53)
    assert [(e.zone, e.mark) for e in t.conntrack.dump(3)] == [(3, 9)]
    assert states(firewall(zone=3), udp(CLIENT, SERVER, 5, 53)) == [CT_TRK | CT_NEW]
    shared = FakeOFTable([flow(0, 1, [apply(ct(False, 3, 1))], eth_type=IP), state_recorder()],
                         conntrack=t.conntrack)
    assert states(shared, udp(SERVER, CLIENT, 53, 5)) == [CT_TRK | CT_EST | CT_RPL]
