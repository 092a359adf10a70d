"""A real QEMU guest live-migrating between two lab hosts (its own lab,
prefix ``mbxtq``, two hosts, one database node).

VM mv of the migration scenario (lab.migscenario: tenant red, chain
firewall -> load balancer -> NAT) is a QEMU guest (``--kind qemu``); every
other VM is a namespace.  Its three long-lived TCP streams run on the
guest's own kernel: out to the internet server through SNAT, to the VIP of
three backends, and in from the internet client through DNAT, which the
default-deny firewall lets in only because it saw the connection start.
Each move is a real QEMU live migration over QMP (lab.qemu): announced
(QEMU's MIGRATION events drive begin/stun/done through hypervisor.adapter)
and unannounced (no event; the controller notices the port).  The reply
gap of each stream is printed and written to RUNDIR/qemu-gaps.json.  The
control: with every mbxd running ``--no-migration`` the SNAT stream
breaks.  A migration that fails leaves the guest running at its source.
"""

import json
import os
import signal

import pytest

from lab import ctbaseline as CT
from lab import guest, migscenario, qemu
from lab.lab import Lab
from lab.migscenario import Scenario
from lab.probe import Conns, survivors
from lab.sh import LabError, run, wait_until

PREFIX = os.environ.get("MBX_TEST_PREFIX", "mbxt") + "q"
RUNDIR = os.environ.get("MBX_TEST_RUNDIR", "/run/mbx-test") + "-qemu"
CONTROLLERS = os.environ.get("MBX_TEST_CONTROLLERS", "central")
HOSTS = ["h1", "h2"]
VM = CT.MIGRATING_VM
GAPS = os.path.join(RUNDIR, "qemu-gaps.json")
STREAMS = ("snat", "lb", "dnat")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def qlab():
    guest.image()               # built once (cached) before any lab exists
    Lab(prefix=PREFIX, rundir=RUNDIR).down(log=quiet)
    lab = Lab(prefix=PREFIX, rundir=RUNDIR)
    sc = Scenario(lab, RUNDIR, kinds={VM: "qemu"})
    try:
        lab.up(HOSTS, log=quiet, controllers=CONTROLLERS, db_cluster=1)
        sc.build(HOSTS)
        yield lab, sc
    finally:
        sc.stop()
        lab.down(log=quiet)


class Streams:
    """The guest's three streams: two from the guest (a ``conns`` probe in
    it), one into it from the internet client."""

    def __init__(self, lab, tag):
        kinds = migscenario.KINDS
        self.probes = [
            Conns(lab, VM, [(k, kinds[k][1], kinds[k][2], 1) for k in ("snat", "lb")],
                  os.path.join(RUNDIR, "q-%s-%s.json" % (tag, VM)), duration=240),
            Conns(lab, "xc", [("dnat", kinds["dnat"][1], kinds["dnat"][2], 1)],
                  os.path.join(RUNDIR, "q-%s-xc.json" % tag), duration=240, ext=True)]
        self.wait(lambda c: c["received"] >= 20, "all three streams to exchange 20 echoes")

    def snapshot(self):
        return {c["name"]: c for p in self.probes for c in p.read().get("connections", [])}

    def wait(self, pred, what, timeout=60):
        def check():
            now = self.snapshot()
            return now if set(now) == set(STREAMS) and all(
                pred(c) for c in now.values()) else None
        try:
            return wait_until(check, timeout, interval=0.2, what=what)
        except LabError as err:
            raise LabError("%s: %s" % (err, {n: (c["received"], c["error"])
                                             for n, c in self.snapshot().items()}))

    def carry_on(self, replies=30):
        """Every stream gets ``replies`` more echoes, none fails."""
        since = self.snapshot()
        return self.wait(lambda c: c["error"] is None and c["received"]
                         >= since[c["name"]]["received"] + replies,
                         "every stream to carry on after the move")

    def stop(self):
        finals = {}
        for probe in self.probes:
            finals.update({c["name"]: c for c in probe.stop().get("connections", [])})
        return finals


def guest_facts(lab):
    """Where the guest's QEMU runs (its namespace) and the guest kernel's
    boot id: the same boot id after a move is the same running guest."""
    pid = lab.state["pids"][qemu.qemu_key(VM)]
    ns = run(["ip", "netns", "identify", str(pid)]).strip()
    boot = lab.vm_read(VM, "/proc/sys/kernel/random/boot_id").strip()
    return ns, boot


def rows(lab):
    """The guest's Migration rows, for a failure's message."""
    return [(m.path, m.source, m.destination, m.status, m.outcome, m.timeline)
            for m in lab.sb().snapshot().migrations if m.vm == VM]


