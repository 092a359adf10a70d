"""Rows no reader can use (ovsdb.validate.unusable) and what the readers do
with them: the translation leaves them out, mbx-northd's own status writes
do not wake it, the tenant role cannot write a status, mbxd's config
builder skips them and lists them for rules/show."""

import logging

import pytest

from test_mb_confmon_pure import U, Row, world
from mbxmodel import tenancy
from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, NatRuleInfo, PolicyInfo,
                               RuleInfo, VipInfo)
from mbxmodel.snapshot import NbSnapshot
from middlebox import confmon
from ovsdb import rbac, validate
from ryu_apps.northd import Northd
from ryu_apps.translate import Translator

RED = SwitchInfo("ls-red", "red", 1001, "10.0.0.0/24", "10.0.0.1")
BLUE = SwitchInfo("ls-blue", "blue", 1002, "10.0.0.0/24", "10.0.0.1")
GOOD_VM = VMInfo("red1", "ls-red", "02:00:00:00:00:01", "10.0.0.11")
FW = MiddleboxInfo("fw-red", "firewall", "ls-red", "allow")
FW_BLUE = MiddleboxInfo("fw-blue", "firewall", "ls-blue", "allow")
GOOD_RULE = RuleInfo(100, "to-vm", "proto=tcp dport=9", "deny", uuid="r1")


def unusable(switches=(RED, BLUE), vms=(GOOD_VM,), middleboxes=(FW, FW_BLUE),
             rules=None, policies=(), sets=(), vips=None, ignored=None):
    return validate.unusable(
        {s.name: s for s in switches}, {v.name: v for v in vms},
        {m.name: m for m in middleboxes}, rules or {"fw-red": (GOOD_RULE,)},
        tuple(policies), {s.name: s for s in sets}, vips or {}, ignored)


def test_good_rows_are_all_usable():
    assert unusable(policies=[PolicyInfo("ls-red", 100, "any", ("fw-red",))]) == {}


@pytest.mark.parametrize("mac,ip,words", [
    ("zz:zz:zz:00:11", "10.0.0.40", "invalid MAC 'zz:zz:zz:00:11'"),
    ("01:00:00:00:00:01", "10.0.0.40", "multicast"),
    ("02:00:00:00:00:40", "not-an-ip", "invalid VM IP 'not-an-ip'"),
    ("02:00:00:00:00:40", "10.9.9.9", "IP 10.9.9.9 is outside subnet 10.0.0.0/24"),
    ("02:00:00:00:00:40", "10.0.0.255", "broadcast address"),
    ("02:00:00:00:00:40", "10.0.0.1", "gateway"),
    ("02:00:00:00:00:40", "10.0.0.11", "IP 10.0.0.11 is already used by VM 'red1'"),
    ("02:00:00:00:00:01", "10.0.0.40", "MAC 02:00:00:00:00:01 is already used"),
])
def test_a_vm_with_an_unusable_address_is_named_with_its_reason(mac, ip, words):
    bad = VMInfo("red9", "ls-red", mac, ip)
    got = unusable(vms=(GOOD_VM, bad))
    assert list(got) == [("vm", "red9")]
    assert got[("vm", "red9")].startswith("VM 'red9': ") and words in got[("vm", "red9")]


def test_a_vm_of_the_other_tenant_may_share_the_address():
    assert unusable(vms=(GOOD_VM, VMInfo("blue1", "ls-blue", GOOD_VM.mac, GOOD_VM.ip))) == {}


@pytest.mark.parametrize("subnet,words", [("10.9.0.0/33", "invalid subnet '10.9.0.0/33'"),
                                          ("10.9.0.5/24", "host bits"),
                                          ("10.9.0.0/31", "no room for VMs"),
                                          ("", "invalid subnet")])
def test_a_switch_with_an_unusable_subnet_takes_its_rows_with_it(subnet, words):
    bad = SwitchInfo("ls-red", "red", 1001, subnet, "")
    got = unusable(switches=(bad, BLUE),
                   policies=[PolicyInfo("ls-red", 100, "any", ("fw-red",))])
    assert words in got[("switch", "ls-red")]
    assert "its logical switch 'ls-red' is not usable" in got[("vm", "red1")]
    assert "its logical switch 'ls-red' is not usable" in got[("middlebox", "fw-red")]
    assert "its logical switch 'ls-red' is not usable" in got[("policy", "ls-red", 100)]
    assert ("middlebox", "fw-blue") not in got


