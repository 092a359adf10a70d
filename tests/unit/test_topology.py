import pytest

from mbxmodel.network import SwitchInfo, VMInfo
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, PolicyInfo,
                               RuleInfo)
from mbxmodel.snapshot import NbSnapshot
from ovsdb.errors import MbxError
from ovsdb.topology import check_against, parse_topology
from ovsdb.validate import mac_from_name

GOOD = """
switches:
  - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24,
     gateway: 10.0.0.254}
  - {name: ls-b, vni: 102, subnet: 10.0.0.0/24, gateway: 10.0.0.254}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.1, mac: "02:00:00:00:01:01"}
  - {name: b1, switch: ls-b, ip: 10.0.0.1}
"""

LAB = """
hosts: [h1, h2]
switches:
  - {name: ls-a, vni: 101, subnet: 10.0.0.0/24}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.3, host: h2}
  - {name: a2, switch: ls-a, ip: 10.0.0.2}
"""


def test_parse_good_file():
    spec = parse_topology(GOOD)
    assert spec.switches == (
        SwitchInfo("ls-a", "tenant-a", 101, "10.0.0.0/24", "10.0.0.254"),
        SwitchInfo("ls-b", "ls-b", 102, "10.0.0.0/24", "10.0.0.254"))
    assert spec.vms == (
        VMInfo("a1", "ls-a", "02:00:00:00:01:01", "10.0.0.1"),
        VMInfo("b1", "ls-b", mac_from_name("b1"), "10.0.0.1"))
    assert spec.hosts == () and spec.placement == {}


def test_empty_file_is_an_empty_topology():
    spec = parse_topology("")
    assert spec.switches == () and spec.vms == ()


