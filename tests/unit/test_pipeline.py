"""The pipeline declaration is consistent, and check_flow catches mistakes."""

import dataclasses
import pathlib

import pytest

from middlebox import dataplane as D
from ryu_apps import pipeline as P
from ryu_apps.ofmodel import Flow, canon_match

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"
REGS = ("REG_FROM_TUNNEL", "REG_OUT_PORT", "REG_IN_PORT", "REG_SKIP_TO_VM", "REG_SLICE",
        "REG_ZONE", "REG_SERVICE", "REG_SCRATCH")
CONTROLLER = [t for t in P.TABLES if t.owners == {P.COOKIE}]
DAEMON = [t for t in P.TABLES if t.owners == {P.DAEMON_COOKIE}]


def good_flow(**changes):
    flow = Flow(P.CLASSIFY.table_id, P.PRIO_CLASSIFY,
                canon_match(in_port=1, eth_src="02:00:00:00:00:01"),
                (("apply", (("set_field", P.REG_IN_PORT, 1),)),
                 ("write_metadata", 5, P.METADATA_VNI_MASK),
                 ("goto", P.L2_LOOKUP.table_id)),
                cookie=P.COOKIE)
    return dataclasses.replace(flow, **changes)


def daemon_flow(table, *instructions, priority=100, **match):
    """A service-stage flow as middlebox.dataplane writes them."""
    fields = dict(reg4=3, eth_type=P.ETH_TYPE_IP)
    fields.update(match)
    return Flow(table.table_id, priority, canon_match(**fields), tuple(instructions),
                cookie=P.DAEMON_COOKIE | 5)


def ct(table=None, commit=False, zone=P.REG_ZONE, nat=("nat",), exec_=()):
    return ("ct", commit, zone, table.table_id if table is not None else None, nat, exec_)


def apply(*actions):
    return ("apply", tuple(actions))


def goto(table):
    return ("goto", table.table_id)


def test_tables_have_unique_names_and_ids():
    assert len(P.BY_NAME) == len(P.BY_ID) == len(P.TABLES)
    assert P.TABLES[0].table_id == 0
    assert [t.table_id for t in P.TABLES] == sorted(t.table_id for t in P.TABLES)


def test_next_tables_are_declared_and_later_or_a_recirculation():
    for table in P.TABLES:
        for name in table.next_tables:
            target = P.BY_NAME[name]
            # only the daemon recirculates (ct(table=...)) into the same table
            assert target.table_id > table.table_id or \
                (target is table and table in DAEMON), (table.name, name)


def test_every_table_has_one_owner():
    assert len(CONTROLLER) + len(DAEMON) == len(P.TABLES)
    assert {t.name for t in DAEMON} == {
        "EXTERNAL_CT", "EXTERNAL_SNAT_STATE", "EXTERNAL_DNAT_STATE", "EXTERNAL_RULES",
        "EXTERNAL_COMMIT", "EXTERNAL_ROUTE", "FROM_VM_CT", "FROM_VM_STATE", "FROM_VM_RULES",
        "FROM_VM_PARTNER", "FROM_VM_COMMIT", "FROM_VM_ROUTE", "FROM_VM_SNAT",
        "FROM_VM_SNAT_STATE", "FROM_VM_SNAT_CHECK", "TO_VM_CT", "TO_VM_RESUME", "TO_VM_STATE",
        "TO_VM_RULES", "TO_VM_PARTNER", "TO_VM_COMMIT"}


def _reachable(start):
    """The daemon tables reachable from ``start`` and the controller tables
    they hand packets to."""
    seen, handed, todo = set(), set(), [start]
    while todo:
        table = todo.pop()
        if table.name in seen:
            continue
        seen.add(table.name)
        for name in table.next_tables:
            target = P.BY_NAME[name]
            (todo.append(target) if target in DAEMON else handed.add(name))
    return seen, handed


def test_the_controller_enters_a_stage_only_at_its_first_table():
    entries = {t.name for t in P.STAGE_TABLES.values()} | {"TO_VM_RESUME"}
    for table in CONTROLLER:
        into = {n for n in table.next_tables if P.BY_NAME[n] in DAEMON}
        assert into <= entries, table.name
    assert P.STEERING_TABLES[P.STAGE_FROM_VM].next_tables == ("FROM_VM_CT", "L2_LOOKUP")
    assert P.STEERING_TABLES[P.STAGE_TO_VM].next_tables == ("TO_VM_CT", "LOCAL_DELIVERY")
    assert P.TO_VM_RETURN.next_tables == ("TO_VM_RESUME",)


