"""NAT, the load balancer, the IDS and a service chain in the real lab.

Tenant teal (10.2.0.0/24) has VMs on all three hosts and one chain for all
its traffic: firewall -> load balancer -> NAT -> IDS.  Tenant plum uses the
SAME subnet and addresses with its own SNAT address.  Outside the tenants,
the lab's internet server (xs, 198.51.100.10) and client (xc, .20) sit
behind the external router.  Every check is what a user observes: TCP
connections that work or not, the addresses and ports a server saw, what
`mbxctl` and `ovs-appctl -t mbxd` report, and OVS flow counters.
"""

import json
import re
import signal
import sys
import time

import pytest

from lab import lab as L
from lab.probe import read_peer_log
from lab.sh import wait_until
from ryu_apps import pipeline as P

PY = sys.executable
TEAL = {"t1": ("h1", "10.2.0.11"), "t2": ("h2", "10.2.0.12"), "t3": ("h3", "10.2.0.13"),
        "bk1": ("h1", "10.2.0.21"), "bk2": ("h2", "10.2.0.22"), "bk3": ("h3", "10.2.0.23")}
PLUM = {"p1": ("h1", "10.2.0.11"), "p2": ("h2", "10.2.0.12")}
VIP = "10.2.0.100"
TEAL_EXT, PLUM_EXT, DNAT_EXT = "203.0.113.100", "203.0.113.101", "203.0.113.110"
DNAT_ALL = "203.0.113.111"          # every port (and ICMP) to t3
SCAN_THRESHOLD = 12


