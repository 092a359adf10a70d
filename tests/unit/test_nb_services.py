"""Validation of schema 1.2.0 config: gateways, external networks, middlebox
types and options, NAT rules, VIPs and chains (ovsdb.validate)."""

import dataclasses
import re

import pytest

from ovsdb import validate
from ovsdb.errors import MbxError
from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import MiddleboxInfo, PolicyInfo


def raises(hint):
    return pytest.raises(MbxError, match=re.escape(hint))


# --- gateways ----------------------------------------------------------------

def test_default_gateway_is_the_first_host_address():
    assert validate.default_gateway("10.1.0.0/24") == "10.1.0.1"
    assert validate.default_gateway("192.168.4.0/22") == "192.168.4.1"


def test_gateway_accepts_a_host_address_of_the_subnet():
    assert validate.gateway("10.1.0.254", "10.1.0.0/24", "ls") == "10.1.0.254"


@pytest.mark.parametrize("value,hint", [
    ("10.2.0.1", "gateway 10.2.0.1 is outside subnet 10.1.0.0/24 of logical "
                 "switch 'ls'; use an address inside it"),
    ("10.1.0.0", "gateway 10.1.0.0 is the network address of subnet "
                 "10.1.0.0/24 of logical switch 'ls'; use a host address"),
    ("10.1.0.255", "gateway 10.1.0.255 is the broadcast address"),
    ("10.1.0.300", "invalid gateway '10.1.0.300'")])
def test_gateway_rejects(value, hint):
    with raises(hint):
        validate.gateway(value, "10.1.0.0/24", "ls")


SW = SwitchInfo("ls-a", "ta", 5, "10.0.0.0/24", "10.0.0.1")
SW_B = SwitchInfo("ls-b", "ta", 6, "10.0.1.0/24", "10.0.1.254")
SW_OTHER = SwitchInfo("ls-o", "to", 7, "10.0.2.0/24", "10.0.2.1")
SWITCHES = {s.name: s for s in (SW, SW_B, SW_OTHER)}
A1 = VMInfo("a1", "ls-a", "02:00:00:00:00:11", "10.0.0.11")


@pytest.mark.parametrize("vm,hint", [
    (VMInfo("x", "ls-a", "02:00:00:00:00:99", "10.0.0.1"),
     "VM 'x': IP 10.0.0.1 is the gateway of logical switch 'ls-a'; use "
     "another address"),
    (VMInfo("x", "ls-b", "02:00:00:00:00:99", "10.0.1.254"),
     "VM 'x': IP 10.0.1.254 is the gateway of logical switch 'ls-b'"),
    (VMInfo("x", "ls-a", "02:00:00:00:00:99", "10.0.0.100"),
     "VM 'x': IP 10.0.0.100 is a VIP of load balancer 'lb-a' on logical "
     "switch 'ls-a'; use another address")])
def test_check_vm_refuses_the_gateway_and_vips(vm, hint):
    lb = MiddleboxInfo("lb-a", "lb", "ls-a")
    vip = validate.vip("lb-a", "10.0.0.100:80")
    reserved = validate.reserved_addresses({"lb-a": lb}, {"lb-a": (vip,)})
    with raises(hint):
        validate.check_vm(vm, SWITCHES, [A1], reserved=reserved)


def test_check_vm_default_gateway_and_vip_of_another_switch():
    sw = SwitchInfo("ls-d", "t", 9, "10.9.0.0/24")      # gateway unset
    with raises("IP 10.9.0.1 is the gateway of logical switch 'ls-d'"):
        validate.check_vm(VMInfo("x", "ls-d", "02:00:00:00:00:99",
                                 "10.9.0.1"), {"ls-d": sw}, [])
    reserved = [("ls-b", "10.0.0.100", "a VIP of load balancer 'lb-b'")]
    validate.check_vm(VMInfo("x", "ls-a", "02:00:00:00:00:99", "10.0.0.100"),
                      SWITCHES, [], reserved=reserved)


# --- external networks -------------------------------------------------------

EXT = validate.external_network("ext", "203.0.113.0/24", "203.0.113.1",
                                "02:EE:FF:00:00:01")


def test_external_network_is_canonical():
    assert EXT == ExternalNetInfo("ext", "203.0.113.0/24", "203.0.113.1",
                                  "02:ee:ff:00:00:01")


