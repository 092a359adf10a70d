"""OVSDB locks held over one JSON-RPC session: how physical controllers
split the hosts between them through the southbound database's server.

The OVSDB protocol (RFC 7047, section 4.1.8) gives every server a lock
service: a client asks for a named lock with ``lock`` and is either granted
it or queued behind the holder; the server grants it to the next client in
the queue the moment the holder releases it with ``unlock`` or its
connection closes; ``steal`` takes it from the holder at once, who is told
so with a ``stolen`` notification.  A physical controller holds one lock per
host it serves (``chassis_lock_name``):

* a host it is configured to prefer (``[mbx] chassis``) it steals, so a
  restarted controller gets its own hosts back from a standby;
* every other host it asks for without stealing, when it stands by for
  all hosts (``[mbx] standby``): it is queued, and serves the host as soon
  as the host's controller is gone;
* a lock stolen from it is asked for again without stealing: it queues
  behind the thief instead of taking the lock back (two controllers that
  both prefer one host cannot steal it back and forth).

So every host is served by exactly one live controller, a controller's
death hands its hosts to the standbys within the time the server takes to
see its connection close, and which controller serves a host is decided by
the server alone, without a table of assignments to keep consistent.  The
hosts a controller serves are also in ``Chassis_Private.controller``.

``Locks`` is driven by its owner's loop, like ``ovs.db.idl.Idl``: call
``run()`` after waking, ``wait(poller)`` before blocking.  After a
reconnection every lock it wants is asked for again; until granted it
holds none.

Locks belong to one server process, not to the database: with a clustered
southbound database, every controller must ask the same member, the
leader, or two controllers could each hold one host's lock on two
members.  ``Locks`` takes the members' remote list, watches the server's
``_Server`` database on each connection, asks for its locks only once that
server says it is the leader of the southbound database (a standalone
server always qualifies), and moves on to the next member as soon as it
is not (or the connection drops): a new leader's lock queue starts empty,
so every controller asks again there and the hosts are split anew.
"""

import logging
import queue
import threading

import ovs.jsonrpc
import ovs.poller

from ovsdb import remotes
from ovsdb.wakeup import Wakeup

LOG = logging.getLogger(__name__)

LOCK_PREFIX = "mbx_chassis_"
DATABASE = "MBX_Southbound"      # whose leader the locks are asked of
_SERVER_MONITOR = "mbx-locks-server"


def chassis_lock_name(host):
    """A host's lock.  Lock names are OVSDB ids (letters, digits and
    underscores), so every other byte of the host's name, and the
    underscore itself, is written as ``_`` and two hex digits."""
    out = []
    for byte in host.encode():
        c = chr(byte)
        out.append(c if c.isascii() and c.isalnum() else "_%02x" % byte)
    return LOCK_PREFIX + "".join(out)


def _host_of_lock(name):
    text, out, i = name[len(LOCK_PREFIX):], bytearray(), 0
    while i < len(text):
        if text[i] == "_":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    return out.decode()


def wanted_locks(hosts, preferred, standby):
    """The locks a controller asks for: {lock name: steal?}.  ``hosts``:
    every host in the southbound database; ``preferred``: the hosts it is
    configured to serve (None: none in particular); ``standby``: whether it
    stands by for every other host."""
    preferred = frozenset(preferred or ())
    wanted = {chassis_lock_name(h): True for h in preferred}
    if standby:
        for host in hosts:
            wanted.setdefault(chassis_lock_name(host), False)
    return wanted


def hosts_of(lock_names):
    return frozenset(_host_of_lock(n) for n in lock_names
                     if n.startswith(LOCK_PREFIX))


