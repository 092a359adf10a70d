"""Declarative YAML topology: the switches, VMs, address sets, external
networks, middleboxes (with their firewall rules, NAT rules and VIPs) and
steering policies that should exist.

    switches:
      - {name: ls-a, tenant: tenant-a, vni: 101, subnet: 10.0.0.0/24,
         gateway: 10.0.0.1}             # the default: the first address
    vms:
      - {name: a1, switch: ls-a, ip: 10.0.0.11, mac: "02:00:00:00:01:01"}
    address_sets:
      - {name: a-admins, tenant: tenant-a, addresses: [10.0.0.21]}
    middleboxes:
      - name: fw-a
        type: firewall                  # the default
        switch: ls-a
        default_action: deny            # the default
        options: {same-host: both}
        rules:
          - {priority: 100, direction: to-vm, match: "proto=tcp dport=7000",
             action: allow, tier: tenant}         # tier: tenant is the default
      - name: nat-a
        type: nat
        switch: ls-a
        options: {ports-per-host: 4096}
        nat_rules:
          - {type: snat, external_ips: [203.0.113.5], logical_ip: 10.0.0.0/24,
             port_range: 1024-65535}      # logical_ip, port_range optional
          - {type: dnat, external_ip: 203.0.113.10, logical_ip: 10.0.0.11,
             protocol: tcp, external_port: 8080, logical_port: 80}
      - name: lb-a
        type: lb
        switch: ls-a
        vips:
          - {vip: "10.0.0.100:80", protocol: tcp, algorithm: round-robin,
             backends: ["10.0.0.11:80", "10.0.0.12:80"],
             options: {health-interval: 5}}
    external_networks:
      - {name: ext, cidr: 203.0.113.0/24, gateway_ip: 203.0.113.1,
         gateway_mac: "02:00:00:00:ff:01"}
    steering:
      - {switch: ls-a, priority: 100, match: any, chain: [fw-a, lb-a, nat-a]}
      - {switch: ls-a, priority: 200, match: "src=$a-admins", chain: []}
      - {switch: ls-a, priority: 50, match: "proto=udp", middlebox: fw-a}

A steering entry's ``chain`` lists middleboxes in order (``[]``: bypass);
the older ``middlebox: NAME`` (or ``middlebox: bypass``) is a chain of one.
``tenant`` defaults to the switch name; ``mac`` defaults to the VM's
deterministic generated MAC (``validate.mac_from_name``), so a file alone
determines every value.  Applying a file creates missing rows and updates
differing ones; rows it does not mention are left alone:

* switches, VMs, address sets and external networks are created or updated
  by name (an address set's addresses become exactly the listed ones; a
  switch without ``gateway`` gets the default gateway);
* a listed middlebox is created or replaced by name: its type, switch,
  default action and options become exactly the file's, and so do its rules,
  NAT rules and VIPs (a missing key: none); rules and NAT rules that stay
  keep their rows, and so does a VIP whose address, port and protocol stay
  (with its health status);
* the steering policies of each switch named in ``steering`` become exactly
  the file's entries for that switch; switches no entry names keep theirs.

Match texts are stored in canonical form (``ovsdb.match``).  Everything is
checked before anything is written, with the rules of mbxctl: the file on
its own when parsed, then merged over the database before the one
transaction that applies it.

The lab's files may also place VMs on hosts (a top-level ``hosts:`` list of
host names and a per-VM ``host:`` key).  Only ``allow_placement=True``
accepts them; placement is returned in the spec, never written to the DB.
"""

import dataclasses
from typing import Mapping, Tuple

import yaml

from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel.services import (AddressSetInfo, MiddleboxInfo, NatRuleInfo,
                               PolicyInfo, RuleInfo, VipInfo, bare)
from ovsdb import validate
from ovsdb.errors import MbxError

TOP_KEYS = ("switches", "vms", "address_sets", "external_networks",
            "middleboxes", "steering")
