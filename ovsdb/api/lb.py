"""The config database API of load-balanced VIPs."""

import dataclasses
import uuid as uuidlib

from mbxmodel import rows as from_row
from mbxmodel.services import bare
from ovsdb import validate
from ovsdb.api.common import (_Command, _find, _mb_info, _middleboxes,
                              _refuse_existing, _rows, _switches, _vips, _vms)
from ovsdb.errors import MbxError


class SetVipStatusCommand(_Command):
    def __init__(self, api, vip_uuid, status):
        super().__init__(api)
        self.vip_uuid = vip_uuid
        self.status = status

    def run_idl(self, txn):
        row = self.api.tables["LB_VIP"].rows.get(self.vip_uuid)
        if row is not None and dict(row.status) != self.status:
            row.status = self.status


def _write_vip(row, v):
    row.vip, row.port, row.protocol = v.vip, v.port, v.protocol
    row.algorithm = v.algorithm
    row.backends = [validate.backend_text(b) for b in v.backends]
    row.options = dict(v.options)


def _find_vip(api, mb_name, address, protocol, if_exists=False):
    """(Middlebox row, its LB_VIP row for ``address`` (ip, port) and
    ``protocol`` (None: the only one), or None).  (None, None) for a
    missing middlebox with ``if_exists``."""
    row = _find(api, "Middlebox", mb_name)
    if row is None:
        if if_exists:
            return None, None
        raise MbxError(f"unknown middlebox '{mb_name}'; create it first "
                       "(mb-add --type lb)")
    found = [r for r in row.vips if r is not None
             and (r.vip, r.port) == address
             and protocol in (None, r.protocol)]
    if len(found) > 1:
        raise MbxError(f"load balancer '{mb_name}' has VIPs "
                       f"{address[0]}:{address[1]} for "
                       f"{' and '.join(sorted(r.protocol for r in found))}; "
                       "choose one with --protocol")
    return row, (found[0] if found else None)


def _no_vip(mb_name, address, protocol):
    what = f"{address[0]}:{address[1]}" + (f"/{protocol}" if protocol
                                           else "")
    return MbxError(f"load balancer '{mb_name}' has no VIP {what}")


def _check_vip(api, v, mb):
    """check_vip and check_vip_unique against the transaction's view."""
    middleboxes = _middleboxes(api)
    validate.check_vip(v, mb, _switches(api), _vms(api))
    others = [o for vips in _vips(api).values() for o in vips
              if o.uuid != v.uuid]
    validate.check_vip_unique(v, mb, others, middleboxes)


