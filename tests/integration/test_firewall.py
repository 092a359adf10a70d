"""The distributed stateful firewall in the real lab.

Two tenants with the same subnet (green, yellow), each with its own firewall,
VMs on h1 and h2 and none on h3.  Every check is what a user observes: a TCP
connection that completes, times out (dropped) or is refused (rejected), the
daemon's own counters through ``ovs-appctl -t mbxd``, and the cache flows'
counters in OVS.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lab.probe import Probe
from lab.sh import wait_until
from ovsdb.server import pid_alive
from ryu_apps import pipeline as P

PORTS = "7000,7001,7002,7003,7005"
GREEN = {"g1": ("h1", "10.1.0.11"), "g2": ("h2", "10.1.0.12"), "g3": ("h1", "10.1.0.13")}
YELLOW = {"y1": ("h1", "10.1.0.11"), "y2": ("h2", "10.1.0.12")}


def mbxctl(lab, *args):
    proc = lab.mbxctl("--wait=hv", "--timeout=20", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def ip(vm):
    return {**GREEN, **YELLOW}[vm][1]


def attempt(lab, src, dst, port, timeout=1.0):
    out = lab.tcp_try(src, ip(dst), port, timeout=timeout)
    for verdict in ("ok", "refused", "timeout"):
        if out[verdict]:
            return verdict
    return out["last_error"]


@pytest.fixture(scope="module")
def fw(lab):
    mbxctl(lab, "ls-add", "ls-green", "--vni", "2001", "--subnet", "10.1.0.0/24",
           "--tenant", "green",
           "--", "ls-add", "ls-yellow", "--vni", "2002", "--subnet", "10.1.0.0/24",
           "--tenant", "yellow")
    mbxctl(lab, "as-add", "green-trusted", "green", "10.1.0.13",
           "--", "mb-add", "fw-green", "ls-green", "--default", "deny",
           "--", "fw-add", "fw-green", "100", "from-vm", "any", "allow",
           "--", "fw-add", "fw-green", "100", "to-vm", "proto=tcp dport=7000", "allow",
           "--", "fw-add", "fw-green", "110", "to-vm", "proto=tcp dport=7002", "reject",
           "--", "fw-add", "fw-green", "120", "to-vm", "proto=tcp src=$green-trusted dport=7003",
           "allow",
           "--", "fw-add", "fw-green", "130", "to-vm", "proto=tcp dport=7005", "allow",
           "--", "fw-add", "fw-green", "500", "to-vm", "proto=tcp dport=7005", "deny",
           "--tier", "provider",
           "--", "steer-add", "ls-green", "100", "any", "fw-green")
    mbxctl(lab, "mb-add", "fw-yellow", "ls-yellow", "--default", "deny",
           "--", "fw-add", "fw-yellow", "100", "from-vm", "any", "allow",
           "--", "fw-add", "fw-yellow", "100", "to-vm", "proto=tcp dport=7001", "allow",
           "--", "steer-add", "ls-yellow", "100", "any", "fw-yellow")
    servers = []
    for switch, vms in (("ls-green", GREEN), ("ls-yellow", YELLOW)):
        for name, (host, addr) in vms.items():
            lab.vm_add(name, host, switch, addr + "/24")
            servers.append(lab.spawn(name, [sys.executable, "-m", "lab.probe", "serve",
                                            "--port", PORTS],
                                     os.path.join(lab.rundir, "serve-%s.log" % name)))
    time.sleep(0.5)
    yield lab
    for proc in servers:
        proc.terminate()
        proc.wait(10)
        lab.forget_pid(proc.pid)
    for name in list(GREEN) + list(YELLOW):
        lab.vm_del(name)
    # one transaction: the rules that use the address set go with their middlebox
    mbxctl(lab, "steer-del", "ls-green", "--", "steer-del", "ls-yellow",
           "--", "mb-del", "fw-green", "--", "mb-del", "fw-yellow",
           "--", "as-del", "green-trusted", "--", "ls-del", "ls-green", "--", "ls-del", "ls-yellow")


def test_allowed_denied_and_rejected_across_hosts(fw):
    assert attempt(fw, "g1", "g2", 7000) == "ok"          # to-vm allow
    assert attempt(fw, "g1", "g2", 7001) == "timeout"     # default deny: dropped
    assert attempt(fw, "g1", "g2", 7002) == "refused"     # reject: a RST from the firewall
    assert attempt(fw, "g2", "g1", 7000) == "ok"


def test_unsolicited_inbound_is_denied_while_replies_pass(fw):
    # g1 -> g2:7000 is allowed; the replies into g1 (source port 7000) are not
    # allowed by any to-vm rule of g1, yet pass: they belong to g1's connection.
    assert attempt(fw, "g1", "g2", 7000) == "ok"
    # nothing lets g2 open a connection to g1's port 7001
    assert attempt(fw, "g2", "g1", 7001) == "timeout"
    conns = fw.mbxd_appctl("h1", "conn/list", "g1")
    assert re.search(r"10\.1\.0\.11:\d+ -> 10\.1\.0\.12:7000 .*origin=out", conns), conns


def test_provider_tier_is_evaluated_first_unless_told_otherwise(fw):
    assert attempt(fw, "g1", "g2", 7005) == "timeout"     # provider deny beats tenant allow
    mbxctl(fw, "mb-set", "fw-green", "tier-order=tenant-first")
    try:
        wait_until(lambda: attempt(fw, "g1", "g2", 7005) == "ok", 10,
                   interval=0.2, what="tenant tier first")
    finally:
        mbxctl(fw, "mb-set", "fw-green", "tier-order=provider-first")


@pytest.mark.parametrize("mode", ["both", "source", "destination"])
def test_same_host_modes(fw, mode):
    mbxctl(fw, "mb-set", "fw-green", "same-host=%s" % mode)
    time.sleep(0.3)
    try:
        before = fw.mbxd_stats("h1")
        assert attempt(fw, "g3", "g1", 7000) == "ok"
        after = fw.mbxd_stats("h1")
        # one decision per stage that checks the connection's first packet
        decided = after["decisions_allow"] - before["decisions_allow"]
        assert decided == (2 if mode == "both" else 1), (mode, decided)
        assert attempt(fw, "g3", "g1", 7001) == "timeout"
        # either way both VMs' tables hold the allowed connection
        for vm in ("g1", "g3"):
            assert ":7000" in fw.mbxd_appctl("h1", "conn/list", vm)
    finally:
        mbxctl(fw, "mb-set", "fw-green", "same-host=both")


def test_established_connection_is_forwarded_by_ovs_alone(fw, tmp_path):
    probe = Probe(fw, "g1", "g2", ip("g2"), 7000, str(tmp_path / "offload.json"), duration=60)
    try:
        probe.wait(lambda r: r["received"] >= 50, 15, "50 replies")
        frames = {h: fw.mbxd_stats(h)["frames"] for h in ("h1", "h2")}
        cached = {h: fw.service_flow_packets(h) for h in ("h1", "h2")}
        start = probe.read()["received"]
        probe.wait(lambda r: r["received"] >= start + 50, 15, "50 more replies")
        for host in ("h1", "h2"):
            assert fw.mbxd_stats(host)["frames"] == frames[host], host   # Python saw nothing
            # (OVS folds datapath counters into its flows about once a second)
            wait_until(lambda: fw.service_flow_packets(host) >= cached[host] + 50, 5,
                       interval=0.2, what="cache flow counters on %s to rise" % host)
        listing = fw.mbxd_appctl("h1", "conn/list", "g1")
        assert re.search(r":7000 .*state=established .*offloaded=yes", listing), listing
    finally:
        report = probe.stop()
    assert report["error"] is None, report


def test_tenants_with_the_same_addresses_have_their_own_firewalls(fw):
    assert attempt(fw, "y1", "y2", 7001) == "ok"
    assert attempt(fw, "y1", "y2", 7000) == "timeout"
    assert attempt(fw, "g1", "g2", 7000) == "ok"
    assert attempt(fw, "g1", "g2", 7001) == "timeout"


def test_address_set_change_takes_effect_on_live_hosts(fw):
    assert attempt(fw, "g3", "g2", 7003) == "ok"          # g3 is trusted
    assert attempt(fw, "g1", "g2", 7003) == "timeout"
    mbxctl(fw, "as-set", "green-trusted", "10.1.0.11", "10.1.0.13")
    try:
        wait_until(lambda: attempt(fw, "g1", "g2", 7003) == "ok", 10, interval=0.2,
                   what="g1 to become trusted")
    finally:
        mbxctl(fw, "as-set", "green-trusted", "10.1.0.13")
    wait_until(lambda: attempt(fw, "g1", "g2", 7003) == "timeout", 10, interval=0.2,
               what="g1 to be untrusted again")


def test_wait_hv_returns_once_every_daemon_applied_the_rule(fw):
    """``--wait=hv`` covers mbxd's service stages, not only the controllers'
    flows (which a rule does not change): right after it returns, a new
    connection already meets the new rule, both ways, and every host's
    daemon reports the generation (``Chassis_Private.mb_cfg``), h3 too,
    which has no slice of the tenant."""
    assert attempt(fw, "g1", "g2", 7001) == "timeout"
    for _ in range(3):
        try:
            mbxctl(fw, "fw-add", "fw-green", "105", "to-vm", "proto=tcp dport=7001", "allow")
            assert attempt(fw, "g1", "g2", 7001) == "ok"
            assert "proto=tcp dport=7001" in fw.mbxd_appctl("h2", "rules/show", "fw-green")
            nb_cfg = fw.nb().snapshot().nb_cfg
            hosts = fw.sb().snapshot().hosts
            assert {h: hosts[h].mb_cfg >= nb_cfg for h in ("h1", "h2", "h3")} == {
                "h1": True, "h2": True, "h3": True}, hosts
        finally:
            mbxctl(fw, "fw-del", "fw-green", "to-vm", "105")
        assert attempt(fw, "g1", "g2", 7001) == "timeout"
        assert "dport=7001" not in fw.mbxd_appctl("h2", "rules/show", "fw-green")
    listing = fw.mbxctl("host-list").stdout.splitlines()
    assert listing[0].split()[3:5] == ["NB_CFG", "MB_CFG"]
    assert all(line.split()[4] != "-" for line in listing[1:]), listing


def test_a_daemon_that_has_not_applied_a_change_holds_wait_hv_back(fw):
    """mbxd on h2 paused: the controllers' flows are all acknowledged, but
    ``--wait=hv`` times out naming h2 and its daemon's generation (the
    change stays committed); once the daemon runs again, ``--wait=hv``
    returns and the rule is in force."""
    pid = fw.state["pids"]["h2/mbxd"]
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = fw.mbxctl("--wait=hv", "--timeout=2", "fw-add", "fw-green", "105", "to-vm",
                         "proto=tcp dport=7001", "allow")
        assert proc.returncode != 0
        assert "change committed, but timed out" in proc.stderr, proc.stderr
        behind = proc.stderr.split("behind: ")[1]
        assert re.fullmatch(r"h2 \(at \d+, mbxd at \d+\)\n?", behind), proc.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        mbxctl(fw, "sync")
        assert attempt(fw, "g1", "g2", 7001) == "ok"
    finally:
        mbxctl(fw, "fw-del", "fw-green", "to-vm", "105")
    assert attempt(fw, "g1", "g2", 7001) == "timeout"


def test_host_without_a_tenants_vms_holds_none_of_its_config(fw):
    held = fw.mbxd_appctl("h3", "config/show")
    for name in ("green", "yellow", "fw-green", "fw-yellow", "ls-green", "g1", "y1",
                 "10.1.0.13"):
        assert name not in held, (name, held)
    held_h1 = fw.mbxd_appctl("h1", "config/show")
    for name in ("fw-green", "fw-yellow", "ls-green", "green-trusted", "g1", "y1"):
        assert name in held_h1, (name, held_h1)
    assert "fw-green" not in fw.mbxd_appctl("h3", "rules/show")


def test_mbxd_kill9_and_restart_keeps_established_connections(fw, tmp_path):
    probe = Probe(fw, "g1", "g2", ip("g2"), 7000, str(tmp_path / "restart.json"), duration=60)
    try:
        probe.wait(lambda r: r["received"] >= 30, 15, "30 replies")
        for host in ("h1", "h2"):
            fw.mbxd_stop(host, signal.SIGKILL)
        start = probe.read()["received"]
        probe.wait(lambda r: r["received"] >= start + 30, 15, "replies while mbxd is down")
        for host in ("h1", "h2"):
            fw.mbxd_start(host)
        wait_until(lambda: ":7000" in fw.mbxd_appctl("h1", "conn/list", "g1", check=False),
                   15, interval=0.2, what="mbxd on h1 to restore the connection")
        start = probe.read()["received"]
        probe.wait(lambda r: r["received"] >= start + 30, 15, "replies after the restart")
        assert "state=established" in fw.mbxd_appctl("h2", "conn/list", "g2")
        # and new connections are judged again
        assert attempt(fw, "g1", "g2", 7001) == "timeout"
        assert attempt(fw, "g1", "g2", 7000) == "ok"
    finally:
        report = probe.stop()
    assert report["error"] is None, report


def test_malformed_frames_on_the_middlebox_port_are_counted_not_fatal(fw):
    pid = fw.state["pids"]["h1/mbxd"]
    tag = int(re.search(r"tag=(\d+).*fw-green", fw.mbxd_appctl("h1", "slice/list")).group(1))
    before = fw.mbxd_stats("h1")
    eth = "020000000099" "020000000011"
    vlan = "8100%04x" % tag
    frames = [
        eth + vlan + "0800" + "45000014",                         # truncated IPv4 header
        eth + vlan + "0800" + "4f" + "00" * 30,                   # IHL beyond the frame
        eth + vlan + "0800" + "450000280000000040060000" + "0a01000b0a01000c" + "0000",  # short TCP
        eth + vlan + "0800" + "4500ffff00000000400600000a01000b0a01000c" + "00" * 20,     # bad length
        eth + "8100%04x" % 4000 + "0800" + "450000280000400040060000" "0a01000b0a01000c"
        "9c401b58" "00000000" "00000000" "50020000" "00000000",   # good TCP SYN, unknown tag
        eth + vlan + "88cc" + "00" * 40,                          # not IP
        eth + vlan + "0800",                                      # nothing after the type
    ]
    for frame in frames:
        fw.ofctl("h1", "packet-out", "in_port=controller packet=%s actions=output:%s"
                 % (frame, P.MIDDLEBOX_PORT))
    wait_until(lambda: fw.mbxd_stats("h1")["malformed"] >= before["malformed"] + 4, 5,
               interval=0.1, what="malformed frames counted")
    after = fw.mbxd_stats("h1")
    assert after["unknown_tag"] >= before["unknown_tag"] + 1
    assert after["non_ip"] >= before["non_ip"] + 1
    assert pid_alive(pid)
    assert attempt(fw, "g1", "g2", 7000) == "ok"


def idle_echoes(lab, path, idle_s):
    """Two echoes on one connection g1 -> g2:7000, ``idle_s`` seconds apart;
    the probe's report (``error`` None: the second came back)."""
    proc = lab.spawn("g1", [sys.executable, "-m", "lab.probe", "client", "--to", ip("g2"),
                            "--port", "7000", "--interval-ms", str(int(idle_s * 1000)),
                            "--duration", str(idle_s * 1.5), "--reply-timeout", "2",
                            "--out", path], path + ".log")
    proc.wait(idle_s * 1.5 + 15)
    lab.forget_pid(proc.pid)
    with open(path) as f:
        return json.load(f)


