"""mbx-chassis against real ovsdb-servers: a host's own OVS database (the
vswitch schema, rows written with ovs-vsctl, ofports set by hand as
ovs-vswitchd would) and the southbound database."""

import json
import os
import subprocess
import sys
import time

import pytest

from ovsdb import server

VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
SB = "MBX_Southbound"


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)


class Host:
    """One host's OVS database, without ovs-vswitchd."""

    def __init__(self, rundir):
        os.makedirs(rundir)
        db = os.path.join(rundir, "conf.db")
        subprocess.run(["ovsdb-tool", "create", db, VSWITCH_SCHEMA], check=True)
        self.sock = os.path.join(rundir, "db.sock")
        self.pid = server.start(rundir, db, ["punix:" + self.sock])
        self.vsctl("init", "--", "set", "Open_vSwitch", ".",
                   "external_ids:system-id=hv1",
                   "external_ids:mbx-encap-ip=10.200.0.11")
        self.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int",
                   "datapath_id=000000000000000a")

    def vsctl(self, *args):
        subprocess.run(["ovs-vsctl", "--no-wait", "--db=unix:" + self.sock]
                       + list(args), check=True, capture_output=True)

    def add_port(self, name, ofport=None, **ids):
        args = ["add-port", "br-int", name, "--", "set", "interface", name]
        args += ["external_ids:%s=%s" % kv for kv in ids.items()] or ["type=internal"]
        if ofport is not None:
            args.append("ofport=%d" % ofport)
        self.vsctl(*args)


class Southbound:
    def __init__(self, rundir):
        os.makedirs(rundir, exist_ok=True)
        self.rundir = rundir
        self.db = os.path.join(rundir, "sb.db")
        server.ensure_db(self.db, server.SB_SCHEMA_PATH)
        self.sock = os.path.join(rundir, "sb.sock")
        self.start()

    def start(self):
        self.pid = server.start(self.rundir, self.db, ["punix:" + self.sock])

    def stop(self):
        server.stop(self.pid)

    def transact(self, *ops):
        out = subprocess.run(["ovsdb-client", "transact", "unix:" + self.sock,
                              json.dumps([SB] + list(ops))],
                             check=True, capture_output=True, text=True).stdout
        reply = json.loads(out)
        assert all("error" not in r for r in reply if r), reply
        return reply

    def rows(self, table):
        return self.transact({"op": "select", "table": table, "where": []})[0]["rows"]

    def bindings(self):
        """{(logical_port, chassis): (ofport, mac)}"""
        return {(r["logical_port"], r["chassis"]): (r["ofport"], r["mac"])
                for r in self.rows("Port_Binding")}

    def chassis(self):
        return {r["name"]: r for r in self.rows("Chassis")}


@pytest.fixture
def env(tmp_path):
    host = Host(str(tmp_path / "hv1"))
    sb = Southbound(str(tmp_path / "sb"))
    agents = []

    def start_agent(stderr=None):
        log = open(str(tmp_path / "chassis.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "hypervisor.chassis",
                                 "--local-db", "unix:" + host.sock,
                                 "--sb", "unix:" + sb.sock],
                                stdout=log, stderr=stderr or subprocess.STDOUT,
                                text=stderr is not None)
        agents.append(proc)
        return proc

    yield host, sb, start_agent
    for proc in agents:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    server.stop(host.pid)
    server.stop(sb.pid)


def test_the_agent_publishes_the_chassis_and_its_vm_ports(env):
    host, sb, start_agent = env
    host.add_port("vxlan0", 3)
    host.vsctl("set", "interface", "vxlan0", "type=vxlan",
               "options:remote_ip=flow", "options:key=flow")
    host.add_port("mbx-mb", 4, **{"mbx-role": "middlebox"})
    host.add_port("tap-a", 7, **{"iface-id": "vm-a", "attached-mac": "02:00:00:00:00:0A"})
    host.add_port("tap-b", None, **{"iface-id": "vm-b"})    # no ofport yet
    start_agent()
    wait_for(lambda: sb.bindings() == {("vm-a", "hv1"): (7, "02:00:00:00:00:0a")},
             what="vm-a's binding")
    chassis = wait_for(lambda: sb.chassis().get("hv1"), what="the chassis row")
    assert chassis["datapath_id"] == "000000000000000a"
    assert chassis["tunnel_ofport"] == 3
    assert chassis["mb_ofport"] == 4
    assert chassis["uplink_ofport"] == ["set", []]

    host.vsctl("set", "interface", "tap-b", "ofport=8")     # vswitchd assigns it
    host.vsctl("set", "interface", "tap-a", "ofport=9")
    wait_for(lambda: sb.bindings() == {("vm-a", "hv1"): (9, "02:00:00:00:00:0a"),
                                       ("vm-b", "hv1"): (8, "")},
             what="vm-b bound and vm-a's new ofport")
    host.vsctl("del-port", "br-int", "tap-a")
    wait_for(lambda: sb.bindings() == {("vm-b", "hv1"): (8, "")},
             what="vm-a's binding gone")
    assert list(sb.chassis()) == ["hv1"]


