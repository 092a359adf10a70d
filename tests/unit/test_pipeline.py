"""The pipeline declaration is consistent, and check_flow catches mistakes."""

import dataclasses
import pathlib

import pytest

from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow, canon_match

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"


def good_flow(**changes):
    flow = Flow(P.CLASSIFY.table_id, P.PRIO_CLASSIFY,
                canon_match(in_port=1, eth_src="02:00:00:00:00:01"),
                (("apply", (("set_field", P.REG_IN_PORT, 1),)),
                 ("write_metadata", 5, P.METADATA_VNI_MASK),
                 ("goto", P.L2_LOOKUP.table_id)),
                cookie=P.COOKIE)
    return dataclasses.replace(flow, **changes)


def test_tables_have_unique_names_and_ids():
    assert len(P.BY_NAME) == len(P.BY_ID) == len(P.TABLES)
    assert P.TABLES[0].table_id == 0


def test_next_tables_are_declared_and_later():
    for table in P.TABLES:
        for name in table.next_tables:
            assert P.BY_NAME[name].table_id > table.table_id


def test_gaps_are_free_and_sit_between_their_stages():
    used = set(P.BY_ID)
    for _, ids, _ in P.GAPS:
        assert not used & set(ids)
    gaps = {name: ids for name, ids, _ in P.GAPS}
    external, from_vm, to_vm = (gaps[n] for n in ("EXTERNAL_STAGES", "FROM_VM_STAGES",
                                                   "TO_VM_STAGES"))
    assert P.EXTERNAL_CACHE.table_id < min(external) \
        and max(external) < P.FROM_VM_STEERING.table_id
    assert P.FROM_VM_CACHE.table_id < min(from_vm) and max(from_vm) < P.L2_LOOKUP.table_id
    assert P.L2_LOOKUP.table_id < min(to_vm) and max(to_vm) < P.LOCAL_DELIVERY.table_id


def test_registers_are_distinct_and_cookie_fits_its_mask():
    regs = (P.REG_FROM_TUNNEL, P.REG_OUT_PORT, P.REG_IN_PORT, P.REG_SKIP_TO_VM, P.REG_SLICE)
    assert len(set(regs)) == 5
    assert P.COOKIE & ~P.COOKIE_MASK == 0 and P.COOKIE != 0
    assert P.DAEMON_COOKIE & ~P.COOKIE_MASK == 0 and P.DAEMON_COOKIE != P.COOKIE


def test_the_daemons_contract():
    assert (P.STAGE_FROM_VM, P.STAGE_TO_VM, P.STAGE_FROM_EXTERNAL, P.STAGE_PROBE) == (0, 1, 2, 3)
    assert (P.GATEWAY.table_id, P.EXTERNAL_IN.table_id, P.EXTERNAL_CACHE.table_id,
            P.EXTERNAL_OUT.table_id) == (1, 2, 3, 41)
    assert P.CACHE_TABLES[P.STAGE_FROM_EXTERNAL] is P.EXTERNAL_CACHE
    assert P.CACHE_NEXT[P.STAGE_FROM_EXTERNAL] is P.L2_LOOKUP
    assert P.REG_SKIP_TO_VM == "reg3" and P.ROUTER_MAC == "02:4d:42:00:00:01"
    assert P.PRIO_STEER_CATCHER == 64000
    # a reply catcher sits above every policy, below the multicast/judged flows
    assert P.PRIO_STEER_BASE + 2 * 30000 + 1 < P.PRIO_STEER_CATCHER < P.PRIO_STEER_JUDGED


def daemon_flow(table, instructions, priority=P.PRIO_CACHE_ENTRY, **match):
    fields = dict(eth_type=0x0800, ip_proto=6, ipv4_src="10.0.0.1", ipv4_dst="198.51.100.10",
                  tcp_src=40000, tcp_dst=80)
    fields.update(match)
    return Flow(table.table_id, priority, canon_match(**fields), tuple(instructions),
                cookie=P.DAEMON_COOKIE | 5)


REWRITE = ("apply", (("set_field", "ipv4_src", "203.0.113.5"), ("set_field", "tcp_src", 5000)))


