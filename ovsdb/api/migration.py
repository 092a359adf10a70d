"""The southbound database API of connection-state migrations
(docs/migration.md): Migration rows."""

import secrets
import time
import uuid as uuidlib

from mbxmodel.state import ACTIVE_MIGRATION, FINAL_MIGRATION
from ovsdb import validate
from ovsdb.api.common import _Command, _find, _nb_global, _rows
from ovsdb.errors import MbxError


def _now_ms():
    return int(time.time() * 1000)


def _migration_rows(api, vm):
    """The Migration rows of VM ``vm``, oldest first (``api``: anything
    with ``tables``, an MbxSb or a southbound IDL)."""
    return sorted((row for row in api.tables["Migration"].rows.values()
                   if row.vm == vm),
                  key=lambda row: (dict(row.timeline).get("begun", 0),
                                   str(row.uuid)))


def _active_row(api, vm):
    """The VM's active migration (its latest, should there be more), or
    None."""
    active = [row for row in _migration_rows(api, vm)
              if row.status in ACTIVE_MIGRATION]
    return active[-1] if active else None


def _known_vm(api, vm):
    """True unless the northbound database the API was given (``api.nb``)
    has no VM ``vm``; True without one."""
    nb = getattr(api, "nb", None)
    return nb is None or _find(nb, "VM", vm) is not None


def create_migration(api, txn, vm, source, destination, path, wait_ms):
    """In ``txn``: a new Migration row (begun) of ``vm`` from chassis
    ``source`` to chassis ``destination``; MbxError when the destination
    has no Chassis row, is the source, or the VM has an active migration.
    Returns the row.  Shared by MbxSb and the controllers' southbound
    connection (``api``: anything with ``tables``)."""
    if not any(row.name == destination
               for row in api.tables["Chassis"].rows.values()):
        raise MbxError(f"unknown host '{destination}'; a host registers "
                       "itself when mbx-chassis starts on it")
    if destination == source:
        raise MbxError(f"VM '{vm}' is already on host '{source}'")
    active = _active_row(api, vm)
    if active is not None:
        active.verify("status")
        raise MbxError(f"VM '{vm}' already has an active migration "
                       f"{_moves(active)} (status {active.status}); end "
                       "it first (migrate-done or migrate-abort)")
    row = txn.insert(api.tables["Migration"])
    row.vm, row.source, row.destination = vm, source, destination
    row.path, row.status = path, "begun"
    row.token = secrets.token_hex(16)
    row.timeline, row.stats = {"begun": _now_ms()}, {}
    row.outcome = ""
    row.options = {"wait-ms": str(wait_ms)}
    return row


def _moves(row):
    return f"{row.source} -> {row.destination}"


def _ended(row):
    """'aborted (aborted by operator)': a final row's status and outcome."""
    return row.status + (f" ({row.outcome})" if row.outcome else "")


def _no_migration(api, vm, what="migration"):
    """The error for a VM without a(n active) migration: unknown VM, or no
    migration."""
    if not _known_vm(api, vm) and not _migration_rows(api, vm):
        return MbxError(f"unknown VM '{vm}'")
    return MbxError(f"VM '{vm}' has no {what}")


def _setkey(row, column, key, value):
    """Set one key of a map column: an OVSDB mutation (other keys, maybe
    written by others meanwhile, are left alone); a row inserted by this
    transaction gets its whole map."""
    if row._data is None:
        setattr(row, column, dict(getattr(row, column), **{key: value}))
    else:
        row.setkey(column, key, value)


class _MigrationCommand(_Command):
    """A command whose result is a Migration row's uuid (str), the final
    one after commit for a row this transaction inserted."""

    def post_commit(self, txn):
        if isinstance(self.result, uuidlib.UUID):
            self.result = str(txn.get_insert_uuid(self.result)
                              or self.result)


