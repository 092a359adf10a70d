"""The channel between mbxd daemons that carries a migrating VM's state.

TLS 1.2+ over TCP, mutually authenticated with the certificates made by
``mbx-pki`` (``middlebox.pki``): each side presents its host's certificate,
and a peer is known only by the subject CN of its verified certificate.
Framing: a 4-byte big-endian length, then a compact UTF-8 JSON object, and
if the message carries bytes (its ``data``, e.g. records in
``middlebox.conn``'s binary format) a NUL byte and those bytes; at most
``MAX_MESSAGE`` bytes in all.

``Channel`` runs its own threads (one accepting, one per session) and hands
``Event`` s to mbxd's single poll loop through a self-pipe::

    poller.fd_wait(channel.fileno(), ovs.poller.POLLIN)
    ...
    for ev in channel.events():
        ...

Event kinds (``Event(kind, sid, peer, message, reason, size)``):

``connected``  an outgoing session's handshake is done; ``peer`` is the
               verified server CN (it was checked to name the expected host).
``accepted``   a verified incoming session, with a ``sid`` like ``in-1``.
``message``    ``message`` is the decoded object, ``size`` its frame bytes.
``closed``     exactly once per session; ``reason`` is ``eof`` (the peer closed
               at a frame boundary), ``truncated`` (it closed mid-frame),
               ``corrupt: WHY`` (a bad frame), ``refused: WHY`` (connecting
               or the TLS handshake failed), ``closed`` (our own ``close()`` or
               ``stop()``) or ``error: WHY``.

An incoming connection that fails the handshake (not TLS, no certificate, a
certificate from another CA) produces no event at all, only a log line.

Slots: a connection holds one from its accept to the end of its TLS
handshake, at most ``HANDSHAKE_TIMEOUT`` seconds (an idle or slow peer is
cut then); one peer address holds at most ``MAX_PENDING_PER_PEER`` of them
and all together at most ``MAX_PENDING``, so idle connections from one
address cannot keep a real host's migration out.  Past the handshake only a
known host keeps its session: ``admit(peer CN)`` (given by the daemon: a
host some migration row names) must say yes within ``ADMIT_WAIT`` seconds
(its row may still be on its way), with at most ``MAX_UNKNOWN_PER_PEER``
sessions of one CN waiting for that; any other session is cut.  Refused
connections are logged once per address (or CN) per ``LOG_EVERY``
seconds, with how many were refused meanwhile.
"""

import collections
import errno
import ipaddress
import json
import logging
import os
import re
import select
import socket
import ssl
import struct
import threading
import time

from ovsdb.errors import MbxError

LOG = logging.getLogger("mbxd.migchan")

MAX_MESSAGE = 64 * 1024 * 1024
HEADER = struct.Struct("!I")
HANDSHAKE_TIMEOUT = 5.0     # seconds an incoming connection has to authenticate
LINGER = 2.0                # seconds to wait for the peer's EOF after our close()
MAX_PENDING = 64            # incoming connections not yet authenticated, at most
MAX_PENDING_PER_PEER = 4    # ... of them from one peer address
ADMIT_WAIT = 3.0            # seconds an authenticated host waits to become known
MAX_UNKNOWN_PER_PEER = 2    # sessions of one CN waiting for that, at most
LOG_EVERY = 10.0            # seconds between two log lines about one refused peer
JOIN_TIMEOUT = 2.0          # stop(): total time to wait for the threads
CHUNK = 256 * 1024          # bytes per TLS write / read call
READS_PER_WAKE = 16

Event = collections.namedtuple("Event", "kind sid peer message reason size")


