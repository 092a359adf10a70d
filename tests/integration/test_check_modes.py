"""The check modes in the real lab (docs/middlebox.md, "Check modes").

Tenant ochre: o1 on h1 talks to o2 on h2:7000 through fw-ochre (from a VM
anything; into a VM only TCP 7000).  In each mode one long-lived connection
exchanges echoes; then the rule that let it in is removed.  What a user
sees: whether the daemon saw the established connection's packets (its
``checked`` and ``copies`` counters), and whether the connection is cut by
the rule change (offload and relay: never; every-packet and every-nth: at
once) while new connections are refused in every mode.
"""

import json
import os
import sys

import pytest

from lab.sh import wait_until

PY = sys.executable
O1, O2 = ("o1", "h1", "10.4.0.11"), ("o2", "h2", "10.4.0.12")
RULE = ("fw-ochre", "100", "to-vm", "proto=tcp dport=7000")


def mbxctl(lab, *args):
    proc = lab.mbxctl("--wait=hv", "--timeout=20", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def ochre(lab):
    mbxctl(lab, "ls-add", "ls-ochre", "--vni", "4001", "--subnet", "10.4.0.0/24",
           "--tenant", "ochre")
    mbxctl(lab, "mb-add", "fw-ochre", "ls-ochre", "--default", "deny",
           "--", "fw-add", "fw-ochre", "100", "from-vm", "any", "allow",
           "--", "fw-add", *RULE, "allow",
           "--", "steer-add", "ls-ochre", "100", "any", "fw-ochre")
    procs = []
    for name, host, addr in (O1, O2):
        lab.vm_add(name, host, "ls-ochre", addr + "/24")
    procs.append(lab.spawn("o2", [PY, "-m", "lab.probe", "serve", "--port", "7000"],
                           os.path.join(lab.rundir, "serve-o2.log")))
    yield lab
    for proc in procs:
        proc.terminate()
        proc.wait(10)
        lab.forget_pid(proc.pid)
    for name, _, _ in (O1, O2):
        lab.vm_del(name)
    mbxctl(lab, "steer-del", "ls-ochre", "--", "mb-del", "fw-ochre", "--", "ls-del", "ls-ochre")


class Echoes:
    """A long-lived connection o1 -> o2:7000 exchanging an echo every 20 ms."""

    def __init__(self, lab, path):
        self.lab, self.path = lab, path
        self.proc = lab.spawn("o1", [PY, "-m", "lab.probe", "client", "--to", O2[2],
                                     "--port", "7000", "--interval-ms", "20",
                                     "--duration", "20", "--reply-timeout", "1",
                                     "--out", path], path + ".log")

    def read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def received(self):
        return self.read().get("received", 0)

    def wait(self, n, what):
        start = self.received()
        wait_until(lambda: self.received() >= start + n or self.read().get("error"), 10,
                   interval=0.05, what=what)
        return self.received() - start

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.lab.forget_pid(self.proc.pid)
        return self.read()


def counters(lab):
    return {h: lab.mbxd_stats(h) for h in ("h1", "h2")}


def new_connection(lab):
    out = lab.tcp_try("o1", O2[2], 7000, timeout=1.0)
    return "ok" if out["ok"] else "refused" if out["refused"] else "timeout"


@pytest.mark.parametrize("mode", ["offload", "every-packet", "every-nth", "relay"])
def test_what_the_service_sees_of_established_connections(ochre, tmp_path, mode):
    lab = ochre
    mbxctl(lab, "mb-set", "fw-ochre", "check=%s" % mode, "check-interval=4")
    echoes = Echoes(lab, str(tmp_path / "echoes.json"))
    try:
        echoes.wait(20, "the connection to exchange")
        before = counters(lab)
        n = echoes.wait(100, "100 more echoes")
        after = counters(lab)
        checked = {h: after[h]["checked"] - before[h]["checked"] for h in after}
        copies = {h: after[h]["copies"] - before[h]["copies"] for h in after}
        # An echo is a request and a reply (ACKs ride on them), each seen at
        # one stage per host; the counters are read a moment apart from the
        # echoes, hence the 5 % margin.
        if mode == "offload":
            assert checked == copies == {"h1": 0, "h2": 0}, (checked, copies)
        elif mode == "every-packet":
            assert all(checked[h] >= 1.9 * n for h in checked), (n, checked)
        elif mode == "every-nth":
            assert all(2 * n // 4 - 10 <= checked[h] < 2 * n for h in checked), (n, checked)
        else:
            assert all(copies[h] >= 1.9 * n for h in copies), (n, copies)
            assert checked == {"h1": 0, "h2": 0}, checked
        # The rule that let it in goes.
        mbxctl(lab, "fw-del", "fw-ochre", "to-vm", "100")
        try:
            if mode in ("every-packet", "every-nth"):
                wait_until(lambda: echoes.read().get("error"), 10, interval=0.1,
                           what="the connection to be cut")
                cut = [c for c in json.loads(lab.mbxd_appctl("h2", "conn/json", "o2"))
                       if c["vm_port"] == 7000 and c["verdict"] == "deny"]
                assert cut, lab.mbxd_appctl("h2", "conn/list", "o2")
            else:
                echoes.wait(50, "50 echoes after the rule went")
                assert echoes.read().get("error") is None
            assert new_connection(lab) == "timeout"
        finally:
            mbxctl(lab, "fw-add", *RULE, "allow")
        wait_until(lambda: new_connection(lab) == "ok", 10, interval=0.2,
                   what="new connections allowed again")
    finally:
        echoes.stop()
        mbxctl(lab, "mb-set", "fw-ochre", "check=offload")