def test_rows_under_its_name_follow_the_host_and_other_chassis_are_untouched(env):
    host, sb, start_agent = env
    host.add_port("tap-a", 7, **{"iface-id": "vm-a"})
    sb.transact({"op": "insert", "table": "Port_Binding",
                 "row": {"logical_port": "vm-x", "chassis": "hv2", "ofport": 5,
                         "mac": ""}},
                {"op": "insert", "table": "Chassis",
                 "row": {"name": "hv2", "encap_type": "vxlan", "encap_ip": "10.200.0.12"}})
    start_agent()
    wait_for(lambda: ("vm-a", "hv1") in sb.bindings(), what="vm-a's binding")
    # A stale row written under hv1's name (a port that is not there) and a
    # wrong ofport are corrected; hv2's rows stay as they are.
    sb.transact({"op": "insert", "table": "Port_Binding",
                 "row": {"logical_port": "vm-stale", "chassis": "hv1", "ofport": 6,
                         "mac": ""}},
                {"op": "update", "table": "Port_Binding",
                 "where": [["logical_port", "==", "vm-a"]], "row": {"ofport": 99}})
    wait_for(lambda: sb.bindings() == {("vm-a", "hv1"): (7, ""),
                                       ("vm-x", "hv2"): (5, "")},
             what="hv1's rows corrected")
    assert sorted(sb.chassis()) == ["hv1", "hv2"]


def test_restarts_of_the_agent_and_the_southbound_server_converge(env):
    host, sb, start_agent = env
    host.add_port("tap-a", 7, **{"iface-id": "vm-a"})
    agent = start_agent()
    wait_for(lambda: ("vm-a", "hv1") in sb.bindings(), what="vm-a's binding")
    uuids = sorted(r["_uuid"][1] for r in sb.rows("Port_Binding") + sb.rows("Chassis"))

    agent.terminate()
    assert agent.wait(10) == 0
    start_agent()
    # The restarted agent finds its rows right and writes nothing.
    host.add_port("tap-c", 11, **{"iface-id": "vm-c"})
    wait_for(lambda: ("vm-c", "hv1") in sb.bindings(), what="vm-c's binding")
    assert set(uuids) <= {r["_uuid"][1] for r in sb.rows("Port_Binding") + sb.rows("Chassis")}
    assert len(sb.rows("Chassis")) == 1

    sb.stop()
    host.vsctl("del-port", "br-int", "tap-a")       # while the SB is down
    host.add_port("tap-d", 12, **{"iface-id": "vm-d"})
    sb.start()
    wait_for(lambda: sb.bindings() == {("vm-c", "hv1"): (11, ""),
                                       ("vm-d", "hv1"): (12, "")},
             timeout=20, what="the agent to catch up after the server restart")


def test_the_chassis_carries_the_hosts_encap_and_follows_its_changes(env):
    """mbx-chassis is the host's registration: its Chassis row says where
    tunnels to the host end and where its mbxd accepts migrated state, from
    the host's external_ids, and follows them."""
    host, sb, start_agent = env
    start_agent()
    chassis = wait_for(lambda: sb.chassis().get("hv1"), what="the chassis row")
    assert (chassis["encap_type"], chassis["encap_ip"], chassis["migration_address"]) == (
        "vxlan", "10.200.0.11", "")
    host.vsctl("set", "Open_vSwitch", ".", "external_ids:mbx-encap-type=geneve",
               "external_ids:mbx-encap-ip=10.200.0.21",
               "external_ids:mbx-migration-address=ssl:10.201.0.21:6650")
    wait_for(lambda: (lambda c: c and (c["encap_type"], c["encap_ip"],
                                       c["migration_address"]))(sb.chassis().get("hv1"))
             == ("geneve", "10.200.0.21", "ssl:10.201.0.21:6650"),
             what="the new encap in the chassis row")
    # a value that becomes invalid is not published: the last good one stays
    host.vsctl("set", "Open_vSwitch", ".", "external_ids:mbx-encap-ip=nowhere",
               "--", "add-port", "br-int", "tap-c", "--", "set", "interface", "tap-c",
               "external_ids:iface-id=vm-c", "ofport=9")
    wait_for(lambda: ("vm-c", "hv1") in sb.bindings(), what="vm-c's binding")
    assert sb.chassis()["hv1"]["encap_ip"] == "10.200.0.21"


@pytest.mark.parametrize("key", ["system-id", "mbx-encap-ip"])
def test_the_agent_refuses_to_start_without_the_hosts_identity(env, key):
    host, sb, start_agent = env
    host.vsctl("remove", "Open_vSwitch", ".", "external_ids", key)
    proc = start_agent(stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.splitlines() == [
        f"mbx-chassis: external_ids:{key} is not set in the local OVS database; "
        f"set it with ovs-vsctl set Open_vSwitch . external_ids:{key}=VALUE"]
    assert sb.rows("Chassis") == []
