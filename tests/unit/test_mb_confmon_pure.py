"""The pure parts of middlebox.confmon: condition chain and HostConfig."""

import json
import os
import sys
import uuid
from types import SimpleNamespace as Row

# The middlebox package may not be installed into the venv (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import confmon  # noqa: E402
from mbxmodel.services import RuleInfo  # noqa: E402
from middlebox.config import VmSpec  # noqa: E402
from ovsdb.server import SB_SCHEMA_PATH, SCHEMA_PATH  # noqa: E402


def U(n):
    return uuid.UUID(int=n)


def world():
    """Two tenants; h1 serves red, h2 serves blue.  Southbound rows (Chassis,
    Slice, VM_Location) and northbound rows in one mapping.  Ref columns
    hold UUIDs in the shapes python-ovs gives: optional refs as lists,
    required as UUID; optional strings as lists."""
    return {
        "Chassis": [Row(uuid=U(1), name="h1"), Row(uuid=U(2), name="h2")],
        "Slice": [Row(uuid=U(10), chain={0: "fw-red"}, chassis="h1", tag=10),
                  Row(uuid=U(11), chain={0: "fw-blue"}, chassis="h2", tag=11)],
        "Middlebox": [
            Row(uuid=U(20), name="fw-red", type="firewall", tenant="red",
                logical_switch=U(40), default_action="deny",
                rules=[U(30)], provider_rules=[U(31)],
                options={"check": "offload"}),
            Row(uuid=U(21), name="fw-blue", type="firewall", tenant="",
                logical_switch=U(41), default_action="allow",
                rules=[U(32)], provider_rules=[], options={})],
        "Firewall_Rule": [
            Row(uuid=U(30), priority=100, direction="from-vm",
                match="proto=tcp dst=$red-web dport=80", address_sets=[U(50)],
                action="allow", tenant="red"),
            Row(uuid=U(31), priority=200, direction="to-vm",
                match="proto=icmp", address_sets=[], action="reject"),
            Row(uuid=U(32), priority=1, direction="to-vm", match="any",
                address_sets=[U(51)], action="deny", tenant="")],
        "Address_Set": [
            Row(uuid=U(50), name="red-web", tenant="red",
                addresses=["10.1.0.11", "10.1.0.10"]),
            Row(uuid=U(51), name="blue-db", tenant="blue",
                addresses=["10.2.0.5"])],
        "Logical_Switch": [
            Row(uuid=U(40), name="ls-red", tenant="red", vni=101,
                subnet="10.1.0.0/24"),
            Row(uuid=U(41), name="ls-blue", tenant="", vni=102,
                subnet="10.2.0.0/24")],
        "VM": [
            Row(uuid=U(60), name="red2", logical_switch=U(40),
                mac="02:00:00:00:00:AA", ip="10.1.0.2"),
            Row(uuid=U(61), name="red1", logical_switch=U(40),
                mac="02:00:00:00:00:01", ip="10.1.0.1"),
            Row(uuid=U(62), name="blue1", logical_switch=U(41),
                mac="02:00:00:00:00:02", ip="10.2.0.1")],
        "VM_Location": [
            Row(uuid=U(65), vm="red2", chassis=["h2"], epoch=3),
            Row(uuid=U(66), vm="red1", chassis=["h1"], epoch=2),
            Row(uuid=U(67), vm="blue1", chassis=[], epoch=0)],
    }


def uuid_clause(column, n):
    return [column, "==", ["uuid", str(U(n))]]


def schema_columns(path):
    with open(path) as f:
        return {table: set(spec["columns"])
                for table, spec in json.load(f)["tables"].items()}


def test_every_column_read_is_in_its_database():
    """Runtime from the southbound schema, intent from the northbound one;
    nothing is read from the northbound VM.host mirror."""
    sb, nb = schema_columns(SB_SCHEMA_PATH), schema_columns(SCHEMA_PATH)
    for table, columns in confmon.SB_COLUMNS.items():
        assert set(columns) <= sb[table], table
    for table, columns in confmon.NB_COLUMNS.items():
        assert set(columns) <= nb[table], table
    assert not set(confmon.SB_COLUMNS) & set(confmon.NB_COLUMNS)
    assert "host" not in confmon.NB_COLUMNS["VM"]


