"""Pure validators for config database values.

Every function either returns the value in canonical form or raises
``MbxError`` with one line saying what was wrong and what to do.  No I/O.
"""

import hashlib
import ipaddress
import re
from typing import Iterable, Mapping

from ovsdb.errors import MbxError
from ovsdb.match import parse_match, parse_network
from ryu_apps.model import SwitchInfo, VMInfo

MAX_NAME_LEN = 64
MAX_VNI = 16777215
ENCAP_TYPES = ("vxlan", "geneve")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_REMOTE_RE = re.compile(r"(tcp|ssl):([0-9.]+):([0-9]+)")


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
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    else:
        number = None
    if number is None or not 1 <= number <= MAX_VNI:
        raise MbxError(f"invalid VNI {value!r}: use an integer from 1 to "
                       f"{MAX_VNI}")
    return number


def subnet(value):
    """An IPv4 network in strict CIDR form ("10.0.0.0/24"), at most /30."""
    if not isinstance(value, str) or "/" not in value:
        raise MbxError(f"invalid subnet {value!r}: use an IPv4 network in "
                       "CIDR form, e.g. 10.0.0.0/24")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise MbxError(f"invalid subnet {value!r}: use an IPv4 network in "
                       "CIDR form, e.g. 10.0.0.0/24") from None
    if str(net) != value:
        if ipaddress.IPv4Interface(value).ip != net.network_address:
            raise MbxError(f"invalid subnet {value!r}: host bits are set; "
                           f"did you mean {net}?")
        raise MbxError(f"invalid subnet {value!r}: write it as {net}")
    if net.prefixlen > 30:
        raise MbxError(f"invalid subnet {value!r}: a /{net.prefixlen} has no "
                       "room for VMs; use a prefix length of 30 or less")
    return value


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


def mgmt_address(value):
    """An OVSDB remote where a host's database can be reached."""
    ok = isinstance(value, str) and (
        (value.startswith("unix:") and len(value) > 5)
        or _REMOTE_RE.fullmatch(value))
    if not ok:
        raise MbxError(f"invalid management address {value!r}: use "
                       "tcp:IP:PORT, ssl:IP:PORT or unix:PATH")
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
             vms: Iterable[VMInfo], label=None):
    """``vm`` fits its switch: it exists, the IP is inside its subnet, and no
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


# --- middleboxes, firewall rules, address sets, steering policies ------------

MIDDLEBOX_TYPES = ("firewall",)
ACTIONS = ("allow", "deny", "reject")
DIRECTIONS = ("from-vm", "to-vm")
TIERS = ("provider", "tenant")
MAX_RULE_PRIORITY = 32767
MAX_STEER_PRIORITY = 30000
MAX_SLICE_TAG = 4094
MAX_TIMEOUT = 65535
TIMEOUT_OPTIONS = ("timeout-tcp-syn", "timeout-tcp-established",
                   "timeout-tcp-closing", "timeout-udp", "timeout-udp-replied",
                   "timeout-icmp", "timeout-denied")
# Middlebox options: key -> accepted values (None: seconds, 1..MAX_TIMEOUT).
MIDDLEBOX_OPTIONS = {
    "check": ("offload", "every-packet"),
    "same-host": ("both", "source", "destination"),
    "tier-order": ("provider-first", "tenant-first"),
    **{key: None for key in TIMEOUT_OPTIONS},
}


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


def middlebox_option(key, value):
    """One middlebox option; returns its value in canonical (string) form."""
    middlebox_option_key(key)
    allowed = MIDDLEBOX_OPTIONS[key]
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


def describe_policy(policy):
    """E.g. 'steering policy at priority 100 (any -> fw-a)'."""
    return (f"steering policy at priority {policy.priority} ({policy.match} "
            f"-> {policy.middlebox or 'bypass'})")


def check_middlebox(mb, switches: Mapping[str, SwitchInfo], label=None):
    """``mb`` (a MiddleboxInfo) serves a logical switch that exists.
    ``label`` (default "middlebox 'NAME'") prefixes the message."""
    if mb.switch not in switches:
        raise MbxError(f"{label or f'middlebox {mb.name!r}'}: unknown "
                       f"logical switch '{mb.switch}'; create it first")


def check_rule(mb, rule, switches: Mapping[str, SwitchInfo], address_sets,
               label=None, partial=False):
    """The address sets the match of ``rule`` (of middlebox ``mb``) names
    exist and belong to the tenant of ``mb``'s switch."""
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


def check_policy(policy, switches: Mapping[str, SwitchInfo], middleboxes,
                 address_sets, label=None, partial=False):
    """``policy`` (a PolicyInfo) fits: its switch exists, the address sets
    its match names belong to the switch's tenant, and its middlebox (if
    any) exists and serves the switch.  With ``partial``, switches, sets
    and middleboxes missing from the mappings are not checked."""
    sw = switches.get(policy.switch)
    if sw is None and not partial:
        raise MbxError(_prefix(label) + f"unknown logical switch "
                       f"'{policy.switch}'; create it first (ls-add)")
    if sw is not None:
        check_address_sets(parse_match(policy.match), sw.tenant,
                           address_sets, f"logical switch '{sw.name}'",
                           label, partial)
    if policy.middlebox is None:
        return
    mb = middleboxes.get(policy.middlebox)
    if mb is None:
        if partial:
            return
        raise MbxError(_prefix(label) + f"unknown middlebox "
                       f"'{policy.middlebox}'; create it first (mb-add) or "
                       "use bypass")
    if mb.switch != policy.switch:
        raise MbxError(_prefix(label) + f"middlebox '{mb.name}' serves "
                       f"logical switch '{mb.switch}', not "
                       f"'{policy.switch}'; a steering policy can only use a "
                       "middlebox of its own switch")


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
        if mb.switch not in switches:
            if partial:
                continue
            check_middlebox(mb, switches, label)
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
