"""mbxd's OpenFlow 1.3 connection to its bridge's management socket.

``OfConn("unix:RUNDIR/br-int.mgmt")`` is a *service* connection: ovs-vswitchd
accepts it alongside the real controller, gives it the EQUAL role and never
sends it asynchronous messages unless its ``miss_send_len`` is nonzero.  The
handshake therefore sets ``miss_send_len`` (OFPT_SET_CONFIG) and then narrows
the asynchronous messages to FLOW_REMOVED only (OFPT_SET_ASYNC: no
packet-ins, no port-status), so the daemon hears about its expired cache
entries and nothing else.

A thin, non-blocking shell for the daemon's poll loop::

    conn = OfConn(target, on_flow_removed=..., on_flow_stats=..., ...)
    conn.connect()                  # blocking handshake, raises OfConnError
    loop:
        conn.wait(poller); poller.block(); conn.run()   # run() raises OfConnError on drop

Every message is built and read through ``ryu_apps.ofmsg`` (os-ken's
OpenFlow 1.3 parser, and for FLOW_MODs its byte-identical fast encoder), with
the same Flow conventions as the controller, so a cache entry installed here
and read back from a flow-stats reply compares equal to the ``Flow`` the
daemon computed.

Large batches of flow-mods (``BUNDLE_MIN`` or more in one ``send_flows``)
go in OpenFlow bundles (the ONF extension of OpenFlow 1.3: atomic, ordered)
of at most ``BUNDLE_CHUNK`` flow-mods each.  ovs-vswitchd takes a bundle in
one go, where it takes single flow-mods one by one.  The bundles of a batch
are committed only once the switch has accepted every message of the batch
(a barrier after the last one): if any was refused, every bundle of the
batch is discarded, so nothing of it is applied.  Everything asked for after
the batch (flow-mods, barriers, stats requests) goes out after the commits.
Group mods may ride in the same bundles (``send_flows(..., groups=...)``):
Open vSwitch takes GROUP_MODs inside ONF bundles on OpenFlow 1.3, and a flow
added in the bundle may use a group added before it in the same bundle
(tested with OVS 3.1).  Because of that, OVS checks a flow's group
references only at the commit: a bundle whose every message was accepted
can still be refused then (nothing of it is applied either; the switch
sends an error naming the flow-mod's xid, then OFPBFC_MSG_FAILED for the
commit), which ``bundles_failed`` counts.

Besides flows: ``send_groups`` (GROUP_MODs), ``send_packet_outs``
(PACKET_OUT bytes from ``ofmsg.packet_out_bytes`` or its
``PacketOutEncoder``), and the blocking look-ups ``dump_groups`` and
``port_number`` (port description by name), for start-up like
``dump_flows``.
"""

import collections
import errno
import logging
import select
import socket
import struct
import time
import types

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp

from ovsdb.errors import MbxError
from ryu_apps import ofmsg

LOG = logging.getLogger(__name__)

OF13 = ofp.OFP_VERSION                  # 0x04
MISS_SEND_LEN = 0xFFFF
_HEADER = struct.Struct("!BBHI")        # version, type, length, xid
_XID = struct.Struct("!I")              # at offset 4 of a message
_HELLO_ELEM_VERSIONBITMAP = 1
_ALL_FLOW_REMOVED = ((1 << ofp.OFPRR_IDLE_TIMEOUT) | (1 << ofp.OFPRR_HARD_TIMEOUT)
                     | (1 << ofp.OFPRR_DELETE) | (1 << ofp.OFPRR_GROUP_DELETE))
_RECV_SIZE = 65536
SEND_BUFFER = 4 << 20          # bytes asked for the socket's send buffer
_MAX_RECVS_PER_RUN = 64                 # at most 4 MiB read per run()
_MAX_SENDS_PER_FLUSH = 64
BUNDLE_MIN = 256                        # flow-mods in one send_flows that go in bundles
BUNDLE_CHUNK = 10000                    # flow-mods per bundle, at most
_FLUSH_EVERY = 1023                     # write a batch every 1024 flow-mods (mask)
_BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
# OFPT_EXPERIMENTER header, ONF experimenter id and type, then the bundle
# control body (bundle id, type, flags) or the bundle-add head (bundle id,
# pad, flags) followed by the message.
_BUNDLE_CTRL = struct.Struct("!BBHIIIIHH")
_BUNDLE_ADD = struct.Struct("!BBHIIII2xH")


