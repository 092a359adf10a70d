"""Conntrack timeouts per zone: a middlebox's ``timeout-*`` options.

Conntrack keeps a connection while packets come; how long it waits for the
next one is the zone's timeout policy (Open vSwitch's ``CT_Timeout_Policy``,
``ovs-vsctl add-zone-tp``; without one, Open vSwitch's defaults: 24 h for an
established TCP connection, 30 s for UDP and ICMP).  A VM's zone takes the
options of its first slice (lowest tag); an SNAT rule's zone those of its
NAT middlebox's first slice.

``policy(options)`` is pure; ``ZonePolicies`` applies them to the host's
OVSDB with ``ovs-vsctl`` (one transaction per changed zone), only when they
change.
"""

import logging
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


def policy(options):
    """The timeout policy (``{key: seconds}``) of a slice's options; {}
    when they set none.  Values were validated when written; anything else
    is left out."""
    out = {}
    for option, keys in OPTION_KEYS.items():
        value = dict(options or {}).get(option)
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
            args = ["--", "--if-exists", "del-zone-tp", DATAPATH, "zone=%d" % zone,
                    "--", "add-zone-tp", DATAPATH, "zone=%d" % zone]
            args += ["%s=%d" % kv for kv in sorted(pol.items())]
            if self._vsctl(*args):
                self.applied[zone] = pol
