"""Behaviour of the controller's Engine, driven through its event methods.

The engine is given fakes for its three outlets: ``send`` applies flow
messages to a per-switch flow table and remembers the barrier xids, the
config database keeps a snapshot that the status writers update as the real
database would, and hosts' ports arrive as the southbound database's watcher
reports them (``host_ports_changed``).  Tests assert what
an operator would observe: flows on switches, rows in the config database.

By default the database's change notification is delivered right after the
event that caused a write (``Harness(auto_notify=True)``); tests about event
ordering deliver it themselves, later, as ``EngineLoop`` may.
"""

import concurrent.futures
import dataclasses
import json
import random

from fakeoftable import FakeOFTable
from mbxmodel import datapath as dplib
from mbxmodel.network import HostPorts, VMInfo
from mbxmodel.services import MiddleboxInfo, PolicyInfo
from mbxmodel.snapshot import NbSnapshot, SbSnapshot, sb_delta
from mbxmodel.state import (AlertRecord, HostRecord, MigrationRecord,
                            SharedRecord)
from ovsdb.errors import MbxError
from mbxmodel.topology import Topology
from ryu_apps import flows as flowlib
from ryu_apps import slices as slicelib
from ryu_apps.engine import Engine
from ryu_apps.northd import Northd
from ryu_apps.flows import compute_host_flows
from topologies import (ENCAP, FW_LB, FW_NAT, IDS, TUNNEL, UPLINK_MAC, VMS, VNI_A, VNI_B,
                        services,
                        two_tenants)
from topologies import MB_PORT as S_MB_PORT, UPLINK as S_UPLINK

DPID = {"h1": 0xA1, "h2": 0xA2, "h3": 0xA3}
MAC = {name: spec[1] for name, spec in VMS.items()}
PORT = {name: spec[4] for name, spec in VMS.items()}
HOME = {name: spec[3] for name, spec in VMS.items()}


# --------------------------------------------------------------------- fakes

class FakeCommand:
    def __init__(self, db, write):
        self._db = db
        self._write = write

    def execute(self, check_error=False):
        assert check_error is True, "status writes must raise on failure"
        self._db.apply(self._write)


class FakeNb:
    """The config database: a snapshot, and the log of the logical
    controller's writes applied to it (counters, service status, the
    VM.host mirror)."""

    def __init__(self, snap, events=None):
        self.snap = snap
        self.writes = []
        self.dirty = False          # changed since the engine last took a snapshot
        self.events = events if events is not None else []   # shared with the switches

    def snapshot(self):
        self.dirty = False
        s = self.snap
        return dataclasses.replace(s, switches=dict(s.switches), vms=dict(s.vms))

    def set_vm_mirror(self, vm, host, epoch):
        return FakeCommand(self, ("mirror", vm, host, epoch))

    def set_vm_mirrors(self, mirrors):
        """One transaction: a "mirror" write per VM."""
        self.mirror_transactions = getattr(self, "mirror_transactions", 0) + 1
        db = self

        class Many:
            def execute(self, check_error=False):
                assert check_error is True
                for vm, (host, epoch) in sorted(mirrors.items()):
                    db.apply(("mirror", vm, host, epoch))
        return Many()

    def set_hv_cfg(self, value):
        return FakeCommand(self, ("hv_cfg", value))

    def set_vip_status(self, vip_uuid, status):
        return FakeCommand(self, ("vip", vip_uuid, dict(status)))

    def set_middlebox_status(self, name, status):
        return FakeCommand(self, ("mb-status", name, dict(status)))

    def set_northd_cfg(self, value):
        return FakeCommand(self, ("northd_cfg", value))

    def apply(self, write):
        self.writes.append(write)
        self.events.append(("db", write[0]))
        s = self.snap
        if write[0] == "mirror":
            _, vm, host, epoch = write
            self.snap = dataclasses.replace(s, vm_mirror={**s.vm_mirror, vm: (host, epoch)})
        elif write[0] == "vip":
            _, uuid, status = write
            vips = {mb: tuple(dataclasses.replace(v, status=status) if v.uuid == uuid else v
                              for v in recs) for mb, recs in s.vips.items()}
            self.snap = dataclasses.replace(s, vips=vips)
        elif write[0] == "northd_cfg":
            self.snap = dataclasses.replace(s, northd_cfg=write[1])
        elif write[0] == "mb-status":
            self.snap = dataclasses.replace(
                s, middlebox_status={**s.middlebox_status, write[1]: write[2]})
        else:
            self.snap = dataclasses.replace(s, hv_cfg=write[1])
        self.dirty = True

    # operator actions (mbxctl)
    def configure(self, **changes):
        self.snap = dataclasses.replace(self.snap, **changes)
        self.dirty = True

    def bump_nb_cfg(self):
        self.configure(nb_cfg=self.snap.nb_cfg + 1)
        return self.snap.nb_cfg

    # what an operator reads back
    def writes_of(self, kind):
        return [w[1:] for w in self.writes if w[0] == kind]

    def hv_writes(self):
        return [w[1] for w in self.writes if w[0] == "hv_cfg"]


def _done(result=None, error=None):
    future = concurrent.futures.Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


class FakeSb:
    """The southbound database: the runtime rows (a snapshot the
    controllers' writes update: slices, VM locations, migrations), what
    the physical controllers report of each host (Chassis_Private),
    SB_Global.sb_cfg, and the logical controller's Datapath rows with
    SB_Global.nb_cfg."""

    def __init__(self, snap=None, events=None):
        self.snap = snap if snap is not None else initial_runtime()
        self.writes = []
        self.dirty = False          # runtime rows changed since the last snapshot
        self.events = events if events is not None else []   # shared with the switches
        self.refuse = None          # an MbxError for record_migration to fail with
        self.status = {}            # host -> ChassisStatus
        self.sb_cfg = 0
        self.status_dirty = False
        self.cfg_dirty = False
        self.datapaths = {}         # name -> (tenant, vni, config)
        self.nb_cfg = 0
        self.datapaths_dirty = False
        self.datapath_writes = []   # the rows each transaction changed

    def set_datapaths(self, changes, nb_cfg=None, complete=False):
        before = (dict(self.datapaths), self.nb_cfg)
        if complete:
            self.datapaths = {n: r for n, r in self.datapaths.items() if n in changes}
        for name, row in changes.items():
            if row is None:
                self.datapaths.pop(name, None)
            else:
                self.datapaths[name] = tuple(row)
        if nb_cfg is not None:
            self.nb_cfg = nb_cfg
        if (self.datapaths, self.nb_cfg) != before:
            rows = sorted(n for n in self.datapaths.keys() | before[0].keys()
                          if self.datapaths.get(n) != before[0].get(n))
            if rows:
                self.datapath_writes.append(rows)
            self.events.append(("db", "datapaths" if rows else "sb-nb_cfg"))
            self.datapaths_dirty = True
        return _done()

    def deliver_datapaths(self, engines):
        """The Datapath rows' change notification reaches ``engines``."""
        self.datapaths_dirty = False
        for engine in engines:
            engine.datapaths_changed(dict(self.datapaths), self.nb_cfg)

    def snapshot(self):
        self.dirty = False
        s = self.snap
        return dataclasses.replace(s, vm_locations=dict(s.vm_locations))

    def set_chassis_statuses(self, statuses):
        for status in statuses:
            if self.status.get(status.name) != status:
                self.status[status.name] = status
                self.status_dirty = True

    def raise_sb_cfg(self, value):
        if value > self.sb_cfg:
            self.sb_cfg = value
            self.cfg_dirty = True

    def set_vm_location(self, vm, host, epoch):
        return self._apply(("vm", vm, host, epoch))

    def set_slices(self, slices, status=None, datapaths=None):
        self.slice_datapaths = dict(datapaths or {})
        return self._apply(("slices", dict(slices), dict(status or {})))

    def update_slices(self, changes, datapaths=None):
        """Some slices ({key: (tag, status) or None}): a "slices" write of
        the table as it becomes."""
        self.slice_datapaths = {**getattr(self, "slice_datapaths", {}), **(datapaths or {})}
        slices, status = dict(self.snap.slices), dict(self.snap.slice_status)
        for key, value in changes.items():
            if value is None:
                slices.pop(key, None)
                status.pop(key, None)
            else:
                slices[key], status[key] = value[0], dict(value[1])
        return self._apply(("slices", slices, status))

    def record_migration(self, vm, source, destination, path, wait_ms):
        if self.refuse is not None:
            return _done(error=self.refuse)
        return self._apply(("migration", vm, source, destination, path, wait_ms))

    def _apply(self, write):
        self.writes.append(write)
        self.events.append(("db", write[0]))
        s = self.snap
        if write[0] == "vm":
            _, vm, host, epoch = write
            self.snap = dataclasses.replace(
                s, vm_locations={**s.vm_locations, vm: (host, epoch)})
        elif write[0] == "slices":
            self.snap = dataclasses.replace(s, slices=write[1], slice_status={
                key: dict(write[2].get(key, {})) for key in write[1]})
        elif write[0] == "migration":
            _, vm, source, destination, path, wait_ms = write
            n = len(s.migrations) + 1
            self.snap = dataclasses.replace(s, migrations=s.migrations + (MigrationRecord(
                f"m{n}", vm, source, destination, path, "begun", "t" * 32, {"begun": n}, {},
                "", {"wait-ms": str(wait_ms)}),))
        self.dirty = True
        return _done()

    # what the daemons write (mbxd, the libvirt hook)
    def configure(self, **changes):
        self.snap = dataclasses.replace(self.snap, **changes)
        self.dirty = True

    # what an operator reads back
    def writes_of(self, kind):
        return [w[1:] for w in self.writes if w[0] == kind]

    def locations(self, vm):
        return [(w[2], w[3]) for w in self.writes if w[0] == "vm" and w[1] == vm]