SWITCH_KEYS = ("name", "tenant", "vni", "subnet", "gateway")
VM_KEYS = ("name", "switch", "ip", "mac")
ADDRESS_SET_KEYS = ("name", "tenant", "addresses")
EXTERNAL_KEYS = ("name", "cidr", "gateway_ip", "gateway_mac")
MIDDLEBOX_KEYS = ("name", "type", "switch", "default_action", "options",
                  "rules", "nat_rules", "vips")
RULE_KEYS = ("priority", "direction", "match", "action", "tier")
SNAT_KEYS = ("type", "external_ips", "logical_ip", "port_range")
DNAT_KEYS = ("type", "external_ip", "logical_ip", "protocol", "external_port",
             "logical_port")
VIP_KEYS = ("vip", "protocol", "algorithm", "backends", "options")
STEERING_KEYS = ("switch", "priority", "match", "chain", "middlebox")
# Accepted only with allow_placement=True.
LAB_TOP_KEYS = ("hosts",)
LAB_VM_KEYS = ("host",)


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    switches: Tuple[SwitchInfo, ...] = ()
    vms: Tuple[VMInfo, ...] = ()
    hosts: Tuple[str, ...] = ()                 # lab only
    placement: Mapping[str, str] = dataclasses.field(
        default_factory=dict)                   # lab only: VM name -> host
    address_sets: Tuple[AddressSetInfo, ...] = ()
    middleboxes: Tuple[MiddleboxInfo, ...] = ()
    # middlebox name -> its rules, in file order (every listed middlebox)
    rules: Mapping[str, Tuple[RuleInfo, ...]] = dataclasses.field(
        default_factory=dict)
    policies: Tuple[PolicyInfo, ...] = ()       # in file order
    external_networks: Tuple[ExternalNetInfo, ...] = ()
    # middlebox name -> its NAT rules / VIPs in file order (uuid "", every
    # listed middlebox)
    nat_rules: Mapping[str, Tuple[NatRuleInfo, ...]] = dataclasses.field(
        default_factory=dict)
    vips: Mapping[str, Tuple[VipInfo, ...]] = dataclasses.field(
        default_factory=dict)

    @property
    def steered_switches(self):
        """The switches whose steering policies the file declares."""
        return tuple(dict.fromkeys(p.switch for p in self.policies))


def _yaml_error(e):
    mark = getattr(e, "problem_mark", None)
    if getattr(e, "problem", None) and mark is not None:
        return (f"invalid YAML: {e.problem} at line {mark.line + 1} "
                f"column {mark.column + 1}")
    return "invalid YAML: " + " ".join(str(e).split())


def _check_keys(label, entry, allowed, required):
    for key in entry:
        if key not in allowed:
            raise MbxError(f"{label}: unknown key {key!r}; expected "
                           + ", ".join(allowed))
    for key in required:
        if key not in entry:
            raise MbxError(f"{label}: missing key {key!r}")


def _items(doc, key, what):
    """(label, item) for each item of list ``doc[key]``."""
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise MbxError(f"{key}: expected a list of {what}")
    return [(f"{key}[{i}]", item) for i, item in enumerate(items)]


def _entries(doc, key, what):
    """(label, mapping) for each item of list ``doc[key]``; the label names
    the entry, e.g. "vms[2] (a3)"."""
    out = []
    for label, entry in _items(doc, key, what):
        if not isinstance(entry, dict):
            raise MbxError(f"{label}: expected a mapping like {{name: ...}}")
        if isinstance(entry.get("name"), str):
            label += f" ({entry['name']})"
        out.append((label, entry))
    return out


def _value(label, func, value):
    try:
        return func(value)
    except MbxError as e:
        raise MbxError(f"{label}: {e}") from None


