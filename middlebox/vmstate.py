"""A VM's connection state as transferable records (docs/migration.md).

Pure: no I/O, no clock.  A record is a ``(conn.Slice, conn.Conn)`` pair: the
conntrack entry, and the slice it belongs to named by its chain (the
middlebox names in order; tags and zones are per host) and the role of its
zone ("vm": the VM's own zone; "snat": the SNAT rule's zone, named by the
rule's service id).

* ``gather``: the records of a VM from dumps of its zone and of this host's
  SNAT zones (the seed's *local* mode, ``datapath``); finished TCP
  connections (TIME_WAIT) stay behind;
* ``review``: the same records reviewed by the service
  (``datapath+review``): a connection today's rules would refuse, one the
  service cut, or one of a slice the VM is no longer in stays behind;
* ``known``: the service's own records (``service``): the connections it
  picked a backend for or checked, nothing the switch decided alone;
* ``localize``: at the destination, the records made this host's: its
  slice tag in ct_mark, its zones; a transfer with one record that is not
  the VM's own, or of a slice it has no copy of, is refused whole
  (``RecordError``);
* ``digest``: a hash of a set of records, whatever their order.
"""

import hashlib
import struct

from middlebox import conn as C
from middlebox import dataplane as D
from middlebox.packet import ip_int, ip_text
from middlebox.rules import DIRECTIONS

GATHER_MODES = ("datapath", "datapath+review", "service")
# A TCP connection in these states is over: it stays behind (re-created it
# would be ESTABLISHED again, ctcommit).
FINISHED = frozenset(("TIME_WAIT", "CLOSED", "LISTEN"))
DEFAULT_GATHER = "datapath"
_DIGEST_ROW = struct.Struct("!BIHIHIHIHIQQ")


class RecordError(ValueError):
    """A transfer that must be refused as a whole (one line, why)."""


def chain_of(cfg):
    """A slice's identity across hosts: its chain's middlebox names."""
    return tuple(sv.name for sv in cfg.services) or (cfg.middlebox,)


def gather_mode(slices):
    """The gather mode of a VM's chains: the first middlebox that sets
    ``migration-gather`` decides; bad values fall back to the default."""
    for s in slices:
        for sv in s.config.services:
            mode = dict(sv.options or {}).get("migration-gather")
            if mode:
                return mode if mode in GATHER_MODES else DEFAULT_GATHER
    return DEFAULT_GATHER


def _vm_ip(slices, vm):
    for s in slices.values():
        for v in s.config.vms:
            if v.name == vm:
                return ip_int(v.ip)
    return None


def gather(vm, slices, vm_conns, snat_conns):
    """Records of ``vm`` from its zone's entries ``vm_conns`` and the SNAT
    zones' entries ``snat_conns`` ({rule uuid: [Conn]}); ``slices`` the
    service's slices by tag.  Entries of a tag with no slice stay behind."""
    vm_ip = _vm_ip(slices, vm)
    out = []
    chains = {tag: chain_of(s.config) for tag, s in slices.items()}
    memo = {}

    def slice_of(chain, role, service):
        key = (chain, role, service)
        got = memo.get(key)
        if got is None:
            got = memo[key] = C.Slice(chain, role, service)
        return got

    for c in vm_conns:
        if c.state in FINISHED:
            continue
        chain = chains.get(c.mark & D.MARK_TAG_MASK)
        if chain is not None:
            out.append((slice_of(chain, "vm", c.label >> D.LABEL_SERVICE_OFS & 0xFFFFFFFF), c))
    if vm_ip is not None:
        for uuid, conns in snat_conns.items():
            sid = D.service_id(uuid)
            for c in conns:
                chain = chains.get(c.mark & D.MARK_TAG_MASK)
                if c.src == vm_ip and chain is not None and c.state not in FINISHED:
                    out.append((slice_of(chain, "snat", sid), c))
    return out


def review(records, slices):
    """``records`` as the service lets them go: (kept, dropped count)."""
    by_chain = {chain_of(s.config): s for s in slices.values()}
    kept, keys = [], set()
    for sl, c in records:
        if sl.role != "vm":
            continue
        s = by_chain.get(sl.chain)
        if s is None or c.mark & D.MARK_BLOCKED:
            continue
        if c.mark & D.MARK_IN:
            action, _ = s.rules.evaluate(DIRECTIONS[1], c.proto, c.src, c.rsrc,
                                         c.sport, c.rsport)
        else:
            action, _ = s.rules.evaluate(DIRECTIONS[0], c.proto, c.src, c.dst,
                                         c.sport, c.dport)
        if action == "allow":
            kept.append((sl, c))
            keys.add(c.key)
    kept += [(sl, c) for sl, c in records if sl.role == "snat" and c.key in keys]
    return kept, len(records) - len(kept)