@pytest.mark.parametrize("args,hint", [
    (("e x", "203.0.113.0/24", "203.0.113.1", "02:ee:ff:00:00:01"),
     "invalid external network name 'e x'"),
    (("e", "203.0.113.5/24", "203.0.113.1", "02:ee:ff:00:00:01"),
     "invalid external network CIDR '203.0.113.5/24': host bits are set; "
     "did you mean 203.0.113.0/24?"),
    (("e", "203.0.113.0/24", "198.51.100.1", "02:ee:ff:00:00:01"),
     "gateway IP 198.51.100.1 is outside external network 203.0.113.0/24"),
    (("e", "203.0.113.0/24", "203.0.113.255", "02:ee:ff:00:00:01"),
     "gateway IP 203.0.113.255 is the broadcast address"),
    (("e", "203.0.113.0/24", "203.0.113.1", "ff:ff:ff:ff:ff:ff"),
     "invalid MAC 'ff:ff:ff:ff:ff:ff': it is a multicast address")])
def test_external_network_rejects(args, hint):
    with raises(hint):
        validate.external_network(*args)


def test_external_networks_may_not_overlap():
    other = validate.external_network("ext2", "203.0.113.128/25",
                                      "203.0.113.129", "02:ee:ff:00:00:02")
    with raises("external network 'ext2' (203.0.113.128/25) overlaps "
                "external network 'ext' (203.0.113.0/24); give each its own "
                "addresses"):
        validate.check_external_network(other, [EXT])
    validate.check_external_network(EXT, [EXT])     # itself is no conflict


# --- middlebox types and options ---------------------------------------------

@pytest.mark.parametrize("mb_type", ["firewall", "nat", "lb", "ids"])
def test_middlebox_types(mb_type):
    assert validate.middlebox_type(mb_type) == mb_type


def test_new_options_are_canonical():
    assert validate.middlebox_options({
        "ports-per-host": 1024, "scan-threshold": "20", "scan-window": 10,
        "synflood-threshold": 200, "synflood-window": "2"}) == {
        "ports-per-host": "1024", "scan-threshold": "20",
        "scan-window": "10", "synflood-threshold": "200",
        "synflood-window": "2"}


@pytest.mark.parametrize("options,hint", [
    ({"ports-per-host": 1000}, "invalid value 1000 for option "
                               "ports-per-host: use a power of two from 256 "
                               "to 32768"),
    ({"ports-per-host": 128}, "power of two from 256"),
    ({"ports-per-host": 65536}, "power of two from 256"),
    ({"scan-threshold": 0}, "invalid value 0 for option scan-threshold: use "
                            "an integer from 1 to 1000000"),
    ({"synflood-threshold": "many"}, "option synflood-threshold"),
    ({"scan-window": "-1"}, "invalid value '-1' for option scan-window: use "
                            "a number of seconds from 1 to 65535"),
    ({"synflood-window": 0}, "option synflood-window")])
def test_new_options_reject(options, hint):
    with raises(hint):
        validate.middlebox_options(options)


@pytest.mark.parametrize("mb_type,key", [
    ("firewall", "ports-per-host"), ("lb", "scan-threshold"),
    ("nat", "tier-order"), ("ids", "ports-per-host"), ("nat", "scan-window")])
def test_options_apply_to_their_types_only(mb_type, key):
    with raises(f"option {key} does not apply to {mb_type} middlebox 'm'; "
                "its options are check, same-host"):
        validate.check_option_types("m", mb_type, [key])


def test_options_of_each_type():
    assert "tier-order" in validate.options_of_type("firewall")
    assert "ports-per-host" in validate.options_of_type("nat")
    assert "scan-threshold" in validate.options_of_type("ids")
    assert "timeout-udp" in validate.options_of_type("lb")
    validate.check_middlebox(MiddleboxInfo("n", "nat", "ls-a", "deny", {
        "ports-per-host": "512", "timeout-udp": "5"}), SWITCHES)
    with raises("middleboxes[0]: option tier-order does not apply to nat"):
        validate.check_middlebox(MiddleboxInfo(
            "n", "nat", "ls-a", "deny", {"tier-order": "tenant-first"}),
            SWITCHES, "middleboxes[0]")


