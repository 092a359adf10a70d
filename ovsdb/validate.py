"""Pure validators for config database values.

Every function either returns the value in canonical form or raises
``MbxError`` with one line saying what was wrong and what to do.  No I/O.
"""

import dataclasses
import functools
import hashlib
import ipaddress
import re
from typing import Iterable, Mapping

from ovsdb.errors import MbxError
from ovsdb.match import parse_match, parse_network
from mbxmodel.network import ExternalNetInfo, SwitchInfo, VMInfo
from mbxmodel import rows
from mbxmodel.services import (ACTIONS, DEFAULT_PORT_RANGE, DIRECTIONS,
                               L4_PROTOCOLS, LB_ALGORITHMS, MIDDLEBOX_TYPES,
                               NAT_TYPES, TIERS, MiddleboxInfo, NatRuleInfo,
                               VipInfo)
from mbxmodel.state import ACTIVE_MIGRATION, FINAL_MIGRATION

MAX_NAME_LEN = 64
MAX_VNI = 16777215
ENCAP_TYPES = ("vxlan", "geneve")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def name(value, what="name"):
    """A row name: 1-64 characters from A-Z a-z 0-9 _ . -"""
    if (not isinstance(value, str) or not _NAME_RE.fullmatch(value)
            or len(value) > MAX_NAME_LEN):
        raise MbxError(f"invalid {what} {value!r}: use 1-{MAX_NAME_LEN} "
                       "characters from A-Z a-z 0-9 _ . -")
    return value


def tenant(value):
    return name(value, "tenant")


def vni(value):
    """A VXLAN/Geneve network identifier, 1..16777215 (int or decimal str)."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        number = None
    if number is None or not 1 <= number <= MAX_VNI:
        raise MbxError(f"invalid VNI {value!r}: use an integer from 1 to "
                       f"{MAX_VNI}")
    return number


def cidr(value, what="subnet", max_prefix=30):
    """An IPv4 network in strict CIDR form ("10.0.0.0/24"), at most
    /``max_prefix``."""
    if not isinstance(value, str) or "/" not in value:
        raise MbxError(f"invalid {what} {value!r}: use an IPv4 network in "
                       "CIDR form, e.g. 10.0.0.0/24")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise MbxError(f"invalid {what} {value!r}: use an IPv4 network in "
                       "CIDR form, e.g. 10.0.0.0/24") from None
    if str(net) != value:
        if ipaddress.IPv4Interface(value).ip != net.network_address:
            raise MbxError(f"invalid {what} {value!r}: host bits are set; "
                           f"did you mean {net}?")
        raise MbxError(f"invalid {what} {value!r}: write it as {net}")
    if net.prefixlen > max_prefix:
        raise MbxError(f"invalid {what} {value!r}: a /{net.prefixlen} has no "
                       "room for addresses; use a prefix length of "
                       f"{max_prefix} or less")
    return value


def subnet(value):
    """A logical switch's subnet: strict CIDR form, at most /30."""
    try:
        return cidr(value)
    except MbxError as e:
        raise MbxError(str(e).replace("room for addresses", "room for VMs")
                       ) from None


def ipv4(value, what="IP address"):
    """A dotted-quad IPv4 address, returned in canonical form."""
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise MbxError(f"invalid {what} {value!r}: use a dotted IPv4 "
                       "address, e.g. 10.0.0.5") from None


def ip_in_subnet(value, cidr, switch=None):
    """An IPv4 address usable by a VM in ``cidr``."""
    addr = ipaddress.IPv4Address(ipv4(value))
    net = ipaddress.IPv4Network(cidr)
    where = f"subnet {cidr}" + (f" of logical switch '{switch}'"
                                if switch else "")
    if addr not in net:
        raise MbxError(f"IP {addr} is outside {where}; use an address "
                       "inside it")
    if addr in (net.network_address, net.broadcast_address):
        kind = "network" if addr == net.network_address else "broadcast"
        raise MbxError(f"IP {addr} is the {kind} address of {where}; use a "
                       "host address")
    return str(addr)


def host_address(value, cidr_text, what, where):
    """``value`` (a canonical address) is a host address of ``cidr_text``:
    inside it, not its network or broadcast address.  ``what`` names the
    address ("gateway 10.0.0.1"), ``where`` the network ("subnet
    10.0.0.0/24 of logical switch 'ls-a'")."""
    addr = ipaddress.IPv4Address(value)
    net = ipaddress.IPv4Network(cidr_text)
    if addr not in net:
        raise MbxError(f"{what} is outside {where}; use an address inside "
                       "it")
    if addr in (net.network_address, net.broadcast_address):
        kind = "network" if addr == net.network_address else "broadcast"
        raise MbxError(f"{what} is the {kind} address of {where}; use a "
                       "host address")
    return value


def default_gateway(cidr_text):
    """The default gateway of a subnet: its first host address."""
    return str(ipaddress.IPv4Network(cidr_text).network_address + 1)


def gateway(value, cidr_text, switch=None):
    """A logical switch's gateway: a host address of its subnet."""
    addr = ipv4(value, "gateway")
    where = f"subnet {cidr_text}" + (f" of logical switch '{switch}'"
                                     if switch else "")
    return host_address(addr, cidr_text, f"gateway {addr}", where)


def mac(value):
    """A unicast Ethernet address, returned lower-case."""
    text = value.lower() if isinstance(value, str) else ""
    if not _MAC_RE.fullmatch(text):
        raise MbxError(f"invalid MAC {value!r}: use six colon-separated hex "
                       "bytes, e.g. 02:00:00:00:00:01")
    if int(text[:2], 16) & 1:
        raise MbxError(f"invalid MAC {value!r}: it is a multicast address; "
                       "use a unicast one (first byte even)")
    if text == "00:00:00:00:00:00":
        raise MbxError(f"invalid MAC {value!r}: use a non-zero address")
    return text


def mac_from_name(vm_name):
    """The deterministic locally-administered MAC of a VM without one."""
    digest = hashlib.sha256(vm_name.encode()).digest()
    return ":".join(["02"] + [f"{b:02x}" for b in digest[:5]])


def encap_type(value):
    if value not in ENCAP_TYPES:
        raise MbxError(f"invalid encap type {value!r}: use one of "
                       + ", ".join(ENCAP_TYPES))
    return value


def check_switch(sw: SwitchInfo, switches: Iterable[SwitchInfo],
                 label=None):
    """``sw`` does not share its VNI with another switch in ``switches``.
    ``label`` (e.g. "switches[1] (ls-b)") prefixes the message."""
    for other in switches:
        if other.name != sw.name and other.vni == sw.vni:
            raise MbxError((f"{label}: " if label else "")
                           + f"VNI {sw.vni} is already used by logical "
                           f"switch '{other.name}'; choose another VNI")


def check_vm(vm: VMInfo, switches: Mapping[str, SwitchInfo],
             vms: Iterable[VMInfo], label=None, reserved=()):
    """``vm`` fits its switch: it exists, the IP is inside its subnet and is
    not the switch's gateway nor an address in ``reserved`` (iterable of
    (switch name, IP, what holds it), see ``reserved_addresses``), and no
    other VM on the same switch has the same IP or MAC.  VMs on different
    switches may share addresses (tenants may overlap).  ``label`` (default
    "VM 'NAME'") prefixes the message."""
    label = label or f"VM '{vm.name}'"
    sw = switches.get(vm.switch)
    if sw is None:
        raise MbxError(f"{label}: unknown logical switch '{vm.switch}'; "
                       "create it first")
    try:
        ip_in_subnet(vm.ip, sw.subnet, sw.name)
    except MbxError as e:
        raise MbxError(f"{label}: {e}") from None
    if vm.ip == switch_gateway(sw):
        raise MbxError(f"{label}: IP {vm.ip} is the gateway of logical switch "
                       f"'{sw.name}'; use another address")
    for switch_name, ip, holder in reserved:
        if switch_name == vm.switch and ip == vm.ip:
            raise MbxError(f"{label}: IP {vm.ip} is {holder} on logical "
                           f"switch '{sw.name}'; use another address")
    for other in vms:
        if other.name == vm.name or other.switch != vm.switch:
            continue
        if other.ip == vm.ip:
            clash = f"IP {vm.ip}"
        elif other.mac == vm.mac:
            clash = f"MAC {vm.mac}"
        else:
            continue
        raise MbxError(f"{label}: {clash} is already used by VM "
                       f"'{other.name}' on logical switch '{vm.switch}'")