def test_initial_conditions_select_only_my_host():
    conds = confmon.initial_conditions("h1")
    assert conds["Chassis"] == [["name", "==", "h1"]]
    assert conds["Slice"] == [["chassis", "==", "h1"]]
    assert conds["External_Network"] == [True]
    assert set(conds) == set(confmon.TABLES)
    # Migrations naming this host, as source or destination (docs/migration.md).
    assert conds["Migration"] == [["source", "==", "h1"], ["destination", "==", "h1"]]
    assert all(conds[t] == [] for t in confmon.TABLES
               if t not in ("Chassis", "Slice", "External_Network", "Migration"))
    for table in ("Steering_Policy", "NB_Global", "IDS_Alert", "SB_Global",
                  "Chassis_Private", "Port_Binding", "Datapath"):
        assert table not in conds


def test_conditions_follow_the_chain_of_my_slices_only():
    conds = confmon.conditions("h1", world())
    assert conds["Chassis"] == [["name", "==", "h1"]]
    assert conds["Slice"] == [["chassis", "==", "h1"]]
    assert conds["Middlebox"] == [["name", "==", "fw-red"]]
    assert conds["Shared_State"] == [["middlebox", "==", "fw-red"]]
    assert conds["Firewall_Rule"] == [uuid_clause("_uuid", 30),
                                      uuid_clause("_uuid", 31)]
    assert conds["Address_Set"] == [uuid_clause("_uuid", 50)]
    assert conds["Logical_Switch"] == [uuid_clause("_uuid", 40)]
    assert conds["VM"] == [uuid_clause("logical_switch", 40)]
    assert conds["VM_Location"] == [["vm", "==", "red1"], ["vm", "==", "red2"]]


def test_conditions_grow_one_level_per_arrival():
    w = world()
    conds = confmon.conditions("h1", {})
    assert conds == confmon.initial_conditions("h1")
    with_slice = {"Slice": [w["Slice"][0]]}
    conds = confmon.conditions("h1", with_slice)
    # The slice names its middleboxes: their intent and their shared state
    # are asked for at once, from the two databases.
    assert conds["Middlebox"] == [["name", "==", "fw-red"]]
    assert conds["Shared_State"] == [["middlebox", "==", "fw-red"]]
    assert conds["Firewall_Rule"] == [] and conds["VM"] == []
    with_mb = dict(with_slice, Middlebox=[w["Middlebox"][0]])
    conds = confmon.conditions("h1", with_mb)
    assert len(conds["Firewall_Rule"]) == 2
    assert conds["Logical_Switch"] == [uuid_clause("_uuid", 40)]
    assert conds["VM"] == [uuid_clause("logical_switch", 40)]
    assert conds["Address_Set"] == []      # rules not here yet
    assert conds["VM_Location"] == []      # VMs not here yet
    with_vms = dict(with_mb, VM=w["VM"])
    conds = confmon.conditions("h1", with_vms)
    assert conds["VM_Location"] == [["vm", "==", "red1"], ["vm", "==", "red2"]]


def test_conditions_ignore_rows_lingering_in_the_replica():
    """Replicas still holding blue rows (condition change not yet acked)
    must not keep asking for blue rows: everything shrinks at once."""
    w = world()
    w["Slice"] = [w["Slice"][0]]           # blue slice gone, rest lingers
    conds = confmon.conditions("h1", w)
    flat = repr(conds)
    for n in (21, 32, 41, 51):
        assert str(U(n)) not in flat
    assert "blue" not in flat


def test_a_middlebox_of_another_name_is_not_asked_for():
    """A slice names its middleboxes: a Middlebox row of another name in the
    replica (e.g. renamed) is not reached and asks for nothing."""
    w = world()
    w["Middlebox"][0].name = "fw-red-old"
    conds = confmon.conditions("h1", w)
    assert conds["Middlebox"] == [["name", "==", "fw-red"]]
    assert conds["Firewall_Rule"] == [] and conds["VM"] == []
    assert confmon.build_host_config("h1", w).slices == {}


def test_migration_peers_add_their_chassis():
    w = world()
    w["Migration"] = [Row(uuid=U(300), vm="red1", source="h1",
                          destination="h7"),
                      Row(uuid=U(301), vm="red9", source="h8",
                          destination="h1")]
    conds = confmon.conditions("h1", w)
    assert conds["Chassis"] == [["name", "==", n] for n in ("h1", "h7", "h8")]