class FakeSwitches:
    """br-int of every host: flow tables the engine's messages are applied to."""

    def __init__(self):
        self.tables = {}            # dpid -> {Flow.key: Flow}
        self.sent = []              # (dpid, ops, xid)
        self.unacked = {}           # dpid -> [xid]
        self.events = []            # shared with the database

    def send(self, dpid, ops, xid):
        self.sent.append((dpid, list(ops), xid))
        self.events.append(("send", dpid))
        table = self.tables.setdefault(dpid, {})
        for command, flow in ops:
            if command == "delete_strict":
                del table[flow.key]
            else:
                assert command in ("add", "modify_strict"), command
                table[flow.key] = flow
        self.unacked.setdefault(dpid, []).append(xid)

    def flows(self, host):
        return sorted(self.tables.get(DPID[host], {}).values(), key=repr)

    def ops(self, host=None):
        return [op for dpid, ops, _ in self.sent
                if host is None or dpid == DPID[host] for op in ops]


def initial_snapshot(nb_cfg=1, hv_cfg=1):
    topo = two_tenants()
    return NbSnapshot(nb_cfg=nb_cfg, hv_cfg=hv_cfg,
                      switches=dict(topo.switches), vms=dict(topo.vms))


def initial_runtime(hosts=("h1", "h2", "h3"), locations=None):
    """The southbound runtime rows: the hosts' chassis, the VMs' locations."""
    return SbSnapshot(
        hosts={h: HostRecord(h, "vxlan", ENCAP[h]) for h in hosts},
        vm_locations=dict(locations or {}))


class Harness:
    def __init__(self, snap=None, runtime=None, auto_notify=True, switches=None,
                 sb_ready=True, clock=None):
        """``runtime``: the southbound runtime rows (default: every host's
        chassis, no VM location); ``sb_ready``: the southbound database's
        contents have arrived (False: the controller has just started; call
        ``sb_arrived``)."""
        self.switches = switches or FakeSwitches()
        self.nb = FakeNb(snap or initial_snapshot(), self.switches.events)
        self.sb = FakeSb(runtime, self.switches.events)
        self.auto_notify = auto_notify
        self.engine = Engine(send=self.switches.send, sb=self.sb, name="ctl")
        self.northd = Northd(self.nb, self.sb, **({"clock": clock} if clock else {}))
        self.controllers = (self.engine, self.northd)
        runtime = self.sb.snapshot()
        for c in self.controllers:
            c.runtime_changed(runtime)
        self._delivered = runtime   # what the controllers have of the runtime rows
        if sb_ready:
            for c in self.controllers:
                c.southbound_ready()
        self.ports = {}             # host -> {vm: (ofport, mac)}
        self.extra = {}             # host -> more HostPorts fields (mb_ofport, uplink_*)

    def _settle(self):
        """Deliver the databases' change notifications until nothing changes."""
        for _ in range(20):
            if self.sb.datapaths_dirty:
                self.sb.deliver_datapaths([self.engine])
            elif self.sb.cfg_dirty:
                self.sb.cfg_dirty = False
                for c in self.controllers:
                    c.sb_cfg_changed(self.sb.sb_cfg)
            elif self.sb.status_dirty:
                self.sb.status_dirty = False
                self.northd.chassis_status_changed(dict(self.sb.status))
            elif self.auto_notify and self.nb.dirty:
                self.northd.nb_changed()        # the engine reads no northbound table
            elif self.auto_notify and self.sb.dirty:
                self._runtime()
            else:
                return
        raise AssertionError("the controllers keep rewriting the databases")

    def _runtime(self):
        """The runtime rows' change notification: what changed, as the
        southbound connection hands it (an SbDelta)."""
        runtime = self.sb.snapshot()
        delta = sb_delta(self._delivered, runtime)
        self._delivered = runtime
        for c in self.controllers:
            c.runtime_changed(delta)

    def sb_arrived(self):
        """The southbound database's first contents have all been reported."""
        for c in self.controllers:
            c.southbound_ready()
        self._settle()

    def notify(self):
        """The databases' change notifications reach the controllers."""
        self.northd.nb_changed()
        if self.sb.dirty:
            self._runtime()
        self._settle()

    def _ports(self, host, ports):
        for c in self.controllers:
            c.host_ports_changed(host, ports)
        self._settle()

    def set_ports(self, host, *vms, macs=None, dpid=True):
        macs = macs or {}
        self.ports[host] = {vm: (PORT[vm], macs.get(vm, MAC[vm])) for vm in vms}
        self._ports(host, HostPorts(
            datapath_id=DPID[host] if dpid else None, tunnel_ofport=TUNNEL[host],
            vm_ports=dict(self.ports[host]), **self.extra.get(host, {})))

    def add_port(self, host, vm, ofport=None, mac=None):
        ports = dict(self.ports.get(host, {}))
        ports[vm] = (ofport or PORT[vm], mac or MAC[vm])
        self.ports[host] = ports
        self._ports(host, HostPorts(DPID[host], TUNNEL[host], dict(ports),
                                    **self.extra.get(host, {})))

    def del_port(self, host, vm):
        ports = dict(self.ports[host])
        del ports[vm]
        self.ports[host] = ports
        self._ports(host, HostPorts(DPID[host], TUNNEL[host], dict(ports),
                                    **self.extra.get(host, {})))

    def connect(self, host):
        """The switch connects and its current flows are read back."""
        dpid = DPID[host]
        self.switches.unacked.pop(dpid, None)
        self.engine.switch_connected(dpid)
        self.engine.switch_flows(dpid, list(self.switches.tables.get(dpid, {}).values()))
        self._settle()

    def disconnect(self, host):
        self.switches.unacked.pop(DPID[host], None)
        self.engine.switch_disconnected(DPID[host])
        self._settle()

    def ack(self, host):
        dpid = DPID[host]
        for xid in self.switches.unacked.pop(dpid, []):
            self.engine.barrier_reply(dpid, xid)
            self._settle()

    def ack_all(self):
        for host in DPID:
            self.ack(host)