def known(vm, slices, zone):
    """The service's own records of ``vm``: connections it picked a backend
    for or checked (``_Slice.known``), as conntrack entries of ``zone``."""
    vm_ip = _vm_ip(slices, vm)
    out = []
    for tag, s in slices.items():
        chain = chain_of(s.config)
        for (proto, src, sport, dst, dport), (origin_in, dnat, sid) in s.known.items():
            # The VM's own connections: it opened them (its zone's entry),
            # or the peer opened them to it (a load balancer's backend side
            # is the client's entry, in the client's zone: not the VM's).
            if (dst if origin_in else src) != vm_ip:
                continue
            rsrc, rsport = dnat if dnat is not None else (dst, dport)
            if proto == C.IPPROTO_ICMP:
                rdport = 0 if dport >> 8 == 8 else dport
                rsport = sport
            else:
                rdport = sport
            state = "ESTABLISHED" if proto == C.IPPROTO_TCP else ""
            mark = tag | (D.MARK_IN if origin_in else 0)
            c = C.Conn(proto, src, sport, dst, dport, rsrc, rsport, src, rdport, zone,
                       mark, sid << D.LABEL_SERVICE_OFS, state)
            out.append((C.Slice(chain, "vm", sid), c))
    return out


def localize(vm, records, slices, zones):
    """The records as entries of this host: [(Conn with this host's zone
    and tag, role)].  ``slices``: the service's slices by tag; ``zones``:
    the zone map.  Raises RecordError for a transfer to refuse."""
    by_chain = {}
    for tag, s in slices.items():
        if any(v.name == vm for v in s.config.vms):
            by_chain[chain_of(s.config)] = s
    if not records:
        return []
    vm_ip = _vm_ip(slices, vm)
    vm_zone = zones.vm(vm)
    if vm_ip is None or vm_zone is None:
        raise RecordError("VM %s has no slice or zone here" % vm)
    snat_zone = {}
    for s in by_chain.values():
        for sv in s.config.services:
            for rule in sv.nat_rules:
                if rule.type == "snat":
                    zone = zones.get(("snat", rule.uuid))
                    if zone is not None:
                        snat_zone[(chain_of(s.config), D.service_id(rule.uuid))] = zone
    out = []
    add = out.append
    new = tuple.__new__
    keep = ~(D.MARK_TAG_MASK | _COUNT_MASK)
    where = {}                          # Slice -> (slice here, zone, role): parts share them
    for sl, c in records:
        w = where.get(sl)
        if w is None:
            w = where[sl] = _slice_here(sl, by_chain, vm, vm_zone, snat_zone)
        s, zone, role = w
        if role == "vm":
            mine = c[5] == vm_ip if c[10] & D.MARK_IN else c[1] == vm_ip    # rsrc, mark, src
        else:
            mine = c[1] == vm_ip
        if not mine:
            addr = c.rsrc if role == "vm" and c.mark & D.MARK_IN else c.src
            owner = next((v.name for v in s.config.vms if v.ip == ip_text(addr)), None)
            raise RecordError("a record of %s, not of VM %s" % (
                "VM %s's connection" % owner if owner else "a connection of %s" % ip_text(addr),
                vm))
        # c._replace(zone=zone, mark=..., timeout=None), without its cost
        add((new(C.Conn, c[:9] + (zone, (c[10] & keep) | s.tag, c[11], c[12], None)), role))
    return out


def _slice_here(sl, by_chain, vm, vm_zone, snat_zone):
    s = by_chain.get(tuple(sl.chain))
    if s is None:
        raise RecordError("a record of chain %s, which VM %s is not in here"
                          % (",".join(sl.chain), vm))
    if sl.role == "vm":
        return s, vm_zone, sl.role
    zone = snat_zone.get((tuple(sl.chain), sl.service))
    if zone is None:
        raise RecordError("an SNAT record of a rule with no port block here")
    return s, zone, sl.role


_COUNT_MASK = ((1 << D.MARK_COUNT_BITS) - 1) << D.MARK_COUNT_OFS


def count_connections(records):
    """Connections (a VM zone's entries) among ``records``."""
    return sum(1 for sl, _ in records if sl.role == "vm")


def digest(records):
    """sha256 (hex) of a set of records, whatever their order."""
    rows = []
    add, pack = rows.append, _DIGEST_ROW.pack
    heads = {}                          # (slice, state) -> its bytes
    keep, low = ~(D.MARK_TAG_MASK | _COUNT_MASK), (1 << 64) - 1
    for sl, c in records:
        head = heads.get((sl, c[12]))
        if head is None:
            head = heads[sl, c[12]] = ("%s|%s|%d|%s" % (",".join(sl.chain), sl.role,
                                                         sl.service, c[12])).encode()
        label = c[11]
        add(head + pack(*c[:9], c[10] & keep, label >> 64, label & low))
    rows.sort()
    h = hashlib.sha256()
    for row in rows:
        h.update(row)
    return h.hexdigest()