def test_a_host_without_slices_asks_for_nothing_more():
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
        RuleInfo(200, "to-vm", "proto=icmp", "reject", "provider",
                 str(U(31))),
        RuleInfo(100, "from-vm", "proto=tcp dst=$red-web dport=80", "allow",
                 "tenant", str(U(30))))
    assert red.address_sets == {"red-web": ("10.1.0.10", "10.1.0.11")}
    assert red.vms == (
        VmSpec("red1", "02:00:00:00:00:01", "10.1.0.1", "h1"),
        VmSpec("red2", "02:00:00:00:00:aa", "10.1.0.2", None))


def test_vm_location_comes_from_the_southbound_database():
    """VmSpec.host: this host iff the VM's VM_Location names its chassis; a
    VM without a location (or with an empty one) is nowhere.  VM.host, the
    northbound mirror, is not read even when it says otherwise."""
    w = world()
    for vm in w["VM"]:
        vm.host = "h1"                      # a stale mirror: ignored
    w["VM_Location"][0].chassis = ["h1"]    # red2 moved here
    w["VM_Location"] = [loc for loc in w["VM_Location"] if loc.vm != "red1"]
    red = confmon.build_host_config("h1", w).slices[10]
    assert [(vm.name, vm.host) for vm in red.vms] == [("red1", None),
                                                      ("red2", "h1")]
    # A location row of a VM of another tenant is not reached.
    w["VM_Location"].append(Row(uuid=U(68), vm="blue1", chassis=["h1"],
                                epoch=4))
    assert confmon.reach("h1", w)["VM_Location"] == {U(65)}


def test_tenant_defaults_to_switch_name():
    cfg = confmon.build_host_config("h2", world())
    assert cfg.slices[11].tenant == "ls-blue"
    assert cfg.slices[11].vms == (
        VmSpec("blue1", "02:00:00:00:00:02", "10.2.0.1", None),)


def test_odd_rows_are_skipped_with_one_warning_each():
    w = world()
    rules = w["Firewall_Rule"]
    rules.append(Row(uuid=U(33), priority=5, direction="", match="any",
                     address_sets=[], action="allow", tenant="red"))
    rules.append(Row(uuid=U(34), priority=5, direction="to-vm",
                     match="proto=tcp dport=99999", address_sets=[],
                     action="allow", tenant="red"))
    rules.append(Row(uuid=U(35), priority=5, direction="to-vm", match="any",
                     address_sets=[], action="", tenant="red"))
    rules.append(Row(uuid=U(36), priority=6, direction="to-vm", match="any",
                     address_sets=[], action="deny", tenant="red"))
    w["Middlebox"][0].rules += [U(33), U(34), U(35), U(36), U(99)]
    w["Address_Set"][0].addresses.append("not-an-address")
    w["Slice"].append(Row(uuid=U(12), chain={0: "fw-blue"}, chassis="h1",
                          tag=0))
    w["Slice"].append(Row(uuid=U(13), chain={0: "fw-blue"}, chassis="h1",
                          tag=10))
    w["Slice"].append(Row(uuid=U(14), chain={0: "fw-nowhere"}, chassis="h1",
                          tag=14))              # middlebox not (yet) here
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append((key, msg)))
    red = cfg.slices[10]
    assert red.middlebox == "fw-red"           # the lower Slice uuid wins
    assert list(cfg.slices) == [10]
    assert [r.uuid for r in red.rules] == [str(U(31)), str(U(30)),
                                           str(U(36))]
    assert red.rules[-1].tier == "tenant"      # held in Middlebox.rules
    assert red.address_sets == {"red-web": ("10.1.0.10", "10.1.0.11")}
    keys = [key for key, _ in warnings]
    assert len(keys) == len(set(keys)) == 6
    text = "\n".join(msg for _, msg in warnings)
    assert "direction ''" in text and "dport 99999" in text
    assert "action ''" in text and "not-an-address" in text
    assert "tag 0" in text and "tag 10 already used by middlebox fw-red" in text


def test_unknown_middlebox_type_and_missing_switch():
    w = world()
    w["Middlebox"][0].type = "router"
    w["Slice"][1].chassis = "h1"
    w["Logical_Switch"] = [w["Logical_Switch"][0]]   # ls-blue not here yet
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append(msg))
    assert cfg.slices == {}
    assert len(warnings) == 1 and "type 'router'" in warnings[0]


