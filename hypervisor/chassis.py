"""mbx-chassis: a host publishes its own runtime facts in the southbound DB.

Runs on every host, next to ovs-vswitchd: starting it registers the host.
It watches the host's own OVSDB (the Open_vSwitch row's external_ids,
br-int's datapath id, its tunnel port, its middlebox port, its uplink, and
the VM ports: Interface rows with ``external_ids:iface-id``) and keeps two
kinds of rows of the southbound database equal to what it sees:

    Chassis        one row, name = the host's name (Open_vSwitch
                   external_ids:system-id unless --name is given), its
                   tunnel endpoint and where its mbxd accepts migrated
                   state, from the Open_vSwitch external_ids:
                       mbx-encap-ip           underlay tunnel endpoint (required)
                       mbx-encap-type         vxlan (default) or geneve
                       mbx-migration-address  ssl:IP:PORT (optional)
                   and the ports it sees
    Port_Binding   one row per VM port on br-int: logical_port = iface-id,
                   chassis = the host's name, ofport, mac (attached-mac)

Without external_ids:system-id (or --name) and mbx-encap-ip it refuses to
start, naming the key to set.  Later changes of those keys are published;
a value that becomes invalid is logged and the last good one kept.

The controllers read these rows instead of connecting to every host's
OVSDB; a VM's binding appearing with a new chassis is what tells them the
VM moved.  The agent touches only rows whose chassis is its own, and it
monitors only those (OVSDB monitor conditions), so its replica does not
grow with the cloud.

It is level-triggered: after every change of either replica it compares
what the host's OVSDB says with what the southbound DB holds and writes
the difference in one transaction.  So a restart of the agent, of either
ovsdb-server, or a row someone else wrote or deleted under its name, all
converge the same way.  An Interface row is created with an empty
``ofport`` and filled in by ovs-vswitchd a moment later; a port counts only
once it has an ofport.  Nothing is written before both databases' contents
have arrived once: an empty view would read as "every VM port on this
host is gone".
"""

import argparse
import json
import logging
import signal
import subprocess
import sys
import warnings

with warnings.catch_warnings():
    # python-ovs imports eventlet only to tell whether select() is green;
    # eventlet's deprecation notice on import is not this agent's to print.
    warnings.simplefilter("ignore")
    import ovs.poller
import ovs.timeval
from ovs.db import idl

from mbxmodel.network import MIDDLEBOX_ROLE, UPLINK_ROLE, HostPorts
from ovsdb import DEFAULT_SB, remotes, tls, validate
from ovsdb.errors import MbxError
from ovsdb.server import SB_SCHEMA_PATH

LOG = logging.getLogger("mbx-chassis")
PROG = "mbx-chassis"
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
LOCAL_DB = "unix:/var/run/openvswitch/db.sock"
BRIDGE = "br-int"
TUNNEL_TYPES = ("vxlan", "geneve")
OFPORT_MAX = 65279          # OFPP_MAX: higher numbers are reserved ports
RETRY_MS = 1000             # after a failed transaction


def _ofport(iface):
    value = iface.ofport
    if isinstance(value, list):
        value = value[0] if value else None
    return value if value and 0 < value <= OFPORT_MAX else None


def _mac(iface):
    value = getattr(iface, "mac_in_use", None)
    if isinstance(value, list):
        value = value[0] if value else None
    return value.lower() if value else None


def read_external_ids(local_db, timeout=5):
    """The Open_vSwitch row's external_ids in the OVS database ``local_db``."""
    argv = ["ovs-vsctl", f"--db={local_db}", f"--timeout={timeout}",
            "--format=json", "--columns=external_ids", "list", "Open_vSwitch"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["ovs-vsctl failed"])
        raise MbxError(f"cannot read the local OVS database at {local_db}: "
                       f"{reason[-1]}; is Open vSwitch running? set "
                       "--local-db")
    rows = json.loads(result.stdout)["data"]
    if not rows:
        raise MbxError(f"the OVS database at {local_db} has no Open_vSwitch "
                       "row; is it initialised (ovs-vsctl init)?")
    return dict(rows[0][0][1])


def _required(external_ids, key):
    if not external_ids.get(key):
        raise MbxError(f"external_ids:{key} is not set in the local OVS "
                       "database; set it with ovs-vsctl set "
                       f"Open_vSwitch . external_ids:{key}=VALUE")
    return external_ids[key]