def running(hosts=("h1", "h2", "h3")):
    """Every VM of two_tenants() on its home host, switches connected and synced.
    Registered hosts left out of ``hosts`` have published no chassis."""
    h = Harness(sb_ready=False)
    h.notify()
    for host in hosts:      # the southbound database's first contents
        h.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
    h.sb_arrived()
    for host in hosts:
        h.connect(host)
    h.ack_all()
    return h


def from_vm(vm, eth_dst):
    return {"in_port": PORT[vm], "eth_src": MAC[vm], "eth_dst": eth_dst, "eth_type": 0x0800}


def from_tunnel(host, vni, eth_dst):
    return {"in_port": TUNNEL[host], "tunnel_id": vni, "eth_src": "02:00:00:00:00:99",
            "eth_dst": eth_dst, "eth_type": 0x0800}


def tunnelled(table, packet):
    return [(o.port, o.get("tunnel_id"), o.get("tun_ipv4_dst")) for o in table.lookup(packet)]


# ------------------------------------------------------------ programming

def test_switch_gets_flows_only_after_read_back_and_dpid_match():
    h = Harness()
    h.notify()
    h.engine.switch_connected(DPID["h1"])
    h.set_ports("h1", "a1", "b1", "a3", dpid=False)     # br-int's dpid not known yet
    assert h.switches.sent == []
    h.engine.switch_flows(DPID["h1"], [])
    assert h.switches.sent == []                        # read back, but whose switch?
    h.engine.switch_connected(0xBAD)                    # a switch of no registered host
    h.engine.switch_flows(0xBAD, [])
    assert h.switches.sent == []

    h.set_ports("h1", "a1", "b1", "a3")                 # now HostPorts.datapath_id matches
    assert [dpid for dpid, _, _ in h.switches.sent] == [DPID["h1"]]
    assert h.switches.ops() and all(cmd == "add" for cmd, _ in h.switches.ops())


def test_switch_is_not_programmed_before_its_flows_are_read_back():
    h = Harness()
    h.notify()
    h.set_ports("h1", "a1", "b1", "a3")
    h.engine.switch_connected(DPID["h1"])
    # recomputations for other reasons leave the unsynced switch alone
    h.set_ports("h2", "a2", "b2")
    h.nb.bump_nb_cfg()
    h.notify()
    assert h.switches.sent == []
    h.engine.switch_flows(DPID["h1"], [])
    assert [dpid for dpid, _, _ in h.switches.sent] == [DPID["h1"]]


def test_installed_flows_are_the_hosts_computed_flows():
    h = running()
    expected = two_tenants()        # the same hosts, VMs, ports and tunnels
    for host in ("h1", "h2", "h3"):
        assert h.switches.flows(host) == sorted(compute_host_flows(expected, host), key=repr)
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a2"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h2"])]
    assert tunnelled(h1, from_vm("a1", MAC["a4"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]


def test_stale_flows_are_replaced_by_the_difference_only():
    h = Harness()
    h.notify()
    desired = compute_host_flows(two_tenants(), "h1")
    missing, changed = desired[0], [f for f in desired if f.instructions][-1]
    assert changed.instructions
    stale = dataclasses.replace(changed, instructions=())
    leftover = dataclasses.replace(desired[0], priority=7)
    kept = [f for f in desired if f not in (missing, changed)]
    h.switches.tables[DPID["h1"]] = {f.key: f for f in kept + [stale, leftover]}
    for host in ("h1", "h2", "h3"):
        h.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
    h.connect("h1")
    assert h.switches.ops("h1") == [("delete_strict", leftover),
                                    ("modify_strict", changed),
                                    ("add", missing)]
    assert h.switches.flows("h1") == sorted(desired, key=repr)


def test_reconnected_switch_with_current_flows_gets_no_messages():
    h = running()
    sent = len(h.switches.sent)
    h.disconnect("h2")
    h.connect("h2")
    assert h.switches.sent[sent:] == []
    assert h.sb.status["h2"].connected


def test_restarted_controller_sends_nothing_to_programmed_switches():
    before = running()
    # a fresh Engine against the same switches and database
    h = Harness(snap=before.nb.snap, runtime=before.sb.snap, switches=before.switches)
    sent = len(h.switches.sent)
    h.notify()
    for host in ("h1", "h2", "h3"):
        h.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
    for host in ("h1", "h2", "h3"):
        h.connect(host)
    assert h.switches.sent[sent:] == []
    assert all(h.sb.status[host].connected and h.sb.status[host].nb_cfg == 1
               for host in ("h1", "h2", "h3"))


# ------------------------------------------------------- nb_cfg / hv_cfg

A5 = VMInfo("a5", "ls-a", "02:00:00:00:00:05", "10.0.0.5")


def add_a5_port(h, host="h1"):
    h.add_port(host, "a5", ofport=5, mac=A5.mac)


def test_nb_cfg_is_acknowledged_only_after_every_switch_acked_its_barrier():
    h = running(hosts=("h1", "h2"))
    assert h.nb.snap.hv_cfg == 1
    assert {n: r.nb_cfg for n, r in h.sb.status.items() if r.connected} == {"h1": 1, "h2": 1}
    add_a5_port(h)            # port exists, VM not configured yet
    assert h.switches.unacked == {}
    n_writes = len(h.nb.writes)

    h.nb.configure(vms={**h.nb.snap.vms, "a5": A5})
    assert h.nb.bump_nb_cfg() == 2
    h.notify()
    assert set(h.switches.unacked) == {DPID["h1"], DPID["h2"]}     # both need new flows
    # the logical controller has translated generation 2; no host applied it yet
    assert h.nb.writes[n_writes:] == [("northd_cfg", 2)]

    h.ack("h1")
    assert h.sb.status["h1"].nb_cfg == 2
    assert h.sb.status["h2"].nb_cfg == 1
    assert h.nb.snap.hv_cfg == 1
    h.ack("h2")
    assert h.sb.status["h2"].nb_cfg == 2
    assert h.nb.snap.hv_cfg == 2
    assert h.nb.hv_writes()[-1:] == [2]


def test_nb_cfg_without_flow_changes_is_acknowledged_at_once():
    h = running(hosts=("h1", "h2"))
    h.nb.bump_nb_cfg()
    h.notify()
    assert h.switches.unacked == {}
    assert h.nb.snap.hv_cfg == 2
    assert h.sb.status["h1"].nb_cfg == h.sb.status["h2"].nb_cfg == 2


def test_hv_cfg_is_the_minimum_and_a_disconnected_host_stops_holding_it_back():
    h = running(hosts=("h1", "h2"))
    add_a5_port(h)
    h.nb.configure(vms={**h.nb.snap.vms, "a5": A5})
    h.nb.bump_nb_cfg()
    h.notify()
    h.ack("h1")
    assert h.sb.status["h1"].nb_cfg == 2
    assert h.nb.snap.hv_cfg == 1                # h2 has not acked
    h.disconnect("h2")
    assert h.sb.status["h2"].connected is False
    assert h.nb.snap.hv_cfg == 2
    assert h.nb.hv_writes()[-1] == 2


def test_without_connected_hosts_hv_cfg_follows_nb_cfg():
    h = Harness(initial_snapshot(nb_cfg=5, hv_cfg=3))
    h.notify()
    assert h.nb.snap.hv_cfg == 5
    h.nb.bump_nb_cfg()
    h.notify()
    assert h.nb.hv_writes() == [5, 6]


# ---------------------------------------------------------- VM locations

def test_vm_location_is_written_after_every_switch_acked_its_flows():
    h = running(hosts=("h1", "h2"))
    assert h.sb.snap.vm_locations["a2"] == ("h2", 1)
    h.nb.configure(vms={**h.nb.snap.vms, "a5": A5})
    h.notify()
    add_a5_port(h)
    assert h.sb.locations("a5") == []           # flows sent, no barrier reply yet
    h.ack("h1")
    assert h.sb.locations("a5") == []           # h2 has not acked its tunnel flows
    h.ack("h2")
    assert h.sb.locations("a5") == [("h1", 1)]
    # and h2 can now reach a5 through the tunnel
    h2 = FakeOFTable(h.switches.flows("h2"))
    assert tunnelled(h2, from_vm("a2", "02:00:00:00:00:05")) == [(TUNNEL["h2"], VNI_A, ENCAP["h1"])]


def test_a_move_waits_for_and_reports_only_the_hosts_of_the_vms_switch():
    # ls-b is on h1 and h2: h3's flows do not change when b2 moves, so h3
    # has trivially applied the move's sb_cfg; nothing is written for it
    # and the location does not wait for it.
    h = running()
    h3_status = h.sb.status["h3"]
    h.add_port("h1", "b2", ofport=9)
    assert DPID["h3"] not in h.switches.unacked
    h.ack("h1")
    h.ack("h2")
    assert h.sb.locations("b2")[-1] == ("h1", 2)
    assert h.sb.status["h1"].sb_cfg == h.sb.status["h2"].sb_cfg == h.sb.sb_cfg
    assert h.sb.status["h3"] == h3_status
    assert h3_status.sb_cfg < h.sb.sb_cfg


def test_a_host_that_applied_a_move_before_its_sb_cfg_arrived_reports_it_then():
    # The engine sees the binding, programs and hears the barrier replies
    # before the logical controller's sb_cfg for it arrives: the hosts it
    # touched owe that sb_cfg and report it when it comes.
    h = running()
    ports = dict(h.ports["h1"])
    ports["b2"] = (9, MAC["b2"])
    h.ports["h1"] = ports
    for c in h.controllers:
        c.host_ports_changed("h1", HostPorts(DPID["h1"], TUNNEL["h1"], dict(ports)))
    for host in ("h1", "h2"):
        for xid in h.switches.unacked.pop(DPID[host], []):
            h.engine.barrier_reply(DPID[host], xid)
    assert h.sb.status["h1"].sb_cfg < h.sb.sb_cfg     # the raise has not arrived
    assert h.sb.locations("b2")[-1] == ("h2", 1)
    h._settle()                                         # now it does
    assert h.sb.status["h1"].sb_cfg == h.sb.status["h2"].sb_cfg == h.sb.sb_cfg
    assert h.sb.locations("b2")[-1] == ("h1", 2)
    assert h.engine._owed == {}                         # until the location is written


def test_migration_writes_the_new_host_with_the_next_epoch_once():
    h = running()
    assert h.sb.snap.vm_locations["a2"] == ("h2", 1)
    h.del_port("h2", "a2")
    h.add_port("h3", "a2", ofport=7)
    assert h.sb.locations("a2") == [("h2", 1), (None, 1)]   # not before the barrier replies
    h.ack_all()
    h.notify()
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 1), (None, 1), ("h3", 2)]
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a2"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]
    assert FakeOFTable(h.switches.flows("h3")).output_ports(
        from_tunnel("h3", VNI_A, MAC["a2"])) == [7]


