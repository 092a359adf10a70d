"""The pure parts of middlebox.confmon: condition chain and HostConfig."""

import os
import sys
import uuid
from types import SimpleNamespace as Row

# The middlebox package may not be installed into the venv (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import confmon  # noqa: E402
from middlebox.config import RuleSpec, VmSpec  # noqa: E402


def U(n):
    return uuid.UUID(int=n)


def world():
    """Two tenants; h1 serves red, h2 serves blue.  Ref columns hold UUIDs in
    the shapes python-ovs gives: optional refs as lists, required as UUID."""
    return {
        "Host": [Row(uuid=U(1), name="h1"), Row(uuid=U(2), name="h2")],
        "Slice": [Row(uuid=U(10), middlebox=[U(20)], host=[U(1)], tag=10),
                  Row(uuid=U(11), middlebox=[U(21)], host=[U(2)], tag=11)],
        "Middlebox": [
            Row(uuid=U(20), name="fw-red", type="firewall",
                logical_switch=U(40), default_action="deny",
                rules=[U(30), U(31)], options={"check": "offload"}),
            Row(uuid=U(21), name="fw-blue", type="firewall",
                logical_switch=U(41), default_action="allow",
                rules=[U(32)], options={})],
        "Firewall_Rule": [
            Row(uuid=U(30), priority=100, direction="from-vm",
                match="proto=tcp dst=$red-web dport=80", address_sets=[U(50)],
                action="allow", tier="tenant"),
            Row(uuid=U(31), priority=200, direction="to-vm",
                match="proto=icmp", address_sets=[], action="reject",
                tier="provider"),
            Row(uuid=U(32), priority=1, direction="to-vm", match="any",
                address_sets=[U(51)], action="deny", tier="tenant")],
        "Address_Set": [
            Row(uuid=U(50), name="red-web", tenant="red",
                addresses=["10.1.0.11", "10.1.0.10"]),
            Row(uuid=U(51), name="blue-db", tenant="blue",
                addresses=["10.2.0.5"])],
        "Logical_Switch": [
            Row(uuid=U(40), name="ls-red", tenant="red", vni=101),
            Row(uuid=U(41), name="ls-blue", tenant="", vni=102)],
        "VM": [
            Row(uuid=U(60), name="red2", logical_switch=U(40),
                mac="02:00:00:00:00:AA", ip="10.1.0.2", host=[U(2)]),
            Row(uuid=U(61), name="red1", logical_switch=U(40),
                mac="02:00:00:00:00:01", ip="10.1.0.1", host=[U(1)]),
            Row(uuid=U(62), name="blue1", logical_switch=U(41),
                mac="02:00:00:00:00:02", ip="10.2.0.1", host=[])],
    }


def uuid_clause(column, n):
    return [column, "==", ["uuid", str(U(n))]]


def test_initial_conditions_select_only_my_host():
    conds = confmon.initial_conditions("h1")
    assert conds["Host"] == [["name", "==", "h1"]]
    assert set(conds) == set(confmon.TABLES)
    assert all(conds[t] == [] for t in confmon.TABLES if t != "Host")
    assert "Steering_Policy" not in conds and "NB_Global" not in conds


def test_conditions_follow_the_chain_of_my_slices_only():
    conds = confmon.conditions("h1", world())
    assert conds["Host"] == [["name", "==", "h1"]]
    assert conds["Slice"] == [uuid_clause("host", 1)]
    assert conds["Middlebox"] == [uuid_clause("_uuid", 20)]
    assert conds["Firewall_Rule"] == [uuid_clause("_uuid", 30),
                                      uuid_clause("_uuid", 31)]
    assert conds["Address_Set"] == [uuid_clause("_uuid", 50)]
    assert conds["Logical_Switch"] == [uuid_clause("_uuid", 40)]
    assert conds["VM"] == [uuid_clause("logical_switch", 40)]


def test_conditions_grow_one_level_per_arrival():
    w = world()
    only_host = {"Host": [w["Host"][0]]}
    conds = confmon.conditions("h1", only_host)
    assert conds["Slice"] == [uuid_clause("host", 1)]
    assert conds["Middlebox"] == [] and conds["Firewall_Rule"] == []
    with_slice = dict(only_host, Slice=[w["Slice"][0]])
    conds = confmon.conditions("h1", with_slice)
    assert conds["Middlebox"] == [uuid_clause("_uuid", 20)]
    assert conds["Firewall_Rule"] == [] and conds["VM"] == []
    with_mb = dict(with_slice, Middlebox=[w["Middlebox"][0]])
    conds = confmon.conditions("h1", with_mb)
    assert len(conds["Firewall_Rule"]) == 2
    assert conds["Logical_Switch"] == [uuid_clause("_uuid", 40)]
    assert conds["VM"] == [uuid_clause("logical_switch", 40)]
    assert conds["Address_Set"] == []      # rules not here yet


