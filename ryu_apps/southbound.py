"""The controller's view of the southbound database: every host's chassis
record and port bindings, as the hosts publish them (``mbx-chassis``), turned
into one ``HostPorts`` value per host.

One OVSDB connection for the whole cloud replaces a connection (and a
thread) per hypervisor.  Each change is reported per host, for the hosts
whose value changed, hosts that only lost ports first (so a VM whose port
appears on its new host in the same batch counts as newest there); once the
database's contents have arrived the first time, ``on_ready`` is called.
"""

import logging
import threading

import ovs.poller
from ovs.db import idl

from mbxmodel.network import HostPorts
from ovsdb.server import SB_SCHEMA_PATH

LOG = logging.getLogger(__name__)


def _one(value):
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _dpid(text, host, warned):
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        if (host, text) not in warned:
            warned.add((host, text))
            LOG.warning("chassis %s: datapath_id %r is not hexadecimal; "
                        "its switch stays unknown", host, text)
        return None


def host_ports_from_southbound(chassis_rows, binding_rows, warned=None):
    """Pure: {host: HostPorts} from IDL-like Chassis and Port_Binding rows."""
    warned = set() if warned is None else warned
    vm_ports = {}
    for row in binding_rows:
        vm_ports.setdefault(row.chassis, {})[row.logical_port] = (
            row.ofport, (row.mac or "").lower())
    out = {}
    for row in chassis_rows:
        mac = _one(row.uplink_mac)
        out[row.name] = HostPorts(
            datapath_id=_dpid(_one(row.datapath_id), row.name, warned),
            tunnel_ofport=_one(row.tunnel_ofport),
            mb_ofport=_one(row.mb_ofport),
            vm_ports=vm_ports.pop(row.name, {}),
            uplink_ofport=_one(row.uplink_ofport),
            uplink_mac=mac.lower() if mac else None)
    for host, ports in vm_ports.items():     # bindings of a host with no chassis row yet
        out[host] = HostPorts(vm_ports=ports)
    return out


def changed_hosts(old, new):
    """The hosts whose HostPorts differ between ``old`` and ``new``, in the
    order to report them: hosts that gained no VM port first."""
    hosts = [h for h in sorted(old.keys() | new.keys())
             if old.get(h, HostPorts()) != new.get(h, HostPorts())]
    def gained(host):
        return bool(set(new.get(host, HostPorts()).vm_ports)
                    - set(old.get(host, HostPorts()).vm_ports))
    return sorted(hosts, key=gained)


class SouthboundWatcher:
    """Monitors the southbound database on its own thread."""

    def __init__(self, remote, on_change, on_ready, schema=SB_SCHEMA_PATH):
        self._on_change = on_change
        self._on_ready = on_ready
        self._stop = threading.Event()
        helper = idl.SchemaHelper(location=schema)
        helper.register_columns("Chassis", ["name", "datapath_id", "tunnel_ofport",
                                            "mb_ofport", "uplink_ofport",
                                            "uplink_mac"])
        helper.register_columns("Port_Binding", ["logical_port", "chassis",
                                                 "ofport", "mac"])
        self._idl = idl.Idl(remote, helper)
        self._warned = set()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="mbx-southbound")

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        last_seqno = None
        last = {}
        ready = False
        while not self._stop.is_set():
            self._idl.run()
            if self._idl.has_ever_connected() and \
                    self._idl.change_seqno != last_seqno:
                last_seqno = self._idl.change_seqno
                ports = host_ports_from_southbound(
                    self._idl.tables["Chassis"].rows.values(),
                    self._idl.tables["Port_Binding"].rows.values(),
                    self._warned)
                for host in changed_hosts(last, ports):
                    self._on_change(host, ports.get(host, HostPorts()))
                last = ports
                if not ready:
                    ready = True
                    self._on_ready()
            poller = ovs.poller.Poller()
            self._idl.wait(poller)
            poller.timer_wait(500)
            poller.block()
        self._idl.close()
