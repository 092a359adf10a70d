import pytest

from ovsdb import validate
from ovsdb.errors import MbxError
from ryu_apps.model import SwitchInfo, VMInfo


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


@pytest.mark.parametrize("value", ["tcp:10.0.0.1:6640", "ssl:1.2.3.4:6640",
                                   "unix:/run/openvswitch/db.sock"])
def test_mgmt_address_accepts(value):
    assert validate.mgmt_address(value) == value


@pytest.mark.parametrize("value", ["10.0.0.1:6640", "tcp:10.0.0.1", "unix:"])
def test_mgmt_address_rejects(value):
    with pytest.raises(MbxError, match="tcp:IP:PORT"):
        validate.mgmt_address(value)


def test_encap_type():
    assert validate.encap_type("geneve") == "geneve"
    with pytest.raises(MbxError, match="vxlan, geneve"):
        validate.encap_type("gre")


SW_A = SwitchInfo("a", "t", 5, "10.0.0.0/24")
SW_B = SwitchInfo("b", "t", 6, "10.0.0.0/24")
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
