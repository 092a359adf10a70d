"""A TCP request/reply probe that runs inside VM namespaces and the lab's
external namespaces (``Lab.spawn``/``tcp_try`` and ``Lab.ext_spawn``/``ext_tcp_try``).

``python -m lab.probe serve --port P[,P2...] [--log FILE]`` echoes lines back on
every connection.  With ``--log`` it appends one line per accepted connection,
flushed before the first byte is echoed, so it is complete once the client saw
its echo::

    PEER_IP PEER_PORT LOCAL_PORT

(the address and port the connection came from, as the server saw them, e.g.
an SNAT external address and port, and the port it arrived on).
``read_peer_log(FILE)`` parses it into ``[(peer_ip, peer_port, local_port)]``.
``python -m lab.probe try --to ADDR --port P [--count N]`` makes N short
connections and prints how many succeeded, were refused or timed out, as JSON,
with ``local_ports``: the client's own source port of each successful
connection (at most the first 1000), to match against the server's log.
``python -m lab.probe rate --to ADDR --port P --count N --workers W`` makes N
short connections from W threads and prints the rate and each connection's
connect time (the first packet's round trip) and whole time, as JSON.
``python -m lab.probe client --to ADDR --port P --duration S --out FILE``
keeps ONE connection open, sends a numbered line every ``--interval-ms`` and
waits for its echo; on SIGTERM/SIGINT or after ``--duration`` (at most 600 s)
it writes a JSON report: requests sent, replies received, the largest gap
between two consecutive replies and when it happened, and the error that ended
the connection if one did (a reset is the failure this probe exists to see).
``python -m lab.probe conns --target NAME=ADDR:PORT[xN] [--target ...]
--interval-ms 20 --duration S --reply-timeout 5 --out FILE`` keeps MANY
connections open at once: all are opened at start (N per target, named NAME,
NAME#2, NAME#3, ...; connect timeout 5 s), then every interval each open
connection sends its next numbered line once the echo of the previous one is
in (non-blocking sockets and one selector: a stalled connection never delays
the others).  A connection whose echo does not arrive within
``--reply-timeout`` gets ``error: "stalled: no reply within 5.0 s"`` and is
closed; a reset or close gets the exception text.  The JSON report is
written atomically every 0.5 s and at the end (SIGTERM/SIGINT, ``--duration``
at most 600 s, or no connection left open)::

    {"connections": [{"name", "target", "local_port", "connected", "sent",
                      "received", "max_gap_ms", "max_gap_at", "error"}],
     "sent", "received", "survived", "final"}

``survived`` counts the connections that connected and have no error;
``final`` is true in the last report.  ``Conns`` (host side) runs it in a VM,
``survivors(report)`` names the connections still alive.
"""

import argparse
import errno
import json
import os
import re
import selectors
import signal
import socket
import socketserver
import subprocess
import sys
import time

from lab.sh import LabError, wait_until

MAX_DURATION = 600.0


def read_report(path, read_text=None):
    """A probe's JSON report ({} until there is a complete one).
    ``read_text(path)``: how to read it (``Lab.vm_read`` of the VM the
    probe runs in: a QEMU guest's files are its own); default this
    machine's file."""
    try:
        if read_text is None:
            with open(path) as f:
                return json.load(f)
        text = read_text(path)
        return json.loads(text) if text else {}
    except (FileNotFoundError, ValueError):
        return {}


class Probe:
    """Host side: a probe server in one VM and a client in another, started
    through the lab (so ``mbx-lab down`` would end them) and read back."""

    def __init__(self, lab, client, server, addr, port, report, duration=120):
        self.lab = lab
        self.report = report
        for stale in (report, report + ".server.log", report + ".client.log"):
            if os.path.exists(stale):
                os.unlink(stale)
        py = sys.executable
        self.server = lab.spawn(server, [py, "-m", "lab.probe", "serve", "--port",
                                         str(port)], report + ".server.log")
        time.sleep(0.4)
        self.client = lab.spawn(client, [py, "-m", "lab.probe", "client", "--to", addr,
                                         "--port", str(port), "--interval-ms", "10",
                                         "--duration", str(duration), "--out", report],
                                report + ".client.log")
        self._read_text = lambda path: lab.vm_read(client, path)

    def read(self):
        return read_report(self.report, self._read_text)

    def wait(self, predicate, timeout, what):
        """Wait until ``predicate(report)`` holds; returns that report."""
        def check():
            report = self.read()
            return report if report and predicate(report) else None
        return wait_until(check, timeout, interval=0.05, what=what)

    def stop(self):
        """End client and server; returns the client's final report."""
        for proc in (self.client, self.server):
            proc.terminate()
            proc.wait(10)
            self.lab.forget_pid(proc.pid)
        return self.read()