def test_delete_and_readd_on_the_same_host_bumps_the_epoch():
    h = running()
    h.del_port("h1", "a1")
    assert h.sb.snap.vm_locations["a1"] == (None, 1)       # gone everywhere: epoch kept
    h.add_port("h1", "a1")
    h.ack_all()
    assert h.sb.locations("a1") == [("h1", 1), (None, 1), ("h1", 2)]


def test_delete_and_readd_before_the_db_notification_still_bumps_the_epoch():
    # EngineLoop may run port and barrier events queued before the config
    # database's notification of the engine's own writes.
    h = running()
    h.auto_notify = False
    h.del_port("h1", "a1")
    h.add_port("h1", "a1")
    h.ack_all()
    h.auto_notify = True
    h.notify()
    h.ack_all()
    writes = h.sb.locations("a1")
    assert writes[-1] == ("h1", 2)
    assert [e for _, e in writes] == sorted([e for _, e in writes])


def test_fast_migrations_before_the_db_notification_get_increasing_epochs():
    h = running()
    h.auto_notify = False
    h.add_port("h3", "a2", ofport=7)
    h.ack_all()
    h.add_port("h1", "a2", ofport=9)
    h.ack_all()
    h.auto_notify = True
    h.notify()
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 1), ("h3", 2), ("h1", 3)]


def test_port_vanishing_everywhere_clears_the_host_and_keeps_the_epoch():
    h = running()
    h.del_port("h3", "a4")
    h.ack_all()
    assert h.sb.snap.vm_locations["a4"] == (None, 1)
    assert h.sb.locations("a4") == [("h3", 1), (None, 1)]


def test_restarted_controller_keeps_the_recorded_location_and_epoch():
    before = running()
    recorded = dict(before.sb.snap.vm_locations)
    assert recorded["a1"] == ("h1", 1)
    # a fresh Engine: the config database is read first, the southbound
    # database's bindings arrive later, switches connect in between
    h = Harness(snap=before.nb.snap, runtime=before.sb.snap, switches=before.switches,
                sb_ready=False)
    h.notify()
    h.connect("h1")
    for host in ("h1", "h2", "h3"):
        h.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
    h.sb_arrived()
    h.connect("h2")
    h.connect("h3")
    h.ack_all()
    assert h.sb.writes_of("vm") == [] and h.nb.writes_of("mirror") == []
    assert h.sb.snap.vm_locations == recorded


def test_restarted_controller_moves_a_vm_that_moved_while_it_was_down():
    h = Harness(runtime=initial_runtime(locations={"a2": ("h2", 4)}))
    h.notify()
    h.set_ports("h3", "a2", "a4")
    h.set_ports("h2", "b2")
    assert h.sb.locations("a2") == [("h3", 5)]


def test_each_location_is_mirrored_into_the_config_database_in_the_same_round():
    h = running()
    h.add_port("h3", "a2", ofport=7)
    h.del_port("h2", "a2")
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 1), ("h3", 2)]
    assert [w[1:] for w in h.nb.writes_of("mirror") if w[0] == "a2"] == [
        ("h2", 1), ("h3", 2)]
    assert h.nb.snap.vm_mirror == h.sb.snap.vm_locations


def test_a_converted_config_database_keeps_the_epochs_growing_and_its_mirror_right():
    """After a 1.x config database was converted, VM_Location is empty and
    VM.host / location_epoch hold what the old database said: the next
    epoch is above the old one, and a mirror that disagrees with
    VM_Location is written again."""
    snap = dataclasses.replace(initial_snapshot(), vm_mirror={
        "a2": ("h2", 4), "b1": ("h2", 7)})
    h = Harness(snap=snap, runtime=initial_runtime(locations={"b1": ("h1", 2)}))
    h.notify()
    assert h.nb.snap.vm_mirror["b1"] == ("h1", 2)      # VM_Location wins
    h.set_ports("h2", "a2")
    h.set_ports("h1", "b1")
    h.connect("h1")
    h.connect("h2")
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 5)]
    assert h.sb.locations("b1") == []                   # already recorded there
    assert h.nb.snap.vm_mirror == {"a2": ("h2", 5), "b1": ("h1", 2)}


