"""Behaviour of the whole system on a real 3-host lab: ovsdb-server and
ovs-vswitchd per host, the controller, VMs as namespaces, TCP inside them.

Topology (lab/topologies/demo.yaml): tenants red and blue share 10.0.0.0/24.
  h1: red1 10.0.0.11, blue1 10.0.0.11   h2: red2 .12, blue3 .20   h3: red3 .13, blue2 .12
External network: every host's uplink and the router xr (203.0.113.1) on the
external segment; the router, xs (198.51.100.10) and xc (.20) on the internet.
"""

import contextlib
import os
import re
import subprocess
import sys
import time

import pytest

from lab import lab as L
from lab.probe import Probe, read_peer_log
from lab.sh import run, wait_until

pytestmark = pytest.mark.lab


def mac(lab, vm):
    return lab.state["vms"][vm]["mac"]


def location(lab, vm):
    """The VM's location as mbx-northd decided it (southbound VM_Location);
    the config database's VM.host mirror says the same."""
    where = lab.sb().snapshot().vm_locations[vm]
    assert lab.nb().snapshot().vm_mirror[vm] == where
    return where


def trace(lab, host, vm, dst_mac):
    """The datapath actions br-int on ``host`` applies to a frame from ``vm``."""
    flow = "in_port=%s,dl_src=%s,dl_dst=%s,dl_type=0x0800,nw_src=10.0.0.1,nw_dst=10.0.0.2" % (
        lab.state["vms"][vm]["vif"], mac(lab, vm), dst_mac)
    out = lab.appctl(host, "ofproto/trace", "br-int", flow)
    return re.search(r"Datapath actions: (.*)", out).group(1)


def probe(lab, client, server, addr, port):
    """A TCP connection from one VM to another, exchanging a request every
    10 ms, already past its first 30 replies."""
    started = Probe(lab, client, server, addr, port,
                    os.path.join(lab.rundir, "probe-%s-%d.json" % (client, port)))
    started.wait(lambda r: r["received"] >= 30, 10, "the probe connection to exchange data")
    return started


def test_hosts_register_and_connect(lab):
    out = lab.mbxctl("host-list")
    assert out.returncode == 0, out.stderr
    for host, info in lab.state["hosts"].items():
        line = next(l for l in out.stdout.splitlines() if l.split()[0] == host)
        assert info["encap_ip"] in line
    snap = lab.sb().snapshot()
    assert sorted(h for h, rec in snap.hosts.items() if rec.connected) == ["h1", "h2", "h3"]
    assert {h: (rec.encap_type, rec.encap_ip) for h, rec in snap.hosts.items()} == {
        h: ("vxlan", info["encap_ip"]) for h, info in lab.state["hosts"].items()}


def test_cross_host_delivery_over_the_overlay(lab):
    assert lab.ping("red1", "10.0.0.12").ok          # h1 -> h2
    assert lab.ping("red1", "10.0.0.13").ok          # h1 -> h3
    assert lab.ping("blue1", "10.0.0.20").ok         # h1 -> h2, other tenant
    # The path really is the tunnel, with the tenant's VNI, to the right host.
    actions = trace(lab, "h1", "red1", mac(lab, "red2"))
    assert "dst=%s" % lab.state["hosts"]["h2"]["encap_ip"] in actions
    assert "vni=0x%x" % 1001 in actions


def test_tenants_with_overlapping_subnets_stay_isolated(lab):
    # 10.0.0.12 exists in both tenants: each tenant reaches its own VM.
    red = lab.ping("red1", "10.0.0.12")
    assert red.ok and red.mac == mac(lab, "red2")
    blue = lab.ping("blue1", "10.0.0.12")
    assert blue.ok and blue.mac == mac(lab, "blue2")
    # Addresses that exist only in the other tenant are unreachable.
    assert not lab.ping("red1", "10.0.0.20").ok
    assert not lab.ping("blue1", "10.0.0.13").ok
    # Even a frame sent straight to another tenant's MAC goes nowhere.
    assert trace(lab, "h1", "red1", mac(lab, "blue3")) == "drop"
    # A spoofed source MAC is dropped at the port.
    flow = "in_port=%s,dl_src=02:66:66:66:66:66,dl_dst=%s" % (
        lab.state["vms"]["red1"]["vif"], mac(lab, "red2"))
    out = lab.appctl("h1", "ofproto/trace", "br-int", flow)
    assert re.search(r"Datapath actions: drop", out)


