"""YAML topology files with the schema 1.2.0 keys: gateways, external
networks, NAT rules, VIPs, middlebox types and chains (ovsdb.topology)."""

import dataclasses

import pytest

from ovsdb import validate
from mbxmodel.snapshot import NbSnapshot
from ovsdb.errors import MbxError
from ovsdb.topology import check_against, parse_topology
from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import MiddleboxInfo, NatRuleInfo, PolicyInfo, VipInfo

SERVICES = """
switches:
  - {name: ls-a, tenant: ta, vni: 101, subnet: 10.0.0.0/24}
  - {name: ls-b, tenant: ta, vni: 102, subnet: 10.0.1.0/24,
     gateway: 10.0.1.254}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.11}
  - {name: b1, switch: ls-b, ip: 10.0.1.1}
external_networks:
  - {name: ext, cidr: 203.0.113.0/24, gateway_ip: 203.0.113.1,
     gateway_mac: "02:EE:FF:00:00:01"}
middleboxes:
  - {name: fw-a, switch: ls-a}
  - name: nat-a
    type: nat
    switch: ls-a
    options: {ports-per-host: 1024}
    nat_rules:
      - {type: snat, external_ips: [203.0.113.6, 203.0.113.5],
         logical_ip: 10.0.0.0/25, port_range: 2048-65535}
      - {type: dnat, external_ip: 203.0.113.10, logical_ip: 10.0.0.11,
         protocol: tcp, external_port: 2222, logical_port: 22}
      - {type: dnat, external_ip: 203.0.113.11, logical_ip: 10.0.0.12}
  - name: lb-a
    type: lb
    switch: ls-a
    vips:
      - {vip: "10.0.0.100:80", algorithm: least-connections,
         backends: ["10.0.1.1:8080", "10.0.0.11:8080"],
         options: {health-interval: 0.5, health-timeout: 0.25,
                   health-check: tcp}}
      - {vip: "10.0.0.100:53", protocol: udp}
  - {name: ids-a, type: ids, switch: ls-a, options: {scan-threshold: 12}}
steering:
  - {switch: ls-a, priority: 100, match: any,
     chain: [fw-a, lb-a, nat-a, ids-a]}
  - {switch: ls-a, priority: 200, match: "proto=udp", chain: []}
  - {switch: ls-a, priority: 300, match: "proto=icmp", middlebox: fw-a}
  - {switch: ls-a, priority: 400, match: "dst=10.0.0.0/24",
     middlebox: bypass}
"""


def test_parse_services():
    spec = parse_topology(SERVICES)
    assert spec.switches == (
        SwitchInfo("ls-a", "ta", 101, "10.0.0.0/24", "10.0.0.1"),
        SwitchInfo("ls-b", "ta", 102, "10.0.1.0/24", "10.0.1.254"))
    assert spec.external_networks == (ExternalNetInfo(
        "ext", "203.0.113.0/24", "203.0.113.1", "02:ee:ff:00:00:01"),)
    assert [mb.type for mb in spec.middleboxes] == [
        "firewall", "nat", "lb", "ids"]
    assert spec.nat_rules == {
        "fw-a": (), "lb-a": (), "ids-a": (),
        "nat-a": (
            NatRuleInfo("", "nat-a", "snat", ("203.0.113.5", "203.0.113.6"),
                        "10.0.0.0/25", port_range=(2048, 65535)),
            NatRuleInfo("", "nat-a", "dnat", ("203.0.113.10",), "10.0.0.11",
                        "tcp", 2222, 22),
            NatRuleInfo("", "nat-a", "dnat", ("203.0.113.11",), "10.0.0.12"))}
    assert spec.vips["lb-a"] == (
        VipInfo("", "lb-a", "10.0.0.100", 80, "tcp", "least-connections",
                (("10.0.0.11", 8080), ("10.0.1.1", 8080)),
                {"health-check": "tcp", "health-interval": "0.5",
                 "health-timeout": "0.25"}),
        VipInfo("", "lb-a", "10.0.0.100", 53, "udp", "hash"))    # the default
    assert spec.policies == (
        PolicyInfo("ls-a", 100, "any", ("fw-a", "lb-a", "nat-a", "ids-a")),
        PolicyInfo("ls-a", 200, "proto=udp", ()),
        PolicyInfo("ls-a", 300, "proto=icmp", ("fw-a",)),
        PolicyInfo("ls-a", 400, "dst=10.0.0.0/24", ()))


