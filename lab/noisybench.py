"""Noisy neighbour: another tenant's new connections while one VM floods.

Two tenants share a host pair (the demo topology's h1 and h2), each behind
its own firewall.  The *quiet* tenant's VM on h1 opens short connections
(connect, one echoed line, close) one after another to its server on h2;
the *noisy* tenant's VM on h1 floods its own server's host with new
connections.  Measured, for the quiet tenant, with the same probe, first
quiet and then during the flood: how many connections succeeded, the
connect time (SYN to SYN-ACK through both hosts' pipelines) median and p99.
Also: how many entries the flooding VM's zone held at most (its
``conn-limit-vm`` caps it) and how many new connections the switch let it
open per second (``new-conn-rate-vm``).  Target: no failure, p99 during the
flood at most 2x the quiet p99 (a ratio within one run: the machine is
shared).

The flood (``python -m lab.noisybench flood``, run inside the VM) sends
TCP SYNs from a raw socket with a new source port each, to a port whose
connections the victim host's firewall drops: every SYN is a new
connection for the sender's zone and none is ever answered, the worst case
for a zone (half-open entries that only a timeout ends).  It is bounded in
packets, rate and time.

``python -m lab.noisybench [--flood-seconds S] [--rate R] [--probes N]``
prints the JSON ``run`` returns; ``make bench`` runs it as its noisy-neighbour
part (``lab.bench``), ``lab.report`` renders its table.
"""

import argparse
import json
import os
import random
import socket
import struct
import sys
import time

from middlebox.packet import checksum

MAX_SECONDS = 120.0
MAX_PACKETS = 2_000_000


# ----------------------------------------------------------------- flooder
def syn_segment(src, dst, sport, dport, seq):
    """A TCP SYN segment (no IP header) with its checksum, from ``src`` to
    ``dst`` (dotted IPv4)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6,
                                                                         len(header))
    csum = checksum(pseudo + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def flood(dst, port, rate, seconds, count, src=None):
    """Send at most ``count`` SYNs to ``dst``:``port`` at ``rate`` per
    second for at most ``seconds``, each from a new source port; prints
    {"sent", "seconds", "per_second"} as JSON."""
    seconds = min(float(seconds), MAX_SECONDS)
    count = min(int(count), MAX_PACKETS)
    if src is None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect((dst, port))
        src = probe.getsockname()[0]
        probe.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sport = random.randrange(1024, 65536)
    sent, t0 = 0, time.monotonic()
    batch = max(1, int(rate) // 200)            # paced in slices of 5 ms
    while sent < count:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        due = min(count, int(now * rate) + batch)
        while sent < due:
            sport = sport + 1 if sport < 65535 else 1024
            seg = syn_segment(src, dst, sport, port, random.getrandbits(32))
            try:
                sock.sendto(seg, (dst, 0))
            except OSError:
                pass                    # a full queue: that SYN is lost, as on a wire
            sent += 1
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    sock.close()
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3),
                      "per_second": round(sent / elapsed, 1) if elapsed else 0.0}))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.noisybench")
    sub = p.add_subparsers(dest="cmd")
    f = sub.add_parser("flood", help="(inside a VM) send a bounded SYN flood")
    f.add_argument("--to", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--rate", type=float, default=2000)
    f.add_argument("--seconds", type=float, default=10)
    f.add_argument("--count", type=int, default=100000)
    args = p.parse_args(argv)
    if args.cmd == "flood":
        return flood(args.to, args.port, args.rate, args.seconds, args.count)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