def switch_gateway(sw):
    """``sw``'s gateway address: its ``gateway``, else the subnet's first."""
    return sw.gateway or default_gateway(sw.subnet)


def reserved_addresses(middleboxes, vips):
    """[(switch name, VIP address, "a VIP of load balancer 'NAME'")] for
    the VIPs (middlebox name -> VipInfos) of ``middleboxes``."""
    out = []
    for mb_name, mb_vips in sorted(vips.items()):
        mb = middleboxes.get(mb_name)
        if mb is None:
            continue
        for v in mb_vips:
            out.append((mb.switch, v.vip,
                        f"a VIP of load balancer '{mb_name}'"))
    return out


# --- middleboxes, firewall rules, address sets, steering policies ------------

MAX_RULE_PRIORITY = 32767
MAX_STEER_PRIORITY = 30000
MAX_SLICE_TAG = 2047
MAX_TIMEOUT = 65535
MAX_THRESHOLD = 1000000
MAX_CHAIN = 64                  # Steering_Policy.chain positions 0..63
# Conntrack timeout policy of the zones (middlebox.zonepolicy).
TIMEOUT_OPTIONS = ("timeout-tcp-syn", "timeout-tcp-established",
                   "timeout-tcp-closing", "timeout-udp", "timeout-udp-replied",
                   "timeout-icmp")
IDS_OPTIONS = ("scan-threshold", "scan-window", "synflood-threshold",
               "synflood-window")
# Middlebox options: key -> accepted values (a tuple of words, or a
# function (key, value) -> canonical string; None: seconds, 1..MAX_TIMEOUT).
MIDDLEBOX_OPTIONS = {
    "check": ("offload", "every-packet", "every-nth", "relay"),
    "same-host": ("both", "source", "destination"),
    "tier-order": ("provider-first", "tenant-first"),
    **{key: None for key in TIMEOUT_OPTIONS},
    "check-interval": lambda key, value: _range(key, value, 2, 255),
    "migration-gather": ("datapath", "datapath+review", "service"),
    "migration-import": ("bulk", "lazy"),
    "ports-per-host": lambda key, value: _power_of_two(key, value, 256,
                                                      32768),
    "scan-threshold": lambda key, value: _count(key, value, MAX_THRESHOLD),
    "scan-window": None,
    "synflood-threshold": lambda key, value: _count(key, value,
                                                    MAX_THRESHOLD),
    "synflood-window": None,
}
# The middlebox types an option applies to (not listed: every type).
OPTION_TYPES = {
    "tier-order": ("firewall",),
    "ports-per-host": ("nat",),
    **{key: ("ids",) for key in IDS_OPTIONS},
}
DEFAULT_PORTS_PER_HOST = 4096


def _one_of(allowed):
    """'a, b or c'"""
    if len(allowed) == 1:
        return allowed[0]
    return ", ".join(allowed[:-1]) + " or " + allowed[-1]


def _choice(value, allowed, what):
    if not isinstance(value, str) or value not in allowed:
        raise MbxError(f"invalid {what} {value!r}: use " + _one_of(allowed))
    return value


def middlebox_type(value):
    return _choice(value, MIDDLEBOX_TYPES, "middlebox type")


def action(value, what="action"):
    """allow, deny or reject (a rule's action or a default action)."""
    return _choice(value, ACTIONS, what)


def direction(value):
    return _choice(value, DIRECTIONS, "direction")


def tier(value):
    return _choice(value, TIERS, "tier")


def _integer(value):
    """An int from an int or a decimal string, else None (bools are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _bounded(value, minimum, maximum, what):
    """An integer minimum..maximum (int or decimal str)."""
    number = _integer(value)
    if number is None or not minimum <= number <= maximum:
        raise MbxError(f"invalid {what} {value!r}: use an integer from {minimum} "
                       f"to {maximum}")
    return number


def priority(value, maximum=MAX_RULE_PRIORITY, what="priority"):
    """A priority 0..maximum (int or decimal str)."""
    return _bounded(value, 0, maximum, what)


def rule_priority(value):
    return priority(value, MAX_RULE_PRIORITY, "rule priority")


def steer_priority(value):
    return priority(value, MAX_STEER_PRIORITY, "steering priority")


def slice_tag(value):
    return _bounded(value, 1, MAX_SLICE_TAG, "slice tag")


def middlebox_option_key(key):
    if key not in MIDDLEBOX_OPTIONS:
        raise MbxError(f"unknown middlebox option {key!r}; known options: "
                       + ", ".join(MIDDLEBOX_OPTIONS))
    return key


def _count(key, value, maximum):
    number = _integer(value)
    if number is None or not 1 <= number <= maximum:
        raise MbxError(f"invalid value {value!r} for option {key}: use an "
                       f"integer from 1 to {maximum}")
    return str(number)


def _range(key, value, minimum, maximum):
    number = _integer(value)
    if number is None or not minimum <= number <= maximum:
        raise MbxError(f"invalid value {value!r} for option {key}: use an "
                       f"integer from {minimum} to {maximum}")
    return str(number)


def _power_of_two(key, value, minimum, maximum):
    number = _integer(value)
    if (number is None or not minimum <= number <= maximum
            or number & (number - 1)):
        raise MbxError(f"invalid value {value!r} for option {key}: use a "
                       f"power of two from {minimum} to {maximum}")
    return str(number)


def middlebox_option(key, value):
    """One middlebox option; returns its value in canonical (string) form."""
    middlebox_option_key(key)
    allowed = MIDDLEBOX_OPTIONS[key]
    if callable(allowed):
        return allowed(key, value)
    if allowed is not None:
        if not isinstance(value, str) or value not in allowed:
            raise MbxError(f"invalid value {value!r} for option {key}: use "
                           + _one_of(allowed))
        return value
    seconds = _integer(value)
    if seconds is None or not 1 <= seconds <= MAX_TIMEOUT:
        raise MbxError(f"invalid value {value!r} for option {key}: use a "
                       f"number of seconds from 1 to {MAX_TIMEOUT}")
    return str(seconds)


def middlebox_options(options):
    """A mapping of middlebox options, returned as a plain dict of strings."""
    if not isinstance(options, Mapping):
        raise MbxError(f"invalid middlebox options {options!r}: use a "
                       "mapping of KEY: VALUE")
    checked = {key: middlebox_option(key, value)
               for key, value in options.items()}
    return dict(sorted(checked.items()))


def options_of_type(mb_type):
    """The option keys that apply to a middlebox of ``mb_type``."""
    return [key for key in MIDDLEBOX_OPTIONS
            if mb_type in OPTION_TYPES.get(key, MIDDLEBOX_TYPES)]


def check_option_types(mb_name, mb_type, keys, label=None):
    """Every option key of ``keys`` applies to a ``mb_type`` middlebox."""
    for key in keys:
        if key in MIDDLEBOX_OPTIONS and key not in options_of_type(mb_type):
            raise MbxError(_prefix(label) + f"option {key} does not apply to "
                           f"{mb_type} middlebox '{mb_name}'; its options "
                           "are " + ", ".join(options_of_type(mb_type)))


def match(text):
    """A firewall or steering match (``ovsdb.match``); the parsed Match."""
    return parse_match(text)


def address(value):
    """One address set member, in canonical form: "10.0.0.1" for a /32,
    "10.0.0.0/24" otherwise."""
    if not isinstance(value, str):
        raise MbxError(f"bad address {value!r}: expected an IPv4 address or "
                       "CIDR, e.g. 10.0.0.0/24")
    network = parse_network(value)
    if network.prefixlen == 32:
        return str(network.network_address)
    return str(network)


def addresses(values):
    """Address set members: canonical, without duplicates, sorted by
    address then prefix length."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise MbxError(f"bad addresses {values!r}: expected a list of IPv4 "
                       "addresses or CIDRs")
    canonical = {address(v) for v in values}
    return tuple(sorted(canonical, key=lambda a: (
        int(ipaddress.IPv4Network(a).network_address),
        ipaddress.IPv4Network(a).prefixlen)))