def test_held_names():
    held = confmon.held_names(world())
    assert held["Chassis"] == ["h1", "h2"]
    assert held["VM"] == ["blue1", "red1", "red2"]
    assert held["VM_Location"] == ["blue1", "red1", "red2"]
    assert held["Slice"] == [str(U(10)), str(U(11))]
    assert set(held) == set(confmon.TABLES)


# ------------------------------------------------------------ chains (1.2.0)

def chain_world():
    """h1 has two slices of tenant red: [fw-red, nat-red, lb-red, ids-red]
    (tag 20) and [lb-red] (tag 21); a NAT middlebox of tenant blue lives on
    another switch."""
    w = world()
    w["Slice"] = [
        Row(uuid=U(100), chain={3: "ids-red", 0: "fw-red", 1: "nat-red",
                                2: "lb-red"},
            chassis="h1", tag=20,
            status={"snat-block:" + str(U(70)): "198.51.100.7:8192-12287",
                    "snat-block:" + str(U(71)): "198.51.100.8:9-x",
                    "other": "ignored"}),
        Row(uuid=U(101), chain={0: "lb-red"}, chassis="h1", tag=21,
            status={}),
        Row(uuid=U(102), chain={0: "nat-blue"}, chassis="h2", tag=22,
            status={})]
    w["Middlebox"] += [
        Row(uuid=U(24), name="nat-red", type="nat", tenant="red", logical_switch=U(40),
            default_action="deny", rules=[], nat_rules=[U(70), U(72), U(73)],
            vips=[], options={"ports-per-host": "4096", "check": "every-packet"}),
        Row(uuid=U(22), name="lb-red", type="lb", tenant="red", logical_switch=U(40),
            default_action="deny", rules=[], nat_rules=[], vips=[U(80), U(81)],
            options={"lb-only": "1"}),
        Row(uuid=U(23), name="ids-red", type="ids", tenant="red", logical_switch=U(40),
            default_action="deny", rules=[], nat_rules=[], vips=[],
            options={"scan-threshold": "5"}),
        Row(uuid=U(25), name="nat-blue", type="nat", tenant="", logical_switch=U(41),
            default_action="deny", rules=[], nat_rules=[U(74)], vips=[],
            options={})]
    w["NAT_Rule"] = [
        Row(uuid=U(70), type="snat",
            external_ips=["198.51.100.8", "198.51.100.7"], logical_ip="",
            protocol=[], external_port=[], logical_port=[], port_range=[]),
        Row(uuid=U(72), type="dnat", external_ips=["198.51.100.9"],
            logical_ip="10.1.0.1", protocol=["tcp"], external_port=[8080],
            logical_port=[80], port_range=[]),
        Row(uuid=U(73), type="snat", external_ips=["198.51.100.7"],
            logical_ip="10.1.0.0/25", protocol=[], external_port=[],
            logical_port=[], port_range=["40000-2000"]),     # bad range
        Row(uuid=U(74), type="snat", external_ips=["203.0.113.1"],
            logical_ip="", protocol=[], external_port=[], logical_port=[],
            port_range=["2048-4095"])]
    w["LB_VIP"] = [
        Row(uuid=U(80), vip="10.1.0.100", port=80, protocol="tcp",
            algorithm="least-connections",
            backends=["10.1.0.2:8080", "10.1.0.1:8080", "bogus"],
            options={"health-interval": "1"}),
        Row(uuid=U(81), vip="10.1.0.100", port=53, protocol="udp",
            algorithm="source-hash", backends=[], options={})]
    w["External_Network"] = [
        Row(uuid=U(90), name="wan2", cidr="203.0.113.0/24",
            gateway_ip="203.0.113.254", gateway_mac="02:AA:00:00:00:02"),
        Row(uuid=U(91), name="wan1", cidr="198.51.100.0/24",
            gateway_ip="198.51.100.1", gateway_mac="02:aa:00:00:00:01")]
    w["Logical_Switch"][0].subnet = "10.1.0.0/24"
    w["Logical_Switch"][0].gateway = []
    w["Logical_Switch"][1].subnet = "10.2.0.0/24"
    w["Logical_Switch"][1].gateway = ["10.2.0.254"]
    w["Shared_State"] = [
        Row(uuid=U(200), middlebox="lb-red", host="h2", service="lb-health",
            key="view", value="{}", stamp=1),
        Row(uuid=U(201), middlebox="nat-blue", host="h2", service="x",
            key="y", value="1", stamp=1)]
    return w