class Locks:
    """The named locks this client wants, and those the server granted.
    ``on_change(held)`` is called (from ``run``) with the frozenset of lock
    names held whenever it changes."""

    def __init__(self, remote, on_change=None, database=DATABASE):
        self._session = remotes.follow_quickly(
            ovs.jsonrpc.Session.open_multiple(remotes.split(remote, "southbound remote")))
        self._database = database
        self._leader = False            # this connection's server leads the database
        self._monitor = None            # the _Server monitor request's id
        self._server_rows = {}          # _Server Database rows: uuid -> columns
        self._on_change = on_change or (lambda held: None)
        self._wanted = {}               # name -> steal on (re)request
        self._requests = {}             # request id -> lock name
        self._held = frozenset()
        self._seqno = None
        self._asked = None              # the connection the wanted locks were asked on

    @property
    def held(self):
        return self._held

    @property
    def wanted(self):
        return dict(self._wanted)

    @property
    def settled(self):
        """Connected to the leader, and the server has answered every
        request: each wanted lock is held or queued."""
        return self._session.is_connected() and self._asked == \
            self._session.get_seqno() and not self._requests

    @property
    def server(self):
        """The remote of the member it asks (None while not connected to
        the leader)."""
        if self._session.is_connected() and self._leader:
            return self._session.reconnect.get_name()
        return None

    def want(self, wanted):
        """Make the wanted locks exactly ``wanted`` ({name: steal?}):
        ask for the new ones, release those no longer wanted."""
        for name in sorted(set(self._wanted) - set(wanted)):
            del self._wanted[name]
            self._send("unlock", name)
            self._set_held(self._held - {name})
        for name, steal in sorted(wanted.items()):
            if name not in self._wanted:
                self._wanted[name] = steal
                self._send("steal" if steal else "lock", name)

    def run(self):
        self._session.run()
        seqno = self._session.get_seqno()
        if seqno != self._seqno:
            # A new connection attempt: the server holds nothing of ours.
            self._seqno = seqno
            self._asked = None
            self._requests.clear()
            self._leader = False
            self._monitor = None
            self._server_rows = {}
            self._set_held(frozenset())
        if self._session.is_connected() and self._monitor is None:
            msg = ovs.jsonrpc.Message.create_request("monitor", [
                "_Server", _SERVER_MONITOR,
                {"Database": {"columns": ["name", "model", "connected", "leader"]}}])
            self._monitor = msg.id
            self._session.send(msg)
        if self._session.is_connected() and self._leader and self._asked != seqno:
            self._asked = seqno
            for name, steal in sorted(self._wanted.items()):
                self._send("steal" if steal else "lock", name)
        for _ in range(200):
            msg = self._session.recv()
            if msg is None:
                break
            if self._server_message(msg):
                if not self._leader:
                    break               # reconnecting: the rest is stale
                if self._asked != seqno:
                    self._asked = seqno
                    for name, steal in sorted(self._wanted.items()):
                        self._send("steal" if steal else "lock", name)
                continue
            self._received(msg)

    def wait(self, poller):
        self._session.wait(poller)
        self._session.recv_wait(poller)

    def close(self):
        self._session.close()

    # ---------------------------------------------------------- internals
    def _server_message(self, msg):
        """Handle the _Server monitor's reply or update; True if it was one.
        Not (or no longer) the leader: reconnect to the next member."""
        if msg.type in (ovs.jsonrpc.Message.T_REPLY, ovs.jsonrpc.Message.T_ERROR) \
                and msg.id == self._monitor and self._monitor is not None:
            if msg.type == ovs.jsonrpc.Message.T_ERROR:
                # A server without _Server (very old): standalone, qualifies.
                self._leader = True
                return True
            self._apply_server(msg.result)
        elif msg.type == ovs.jsonrpc.Message.T_NOTIFY and msg.method == "update" \
                and msg.params and msg.params[0] == _SERVER_MONITOR:
            self._apply_server(msg.params[1])
        else:
            return False
        leader, why = self._judge()
        if leader != self._leader or not leader:
            name = self._session.reconnect.get_name()
            if leader:
                LOG.info("%s leads %s: asking it for the locks", name, self._database)
            else:
                LOG.info("%s: %s; trying the next member", name, why)
        self._leader = leader
        if not leader:
            self._set_held(frozenset())
            self._session.force_reconnect()
        return True

    def _apply_server(self, updates):
        for uuid, change in ((updates or {}).get("Database") or {}).items():
            new = change.get("new")
            if new is None:
                self._server_rows.pop(uuid, None)
            else:
                self._server_rows[uuid] = dict(self._server_rows.get(uuid, {}), **new)

    def _judge(self):
        """(leads the database?, why not)."""
        row = next((r for r in self._server_rows.values()
                    if r.get("name") == self._database), None)
        if row is None:
            return False, "it serves no %s database" % self._database
        if row.get("model") != "clustered":
            return True, ""
        if row.get("connected") is not True:
            return False, "it is disconnected from the %s cluster" % self._database
        if row.get("leader") is not True:
            return False, "it is not the %s cluster's leader" % self._database
        return True, ""

    def _send(self, method, name):
        if not self._session.is_connected() or not self._leader or \
                self._asked != self._session.get_seqno():
            return                      # asked for once connected (run)
        msg = ovs.jsonrpc.Message.create_request(method, [name])
        if method != "unlock":
            self._requests[msg.id] = name
        self._session.send(msg)

    def _received(self, msg):
        if msg.type == ovs.jsonrpc.Message.T_REPLY:
            name = self._requests.pop(msg.id, None)
            if name is not None and name in self._wanted and \
                    isinstance(msg.result, dict) and msg.result.get("locked"):
                self._set_held(self._held | {name})
        elif msg.type == ovs.jsonrpc.Message.T_ERROR:
            name = self._requests.pop(msg.id, None)
            LOG.error("lock %s refused: %s", name, msg.error)
        elif msg.type == ovs.jsonrpc.Message.T_NOTIFY and msg.params:
            name = msg.params[0]
            if msg.method == "locked" and name in self._wanted:
                self._set_held(self._held | {name})
            elif msg.method == "stolen":
                self._set_held(self._held - {name})
                if name in self._wanted:
                    # The server dropped us from the lock's queue but keeps
                    # the request: release it, then queue behind the thief
                    # rather than steal the lock back.
                    self._wanted[name] = False
                    self._send("unlock", name)
                    self._send("lock", name)

    def _set_held(self, held):
        held = frozenset(held)
        if held != self._held:
            self._held = held
            self._on_change(held)