@pytest.mark.parametrize("stage", sorted(P.STAGE_TABLES))
def test_a_stage_hands_packets_back_only_to_the_table_the_controller_named(stage):
    tables, handed = _reachable(P.STAGE_TABLES[stage])
    assert handed == {P.STAGE_NEXT[stage].name}
    if stage == P.STAGE_TO_VM:
        assert _reachable(P.TO_VM_RESUME)[1] == {P.STAGE_NEXT[stage].name}
    # the three stages share no table
    others = [_reachable(P.STAGE_TABLES[s])[0] for s in P.STAGE_TABLES if s != stage]
    assert all(not tables & o for o in others)


def test_gaps_are_free_and_sit_between_their_stages():
    used = set(P.BY_ID)
    for _, ids, _ in P.GAPS:
        assert not used & set(ids)
    gaps = {name: ids for name, ids, _ in P.GAPS}
    external, to_vm = gaps["EXTERNAL_STAGES"], gaps["TO_VM_STAGES"]
    assert P.EXTERNAL_ROUTE.table_id < min(external) \
        and max(external) < P.FROM_VM_STEERING.table_id
    assert P.TO_VM_COMMIT.table_id < min(to_vm) and max(to_vm) < P.LOCAL_DELIVERY.table_id


def test_registers_are_distinct_and_cookies_fit_their_mask():
    regs = [getattr(P, name) for name in REGS]
    assert len(set(regs)) == len(REGS) and D.REG_RULE not in regs
    assert P.COOKIE & ~P.COOKIE_MASK == 0 and P.COOKIE != 0
    assert P.DAEMON_COOKIE & ~P.COOKIE_MASK == 0 and P.DAEMON_COOKIE != P.COOKIE


def test_the_daemons_contract():
    assert (P.STAGE_FROM_VM, P.STAGE_TO_VM, P.STAGE_FROM_EXTERNAL) == (0, 1, 2)
    # PCP to the daemon: stage misses, probe replies, checks, copies
    assert (P.STAGE_PROBE, P.CHECK_BASE, P.COPY) == (3, 4, 7)
    assert {P.CHECK_BASE + s for s in P.STAGE_TABLES} == {4, 5, 6}
    # PCP from the daemon: resume a stage, or deliver
    assert P.DELIVER == 3 and P.DELIVER not in P.STAGE_TABLES
    # REG_SERVICE: one RESUMED bit per stage, none shared with another bit
    bits = list(P.RESUMED.values()) + [P.PARTNER, P.NATTED]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert sum(bits) < 1 << 16
    # the CHECK origin bit is above every slice tag, inside the VID
    assert P.MAX_SLICE_TAG < P.VID_ORIGIN_IN < P.VLAN_PRESENT
    assert P.VID_ORIGIN_IN & P.MAX_SLICE_TAG == 0
    assert (P.GATEWAY.table_id, P.EXTERNAL_IN.table_id, P.EXTERNAL_CT.table_id,
            P.EXTERNAL_OUT.table_id) == (1, 2, 3, 41)
    assert P.REG_SKIP_TO_VM == "reg3" and P.ROUTER_MAC == "02:4d:42:00:00:01"
    # a reply catcher sits above every policy, below the multicast/judged flows
    # a reply catcher sits below every policy: a policy that selects the
    # reply decides; the catcher only takes what no policy selects
    assert P.PRIO_STEER_DEFAULT < P.PRIO_STEER_CATCHER < P.PRIO_STEER_BASE


# ------------------------------------------------------------------ the daemon's flows