def test_conditions_of_a_chain():
    conds = confmon.conditions("h1", chain_world())
    assert conds["Middlebox"] == [["name", "==", n] for n in
                                  ("fw-red", "ids-red", "lb-red", "nat-red")]
    assert conds["NAT_Rule"] == [uuid_clause("_uuid", n) for n in (70, 72, 73)]
    assert conds["LB_VIP"] == [uuid_clause("_uuid", 80),
                               uuid_clause("_uuid", 81)]
    assert conds["Logical_Switch"] == [uuid_clause("_uuid", 40)]
    assert conds["External_Network"] == [True]
    assert conds["Shared_State"] == [["middlebox", "==", n] for n in
                                     ("fw-red", "ids-red", "lb-red",
                                      "nat-red")]
    held = confmon.held_names(chain_world())
    assert held["Shared_State"] == ["lb-red/lb-health/view@h2",
                                    "nat-blue/x/y@h2"]
    assert held["External_Network"] == ["wan1", "wan2"]


def test_chain_slice_config():
    warnings = []
    cfg = confmon.build_host_config(
        "h1", chain_world(), lambda key, msg: warnings.append((key, msg)))
    assert sorted(cfg.slices) == [20, 21]
    s = cfg.slices[20]
    assert [(sv.name, sv.type) for sv in s.services] == [
        ("fw-red", "firewall"), ("nat-red", "nat"), ("lb-red", "lb"),
        ("ids-red", "ids")]
    # Legacy firewall fields: the chain's (first) firewall.
    assert (s.middlebox, s.type, s.default_action) == ("fw-red", "firewall",
                                                        "deny")
    assert [r.uuid for r in s.rules] == [str(U(31)), str(U(30))]
    assert s.address_sets == {"red-web": ("10.1.0.10", "10.1.0.11")}
    fw = s.services[0]
    assert (fw.rules, fw.address_sets, fw.default_action) == (
        s.rules, s.address_sets, "deny")
    # Options of the whole chain, the first occurrence of a key winning.
    assert s.options == {"check": "offload", "ports-per-host": "4096",
                         "lb-only": "1", "scan-threshold": "5"}
    assert s.services[1].options == {"ports-per-host": "4096",
                                     "check": "every-packet"}
    nat = s.services[1]
    assert [(r.uuid, r.type) for r in nat.nat_rules] == [
        (str(U(72)), "dnat"), (str(U(70)), "snat")]
    dnat, snat = nat.nat_rules
    assert snat.external_ips == ("198.51.100.7", "198.51.100.8")
    assert (snat.logical_ip, snat.protocol, snat.port_range) == (
        "", "", (1024, 65535))
    assert (dnat.external_ips, dnat.logical_ip, dnat.protocol,
            dnat.external_port, dnat.logical_port) == (
        ("198.51.100.9",), "10.1.0.1", "tcp", 8080, 80)
    lb = s.services[2]
    assert [(v.vip, v.port, v.protocol, v.algorithm) for v in lb.vips] == [
        ("10.1.0.100", 53, "udp", "source-hash"),
        ("10.1.0.100", 80, "tcp", "least-connections")]
    assert lb.vips[1].backends == (("10.1.0.1", 8080), ("10.1.0.2", 8080))
    assert lb.vips[1].options == {"health-interval": "1"}
    assert s.services[3].options == {"scan-threshold": "5"}
    assert (s.subnet, s.gateway) == ("10.1.0.0/24", "10.1.0.1")
    assert s.snat_blocks == {str(U(70)): ("198.51.100.7", 8192, 12287)}
    assert [n.name for n in s.external] == ["wan1", "wan2"]
    assert s.external[1].gateway_mac == "02:aa:00:00:00:02"
    # A chain without a firewall: an allow-all firewall named by the chain.
    only_lb = cfg.slices[21]
    assert (only_lb.middlebox, only_lb.type, only_lb.default_action,
            only_lb.rules, only_lb.address_sets) == (
        "lb-red", "chain", "allow", (), {})
    assert only_lb.options == {"lb-only": "1"}
    assert only_lb.external == s.external and only_lb.snat_blocks == {}
    warned = dict(warnings)       # lb-red serves both slices: one key
    text = "\n".join(warned.values())
    assert len(warned) == 3, text
    assert "40000-2000" in text and "'bogus'" in text
    assert "snat-block:" + str(U(71)) in text