@pytest.mark.parametrize("text,message", [
    ("vms:\n  - {name: a1, switch: s}\n  - {name: a2, switch: s, ip: 10.0.0.2}"
     "\n  - {name: a3, switch: s, ipp: 10.0.0.1}\n",
     "vms[0] (a1): missing key 'ip'"),
    ("vms:\n  - {name: a3, switch: s, ipp: 10.0.0.1}\n",
     "vms[0] (a3): unknown key 'ipp'; expected name, switch, ip, mac"),
    ("switches:\n  - {name: s, vni: '7', subnet: 10.0.0.0/24}\n",
     "switches[0] (s): vni must be an integer"),
    ("switches:\n  - {name: s, vni: 0, subnet: 10.0.0.0/24}\n",
     "switches[0] (s): invalid VNI 0"),
    ("switches:\n  - {name: s, vni: 7, subnet: 10.0.0.5/24}\n",
     "switches[0] (s): invalid subnet '10.0.0.5/24': host bits are set; "
     "did you mean 10.0.0.0/24?"),
    ("switches:\n  - {name: 'bad name', vni: 7, subnet: 10.0.0.0/24}\n",
     "switches[0] (bad name): invalid switch name 'bad name'"),
    ("switches:\n  - [s, 7]\n", "switches[0]: expected a mapping"),
    ("switches: {name: s}\n", "switches: expected a list of switches"),
    ("[1, 2]\n", "topology: expected a mapping with keys switches, vms"),
    ("switch: []\n", "topology: unknown key 'switch'"),
    ("hosts: [h1]\n", "topology: unknown key 'hosts'"),
    ("vms:\n  - {name: a1, switch: s, ip: 10.0.0.1, mac: 12:34:56:00:01:01}\n",
     "vms[0] (a1): mac must be a quoted string"),
    ("vms:\n  - {name: a1, switch: s, ip: 10.0.0.1, mac: '03:00:00:00:01:01'}"
     "\n", "vms[0] (a1): invalid MAC '03:00:00:00:01:01': it is a multicast"),
    ("vms:\n  - {name: a1, switch: s, ip: 10.0.0.300}\n",
     "vms[0] (a1): invalid IP address '10.0.0.300'"),
    ("vms:\n  - {name: a1, switch: s, ip: 10.0.0.1, host: h1}\n",
     "vms[0] (a1): unknown key 'host'"),
    ("switches: [\n", "invalid YAML: "),
])
def test_parse_rejects_with_one_line_naming_the_entry(text, message):
    with pytest.raises(MbxError) as info:
        parse_topology(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("extra,message", [
    ("  - {name: ls-c, vni: 101, subnet: 10.1.0.0/24}\n",
     "switches[2] (ls-c): VNI 101 is already used by logical switch 'ls-a'"),
    ("  - {name: ls-a, vni: 103, subnet: 10.1.0.0/24}\n",
     "switches[2] (ls-a): switch 'ls-a' is listed twice"),
])
def test_parse_cross_checks_switches(extra, message):
    text = GOOD.replace("vms:", extra + "vms:")
    with pytest.raises(MbxError) as info:
        parse_topology(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("vm,message", [
    ("{name: a2, switch: ls-a, ip: 10.0.0.1}",
     "vms[2] (a2): IP 10.0.0.1 is already used by VM 'a1'"),
    ('{name: a2, switch: ls-a, ip: 10.0.0.2, mac: "02:00:00:00:01:01"}',
     "vms[2] (a2): MAC 02:00:00:00:01:01 is already used by VM 'a1'"),
    ("{name: a2, switch: ls-a, ip: 10.0.1.2}",
     "vms[2] (a2): IP 10.0.1.2 is outside subnet 10.0.0.0/24"),
    ("{name: a1, switch: ls-a, ip: 10.0.0.9}",
     "vms[2] (a1): VM 'a1' is listed twice"),
])
def test_parse_cross_checks_vms(vm, message):
    with pytest.raises(MbxError) as info:
        parse_topology(GOOD + f"  - {vm}\n")
    assert str(info.value).startswith(message)


def test_vm_on_switch_outside_the_file_is_left_to_apply():
    spec = parse_topology("vms:\n  - {name: x, switch: elsewhere, "
                          "ip: 10.0.0.1}\n")
    assert spec.vms[0].switch == "elsewhere"


def test_placement_only_when_allowed():
    spec = parse_topology(LAB, allow_placement=True)
    assert spec.hosts == ("h1", "h2")
    assert spec.placement == {"a1": "h2"}
    assert [vm.name for vm in spec.vms] == ["a1", "a2"]
    with pytest.raises(MbxError, match="^topology: unknown key 'hosts'"):
        parse_topology(LAB)


def test_placement_on_unlisted_host_is_rejected():
    text = LAB.replace("host: h2", "host: h9")
    with pytest.raises(MbxError, match=r"^vms\[0\] \(a1\): host 'h9' is not "
                                       "in the hosts list"):
        parse_topology(text, allow_placement=True)


def _snapshot(switches=(), vms=()):
    return NbSnapshot(nb_cfg=0, hv_cfg=0,
                      switches={s.name: s for s in switches},
                      vms={v.name: v for v in vms})


DB_SWITCH = SwitchInfo("db-sw", "t", 101, "10.9.0.0/24", "10.9.0.254")
DB_VM = VMInfo("db-vm", "db-sw", "02:00:00:00:09:01", "10.9.0.1")


def test_check_against_db_duplicate_vni():
    spec = parse_topology(GOOD)
    with pytest.raises(MbxError, match=r"^switches\[0\] \(ls-a\): VNI 101 is "
                                       "already used by logical switch "
                                       "'db-sw'"):
        check_against(spec, _snapshot([DB_SWITCH]))


def test_check_against_db_unknown_and_known_switch():
    spec = parse_topology("vms:\n  - {name: x, switch: db-sw, ip: 10.9.0.1}\n")
    with pytest.raises(MbxError, match=r"^vms\[0\] \(x\): unknown logical "
                                       "switch 'db-sw'"):
        check_against(spec, _snapshot())
    with pytest.raises(MbxError, match="IP 10.9.0.1 is already used by VM "
                                       "'db-vm'"):
        check_against(spec, _snapshot([DB_SWITCH], [DB_VM]))
    ok = parse_topology("vms:\n  - {name: x, switch: db-sw, ip: 10.9.0.2}\n")
    check_against(ok, _snapshot([DB_SWITCH], [DB_VM]))


def test_check_against_db_updated_vm_does_not_clash_with_itself():
    spec = parse_topology("vms:\n  - {name: db-vm, switch: db-sw, "
                          "ip: 10.9.0.1}\n")
    check_against(spec, _snapshot([DB_SWITCH], [DB_VM]))


def test_changing_a_subnet_must_keep_existing_vms_inside():
    spec = parse_topology("switches:\n  - {name: db-sw, tenant: t, vni: 101, "
                          "subnet: 10.8.0.0/24, gateway: 10.8.0.254}\n")
    with pytest.raises(MbxError, match="^VM 'db-vm': IP 10.9.0.1 is outside "
                                       "subnet 10.8.0.0/24"):
        check_against(spec, _snapshot([DB_SWITCH], [DB_VM]))


FIREWALL = """
switches:
  - {name: ls-red, tenant: red, vni: 1001, subnet: 10.0.0.0/24}
address_sets:
  - {name: red-admins, tenant: red, addresses: [10.0.0.11, 10.0.9.0/24,
                                                10.0.0.2/32]}
  - {name: red-none, tenant: red}
middleboxes:
  - name: fw-red
    type: firewall
    switch: ls-red
    default_action: reject
    options: {same-host: both, timeout-udp: 60}
    rules:
      - {priority: 100, direction: to-vm, match: "proto=tcp,dport=7000",
         action: allow, tier: tenant}
      - {priority: 100, direction: from-vm, match: "dst=$red-admins",
         action: deny}
      - {priority: 100, direction: to-vm, match: "", action: deny,
         tier: provider}
  - {name: fw-bare, switch: ls-red}
steering:
  - {switch: ls-red, priority: 100, match: any, middlebox: fw-red}
  - {switch: ls-red, priority: 200, match: "src=$red-admins",
     middlebox: bypass}
"""


def test_parse_firewall():
    spec = parse_topology(FIREWALL)
    assert spec.address_sets == (
        AddressSetInfo("red-admins", "red",
                       ("10.0.0.2", "10.0.0.11", "10.0.9.0/24")),
        AddressSetInfo("red-none", "red", ()))
    assert spec.middleboxes == (
        MiddleboxInfo("fw-red", "firewall", "ls-red", "reject",
                      {"same-host": "both", "timeout-udp": "60"}),
        MiddleboxInfo("fw-bare", "firewall", "ls-red", "deny", {}))
    assert spec.rules == {
        "fw-red": (RuleInfo(100, "to-vm", "proto=tcp dport=7000", "allow"),
                   RuleInfo(100, "from-vm", "dst=$red-admins", "deny"),
                   RuleInfo(100, "to-vm", "any", "deny", "provider")),
        "fw-bare": ()}
    assert spec.policies == (
        PolicyInfo("ls-red", 100, "any", ("fw-red",)),
        PolicyInfo("ls-red", 200, "src=$red-admins", ()))
    assert spec.steered_switches == ("ls-red",)


def _edit(old, new):
    assert old in FIREWALL
    return FIREWALL.replace(old, new)


@pytest.mark.parametrize("text,message", [
    (_edit("default_action: reject", "default_action: drop"),
     "middleboxes[0] (fw-red): invalid default action 'drop': use allow, "
     "deny or reject"),
    (_edit("type: firewall", "type: router"),
     "middleboxes[0] (fw-red): invalid middlebox type 'router'"),
    (_edit("type: firewall", "type: nat"),
     "middleboxes[0] (fw-red): nat middlebox 'fw-red' has firewall rules; "
     "only a firewall middlebox has rules"),
    (_edit("timeout-udp: 60", "timeout-udp: 0"),
     "middleboxes[0] (fw-red): invalid value '0' for option timeout-udp"),
    (_edit("same-host: both", "same-hosts: both"),
     "middleboxes[0] (fw-red): unknown middlebox option 'same-hosts'; known "
     "options: check, same-host"),
    (_edit("options: {", "colour: red\n    options: {"),
     "middleboxes[0] (fw-red): unknown key 'colour'; expected name, type, "
     "switch, default_action, options, rules"),
    (_edit("{name: fw-bare, switch: ls-red}", "{name: fw-bare}"),
     "middleboxes[1] (fw-bare): missing key 'switch'"),
    (_edit("{name: fw-bare, switch: ls-red}",
           "{name: fw-red, switch: ls-red}"),
     "middleboxes[1] (fw-red): middlebox 'fw-red' is listed twice"),
    (_edit("priority: 100, direction: to-vm, match: \"proto",
           "priority: 40000, direction: to-vm, match: \"proto"),
     "middleboxes[0] (fw-red): rules[0]: invalid rule priority 40000: use an "
     "integer from 0 to 32767"),
    (_edit("priority: 100, direction: to-vm, match: \"proto",
           "priority: '100', direction: to-vm, match: \"proto"),
     "middleboxes[0] (fw-red): rules[0]: priority must be an integer"),
    (_edit("direction: from-vm", "direction: inbound"),
     "middleboxes[0] (fw-red): rules[1]: invalid direction 'inbound'"),
    (_edit("action: allow, tier: tenant", "action: permit, tier: tenant"),
     "middleboxes[0] (fw-red): rules[0]: invalid action 'permit'"),
    (_edit("tier: provider", "tier: admin"),
     "middleboxes[0] (fw-red): rules[2]: invalid tier 'admin'"),
    (_edit("dport=7000", "dport=70000"),
     'middleboxes[0] (fw-red): rules[0]: bad match "proto=tcp,dport=70000": '
     "dport 70000 out of range"),
    (_edit("action: allow, tier: tenant", "action: allow, order: 1"),
     "middleboxes[0] (fw-red): rules[0]: unknown key 'order'; expected "
     "priority, direction, match, action, tier"),
    (_edit("match: \"\", action: deny,\n         tier: provider",
           "match: \"\", action: deny"),
     "middleboxes[0] (fw-red): rules[2]: middlebox 'fw-red' already has a "
     "tenant to-vm rule at priority 100 (proto=tcp dport=7000 -> allow)"),
    (_edit("{name: red-none, tenant: red}",
           "{name: red-none, tenant: red, addresses: [10.0.0.1/8]}"),
     'address_sets[1] (red-none): bad address "10.0.0.1/8"'),
    (_edit("{name: red-none, tenant: red}",
           "{name: red-admins, tenant: red}"),
     "address_sets[1] (red-admins): address set 'red-admins' is listed "
     "twice"),
    (_edit("{name: red-none, tenant: red}", "{name: red-none}"),
     "address_sets[1] (red-none): missing key 'tenant'"),
    (_edit("tenant: red, addresses: [10.0.0.11",
           "tenant: blue, addresses: [10.0.0.11"),
     'middleboxes[0] (fw-red): rules[1]: address set "red-admins" belongs '
     "to tenant 'blue', not to tenant 'red' of middlebox 'fw-red'"),
    (_edit("priority: 200, match", "priority: 100, match"),
     "steering[1] (ls-red priority 100): logical switch 'ls-red' already "
     "has a steering policy at priority 100 (any -> fw-red)"),
    (_edit("priority: 200, match", "priority: 30001, match"),
     "steering[1] (ls-red priority 30001): invalid steering priority 30001"),
    (_edit("{switch: ls-red, priority: 100, match: any, middlebox: fw-red}",
           "{switch: ls-red, priority: 100, match: any}"),
     "steering[0] (ls-red priority 100): missing key 'chain'"),
    (_edit("match: any, middlebox: fw-red", "match: 7, middlebox: fw-red"),
     "steering[0] (ls-red priority 100): match must be a string"),
    ("steering:\n  - {switch: ls-x, priority: 1, match: any, middlebox: "
     "fw-a}\nmiddleboxes:\n  - {name: fw-a, switch: ls-a}\n",
     "steering[0] (ls-x priority 1): middlebox 'fw-a' serves logical switch "
     "'ls-a', not 'ls-x'"),
    ("middleboxes:\n  - {name: fw-a, switch: ls-a, rules: {priority: 1}}\n",
     "middleboxes[0] (fw-a): rules must be a list"),
    ("middleboxes:\n  - {name: fw-a, switch: ls-a, options: [check]}\n",
     "middleboxes[0] (fw-a): options must be a mapping"),
    ("address_sets:\n  - {name: s, tenant: t, addresses: 10.0.0.1}\n",
     "address_sets[0] (s): addresses must be a list"),
    ("steering: {switch: s}\n",
     "steering: expected a list of steering policies"),
])
def test_parse_firewall_rejects_with_one_line_naming_the_entry(text,
                                                               message):
    with pytest.raises(MbxError) as info:
        parse_topology(text)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,message", [
    (_edit("match: \"dst=$red-admins\"", "match: \"dst=$nobody\""),
     'middleboxes[0] (fw-red): rules[1]: unknown address set "nobody"; '
     "create it first (as-add)"),
    (_edit("match: any, middlebox: fw-red",
           "match: any, middlebox: fw-nope"),
     "steering[0] (ls-red priority 100): unknown middlebox 'fw-nope'; "
     "create it first (mb-add) or use bypass"),
    (_edit("{name: fw-bare, switch: ls-red}",
           "{name: fw-bare, switch: ls-nope}"),
     "middleboxes[1] (fw-bare): unknown logical switch 'ls-nope'; create it "
     "first"),
])
def test_references_in_neither_file_nor_database(text, message):
    spec = parse_topology(text)      # they could be in the database
    with pytest.raises(MbxError) as info:
        check_against(spec, _snapshot())
    assert str(info.value) == message


