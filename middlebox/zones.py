"""Conntrack zones of a host: one per local VM, one per SNAT rule.

A VM's zone holds every connection of the VM on this host (firewall,
load balancer, DNAT); an SNAT rule's zone holds the rule's translations of
this host's port block.  Zones are this host's own: a VM that moves gets a
new zone on its new host.  ``ovs-appctl -t mbxd ct-zone/list`` shows them,
and they are in the daemon's flows (``dataplane.K_ZONE`` cookies), so a
restarted daemon finds the same zones again (``recover``) and never has to
re-create a connection.

Pure: the shell flushes a zone (``ovs-appctl dpctl/flush-conntrack``)
before it gives it to a VM or rule, so no entry of a former owner (maybe
another tenant with the same addresses) is ever seen by the new one.
"""

FIRST_ZONE = 1
LAST_ZONE = 0xEFFF              # 0xF000.. left to whatever else shares the bridge
REUSE_AFTER = 256               # a released zone waits for this many others first


class ZoneMap:
    def __init__(self, first=FIRST_ZONE, last=LAST_ZONE):
        self.first, self.last = first, last
        self.zones = {}                 # owner -> zone; owner ("vm", name) | ("snat", uuid)
        self._released = []             # released zones, oldest first
        self._next = first

    def get(self, owner):
        return self.zones.get(owner)

    def vm(self, name):
        return self.zones.get(("vm", name))

    def owners(self):
        return dict(self.zones)

    def update(self, wanted):
        """Make the owners in ``wanted`` (an iterable) exactly those with a
        zone.  Returns (new: {owner: zone}, released: {owner: zone}); the
        caller flushes both sets of zones."""
        wanted = set(wanted)
        released = {o: z for o, z in self.zones.items() if o not in wanted}
        for owner, zone in released.items():
            del self.zones[owner]
            self._released.append(zone)
        new = {}
        for owner in sorted(wanted - set(self.zones)):
            zone = self._allocate()
            if zone is None:
                break
            self.zones[owner] = zone
            new[owner] = zone
        return new, released

    def _allocate(self):
        used = set(self.zones.values())
        span = self.last - self.first + 1
        for _ in range(span):
            zone = self._next
            self._next = zone + 1 if zone < self.last else self.first
            if zone not in used and zone not in self._released[-REUSE_AFTER:]:
                if zone in self._released:
                    self._released.remove(zone)
                return zone
        # Everything recent is taken: reuse the oldest released zone.
        while self._released:
            zone = self._released.pop(0)
            if zone not in used:
                return zone
        return None

    def recover(self, owners):
        """Adopt zones found in the datapath (a restart): {owner: zone}."""
        for owner, zone in owners.items():
            if self.first <= zone <= self.last and zone not in self.zones.values():
                self.zones[owner] = zone
        if self.zones:
            top = max(self.zones.values())
            self._next = top + 1 if top < self.last else self.first
