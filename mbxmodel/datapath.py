"""A logical switch's translated intent: the southbound ``Datapath`` record.

The logical controller (``ryu_apps.translate``) turns the northbound intent
into one ``Datapath`` value per logical switch and writes it to the
southbound database's ``Datapath`` row of the switch (columns ``name``,
``tenant``, ``vni``, and ``config``: this module's JSON).  The physical
controllers read these rows instead of the northbound database, and mbxd
may read them for its slices' services.  This module is the one encoder
and decoder of ``config`` (its format: ``ovsdb/mbx_sb.md``, "Datapath").

A record holds everything about its switch that the flows are computed
from (``ryu_apps.flows``): the switch, its VMs, its steering policies with
their chains, its middleboxes with their options, NAT rules and VIPs, the
address sets its policies and rules name, the external networks (every
switch's gateway flows use them all) and the global options that matter
(``migration-wait-ms``).  It also carries the firewall rules of its
middleboxes, which only mbxd uses: ``for_flows`` leaves them out, and a
record that differs only in them computes no flow.

``encode`` is canonical (sorted keys, no spaces, lists in a fixed order),
so an unchanged switch encodes to the identical text and the logical
controller writes nothing.  ``decode`` checks every field and raises one
``DatapathError`` naming the row and the field; ``Reader`` keeps the
decoded records of a set of rows and skips (and logs, once) a malformed
one, so a bad row written straight into the database never stops a reader.
"""

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Tuple

from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import (ACTIONS, DIRECTIONS, L4_PROTOCOLS, LB_ALGORITHMS,
                               MIDDLEBOX_TYPES, NAT_TYPES, TIERS, AddressSetInfo,
                               MiddleboxInfo, NatRuleInfo, PolicyInfo, RuleInfo,
                               VipInfo)
from mbxmodel.topology import Topology

LOG = logging.getLogger(__name__)

VERSION = 1

# NB_Global.options keys a physical controller uses (copied into every record)
GLOBAL_OPTIONS = ("migration-wait-ms",)


class DatapathError(ValueError):
    """A Datapath row whose ``config`` is not a record this version reads."""


@dataclass(frozen=True)
class Datapath:
    """One logical switch's translated intent (see the module docstring).
    Sequences are in their canonical order: VMs, middleboxes, address sets
    and external networks by name; policies by descending priority (then
    match and chain); a middlebox's rules in evaluation order, its NAT
    rules and VIPs as the northbound snapshot sorts them."""
    switch: SwitchInfo
    vms: Tuple[VMInfo, ...] = ()
    policies: Tuple[PolicyInfo, ...] = ()
    middleboxes: Tuple[MiddleboxInfo, ...] = ()
    rules: Mapping[str, Tuple[RuleInfo, ...]] = field(default_factory=dict)        # by middlebox
    nat_rules: Mapping[str, Tuple[NatRuleInfo, ...]] = field(default_factory=dict)  # by middlebox
    vips: Mapping[str, Tuple[VipInfo, ...]] = field(default_factory=dict)          # by middlebox, no status
    address_sets: Tuple[AddressSetInfo, ...] = ()
    external_networks: Tuple[ExternalNetInfo, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)   # GLOBAL_OPTIONS set

    @property
    def name(self):
        return self.switch.name


def for_flows(record):
    """``record`` without what only mbxd reads (the firewall rules): two
    records equal this way give the same flows."""
    return dataclasses.replace(record, rules={}) if record.rules else record


# ------------------------------------------------------------------ encode

def encode(record):
    """The ``config`` text of ``record``: canonical JSON."""
    return json.dumps(_to_json(record), sort_keys=True, separators=(",", ":"))


def row(record):
    """The Datapath row of ``record``: (tenant, vni, config)."""
    return (record.switch.tenant, record.switch.vni, encode(record))


def ports(config):
    """The sorted VM names of a ``config`` text (the row's ``ports``
    column: what a physical controller's monitor condition matches); none
    for a text that does not parse."""
    try:
        vms = json.loads(config).get("vms", [])
        return sorted({v["name"] for v in vms if isinstance(v.get("name"), str)})
    except (ValueError, AttributeError, TypeError):
        return []


def _to_json(r):
    sw = r.switch
    return {
        "version": VERSION,
        "subnet": sw.subnet,
        "gateway": sw.gateway,
        "vms": [{"name": v.name, "mac": v.mac, "ip": v.ip} for v in r.vms],
        "policies": [{"priority": p.priority, "match": p.match, "chain": list(p.chain)}
                     for p in r.policies],
        "middleboxes": [_middlebox_json(r, mb) for mb in r.middleboxes],
        "address_sets": [{"name": a.name, "tenant": a.tenant,
                          "addresses": list(a.addresses)} for a in r.address_sets],
        "external_networks": [{"name": n.name, "cidr": n.cidr, "gateway_ip": n.gateway_ip,
                               "gateway_mac": n.gateway_mac}
                              for n in r.external_networks],
        "options": dict(r.options),
    }


