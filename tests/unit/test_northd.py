"""The logical controller with several physical controllers, each serving
some hosts (the lab's "per-host" topology): what an operator sees in the
config database and on the switches is what one controller for every host
gives."""

from fakeoftable import FakeOFTable
from ryu_apps import pipeline as P
from ryu_apps.engine import Engine
from ryu_apps.northd import Northd
from test_engine import (DPID, HOME, MAC, PORT, TUNNEL, VMS, FakeNb, FakeSb, FakeSwitches,
                         from_vm, initial_snapshot, running, tunnelled)
from mbxmodel.network import HostPorts
from mbxmodel.services import MiddleboxInfo, PolicyInfo
from topologies import ENCAP, VNI_A

SHARDS = {"ctl-a": ("h1", "h2"), "ctl-b": ("h3",)}


class Sharded:
    """Northd and two engines, as three processes would be: every engine
    sees every host's bindings; each switch connects to its own."""

    def __init__(self, clock=None):
        self.switches = FakeSwitches()
        self.nb = FakeNb(initial_snapshot(), self.switches.events)
        self.sb = FakeSb(events=self.switches.events)
        self.engines = {name: Engine(send=self.switches.send, sb=self.sb,
                                     hosts=hosts, name=name)
                        for name, hosts in SHARDS.items()}
        self.northd = Northd(self.nb, self.sb, **({"clock": clock} if clock else {}))
        self.all = (self.northd,) + tuple(self.engines.values())
        self.ports = {}
        self.runtime()

    def runtime(self):
        snap = self.sb.snapshot()
        for c in self.all:
            c.runtime_changed(snap)

    def engine_of(self, host):
        return next(self.engines[n] for n, hosts in SHARDS.items() if host in hosts)

    def settle(self):
        for _ in range(30):
            if self.sb.datapaths_dirty:
                self.sb.deliver_datapaths(self.engines.values())
            elif self.sb.cfg_dirty:
                self.sb.cfg_dirty = False
                for c in self.all:
                    c.sb_cfg_changed(self.sb.sb_cfg)
            elif self.sb.status_dirty:
                self.sb.status_dirty = False
                self.northd.chassis_status_changed(dict(self.sb.status))
            elif self.nb.dirty:
                self.northd.nb_changed()
            elif self.sb.dirty:
                self.runtime()
            else:
                return
        raise AssertionError("the controllers keep rewriting the databases")

    def set_ports(self, host, *vms):
        self.ports[host] = {vm: (PORT[vm], MAC[vm]) for vm in vms}
        for c in self.all:
            c.host_ports_changed(host, HostPorts(DPID[host], TUNNEL[host],
                                                 dict(self.ports[host])))
        self.settle()

    def start(self):
        self.northd.nb_changed()
        for host in DPID:
            self.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
        for c in self.all:
            c.southbound_ready()
        self.settle()
        for host, dpid in DPID.items():
            engine = self.engine_of(host)
            engine.switch_connected(dpid)
            engine.switch_flows(dpid, [])
            self.settle()
        self.ack_all()

    def ack_all(self):
        for host, dpid in DPID.items():
            for xid in self.switches.unacked.pop(dpid, []):
                self.engine_of(host).barrier_reply(dpid, xid)
                self.settle()


def test_sharded_controllers_program_what_one_controller_does():
    one = running()
    many = Sharded()
    many.start()
    for host in DPID:
        assert many.switches.flows(host) == one.switches.flows(host), host
    assert many.sb.snap.vm_locations == one.sb.snap.vm_locations
    assert many.nb.snap.vm_mirror == one.nb.snap.vm_mirror == one.sb.snap.vm_locations
    assert many.nb.snap.hv_cfg == one.nb.snap.hv_cfg == 1
    assert {h: (r.nb_cfg, r.connected) for h, r in many.sb.status.items()} == \
        {h: (1, True) for h in DPID}
    assert {s.name: s.controller for s in many.sb.status.values()} == \
        {"h1": "ctl-a", "h2": "ctl-a", "h3": "ctl-b"}