@pytest.mark.parametrize("rule,words", [
    (RuleInfo(200, "to-vm", "proto=tcp dport=banana", "deny", uuid="r2"), "banana"),
    (RuleInfo(200, "sideways", "any", "deny", uuid="r2"), "invalid direction"),
    (RuleInfo(200, "to-vm", "any", "drop", uuid="r2"), "invalid action"),
    (RuleInfo(40000, "to-vm", "any", "deny", uuid="r2"), "rule priority"),
    (RuleInfo(200, "to-vm", "src=$nowhere", "deny", uuid="r2"), "unknown address set"),
    (RuleInfo(200, "to-vm", "src=$blue-set", "deny", uuid="r2"),
     "belongs to tenant 'blue'"),
])
def test_a_rule_that_cannot_be_used_is_named_and_its_firewall_keeps_the_others(rule, words):
    got = unusable(rules={"fw-red": (GOOD_RULE, rule)},
                   sets=[AddressSetInfo("blue-set", "blue", ("10.0.0.5",))])
    assert list(got) == [("rule", "r2")]
    assert words in got[("rule", "r2")]


def test_a_policy_chaining_another_tenants_middlebox_is_named():
    got = unusable(policies=[PolicyInfo("ls-red", 300, "any", ("fw-blue",))])
    assert "serves logical switch 'ls-blue'" in got[("policy", "ls-red", 300)]


def test_the_tenancy_reasons_are_kept_and_what_depends_on_them_goes():
    why = tenancy.middlebox_problem("fw-red", "blue", "ls-red", "red")
    got = unusable(policies=[PolicyInfo("ls-red", 100, "any", ("fw-red",))],
                   ignored={("middlebox", "fw-red"): why})
    assert got[("middlebox", "fw-red")] == why
    assert "its middlebox 'fw-red' is not usable" in got[("policy", "ls-red", 100)]
    assert ("rule", "r1") not in got        # its rules go with it, unnamed


@pytest.mark.parametrize("options,words", [
    ({"health-interval": "1e308"}, "health-interval"),
    ({"health-interval": "inf"}, "health-interval"),
    ({"health-rise": "0"}, "health-rise"),
    ({"health-interval": "1", "health-timeout": "2"}, "longer than health-interval"),
    ({"health-check": "icmp"}, "health-check"),
])
def test_a_vip_with_options_out_of_range_is_named(options, words):
    lb = MiddleboxInfo("lb-blue", "lb", "ls-blue")
    vip = VipInfo("v1", "lb-blue", "10.0.0.100", 80, "tcp", "hash",
                  (("10.0.0.11", 80),), options)
    got = unusable(middleboxes=(FW, lb), vips={"lb-blue": (vip,)})
    assert list(got) == [("vip", "v1")] and words in got[("vip", "v1")]


@pytest.mark.parametrize("options,bad", [
    ({"check-interval": "1"}, True), ({"timeout-udp": "1e308"}, True),
    ({"scan-threshold": "-5"}, True), ({"ports-per-host": "1000"}, True),
    ({"check": "sometimes"}, True), ({"not-an-option": "x"}, False),
    ({"check-interval": "255", "timeout-udp": "65535"}, False),
])
def test_a_middlebox_option_out_of_its_range_makes_the_middlebox_unusable(options, bad):
    mb = MiddleboxInfo("fw-red", "firewall", "ls-red", "allow", options)
    got = unusable(middleboxes=(mb, FW_BLUE))
    assert (("middlebox", "fw-red") in got) is bad


def test_every_numeric_middlebox_option_has_a_range():
    for key in validate.MIDDLEBOX_OPTIONS:
        with pytest.raises(Exception):
            validate.middlebox_option(key, "1e308")