def _prefix(label):
    return f"{label}: " if label else ""


def check_address_sets(parsed, tenant_name, address_sets, owner, label=None,
                       partial=False):
    """Every address set ``parsed`` (a Match) names exists in
    ``address_sets`` (name -> AddressSetInfo) and belongs to ``tenant_name``;
    ``owner`` (e.g. "logical switch 'ls-a'") says whose tenant that is.
    With ``partial``, sets missing from ``address_sets`` are not checked."""
    for set_name in sorted(parsed.address_sets):
        found = address_sets.get(set_name)
        if found is None:
            if partial:
                continue
            raise MbxError(_prefix(label) + f'unknown address set '
                           f'"{set_name}"; create it first (as-add)')
        if found.tenant != tenant_name:
            raise MbxError(_prefix(label) + f'address set "{set_name}" '
                           f"belongs to tenant '{found.tenant}', not to "
                           f"tenant '{tenant_name}' of {owner}")


def describe_rule(rule):
    """E.g. 'tenant to-vm rule at priority 100 (proto=tcp -> allow)'."""
    return (f"{rule.tier} {rule.direction} rule at priority {rule.priority} "
            f"({rule.match} -> {rule.action})")


def chain_text(chain):
    """'fw-a,lb-a' for a chain, 'bypass' for the empty one."""
    return ",".join(chain) or "bypass"


def describe_policy(policy):
    """E.g. 'steering policy at priority 100 (any -> fw-a,lb-a)'."""
    return (f"steering policy at priority {policy.priority} ({policy.match} "
            f"-> {chain_text(policy.chain)})")


def check_middlebox(mb, switches: Mapping[str, SwitchInfo], label=None):
    """``mb`` (a MiddleboxInfo) serves a logical switch that exists and its
    options apply to its type.  ``label`` (default "middlebox 'NAME'")
    prefixes the message."""
    check_option_types(mb.name, mb.type, mb.options, label)
    if mb.switch not in switches:
        raise MbxError(f"{label or f'middlebox {mb.name!r}'}: unknown "
                       f"logical switch '{mb.switch}'; create it first")


def check_rule(mb, rule, switches: Mapping[str, SwitchInfo], address_sets,
               label=None, partial=False):
    """The address sets the match of ``rule`` (of middlebox ``mb``) names
    exist and belong to the tenant of ``mb``'s switch, and ``mb`` is a
    firewall."""
    if mb.type != "firewall":
        raise MbxError(_prefix(label) + f"middlebox '{mb.name}' is a "
                       f"{mb.type} middlebox; firewall rules need a firewall "
                       "middlebox")
    sw = switches.get(mb.switch)
    if sw is None:
        if partial:
            return
        check_middlebox(mb, switches)
    check_address_sets(parse_match(rule.match), sw.tenant, address_sets,
                       f"middlebox '{mb.name}'", label, partial)


def check_rule_unique(mb, rule, rules, label=None):
    """No rule of ``rules`` (the other rules of ``mb``) has the tier,
    direction and priority of ``rule``."""
    for other in rules:
        if other is not rule and (other.tier, other.direction,
                                  other.priority) == (
                rule.tier, rule.direction, rule.priority):
            raise MbxError(_prefix(label) + f"middlebox '{mb.name}' already "
                           f"has a {describe_rule(other)}; choose another "
                           "priority")


def chain(value):
    """A steering chain: "bypass", "fw-a,lb-a" or a sequence of middlebox
    names; returns the tuple of names in order (empty: bypass)."""
    if value == "bypass" or value == [] or value == ():
        return ()
    if value == "":
        raise MbxError("invalid chain '': use middlebox names in order, e.g. "
                       "fw-a,lb-a, or bypass")
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        names = None
    if not names:
        raise MbxError(f"invalid chain {value!r}: use middlebox names in "
                       "order, e.g. fw-a,lb-a, or bypass")
    out = []
    for item in names:
        if item == "bypass":
            raise MbxError(f"invalid chain {value!r}: bypass stands alone; "
                           "it means no middlebox")
        item = name(item, "middlebox name")
        if item in out:
            raise MbxError(f"invalid chain {value!r}: middlebox '{item}' "
                           "appears twice; a chain passes each middlebox "
                           "once")
        out.append(item)
    if len(out) > MAX_CHAIN:
        raise MbxError(f"invalid chain: {len(out)} middleboxes; a chain "
                       f"holds at most {MAX_CHAIN}")
    return tuple(out)


def check_policy(policy, switches: Mapping[str, SwitchInfo], middleboxes,
                 address_sets, label=None, partial=False):
    """``policy`` (a PolicyInfo) fits: its switch exists, the address sets
    its match names belong to the switch's tenant, and every middlebox of
    its chain exists and serves the switch; a chain holds at most one nat
    and one lb middlebox.  With ``partial``, switches, sets and
    middleboxes missing from the mappings are not checked."""
    sw = switches.get(policy.switch)
    if sw is None and not partial:
        raise MbxError(_prefix(label) + f"unknown logical switch "
                       f"'{policy.switch}'; create it first (ls-add)")
    if sw is not None:
        check_address_sets(parse_match(policy.match), sw.tenant,
                           address_sets, f"logical switch '{sw.name}'",
                           label, partial)
    by_type = {}
    for mb_name in policy.chain:
        mb = middleboxes.get(mb_name)
        if mb is None:
            if partial:
                continue
            raise MbxError(_prefix(label) + f"unknown middlebox "
                           f"'{mb_name}'; create it first (mb-add) or use "
                           "bypass")
        if mb.switch != policy.switch:
            raise MbxError(_prefix(label) + f"middlebox '{mb.name}' serves "
                           f"logical switch '{mb.switch}', not "
                           f"'{policy.switch}'; a steering policy can only "
                           "use middleboxes of its own switch")
        by_type.setdefault(mb.type, []).append(mb.name)
    for mb_type in ("nat", "lb"):
        if len(by_type.get(mb_type, ())) > 1:
            raise MbxError(_prefix(label) + f"chain "
                           f"{chain_text(policy.chain)} has {mb_type} "
                           f"middleboxes {', '.join(by_type[mb_type])}; a "
                           f"chain holds at most one {mb_type} middlebox")


def check_policy_unique(policy, policies, label=None):
    """No other policy of ``policies`` on the switch of ``policy`` has its
    priority."""
    for other in policies:
        if (other is not policy and other.switch == policy.switch
                and other.priority == policy.priority):
            raise MbxError(_prefix(label) + f"logical switch "
                           f"'{policy.switch}' already has a "
                           f"{describe_policy(other)}; choose another "
                           "priority")


