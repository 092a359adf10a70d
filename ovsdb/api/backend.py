"""The connections to the two databases, and their APIs: MbxNb (intent, the
northbound database) and MbxSb (runtime, the southbound database), each
one class made of its areas' methods."""

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
from ovsdb.api.runtime import RuntimeApi
from ovsdb.api.slices import SlicesApi
from ovsdb.api.switches import SwitchesApi
from ovsdb.errors import MbxError
from ovsdb import remotes


SCHEMA_NAME = "MBX_Northbound"
SB_SCHEMA_NAME = "MBX_Southbound"
_WHAT = {SCHEMA_NAME: ("config database", "--db or MBX_DB"),
         SB_SCHEMA_NAME: ("southbound database", "--sb or MBX_SB")}


def _unreachable(remote, reason, schema=SCHEMA_NAME):
    what, option = _WHAT[schema]
    return MbxError(f"cannot connect to {what} at {remote}: "
                    f"{reason}; is the lab up? set {option}")


def _fetch_schema(remote, timeout, schema=SCHEMA_NAME):
    """The schema JSON of database ``schema`` served at ``remote`` (a
    comma-separated list of a cluster's members: the first that answers;
    every member serves the same schema), or MbxError within about
    ``timeout`` seconds."""
    members = remotes.split(remote, _WHAT[schema][0])
    deadline = time.monotonic() + timeout
    errors = []
    for i, member in enumerate(members):
        # Each member gets an equal share of what is left of the time.
        share = (deadline - time.monotonic()) / (len(members) - i)
        try:
            return _fetch_schema_one(member, max(share, 0.05), schema)
        except MbxError as err:
            errors.append(err)
            if "serves no" in str(err):
                raise
    if len(errors) == 1:
        raise errors[0]
    raise _unreachable(remote, "no member answered (%s)" % "; ".join(
        str(e).split(": ", 1)[-1].split("; is the lab up")[0] for e in errors), schema)


def _fetch_schema_one(remote, timeout, schema=SCHEMA_NAME):
    deadline = time.monotonic() + timeout

    def remaining_ms():
        return max(0, int((deadline - time.monotonic()) * 1000))

    err, strm = stream.Stream.open_block(stream.Stream.open(remote),
                                         remaining_ms())
    if err:
        raise _unreachable(remote, os.strerror(err), schema)
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request("get_schema", [schema])
        err = rpc.send(request)
        while not err:
            err, reply = rpc.recv()
            if err == errno.EAGAIN:
                if not remaining_ms():
                    raise _unreachable(remote, f"no answer within {timeout}s",
                                       schema)
                rpc.run()
                wait = poller.Poller()
                rpc.wait(wait)
                rpc.recv_wait(wait)
                wait.timer_wait(remaining_ms())
                wait.block()
                err = 0
            elif not err and reply.id == request.id:
                if reply.error:
                    raise _unreachable(remote, f"it serves no {schema} "
                                       "database", schema)
                return reply.result
        raise _unreachable(remote, os.strerror(err) if err > 0 else "EOF",
                           schema)
    finally:
        rpc.close()


class _Idl(connection.OvsdbIdl):
    on_change = None
    quiet = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)      # leader_only: follows the leader
        remotes.follow_quickly(self._session)

    def notify(self, event, row, updates=None):
        if self.on_change is None:
            return
        if self.quiet is not None and self.quiet(
                row._table.name, event,
                frozenset(updates._data) if updates is not None else None):
            return
        self.on_change(row._table.name)


class _Transaction(transaction.Transaction):
    """Reports OVSDB-level failures as MbxError."""

    def commit(self):
        try:
            return super().commit()
        except MbxError:
            raise
        except (RuntimeError, exceptions.TimeoutException) as e:
            what = _WHAT[self.api.schema][0]
            raise MbxError(f"{what} transaction failed: {e}") from e


class _Api(ovs_idl.Backend, ovsdbapp_api.API):
    """One connection to one of the two databases."""

    @classmethod
    def _connect(cls, remote, timeout, on_change, attrs=None, quiet=None):
        helper = idlutils.create_schema_helper(
            _fetch_schema(remote, timeout, cls.schema))
        helper.register_all()
        idl = _Idl(remote, helper)
        idl.on_change = on_change
        idl.quiet = quiet
        conn = connection.Connection(idl, timeout)
        # The Backend keeps its connection at class level: each connection
        # gets a class of its own so several can coexist in one process.
        own_class = type(cls.__name__, (cls,), dict(
            attrs or {}, _ovsdb_connection=None, __module__=cls.__module__))
        api = own_class(conn, start=False)
        try:
            conn.start()
        except Exception as e:
            idl.close()
            raise _unreachable(remote, str(e) or type(e).__name__,
                               cls.schema) from e
        return api

    def close(self):
        self.ovsdb_connection.stop(timeout=5)

    def create_transaction(self, check_error=True, log_errors=False, **kw):
        return _Transaction(self, self.ovsdb_connection,
                            self.ovsdb_connection.timeout,
                            check_error, log_errors)

    def transaction(self, check_error=True, log_errors=False, **kwargs):
        return super().transaction(check_error, log_errors, **kwargs)


class MbxNb(SwitchesApi, ExternalsApi, MiddleboxesApi, FirewallApi, NatApi,
            LbApi, SteeringApi, DatabaseApi, _Api):
    """The northbound (config) database API: intent, and the status
    mirrors mbx-northd writes; every area's methods (ovsdb/api/AREA.py) on
    one connection."""

    schema = SCHEMA_NAME
    lookup_table = {
        table: idlutils.RowLookup(table, "name", None)
        for table in ("Logical_Switch", "VM", "Middlebox",
                      "Address_Set", "External_Network")}

    @classmethod
    def connect(cls, remote, timeout=5.0, on_change=None, quiet=None):
        """Connect to the config database at ``remote`` ("unix:PATH",
        "tcp:IP:PORT").  ``on_change(table_name)`` is called from the IDL
        thread after any row changes; it must be cheap (e.g. queue.put).
        ``quiet(table_name, event, columns)`` (columns: the changed ones of
        an update, else None): a row change it returns True for is not
        reported (a client's own status writes)."""
        return cls._connect(remote, timeout, on_change, quiet=quiet)


class MbxSb(RuntimeApi, SlicesApi, MigrationApi, IdsApi, _Api):
    """The southbound database API: the runtime rows (chassis and their
    status, VM locations, slices, migrations, shared state, IDS alerts)."""

    schema = SB_SCHEMA_NAME
    lookup_table = {}

    @classmethod
    def connect(cls, remote, timeout=5.0, on_change=None, nb=None):
        """Connect to the southbound database at ``remote``.  ``nb``: an
        MbxNb whose VMs and NB_Global options the migration commands check
        (an unknown VM, the default wait); without it they check only what
        the southbound database holds."""
        return cls._connect(remote, timeout, on_change, {"nb": nb})