def _middlebox_json(r, mb):
    return {
        "name": mb.name, "type": mb.type, "default_action": mb.default_action,
        "options": dict(mb.options),
        "rules": [{"uuid": x.uuid, "priority": x.priority, "direction": x.direction,
                   "match": x.match, "action": x.action, "tier": x.tier}
                  for x in r.rules.get(mb.name, ())],
        "nat_rules": [{"uuid": x.uuid, "type": x.type, "external_ips": list(x.external_ips),
                       "logical_ip": x.logical_ip, "protocol": x.protocol,
                       "external_port": x.external_port, "logical_port": x.logical_port,
                       "port_range": list(x.port_range)}
                      for x in r.nat_rules.get(mb.name, ())],
        "vips": [{"uuid": x.uuid, "vip": x.vip, "port": x.port, "protocol": x.protocol,
                  "algorithm": x.algorithm, "backends": [list(b) for b in x.backends],
                  "options": dict(x.options)}
                 for x in r.vips.get(mb.name, ())],
    }


# ------------------------------------------------------------------ decode

class _Reader:
    """Typed access to a JSON object, naming the field in its error."""

    def __init__(self, row, path, obj):
        if not isinstance(obj, dict):
            raise DatapathError("Datapath %s: %s is not an object" % (row, path))
        self.row, self.path, self.obj = row, path, obj

    def _fail(self, key, what):
        raise DatapathError("Datapath %s: %s.%s %s" % (self.row, self.path, key, what))

    def get(self, key, kind, optional=False):
        if key not in self.obj:
            self._fail(key, "is missing")
        value = self.obj[key]
        if value is None and optional:
            return None
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            self._fail(key, "is not %s" % _KIND_NAMES[kind]
                       + (" or null" if optional else ""))
        return value

    def choice(self, key, allowed):
        value = self.get(key, str)
        if value not in allowed:
            self._fail(key, "is %r, not one of %s" % (value, ", ".join(allowed)))
        return value

    def strings(self, key):
        value = self.get(key, list)
        if not all(isinstance(v, str) for v in value):
            self._fail(key, "is not a list of strings")
        return tuple(value)

    def string_map(self, key):
        value = self.get(key, dict)
        if not all(isinstance(v, str) for v in value.values()):
            self._fail(key, "is not a map of strings")
        return dict(sorted(value.items()))

    def objects(self, key):
        return [_Reader(self.row, "%s.%s[%d]" % (self.path, key, i), item)
                for i, item in enumerate(self.get(key, list))]


_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def decode(name, tenant, vni, config):
    """The Datapath of a row (its ``name``, ``tenant``, ``vni`` columns and
    ``config`` text); DatapathError if ``config`` is malformed."""
    if not isinstance(config, str):
        raise DatapathError("Datapath %s: config is not a string" % name)
    try:
        obj = json.loads(config)
    except ValueError as e:
        raise DatapathError("Datapath %s: config is not JSON (%s)" % (name, e)) from None
    top = _Reader(name, "config", obj)
    version = top.get("version", int)
    if version != VERSION:
        raise DatapathError("Datapath %s: config version %d, this program reads %d"
                            % (name, version, VERSION))
    switch = SwitchInfo(name=name, tenant=tenant, vni=vni, subnet=top.get("subnet", str),
                        gateway=top.get("gateway", str))
    vms = tuple(VMInfo(name=v.get("name", str), switch=name, mac=v.get("mac", str),
                       ip=v.get("ip", str)) for v in top.objects("vms"))
    policies = tuple(PolicyInfo(switch=name, priority=p.get("priority", int),
                                match=p.get("match", str), chain=p.strings("chain"))
                     for p in top.objects("policies"))
    middleboxes, rules, nat_rules, vips = [], {}, {}, {}
    for m in top.objects("middleboxes"):
        mb = MiddleboxInfo(name=m.get("name", str), type=m.choice("type", MIDDLEBOX_TYPES),
                           switch=name, default_action=m.choice("default_action", ACTIONS),
                           options=m.string_map("options"))
        middleboxes.append(mb)
        mine = tuple(_rule(x) for x in m.objects("rules"))
        if mine:
            rules[mb.name] = mine
        mine = tuple(_nat_rule(x, mb.name) for x in m.objects("nat_rules"))
        if mine:
            nat_rules[mb.name] = mine
        mine = tuple(_vip(x, mb.name) for x in m.objects("vips"))
        if mine:
            vips[mb.name] = mine
    sets = tuple(AddressSetInfo(name=a.get("name", str), tenant=a.get("tenant", str),
                                addresses=a.strings("addresses"))
                 for a in top.objects("address_sets"))
    nets = tuple(ExternalNetInfo(name=n.get("name", str), cidr=n.get("cidr", str),
                                 gateway_ip=n.get("gateway_ip", str),
                                 gateway_mac=n.get("gateway_mac", str))
                 for n in top.objects("external_networks"))
    return Datapath(switch=switch, vms=vms, policies=policies, middleboxes=tuple(middleboxes),
                    rules=rules, nat_rules=nat_rules, vips=vips, address_sets=sets,
                    external_networks=nets, options=top.string_map("options"))