def _edit(old, new):
    assert old in SERVICES, old
    return SERVICES.replace(old, new)


@pytest.mark.parametrize("text,message", [
    (_edit("gateway: 10.0.1.254", "gateway: 10.0.2.1"),
     "switches[1] (ls-b): gateway 10.0.2.1 is outside subnet 10.0.1.0/24 of "
     "logical switch 'ls-b'"),
    (_edit("{name: a1, switch: ls-a, ip: 10.0.0.11}",
           "{name: a1, switch: ls-a, ip: 10.0.0.1}"),
     "vms[0] (a1): IP 10.0.0.1 is the gateway of logical switch 'ls-a'"),
    (_edit("{name: b1, switch: ls-b, ip: 10.0.1.1}",
           "{name: b1, switch: ls-b, ip: 10.0.1.254}"),
     "vms[1] (b1): IP 10.0.1.254 is the gateway of logical switch 'ls-b'"),
    (_edit("gateway_ip: 203.0.113.1,", "gateway_ip: 198.51.100.1,"),
     "external_networks[0] (ext): gateway IP 198.51.100.1 is outside "
     "external network 203.0.113.0/24"),
    (_edit('gateway_mac: "02:EE:FF:00:00:01"', "gateway_mac: 5"),
     "external_networks[0] (ext): gateway_mac must be a quoted string"),
    (_edit('gateway_mac: "02:EE:FF:00:00:01"}', 'gateway_mac: '
           '"02:EE:FF:00:00:01"}\n  - {name: ext, cidr: 198.51.100.0/24, '
           'gateway_ip: 198.51.100.1, gateway_mac: "02:00:00:00:00:01"}'),
     "external_networks[1] (ext): external network 'ext' is listed twice"),
    (_edit('gateway_mac: "02:EE:FF:00:00:01"}', 'gateway_mac: '
           '"02:EE:FF:00:00:01"}\n  - {name: ext2, cidr: 203.0.113.0/25, '
           'gateway_ip: 203.0.113.2, gateway_mac: "02:00:00:00:00:01"}'),
     "external_networks[1] (ext2): external network 'ext2' (203.0.113.0/25) "
     "overlaps external network 'ext'"),
    (_edit("gateway_ip: 203.0.113.1,\n     ", ""),
     "external_networks[0] (ext): missing key 'gateway_ip'"),
    (_edit("type: nat", "type: router"),
     "middleboxes[1] (nat-a): invalid middlebox type 'router': use "
     "firewall, nat, lb or ids"),
    (_edit("ports-per-host: 1024", "ports-per-host: 1000"),
     "middleboxes[1] (nat-a): invalid value '1000' for option "
     "ports-per-host: use a power of two"),
    (_edit("{scan-threshold: 12}", "{ports-per-host: 1024}"),
     "middleboxes[3] (ids-a): option ports-per-host does not apply to ids "
     "middlebox 'ids-a'"),
    (_edit("{type: snat, external_ips: [203.0.113.6, 203.0.113.5]",
           "{type: snatt, external_ips: [203.0.113.6, 203.0.113.5]"),
     "middleboxes[1] (nat-a): nat_rules[0]: invalid NAT type 'snatt'"),
    (_edit("external_ips: [203.0.113.6, 203.0.113.5]",
           "external_ips: 203.0.113.6"),
     "middleboxes[1] (nat-a): nat_rules[0]: external_ips must be a list"),
    (_edit("port_range: 2048-65535", "port_range: 2048-1024"),
     "middleboxes[1] (nat-a): nat_rules[0]: invalid port range "
     "'2048-1024'"),
    (_edit("port_range: 2048-65535", "port_range: 2048-2100"),
     "middleboxes[1] (nat-a): nat_rules[0]: port range 2048-2100 holds no "
     "aligned block of 1024 ports"),
    (_edit("port_range: 2048-65535", "protocol: tcp"),
     "middleboxes[1] (nat-a): nat_rules[0]: unknown key 'protocol'; "
     "expected type, external_ips, logical_ip, port_range"),
    (_edit("logical_ip: 10.0.0.0/25", "logical_ip: 10.0.1.0/25"),
     "middleboxes[1] (nat-a): nat_rules[0]: snat source 10.0.1.0/25 is not "
     "inside subnet 10.0.0.0/24"),
    (_edit("external_port: 2222", "external_port: '2222'"),
     "middleboxes[1] (nat-a): nat_rules[1]: external_port must be an "
     "integer"),
    (_edit("external_port: 2222, logical_port: 22", "logical_port: 22"),
     "middleboxes[1] (nat-a): nat_rules[1]: a dnat rule's logical port "
     "needs an external port"),
    (_edit("{type: dnat, external_ip: 203.0.113.11, logical_ip: 10.0.0.12}",
           "{type: dnat, external_ip: 203.0.113.11}"),
     "middleboxes[1] (nat-a): nat_rules[2]: missing key 'logical_ip'"),
    (_edit("external_ip: 203.0.113.11, logical_ip: 10.0.0.12",
           "external_ip: 203.0.113.10, logical_ip: 10.0.0.12"),
     "middleboxes[1] (nat-a): nat_rules[2]: dnat rule 203.0.113.10 -> "
     "10.0.0.12 overlaps middlebox 'nat-a' dnat rule "
     "203.0.113.10:2222/tcp -> 10.0.0.11:22 on external IP 203.0.113.10"),
    (_edit("external_ip: 203.0.113.11, logical_ip: 10.0.0.12",
           "external_ip: 203.0.113.5, logical_ip: 10.0.0.12"),
     "middleboxes[1] (nat-a): nat_rules[2]: dnat rule 203.0.113.5 -> "
     "10.0.0.12 overlaps middlebox 'nat-a' snat rule"),
    (_edit("external_ip: 203.0.113.11, logical_ip: 10.0.0.12",
           "external_ip: 203.0.113.11, logical_ip: 10.0.1.12"),
     "middleboxes[1] (nat-a): nat_rules[2]: dnat logical IP 10.0.1.12 is "
     "outside subnet 10.0.0.0/24"),
    (_edit("{name: fw-a, switch: ls-a}",
           "{name: fw-a, switch: ls-a, nat_rules: [{type: snat, "
           "external_ips: [203.0.113.20]}]}"),
     "middleboxes[0] (fw-a): nat_rules[0]: middlebox 'fw-a' is a firewall "
     "middlebox; NAT rules need a nat middlebox"),
    (_edit("{name: fw-a, switch: ls-a}",
           "{name: fw-a, switch: ls-a, nat_rules: {type: snat}}"),
     "middleboxes[0] (fw-a): nat_rules must be a list"),
    (_edit('{vip: "10.0.0.100:53", protocol: udp}',
           '{vip: "10.0.0.100:80"}'),
     "middleboxes[2] (lb-a): vips[1]: VIP 10.0.0.100:80/tcp is already "
     "defined by load balancer 'lb-a'"),
    (_edit('{vip: "10.0.0.100:53", protocol: udp}',
           '{vip: "10.0.0.11:53", protocol: udp}'),
     "middleboxes[2] (lb-a): vips[1]: VIP 10.0.0.11 is the address of VM "
     "'a1'"),
    (_edit('{vip: "10.0.0.100:53", protocol: udp}',
           '{vip: "10.0.0.1:53", protocol: udp}'),
     "middleboxes[2] (lb-a): vips[1]: VIP 10.0.0.1 is the gateway"),
    (_edit('{vip: "10.0.0.100:53", protocol: udp}',
           '{vip: "10.0.0.100:53", protocol: sctp}'),
     "middleboxes[2] (lb-a): vips[1]: invalid protocol 'sctp'"),
    (_edit('{vip: "10.0.0.100:53", protocol: udp}',
           '{vip: "10.0.0.100:53", weight: 3}'),
     "middleboxes[2] (lb-a): vips[1]: unknown key 'weight'; expected vip, "
     "protocol, algorithm, backends, options"),
    (_edit('"10.0.1.1:8080"', '"10.0.2.1:8080"'),
     "middleboxes[2] (lb-a): vips[0]: backend 10.0.2.1:8080 is outside "
     "every subnet of tenant 'ta'"),
    (_edit('"10.0.1.1:8080"', '"10.0.0.11:8080"'),
     "middleboxes[2] (lb-a): vips[0]: backend 10.0.0.11:8080 is listed "
     "twice"),
    (_edit("health-timeout: 0.25", "health-timeout: 1"),
     "middleboxes[2] (lb-a): vips[0]: health-timeout 1s is longer than "
     "health-interval 0.5s"),
    (_edit("health-check: tcp", "health-check: ping"),
     "middleboxes[2] (lb-a): vips[0]: invalid value 'ping' for option "
     "health-check"),
    (_edit("{name: fw-a, switch: ls-a}",
           "{name: fw-a, switch: ls-a, vips: [{vip: \"10.0.0.99:80\"}]}"),
     "middleboxes[0] (fw-a): vips[0]: middlebox 'fw-a' is a firewall "
     "middlebox; VIPs need an lb middlebox"),
    (_edit("chain: [fw-a, lb-a, nat-a, ids-a]",
           "chain: [fw-a, lb-a, fw-a]"),
     "steering[0] (ls-a priority 100): invalid chain ['fw-a', 'lb-a', "
     "'fw-a']: middlebox 'fw-a' appears twice"),
    (_edit("chain: [fw-a, lb-a, nat-a, ids-a]", "chain: fw-a"),
     "steering[0] (ls-a priority 100): chain must be a list of middlebox "
     "names"),
    (_edit("chain: []}", "chain: [], middlebox: fw-a}"),
     "steering[1] (ls-a priority 200): give chain or middlebox, not both"),
    (_edit("middlebox: fw-a}", "middlebox: [fw-a]}"),
     "steering[2] (ls-a priority 300): middlebox must be a name"),
    (_edit("  - {name: ids-a,", "  - {name: nat-b, type: nat, switch: ls-a}"
           "\n  - {name: ids-a,").replace(
        "[fw-a, lb-a, nat-a, ids-a]", "[fw-a, nat-b, nat-a]"),
     "steering[0] (ls-a priority 100): chain fw-a,nat-b,nat-a has nat "
     "middleboxes nat-b, nat-a; a chain holds at most one nat middlebox"),
])
def test_parse_services_rejects_naming_the_entry(text, message):
    with pytest.raises(MbxError) as info:
        parse_topology(text)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def _snapshot(**kw):
    base = dict(nb_cfg=0, hv_cfg=0, switches={}, vms={})
    base.update(kw)
    return NbSnapshot(**base)


