"""This host's connections, read from conntrack, as the daemon shows them.

The switch holds every connection (``middlebox.dataplane``); ``ConnTable``
reads a zone with ``dpctl/dump-conntrack`` (``middlebox.vswitch``), parses
it into ``Conn`` records (``middlebox.conn``) and describes them from the
VM's side: its address and port, the peer's, who opened it, the state, the
deciding rule and the translation (load-balancer backend, SNAT address and
port of the SNAT rule's zone, DNAT address).
"""

from middlebox import conn as C
from middlebox import dataplane as D
from middlebox.packet import ip_text


def _hostport(ip, port):
    return "%s:%d" % (ip_text(ip), port)


def vm_view(c, tag_names=None):
    """A dict describing ``c`` (an entry of a VM's zone) from the VM's side."""
    origin_in = bool(c.mark & D.MARK_IN)
    tag = c.mark & D.MARK_TAG_MASK
    xlate = None
    if origin_in:
        vm_ip, vm_port = c.rsrc, c.rsport       # the reply leaves from the VM
        peer_ip, peer_port = c.src, c.sport
        if c.dnat is not None:
            xlate = {"kind": "dnat", "wire_vm": _hostport(c.dst, c.dport),
                     "wire_peer": _hostport(c.src, c.sport)}
    else:
        vm_ip, vm_port = c.src, c.sport
        peer_ip, peer_port = c.dst, c.dport
        if c.dnat is not None:
            xlate = {"kind": "lb", "wire_vm": _hostport(c.src, c.sport),
                     "wire_peer": _hostport(c.rsrc, c.rsport)}
    return {"tag": tag, "middlebox": (tag_names or {}).get(tag, ""), "zone": c.zone,
            "proto": c.proto, "vm_ip": ip_text(vm_ip), "vm_port": vm_port,
            "peer_ip": ip_text(peer_ip), "peer_port": peer_port,
            "origin": "in" if origin_in else "out",
            "state": (c.state or "active").lower(),
            "verdict": "deny" if c.mark & D.MARK_BLOCKED else "allow",
            "rule": c.label >> D.LABEL_RULE_OFS & 0xFFFFFFFF,
            "timeout": c.timeout, "xlate": xlate}


class ConnTable:
    def __init__(self, vswitch, zones):
        self.vswitch = vswitch
        self.zones = zones
        # The entries of every zone of this host as the last census read
        # them ({zone: [Conn]}), and when (monotonic): what a restarted
        # switch, whose conntrack starts empty, is given back.
        self.checkpoint = {}
        self.checkpoint_at = None
        self.checkpoints = 0            # censuses taken

    def zone(self, zone, stats=True):
        return C.parse_dump(self.vswitch.dump_zone(zone, stats=stats))

    def zone_parts(self, zone, size):
        """The entries of ``zone`` (without stats) as Dumps of at most
        ``size`` lines each, parsed one at a time."""
        lines = self.vswitch.dump_zone(zone, stats=False).split("\n")
        for i in range(0, len(lines), size):
            yield C.parse_lines(lines[i:i + size])

    def snat_index(self):
        """Entries of every SNAT zone of this host, by original tuple."""
        out = {}
        for (kind, _uuid), zone in self.zones.owners().items():
            if kind == "snat":
                for c in self.zone(zone):
                    out[c.key] = c
        return out

    def vm(self, name, service, snat=None):
        """The connections of a local VM, described (``vm_view``), with the
        SNAT translation of each that has one."""
        zone = self.zones.vm(name)
        if zone is None:
            return []
        names = {tag: s.config.middlebox for tag, s in service.slices.items()}
        snat = self.snat_index() if snat is None else snat
        rules = {D.rule_id(r): r.uuid or "rule" for s in service.slices.values()
                 for r in s.config.rules}
        out = []
        for c in self.zone(zone):
            view = vm_view(c, names)
            view["vm"] = name
            view["rule"] = rules.get(view["rule"], "default")
            if view["origin"] == "out" and view["xlate"] is None:
                s = snat.get(c.key)
                if s is not None and s.snat is not None:
                    view["xlate"] = {"kind": "snat",
                                     "wire_vm": _hostport(s.rdst, s.rdport),
                                     "wire_peer": _hostport(s.rsrc, s.rsport)}
            out.append(view)
        return out

    def all(self, service, vm=None):
        names = [vm] if vm is not None else sorted(
            name for (kind, name) in self.zones.owners() if kind == "vm")
        snat = self.snat_index()
        out = []
        for name in names:
            out.extend(self.vm(name, service, snat))
        return out

    def census(self, slices, now=None):
        """One pass over this host's zones: (connections per slice tag,
        {VIP service id: {backend: connections}} for least-connections).
        Every zone read (SNAT zones too) is kept as the ``checkpoint``."""
        wanted = {v.sid for s in slices.values() for v in s.vips.values()}
        per_tag, counts = {}, {}
        checkpoint = {}
        for (kind, _name), zone in self.zones.owners().items():
            conns = checkpoint[zone] = self.zone(zone, stats=False)
            if kind != "vm":
                continue
            for c in conns:
                tag = c.mark & D.MARK_TAG_MASK
                per_tag[tag] = per_tag.get(tag, 0) + 1
                sid = c.label >> D.LABEL_SERVICE_OFS & 0xFFFFFFFF
                if sid in wanted and c.dnat is not None:
                    b = (ip_text(c.rsrc), c.rsport)
                    vip = counts.setdefault(sid, {})
                    vip[b] = vip.get(b, 0) + 1
        self.checkpoint, self.checkpoint_at = checkpoint, now
        self.checkpoints += 1
        return per_tag, counts

    def lost(self):
        """The checkpoint's entries of the zones that are empty now and
        still this host's (a restarted switch's): [Conn]."""
        owned = set(self.zones.owners().values())
        out = []
        for zone, conns in self.checkpoint.items():
            if conns and zone in owned and not self.zone(zone, stats=False):
                out.extend(conns)
        return out
