"""OVSDB remotes: a comma-separated list of them, and how a client follows
the leader of a clustered database among them.

A remote list is what ``ovsdb-server`` members are reached by, e.g.
``ssl:10.201.0.2:6642,ssl:10.201.0.3:6642,ssl:10.201.0.4:6642`` or the
members' unix sockets ``unix:/run/mbx/db/1/sb.sock,unix:...``.  Every mbx
client takes one (``--db``, ``--sb``, ``[mbx] sb_connection``, ...) and
talks to the cluster's leader only, as ``ovn-nbctl`` and the python IDL
(``leader_only=True``) do: it moves on to the next member when the one it
talks to is not the leader, loses the cluster, or dies.
"""

from ovsdb.errors import MbxError

# Connection methods a client may name (the active ones python-ovs knows).
ACTIVE_METHODS = ("unix", "tcp", "ssl")
# Between connection attempts once every member failed once: the first
# retry after MIN_BACKOFF_MS, doubling up to MAX_BACKOFF_MS.  A client tries
# one member per attempt, so it finds a newly elected leader within about
# (members x MAX_BACKOFF_MS) of the election; python-ovs's default (1 s up
# to 8 s) made that up to 24 s with three members.  The price: while no
# member answers, a client tries twice a second.
MIN_BACKOFF_MS = 100
MAX_BACKOFF_MS = 500


def split(text, what="remote"):
    """The remotes of comma-separated ``text``, in order; MbxError naming
    ``what`` for an empty list, an empty member or an unknown method.  A
    unix socket path may not contain a comma (the list's separator)."""
    if not isinstance(text, str) or not text.strip():
        raise MbxError(f"empty {what}: want METHOD:ADDRESS[,METHOD:ADDRESS...] "
                       f"with METHOD one of {', '.join(ACTIVE_METHODS)}")
    out = []
    for part in text.split(","):
        remote = part.strip()
        method, colon, rest = remote.partition(":")
        if not remote:
            raise MbxError(f"bad {what} {text!r}: an empty member in the list")
        if not colon or method not in ACTIVE_METHODS or not rest:
            raise MbxError(f"bad {what} {remote!r}: want METHOD:ADDRESS with "
                           f"METHOD one of {', '.join(ACTIVE_METHODS)}")
        if method in ("tcp", "ssl"):
            host, sep, port = rest.rpartition(":")
            if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
                raise MbxError(f"bad {what} {remote!r}: want {method}:IP:PORT")
        out.append(remote)
    return out


def join(remotes):
    return ",".join(remotes)


def uses_ssl(*texts):
    """Whether any remote of the (comma-separated) ``texts`` is ssl:."""
    return any(r.strip().startswith("ssl:") for text in texts if text
               for r in text.split(","))


def follow_quickly(session):
    """Make a python-ovs ``jsonrpc.Session`` (an IDL's ``_session``) retry
    its members after ``MIN_BACKOFF_MS``, doubling up to ``MAX_BACKOFF_MS``,
    so that a client finds the leader elected after the old one died
    within about that long of the election instead of after the default's
    up to 8 s.  (``Reconnect.set_backoff`` raises values below 1 s to 1 s,
    so both are set on the attributes themselves.)"""
    reconnect = session.reconnect
    reconnect.set_backoff(1000, 1000)            # clamped: at least 1 s
    reconnect.min_backoff = MIN_BACKOFF_MS
    reconnect.max_backoff = MAX_BACKOFF_MS
    return session

