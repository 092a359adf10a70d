import dataclasses
import re

import pytest

from ovsdb import validate
from ovsdb.errors import MbxError
from mbxmodel.network import SwitchInfo, VMInfo
from mbxmodel.services import AddressSetInfo, MiddleboxInfo, PolicyInfo


@pytest.mark.parametrize("value", ["a", "ls-a", "vm_1.eth0", "x" * 64])
def test_name_accepts(value):
    assert validate.name(value) == value


@pytest.mark.parametrize("value", ["", "a b", "a/b", "ä", "x" * 65, 5, None])
def test_name_rejects(value):
    with pytest.raises(MbxError, match="A-Z a-z 0-9 _ . -"):
        validate.name(value, "VM name")


@pytest.mark.parametrize("value,expected", [
    (1, 1), (16777215, 16777215), ("101", 101)])
def test_vni_accepts(value, expected):
    assert validate.vni(value) == expected


@pytest.mark.parametrize("value", [0, 16777216, -1, "x", "1.5", True, None])
def test_vni_rejects(value):
    with pytest.raises(MbxError, match="from 1 to 16777215"):
        validate.vni(value)


def test_subnet_accepts_network():
    assert validate.subnet("10.0.0.0/24") == "10.0.0.0/24"


def test_subnet_with_host_bits_suggests_the_network():
    with pytest.raises(MbxError, match=r"did you mean 10\.0\.0\.0/24\?"):
        validate.subnet("10.0.0.5/24")


@pytest.mark.parametrize("value", ["10.0.0.0", "10.0.0.0/33", "fe80::/64",
                                   "banana/24", 5])
def test_subnet_rejects_non_cidr(value):
    with pytest.raises(MbxError, match="CIDR"):
        validate.subnet(value)


def test_subnet_too_small_for_vms():
    with pytest.raises(MbxError, match="prefix length of 30 or less"):
        validate.subnet("10.0.0.4/31")


def test_mac_is_normalised_to_lower_case():
    assert validate.mac("02:AB:cd:00:00:01") == "02:ab:cd:00:00:01"


@pytest.mark.parametrize("value,hint", [
    ("01:00:5e:00:00:01", "multicast"), ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("00:00:00:00:00:00", "non-zero"), ("02:00:00:00:01", "six"),
    ("02-00-00-00-00-01", "six"), ("zz:00:00:00:00:01", "six"),
    (1234, "six")])
def test_mac_rejects(value, hint):
    with pytest.raises(MbxError, match=hint):
        validate.mac(value)


def test_ip_in_subnet():
    assert validate.ip_in_subnet("10.0.0.5", "10.0.0.0/24") == "10.0.0.5"


@pytest.mark.parametrize("ip,hint", [
    ("10.0.1.5", "outside subnet 10.0.0.0/24 of logical switch 'ls'"),
    ("10.0.0.0", "network address"), ("10.0.0.255", "broadcast address"),
    ("10.0.0.256", "dotted IPv4"), ("10.0.0.5/24", "dotted IPv4")])
def test_ip_in_subnet_rejects(ip, hint):
    with pytest.raises(MbxError, match=hint):
        validate.ip_in_subnet(ip, "10.0.0.0/24", "ls")


def test_generated_mac_is_deterministic_local_unicast():
    mac = validate.mac_from_name("vm1")
    assert mac == validate.mac_from_name("vm1")
    assert mac != validate.mac_from_name("vm2")
    assert mac.startswith("02:")
    assert validate.mac(mac) == mac


def test_encap_type():
    assert validate.encap_type("geneve") == "geneve"
    with pytest.raises(MbxError, match="vxlan, geneve"):
        validate.encap_type("gre")


SW_A = SwitchInfo("a", "t", 5, "10.0.0.0/24", "10.0.0.254")
SW_B = SwitchInfo("b", "t", 6, "10.0.0.0/24", "10.0.0.254")
SWITCHES = {"a": SW_A, "b": SW_B}
V1 = VMInfo("v1", "a", "02:00:00:00:00:01", "10.0.0.1")


