"""An engine that receives only its host's switches' Datapath records (a
per-host controller's monitor condition, ``ovsdb.localdp``): a VM of a
switch not yet monitored gets its flows once the record arrives, and a
switch that leaves the host leaves its flows with it.  The harness of
``test_engine``; the southbound database delivers the local engine only
the rows its condition selects."""

from fakeoftable import FakeOFTable
from mbxmodel import datapath as dplib
from mbxmodel.network import HostPorts, VMInfo
from ovsdb import localdp
from ryu_apps import slices as slicelib
from ryu_apps.engine import Engine
from test_engine import (DPID, ENCAP, MAC, PORT, TUNNEL, VNI_A, VNI_B, from_tunnel,
                         running, tunnelled)
from test_engine_served import answer_reads

B5 = VMInfo("b5", "ls-b", "02:00:00:00:00:0d", "10.0.0.5")


def selected(rows, cond):
    """The rows of {name: (tenant, vni, config)} that the OVSDB condition
    ``cond`` (localdp's clauses, ORed) selects, as ovsdb-server would."""
    out = {}
    for name, row in rows.items():
        for column, op, value in cond:
            if (column, op) == ("ports", "includes") and value in dplib.ports(row[2]) \
                    or (column, op) == ("name", "==") and value == name:
                out[name] = row
                break
    return out


def local_rows(h, hosts):
    """The Datapath rows a controller serving ``hosts`` holds, given the
    bindings and slices of now."""
    bindings = [(vm, host) for host, ports in h.ports.items() for vm in ports]
    topo = h.northd_topology()
    slices = [(host, slicelib.chain_switch(topo, chain)) for chain, host in h.sb.snap.slices]
    return selected(h.sb.datapaths, localdp.condition(*localdp.local_of(hosts, bindings,
                                                                        slices)))


def local_engine(h, host):
    """A controller for ``host`` alone takes it over from ``h``'s engine,
    its Datapath rows those of ``host``'s switches."""
    reads = []
    c = Engine(send=h.switches.send, sb=h.sb, hosts=(), name="c", read_flows=reads.append)
    c.datapaths_changed(local_rows(h, {host}), h.sb.nb_cfg)
    c.runtime_changed(h.sb.snapshot())
    for name, vms in h.ports.items():
        c.host_ports_changed(name, HostPorts(DPID[name], TUNNEL[name], dict(vms)))
    c.sb_cfg_changed(h.sb.sb_cfg)
    c.southbound_ready()
    for name in sorted(DPID):
        c.switch_connected(DPID[name])
        c.switch_flows(DPID[name], list(h.switches.tables.get(DPID[name], {}).values()))
    h.controllers = (c, h.northd)
    h.engine = c

    def deliver(engines):
        h.sb.datapaths_dirty = False
        for engine in engines:
            engine.datapaths_changed(local_rows(h, {host}), h.sb.nb_cfg)
    h.sb.deliver_datapaths = deliver
    c.set_served({host})
    h._settle()
    answer_reads(h, c, reads)
    h.ack_all()
    return c


def condition_answered(h):
    """The server's answer to the widened or narrowed condition arrives."""
    h.sb.datapaths_dirty = True
    h._settle()
    h.ack_all()


def with_b5():
    h = running()
    h.nb.configure(vms={**h.nb.snap.vms, "b5": B5})
    h.nb.bump_nb_cfg()
    h.notify()
    h.ack_all()
    h.northd_topology = lambda: dplib.topology(
        dplib.decode(n, *row) for n, row in h.sb.datapaths.items())
    return h


def test_a_local_engine_holds_only_its_hosts_switches_and_computes_the_same_flows():
    h = with_b5()
    flows = h.switches.flows("h3")
    c = local_engine(h, "h3")
    assert set(c._datapaths.records) == {"ls-a"}         # a4's switch only
    assert h.switches.flows("h3") == flows


def test_a_vm_of_a_switch_not_yet_monitored_gets_its_flows_when_the_record_arrives():
    h = with_b5()
    local_engine(h, "h3")
    h.add_port("h3", "b5", ofport=7, mac=B5.mac)         # the binding, before the record
    h.ack_all()
    packet = {"in_port": 7, "eth_src": B5.mac, "eth_dst": MAC["b2"], "eth_type": 0x0800}
    assert tunnelled(FakeOFTable(h.switches.flows("h3")), packet) == []   # no intent yet
    condition_answered(h)
    assert set(h.engine._datapaths.records) == {"ls-a", "ls-b"}
    h3 = FakeOFTable(h.switches.flows("h3"))
    assert tunnelled(h3, packet) == [(TUNNEL["h3"], VNI_B, ENCAP["h2"])]
    # and a4's switch is as it was
    assert tunnelled(h3, {"in_port": PORT["a4"], "eth_src": MAC["a4"],
                          "eth_dst": MAC["a2"], "eth_type": 0x0800}) == [
        (TUNNEL["h3"], VNI_A, ENCAP["h2"])]


def test_a_switch_whose_last_vm_leaves_the_host_is_dropped_with_its_flows():
    h = with_b5()
    local_engine(h, "h3")
    h.add_port("h3", "b5", ofport=7, mac=B5.mac)
    condition_answered(h)
    to_b5 = from_tunnel("h3", VNI_B, B5.mac)
    assert [o.port for o in FakeOFTable(h.switches.flows("h3")).lookup(to_b5)] == [7]
    h.del_port("h3", "b5")
    condition_answered(h)
    assert set(h.engine._datapaths.records) == {"ls-a"}
    h3 = FakeOFTable(h.switches.flows("h3"))
    assert tunnelled(h3, {"in_port": 7, "eth_src": B5.mac, "eth_dst": MAC["b2"],
                          "eth_type": 0x0800}) == []
    assert h3.lookup(to_b5) == []
    assert not any(VNI_B in (dict(f.match).get("tunnel_id"), dict(f.match).get("metadata"))
                   for f in h.switches.flows("h3"))