def check_firewall(switches, address_sets, middleboxes, rules, policies,
                   mb_labels=None, policy_labels=None, partial=False):
    """The references of every middlebox, rule and policy hold (see
    check_middlebox, check_rule and check_policy); uniqueness of priorities
    is not checked here.

    ``rules`` maps middlebox name -> its rules.  ``mb_labels`` maps a
    middlebox name to the label of its entry (its rules become "LABEL:
    rules[i]"), ``policy_labels`` maps (switch, priority) to a policy's
    label; other items are named by what they are.  ``partial`` (checking
    a file alone): references to things the mappings lack are not errors."""
    mb_labels = mb_labels or {}
    policy_labels = policy_labels or {}
    for name, mb in sorted(middleboxes.items()):
        label = mb_labels.get(name)
        check_option_types(mb.name, mb.type, mb.options, label)
        if mb.switch not in switches:
            if partial:
                continue
            check_middlebox(mb, switches, label)
        if mb.type != "firewall" and rules.get(name):
            raise MbxError(_prefix(label) + f"{mb.type} middlebox "
                           f"'{name}' has firewall rules; only a firewall "
                           "middlebox has rules")
        for i, rule in enumerate(rules.get(name, ())):
            check_rule(mb, rule, switches, address_sets,
                       f"{label}: rules[{i}]" if label
                       else f"middlebox '{name}' {describe_rule(rule)}",
                       partial)
    for policy in policies:
        check_policy(policy, switches, middleboxes, address_sets,
                     policy_labels.get((policy.switch, policy.priority))
                     or f"logical switch '{policy.switch}' "
                     f"{describe_policy(policy)}", partial)


# --- the external network, NAT, load balancers -------------------------------

MAX_HEALTH_SECONDS = 3600
MAX_HEALTH_COUNT = 100
# LB_VIP options: key -> (kind, default)
VIP_OPTIONS = {
    "health-check": (("tcp", "none"), "tcp"),
    "health-interval": ("seconds", "2"),
    "health-timeout": ("seconds", "1"),
    "health-rise": ("count", "2"),
    "health-fall": ("count", "2"),
}
IDS_ALERT_KINDS = ("port-scan", "syn-flood")


def _address_int(text):
    return int(ipaddress.IPv4Address(text))


def external_network(ext_name, cidr_text, gateway_ip, gateway_mac):
    """An ExternalNetInfo: a name, a CIDR (at most /30), a gateway that is
    a host address of it and the gateway's unicast MAC."""
    ext_name = name(ext_name, "external network name")
    cidr_text = cidr(cidr_text, "external network CIDR")
    addr = ipv4(gateway_ip, "gateway IP")
    host_address(addr, cidr_text, f"gateway IP {addr}",
                 f"external network {cidr_text}")
    return ExternalNetInfo(ext_name, cidr_text, addr, mac(gateway_mac))


def check_external_network(ext, externals, label=None):
    """``ext``'s CIDR overlaps no other network of ``externals``."""
    net = ipaddress.IPv4Network(ext.cidr)
    for other in externals:
        if other.name != ext.name and net.overlaps(
                ipaddress.IPv4Network(other.cidr)):
            raise MbxError(_prefix(label) + f"external network "
                           f"'{ext.name}' ({ext.cidr}) overlaps external "
                           f"network '{other.name}' ({other.cidr}); give "
                           "each its own addresses")


def port(value, what="port"):
    """A TCP/UDP port, 1..65535 (int or decimal str)."""
    return _bounded(value, 1, 65535, what)


def port_range(value):
    """"LO-HI" (or one port) -> (lo, hi), 1 <= lo <= hi <= 65535."""
    text = str(value) if _integer(value) is not None else value
    if isinstance(text, str) and text == text.strip() and text:
        try:
            return rows.port_range(text)
        except ValueError:
            pass
    raise MbxError(f"invalid port range {value!r}: use LO-HI with "
                   "1 <= LO <= HI <= 65535, e.g. 1024-65535")


def ip_port(value, what="address"):
    """"IP:PORT" -> (canonical IP, port)."""
    if isinstance(value, str) and value == value.strip():
        try:
            return rows.ip_port(value)
        except ValueError:
            pass
    raise MbxError(f"invalid {what} {value!r}: use IP:PORT with a port from "
                   "1 to 65535, e.g. 10.0.0.11:80")


def protocol(value, allow_both=False):
    """tcp or udp (with ``allow_both``, "" or None: both, returned "")."""
    if allow_both and value in ("", None):
        return ""
    return _choice(value, L4_PROTOCOLS, "protocol")


def nat_type(value):
    return _choice(value, NAT_TYPES, "NAT type")


def algorithm(value):
    return _choice(value, LB_ALGORITHMS, "algorithm")


def _external_ips(values):
    if isinstance(values, str):
        values = values.split(",")
    if not isinstance(values, (list, tuple)) or not values:
        raise MbxError(f"invalid external IPs {values!r}: use one or more "
                       "IPv4 addresses, e.g. 203.0.113.5,203.0.113.6")
    ips = {ipv4(v, "external IP") for v in values}
    return tuple(sorted(ips, key=_address_int))


def nat_rule(middlebox, rule_type, external_ips, logical_ip="",
             protocol_text="", external_port=None, logical_port=None,
             port_range_text=None):
    """A NatRuleInfo (uuid "") from user input, in canonical form.

    snat: ``external_ips`` (one or more; a list or "A,B"), ``logical_ip``
    the source CIDR ("" = the switch's subnet), ``port_range_text``
    ("LO-HI", default 1024-65535).  dnat: one external IP, ``logical_ip``
    the VM's address, optional ``protocol`` (tcp/udp, "" = both),
    ``external_port`` and ``logical_port`` (needs external_port)."""
    rule_type = nat_type(rule_type)
    ips = _external_ips(external_ips)
    if rule_type == "snat":
        if (protocol_text or external_port is not None
                or logical_port is not None):
            raise MbxError("a snat rule takes no protocol, external port or "
                           "logical port; it translates every TCP and UDP "
                           "port (limit it with a port range)")
        if logical_ip in ("", None):
            logical = ""
        elif isinstance(logical_ip, str):
            logical = address(logical_ip)
        else:
            raise MbxError(f"invalid logical CIDR {logical_ip!r}: use an "
                           "IPv4 CIDR, e.g. 10.0.0.0/24")
        return NatRuleInfo("", middlebox, "snat", ips, logical,
                           port_range=DEFAULT_PORT_RANGE
                           if port_range_text in (None, "")
                           else port_range(port_range_text))
    if len(ips) != 1:
        raise MbxError(f"a dnat rule has one external IP, not "
                       f"{len(ips)} ({','.join(ips)})")
    if port_range_text not in (None, ""):
        raise MbxError("a dnat rule takes no port range; use an external "
                       "port (and a logical port)")
    if logical_ip in ("", None):
        raise MbxError("a dnat rule needs the logical IP of the VM it "
                       "forwards to")
    if logical_port is not None and external_port is None:
        raise MbxError("a dnat rule's logical port needs an external port; "
                       "without one, every port is forwarded unchanged")
    return NatRuleInfo(
        "", middlebox, "dnat", ips, ipv4(logical_ip, "logical IP"),
        protocol(protocol_text, allow_both=True),
        None if external_port is None else port(external_port,
                                                 "external port"),
        None if logical_port is None else port(logical_port,
                                               "logical port"))


def describe_nat(rule):
    """E.g. 'snat rule 203.0.113.5 ports 1024-65535 (from 10.0.0.0/24)',
    'dnat rule 203.0.113.10:8080/tcp -> 10.0.0.11:80'."""
    if rule.type == "snat":
        lo, hi = rule.port_range
        return (f"snat rule {','.join(rule.external_ips)} ports {lo}-{hi} "
                f"(from {rule.logical_ip or 'the switch subnet'})")
    ext = rule.external_ips[0]
    if rule.external_port is not None:
        ext += f":{rule.external_port}"
    if rule.protocol:
        ext += f"/{rule.protocol}"
    logical = rule.logical_ip
    if rule.logical_port is not None:
        logical += f":{rule.logical_port}"
    return f"dnat rule {ext} -> {logical}"


_ALL_PROTOCOLS = frozenset(("tcp", "udp", "other"))