def test_firewall_rules_need_a_firewall():
    rule = dataclasses.make_dataclass("R", ["priority", "direction", "match",
                                            "action", "tier"])(
        1, "to-vm", "any", "allow", "tenant")
    nat = MiddleboxInfo("nat-a", "nat", "ls-a")
    with raises("middlebox 'nat-a' is a nat middlebox; firewall rules need a "
                "firewall middlebox"):
        validate.check_rule(nat, rule, SWITCHES, {})
    with raises("M: nat middlebox 'nat-a' has firewall rules"):
        validate.check_firewall(SWITCHES, {}, {"nat-a": nat},
                                {"nat-a": (rule,)}, (),
                                mb_labels={"nat-a": "M"})


# --- NAT rules ---------------------------------------------------------------

NAT = MiddleboxInfo("nat-a", "nat", "ls-a", "deny", {"ports-per-host": "1024"})
NAT_B = MiddleboxInfo("nat-b", "nat", "ls-b")


def snat(ips, logical="", port_range=None, mb="nat-a"):
    return validate.nat_rule(mb, "snat", ips, logical,
                             port_range_text=port_range)


def dnat(ip, logical, protocol="", ext_port=None, log_port=None, mb="nat-a"):
    return validate.nat_rule(mb, "dnat", [ip], logical, protocol, ext_port,
                             log_port)


def test_nat_rule_is_canonical():
    rule = snat("203.0.113.9,203.0.113.10,203.0.113.9", "10.0.0.0/25",
                "2048-4095")
    assert (rule.type, rule.external_ips, rule.logical_ip, rule.port_range) \
        == ("snat", ("203.0.113.9", "203.0.113.10"), "10.0.0.0/25",
            (2048, 4095))
    assert snat(["203.0.113.9"]).port_range == (1024, 65535)
    assert snat(["203.0.113.9"], "10.0.0.7/32").logical_ip == "10.0.0.7"
    rule = dnat("203.0.113.20", "10.0.0.11", "tcp", "2222", 22)
    assert (rule.protocol, rule.external_port, rule.logical_port) == (
        "tcp", 2222, 22)
    assert dnat("203.0.113.20", "10.0.0.11").external_port is None
    assert validate.describe_nat(rule) == \
        "dnat rule 203.0.113.20:2222/tcp -> 10.0.0.11:22"
    assert validate.describe_nat(snat(["203.0.113.9"])) == \
        "snat rule 203.0.113.9 ports 1024-65535 (from the switch subnet)"


@pytest.mark.parametrize("make,hint", [
    (lambda: validate.nat_rule("m", "masquerade", ["203.0.113.9"]),
     "invalid NAT type 'masquerade': use snat or dnat"),
    (lambda: validate.nat_rule("m", "snat", [], ""),
     "invalid external IPs []"),
    (lambda: snat("203.0.113.x"), "invalid external IP '203.0.113.x'"),
    (lambda: validate.nat_rule("m", "snat", ["203.0.113.9"], "",
                               "tcp"), "a snat rule takes no protocol"),
    (lambda: snat(["203.0.113.9"], "10.0.0.5/24"),
     'bad address "10.0.0.5/24"'),
    (lambda: snat(["203.0.113.9"], port_range="2000-1000"),
     "invalid port range '2000-1000': use LO-HI with 1 <= LO <= HI <= "
     "65535"),
    (lambda: snat(["203.0.113.9"], port_range="0-100"),
     "invalid port range '0-100'"),
    (lambda: snat(["203.0.113.9"], port_range="1024-65536"),
     "invalid port range '1024-65536'"),
    (lambda: snat(["203.0.113.9"], port_range="a-b"),
     "invalid port range 'a-b'"),
    (lambda: validate.nat_rule("m", "dnat", ["203.0.113.9", "203.0.113.10"],
                               "10.0.0.11"),
     "a dnat rule has one external IP, not 2"),
    (lambda: validate.nat_rule("m", "dnat", ["203.0.113.9"], ""),
     "a dnat rule needs the logical IP"),
    (lambda: validate.nat_rule("m", "dnat", ["203.0.113.9"], "10.0.0.11",
                               port_range_text="1-2"),
     "a dnat rule takes no port range"),
    (lambda: dnat("203.0.113.9", "10.0.0.11", log_port=80),
     "a dnat rule's logical port needs an external port"),
    (lambda: dnat("203.0.113.9", "10.0.0.11", "icmp", 80),
     "invalid protocol 'icmp': use tcp or udp"),
    (lambda: dnat("203.0.113.9", "10.0.0.11", "", 0),
     "invalid external port 0: use an integer from 1 to 65535"),
    (lambda: dnat("203.0.113.9", "10.0.0.11", "", 80, 65536),
     "invalid logical port 65536"),
    (lambda: dnat("203.0.113.9", "10.0.0.0/24"),
     "invalid logical IP '10.0.0.0/24'")])
