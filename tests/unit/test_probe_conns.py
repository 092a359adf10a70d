"""``python -m lab.probe conns`` on loopback: many connections at once,
each judged on its own (echo, stall, reset, refused), against ``serve``
and against servers that misbehave on purpose."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from lab import probe

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture
def echo_port():
    """``serve``'s echo server on an ephemeral loopback port."""
    server = probe._Server(("127.0.0.1", 0), probe._Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _Misbehaving:
    """Accepts connections; ``mode`` "stall": never reads nor answers;
    "reset": answers the first line, then resets (SO_LINGER 0) on the second."""

    def __init__(self, mode):
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.listener.settimeout(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(conn)
            if self.mode == "reset":
                threading.Thread(target=self._reset, args=(conn,), daemon=True).start()

    @staticmethod
    def _reset(conn):
        reader = conn.makefile("rb")
        conn.sendall(reader.readline())
        reader.readline()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def close(self):
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def run_conns(tmp_path, targets, duration=1.5, reply_timeout=5.0, interval_ms=20,
              stop_after=None):
    out = str(tmp_path / "conns.json")
    cmd = [sys.executable, "-m", "lab.probe", "conns", "--interval-ms", str(interval_ms),
           "--duration", str(duration), "--reply-timeout", str(reply_timeout),
           "--out", out]
    for target in targets:
        cmd += ["--target", target]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        if stop_after is not None:
            time.sleep(stop_after)
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    with open(out) as f:
        return json.load(f)


def by_name(report):
    return {c["name"]: c for c in report["connections"]}


def test_parse_target():
    assert probe.parse_target("lb=10.0.0.100:80x3") == ("lb", "10.0.0.100", 80, 3)
    assert probe.parse_target("fw-in=10.0.0.10:7000") == ("fw-in", "10.0.0.10", 7000, 1)
    for bad in ("lb", "lb=10.0.0.1", "lb=10.0.0.1:0", "lb=10.0.0.1:80x0", "=1.2.3.4:5"):
        with pytest.raises(ValueError):
            probe.parse_target(bad)


def test_echo_on_every_connection(tmp_path, echo_port):
    report = run_conns(tmp_path, ["a=127.0.0.1:%dx3" % echo_port,
                                  "b=127.0.0.1:%d" % echo_port])
    conns = by_name(report)
    assert list(conns) == ["a", "a#2", "a#3", "b"]
    for c in conns.values():
        assert c["connected"] and c["error"] is None, c
        assert c["target"] == "127.0.0.1:%d" % echo_port
        assert c["received"] >= 20 and c["sent"] - c["received"] in (0, 1), c
        assert isinstance(c["local_port"], int) and c["local_port"] > 0
        assert 0 < c["max_gap_ms"] < 1000 and c["max_gap_at"] is not None
    assert len({c["local_port"] for c in conns.values()}) == 4
    assert report["survived"] == 4 and report["final"] is True
    assert report["sent"] == sum(c["sent"] for c in conns.values())
    assert report["received"] == sum(c["received"] for c in conns.values())
    assert probe.survivors(report) == ["a", "a#2", "a#3", "b"]


def test_stalled_connection_is_detected_without_delaying_the_others(tmp_path, echo_port):
    stall = _Misbehaving("stall")
    try:
        report = run_conns(tmp_path, ["ok=127.0.0.1:%dx2" % echo_port,
                                      "stuck=127.0.0.1:%d" % stall.port],
                           duration=2.0, reply_timeout=0.5)
    finally:
        stall.close()
    conns = by_name(report)
    stuck = conns["stuck"]
    assert stuck["connected"] and stuck["received"] == 0 and stuck["sent"] == 1
    assert stuck["error"] == "stalled: no reply within 0.5 s"
    for name in ("ok", "ok#2"):
        # A 20 ms cadence all along: the stalled one never held them up.
        assert conns[name]["error"] is None and conns[name]["received"] >= 40, conns[name]
        assert conns[name]["max_gap_ms"] < 400, conns[name]
    assert report["survived"] == 2
    assert probe.survivors(report) == ["ok", "ok#2"]


def test_reset_and_refused_are_reported(tmp_path, echo_port):
    rst = _Misbehaving("reset")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    refused_port = free.getsockname()[1]
    free.close()                       # nothing listens there now
    try:
        report = run_conns(tmp_path, ["ok=127.0.0.1:%d" % echo_port,
                                      "rst=127.0.0.1:%d" % rst.port,
                                      "refused=127.0.0.1:%d" % refused_port],
                           duration=1.0)
    finally:
        rst.close()
    conns = by_name(report)
    assert conns["rst"]["connected"] and conns["rst"]["received"] == 1
    assert conns["rst"]["error"].startswith("ConnectionResetError"), conns["rst"]
    assert not conns["refused"]["connected"]
    assert conns["refused"]["error"].startswith("ConnectionRefusedError")
    assert conns["ok"]["error"] is None
    assert report["survived"] == 1


def test_sigterm_writes_the_final_report(tmp_path, echo_port):
    t0 = time.monotonic()
    report = run_conns(tmp_path, ["a=127.0.0.1:%dx2" % echo_port], duration=60,
                       stop_after=1.0)
    assert time.monotonic() - t0 < 10
    assert report["final"] is True and report["survived"] == 2
    assert all(c["received"] > 10 for c in report["connections"])


def test_progress_report_while_running(tmp_path, echo_port):
    out = str(tmp_path / "conns.json")
    proc = subprocess.Popen([sys.executable, "-m", "lab.probe", "conns", "--target",
                             "a=127.0.0.1:%d" % echo_port, "--duration", "5",
                             "--out", out], cwd=ROOT)
    try:
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            try:
                with open(out) as f:
                    seen = json.load(f)
                if seen["received"] > 0:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.1)
        assert seen and seen["received"] > 0 and seen["final"] is False
    finally:
        proc.terminate()
        proc.wait(10)