def chassis_fields(external_ids, name=None):
    """(name, encap_type, encap_ip, migration_address) of the host's
    Chassis row from the Open_vSwitch external_ids (``name``: given on the
    command line instead of system-id); MbxError naming the key that is
    missing or invalid.  migration_address is "" when unset."""
    name = name or _required(external_ids, "system-id")
    encap_ip = _required(external_ids, "mbx-encap-ip")
    values = {}
    for key, check, value in (
            ("mbx-encap-ip", lambda v: validate.ipv4(v, "encap IP"), encap_ip),
            ("mbx-encap-type", validate.encap_type,
             external_ids.get("mbx-encap-type") or "vxlan"),
            ("mbx-migration-address", validate.migration_address,
             external_ids.get("mbx-migration-address", ""))):
        try:
            values[key] = check(value)
        except MbxError as e:
            raise MbxError(f"external_ids:{key} in the local OVS database: "
                           f"{str(e).split(', e.g.')[0]}") from None
    return (name, values["mbx-encap-type"], values["mbx-encap-ip"],
            values["mbx-migration-address"])


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
        ids = iface.external_ids
        if ids.get(MIDDLEBOX_ROLE[0]) == MIDDLEBOX_ROLE[1]:
            mb_port = ofport
            continue
        if ids.get(UPLINK_ROLE[0]) == UPLINK_ROLE[1]:
            uplink, uplink_mac = ofport, _mac(iface)
            continue
        vm = ids.get("iface-id")
        if vm:
            vms[vm] = (ofport, ids.get("attached-mac", "").lower())
    return HostPorts(datapath_id=dpid, tunnel_ofport=tunnel, mb_ofport=mb_port,
                     vm_ports=vms, uplink_ofport=uplink, uplink_mac=uplink_mac)


def _opt(value):
    """An optional column's value as python-ovs holds it: [] or [value]."""
    return [] if value is None else [value]


def chassis_columns(ports: HostPorts, fields):
    """{column: value} of the host's Chassis row for ``ports`` and
    ``fields`` (``chassis_fields``)."""
    _name, encap_type, encap_ip, migration_address = fields
    return {"encap_type": encap_type, "encap_ip": encap_ip,
            "migration_address": migration_address,
            "datapath_id": _opt(None if ports.datapath_id is None
                                else "%016x" % ports.datapath_id),
            "tunnel_ofport": _opt(ports.tunnel_ofport),
            "mb_ofport": _opt(ports.mb_ofport),
            "uplink_ofport": _opt(ports.uplink_ofport),
            "uplink_mac": _opt(ports.uplink_mac)}


def binding_columns(ports: HostPorts):
    """{logical_port: {column: value}} of the host's Port_Binding rows."""
    return {vm: {"ofport": ofport, "mac": mac}
            for vm, (ofport, mac) in ports.vm_ports.items()}