def test_check_switch_names_the_switch_holding_the_vni():
    with pytest.raises(MbxError, match="VNI 5 is already used by logical "
                                       "switch 'a'"):
        validate.check_switch(SwitchInfo("c", "t", 5, "10.1.0.0/24"),
                              SWITCHES.values())
    validate.check_switch(SW_A, SWITCHES.values())   # itself is no conflict


@pytest.mark.parametrize("vm,hint", [
    (VMInfo("v2", "a", "02:00:00:00:00:02", "10.0.0.1"),
     "IP 10.0.0.1 is already used by VM 'v1'"),
    (VMInfo("v2", "a", "02:00:00:00:00:01", "10.0.0.2"),
     "MAC 02:00:00:00:00:01 is already used by VM 'v1'"),
    (VMInfo("v2", "zz", "02:00:00:00:00:02", "10.0.0.2"),
     "unknown logical switch 'zz'"),
    (VMInfo("v2", "a", "02:00:00:00:00:02", "10.9.0.2"),
     "IP 10.9.0.2 is outside subnet")])
def test_check_vm_conflicts(vm, hint):
    with pytest.raises(MbxError, match=f"^VM 'v2': {hint}"):
        validate.check_vm(vm, SWITCHES, [V1])


def test_same_addresses_on_another_switch_are_allowed():
    twin = VMInfo("v2", "b", V1.mac, V1.ip)
    validate.check_vm(twin, SWITCHES, [V1])


# --- middleboxes, rules, address sets, steering policies ---------------------

@pytest.mark.parametrize("func,value,expected", [
    (validate.rule_priority, 0, 0), (validate.rule_priority, "32767", 32767),
    (validate.steer_priority, 30000, 30000),
    (validate.steer_priority, "0", 0)])
def test_priority_accepts(func, value, expected):
    assert func(value) == expected


@pytest.mark.parametrize("func,value,hint", [
    (validate.rule_priority, 32768, "rule priority 32768: use an integer "
                                    "from 0 to 32767"),
    (validate.rule_priority, -1, "from 0 to 32767"),
    (validate.rule_priority, "ten", "rule priority 'ten'"),
    (validate.rule_priority, "1.5", "rule priority '1.5'"),
    (validate.rule_priority, True, "rule priority True"),
    (validate.steer_priority, 30001, "steering priority 30001: use an "
                                     "integer from 0 to 30000"),
    (validate.steer_priority, "-5", "steering priority '-5'")])
def test_priority_rejects(func, value, hint):
    with pytest.raises(MbxError, match=hint):
        func(value)


@pytest.mark.parametrize("func,value,hint", [
    (validate.direction, "in", "invalid direction 'in': use from-vm or "
                               "to-vm"),
    (validate.action, "drop", "invalid action 'drop': use allow, deny or "
                              "reject"),
    (validate.tier, "admin", "invalid tier 'admin': use provider or tenant"),
    (validate.middlebox_type, "router", "invalid middlebox type 'router': "
                                        "use firewall, nat, lb or ids"),
    (validate.slice_tag, 2048, "invalid slice tag 2048: use an integer "
                               "from 1 to 2047")])
def test_choices_reject(func, value, hint):
    with pytest.raises(MbxError, match=f"^{hint}$"):
        func(value)


def test_middlebox_options_are_canonical_strings():
    assert validate.middlebox_options(
        {"timeout-udp": 60, "same-host": "source", "check": "every-packet",
         "tier-order": "tenant-first", "timeout-icmp": "5"}) == {
        "check": "every-packet", "same-host": "source",
        "tier-order": "tenant-first", "timeout-icmp": "5",
        "timeout-udp": "60"}
    assert validate.middlebox_options({}) == {}