class LbAddCommand(_Command):
    def __init__(self, api, mb_name, vip, may_exist=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.vip = vip
        self.may_exist = may_exist

    def run_idl(self, txn):
        v = self.vip
        row, current = _find_vip(self.api, self.mb_name, (v.vip, v.port),
                                 v.protocol)
        v = dataclasses.replace(v, middlebox=row.name)
        if current is not None:
            _refuse_existing(f"load balancer '{row.name}' VIP "
                             f"{validate.vip_text(v)}",
                             bare(from_row.vip(current, row.name)), v,
                             self.may_exist)
            return
        for other in _rows(self.api, "Middlebox"):
            other.verify("vips")
        _check_vip(self.api, v, _mb_info(row))
        new = txn.insert(self.api.tables["LB_VIP"])
        _write_vip(new, v)
        new.status = {}
        row.vips = [r for r in row.vips if r is not None] + [new]


class LbDelCommand(_Command):
    def __init__(self, api, mb_name, address, protocol, if_exists=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.address = address
        self.protocol = protocol
        self.if_exists = if_exists

    def run_idl(self, txn):
        row, current = _find_vip(self.api, self.mb_name, self.address,
                                 self.protocol, self.if_exists)
        if current is None:
            if self.if_exists:
                return
            raise MbxError(str(_no_vip(self.mb_name, self.address,
                                       self.protocol))
                           + "; use --if-exists to ignore a missing one")
        row.vips = [r for r in row.vips if r is not None and r != current]


class LbChangeCommand(_Command):
    """Change one VIP: add or remove a backend, merge options, set the
    algorithm; then check it."""

    def __init__(self, api, mb_name, address, protocol, add=None,
                 remove=None, options=None, algorithm=None, may_exist=False,
                 if_exists=False):
        super().__init__(api)
        self.mb_name = mb_name
        self.address = address
        self.protocol = protocol
        self.add = add
        self.remove = remove
        self.options = options or {}
        self.algorithm = algorithm
        self.may_exist = may_exist
        self.if_exists = if_exists

    def run_idl(self, txn):
        row, current = _find_vip(self.api, self.mb_name, self.address,
                                 self.protocol)
        if current is None:
            raise _no_vip(self.mb_name, self.address, self.protocol)
        current.verify("backends")
        current.verify("options")
        v = from_row.vip(current, row.name)
        backends = list(v.backends)
        text = validate.backend_text(self.add or self.remove or ("", 0))
        label = f"load balancer '{row.name}' VIP {validate.vip_text(v)}"
        if self.add is not None:
            if self.add in backends:
                if self.may_exist:
                    return
                raise MbxError(f"{label} already has backend {text}; use "
                               "--may-exist to accept it")
            backends.append(self.add)
        if self.remove is not None:
            if self.remove not in backends:
                if self.if_exists:
                    return
                raise MbxError(f"{label} has no backend {text}; use "
                               "--if-exists to ignore a missing one")
            backends.remove(self.remove)
        options = dict(v.options)
        for key, value in self.options.items():
            if value == "":
                options.pop(key, None)
            else:
                options[key] = value
        v = dataclasses.replace(
            v, backends=tuple(sorted(backends, key=lambda b: (
                from_row.ip_key(b[0]), b[1]))),
            options=dict(sorted(options.items())),
            algorithm=self.algorithm or v.algorithm)
        _check_vip(self.api, v, _mb_info(row))
        _write_vip(current, v)


def _lb_protocol(protocol):
    return None if protocol is None else validate.protocol(protocol)


class LbApi:
    """MbxNb's VIP methods."""

    def lb_add(self, mb, vip, protocol="tcp", algorithm="hash",
               backends=(), options=None, may_exist=False):
        """``vip`` and ``backends``: "IP:PORT"; ``mb`` is an lb middlebox."""
        return LbAddCommand(self, mb, validate.vip(
            mb, vip, protocol, algorithm, backends, options), may_exist)

    def lb_del(self, mb, vip, protocol=None, if_exists=False):
        """``protocol`` None: the VIP's only protocol."""
        return LbDelCommand(self, mb, validate.ip_port(vip, "VIP"),
                            _lb_protocol(protocol), if_exists)

    def lb_backend_add(self, mb, vip, backend, protocol=None,
                       may_exist=False):
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol),
                               add=validate.ip_port(backend, "backend"),
                               may_exist=may_exist)

    def lb_backend_del(self, mb, vip, backend, protocol=None,
                       if_exists=False):
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol),
                               remove=validate.ip_port(backend, "backend"),
                               if_exists=if_exists)

    def lb_set(self, mb, vip, options=None, algorithm=None, protocol=None):
        """Merges ``options`` into the VIP's (a value "" removes the key);
        ``algorithm`` replaces its algorithm."""
        checked = {}
        for key, value in (options or {}).items():
            if value == "":
                checked[validate.vip_option_key(key)] = ""
            else:
                checked[key] = validate.vip_option(key, value)
        if algorithm is not None:
            algorithm = validate.algorithm(algorithm)
        return LbChangeCommand(self, mb, validate.ip_port(vip, "VIP"),
                               _lb_protocol(protocol), options=checked,
                               algorithm=algorithm)

    def set_vip_status(self, vip_uuid, status):
        """LB_VIP.status of the VIP with UUID ``vip_uuid`` ("ip:port" ->
        "up"/"down"); nothing if the VIP is gone."""
        try:
            key = uuidlib.UUID(str(vip_uuid))
        except ValueError:
            raise MbxError(f"invalid UUID {vip_uuid!r}") from None
        return SetVipStatusCommand(self, key,
                                   validate.status_map(status, "VIP status"))

    def lb_list(self, mb=None):
        """VIPs, by middlebox name then address, port, protocol."""
        snap = self.snapshot()
        return [v for name, vips in sorted(snap.vips.items())
                if mb is None or name == mb for v in vips]
