"""Connection-state migration in a real lab (its own, prefix ``mbxtm``).

The scenario of lab.migscenario: VM mv (10.0.0.10) has long-lived TCP
connections through tenant red's chain firewall -> load balancer -> SNAT:
into mv on 7000 (allowed only because the firewall saw them start), out to
peer:7001, to the internet server through SNAT (ports no other host can
re-derive), and to a VIP with three backends.  Every check is what a user
observes: the connections' echoes, the SNAT port and backend each keeps,
the Migration rows, and what ``ovs-appctl -t mbxd`` reports.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab import ctbaseline as CT
from lab.lab import Lab
from middlebox.dataplane import MARK_IN
from middlebox.migration import PROTOCOL_VERSION
from lab.migscenario import Scenario
from lab.sh import LabError, wait_until

# Its own lab, beside the suite's (conftest.py: the same controllers, and a
# prefix and run directory derived from the suite's).
PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "m"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-mig"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
HOSTS = ["h1", "h2", "h3"]
PEER_TOOL = os.path.join(os.path.dirname(__file__), "migpeer.py")


@pytest.fixture(scope="module")
def mig():
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=lambda *_: None)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    sc = Scenario(lab, RUNDIR)
    try:
        lab.up(HOSTS, log=lambda *_: None, controllers=CONTROLLERS)
        sc.build(HOSTS)
        proc = lab.mbxctl("global-set", "migration-wait-ms=1500")
        assert proc.returncode == 0, proc.stderr
        yield lab, sc
    finally:
        sc.stop()
        lab.down(log=lambda *_: None)


def where(lab, vm):
    return lab.state["vms"][vm]["host"]


def fresh(sc, per_kind=2):
    sc.stop()
    sc.open(per_kind=per_kind)
    return sc.snapshot()


def assert_all_alive(sc, since=None, replies=25):
    """Every connection carries on: ``replies`` more echoes than ``since``
    (default: now, right after a move, so echoes from before it never
    count)."""
    dead = sc.stalled(since, replies)
    assert not dead, dead


def test_connections_survive_both_paths_both_directions_repeatedly(mig):
    lab, sc = mig
    before = fresh(sc)
    assert len(before) == 10
    kept = sc.translations(where(lab, "mv"))
    assert sorted(k for k, _ in kept.values()) == ["dnat", "dnat", "lb", "lb", "snat", "snat"]
    moves = [("h2", True), ("h1", False), ("h3", True), ("h2", False), ("h1", True)]
    for to, notify in moves:
        source = where(lab, "mv")
        lab.migrate("mv", to, notify=notify)
        row = lab.migration_row("mv")
        assert (row["source"], row["destination"], row["status"]) == (source, to, "done")
        assert row["path"] == ("announced" if notify else "unannounced")
        assert row["stats"]["entries"] == 10, row
        assert_all_alive(sc)
        # Each connection kept its SNAT port, its backend, its DNAT address.
        assert sc.translations(where(lab, "mv")) == kept, (to, notify)
    # The daemon of a host mv left holds none of its connections any more.
    for host in ("h2", "h3"):
        assert json.loads(lab.mbxd_appctl(host, "conn/json", "mv")) == []


def test_migration_show_prints_the_timeline(mig):
    lab, _ = mig
    proc = lab.mbxctl("migration-show", "mv")
    assert proc.returncode == 0, proc.stderr
    for phase in ("begun", "snapshot", "stunned", "final", "imported", "done"):
        assert phase in proc.stdout, proc.stdout
    listing = lab.mbxctl("migration-list", "mv").stdout
    assert "unannounced" in listing and "announced" in listing


def test_unannounced_move_drops_no_packet_while_the_state_is_late(mig):
    """The source's daemon is paused during the move: the destination holds
    the VM's mid-connection packets, then passes them after the import."""
    lab, sc = mig
    fresh(sc)
    src, dst = where(lab, "mv"), "h2" if where(lab, "mv") != "h2" else "h3"
    invalid_before = lab.mbxd_stats(dst)["invalid"]
    pid = lab.state["pids"]["%s/mbxd" % src]
    os.kill(pid, signal.SIGSTOP)
    try:
        lab.migrate("mv", dst, notify=False, wait_state=False)
        # packets arrive; no state yet: the destination holds them
        wait_until(lambda: lab.mbxd_stats(dst)["held"] > 0, timeout=15,
                   what="the destination to hold the VM's packets")
    finally:
        os.kill(pid, signal.SIGCONT)
    row = lab.wait_migration("mv", ("done", "fallback"), timeout=10)
    assert row["status"] == "done", row
    assert row["stats"]["buffered"] > 0
    assert_all_alive(sc)
    assert lab.mbxd_stats(dst)["invalid"] == invalid_before