@pytest.mark.parametrize("options,hint", [
    ({"color": "red"}, "unknown middlebox option 'color'; known options: "
                       "check, same-host, tier-order, timeout-tcp-syn,"),
    ({"check": "sometimes"}, "invalid value 'sometimes' for option check: "
                             "use offload, every-packet, every-nth or relay"),
    ({"check-interval": "1"}, "option check-interval: use an integer from 2 to 255"),
    ({"migration-gather": "flows"}, "option migration-gather: use datapath, "
                                    "datapath\\+review or service"),
    ({"migration-import": "eager"}, "option migration-import: use bulk or lazy"),
    ({"same-host": "both "}, "use both, source or destination"),
    ({"timeout-udp": "0"}, "invalid value '0' for option timeout-udp: use a "
                           "number of seconds from 1 to 65535"),
    ({"timeout-icmp": 65536}, "from 1 to 65535"),
    ({"timeout-tcp-syn": "1m"}, "option timeout-tcp-syn"),
    ("same-host=both", "use a mapping")])
def test_middlebox_options_reject(options, hint):
    with pytest.raises(MbxError, match=hint):
        validate.middlebox_options(options)


def test_addresses_are_canonical_unique_and_sorted_numerically():
    assert validate.addresses(["10.0.0.11", "10.0.0.0/24", "10.0.0.2/32",
                               "9.0.0.0/8", "10.0.0.11"]) == (
        "9.0.0.0/8", "10.0.0.0/24", "10.0.0.2", "10.0.0.11")
    assert validate.addresses([]) == ()


@pytest.mark.parametrize("values,hint", [
    (["10.0.0.5/24"], 'bad address "10.0.0.5/24": expected an IPv4 address '
                      "or CIDR with no host bits set"),
    (["10.0.0.256"], 'bad address "10.0.0.256"'),
    (["$other"], "address sets cannot contain other sets"),
    ([5], "bad address 5"),
    ("10.0.0.1", "expected a list")])
def test_addresses_reject(values, hint):
    with pytest.raises(MbxError, match=hint.replace("$", r"\$")):
        validate.addresses(values)


@dataclasses.dataclass(frozen=True)
class Rule:
    priority: int
    direction: str
    match: str
    action: str = "allow"
    tier: str = "tenant"


FW_SWITCHES = {"ls-a": SwitchInfo("ls-a", "ta", 5, "10.0.0.0/24"),
               "ls-b": SwitchInfo("ls-b", "tb", 6, "10.0.0.0/24")}
FW_SETS = {"admins": AddressSetInfo("admins", "ta", ("10.0.0.11",)),
           "others": AddressSetInfo("others", "tb", ())}
FW_A = MiddleboxInfo("fw-a", "firewall", "ls-a")
FW_B = MiddleboxInfo("fw-b", "firewall", "ls-b")
FW_MBS = {"fw-a": FW_A, "fw-b": FW_B}


def test_check_rule_accepts_sets_of_the_tenant():
    validate.check_rule(FW_A, Rule(1, "to-vm", "src=$admins"), FW_SWITCHES,
                        FW_SETS)


@pytest.mark.parametrize("match,hint", [
    ("src=$nope", 'unknown address set "nope"; create it first (as-add)'),
    ("dst=$others", 'address set "others" belongs to tenant \'tb\', not to '
                    "tenant 'ta' of middlebox 'fw-a'")])
def test_check_rule_rejects_sets(match, hint):
    with pytest.raises(MbxError) as info:
        validate.check_rule(FW_A, Rule(1, "to-vm", match), FW_SWITCHES,
                            FW_SETS, label="L")
    assert str(info.value) == "L: " + hint