def _rule(x):
    return RuleInfo(priority=x.get("priority", int, optional=True),
                    direction=x.choice("direction", DIRECTIONS), match=x.get("match", str),
                    action=x.choice("action", ACTIONS), tier=x.choice("tier", TIERS),
                    uuid=x.get("uuid", str))


def _nat_rule(x, middlebox):
    ports = x.get("port_range", list)
    if len(ports) != 2 or not all(isinstance(p, int) and not isinstance(p, bool)
                                  for p in ports):
        x._fail("port_range", "is not [low, high]")
    return NatRuleInfo(uuid=x.get("uuid", str), middlebox=middlebox,
                       type=x.choice("type", NAT_TYPES),
                       external_ips=x.strings("external_ips"),
                       logical_ip=x.get("logical_ip", str),
                       protocol=x.choice("protocol", ("",) + L4_PROTOCOLS),
                       external_port=x.get("external_port", int, optional=True),
                       logical_port=x.get("logical_port", int, optional=True),
                       port_range=tuple(ports))


def _vip(x, middlebox):
    backends = []
    for item in x.get("backends", list):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            x._fail("backends", "is not a list of [address, port]")
        backends.append((item[0], item[1]))
    return VipInfo(uuid=x.get("uuid", str), middlebox=middlebox, vip=x.get("vip", str),
                   port=x.get("port", int), protocol=x.choice("protocol", L4_PROTOCOLS),
                   algorithm=x.choice("algorithm", LB_ALGORITHMS), backends=tuple(backends),
                   options=x.string_map("options"))


# ------------------------------------------------------------------ readers

class Reader:
    """The decoded records of a database's Datapath rows, kept row by row:
    a row whose text did not change is not decoded again.  A malformed row
    is logged once and not used: the switch keeps the record read before
    (a bad write does not take a tenant's network down), or has none."""

    def __init__(self):
        self.records: Dict[str, Datapath] = {}
        self._rows: Dict[str, Tuple] = {}       # name -> (tenant, vni, config) decoded
        self._bad: Dict[str, Tuple] = {}        # name -> the malformed row, logged

    def update(self, rows):
        """``rows``: every row now, {name: (tenant, vni, config)}.  Returns
        {name: (old Datapath or None, new Datapath or None)} of the
        records that changed."""
        changed = {}
        for name in list(self._rows):
            if name not in rows:
                del self._rows[name]
                changed[name] = (self.records.pop(name), None)
        for name in list(self._bad):
            if name not in rows:
                del self._bad[name]
        for name, row in rows.items():
            row = tuple(row)
            if self._rows.get(name) == row or self._bad.get(name) == row:
                continue
            try:
                record = decode(name, *row)
            except DatapathError as e:
                LOG.error("%s; %s", e, "the switch keeps its record read before"
                          if name in self.records else "the switch is left out")
                self._bad[name] = row
                continue
            self._bad.pop(name, None)
            old = self.records.get(name)
            self._rows[name] = row
            self.records[name] = record
            if old != record:
                changed[name] = (old, record)
        return changed


def flows_changed(changes):
    """Whether changes (``Reader.update``'s result) can change a flow."""
    return any((old is None) != (new is None)
               or (old is not None and for_flows(old) != for_flows(new))
               for old, new in changes.values())


# ---------------------------------------------------------------- topology

def topology(records: Iterable[Datapath]) -> Topology:
    """The Topology of the configuration these records describe (no hosts,
    bindings or slices): the input of flow computation
    (``ryu_apps.topostate``), the same for every reader."""
    switches, vms, middleboxes, policies = {}, {}, {}, []
    nat_rules, vips, sets, nets = {}, {}, {}, {}
    for r in sorted(records, key=lambda r: r.name):
        switches[r.name] = r.switch
        for vm in r.vms:
            vms[vm.name] = vm
        for mb in r.middleboxes:
            middleboxes[mb.name] = mb
        policies += r.policies
        nat_rules.update(r.nat_rules)
        vips.update(r.vips)
        for a in r.address_sets:
            sets[a.name] = a
        for n in r.external_networks:
            nets[n.name] = n
    return Topology(switches=switches, vms=vms, middleboxes=middleboxes,
                    policies=tuple(policies), address_sets=sets, nat_rules=nat_rules,
                    vips=vips, external_networks=nets)


def known_slices(slices, topo):
    """The slices ({(chain, host): tag}) whose chain's middleboxes are all
    in ``topo``: a slice decided for a record not read yet (or no longer
    there) waits for it.  ``slices`` itself when every one is known."""
    known = topo.middleboxes
    if all(name in known for chain, _ in slices for name in chain):
        return slices
    return {key: tag for key, tag in slices.items() if all(n in known for n in key[0])}


def global_options(records: Iterable[Datapath]) -> Dict[str, str]:
    """The global options (``GLOBAL_OPTIONS``) as the records carry them:
    any record's, as they all carry the same ({} without a record)."""
    for r in records:
        return dict(r.options)
    return {}