@pytest.mark.parametrize("flow", [
    # a stage's first table: zone, then conntrack into the state table
    daemon_flow(P.FROM_VM_CT, apply(("load", P.REG_ZONE, 11, 0, 16),
                                    ("load", P.REG_SERVICE, 0, 1, 2),
                                    ct(P.FROM_VM_STATE)), eth_src="02:00:00:00:00:01"),
    # a check mode's second pass: conntrack again, back into the same table
    daemon_flow(P.FROM_VM_STATE, apply(("load", P.REG_SERVICE, 1, 2, 1), ct(P.FROM_VM_STATE)),
                ct_state=(0x22, 0x22)),
    # rules: a conjunction clause, and its verdict on to the commit
    daemon_flow(P.TO_VM_RULES, apply(("conjunction", 7, 1, 2)), ipv4_src="10.0.0.9"),
    daemon_flow(P.TO_VM_RULES, apply(("load", D.REG_RULE, 99, 0, 32)), goto(P.TO_VM_COMMIT),
                conj_id=7),
    # commit with a mark and the rule's id moved into the label
    daemon_flow(P.TO_VM_COMMIT, apply(ct(commit=True, nat=None, exec_=(
        ("set_field", "ct_mark", 3), ("move", D.REG_RULE, 0, "ct_label", 0, 32)))),
        goto(P.LOCAL_DELIVERY)),
    # a VIP's select group; the check mode's copy to the daemon
    daemon_flow(P.FROM_VM_COMMIT, apply(("group", 3 << 16 | 1)), ip_proto=6,
                ipv4_dst="10.0.0.100", tcp_dst=80),
    daemon_flow(P.TO_VM_STATE, apply(("push_vlan", 0x8100), ("set_field", "vlan_vid", 0x1003),
                                     ("set_field", "vlan_pcp", P.COPY), ("output", 50),
                                     ("pop_vlan",)), goto(P.LOCAL_DELIVERY)),
    # routing out of a stage
    daemon_flow(P.FROM_VM_ROUTE, apply(("set_field", "eth_dst", "02:00:00:00:00:04")),
                goto(P.L2_LOOKUP)),
    daemon_flow(P.EXTERNAL_ROUTE, apply(("set_field", "eth_src", P.ROUTER_MAC)),
                goto(P.L2_LOOKUP), ipv4_dst="10.0.0.2"),
    # a resubmit to a declared next table; a drop
    daemon_flow(P.EXTERNAL_SNAT_STATE, apply(("resubmit", P.EXTERNAL_ROUTE.table_id))),
    daemon_flow(P.FROM_VM_STATE, ct_state=(0x30, 0x30)),
    # EXTERNAL_CT's forwarder of a moved VM's connection
    daemon_flow(P.EXTERNAL_CT, apply(("set_field", "in_port", 0), ("output", 100)),
                in_port=60),
])
def test_check_flow_accepts_the_daemons_flows(flow):
    assert P.check_flow(flow, P.DAEMON_COOKIE) is flow


@pytest.mark.parametrize("flow, complaint", [
    # a controller table
    (daemon_flow(P.L2_LOOKUP, metadata=1), "takes no flows of owner"),
    (daemon_flow(P.TO_VM_STEERING, apply(("set_field", "reg4", 3)), goto(P.TO_VM_CT),
                 priority=P.PRIO_STEER_CATCHER), "takes no flows of owner"),
    # goto, ct recirculation or resubmit outside the declared next tables
    (daemon_flow(P.FROM_VM_ROUTE, goto(P.EXTERNAL_OUT)), "may not go to table"),
    (daemon_flow(P.FROM_VM_CT, apply(ct(P.TO_VM_STATE))), "may not go to table"),
    (daemon_flow(P.FROM_VM_CT, apply(ct(P.FROM_VM_CT))), "may not go to table"),
    (daemon_flow(P.TO_VM_COMMIT, apply(ct(P.TO_VM_STATE, commit=True))),
     "may not go to table"),
    (daemon_flow(P.EXTERNAL_SNAT_STATE, apply(("resubmit", P.L2_LOOKUP.table_id))),
     "may not go to table"),
    (daemon_flow(P.FROM_VM_STATE, apply(("resubmit", 9))), "may not go to table"),
    # the logical switch is the controller's
    (daemon_flow(P.FROM_VM_ROUTE, ("write_metadata", 5, P.METADATA_VNI_MASK),
                 goto(P.L2_LOOKUP)), "may not write metadata"),
    # fields a stage may not match
    (daemon_flow(P.FROM_VM_CT, metadata=(5, P.METADATA_VNI_MASK)), "may not match"),
    (daemon_flow(P.FROM_VM_CT, in_port=1), "may not match"),
    (daemon_flow(P.TO_VM_STATE, reg1=1), "may not match"),
    # malformed actions
    (daemon_flow(P.FROM_VM_CT, apply(("ct", True, 5))), "bad action"),
    (daemon_flow(P.TO_VM_RULES, apply(("conjunction", 7, 1))), "bad action"),
    (daemon_flow(P.FROM_VM_STATE, apply(("load", "reg6", 1))), "bad action"),
])
def test_check_flow_rejects_daemon_flows_outside_its_tables(flow, complaint):
    with pytest.raises(AssertionError, match=complaint):
        P.check_flow(flow, P.DAEMON_COOKIE)


