"""The southbound Datapath record (mbxmodel.datapath) and the logical
controller's incremental translation into it (ryu_apps.translate)."""

import dataclasses
import json
import logging

import pytest

from mbxmodel import datapath as dplib
from mbxmodel.services import AddressSetInfo, PolicyInfo, RuleInfo, VipInfo
from mbxmodel.snapshot import NbSnapshot
from ryu_apps.translate import Translator
from topologies import services


def snapshot(**changes):
    """services() as a northbound snapshot, with firewall rules, an address
    set named by a rule and one by a policy, and a global option."""
    topo = services()
    snap = NbSnapshot(
        nb_cfg=1, hv_cfg=1, switches=dict(topo.switches), vms=dict(topo.vms),
        middleboxes=dict(topo.middleboxes),
        rules={"fw-a": (RuleInfo(200, "to-vm", "src=$admins proto=tcp dport=22", "allow",
                                 uuid="r1"),
                        RuleInfo(100, "from-vm", "any", "deny", "provider", uuid="r2"))},
        policies=tuple(sorted(topo.policies + (PolicyInfo("ls-b", 50, "src=$web", ()),),
                              key=lambda p: (p.switch, -p.priority))),
        address_sets={"admins": AddressSetInfo("admins", "A", ("192.168.1.0/24",)),
                      "web": AddressSetInfo("web", "B", ("10.1.0.0/28",)),
                      "unused": AddressSetInfo("unused", "A", ("10.9.9.9",))},
        nat_rules=dict(topo.nat_rules), vips=dict(topo.vips),
        external_networks=dict(topo.external_networks),
        global_options={"migration-wait-ms": "1500"})
    return dataclasses.replace(snap, **changes)


def translated(snap=None):
    t = Translator()
    return t, t.update(snap or snapshot())


# ------------------------------------------------------------------ record

def test_a_record_round_trips_through_its_text():
    _, records = translated()
    assert set(records) == {"ls-a", "ls-b"}
    for name, record in records.items():
        sw = record.switch
        assert dplib.decode(name, sw.tenant, sw.vni, dplib.encode(record)) == record


def test_a_rows_ports_are_its_switchs_vms_by_name():
    _, records = translated()
    for name, record in records.items():
        assert dplib.ports(dplib.encode(record)) == sorted(vm.name for vm in record.vms)
        assert dplib.ports(dplib.encode(record))
    assert dplib.ports("not json") == []
    assert dplib.ports('{"vms": [{"name": 7}]}') == []


def test_a_record_holds_what_its_switchs_flows_and_daemons_need():
    _, records = translated()
    a = records["ls-a"]
    assert [vm.name for vm in a.vms] == ["a1", "a2", "a3", "a4"]
    assert [mb.name for mb in a.middleboxes] == ["fw-a", "ids-a", "lb-a", "nat-a"]
    assert [p.priority for p in a.policies] == [300, 200, 100]
    assert [r.uuid for r in a.rules["fw-a"]] == ["r1", "r2"]
    assert {r.type for r in a.nat_rules["nat-a"]} == {"snat", "dnat"}
    assert a.vips["lb-a"][0].backends == (("10.0.0.2", 80), ("10.0.0.4", 80))
    assert [s.name for s in a.address_sets] == ["admins"]      # named by a rule
    assert [s.name for s in records["ls-b"].address_sets] == ["web"]   # by a policy
    assert [n.name for n in a.external_networks] == ["ext"]
    assert a.options == {"migration-wait-ms": "1500"}


def test_the_records_give_the_topology_of_the_snapshot():
    snap = snapshot()
    _, records = translated(snap)
    topo = dplib.topology(records.values())
    assert topo.switches == snap.switches
    assert topo.vms == snap.vms
    assert topo.middleboxes == snap.middleboxes
    assert set(topo.policies) == set(snap.policies)
    assert topo.nat_rules == snap.nat_rules
    assert topo.vips == snap.vips
    assert topo.external_networks == snap.external_networks
    assert set(topo.address_sets) == {"admins", "web"}


def test_an_unchanged_switch_encodes_to_the_identical_text():
    snap = snapshot()
    shuffled = dataclasses.replace(
        snap, vms=dict(reversed(list(snap.vms.items()))),
        middleboxes=dict(reversed(list(snap.middleboxes.items()))),
        policies=tuple(reversed(snap.policies)))
    first, second = Translator(), Translator()
    first.update(snap)
    second.update(shuffled)
    assert first.rows == second.rows
    text = first.rows["ls-a"][2]
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["version"] == dplib.VERSION