def test_the_translation_leaves_unusable_rows_out():
    bad_vm = VMInfo("bad", "ls-red", "zz:zz:zz:00:11", "not-an-ip")
    snap = NbSnapshot(nb_cfg=1, hv_cfg=0, switches={"ls-red": RED},
                      vms={"red1": GOOD_VM, "bad": bad_vm},
                      ignored={("vm", "bad"): "VM 'bad': invalid MAC"})
    records = Translator()
    records.update(snap)
    assert [vm.name for vm in records.records["ls-red"].vms] == ["red1"]
    bad_switch = NbSnapshot(nb_cfg=2, hv_cfg=0, switches={"ls-red": RED}, vms={},
                            ignored={("switch", "ls-red"): "bad"})
    assert records.update(bad_switch) == {"ls-red": None}


def test_northds_status_writes_do_not_wake_it_and_others_do():
    quiet = Northd.own_status_write
    for table in validate.STATUS_TABLES.values():
        assert quiet(table, "update", {"status"})
        assert not quiet(table, "update", {"status", "name" if table != "Firewall_Rule"
                                           else "match"})
        assert not quiet(table, "insert", {"status"})
    assert quiet("VM", "update", {"host", "location_epoch", "status"})
    assert not quiet("VM", "update", {"mac"})


def test_the_tenant_role_cannot_write_a_status():
    for table, perm in rbac.TENANT_PERMISSIONS.items():
        assert "status" not in perm.update, table


class _Nb:
    """The northbound writes mbx-northd makes for rows it cannot use."""

    def __init__(self):
        self.row_status = []

    def set_row_status(self, statuses):
        nb = self

        class Command:
            def execute(self, check_error=False):
                assert check_error is True
                nb.row_status.append(dict(statuses))
        return Command()


def test_northd_logs_a_bad_row_once_writes_its_status_and_clears_it(caplog):
    nb = _Nb()
    northd = Northd(nb, sb=None)
    why = "VM 'bad': invalid MAC 'zz'"
    bad = NbSnapshot(nb_cfg=1, hv_cfg=0, switches={}, vms={},
                     ignored={("vm", "bad"): why})
    def event(snap):
        northd.nb_snap = snap
        northd._publish_problems(snap)
    with caplog.at_level(logging.INFO, logger="ryu_apps.northd"):
        event(bad)
        event(bad)      # another event: no new line, no write
        event(NbSnapshot(nb_cfg=1, hv_cfg=0, switches={}, vms={},
                         ignored={("vm", "bad"): why},
                         row_status={("vm", "bad"): why}))
        event(NbSnapshot(nb_cfg=2, hv_cfg=0, switches={}, vms={},   # fixed
                         row_status={("vm", "bad"): why}))
    assert nb.row_status == [{("vm", "bad"): why}, {("vm", "bad"): ""}]
    assert [r.getMessage() for r in caplog.records if "bad" in r.getMessage()] == [
        "ignoring " + why, "in force again (or gone): vm bad"]


def test_mbxd_skips_a_bad_vm_and_rule_of_its_slice_and_lists_them():
    w = world()
    w["VM"].append(Row(uuid=U(63), name="bad", logical_switch=U(40),
                       mac="zz:zz:zz:00:11", ip="not-an-ip"))
    w["Firewall_Rule"].append(Row(uuid=U(33), priority=300, direction="to-vm",
                                  match="proto=tcp dport=banana", address_sets=[],
                                  action="deny", tenant="red"))
    w["Middlebox"][0].rules.append(U(33))
    red = confmon.build_host_config("h1", w, lambda key, msg: None).slices[10]
    assert [vm.name for vm in red.vms] == ["red1", "red2"]
    assert [r.priority for r in red.rules] == [200, 100]
    assert any("skipping VM bad: invalid MAC" in line for line in red.skipped)
    assert any("banana" in line for line in red.skipped)


def test_mbxd_skips_a_slice_whose_middlebox_option_is_out_of_range():
    w = world()
    w["Middlebox"][0].options = {"timeout-udp": "1e308"}
    warnings = []
    cfg = confmon.build_host_config("h1", w, lambda key, msg: warnings.append(msg))
    assert cfg.slices == {}
    assert any("timeout-udp" in line for line in warnings)


@pytest.mark.parametrize("key,value", [("migration-wait-ms", "1e308"),
                                       ("shared-state-lease", "0"),
                                       ("conn-limit-vm", "-1")])