def test_idle_timeouts_are_the_zones_conntrack_timeout_policy(fw, tmp_path):
    mbxctl(fw, "mb-set", "fw-green", "timeout-tcp-established=2")
    try:
        # Visible where operators look: the host's OVSDB has the policy of
        # g2's zone, and the connection lives no longer idle than that.
        zone = re.search(r"vm g2 zone=(\d+)", fw.mbxd_appctl("h2", "ct-zone/list")).group(1)
        wait_until(lambda: "tcp_established=2" in fw.vsctl("h2", "list-zone-tp", "netdev"),
                   10, interval=0.2, what="the zone's timeout policy")
        assert "Zone:%s," % zone in fw.vsctl("h2", "list-zone-tp", "netdev").replace(" ", "")
        report = idle_echoes(fw, str(tmp_path / "short.json"), 4)
        assert report["received"] == 1 and report["error"], report
    finally:
        mbxctl(fw, "mb-set", "fw-green", "timeout-tcp-established=")
    # Without the option, the zone has no policy (Open vSwitch's defaults).
    wait_until(lambda: "tcp_established" not in fw.vsctl("h2", "list-zone-tp", "netdev"),
               10, interval=0.2, what="the policy to go")
    report = idle_echoes(fw, str(tmp_path / "long.json"), 4)
    assert report["received"] >= 2 and report["error"] is None, report


def test_prometheus_metrics_on_the_management_network(fw):
    from lab.lab import METRICS_PORT
    url = "http://%s:%d/metrics" % (fw.state["hosts"]["h1"]["mgmt_ip"], METRICS_PORT)
    fetch = ("import urllib.request,sys; "
             "sys.stdout.write(urllib.request.urlopen(%r, timeout=5).read().decode())" % url)
    assert attempt(fw, "g1", "g2", 7000) == "ok"
    time.sleep(1.2)                     # the page is rendered once a second
    proc = subprocess.run(["ip", "netns", "exec", fw.fabric_ns, sys.executable, "-c", fetch],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'mbxd_connections\{slice="\d+",middlebox="fw-green"\} \d+', proc.stdout)
    assert re.search(r'mbxd_decisions_total\{verdict="allow"\} [1-9]', proc.stdout)