class Conns:
    """Host side: a ``conns`` probe in VM ``vm`` (or, with ``ext=True``, in
    the external namespace of that name), started through the lab so
    ``down`` would end it, and read back.  ``targets``: strings
    ``NAME=ADDR:PORT[xN]`` or tuples ``(name, addr, port, n)``."""

    def __init__(self, lab, vm, targets, report, duration=120, interval_ms=20,
                 reply_timeout=5.0, ext=False):
        self.lab = lab
        self.report = report
        for stale in (report, report + ".log"):
            if os.path.exists(stale):
                os.unlink(stale)
        cmd = [sys.executable, "-m", "lab.probe", "conns"]
        for target in targets:
            if not isinstance(target, str):
                name, addr, port, n = target
                target = "%s=%s:%d%s" % (name, addr, port, "x%d" % n if n != 1 else "")
            cmd += ["--target", target]
        cmd += ["--interval-ms", str(interval_ms), "--duration", str(duration),
                "--reply-timeout", str(reply_timeout), "--out", report]
        spawn = lab.ext_spawn if ext else lab.spawn
        self.proc = spawn(vm, cmd, report + ".log")
        self._read_text = None if ext else (lambda path: lab.vm_read(vm, path))

    def read(self):
        return read_report(self.report, self._read_text)

    def wait(self, predicate, timeout, what):
        """Wait until ``predicate(report)`` holds; returns that report."""
        def check():
            report = self.read()
            if report and predicate(report):
                return report
            if self.proc.poll() is not None:
                report = self.read()
                if report and predicate(report):
                    return report
                raise LabError("conns probe exited (status %s) before %s: %s"
                               % (self.proc.returncode, what, _tail(self.report + ".log")))
            return None
        return wait_until(check, timeout, interval=0.05, what=what)

    def stop(self, timeout=10):
        """End the probe (SIGTERM: it writes its final report); returns it."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.lab.forget_pid(self.proc.pid)
        return self.read()


def survivors(report):
    """Names of the connections of a ``conns`` report that connected and
    are still alive (no error)."""
    return [c["name"] for c in report.get("connections", [])
            if c.get("connected") and c.get("error") is None]


def _tail(path, size=300):
    try:
        with open(path, "rb") as f:
            return f.read()[-size:].decode(errors="replace").strip()
    except FileNotFoundError:
        return "(no log)"


def read_peer_log(path):
    """The connections a ``serve --log`` saw: [(peer_ip, peer_port, local_port)]."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    peers = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3:
            peers.append((fields[0], int(fields[1]), int(fields[2])))
    return peers


class _Echo(socketserver.StreamRequestHandler):
    def handle(self):
        if self.server.peer_log is not None:
            peer_ip, peer_port = self.client_address[:2]
            local_port = self.connection.getsockname()[1]
            with self.server.log_lock:
                self.server.peer_log.write("%s %d %d\n" % (peer_ip, peer_port, local_port))
                self.server.peer_log.flush()
        for line in self.rfile:
            self.wfile.write(line)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    peer_log = None
    log_lock = None


def serve(ports, log_path=None):
    """Echo on every port in ``ports`` (one thread per extra port); with
    ``log_path``, append "peer_ip peer_port local_port" per connection."""
    import threading
    servers = [_Server(("0.0.0.0", port), _Echo) for port in ports]
    if log_path:
        log, lock = open(log_path, "a", buffering=1), threading.Lock()
        for server in servers:
            server.peer_log, server.log_lock = log, lock
    for extra in servers[1:]:
        threading.Thread(target=extra.serve_forever, daemon=True).start()
    servers[0].serve_forever()