def test_chain_without_firewall_joins_names_and_gateway_given():
    w = chain_world()
    w["Slice"][0].chain = {0: "nat-red", 5: "lb-red"}
    cfg = confmon.build_host_config("h1", w, lambda *_: None)
    assert (cfg.slices[20].middlebox, cfg.slices[20].type) == (
        "nat-red,lb-red", "chain")
    cfg = confmon.build_host_config("h2", w, lambda *_: None)
    blue = cfg.slices[22]
    assert (blue.middlebox, blue.gateway, blue.subnet) == (
        "nat-blue", "10.2.0.254", "10.2.0.0/24")
    assert blue.services[0].nat_rules[0].port_range == (2048, 4095)


def test_chain_spanning_switches_is_skipped():
    w = chain_world()
    w["Slice"][0].chain = {0: "fw-red", 1: "nat-blue"}
    w["Slice"][0].chassis = "h1"
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append(msg))
    assert sorted(cfg.slices) == [21]
    spans = [msg for msg in warnings if "spans" in msg]
    assert len(spans) == 1 and "fw-red,nat-blue spans 2 logical switches" \
        in spans[0]


def test_chain_waits_for_every_middlebox_and_empty_chain_is_nothing():
    w = chain_world()
    w["Middlebox"] = [mb for mb in w["Middlebox"] if mb.name != "ids-red"]
    w["Slice"][1].chain = {}
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append(msg))
    assert cfg.slices == {}
    # The missing middlebox is still asked for.
    assert ["name", "==", "ids-red"] in confmon.conditions("h1", w)["Middlebox"]


def test_bad_nat_rules_and_vips_are_skipped():
    w = chain_world()
    w["NAT_Rule"] += [
        Row(uuid=U(75), type="dnat", external_ips=["198.51.100.1",
                                                   "198.51.100.2"],
            logical_ip="10.1.0.1", protocol=[], external_port=[],
            logical_port=[], port_range=[]),
        Row(uuid=U(76), type="snat", external_ips=["not-an-ip"],
            logical_ip="", protocol=[], external_port=[], logical_port=[],
            port_range=[])]
    w["Middlebox"][2].nat_rules += [U(75), U(76)]
    w["LB_VIP"].append(Row(uuid=U(82), vip="10.1.0.300", port=80,
                           protocol="tcp", algorithm="round-robin",
                           backends=[], options={}))
    w["Middlebox"][3].vips.append(U(82))
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append(msg))
    nat = cfg.slices[20].services[1]
    assert [r.uuid for r in nat.nat_rules] == [str(U(72)), str(U(70))]
    assert len(cfg.slices[20].services[2].vips) == 2
    text = "\n".join(warnings)
    assert "exactly one external IP" in text and "not-an-ip" in text
    assert "10.1.0.300" in text


def test_rows_claiming_another_tenant_are_skipped():
    """What RBAC cannot check (mbxmodel.tenancy): a tenant rule of another
    tenant, a provider rule with a tenant, a middlebox whose tenant is not
    its switch's."""
    w = world()
    w["Firewall_Rule"] += [
        Row(uuid=U(37), priority=7, direction="to-vm", match="any",
            address_sets=[], action="allow", tenant="blue"),
        Row(uuid=U(38), priority=8, direction="to-vm", match="any",
            address_sets=[], action="allow", tenant="red")]
    w["Middlebox"][0].rules += [U(37)]
    w["Middlebox"][0].provider_rules += [U(38)]
    warnings = []
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append((key, msg)))
    assert [r.uuid for r in cfg.slices[10].rules] == [str(U(31)), str(U(30))]
    text = "\n".join(msg for _, msg in warnings)
    assert "a tenant rule claims tenant 'blue', not 'red'" in text
    assert "a provider rule claims tenant 'red'" in text
    w["Middlebox"][0].tenant = "blue"
    warnings.clear()
    cfg = confmon.build_host_config(
        "h1", w, lambda key, msg: warnings.append((key, msg)))
    assert cfg.slices == {}
    assert any("middlebox 'fw-red' claims tenant 'blue'" in msg
               for _, msg in warnings)
