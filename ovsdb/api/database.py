"""The config database API of the database as a whole: NB_Global, its
counters and options, the snapshot of everything."""

import time

from mbxmodel.snapshot import NbSnapshot
from ovsdb import validate
from ovsdb.api.common import (_address_sets, _Command, _externals,
                              _ignored, _middleboxes, _nat_rules, _nb_global,
                              _policies, _ReadCommand, _row_status, _rows,
                              _rules, _status_row, _switches, _vips, _vms)
from ovsdb.errors import MbxError


class EnsureNbGlobalCommand(_Command):
    def run_idl(self, txn):
        self.result = _nb_global(self.api) or _insert_nb_global(self.api, txn)


def _insert_nb_global(api, txn):
    row = txn.insert(api.tables["NB_Global"])
    row.name, row.nb_cfg, row.hv_cfg, row.hv_cfg_timestamp = "", 0, 0, 0
    row.northd_cfg = 0
    row.options = {}
    return row


class BumpNbCfgCommand(_Command):
    def run_idl(self, txn):
        row = _nb_global(self.api)
        if row is None:
            row = _insert_nb_global(self.api, txn)
        else:
            row.verify("nb_cfg")
        self.result = row.nb_cfg + 1
        row.nb_cfg = self.result


class SetNorthdCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.northd_cfg = self.value


class SetHvCfgCommand(_Command):
    def __init__(self, api, value):
        super().__init__(api)
        self.value = value

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        row.hv_cfg = self.value
        row.hv_cfg_timestamp = int(time.time() * 1000)


class GlobalSetCommand(_Command):
    def __init__(self, api, options):
        super().__init__(api)
        self.options = options

    def run_idl(self, txn):
        row = _nb_global(self.api) or _insert_nb_global(self.api, txn)
        if row._data is not None:
            row.verify("options")
        options = dict(row.options)
        for key, value in self.options.items():
            if value == "":
                options.pop(key, None)
            else:
                options[key] = value
        if options != dict(row.options):
            row.options = options


class SnapshotCommand(_ReadCommand):
    def run_idl(self, txn):
        nb = _nb_global(self.api)
        middleboxes = _middleboxes(self.api)
        values = dict(
            switches=_switches(self.api),
            vms={vm.name: vm for vm in _vms(self.api)},
            middleboxes=middleboxes,
            rules=_rules(self.api), policies=_policies(self.api),
            address_sets=_address_sets(self.api),
            vips={k: v for k, v in _vips(self.api).items()
                  if k in middleboxes},
            nat_rules={k: v for k, v in _nat_rules(self.api).items()
                       if k in middleboxes},
            external_networks=_externals(self.api))
        self.result = NbSnapshot(
            nb_cfg=nb.nb_cfg if nb else 0, hv_cfg=nb.hv_cfg if nb else 0,
            northd_cfg=nb.northd_cfg if nb else 0,
            middlebox_status={row.name: dict(sorted(row.status.items()))
                              for row in _rows(self.api, "Middlebox")
                              if row.name in middleboxes},
            global_options=dict(sorted(nb.options.items())) if nb else {},
            vm_mirror={row.name: (row.host[0] if row.host else None,
                                  row.location_epoch)
                       for row in _rows(self.api, "VM")},
            ignored=_ignored(self.api, values),
            row_status=_row_status(self.api), **values)


class SetRowStatusCommand(_Command):
    """The ``status`` of rows of common.STATUS_TABLES, by their
    ``validate.unusable`` key ("" clears it); rows that are gone are
    skipped."""

    def __init__(self, api, statuses):
        super().__init__(api)
        self.statuses = statuses

    def run_idl(self, txn):
        for key, text in sorted(self.statuses.items()):
            row = _status_row(self.api, key)
            if row is not None and row.status != text:
                row.status = text


class DatabaseApi:
    """MbxNb's methods on the database as a whole."""

    def ensure_nb_global(self):
        return EnsureNbGlobalCommand(self)

    def bump_nb_cfg(self):
        """Increments NB_Global.nb_cfg; the command's result is the new value."""
        return BumpNbCfgCommand(self)

    def set_hv_cfg(self, value):
        return SetHvCfgCommand(self, value)

    def set_northd_cfg(self, value):
        """NB_Global.northd_cfg: the logical controller has translated the
        config up to this ``nb_cfg`` (written after its own status writes)."""
        return SetNorthdCfgCommand(self, value)

    def global_set(self, options):
        """Merges ``options`` into NB_Global.options (creating the row); a
        value "" removes the key."""
        checked = {}
        for key, value in (options or {}).items():
            if value == "":
                checked[validate.global_option_key(key)] = ""
            else:
                checked[key] = validate.global_option(key, value)
        return GlobalSetCommand(self, checked)

    def set_row_status(self, statuses):
        """{unusable key: one line, or "" to clear} (mbx-northd's writes)."""
        return SetRowStatusCommand(self, statuses)

    def snapshot(self) -> NbSnapshot:
        return SnapshotCommand(self).execute(check_error=True)

    def wait_hv(self, nb_cfg, timeout, sb=None):
        """Return once NB_Global.hv_cfg >= nb_cfg, else MbxError naming the
        hosts behind (their Chassis_Private, when ``sb``, an MbxSb, is
        given)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if snap.hv_cfg >= nb_cfg:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        hosts = sb.snapshot().hosts.values() if sb is not None else ()
        behind = sorted(f"{h.name} (at {h.nb_cfg})" if h.mb_cfg is None else
                        f"{h.name} (at {h.nb_cfg}, mbxd at {h.mb_cfg})"
                        for h in hosts if h.connected and (
                            h.nb_cfg < nb_cfg or (h.mb_cfg is not None
                                                  and h.mb_cfg < nb_cfg)))
        raise MbxError(
            f"timed out after {timeout:g}s waiting for hosts to apply config "
            f"{nb_cfg} (hv_cfg is {snap.hv_cfg}); behind: "
            + (", ".join(behind) or "no connected host; is the controller "
               "running?"))
