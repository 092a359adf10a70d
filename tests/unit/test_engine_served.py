"""Which hosts an Engine serves (``Engine.set_served``): the physical
controller serves exactly the hosts whose southbound lock it holds
(``ovsdb.locks``).  Two engines share the switches and the southbound
database of ``test_engine``'s harness, as two controller instances share a
lab: the active one programs, the standby follows every event and sends
nothing, and takes over by reconciling, as after a restart."""

import dataclasses

from fakeoftable import FakeOFTable
from mbxmodel.network import HostPorts
from ryu_apps.engine import Engine
from test_engine import DPID, MAC, PORT, TUNNEL, VNI_B, from_tunnel, running

HOSTS = frozenset(DPID)


def standby(h, name="b"):
    """A second engine that has seen everything ``h``'s has and serves no
    host; it follows ``h``'s events from now on.  Returns it and the list
    of switches it asked to read again."""
    reads = []

    def send(dpid, ops, xid):
        b.sent.append((dpid, list(ops)))
        h.switches.send(dpid, ops, xid)
    b = Engine(send=send, sb=h.sb, hosts=(), name=name, read_flows=reads.append)
    b.sent = []
    b.datapaths_changed(dict(h.sb.datapaths), h.sb.nb_cfg)
    b.runtime_changed(h.sb.snapshot())
    for host, vms in h.ports.items():
        b.host_ports_changed(host, HostPorts(DPID[host], TUNNEL[host], dict(vms)))
    b.sb_cfg_changed(h.sb.sb_cfg)
    b.southbound_ready()
    for host in sorted(DPID):
        b.switch_connected(DPID[host])
        b.switch_flows(DPID[host], list(h.switches.tables.get(DPID[host], {}).values()))
    h.controllers = h.controllers + (b,)
    return b, reads


def answer_reads(h, engine, reads):
    """The switches answer the engine's flow reads with what they hold."""
    while reads:
        dpid = reads.pop(0)
        engine.switch_flows(dpid, list(h.switches.tables.get(dpid, {}).values()))
    h._settle()


def take_over(h, b, reads, hosts=HOSTS):
    """The active engine dies; ``b`` is granted the locks of ``hosts``."""
    h.controllers = tuple(c for c in h.controllers if c is not h.engine)
    h.engine = b
    b.set_served(hosts)
    h._settle()
    answer_reads(h, b, reads)
    h.ack_all()


def test_an_engine_serving_no_host_sends_and_reports_nothing():
    h = running()
    status = dict(h.sb.status)
    b, reads = standby(h)
    sent = len(h.switches.sent)
    h.add_port("h3", "b2", ofport=7)        # a VM moves: only the active one acts
    h.del_port("h2", "b2")
    h.ack_all()
    assert len(h.switches.sent) > sent and b.sent == [] and reads == []
    assert {st.controller for st in h.sb.status.values()} == {"ctl"}
    assert set(h.sb.status) == set(status)


def test_gaining_hosts_whose_flows_are_right_sends_no_flow():
    h = running()
    b, reads = standby(h)
    h.add_port("h3", "b2", ofport=7)        # flows change while b stands by
    h.del_port("h2", "b2")
    h.ack_all()
    flows = {host: h.switches.flows(host) for host in DPID}
    sent = len(h.switches.sent)
    take_over(h, b, reads)
    assert h.switches.sent[sent:] == []     # no flow message, not even a barrier
    assert {host: h.switches.flows(host) for host in DPID} == flows
    assert {host: (st.controller, st.connected) for host, st in h.sb.status.items()} == \
        {host: ("b", True) for host in DPID}
    assert h.sb.status["h1"].nb_cfg == h.sb.nb_cfg


def test_gaining_a_host_reads_its_switch_again_and_fixes_only_the_difference():
    h = running()
    b, reads = standby(h)
    table = h.switches.tables[DPID["h2"]]
    lost = sorted(table.values(), key=repr)[0]
    del table[lost.key]                     # someone deleted a flow meanwhile
    sent = len(h.switches.sent)
    take_over(h, b, reads)
    assert [ops for _dpid, ops, _xid in h.switches.sent[sent:]] == [[("add", lost)]]
    assert h.switches.sent[sent][0] == DPID["h2"]


def test_a_lost_host_gets_no_message_and_no_status_from_its_old_engine():
    h = running()
    b, reads = standby(h)
    take_over(h, b, reads)
    b.set_served(HOSTS - {"h3"})            # h3's preferred controller took it back
    h._settle()
    status_h3 = h.sb.status["h3"]
    sent = len(h.switches.sent)
    # b2 moves from h2 to h3: h3's flows change, but b no longer serves h3.
    h.add_port("h3", "b2", ofport=7)
    h.del_port("h2", "b2")
    h.ack_all()
    assert {dpid for dpid, _ops, _xid in h.switches.sent[sent:]} == {DPID["h1"], DPID["h2"]}
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert h1.lookup({"in_port": PORT["b1"], "eth_src": MAC["b1"], "eth_dst": MAC["b2"],
                      "eth_type": 0x0800})        # h1 now tunnels b2's traffic to h3
    h3 = FakeOFTable(h.switches.flows("h3"))
    assert h3.output_ports(from_tunnel("h3", VNI_B, MAC["b2"])) == []   # not b's to program
    b.switch_disconnected(DPID["h3"])
    h._settle()
    assert h.sb.status["h3"] == status_h3   # no status written for it, not even "disconnected"


def test_a_host_lost_with_a_barrier_outstanding_is_not_reported():
    h = running()
    b, reads = standby(h)
    take_over(h, b, reads)
    h.add_port("h3", "b2", ofport=7)        # flows sent to h3, barrier not answered yet
    assert h.switches.unacked.get(DPID["h3"])
    before = h.sb.status["h3"]
    b.set_served(HOSTS - {"h3"})
    h.ack("h3")
    assert h.sb.status["h3"] == before


def test_a_late_status_write_of_the_old_controller_is_corrected():
    h = running()
    b, reads = standby(h)
    take_over(h, b, reads)
    # The dead controller's last write commits after b's.
    h.sb.status["h1"] = dataclasses.replace(h.sb.status["h1"], controller="ctl")
    b.statuses_changed(dict(h.sb.status))
    assert h.sb.status["h1"].controller == "b" and h.sb.status["h1"].connected
