"""mbxd's report of the config generation it has applied: the southbound
``Chassis_Private.mb_cfg`` of its own host (``ovsdb/mbx_sb.md``; the
protocol in ``ovsdb/mbx_nb.md``, "The nb_cfg / hv_cfg protocol").

Once the monitors have settled (``ConfigMonitor.generation()`` is the
generation N their replicas hold, ``config()`` built from them) and the
service stages compiled from that config have been sent to the switch,
the daemon sends a barrier; when the switch acknowledges it, everything
computed for N is in the switch, and the daemon writes ``mb_cfg`` = N.
A generation that changes nothing on this host (another tenant's rule, a
switch without a slice here) costs one barrier and is reported the same
way.  ``mb_cfg`` is the generation of the newest barrier acknowledged,
so it follows the databases down too (a northbound database created
again starts at 0).

The daemon writes that one column of its host's row, and nothing else of
it: the physical controller serving the host owns the others.  Without a
row (the controller has not seen the switch yet) it creates one with
only ``name`` and ``mb_cfg``.  What it compares with is the replica's row
(its condition: ``name == HOST``), so a report lost to a reconnect, a
failed transaction or a row written over is written again.

``Reporter`` is pure (barrier bookkeeping and what to write); ``Writer``
commits on the monitor's southbound IDL.
"""

import logging
import time

from ovs.db import idl as ovsidl

LOG = logging.getLogger(__name__)
RETRY_AFTER = 1.0           # seconds between a failed write and the next


class Reporter:
    """Which generation the switch has acknowledged, and what to write.

    ``settled(cfg, barrier)``: the plane for generation ``cfg`` has been
    sent; ``barrier()`` sends a barrier and returns its xid (called only
    when ``cfg`` is new).  ``on_barrier(xid)``: the switch answered.
    ``wanted(row_exists, reported)``: the value to write, or None."""

    def __init__(self):
        self.asked = None           # the generation of the last barrier sent
        self.acked = None           # the generation of the last barrier answered
        self._pending = []          # [(xid, cfg)], oldest first

    def settled(self, cfg, barrier):
        if cfg is None or cfg == self.asked:
            return
        self._pending.append((barrier(), cfg))
        self.asked = cfg

    def on_barrier(self, xid):
        """A switch answers barriers in order: an answer covers every
        earlier one too."""
        for i, (pending, cfg) in enumerate(self._pending):
            if pending == xid:
                self.acked = cfg
                del self._pending[:i + 1]
                return True
        return False

    def wanted(self, row_exists, reported):
        if self.acked is None or (row_exists and reported == self.acked):
            return None
        return self.acked


class Writer:
    """Writes ``mb_cfg`` of ``host``'s ``Chassis_Private`` row on the
    monitor's southbound IDL: one transaction in flight, never blocks."""

    def __init__(self, monitor, host):
        self.monitor = monitor
        self.host = host
        self.reporter = Reporter()
        self._txn = None            # (txn, value)
        self._retry_at = 0.0
        self.failures = 0

    def flush(self):
        if self._txn is not None:
            txn, value = self._txn
            status = txn.commit()
            if status == ovsidl.Transaction.INCOMPLETE:
                return
            self._txn = None
            if status not in (ovsidl.Transaction.SUCCESS, ovsidl.Transaction.UNCHANGED):
                # e.g. the controller created the row meanwhile: the next
                # round sees it in the replica and updates it.
                self.failures += 1
                self._retry_at = time.monotonic() + RETRY_AFTER
                LOG.info("mb_cfg %d: commit %s (%s), writing it again",
                         value, status, txn.get_error())
        idl = self.monitor.sb_idl
        if idl.state != idl.IDL_S_MONITORING or idl.txn is not None \
                or not self.monitor.synced() or time.monotonic() < self._retry_at:
            return
        exists, reported = self.monitor.reported()
        value = self.reporter.wanted(exists, reported)
        if value is None:
            return
        txn = ovsidl.Transaction(idl)
        if exists:
            txn.add_op({"op": "update", "table": "Chassis_Private",
                        "where": [["name", "==", self.host]],
                        "row": {"mb_cfg": value}})
        else:
            txn.add_op({"op": "insert", "table": "Chassis_Private",
                        "row": {"name": self.host, "mb_cfg": value}})
        txn.add_comment("mbxd %s: mb_cfg %d" % (self.host, value))
        txn.commit()
        self._txn = (txn, value)

    def wait(self, poller):
        if self._txn is not None:
            self._txn[0].wait(poller)
