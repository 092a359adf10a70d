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
``python -m lab.probe client --to ADDR --port P --duration S --out FILE``
keeps ONE connection open, sends a numbered line every ``--interval-ms`` and
waits for its echo; on SIGTERM/SIGINT or after ``--duration`` (at most 600 s)
it writes a JSON report: requests sent, replies received, the largest gap
between two consecutive replies and when it happened, and the error that ended
the connection if one did (a reset is the failure this probe exists to see).
"""

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import time

from lab.sh import wait_until

MAX_DURATION = 600.0


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

    def read(self):
        try:
            with open(self.report) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

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
    c = sub.add_parser("client")
    c.add_argument("--to", required=True)
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--interval-ms", type=float, default=10.0)
    c.add_argument("--duration", type=float, default=60.0)
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.mode == "serve":
        serve([int(p) for p in args.port.split(",")], args.log)
        return 0
    if args.mode == "try":
        return attempt(args.to, args.port, args.timeout, min(args.count, 100000))
    return client(args.to, args.port, args.interval_ms / 1000.0,
                  args.duration, args.out)


if __name__ == "__main__":
    sys.exit(main())
