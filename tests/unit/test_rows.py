"""mbxmodel.rows: config database rows as mbxmodel values, the one
conversion mbxctl, the controllers and mbxd share."""

import types
import uuid

import pytest

from mbxmodel import rows
from mbxmodel.network import ExternalNetInfo
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo

U = uuid.UUID(int=7)


def row(**columns):
    return types.SimpleNamespace(uuid=U, **columns)


def test_port_range_parsing():
    assert rows.port_range(None) == (1024, 65535)
    assert rows.port_range([]) == (1024, 65535)
    assert rows.port_range(["2000-3000"]) == (2000, 3000)
    assert rows.port_range(" 80 ") == (80, 80)
    for bad in ("0-10", "10-5", "a-b", "1-70000", "+80"):
        with pytest.raises(ValueError):
            rows.port_range(bad)


def test_ip_port_is_canonical():
    assert rows.ip_port("10.0.0.11:80") == ("10.0.0.11", 80)
    for bad in ("10.0.0.11", "10.0.0.11:0", "10.0.0.300:80", "x:80"):
        with pytest.raises(ValueError):
            rows.ip_port(bad)


def test_a_firewall_rule_has_the_tier_of_the_column_holding_it():
    rule = row(priority=100, direction="to-vm", match="any", action="allow")
    assert rows.rule(rule) == RuleInfo(
        100, "to-vm", "any", "allow", "tenant", str(U))
    assert rows.rule(rule, "provider").tier == "provider"
    assert rows.RULE_COLUMNS == {"provider": "provider_rules",
                                 "tenant": "rules"}
    assert rows.rule_tenant("tenant", "t1") == "t1"
    assert rows.rule_tenant("provider", "t1") == ""


def test_a_nat_rule_reads_its_optional_columns():
    snat = row(type="snat", external_ips=["192.0.2.10", "192.0.2.9"],
               logical_ip="", protocol=[], external_port=[],
               logical_port=[], port_range=["4096-8191"])
    assert rows.nat_rule(snat, "nat-a") == NatRuleInfo(
        str(U), "nat-a", "snat", ("192.0.2.9", "192.0.2.10"), "",
        port_range=(4096, 8191))
    dnat = row(type="dnat", external_ips=["192.0.2.1"], logical_ip="10.0.0.5",
               protocol=["tcp"], external_port=[80], logical_port=[8080],
               port_range=[])
    assert rows.nat_rule(dnat, "nat-a") == NatRuleInfo(
        str(U), "nat-a", "dnat", ("192.0.2.1",), "10.0.0.5", "tcp", 80, 8080)


def test_an_unparsable_port_range_reads_as_the_default():
    snat = row(type="snat", external_ips=["192.0.2.1"], logical_ip="",
               protocol=[], external_port=[], logical_port=[],
               port_range=["wide"])
    assert rows.nat_rule(snat, "nat-a").port_range == (1024, 65535)


def test_a_vip_keeps_its_good_backends_in_address_order():
    vip = row(vip="10.0.0.100", port=80, protocol="tcp", algorithm="hash",
              backends=["10.0.0.10:80", "10.0.0.9:80", "bad", "10.0.0.9:80"],
              options={"health-check": "none"})
    assert rows.vip(vip, "lb-a") == VipInfo(
        str(U), "lb-a", "10.0.0.100", 80, "tcp", "hash",
        (("10.0.0.9", 80), ("10.0.0.10", 80)), {"health-check": "none"})
    assert rows.backends(vip)[1] == ["bad"]


def test_a_vip_row_with_status_carries_it():
    vip = row(vip="10.0.0.100", port=80, protocol="tcp", algorithm="hash",
              backends=["10.0.0.9:80"], options={},
              status={"10.0.0.9:80": "up"})
    assert rows.vip(vip, "lb-a").status == {"10.0.0.9:80": "up"}


def test_an_external_network_mac_is_lower_case():
    assert rows.external_network(row(
        name="ext", cidr="192.0.2.0/24", gateway_ip="192.0.2.1",
        gateway_mac="02:AA:00:00:00:01")) == ExternalNetInfo(
        "ext", "192.0.2.0/24", "192.0.2.1", "02:aa:00:00:00:01")