def test_a_restart_mirrors_every_differing_location_in_one_transaction():
    locations = {"a1": ("h1", 3), "a2": ("h2", 2), "b1": ("h1", 5)}
    h = Harness(runtime=initial_runtime(locations=locations))
    h.notify()
    assert h.nb.snap.vm_mirror == locations
    assert h.nb.mirror_transactions == 1


def test_only_the_own_mirror_of_a_location_is_a_quiet_northbound_change():
    quiet = Northd.own_status_write
    assert quiet("VM", "update", frozenset({"host", "location_epoch"}))
    assert quiet("VM", "update", frozenset({"host"}))
    assert not quiet("VM", "update", frozenset({"host", "mac"}))    # an operator's too
    assert not quiet("VM", "create", None)
    assert not quiet("Logical_Switch", "update", frozenset({"host"}))


def test_port_with_a_foreign_mac_is_not_bound():
    h = Harness()
    h.notify()
    h.set_ports("h1", "a1", "a3", macs={"a1": "02:00:00:00:00:66"})
    h.set_ports("h2", "a2")
    h.connect("h1")
    h.connect("h2")
    h.ack_all()
    assert (h.sb.locations("a1"), h.sb.locations("a3")) == ([], [("h1", 1)])
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert h1.lookup(from_tunnel("h1", VNI_A, MAC["a1"])) == []
    assert h1.lookup(from_vm("a3", MAC["a1"])) == []
    h2 = FakeOFTable(h.switches.flows("h2"))
    assert h2.lookup(from_vm("a2", MAC["a1"])) == []
    # the same MAC in upper case is the VM's own
    h.set_ports("h1", "a1", "a3", macs={"a1": MAC["a1"].upper()})
    h.ack_all()
    assert h.sb.locations("a1") == [("h1", 1)]
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert h1.output_ports(from_vm("a3", MAC["a1"])) == [PORT["a1"]]


def test_newest_appearance_wins_while_a_port_exists_on_two_hosts():
    h = running()
    h.add_port("h3", "a2", ofport=7)            # a2 starts on h3, still exists on h2
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 1), ("h3", 2)]
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a2"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]
    assert FakeOFTable(h.switches.flows("h2")).lookup(from_tunnel("h2", VNI_A, MAC["a2"])) == []
    h.del_port("h2", "a2")                      # the old copy goes away: nothing moves
    h.ack_all()
    assert h.sb.locations("a2") == [("h2", 1), ("h3", 2)]


def test_no_switch_is_programmed_until_the_southbound_contents_arrived():
    # On a controller start, a switch reconciled before another host's ports
    # are known would lose its flows to that host's VMs, then get them back:
    # churn.  So switches wait for the southbound database's first contents.
    h = Harness(sb_ready=False)
    h.notify()
    h.set_ports("h1", "a1", "b1", "a3")
    h.connect("h1")
    h.set_ports("h2", "a2", "b2")
    h.set_ports("h3", "a4")
    assert h.switches.sent == []
    h.sb_arrived()
    assert [dpid for dpid, _, _ in h.switches.sent] == [DPID["h1"]]
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a4"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]


def test_slices_are_allocated_where_a_steered_switch_has_vms_and_written_back():
    h = running()
    h.nb.configure(middleboxes={"fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a")},
                   policies=(PolicyInfo("ls-a", 100, "any", ("fw-a",)),))
    h.notify()
    h.ack_all()
    slices = h.sb.snap.slices
    # tenant A has VMs on h1, h2 and h3; tenant B has no middlebox
    assert set(slices) == {(("fw-a",), "h1"), (("fw-a",), "h2"), (("fw-a",), "h3")}
    assert all(1 <= tag <= 4094 for tag in slices.values())
    # a later change keeps the tags already handed out
    h.nb.configure(policies=(PolicyInfo("ls-a", 200, "proto=tcp", ("fw-a",)),))
    h.notify()
    h.ack_all()
    assert h.sb.snap.slices == slices
    # without a policy that uses it, the middlebox needs no slices
    h.nb.configure(policies=())
    h.notify()
    h.ack_all()
    assert h.sb.snap.slices == {}


# ---------------------------------------------------------------- services

SNAT = "11111111-0000-0000-0000-000000000001"
VIP_UUID = "22222222-0000-0000-0000-000000000001"


def running_services(slice_status=None, shared=(), alerts=(), clock=None):
    """running() with services() configured (tenant A's chains, NAT, LB, IDS)
    and every host's middlebox port and uplink reported."""
    topo = services()
    h = Harness(sb_ready=False, clock=clock)
    h.nb.configure(switches=dict(topo.switches), middleboxes=dict(topo.middleboxes),
                   policies=topo.policies, nat_rules=dict(topo.nat_rules),
                   vips=dict(topo.vips), external_networks=dict(topo.external_networks))
    h.sb.configure(shared_state=tuple(shared), ids_alerts=tuple(alerts),
                   **({"slice_status": slice_status, "slices": dict(topo.slices)}
                      if slice_status is not None else {}))
    h.notify()
    for host in ("h1", "h2", "h3"):
        h.extra[host] = dict(mb_ofport=S_MB_PORT, uplink_ofport=S_UPLINK,
                             uplink_mac=UPLINK_MAC[host])
        h.set_ports(host, *[vm for vm in VMS if HOME[vm] == host])
    h.sb_arrived()
    for host in ("h1", "h2", "h3"):
        h.connect(host)
    h.ack_all()
    return h


def snat_blocks_written(sb):
    return {host: status["snat-block:" + SNAT]
            for (chain, host), status in sb.snap.slice_status.items()
            if "snat-block:" + SNAT in status}


def test_chain_slices_and_snat_blocks_are_written_back():
    h = running_services()
    snap = h.sb.snap
    assert set(snap.slices) == {(c, host) for c in (FW_NAT, FW_LB, IDS)
                                for host in ("h1", "h2", "h3")}
    blocks = snat_blocks_written(h.sb)
    assert sorted(blocks) == ["h1", "h2", "h3"] and len(set(blocks.values())) == 3
    for host in ("h1", "h2", "h3"):       # only the NAT chain's slices carry a block
        assert snap.slice_status[(FW_LB, host)] == {} == snap.slice_status[(IDS, host)]
    assert [len(w[0]) for w in h.sb.writes_of("slices")] == [9]
    # the flows follow the written blocks: h1 redirects h3's block to h3
    ip, ports = blocks["h3"].split(":")
    lo = int(ports.split("-")[0])
    pkt = {"in_port": S_UPLINK, "eth_src": "02:ee:ff:00:00:01", "eth_dst": UPLINK_MAC["h1"],
           "eth_type": 0x0800, "ip_proto": 17, "ipv4_src": "198.51.100.10", "ipv4_dst": ip,
           "udp_src": 53, "udp_dst": lo + 7}
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert [(o.port, o.get("tun_ipv4_dst")) for o in h1.lookup(pkt)] == \
        [(TUNNEL["h1"], ENCAP["h3"])]


