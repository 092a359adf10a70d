"""Conntrack timeouts per zone: a middlebox's ``timeout-*`` options.

Conntrack keeps a connection while packets come; how long it waits for the
next one is the zone's timeout policy (Open vSwitch's ``CT_Timeout_Policy``,
``ovs-vsctl add-zone-tp``; without one, Open vSwitch's defaults: 24 h for an
established TCP connection, 30 s for UDP and ICMP).  A VM's zone takes the
options of its first slice (lowest tag); an SNAT rule's zone those of its
NAT middlebox's first slice.

A half-open TCP connection (a SYN never answered) ages out quickly:
``timeout-tcp-syn`` has a default (``DEFAULT_SYN_TIMEOUT``) that every VM
zone gets, set or not.

Limits (``NB_Global`` options, ``ovsdb.validate.global_limits``): each VM
zone holds at most ``conn-limit-vm`` connections, all zones of the host at
most ``conn-limit-host`` (Open vSwitch's ``dpctl/ct-set-limits`` and
``dpctl/ct-set-maxconns``: a new connection over a limit is not committed).
They live in ovs-vswitchd's memory only, so ``ZoneLimits.refresh`` reads
them back (with each zone's count) and sets them again after a restart of
the switch.

``policy(options)`` and ``zone_limits`` are pure; ``ZonePolicies`` applies
the timeouts to the host's OVSDB with ``ovs-vsctl`` (one transaction per
changed zone), only when they change; ``ZoneLimits`` the limits through
ovs-vswitchd's unixctl socket (``middlebox.vswitch``).
"""

import logging
import re
import subprocess

LOG = logging.getLogger(__name__)

# Middlebox option -> the CT_Timeout_Policy keys it sets.
OPTION_KEYS = {
    "timeout-tcp-syn": ("tcp_syn_sent", "tcp_syn_recv"),
    "timeout-tcp-established": ("tcp_established",),
    "timeout-tcp-closing": ("tcp_fin_wait", "tcp_close_wait", "tcp_last_ack",
                            "tcp_time_wait", "tcp_close"),
    "timeout-udp": ("udp_first", "udp_single"),
    "timeout-udp-replied": ("udp_multiple",),
    "timeout-icmp": ("icmp_first", "icmp_reply"),
}
DATAPATH = "netdev"
# A half-open TCP connection lives this long (s) unless timeout-tcp-syn says.
DEFAULT_SYN_TIMEOUT = 10
DEFAULTS = {"timeout-tcp-syn": str(DEFAULT_SYN_TIMEOUT)}


def policy(options):
    """The timeout policy (``{key: seconds}``) of a slice's options, with
    the defaults (``DEFAULTS``) for options they do not set.  Values were
    validated when written; anything else is left out."""
    out = {}
    options = {**DEFAULTS, **dict(options or {})}
    for option, keys in OPTION_KEYS.items():
        value = options.get(option)
        try:
            seconds = int(value)
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            out.update((key, seconds) for key in keys)
    return out


def zone_policies(config, zones):
    """{zone: policy} for ``zones`` ({owner: zone}, owners ("vm", name) and
    ("snat", rule uuid)) from ``config`` (a HostConfig): the first slice by
    tag that has the VM (or the SNAT rule) decides."""
    out = {}
    for (kind, name), zone in zones.items():
        for tag in sorted((config.slices or {}) if config is not None else ()):
            s = config.slices[tag]
            if (kind == "vm" and any(vm.name == name for vm in s.vms)) or \
                    (kind == "snat" and name in (s.snat_blocks or {})):
                pol = policy(s.options)
                if pol:
                    out[zone] = pol
                break
    return out


class ZonePolicies:
    """The host's zone timeout policies, kept as ``wanted`` says."""

    def __init__(self, db, run=subprocess.run):
        self.db = db
        self.run = run
        self.applied = {}           # zone -> policy
        self._datapath = False

    def _vsctl(self, *args):
        proc = self.run(["ovs-vsctl", "--db=" + self.db, "--timeout=10"] + list(args),
                        capture_output=True, text=True)
        if proc.returncode != 0:
            LOG.warning("ovs-vsctl %s: %s", " ".join(args), proc.stderr.strip())
        return proc.returncode == 0

    def _ensure_datapath(self):
        if self._datapath:
            return True
        proc = self.run(["ovs-vsctl", "--db=" + self.db, "--timeout=10", "get",
                         "Open_vSwitch", ".", "datapaths:" + DATAPATH],
                        capture_output=True, text=True)
        if proc.returncode != 0:
            self._datapath = self._vsctl("--", "--id=@dp", "create", "Datapath",
                                         "datapath_version=0", "--", "set",
                                         "Open_vSwitch", ".", "datapaths:%s=@dp" % DATAPATH)
        else:
            self._datapath = True
        return self._datapath

    def update(self, wanted):
        """Make the zones' policies ``wanted`` ({zone: policy}); zones not in
        it get none (Open vSwitch's defaults)."""
        for zone in [z for z in self.applied if z not in wanted]:
            if self._vsctl("--if-exists", "del-zone-tp", DATAPATH, "zone=%d" % zone):
                del self.applied[zone]
        for zone, pol in wanted.items():
            if self.applied.get(zone) == pol or not self._ensure_datapath():
                continue
            # Two transactions: ovs-vsctl refuses to add a zone's policy in
            # the transaction that deletes the old one ("already exists").
            args = ["add-zone-tp", DATAPATH, "zone=%d" % zone]
            args += ["%s=%d" % kv for kv in sorted(pol.items())]
            if self._vsctl("--if-exists", "del-zone-tp", DATAPATH, "zone=%d" % zone) and \
                    self._vsctl(*args):
                self.applied[zone] = pol


