"""The connection to the config database, and MbxNb, the API: one class made
of every area's methods."""

import errno
import os
import time

from ovs import jsonrpc, poller, stream
from ovsdbapp import api as ovsdbapp_api, exceptions
from ovsdbapp.backend import ovs_idl
from ovsdbapp.backend.ovs_idl import connection, idlutils, transaction

from ovsdb.api.database import DatabaseApi
from ovsdb.api.externals import ExternalsApi
from ovsdb.api.firewall import FirewallApi
from ovsdb.api.ids import IdsApi
from ovsdb.api.lb import LbApi
from ovsdb.api.middleboxes import MiddleboxesApi
from ovsdb.api.migration import MigrationApi
from ovsdb.api.nat import NatApi
from ovsdb.api.steering import SteeringApi
from ovsdb.api.switches import SwitchesApi
from ovsdb.errors import MbxError


SCHEMA_NAME = "MBX_Northbound"


def _unreachable(remote, reason):
    return MbxError(f"cannot connect to config database at {remote}: "
                    f"{reason}; is the lab up? set --db or MBX_DB")


def _fetch_schema(remote, timeout):
    """The schema JSON of MBX_Northbound served at ``remote``, or MbxError
    within about ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    def remaining_ms():
        return max(0, int((deadline - time.monotonic()) * 1000))

    err, strm = stream.Stream.open_block(stream.Stream.open(remote),
                                         remaining_ms())
    if err:
        raise _unreachable(remote, os.strerror(err))
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request("get_schema", [SCHEMA_NAME])
        err = rpc.send(request)
        while not err:
            err, reply = rpc.recv()
            if err == errno.EAGAIN:
                if not remaining_ms():
                    raise _unreachable(remote, f"no answer within {timeout}s")
                rpc.run()
                wait = poller.Poller()
                rpc.wait(wait)
                rpc.recv_wait(wait)
                wait.timer_wait(remaining_ms())
                wait.block()
                err = 0
            elif not err and reply.id == request.id:
                if reply.error:
                    raise _unreachable(remote, f"it serves no {SCHEMA_NAME} "
                                       "database")
                return reply.result
        raise _unreachable(remote, os.strerror(err) if err > 0 else "EOF")
    finally:
        rpc.close()


class _NbIdl(connection.OvsdbIdl):
    on_change = None

    def notify(self, event, row, updates=None):
        if self.on_change is not None:
            self.on_change(row._table.name)


class _Transaction(transaction.Transaction):
    """Reports OVSDB-level failures as MbxError."""

    def commit(self):
        try:
            return super().commit()
        except MbxError:
            raise
        except (RuntimeError, exceptions.TimeoutException) as e:
            raise MbxError(f"config database transaction failed: {e}") from e


class MbxNb(SwitchesApi, ExternalsApi, MiddleboxesApi, FirewallApi, NatApi,
            LbApi, IdsApi, SteeringApi, MigrationApi, DatabaseApi,
            ovs_idl.Backend, ovsdbapp_api.API):
    """The config database API: every area's methods
    (ovsdb/api/AREA.py) on one connection."""

    schema = SCHEMA_NAME
    lookup_table = {
        table: idlutils.RowLookup(table, "name", None)
        for table in ("Host", "Logical_Switch", "VM", "Middlebox",
                      "Address_Set", "External_Network")}

    @classmethod
    def connect(cls, remote, timeout=5.0, on_change=None):
        """Connect to the config database at ``remote`` ("unix:PATH",
        "tcp:IP:PORT").  ``on_change(table_name)`` is called from the IDL
        thread after any row changes; it must be cheap (e.g. queue.put)."""
        helper = idlutils.create_schema_helper(_fetch_schema(remote, timeout))
        helper.register_all()
        idl = _NbIdl(remote, helper)
        idl.on_change = on_change
        conn = connection.Connection(idl, timeout)
        # The Backend keeps its connection at class level: each connection
        # gets a class of its own so several can coexist in one process.
        own_class = type(cls.__name__, (cls,), {
            "_ovsdb_connection": None, "__module__": cls.__module__})
        nb = own_class(conn, start=False)
        try:
            conn.start()
        except Exception as e:
            idl.close()
            raise _unreachable(remote, str(e) or type(e).__name__) from e
        return nb

    def close(self):
        self.ovsdb_connection.stop(timeout=5)

    def create_transaction(self, check_error=True, log_errors=False, **kw):
        return _Transaction(self, self.ovsdb_connection,
                            self.ovsdb_connection.timeout,
                            check_error, log_errors)

    def transaction(self, check_error=True, log_errors=False, **kwargs):
        return super().transaction(check_error, log_errors, **kwargs)
