"""Physical controllers split the hosts through the southbound server's
locks (``ovsdb.locks``), against a real ovsdb-server: a preferred host is
taken from a standby, a dead holder's hosts go to the standby the moment
its connection closes (also a process killed with SIGKILL), and two
controllers that both prefer a host do not take it back and forth."""

import os
import queue
import signal
import subprocess
import sys
import time

import pytest

from ovsdb import server
from ovsdb.locks import Locks, chassis_lock_name, hosts_of, wanted_locks
from ovsdb.server import SB_SCHEMA_PATH

H1, H2 = chassis_lock_name("hv1"), chassis_lock_name("hv2")


@pytest.fixture
def sb(tmp_path):
    rundir = str(tmp_path)
    db = os.path.join(rundir, "sb.db")
    server.ensure_db(db, SB_SCHEMA_PATH)
    sock = os.path.join(rundir, "sb.sock")
    pid = server.start(rundir, db, ["punix:" + sock])
    yield "unix:" + sock
    server.stop(pid)


class Client:
    def __init__(self, remote, wanted=None):
        self.history = []
        self.locks = Locks(remote, on_change=self.history.append)
        if wanted:
            self.locks.want(wanted)

    @property
    def held(self):
        return self.locks.held


def drive(clients, predicate, what, timeout=10.0):
    """Run the clients' sessions until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        for c in clients:
            c.locks.run()
        time.sleep(0.01)


def test_wanted_locks_preferred_are_stolen_the_rest_queued():
    assert wanted_locks(["hv1", "hv2", "hv3"], ["hv2"], standby=True) == {
        chassis_lock_name("hv1"): False, chassis_lock_name("hv2"): True,
        chassis_lock_name("hv3"): False}
    assert wanted_locks(["hv1", "hv2"], ["hv2"], standby=False) == {
        chassis_lock_name("hv2"): True}
    assert wanted_locks(["hv1"], None, standby=True) == {chassis_lock_name("hv1"): False}
    assert hosts_of({H1, H2, "other"}) == {"hv1", "hv2"}
    odd = "hv-1_a.b:c"
    assert chassis_lock_name(odd) == "mbx_chassis_hv_2d1_5fa_2eb_3ac"
    assert hosts_of({chassis_lock_name(odd)}) == {odd}


def test_split_takeover_and_return(sb):
    a = Client(sb, wanted_locks(["hv1", "hv2"], ["hv1"], standby=False))
    drive([a], lambda: a.held == {H1}, "a to hold hv1")
    b = Client(sb, wanted_locks(["hv1", "hv2"], ["hv2"], standby=True))
    drive([a, b], lambda: b.held == {H2} and b.locks.settled, "b to hold hv2")
    assert a.held == {H1}, "a standby never takes a preferred host's lock"

    # a's connection closes: b, queued for hv1, serves it at once.
    a.locks.close()
    drive([b], lambda: b.held == {H1, H2}, "b to take over hv1")

    # a restarts and takes its host back; b queues for it again.
    a2 = Client(sb, wanted_locks(["hv1", "hv2"], ["hv1"], standby=False))
    drive([a2, b], lambda: a2.held == {H1} and b.held == {H2} and b.locks.settled,
          "a2 to take hv1 back")
    a2.locks.close()
    drive([b], lambda: b.held == {H1, H2}, "b to take over hv1 again")
    b.locks.close()


def test_two_controllers_preferring_one_host_do_not_thrash(sb):
    a = Client(sb, {H1: True})
    drive([a], lambda: a.held == {H1}, "a to hold hv1")
    b = Client(sb, {H1: True})
    drive([a, b], lambda: b.held == {H1} and a.locks.settled and b.locks.settled,
          "b to steal hv1 and a to queue")
    for _ in range(50):             # both sessions keep running: nothing moves
        a.locks.run()
        b.locks.run()
    assert a.held == frozenset() and b.history == [frozenset({H1})]
    b.locks.close()
    drive([a], lambda: a.held == {H1}, "a, queued, to get hv1 back")
    a.locks.close()


HOLDER = """
import sys, time
import ovs.poller
from ovsdb.locks import Locks
locks = Locks(sys.argv[1])
locks.want({sys.argv[2]: True})
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    locks.run()
    if locks.held:
        print("held", flush=True)
        break
    poller = ovs.poller.Poller()
    locks.wait(poller)
    poller.timer_wait(100)
    poller.block()
while time.monotonic() < deadline:
    locks.run()
    poller = ovs.poller.Poller()
    locks.wait(poller)
    poller.timer_wait(1000)
    poller.block()
"""


def test_a_killed_holder_hands_its_host_over(sb):
    b = Client(sb, {H1: False})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, sb, H1],
                              stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__)))))
    try:
        assert holder.stdout.readline().strip() == "held"
        drive([b], lambda: b.locks.settled, "b to be queued")
        assert b.held == frozenset()
        os.kill(holder.pid, signal.SIGKILL)
        drive([b], lambda: b.held == {H1}, "b to take over from the killed holder")
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        b.locks.close()


def test_lock_thread_reports_what_it_holds(sb):
    from ovsdb.locks import LockThread
    seen = queue.Queue()
    t = LockThread(sb, on_change=seen.put)
    t.start()
    try:
        t.want({H1: False, H2: False})
        held = frozenset()
        deadline = time.monotonic() + 10
        while held != {H1, H2}:
            held = seen.get(timeout=max(0.0, deadline - time.monotonic()))
        t.want({H2: False})
        while held != {H2}:
            held = seen.get(timeout=max(0.0, deadline - time.monotonic()))
        # The released lock is free: another client gets it at once.
        c = Client(sb, {H1: False})
        drive([c], lambda: c.held == {H1}, "hv1 released by the thread")
        c.locks.close()
    finally:
        t.stop()