def _parse_switch(label, entry):
    _check_keys(label, entry, SWITCH_KEYS, ("name", "vni", "subnet"))
    if not isinstance(entry["vni"], int) or isinstance(entry["vni"], bool):
        raise MbxError(f"{label}: vni must be an integer, e.g. vni: 101")
    name = _value(label, lambda v: validate.name(v, "switch name"),
                  entry["name"])
    subnet = _value(label, validate.subnet, entry["subnet"])
    gateway = entry.get("gateway")
    return SwitchInfo(name=name,
                      tenant=_value(label, validate.tenant,
                                    entry.get("tenant", name)),
                      vni=_value(label, validate.vni, entry["vni"]),
                      subnet=subnet,
                      gateway=validate.default_gateway(subnet)
                      if gateway is None else _value(
                          label, lambda v: validate.gateway(v, subnet, name),
                          gateway))


def _parse_vm(label, entry, vm_keys):
    _check_keys(label, entry, vm_keys, ("name", "switch", "ip"))
    name = _value(label, lambda v: validate.name(v, "VM name"), entry["name"])
    mac = entry.get("mac")
    if mac is None:
        mac = validate.mac_from_name(name)
    elif not isinstance(mac, str):
        raise MbxError(f'{label}: mac must be a quoted string, e.g. mac: '
                       '"02:00:00:00:01:01"')
    return VMInfo(name=name,
                  switch=_value(label, lambda v: validate.name(v, "switch"),
                                entry["switch"]),
                  mac=_value(label, validate.mac, mac),
                  ip=_value(label, validate.ipv4, entry["ip"]))


def _integer(label, key, value, example):
    if not isinstance(value, int) or isinstance(value, bool):
        raise MbxError(f"{label}: {key} must be an integer, e.g. {key}: "
                       f"{example}")
    return value


def _string(label, key, value, example):
    if not isinstance(value, str):
        raise MbxError(f"{label}: {key} must be a string, e.g. {key}: "
                       f"{example}")
    return value


def _parse_address_set(label, entry):
    _check_keys(label, entry, ADDRESS_SET_KEYS, ("name", "tenant"))
    addresses = entry.get("addresses")
    if addresses is None:
        addresses = []
    if not isinstance(addresses, list):
        raise MbxError(f"{label}: addresses must be a list, e.g. addresses: "
                       "[10.0.0.11, 10.0.1.0/24]")
    return AddressSetInfo(
        name=_value(label, lambda v: validate.name(v, "address set name"),
                    entry["name"]),
        tenant=_value(label, validate.tenant, entry["tenant"]),
        addresses=_value(label, validate.addresses, addresses))


def _parse_rule(label, entry):
    if not isinstance(entry, dict):
        raise MbxError(f"{label}: expected a mapping like {{priority: 100, "
                       "direction: to-vm, match: any, action: allow}}")
    _check_keys(label, entry, RULE_KEYS,
                ("priority", "direction", "match", "action"))
    match = _string(label, "match", entry["match"], '"proto=tcp dport=22"')
    return RuleInfo(
        priority=_value(label, validate.rule_priority, _integer(
            label, "priority", entry["priority"], 100)),
        direction=_value(label, validate.direction, entry["direction"]),
        match=_value(label, lambda v: validate.match(v).text, match),
        action=_value(label, validate.action, entry["action"]),
        tier=_value(label, validate.tier, entry.get("tier", "tenant")))