def test_nat_rule_rejects(make, hint):
    with raises(hint):
        make()


def check_nat(rule, mb=NAT):
    validate.check_nat_rule(rule, mb, SWITCHES, [EXT])


def test_check_nat_rule_accepts():
    check_nat(snat(["203.0.113.5"], "10.0.0.0/25", "1024-2047"))
    check_nat(dnat("203.0.113.6", "10.0.0.11", "tcp", 22))


@pytest.mark.parametrize("rule,mb,hint", [
    (snat(["203.0.113.5"]), MiddleboxInfo("lb-a", "lb", "ls-a"),
     "middlebox 'lb-a' is a lb middlebox; NAT rules need a nat middlebox "
     "(mb-add --type nat)"),
    (snat(["198.51.100.5"]), NAT,
     "external IP 198.51.100.5 is not inside any external network; add one "
     "first (ext-add)"),
    (snat(["203.0.113.5", "203.0.113.1"]), NAT,
     "external IP 203.0.113.1 is the gateway of external network 'ext'"),
    (dnat("203.0.113.255", "10.0.0.11"), NAT,
     "external IP 203.0.113.255 is the broadcast address of external network "
     "'ext' (203.0.113.0/24)"),
    (snat(["203.0.113.5"], "10.0.1.0/24"), NAT,
     "snat source 10.0.1.0/24 is not inside subnet 10.0.0.0/24 of logical "
     "switch 'ls-a'"),
    (snat(["203.0.113.5"], "10.0.0.0/16"), NAT,
     "snat source 10.0.0.0/16 is not inside subnet 10.0.0.0/24"),
    (snat(["203.0.113.5"], port_range="2000-3000"), NAT,
     "port range 2000-3000 holds no aligned block of 1024 ports (option "
     "ports-per-host of middlebox 'nat-a'); widen the range or lower "
     "ports-per-host"),
    (snat(["203.0.113.5"], port_range="1024-4095"),
     dataclasses.replace(NAT, options={}),
     "port range 1024-4095 holds no aligned block of 4096 ports"),
    (dnat("203.0.113.6", "10.0.1.11"), NAT,
     "dnat logical IP 10.0.1.11 is outside subnet 10.0.0.0/24 of logical "
     "switch 'ls-a'; use an address inside it"),
    (dnat("203.0.113.6", "10.0.0.255"), NAT,
     "dnat logical IP 10.0.0.255 is the broadcast address"),
    (dnat("203.0.113.6", "10.0.0.1"), NAT,
     "dnat logical IP 10.0.0.1 is the gateway of logical switch 'ls-a'")])
def test_check_nat_rule_rejects(rule, mb, hint):
    with raises(hint):
        check_nat(rule, mb)


def test_check_nat_rule_partial_skips_what_the_file_lacks():
    validate.check_nat_rule(snat(["198.51.100.5"]), NAT, SWITCHES, [],
                            partial=True)
    validate.check_nat_rule(dnat("198.51.100.5", "10.8.0.1"),
                            dataclasses.replace(NAT, switch="ls-db"), {}, [],
                            partial=True)


SNAT_5 = snat(["203.0.113.5", "203.0.113.6"])             # 1024-65535
NAT_RULES = [SNAT_5, dnat("203.0.113.7", "10.0.0.11", "tcp", 80),
             dnat("203.0.113.8", "10.0.0.12")]            # whole address


@pytest.mark.parametrize("rule", [
    snat(["203.0.113.9"], mb="nat-b"),
    snat(["203.0.113.6"], port_range="1-1023"),           # below SNAT_5
    dnat("203.0.113.5", "10.0.0.11", "", 80),             # below 1024
    dnat("203.0.113.7", "10.0.0.11", "udp", 80),          # other protocol
    dnat("203.0.113.7", "10.0.0.11", "tcp", 81),
])
def test_nat_rules_that_do_not_overlap(rule):
    validate.check_nat_unique(rule, NAT_RULES)


