"""Reconciling desired and installed flows."""

import dataclasses

import pytest

from ryu_apps import flows as flowlib
from ryu_apps import pipeline as P
from ryu_apps.flows import compute_host_flows
from mbxmodel.network import PortBinding
from ryu_apps.reconcile import apply_diff, apply_to, diff_flows, diff_parts
from topologies import two_tenants


@pytest.fixture
def flows():
    return compute_host_flows(two_tenants(), "h1")


def moved_a2_flows():
    topo = two_tenants()
    bindings = {**topo.bindings, "a2": PortBinding("a2", "h3", 5)}
    return compute_host_flows(dataclasses.replace(topo, bindings=bindings), "h1")


def test_identical_sets_give_an_empty_diff(flows):
    diff = diff_flows(flows, list(reversed(flows)))
    assert diff.empty
    assert diff.commands() == []


def test_new_missing_and_changed_flows(flows):
    extra = dataclasses.replace(flows[0], priority=999)
    changed = dataclasses.replace(flows[1], instructions=())
    installed = [extra, changed] + flows[2:]
    diff = diff_flows(flows[1:] + [flows[0]], installed)
    assert diff.deletes == [extra]
    assert diff.modifies == [flows[1]]
    assert diff.adds == [flows[0]]
    assert not diff.empty


def test_commands_are_ordered_deletes_modifies_adds(flows):
    installed = [dataclasses.replace(flows[0], priority=999),
                 dataclasses.replace(flows[1], instructions=())] + flows[3:]
    commands = [c for c, _ in diff_flows(flows, installed).commands()]
    assert commands == ["delete_strict", "modify_strict", "add", "add"]


def test_cookie_or_timeout_change_replaces_the_entry_with_add(flows):
    installed = [dataclasses.replace(flows[0], cookie=P.COOKIE | 1),
                 dataclasses.replace(flows[1], idle_timeout=30)] + flows[2:]
    diff = diff_flows(flows, installed)
    assert diff.modifies == flows[:2]
    assert diff.commands() == [("add", flows[0]), ("add", flows[1])]


def test_moving_a_vm_changes_only_the_affected_flows(flows):
    after = moved_a2_flows()
    diff = diff_flows(after, flows)
    # a2's tunnel destination and the tenant-A broadcast copies change
    assert [f.match_dict()["eth_dst"] for f in diff.modifies] == \
        ["02:00:00:00:00:02", ("01:00:00:00:00:00", "01:00:00:00:00:00")]
    assert diff.adds == [] and diff.deletes == []
    assert apply_diff(set(flows), diff) == set(after)


@pytest.mark.parametrize("host", ["h1", "h2", "h3"])
def test_apply_diff_reaches_the_desired_set(host):
    before = compute_host_flows(two_tenants(), host)
    topo = two_tenants()
    after = compute_host_flows(dataclasses.replace(
        topo, bindings={k: v for k, v in topo.bindings.items() if k not in ("a1", "b2")}), host)
    for old, new in ((before, after), (after, before), ([], before), (before, [])):
        diff = diff_flows(new, old)
        assert apply_diff(set(old), diff) == set(new)
        assert diff_flows(new, apply_diff(set(old), diff)).empty


def test_conflicting_desired_flows_are_rejected(flows):
    twin = dataclasses.replace(flows[0], instructions=(("goto", 99),))
    with pytest.raises(ValueError, match="same key"):
        diff_flows(flows + [twin], [])


def parts_of(topo, host):
    return {part: flowlib.compute_part(topo, host, part, None)
            for part in flowlib.host_parts(topo, host)}


def test_comparing_the_changed_parts_gives_the_whole_hosts_difference(flows):
    topo = two_tenants()
    moved = dataclasses.replace(topo, bindings={**topo.bindings,
                                                "a2": PortBinding("a2", "h3", 5)})
    before, after = parts_of(topo, "h1"), parts_of(moved, "h1")
    installed, _ = flowlib.union(before)
    changed = [p for p in after if after[p] != before.get(p)]
    assert changed == [("remote", "ls-a")]
    diff = diff_parts(installed, [before[p] for p in changed], [after[p] for p in changed])
    assert diff.commands() == diff_flows(moved_a2_flows(), flows).commands()
    apply_to(installed, diff)
    assert sorted(installed.values(), key=repr) == sorted(moved_a2_flows(), key=repr)


def test_a_key_another_part_holds_leaves_the_difference_to_the_whole_host():
    parts = parts_of(two_tenants(), "h1")
    installed, _ = flowlib.union(parts)
    table_miss = next(iter(parts[flowlib.HOST_PART].items()))
    claimed = {**parts[("remote", "ls-a")], table_miss[0]: table_miss[1]}
    assert diff_parts(installed, [parts[("remote", "ls-a")]], [claimed]) is None
