"""The host's ovs-vswitchd, asked over its unixctl socket: conntrack.

``ovs-appctl dpctl/...`` is the only interface Open vSwitch has to its
userspace conntrack table (no OpenFlow or OVSDB alternative exists): dump a
zone, flush a zone or one connection, switch TCP sequence checking off.
The protocol is JSON-RPC over the unix socket; this client speaks it with
the standard library's (C) JSON codec, so a dump of 100k connections (about
17 MB of text) costs milliseconds to decode, not the seconds of a
pure-Python parser.  Calls block; ``Vswitch`` is used from the daemon's
thread for small calls and from a worker thread for big dumps.
"""

import glob
import json
import os
import socket
import threading

from ovsdb.errors import MbxError


class VswitchError(MbxError):
    """ovs-vswitchd could not be asked, or answered with an error (one line)."""


def find_socket(rundir):
    """The unixctl socket of the ovs-vswitchd of ``rundir``: its
    ``ovs-vswitchd.ctl`` (``--unixctl``), else the one its pidfile names."""
    plain = os.path.join(rundir, "ovs-vswitchd.ctl")
    if os.path.exists(plain):
        return plain
    try:
        with open(os.path.join(rundir, "ovs-vswitchd.pid")) as f:
            pid = int(f.read().strip())
        path = os.path.join(rundir, "ovs-vswitchd.%d.ctl" % pid)
        if os.path.exists(path):
            return path
    except (OSError, ValueError):
        pass
    found = sorted(glob.glob(os.path.join(rundir, "ovs-vswitchd.*.ctl")))
    if not found:
        raise VswitchError("no ovs-vswitchd control socket in %s" % rundir)
    return found[-1]


class Vswitch:
    def __init__(self, path, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self._id = 0
        self._lock = threading.Lock()

    def call(self, command, *args):
        """The text ovs-vswitchd answers ``command args``; VswitchError."""
        with self._lock:
            self._id += 1
            request = json.dumps({"method": command, "params": [str(a) for a in args],
                                  "id": self._id}).encode()
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.connect(self.path)
                    sock.sendall(request)
                    reply = self._read(sock)
            except OSError as err:
                raise VswitchError("%s %s: %s" % (command, " ".join(map(str, args)),
                                                  err)) from None
        if reply.get("error") is not None:
            raise VswitchError("%s: %s" % (command, str(reply["error"]).strip()))
        return reply.get("result") or ""

    @staticmethod
    def _read(sock):
        decoder = json.JSONDecoder()
        buf = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise OSError("connection closed before the reply")
            buf += chunk
            # Look at the tail only: a big dump arrives in many chunks.
            if bytes(buf[-64:]).rstrip().endswith(b"}"):
                try:
                    obj, _ = decoder.raw_decode(buf.decode("utf-8", "replace"))
                    return obj
                except ValueError:
                    continue

    # ------------------------------------------------------------ conntrack
    def dump_zone(self, zone, stats=False):
        """The text of ``dpctl/dump-conntrack [-s] zone=ZONE``."""
        args = (["-s"] if stats else []) + ["zone=%d" % zone]
        return self.call("dpctl/dump-conntrack", *args)

    def flush_zone(self, zone):
        self.call("dpctl/flush-conntrack", "zone=%d" % zone)

    def disable_tcp_seq_check(self):
        """Imported connections carry no TCP window state: the datapath must
        accept their segments (Linux's nf_conntrack_tcp_be_liberal)."""
        self.call("dpctl/ct-disable-tcp-seq-chk")