@pytest.mark.parametrize("rule,ip,other", [
    (snat(["203.0.113.6"], port_range="2048-4095", mb="nat-b"),
     "203.0.113.6", "middlebox 'nat-a' snat rule 203.0.113.5,203.0.113.6"),
    (dnat("203.0.113.5", "10.0.0.11", "tcp", 8080), "203.0.113.5",
     "snat rule 203.0.113.5,203.0.113.6 ports 1024-65535"),
    (dnat("203.0.113.5", "10.0.0.11"), "203.0.113.5", "snat rule"),
    (dnat("203.0.113.7", "10.0.0.13", "", 80), "203.0.113.7",
     "dnat rule 203.0.113.7:80/tcp -> 10.0.0.11"),
    (dnat("203.0.113.7", "10.0.0.13"), "203.0.113.7", "dnat rule "
     "203.0.113.7:80/tcp"),
    (dnat("203.0.113.8", "10.0.0.13", "udp", 53), "203.0.113.8",
     "dnat rule 203.0.113.8 -> 10.0.0.12"),
    (snat(["203.0.113.8"], port_range="40960-49151"), "203.0.113.8",
     "dnat rule 203.0.113.8 -> 10.0.0.12"),
])
def test_nat_rules_that_overlap(rule, ip, other):
    with pytest.raises(MbxError) as info:
        validate.check_nat_unique(rule, NAT_RULES, "L")
    message = str(info.value)
    assert message.startswith("L: " + validate.describe_nat(rule)), message
    assert other in message and f"on external IP {ip};" in message, message


# --- VIPs --------------------------------------------------------------------

LB = MiddleboxInfo("lb-a", "lb", "ls-a")
LB_B = MiddleboxInfo("lb-b", "lb", "ls-b")
MBS = {"lb-a": LB, "lb-b": LB_B}


def test_vip_is_canonical():
    v = validate.vip("lb-a", "10.0.0.100:80", "udp", "source-hash",
                     ["10.0.1.5:53", "10.0.0.12:8080", "10.0.0.11:8080"],
                     {"health-interval": "1.50", "health-rise": 3})
    assert (v.vip, v.port, v.protocol, v.algorithm) == (
        "10.0.0.100", 80, "udp", "source-hash")
    assert v.backends == (("10.0.0.11", 8080), ("10.0.0.12", 8080),
                          ("10.0.1.5", 53))
    assert v.options == {"health-interval": "1.5", "health-rise": "3"}
    assert validate.vip_text(v) == "10.0.0.100:80/udp"


@pytest.mark.parametrize("args,hint", [
    (("10.0.0.100",), "invalid VIP '10.0.0.100': use IP:PORT with a port "
                      "from 1 to 65535"),
    (("10.0.0.100:0",), "invalid VIP '10.0.0.100:0'"),
    (("10.0.0.300:80",), "invalid VIP '10.0.0.300:80'"),
    (("10.0.0.100:80", "sctp"), "invalid protocol 'sctp': use tcp or udp"),
    (("10.0.0.100:80", "tcp", "random"),
     "invalid algorithm 'random': use hash, round-robin, least-connections or "
     "source-hash"),
    (("10.0.0.100:80", "tcp", "round-robin", ["10.0.0.11"]),
     "invalid backend '10.0.0.11': use IP:PORT"),
    (("10.0.0.100:80", "tcp", "round-robin", ["10.0.0.11:80",
                                              "10.0.0.11:80"]),
     "backend 10.0.0.11:80 is listed twice"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health": "tcp"}),
     "unknown VIP option 'health'; known options: health-check, "
     "health-interval, health-timeout, health-rise, health-fall"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-check": "http"}),
     "invalid value 'http' for option health-check: use tcp or none"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-interval": "0"}),
     "invalid value '0' for option health-interval: use a number of seconds "
     "above 0, at most 3600"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-timeout": "1e3"}),
     "invalid value '1e3' for option health-timeout"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-rise": 0}),
     "invalid value 0 for option health-rise: use an integer from 1 to 100"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-fall": "101"}),
     "option health-fall"),
    (("10.0.0.100:80", "tcp", "round-robin", (), {"health-timeout": "3"}),
     "health-timeout 3s is longer than health-interval 2s")])