def _nat_claims(rule):
    """[(external IP, protocols, lo, hi)]: the external addresses and
    ports ``rule`` takes.  A dnat rule without an external port takes the
    whole address."""
    if rule.type == "snat":
        lo, hi = rule.port_range
        return [(ip, frozenset(L4_PROTOCOLS), lo, hi)
                for ip in rule.external_ips]
    ip = rule.external_ips[0]
    if rule.external_port is None:
        return [(ip, _ALL_PROTOCOLS, 1, 65535)]
    protocols = frozenset((rule.protocol,) if rule.protocol
                          else L4_PROTOCOLS)
    return [(ip, protocols, rule.external_port, rule.external_port)]


def nat_overlap(rule, other):
    """The external IP both rules take overlapping ports of, or None."""
    for ip, protocols, lo, hi in _nat_claims(rule):
        for ip2, protocols2, lo2, hi2 in _nat_claims(other):
            if ip == ip2 and protocols & protocols2 and lo <= hi2 \
                    and lo2 <= hi:
                return ip
    return None


def check_nat_unique(rule, others, label=None):
    """``rule`` takes no external address and port that a rule of
    ``others`` (every other NAT rule, of any middlebox) takes."""
    for other in others:
        if other is rule:
            continue
        ip = nat_overlap(rule, other)
        if ip is not None:
            raise MbxError(_prefix(label) + f"{describe_nat(rule)} "
                           f"overlaps middlebox '{other.middlebox}' "
                           f"{describe_nat(other)} on external IP {ip}; "
                           "give each rule its own addresses or ports")


def check_nat_rule(rule, mb, switches, externals, label=None, partial=False):
    """``rule`` fits middlebox ``mb`` (a nat middlebox): its external IPs
    are host addresses of an external network of ``externals`` (not its
    gateway), a snat source lies inside the switch's subnet and its port
    range holds at least one block of the middlebox's ports-per-host; a
    dnat logical IP is a host address of the switch's subnet.  With
    ``partial``, external networks and switches that are missing are not
    checked."""
    if mb.type != "nat":
        raise MbxError(_prefix(label) + f"middlebox '{mb.name}' is a "
                       f"{mb.type} middlebox; NAT rules need a nat middlebox "
                       "(mb-add --type nat)")
    for ip in rule.external_ips:
        addr = ipaddress.IPv4Address(ip)
        ext = next((e for e in externals
                    if addr in ipaddress.IPv4Network(e.cidr)), None)
        if ext is None:
            if partial:
                continue
            raise MbxError(_prefix(label) + f"external IP {ip} is not inside "
                           "any external network; add one first (ext-add)")
        if ip == ext.gateway_ip:
            raise MbxError(_prefix(label) + f"external IP {ip} is the gateway "
                           f"of external network '{ext.name}'; use another "
                           "address")
        _labelled(label, host_address, ip, ext.cidr, f"external IP {ip}",
                  f"external network '{ext.name}' ({ext.cidr})")
    sw = switches.get(mb.switch)
    if sw is None:
        if partial:
            return
        check_middlebox(mb, switches, label)
    subnet_net = ipaddress.IPv4Network(sw.subnet)
    where = f"subnet {sw.subnet} of logical switch '{sw.name}'"
    if rule.type == "snat":
        if rule.logical_ip and not ipaddress.IPv4Network(
                rule.logical_ip).subnet_of(subnet_net):
            raise MbxError(_prefix(label) + f"snat source {rule.logical_ip} "
                           f"is not inside {where}; use the subnet or a part "
                           "of it")
        block = int(mb.option("ports-per-host", DEFAULT_PORTS_PER_HOST))
        lo, hi = rule.port_range
        first = -(-lo // block) * block
        if first + block - 1 > hi:
            raise MbxError(_prefix(label) + f"port range {lo}-{hi} holds no "
                           f"aligned block of {block} ports (option "
                           f"ports-per-host of middlebox '{mb.name}'); "
                           "widen the range or lower ports-per-host")
        return
    _labelled(label, host_address, rule.logical_ip, sw.subnet,
              f"dnat logical IP {rule.logical_ip}", where)
    if rule.logical_ip == switch_gateway(sw):
        raise MbxError(_prefix(label) + f"dnat logical IP {rule.logical_ip} "
                       f"is the gateway of logical switch '{sw.name}'; use "
                       "a VM's address")


def _labelled(label, func, *args):
    try:
        return func(*args)
    except MbxError as e:
        raise MbxError(_prefix(label) + str(e)) from None


def vip_option_key(key):
    if key not in VIP_OPTIONS:
        raise MbxError(f"unknown VIP option {key!r}; known options: "
                       + ", ".join(VIP_OPTIONS))
    return key


def vip_option(key, value):
    """One LB_VIP option; returns its value in canonical (string) form."""
    kind = VIP_OPTIONS[vip_option_key(key)][0]
    if kind == "count":
        number = _integer(value)
        if number is None or not 1 <= number <= MAX_HEALTH_COUNT:
            raise MbxError(f"invalid value {value!r} for option {key}: use "
                           f"an integer from 1 to {MAX_HEALTH_COUNT}")
        return str(number)
    if kind == "seconds":
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if (number is None or not 0 < number <= MAX_HEALTH_SECONDS
                or (isinstance(value, str)
                    and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value))):
            raise MbxError(f"invalid value {value!r} for option {key}: use a "
                           "number of seconds above 0, at most "
                           f"{MAX_HEALTH_SECONDS}, e.g. 2 or 0.5")
        return f"{number:g}"
    if not isinstance(value, str) or value not in kind:
        raise MbxError(f"invalid value {value!r} for option {key}: use "
                       + _one_of(kind))
    return value


def vip_options(options):
    """A mapping of LB_VIP options, returned as a plain sorted dict of
    strings."""
    if not isinstance(options, Mapping):
        raise MbxError(f"invalid VIP options {options!r}: use a mapping of "
                       "KEY: VALUE")
    checked = {key: vip_option(key, value) for key, value in options.items()}
    return dict(sorted(checked.items()))


def check_vip_options(options, label=None):
    """health-timeout is at most health-interval (defaults included)."""
    def seconds(key):
        return float(options.get(key, VIP_OPTIONS[key][1]))
    if seconds("health-timeout") > seconds("health-interval"):
        raise MbxError(_prefix(label) + "health-timeout "
                       f"{seconds('health-timeout'):g}s is longer than "
                       f"health-interval {seconds('health-interval'):g}s; "
                       "a probe must end before the next one starts")