class FrameError(ValueError):
    """A frame that cannot be decoded; ``reason`` says why in one line."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# --- framing ---------------------------------------------------------------

def encode(message):
    """One frame: 4-byte big-endian length + compact UTF-8 JSON of
    ``message`` (+ NUL + its ``data`` bytes, if any)."""
    if not isinstance(message, dict):
        raise TypeError("a message is a dict, not %s" % type(message).__name__)
    data = message.get("data")
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("a message's data is bytes, not %s" % type(data).__name__)
        message = {k: v for k, v in message.items() if k != "data"}
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode("utf-8")
    if data is not None:
        payload += b"\0" + bytes(data)
    if len(payload) > MAX_MESSAGE:
        raise FrameError("message of %d bytes exceeds %d" % (len(payload), MAX_MESSAGE))
    return HEADER.pack(len(payload)) + payload


class Decoder:
    """Incremental frame decoder: feed it bytes as they come."""

    def __init__(self):
        self._buf = bytearray()
        self._error = None

    def pending(self):
        """Bytes buffered of an incomplete frame (0 at a frame boundary)."""
        return len(self._buf)

    def feed(self, data):
        """Add ``data``; return the messages it completed.  Raises FrameError
        (and keeps raising it) once the stream is bad."""
        self.push(data)
        out = []
        while True:
            frame = self.next_frame()
            if frame is None:
                return out
            out.append(frame[0])

    def push(self, data):
        self._buf += data

    def next_frame(self):
        """The next complete ``(message, frame_size)``, or None."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if len(buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(buf)
        if length > MAX_MESSAGE:
            self._fail("frame length %d exceeds %d" % (length, MAX_MESSAGE))
        size = HEADER.size + length
        if len(buf) < size:
            return None
        payload = bytes(memoryview(buf)[HEADER.size:size])
        del buf[:size]
        # JSON text never holds a raw NUL: the first one starts the data.
        head, nul, data = payload.partition(b"\0")
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as err:
            self._fail("bad UTF-8 at byte %d" % err.start)
        try:
            message = json.loads(text)
        except ValueError as err:
            self._fail("bad JSON: %s" % err)
        if not isinstance(message, dict):
            self._fail("JSON %s is not an object" % type(message).__name__)
        message.pop("data", None)
        if nul:
            message["data"] = data
        return message, size

    def _fail(self, reason):
        self._error = FrameError(reason)
        raise self._error


# --- TLS -------------------------------------------------------------------

def _load(ctx, files, cert=True):
    try:
        ctx.load_verify_locations(cafile=files.ca)
        if cert:
            ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as err:
        raise MbxError("cannot load TLS files %s: %s" % (", ".join(
            str(p) for p in files if p), _why(err)))


def server_context(files):
    """Server side: TLS >= 1.2, client certificate required, CA ``files.ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    # With TLS 1.3 a client learns that its certificate was accepted only
    # from what the server sends after verifying it: the session tickets.
    ctx.num_tickets = max(ctx.num_tickets, 1)
    _load(ctx, files)
    return ctx


def client_context(files):
    """Client side: TLS >= 1.2, server certificate and host name checked.
    ``files.cert`` may be None (no client certificate: the server refuses)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, files, cert=bool(files.cert))
    return ctx


def peer_name(sslsock):
    """Subject CN of the peer's verified certificate (None if it has none)."""
    cert = sslsock.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def _why(err):
    """One line on what ``err`` was."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return "certificate verify failed: %s" % (err.verify_message or err.reason)
    if isinstance(err, ssl.SSLError):
        if err.reason:
            return err.reason.lower().replace("_", " ")
        text = str(err.args[1] if len(err.args) > 1 else err)
    elif isinstance(err, TimeoutError):
        return "timed out"
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror.lower()
    else:
        text = str(err) or type(err).__name__
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_address(address):
    """``ssl:IP:PORT`` (``ssl:[IPv6]:PORT``) -> ``(family, ip, port)``."""
    if not isinstance(address, str) or not address.startswith("ssl:"):
        raise ValueError("bad address %r (want ssl:IP:PORT)" % (address,))
    host, sep, port = address[4:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
        port = int(port)
        if not sep or not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ValueError("bad address %r (want ssl:IP:PORT)" % (address,))
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, str(ip), port


def _no_delay(sock):
    """A session's messages are small and each waits for an answer: Nagle's
    algorithm with the peer's delayed ACK would hold many of them ~40 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass                            # e.g. reset already: the handshake says so


# --- the channel ------------------------------------------------------------

class _Stopped(Exception):
    """The channel is stopping: leave now."""


class _Refused(Exception):
    pass


class _Session:
    def __init__(self, sid, outgoing):
        self.sid = sid
        self.outgoing = outgoing
        self.peer = None
        self.out = collections.deque()     # encoded frames not yet written
        self.closing = False                # close() was called
        self.done = False                   # "closed" was queued
        self.sent = 0
        self.received = 0
        self.thread = None
        self.running = False                # its thread has not ended
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def wake(self):
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close_pipe(self):
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wake_r = self.wake_w = -1