def test_conditions_ignore_rows_lingering_in_the_replica():
    """A replica still holding blue rows (condition change not yet acked)
    must not keep asking for blue rows: everything shrinks at once."""
    w = world()
    w["Slice"] = [w["Slice"][0]]           # blue slice gone, rest lingers
    conds = confmon.conditions("h1", w)
    flat = repr(conds)
    for n in (21, 32, 41, 51):
        assert str(U(n)) not in flat


def test_no_host_row_means_nothing():
    conds = confmon.conditions("h3", world())
    assert conds == confmon.initial_conditions("h3")
    assert confmon.build_host_config("h3", world()).slices == {}


def test_host_config_of_h1():
    cfg = confmon.build_host_config("h1", world())
    assert cfg.host == "h1" and list(cfg.slices) == [10]
    red = cfg.slices[10]
    assert (red.tag, red.middlebox, red.type, red.tenant, red.switch,
            red.vni, red.default_action) == (
        10, "fw-red", "firewall", "red", "ls-red", 101, "deny")
    assert red.options == {"check": "offload"}
    assert red.rules == (
        RuleSpec(200, "to-vm", "proto=icmp", "reject", "provider",
                 str(U(31))),
        RuleSpec(100, "from-vm", "proto=tcp dst=$red-web dport=80", "allow",
                 "tenant", str(U(30))))
    assert red.address_sets == {"red-web": ("10.1.0.10", "10.1.0.11")}
    assert red.vms == (
        VmSpec("red1", "02:00:00:00:00:01", "10.1.0.1", "h1"),
        VmSpec("red2", "02:00:00:00:00:aa", "10.1.0.2", None))


def test_tenant_defaults_to_switch_name():
    cfg = confmon.build_host_config("h2", world())
    assert cfg.slices[11].tenant == "ls-blue"
    assert cfg.slices[11].vms == (
        VmSpec("blue1", "02:00:00:00:00:02", "10.2.0.1", None),)


def test_odd_rows_are_skipped_with_one_warning_each():
    w = world()
    rules = w["Firewall_Rule"]
    rules.append(Row(uuid=U(33), priority=5, direction="", match="any",
                     address_sets=[], action="allow", tier="tenant"))
    rules.append(Row(uuid=U(34), priority=5, direction="to-vm",
                     match="proto=tcp dport=99999", address_sets=[],
                     action="allow", tier=""))
    rules.append(Row(uuid=U(35), priority=5, direction="to-vm", match="any",
                     address_sets=[], action="", tier="tenant"))
    rules.append(Row(uuid=U(36), priority=6, direction="to-vm", match="any",
                     address_sets=[], action="deny", tier=""))
    w["Middlebox"][0].rules += [U(33), U(34), U(35), U(36), U(99)]
    w["Address_Set"][0].addresses.append("not-an-address")
    w["Slice"].append(Row(uuid=U(12), middlebox=[U(21)], host=[U(1)], tag=0))
    w["Slice"].append(Row(uuid=U(13), middlebox=[U(21)], host=[U(1)],
                          tag=10))
    w["Slice"].append(Row(uuid=U(14), middlebox=[U(77)], host=[U(1)],
                          tag=14))              # middlebox not (yet) here
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append((key, msg)))
    red = cfg.slices[10]
    assert red.middlebox == "fw-red"           # the lower Slice uuid wins
    assert list(cfg.slices) == [10]
    assert [r.uuid for r in red.rules] == [str(U(31)), str(U(30)),
                                           str(U(36))]
    assert red.rules[-1].tier == "tenant"      # empty tier -> tenant
    assert red.address_sets == {"red-web": ("10.1.0.10", "10.1.0.11")}
    keys = [key for key, _ in warnings]
    assert len(keys) == len(set(keys)) == 6
    text = "\n".join(msg for _, msg in warnings)
    assert "direction ''" in text and "dport 99999" in text
    assert "action ''" in text and "not-an-address" in text
    assert "tag 0" in text and "tag 10 already used by middlebox fw-red" in text


def test_unknown_middlebox_type_and_missing_switch():
    w = world()
    w["Middlebox"][0].type = "nat"
    w["Slice"][1].host = [U(1)]
    w["Logical_Switch"] = [w["Logical_Switch"][0]]   # ls-blue not here yet
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append(msg))
    assert cfg.slices == {}
    assert len(warnings) == 1 and "type 'nat'" in warnings[0]


def test_held_names():
    held = confmon.held_names(world())
    assert held["Host"] == ["h1", "h2"]
    assert held["VM"] == ["blue1", "red1", "red2"]
    assert held["Slice"] == [str(U(10)), str(U(11))]
    assert set(held) == set(confmon.TABLES)
