"""The config database API of external networks."""

import ipaddress

from mbxmodel import rows as from_row
from mbxmodel.network import ExternalNetInfo
from ovsdb import validate
from ovsdb.api.common import (_Command, _externals, _find, _nat_rules,
                              _refuse_existing)
from ovsdb.errors import MbxError


class ExtAddCommand(_Command):
    def __init__(self, api, ext, may_exist=False):
        super().__init__(api)
        self.ext = ext
        self.may_exist = may_exist

    def run_idl(self, txn):
        ext = self.ext
        row = _find(self.api, "External_Network", ext.name)
        if row is not None:
            _refuse_existing(f"external network '{ext.name}'",
                             from_row.external_network(row),
                             ext, self.may_exist)
            return
        validate.check_external_network(
            ext, _externals(self.api).values())
        row = txn.insert(self.api.tables["External_Network"])
        _write_ext(row, ext)


def _write_ext(row, ext):
    row.name, row.cidr = ext.name, ext.cidr
    row.gateway_ip, row.gateway_mac = ext.gateway_ip, ext.gateway_mac


def _ext_users(api, ext):
    """Descriptions of the NAT rules with an external IP inside ``ext``."""
    net = ipaddress.IPv4Network(ext.cidr)
    users = []
    for mb_name, rules in sorted(_nat_rules(api).items()):
        users += [f"middlebox '{mb_name}' {validate.describe_nat(rule)}"
                  for rule in rules
                  if any(ipaddress.IPv4Address(ip) in net
                         for ip in rule.external_ips)]
    return users


class ExtDelCommand(_Command):
    def __init__(self, api, name, if_exists=False):
        super().__init__(api)
        self.name = name
        self.if_exists = if_exists

    def run_idl(self, txn):
        row = _find(self.api, "External_Network", self.name)
        if row is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown external network '{self.name}'; use "
                           "--if-exists to ignore a missing one")
        users = _ext_users(self.api, from_row.external_network(row))
        if users:
            raise MbxError(f"external network '{self.name}' is still used by "
                           f"{'; '.join(users)}; delete "
                           f"{'it' if len(users) == 1 else 'them'} first "
                           "(nat-del)")
        row.delete()


class UpsertExternalNetworkCommand(_Command):
    """Create or update an external network without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, ext):
        super().__init__(api)
        self.ext = ext

    def run_idl(self, txn):
        row = _find(self.api, "External_Network", self.ext.name)
        if row is None:
            row = txn.insert(self.api.tables["External_Network"])
        _write_ext(row, self.ext)


class ExternalsApi:
    """MbxNb's external network methods."""

    def ext_add(self, name, cidr, gateway_ip, gateway_mac, may_exist=False):
        return ExtAddCommand(self, validate.external_network(
            name, cidr, gateway_ip, gateway_mac), may_exist)

    def ext_del(self, name, if_exists=False):
        """Refused while a NAT rule has an external IP inside it."""
        return ExtDelCommand(self, name, if_exists)

    def upsert_external_network(self, ext: ExternalNetInfo):
        """Create or update ``ext``; follow a batch with
        ``check_firewall()``."""
        return UpsertExternalNetworkCommand(self, ext)

    def ext_list(self):
        return sorted(self.snapshot().external_networks.values(),
                      key=lambda e: e.name)