def alive_kinds(sc, replies=25):
    """The kinds of connection every one of which carries on after a move."""
    since = sc.snapshot()
    now = sc.wait_flowing(since, replies=replies, timeout=10)
    dead = {n.split("#")[0] for n, c in now.items() if c["error"] is not None
            or c["received"] < since[n]["received"] + replies}
    return {n.split("#")[0] for n in now} - dead


def set_options(lab, mb, *options):
    proc = lab.mbxctl("--wait=hv", "--timeout=20", "mb-set", mb, *options)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("notify", [True, False])
def test_lazy_import_commits_each_connection_at_its_first_packet(mig, notify):
    lab, sc = mig
    set_options(lab, "fw-red", "migration-import=lazy")
    try:
        fresh(sc)
        kept = sc.translations(where(lab, "mv"))
        dst = next(h for h in HOSTS if h != where(lab, "mv"))
        lab.migrate("mv", dst, notify=notify)
        assert lab.migration_row("mv")["status"] == "done"
        assert_all_alive(sc)
        assert sc.translations(dst) == kept
        # The records no first packet claimed are committed in the
        # background after the move (a chunk per switch barrier): wait for
        # the destination to have committed every connection lazily.
        def counters():
            return json.loads(lab.mbxd_appctl(dst, "migration/json"))["counters"]
        try:
            wait_until(lambda: counters()["lazy_commits"] >= 10, 10, interval=0.1,
                       what="10 lazy commits on %s" % dst)
        except LabError:
            pass                        # the assertion below says what there is
        assert counters()["lazy_commits"] >= 10, counters()
    finally:
        set_options(lab, "fw-red", "migration-import=bulk")


def test_gather_with_service_review_leaves_what_todays_rules_refuse(mig):
    """datapath+review: the connections into mv on 7000 were allowed when
    they opened; the rule that allowed them is gone before the move, so the
    service keeps them out of the transfer.  Everything else moves."""
    lab, sc = mig
    set_options(lab, "fw-red", "migration-gather=datapath+review")
    rule = ("fw-red", "to-vm", "100")
    try:
        fresh(sc)
        proc = lab.mbxctl("--wait=hv", "fw-del", *rule)
        assert proc.returncode == 0, proc.stderr
        lab.migrate("mv", next(h for h in HOSTS if h != where(lab, "mv")), notify=True)
        row = lab.migration_row("mv")
        assert row["status"] == "done" and row["stats"]["entries"] == 6, row
        assert alive_kinds(sc) == {"fw-out", "snat", "lb"}
    finally:
        lab.mbxctl_ok("fw-add", "fw-red", "100", "to-vm",
                      "proto=tcp dst=10.0.0.10 dport=%d" % CT.FW_IN_PORT, "allow")
        set_options(lab, "fw-red", "migration-gather=datapath")


def test_gather_from_the_service_moves_what_the_service_knows(mig):
    """service: only what mbxd itself decided or checked travels.  With
    check=every-packet it checked every firewall connection, and with a
    round-robin VIP it picked every backend: those survive.  An SNAT port or
    a DNAT the switch chose alone is not the service's: those are lost."""
    lab, sc = mig
    set_options(lab, "fw-red", "migration-gather=service", "check=every-packet")
    lab.mbxctl_ok("lb-set", "lb-red", "%s:%d" % (CT.VIP, CT.VIP_PORT), "--algorithm",
                  "round-robin")
    try:
        fresh(sc)
        lab.migrate("mv", next(h for h in HOSTS if h != where(lab, "mv")), notify=True)
        assert lab.migration_row("mv")["status"] == "done"
        assert alive_kinds(sc) == {"fw-in", "fw-out", "lb"}
    finally:
        lab.mbxctl_ok("lb-set", "lb-red", "%s:%d" % (CT.VIP, CT.VIP_PORT), "--algorithm",
                      "hash")
        set_options(lab, "fw-red", "migration-gather=datapath", "check=offload")