def mbxctl(lab, *args):
    proc = lab.mbxctl("--wait=hv", "--timeout=30", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def appctl_json(lab, host, *args):
    return json.loads(lab.mbxd_appctl(host, *args))


def serve(lab, name, ports, log, external=False):
    argv = [PY, "-m", "lab.probe", "serve", "--port", ports, "--log", log]
    spawn = lab.ext_spawn if external else lab.spawn
    return spawn(name, argv, log + ".out")


@pytest.fixture(scope="module")
def svc(lab, tmp_path_factory):
    logs = tmp_path_factory.mktemp("svc")
    mbxctl(lab, "ls-add", "ls-teal", "--vni", "3001", "--subnet", "10.2.0.0/24",
           "--tenant", "teal",
           "--", "ls-add", "ls-plum", "--vni", "3002", "--subnet", "10.2.0.0/24",
           "--tenant", "plum")
    mbxctl(lab, "mb-add", "fw-teal", "ls-teal", "--default", "deny",
           "--", "fw-add", "fw-teal", "100", "from-vm", "any", "allow",
           "--", "fw-add", "fw-teal", "100", "to-vm", "proto=tcp dport=8080", "allow",
           "--", "fw-add", "fw-teal", "101", "to-vm", "proto=icmp", "allow",
           "--", "fw-add", "fw-teal", "102", "to-vm", "proto=udp dport=5353", "allow",
           "--", "mb-add", "lb-teal", "ls-teal", "--type", "lb",
           "--", "mb-add", "nat-teal", "ls-teal", "--type", "nat",
           "--", "mb-add", "ids-teal", "ls-teal", "--type", "ids",
           "--", "mb-set", "ids-teal", "scan-threshold=%d" % SCAN_THRESHOLD,
           "scan-window=60",
           "--", "mb-set", "nat-teal", "ports-per-host=1024",
           "--", "nat-add", "nat-teal", "snat", TEAL_EXT,
           "--", "nat-add", "nat-teal", "dnat", DNAT_EXT, "10.2.0.12", "--protocol", "tcp",
           "--external-port", "2222", "--logical-port", "8080",
           "--", "nat-add", "nat-teal", "dnat", DNAT_ALL, "10.2.0.13",
           "--", "lb-add", "lb-teal", VIP + ":80", "--algorithm", "round-robin",
           "10.2.0.21:8080", "10.2.0.22:8080", "10.2.0.23:8080",
           "--", "lb-add", "lb-teal", VIP + ":53", "--protocol", "udp", "10.2.0.21:5353",
           "--", "lb-set", "lb-teal", VIP + ":80", "health-interval=1",
           "health-timeout=0.5", "health-rise=2", "health-fall=2",
           "--", "steer-add", "ls-teal", "100", "any", "fw-teal,lb-teal,nat-teal,ids-teal")
    mbxctl(lab, "mb-add", "nat-plum", "ls-plum", "--type", "nat",
           "--", "nat-add", "nat-plum", "snat", PLUM_EXT,
           "--", "steer-add", "ls-plum", "100", "any", "nat-plum")
    procs = {}
    for switch, vms in (("ls-teal", TEAL), ("ls-plum", PLUM)):
        for name, (host, addr) in vms.items():
            lab.vm_add(name, host, switch, addr + "/24")
            procs[name] = serve(lab, name, "8080", str(logs / (name + ".log")))
    procs["xs"] = serve(lab, "xs", "80", str(logs / "xs.log"), external=True)
    time.sleep(0.5)
    lab.svc_logs = logs
    lab.svc_procs = procs
    yield lab
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        lab.forget_pid(proc.pid)
    for name in list(TEAL) + list(PLUM):
        lab.vm_del(name)
    mbxctl(lab, "steer-del", "ls-teal", "--", "steer-del", "ls-plum",
           "--", "mb-del", "fw-teal", "--", "mb-del", "lb-teal", "--", "mb-del", "nat-teal",
           "--", "mb-del", "ids-teal", "--", "mb-del", "nat-plum",
           "--", "ls-del", "ls-teal", "--", "ls-del", "ls-plum")


def log_of(lab, name):
    return read_peer_log(str(lab.svc_logs / (name + ".log")))


def try_many(lab, vm, addr, port, count, external=False):
    run = lab.ext_tcp_try if external else lab.tcp_try
    out = run(vm, addr, port, timeout=3.0, count=count)
    assert out["ok"] == count, out
    return out


# ------------------------------------------------------------ SNAT

def uplink_tx(lab, host):
    out = lab.ofctl(host, "dump-ports", L.UPLINK_PORT)
    return int(re.search(r"tx pkts=(\d+)", out).group(1))


def test_snat_from_two_hosts_gives_every_connection_its_own_external_port(svc):
    before = len(log_of(svc, "xs"))
    ports = {}
    for vm, host in (("t1", "h1"), ("t2", "h2")):
        tx = {h: uplink_tx(svc, h) for h in ("h1", "h2", "h3")}
        ports[vm] = try_many(svc, vm, L.EXT_SERVER_IP, 80, 40)["local_ports"]
        sent = {h: uplink_tx(svc, h) - tx[h] for h in tx}
        # The distributed gateway: out through the VM's own host's uplink.
        assert sent[host] >= 40 * 4, (vm, sent)
        assert all(n < 10 for h, n in sent.items() if h != host), (vm, sent)
    seen = log_of(svc, "xs")[before:]
    assert len(seen) == 80
    assert {ip for ip, _, _ in seen} == {TEAL_EXT}
    external_ports = [port for _, port, _ in seen]
    assert len(set(external_ports)) == 80, "two connections shared an external port"
    # Each host allocates from its own block of 1024 ports: no overlap.
    blocks = {}
    for vm, host in (("t1", "h1"), ("t2", "h2")):
        conns = appctl_json(svc, host, "conn/json", vm)
        wire = [int(c["xlate"]["wire_vm"].split(":")[1]) for c in conns
                if c["xlate"] and c["xlate"]["kind"] == "snat"]
        assert wire, conns
        blocks[host] = (min(wire) // 1024, max(wire) // 1024)
        assert blocks[host][0] == blocks[host][1]
    assert blocks["h1"] != blocks["h2"]


def test_overlapping_tenants_each_leave_through_their_own_snat(svc):
    before = len(log_of(svc, "xs"))
    try_many(svc, "p1", L.EXT_SERVER_IP, 80, 3)
    try_many(svc, "t1", L.EXT_SERVER_IP, 80, 3)
    seen = [ip for ip, _, _ in log_of(svc, "xs")[before:]]
    assert seen == [PLUM_EXT] * 3 + [TEAL_EXT] * 3


def test_dnat_brings_an_outside_client_to_a_vm_through_the_firewall(svc):
    before = len(log_of(svc, "t2"))
    out = try_many(svc, "xc", DNAT_EXT, 2222, 3, external=True)
    seen = log_of(svc, "t2")[before:]
    assert [(ip, local) for ip, _, local in seen] == [(L.EXT_CLIENT_IP, 8080)] * 3
    assert sorted(p for _, p, _ in seen) == sorted(out["local_ports"])
    # A port the DNAT rule does not map reaches nothing.
    assert svc.ext_tcp_try("xc", DNAT_EXT, 2223, timeout=1.0)["ok"] == 0


# ------------------------------------------------------------ ICMP

def test_ping_and_traceroute_to_the_internet_through_snat(svc):
    assert svc.ping("t1", L.EXT_SERVER_IP, count=3).ok
    assert svc.ping("t2", L.EXT_SERVER_IP, count=3).ok
    # UDP probes with rising TTLs: the router's time-exceeded, then the
    # server's port-unreachable, each un-NATed back to the VM.
    out = svc.exec("t1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4",
                          L.EXT_SERVER_IP], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    hops = [line.split()[1] for line in out.stdout.splitlines()[1:]]
    assert hops == [L.EXT_GATEWAY_IP, L.EXT_SERVER_IP], out.stdout


def test_ping_from_outside_to_a_dnat_address_reaches_its_vm(svc):
    assert svc.ext_ping("xc", DNAT_ALL, count=3).ok
    # A DNAT rule of one TCP port maps no ICMP echo.
    assert not svc.ext_ping("xc", DNAT_EXT, count=1).ok


def test_icmp_error_of_a_backend_comes_back_through_the_load_balancer(svc):
    # Nothing listens on bk1's UDP 5353: its port-unreachable reaches the
    # client as an error of its connection to the VIP (un-DNATed inside too).
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.settimeout(3)\ns.connect((%r,53))\ns.send(b'x')\n"
            "try:\n s.recv(100)\nexcept ConnectionRefusedError:\n sys.exit(0)\n"
            "except OSError as e:\n print(e); sys.exit(1)\nsys.exit(2)" % VIP)
    out = svc.exec("t1", [PY, "-c", code], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, (out.stdout, out.stderr)


# ------------------------------------------------------------ load balancer

def test_vip_round_robin_over_three_hosts_and_connections_stay_pinned(svc, tmp_path):
    marks = {b: len(log_of(svc, b)) for b in ("bk1", "bk2", "bk3")}
    out = try_many(svc, "t1", VIP, 80, 6)
    served = {}
    for b in ("bk1", "bk2", "bk3"):
        for ip, port, local in log_of(svc, b)[marks[b]:]:
            assert (ip, local) == ("10.2.0.11", 8080)
            served[port] = b
    assert sorted(served) == sorted(out["local_ports"])
    order = [served[p] for p in out["local_ports"]]
    assert sorted(order) == ["bk1", "bk1", "bk2", "bk2", "bk3", "bk3"]
    assert order[:3] == order[3:], order            # round-robin, one rotation per host
    # Long-lived connections through the VIP: every request answered by the
    # same backend for the whole connection (a switch would reset it).
    clients = []
    for i in range(3):
        report = str(tmp_path / ("c%d.json" % i))
        clients.append((report, svc.spawn("t3", [PY, "-m", "lab.probe", "client", "--to", VIP,
                                                  "--port", "80", "--interval-ms", "20",
                                                  "--duration", "4", "--out", report],
                                           report + ".log")))
    for report, proc in clients:
        proc.wait(20)
        svc.forget_pid(proc.pid)
        with open(report) as f:
            rep = json.load(f)
        assert rep["error"] is None and rep["received"] >= 50, rep


def test_stopped_backend_is_marked_down_and_gets_no_new_connections(svc, tmp_path):
    # A long-lived connection to a healthy backend, from h2's client.
    report = str(tmp_path / "keep.json")
    keep = svc.spawn("t2", [PY, "-m", "lab.probe", "client", "--to", VIP, "--port", "80",
                            "--interval-ms", "20", "--duration", "15", "--out", report],
                     report + ".log")
    proc = svc.svc_procs.pop("bk3")
    proc.terminate()
    proc.wait(10)
    svc.forget_pid(proc.pid)
    stopped = time.monotonic()
    # interval 1 s, timeout 0.5 s, fall 2: down within about 3 s; allow 8.
    wait_until(lambda: "10.2.0.23:8080=down" in mbxctl(svc, "lb-list", "lb-teal"),
               timeout=8, what="LB_VIP.status shows bk3 down")
    took = time.monotonic() - stopped
    for host in ("h1", "h2", "h3"):
        [vip] = [v for v in appctl_json(svc, host, "lb/json") if v["vip"] == VIP + ":80/tcp"]
        health = {b["backend"]: b["health"] for b in vip["backends"]}
        assert health["10.2.0.23:8080"] == "down", (host, health)
    marks = {b: len(log_of(svc, b)) for b in ("bk1", "bk2")}
    out = try_many(svc, "t1", VIP, 80, 6)
    served = sum(len(log_of(svc, b)) - marks[b] for b in ("bk1", "bk2"))
    assert served == 6 and out["refused"] == 0
    keep.wait(30)
    svc.forget_pid(keep.pid)
    with open(report) as f:
        rep = json.load(f)
    assert rep["error"] is None, rep
    # Back in service: healthy again after `rise` good probes.
    svc.svc_procs["bk3"] = serve(svc, "bk3", "8080", str(svc.svc_logs / "bk3.log"))
    wait_until(lambda: "10.2.0.23:8080=up" in mbxctl(svc, "lb-list", "lb-teal"),
               timeout=10, what="bk3 up again")
    print("bk3 marked down %.1f s after its service stopped" % took)


# ------------------------------------------------------------ IDS

def test_scan_across_two_hosts_is_detected_as_one_scan(svc):
    # A fresh VM on h1 probes 8 ports of t2 (h2) and 8 of t3 (h3): each
    # sensor sees 8, fewer than the threshold of 12; together they see 16.
    svc.vm_add("scan1", "h1", "ls-teal", "10.2.0.31/24")
    try:
        for target in ("10.2.0.12", "10.2.0.13"):
            for port in range(9100, 9108):
                svc.tcp_try("scan1", target, port, timeout=0.3)
    finally:
        svc.vm_del("scan1")

    def alerts():
        out = mbxctl(svc, "ids-alerts", "ids-teal")
        return [line for line in out.splitlines() if "port-scan" in line]

    wait_until(lambda: alerts(), timeout=10, what="a port-scan alert in IDS_Alert")
    time.sleep(2)
    [line] = alerts()
    fields = line.split()
    # Raised when the union first reached the threshold, from both sensors.
    assert fields[2] == "10.2.0.31" and int(fields[4]) >= SCAN_THRESHOLD, line
    assert fields[5] == "h2,h3", line
    raised = {h: [a for a in appctl_json(svc, h, "ids/json") if a["kind"] == "port-scan"]
              for h in ("h1", "h2", "h3")}
    assert sorted(len(v) for v in raised.values()) == [0, 0, 1], raised
    # Scan counts are shared state: both sensors' hosts publish theirs.
    rows = appctl_json(svc, "h1", "shared/json")["rows"]
    scan_hosts = {r["host"] for r in rows if r["service"] == "ids-scan"
                  and "10.2.0.31" in r["value"]}
    assert {"h2", "h3"} <= scan_hosts


# ------------------------------------------------------------ restart

def test_mbxd_kill9_keeps_snat_connections_and_their_ports(svc, tmp_path):
    """Nothing of a connection lives only in mbxd: no state file, and a
    SNAT connection keeps flowing and keeps its port through a kill -9."""
    report = str(tmp_path / "snat-restart.json")
    client = svc.spawn("t1", [PY, "-m", "lab.probe", "client", "--to", L.EXT_SERVER_IP,
                              "--port", "80", "--interval-ms", "20", "--duration", "12",
                              "--out", report], report + ".log")

    def received():
        try:
            with open(report) as f:
                return json.load(f).get("received", 0)
        except (OSError, ValueError):
            return 0
    try:
        wait_until(lambda: received() >= 20, 10, what="the SNAT connection is up")
        [before] = [c for c in appctl_json(svc, "h1", "conn/json", "t1")
                    if c["xlate"] and c["xlate"]["kind"] == "snat"
                    and c["state"] == "established"]
        svc.mbxd_stop("h1", signal.SIGKILL)
        start = received()
        try:
            wait_until(lambda: received() >= start + 30, 10, what="echoes while mbxd is down")
        finally:
            svc.mbxd_start("h1")
        def seen_again():
            try:
                conns = json.loads(svc.mbxd_appctl("h1", "conn/json", "t1", check=False))
            except ValueError:          # not answering yet
                return False
            return any(c["xlate"] == before["xlate"] for c in conns)
        wait_until(seen_again, 15, interval=0.2, what="mbxd to see it again")
        start = received()
        wait_until(lambda: received() >= start + 30, 10, what="echoes after the restart")
    finally:
        client.wait(30)
        svc.forget_pid(client.pid)
    with open(report) as f:
        assert json.load(f)["error"] is None
    try_many(svc, "t1", L.EXT_SERVER_IP, 80, 3)


# ------------------------------------------------------------ chain + offload

def test_chain_is_offloaded_once_connections_are_established(svc, tmp_path):
    """Through the chain to the internet (firewall + SNAT) and to the VIP
    (firewall + load balancer): after the handshake the daemon sees none of
    the exchanges, OVS carries them on the daemon's rewrite flows."""
    for dst in (L.EXT_SERVER_IP, VIP):
        report = str(tmp_path / ("offload-%s.json" % dst))
        flows_before = svc.service_flow_packets("h1")
        client = svc.spawn("t1", [PY, "-m", "lab.probe", "client", "--to", dst, "--port",
                                  "80", "--interval-ms", "10", "--duration", "8",
                                  "--out", report], report + ".log")

        def progress(n):
            try:
                with open(report) as f:
                    return json.load(f).get("received", 0) >= n
            except (OSError, ValueError):
                return False

        wait_until(lambda: progress(20), timeout=10, what="the connection is up")
        time.sleep(1.0)             # closes of earlier connections have settled
        # (The daemon's frame counter also counts health-probe answers:
        # count the packets it passed on instead.)
        before = svc.mbxd_stats("h1")["passed"]
        wait_until(lambda: progress(170), timeout=15, what="150 more exchanges")
        time.sleep(1.5)             # OVS folds datapath counters into flows every ~0.5 s
        seen = svc.mbxd_stats("h1")["passed"] - before
        carried = svc.service_flow_packets("h1") - flows_before
        dump = svc.ofctl("h1", "dump-flows", "cookie=%#x/%#x" % (P.DAEMON_COOKIE,
                                                                 P.COOKIE_MASK))
        client.wait(20)
        svc.forget_pid(client.pid)
        with open(report) as f:
            rep = json.load(f)
        assert rep["error"] is None, rep
        assert seen == 0, (dst, seen)
        assert carried >= 2 * 150, (dst, carried, flows_before, dump)
