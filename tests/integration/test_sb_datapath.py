"""The Datapath rows through a real southbound ovsdb-server: the logical
controller's writes (ovsdb.southbound.Southbound.set_datapaths) and what a
reader's connection reports of them."""

import json
import os
import queue
import subprocess
import time

from mbxmodel import datapath as dplib
from mbxmodel.network import SwitchInfo, VMInfo
from ovsdb import server
from ovsdb.southbound import Southbound

SB = "MBX_Southbound"


def record(name, vni, *vms):
    return dplib.Datapath(switch=SwitchInfo(name, "T", vni, "10.0.0.0/24", "10.0.0.1"),
                          vms=tuple(VMInfo(vm, name, "02:00:00:00:00:%02x" % i, "10.0.0.%d" % i)
                                    for i, vm in enumerate(vms, 2)))


class Reported:
    """What a reader's connection reports: (rows, nb_cfg), newest last."""

    def __init__(self):
        self.q = queue.Queue()
        self.last = None

    def __call__(self, rows, nb_cfg):
        self.q.put((rows, nb_cfg))

    def until(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not (self.last is not None and predicate(*self.last)):
            left = deadline - time.monotonic()
            assert left > 0, "timed out; last reported: %r" % (self.last,)
            try:
                self.last = self.q.get(timeout=left)
            except queue.Empty:
                pass
        return self.last


def test_datapath_rows_are_written_changed_only_and_read_back(tmp_path):
    rundir = str(tmp_path)
    db = os.path.join(rundir, "sb.db")
    server.ensure_db(db, server.SB_SCHEMA_PATH)
    sock = os.path.join(rundir, "sb.sock")
    pid = server.start(rundir, db, ["punix:" + sock])
    writer = reader = None
    try:
        writer = Southbound("unix:" + sock, datapaths=True)
        reported = Reported()
        reader = Southbound("unix:" + sock, datapaths=True, on_datapaths=reported)
        writer.start()
        reader.start()
        a, b = record("ls-a", 1001, "a1", "a2"), record("ls-b", 1002, "b1")
        writer.set_datapaths({"ls-a": dplib.row(a), "ls-b": dplib.row(b)}, nb_cfg=3,
                             complete=True).result(timeout=10)
        rows, nb_cfg = reported.until(lambda rows, cfg: cfg == 3)
        assert rows == {"ls-a": dplib.row(a), "ls-b": dplib.row(b)}
        assert dplib.Reader().update(rows) == {"ls-a": (None, a), "ls-b": (None, b)}

        a2 = record("ls-a", 1001, "a1")
        writer.set_datapaths({"ls-a": dplib.row(a2), "ls-b": None}, nb_cfg=4).result(timeout=10)
        rows, _ = reported.until(lambda rows, cfg: cfg == 4)
        assert rows == {"ls-a": dplib.row(a2)}

        # a row written straight into the database, malformed
        subprocess.run(["ovsdb-client", "transact", "unix:" + sock, json.dumps(
            [SB, {"op": "insert", "table": "Datapath",
                  "row": {"name": "ls-bad", "tenant": "T", "vni": 7, "config": "{"}}])],
            check=True, capture_output=True)
        rows, _ = reported.until(lambda rows, cfg: "ls-bad" in rows)
        assert set(dplib.Reader().update(rows)) == {"ls-a"}
        # a restarted logical controller's first write removes it
        writer.set_datapaths({"ls-a": dplib.row(a2)}, nb_cfg=5, complete=True).result(timeout=10)
        rows, _ = reported.until(lambda rows, cfg: cfg == 5)
        assert rows == {"ls-a": dplib.row(a2)}
        # the generation alone (written after the rows and the slices)
        writer.set_datapaths({}, nb_cfg=6).result(timeout=10)
        rows, _ = reported.until(lambda rows, cfg: cfg == 6)
        assert rows == {"ls-a": dplib.row(a2)}
    finally:
        for conn in (writer, reader):
            if conn is not None:
                conn.stop()
        server.stop(pid)