def test_tcp_connection_survives_live_migration(lab):
    host_before, epoch_before = location(lab, "red2")
    assert host_before == "h2"
    running = probe(lab, "red1", "red2", "10.0.0.12", 7101)
    try:
        steps = lab.migrate("red2", "h3")
        sent_at_move = running.read()["sent"]
        running.wait(lambda r: r["received"] >= sent_at_move + 50, 15,
                     "replies after the migration")
    finally:
        report = running.stop()
    assert report["connected"] and report["error"] is None, report
    assert report["received"] == report["sent"], report     # every reply arrived
    assert steps["total"] > 0
    assert location(lab, "red2") == ("h3", epoch_before + 1)
    # Every host now sends red2's traffic to h3.
    actions = trace(lab, "h1", "red1", mac(lab, "red2"))
    assert "dst=%s" % lab.state["hosts"]["h3"]["encap_ip"] in actions
    # and back again, so the rest of the suite sees the original placement
    lab.migrate("red2", "h2")
    assert location(lab, "red2") == ("h2", epoch_before + 2)
    assert lab.ping("red1", "10.0.0.12").ok


def _flows(lab, host):
    """{flow without statistics: (duration seconds, n_packets)} of br-int."""
    out = lab.ofctl(host, "dump-flows")
    flows = {}
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("cookie="):
            continue
        duration = float(re.search(r"duration=([\d.]+)s", line).group(1))
        packets = int(re.search(r"n_packets=(\d+)", line).group(1))
        bare = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ?", "", line)
        flows[bare] = (duration, packets)
    return flows


def test_controller_restart_causes_no_flow_churn(lab):
    running = probe(lab, "red1", "red3", "10.0.0.13", 7102)
    try:
        before = {h: _flows(lab, h) for h in lab.state["hosts"]}
        taken = time.monotonic()
        lab.controller_restart()
        for host in lab.state["hosts"]:
            wait_until(lambda: "true" in lab.vsctl(host, "get", "controller", "br-int",
                                                   "is_connected"), 20,
                       what="%s to reconnect to the new controller" % host)
        out = lab.mbxctl("--wait=hv", "--timeout", "20", "sync")
        assert out.returncode == 0, out.stderr
        time.sleep(0.5)
        elapsed = time.monotonic() - taken
        after = {h: _flows(lab, h) for h in lab.state["hosts"]}
    finally:
        report = running.stop()
    assert report["error"] is None and report["received"] == report["sent"], report
    for host in before:
        assert sorted(after[host]) == sorted(before[host]), host   # same flows
        for flow, (duration, packets) in after[host].items():
            old_duration, old_packets = before[host][flow]
            # never deleted and re-added: its age kept growing
            assert duration >= old_duration + elapsed - 1.0, (host, flow)
            assert packets >= old_packets, (host, flow)
    # the flows carrying the probe kept counting packets through the restart
    rising = [f for f, (_, p) in after["h1"].items() if p > before["h1"][f][1]]
    assert any("in_port" in f for f in rising)


def test_vm_deleted_and_added_again(lab):
    _, epoch = location(lab, "red3")
    lab.vm_del("red3")
    assert "red3" not in lab.nb().snapshot().vms
    assert "red3" not in lab.mbxctl("vm-list").stdout
    assert not lab.ping("red1", "10.0.0.13").ok
    lab.vm_add("red3", "h3", "ls-red", "10.0.0.13/24")
    assert lab.ping("red1", "10.0.0.13").ok
    assert location(lab, "red3")[0] == "h3"


# ------------------------------------------------------------ external network

def _sh(lab, name, *cmd):
    proc = lab.ext_exec(name, list(cmd), capture_output=True, text=True)
    assert proc.returncode == 0, (name, cmd, proc.stderr)
    return proc.stdout


def test_external_namespaces_exist(lab):
    listed = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()]
    for name in ("xr", "xs", "xc"):
        assert lab.ext_ns(name) == "%s-%s" % (lab.prefix, name) in listed
        assert lab.external[name]["netns"] == lab.ext_ns(name)
    router = _sh(lab, "xr", "ip", "-o", "-4", "addr", "show")
    assert re.search(r"ext0\s+inet 203\.0\.113\.1/24", router)
    assert re.search(r"inet0\s+inet 198\.51\.100\.1/24", router)
    assert "link/ether %s " % L.EXT_GATEWAY_MAC in _sh(lab, "xr", "ip", "link", "show", "ext0")
    assert _sh(lab, "xr", "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    for name, addr in (("xs", "198.51.100.10/24"), ("xc", "198.51.100.20/24")):
        assert "inet %s " % addr in _sh(lab, name, "ip", "-o", "-4", "addr", "show", "eth0")
        assert _sh(lab, name, "ip", "route", "show", "default").split()[:5] == \
            ["default", "via", "198.51.100.1", "dev", "eth0"]
        features = _sh(lab, name, "ethtool", "-k", "eth0")
        for feature in ("tx-checksumming", "tcp-segmentation-offload",
                        "generic-segmentation-offload"):
            assert re.search(r"^%s: off" % feature, features, re.M), (name, feature)
    # mbx-lab ext-exec runs a command there
    cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mbx-lab"),
                          "--prefix", lab.prefix, "--dir", lab.rundir, "ext-exec", "xs",
                          "--", "ip", "-o", "-4", "addr", "show", "eth0"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "198.51.100.10/24" in cli.stdout, cli.stderr


@contextlib.contextmanager
def machine_on_external_segment(lab, addr):
    """A throw-away namespace on br-ext (``addr``/24, default via the router)."""
    ns, outer = "%s-xtest" % lab.prefix, "xt-ext"
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0",
             "netns", ns], netns=lab.fabric_ns)
        run(["ip", "link", "set", outer, "mtu", str(L.EXT_MTU), "master", "br-ext", "up"],
            netns=lab.fabric_ns)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "set", "eth0", "mtu", str(L.EXT_MTU), "up"],
                    ["ip", "addr", "add", addr + "/24", "dev", "eth0"],
                    ["ip", "route", "add", "default", "via", L.EXT_GATEWAY_IP],
                    ["ethtool", "-K", "eth0"] + L.OFFLOADS_OFF):
            run(cmd, netns=ns)
        yield ns
    finally:
        run(["ip", "netns", "del", ns], check=False)


