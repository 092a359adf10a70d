"""The southbound database API of the slices mbx-northd allocates
(docs/services.md): one Slice row per chain and chassis, its tag and
status."""

from mbxmodel.snapshot import slice_key
from ovsdb import validate
from ovsdb.api.common import _Command
from ovsdb.errors import MbxError


def write_slices(tables, txn, desired, status, datapaths=None):
    """In transaction ``txn`` on the southbound ``tables``: make the Slice
    table exactly ``desired`` ({(chain, chassis): tag}, checked), with
    ``status`` ({same key: {str: str}}) and, given ``datapaths`` ({chain:
    logical switch name or None}), each row's ``datapath``.  Entries
    naming a chassis that has no Chassis row are left out.  Shared by MbxSb and the controllers'
    southbound connection (``ovsdb.southbound``)."""
    chassis = {row.name for row in tables["Chassis"].rows.values()}
    wanted = {key: tag for key, tag in desired.items() if key[1] in chassis}
    seen = set()
    for row in sorted(tables["Slice"].rows.values(), key=lambda r: r.uuid):
        key = slice_key(row)
        if key not in wanted or key in seen:
            row.delete()
            continue
        seen.add(key)
        if row.tag != wanted[key]:
            row.tag = wanted[key]
        row_status = status.get(key, {})
        if dict(row.status) != row_status:
            row.status = row_status
        if datapaths is not None:
            _set_datapath(row, datapaths.get(key[0]))
    for key, tag in sorted(wanted.items()):
        if key not in seen:
            chain, host = key
            row = txn.insert(tables["Slice"])
            row.chain = dict(enumerate(chain))
            row.chassis, row.tag = host, tag
            row.status = status.get(key, {})
            if datapaths is not None and datapaths.get(chain):
                row.datapath = [datapaths[chain]]


def _set_datapath(row, switch):
    want = [switch] if switch else []
    if list(row.datapath or []) != want:
        row.datapath = want


def check_slices(slices, status=None):
    """(desired, status) of ``set_slices``' arguments, checked: MbxError
    for an empty chain, a bad tag or a bad status map."""
    desired, checked = {}, {}
    for (chain, host), tag in slices.items():
        chain = validate.chain(tuple(chain))
        if not chain:
            raise MbxError("a slice's chain names at least one middlebox")
        desired[(chain, host)] = validate.slice_tag(tag)
    for (chain, host), value in (status or {}).items():
        checked[(tuple(chain), host)] = validate.status_map(value, "slice status")
    return desired, checked


class SetSlicesCommand(_Command):
    def __init__(self, api, desired, status, datapaths=None):
        super().__init__(api)
        self.desired = desired
        self.status = status
        self.datapaths = datapaths

    def run_idl(self, txn):
        write_slices(self.api.tables, txn, self.desired, self.status, self.datapaths)


class SlicesApi:
    """MbxSb's slice methods."""

    def set_slices(self, slices, status=None, datapaths=None):
        """Make the Slice table exactly ``slices``, a dict (chain, chassis
        name) -> tag, where a chain is a non-empty tuple of middlebox names
        in order; ``status`` maps the same keys to the slices' status
        ({str: str}; missing or None: empty).  Entries naming a chassis
        with no Chassis row are ignored.  ``datapaths``: {chain: the logical
        switch of its middleboxes}, written to the rows' ``datapath``."""
        return SetSlicesCommand(self, *check_slices(slices, status), datapaths)

    def slice_list(self):
        """[(chain, chassis, tag, status)] sorted by chassis, then tag."""
        snap = self.snapshot()
        return sorted(((chain, host, tag, snap.slice_status.get((chain, host), {}))
                       for (chain, host), tag in snap.slices.items()),
                      key=lambda s: (s[1], s[2]))