class MigrationCreateCommand(_MigrationCommand):
    """Insert a Migration row (``begun``).  ``source`` None: announced by
    an operator (migrate-begin), from the VM's current host."""

    def __init__(self, api, vm, source, destination, path, wait_ms):
        super().__init__(api)
        self.vm = vm
        self.source = source
        self.destination = destination
        self.path = path
        self.wait_ms = wait_ms

    def run_idl(self, txn):
        if not _known_vm(self.api, self.vm):
            raise MbxError(f"unknown VM '{self.vm}'")
        source = self.source
        if source is None:
            location = next((row for row in _rows(self.api, "VM_Location")
                             if row.vm == self.vm), None)
            if location is not None:
                location.verify("chassis")
            if location is None or not location.chassis:
                raise MbxError(f"VM '{self.vm}' runs on no host (its port "
                               "exists nowhere); nothing to migrate")
            source = location.chassis[0]
        wait_ms = self.wait_ms
        if wait_ms is None:
            nb = getattr(self.api, "nb", None)
            nb_global = _nb_global(nb) if nb is not None else None
            wait_ms = validate.global_wait_ms(nb_global.options if nb_global else {})
        self.result = create_migration(self.api, txn, self.vm, source,
                                       self.destination, self.path, wait_ms).uuid


class MigrateStunCommand(_MigrationCommand):
    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            raise _no_migration(self.api, self.vm, "active migration; begin "
                                "one first (migrate-begin)")
        row.verify("status")
        if row.path != "announced":
            raise MbxError(f"VM '{self.vm}': its migration {_moves(row)} is "
                           f"{row.path}; only an announced migration is "
                           "stunned")
        if row.status not in ("begun", "streaming"):
            raise MbxError(f"VM '{self.vm}': its migration {_moves(row)} is "
                           f"already {row.status}")
        row.status = "stunned"
        _setkey(row, "timeline", "stunned", _now_ms())
        self.result = row.uuid


class MigrateDoneCommand(_MigrationCommand):
    def __init__(self, api, vm):
        super().__init__(api)
        self.vm = vm

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            rows = _migration_rows(self.api, self.vm)
            if not rows:
                raise _no_migration(self.api, self.vm)
            latest = rows[-1]
            latest.verify("status")
            if latest.status != "done":
                raise MbxError(f"VM '{self.vm}': its latest migration "
                               f"{_moves(latest)} ended {_ended(latest)}; "
                               "nothing to finish")
            self.result = latest.uuid       # done already: nothing to do
            return
        row.verify("status")
        if row.status != "imported":
            raise MbxError(f"VM '{self.vm}': its state has not been imported "
                           f"at {row.destination} yet (status {row.status})")
        row.status = "done"
        _setkey(row, "timeline", "done", _now_ms())
        row.verify("outcome")
        if not row.outcome:
            entries = dict(row.stats).get("entries", 0)
            row.outcome = (f"ok: {entries} connection"
                           + ("" if entries == 1 else "s"))
        self.result = row.uuid


class MigrateAbortCommand(_MigrationCommand):
    def __init__(self, api, vm, if_exists=False):
        super().__init__(api)
        self.vm = vm
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _active_row(self.api, self.vm)
        if row is None:
            if self.if_exists:
                return
            raise _no_migration(self.api, self.vm, "active migration; use "
                                "--if-exists to ignore that")
        row.verify("status")
        row.status = "aborted"
        _setkey(row, "timeline", "aborted", _now_ms())
        row.outcome = "aborted by operator"
        self.result = row.uuid


class MigrationUpdateCommand(_MigrationCommand):
    """Status, per-key timeline and stats, and outcome of one Migration row
    (the daemons' writes)."""

    def __init__(self, api, key, status, timeline, stats, outcome, expect):
        super().__init__(api)
        self.key = key
        self.status = status
        self.timeline = timeline
        self.stats = stats
        self.outcome = outcome
        self.expect = expect

    def run_idl(self, txn):
        table = self.api.tables.get("Migration")
        row = table.rows.get(self.key) if table is not None else None
        if row is None:
            raise MbxError(f"unknown migration {self.key}")
        if self.status is not None or self.expect is not None:
            row.verify("status")
            if self.expect is not None and row.status not in self.expect:
                raise MbxError(f"migration {self.key} of VM '{row.vm}' is "
                               f"{row.status}, not "
                               f"{validate._one_of(self.expect)}")
            if self.status is not None and row.status != self.status:
                if row.status not in ACTIVE_MIGRATION:
                    raise MbxError(f"migration {self.key} of VM '{row.vm}' "
                                   f"has ended ({row.status})")
                row.status = self.status
        for column, values in (("timeline", self.timeline),
                               ("stats", self.stats)):
            for key, value in sorted(values.items()):
                _setkey(row, column, key, value)
        if self.outcome is not None:
            row.outcome = self.outcome
        self.result = row.uuid