def _options_mapping(label, options, example):
    """A YAML options mapping as {key: str}; numbers become text."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise MbxError(f"{label}: options must be a mapping, e.g. options: "
                       f"{{{example}}}")
    for key, value in options.items():
        if not isinstance(value, (str, int, float)) or isinstance(value,
                                                                   bool):
            raise MbxError(f"{label}: option {key!r} must be a string or a "
                           "number")
    return {k: v if isinstance(v, str) else str(v)
            for k, v in options.items()}


def _port(label, key, entry):
    value = entry.get(key)
    return None if value is None else _integer(label, key, value, 8080)


def _parse_nat(label, mb_name, entry):
    if not isinstance(entry, dict):
        raise MbxError(f"{label}: expected a mapping like {{type: snat, "
                       "external_ips: [203.0.113.5]}")
    _check_keys(label, entry, tuple(dict.fromkeys(SNAT_KEYS + DNAT_KEYS)),
                ("type",))
    rule_type = _value(label, validate.nat_type, entry["type"])
    if rule_type == "snat":
        _check_keys(label, entry, SNAT_KEYS, ("external_ips",))
        ips = entry["external_ips"]
        if not isinstance(ips, list) or not all(isinstance(ip, str)
                                                for ip in ips):
            raise MbxError(f"{label}: external_ips must be a list, e.g. "
                           "external_ips: [203.0.113.5]")
        port_range = entry.get("port_range")
        if port_range is not None and not isinstance(port_range, (str, int)):
            raise MbxError(f"{label}: port_range must be a string, e.g. "
                           "port_range: 1024-65535")
        logical = _string(label, "logical_ip", entry.get("logical_ip", ""),
                          "10.0.0.0/24")
        return _value(label, lambda _: validate.nat_rule(
            mb_name, "snat", ips, logical, port_range_text=port_range), None)
    _check_keys(label, entry, DNAT_KEYS, ("external_ip", "logical_ip"))
    external = _string(label, "external_ip", entry["external_ip"],
                       "203.0.113.10")
    logical = _string(label, "logical_ip", entry["logical_ip"], "10.0.0.11")
    external_port = _port(label, "external_port", entry)
    logical_port = _port(label, "logical_port", entry)
    return _value(label, lambda _: validate.nat_rule(
        mb_name, "dnat", [external], logical, entry.get("protocol", ""),
        external_port, logical_port), None)


def _parse_vip(label, mb_name, entry):
    if not isinstance(entry, dict):
        raise MbxError(f"{label}: expected a mapping like {{vip: "
                       '"10.0.0.100:80", backends: ["10.0.0.11:80"]}')
    _check_keys(label, entry, VIP_KEYS, ("vip",))
    backends = entry.get("backends")
    if backends is None:
        backends = []
    if not isinstance(backends, list) or not all(isinstance(b, str)
                                                 for b in backends):
        raise MbxError(f'{label}: backends must be a list, e.g. backends: '
                       '["10.0.0.11:80", "10.0.0.12:80"]')
    options = _options_mapping(label, entry.get("options"),
                               "health-interval: 5")
    address = _string(label, "vip", entry["vip"], '"10.0.0.100:80"')
    return _value(label, lambda _: validate.vip(
        mb_name, address, entry.get("protocol", "tcp"),
        entry.get("algorithm", "hash"), backends, options), None)


def _parse_external(label, entry):
    _check_keys(label, entry, EXTERNAL_KEYS, EXTERNAL_KEYS)
    if not isinstance(entry["gateway_mac"], str):
        raise MbxError(f'{label}: gateway_mac must be a quoted string, e.g. '
                       'gateway_mac: "02:00:00:00:ff:01"')
    return _value(label, lambda _: validate.external_network(
        entry["name"], entry["cidr"], entry["gateway_ip"],
        entry["gateway_mac"]), None)


def _parse_middlebox(label, entry):
    """(MiddleboxInfo, its rules, its NAT rules, its VIPs)."""
    _check_keys(label, entry, MIDDLEBOX_KEYS, ("name", "switch"))
    options = _options_mapping(label, entry.get("options"),
                               "same-host: both")
    mb = MiddleboxInfo(
        name=_value(label, lambda v: validate.name(v, "middlebox name"),
                    entry["name"]),
        type=_value(label, validate.middlebox_type,
                    entry.get("type", "firewall")),
        switch=_value(label, lambda v: validate.name(v, "switch"),
                      entry["switch"]),
        default_action=_value(label, lambda v: validate.action(
            v, "default action"), entry.get("default_action", "deny")),
        options=_value(label, validate.middlebox_options, options))
    if not isinstance(entry.get("rules") or [], list):
        raise MbxError(f"{label}: rules must be a list, e.g. rules: "
                       "[{priority: 100, direction: to-vm, match: any, "
                       "action: allow}]")
    rules = []
    for rule_label, item in _items(entry, "rules", "rules"):
        rule_label = f"{label}: {rule_label}"
        rule = _parse_rule(rule_label, item)
        validate.check_rule_unique(mb, rule, rules, rule_label)
        rules.append(rule)
    for key, example in (("nat_rules", "[{type: snat, external_ips: "
                                       "[203.0.113.5]}]"),
                         ("vips", '[{vip: "10.0.0.100:80"}]')):
        if not isinstance(entry.get(key) or [], list):
            raise MbxError(f"{label}: {key} must be a list, e.g. {key}: "
                           f"{example}")
    nat_rules = tuple(_parse_nat(f"{label}: {item_label}", mb.name, item)
                      for item_label, item in _items(entry, "nat_rules",
                                                     "NAT rules"))
    vips = tuple(_parse_vip(f"{label}: {item_label}", mb.name, item)
                 for item_label, item in _items(entry, "vips", "VIPs"))
    return mb, tuple(rules), nat_rules, vips


def _parse_policy(label, entry):
    _check_keys(label, entry, STEERING_KEYS, ("switch", "priority", "match"))
    match = _string(label, "match", entry["match"], "any")
    if ("chain" in entry) == ("middlebox" in entry):
        raise MbxError(f"{label}: " + (
            "give chain or middlebox, not both" if "chain" in entry else
            "missing key 'chain', e.g. chain: [fw-a] (or chain: [] to "
            "bypass)"))
    if "chain" in entry:
        chain = entry["chain"]
        if not isinstance(chain, list) and chain != "bypass":
            raise MbxError(f"{label}: chain must be a list of middlebox "
                           "names, e.g. chain: [fw-a, lb-a]")
    else:
        chain = entry["middlebox"]
        if not isinstance(chain, str):
            raise MbxError(f"{label}: middlebox must be a name, e.g. "
                           "middlebox: fw-a")
        chain = chain if chain == "bypass" else [chain]
    return PolicyInfo(
        switch=_value(label, lambda v: validate.name(v, "switch"),
                      entry["switch"]),
        priority=_value(label, validate.steer_priority, _integer(
            label, "priority", entry["priority"], 100)),
        match=_value(label, lambda v: validate.match(v).text, match),
        chain=_value(label, validate.chain, chain))


def _unique(label, kind, name, seen):
    if name in seen:
        raise MbxError(f"{label}: {kind} '{name}' is listed twice")
    seen.add(name)


def parse_topology(text, allow_placement=False) -> TopologySpec:
    """Parse and check a topology file's text; pure, raises MbxError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MbxError(_yaml_error(e)) from None
    if doc is None:
        return TopologySpec()
    top_keys = TOP_KEYS + (LAB_TOP_KEYS if allow_placement else ())
    if not isinstance(doc, dict):
        raise MbxError("topology: expected a mapping with keys "
                       + ", ".join(top_keys))
    _check_keys("topology", doc, top_keys, ())

    hosts = []
    for label, host in _items(doc, "hosts", "host names"):
        host = _value(label, lambda v: validate.name(v, "host name"), host)
        _unique(label, "host", host, set(hosts))
        hosts.append(host)

    switches, names = [], set()
    for label, entry in _entries(doc, "switches", "switches"):
        sw = _parse_switch(label, entry)
        _unique(label, "switch", sw.name, names)
        validate.check_switch(sw, switches, label)
        switches.append(sw)

    vm_keys = VM_KEYS + (LAB_VM_KEYS if allow_placement else ())
    by_switch = {sw.name: sw for sw in switches}
    vms, names, placement = [], set(), {}
    for label, entry in _entries(doc, "vms", "VMs"):
        vm = _parse_vm(label, entry, vm_keys)
        _unique(label, "VM", vm.name, names)
        if vm.switch in by_switch:
            validate.check_vm(vm, by_switch, vms, label)
        if "host" in entry:
            if entry["host"] not in hosts:
                raise MbxError(f"{label}: host {entry['host']!r} is not in "
                               "the hosts list")
            placement[vm.name] = entry["host"]
        vms.append(vm)

    address_sets, names = [], set()
    for label, entry in _entries(doc, "address_sets", "address sets"):
        aset = _parse_address_set(label, entry)
        _unique(label, "address set", aset.name, names)
        address_sets.append(aset)

    externals, names = [], set()
    for label, entry in _entries(doc, "external_networks",
                                 "external networks"):
        ext = _parse_external(label, entry)
        _unique(label, "external network", ext.name, names)
        externals.append(ext)

    middleboxes, rules, nat_rules, vips, names = [], {}, {}, {}, set()
    for label, entry in _entries(doc, "middleboxes", "middleboxes"):
        mb, mb_rules, mb_nat_rules, mb_vips = _parse_middlebox(label, entry)
        _unique(label, "middlebox", mb.name, names)
        middleboxes.append(mb)
        rules[mb.name] = mb_rules
        nat_rules[mb.name] = mb_nat_rules
        vips[mb.name] = mb_vips

    policies = []
    for label, entry in _steering_entries(doc):
        policy = _parse_policy(label, entry)
        validate.check_policy_unique(policy, policies, label)
        policies.append(policy)

    spec = TopologySpec(tuple(switches), tuple(vms), tuple(hosts), placement,
                        tuple(address_sets), tuple(middleboxes), rules,
                        tuple(policies), tuple(externals), nat_rules, vips)
    by_mb = {mb.name: mb for mb in middleboxes}
    _check_firewall(spec, by_switch, {s.name: s for s in address_sets},
                    by_mb, rules, spec.policies, partial=True)
    _check_services(spec, by_switch, vms, by_mb, nat_rules, vips,
                    {e.name: e for e in externals}, partial=True)
    return spec