def test_parse_leaves_references_outside_the_file_to_apply():
    spec = parse_topology(
        "middleboxes:\n  - name: fw-a\n    switch: db-sw\n    rules:\n"
        "      - {priority: 1, direction: to-vm, match: src=$db-set, "
        "action: allow}\nsteering:\n  - {switch: db-sw, priority: 1, "
        "match: dst=$db-set, middlebox: db-fw}\n")
    assert spec.middleboxes[0].switch == "db-sw"
    assert spec.policies[0].chain == ("db-fw",)


def _fw_snapshot(**kw):
    base = dict(nb_cfg=0, hv_cfg=0, switches={"db-sw": DB_SWITCH}, vms={})
    base.update(kw)
    return NbSnapshot(**base)


DB_SET = AddressSetInfo("db-set", "t", ("10.9.0.5",))
DB_MB = MiddleboxInfo("db-fw", "firewall", "db-sw")
DB_RULE = RuleInfo(5, "to-vm", "src=$db-set", "allow")


def test_check_against_db_references():
    spec = parse_topology(
        "middleboxes:\n  - name: fw-a\n    switch: db-sw\n    rules:\n"
        "      - {priority: 1, direction: to-vm, match: src=$db-set, "
        "action: allow}\nsteering:\n  - {switch: db-sw, priority: 1, "
        "match: dst=$db-set, middlebox: db-fw}\n")
    with pytest.raises(MbxError, match=r'^middleboxes\[0\] \(fw-a\): '
                       r'rules\[0\]: unknown address set "db-set"'):
        check_against(spec, _fw_snapshot())
    snap = _fw_snapshot(address_sets={"db-set": DB_SET})
    with pytest.raises(MbxError, match=r"^steering\[0\] \(db-sw priority "
                                       r"1\): unknown middlebox 'db-fw'"):
        check_against(spec, snap)
    check_against(spec, _fw_snapshot(address_sets={"db-set": DB_SET},
                                     middleboxes={"db-fw": DB_MB}))