class _BundleBatch:
    """The bundles of one send_flows call, until the switch has seen them."""

    __slots__ = ("ids", "first_xid", "last_xid", "failed", "flow_mods")

    def __init__(self, first_xid):
        self.ids = []
        self.first_xid = first_xid
        self.last_xid = first_xid
        self.failed = None              # (xid, type, code) of the first error
        self.flow_mods = 0

    def has(self, xid):
        if self.first_xid <= self.last_xid:
            return self.first_xid <= xid <= self.last_xid
        return xid >= self.first_xid or xid <= self.last_xid       # the xids wrapped


class OfConnError(MbxError, ConnectionError):
    """The connection could not be made or was lost; the message is one line."""


def _version_name(version):
    return "1.%d" % (version - 1) if 1 <= version <= 6 else "0x%02x" % version


class OfConn:
    """A non-blocking OpenFlow 1.3 client for ``unix:PATH`` (or ``tcp:IP:PORT``).

    Callbacks (constructor keywords or attributes; None: ignore the event):

    * ``on_flow_removed(cookie, table_id, priority, match_flow, reason,
      packet_count, byte_count, duration_sec)``; ``match_flow`` is a ``Flow``
      (ofmsg conventions) with the removed entry's table, priority, match,
      cookie and timeouts, and no instructions.
    * ``on_flow_stats(xid, entries)``: once per ``request_flow_stats`` xid, after
      the last part of a multipart reply; ``entries`` is a list of
      ``(Flow, packet_count, byte_count, duration_sec)``.
    * ``on_barrier(xid)``: a BARRIER_REPLY.
    * ``on_error(xid, type, code)``: an OFPT_ERROR (also logged, one line).

    Only ``connect()`` and ``run()`` raise (``OfConnError``, one line): a lost
    connection surfaces in the next ``run()``, after which the object is
    closed and ``connect()`` may be called again.  Requests made while
    disconnected are dropped and counted in ``requests_dropped``.

    A barrier asked for (``barrier()``) but not answered when the connection
    is lost, or asked for while disconnected, is not forgotten: once the
    owner has reconnected and resynchronised the switch, ``resume_barriers()``
    sends one barrier whose reply answers each of them, in order.  So
    whoever waits for a barrier (a config generation to report, frames to
    release, an import to acknowledge) is answered after the resync, never
    left waiting.
    """

    def __init__(self, target, on_flow_removed=None, on_flow_stats=None,
                 on_barrier=None, on_error=None):
        self.target = target
        self.on_flow_removed = on_flow_removed
        self.on_flow_stats = on_flow_stats
        self.on_barrier = on_barrier
        self.on_error = on_error
        self.dp = ofproto_protocol.ProtocolDesc(OF13)
        self.sock = None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._xid = 0
        self._stats_parts = {}          # xid -> entries so far (request pending)
        # Blocking multipart requests other than flow stats (group and port
        # descriptions): xid -> [multipart type, body entries so far, done].
        self._mp_pending = {}
        self._broken = None             # why the last write failed (run() raises it)
        self._bundle_id = 0
        self._batches = {}              # check barrier xid -> _BundleBatch (undecided)
        # Output asked for while a bundle batch is undecided, in order:
        # [bytes, _BundleBatch or None]; a batch's own messages carry it.
        self._held = collections.deque()
        # The xids of recent bundle commits: an error for one is a refused commit.
        self._commit_xids = collections.deque(maxlen=1024)
        # Counters (for metrics).
        self.flow_mods_sent = 0
        self.group_mods_sent = 0
        self.packet_outs_sent = 0
        self.bundles_committed = 0
        self.bundles_discarded = 0
        self.bundles_failed = 0         # refused at their commit (nothing applied)
        self.bytes_sent = 0
        self.messages_received = 0
        self.errors_received = 0
        self.requests_dropped = 0       # asked for while disconnected
        self._unanswered = {}           # barrier xids sent, not yet answered (in order)
        self.lost_barriers = []         # barrier xids the connection lost (in order)
        self._resume_xid = None         # the barrier that answers lost_barriers

    # ------------------------------------------------------------ connection
    def connect(self, timeout=5.0):
        """Connect and handshake (HELLO, SET_CONFIG, SET_ASYNC, barrier),
        blocking at most ``timeout`` seconds.  Raises ``OfConnError``."""
        self.close()
        deadline = time.monotonic() + timeout
        sock = self._open_socket(timeout)
        self.sock = sock
        self._inbuf.clear()
        self._outbuf.clear()
        self._stats_parts.clear()
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(_HEADER.pack(OF13, ofp.OFPT_HELLO, _HEADER.size, self._next_xid()))
            version, msg_type, body = self._recv_blocking(deadline)
            if msg_type == ofp.OFPT_ERROR:
                raise OfConnError("%s: switch refused the connection (error %s)"
                                  % (self.target, self._error_text(body)))
            if msg_type != ofp.OFPT_HELLO:
                raise OfConnError("%s: expected HELLO, got message type %d"
                                  % (self.target, msg_type))
            offered = self._hello_versions(version, body)
            if OF13 not in offered:
                raise OfConnError(
                    "%s: switch does not speak OpenFlow 1.3 (it offers %s; set the "
                    "bridge's protocols to include OpenFlow13)"
                    % (self.target, ", ".join(_version_name(v) for v in sorted(offered))))
            set_config = self.dp.ofproto_parser.OFPSetConfig(
                self.dp, ofp.OFPC_FRAG_NORMAL, MISS_SEND_LEN)
            set_async = self.dp.ofproto_parser.OFPSetAsync(
                self.dp, [0, 0], [0, 0], [_ALL_FLOW_REMOVED, _ALL_FLOW_REMOVED])
            barrier = self.dp.ofproto_parser.OFPBarrierRequest(self.dp)
            barrier_xid = None
            out = b""
            for msg in (set_config, set_async, barrier):
                xid = self._next_xid()
                barrier_xid = xid
                out += self._serialize(msg, xid)
            sock.sendall(out)
            while True:
                version, msg_type, body = self._recv_blocking(deadline)
                xid = _HEADER.unpack_from(body)[3]
                if msg_type == ofp.OFPT_ERROR:
                    raise OfConnError("%s: handshake failed (error %s)"
                                      % (self.target, self._error_text(body)))
                if msg_type == ofp.OFPT_ECHO_REQUEST:
                    sock.sendall(_HEADER.pack(OF13, ofp.OFPT_ECHO_REPLY, len(body), xid)
                                 + bytes(body[_HEADER.size:]))
                elif msg_type == ofp.OFPT_BARRIER_REPLY and xid == barrier_xid:
                    break
                # Anything else before the barrier (a port status...) is dropped.
            sock.setblocking(False)
        except socket.timeout:
            self.close()
            raise OfConnError("%s: no OpenFlow handshake within %.1fs"
                              % (self.target, timeout)) from None
        except OSError as err:
            self.close()
            if isinstance(err, OfConnError):
                raise
            raise OfConnError("%s: %s" % (self.target, err.strerror or err)) from None
        LOG.info("connected to %s (OpenFlow 1.3, service connection)", self.target)

    def _open_socket(self, timeout):
        if self.target.startswith("unix:"):
            family, addr = socket.AF_UNIX, self.target[len("unix:"):]
        elif self.target.startswith("tcp:"):
            host, _, port = self.target[len("tcp:"):].rpartition(":")
            family, addr = socket.AF_INET, (host, int(port))
        else:
            raise OfConnError("%s: target must be unix:PATH or tcp:IP:PORT" % self.target)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        # Room for a bulk import's packet-outs in the kernel (up to
        # net.core.wmem_max): the switch works through them while the
        # daemon builds the next ones.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            sock.connect(addr)
        except OSError as err:
            sock.close()
            hint = ""
            if err.errno in (errno.ENOENT, errno.ECONNREFUSED) and family == socket.AF_UNIX:
                hint = " (is ovs-vswitchd running and the bridge created?)"
            raise OfConnError("cannot connect to %s: %s%s"
                              % (self.target, err.strerror or err, hint)) from None
        return sock

    def _recv_blocking(self, deadline):
        """One whole message during the handshake: (version, type, bytes)."""
        while True:
            if len(self._inbuf) >= _HEADER.size:
                version, msg_type, length, _ = _HEADER.unpack_from(self._inbuf)
                if length < _HEADER.size:
                    raise OfConnError("%s: malformed OpenFlow message (length %d)"
                                      % (self.target, length))
                if len(self._inbuf) >= length:
                    body = bytes(self._inbuf[:length])
                    del self._inbuf[:length]
                    return version, msg_type, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            self.sock.settimeout(remaining)
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise OfConnError("%s: connection closed during the handshake"
                                  % self.target)
            self._inbuf += data

    @staticmethod
    def _hello_versions(version, msg):
        """Versions a HELLO offers: its bitmap if it has one, else its version
        and (OpenFlow negotiation) every lower one."""
        offset = _HEADER.size
        while offset + 4 <= len(msg):
            elem_type, elem_len = struct.unpack_from("!HH", msg, offset)
            if elem_len < 4:
                break
            if elem_type == _HELLO_ELEM_VERSIONBITMAP:
                versions = set()
                for i in range((elem_len - 4) // 4):
                    word, = struct.unpack_from("!I", msg, offset + 4 + 4 * i)
                    versions |= {32 * i + b for b in range(32) if word >> b & 1}
                return versions
            offset += (elem_len + 7) // 8 * 8
        return set(range(1, version + 1))

    def fileno(self):
        if self.sock is None:
            raise OfConnError("%s: not connected" % self.target)
        return self.sock.fileno()

    @property
    def connected(self):
        return self.sock is not None

    @property
    def pending_output(self):
        """Bytes queued but not yet accepted by the socket."""
        return len(self._outbuf)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self._broken = None
        # Barriers the switch will never answer on this connection.
        self.lost_barriers.extend(self._unanswered)
        self._unanswered.clear()
        if self._resume_xid is not None:
            self._resume_xid = None     # lost too: resume_barriers() asks again
        self._outbuf.clear()
        self._inbuf.clear()
        self._stats_parts.clear()
        self._mp_pending.clear()
        # The switch drops the bundles of a connection that goes.
        self._batches.clear()
        self._held.clear()
        self._commit_xids.clear()

    # ------------------------------------------------------------- poll loop
    def wait(self, poller):
        """Register with an ``ovs.poller.Poller`` (POLLIN, and POLLOUT while
        output is pending)."""
        if self.sock is None:
            return
        if self._broken:
            poller.immediate_wake()     # run() reports it
            return
        events = select.POLLIN
        if self._outbuf:
            events |= select.POLLOUT
        poller.fd_wait(self.sock, events)

    def run(self):
        """Flush pending output, read what is available (never blocks), and
        dispatch every complete message.  Raises ``OfConnError`` if the
        connection is gone (the daemon then reconnects)."""
        if self.sock is None:
            raise OfConnError("%s: not connected" % self.target)
        self._flush()
        if self._broken:
            self._lost(self._broken)
        eof = False
        for _ in range(_MAX_RECVS_PER_RUN):
            try:
                data = self.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                self._lost(err.strerror or str(err))
            if not data:
                eof = True
                break
            self._inbuf += data
            if len(data) < _RECV_SIZE:
                break
        self._dispatch_all()
        if eof:
            self._lost("connection closed by the switch")
        self._flush()
        if self._broken:
            self._lost(self._broken)

    def _lost(self, why):
        target = self.target
        self.close()
        raise OfConnError("%s: %s" % (target, why))

    def _flush(self):
        """Write what the socket takes now.  A write error is kept for
        ``run()`` to raise, so requests never raise."""
        for _ in range(_MAX_SENDS_PER_FLUSH):
            if not self._outbuf or self._broken:
                return
            try:
                n = self.sock.send(self._outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._broken = err.strerror or str(err)
                return
            self.bytes_sent += n
            del self._outbuf[:n]

    def _dispatch_all(self):
        buf = self._inbuf
        offset = 0
        try:
            while len(buf) - offset >= _HEADER.size:
                version, msg_type, length, xid = _HEADER.unpack_from(buf, offset)
                if length < _HEADER.size:
                    self._lost("malformed OpenFlow message (length %d)" % length)
                if len(buf) - offset < length:
                    break
                msg = bytes(buf[offset:offset + length])
                offset += length
                self.messages_received += 1
                self._dispatch(version, msg_type, length, xid, msg)
        finally:
            if self.sock is not None:
                del buf[:offset]

    def _dispatch(self, version, msg_type, length, xid, msg):
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            self._queue(_HEADER.pack(OF13, ofp.OFPT_ECHO_REPLY, length, xid)
                        + msg[_HEADER.size:], hold=False)
        elif msg_type == ofp.OFPT_FLOW_REMOVED:
            if self.on_flow_removed is not None:
                self._flow_removed(self._parse(version, msg_type, length, xid, msg))
        elif msg_type == ofp.OFPT_MULTIPART_REPLY:
            self._multipart_reply(self._parse(version, msg_type, length, xid, msg))
        elif msg_type == ofp.OFPT_BARRIER_REPLY:
            batch = self._batches.pop(xid, None)
            if batch is not None:
                self._decide(batch)
            elif xid == self._resume_xid:
                self._resume_xid = None
                lost, self.lost_barriers = self.lost_barriers, []
                for old in lost:
                    if self.on_barrier is not None:
                        self.on_barrier(old)
            else:
                self._unanswered.pop(xid, None)
                if self.on_barrier is not None:
                    self.on_barrier(xid)
        elif msg_type == ofp.OFPT_ERROR:
            self.errors_received += 1
            err_type, code = struct.unpack_from("!HH", msg, _HEADER.size) \
                if length >= _HEADER.size + 4 else (0xFFFF, 0xFFFF)
            LOG.warning("OpenFlow error from %s for xid %d: %s", self.target, xid,
                        self._error_text(msg))
            self._stats_parts.pop(xid, None)
            self._mp_pending.pop(xid, None)
            if xid in self._commit_xids:
                self._commit_xids.remove(xid)
                self.bundles_failed += 1
                LOG.warning("%s: a bundle was refused at its commit (xid %d): nothing of "
                            "it was applied", self.target, xid)
            for batch in self._batches.values():
                if batch.failed is None and batch.has(xid):
                    batch.failed = (xid, err_type, code)
            if self.on_error is not None:
                self.on_error(xid, err_type, code)
        # HELLO, ECHO_REPLY, PACKET_IN, PORT_STATUS, ...: not for the daemon.

    def _parse(self, version, msg_type, length, xid, msg):
        return ofproto_parser.msg(self.dp, version, msg_type, length, xid, msg)

    def _flow_removed(self, msg):
        if msg is None:
            return
        match_flow = ofmsg.flow_from_stats(types.SimpleNamespace(
            table_id=msg.table_id, priority=msg.priority, match=msg.match,
            instructions=(), cookie=msg.cookie, idle_timeout=msg.idle_timeout,
            hard_timeout=msg.hard_timeout))
        self.on_flow_removed(msg.cookie, msg.table_id, msg.priority, match_flow,
                             msg.reason, msg.packet_count, msg.byte_count,
                             msg.duration_sec)

    def _multipart_reply(self, msg):
        if msg is None:
            return
        if msg.type != ofp.OFPMP_FLOW:
            pending = self._mp_pending.get(msg.xid)
            if pending is not None and pending[0] == msg.type:
                pending[1].extend(msg.body)
                pending[2] = not msg.flags & ofp.OFPMPF_REPLY_MORE
            return
        parts = self._stats_parts.get(msg.xid)
        if parts is None:
            return                      # not ours, or already failed
        for stats in msg.body:
            parts.append((ofmsg.flow_from_stats(stats), stats.packet_count,
                          stats.byte_count, stats.duration_sec))
        if not msg.flags & ofp.OFPMPF_REPLY_MORE:
            del self._stats_parts[msg.xid]
            if self.on_flow_stats is not None:
                self.on_flow_stats(msg.xid, parts)

    @staticmethod
    def _error_text(msg):
        if len(msg) < _HEADER.size + 4:
            return "(truncated)"
        err_type, code = struct.unpack_from("!HH", msg, _HEADER.size)
        try:
            return "%s/%s" % (ofp.ofp_error_type_to_str(err_type),
                              ofp.ofp_error_code_to_str(err_type, code))
        except Exception:           # noqa: BLE001 - an unknown pair is still worth a line
            return "type %d code %d" % (err_type, code)

    # --------------------------------------------------------------- requests
    def _next_xid(self):
        self._xid = self._xid % 0xFFFFFFFF + 1
        return self._xid

    @staticmethod
    def _serialize(msg, xid):
        msg.set_xid(xid)
        msg.serialize()
        return msg.buf

    def _queue(self, data, hold=True, batch=None):
        """Queue ``data`` and write what the socket takes now.  Disconnected:
        the request is dropped (and counted); the daemon resynchronises from a
        flow-stats dump after it reconnects, as flows outlive a connection.
        While a bundle batch is undecided, output waits behind it (``hold``;
        ``batch``: this is a new batch's own messages)."""
        if self.sock is None or self._broken:
            self.requests_dropped += 1
            return
        if hold and (self._held or self._batches):
            self._held.append((data, batch))
            return
        self._outbuf += data
        if batch is not None:
            self._batches[batch.last_xid] = batch
        self._flush()

    def _decide(self, batch):
        """The switch has seen every message of ``batch``: commit its bundles,
        or discard them all if it refused one; then what waited goes out."""
        kind = ofp.ONF_BCT_DISCARD_REQUEST if batch.failed else ofp.ONF_BCT_COMMIT_REQUEST
        out = bytearray()
        for bundle_id in batch.ids:
            xid = self._next_xid()
            if not batch.failed:
                self._commit_xids.append(xid)
            out += _BUNDLE_CTRL.pack(OF13, ofp.OFPT_EXPERIMENTER, _BUNDLE_CTRL.size,
                                     xid, ofproto_common.ONF_EXPERIMENTER_ID,
                                     ofp.ONF_ET_BUNDLE_CONTROL, bundle_id, kind, _BUNDLE_FLAGS)
        if batch.failed:
            self.bundles_discarded += len(batch.ids)
            LOG.warning("%s: %d flow/group mods in %d bundles discarded, none applied: the "
                        "switch refused xid %d", self.target, batch.flow_mods,
                        len(batch.ids), batch.failed[0])
        else:
            self.bundles_committed += len(batch.ids)
        self._outbuf += out
        while self._held:
            data, waiting = self._held.popleft()
            self._outbuf += data
            if waiting is not None:
                self._batches[waiting.last_xid] = waiting
                break                   # what follows waits for that batch
        self._flush()

    def send_flows(self, add=(), delete=(), send_flow_rem=True, bundle=None, groups=()):
        """Queue FLOW_MODs: first one 'delete_strict' per flow of ``delete``
        (its exact cookie, priority and match), then one GROUP_MOD per
        ``(command, Group)`` of ``groups`` (commands of ``ofmsg.to_group_mod``),
        then one 'add' per flow of ``add`` (with OFPFF_SEND_FLOW_REM when
        ``send_flow_rem``).  So a flow added here may use a group added here,
        and a group deleted here no longer has the flows deleted here (OVS
        deletes the flows that still use a deleted group).  Everything goes
        out in as few socket writes as the socket accepts; the rest is sent
        from ``run()``.  Returns the xids in that order (an OFPT_ERROR for
        one of them names it).

        ``bundle``: send them in bundles (see the module doc; True makes a
        group change and the flows using it one atomic step, which OVS may
        still refuse at the commit: ``bundles_failed``); None: when there
        are ``BUNDLE_MIN`` or more messages."""
        encode = ofmsg.flow_mod_bytes
        xid = self._xid
        xids = []
        chunks = []
        for flow in delete:
            xid = xid % 0xFFFFFFFF + 1
            chunks.append(encode(flow, "delete_strict", 0, xid, True))
            xids.append(xid)
        n_groups = 0
        for command, group in groups:
            xid = xid % 0xFFFFFFFF + 1
            chunks.append(self._serialize(ofmsg.to_group_mod(self.dp, group, command), xid))
            xids.append(xid)
            n_groups += 1
        flags = ofp.OFPFF_SEND_FLOW_REM if send_flow_rem else 0
        for flow in add:
            xid = xid % 0xFFFFFFFF + 1
            chunks.append(encode(flow, "add", flags, xid))
            xids.append(xid)
        self._xid = xid
        if not chunks:
            return xids
        self.flow_mods_sent += len(chunks) - n_groups
        self.group_mods_sent += n_groups
        if bundle or (bundle is None and len(chunks) >= BUNDLE_MIN):
            self._send_bundles(chunks, xids)
        else:
            self._queue(b"".join(chunks))
        return xids

    def _send_bundles(self, chunks, xids):
        """Open bundles, add ``chunks`` (FLOW_MODs with ``xids``) to them and
        ask for a barrier: its reply decides (``_decide``).  With nothing
        waiting, the messages are written as they are made, so the switch
        reads them meanwhile."""
        batch = _BundleBatch(xids[0])   # its xids run from there to the barrier's
        batch.flow_mods = len(chunks)
        direct = not (self._held or self._batches) and self.sock is not None \
            and not self._broken
        out = bytearray()
        ctrl, add = _BUNDLE_CTRL.pack, _BUNDLE_ADD.pack
        onf, head = ofproto_common.ONF_EXPERIMENTER_ID, _BUNDLE_ADD.size
        for start in range(0, len(chunks), BUNDLE_CHUNK):
            self._bundle_id = self._bundle_id % 0xFFFFFFFF + 1
            bundle_id = self._bundle_id
            batch.ids.append(bundle_id)
            out += ctrl(OF13, ofp.OFPT_EXPERIMENTER, _BUNDLE_CTRL.size, self._next_xid(), onf,
                        ofp.ONF_ET_BUNDLE_CONTROL, bundle_id, ofp.ONF_BCT_OPEN_REQUEST,
                        _BUNDLE_FLAGS)
            for i in range(start, min(start + BUNDLE_CHUNK, len(chunks))):
                msg = chunks[i]
                # The message keeps its xid: an error for it names it.
                out += add(OF13, ofp.OFPT_EXPERIMENTER, head + len(msg), xids[i], onf,
                           ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, _BUNDLE_FLAGS)
                out += msg
                if direct and not i & _FLUSH_EVERY:
                    self._outbuf += out
                    out.clear()
                    self._flush()
        batch.last_xid = self._next_xid()
        out += _HEADER.pack(OF13, ofp.OFPT_BARRIER_REQUEST, _HEADER.size, batch.last_xid)
        if direct:
            self._outbuf += out
            self._batches[batch.last_xid] = batch
            self._flush()
        else:
            self._queue(bytes(out), batch=batch)

    def send_groups(self, groups, command="add"):
        """Queue one GROUP_MOD per ``Group`` of ``groups`` with ``command``
        ("add", "modify", "add_or_mod" or "delete"; see
        ``ofmsg.to_group_mod``).  Returns their xids, in order.  Each group
        is encoded before anything is queued: a group the model cannot
        install raises ValueError and nothing is sent."""
        xids = self._send_mods([ofmsg.to_group_mod(self.dp, g, command) for g in groups])
        self.group_mods_sent += len(xids)
        return xids

    def send_meters(self, meters, command="add"):
        """Queue one METER_MOD per ``Meter`` of ``meters`` with ``command``
        ("add", "modify" or "delete"; ``ofmsg.to_meter_mod``), behind
        anything asked for before.  Returns their xids, in order."""
        return self._send_mods([ofmsg.to_meter_mod(self.dp, m, command) for m in meters])

    def _send_mods(self, messages):
        """Queue os-ken messages, each with the next xid; their xids."""
        xid = self._xid
        xids = []
        out = bytearray()
        for msg in messages:
            xid = xid % 0xFFFFFFFF + 1
            out += self._serialize(msg, xid)
            xids.append(xid)
        self._xid = xid
        if xids:
            self._queue(bytes(out))
        return xids

    def send_packet_outs(self, messages):
        """Queue OFPT_PACKET_OUT messages (bytes of ``ofmsg.packet_out_bytes``
        or ``ofmsg.PacketOutEncoder``), in order, behind anything asked for
        before.  Each gets the next xid (written into its header); returns
        them, in order.  Bytes that are not whole OpenFlow 1.3 packet-outs
        raise ValueError and nothing is sent."""
        out = bytearray().join(messages)
        xid = self._xid
        xids = []
        offset = 0
        unpack, pack_into = _HEADER.unpack_from, _XID.pack_into
        end = len(out)
        while offset < end:
            version, msg_type, length, _ = unpack(out, offset) if end - offset >= 8 \
                else (0, 0, 0, 0)
            if version != OF13 or msg_type != ofp.OFPT_PACKET_OUT or length < 24 \
                    or offset + length > end:
                raise ValueError("send_packet_outs: message %d is not an OpenFlow 1.3 "
                                 "PACKET_OUT of its length" % len(xids))
            xid = xid % 0xFFFFFFFF + 1
            pack_into(out, offset + 4, xid)
            xids.append(xid)
            offset += length
        self._xid = xid
        if xids:
            self.packet_outs_sent += len(xids)
            self._queue(out)
        return xids

    def request_flow_stats(self, cookie, cookie_mask):
        """Ask for every flow (all tables) whose cookie matches under the mask;
        the answer arrives through ``on_flow_stats(xid, entries)``."""
        xid = self._next_xid()
        self._stats_parts[xid] = []
        self._queue(self._serialize(ofmsg.flow_stats_request(self.dp, cookie, cookie_mask), xid))
        return xid

    def dump_flows(self, cookie, cookie_mask, timeout=10.0):
        """Blocking: request flow stats and wait (at most ``timeout`` seconds)
        for the whole reply, for start-up before the poll loop runs.  Other
        messages meanwhile go to their callbacks as in ``run()``.  Returns the
        list ``on_flow_stats`` would get; raises ``OfConnError``."""
        if self.sock is None:
            raise OfConnError("%s: not connected" % self.target)
        done = {}
        xid = self.request_flow_stats(cookie, cookie_mask)
        callback = self.on_flow_stats
        self.on_flow_stats = lambda x, entries: (done.__setitem__(x, entries) if x == xid
                                                 else callback and callback(x, entries))
        try:
            deadline = time.monotonic() + timeout
            while xid not in done:
                if xid not in self._stats_parts and xid not in done:
                    raise OfConnError("%s: flow stats request failed (see the error above)"
                                      % self.target)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OfConnError("%s: no flow stats reply within %.1fs"
                                      % (self.target, timeout))
                select.select([self.sock], [self.sock] if self._outbuf else [], [],
                              min(remaining, 0.1))
                self.run()
        finally:
            self.on_flow_stats = callback
            self._stats_parts.pop(xid, None)        # a late reply is ignored
        return done[xid]

    def dump_groups(self, timeout=10.0):
        """Blocking, like ``dump_flows``: every group of the bridge, as
        ``Group`` values (``ofmsg.group_from_stats``), in the switch's order.
        Raises ``OfConnError``."""
        body = self._multipart_blocking(ofmsg.group_desc_request(self.dp),
                                        ofp.OFPMP_GROUP_DESC, "group description", timeout)
        return [ofmsg.group_from_stats(desc) for desc in body]

    def dump_meters(self, timeout=10.0):
        """Blocking, like ``dump_flows``: every meter of the bridge, as
        ``Meter`` values (``ofmsg.meter_from_config``).  Raises
        ``OfConnError``."""
        body = self._multipart_blocking(ofmsg.meter_config_request(self.dp),
                                        ofp.OFPMP_METER_CONFIG, "meter config", timeout)
        return [ofmsg.meter_from_config(c) for c in body]

    def meter_stats(self, timeout=5.0):
        """Blocking, like ``dump_flows``: {meter id: (packets in, packets
        dropped)} of every meter.  Raises ``OfConnError``."""
        body = self._multipart_blocking(ofmsg.meter_stats_request(self.dp),
                                        ofp.OFPMP_METER, "meter stats", timeout)
        return {mid: (n_in, dropped) for mid, n_in, dropped in map(ofmsg.meter_dropped, body)}

    def port_number(self, name, timeout=5.0):
        """Blocking, like ``dump_flows``: the OpenFlow port number of the
        bridge's port ``name`` (from a port-description request), or None if
        the bridge has no such port.  Raises ``OfConnError``."""
        parser = self.dp.ofproto_parser
        body = self._multipart_blocking(parser.OFPPortDescStatsRequest(self.dp, 0),
                                        ofp.OFPMP_PORT_DESC, "port description", timeout)
        want = name.encode() if isinstance(name, str) else name
        for port in body:
            if port.name == want:
                return port.port_no
        return None

    def _multipart_blocking(self, msg, mp_type, what, timeout):
        """Send the multipart request ``msg`` and run the connection until
        its whole reply came (at most ``timeout`` seconds): the reply's body
        entries.  Other messages meanwhile go to their callbacks."""
        if self.sock is None:
            raise OfConnError("%s: not connected" % self.target)
        xid = self._next_xid()
        entry = self._mp_pending[xid] = [mp_type, [], False]
        self._queue(self._serialize(msg, xid))
        try:
            deadline = time.monotonic() + timeout
            while not entry[2]:
                if self._mp_pending.get(xid) is not entry:
                    raise OfConnError("%s: %s request failed (see the error above)"
                                      % (self.target, what))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OfConnError("%s: no %s reply within %.1fs"
                                      % (self.target, what, timeout))
                select.select([self.sock], [self.sock] if self._outbuf else [], [],
                              min(remaining, 0.1))
                self.run()
        finally:
            self._mp_pending.pop(xid, None)     # a late reply is ignored
        return entry[1]

    def barrier(self):
        """Send a BARRIER_REQUEST; ``on_barrier(xid)`` fires once every earlier
        message has been processed."""
        xid = self._next_xid()
        if self.sock is None or self._broken:
            self.lost_barriers.append(xid)
        else:
            self._unanswered[xid] = None
        self._queue(_HEADER.pack(OF13, ofp.OFPT_BARRIER_REQUEST, _HEADER.size, xid))
        return xid

    def resume_barriers(self):
        """After a reconnection and resync: answer every lost barrier
        (``on_barrier`` for each, in the order they were asked for) once
        the switch has taken everything sent until now.  Returns the
        number of barriers that will be answered."""
        if not self.lost_barriers or self.sock is None:
            return 0
        xid = self._next_xid()
        self._resume_xid = xid
        self._queue(_HEADER.pack(OF13, ofp.OFPT_BARRIER_REQUEST, _HEADER.size, xid))
        return len(self.lost_barriers)