DB_SW = SwitchInfo("db-sw", "t", 7, "10.7.0.0/24", "10.7.0.1")
DB_VM = VMInfo("db-vm", "db-sw", "02:00:00:00:07:11", "10.7.0.11")
DB_EXT = ExternalNetInfo("ext", "203.0.113.0/24", "203.0.113.1",
                         "02:ee:ff:00:00:01")
DB_NAT = MiddleboxInfo("db-nat", "nat", "db-sw")
DB_LB = MiddleboxInfo("db-lb", "lb", "db-sw")
DB_SNAT = dataclasses.replace(validate.nat_rule(
    "db-nat", "snat", ["203.0.113.5"]), uuid="u-snat")
DB_VIP = dataclasses.replace(validate.vip("db-lb", "10.7.0.100:80"),
                             uuid="u-vip", status={"10.7.0.11:80": "up"})


def _db():
    return _snapshot(switches={"db-sw": DB_SW}, vms={"db-vm": DB_VM},
                     middleboxes={"db-nat": DB_NAT, "db-lb": DB_LB},
                     nat_rules={"db-nat": (DB_SNAT,)},
                     vips={"db-lb": (DB_VIP,)},
                     external_networks={"ext": DB_EXT})


def test_file_nat_rules_may_use_external_networks_of_the_database():
    text = ("middleboxes:\n  - {name: nat-x, type: nat, switch: db-sw, "
            "nat_rules: [{type: snat, external_ips: [203.0.113.7]}]}\n")
    spec = parse_topology(text)        # the network could be in the DB
    with pytest.raises(MbxError, match=r"^middleboxes\[0\] \(nat-x\): "
                       r"nat_rules\[0\]: external IP 203.0.113.7 is not "
                       "inside any external network"):
        check_against(spec, _snapshot(switches={"db-sw": DB_SW}))
    check_against(spec, _db())


