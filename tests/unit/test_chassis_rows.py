"""The pure parts of the host's chassis agent and of the controller's
southbound view: what a host's OVSDB rows become, and back."""

from types import SimpleNamespace as Row

from hypervisor.chassis import binding_columns, chassis_columns, host_ports_from_rows
from mbxmodel.network import HostPorts
from mbxmodel.snapshot import sb_snapshot
from mbxmodel.state import HostRecord
from ovsdb.southbound import changed_hosts, host_ports_from_southbound

MAC = "02:00:00:00:00:a1"


def _host_rows():
    ifaces = [Row(name="mbx-tun", type="vxlan", ofport=[100], external_ids={}),
              Row(name="mbx-mb", type="internal", ofport=[50],
                  external_ids={"mbx-role": "middlebox"}),
              Row(name="mbx-uplink", type="", ofport=[60], mac_in_use=["02:EE:00:00:00:01"],
                  external_ids={"mbx-role": "uplink"}),
              Row(name="vif-a1", type="", ofport=[1],
                  external_ids={"iface-id": "a1", "attached-mac": MAC.upper()}),
              Row(name="vif-a2", type="", ofport=[],          # no ofport yet
                  external_ids={"iface-id": "a2"}),
              Row(name="vif-x", type="", ofport=[-1],         # failed to attach
                  external_ids={"iface-id": "x"}),
              Row(name="elsewhere", type="", ofport=[3],      # on another bridge
                  external_ids={"iface-id": "b9"})]
    bridge = Row(name="br-int", datapath_id=["00000000000000a1"],
                 ports=[Row(interfaces=[i]) for i in ifaces[:-1]])
    return [bridge], ifaces


def test_a_hosts_ovsdb_rows_become_its_ports():
    ports = host_ports_from_rows(*_host_rows())
    assert ports == HostPorts(0xA1, 100, {"a1": (1, MAC)}, 50, 60, "02:ee:00:00:00:01")


def test_a_bridge_not_there_yet_has_no_ports():
    _bridges, ifaces = _host_rows()
    assert host_ports_from_rows([], ifaces) == HostPorts()


def test_published_rows_read_back_as_the_same_ports():
    ports = host_ports_from_rows(*_host_rows())
    fields = ("h1", "geneve", "10.200.0.11", "ssl:10.201.0.11:6650")
    chassis = Row(name="h1", **chassis_columns(ports, fields))
    bindings = [Row(logical_port=vm, chassis="h1", **cols)
                for vm, cols in binding_columns(ports).items()]
    assert host_ports_from_southbound([chassis], bindings) == {"h1": ports}
    # ... and as the host its controllers and mbxctl see
    private = Row(name="h1", nb_cfg=4, connected=True)
    assert sb_snapshot({"Chassis": [chassis], "Chassis_Private": [private]}).hosts == {
        "h1": HostRecord("h1", "geneve", "10.200.0.11", nb_cfg=4, connected=True,
                         datapath_id="%016x" % ports.datapath_id,
                         migration_address="ssl:10.201.0.11:6650")}


def test_bad_southbound_values_are_contained_to_their_host():
    chassis = [Row(name="h1", datapath_id=["not-hex"], tunnel_ofport=[4], mb_ofport=[],
                   uplink_ofport=[], uplink_mac=[]),
               Row(name="h2", datapath_id=["00000000000000a2"], tunnel_ofport=[], mb_ofport=[],
                   uplink_ofport=[], uplink_mac=[])]
    bindings = [Row(logical_port="a1", chassis="h1", ofport=5, mac="02:00:00:00:00:A1"),
                Row(logical_port="z9", chassis="h9", ofport=6, mac="")]   # no chassis row yet
    warned = set()
    out = host_ports_from_southbound(chassis, bindings, warned)
    assert out["h1"] == HostPorts(None, 4, {"a1": (5, "02:00:00:00:00:a1")})
    assert out["h2"] == HostPorts(0xA2)
    assert out["h9"] == HostPorts(vm_ports={"z9": (6, "")})
    assert warned == {("h1", "not-hex")}


def test_hosts_that_lost_ports_are_reported_before_hosts_that_gained_one():
    # a VM moving from h2 to h1 in one batch: h1's appearance is the newest
    old = {"h1": HostPorts(1), "h2": HostPorts(2, vm_ports={"a": (1, "")}),
           "h3": HostPorts(3)}
    new = {"h1": HostPorts(1, vm_ports={"a": (7, "")}), "h2": HostPorts(2),
           "h3": HostPorts(3)}
    assert changed_hosts(old, new) == ["h2", "h1"]
    assert changed_hosts(new, new) == []
    assert changed_hosts(old, {}) == ["h1", "h2", "h3"]