def test_a_vips_status_is_not_part_of_the_record():
    snap = snapshot()
    t, _ = translated(snap)
    vip = snap.vips["lb-a"][0]
    status = dataclasses.replace(snap, vips={"lb-a": (dataclasses.replace(
        vip, status={"10.0.0.2:80": "down"}),)})
    assert t.update(status) == {}


@pytest.mark.parametrize("config, complaint", [
    ("not json", "config is not JSON"),
    ("[]", "config is not an object"),
    ('{"version": 99}', "config version 99, this program reads 1"),
    (None, "config is not a string"),
])
def test_a_malformed_record_is_one_clear_error(config, complaint):
    with pytest.raises(dplib.DatapathError) as err:
        dplib.decode("ls-a", "A", 1001, config)
    assert str(err.value).startswith("Datapath ls-a: ")
    assert complaint in str(err.value)


@pytest.mark.parametrize("path, value, complaint", [
    (("vms", 0, "mac"), 7, "config.vms[0].mac is not a string"),
    (("policies", 0, "chain"), "fw-a", "config.policies[0].chain is not a list"),
    (("policies", 0, "priority"), True, "config.policies[0].priority is not an integer"),
    (("middleboxes", 3, "nat_rules", 0, "port_range"), [1], "port_range is not [low, high]"),
    (("middleboxes", 2, "vips", 0, "backends"), ["10.0.0.2:80"],
     "backends is not a list of [address, port]"),
    (("middleboxes", 0, "options"), {"a": 1}, "config.middleboxes[0].options is not a map"),
    (("subnet",), None, "config.subnet is not a string"),
    (("middleboxes", 0, "type"), "router",
     "config.middleboxes[0].type is 'router', not one of firewall, nat, lb, ids"),
    (("middleboxes", 0, "rules", 0, "action"), "drop", "rules[0].action is 'drop'"),
])
def test_a_malformed_field_is_named(path, value, complaint):
    _, records = translated()
    obj = json.loads(dplib.encode(records["ls-a"]))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(dplib.DatapathError, match=complaint.replace("[", r"\[")):
        dplib.decode("ls-a", "A", 1001, json.dumps(obj))
    del target[path[-1]]
    with pytest.raises(dplib.DatapathError, match="is missing"):
        dplib.decode("ls-a", "A", 1001, json.dumps(obj))


def test_the_reader_skips_a_malformed_row_logs_it_once_and_keeps_the_good_one(caplog):
    _, records = translated()
    rows = {name: dplib.row(r) for name, r in records.items()}
    reader = dplib.Reader()
    assert set(reader.update(rows)) == {"ls-a", "ls-b"}
    bad = dict(rows, **{"ls-b": ("B", 1002, '{"version": 1}')})
    with caplog.at_level(logging.ERROR):
        changes = reader.update(bad)
        assert reader.update(bad) == {}
    assert changes == {}                        # ls-b keeps its good record
    assert reader.records == records
    assert len([r for r in caplog.records if "Datapath ls-b" in r.getMessage()]) == 1
    assert reader.update(rows) == {}                                    # fixed
    assert reader.update({"ls-a": rows["ls-a"]}) == {"ls-b": (records["ls-b"], None)}
    fresh = dplib.Reader()          # a reader that never saw it good leaves it out
    assert set(fresh.update(bad)) == {"ls-a"} and set(fresh.records) == {"ls-a"}


def test_a_rule_change_changes_the_record_but_no_flow():
    snap = snapshot()
    t, before = translated(snap)
    rules = {"fw-a": snap.rules["fw-a"][:1]}
    changed = t.update(dataclasses.replace(snap, rules=rules))
    assert set(changed) == {"ls-a"}
    changes = {"ls-a": (before["ls-a"], changed["ls-a"])}
    assert not dplib.flows_changed(changes)
    policies = tuple(p for p in snap.policies if p.priority != 100)
    after = t.update(dataclasses.replace(snap, rules=rules, policies=policies))
    assert dplib.flows_changed({"ls-a": (changed["ls-a"], after["ls-a"])})


# ------------------------------------------------------------- translation

def test_a_change_to_one_switchs_intent_translates_only_that_switch():
    snap = snapshot()
    t, _ = translated(snap)
    vm = snap.vms["b1"]
    changed = t.update(dataclasses.replace(
        snap, vms=dict(snap.vms, b1=dataclasses.replace(vm, ip="10.1.0.99"))))
    assert set(changed) == {"ls-b"}
    assert t.translated == 1
    assert [v.ip for v in changed["ls-b"].vms if v.name == "b1"] == ["10.1.0.99"]
    # a VIP of ls-a's load balancer: only ls-a
    vip = snap.vips["lb-a"][0]
    changed = t.update(dataclasses.replace(
        snap, vms=t_vms(t), vips={"lb-a": (dataclasses.replace(vip, port=8080),)}))
    assert set(changed) == {"ls-a"} and t.translated == 1
    # nothing changed: nothing translated
    assert t.update(dataclasses.replace(snap, vms=t_vms(t), vips={"lb-a": (
        dataclasses.replace(vip, port=8080),)})) == {} and t.translated == 0