def test_check_rule_unique_names_the_existing_rule():
    rules = [Rule(100, "to-vm", "proto=tcp", "deny"),
             Rule(100, "from-vm", "any"), Rule(100, "to-vm", "any",
                                               tier="provider")]
    validate.check_rule_unique(FW_A, Rule(101, "to-vm", "any"), rules)
    with pytest.raises(MbxError, match="^middlebox 'fw-a' already has a "
                       r"tenant to-vm rule at priority 100 \(proto=tcp -> "
                       r"deny\); choose another priority$"):
        validate.check_rule_unique(FW_A, Rule(100, "to-vm", "any"), rules)


@pytest.mark.parametrize("policy,hint", [
    (PolicyInfo("ls-x", 1, "any"), "unknown logical switch 'ls-x'"),
    (PolicyInfo("ls-a", 1, "any", ("fw-x",)), "unknown middlebox 'fw-x'; "
                                              "create it first (mb-add) or "
                                              "use bypass"),
    (PolicyInfo("ls-a", 1, "any", ("fw-a", "fw-b")),
     "middlebox 'fw-b' serves logical switch 'ls-b', not 'ls-a'"),
    (PolicyInfo("ls-a", 1, "src=$others"), 'address set "others" belongs to '
                                           "tenant 'tb', not to tenant 'ta' "
                                           "of logical switch 'ls-a'")])
def test_check_policy_rejects(policy, hint):
    with pytest.raises(MbxError, match=re.escape(hint)):
        validate.check_policy(policy, FW_SWITCHES, FW_MBS, FW_SETS)


def test_check_policy_accepts_and_partial_skips_unknowns():
    validate.check_policy(PolicyInfo("ls-a", 1, "src=$admins", ("fw-a",)),
                          FW_SWITCHES, FW_MBS, FW_SETS)
    validate.check_policy(PolicyInfo("ls-x", 1, "src=$zz", ("fw-x",)),
                          FW_SWITCHES, FW_MBS, FW_SETS, partial=True)
    with pytest.raises(MbxError, match="serves logical switch 'ls-b'"):
        validate.check_policy(PolicyInfo("ls-x", 1, "any", ("fw-b",)),
                              FW_SWITCHES, FW_MBS, FW_SETS, partial=True)


def test_check_policy_unique():
    policies = [PolicyInfo("ls-a", 5, "any", ("fw-a",)),
                PolicyInfo("ls-b", 6, "any")]
    validate.check_policy_unique(PolicyInfo("ls-a", 6, "any"), policies)
    with pytest.raises(MbxError, match=r"^logical switch 'ls-a' already has "
                       r"a steering policy at priority 5 \(any -> fw-a\)"):
        validate.check_policy_unique(PolicyInfo("ls-a", 5, "any"), policies)


def test_check_firewall_labels_known_entries_and_describes_others():
    rules = {"fw-a": (Rule(7, "to-vm", "src=$others"),)}
    with pytest.raises(MbxError) as info:
        validate.check_firewall(FW_SWITCHES, FW_SETS, FW_MBS, rules, ())
    assert str(info.value).startswith(
        "middlebox 'fw-a' tenant to-vm rule at priority 7 (src=$others -> "
        'allow): address set "others" belongs to tenant')
    with pytest.raises(MbxError, match=r"^M: rules\[0\]: address set"):
        validate.check_firewall(FW_SWITCHES, FW_SETS, FW_MBS, rules, (),
                                mb_labels={"fw-a": "M"})
    policy = PolicyInfo("ls-b", 3, "any", ("fw-a",))
    with pytest.raises(MbxError, match="^P: middlebox 'fw-a' serves"):
        validate.check_firewall(FW_SWITCHES, FW_SETS, FW_MBS, {}, [policy],
                                policy_labels={("ls-b", 3): "P"})
    with pytest.raises(MbxError, match="^middlebox 'fw-z': unknown logical "
                                       "switch 'ls-z'"):
        validate.check_firewall(FW_SWITCHES, FW_SETS, {
            "fw-z": MiddleboxInfo("fw-z", "firewall", "ls-z")}, {}, ())