def test_vip_rejects(args, hint):
    with raises(hint):
        validate.vip("lb-a", *args)


def check_vip(v, mb=LB):
    validate.check_vip(v, mb, SWITCHES, [A1])


def test_check_vip_accepts_backends_of_the_tenant():
    check_vip(validate.vip("lb-a", "10.0.0.100:80", backend_texts=[
        "10.0.0.11:80", "10.0.1.20:80"]))
    # a VIP outside the subnet is accepted (VMs reach it via the gateway)
    check_vip(validate.vip("lb-a", "172.16.0.1:80"))


@pytest.mark.parametrize("args,mb,hint", [
    (("10.0.0.100:80",), MiddleboxInfo("nat-a", "nat", "ls-a"),
     "middlebox 'nat-a' is a nat middlebox; VIPs need an lb middlebox "
     "(mb-add --type lb)"),
    (("10.0.0.1:80",), LB, "VIP 10.0.0.1 is the gateway of logical switch "
                           "'ls-a'; use another address"),
    (("10.0.1.254:80",), LB_B, "VIP 10.0.1.254 is the gateway of logical "
                               "switch 'ls-b'"),
    (("10.0.0.11:80",), LB, "VIP 10.0.0.11 is the address of VM 'a1' on "
                            "logical switch 'ls-a'; use an address no VM "
                            "has"),
    (("10.0.0.255:80",), LB, "VIP 10.0.0.255 is not a unicast host address "
                             "of logical switch 'ls-a'"),
    (("224.0.0.5:80",), LB, "VIP 224.0.0.5 is not a unicast host address"),
    (("10.0.0.100:80", "tcp", "round-robin", ["10.0.2.5:80"]), LB,
     "backend 10.0.2.5:80 is outside every subnet of tenant 'ta'; a backend "
     "is a VM of the tenant"),
    (("10.0.0.100:80", "tcp", "round-robin", ["8.8.8.8:53"]), LB,
     "backend 8.8.8.8:53 is outside every subnet of tenant 'ta'"),
    (("10.0.0.100:80", "tcp", "round-robin", ["10.0.0.100:80"]), LB,
     "backend 10.0.0.100:80 is the VIP itself")])
def test_check_vip_rejects(args, mb, hint):
    with raises(hint):
        check_vip(validate.vip(mb.name, *args), mb)


def test_check_vip_unique_per_switch_address_port_and_protocol():
    web = validate.vip("lb-a", "10.0.0.100:80")
    others = [web, validate.vip("lb-b", "10.0.0.100:443")]
    validate.check_vip_unique(web, LB, others, MBS)          # itself
    validate.check_vip_unique(validate.vip("lb-a", "10.0.0.100:80", "udp"),
                              LB, others, MBS)
    validate.check_vip_unique(validate.vip("lb-b", "10.0.0.100:80"), LB_B,
                              others, MBS)                 # another switch
    other_lb = MiddleboxInfo("lb-c", "lb", "ls-a")
    with raises("VIP 10.0.0.100:80/tcp is already defined by load balancer "
                "'lb-a' on logical switch 'ls-a'; use another address or "
                "port"):
        validate.check_vip_unique(validate.vip("lb-c", "10.0.0.100:80"),
                                  other_lb, others,
                                  {**MBS, "lb-c": other_lb})


# --- chains ------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("bypass", ()), ([], ()), ("fw-a", ("fw-a",)),
    ("fw-a,lb-a,nat-a", ("fw-a", "lb-a", "nat-a")),
    (["nat-a", "fw-a"], ("nat-a", "fw-a"))])
def test_chain_accepts(value, expected):
    assert validate.chain(value) == expected
    assert validate.chain_text(expected) == (
        "bypass" if not expected else ",".join(expected))


@pytest.mark.parametrize("value,hint", [
    ("fw-a,fw-a", "invalid chain 'fw-a,fw-a': middlebox 'fw-a' appears "
                  "twice; a chain passes each middlebox once"),
    ("fw-a,bypass", "bypass stands alone"),
    ("fw-a,,lb-a", "invalid middlebox name ''"),
    ("", "invalid chain ''"),
    (5, "invalid chain 5"),
    ([f"m{i}" for i in range(65)], "a chain holds at most 64")])
def test_chain_rejects(value, hint):
    with raises(hint):
        validate.chain(value)