def t_vms(t):
    return {vm.name: vm for r in t.records.values() for vm in r.vms}


def test_an_address_set_change_translates_the_switches_naming_it():
    snap = snapshot()
    t, _ = translated(snap)
    sets = dict(snap.address_sets)
    sets["web"] = AddressSetInfo("web", "B", ("10.1.0.0/24",))
    assert set(t.update(dataclasses.replace(snap, address_sets=sets))) == {"ls-b"}
    sets["unused"] = AddressSetInfo("unused", "A", ())
    assert t.update(dataclasses.replace(snap, address_sets=sets)) == {}
    assert t.translated == 0


def test_switches_added_and_removed_are_written_and_deleted():
    snap = snapshot()
    t, _ = translated(snap)
    without_b = dataclasses.replace(
        snap, switches={"ls-a": snap.switches["ls-a"]},
        vms={n: v for n, v in snap.vms.items() if v.switch == "ls-a"},
        policies=tuple(p for p in snap.policies if p.switch == "ls-a"))
    assert t.update(without_b) == {"ls-b": None}
    assert set(t.records) == {"ls-a"}
    assert set(t.update(snap)) == {"ls-b"}


def test_an_external_network_or_a_global_option_is_in_every_record():
    snap = snapshot()
    t, _ = translated(snap)
    assert set(t.update(dataclasses.replace(
        snap, global_options={"migration-wait-ms": "900"}))) == {"ls-a", "ls-b"}
    assert t.update(dataclasses.replace(
        snap, global_options={"migration-wait-ms": "900", "other": "x"})) == {}


def test_incremental_records_are_the_records_translated_afresh():
    snap = snapshot()
    t, _ = translated(snap)
    steps = [
        dict(vms={n: v for n, v in snap.vms.items() if n != "a3"}),
        dict(policies=tuple(p for p in snap.policies if p.priority != 200)),
        dict(middleboxes={n: m for n, m in snap.middleboxes.items() if n != "ids-a"},
             policies=tuple(p for p in snap.policies if p.priority != 100)),
        dict(address_sets={}),
        dict(vips={"lb-a": (VipInfo("v2", "lb-a", "10.0.0.101", 80, "tcp", "hash"),)}),
    ]
    for step in steps:
        changed = dataclasses.replace(snap, **step)
        t.update(changed)
        fresh = Translator()
        fresh.update(changed)
        assert t.rows == fresh.rows, step


def test_a_vm_change_with_a_global_option_change_is_translated_too():
    snap = snapshot()
    t, _ = translated(snap)
    changed = dataclasses.replace(
        snap, vms=dict(snap.vms, b1=dataclasses.replace(snap.vms["b1"], ip="10.1.0.98")),
        global_options={"migration-wait-ms": "800"})
    t.update(changed)
    fresh = Translator()
    fresh.update(changed)
    assert t.rows == fresh.rows


def test_a_switchs_new_vni_or_tenant_rewrites_its_row():
    snap = snapshot()
    t, _ = translated(snap)
    moved = dict(snap.switches, **{"ls-b": dataclasses.replace(snap.switches["ls-b"], vni=4242)})
    changed = t.update(dataclasses.replace(snap, switches=moved))
    assert set(changed) == {"ls-b"} and t.rows["ls-b"][1] == 4242


def test_incremental_equals_afresh_for_rules_middleboxes_and_vms_changing_switch():
    snap = snapshot()
    t, _ = translated(snap)
    nat = snap.nat_rules["nat-a"]
    steps = [
        dict(rules={"fw-a": snap.rules["fw-a"][1:]}),
        dict(nat_rules={"nat-a": nat[:1]}),
        dict(middleboxes=dict(snap.middleboxes, **{"ids-a": dataclasses.replace(
            snap.middleboxes["ids-a"], switch="ls-b")})),
        dict(vms=dict(snap.vms, a3=dataclasses.replace(snap.vms["a3"], switch="ls-b"))),
        dict(rules={}, address_sets={"admins": AddressSetInfo("admins", "A", ())}),
    ]
    for step in steps:
        changed = dataclasses.replace(snap, **step)
        t.update(changed)
        fresh = Translator()
        fresh.update(changed)
        assert t.rows == fresh.rows, step
