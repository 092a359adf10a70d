"""The state sharing manager: state that more than one host needs.

Services (``middlebox.services``) keep almost all of their state on the host
that makes the decision.  Each service module declares ``LOCAL_STATE``, names
that never leave the host, and ``SHARED_STATE``, names it publishes here:

* local: connection entries (``middlebox.conntrack``), NAT mappings
  (``nat-mappings``: a host allocates ports inside its own SNAT block, so no
  coordination is needed), LB pinning (``lb-pinning``: the choice is part of
  the connection entry), SYN-flood counts (``ids-synflood``: counted where the
  destination lives);
* shared: LB backend health (``lb-health``: each host publishes the health
  of the backends it probes, every host of the slice merges them) and IDS
  port-scan counts (``ids-scan``: each host publishes, per source, the
  targets its sensors saw; every host adds up all hosts' sets).

``SharedState`` is the one API for the shared part::

    publish(middlebox, service, key, value)   # value: JSON-serialisable
    withdraw(middlebox, service, key)
    get(middlebox, service) -> {key: {host: value}}
    config(middlebox) -> ServiceSpec or None
    middleboxes() -> [name, ...]
    report_alert(middlebox, kind, source, target, count, hosts,
                 first_seen, last_seen)

Storage: the southbound database's ``Shared_State`` table, one row per
(middlebox, publishing host, service, key) with the value as JSON text and
``stamp``, the publisher's wall-clock time of the publish in milliseconds.
Each daemon monitors the table with the condition ``middlebox in {the
middleboxes of my slices}`` (``middlebox.confmon``), so a row reaches only
the hosts that serve the same middlebox and never another tenant's host, and
a host that starts serving a middlebox (a slice added later, or a daemon
restarted) gets the current rows in the first update of the widened
condition, like any other monitored row.

Pure core, shell-driven writer.  The core (publish/withdraw/get/config) never
does I/O: ``get`` sees this host's own publishes at once and other hosts'
rows as of the last ``update_rows``.  The shell (``middlebox.main``) drives:

* ``set_config(host_config)`` whenever the HostConfig changes: the
  middleboxes this host serves.  State published for a middlebox that is not
  (any longer) in the config is dropped, and this host's rows of such
  middleboxes are deleted from the DB (one ``delete where host == me and
  middlebox != each of mine``; this also clears rows a previous run of the
  daemon left behind).  Nothing is written before the first ``set_config``.
* ``update_rows(rows, covered)`` (or ``pull()``, which takes them from the
  monitor when its replica changed): the Shared_State rows the replica
  holds.  Other hosts' rows become ``get``'s view (each remembers when it
  arrived: ``received``); this host's own rows tell the writer what the DB
  holds (``covered``: the middleboxes whose rows the replica holds in full,
  so an own row missing there is missing in the DB too).
* ``flush()`` after every loop iteration: the writes the DB still lacks
  (``pending_ops()``: insert, update or delete of this host's rows) go out
  in one transaction on the monitor's IDL, at most one in flight; a failed
  commit is retried (the plan is recomputed from what is wanted and what is
  known, so retries never duplicate).  IDS alerts go out in their own small
  transactions (see ``report_alert``).

A restarted daemon starts with nothing published: the rows of its previous
run are deleted (or overwritten by what its services publish again) at its
first flush after ``set_config``.

Leases: rows of a host whose daemon is gone (killed, the host dead for
good, cut off from the database) have no one left to withdraw them, so
every row is leased.  While this host has rows, ``flush`` refreshes the
``stamp`` of all of them (one ``update where host == me``) at least every
third of the lease, ``NB_Global.options:shared-state-lease`` (seconds,
3-3600, default 30; read from the monitor's northbound replica, ``lease``),
so a live host's rows change at least three times a lease; the active
logical controller deletes rows it has not seen change for a whole lease
(``ryu_apps.expiry``).  A host whose rows were deleted while it was cut off
writes them again once it is back (its replica shows them missing).

Measuring convergence: every listed row carries ``stamp`` (publisher's
clock, ms) and ``received`` (this host's clock when the row arrived here,
ms); on one machine (or synchronised clocks) ``received - stamp`` is the
publish -> visible time, see ``convergence_delays``.  In one process,
``measure_convergence`` times a publish until it is visible on other hosts.
"""

