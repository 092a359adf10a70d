import pytest

from ovsdb.api import NbSnapshot
from ovsdb.errors import MbxError
from ovsdb.topology import check_against, parse_topology
from ovsdb.validate import mac_from_name
from ryu_apps.model import SwitchInfo, VMInfo

GOOD = """
switches:
  - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24}
  - {name: ls-b, vni: 102, subnet: 10.0.0.0/24}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.1, mac: "02:00:00:00:01:01"}
  - {name: b1, switch: ls-b, ip: 10.0.0.1}
"""

LAB = """
hosts: [h1, h2]
switches:
  - {name: ls-a, vni: 101, subnet: 10.0.0.0/24}
vms:
  - {name: a1, switch: ls-a, ip: 10.0.0.1, host: h2}
  - {name: a2, switch: ls-a, ip: 10.0.0.2}
"""


def test_parse_good_file():
    spec = parse_topology(GOOD)
    assert spec.switches == (
        SwitchInfo("ls-a", "tenant-a", 101, "10.0.0.0/24"),
        SwitchInfo("ls-b", "ls-b", 102, "10.0.0.0/24"))
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
    return NbSnapshot(nb_cfg=0, hv_cfg=0, hosts={},
                      switches={s.name: s for s in switches},
                      vms={v.name: v for v in vms}, vm_locations={})


DB_SWITCH = SwitchInfo("db-sw", "t", 101, "10.9.0.0/24")
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
                          "subnet: 10.8.0.0/24}\n")
    with pytest.raises(MbxError, match="^VM 'db-vm': IP 10.9.0.1 is outside "
                                       "subnet 10.8.0.0/24"):
        check_against(spec, _snapshot([DB_SWITCH], [DB_VM]))