def attempt(addr, port, timeout, count, max_seconds=60.0):
    """``count`` short connections one after another (each: connect, one
    echoed line, close), at most ``max_seconds`` in all.  Prints a JSON
    outcome: how many were ok, refused (RST), timed out or failed otherwise."""
    out = {"ok": 0, "refused": 0, "timeout": 0, "other": 0, "last_error": None,
           "local_ports": []}
    t0 = time.monotonic()
    for i in range(count):
        if time.monotonic() - t0 > max_seconds:
            break
        try:
            with socket.create_connection((addr, port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                sock.sendall(b"%d\n" % i)
                if sock.makefile("rb").readline() != b"%d\n" % i:
                    raise ConnectionError("no echo")
                if len(out["local_ports"]) < 1000:
                    out["local_ports"].append(sock.getsockname()[1])
            out["ok"] += 1
        except ConnectionRefusedError as err:
            out["refused"] += 1
            out["last_error"] = str(err)
        except (socket.timeout, TimeoutError) as err:
            out["timeout"] += 1
            out["last_error"] = "timeout: %s" % err
        except OSError as err:
            out["other"] += 1
            out["last_error"] = "%s: %s" % (type(err).__name__, err)
    out["seconds"] = round(time.monotonic() - t0, 4)
    print(json.dumps(out))
    return 0


def rate(addr, port, count, workers, timeout, max_seconds=60.0):
    """New-connection rate: ``workers`` threads make short connections
    (connect, one echoed line, close) until ``count`` in all or
    ``max_seconds``.  Prints JSON: ok, failed, seconds, per_second, and per
    successful connection its connect time (SYN to SYN-ACK, the first
    packet's round trip through the pipeline) and its whole time, as
    median/p90/p99 in milliseconds."""
    import threading
    lock = threading.Lock()
    taken = [0]
    connect_ms, total_ms, errors = [], [], []
    t0 = time.monotonic()

    def worker():
        while True:
            with lock:
                if taken[0] >= count or time.monotonic() - t0 > max_seconds:
                    return
                taken[0] += 1
                i = taken[0]
            start = time.perf_counter()
            try:
                sock = socket.create_connection((addr, port), timeout=timeout)
                connected = time.perf_counter()
                with sock:
                    sock.settimeout(timeout)
                    sock.sendall(b"%d\n" % i)
                    if sock.makefile("rb").readline() != b"%d\n" % i:
                        raise ConnectionError("no echo")
                done = time.perf_counter()
                with lock:
                    connect_ms.append(1000 * (connected - start))
                    total_ms.append(1000 * (done - start))
            except OSError as err:
                with lock:
                    errors.append("%s: %s" % (type(err).__name__, err))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, workers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max_seconds + timeout + 5)
    seconds = time.monotonic() - t0

    def dist(values):
        if not values:
            return None
        v = sorted(values)
        pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]    # noqa: E731
        return {"median": round(pick(0.5), 3), "p90": round(pick(0.9), 3),
                "p99": round(pick(0.99), 3)}
    print(json.dumps({"ok": len(total_ms), "failed": len(errors), "seconds": round(seconds, 4),
                      "per_second": round(len(total_ms) / seconds, 1) if seconds else 0.0,
                      "workers": workers, "connect_ms": dist(connect_ms),
                      "total_ms": dist(total_ms), "last_error": errors[-1] if errors else None}))
    return 0


def client(addr, port, interval, duration, out, reply_timeout=10.0):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    report = {"sent": 0, "received": 0, "max_gap_ms": 0.0,
              "max_gap_at": None, "error": None, "connected": False}
    deadline = time.time() + min(duration, MAX_DURATION)
    try:
        sock = socket.create_connection((addr, port), timeout=5)
        report["connected"] = True
        sock.settimeout(reply_timeout)
        reader = sock.makefile("rb")
        _write(out, report)
        last = time.time()
        while not stop and time.time() < deadline:
            seq = report["sent"]
            sock.sendall(b"%d\n" % seq)
            report["sent"] += 1
            line = reader.readline()
            if not line:
                raise ConnectionError("connection closed by peer")
            if int(line) != seq:
                raise ValueError("reply %r out of order (expected %d)" % (line, seq))
            now = time.time()
            report["received"] += 1
            gap = (now - last) * 1000.0
            if gap > report["max_gap_ms"]:
                report["max_gap_ms"] = round(gap, 1)
                report["max_gap_at"] = now
            last = now
            if report["received"] % 10 == 0:
                _write(out, report)      # progress, for whoever waits on it
            time.sleep(interval)
        sock.close()
    except (OSError, ValueError) as err:
        report["error"] = "%s: %s" % (type(err).__name__, err)
    _write(out, report)
    return 0 if report["error"] is None else 1