def backends(values):
    """"IP:PORT" strings -> sorted tuple of (IP, port); no duplicates."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise MbxError(f"invalid backends {values!r}: use a list of "
                       "IP:PORT, e.g. [10.0.0.11:80, 10.0.0.12:80]")
    out = []
    for value in values:
        backend = ip_port(value, "backend")
        if backend in out:
            raise MbxError(f"backend {backend[0]}:{backend[1]} is listed "
                           "twice")
        out.append(backend)
    return tuple(sorted(out, key=lambda b: (_address_int(b[0]), b[1])))


def vip(middlebox, address, protocol_text="tcp",
        algorithm_text="hash", backend_texts=(), options=None):
    """A VipInfo (uuid "", no status) from user input, canonical."""
    ip, vip_port = ip_port(address, "VIP")
    checked = vip_options(options or {})
    check_vip_options(checked)
    return VipInfo("", middlebox, ip, vip_port, protocol(protocol_text),
                   algorithm(algorithm_text),
                   backends(backend_texts), checked)


def vip_text(v):
    """'10.0.0.100:80/tcp'"""
    return f"{v.vip}:{v.port}/{v.protocol}"


def backend_text(backend):
    return f"{backend[0]}:{backend[1]}"


def check_vip(v, mb, switches, vms, label=None, partial=False):
    """VIP ``v`` fits load balancer ``mb``: ``mb`` is an lb middlebox, the
    VIP is neither the gateway nor a VM's address on the switch (nor its
    subnet's network or broadcast address), and every backend lies inside
    a subnet of a logical switch of the switch's tenant and is not the VIP
    itself.  With ``partial``, a missing switch is not checked."""
    if mb.type != "lb":
        raise MbxError(_prefix(label) + f"middlebox '{mb.name}' is a "
                       f"{mb.type} middlebox; VIPs need an lb middlebox "
                       "(mb-add --type lb)")
    sw = switches.get(mb.switch)
    if sw is None:
        if partial:
            return
        check_middlebox(mb, switches, label)
    addr = ipaddress.IPv4Address(v.vip)
    net = ipaddress.IPv4Network(sw.subnet)
    if addr in (net.network_address, net.broadcast_address) or \
            addr.is_multicast or addr.is_unspecified:
        raise MbxError(_prefix(label) + f"VIP {v.vip} is not a unicast host "
                       f"address of logical switch '{sw.name}'; use another "
                       "address")
    if v.vip == switch_gateway(sw):
        raise MbxError(_prefix(label) + f"VIP {v.vip} is the gateway of "
                       f"logical switch '{sw.name}'; use another address")
    for vm in vms:
        if vm.switch == sw.name and vm.ip == v.vip:
            raise MbxError(_prefix(label) + f"VIP {v.vip} is the address of "
                           f"VM '{vm.name}' on logical switch '{sw.name}'; "
                           "use an address no VM has")
    tenant_nets = [ipaddress.IPv4Network(s.subnet)
                   for s in switches.values() if s.tenant == sw.tenant]
    for ip, backend_port in v.backends:
        if (ip, backend_port) == (v.vip, v.port):
            raise MbxError(_prefix(label) + f"backend {ip}:{backend_port} "
                           "is the VIP itself")
        if not any(ipaddress.IPv4Address(ip) in n for n in tenant_nets):
            raise MbxError(_prefix(label) + f"backend {ip}:{backend_port} is "
                           "outside every subnet of tenant "
                           f"'{sw.tenant}'; a backend is a VM of the "
                           "tenant")
    check_vip_options(v.options, label)


def check_vip_unique(v, mb, others, middleboxes, label=None):
    """No VIP of ``others`` (other VIPs, any load balancer) on ``mb``'s
    switch has ``v``'s address, port and protocol."""
    for other in others:
        if other is v:
            continue
        other_mb = middleboxes.get(other.middlebox)
        if other_mb is None or other_mb.switch != mb.switch:
            continue
        if (other.vip, other.port, other.protocol) == (
                v.vip, v.port, v.protocol):
            raise MbxError(_prefix(label) + f"VIP {vip_text(v)} is already "
                           f"defined by load balancer '{other.middlebox}' on "
                           f"logical switch '{mb.switch}'; use another "
                           "address or port")


def check_services(switches, vms, middleboxes, nat_rules, vips, externals,
                   mb_labels=None, ext_labels=None, partial=False):
    """Every external network, NAT rule and VIP fits (check_external_network,
    check_nat_rule, check_nat_unique, check_vip, check_vip_unique).

    ``nat_rules`` and ``vips`` map middlebox name -> its rules / VIPs;
    ``externals`` maps name -> ExternalNetInfo; ``vms`` is an iterable of
    VMInfo.  ``mb_labels`` maps a middlebox name to the label of its entry
    (its rules become "LABEL: nat_rules[i]", its VIPs "LABEL: vips[i]"),
    ``ext_labels`` an external network name to its label; other items are
    named by what they are.  ``partial``: see check_nat_rule and
    check_vip."""
    mb_labels = mb_labels or {}
    ext_labels = ext_labels or {}
    ext_list = [ext for _, ext in sorted(externals.items())]
    for i, ext in enumerate(ext_list):
        check_external_network(ext, ext_list[:i], ext_labels.get(ext.name))
    vms = list(vms)
    seen_rules, seen_vips = [], []
    # the database's entries first, then the file's in file order: a clash
    # is reported on the file's entry
    present = set(nat_rules) | set(vips)
    names = [n for n in sorted(present) if n not in mb_labels] + [
        n for n in mb_labels if n in present]
    for mb_name in names:
        mb = middleboxes.get(mb_name)
        label = mb_labels.get(mb_name)
        if mb is None:
            if partial:
                continue
            raise MbxError(f"unknown middlebox '{mb_name}'")
        for i, rule in enumerate(nat_rules.get(mb_name, ())):
            rule_label = (f"{label}: nat_rules[{i}]" if label else
                          f"middlebox '{mb_name}' {describe_nat(rule)}")
            check_nat_rule(rule, mb, switches, ext_list, rule_label, partial)
            check_nat_unique(rule, seen_rules, rule_label)
            seen_rules.append(rule)
        for i, v in enumerate(vips.get(mb_name, ())):
            vip_label = (f"{label}: vips[{i}]" if label else
                         f"load balancer '{mb_name}' VIP {vip_text(v)}")
            check_vip(v, mb, switches, vms, vip_label, partial)
            check_vip_unique(v, mb, seen_vips, middleboxes, vip_label)
            seen_vips.append(v)


def status_map(value, what="status"):
    """A {str: str} mapping (controller status columns)."""
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in value.items()):
        raise MbxError(f"invalid {what} {value!r}: use a mapping of strings "
                       "to strings")
    return dict(value)


# --- schema 1.3.0: migrations (docs/migration.md) ---------------------------

MIGRATION_PATHS = ("announced", "unannounced")
MIGRATION_STATUSES = ACTIVE_MIGRATION + FINAL_MIGRATION
# Migration.timeline keys in the order the phases happen
MIGRATION_PHASES = ("begun", "streaming", "snapshot", "stunned", "final",
                    "imported", "acked", "done", "aborted", "fallback",
                    "cleaned")
# Migration.stats keys in the order mbxctl shows them
MIGRATION_STATS = ("entries", "bytes", "messages", "changes", "flows",
                   "buffered", "gather_ms", "transfer_ms", "import_ms")
DEFAULT_MIGRATION_WAIT_MS = 3000
MIGRATION_WAIT_MS = (100, 60000)
_ADDRESS_RE = re.compile(r"ssl:([0-9.]+):([0-9]+)")


def migration_path(value):
    return _choice(value, MIGRATION_PATHS, "migration path")


def migration_status(value):
    return _choice(value, MIGRATION_STATUSES, "migration status")


def migration_wait_ms(value, what="migration-wait-ms"):
    """How long (ms) a destination holds packets of an unannounced
    migration: an integer 100..60000 (int or decimal str)."""
    return _bounded(value, *MIGRATION_WAIT_MS, what)


def migration_address(value):
    """Chassis.migration_address: "" (none) or ssl:IP:PORT."""
    if value == "":
        return value
    found = _ADDRESS_RE.fullmatch(value) if isinstance(value, str) else None
    ok = found is not None and 1 <= int(found.group(2)) <= 65535
    if ok:
        try:
            ok = str(ipaddress.IPv4Address(found.group(1))) == found.group(1)
        except ValueError:
            ok = False
    if not ok:
        raise MbxError(f"invalid migration address {value!r}: use "
                       "ssl:IP:PORT, e.g. ssl:10.201.0.12:6650")
    return value


def migration_counters(value, what):
    """A Migration.timeline or .stats map: {str: int >= 0}."""
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, int)
            and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        raise MbxError(f"invalid migration {what} {value!r}: use a mapping "
                       "of names to integers >= 0")
    return dict(value)


# Shared_State lease (s): a host's rows that no one changed or refreshed for
# that long are deleted by the logical controller (docs/services.md).
DEFAULT_SHARED_STATE_LEASE = 30
SHARED_STATE_LEASE = (3, 3600)
# How long (s) the logical controller keeps a finished Migration row.
DEFAULT_MIGRATION_RETENTION = 3600
MIGRATION_RETENTION = (10, 31536000)