def test_snat_blocks_survive_recomputation_and_a_controller_restart():
    h = running_services()
    blocks = snat_blocks_written(h.sb)
    h.nb.bump_nb_cfg()
    h.notify()
    h.ack_all()
    assert snat_blocks_written(h.sb) == blocks
    assert len(h.sb.writes_of("slices")) == 1
    # a database written by an earlier controller with other blocks: kept
    swapped = {key: dict(status) for key, status in h.sb.snap.slice_status.items()}
    key = "snat-block:" + SNAT
    swapped[(FW_NAT, "h1")][key], swapped[(FW_NAT, "h3")][key] = \
        blocks["h3"], blocks["h1"]
    clock = [1000.0]
    again = running_services(slice_status=swapped, clock=lambda: clock[0])
    assert snat_blocks_written(again.sb) == dict(blocks, h1=blocks["h3"], h3=blocks["h1"])
    assert again.sb.writes_of("slices") == []
    # h2's last VM leaves: h2 keeps its slice and block for the grace (its
    # SNAT connections' replies still come there), then loses its block;
    # the others keep theirs
    again.del_port("h2", "a2")
    again.ack_all()
    assert snat_blocks_written(again.sb) == dict(blocks, h1=blocks["h3"], h3=blocks["h1"])
    clock[0] += 31                      # the shared-state lease (30 s) is over
    again.northd.tick()
    again.notify()
    again.ack_all()
    assert snat_blocks_written(again.sb) == {"h1": blocks["h3"], "h3": blocks["h1"]}


def health(host, **states):
    return SharedRecord("lb-a", host, "lb-health", VIP_UUID, json.dumps(states), 1)


def test_vip_status_merges_the_hosts_health_and_is_written_when_it_changes():
    h = running_services(shared=(health("h2", **{"10.0.0.2:80": "up"}),
                                 health("h3", **{"10.0.0.4:80": "up", "10.0.0.9:80": "up"}),
                                 health("h1", **{"10.0.0.4:80": "down"})))
    assert h.nb.writes_of("vip") == [(VIP_UUID, {"10.0.0.2:80": "up", "10.0.0.4:80": "down"})]
    assert h.nb.snap.vips["lb-a"][0].status == {"10.0.0.2:80": "up", "10.0.0.4:80": "down"}
    h.nb.bump_nb_cfg()
    h.notify()
    assert len(h.nb.writes_of("vip")) == 1            # unchanged: not written again
    h.sb.configure(shared_state=(health("h2", **{"10.0.0.2:80": "up"}),
                                 health("h3", **{"10.0.0.4:80": "up"}),
                                 SharedRecord("lb-a", "h1", "lb-health", VIP_UUID, "{bad", 2)))
    h.notify()
    assert h.nb.writes_of("vip")[-1] == (VIP_UUID, {"10.0.0.2:80": "up", "10.0.0.4:80": "up"})


def test_ids_alert_count_is_written_to_the_middlebox_status():
    alert = AlertRecord("ids-a", "port-scan", "198.51.100.20", "", 20, ("h1",), 1, 2, "h1")
    h = running_services(alerts=(alert, dataclasses.replace(alert, source="10.0.0.3")))
    assert h.nb.writes_of("mb-status") == [("ids-a", {"alerts": "2"})]
    h.nb.bump_nb_cfg()
    h.notify()
    assert len(h.nb.writes_of("mb-status")) == 1
    h.sb.configure(ids_alerts=(alert,) * 3)
    h.notify()
    assert h.nb.writes_of("mb-status")[-1] == ("ids-a", {"alerts": "3"})


def test_status_writes_send_no_flow_message():
    """Backend health, IDS alerts and the cloud-wide status the controller
    writes itself change no flow: no switch hears of them."""
    h = running_services(shared=(health("h2", **{"10.0.0.2:80": "up"}),))
    sent = len(h.switches.sent)
    alert = AlertRecord("ids-a", "port-scan", "198.51.100.20", "", 20, ("h1",), 1, 2, "h1")
    h.sb.configure(shared_state=(health("h2", **{"10.0.0.2:80": "down"}),))
    h.notify()
    h.sb.configure(ids_alerts=(alert,))
    h.notify()
    assert h.nb.writes_of("vip")[-1] == (VIP_UUID, {"10.0.0.2:80": "down"})
    assert h.nb.writes_of("mb-status")[-1] == ("ids-a", {"alerts": "1"})
    assert len(h.switches.sent) == sent


def counting_flow_computations(monkeypatch):
    """A list that gets one entry per flow part the controller computes."""
    computed = []
    compute = flowlib.compute_part

    def counted(topo, host, part, blocks):
        computed.append((host, part))
        return compute(topo, host, part, blocks)
    monkeypatch.setattr(flowlib, "compute_part", counted)
    return computed


def test_status_writes_compute_no_flow(monkeypatch):
    """Backend health, IDS alerts, a migration's progress and a new nb_cfg:
    not a flow is computed again, and the status still gets through."""
    h = running_services(shared=(health("h2", **{"10.0.0.2:80": "up"}),))
    h.sb.configure(migrations=(migration("a2", "h2", "h3"),))
    h.notify()
    h.ack_all()
    computed = counting_flow_computations(monkeypatch)
    sent = len(h.switches.sent)
    alert = AlertRecord("ids-a", "port-scan", "198.51.100.20", "", 20, ("h1",), 1, 2, "h1")
    for change in ({"shared_state": (health("h2", **{"10.0.0.2:80": "down"}),)},
                   {"ids_alerts": (alert,)},
                   {"migrations": (migration("a2", "h2", "h3", "streaming"),)},
                   {"migrations": (migration("a2", "h2", "h3", "stunned"),)}):
        h.sb.configure(**change)
        h.notify()
        h.ack_all()
    cfg = h.nb.bump_nb_cfg()
    h.notify()
    assert computed == [] and len(h.switches.sent) == sent
    assert h.nb.writes_of("vip")[-1] == (VIP_UUID, {"10.0.0.2:80": "down"})
    assert h.nb.writes_of("mb-status")[-1] == ("ids-a", {"alerts": "1"})
    assert h.nb.snap.hv_cfg == cfg


def test_a_move_computes_only_the_parts_of_the_vms_switch(monkeypatch):
    h = running()
    computed = counting_flow_computations(monkeypatch)
    h.add_port("h3", "b2", ofport=7)
    h.del_port("h2", "b2")
    h.ack_all()
    assert {part[1] for _host, part in computed if part != flowlib.HOST_PART} == {"ls-b"}
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("b1", MAC["b2"])) == [(TUNNEL["h1"], VNI_B, ENCAP["h3"])]
    h2 = FakeOFTable(h.switches.flows("h2"))
    assert h2.lookup(from_tunnel("h2", VNI_B, MAC["b2"])) == []
    h3 = FakeOFTable(h.switches.flows("h3"))
    assert h3.output_ports(from_tunnel("h3", VNI_B, MAC["b2"])) == [7]


# -------------------------------------------------------------- migrations

def migration(vm, source, destination, status="begun", path="announced", begun=1, uuid=None):
    return MigrationRecord(uuid or f"x{begun}", vm, source, destination, path, status,
                           "f" * 32, {"begun": begun}, {}, "", {"wait-ms": "3000"})


def with_fw_b():
    """running() with tenant B's firewall steered: b1 on h1, b2 on h2, none on h3."""
    h = running()
    h.nb.configure(middleboxes={"fw-b": MiddleboxInfo("fw-b", "firewall", "ls-b")},
                   policies=(PolicyInfo("ls-b", 100, "any", ("fw-b",)),))
    h.notify()
    h.ack_all()
    assert set(h.sb.snap.slices) == {(("fw-b",), "h1"), (("fw-b",), "h2")}
    return h


def test_destination_gets_the_vms_slices_while_a_migration_is_active():
    h = with_fw_b()
    tags = dict(h.sb.snap.slices)
    h.sb.configure(migrations=(migration("b2", "h2", "h3"),))
    h.notify()
    assert set(h.sb.snap.slices) == {(("fw-b",), "h1"), (("fw-b",), "h2"),
                                     (("fw-b",), "h3")}
    assert all(h.sb.snap.slices[k] == tag for k, tag in tags.items())     # kept
    for status in ("streaming", "stunned", "imported"):
        h.sb.configure(migrations=(migration("b2", "h2", "h3", status),))
        h.notify()
        assert (("fw-b",), "h3") in h.sb.snap.slices
    # ended without the VM on h3: the slice goes
    h.sb.configure(migrations=(migration("b2", "h2", "h3", "aborted"),))
    h.notify()
    assert set(h.sb.snap.slices) == set(tags)
    # a migration to an unregistered host, or of an unknown VM: nothing
    h.sb.configure(migrations=(migration("b2", "h2", "h9"), migration("zz", "h1", "h3", begun=2)))
    h.notify()
    assert set(h.sb.snap.slices) == set(tags)