@pytest.mark.parametrize("text,message", [
    ("middleboxes:\n  - {name: nat-x, type: nat, switch: db-sw, nat_rules: "
     "[{type: dnat, external_ip: 203.0.113.5, logical_ip: 10.7.0.11, "
     "protocol: udp, external_port: 5000}]}\n",
     "middleboxes[0] (nat-x): nat_rules[0]: dnat rule 203.0.113.5:5000/udp "
     "-> 10.7.0.11 overlaps middlebox 'db-nat' snat rule 203.0.113.5 ports "
     "1024-65535"),
    ("vms:\n  - {name: x, switch: db-sw, ip: 10.7.0.100}\n",
     "vms[0] (x): IP 10.7.0.100 is a VIP of load balancer 'db-lb' on "
     "logical switch 'db-sw'"),
    ("vms:\n  - {name: x, switch: db-sw, ip: 10.7.0.1}\n",
     "vms[0] (x): IP 10.7.0.1 is the gateway of logical switch 'db-sw'"),
    ("switches:\n  - {name: db-sw, tenant: t, vni: 7, subnet: 10.7.0.0/24, "
     "gateway: 10.7.0.11}\n",
     "VM 'db-vm': IP 10.7.0.11 is the gateway of logical switch 'db-sw'"),
    ("switches:\n  - {name: db-sw, tenant: t, vni: 7, subnet: 10.7.0.0/24, "
     "gateway: 10.7.0.100}\n",
     "load balancer 'db-lb' VIP 10.7.0.100:80/tcp: VIP 10.7.0.100 is the "
     "gateway of logical switch 'db-sw'"),
    ("external_networks:\n  - {name: ext, cidr: 198.51.100.0/24, "
     "gateway_ip: 198.51.100.1, gateway_mac: \"02:00:00:00:00:01\"}\n",
     "middlebox 'db-nat' snat rule 203.0.113.5 ports 1024-65535 (from the "
     "switch subnet): external IP 203.0.113.5 is not inside any external "
     "network"),
    ("middleboxes:\n  - {name: db-lb, type: lb, switch: db-sw, vips: [{vip: "
     "\"10.7.0.11:80\"}]}\n",
     "middleboxes[0] (db-lb): vips[0]: VIP 10.7.0.11 is the address of VM "
     "'db-vm'"),
    ("middleboxes:\n  - {name: db-nat, type: firewall, switch: db-sw}\n"
     "steering:\n  - {switch: db-sw, priority: 1, match: any, chain: "
     "[db-nat, db-lb]}\n", None),
    ("steering:\n  - {switch: db-sw, priority: 1, match: any, chain: "
     "[db-nat, db-lb, db-x]}\n",
     "steering[0] (db-sw priority 1): unknown middlebox 'db-x'"),
])
def test_check_against_a_database_with_services(text, message):
    spec = parse_topology(text)
    if message is None:
        check_against(spec, _db())
        return
    with pytest.raises(MbxError) as info:
        check_against(spec, _db())
    assert str(info.value).startswith(message), str(info.value)


def test_a_listed_middlebox_replaces_its_nat_rules_and_vips():
    # The file declares db-nat without rules and db-lb without VIPs: the
    # database's rule and VIP no longer count, so their addresses are free.
    spec = parse_topology(
        "middleboxes:\n  - {name: db-nat, type: nat, switch: db-sw}\n"
        "  - {name: db-lb, type: lb, switch: db-sw}\n"
        "  - name: nat-y\n    type: nat\n    switch: db-sw\n    nat_rules:\n"
        "      - {type: snat, external_ips: [203.0.113.5]}\n"
        "vms:\n  - {name: y, switch: db-sw, ip: 10.7.0.100}\n")
    check_against(spec, _db())


def test_the_example_in_the_module_docstring_is_a_valid_file():
    import textwrap

    from ovsdb import topology
    doc = topology.__doc__
    text = textwrap.dedent(doc[doc.index("    switches:"):
                               doc.index("A steering entry")])
    spec = parse_topology(text)
    check_against(spec, _snapshot())
    assert [p.chain for p in spec.policies] == [
        ("fw-a", "lb-a", "nat-a"), (), ("fw-a",)]