def shared_state_lease(value, what="shared-state-lease"):
    return _bounded(value, *SHARED_STATE_LEASE, what)


def migration_retention(value, what="migration-retention"):
    return _bounded(value, *MIGRATION_RETENTION, what)


# Connection limits and fairness (middlebox.zonepolicy, docs/middlebox.md):
# conntrack entries per VM zone, in all zones of a host (Open vSwitch's
# datapath holds at most 3,000,000), and new connections a second a VM may
# open through its from-VM stage (an OpenFlow meter per VM).
DATAPATH_MAX_CONNS = 3000000
DEFAULT_CONN_LIMIT_VM = 100000
CONN_LIMIT_VM = (1, DATAPATH_MAX_CONNS)
DEFAULT_CONN_LIMIT_HOST = 1000000
CONN_LIMIT_HOST = (1000, DATAPATH_MAX_CONNS)
DEFAULT_NEW_CONN_RATE_VM = 5000
NEW_CONN_RATE_VM = (1, 1000000)


def conn_limit_vm(value, what="conn-limit-vm"):
    """Connections (conntrack entries) one VM's zone may hold on a host."""
    return _bounded(value, *CONN_LIMIT_VM, what)


def conn_limit_host(value, what="conn-limit-host"):
    """Connections all zones of one host may hold together."""
    return _bounded(value, *CONN_LIMIT_HOST, what)


def new_conn_rate_vm(value, what="new-conn-rate-vm"):
    """New connections a second one VM may open (its from-VM stage)."""
    return _bounded(value, *NEW_CONN_RATE_VM, what)


# NB_Global.options: key -> validator returning the canonical (str) value
GLOBAL_OPTIONS = {
    "migration-wait-ms": lambda value: str(migration_wait_ms(value)),
    "shared-state-lease": lambda value: str(shared_state_lease(value)),
    "migration-retention": lambda value: str(migration_retention(value)),
    "conn-limit-vm": lambda value: str(conn_limit_vm(value)),
    "conn-limit-host": lambda value: str(conn_limit_host(value)),
    "new-conn-rate-vm": lambda value: str(new_conn_rate_vm(value)),
}


def global_option_key(key):
    if key not in GLOBAL_OPTIONS:
        raise MbxError(f"unknown global option {key!r}; known options: "
                       + ", ".join(GLOBAL_OPTIONS))
    return key


def global_option(key, value):
    """One NB_Global option; returns its value in canonical (string) form."""
    return GLOBAL_OPTIONS[global_option_key(key)](value)


def global_wait_ms(options):
    """migration-wait-ms from NB_Global.options, else the default (also
    when the value there is not valid)."""
    try:
        return migration_wait_ms(dict(options or {}).get(
            "migration-wait-ms", DEFAULT_MIGRATION_WAIT_MS))
    except MbxError:
        return DEFAULT_MIGRATION_WAIT_MS


def _global(options, key, check, default):
    try:
        return check(dict(options or {}).get(key, default))
    except MbxError:
        return default


def global_shared_state_lease(options):
    """shared-state-lease (s) from NB_Global.options, else the default
    (also when the value there is not valid)."""
    return _global(options, "shared-state-lease", shared_state_lease,
                   DEFAULT_SHARED_STATE_LEASE)


def global_migration_retention(options):
    """migration-retention (s) from NB_Global.options, else the default
    (also when the value there is not valid)."""
    return _global(options, "migration-retention", migration_retention,
                   DEFAULT_MIGRATION_RETENTION)


def global_limits(options):
    """(conn-limit-vm, conn-limit-host, new-conn-rate-vm, errors) from
    NB_Global.options: each value, else its default; ``errors``: one line per
    value set but out of range (the default is used instead)."""
    out, errors = [], []
    for key, check, default in (("conn-limit-vm", conn_limit_vm, DEFAULT_CONN_LIMIT_VM),
                                ("conn-limit-host", conn_limit_host,
                                 DEFAULT_CONN_LIMIT_HOST),
                                ("new-conn-rate-vm", new_conn_rate_vm,
                                 DEFAULT_NEW_CONN_RATE_VM)):
        value = dict(options or {}).get(key)
        try:
            out.append(default if value is None else check(value))
        except MbxError as err:
            out.append(default)
            errors.append("NB_Global options: %s; using %d" % (err, default))
    return out[0], out[1], out[2], tuple(errors)


# --- rows a reader cannot use -------------------------------------------------
#
# Every reader that acts on the intent (mbx-northd's translation, mbxd) treats
# rows as untrusted: a client may write the database directly, bypassing
# mbxctl.  ``unusable`` says which rows cannot be used and why, with the same
# checks mbxctl makes before it writes; the readers leave those rows out and
# mbx-northd writes the reason into the row's status (ovsdb/mbx_nb.md).

# The tables with a one-line ``status`` column that mbx-northd writes for a
# row it cannot use, by the kind of the row's key in ``unusable``; a
# Middlebox's or an LB_VIP's reason goes into its status map, key
# STATUS_ERROR.
STATUS_TABLES = {"switch": "Logical_Switch", "vm": "VM",
                 "rule": "Firewall_Rule", "policy": "Steering_Policy",
                 "nat": "NAT_Rule", "set": "Address_Set",
                 "external": "External_Network"}
STATUS_ERROR = "error"


def problem(check, *args):
    """The message of ``check(*args)``'s MbxError, or None (for readers:
    what makes a value unusable, in the words mbxctl uses to refuse it)."""
    try:
        check(*args)
    except MbxError as e:
        return str(e)
    except (TypeError, ValueError, AttributeError) as e:   # a value of no type
        return f"unusable value: {e}"
    return None


def _switch_ok(sw):
    vni(sw.vni)
    subnet(sw.subnet)
    if sw.gateway:
        gateway(sw.gateway, sw.subnet, sw.name)


def _vm_ok(vm, sw):
    mac(vm.mac)
    ipv4(vm.ip, "VM IP")
    check_vm(vm, {sw.name: sw}, ())


def _vm_clash(vm, taken):
    """``taken``: {(switch, "IP"|"MAC", value): VM name} of the VMs kept."""
    for kind, value in (("IP", vm.ip), ("MAC", vm.mac.lower())):
        other = taken.get((vm.switch, kind, value))
        if other is not None:
            raise MbxError(f"{kind} {value} is already used by VM '{other}' "
                           f"on logical switch '{vm.switch}'")


def known_middlebox_options(options):
    """The options of ``options`` (a mapping) that mbx knows, each in its
    range (``middlebox_option``), as a plain dict; unknown keys are left
    out (a reader ignores them: mbxctl refuses them)."""
    return {key: middlebox_option(key, value)
            for key, value in dict(options).items()
            if key in MIDDLEBOX_OPTIONS}


def _middlebox_ok(mb):
    middlebox_type(mb.type)
    action(mb.default_action, "default action")
    known_middlebox_options(mb.options)


def rule_fields(rule):
    """A RuleInfo's own values: priority, direction, action and match."""
    rule_priority(rule.priority)
    direction(rule.direction)
    action(rule.action)
    match(rule.match)


def vm_fields(vm, subnet_text):
    """A VMInfo's own values: a unicast MAC, an IPv4 address that is a host
    address of ``subnet_text`` (its switch's subnet)."""
    mac(vm.mac)
    ip_in_subnet(vm.ip, subnet_text, vm.switch)


def vip_fields(v):
    """A VipInfo's own values: address, port, protocol, algorithm and
    options (each in its range, health-timeout within health-interval)."""
    ipv4(v.vip, "VIP")
    port(v.port, "VIP port")
    protocol(v.protocol)
    algorithm(v.algorithm)
    check_vip_options(vip_options(v.options))


def _rule_ok(rule, mb_name, mb_type, sw, sets):
    rule_fields(rule)
    check_rule(MiddleboxInfo(mb_name, mb_type, sw.name), rule,
               {sw.name: sw}, {s.name: s for s in sets})


