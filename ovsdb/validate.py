"""Pure validators for config database values.

Every function either returns the value in canonical form or raises
``MbxError`` with one line saying what was wrong and what to do.  No I/O.
"""

import hashlib
import ipaddress
import re
from typing import Iterable, Mapping

from ovsdb.errors import MbxError
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