def test_a_global_option_out_of_range_is_named_and_its_default_used(key, value):
    got = validate.unusable({}, {}, {}, {}, (), {}, {}, global_options={key: value})
    assert list(got) == [("global", key)]
    assert key in got[("global", key)] and "the default is used" in got[("global", key)]
    assert validate.unusable({}, {}, {}, {}, (), {}, {},
                             global_options={"not-ours": "x"}) == {}


@pytest.mark.parametrize("rule,words", [
    (NatRuleInfo("n2", "nat-red", "snat", ("not-an-ip",), ""), "invalid external IP"),
    (NatRuleInfo("n2", "nat-red", "snat", ("198.51.100.7",), ""), "not inside any external"),
    (NatRuleInfo("n2", "nat-red", "snat", ("203.0.113.7",), "10.9.0.0/24"),
     "is not inside subnet 10.0.0.0/24"),
    (NatRuleInfo("n2", "nat-red", "dnat", ("203.0.113.8",), "10.0.0.0"),
     "network address"),
    (NatRuleInfo("n2", "nat-red", "pat", ("203.0.113.8",), "10.0.0.5"), "NAT type"),
])
def test_a_nat_rule_that_cannot_be_used_is_named(rule, words):
    nat = MiddleboxInfo("nat-red", "nat", "ls-red")
    good = NatRuleInfo("n1", "nat-red", "snat", ("203.0.113.5",), "")
    ext = ExternalNetInfo("ext", "203.0.113.0/24", "203.0.113.1", "02:ee:00:00:00:01")
    got = validate.unusable({"ls-red": RED}, {}, {"nat-red": nat}, {}, (), {}, {},
                            nat_rules={"nat-red": (good, rule)}, externals=[ext])
    assert list(got) == [("nat", "n2")] and words in got[("nat", "n2")]


def test_an_address_set_member_that_is_not_an_address_is_left_out_with_a_status():
    aset = AddressSetInfo("red-set", "red", ("10.0.0.5", "garbage", "10.0.1.0/24"))
    got = unusable(sets=[aset])
    assert list(got) == [("set", "red-set")]
    assert "member 'garbage' left out" in got[("set", "red-set")]
    rule = RuleInfo(200, "to-vm", "src=$red-set", "deny", uuid="r2")
    snap = NbSnapshot(nb_cfg=1, hv_cfg=0, switches={"ls-red": RED}, vms={},
                      middleboxes={"fw-red": FW}, rules={"fw-red": (rule,)},
                      address_sets={"red-set": aset}, ignored=got)
    records = Translator()
    records.update(snap)
    assert records.records["ls-red"].address_sets[0].addresses == (
        "10.0.0.5", "10.0.1.0/24")
    assert records.records["ls-red"].rules["fw-red"] == (rule,)


@pytest.mark.parametrize("cidr,gateway,words", [
    ("10.0.0.0/33", "10.0.0.1", "invalid external network CIDR"),
    ("garbage", "10.0.0.1", "invalid external network CIDR"),
    ("203.0.113.0/24", "198.51.100.1", "gateway IP 198.51.100.1"),
])
def test_an_external_network_that_cannot_be_used_takes_its_nat_rules_with_it(
        cidr, gateway, words):
    nat = MiddleboxInfo("nat-red", "nat", "ls-red")
    rule = NatRuleInfo("n1", "nat-red", "snat", ("203.0.113.5",), "")
    good = ExternalNetInfo("ok", "198.51.100.0/24", "198.51.100.1", "02:ee:00:00:00:02")
    bad = ExternalNetInfo("ext", cidr, gateway, "02:ee:00:00:00:01")
    got = validate.unusable({"ls-red": RED}, {}, {"nat-red": nat}, {}, (), {}, {},
                            nat_rules={"nat-red": (rule,)}, externals=[good, bad])
    assert sorted(got) == [("external", "ext"), ("nat", "n1")]
    assert words in got[("external", "ext")]
    # The translation hands the readers only the usable one.
    snap = NbSnapshot(nb_cfg=1, hv_cfg=0, switches={"ls-red": RED}, vms={},
                      external_networks={"ok": good, "ext": bad}, ignored=got)
    records = Translator()
    records.update(snap)
    assert records.records["ls-red"].external_networks == (good,)
