"""mbxctl's intrusion detection commands: alerts from the southbound
database."""

from ovsdb.ctl.middleboxes import require_named
from ovsdb.ctl.syntax import CtlCommand
from ovsdb.ctl.text import ms_time, table


def _ids_alerts(snap, args):
    return table(["MIDDLEBOX", "KIND", "SOURCE", "TARGET", "COUNT", "HOSTS",
                  "FIRST_SEEN", "LAST_SEEN", "REPORTED_BY"],
                 [[a.middlebox, a.kind, a.source, a.target or "-", a.count,
                   ",".join(a.hosts) or "-", ms_time(a.first_seen),
                   ms_time(a.last_seen), a.reported_by or "-"]
                  for a in snap.ids_alerts
                  if args.mb is None or a.middlebox == args.mb])


COMMANDS = (
    CtlCommand("ids-alerts", "[MB]", "list IDS alerts", args=("mb?",),
               write=require_named, read=_ids_alerts, reads="sb"),
)