def test_check_flow_holds_each_owner_to_its_cookie():
    stage = daemon_flow(P.TO_VM_STATE, goto(P.LOCAL_DELIVERY))
    with pytest.raises(AssertionError, match="without its owner's cookie"):
        P.check_flow(stage)                          # the daemon's cookie, as the controller's
    with pytest.raises(AssertionError, match="without its owner's cookie"):
        P.check_flow(dataclasses.replace(stage, cookie=P.COOKIE | 5), P.DAEMON_COOKIE)
    with pytest.raises(AssertionError, match="takes no flows of owner"):
        P.check_flow(dataclasses.replace(stage, cookie=P.COOKIE))


def test_check_group_actions_holds_a_bucket_to_its_tables_next_tables():
    bucket = (("set_field", "eth_dst", "02:00:00:00:00:04"),
              ct(P.FROM_VM_ROUTE, commit=True, nat=("nat", "dst", "10.0.0.4", "10.0.0.4", 80, 80)))
    P.check_group_actions(bucket, P.FROM_VM_COMMIT)
    with pytest.raises(AssertionError, match="may not go to table"):
        P.check_group_actions(bucket[:1] + (ct(P.L2_LOOKUP, commit=True),), P.FROM_VM_COMMIT)
    with pytest.raises(AssertionError, match="bad bucket action"):
        P.check_group_actions((("output",),), P.FROM_VM_COMMIT)


def test_check_flow_rejects_a_goto_into_the_same_table():
    with pytest.raises(AssertionError):
        P.check_flow(daemon_flow(P.FROM_VM_STATE, goto(P.FROM_VM_STATE)), P.DAEMON_COOKIE)


# ------------------------------------------------------------------ the controller's flows

def test_check_flow_accepts_a_good_flow():
    assert P.check_flow(good_flow()) == good_flow()


@pytest.mark.parametrize("action", [
    ("ct", False, 5, P.FROM_VM_CT.table_id, ("nat",), ()),
    ("group", 1),
    ("conjunction", 7, 1, 2),
    ("load", P.REG_SLICE, 3, 0, 16),
    ("move", "reg0", 0, "reg1", 0, 16),
    ("resubmit", P.L2_LOOKUP.table_id),
    ("ct_clear",),
])
def test_check_flow_refuses_daemon_only_actions_in_the_controllers_flows(action):
    flow = good_flow(instructions=(("apply", (action,)), ("goto", P.L2_LOOKUP.table_id)))
    with pytest.raises(AssertionError, match="only the service stages use"):
        P.check_flow(flow)


@pytest.mark.parametrize("changes, complaint", [
    (dict(table=9), "undeclared table"),
    (dict(table=P.FROM_VM_CT.table_id), "takes no flows of owner"),
    (dict(cookie=0x1234), "cookie"),
    (dict(cookie=P.DAEMON_COOKIE), "cookie"),
    (dict(match=canon_match(in_port=1, ipv4_src="10.0.0.1")), "may not match"),
    (dict(match=(("in_port", 1), ("eth_src", "02:00:00:00:00:01"))), "not canonical"),
    (dict(instructions=(("goto", P.LOCAL_DELIVERY.table_id),)), "may not go to table"),
    (dict(instructions=(("goto", P.FROM_VM_STATE.table_id),)), "may not go to table"),
    (dict(instructions=(("goto", 9),)), "may not go to table"),
    (dict(instructions=(("goto", 20), ("apply", (("output", 1),)))), "out of OpenFlow order"),
    (dict(instructions=(("apply", ()),)), "empty apply"),
    (dict(instructions=(("apply", (("output",),)),)), "bad action"),
    (dict(instructions=(("apply", (("flood", 1),)),)), "bad action"),
    (dict(instructions=(("write_metadata", 0x1000000, P.METADATA_VNI_MASK),)), "outside mask"),
    (dict(instructions=(("meter", 1),)), "only the service stages use meters"),
    (dict(instructions=(("clear_actions",),)), "unknown instruction"),
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
    for name in REGS:
        assert f"`{getattr(P, name)}`" in text, name
    assert f"`{D.REG_RULE}`" in text
    for name in dir(P):
        if name.startswith("PRIO_"):
            assert f"`{name}`" in text, name
    for name, ids, _ in P.GAPS:
        span = f"{ids.start}-{ids.stop - 1}" if len(ids) > 1 else f"{ids.start}"
        assert name in text and f"| {span} | {name} |" in text
    for cookie in (P.COOKIE, P.COOKIE_MASK, P.DAEMON_COOKIE):
        assert hex(cookie) in text
    assert "middlebox.md" in text