def test_router_forwards_between_internet_and_external_network(lab):
    assert lab.ext_ping("xs", L.EXT_GATEWAY_IP).ok
    peers = os.path.join(lab.rundir, "xs-peers.log")
    if os.path.exists(peers):
        os.unlink(peers)
    server = lab.ext_spawn("xs", [sys.executable, "-m", "lab.probe", "serve",
                                  "--port", "7200", "--log", peers],
                           os.path.join(lab.rundir, "xs-serve.out"))
    try:
        wait_until(lambda: lab.ext_tcp_try("xc", L.EXT_SERVER_IP, 7200)["ok"], 5,
                   interval=0.1, what="the probe server in xs")
        # The server reports each connection's peer as it saw it.
        out = lab.ext_tcp_try("xc", L.EXT_SERVER_IP, 7200, count=3)
        assert out["ok"] == 3, out
        seen = read_peer_log(peers)
        assert seen[-3:] == [(L.EXT_CLIENT_IP, p, 7200) for p in out["local_ports"]]
        # A machine on the external segment reaches the internet through the router.
        with machine_on_external_segment(lab, "203.0.113.250") as ns:
            ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2",
                                   "-W", "1", L.EXT_SERVER_IP], capture_output=True)
            assert ping.returncode == 0
            proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                                   "lab.probe", "try", "--to", L.EXT_SERVER_IP,
                                   "--port", "7200"], capture_output=True, text=True)
            assert '"ok": 1' in proc.stdout, proc.stdout + proc.stderr
        assert read_peer_log(peers)[-1][0] == "203.0.113.250"   # routed, not NATed
    finally:
        server.terminate()
        server.wait(10)
        lab.forget_pid(server.pid)


def test_every_host_has_an_uplink_on_br_int(lab):
    bridged = run(["ip", "-o", "link", "show", "master", "br-ext"], netns=lab.fabric_ns)
    for host, info in lab.state["hosts"].items():
        assert lab.vsctl(host, "port-to-br", L.UPLINK_PORT).strip() == "br-int"
        ids = lab.vsctl(host, "get", "interface", L.UPLINK_PORT, "external_ids")
        assert 'mbx-role=uplink' in ids, (host, ids)
        assert lab.vsctl(host, "get", "interface", L.UPLINK_PORT, "type").strip() == '""'
        mac = lab.vsctl(host, "get", "interface", L.UPLINK_PORT, "mac_in_use").strip().strip('"')
        assert mac == lab.uplink_mac(host) == "02:ee:00:00:00:%02x" % info["index"]
        assert int(lab.vsctl(host, "get", "interface", L.UPLINK_PORT, "ofport")) > 0
        link = run(["ip", "-o", "link", "show", L.UPLINK_PORT], netns=info["netns"])
        assert "state UP" in link or ",UP," in link, link
        assert not run(["ip", "-6", "addr", "show", L.UPLINK_PORT], netns=info["netns"])
        assert re.search(r"\bex-%s@" % host, bridged), bridged


def test_vms_have_a_default_route_via_their_gateway(lab):
    for name, vm in lab.state["vms"].items():
        assert vm["gateway"] == "10.0.0.1" == lab.switch_gateway(vm["switch"])
        route = lab.exec(name, ["ip", "route", "show", "default"],
                         capture_output=True, text=True).stdout
        assert route.split()[:5] == ["default", "via", "10.0.0.1", "dev", "eth0"], (name, route)


def test_external_network_in_the_config_db(lab):
    assert lab.state.get("ext_registered")
    rows = lab.nb().db_find("External_Network", ("name", "=", L.EXT_NAME)).execute(
        check_error=True)
    assert [(r["cidr"], r["gateway_ip"], r["gateway_mac"]) for r in rows] == \
        [(L.EXT_CIDR, L.EXT_GATEWAY_IP, L.EXT_GATEWAY_MAC)]