def test_a_switch_of_another_controllers_host_is_left_alone():
    many = Sharded()
    many.start()
    before = len(many.switches.sent)
    ctl_a = many.engines["ctl-a"]
    ctl_a.switch_connected(DPID["h3"])          # h3's switch, at the wrong controller
    ctl_a.switch_flows(DPID["h3"], [])
    many.settle()
    assert len(many.switches.sent) == before


def test_a_move_across_shards_waits_for_every_host_and_records_one_migration():
    many = Sharded()
    many.start()
    assert many.sb.snap.vm_locations["a2"] == ("h2", 1)
    # a2's port appears on h3 (ctl-b's), unannounced, then leaves h2 (ctl-a's)
    many.set_ports("h3", "a4", "a2")
    assert [w[:3] for w in many.sb.writes_of("migration")] == [("a2", "h2", "h3")]
    # not every connected host has applied it: the location waits
    assert many.sb.snap.vm_locations["a2"] == ("h2", 1)
    many.ack_all()
    assert many.sb.snap.vm_locations["a2"] == ("h3", 2)
    h1 = FakeOFTable(many.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a2"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]
    many.set_ports("h2", "b2")
    many.ack_all()
    assert [w[:3] for w in many.sb.writes_of("migration")] == [("a2", "h2", "h3")]
    assert many.sb.snap.vm_locations["a2"] == ("h3", 2)


def test_slices_come_from_the_logical_controller_for_every_shard():
    many = Sharded()
    many.start()
    many.nb.configure(middleboxes={"fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a")},
                      policies=(PolicyInfo("ls-a", 100, "any", ("fw-a",)),))
    assert many.nb.bump_nb_cfg() == 2
    many.settle()
    assert many.nb.snap.northd_cfg == 2 and many.nb.snap.hv_cfg == 1
    many.ack_all()
    slices = many.sb.snap.slices
    assert set(slices) == {(("fw-a",), h) for h in ("h1", "h2", "h3")}
    assert len(many.sb.writes_of("slices")) == 1
    assert many.nb.snap.hv_cfg == 2     # every shard applied the slices' flows
    for host in DPID:       # each host steers into its own slice
        steering = [f for f in many.switches.flows(host) if f.table == P.FROM_VM_STEERING.table_id
                    and "'%s', %d)" % (P.REG_SLICE, slices[(("fw-a",), host)])
                    in repr(f.instructions)]
        assert steering, host


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def firewalled_b():
    """(clock, Sharded) with a firewall on ls-b (b1 on h1, b2 on h2)."""
    clock = Clock()
    many = Sharded(clock)
    many.start()
    many.nb.configure(middleboxes={"fw-b": MiddleboxInfo("fw-b", "firewall", "ls-b")},
                      policies=(PolicyInfo("ls-b", 100, "any", ("fw-b",)),))
    many.nb.bump_nb_cfg()
    many.settle()
    return clock, many


def test_the_last_host_of_a_vm_bound_nowhere_keeps_its_slices_for_one_lease():
    """b2, ls-b's only VM on h2, leaves h2 unannounced: h2 keeps ls-b's slice
    (the state of b2's connections is there, and the Migration row comes
    only once the port appears elsewhere) for one shared-state lease, with
    the same tag; then the slice goes (nothing else claimed it)."""
    clock, many = firewalled_b()
    key = (("fw-b",), "h2")
    tag = many.sb.snap.slices[key]
    many.set_ports("h2", "a2")                  # b2's port is gone: bound nowhere
    assert many.sb.snap.slices.get(key) == tag
    clock.t += 29
    many.northd.tick()
    many.settle()
    assert many.sb.snap.slices.get(key) == tag
    clock.t += 2                                # the lease (30 s) is over
    many.northd.tick()
    many.settle()
    assert key not in many.sb.snap.slices
    assert (("fw-b",), "h1") in many.sb.snap.slices


def test_a_vm_back_on_its_last_host_needs_no_grace():
    clock, many = firewalled_b()
    many.set_ports("h2", "a2")
    many.set_ports("h2", "a2", "b2")            # plugged back
    many.set_ports("h2", "a2")                  # and gone again: a new grace
    clock.t += 20
    many.northd.tick()
    many.settle()
    assert (("fw-b",), "h2") in many.sb.snap.slices
    clock.t += 11
    many.northd.tick()
    many.settle()
    assert (("fw-b",), "h2") not in many.sb.snap.slices