class ChassisAgent:
    """``fields``: the host's ``chassis_fields`` when it started; later
    changes of the external_ids are followed."""

    def __init__(self, local_db, sb_remote, fields, bridge=BRIDGE,
                 sb_schema=SB_SCHEMA_PATH):
        self.name = fields[0]
        self.fields = fields
        self._named = fields[0]     # --name or system-id: the name never changes
        self._bad_ids = None        # the external_ids last refused
        self.bridge = bridge
        name = self.name
        helper = idl.SchemaHelper(location=VSWITCH_SCHEMA)
        helper.register_columns("Open_vSwitch", ["external_ids"])
        helper.register_columns("Bridge", ["name", "datapath_id", "ports"])
        helper.register_columns("Port", ["name", "interfaces"])
        helper.register_columns("Interface", ["name", "type", "ofport",
                                              "external_ids", "mac_in_use"])
        self.local = idl.Idl(local_db, helper)
        self.sb = idl.Idl(sb_remote, _sb_helper(sb_schema))   # follows the leader
        remotes.follow_quickly(self.sb._session)
        # Set before the first connection, the conditions go with the
        # initial monitor request: the replica never holds other hosts' rows.
        self.sb.cond_change("Chassis", [["name", "==", name]])
        self.sb.cond_change("Port_Binding", [["chassis", "==", name]])
        self._txn = None
        self._retry_at = None

    def _ready(self):
        """Both replicas arrived and the southbound one holds exactly this
        chassis's rows: monitoring, no condition change waiting or in
        flight."""
        sb = self.sb
        if not (self.local.has_ever_connected()
                and sb.state == sb.IDL_S_MONITORING and sb._session.is_connected()
                and not sb.cond_changed):
            return False
        return all(t.condition_state.new is None
                   and t.condition_state.requested is None
                   for t in sb.tables.values())

    def _follow_external_ids(self):
        """The chassis fields from the local Open_vSwitch row, when they
        are valid; else the last good ones (the refusal logged once)."""
        for row in self.local.tables["Open_vSwitch"].rows.values():
            ids = dict(row.external_ids)
            try:
                fields = chassis_fields(ids, self._named)
            except MbxError as e:
                if ids != self._bad_ids:
                    self._bad_ids = ids
                    LOG.error("keeping encap %s %s: %s", self.fields[1],
                              self.fields[2], e)
                return
            self._bad_ids = None
            if fields != self.fields:
                LOG.info("chassis %s: encap %s %s, migration address %s", self.name,
                         fields[1], fields[2], fields[3] or "-")
                self.fields = fields

    def desired(self):
        return host_ports_from_rows(self.local.tables["Bridge"].rows.values(),
                                    self.local.tables["Interface"].rows.values(),
                                    self.bridge)

    # ---------------------------------------------------------- the write
    def _reconcile(self):
        """Start one transaction that makes the southbound rows of this
        chassis equal to the local view; None when they already are."""
        self._follow_external_ids()
        ports = self.desired()
        want_chassis = chassis_columns(ports, self.fields)
        want_bindings = binding_columns(ports)
        mine = [r for r in self.sb.tables["Chassis"].rows.values()
                if r.name == self.name]
        bindings = [r for r in self.sb.tables["Port_Binding"].rows.values()
                    if r.chassis == self.name]
        txn = idl.Transaction(self.sb)
        changed = False
        if not mine:
            row = txn.insert(self.sb.tables["Chassis"])
            row.name = self.name
            for column, value in want_chassis.items():
                setattr(row, column, value)
            changed = True
        for extra in mine[1:]:
            extra.delete()
            changed = True
        for column, value in want_chassis.items() if mine else ():
            if getattr(mine[0], column) != value:
                setattr(mine[0], column, value)
                changed = True
        seen = set()
        for row in bindings:
            want = want_bindings.get(row.logical_port)
            if want is None or row.logical_port in seen:
                row.delete()
                changed = True
                continue
            seen.add(row.logical_port)
            for column, value in want.items():
                if getattr(row, column) != value:
                    setattr(row, column, value)
                    changed = True
        for vm in sorted(set(want_bindings) - seen):
            row = txn.insert(self.sb.tables["Port_Binding"])
            row.logical_port = vm
            row.chassis = self.name
            for column, value in want_bindings[vm].items():
                setattr(row, column, value)
            changed = True
        if not changed:
            txn.abort()
            return None
        return txn

    def run_once(self, now_ms):
        """One turn of the loop: read both databases, push a write along."""
        self.local.run()
        self.sb.run()
        if self._txn is not None:
            status = self._txn.commit()
            if status == idl.Transaction.INCOMPLETE:
                return
            if status not in (idl.Transaction.SUCCESS, idl.Transaction.UNCHANGED,
                              idl.Transaction.TRY_AGAIN):
                LOG.error("southbound write refused (%s): %s", status,
                          self._txn.get_error())
                self._retry_at = now_ms + RETRY_MS
            self._txn = None
        if self._retry_at is not None and now_ms < self._retry_at:
            return
        self._retry_at = None
        if self._ready():
            self._txn = self._reconcile()
            if self._txn is not None:
                self._txn.commit()

    def wait(self, poller, now_ms):
        self.local.wait(poller)
        self.sb.wait(poller)
        if self._retry_at is not None:
            poller.timer_wait(max(0, self._retry_at - now_ms))

    def close(self):
        self.local.close()
        self.sb.close()


def _sb_helper(schema):
    helper = idl.SchemaHelper(location=schema)
    helper.register_columns("Chassis", ["name", "encap_type", "encap_ip",
                                        "migration_address", "datapath_id",
                                        "tunnel_ofport", "mb_ofport",
                                        "uplink_ofport", "uplink_mac"])
    helper.register_columns("Port_Binding", ["logical_port", "chassis",
                                             "ofport", "mac"])
    return helper


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise MbxError(f"{message} (see {PROG} --help)")


def parse_args(argv):
    p = _Parser(prog=PROG, description="publish this host's chassis and port "
                "bindings in the mbx southbound database")
    p.add_argument("--local-db", default=LOCAL_DB,
                   help="this host's OVS database (default %s)" % LOCAL_DB)
    p.add_argument("--sb", default=DEFAULT_SB,
                   help="the southbound database's members (default: the default "
                   "lab's, %s)" % DEFAULT_SB)
    p.add_argument("--name", help="the host's name (default: the local "
                   "Open_vSwitch external_ids:system-id)")
    p.add_argument("--bridge", default=BRIDGE,
                   help="the integration bridge (default %s)" % BRIDGE)
    tls.add_arguments(p)
    p.add_argument("--log-file", help="log to this file instead of stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        filename=args.log_file,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S")

    def _stop(signum, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, _stop)
    try:
        tls.check_remotes(args.sb, what="southbound remote")
        tls.configure(tls.files(args), args.sb, program=PROG)
        fields = chassis_fields(read_external_ids(args.local_db), args.name)
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    LOG.info("publishing chassis %s: encap %s %s, migration address %s",
             *fields[:3], fields[3] or "-")
    agent = ChassisAgent(args.local_db, args.sb, fields, args.bridge)
    try:
        while True:
            now = ovs.timeval.msec()
            agent.run_once(now)
            poller = ovs.poller.Poller()
            agent.wait(poller, now)
            poller.block()
    except (SystemExit, KeyboardInterrupt):
        return 0
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
