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
    (_, from_vm, _), (_, to_vm, _) = P.GAPS
    assert P.CLASSIFY.table_id < min(from_vm) and max(from_vm) < P.L2_LOOKUP.table_id
    assert P.L2_LOOKUP.table_id < min(to_vm) and max(to_vm) < P.LOCAL_DELIVERY.table_id


def test_registers_are_distinct_and_cookie_fits_its_mask():
    assert len({P.REG_FROM_TUNNEL, P.REG_OUT_PORT, P.REG_IN_PORT}) == 3
    assert P.COOKIE & ~P.COOKIE_MASK == 0 and P.COOKIE != 0


def test_check_flow_accepts_a_good_flow():
    assert P.check_flow(good_flow()) == good_flow()


@pytest.mark.parametrize("changes, complaint", [
    (dict(table=7), "undeclared table"),
    (dict(cookie=0x1234), "cookie"),
    (dict(match=canon_match(in_port=1, eth_dst="02:00:00:00:00:01")), "may not match"),
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
    for reg in (P.REG_FROM_TUNNEL, P.REG_OUT_PORT, P.REG_IN_PORT):
        assert reg in text
    for name, ids, _ in P.GAPS:
        assert name in text and f"{ids.start}-{ids.stop - 1}" in text
    assert hex(P.COOKIE) in text and hex(P.COOKIE_MASK) in text