def test_two_vms_migrate_at_once(mig):
    lab, sc = mig
    fresh(sc)
    moves = {"mv": "h1" if where(lab, "mv") != "h1" else "h2",
             "peer": "h2" if where(lab, "peer") != "h2" else "h1"}
    errors = []

    def move(vm, to):
        try:
            lab.migrate(vm, to, notify=True)
        except Exception as err:        # noqa: BLE001 - reported below
            errors.append("%s: %s" % (vm, err))
    threads = [threading.Thread(target=move, args=item) for item in moves.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for vm, to in moves.items():
        row = lab.migration_row(vm)
        assert (row["destination"], row["status"]) == (to, "done")
    assert_all_alive(sc)


def test_destination_dying_mid_transfer_aborts_and_the_vm_keeps_working(mig):
    lab, sc = mig
    snap = fresh(sc)
    src = where(lab, "mv")
    dst = next(h for h in HOSTS if h != src)
    lab.sb().migrate_begin("mv", dst).execute(check_error=True)
    wait_until(lambda: lab.migration_row("mv")["status"] == "streaming", 10,
               what="the snapshot to go out")
    lab.mbxd_stop(dst, signal.SIGKILL)
    try:
        row = lab.wait_migration("mv", ("aborted",), timeout=10)
        assert dst in row["outcome"], row
        # Never moved: the VM and all its connections carry on at the source.
        assert_all_alive(sc)
        held = json.loads(lab.mbxd_appctl(src, "conn/json", "mv"))
        ports = {p for c in held if c["state"] == "established"
                 for p in (c["vm_port"], c["peer_port"])}
        assert {c["local_port"] for c in snap.values()} <= ports
    finally:
        lab.mbxd_start(dst)
    # A later migration to the restarted host works (once it listens: its
    # daemon answers ovs-appctl only after its channel is up).
    wait_until(lambda: lab.mbxd_appctl(dst, "stats", check=False), 15, interval=0.1,
               what="the restarted mbxd on %s to answer" % dst)
    lab.migrate("mv", dst, notify=True)
    assert lab.migration_row("mv")["status"] == "done"
    assert_all_alive(sc, sc.snapshot())


def test_source_dying_in_an_unannounced_move_falls_back_after_the_bound(mig):
    lab, sc = mig
    fresh(sc)
    src = where(lab, "mv")
    dst = next(h for h in HOSTS if h != src)
    lab.mbxd_stop(src, signal.SIGKILL)
    try:
        t0 = time.monotonic()
        lab.migrate("mv", dst, notify=False, wait_state=False)
        row = lab.wait_migration("mv", ("fallback", "done"), timeout=10)
        waited = time.monotonic() - t0
        assert row["status"] == "fallback", row
        assert src in row["outcome"] and "1500 ms" in row["outcome"], row
        assert 1.0 < waited < 6.0
        assert "fallback" in lab.mbxd_appctl(dst, "migration/list")
    finally:
        lab.mbxd_start(src)
    # Without its state the firewall refuses what it did not see start.
    time.sleep(5.5)
    dead = {n for n, c in sc.snapshot().items() if c["error"]}
    assert {"fw-in", "snat"} <= {n.split("#")[0] for n in dead}


def test_without_state_migration_connections_break(mig):
    """The control: the same scenario and move with every daemon running
    --no-migration loses the connections the middleboxes decided."""
    lab, sc = mig
    for host in HOSTS:
        lab.mbxd_stop(host)
        lab.mbxd_start(host, ["--no-migration"])
    try:
        time.sleep(2.0)
        fresh(sc)
        src = where(lab, "mv")
        lab.migrate("mv", next(h for h in HOSTS if h != src), notify=False,
                    wait_state=False)
        time.sleep(6.0)
        final = sc.snapshot()
        broken = {n.split("#")[0] for n, c in final.items() if c["error"]}
        assert broken == {"fw-in", "fw-out", "snat", "lb", "dnat"}, final
    finally:
        # Nobody handled the unannounced migration: end it.
        lab.sb().migrate_abort("mv", if_exists=True).execute(check_error=True)
        for host in HOSTS:
            lab.mbxd_stop(host)
            lab.mbxd_start(host)
        time.sleep(2.0)


# ------------------------------------------------------------ the channel

def peer_run(lab, host, script):
    path = os.path.join(RUNDIR, "peer-%s.json" % time.monotonic_ns())
    with open(path, "w") as f:
        json.dump(script, f)
    proc = subprocess.run(["ip", "netns", "exec", lab.host_ns(host), sys.executable,
                           PEER_TOOL, path], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fake_record(vm="b1", ip="10.0.0.31"):
    """A connection 10.0.0.99:5555 -> ``ip``:8080 the peer opened, as a
    daemon would send it (migpeer encodes it)."""
    return {"chain": ["fw-red", "lb-red", "nat-red"], "role": "vm", "service": 0,
            "conn": [6, "10.0.0.99", 5555, ip, 8080, ip, 8080, "10.0.0.99", 5555],
            "mark": 1 | MARK_IN, "label": 0, "state": "ESTABLISHED"}


@pytest.fixture
def forged(mig):
    """An announced migration of b1 from h1 to h3 with h1's daemon stopped:
    the test speaks for h1 with its certificate (or another one)."""
    lab, _ = mig
    lab.mbxd_stop("h1")
    rows = []

    def new_row():
        uuid = lab.sb().migration_create("b1", "h1", "h3", "announced").execute(
            check_error=True)
        rows.append(uuid)
        return lab.migration_row("b1")
    try:
        yield lab, new_row
    finally:
        lab.sb().migrate_abort("b1", if_exists=True).execute(check_error=True)
        lab.mbxd_start("h1")
        time.sleep(1.0)


def script(lab, row, messages, host="h1", cert_host="h1", pki=None, **kw):
    pki = pki or lab.pki_dir
    out = {"host": host, "ca": os.path.join(pki, "ca.pem"),
           "cert": os.path.join(pki, cert_host + ".pem"),
           "key": os.path.join(pki, cert_host + ".key"),
           "address": "ssl:%s:6650" % lab.state["hosts"]["h3"]["mgmt_ip"],
           "peer": "h3", "messages": messages}
    out.update(kw)
    return out


def transfer(row, records, digest="auto", count=None):
    msgs = [{"type": "hello", "version": PROTOCOL_VERSION, "migration": row["uuid"], "token": row["token"],
             "vm": row["vm"], "source": "h1", "destination": "h3"},
            {"type": "state", "migration": row["uuid"], "seq": 1, "kind": "snapshot",
             "records": records, "removed": []},
            {"type": "final", "migration": row["uuid"], "seq": 2, "digest": digest}]
    if count is not None:
        msgs[2]["count"] = count
    return msgs


def b1_at_h3(lab):
    return [c for c in json.loads(lab.mbxd_appctl("h3", "conn/json", "b1"))
            if c["peer_ip"] == "10.0.0.99"]


def test_a_transfer_is_accepted_once_from_the_named_peer_only(forged, tmp_path):
    lab, new_row = forged
    from middlebox import pki
    row = new_row()
    # Unauthenticated: a certificate from another CA never gets a session.
    pki.init_ca(str(tmp_path), name="rogue CA")
    pki.issue_host(str(tmp_path), "h1")
    out = peer_run(lab, "h1", script(lab, row, transfer(row, [fake_record()]),
                                     pki=str(tmp_path)))
    assert not out["connected"] and out["refused"], out
    # The wrong peer: h2's genuine certificate, for a migration from h1.  No
    # migration to h3 names h2: its session is cut past the handshake
    # (after migchan.ADMIT_WAIT, 3 s, for a row to name it), before it is
    # heard, without a reply.
    log = os.path.join(lab.host_dir("h3"), "mbxd.log")
    start = os.path.getsize(log)
    out = peer_run(lab, "h2", script(lab, row, transfer(row, [fake_record()]),
                                     host="h2", cert_host="h2", wait=8))
    assert out["replies"] == [] and (out["closed"] or out["refused"]), out
    with open(log) as f:
        f.seek(start)
        assert "migration session from h2 (" in f.read()
    assert b1_at_h3(lab) == []
    # Truncated: the connection ends before "final".
    row = (lab.sb().migrate_abort("b1").execute(check_error=True), new_row())[1]
    out = peer_run(lab, "h1", script(lab, row, transfer(row, [fake_record()])[:2],
                                     close_early=True))
    assert out["connected"] and not any(r["type"] == "ack" for r in out["replies"])
    assert b1_at_h3(lab) == []
    # Corrupt: the final digest does not match what was staged.
    row = (lab.sb().migrate_abort("b1").execute(check_error=True), new_row())[1]
    out = peer_run(lab, "h1", script(lab, row, transfer(row, [fake_record()],
                                                        digest="0" * 64)))
    assert out["replies"][-1]["type"] == "nack" and "corrupt" in out["replies"][-1]["error"]
    assert b1_at_h3(lab) == []
    # Into another VM's state: refused whole, even with one good record.
    row = (lab.sb().migrate_abort("b1").execute(check_error=True), new_row())[1]
    out = peer_run(lab, "h1", script(lab, row, transfer(
        row, [fake_record(), fake_record(vm="b2", ip="10.0.0.32")])))
    assert out["replies"][-1]["type"] == "nack" and "b2" in out["replies"][-1]["error"]
    assert b1_at_h3(lab) == []
    # A good transfer lands; the same one again is a replay.
    row = (lab.sb().migrate_abort("b1").execute(check_error=True), new_row())[1]
    good = script(lab, row, transfer(row, [fake_record()]))
    out = peer_run(lab, "h1", good)
    assert out["replies"][-1]["type"] == "ack" and out["replies"][-1]["entries"] == 1, out
    assert len(b1_at_h3(lab)) == 1
    assert lab.wait_migration("b1", ("imported",), timeout=5)["stats"]["entries"] == 1
    out = peer_run(lab, "h1", good)
    assert out["replies"][-1]["type"] == "nack" and "replayed" in out["replies"][-1]["error"]
    assert len(b1_at_h3(lab)) == 1
