"""The config database API of IDS alerts."""

from mbxmodel.state import AlertRecord
from ovsdb.api.common import _rows


def _ids_alerts(api):
    return tuple(sorted(
        (AlertRecord(row.middlebox, row.kind, row.source, row.target,
                     row.count, tuple(sorted(row.hosts)), row.first_seen,
                     row.last_seen, row.reported_by)
         for row in _rows(api, "IDS_Alert")),
        key=lambda a: (a.middlebox, a.first_seen, a.kind, a.source,
                       a.target, a.last_seen)))


class IdsApi:
    """MbxNb's IDS alert methods."""

    def ids_alerts(self, mb=None):
        return [a for a in self.snapshot().ids_alerts
                if mb is None or a.middlebox == mb]