_TARGET = re.compile(r"^([^=\s]+)=([^:\s]+):(\d+)(?:x(\d+))?$")


def parse_target(text):
    """``NAME=ADDR:PORT[xN]`` -> (name, addr, port, n)."""
    m = _TARGET.match(text)
    if not m or not 0 < int(m.group(3)) < 65536 or (m.group(4) and int(m.group(4)) < 1):
        raise ValueError("target %r is not NAME=ADDR:PORT[xN]" % text)
    return m.group(1), m.group(2), int(m.group(3)), int(m.group(4) or 1)


class _Conn:
    """One connection of ``conns``: its report entry and its I/O state."""

    def __init__(self, name, addr, port):
        self.addr = (addr, port)
        self.rep = {"name": name, "target": "%s:%d" % (addr, port), "local_port": None,
                    "connected": False, "sent": 0, "received": 0, "max_gap_ms": 0.0,
                    "max_gap_at": None, "error": None}
        self.sock = None
        self.outbuf = b""
        self.inbuf = b""
        self.pending = None        # (seq, monotonic time sent) awaiting its echo
        self.last = None           # monotonic time of the last reply (or connect)
        self.next_send = 0.0

    @property
    def alive(self):
        return self.sock is not None


def _err_text(err):
    return "%s: %s" % (type(err).__name__, err)