def test_a_done_migration_keeps_the_slice_where_the_vm_arrived():
    h = with_fw_b()
    h.sb.configure(migrations=(migration("b2", "h2", "h3", "imported"),))
    h.notify()
    tag = h.sb.snap.slices[(("fw-b",), "h3")]
    h.add_port("h3", "b2", ofport=8)
    h.del_port("h2", "b2")
    h.sb.configure(migrations=(migration("b2", "h2", "h3", "done"),))
    h.notify()
    h.ack_all()
    assert set(h.sb.snap.slices) == {(("fw-b",), "h1"), (("fw-b",), "h3")}
    assert h.sb.snap.slices[(("fw-b",), "h3")] == tag
    assert h.sb.writes_of("migration") == []            # announced: no row of its own


def test_unannounced_migration_is_recorded_before_any_flow_for_the_new_place():
    h = running()
    h.switches.events.clear()
    h.add_port("h3", "a2", ofport=7)            # appears on h3, still on h2
    assert h.sb.writes_of("migration") == [("a2", "h2", "h3", "unannounced", 3000)]
    events = h.switches.events
    assert events[0] == ("db", "migration")
    assert ("send", DPID["h3"]) in events       # the flows did follow
    m, = h.sb.snap.migrations
    assert (m.vm, m.source, m.destination, m.path, m.status) == \
        ("a2", "h2", "h3", "unannounced", "begun")
    # once per appearance: more rounds, acks, the old port going away
    h.ack_all()
    h.nb.bump_nb_cfg()
    h.notify()
    h.del_port("h2", "a2")
    h.ack_all()
    assert len(h.sb.writes_of("migration")) == 1
    assert h.sb.snap.vm_locations["a2"] == ("h3", 2)


def test_unannounced_migration_after_the_port_vanished_and_with_the_wait_option():
    h = running()
    h.nb.configure(global_options={"migration-wait-ms": "750"})
    h.notify()
    h.del_port("h2", "a2")
    h.ack_all()
    assert h.sb.snap.vm_locations["a2"] == (None, 1)        # VM.host cleared ...
    h.switches.events.clear()
    h.add_port("h1", "a2", ofport=9)                        # ... but h2 is remembered
    assert h.sb.writes_of("migration") == [("a2", "h2", "h1", "unannounced", 750)]
    assert h.switches.events[0] == ("db", "migration")
    h.ack_all()
    # moving on again: from the host it is on now
    h.sb.configure(migrations=(dataclasses.replace(h.sb.snap.migrations[0], status="done"),))
    h.notify()
    h.add_port("h3", "a2", ofport=7)
    assert h.sb.writes_of("migration")[-1] == ("a2", "h1", "h3", "unannounced", 750)


def test_the_last_host_is_where_the_vm_was_located_last():
    """a2 moved h2 -> h3 (announced); its location names h3 only after the
    engine handled the port events.  Its next move, unannounced, back to h2
    comes from h3, also when the location was cleared before the engine saw
    the port leave h3 (seen with real QEMU migrations: no row at all)."""
    h = running()
    h.sb.configure(migrations=(migration("a2", "h2", "h3", "imported"),))
    h.notify()
    h.add_port("h3", "a2", ofport=7)
    h.del_port("h2", "a2")
    h.sb.configure(migrations=(migration("a2", "h2", "h3", "done"),))
    h.notify()
    h.ack_all()
    assert h.sb.snap.vm_locations["a2"] == ("h3", 2)
    h.notify()
    h.sb._apply(("vm", "a2", None, 2))      # the location cleared ...
    h.notify()
    h.del_port("h3", "a2")                  # ... before the engine saw the port go
    h.add_port("h2", "a2")
    assert h.sb.writes_of("migration")[-1:] == [("a2", "h3", "h2", "unannounced", 3000)]


def test_a_restarted_controller_remembers_the_last_host_from_the_database():
    h = Harness(runtime=initial_runtime(locations={"a2": ("h2", 4)}))
    h.notify()
    h.set_ports("h3", "a2", "a4")
    assert h.sb.writes_of("migration") == [("a2", "h2", "h3", "unannounced", 3000)]


def test_no_unannounced_migration_on_the_same_host_or_a_first_appearance():
    h = running()
    assert h.sb.writes_of("migration") == []            # first appearances
    h.del_port("h1", "a1")
    h.ack_all()
    h.add_port("h1", "a1")                              # back where it was
    h.ack_all()
    assert h.sb.writes_of("migration") == []
    h.nb.configure(vms={**h.nb.snap.vms, "a5": A5})
    h.notify()
    add_a5_port(h, "h2")                                # a new VM
    assert h.sb.writes_of("migration") == []


def test_no_unannounced_migration_where_an_announced_one_goes():
    h = running()
    h.sb.configure(migrations=(migration("a2", "h2", "h3", "imported"),))
    h.notify()
    h.add_port("h3", "a2", ofport=7)
    assert h.sb.writes_of("migration") == []
    # an announced migration already done when the port comes up: none either
    h = running()
    h.sb.configure(migrations=(migration("a2", "h2", "h3", "done"),))
    h.notify()
    h.add_port("h3", "a2", ofport=7)
    assert h.sb.writes_of("migration") == []
    # one to another host does not cover this one
    h = running()
    h.sb.configure(migrations=(migration("a2", "h2", "h1", "streaming"),))
    h.notify()
    h.add_port("h3", "a2", ofport=7)
    assert h.sb.writes_of("migration") == [("a2", "h2", "h3", "unannounced", 3000)]


def test_a_refused_unannounced_row_does_not_hold_the_flows_back():
    h = running()
    h.sb.refuse = MbxError("VM 'a2' already has an active migration h2 -> h1")
    h.add_port("h3", "a2", ofport=7)
    h.ack_all()
    assert h.sb.writes_of("migration") == []
    h1 = FakeOFTable(h.switches.flows("h1"))
    assert tunnelled(h1, from_vm("a1", MAC["a2"])) == [(TUNNEL["h1"], VNI_A, ENCAP["h3"])]
    h.sb.refuse = None
    h.nb.bump_nb_cfg()
    h.notify()
    assert h.sb.writes_of("migration") == []            # once per appearance


def test_the_next_serving_host_answers_arp_for_the_nat_when_the_first_stops_serving():
    h = running_services()
    ask = {"in_port": S_UPLINK, "eth_src": "02:ee:ff:00:00:01", "eth_dst": "ff:ff:ff:ff:ff:ff",
           "eth_type": 0x0806, "arp_op": 1, "arp_sha": "02:ee:ff:00:00:01",
           "arp_spa": "203.0.113.1", "arp_tha": "00:00:00:00:00:00", "arp_tpa": "203.0.113.5"}

    def answering():
        return [host for host in ("h1", "h2", "h3")
                if FakeOFTable(h.switches.flows(host)).lookup(ask)]
    assert answering() == ["h1"]
    for vm in ("a1", "a3"):                 # h1 keeps no VM of ls-a
        h.add_port("h3", vm, ofport=PORT[vm] + 10)
        h.del_port("h1", vm)
    h.ack_all()
    assert answering() == ["h1"]            # it serves the migrations' sources
    h.sb.configure(migrations=tuple(dataclasses.replace(m, status="done")
                                    for m in h.sb.snap.migrations))
    h.notify()
    h.ack_all()
    assert answering() == ["h2"]