@pytest.mark.parametrize("flow", [
    daemon_flow(P.FROM_VM_CACHE, [("goto", P.L2_LOOKUP.table_id)], reg4=3),
    daemon_flow(P.FROM_VM_CACHE, [], reg4=3),
    daemon_flow(P.FROM_VM_CACHE, [REWRITE, ("goto", P.EXTERNAL_OUT.table_id)], reg4=3),
    daemon_flow(P.TO_VM_CACHE, [("apply", (("set_field", "ipv4_src", "10.0.0.100"),
                                          ("set_field", "tcp_src", 80),
                                          ("set_field", "eth_src", P.ROUTER_MAC))),
                                ("goto", P.LOCAL_DELIVERY.table_id)], reg4=3),
    daemon_flow(P.EXTERNAL_CACHE, [("apply", (("set_field", "ipv4_dst", "10.0.0.1"),
                                             ("set_field", "udp_dst", 53),
                                             ("set_field", "eth_dst", "02:00:00:00:00:01"))),
                                   ("goto", P.L2_LOOKUP.table_id)], reg4=3),
    daemon_flow(P.TO_VM_STEERING, [("apply", (("set_field", "reg4", 3),)),
                                   ("goto", P.TO_VM_CACHE.table_id)],
                priority=P.PRIO_STEER_CATCHER, metadata=(1001, P.METADATA_VNI_MASK)),
    daemon_flow(P.FROM_VM_STEERING, [("apply", (("set_field", "reg4", 3),)),
                                     ("goto", P.FROM_VM_CACHE.table_id)],
                priority=P.PRIO_STEER_CATCHER, metadata=(1001, P.METADATA_VNI_MASK)),
])
def test_check_flow_accepts_the_daemons_entries_and_catchers(flow):
    assert P.check_flow(flow, P.DAEMON_COOKIE) is flow


@pytest.mark.parametrize("flow, complaint", [
    (daemon_flow(P.L2_LOOKUP, [], metadata=1), "no flows of owner"),
    (daemon_flow(P.TO_VM_CACHE, [REWRITE, ("goto", P.EXTERNAL_OUT.table_id)], reg4=3),
     "may not goto"),
    (daemon_flow(P.EXTERNAL_CACHE, [("goto", P.LOCAL_DELIVERY.table_id)], reg4=3),
     "may not goto"),
    (daemon_flow(P.FROM_VM_CACHE, [("apply", (("set_field", "reg0", 1),)),
                                   ("goto", P.L2_LOOKUP.table_id)], reg4=3), "may not rewrite"),
    (daemon_flow(P.FROM_VM_CACHE, [("apply", (("output", 7),))], reg4=3), "only rewrite"),
    (daemon_flow(P.TO_VM_STEERING, [("apply", (("set_field", "reg4", 3),)),
                                    ("goto", P.LOCAL_DELIVERY.table_id)],
                 priority=P.PRIO_STEER_CATCHER), "its stage's cache table"),
    (daemon_flow(P.TO_VM_STEERING, [("apply", (("set_field", "reg4", 3),)),
                                    ("goto", P.TO_VM_CACHE.table_id)], priority=5000),
     "catcher priority"),
])
def test_check_flow_rejects_daemon_flows_outside_its_contract(flow, complaint):
    with pytest.raises(AssertionError, match=complaint):
        P.check_flow(flow, P.DAEMON_COOKIE)


def test_check_flow_accepts_a_good_flow():
    assert P.check_flow(good_flow()) == good_flow()


@pytest.mark.parametrize("changes, complaint", [
    (dict(table=7), "undeclared table"),
    (dict(cookie=0x1234), "cookie"),
    (dict(match=canon_match(in_port=1, ipv4_src="10.0.0.1")), "may not match"),
    (dict(match=(("in_port", 1), ("eth_src", "02:00:00:00:00:01"))), "not canonical"),
    (dict(instructions=(("goto", P.LOCAL_DELIVERY.table_id),)), "may not goto"),
    (dict(instructions=(("goto", 3),)), "may not goto"),
    (dict(instructions=(("goto", 20), ("apply", (("output", 1),)))), "out of OpenFlow order"),
    (dict(instructions=(("apply", ()),)), "empty apply"),
    (dict(instructions=(("apply", (("output",),)),)), "bad action"),
    (dict(instructions=(("apply", (("flood", 1),)),)), "bad action"),
    (dict(instructions=(("write_metadata", 0x1000000, P.METADATA_VNI_MASK),)), "outside mask"),
    (dict(instructions=(("meter", 1),)), "unknown instruction"),
])
def test_check_flow_rejects_pipeline_mistakes(changes, complaint):
    with pytest.raises(AssertionError, match=complaint):
        P.check_flow(good_flow(**changes))


def test_check_flow_rejects_value_outside_its_mask():
    flow = Flow(P.L2_LOOKUP.table_id, 1, canon_match(metadata=(0x1000001, P.METADATA_VNI_MASK)),
                (), cookie=P.COOKIE)
    with pytest.raises(AssertionError, match="outside its mask"):
        P.check_flow(flow)


def test_docs_describe_every_table_and_register():
    text = DOC.read_text()
    for table in P.TABLES:
        assert f"| {table.table_id} | {table.name} |" in text
        for field in table.match_fields:
            assert field in text
    for reg in (P.REG_FROM_TUNNEL, P.REG_OUT_PORT, P.REG_IN_PORT, P.REG_SKIP_TO_VM,
                P.REG_SLICE):
        assert f"`{reg}`" in text
    for name in dir(P):
        if name.startswith("PRIO_"):
            assert f"`{name}`" in text, name
    for name, ids, _ in P.GAPS:
        assert name in text and f"{ids.start}-{ids.stop - 1}" in text
    assert hex(P.COOKIE) in text and hex(P.COOKIE_MASK) in text