class Channel:
    """This host's end of the migration channel.

    ``Channel(host, files, listen=None, admit=None)``: ``files`` are this
    host's ``pki.HostFiles``; ``listen`` is ``(addr, port)`` (port 0 picks
    one, see ``listen_address``) or None for a channel that only connects
    out; ``admit(peer)`` says whether an authenticated peer (its CN) is a
    known host (called from the channel's threads; None: every peer is).
    """

    def __init__(self, host, files, listen=None, admit=None):
        self.host = host
        self.files = files
        self.listen = listen
        self.admit = admit
        self.listen_address = None
        self._lock = threading.Lock()
        self._events = collections.deque()
        self._sessions = {}
        self._pending = 0                   # incoming, not yet authenticated
        self._pending_by = collections.Counter()    # ... per peer address
        self._unknown_by = collections.Counter()    # authenticated, not yet admitted, per CN
        self._refused = {}                  # address or CN -> [refused since logged, logged at]
        self.refused = collections.Counter()        # why -> connections refused
        self._next_in = 0
        self._stopping = False
        self._started = False
        self._lsock = None
        self._accept_thread = None
        self._threads = set()
        self._live = set()                  # sessions whose thread runs
        self._ev_r, self._ev_w = os.pipe()
        os.set_blocking(self._ev_r, False)
        os.set_blocking(self._ev_w, False)
        self._wake_r, self._wake_w = os.pipe()   # wakes the accept thread
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._server_ctx = None
        self._client_ctx = None

    # -- API for the poll loop --

    def start(self):
        """Load the certificates, bind the listener (MbxError if either
        fails) and start the accept thread."""
        if self._started:
            return
        self._check_own_cert()
        self._client_ctx = client_context(self.files)
        if self.listen is not None:
            self._server_ctx = server_context(self.files)
            addr, port = self.listen
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            lsock = socket.socket(family, socket.SOCK_STREAM)
            try:
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                lsock.bind((addr, port))
                lsock.listen(16)
            except OSError as err:
                lsock.close()
                raise MbxError("cannot listen on %s:%s for migrations: %s"
                               % (addr, port, _why(err)))
            lsock.setblocking(False)
            self._lsock = lsock
            self.listen_address = lsock.getsockname()[:2]
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name="migchan-accept", daemon=True)
            self._accept_thread.start()
        self._started = True

    def _check_own_cert(self):
        if not self.files.cert:
            return
        from cryptography import x509
        from cryptography.x509.oid import NameOID
        try:
            with open(self.files.cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as err:
            raise MbxError("cannot read certificate %s: %s"
                           % (self.files.cert, str(err).splitlines()[0]))
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [self.host]:
            raise MbxError("certificate %s is for %s, not this host %s"
                           % (self.files.cert, ", ".join(names) or "no CN", self.host))

    def stop(self):
        """Close every session and the listener; join the threads (at most
        about JOIN_TIMEOUT seconds).  Sessions still open get "closed"."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            sessions = list(self._sessions.values())
            threads = list(self._threads)
            for s in self._live:
                s.wake()
        self._poke(self._wake_w)
        deadline = time.monotonic() + JOIN_TIMEOUT
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for s in sessions:
            self._finish(s, "closed")
        if self._lsock is not None:
            self._lsock.close()
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1
            for s in sessions:
                if not s.running:
                    s.close_pipe()
            for fd in (self._ev_r, self._ev_w):
                os.close(fd)
            self._ev_r = self._ev_w = -1

    def fileno(self):
        """Readable while events are queued."""
        return self._ev_r

    def events(self):
        """Every queued Event (never blocks)."""
        with self._lock:
            if self._ev_r >= 0:
                try:
                    while os.read(self._ev_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            out = list(self._events)
            self._events.clear()
        return out

    def connect(self, sid, address, peer_host, timeout=3.0):
        """Open session ``sid`` to ``address`` (``ssl:IP:PORT``), whose
        certificate must name ``peer_host``.  Returns at once; "connected" or
        "closed" (reason "refused: ...") follows.  Frames sent before the
        handshake is done are queued."""
        if not self._started:
            raise RuntimeError("Channel.connect() before start()")
        with self._lock:
            old = self._sessions.get(sid)
            if old is not None and not old.done:
                raise ValueError("session %r is open" % (sid,))
            if old is not None and not old.running:
                old.close_pipe()
            s = _Session(sid, outgoing=True)
            self._sessions[sid] = s
            stopping = self._stopping
        if stopping:
            self._finish(s, "refused: channel stopped")
            return
        try:
            target = parse_address(address)
        except ValueError as err:
            LOG.warning("migration session %s to %s: %s", sid, peer_host, err)
            self._finish(s, "refused: %s" % err)
            return
        self._spawn(s, self._run_outgoing, (s, target, address, peer_host, timeout))

    def send(self, sid, message):
        """Queue ``message`` on session ``sid`` (ignored if it is closed or
        closing).  Thread-safe; never blocks on the network."""
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.done or s.closing or self._stopping:
                return
        frame = encode(message)
        with self._lock:
            if s.done or s.closing:
                return
            s.out.append(frame)
        s.wake()

    def close(self, sid, discard=False):
        """Close ``sid`` once its queued frames are written, or at once
        dropping those not begun if ``discard`` ("closed", reason "closed",
        follows)."""
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.done or s.closing:
                return
            s.closing = True
            if discard:
                s.out.clear()
        s.wake()

    def stats(self, sid):
        """``(bytes_sent, bytes_received)`` of frames on ``sid``; KeyError if
        unknown (or forgotten)."""
        with self._lock:
            s = self._sessions[sid]
            return s.sent, s.received

    def forget(self, sid):
        """Drop a closed session's record (no-op if unknown or still open)."""
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None and s.done:
                del self._sessions[sid]
                if not s.running:
                    s.close_pipe()

    def sessions(self):
        """Sids of the sessions not yet closed."""
        with self._lock:
            return [sid for sid, s in self._sessions.items() if not s.done]

    # -- internals --

    @staticmethod
    def _poke(fd):
        try:
            os.write(fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def _emit_locked(self, event):
        self._events.append(event)
        if self._ev_w >= 0:
            self._poke(self._ev_w)

    def _emit(self, kind, s, message=None, reason=None, size=None):
        with self._lock:
            if s.done:
                return
            self._emit_locked(Event(kind, s.sid, s.peer, message, reason, size))

    def _finish(self, s, reason):
        """Queue the one "closed" of ``s``."""
        with self._lock:
            if s.done:
                return False
            s.done = True
            s.out.clear()
            self._emit_locked(Event("closed", s.sid, s.peer, None, reason, None))
        return True

    def _spawn(self, s, target, args):
        t = threading.Thread(target=self._guard, args=(s, target, args),
                             name="migchan-%s" % (s.sid or "in"), daemon=True)
        with self._lock:
            self._threads.add(t)
            self._live.add(s)
            s.thread = t
            s.running = True
        t.start()

    def _guard(self, s, target, args):
        try:
            target(*args)
        except Exception as err:          # a bug: still one "closed" per session
            LOG.exception("migration session %s: unexpected failure",
                          s.sid or "(incoming)")
            if s.sid is not None:
                self._finish(s, "error: %s" % _why(err))
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._live.discard(s)
                s.running = False
                if s.sid is None or (s.done and (
                        self._stopping or self._sessions.get(s.sid) is not s)):
                    s.close_pipe()

    def _wait(self, s, sock, read, write, deadline):
        """Wait until ``sock`` is readable/writable, or ``s`` is woken.
        Raises _Stopped when stopping, TimeoutError past ``deadline``."""
        if self._stopping:
            raise _Stopped()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError("timed out")
        rl = [sock, s.wake_r] if read else [s.wake_r]
        wl = [sock] if write else []
        r, w, _ = select.select(rl, wl, [], timeout)
        if s.wake_r in r:
            s.drain()
        if self._stopping:
            raise _Stopped()
        if not r and not w and deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("timed out")
        return sock in r, sock in w

    def _handshake(self, s, sock, deadline):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                self._wait(s, sock, True, False, deadline)
            except ssl.SSLWantWriteError:
                self._wait(s, sock, False, True, deadline)

    # accept side

    def _accept_loop(self):
        while not self._stopping:
            try:
                r, _, _ = select.select([self._lsock, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._stopping:
                return
            if self._lsock not in r:
                continue
            try:
                raw, addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                LOG.warning("migration listener %s:%s: accept failed: %s",
                            *self.listen_address, _why(err))
                time.sleep(0.1)
                continue
            with self._lock:
                if self._stopping:
                    busy = "stopping"
                elif self._pending_by[addr[0]] >= MAX_PENDING_PER_PEER:
                    busy = "%d handshakes from this address already under way" \
                        % MAX_PENDING_PER_PEER
                elif self._pending >= MAX_PENDING:
                    busy = "%d handshakes already under way" % MAX_PENDING
                else:
                    busy = None
                    self._pending += 1
                    self._pending_by[addr[0]] += 1
            if busy:
                raw.close()
                self._refuse(addr[0], "busy", "migration connection from %s dropped: %s"
                             % (addr[0], busy))
                continue
            s = _Session(None, outgoing=False)
            self._spawn(s, self._run_incoming, (s, raw, addr))

    def _refuse(self, who, why, line):
        """Count a refused connection; log ``line`` at most once per
        ``LOG_EVERY`` seconds per ``who``, with how many came meanwhile."""
        now = time.monotonic()
        with self._lock:
            self.refused[why] += 1
            entry = self._refused.setdefault(who, [0, None])
            entry[0] += 1
            if entry[1] is not None and now - entry[1] < LOG_EVERY:
                return
            count, entry[0], entry[1] = entry[0], 0, now
            if len(self._refused) > 4096:       # bounded: forget the quiet ones
                for key in [k for k, e in self._refused.items() if now - e[1] >= LOG_EVERY]:
                    del self._refused[key]
        LOG.warning("%s%s", line, " (%d refused since the last line)" % count
                    if count > 1 else "")

    def _admitted(self, s, peer):
        """Wait (at most ADMIT_WAIT) until ``admit`` knows ``peer``; False
        when it does not, or when too many sessions of ``peer`` wait."""
        if self.admit is None or self.admit(peer):
            return True
        with self._lock:
            if self._unknown_by[peer] >= MAX_UNKNOWN_PER_PEER:
                return False
            self._unknown_by[peer] += 1
        try:
            deadline = time.monotonic() + ADMIT_WAIT
            while time.monotonic() < deadline:
                if self._stopping:
                    raise _Stopped()
                time.sleep(0.05)
                if self.admit(peer):
                    return True
            return False
        finally:
            with self._lock:
                self._unknown_by[peer] -= 1
                if not self._unknown_by[peer]:
                    del self._unknown_by[peer]

    def _release_slot(self, slot, address):
        """Give back an accepted connection's handshake slot (once);
        returns False, the slot's new value."""
        if slot:
            with self._lock:
                self._pending -= 1
                self._pending_by[address] -= 1
                if not self._pending_by[address]:
                    del self._pending_by[address]
        return False

    def _run_incoming(self, s, raw, addr):  # s.sid is None until authenticated
        sock = None
        slot = True                         # the handshake slot _accept_loop took
        try:
            raw.setblocking(False)
            _no_delay(raw)
            sock = self._server_ctx.wrap_socket(raw, server_side=True,
                                                do_handshake_on_connect=False)
            try:
                self._handshake(s, sock, time.monotonic() + HANDSHAKE_TIMEOUT)
            finally:
                slot = self._release_slot(slot, addr[0])
            peer = peer_name(sock)
            if not peer:
                raise _Refused("client certificate has no subject CN")
            if not self._admitted(s, peer):
                self._refuse(peer, "unknown", "migration session from %s (%s) cut: no "
                             "migration names that host" % (peer, addr[0]))
                sock.close()
                return
        except _Stopped:
            (sock or raw).close()
            return
        except (_Refused, OSError) as err:   # ssl.SSLError is an OSError
            (sock or raw).close()
            self._refuse(addr[0], "handshake", "migration connection from %s:%s rejected: %s"
                         % (addr[0], addr[1], _why(err)))
            return
        finally:
            self._release_slot(slot, addr[0])
        with self._lock:
            if self._stopping:
                stopping = True
            else:
                stopping = False
                self._next_in += 1
                s.sid = "in-%d" % self._next_in
                s.peer = peer
                self._sessions[s.sid] = s
                self._emit_locked(Event("accepted", s.sid, peer, None, None, None))
        if stopping:
            sock.close()
            return
        LOG.info("migration session %s accepted from %s (%s:%s)",
                 s.sid, peer, addr[0], addr[1])
        self._pump(s, sock, Decoder(), [])

    # connect side

    def _run_outgoing(self, s, target, address, peer_host, timeout):
        family, ip, port = target
        deadline = time.monotonic() + timeout
        raw = socket.socket(family, socket.SOCK_STREAM)
        sock = raw
        decoder = Decoder()
        early = []
        try:
            raw.setblocking(False)
            _no_delay(raw)
            err = raw.connect_ex((ip, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            while err:
                _, w = self._wait(s, raw, False, True, deadline)
                if w:
                    err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    break
            sock = self._client_ctx.wrap_socket(raw, server_hostname=peer_host,
                                                do_handshake_on_connect=False)
            self._handshake(s, sock, deadline)
            if sock.version() == "TLSv1.3":
                self._await_ticket(s, sock, decoder, early, deadline)
            peer = peer_name(sock)
            if peer != peer_host:
                # Frames queued before the handshake go to that host only.
                raise _Refused("its certificate names %s, not %s" % (peer, peer_host))
        except _Stopped:
            sock.close()
            self._finish(s, "closed")
            return
        except (_Refused, OSError) as err:
            why = _why(err)
            LOG.warning("migration session %s to %s (%s) refused: %s",
                        s.sid, peer_host, address, why)
            sock.close()
            self._finish(s, "refused: %s" % why)
            return
        with self._lock:
            s.peer = peer
        self._emit("connected", s)
        LOG.info("migration session %s connected to %s (%s)", s.sid, peer, address)
        self._pump(s, sock, decoder, early)

    def _await_ticket(self, s, sock, decoder, early, deadline):
        """TLS 1.3: the client's handshake ends before the server has checked
        the client's certificate.  The server sends session tickets only once
        it has (an alert otherwise), so wait for one."""
        while True:
            session = sock.session
            if session is not None and session.has_ticket:
                return
            try:
                data = sock.recv(CHUNK)
            except ssl.SSLWantReadError:
                # recv may have read the ticket alone (no data): look again
                # before waiting for more.
                session = sock.session
                if session is None or not session.has_ticket:
                    self._wait(s, sock, True, False, deadline)
                continue
            except ssl.SSLWantWriteError:
                self._wait(s, sock, False, True, deadline)
                continue
            if not data:
                raise _Refused("server closed the connection during the handshake")
            s.received += len(data)
            decoder.push(data)
            try:
                while True:
                    frame = decoder.next_frame()
                    if frame is None:
                        break
                    early.append(frame)
            except FrameError:
                return          # the server spoke: it accepted us; _pump reports this

    # both

    def _pump(self, s, sock, decoder, early):
        """Move frames until the session ends; then queue its "closed"."""
        reason = None
        graceful = False
        try:
            for message, size in early:
                self._emit("message", s, message=message, size=size)
            reason = self._decode(s, decoder)
            cur = None
            off = 0
            while reason is None:
                if cur is None:
                    with self._lock:
                        if s.out:
                            cur = memoryview(s.out.popleft())
                            off = 0
                        elif s.closing:
                            reason, graceful = "closed", True
                            break
                if sock.pending():
                    readable, writable = True, cur is not None
                else:
                    readable, writable = self._wait(s, sock, True, cur is not None, None)
                if readable:
                    reason = self._read(s, sock, decoder)
                    if reason is not None:
                        break
                while cur is not None and (writable or off == 0):
                    try:
                        n = sock.send(cur[off:off + CHUNK])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        break
                    off += n
                    with self._lock:
                        s.sent += n
                    if off >= len(cur):
                        cur = None
                        with self._lock:
                            if s.out:
                                cur = memoryview(s.out.popleft())
                                off = 0
        except _Stopped:
            reason = "closed"
        except OSError as err:
            reason = "error: %s" % _why(err)
        if reason not in ("closed", "eof"):
            LOG.warning("migration session %s with %s closed: %s", s.sid, s.peer, reason)
        self._finish(s, reason)
        if graceful:
            self._linger(s, sock)
        try:
            sock.close()
        except OSError:
            pass

    def _read(self, s, sock, decoder):
        """Read what is there; a close reason if the session ended."""
        for _ in range(READS_PER_WAKE):
            try:
                data = sock.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
            except (ssl.SSLEOFError, ConnectionResetError) as err:
                if decoder.pending():
                    return "truncated"
                if isinstance(err, ssl.SSLEOFError):
                    return "eof"
                raise
            if not data:
                return "truncated" if decoder.pending() else "eof"
            with self._lock:
                s.received += len(data)
            decoder.push(data)
            reason = self._decode(s, decoder)
            if reason is not None:
                return reason
        return None

    def _decode(self, s, decoder):
        try:
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    return None
                if not s.closing:
                    self._emit("message", s, message=frame[0], size=frame[1])
        except FrameError as err:
            return "corrupt: %s" % err.reason

    def _linger(self, s, sock):
        """After our close(): send close_notify, then wait a little for the
        peer's EOF so that closing does not reset what we just wrote."""
        try:
            sock.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (OSError, ValueError):
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + LINGER
        while True:
            try:
                readable, _ = self._wait(s, sock, True, False, deadline)
            except (_Stopped, TimeoutError, OSError):
                return
            if readable:
                try:
                    if not sock.recv(CHUNK):
                        return
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except (OSError, ValueError):
                    return