def _steering_entries(doc):
    """(label, mapping) of each steering entry, labelled "steering[i]
    (SWITCH priority P)"."""
    out = []
    for label, entry in _items(doc, "steering", "steering policies"):
        if not isinstance(entry, dict):
            raise MbxError(f"{label}: expected a mapping like {{switch: ..., "
                           "priority: ..., match: ..., chain: [...]}")
        if isinstance(entry.get("switch"), str) and "priority" in entry:
            label += f" ({entry['switch']} priority {entry['priority']})"
        out.append((label, entry))
    return out


def _check_firewall(spec, switches, address_sets, middleboxes, rules,
                    policies, partial=False):
    """validate.check_firewall, naming the file's entries by their labels."""
    validate.check_firewall(
        switches, address_sets, middleboxes, rules, policies,
        mb_labels={mb.name: f"middleboxes[{i}] ({mb.name})"
                   for i, mb in enumerate(spec.middleboxes)},
        policy_labels={(p.switch, p.priority):
                       f"steering[{i}] ({p.switch} priority {p.priority})"
                       for i, p in enumerate(spec.policies)},
        partial=partial)


def _check_services(spec, switches, vms, middleboxes, nat_rules, vips,
                    externals, partial=False):
    """validate.check_services, naming the file's entries by their
    labels."""
    validate.check_services(
        switches, vms, middleboxes, nat_rules, vips, externals,
        mb_labels={mb.name: f"middleboxes[{i}] ({mb.name})"
                   for i, mb in enumerate(spec.middleboxes)},
        ext_labels={e.name: f"external_networks[{i}] ({e.name})"
                    for i, e in enumerate(spec.external_networks)},
        partial=partial)