class LockThread:
    """``Locks`` on a thread of its own, for a program whose loop is not an
    OVSDB one (the physical controller).  ``want`` may be called from any
    thread; ``on_change(held)`` runs on this thread and must be cheap
    (post an event)."""

    def __init__(self, remote, on_change=None):
        self._locks = Locks(remote, on_change=on_change)
        self._asks = queue.Queue()
        self._stop = threading.Event()
        self._wakeup = Wakeup()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="mbx-locks")

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._wakeup.wake()
        self._thread.join(timeout=5)

    def want(self, wanted):
        self._asks.put(dict(wanted))
        self._wakeup.wake()

    def _run(self):
        told = None
        while not self._stop.is_set():
            self._wakeup.drain()
            wanted = None
            while True:
                try:
                    wanted = self._asks.get_nowait()
                except queue.Empty:
                    break
            if wanted is not None:
                self._locks.want(wanted)
            self._locks.run()
            if self._locks.settled:
                # Every request answered: say what it holds and queues for.
                state = (frozenset(self._locks.wanted), self._locks.held)
                if state != told:
                    told = state
                    LOG.info("locks settled: holding %d of %d asked for (%s), "
                             "queued for the rest", len(state[1]), len(state[0]),
                             ", ".join(sorted(hosts_of(state[1]))) or "no host")
            poller = ovs.poller.Poller()
            self._locks.wait(poller)
            self._wakeup.wait(poller)
            poller.block()
        self._locks.close()
        self._wakeup.close()