# ---------------------------------------------------------------- limits
def zone_limits(zones, per_vm):
    """{zone: limit}: ``per_vm`` for each VM zone of ``zones`` ({owner:
    zone}); an SNAT rule's zone (shared by the VMs it translates) has only
    the host's limit."""
    return {zone: per_vm for (kind, _), zone in zones.items() if kind == "vm"}


_LIMIT_LINE = re.compile(r"zone=(\d+),limit=(\d+),count=(\d+)")


def parse_limits(text):
    """``dpctl/ct-get-limits`` text -> {zone: (limit, count)}."""
    return {int(z): (int(limit), int(count))
            for z, limit, count in _LIMIT_LINE.findall(text or "")}


def _zones_arg(zones):
    """``zone=N1,N2,...`` (dpctl's argument for several zones)."""
    return "zone=" + ",".join(str(z) for z in sorted(zones))


class ZoneLimits:
    """The host's conntrack limits, kept as ``update`` was last told, and
    what the switch last said of them (``counts``, ``host_count``)."""

    def __init__(self):
        self.wanted = {}            # zone -> limit
        self.host = None            # conn-limit-host
        self.rate = None            # new-conn-rate-vm (the meters: middlebox.dataplane)
        self.applied = {}           # zone -> limit, as set in the switch
        self.counts = {}            # zone -> entries (last refresh)
        self.host_applied = None
        self.host_count = None      # entries in all zones (last refresh)

    def update(self, vswitch, wanted, host, rate=None):
        """Make the zones' limits ``wanted`` ({zone: limit}) and the host's
        ``host``; zones no longer wanted lose theirs.  ``rate`` is only
        remembered for ``report``."""
        self.wanted, self.host, self.rate = dict(wanted), host, rate
        self._apply(vswitch)

    def _apply(self, vswitch):
        from middlebox.vswitch import VswitchError
        gone = [z for z in self.applied if z not in self.wanted]
        changed = ["zone=%d,limit=%d" % (z, n) for z, n in sorted(self.wanted.items())
                   if self.applied.get(z) != n]
        try:
            if gone:
                vswitch.call("dpctl/ct-del-limits", _zones_arg(gone))
                for z in gone:
                    self.applied.pop(z, None)
                    self.counts.pop(z, None)
            if changed:
                vswitch.call("dpctl/ct-set-limits", *changed)
                self.applied.update((z, n) for z, n in self.wanted.items())
            if self.host is not None and self.host_applied != self.host:
                vswitch.call("dpctl/ct-set-maxconns", self.host)
                self.host_applied = self.host
        except VswitchError as err:
            LOG.warning("conntrack limits: %s", err)

    def refresh(self, vswitch):
        """Read the limits and counts back from the switch; set again what
        it lost (a restarted ovs-vswitchd starts without limits)."""
        from middlebox.vswitch import VswitchError
        try:
            if self.wanted:
                found = parse_limits(vswitch.call("dpctl/ct-get-limits",
                                                  _zones_arg(self.wanted)))
                self.counts = {z: c for z, (_, c) in found.items() if z in self.wanted}
                for z, n in self.wanted.items():
                    if found.get(z, (None,))[0] != n:
                        self.applied.pop(z, None)
            if self.host is not None:
                maxconns = vswitch.call("dpctl/ct-get-maxconns").strip()
                if maxconns != str(self.host):
                    self.host_applied = None
                nconns = vswitch.call("dpctl/ct-get-nconns").strip()
                self.host_count = int(nconns) if nconns.isdigit() else None
        except VswitchError as err:
            LOG.warning("conntrack limits: %s", err)
            return
        if any(self.applied.get(z) != n for z, n in self.wanted.items()) or \
                self.host_applied != self.host:
            LOG.info("conntrack limits missing in the switch (restarted?): setting them again")
            self._apply(vswitch)

    def report(self, zones, syn_timeouts, meters=None):
        """What ``limits/show`` and the metrics show: the host's limit and
        count, and per VM zone its limit, count, new-connection rate,
        half-open timeout (``syn_timeouts``: {zone: seconds}) and the new
        connections its meter passed and dropped (``meters``: {meter id:
        (packets in, dropped)}, the meter id being the zone)."""
        meters = meters or {}
        rate = self.rate
        vms = []
        for (kind, name), zone in sorted(zones.items()):
            if kind != "vm":
                continue
            n_in, dropped = meters.get(zone, (None, None))
            vms.append({"vm": name, "zone": zone, "limit": self.wanted.get(zone),
                        "count": self.counts.get(zone), "new_conn_rate": rate,
                        "timeout_tcp_syn": syn_timeouts.get(zone, DEFAULT_SYN_TIMEOUT),
                        "new_conn_in": n_in, "new_conn_dropped": dropped})
        return {"conn_limit_host": self.host, "host_count": self.host_count,
                "new_conn_rate_vm": rate, "vms": vms}
