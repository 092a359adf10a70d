"""Watch one host's own OVSDB: br-int's datapath id, its tunnel port, its
middlebox port, its uplink (ofport and MAC), and the VM ports (Interface rows
with ``external_ids:iface-id``) appearing and disappearing.  Each change is
reported as a ``HostPorts`` value.

An Interface row is created with an empty ``ofport`` and filled in by
ovs-vswitchd a moment later; a port counts only once it has an ofport.
Nothing is reported before the database's contents have arrived once: an
empty report would read as "every VM port on this host is gone".
"""

import logging
import threading

import ovs.poller
from ovs.db import idl

from ryu_apps import pipeline as P
from mbxmodel.network import HostPorts

LOG = logging.getLogger(__name__)
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
BRIDGE = "br-int"
TUNNEL_TYPES = ("vxlan", "geneve")


def _ofport(iface):
    value = iface.ofport
    if isinstance(value, list):
        value = value[0] if value else None
    return value if value and value > 0 else None


def _mac(iface):
    value = getattr(iface, "mac_in_use", None)
    if isinstance(value, list):
        value = value[0] if value else None
    return value.lower() if value else None


def host_ports_from_rows(bridges, interfaces, bridge=BRIDGE):
    """Pure: the HostPorts of ``bridge`` from IDL-like Bridge/Port/Interface rows."""
    dpid = None
    members = None
    for br in bridges:
        if br.name == bridge:
            raw = br.datapath_id[0] if isinstance(br.datapath_id, list) else br.datapath_id
            dpid = int(raw, 16) if raw else None
            members = {i.name for p in br.ports for i in p.interfaces}
    tunnel = None
    mb_port = None
    uplink = uplink_mac = None
    vms = {}
    for iface in interfaces:
        if members is None or iface.name not in members:
            continue
        ofport = _ofport(iface)
        if ofport is None:
            continue
        if iface.type in TUNNEL_TYPES:
            tunnel = ofport
            continue
        role_key, role = P.MIDDLEBOX_ROLE
        if iface.external_ids.get(role_key) == role:
            mb_port = ofport
            continue
        uplink_key, uplink_role = P.UPLINK_ROLE
        if iface.external_ids.get(uplink_key) == uplink_role:
            uplink, uplink_mac = ofport, _mac(iface)
            continue
        vm = iface.external_ids.get("iface-id")
        if vm:
            vms[vm] = (ofport, iface.external_ids.get("attached-mac", "").lower())
    return HostPorts(datapath_id=dpid, tunnel_ofport=tunnel, mb_ofport=mb_port,
                     vm_ports=vms, uplink_ofport=uplink, uplink_mac=uplink_mac)


class HostWatcher:
    def __init__(self, host, remote, on_change):
        self.host = host
        self.remote = remote
        self._on_change = on_change
        self._stop = threading.Event()
        helper = idl.SchemaHelper(location=VSWITCH_SCHEMA)
        helper.register_columns("Bridge", ["name", "datapath_id", "ports"])
        helper.register_columns("Port", ["name", "interfaces"])
        helper.register_columns("Interface", ["name", "type", "ofport",
                                              "external_ids", "mac_in_use"])
        self._idl = idl.Idl(remote, helper)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="hostwatch-%s" % host)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        last_seqno = None
        last = None
        while not self._stop.is_set():
            self._idl.run()
            if self._idl.has_ever_connected() and \
                    self._idl.change_seqno != last_seqno:
                last_seqno = self._idl.change_seqno
                ports = host_ports_from_rows(
                    self._idl.tables["Bridge"].rows.values(),
                    self._idl.tables["Interface"].rows.values())
                if ports != last:
                    last = ports
                    self._on_change(self.host, ports)
            poller = ovs.poller.Poller()
            self._idl.wait(poller)
            poller.timer_wait(500)
            poller.block()
        self._idl.close()