CHAIN_MBS = {
    "fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a"),
    "nat-a": NAT, "nat-a2": MiddleboxInfo("nat-a2", "nat", "ls-a"),
    "lb-a": LB, "lb-a2": MiddleboxInfo("lb-a2", "lb", "ls-a"),
    "ids-a": MiddleboxInfo("ids-a", "ids", "ls-a"), "lb-b": LB_B}


def test_check_policy_accepts_a_chain_with_one_of_each():
    validate.check_policy(PolicyInfo("ls-a", 1, "any", (
        "ids-a", "fw-a", "lb-a", "nat-a")), SWITCHES, CHAIN_MBS, {})


@pytest.mark.parametrize("chain,hint", [
    (("fw-a", "nat-a", "nat-a2"), "chain fw-a,nat-a,nat-a2 has nat "
                                  "middleboxes nat-a, nat-a2; a chain holds "
                                  "at most one nat middlebox"),
    (("lb-a2", "lb-a"), "has lb middleboxes lb-a2, lb-a; a chain holds at "
                        "most one lb middlebox"),
    (("fw-a", "lb-b"), "middlebox 'lb-b' serves logical switch 'ls-b', not "
                       "'ls-a'; a steering policy can only use middleboxes "
                       "of its own switch"),
    (("fw-a", "nope"), "unknown middlebox 'nope'")])
def test_check_policy_rejects_chains(chain, hint):
    with raises(hint):
        validate.check_policy(PolicyInfo("ls-a", 1, "any", chain), SWITCHES,
                              CHAIN_MBS, {})


def test_describe_policy_shows_the_chain():
    assert validate.describe_policy(PolicyInfo("ls-a", 7, "any", (
        "fw-a", "lb-a"))) == "steering policy at priority 7 (any -> fw-a,lb-a)"


# --- everything together -----------------------------------------------------

def test_check_services_labels_file_entries_and_describes_the_others():
    mbs = {"nat-a": NAT, "nat-b": NAT_B, "lb-a": LB}
    db_rule = dataclasses.replace(snat(["203.0.113.5"]), uuid="u1")
    file_rule = snat(["203.0.113.5"], mb="nat-b")
    with raises("middleboxes[0] (nat-b): nat_rules[0]: snat rule 203.0.113.5 "
                "ports 1024-65535 (from the switch subnet) overlaps "
                "middlebox 'nat-a' snat rule"):
        validate.check_services(
            SWITCHES, [A1], mbs, {"nat-a": (db_rule,), "nat-b": (file_rule,)},
            {}, {"ext": EXT}, mb_labels={"nat-b": "middleboxes[0] (nat-b)"})
    with raises("middlebox 'nat-a' snat rule 203.0.113.5 ports 1024-65535 "
                "(from the switch subnet): external IP 203.0.113.5 is not "
                "inside any external network"):
        validate.check_services(SWITCHES, [A1], mbs, {"nat-a": (db_rule,)},
                                {}, {})
    bad_vip = validate.vip("lb-a", "10.0.0.11:80")
    with raises("load balancer 'lb-a' VIP 10.0.0.11:80/tcp: VIP 10.0.0.11 is "
                "the address of VM 'a1'"):
        validate.check_services(SWITCHES, [A1], mbs, {}, {"lb-a": (bad_vip,)},
                                {})
    with raises("X: vips[1]: VIP 10.0.0.100:80/tcp is already defined"):
        validate.check_services(
            SWITCHES, [A1], mbs, {}, {"lb-a": (
                validate.vip("lb-a", "10.0.0.100:80"),
                validate.vip("lb-a", "10.0.0.100:80"))}, {},
            mb_labels={"lb-a": "X"})
    ext2 = ExternalNetInfo("ext2", "203.0.113.0/25", "203.0.113.2",
                           "02:00:00:00:00:02")
    with raises("E: external network 'ext2' (203.0.113.0/25) overlaps"):
        validate.check_services(SWITCHES, [], mbs, {}, {},
                                {"ext": EXT, "ext2": ext2},
                                ext_labels={"ext2": "E"})


def test_status_map():
    assert validate.status_map({"a": "b"}) == {"a": "b"}
    with raises("invalid VIP status {'a': 1}: use a mapping of strings"):
        validate.status_map({"a": 1}, "VIP status")
