"""Config database rows -> mbxmodel values: the one conversion every reader
uses (``ovsdb.api`` for mbxctl and the controllers, ``middlebox.confmon``
for mbxd).

A row is any object with one attribute per column, as python-ovs gives
them: an optional column (0 or 1 values) is a list, a set column a list or
set, a map column a dict.  These functions read the columns that hold
values; what a reference column names (a logical switch, a middlebox) the
caller passes in, since the two readers resolve references differently.

Converting never fails: a value that is unusable is kept as read or
replaced by its default (a port range that does not parse, an unset
protocol) and a backend that is not ``ip:port`` is left out, so mbxctl can
still show and delete a row some other tool wrote.  A reader that must not
act on such a row (mbxd) checks the row first.
"""

import ipaddress

from mbxmodel.network import ExternalNetInfo
from mbxmodel.services import (DEFAULT_PORT_RANGE, NatRuleInfo, RuleInfo,
                               VipInfo)


def optional(value, default=None):
    """An optional column's value (a list of 0 or 1 element) -> the element
    or ``default``; a value given bare is returned as is."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def integer(value):
    """An optional integer column -> the int, or None (bools are not)."""
    value = optional(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def strings(value):
    """A set-of-strings column (a list, a set, one string or None)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def text(value):
    """An optional string column, stripped ("" when unset)."""
    return (optional(value, "") or "").strip()


def ip_key(address):
    """Sort key of an IPv4 address text: numeric; -1 when not an address."""
    try:
        return int(ipaddress.IPv4Address(address))
    except ValueError:
        return -1


def _port_number(digits):
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(digits)
    return int(digits)


def port_range(value):
    """NAT_Rule.port_range ``"LO-HI"`` (or one port ``"N"``) -> (lo, hi)
    with 1 <= lo <= hi <= 65535; unset or empty -> DEFAULT_PORT_RANGE;
    ValueError when malformed."""
    spec = text(value)
    if not spec:
        return DEFAULT_PORT_RANGE
    lo_s, sep, hi_s = spec.partition("-")
    try:
        lo, hi = _port_number(lo_s), _port_number(hi_s if sep else lo_s)
    except ValueError:
        raise ValueError("port range %r is not LO-HI" % spec) from None
    if not 1 <= lo <= hi <= 65535:
        raise ValueError("port range %r is not inside 1-65535 with LO <= HI"
                         % spec)
    return lo, hi


def ip_port(value):
    """``"IP:PORT"`` -> (canonical IPv4 address, port 1-65535); ValueError
    when it is not one."""
    ip, colon, port_s = value.strip().rpartition(":")
    try:
        port = _port_number(port_s)
        address = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise ValueError("%r is not IP:PORT" % value) from None
    if not colon or not 1 <= port <= 65535:
        raise ValueError("%r is not IP:PORT with a port from 1 to 65535"
                         % value)
    return address, port


# A firewall rule's tier is the Middlebox column that holds its row.
RULE_COLUMNS = {"provider": "provider_rules", "tenant": "rules"}


def rule_tenant(tier, switch_tenant):
    """Firewall_Rule.tenant of a rule of ``tier`` on a middlebox whose
    switch belongs to ``switch_tenant``: "" for the provider tier."""
    return switch_tenant if tier == "tenant" else ""


def rule(row, tier="tenant"):
    """A Firewall_Rule row held in the Middlebox column of ``tier``
    (RULE_COLUMNS) -> RuleInfo."""
    return RuleInfo(priority=optional(row.priority),
                    direction=optional(row.direction, ""),
                    match=optional(row.match, ""),
                    action=optional(row.action, ""),
                    tier=tier,
                    uuid=str(row.uuid))


def nat_rule(row, middlebox):
    """A NAT_Rule row of middlebox ``middlebox`` -> NatRuleInfo; a port
    range that does not parse is the default one."""
    kind = optional(row.type, "")
    try:
        ports = (port_range(row.port_range) if kind == "snat"
                 else DEFAULT_PORT_RANGE)
    except ValueError:
        ports = DEFAULT_PORT_RANGE
    return NatRuleInfo(
        uuid=str(row.uuid), middlebox=middlebox, type=kind,
        external_ips=tuple(sorted(set(strings(row.external_ips)),
                                  key=lambda ip: (ip_key(ip), ip))),
        logical_ip=text(row.logical_ip),
        protocol=optional(row.protocol, "") or "",
        external_port=integer(row.external_port),
        logical_port=integer(row.logical_port),
        port_range=ports)


def backends(row):
    """(the usable backends of an LB_VIP row, sorted; the texts that are
    not ``ip:port``)."""
    good, bad = set(), []
    for item in strings(row.backends):
        try:
            good.add(ip_port(item))
        except ValueError:
            bad.append(item)
    return tuple(sorted(good, key=lambda b: (ip_key(b[0]), b[1]))), bad


def vip(row, middlebox):
    """An LB_VIP row of middlebox ``middlebox`` -> VipInfo (protocol "tcp"
    and algorithm "hash" when unset; status when the row has that column)."""
    return VipInfo(
        uuid=str(row.uuid), middlebox=middlebox, vip=text(row.vip),
        port=integer(row.port),
        protocol=optional(row.protocol, "") or "tcp",
        algorithm=optional(row.algorithm, "") or "hash",
        backends=backends(row)[0],
        options=dict(sorted((row.options or {}).items())),
        status=dict(sorted((getattr(row, "status", None) or {}).items())))


def external_network(row):
    """An External_Network row -> ExternalNetInfo."""
    return ExternalNetInfo(name=optional(row.name, "") or "",
                           cidr=optional(row.cidr, "") or "",
                           gateway_ip=optional(row.gateway_ip, "") or "",
                           gateway_mac=(optional(row.gateway_mac, "")
                                        or "").lower())