def record_gap(path, row, steps, finals):
    gaps = {}
    if os.path.exists(GAPS):
        with open(GAPS) as f:
            gaps = json.load(f)
    gaps[path] = {"reply_gap_ms": {n: c["max_gap_ms"] for n, c in sorted(finals.items())},
                  "entries": row["stats"].get("entries"),
                  "qemu_total_ms": steps.get("qemu_total_ms"),
                  "qemu_downtime_ms": steps.get("qemu_downtime_ms"),
                  "driver_total_ms": steps.get("total"), "steps_ms": steps}
    with open(GAPS, "w") as f:
        json.dump(gaps, f, indent=1, sort_keys=True)
    print("\nQEMU live migration, %s path: reply gap per stream %s ms; QEMU total %s ms, "
          "downtime %s ms; %s connections moved" % (
              path, gaps[path]["reply_gap_ms"], steps.get("qemu_total_ms"),
              steps.get("qemu_downtime_ms"), row["stats"].get("entries")))


@pytest.mark.parametrize("notify", [True, False], ids=["announced", "unannounced"])
def test_three_streams_survive_a_real_qemu_live_migration(qlab, notify):
    lab, sc = qlab
    src = lab.state["vms"][VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    ns_before, boot_before = guest_facts(lab)
    assert ns_before == lab.host_ns(src)
    streams = Streams(lab, "announced" if notify else "unannounced")
    try:
        kept = sc.translations(src)
        assert sorted(k for k, _ in kept.values()) == ["dnat", "lb", "snat"], kept
        try:
            steps = lab.migrate(VM, dst, notify=notify)
        except LabError as err:
            raise AssertionError("%s; rows: %s" % (err, rows(lab))) from err
        row = lab.migration_row(VM)
        assert (row["source"], row["destination"], row["status"]) == (src, dst, "done"), row
        assert row["path"] == ("announced" if notify else "unannounced")
        assert row["stats"]["entries"] >= 3, row
        # The same guest, still running, now in the destination's namespace.
        assert guest_facts(lab) == (lab.host_ns(dst), boot_before)
        streams.carry_on()
        # Each stream kept its SNAT port, its backend, its DNAT address.
        assert sc.translations(dst) == kept
    finally:
        finals = streams.stop()
    assert sorted(survivors({"connections": list(finals.values())})) == sorted(STREAMS)
    record_gap("announced" if notify else "unannounced", row, steps, finals)


def test_a_failed_migration_leaves_the_guest_running_at_its_source(qlab):
    """The destination's mbxd is dead: the source aborts the announced
    transfer, the stun at QEMU's switchover fails, the driver cancels the
    migration (QEMU resumes the guest where it was) and the guest's streams
    carry on there."""
    lab, _ = qlab
    src = lab.state["vms"][VM]["host"]
    dst = next(h for h in HOSTS if h != src)
    before = guest_facts(lab)
    streams = Streams(lab, "rollback")
    lab.mbxd_stop(dst, signal.SIGKILL)
    try:
        with pytest.raises(LabError, match="rolled back to %s" % src):
            lab.migrate(VM, dst, notify=True)
        assert guest_facts(lab) == before
        assert lab.state["vms"][VM]["host"] == src
        assert qemu.incoming_key(VM) not in lab.state["pids"]
        row = lab.migration_row(VM)
        assert (row["destination"], row["status"]) == (dst, "aborted"), row
        streams.carry_on()
    finally:
        streams.stop()
        lab.mbxd_start(dst)
        wait_until(lambda: lab.mbxd_appctl(dst, "stats", check=False), 30, interval=0.2,
                   what="mbxd on %s to answer" % dst)


def test_without_state_migration_the_snat_stream_breaks(qlab):
    """The control: the same streams and an unannounced QEMU migration with
    every mbxd running --no-migration: the SNAT stream's next segment leaves
    the destination with another port, the server resets it."""
    lab, _ = qlab
    for host in HOSTS:
        lab.mbxd_stop(host)
        lab.mbxd_start(host, ["--no-migration"])
    try:
        for host in HOSTS:
            wait_until(lambda: lab.mbxd_appctl(host, "stats", check=False), 30, interval=0.2,
                       what="mbxd on %s to answer" % host)
        streams = Streams(lab, "control")
        try:
            src = lab.state["vms"][VM]["host"]
            lab.migrate(VM, next(h for h in HOSTS if h != src), notify=False,
                        wait_state=False)
            broken = streams.wait(lambda c: c["name"] != "snat" or c["error"] is not None,
                                  "the SNAT stream to break")
            assert broken["snat"]["error"], broken
        finally:
            streams.stop()
    finally:
        lab.sb().migrate_abort(VM, if_exists=True).execute(check_error=True)
        for host in HOSTS:
            lab.mbxd_stop(host)
            lab.mbxd_start(host)


def test_vm_del_ends_the_guest(qlab):
    lab, _ = qlab
    vm = dict(lab.state["vms"][VM])
    pid = lab.state["pids"][qemu.qemu_key(VM)]
    lab.vm_del(VM)
    wait_until(lambda: not os.path.exists("/proc/%d" % pid), 15,
               what="QEMU %d to end" % pid)
    assert vm["vif"] not in lab.vsctl(vm["host"], "list-ports", "br-int").split()
    assert not any(k.startswith("vm/%s/" % VM) for k in lab.state["pids"])
    assert VM not in lab.nb().snapshot().vms