class RequireMigrationsCommand(_Command):
    """Fails unless VM ``vm`` is known (a VM row, or a Migration row names
    it); with ``need_one``, unless it has a migration."""

    def __init__(self, api, vm, need_one):
        super().__init__(api)
        self.vm = vm
        self.need_one = need_one

    def run_idl(self, txn):
        rows = _migration_rows(self.api, self.vm)
        if (not rows and self.need_one) or (
                not rows and not _known_vm(self.api, self.vm)):
            raise _no_migration(self.api, self.vm)


class MigrationApi:
    """MbxSb's migration methods."""

    def migrate_begin(self, vm, destination):
        """Announce the migration of ``vm`` from its current host to host
        ``destination``: a new Migration row (announced, begun).  The
        command's result is the row's uuid (str)."""
        return MigrationCreateCommand(
            self, validate.name(vm, "VM name"), None,
            validate.name(destination, "host name"), "announced", None)

    def migration_create(self, vm, source, destination, path="unannounced",
                         wait_ms=None):
        """A new Migration row (begun) of ``vm`` from host ``source`` to
        host ``destination`` (registered), whatever the VM's host;
        ``wait_ms`` None: NB_Global.options:migration-wait-ms, else 3000.
        Refused while the VM has an active migration.  The command's result
        is the row's uuid (str)."""
        vm = validate.name(vm, "VM name")
        source = validate.name(source, "host name")
        destination = validate.name(destination, "host name")
        if source == destination:
            raise MbxError(f"a migration of VM '{vm}' needs two hosts, not "
                           f"'{source}' twice")
        if wait_ms is not None:
            wait_ms = validate.migration_wait_ms(wait_ms, "wait-ms")
        return MigrationCreateCommand(self, vm, source, destination,
                                      validate.migration_path(path), wait_ms)

    def migrate_stun(self, vm):
        """The VM's active announced migration (begun or streaming) becomes
        stunned.  Result: the row's uuid (str)."""
        return MigrateStunCommand(self, validate.name(vm, "VM name"))

    def migrate_done(self, vm):
        """The VM's active migration, once imported, becomes done; nothing
        if its latest migration is done already."""
        return MigrateDoneCommand(self, validate.name(vm, "VM name"))

    def migrate_abort(self, vm, if_exists=False):
        """The VM's active migration becomes aborted ("aborted by
        operator")."""
        return MigrateAbortCommand(self, validate.name(vm, "VM name"),
                                   if_exists)

    def migration_update(self, migration, status=None, timeline=None,
                         stats=None, outcome=None, expect=None):
        """Write to Migration row ``migration`` (uuid): ``status`` (only
        while active), the keys of ``timeline`` and ``stats`` (each key a
        mutation: other keys stay), ``outcome``.  ``expect``: the statuses
        the row must have (checked in the transaction)."""
        try:
            key = uuidlib.UUID(str(migration))
        except ValueError:
            raise MbxError(f"invalid UUID {migration!r}") from None
        if status is not None:
            status = validate.migration_status(status)
        if expect is not None:
            expect = tuple(validate.migration_status(s) for s in expect)
        if outcome is not None and not isinstance(outcome, str):
            raise MbxError(f"invalid migration outcome {outcome!r}")
        return MigrationUpdateCommand(
            self, key, status,
            validate.migration_counters(timeline or {}, "timeline"),
            validate.migration_counters(stats or {}, "stats"), outcome,
            expect)

    def require_migrations(self, vm, need_one=False):
        """Fails unless VM ``vm`` is known (a VM row or a migration of it);
        with ``need_one``, unless it has a migration."""
        return RequireMigrationsCommand(self, vm, need_one)

    def migrations(self, vm=None):
        """Migrations (of ``vm``), oldest first."""
        return [m for m in self.snapshot().migrations
                if vm is None or m.vm == vm]

    def wait_migration(self, migration, timeout, until=("imported", "done")):
        """The record of Migration ``migration`` (uuid) once its status is
        in ``until``; MbxError when it ends otherwise, is gone, or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.snapshot().migrations
                     if m.uuid == str(migration)]
            if not found:
                raise MbxError(f"migration {migration} is gone")
            m = found[0]
            if m.status in until:
                return m
            if m.status in FINAL_MIGRATION:
                raise MbxError(f"its migration {m.source} -> {m.destination} "
                               f"ended {m.status}"
                               + (f" ({m.outcome})" if m.outcome else ""))
            if time.monotonic() >= deadline:
                raise MbxError(f"timed out after {timeout:g}s waiting for its "
                               f"state to be imported at {m.destination} "
                               f"(status {m.status})")
            time.sleep(0.05)