def check_against(spec, snapshot):
    """Check ``spec`` merged over the database ``snapshot``: every switch a
    VM names exists in one or the other, no VNI is used twice, every VM
    on a switch the file mentions fits that switch, and every middlebox,
    rule and steering policy (the file's and the database's) refers to
    switches, address sets and middleboxes that exist and fit."""
    switches = {**snapshot.switches, **{sw.name: sw for sw in spec.switches}}
    vms = {**snapshot.vms, **{vm.name: vm for vm in spec.vms}}
    middleboxes = {**snapshot.middleboxes,
                   **{mb.name: mb for mb in spec.middleboxes}}
    vips = {**snapshot.vips, **spec.vips}
    for i, sw in enumerate(spec.switches):
        validate.check_switch(sw, switches.values(),
                              f"switches[{i}] ({sw.name})")
    vm_labels = {vm.name: f"vms[{i}] ({vm.name})"
                 for i, vm in enumerate(spec.vms)}
    file_switches = {sw.name for sw in spec.switches}
    reserved = validate.reserved_addresses(middleboxes, vips)
    for vm in vms.values():
        if vm.name in vm_labels or vm.switch in file_switches:
            validate.check_vm(vm, switches, vms.values(),
                              vm_labels.get(vm.name), reserved)
    steered = set(spec.steered_switches)
    _check_firewall(
        spec, switches,
        {**snapshot.address_sets, **{s.name: s for s in spec.address_sets}},
        middleboxes, {**snapshot.rules, **spec.rules},
        [p for p in snapshot.policies if p.switch not in steered]
        + list(spec.policies))
    _check_services(
        spec, switches, vms.values(), middleboxes,
        {**snapshot.nat_rules, **spec.nat_rules}, vips,
        {**snapshot.external_networks,
         **{e.name: e for e in spec.external_networks}})