import collections
import json
import logging
import time

import ovs.poller
from ovs.db import idl as ovsidl

from ovsdb import validate

LOG = logging.getLogger(__name__)

TABLE = "Shared_State"
ALERT_TABLE = "IDS_Alert"
ALERT_KINDS = ("port-scan", "syn-flood")
RETRY_INTERVAL = 1.0        # s before a failed commit is tried again
REFRESHES_PER_LEASE = 3     # stamp refreshes per lease, at least
MAX_ALERT_TXNS = 16         # alert transactions in flight, at most
MAX_ALERTS_KEPT = 1000      # alerts remembered for ids/alerts


def _ms(t):
    return int(t * 1000)


def _alert_ms(t):
    """An alert time in s (or already in ms: above 1e11) -> integer ms."""
    return int(t) if t > 1e11 else _ms(t)


def _encode(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _scalar(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


class SharedState:
    """This host's state sharing manager; see the module docstring.

    ``monitor``: the daemon's ``middlebox.confmon.ConfigMonitor`` (its
    southbound IDL carries the writes, its replica the rows); None for a pure instance
    (``pending_ops`` still says what would be written).  ``clock``: wall
    clock in seconds (stamps and ``received``); ``monotonic``: the refresh
    timer's clock.  ``lease_s``: the lease instead of the northbound
    option (tests)."""

    def __init__(self, host, monitor=None, clock=time.time, monotonic=time.monotonic,
                 lease_s=None):
        self.host = host
        self.monitor = monitor
        self._clock = clock
        self._monotonic = monotonic
        self.lease_s = lease_s
        self._refreshed = monotonic()  # when every row's stamp was last refreshed
        self.host_config = None        # the last HostConfig given
        self._names = None             # middleboxes served; None: no config yet
        self._services = {}            # name -> ServiceSpec
        self._tags = {}                # slice tag -> middlebox names
        self._mine = {}                # (mb, service, key) -> (text, value, stamp)
        self._written = {}             # (mb, service, key) -> text the DB holds
        self._others = {}              # (mb, service, key, host) -> _Remote
        self._index = {}               # (mb, service) -> {key: {host: value}}
        self._cleanup = None           # names: delete my rows of any other middlebox
        self._txn = None               # (Transaction, effects, cleanup, refresh time)
        self._retry_at = 0.0
        self._last_error = None
        self._seen_seqno = None
        self._bad_values = set()
        self._alerts = collections.OrderedDict()    # alert key -> row dict
        self._alert_pending = {}       # key -> row dict still to write
        self._alert_mode = {}          # key -> "insert" | "update"
        self._alert_txns = {}          # key -> (Transaction, row, mode)
        self.counters = dict.fromkeys(
            ("published", "withdrawn", "commits", "commit_failures",
             "rows_received", "alerts_reported", "alerts_written",
             "alert_failures", "refreshes"), 0)

    # ------------------------------------------------------------ services
    def publish(self, middlebox, service, key, value):
        """Share ``value`` (JSON-serialisable) under (middlebox, service,
        key) as this host's.  No-op (returns False) if unchanged."""
        text = _encode(value)
        k = (str(middlebox), str(service), str(key))
        old = self._mine.get(k)
        if old is not None and old[0] == text:
            return False
        self._mine[k] = (text, json.loads(text), _ms(self._clock()))
        self.counters["published"] += 1
        return True

    def withdraw(self, middlebox, service, key):
        """Stop sharing this host's value of (middlebox, service, key).
        Returns False if there was none."""
        if self._mine.pop((str(middlebox), str(service), str(key)),
                          None) is None:
            return False
        self.counters["withdrawn"] += 1
        return True

    def get(self, middlebox, service):
        """{key: {host: value}} of every host serving ``middlebox``, this
        host's own values included (at once).  Values are shared: do not
        modify them."""
        out = {key: dict(hosts) for key, hosts in
               self._index.get((middlebox, service), {}).items()}
        for (mb, svc, key), (_text, value, _stamp) in self._mine.items():
            if mb == middlebox and svc == service:
                out.setdefault(key, {})[self.host] = value
        return out

    def config(self, middlebox):
        """The ServiceSpec of ``middlebox`` in this host's config, or None."""
        return self._services.get(middlebox)

    def middleboxes(self):
        """The names of the middleboxes this host serves, sorted."""
        return sorted(self._names or ())

    def report_alert(self, middlebox, kind, source, target, count, hosts,
                     first_seen, last_seen):
        """Record an IDS alert and queue it for the ``IDS_Alert`` table:
        this host's row of it, one per (middlebox, kind, source) -- per
        (middlebox, kind, source, target) for "syn-flood", whose subject
        is the destination -- and ``reported_by`` this host, inserted the
        first time and updated (target, count, hosts, last_seen) on
        re-alert.  Each host writes only its own rows (the southbound RBAC
        role, ovsdb/rbac.py); readers merge the rows of one alert
        (``mbxmodel.snapshot.alert_records``).  ``kind``:
        "port-scan" | "syn-flood"; ``hosts``: the hosts whose sensors saw
        it; times: seconds since the epoch, or milliseconds (a value above
        1e11 is taken as ms); stored in ms."""
        if kind not in ALERT_KINDS:
            raise ValueError("alert kind %r is not one of %s"
                             % (kind, ", ".join(ALERT_KINDS)))
        target = "" if target is None else str(target)
        key = (str(middlebox), kind, str(source),
               target if kind == "syn-flood" else None)
        old = self._alerts.pop(key, None)
        first, last = _alert_ms(first_seen), _alert_ms(last_seen)
        row = {"middlebox": key[0], "kind": kind, "source": key[2],
               "target": target, "count": int(count),
               "hosts": sorted({str(h) for h in hosts or ()}),
               "first_seen": first if old is None
                             else min(first, old["first_seen"]),
               "last_seen": last, "reported_by": self.host}
        self._alerts[key] = row
        while len(self._alerts) > MAX_ALERTS_KEPT:
            self._alerts.popitem(last=False)
        self._alert_pending[key] = row
        self.counters["alerts_reported"] += 1

    def alerts(self):
        """The alerts reported here (newest last), as dicts with the
        IDS_Alert columns (times in ms)."""
        return [dict(row, hosts=list(row["hosts"]))
                for row in self._alerts.values()]

    # --------------------------------------------------------------- shell
    def set_config(self, host_config):
        """The HostConfig changed: which middleboxes this host serves."""
        self.host_config = host_config
        services, tags = {}, {}
        for tag, sl in sorted((host_config.slices or {}).items()):
            specs = tuple(getattr(sl, "services", ()) or ())
            names = [sv.name for sv in specs]
            for sv in specs:
                services.setdefault(sv.name, sv)
            if not specs and sl.middlebox:      # a config without chains
                names = sl.middlebox.split(",")
            tags[tag] = tuple(names)
        names = frozenset(n for ns in tags.values() for n in ns)
        self._services, self._tags = services, tags
        for k in [k for k in self._mine if k[0] not in names]:
            del self._mine[k]
        if names != self._names:
            self._names = names
            self._cleanup = names

    def update_rows(self, rows, covered=None):
        """The Shared_State rows the replica holds (objects with middlebox,
        host, service, key, value, stamp).  ``covered``: middlebox names whose
        rows the replica holds in full (None: unknown)."""
        now = _ms(self._clock())
        others, own = {}, {}
        for row in rows:
            mb = _scalar(getattr(row, "middlebox", None), "")
            host = _scalar(getattr(row, "host", None), "")
            svc = _scalar(getattr(row, "service", None), "")
            key = _scalar(getattr(row, "key", None), "")
            text = _scalar(getattr(row, "value", None), "")
            stamp = _scalar(getattr(row, "stamp", None), 0)
            if host == self.host:
                own[(mb, svc, key)] = text
                continue
            k = (mb, svc, key, host)
            old = self._others.get(k)
            if old is not None and old.text == text and old.stamp == stamp:
                others[k] = old
                continue
            try:
                value = json.loads(text)
            except ValueError:
                if (k, text) not in self._bad_values:
                    self._bad_values.add((k, text))
                    LOG.warning("shared state %s/%s/%s of host %s: value is "
                                "not JSON, ignored: %.80r", mb, svc, key, host,
                                text)
                continue
            others[k] = _Remote(text, value, stamp, now)
            self.counters["rows_received"] += 1
        self._others = others
        index = {}
        for (mb, svc, key, host), remote in others.items():
            index.setdefault((mb, svc), {}).setdefault(key, {})[host] = \
                remote.value
        self._index = index
        self._written.update(own)
        if covered is not None:
            for k in [k for k in self._written
                      if k[0] in covered and k not in own]:
                del self._written[k]

    def pull(self):
        """``update_rows`` from the monitor if its replica changed."""
        mon = self.monitor
        if mon is None:
            return
        seqno = mon.data_seqno()
        if seqno == self._seen_seqno:
            return
        self._seen_seqno = seqno
        self.update_rows(mon.shared_rows(), mon.shared_covered())

    def lease(self):
        """The Shared_State lease in seconds (see the module doc)."""
        if self.lease_s is not None:
            return self.lease_s
        options = getattr(self.monitor, "global_options", None)
        return validate.global_shared_state_lease(options() if options else None)

    def refresh_op(self):
        """The operation that refreshes the stamp of every row of this
        host, when due (a third of the lease since the last one) and the
        host has rows; else None."""
        if self._names is None or not (self._written or self._mine):
            return None
        if self._monotonic() - self._refreshed < self.lease() / REFRESHES_PER_LEASE:
            return None
        return {"op": "update", "table": TABLE, "where": [["host", "==", self.host]],
                "row": {"stamp": _ms(self._clock())}}

    def pending_ops(self):
        """The OVSDB operations that would bring this host's Shared_State
        rows in line with what is published (empty when in line)."""
        return self._plan()[0]

    def _plan(self):
        if self._names is None:
            return [], [], None
        ops, effects = [], []
        me = self.host
        if self._cleanup is not None:
            ops.append({"op": "delete", "table": TABLE,
                        "where": [["host", "==", me]] +
                                 [["middlebox", "!=", n]
                                  for n in sorted(self._cleanup)]})
        keys = {k for k in self._mine if k[0] in self._names}
        keys.update(k for k in self._written if k[0] in self._names)
        for k in sorted(keys):
            mb, svc, key = k
            where = [["middlebox", "==", mb], ["host", "==", me],
                     ["service", "==", svc], ["key", "==", key]]
            mine = self._mine.get(k)
            written = self._written.get(k)
            if mine is None:
                ops.append({"op": "delete", "table": TABLE, "where": where})
                effects.append((k, None))
            elif written is None:
                # Delete first: a row this host wrote before that the
                # replica does not show yet must not break the insert.
                ops.append({"op": "delete", "table": TABLE, "where": where})
                ops.append({"op": "insert", "table": TABLE,
                            "row": {"middlebox": mb, "host": me,
                                    "service": svc, "key": key,
                                    "value": mine[0], "stamp": mine[2]}})
                effects.append((k, mine[0]))
            elif written != mine[0]:
                ops.append({"op": "update", "table": TABLE, "where": where,
                            "row": {"value": mine[0], "stamp": mine[2]}})
                effects.append((k, mine[0]))
        return ops, effects, self._cleanup

    def flush(self):
        """Write what the DB lacks (see module doc); never blocks.  Call after
        every loop iteration (after ``pull``)."""
        mon = self.monitor
        if mon is None:
            return
        idl = mon.sb_idl
        self._finish_txn()
        self._finish_alert_txns()
        if idl.state != idl.IDL_S_MONITORING or idl.txn is not None:
            return
        if self._txn is None and time.monotonic() >= self._retry_at:
            ops, effects, cleanup = self._plan()
            refresh = self.refresh_op()
            if refresh is not None:
                ops = ops + [refresh]
            if ops:
                txn = ovsidl.Transaction(idl)
                for op in ops:
                    txn.add_op(op)
                txn.add_comment("mbxd %s: shared state" % self.host)
                txn.commit()
                self._txn = (txn, effects, cleanup,
                             None if refresh is None else self._monotonic())
                self._finish_txn()
        for key in sorted(self._alert_pending, key=str):
            if len(self._alert_txns) >= MAX_ALERT_TXNS:
                break
            if key in self._alert_txns:
                continue
            self._start_alert_txn(idl, key, self._alert_pending[key])

    def wait(self, poller):
        """Wake ``poller`` when a transaction completed (the monitor's
        ``wait`` covers the socket)."""
        if self._txn is not None:
            self._txn[0].wait(poller)
        elif self._names is not None and (self._written or self._mine):
            # Woken when the refresh falls due; once due, the loop's other
            # wake-ups do (no timer of 0: a refresh that cannot go out yet,
            # the database away, must not spin the loop).
            due = self._refreshed + self.lease() / REFRESHES_PER_LEASE - self._monotonic()
            if due > 0:
                poller.timer_wait(int(due * 1000) + 1)
        for txn, _row, _mode in self._alert_txns.values():
            txn.wait(poller)

    def busy(self):
        """True while writes are in flight or pending."""
        return bool(self._txn or self._alert_txns or self._alert_pending
                    or self.pending_ops())

    def _finish_txn(self):
        if self._txn is None:
            return
        txn, effects, cleanup, refreshed = self._txn
        status = txn.commit()
        if status == ovsidl.Transaction.INCOMPLETE:
            return
        self._txn = None
        if status in (ovsidl.Transaction.SUCCESS,
                      ovsidl.Transaction.UNCHANGED):
            self.counters["commits"] += 1
            if refreshed is not None:
                self._refreshed = refreshed
                self.counters["refreshes"] += 1
            for k, text in effects:
                if text is None:
                    self._written.pop(k, None)
                else:
                    self._written[k] = text
            if cleanup is not None:
                for k in [k for k in self._written if k[0] not in cleanup]:
                    del self._written[k]
                if self._cleanup == cleanup:
                    self._cleanup = None
            self._last_error = None
            return
        self.counters["commit_failures"] += 1
        error = txn.get_error()
        if error != self._last_error:
            self._last_error = error
            LOG.warning("shared state: commit failed (%s), retrying", error)
        if status != ovsidl.Transaction.TRY_AGAIN:
            self._retry_at = time.monotonic() + RETRY_INTERVAL

    # IDS_Alert rows are written, never monitored: the writer does not hold
    # them.  Insert is guarded by "no row for the key" and update by "a row
    # for the key"; a guard that fails (TRY_AGAIN) flips the mode.
    def _start_alert_txn(self, idl, key, row):
        mb, kind, source, target = key
        where = [["middlebox", "==", mb], ["kind", "==", kind],
                 ["source", "==", source], ["reported_by", "==", self.host]]
        if target is not None:
            where.append(["target", "==", target])
        mode = self._alert_mode.get(key, "insert")
        values = dict(row, hosts=["set", list(row["hosts"])])
        txn = ovsidl.Transaction(idl)
        if mode == "insert":
            txn.add_op({"op": "wait", "table": ALERT_TABLE, "timeout": 0,
                        "where": where, "columns": ["source"], "until": "==",
                        "rows": []})
            txn.add_op({"op": "insert", "table": ALERT_TABLE, "row": values})
        else:
            for column in ("first_seen", "middlebox", "kind", "source",
                           "reported_by"):      # the where says them
                del values[column]
            txn.add_op({"op": "wait", "table": ALERT_TABLE, "timeout": 0,
                        "where": where, "columns": ["source"], "until": "!=",
                        "rows": []})
            txn.add_op({"op": "update", "table": ALERT_TABLE, "where": where,
                        "row": values})
        txn.add_comment("mbxd %s: IDS alert" % self.host)
        txn.commit()
        self._alert_txns[key] = (txn, row, mode)

    def _finish_alert_txns(self):
        for key, (txn, row, mode) in list(self._alert_txns.items()):
            status = txn.commit()
            if status == ovsidl.Transaction.INCOMPLETE:
                continue
            del self._alert_txns[key]
            if status in (ovsidl.Transaction.SUCCESS,
                          ovsidl.Transaction.UNCHANGED):
                self._alert_mode[key] = "update"
                if self._alert_pending.get(key) is row:
                    del self._alert_pending[key]
                self.counters["alerts_written"] += 1
            elif status == ovsidl.Transaction.TRY_AGAIN:
                # The guard failed (the row exists / is gone) or the
                # connection dropped: try the other way.
                self._alert_mode[key] = "update" if mode == "insert" \
                    else "insert"
            else:
                self.counters["alert_failures"] += 1
                LOG.warning("IDS alert %s: not written (%s)", key,
                            txn.get_error())
                if self._alert_pending.get(key) is row:
                    del self._alert_pending[key]

    # ---------------------------------------------------------- inspection
    def listing(self, tag=None):
        """Every shared row known here, this host's own included, as dicts:
        middlebox, service, key, host, value, stamp (publisher's ms),
        received (ms, this host's clock when it arrived; for own rows the
        publish time).  ``tag``: only the middleboxes of that slice
        (KeyError if this host has no such slice).  Sorted."""
        names = None
        if tag is not None:
            names = self._tags.get(int(tag))
            if names is None:
                raise KeyError("no slice %s on this host" % tag)
        out = []
        for (mb, svc, key, host), row in self._others.items():
            out.append({"middlebox": mb, "service": svc, "key": key,
                        "host": host, "value": row.value, "stamp": row.stamp,
                        "received": row.received})
        for (mb, svc, key), (_text, value, stamp) in self._mine.items():
            out.append({"middlebox": mb, "service": svc, "key": key,
                        "host": self.host, "value": value, "stamp": stamp,
                        "received": stamp})
        if names is not None:
            out = [r for r in out if r["middlebox"] in names]
        out.sort(key=lambda r: (r["middlebox"], r["service"], r["key"],
                                r["host"]))
        return out

    def stats(self):
        """Counters and sizes."""
        return dict(self.counters, own_rows=len(self._mine),
                    remote_rows=len(self._others),
                    pending_ops=len(self.pending_ops()),
                    in_flight=int(self._txn is not None) + len(self._alert_txns))


class _Remote:
    __slots__ = ("text", "value", "stamp", "received")

    def __init__(self, text, value, stamp, received):
        self.text, self.value = text, value
        self.stamp, self.received = stamp, received


# ----------------------------------------------------------- measuring

def convergence_delays(rows, publisher=None, service=None, key=None):
    """``received - stamp`` (ms) of ``listing()`` rows from other hosts (of
    ``publisher``, ``service``, ``key`` when given): how long each row took
    from the publish to being visible here.  Only meaningful with the
    clocks of both hosts in step (one machine, or NTP at ms accuracy).
    The listing host's own rows count 0: pass ``publisher``."""
    out = []
    for row in rows:
        if publisher is not None and row["host"] != publisher:
            continue
        if service is not None and row["service"] != service:
            continue
        if key is not None and row["key"] != key:
            continue
        out.append(row["received"] - row["stamp"])
    return out


def drive(states, timeout=0.01):
    """One round of the poll loop for several in-process hosts (tests,
    benchmarks), as mbxd drives them: run each host's monitor, hand a new
    config to ``set_config``, ``pull`` and ``flush``; then block until
    something arrives or ``timeout`` seconds."""
    for st in states:
        st.monitor.run()
        if st.monitor.synced() and st.host_config is not st.monitor.config():
            st.set_config(st.monitor.config())
        st.pull()
        st.flush()
    poller = ovs.poller.Poller()
    for st in states:
        st.monitor.wait(poller)
        st.wait(poller)
    poller.timer_wait(max(0, int(timeout * 1000)))
    poller.block()


def measure_convergence(publisher, receivers, middlebox, service, key, value,
                        timeout=5.0, others=()):
    """Publish ``value`` on ``publisher`` (a SharedState with a monitor) and
    drive every host (publisher, ``receivers`` and ``others``) until each
    receiver's ``get`` shows it.  Returns {receiver host: seconds from the
    publish call to the first loop round it was visible in} (monotonic
    clock); a receiver that did not see it within ``timeout`` is missing."""
    states = [publisher] + list(receivers) + list(others)
    start = time.monotonic()
    publisher.publish(middlebox, service, key, value)
    want = json.loads(_encode(value))
    seen = {}
    deadline = start + timeout
    while len(seen) < len(receivers) and time.monotonic() < deadline:
        drive(states, timeout=0.005)
        for st in receivers:
            if st.host in seen:
                continue
            got = st.get(middlebox, service).get(key, {})
            if got.get(publisher.host, _MISSING) == want:
                seen[st.host] = time.monotonic() - start
    return seen


_MISSING = object()