def conns(targets, interval, duration, out, reply_timeout=5.0, connect_timeout=5.0,
          max_conns=1000):
    """The ``conns`` mode: see the module docstring.  ``targets``:
    [(name, addr, port, n)]."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    connections = []
    for name, addr, port, n in targets:
        for i in range(n):
            connections.append(_Conn(name if i == 0 else "%s#%d" % (name, i + 1), addr, port))
    if len(connections) > max_conns:
        raise ValueError("at most %d connections, not %d" % (max_conns, len(connections)))
    sel = selectors.DefaultSelector()
    t_start = time.monotonic()
    deadline = t_start + min(duration, MAX_DURATION)

    def report(final=False):
        reps = [c.rep for c in connections]
        return {"connections": reps,
                "sent": sum(r["sent"] for r in reps),
                "received": sum(r["received"] for r in reps),
                "survived": sum(1 for r in reps if r["connected"] and r["error"] is None),
                "final": final}

    def fail(conn, error):
        if conn.rep["error"] is None:
            conn.rep["error"] = error
        if conn.sock is not None:
            try:
                sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
            conn.sock = None

    # Open every connection at once (non-blocking connect).
    connecting = {}
    for conn in connections:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn.sock = sock
        try:
            rc = sock.connect_ex(conn.addr)
        except OSError as err:          # e.g. a name that does not resolve
            fail(conn, _err_text(err))
            continue
        if rc not in (0, errno.EINPROGRESS):
            fail(conn, "%s: [Errno %d] %s" % (_errno_class(rc), rc, os.strerror(rc)))
            continue
        sel.register(sock, selectors.EVENT_WRITE, conn)
        connecting[sock] = conn
    connect_deadline = time.monotonic() + connect_timeout
    while connecting and not stop:
        now = time.monotonic()
        if now >= connect_deadline:
            break
        for key, _ in sel.select(min(0.05, connect_deadline - now)):
            conn = key.data
            connecting.pop(conn.sock, None)
            rc = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                fail(conn, "%s: [Errno %d] %s" % (_errno_class(rc), rc, os.strerror(rc)))
                continue
            conn.rep["connected"] = True
            conn.rep["local_port"] = conn.sock.getsockname()[1]
            conn.last = conn.next_send = time.monotonic()
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
    for conn in list(connecting.values()):
        fail(conn, "TimeoutError: connect timed out after %.1f s" % connect_timeout
             if not stop else "stopped while connecting")
    _write(out, report())

    next_write = time.monotonic() + 0.5
    while not stop and any(c.alive for c in connections):
        now = time.monotonic()
        if now >= deadline:
            break
        for conn in connections:
            if not conn.alive:
                continue
            if conn.pending is None and now >= conn.next_send:
                seq = conn.rep["sent"]
                conn.outbuf += b"%d\n" % seq
                conn.pending = (seq, now)
                conn.rep["sent"] += 1
                conn.next_send = now + interval
            if conn.outbuf:
                try:
                    n = conn.sock.send(conn.outbuf)
                    conn.outbuf = conn.outbuf[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as err:
                    fail(conn, _err_text(err))
                    continue
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
            sel.modify(conn.sock, mask, conn)
            if conn.pending and now - conn.pending[1] > reply_timeout:
                fail(conn, "stalled: no reply within %.1f s" % reply_timeout)
        # Sleep until the next send, stall check, report or the end.
        wake = [deadline, next_write]
        for conn in connections:
            if conn.alive:
                wake.append(conn.pending[1] + reply_timeout if conn.pending
                            else conn.next_send)
        timeout = max(0.0, min(wake) - time.monotonic())
        events = sel.select(timeout)
        now = time.monotonic()
        for key, mask in events:
            conn = key.data
            if not conn.alive or not mask & selectors.EVENT_READ:
                continue
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                fail(conn, _err_text(err))
                continue
            if not data:
                fail(conn, "ConnectionError: connection closed by peer")
                continue
            conn.inbuf += data
            while b"\n" in conn.inbuf and conn.alive:
                line, conn.inbuf = conn.inbuf.split(b"\n", 1)
                if conn.pending is None or line != b"%d" % conn.pending[0]:
                    fail(conn, "ValueError: reply %r out of order (expected %s)"
                         % (line, "none" if conn.pending is None else conn.pending[0]))
                    break
                conn.pending = None
                conn.rep["received"] += 1
                gap = (now - conn.last) * 1000.0
                if gap > conn.rep["max_gap_ms"]:
                    conn.rep["max_gap_ms"] = round(gap, 1)
                    conn.rep["max_gap_at"] = time.time()
                conn.last = now
        if now >= next_write:
            _write(out, report())
            next_write = now + 0.5
    for conn in connections:
        if conn.sock is not None:
            conn.sock.close()
            conn.sock = None
    final = report(final=True)
    _write(out, final)
    return 0


def _errno_class(rc):
    """The OSError subclass name Python would raise for errno ``rc``."""
    try:
        return type(OSError(rc, os.strerror(rc))).__name__
    except Exception:       # pragma: no cover
        return "OSError"


def _write(path, report):
    with open(path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.probe")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", default="7000", help="a port or comma-separated ports")
    s.add_argument("--log", metavar="FILE",
                   help='append "PEER_IP PEER_PORT LOCAL_PORT" per accepted connection')
    t = sub.add_parser("try")
    t.add_argument("--to", required=True)
    t.add_argument("--port", type=int, default=7000)
    t.add_argument("--timeout", type=float, default=1.0)
    t.add_argument("--count", type=int, default=1)
    r = sub.add_parser("rate", help="new connections per second, with their timings")
    r.add_argument("--to", required=True)
    r.add_argument("--port", type=int, default=7000)
    r.add_argument("--timeout", type=float, default=2.0)
    r.add_argument("--count", type=int, default=300)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--max-seconds", type=float, default=30.0)
    c = sub.add_parser("client")
    c.add_argument("--to", required=True)
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--interval-ms", type=float, default=10.0)
    c.add_argument("--duration", type=float, default=60.0)
    c.add_argument("--reply-timeout", type=float, default=10.0)
    c.add_argument("--out", required=True)
    m = sub.add_parser("conns", help="many long-lived connections at once")
    m.add_argument("--target", action="append", required=True, type=_target_arg,
                   metavar="NAME=ADDR:PORT[xN]")
    m.add_argument("--interval-ms", type=float, default=20.0)
    m.add_argument("--duration", type=float, default=60.0)
    m.add_argument("--reply-timeout", type=float, default=5.0)
    m.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.mode == "conns":
        return conns(args.target, args.interval_ms / 1000.0, args.duration, args.out,
                     reply_timeout=args.reply_timeout)
    if args.mode == "serve":
        serve([int(p) for p in args.port.split(",")], args.log)
        return 0
    if args.mode == "rate":
        return rate(args.to, args.port, min(args.count, 100000), min(args.workers, 64),
                    args.timeout, min(args.max_seconds, MAX_DURATION))
    if args.mode == "try":
        return attempt(args.to, args.port, args.timeout, min(args.count, 100000))
    return client(args.to, args.port, args.interval_ms / 1000.0,
                  args.duration, args.out, reply_timeout=args.reply_timeout)


def _target_arg(text):
    try:
        return parse_target(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


if __name__ == "__main__":
    sys.exit(main())