# ``unusable`` runs on every snapshot of the whole database: the checks of
# one row, which parse addresses and matches, are remembered by the values
# they depend on (rows are frozen values), so a snapshot costs a lookup per
# row that did not change.
_MEMO_SIZE = 1 << 16


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _memo(check, *args):
    return problem(check, *args)


def _remembered(check, *args):
    """problem(check, *args), remembered when the arguments are values."""
    try:
        return _memo(check, *args)
    except TypeError:           # a value of a type that does not hash
        return problem(check, *args)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _set_names(text):
    """The address sets a match names (none if it does not parse)."""
    try:
        return parse_match(text).address_sets
    except MbxError:
        return frozenset()


def nat_fields(rule):
    """A NatRuleInfo's own values, as ``nat_rule`` would build them from
    user input."""
    nat_rule(rule.middlebox, rule.type, list(rule.external_ips),
             rule.logical_ip, rule.protocol if rule.type == "dnat" else "",
             rule.external_port, rule.logical_port,
             "%d-%d" % rule.port_range if rule.type == "snat" else None)


def usable_addresses(values):
    """(the members of an address set a reader uses, ((member, why), ...)
    of those it leaves out): each member as ``address`` checks it, kept as
    written."""
    try:
        return _usable_addresses(tuple(values))
    except TypeError:           # a member of a type that does not hash
        return _usable_addresses.__wrapped__(tuple(values))


@functools.lru_cache(maxsize=4096)
def _usable_addresses(values):
    good, bad = [], []
    for value in values:
        why = problem(address, value)
        if why:
            bad.append((value, why))
        else:
            good.append(value)
    return tuple(good), tuple(bad)


def _nat_ok(rule, mb, switches, externals):
    nat_fields(rule)
    check_nat_rule(rule, mb, switches, externals)


def _policy_ok(policy, switches, middleboxes, address_sets):
    steer_priority(policy.priority)
    check_policy(policy, switches, middleboxes, address_sets)


def _vip_ok(v, mb, switches, vms):
    vip_fields(v)
    checked = dataclasses.replace(v, options=vip_options(v.options))
    check_vip(checked, mb, switches, vms)


def unusable(switches, vms, middleboxes, rules, policies, address_sets,
             vips, ignored=None, global_options=None, nat_rules=None,
             externals=()):
    """{key: one line} of the rows a reader cannot use, besides ``ignored``
    (rows already left out, e.g. ``mbxmodel.tenancy.ignored``: their
    reasons are kept and what depends on them is left out too).

    Keys: ("switch", name), ("vm", name), ("middlebox", name), ("rule",
    uuid), ("policy", switch, priority), ("vip", uuid), ("nat", uuid),
    ("global", key) (an NB_Global option out of its range: its readers use
    the default), ("set", name) (an address set with members that are not
    addresses: the set is used without them, ``usable_addresses``),
    ("external", name) (an external network whose values are not valid: the
    NAT rules inside it go with it).  ``nat_rules``: middlebox name -> its
    NAT rules; ``externals``: the ExternalNetInfos.  The arguments are
    a northbound snapshot's values (``NbSnapshot``): ``vms`` a mapping of
    name -> VMInfo, ``rules`` and ``vips`` middlebox name -> its rows.
    What depends on an unusable row goes with it: a VM, middlebox or policy
    of an unusable switch; the rules and VIPs of an unusable middlebox; a
    policy whose chain names one.  Of two VMs of a switch with one address,
    the one whose name sorts later is the unusable one."""
    out = dict(ignored or {})
    for key, value in sorted(dict(global_options or {}).items()):
        why = problem(global_option, key, value) \
            if key in GLOBAL_OPTIONS else None
        if why:
            out[("global", key)] = f"NB_Global option {key}: {why}; the " \
                "default is used"
    for name_, aset in sorted(address_sets.items()):
        bad = usable_addresses(aset.addresses)[1]
        if bad:
            out[("set", name_)] = f"address set '{name_}': " + "; ".join(
                f"member {value!r} left out: {why}" for value, why in bad)
    for ext in sorted(externals, key=lambda e: e.name):
        why = problem(external_network, ext.name, ext.cidr, ext.gateway_ip,
                      ext.gateway_mac)
        if why:
            out[("external", ext.name)] = f"external network '{ext.name}': {why}"
    for name_, sw in sorted(switches.items()):
        why = _remembered(_switch_ok, sw)
        if why:
            out[("switch", name_)] = f"logical switch '{name_}': {why}"
    good_switches = {n: sw for n, sw in switches.items()
                     if ("switch", n) not in out}
    taken = {}
    for name_, vm in sorted(vms.items()):
        if vm.switch in switches and vm.switch not in good_switches:
            why = f"its logical switch '{vm.switch}' is not usable"
        else:
            why = (_remembered(_vm_ok, vm, good_switches[vm.switch])
                   if vm.switch in good_switches
                   else f"unknown logical switch '{vm.switch}'") or \
                problem(_vm_clash, vm, taken)
        if why:
            out[("vm", name_)] = (why if why.startswith("VM '")
                                  else f"VM '{name_}': {why}")
        else:
            taken[(vm.switch, "IP", vm.ip)] = name_
            taken[(vm.switch, "MAC", vm.mac.lower())] = name_
    for name_, mb in sorted(middleboxes.items()):
        if ("middlebox", name_) in out:
            continue
        if mb.switch not in good_switches:
            why = f"its logical switch '{mb.switch}' is not usable"
        else:
            why = problem(_middlebox_ok, mb)
        if why:
            out[("middlebox", name_)] = f"middlebox '{name_}': {why}"
    good_mbs = {n: mb for n, mb in middleboxes.items()
                if ("middlebox", n) not in out}
    for mb_name, mb_rules in sorted(rules.items()):
        mb = good_mbs.get(mb_name)
        for rule in mb_rules if mb is not None else ():
            key = ("rule", rule.uuid)
            if key in out:
                continue
            names = _set_names(rule.match) if isinstance(rule.match, str) \
                else frozenset()
            sets = tuple(address_sets[n] for n in sorted(names)
                         if n in address_sets)
            why = _remembered(_rule_ok, rule, mb.name, mb.type,
                              good_switches[mb.switch], sets)
            if why:
                out[key] = f"middlebox '{mb_name}' rule {rule.uuid}: {why}"
    for policy in policies:
        key = ("policy", policy.switch, policy.priority)
        if key in out:
            continue
        gone = [n for n in policy.chain if n in middleboxes
                and n not in good_mbs]
        if policy.switch not in good_switches:
            why = f"its logical switch '{policy.switch}' is not usable"
        elif gone:
            why = f"its middlebox '{gone[0]}' is not usable"
        else:
            why = problem(_policy_ok, policy, good_switches, good_mbs,
                       address_sets)
        if why:
            out[key] = (f"steering policy {policy.switch} "
                        f"{policy.priority}: {why}")
    externals = [e for e in sorted(externals, key=lambda e: e.name)
                 if ("external", e.name) not in out]
    for mb_name, mb_rules in sorted((nat_rules or {}).items()):
        mb = good_mbs.get(mb_name)
        for rule in mb_rules if mb is not None else ():
            why = problem(_nat_ok, rule, mb, good_switches, externals)
            if why:
                out[("nat", rule.uuid)] = (f"middlebox '{mb_name}' NAT rule "
                                           f"{rule.uuid}: {why}")
    good_vms = [vms[n] for n in sorted(vms) if ("vm", n) not in out]
    for mb_name, mb_vips in sorted(vips.items()):
        mb = good_mbs.get(mb_name)
        for v in mb_vips if mb is not None else ():
            key = ("vip", v.uuid)
            why = problem(_vip_ok, v, mb, good_switches, good_vms)
            if why and key not in out:
                out[key] = (f"load balancer '{mb_name}' VIP "
                            f"{v.vip}:{v.port}: {why}")
    return out
