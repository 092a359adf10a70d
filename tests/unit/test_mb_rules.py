"""middlebox.rules: tiers, priorities, address sets, ports, default, bad rules."""

from mbxmodel.services import RuleInfo
from middlebox.rules import RuleSet
from test_mb_frames import ICMP, TCP, UDP, ip_int

A1, A2, OUT = ip_int("10.0.0.1"), ip_int("10.0.0.2"), ip_int("192.0.2.7")


def R(priority, direction, match, action, tier="tenant", uuid=None):
    return RuleInfo(priority, direction, match, action, tier,
                    uuid or "%s-%s-%d" % (tier, direction, priority))


def test_first_match_by_descending_priority_then_default():
    rs = RuleSet([R(10, "from-vm", "proto=tcp dport=80", "allow"),
                  R(20, "from-vm", "proto=tcp dport=1-100", "reject"),
                  R(5, "from-vm", "any", "deny")], {}, "allow", "provider-first")
    assert rs.evaluate("from-vm", TCP, A1, OUT, 40000, 80)[0] == "reject"
    action, rule = rs.evaluate("from-vm", TCP, A1, OUT, 40000, 443)
    assert (action, rule.priority) == ("deny", 5)
    # No to-vm rules: the default decides, with no rule.
    assert rs.evaluate("to-vm", TCP, OUT, A1, 80, 40000) == ("allow", None)
    assert rs.errors == []


def test_directions_are_separate():
    rs = RuleSet([R(10, "to-vm", "proto=udp", "allow")], {}, "deny", None)
    assert rs.evaluate("to-vm", UDP, OUT, A1, 1, 2)[0] == "allow"
    assert rs.evaluate("from-vm", UDP, A1, OUT, 1, 2) == ("deny", None)


def test_provider_tier_first_regardless_of_priority():
    rules = [R(30000, "from-vm", "any", "allow", "tenant"),
             R(1, "from-vm", "proto=tcp", "deny", "provider")]
    rs = RuleSet(rules, {}, "allow", "provider-first")
    assert rs.evaluate("from-vm", TCP, A1, OUT, 1, 2)[0] == "deny"
    assert rs.evaluate("from-vm", UDP, A1, OUT, 1, 2)[0] == "allow"
    assert [r.tier for r in rs.ordered("from-vm")] == ["provider", "tenant"]
    rs = RuleSet(rules, {}, "allow", "tenant-first")
    assert rs.evaluate("from-vm", TCP, A1, OUT, 1, 2)[0] == "allow"
    assert [r.tier for r in rs.ordered("from-vm")] == ["tenant", "provider"]


def test_equal_priorities_are_ordered_by_uuid_not_input_order():
    a = R(10, "from-vm", "any", "allow", uuid="aaa")
    b = R(10, "from-vm", "any", "deny", uuid="bbb")
    for rules in ([a, b], [b, a]):
        assert RuleSet(rules, {}, "deny").evaluate("from-vm", TCP, A1, OUT, 1, 2)[1] is a


def test_address_sets_and_cidrs():
    sets = {"web": ("10.0.0.2", "10.0.1.0/24"), "empty": ()}
    rs = RuleSet([R(10, "from-vm", "dst=$web proto=tcp dport=443", "allow"),
                  R(9, "from-vm", "dst=$empty", "allow"),
                  R(8, "from-vm", "dst=$missing", "allow"),
                  R(7, "from-vm", "src=10.0.0.0/30 dst=192.0.2.0/24", "reject")],
                 sets, "deny")
    assert rs.evaluate("from-vm", TCP, A1, A2, 1, 443)[0] == "allow"
    assert rs.evaluate("from-vm", TCP, A1, ip_int("10.0.1.200"), 1, 443)[0] == "allow"
    assert rs.evaluate("from-vm", TCP, A1, ip_int("10.0.2.1"), 1, 443) == ("deny", None)
    assert rs.evaluate("from-vm", TCP, A1, OUT, 1, 443)[0] == "reject"
    assert rs.evaluate("from-vm", TCP, ip_int("10.0.0.9"), OUT, 1, 443)[0] == "deny"
    assert rs.errors == []


def test_a_changed_address_set_changes_what_matches():
    rule = [R(10, "to-vm", "src=$admins", "allow")]
    assert RuleSet(rule, {"admins": ("192.0.2.0/28",)}, "deny") \
        .evaluate("to-vm", ICMP, OUT, A1)[0] == "allow"
    assert RuleSet(rule, {"admins": ("198.51.100.1",)}, "deny") \
        .evaluate("to-vm", ICMP, OUT, A1)[0] == "deny"


def test_port_ranges_and_protocols():
    rs = RuleSet([R(10, "to-vm", "proto=udp sport=53 dport=1024-65535", "allow"),
                  R(9, "to-vm", "proto=icmp", "allow"),
                  R(8, "to-vm", "proto=47", "allow")], {}, "deny")
    assert rs.evaluate("to-vm", UDP, OUT, A1, 53, 1024)[0] == "allow"
    assert rs.evaluate("to-vm", UDP, OUT, A1, 53, 65535)[0] == "allow"
    assert rs.evaluate("to-vm", UDP, OUT, A1, 53, 1023)[0] == "deny"
    assert rs.evaluate("to-vm", UDP, OUT, A1, 54, 2000)[0] == "deny"
    assert rs.evaluate("to-vm", TCP, OUT, A1, 53, 2000)[0] == "deny"
    assert rs.evaluate("to-vm", ICMP, OUT, A1)[0] == "allow"
    assert rs.evaluate("to-vm", 47, OUT, A1)[0] == "allow"


def test_bad_rules_are_skipped_and_reported_never_raised():
    rules = [R(50, "from-vm", "proto=tcp dport=99999", "allow", uuid="bad-port"),
             R(40, "from-vm", "colour=red", "allow", uuid="bad-field"),
             R(30, "sideways", "any", "allow", uuid="bad-dir"),
             R(20, "from-vm", "any", "shrug", uuid="bad-action"),
             R(15, "from-vm", "any", "allow", tier="customer", uuid="bad-tier"),
             R(10, "from-vm", "proto=tcp", "deny", uuid="good")]
    rs = RuleSet(rules, {"s": ("10.0.0.1", "not-an-ip")}, "maybe", "sideways-first")
    action, rule = rs.evaluate("from-vm", TCP, A1, OUT, 1, 2)
    assert (action, rule.uuid) == ("deny", "good")
    assert rs.evaluate("from-vm", UDP, A1, OUT, 1, 2) == ("deny", None)   # default -> deny
    assert [r.uuid for r in rs.ordered("from-vm")] == ["good"]
    text = "\n".join(rs.errors)
    for name in ("bad-port", "bad-field", "bad-dir", "bad-action", "bad-tier", "not-an-ip",
                 "maybe", "sideways-first"):
        assert name in text
    assert all("\n" not in e for e in rs.errors)
    assert len(rs.errors) == 8


def test_a_bad_member_does_not_spoil_the_rest_of_its_set():
    rs = RuleSet([R(10, "from-vm", "dst=$s", "allow")], {"s": ("10.0.0.2", "10.0.0.5/8")},
                 "deny")
    assert rs.evaluate("from-vm", TCP, A1, A2, 1, 2)[0] == "allow"
    assert len(rs.errors) == 1