def test_check_against_a_changed_set_tenant_breaks_rules_in_the_db():
    spec = parse_topology("address_sets:\n  - {name: db-set, tenant: u}\n")
    snap = _fw_snapshot(address_sets={"db-set": DB_SET},
                        middleboxes={"db-fw": DB_MB},
                        rules={"db-fw": (DB_RULE,)})
    with pytest.raises(MbxError, match=r"^middlebox 'db-fw' tenant to-vm "
                       r"rule at priority 5 \(src=\$db-set -> allow\): "
                       "address set \"db-set\" belongs to tenant 'u', not "
                       "to tenant 't'"):
        check_against(spec, snap)


def test_check_against_the_file_replaces_a_middleboxs_rules():
    # db-fw's rule names db-set; the file drops that rule, so changing the
    # set's tenant is fine.
    spec = parse_topology("address_sets:\n  - {name: db-set, tenant: u}\n"
                          "middleboxes:\n  - {name: db-fw, switch: db-sw}\n")
    check_against(spec, _fw_snapshot(address_sets={"db-set": DB_SET},
                                     middleboxes={"db-fw": DB_MB},
                                     rules={"db-fw": (DB_RULE,)}))


def test_check_against_the_file_replaces_a_switchs_policies():
    old = PolicyInfo("db-sw", 9, "any", ("db-fw",))
    moved = parse_topology("middleboxes:\n  - {name: db-fw, switch: "
                           "other}\nswitches:\n  - {name: other, tenant: t, "
                           "vni: 7, subnet: 10.7.0.0/24}\n")
    snap = _fw_snapshot(middleboxes={"db-fw": DB_MB}, policies=(old,))
    with pytest.raises(MbxError, match=r"^logical switch 'db-sw' steering "
                       r"policy at priority 9 \(any -> db-fw\): middlebox "
                       "'db-fw' serves logical switch 'other', not 'db-sw'"):
        check_against(moved, snap)
    text = ("steering:\n  - {switch: db-sw, priority: 9, match: any, "
            "middlebox: bypass}\n")
    check_against(parse_topology(text + "middleboxes:\n  - {name: db-fw, "
                                 "switch: other}\nswitches:\n  - {name: "
                                 "other, tenant: t, vni: 7, subnet: "
                                 "10.7.0.0/24}\n"), snap)


def test_lab_files_accept_the_firewall_keys():
    spec = parse_topology("hosts: [h1]\n" + FIREWALL, allow_placement=True)
    assert spec.hosts == ("h1",) and len(spec.middleboxes) == 2