# ------------------------------------------- kept change by change = computed afresh

EXTRA_VMS = {"a5": VMInfo("a5", "ls-a", "02:00:00:00:00:05", "10.0.0.5"),
             "a6": VMInfo("a6", "ls-a", "02:00:00:00:00:06", "10.0.0.6"),
             "b3": VMInfo("b3", "ls-b", "02:00:00:00:00:0c", "10.0.0.3")}


def free_port(h, host, rng):
    used = {ofport for ofport, _mac in h.ports.get(host, {}).values()}
    return rng.choice([p for p in range(10, 40) if p not in used])


def random_change(h, rng, snap0):
    """One random change an operator, a host or a daemon could make."""
    hosts = ("h1", "h2", "h3")
    vms = sorted(h.nb.snap.vms)
    where = {vm: host for host, ports in h.ports.items() for vm in ports}
    kind = rng.choice(("move", "move", "move", "add", "delete", "policy", "dnat",
                       "firewall", "migration", "vm-state", "ports"))
    if kind == "move" and where:
        vm = rng.choice(sorted(where))
        dst = rng.choice([x for x in hosts if x != where[vm]])
        h.add_port(dst, vm, ofport=free_port(h, dst, rng), mac=h.nb.snap.vms[vm].mac)
        if rng.random() < 0.5:
            h.ack(rng.choice(hosts))
        h.del_port(where[vm], vm)
    elif kind == "add":
        absent = [vm for vm in vms if vm not in where]
        if absent:
            vm = rng.choice(absent)
            host = rng.choice(hosts)
            h.add_port(host, vm, ofport=free_port(h, host, rng), mac=h.nb.snap.vms[vm].mac)
    elif kind == "delete" and where:
        vm = rng.choice(sorted(where))
        h.del_port(where[vm], vm)
    elif kind == "policy":
        policies = [p for p in snap0.policies if rng.random() < 0.7]
        if rng.random() < 0.3:
            policies.append(PolicyInfo("ls-b", 150, "proto=udp", ("fw-b",)))
        h.nb.configure(policies=tuple(policies))
        h.notify()
    elif kind == "dnat":
        rule = dataclasses.replace(snap0.nat_rules["nat-a"][1],
                                   logical_ip=rng.choice(("10.0.0.2", "10.0.0.4", "10.0.0.5")))
        h.nb.configure(nat_rules={"nat-a": (snap0.nat_rules["nat-a"][0], rule)})
        h.notify()
    elif kind == "firewall":
        h.nb.configure(rules={"fw-a": ()} if h.nb.snap.rules else {})
        h.notify()
    elif kind == "migration" and where:
        vm = rng.choice(sorted(where))
        status = rng.choice(("begun", "streaming", "imported", "done", "aborted"))
        h.sb.configure(migrations=(migration(vm, where[vm], rng.choice(hosts), status),))
        h.notify()
    elif kind == "vm-state":
        rows = tuple(SharedRecord("fw-a", host, "vm-state", vm, "{}", 1)
                     for vm in vms for host in hosts if rng.random() < 0.1)
        h.sb.configure(shared_state=rows)
        h.notify()
    elif kind == "ports":
        host = rng.choice(hosts)
        h.extra[host] = dict(mb_ofport=rng.choice((S_MB_PORT, None)),
                             uplink_ofport=rng.choice((S_UPLINK, None)),
                             uplink_mac=UPLINK_MAC[host])
        h.engine.host_ports_changed(host, HostPorts(DPID[host], TUNNEL[host],
                                                    dict(h.ports.get(host, {})), **h.extra[host]))
        h._settle()
    if rng.random() < 0.7:
        h.ack_all()
    return kind


def restarted(h):
    """A fresh controller against copies of the same switches and database,
    every host reported and connected: (its harness, flow messages sent)."""
    switches = FakeSwitches()
    switches.tables = {dpid: dict(table) for dpid, table in h.switches.tables.items()}
    again = Harness(snap=h.nb.snap, runtime=h.sb.snapshot(), switches=switches,
                    sb_ready=False)
    again.extra = dict(h.extra)
    again.notify()
    for host in ("h1", "h2", "h3"):     # the southbound database's contents
        again.ports[host] = dict(h.ports.get(host, {}))
        again._ports(host, HostPorts(DPID[host], TUNNEL[host], dict(again.ports[host]),
                                     **again.extra.get(host, {})))
    again.sb_arrived()
    for host in ("h1", "h2", "h3"):
        again.connect(host)
    return again, switches.sent


def test_flows_kept_change_by_change_are_the_flows_computed_afresh():
    """After each of a random sequence of moves, new and deleted VM ports,
    policy, NAT and firewall rule changes, migrations and hosts' port
    changes, every switch holds exactly the flows a computation from
    scratch gives its host, and a restarted controller changes none."""
    for seed in range(12):
        rng = random.Random(seed)
        clock = [1000.0]
        h = running_services(clock=lambda: clock[0])
        h.nb.configure(vms={**h.nb.snap.vms, **EXTRA_VMS},
                       middleboxes={**h.nb.snap.middleboxes,
                                    "fw-b": MiddleboxInfo("fw-b", "firewall", "ls-b")})
        h.notify()
        h.ack_all()
        snap0 = h.nb.snap
        bound_before = {}
        departed = {}       # VM bound nowhere -> its last host (within the grace)
        for step in range(25):
            kind = random_change(h, rng, snap0)
            where = f"seed {seed}, step {step} ({kind})"
            topo = h.engine.topology()
            fresh = Topology(**{f.name: getattr(topo, f.name)
                                for f in dataclasses.fields(Topology)})
            bound = {vm: (host, ofport) for host, ports in h.ports.items()
                     for vm, (ofport, _mac) in ports.items() if vm in h.nb.snap.vms}
            assert {vm: (b.host, b.ofport) for vm, b in fresh.bindings.items()} == bound, where
            for vm, (host, _) in bound_before.items():
                if vm not in bound:
                    departed[vm] = host
            for vm, (host, _) in bound.items():
                if departed.get(vm) == host:
                    del departed[vm]
            bound_before = bound
            incoming = list(departed.items())
            incoming += [(m.vm, host) for m in h.sb.snap.migrations
                        if m.status in ("begun", "streaming", "stunned", "imported")
                        for host in (m.source, m.destination)]
            incoming += [(r.key, r.host) for r in h.sb.snap.shared_state]
            assert set(fresh.slices) == slicelib.needed_slices(fresh, incoming), where
            blocks = h.engine._snat_blocks
            assert slicelib.snat_blocks(fresh, blocks) == blocks, where
            runtime = h.sb.snap
            decided = h.engine._decisions()     # kept from the deltas
            assert decided == (dplib.known_slices(runtime.slices, h.engine._intent),
                               slicelib.blocks_from_status(runtime.slice_status)), where
            assert h.northd._recorded() == slicelib.blocks_from_status(
                runtime.slice_status), where
            assert dict(h.sb.snap.slices) == dict(fresh.slices), where
            assert {k: dict(v) for k, v in h.sb.snap.slice_status.items()} == \
                slicelib.slice_status(fresh, blocks), where
            for host in ("h1", "h2", "h3"):
                assert h.switches.flows(host) == sorted(
                    compute_host_flows(fresh, host, blocks), key=repr), (where, host)
        clock[0] += 31      # the grace of the VMs bound nowhere is over (a
        h.northd._expire_departed()     # restarted controller knows none)
        h.notify()
        h.ack_all()
        again, sent = restarted(h)
        assert sent == [], f"seed {seed}: a restart changed flows"