def _same(first, second):
    """Two collections of dataclass values hold the same values."""
    first, second = list(first), list(second)
    for value in first:
        if value not in second:
            return False
        second.remove(value)
    return not second


def _bare(values):
    """Rules, NAT rules or VIPs without identity and status, for comparing."""
    return [bare(v) for v in values]


def apply_topology(api, spec):
    """Make the database hold ``spec``'s switches, VMs, address sets,
    external networks, middleboxes (with their rules, NAT rules and VIPs)
    and steering policies, in one
    transaction: checked first against a snapshot, then again inside the
    transaction (``api.check``, ``api.check_firewall``) in case another
    client raced us."""
    snapshot = api.snapshot()
    check_against(spec, snapshot)
    with api.transaction(check_error=True) as txn:
        for sw in spec.switches:
            if snapshot.switches.get(sw.name) != sw:
                txn.add(api.upsert_switch(sw))
        for vm in spec.vms:
            if snapshot.vms.get(vm.name) != vm:
                txn.add(api.upsert_vm(vm))
        for aset in spec.address_sets:
            if snapshot.address_sets.get(aset.name) != aset:
                txn.add(api.upsert_address_set(aset))
        for ext in spec.external_networks:
            if snapshot.external_networks.get(ext.name) != ext:
                txn.add(api.upsert_external_network(ext))
        for mb in spec.middleboxes:
            rules = spec.rules.get(mb.name, ())
            nat_rules = spec.nat_rules.get(mb.name, ())
            vips = spec.vips.get(mb.name, ())
            if (snapshot.middleboxes.get(mb.name) != mb
                    or not _same(_bare(snapshot.rules.get(mb.name, ())),
                                 _bare(rules))
                    or not _same(_bare(snapshot.nat_rules.get(mb.name, ())),
                                 _bare(nat_rules))
                    or not _same(_bare(snapshot.vips.get(mb.name, ())),
                                 _bare(vips))):
                txn.add(api.upsert_middlebox(mb, rules, nat_rules, vips))
        for switch in spec.steered_switches:
            policies = [p for p in spec.policies if p.switch == switch]
            if not _same([p for p in snapshot.policies
                          if p.switch == switch], policies):
                txn.add(api.replace_policies(switch, policies))
        txn.add(api.check([sw.name for sw in spec.switches],
                          [vm.name for vm in spec.vms]))
        txn.add(api.check_firewall())
