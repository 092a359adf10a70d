"""mbxctl's connection-state migration commands: Migration rows in the
southbound database."""

from ovsdb import validate
from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import ms_time, options, table
from ovsdb.errors import MbxError


def _require(need_one):
    """The write step of a migration read: VM, when given, has migrations
    (need_one: at least one, else it exists)."""
    def write(sb, txn, args):
        if args.vm is not None:
            return txn.add(sb.require_migrations(args.vm, need_one=need_one))
        return None
    return write


def _stun_wait(sb, result, args, timeout):
    if args.wait:
        try:
            sb.wait_migration(result.result, timeout)
        except MbxError as e:
            raise MbxError(f"VM '{args.vm}' is stunned, but {e}") from None


def _migration_list(snap, args):
    return table(["VM", "HOSTS", "PATH", "STATUS", "ENTRIES", "BYTES",
                  "OUTCOME"],
                 [[m.vm, f"{m.source} -> {m.destination}", m.path,
                   m.status, m.stats.get("entries", "-"),
                   m.stats.get("bytes", "-"), m.outcome or "-"]
                  for m in snap.migrations
                  if args.vm is None or m.vm == args.vm])


def _ordered(keys, order):
    """``keys`` in ``order``, then the others sorted."""
    return ([k for k in order if k in keys]
            + sorted(k for k in keys if k not in order))


def _migration_show(snap, args):
    m = [m for m in snap.migrations if m.vm == args.vm][-1]
    timeline = m.timeline
    begun = timeline.get("begun", min(timeline.values(), default=0))
    lines = [f"migration of VM {m.vm}: {m.source} -> {m.destination} "
             f"({m.path})",
             f"uuid: {m.uuid}",
             f"status: {m.status}",
             f"begun: {ms_time(begun, precise=True) if timeline else '-'}",
             "timeline:" + ("" if timeline else " -")]
    lines += [f"  +{timeline[phase] - begun:6.1f} ms  {phase}"
              for phase in _ordered(timeline, validate.MIGRATION_PHASES)]
    stats = ", ".join(f"{key}={m.stats[key]}"
                      for key in _ordered(m.stats, validate.MIGRATION_STATS))
    lines += [f"stats: {stats or '-'}",
              f"options: {options(m.options) or '-'}",
              f"outcome: {m.outcome or '-'}"]
    return lines


COMMANDS = (
    CtlCommand(
        "migrate-begin", "VM --to HOST",
        "announce the migration of VM's\n"
        "connection state from its host to\n"
        "HOST; prints the migration's UUID",
        args=("vm", "--to!"),
        write=lambda sb, txn, a: txn.add(sb.migrate_begin(a.vm, a.to)), db="sb",
        reply=lambda result, a: [result.result]),
    CtlCommand(
        "migrate-stun", "VM [--wait]",
        "the VM is paused for the last round;\n"
        "with --wait, wait (--timeout) until\n"
        "its state is imported at HOST",
        args=("vm", "--wait?"),
        write=lambda sb, txn, a: txn.add(sb.migrate_stun(a.vm)), db="sb",
        wait=_stun_wait),
    CtlCommand(
        "migrate-done", "VM", "finish the migration once imported",
        args=("vm",),
        write=lambda sb, txn, a: txn.add(sb.migrate_done(a.vm)), db="sb"),
    CtlCommand(
        "migrate-abort", "VM [--if-exists]", "abort the VM's active migration",
        args=("vm", "--if-exists?"),
        write=lambda sb, txn, a: txn.add(sb.migrate_abort(a.vm, a.if_exists)),
        db="sb"),
    CtlCommand("migration-list", "[VM]", "list migrations, oldest first",
               args=("vm?",), write=_require(need_one=False),
               read=_migration_list, db="sb", reads="sb"),
    CtlCommand(
        "migration-show", "VM",
        "the VM's latest migration: phases,\nwhat moved, outcome",
        args=("vm",), write=_require(need_one=True), read=_migration_show,
        db="sb", reads="sb"),
)
