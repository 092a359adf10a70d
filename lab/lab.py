"""The multi-host namespace lab: real ovsdb-server and ovs-vswitchd per host.

Layout (prefix ``mbx`` by default; every name below carries the prefix):

* ``mbx-fabric`` netns: the underlay bridge ``br-ul`` and the management bridge
  ``br-mgmt`` (address 10.201.0.1), the logical controller(s) and the central
  physical controller(s).  Nothing of the lab lives in the root namespace.
* ``mbx-db1`` .. ``mbx-db3`` netns: the database nodes, on br-mgmt at
  10.201.0.2-.4 (``--db-cluster 3``, the default; 1: one standalone node).
  Each runs one northbound and one southbound ovsdb-server member (Raft
  over ssl: on :6643 / :6644, the members' unix sockets
  ``RUNDIR/db/N/nb.sock`` / ``sb.sock`` for privileged local access, and
  the network remotes pssl:6641 / pssl:6642), each with its server
  certificate (``dbN``).  Components in the fabric (northd, central
  controllers, the lab's own clients) use the unix sockets
  (``Lab.nb_remote``, ``Lab.sb_remote``: every member's, the client follows
  the leader); the hosts' mbx-chassis, mbxd and per-host controllers use
  ``Lab.nb_ssl_remote`` / ``Lab.sb_ssl_remote`` with the host's certificate.
  OpenFlow between each host's ovs-vswitchd and the physical controllers
  is TLS too (``ovs-vsctl set-ssl`` with the host's certificate; the
  central controllers hold the ``controller`` certificate, a per-host one
  its host's).
* ``mbx-hN`` netns per host: its own ovsdb-server and ovs-vswitchd (userspace
  datapath), ``br-phy`` holding the underlay veth and the host's tunnel IP
  10.200.0.(10+N), ``br-int`` with one tunnel port ``mbx-tun``
  (remote_ip=flow, key=flow) and the middlebox port ``mbx-mb`` (internal),
  a management veth 10.201.0.(10+N) on which the host's OVSDB listens for the
  controller, and the host's middlebox daemon ``mbxd`` (``OVS_RUNDIR`` = the
  host's run directory, so ``ovs-appctl -t mbxd`` finds it there).
* ``mbx-vm-NAME`` netns per VM: ``eth0``, whose peer ``vif-...`` is a port of its
  host's br-int.  Its default route points at its switch's gateway
  (``Logical_Switch.gateway``, or the first address of the subnet).
  A VM of kind ``qemu`` is a QEMU guest instead (``lab.qemu``): the tap
  ``vif-...`` in its host's namespace is the br-int port, configured the
  same way inside the guest; ``exec``, ``spawn``, ``tcp_try``, ``vm_read``
  and ``migrate`` (a real QEMU live migration) work on both kinds.

The external network (see docs/services.md, "The external network and the
distributed gateway"):

* ``br-ext`` in the fabric netns is the external segment 203.0.113.0/24
  (MTU 1450, like the VMs).  Every host has an uplink: a veth whose host end
  ``mbx-uplink`` (MAC 02:ee:00:00:00:NN, NN = host index in hex, IPv6 off)
  is a port of its br-int with ``external_ids:mbx-role=uplink``, and whose
  other end ``ex-HOST`` sits on ``br-ext``.
* ``mbx-xr`` netns: the external router, ``ext0`` 203.0.113.1/24 with the fixed
  MAC 02:ee:ff:00:00:01 on ``br-ext``, ``inet0`` 198.51.100.1/24 on ``br-inet``
  (the "internet", also in the fabric netns), ip_forward=1.
* ``mbx-xs`` ("server on the internet", 198.51.100.10/24) and ``mbx-xc``
  ("client on the internet", 198.51.100.20/24): ``eth0`` on ``br-inet``,
  default route via 198.51.100.1.  ``Lab.ext_ns``, ``ext_exec``, ``ext_spawn``,
  ``ext_tcp_try`` and ``ext_ping`` work on the names ``xr``, ``xs``, ``xc``.
* At ``up`` the lab registers the network in the config DB:
  ``mbxctl ext-add ext 203.0.113.0/24 203.0.113.1 02:ee:ff:00:00:01``.
* Offloads (tx, tso, gso) are off on every interface of the external network.

Everything the lab creates is recorded in ``RUNDIR/state.json`` as it is
created, so ``down`` can end exactly the processes it started (by PID) and
remove exactly the namespaces it made, even after a failed ``up``.
"""

import collections
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from lab import qemu
from lab.sh import LabError, TryEach, read_pidfile, run, wait_until
from middlebox import pki
from ovsdb import server as nbserver
from ovsdb.server import pid_alive, stop as stop_pid
from ovsdb import tls
from ovsdb.api import MbxNb, MbxSb
from ovsdb.errors import MbxError
from mbxmodel.network import MIDDLEBOX_ROLE, UPLINK_ROLE
from mbxmodel.state import ACTIVE_MIGRATION
from ryu_apps import pipeline

DEFAULT_PREFIX = os.environ.get("MBX_LAB_PREFIX", "mbx")
DEFAULT_RUNDIR = os.environ.get("MBX_LAB_DIR", "/run/mbx")

UNDERLAY_PREFIX = "10.200.0."
MGMT_PREFIX = "10.201.0."
CONTROLLER_IP = MGMT_PREFIX + "1"
MGMT_BRIDGE_MAC = "02:c0:00:00:00:01"   # br-mgmt's, fixed (see _fabric_up)
OF_PORT = 6653
LOCAL_CONTROLLER_IP = "127.0.0.1"   # a host's own controller (controllers: per-host)
CONTROLLER_MODES = ("central", "per-host")
MAX_STANDBY = 9             # standby controller N listens on OF_PORT + N
NB_PORT = 6641             # the database nodes' network remotes (pssl:)
SB_PORT = 6642
NB_RAFT_PORT = 6643        # Raft between the members (ssl:)
SB_RAFT_PORT = 6644
DB_KINDS = {               # kind -> (schema name, schema file, port, raft port, global table)
    "nb": ("MBX_Northbound", nbserver.SCHEMA_PATH, NB_PORT, NB_RAFT_PORT, "NB_Global"),
    "sb": ("MBX_Southbound", nbserver.SB_SCHEMA_PATH, SB_PORT, SB_RAFT_PORT, "SB_Global"),
}
MAX_DB_NODES = 3           # 10.201.0.2 - .4
DB_CLUSTER_SIZES = (1, 3)
DEFAULT_DB_CLUSTER = 3
CONTROLLER_CERT = "controller"
VM_MTU = 1450
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
TUNNEL_PORT = "mbx-tun"
MB_PORT = pipeline.MIDDLEBOX_PORT
METRICS_PORT = 9464        # mbxd's Prometheus endpoint, on the host's management address
MIGRATION_PORT = 6650      # mbxd accepts migrated state here (TLS), same address

OFFLOADS_OFF = ["tx", "off", "tso", "off", "gso", "off"]

# What a VM is: a network namespace (the default), or a real QEMU guest in
# its host's namespace (lab.qemu).
VM_NETNS, VM_QEMU = "netns", "qemu"
VM_KINDS = (VM_NETNS, VM_QEMU)

# The external network: a segment behind every host's uplink, a router to the
# "internet", and two namespaces out there (a server and a client).
EXT_NAME = "ext"                          # its External_Network name
EXT_CIDR = "203.0.113.0/24"
EXT_GATEWAY_IP = "203.0.113.1"            # the router's address on it
EXT_GATEWAY_MAC = "02:ee:ff:00:00:01"     # configured, never resolved by mbx
EXT_MTU = VM_MTU                          # so a frame from outside still fits a tunnel
INET_MTU = 1500
INET_CIDR = "198.51.100.0/24"
INET_ROUTER_IP = "198.51.100.1"
EXT_SERVER_IP = "198.51.100.10"           # namespace "xs"
EXT_CLIENT_IP = "198.51.100.20"           # namespace "xc"
UPLINK_PORT = getattr(pipeline, "UPLINK_PORT", "mbx-uplink")
UPLINK_MAC = "02:ee:00:00:00:%02x"        # % host index
# name -> (role, interface, address/prefix, MAC, fabric bridge, fabric-side veth)
EXTERNAL = {
    "xs": ("server", "eth0", EXT_SERVER_IP + "/24", "02:ee:fe:00:00:0a", "br-inet", "xs-inet"),
    "xc": ("client", "eth0", EXT_CLIENT_IP + "/24", "02:ee:fe:00:00:14", "br-inet", "xc-inet"),
}
ROUTER = "xr"
ROUTER_IFACES = (("ext0", EXT_GATEWAY_IP + "/24", EXT_GATEWAY_MAC, "br-ext", "xr-ext"),
                 ("inet0", INET_ROUTER_IP + "/24", "02:ee:fe:00:00:01", "br-inet", "xr-inet"))
EXT_NAMES = (ROUTER,) + tuple(EXTERNAL)


# A ping from a VM: did it answer, its average round trip, and the MAC address
# the VM resolved the target to (which VM answered, when tenants share addresses).
PingResult = collections.namedtuple("PingResult", "ok rtt_ms mac")


def vif_name(vm):
    """Host-side veth name of a VM (<= 15 characters, stable per VM name)."""
    name = "vif-" + vm
    if len(name) <= 15:
        return name
    return "vif-" + hashlib.sha1(vm.encode()).hexdigest()[:11]


def _is_controller_key(key):
    return key == "controller" or key.endswith("/controller") or \
        key.startswith("controller-s")


def _db_kind(kind):
    if kind not in DB_KINDS:
        raise LabError("database kind: nb or sb, not %r" % (kind,))
    return kind


def _has_connections(kind):
    """Whether database ``kind``'s schema has Connection rows (the network
    remote then comes from ``GLOBAL.connections``)."""
    _name, schema, _port, _raft, table = DB_KINDS[kind]
    with open(schema) as f:
        tables = json.load(f)["tables"]
    return "Connection" in tables and "connections" in tables[table]["columns"]


_SAVE_LOCK = threading.Lock()


class Lab:
    def __init__(self, prefix=DEFAULT_PREFIX, rundir=DEFAULT_RUNDIR):
        self.prefix = prefix
        self.rundir = rundir
        self.state_path = os.path.join(rundir, "state.json")
        self.state = self._load()
        self._nb = None
        self._sb = None

    # ----------------------------------------------------------- state file
    def _load(self):
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"prefix": self.prefix, "netns": [], "pids": {},
                    "hosts": {}, "vms": {}, "external": {}, "encap": "vxlan"}

    def _save(self):
        with _SAVE_LOCK:         # two migrations at once run in two threads
            os.makedirs(self.rundir, exist_ok=True)
            tmp = self.state_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.state, f, indent=1, sort_keys=True)
            os.replace(tmp, self.state_path)

    @property
    def is_up(self):
        return bool(self.state["netns"])

    def _add_netns(self, ns):
        run(["ip", "netns", "add", ns])
        self.state["netns"].append(ns)
        self._save()
        run(["ip", "link", "set", "lo", "up"], netns=ns)

    def _record_pid(self, key, pid):
        self.state["pids"][key] = pid
        self._save()

    # ------------------------------------------------------------ addresses
    @property
    def fabric_ns(self):
        return "%s-fabric" % self.prefix

    def host_ns(self, host):
        return "%s-%s" % (self.prefix, host)

    def vm_ns(self, vm):
        return "%s-vm-%s" % (self.prefix, vm)

    def ext_ns(self, name):
        """Namespace of an external machine: ``xr`` (router), ``xs`` (server on
        the internet, 198.51.100.10), ``xc`` (client on the internet, .20)."""
        if name not in EXT_NAMES:
            raise LabError("unknown external namespace '%s' (names: %s)"
                           % (name, ", ".join(EXT_NAMES)))
        return "%s-%s" % (self.prefix, name)

    @property
    def external(self):
        """{name: {"netns", "role", "ifaces": {iface: {"ip", "mac"}}}} of the
        external namespaces this lab built (empty while it is down)."""
        return self.state.get("external", {})

    def uplink_mac(self, host):
        return self.state["hosts"][host]["uplink_mac"]

    def host_dir(self, host):
        return os.path.join(self.rundir, "hosts", host)

    # ------------------------------------------------------ database nodes
    @property
    def db_cluster(self):
        """Database nodes: 3 (a Raft cluster of each database) or 1 (one
        standalone node)."""
        return self.state.get("db_cluster", DEFAULT_DB_CLUSTER)

    def db_members(self, kind):
        """The members (node numbers 1..N) of database ``kind`` ("nb"/"sb")."""
        _db_kind(kind)
        return list(range(1, self.db_cluster + 1))

    def db_node_ns(self, n):
        return "%s-db%d" % (self.prefix, n)

    @staticmethod
    def db_node_ip(n):
        return MGMT_PREFIX + str(1 + n)

    @staticmethod
    def db_cert(n):
        """The server certificate's name (mbx-pki, role server) of node ``n``."""
        return "db%d" % n

    def db_dir(self, n):
        return os.path.join(self.rundir, "db", str(n))

    def db_file(self, kind, n, suffix):
        """RUNDIR/db/N/KIND.SUFFIX: db, sock, ctl, pid, log."""
        return os.path.join(self.db_dir(n), "%s.%s" % (_db_kind(kind), suffix))

    @staticmethod
    def db_key(kind, n):
        """The pid key of a member's ovsdb-server."""
        return "db%d/%s-ovsdb-server" % (n, kind)

    def _db_remote(self, kind):
        return ",".join("unix:" + self.db_file(kind, n, "sock")
                        for n in self.db_members(kind))

    def _db_ssl_remote(self, kind):
        port = DB_KINDS[kind][2]
        return ",".join("ssl:%s:%d" % (self.db_node_ip(n), port)
                        for n in self.db_members(kind))

    @property
    def nb_remote(self):
        """The northbound members' unix sockets (privileged access)."""
        return self._db_remote("nb")

    @property
    def sb_remote(self):
        """The southbound members' unix sockets (privileged access)."""
        return self._db_remote("sb")

    @property
    def nb_ssl_remote(self):
        """The northbound members' network remotes (ssl:IP:6641,...)."""
        return self._db_ssl_remote("nb")

    @property
    def sb_ssl_remote(self):
        """The southbound members' network remotes (ssl:IP:6642,...)."""
        return self._db_ssl_remote("sb")

    def tls_files(self, name):
        """``ovsdb.tls.Files`` of principal ``name`` (a host, ``controller``)."""
        return tls.from_pki(self.pki_dir, name)

    def tls_args(self, name):
        files = self.tls_files(name)
        return ["--private-key", files.private_key, "--certificate", files.certificate,
                "--ca-cert", files.ca_cert]

    def db_status(self, kind, n):
        """``cluster/status`` of member ``n`` as {field: value} ({} if it does
        not answer; {"Role": "standalone"} for a standalone node)."""
        if self.db_cluster == 1:
            return {"Role": "standalone"} if self.db_key(kind, n) in self.state["pids"] \
                else {}
        proc = subprocess.run(["ovs-appctl", "--timeout=2", "-t", self.db_file(kind, n, "ctl"),
                               "cluster/status", DB_KINDS[kind][0]],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {}
        out = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(" ") and key not in out:
                out[key.strip()] = value.strip()
        return out

    def db_leader(self, kind):
        """The member leading database ``kind`` (1 for a standalone node),
        or None while there is none."""
        for n in self.db_members(kind):
            if self.db_key(kind, n) not in self.state["pids"]:
                continue
            role = self.db_status(kind, n).get("Role")
            if role in ("leader", "standalone"):
                return n
        return None

    def db_kill(self, kind, member, sig=signal.SIGKILL):
        """End member ``member`` of database ``kind`` with ``sig``; returns
        once it is gone."""
        key = self.db_key(kind, member)
        if key not in self.state["pids"]:
            raise LabError("%s member %d is not running" % (kind, member))
        self._kill(key, sig, "%s member %d, pid" % (kind, member))

    def db_start(self, kind, member, wait=True):
        """Start member ``member`` of database ``kind`` from its file (a
        cluster member rejoins its cluster); with ``wait``, returns once it
        is a cluster member again (standalone: once it serves)."""
        key = self.db_key(kind, member)
        if key in self.state["pids"] and pid_alive(self.state["pids"][key]):
            raise LabError("%s member %d is running (pid %d)"
                           % (kind, member, self.state["pids"][key]))
        name, _schema, port, _raft, table = DB_KINDS[kind]
        files = self.tls_files(self.db_cert(member))
        ip = self.db_node_ip(member)
        f = lambda suffix: self.db_file(kind, member, suffix)
        for stale in (f("sock"), f("ctl")):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = ["ovsdb-server", f("db"), "--remote=punix:" + f("sock"),
                "--private-key=" + files.private_key,
                "--certificate=" + files.certificate,
                "--ca-cert=" + files.ca_cert,
                "--pidfile=" + f("pid"), "--unixctl=" + f("ctl"),
                "--log-file=" + f("log"), "--detach", "--no-chdir"]
        if _has_connections(kind):
            argv.append("--remote=db:%s,%s,connections" % (name, table))
        else:
            # Until the schema has Connection rows: the network remote here.
            argv.append("--remote=pssl:%d:%s" % (port, ip))
        run(argv, netns=self.db_node_ns(member))
        self._record_pid(key, read_pidfile(f("pid")))
        if wait:
            wait_until(lambda: os.path.exists(f("sock")), 10,
                       what="%s member %d's socket" % (kind, member))
            if self.db_cluster > 1:
                wait_until(lambda: self.db_status(kind, member).get("Status")
                           == "cluster member", 30,
                           what="%s member %d to join its cluster" % (kind, member))
        return self.state["pids"][key]

    def _db_up(self, size, log=print):
        """The database nodes and their members (see the module's doc)."""
        self.state["db_cluster"] = size
        self._save()
        fab = self.fabric_ns
        for n in range(1, size + 1):
            ns = self.db_node_ns(n)
            self._add_netns(ns)
            outer = "mg-db%d" % n
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "mgmt0",
                 "netns", ns], netns=fab)
            run(["ip", "link", "set", outer, "master", "br-mgmt", "up"], netns=fab)
            run(["ip", "addr", "add", self.db_node_ip(n) + "/24", "dev", "mgmt0"], netns=ns)
            run(["ip", "link", "set", "mgmt0", "up"], netns=ns)
            d = self.db_dir(n)
            if os.path.isdir(d):
                shutil.rmtree(d)        # a lab starts from empty databases
            os.makedirs(d)
        for kind, (name, schema, _port, raft, _table) in DB_KINDS.items():
            first = "ssl:%s:%d" % (self.db_node_ip(1), raft)
            for n in range(1, size + 1):
                db = self.db_file(kind, n, "db")
                if size == 1:
                    run(["ovsdb-tool", "create", db, schema])
                elif n == 1:
                    run(["ovsdb-tool", "create-cluster", db, schema, first])
                else:
                    run(["ovsdb-tool", "join-cluster", db, name,
                         "ssl:%s:%d" % (self.db_node_ip(n), raft), first])
        for kind in DB_KINDS:
            for n in range(1, size + 1):
                self.db_start(kind, n, wait=False)
        for kind in DB_KINDS:
            for n in range(1, size + 1):
                wait_until(lambda: os.path.exists(self.db_file(kind, n, "sock")), 10,
                           what="%s member %d's socket" % (kind, n))
            if size > 1:
                wait_until(lambda: all(self.db_status(kind, n).get("Status")
                                       == "cluster member" for n in range(1, size + 1))
                           and self.db_leader(kind), 30,
                           what="the %s cluster to form" % kind)
        self.nb().ensure_nb_global().execute(check_error=True)
        self._connections_up()

    def _connections_up(self):
        """The network remotes as Connection rows (ovsdb.rbac), once the
        schemas have them; before that each member has its pssl: remote on
        the command line."""
        try:
            from ovsdb import rbac
        except ImportError:
            return
        for kind in DB_KINDS:
            if _has_connections(kind):
                rbac.install(self._db_remote(kind), kind=kind,
                             target="pssl:%d" % DB_KINDS[kind][2])

    def host_db(self, host):
        return "unix:%s/db.sock" % self.host_dir(host)

    def vsctl(self, host, *args):
        return run(["ovs-vsctl", "--timeout=10", "--db=%s" % self.host_db(host)]
                   + list(args))

    def ofctl(self, host, *args):
        mgmt = "unix:%s/br-int.mgmt" % self.host_dir(host)
        return run(["ovs-ofctl", "-O", "OpenFlow13"] + list(args[:1]) + [mgmt]
                   + list(args[1:]))

    def appctl(self, host, *args):
        ctl = "%s/ovs-vswitchd.ctl" % self.host_dir(host)
        return run(["ovs-appctl", "-t", ctl] + list(args))

    def nb(self):
        """The config database (MbxNb), over the members' unix sockets."""
        if self._nb is None:
            self._nb = MbxNb.connect(self.nb_remote)
        return self._nb

    def sb(self):
        """The southbound database (MbxSb): hosts, VM locations, slices,
        migrations (over the members' unix sockets)."""
        if self._sb is None:
            self._sb = MbxSb.connect(self.sb_remote, nb=self.nb())
        return self._sb

    def close(self):
        if self._sb is not None:
            self._sb.close()
            self._sb = None
        if self._nb is not None:
            self._nb.close()
            self._nb = None

    # ------------------------------------------------------------------ up
    def up(self, hosts, encap="vxlan", log=print, controllers="central", standby=0,
           db_cluster=DEFAULT_DB_CLUSTER):
        """``controllers``: "central", one physical controller for every
        host (in the fabric), or "per-host", one in each host's namespace
        preferring that host.  ``standby``: that many more controller
        instances in the fabric (``standby_key``), each standing by for
        every host; every br-int connects to all of them, and the
        southbound locks decide which one serves it (``ovsdb.locks``).
        ``db_cluster``: 3 database nodes, each database a Raft cluster of
        three members, or 1 standalone node."""
        if controllers not in CONTROLLER_MODES:
            raise LabError("controllers: %s, not %r" % (" or ".join(CONTROLLER_MODES),
                                                        controllers))
        if not 0 <= standby <= MAX_STANDBY:
            raise LabError("standby: 0 to %d controller instances, not %d"
                           % (MAX_STANDBY, standby))
        if db_cluster not in DB_CLUSTER_SIZES:
            raise LabError("db-cluster: %s database nodes, not %r"
                           % (" or ".join(map(str, DB_CLUSTER_SIZES)), db_cluster))
        if self.is_up:
            raise LabError("lab '%s' is already up (%s); run 'mbx-lab down' first"
                           % (self.prefix, self.state_path))
        if not 1 <= len(hosts) <= 200:
            raise LabError("a lab has 1 to 200 hosts, not %d" % len(hosts))
        os.makedirs(self.rundir, exist_ok=True)
        self.state["encap"] = encap
        self.state["controllers"] = controllers
        self.state["standby"] = standby
        self._save()
        t0 = time.monotonic()
        self._pki_up(hosts, db_cluster)
        self._fabric_up()
        self._external_up()
        self._db_up(db_cluster, log)
        self._external_register(log)
        self._northd_up()
        if controllers == "central":
            self._controller_up()
        for index, host in enumerate(hosts, start=1):
            self._host_up(host, index, encap)
        wait_until(lambda: self._hosts_connected(hosts), 30,
                   what="hosts %s to connect to the controller" % ", ".join(hosts))
        # The standbys start once the first controllers serve every host, so
        # they stand by (which instance serves a host is whichever asked for
        # its lock first).
        for n in range(1, standby + 1):
            self._controller_up(standby=n)
        self._save()
        wait_until(self.controllers_connected, 30,
                   what="every br-int to connect to every controller")
        log("lab up: %d hosts, %s in %.1fs (config DB %s)"
            % (len(hosts), "%d database nodes" % db_cluster if db_cluster > 1
               else "1 standalone database node", time.monotonic() - t0, self.nb_remote))

    @property
    def pki_dir(self):
        return os.path.join(self.rundir, "pki")

    def _pki_up(self, hosts, db_cluster):
        """The lab's own CA; a certificate per host (the databases, OpenFlow,
        the daemons' migration channel), per database node (role server)
        and one for the central controllers (role controller)."""
        pki.init_ca(self.pki_dir, name="mbx lab %s CA" % self.prefix)
        for host in hosts:
            pki.issue_host(self.pki_dir, host)
        for n in range(1, db_cluster + 1):
            pki.issue(self.pki_dir, self.db_cert(n), "server")
        pki.issue(self.pki_dir, CONTROLLER_CERT, "controller")

    def _fabric_up(self):
        ns = self.fabric_ns
        self._add_netns(ns)
        for br in ("br-ul", "br-mgmt"):
            run(["ip", "link", "add", br, "type", "bridge"], netns=ns)
            run(["ip", "link", "set", br, "up"], netns=ns)
        # A fixed MAC: a Linux bridge otherwise takes its lowest port MAC,
        # which changes as hosts' veths join, and a host that resolved the
        # controller's address before then sends to a stale MAC (its
        # connections stall until its neighbour entry is renewed).
        run(["ip", "link", "set", "br-mgmt", "address", MGMT_BRIDGE_MAC], netns=ns)
        run(["ip", "addr", "add", CONTROLLER_IP + "/24", "dev", "br-mgmt"], netns=ns)

    # ------------------------------------------------------ external network
    def _quiet_netns(self, ns):
        """No IPv6 at all in a namespace of the external network: nothing but
        the traffic a test makes reaches the uplinks."""
        for conf in ("all", "default"):
            run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % conf], netns=ns)

    def _ext_veth(self, ns, iface, addr, mac, bridge, outer, mtu):
        """A veth from the fabric's ``bridge`` (end ``outer``) into ``ns``
        (end ``iface``: ``mac``, ``addr`` if any, IPv6 off), offloads off on
        both ends."""
        fab = self.fabric_ns
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", iface,
             "netns", ns], netns=fab)
        run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % outer], netns=fab)
        run(["ethtool", "-K", outer] + OFFLOADS_OFF, netns=fab)
        run(["ip", "link", "set", outer, "mtu", str(mtu), "master", bridge, "up"],
            netns=fab)
        run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % iface], netns=ns)
        run(["ip", "link", "set", iface, "address", mac, "mtu", str(mtu)], netns=ns)
        run(["ethtool", "-K", iface] + OFFLOADS_OFF, netns=ns)
        if addr:
            run(["ip", "addr", "add", addr, "dev", iface], netns=ns)
        run(["ip", "link", "set", iface, "up"], netns=ns)

    def _external_up(self):
        """The external segment, the router and the internet with its server
        and client (the hosts' uplinks come with each host)."""
        fab = self.fabric_ns
        for br in ("br-ext", "br-inet"):
            run(["ip", "link", "add", br, "type", "bridge"], netns=fab)
            run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % br], netns=fab)
            run(["ip", "link", "set", br, "up"], netns=fab)
        ext = self.state.setdefault("external", {})
        ns = self.ext_ns(ROUTER)
        self._add_netns(ns)
        ext[ROUTER] = {"netns": ns, "role": "router", "ifaces": {}}
        self._quiet_netns(ns)
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=ns)
        for iface, addr, mac, bridge, outer in ROUTER_IFACES:
            self._ext_veth(ns, iface, addr, mac, bridge, outer,
                           EXT_MTU if bridge == "br-ext" else INET_MTU)
            ext[ROUTER]["ifaces"][iface] = {"ip": addr, "mac": mac}
        self._save()
        for name, (role, iface, addr, mac, bridge, outer) in EXTERNAL.items():
            ns = self.ext_ns(name)
            self._add_netns(ns)
            ext[name] = {"netns": ns, "role": role,
                         "ifaces": {iface: {"ip": addr, "mac": mac}}}
            self._quiet_netns(ns)
            self._ext_veth(ns, iface, addr, mac, bridge, outer, INET_MTU)
            run(["ip", "route", "add", "default", "via", INET_ROUTER_IP, "dev", iface],
                netns=ns)
            self._save()

    def _external_register(self, log):
        """The external network in the config DB, as an operator would add it."""
        proc = self.mbxctl("ext-add", EXT_NAME, EXT_CIDR, EXT_GATEWAY_IP, EXT_GATEWAY_MAC,
                           "--may-exist")
        if proc.returncode == 0:
            self.state["ext_registered"] = True
            self._save()
            return
        raise LabError("mbxctl ext-add %s: %s" % (EXT_NAME, proc.stderr.strip()))

    def _uplink_up(self, host, index):
        """The host's uplink: veth ``mbx-uplink`` (a br-int port) <-> ``ex-HOST``
        on the fabric's br-ext."""
        mac = UPLINK_MAC % index
        self._ext_veth(self.host_ns(host), UPLINK_PORT, None, mac, "br-ext",
                       ("ex-%s" % host)[:15], EXT_MTU)
        self.vsctl(host, "add-port", "br-int", UPLINK_PORT, "--", "set", "interface",
                   UPLINK_PORT, "external_ids:%s=%s" % UPLINK_ROLE)
        self.state["hosts"][host]["uplink_mac"] = mac
        self._save()

    @property
    def controllers(self):
        return self.state.get("controllers", "central")

    # The logical controller instances (pid keys): the first to get the
    # southbound lock mbx_northd is active, the other stands by.
    NORTHD_KEYS = ("northd", "northd-s1")

    def _northd_up(self, key=None):
        """The logical controllers (``key`` None: every one of
        NORTHD_KEYS, in order, so "northd" is active first), next to the
        databases; each with its log RUNDIR/KEY.log and control socket
        RUNDIR/KEY.ctl."""
        for key in self.NORTHD_KEYS if key is None else (key,):
            logf = self.northd_log(key)
            cmd = ["ip", "netns", "exec", self.fabric_ns, sys.executable, "-m",
                   "ryu_apps.northd_main", "--db", self.nb_remote, "--sb", self.sb_remote,
                   "--log-file", logf, "--unixctl", self._northd_ctl(key)]
            with open(logf + ".out", "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            self._record_pid(key, proc.pid)

    def northd_log(self, key):
        return os.path.join(self.rundir, key + ".log")

    def _northd_ctl(self, key):
        return os.path.join(self.rundir, key + ".ctl")

    def northd_status(self, key):
        """``ovs-appctl -t RUNDIR/KEY.ctl status`` of a logical controller
        ("" if it does not answer)."""
        if key not in self.state["pids"]:
            return ""
        return run(["ovs-appctl", "--timeout=5", "-t", self._northd_ctl(key), "status"],
                   check=False, timeout=10)

    def northd_active(self):
        """The pid key of the logical controller that says it is active
        (holds the lock), or None."""
        for key in self.NORTHD_KEYS:
            if self.northd_status(key).startswith("Status: active"):
                return key
        return None

    def northd_kill(self, key, sig=signal.SIGKILL):
        """End one logical controller (by its PID) with ``sig``."""
        self._kill(key, sig, "mbx-northd")

    def northd_start(self, key):
        """Start the logical controller ``key`` again (it stands by if
        another one holds the lock)."""
        if key in self.state["pids"]:
            raise LabError("%s is running (pid %d)" % (key, self.state["pids"][key]))
        self._northd_up(key)

    @property
    def standby(self):
        return self.state.get("standby", 0)

    @staticmethod
    def standby_key(n):
        """The pid key (and name) of standby controller ``n`` (1, 2, ...)."""
        return "controller-s%d" % n

    def controller_keys(self):
        """The pid keys of the running physical controllers: "controller"
        (central), "HOST/controller" (per-host), "controller-sN" (standby)."""
        return [k for k in self.state["pids"] if _is_controller_key(k)]

    def controller_addresses(self):
        """The OpenFlow targets every br-int connects to (TLS)."""
        first = CONTROLLER_IP if self.controllers == "central" else LOCAL_CONTROLLER_IP
        return ["ssl:%s:%d" % (first, OF_PORT)] + [
            "ssl:%s:%d" % (CONTROLLER_IP, OF_PORT + n) for n in range(1, self.standby + 1)]

    def _controller_up(self, host=None, standby=0):
        """A physical controller; it takes its settings from an os-ken config
        file's [mbx] section, as a deployment's would.  ``host`` None: in
        the fabric, the central one (``standby`` 0: named "central") or
        standby controller ``standby`` (on OF_PORT + ``standby``); both
        stand by for every host.  Else the one in ``host``'s namespace,
        preferring that host (its switch connects to it over the
        namespace's loopback)."""
        key = ("controller" if not standby else self.standby_key(standby)) \
            if host is None else "%s/controller" % host
        where = self.rundir if host is None else self.host_dir(host)
        stem = "controller" if host is not None or not standby else key
        logf = os.path.join(where, stem + ".log")
        conf = os.path.join(where, stem + ".conf")
        # In the fabric: the members' unix sockets; on a host: ssl with the
        # host's certificate, which also serves its OpenFlow listener.
        if host is None:
            nb, sb, cert = self.nb_remote, self.sb_remote, CONTROLLER_CERT
        else:
            nb, sb, cert = self.nb_ssl_remote, self.sb_ssl_remote, host
        files = self.tls_files(cert)
        with open(conf, "w") as f:
            f.write("[mbx]\nnb_connection = %s\nsb_connection = %s\n" % (nb, sb))
            if host is not None:
                f.write("private_key = %s\ncertificate = %s\nca_cert = %s\n" % files)
            if host is not None:
                f.write("chassis = %s\nname = %s-local\n" % (host, host))
            else:
                f.write("name = %s\n" % ("central" if not standby else key))
        ns = self.fabric_ns if host is None else self.host_ns(host)
        listen = CONTROLLER_IP if host is None else LOCAL_CONTROLLER_IP
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m",
               "ryu_apps.main", "--config-file", conf,
               "--ofp-listen-host", listen,
               "--ofp-port", str(OF_PORT + standby),
               "--ctl-privkey", files.private_key, "--ctl-cert", files.certificate,
               "--ca-certs", files.ca_cert, "--log-file", logf]
        with open(logf + ".out", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._record_pid(key, proc.pid)
        return proc.pid

    def controllers_connected(self):
        """Every host's br-int has an OpenFlow connection to every
        controller instance."""
        for host in self.state["hosts"]:
            out = self.vsctl(host, "--format=csv", "--data=bare", "--no-headings",
                             "--columns=is_connected", "list", "Controller")
            if out.split() != ["true"] * len(self.controller_addresses()):
                return False
        return True

    def controller_log(self, key):
        """The log file of the controller with pid key ``key``."""
        if key.endswith("/controller"):
            return os.path.join(self.host_dir(key.split("/")[0]), "controller.log")
        return os.path.join(self.rundir, key + ".log")

    def controller_name(self, key):
        """What the controller with pid key ``key`` writes into
        ``Chassis_Private.controller``."""
        if key.endswith("/controller"):
            return "%s-local" % key.split("/")[0]
        return "central" if key == "controller" else key

    def controller_key(self, name):
        """The pid key of the running physical controller that writes
        ``name`` into ``Chassis_Private.controller``."""
        return next(k for k in self.controller_keys() if self.controller_name(k) == name)

    def _kill(self, key, sig, what):
        """Signal the process recorded under pid key ``key`` (forgetting it)
        and return once it is gone."""
        pid = self.state["pids"].pop(key)
        self._save()
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        wait_until(lambda: not pid_alive(pid), 10, what="%s %d to die" % (what, pid))

    def serving(self):
        """{host: the physical controller serving it (its Chassis_Private
        row's ``controller``), None while not connected}.  Read with
        ovsdb-client from the first southbound member that answers, so it
        may run in a thread beside other lab calls and during a leader
        change."""
        query = json.dumps(["MBX_Southbound", {
            "op": "select", "table": "Chassis_Private", "where": [],
            "columns": ["name", "controller", "connected"]}])
        errors = []
        for member in self.sb_remote.split(","):
            proc = subprocess.run(["ovsdb-client", "--timeout=5", "query", member, query],
                                  capture_output=True, text=True, timeout=10)
            if proc.returncode == 0:
                rows = json.loads(proc.stdout)[0]["rows"]
                return {r["name"]: r["controller"] if r["connected"] is True else None
                        for r in rows}
            errors.append(proc.stderr.strip())
        raise LabError("no southbound member answered: %s" % "; ".join(errors))

    def controller_kill(self, key, sig=signal.SIGKILL):
        """End one physical controller (by its PID) with ``sig``."""
        self._kill(key, sig, "controller")

    def controller_start(self, key):
        """Start the physical controller with pid key ``key`` again."""
        if key in self.state["pids"]:
            raise LabError("controller %s is running (pid %d)" % (key, self.state["pids"][key]))
        if key.endswith("/controller"):
            pid = self._controller_up(key.split("/")[0])
        elif key == "controller":
            pid = self._controller_up()
        else:
            pid = self._controller_up(standby=int(key[len("controller-s"):]))
        self._save()
        return pid

    def controllers_stop(self):
        """End the physical controller processes; returns their pid keys."""
        keys = self.controller_keys()
        for key in keys:
            stop_pid(self.state["pids"].pop(key))
        self._save()
        return keys

    def controller_restart(self):
        """End the physical controller processes and start new ones (flows
        stay on the switches: br-int is fail-mode secure)."""
        for key in self.controllers_stop():
            self.controller_start(key)

    def _host_up(self, host, index, encap):
        ns = self.host_ns(host)
        hdir = self.host_dir(host)
        os.makedirs(hdir, exist_ok=True)
        ul_ip = UNDERLAY_PREFIX + str(10 + index)
        mgmt_ip = MGMT_PREFIX + str(10 + index)
        self.state["hosts"][host] = {"index": index, "netns": ns,
                                     "encap_ip": ul_ip, "mgmt_ip": mgmt_ip}
        self._add_netns(ns)
        fab = self.fabric_ns
        for kind, bridge in (("ul", "br-ul"), ("mg", "br-mgmt")):
            outer = "%s-%s" % (kind, host)[:15]
            inner = "ul0" if kind == "ul" else "mgmt0"
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name",
                 inner, "netns", ns], netns=fab)
            run(["ip", "link", "set", outer, "master", bridge, "up"], netns=fab)
            run(["ip", "link", "set", inner, "up"], netns=ns)
        run(["ethtool", "-K", "ul0"] + OFFLOADS_OFF, netns=ns)
        run(["ip", "addr", "add", mgmt_ip + "/24", "dev", "mgmt0"], netns=ns)

        db = os.path.join(hdir, "conf.db")
        if os.path.exists(db):
            os.unlink(db)
        run(["ovsdb-tool", "create", db, VSWITCH_SCHEMA])
        self._host_ovsdb_start(host)
        self.vsctl(host, "--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   "external_ids:system-id=%s" % host,
                   "external_ids:mbx-encap-ip=%s" % ul_ip,
                   "external_ids:mbx-encap-type=%s" % encap,
                   "external_ids:mbx-migration-address=ssl:%s:%d"
                   % (mgmt_ip, MIGRATION_PORT))
        self._vswitchd_start(host)
        self.vsctl(host, "add-br", "br-phy", "--", "set", "bridge", "br-phy",
                   "datapath_type=netdev", "--", "add-port", "br-phy", "ul0")
        self.vsctl(host, "add-br", "br-int", "--", "set", "bridge", "br-int",
                   "datapath_type=netdev", "fail_mode=secure",
                   "protocols=OpenFlow13",
                   "other-config:datapath-id=%016x" % index,
                   "other-config:disable-in-band=true",
                   "--", "add-port", "br-int", TUNNEL_PORT,
                   "--", "set", "interface", TUNNEL_PORT, "type=%s" % encap,
                   "options:remote_ip=flow", "options:key=flow")
        if self.controllers == "per-host":
            self._controller_up(host)
        # OpenFlow over TLS with the host's certificate.
        self.vsctl(host, "set-ssl", *self.tls_files(host))
        # One Controller row per controller instance, all out-of-band.
        ctl_args, ids = [], []
        for i, target in enumerate(self.controller_addresses()):
            ids.append("@c%d" % i)
            ctl_args += ["--", "--id=@c%d" % i, "create", "Controller",
                         "target=\"%s\"" % target, "connection_mode=out-of-band",
                         # back within a second when a controller restarts
                         "max_backoff=1000"]
        self.vsctl(host, *ctl_args[1:], "--", "set", "bridge", "br-int",
                   "controller=[%s]" % ",".join(ids))
        # The middlebox port: mbxd reads and writes slice-tagged frames here.
        self.vsctl(host, "add-port", "br-int", MB_PORT, "--", "set", "interface",
                   MB_PORT, "type=internal",
                   "external_ids:%s=%s" % MIDDLEBOX_ROLE)
        self._host_links_up(host)
        self._uplink_up(host, index)
        # The chassis agent registers the host (its Chassis row, from its own
        # OVSDB's external_ids) as it starts, as a host agent does at boot.
        self.chassis_start(host)
        self.mbxd_start(host)
        self._save()

    def _host_ovs_start(self, host, program, *args):
        """Start ``program`` (ovsdb-server or ovs-vswitchd) in the host's
        namespace with its private run directory; returns its pid."""
        hdir = self.host_dir(host)
        env = {"OVS_RUNDIR": hdir, "OVS_LOGDIR": hdir, "OVS_DBDIR": hdir}
        path = lambda suffix: "%s/%s.%s" % (hdir, program, suffix)
        run([program] + list(args) + [
            "--pidfile=" + path("pid"), "--unixctl=" + path("ctl"),
            "--log-file=" + path("log"), "--detach", "--no-chdir"],
            netns=self.host_ns(host), env=env)
        # --detach returns once the daemon wrote its pidfile.
        key = "%s/%s" % (host, program)
        self._record_pid(key, read_pidfile(path("pid")))
        return self.state["pids"][key]

    def _vswitchd_start(self, host):
        return self._host_ovs_start(host, "ovs-vswitchd", self.host_db(host))

    def _host_ovsdb_start(self, host):
        """The host's own OVSDB: local only (no network remote; nothing
        outside the host uses it)."""
        hdir = self.host_dir(host)
        return self._host_ovs_start(host, "ovsdb-server", os.path.join(hdir, "conf.db"),
                                    "--remote=punix:%s/db.sock" % hdir)

    def host_ovsdb_restart(self, host, sig=signal.SIGKILL):
        """End the host's ovsdb-server with ``sig`` and start it again from
        its database file, as ``up`` did; returns the new pid."""
        if host not in self.state["hosts"]:
            raise LabError("unknown host '%s'" % host)
        self._kill("%s/ovsdb-server" % host, sig, "ovsdb-server")
        return self._host_ovsdb_start(host)

    def _host_links_up(self, host):
        """The host's network configuration of the switch's internal ports,
        as at boot and again after ovs-vswitchd restarts (it creates them
        anew): br-phy holds the tunnel address; the middlebox port has no
        IPv6 and is up."""
        ns = self.host_ns(host)
        run(["ip", "addr", "replace", self.state["hosts"][host]["encap_ip"] + "/24",
             "dev", "br-phy"], netns=ns)
        run(["ip", "link", "set", "br-phy", "up"], netns=ns)
        run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % MB_PORT], netns=ns)
        run(["ip", "link", "set", MB_PORT, "up"], netns=ns)

    def vswitchd_restart(self, host, sig=signal.SIGKILL):
        """End the host's ovs-vswitchd with ``sig`` (SIGKILL: a crash;
        SIGTERM: a stop; None: ``ovs-appctl exit --cleanup``, which also
        deletes its internal ports, so they come back as new interfaces)
        and start it again the way ``up`` started it, then configure its
        internal ports as at boot (``_host_links_up``).  Its flows and
        conntrack are gone; the controllers and mbxd must put back what
        they need by themselves.  Returns the new pid."""
        if host not in self.state["hosts"]:
            raise LabError("unknown host '%s'" % host)
        if sig is None:
            pid = self.state["pids"]["%s/ovs-vswitchd" % host]
            self.appctl(host, "exit", "--cleanup")
            wait_until(lambda: not pid_alive(pid), 10, what="ovs-vswitchd %d to exit" % pid)
            self.forget_pid(pid)
        else:
            self._kill("%s/ovs-vswitchd" % host, sig, "ovs-vswitchd")
        pid = self._vswitchd_start(host)
        ns = self.host_ns(host)
        wait_until(lambda: all(run(["ip", "link", "show", dev], netns=ns, check=False)
                               for dev in ("br-phy", MB_PORT)), 10,
                   what="%s's ovs-vswitchd to create its ports" % host)
        self._host_links_up(host)
        return pid

    def chassis_start(self, host):
        """Start the host's chassis agent: it publishes the host's chassis
        (tunnel endpoint, migration address, br-int ports) and VM port
        bindings in the southbound database (over the management network,
        like a real host)."""
        hdir = self.host_dir(host)
        logf = os.path.join(hdir, "chassis.log")
        cmd = ["ip", "netns", "exec", self.host_ns(host), sys.executable, "-m",
               "hypervisor.chassis", "--local-db", self.host_db(host),
               "--sb", self.sb_ssl_remote] + self.tls_args(host) + [
               "--log-file", logf]
        with open(logf + ".out", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._record_pid("%s/chassis" % host, proc.pid)
        return proc.pid

    def chassis_stop(self, host):
        pid = self.state["pids"].pop("%s/chassis" % host, None)
        self._save()
        if pid is not None:
            stop_pid(pid)

    # ----------------------------------------------------------------- mbxd
    def mbxd_start(self, host, extra_args=()):
        """Start the host's middlebox daemon (it reaches both databases over
        the management network, like a real host)."""
        hdir = self.host_dir(host)
        logf = os.path.join(hdir, "mbxd.log")
        cmd = ["ip", "netns", "exec", self.host_ns(host), sys.executable, "-m",
               "middlebox.main", "--host", host,
               "--db", self.nb_ssl_remote, "--sb", self.sb_ssl_remote,
               "--bridge", "br-int", "--port", MB_PORT,
               "--metrics", "%s:%d" % (self.state["hosts"][host]["mgmt_ip"], METRICS_PORT),
               "--pki-dir", self.pki_dir,
               "--migration-listen", "%s:%d" % (self.state["hosts"][host]["mgmt_ip"],
                                                MIGRATION_PORT),
               "--log-file", logf] + list(extra_args)
        env = dict(os.environ, OVS_RUNDIR=hdir)
        with open(logf + ".out", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self._record_pid("%s/mbxd" % host, proc.pid)
        return proc.pid

    def mbxd_stop(self, host, sig=signal.SIGTERM):
        """End the host's mbxd (SIGKILL: as if it crashed)."""
        pid = self.state["pids"].pop("%s/mbxd" % host, None)
        self._save()
        if pid is None:
            return
        if sig == signal.SIGKILL:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(lambda: not pid_alive(pid), 10, what="mbxd %d to die" % pid)
        else:
            stop_pid(pid)

    def mbxctl(self, *args, timeout=60):
        """``mbxctl ARGS`` against the lab's config DB; the CompletedProcess."""
        return subprocess.run([sys.executable, "-m", "ovsdb.ctl", "--db", self.nb_remote,
                               "--sb", self.sb_remote] + list(args),
                              capture_output=True, text=True, timeout=timeout)

    def mbxd_stats(self, host):
        """The integer counters of ``ovs-appctl -t mbxd stats`` on ``host``."""
        text = self.mbxd_appctl(host, "stats")
        return {k: int(v) for k, v in re.findall(r"^(\S+)\s+(\d+)$", text, re.M)}

    def service_flow_packets(self, host):
        """Packets counted on the host's service-stage flows (mbxd's cookie)."""
        out = self.ofctl(host, "dump-flows", "cookie=%#x/%#x"
                         % (pipeline.DAEMON_COOKIE, pipeline.COOKIE_MASK))
        return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))

    def mbxd_appctl(self, host, *args, check=True):
        """``ovs-appctl -t mbxd ARGS`` on ``host``; returns its output."""
        env = dict(os.environ, OVS_RUNDIR=self.host_dir(host))
        proc = subprocess.run(["ovs-appctl", "--timeout=10", "-t", "mbxd"] + list(args),
                              capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise LabError("ovs-appctl -t mbxd %s on %s: %s"
                           % (" ".join(args), host, proc.stderr.strip()))
        return proc.stdout

    def _hosts_connected(self, hosts):
        snap = self.sb().snapshot()
        return all(h in snap.hosts and snap.hosts[h].connected for h in hosts)

    # ----------------------------------------------------------------- VMs
    def vm_add(self, name, host, switch, ip_cidr, mac=None, timeout=15, kind=VM_NETNS):
        """A VM on ``host``: a network namespace (``kind`` "netns") or a
        QEMU guest ("qemu", booted from the guest image of lab.guest)."""
        if kind not in VM_KINDS:
            raise LabError("VM kind: %s, not %r" % (" or ".join(VM_KINDS), kind))
        if host not in self.state["hosts"]:
            raise LabError("unknown host '%s' (lab hosts: %s)"
                           % (host, ", ".join(sorted(self.state["hosts"]))))
        if name in self.state["vms"]:
            raise LabError("VM '%s' already exists on %s"
                           % (name, self.state["vms"][name]["host"]))
        if "/" not in ip_cidr:
            raise LabError("--ip takes address/prefix, e.g. 10.0.0.5/24, not '%s'"
                           % ip_cidr)
        ip = ip_cidr.split("/")[0]
        nb = self.nb()
        # The config database validates first: a bad switch/IP/MAC changes nothing.
        nb.vm_add(name, switch, ip, mac=mac, may_exist=True).execute(check_error=True)
        snap = nb.snapshot()
        mac = snap.vms[name].mac
        gateway = self.switch_gateway(switch, snap)
        if gateway == ip:
            gateway = None      # a VM on its switch's gateway address: no default route
        ns, vif = self.vm_ns(name), vif_name(name)
        self.state["vms"][name] = {"host": host, "switch": switch, "ip": ip_cidr,
                                   "mac": mac, "vif": vif, "netns": ns,
                                   "gateway": gateway, "kind": kind}
        if kind == VM_QEMU:
            self.state["vms"][name].update(netns=None, mtu=VM_MTU)
            self._save()
            try:
                qemu.boot(self, name, host, max(timeout, 30))
            except BaseException:
                # A guest that did not come up leaves nothing behind.
                undo = TryEach()
                undo("its QEMU", lambda: qemu.remove(self, name))
                self.state["vms"].pop(name, None)
                self._save()
                undo("its VM row", lambda: self.nb().vm_del(name, if_exists=True).execute(
                    check_error=True))
                raise
            return
        self._add_netns(ns)
        hns = self.host_ns(host)
        run(["ip", "link", "add", vif, "type", "veth", "peer", "name", "eth0",
             "netns", ns], netns=hns)
        for cmd in (["ip", "link", "set", "eth0", "address", mac, "mtu", str(VM_MTU)],
                    ["ip", "addr", "add", ip_cidr, "dev", "eth0"],
                    ["ethtool", "-K", "eth0"] + OFFLOADS_OFF,
                    ["sysctl", "-qw", "net.ipv4.conf.all.arp_evict_nocarrier=0"],
                    ["sysctl", "-qw", "net.ipv4.conf.eth0.arp_evict_nocarrier=0"],
                    ["ip", "link", "set", "eth0", "up"]):
            run(cmd, netns=ns)
        if gateway:
            run(["ip", "route", "add", "default", "via", gateway, "dev", "eth0"], netns=ns)
        run(["ethtool", "-K", vif] + OFFLOADS_OFF, netns=hns)
        epoch = self._vm_epoch(name)
        self._plug(host, name)
        self._wait_programmed(name, host, epoch, timeout)
        run(["ip", "link", "set", vif, "up"], netns=hns)

    def switch_gateway(self, switch, snap=None):
        """A logical switch's default gateway: ``Logical_Switch.gateway``, or
        the first address of its subnet when unset."""
        snap = snap or self.nb().snapshot()
        sw = snap.switches[switch]
        gateway = getattr(sw, "gateway", "")
        if not gateway and "gateway" in self.nb().tables["Logical_Switch"].columns:
            # The snapshot may not carry the column yet: read the row itself.
            rows = self.nb().db_find("Logical_Switch", ("name", "=", switch),
                                     columns=["gateway"]).execute(check_error=True)
            value = rows[0]["gateway"] if rows else []
            gateway = (value[0] if value else "") if isinstance(value, list) else value
        if not gateway:
            gateway = str(ipaddress.ip_network(sw.subnet, strict=False)[1])
        return gateway

    def _plug(self, host, name):
        vm = self.state["vms"][name]
        self.vsctl(host, "add-port", "br-int", vm["vif"], "--", "set",
                   "interface", vm["vif"], "external_ids:iface-id=%s" % name,
                   "external_ids:attached-mac=%s" % vm["mac"])

    def _vm_epoch(self, name):
        loc = self.sb().snapshot().vm_locations.get(name)
        return loc[1] if loc else 0

    def _wait_programmed(self, name, host, old_epoch, timeout, migration=None):
        """The logical controller writes the VM's location (and bumps its
        epoch) only after every connected host acknowledged the flows for the
        VM's new location.  ``migration``: the uuid of the VM's announced
        migration, which must not end meanwhile (``_still_active``)."""
        def done():
            if migration:
                self._still_active(migration)
            host_now, epoch = self.sb().snapshot().vm_locations.get(name, (None, 0))
            return host_now == host and epoch > old_epoch
        wait_until(done, timeout, interval=0.002,
                   what="the controller to program VM %s on %s" % (name, host))

    def is_guest(self, name):
        """Whether VM ``name`` is a QEMU guest (kind "qemu")."""
        vm = self.state["vms"].get(name)
        return vm is not None and vm.get("kind") == VM_QEMU

    def vm_del(self, name):
        vm = self.state["vms"].get(name)
        if vm is None:
            raise LabError("unknown VM '%s'" % name)
        if self.is_guest(name):
            qemu.remove(self, name)
        else:
            self.vsctl(vm["host"], "--if-exists", "del-port", "br-int", vm["vif"])
            run(["ip", "link", "del", vm["vif"]], netns=self.host_ns(vm["host"]),
                check=False)
            self._del_netns(vm["netns"])
        del self.state["vms"][name]
        self._save()
        self.nb().vm_del(name, if_exists=True).execute(check_error=True)

    def _del_netns(self, ns):
        run(["ip", "netns", "del", ns], check=False)
        if ns in self.state["netns"]:
            self.state["netns"].remove(ns)
            self._save()

    def migrate(self, name, to, notify=True, timeout=15, wait_state=True):
        """Live migration: the VM namespace (and its sockets) stays; only its
        port moves.  ``notify``: announced in advance, as a hypervisor does
        (``mbxctl migrate-begin``, then ``migrate-stun`` when the VM pauses,
        ``migrate-done`` once it runs at ``to``); otherwise the move comes
        unannounced and the controller notices it (docs/migration.md).
        ``wait_state``: an unannounced move returns once its migration
        ended (its state landed, or the destination fell back).
        Returns the step timings in milliseconds.

        A move that fails before the VM's link is up at ``to`` (a step
        fails, a wait times out, the migration is aborted) is rolled back,
        as a hypervisor resumes a VM on its source: the VM is plugged on
        its source again, its link up, its announced migration aborted;
        then LabError says so (``_roll_back``)."""
        vm = self.state["vms"].get(name)
        if vm is None:
            raise LabError("unknown VM '%s'" % name)
        if to not in self.state["hosts"]:
            raise LabError("unknown host '%s'" % to)
        src = vm["host"]
        if src == to:
            raise LabError("VM '%s' already runs on %s" % (name, to))
        started_ms = int(time.time() * 1000) - 1        # its row begins after
        if self.is_guest(name):
            steps = qemu.migrate(self, name, to, notify=notify,
                                 timeout=max(timeout, qemu.MIGRATE_TIMEOUT))
            if not notify and wait_state:
                self.wait_migration(name, ("done", "fallback", "aborted"), timeout,
                                    after=started_ms)
            return steps
        marks = [("start", time.monotonic())]
        # Where the VM's port is (source, unplugged, moved, plugged) and the
        # uuid of its announced migration's row.
        stage = {"port": "source", "migration": None}
        try:
            self._move(name, src, to, notify, timeout, marks, stage)
        except BaseException as err:
            why = str(err) or type(err).__name__
            problems = self._roll_back(name, src, to, stage, why, max(timeout, 30))
            if isinstance(err, Exception):
                raise LabError("migration of %s to %s failed (%s); rolled back to %s%s"
                               % (name, to, why, src, "" if not problems else
                                  ", but: " + "; ".join(problems))) from err
            raise
        if notify:
            self.sb().migrate_done(name).execute(check_error=True)
        elif wait_state:
            self.wait_migration(name, ("done", "fallback", "aborted"), timeout,
                                after=started_ms)
            marks.append(("state", time.monotonic()))
        steps = {}
        for (_, prev), (label, t) in zip(marks, marks[1:]):
            steps[label] = round((t - prev) * 1000, 1)
        steps["total"] = round((marks[-1][1] - marks[0][1]) * 1000, 1)
        return steps

    def _move(self, name, src, to, notify, timeout, marks, stage):
        """The steps of ``migrate`` up to the VM's link being up at ``to``;
        ``stage`` follows the VM's port and names its migration."""
        vm = self.state["vms"][name]
        old_epoch = self._vm_epoch(name)
        sb = self.sb()
        mine = None                 # the announced migration's row (uuid)
        if notify:
            sb.migrate_begin(name, to).execute(check_error=True)
            mine = stage["migration"] = self.migration_row(name)["uuid"]
            marks.append(("begin", time.monotonic()))
            # The VM keeps running while its state streams; the hypervisor's
            # last round starts when the source has sent its snapshot.
            wait_until(lambda: self._still_active(mine) != "begun", timeout, interval=0.005,
                       what="the snapshot of %s to go out" % name)
            marks.append(("snapshot", time.monotonic()))
        self.vsctl(src, "del-port", "br-int", vm["vif"])
        stage["port"] = "unplugged"
        marks.append(("unplug", time.monotonic()))
        if notify:
            # The VM is paused: the final changes go out while the port moves.
            sb.migrate_stun(name).execute(check_error=True)
        run(["ip", "link", "set", vm["vif"], "netns", self.host_ns(to)],
            netns=self.host_ns(src))
        stage["port"] = "moved"
        marks.append(("move", time.monotonic()))
        vm["host"] = to
        self._save()
        if mine:
            self._still_active(mine)    # never plugged where it was called off
        self._plug(to, name)
        stage["port"] = "plugged"
        marks.append(("plug", time.monotonic()))
        self._wait_programmed(name, to, old_epoch, timeout, migration=mine)
        marks.append(("flows", time.monotonic()))
        if mine:
            wait_until(lambda: self._still_active(mine) == "imported", timeout,
                       interval=0.02, what="the state of %s to be imported" % name)
            marks.append(("imported", time.monotonic()))
        run(["ip", "link", "set", vm["vif"], "up"], netns=self.host_ns(to))
        marks.append(("link-up", time.monotonic()))

    def _still_active(self, uuid):
        """The status of Migration row ``uuid``; LabError once it ended
        (aborted, fell back) or is gone."""
        row = next((m for m in self.sb().snapshot().migrations if m.uuid == uuid), None)
        if row is None or not row.active:
            raise LabError("its migration %s" % ("record is gone" if row is None else
                           "%s: %s" % (row.status, row.outcome)))
        return row.status

    def _abort(self, uuid, outcome):
        """Migration row ``uuid`` aborted with ``outcome``, unless it ended."""
        try:
            self._still_active(uuid)
        except LabError:
            return
        try:
            self.sb().migration_update(uuid, status="aborted", outcome=outcome,
                                       timeline={"aborted": int(time.time() * 1000)},
                                       expect=ACTIVE_MIGRATION).execute(check_error=True)
        except MbxError:
            try:
                self._still_active(uuid)
            except LabError:
                return                  # it ended meanwhile
            raise

    def _wait_placed_again(self, name, host, then, timeout):
        """The VM, plugged on ``host`` again, is placed there: a new epoch
        since ``then`` (its location before), unless it never left."""
        def placed():
            now = self.sb().snapshot().vm_locations.get(name, (None, 0))
            return now[0] == host and (now[1] > then[1] or then[0] == host)
        wait_until(placed, timeout, what="VM %s to be placed on %s again" % (name, host))

    def _roll_back(self, name, src, to, stage, why, timeout):
        """Undo a failed move from ``stage`` on: the VM's port back on
        ``src`` and its link up there (whatever else fails), then its
        announced migration aborted (its row only, with ``why``), so its
        source keeps its state.  Every step is tried; returns what failed
        (the VM is plugged and up on ``src`` even then, unless the step
        doing that failed)."""
        vm = self.state["vms"][name]
        vif, src_ns = vm["vif"], self.host_ns(src)
        step = TryEach()
        problems = step.problems
        port = stage["port"]
        if port in ("moved", "plugged"):
            step("unplug at %s" % to, lambda: self.vsctl(
                to, "--if-exists", "del-port", "br-int", vif))
            step("move back", lambda: run(["ip", "link", "set", vif, "netns", src_ns],
                                          netns=self.host_ns(to)))
        vm["host"] = src
        self._save()
        if port != "source":
            try:
                then = self.sb().snapshot().vm_locations.get(name, (None, 0))
            except MbxError as err:
                problems.append("its location: %s" % err)
                then = (None, 0)
            step("plug at %s" % src, lambda: self._plug(src, name))
            step("placement at %s" % src,
                 lambda: self._wait_placed_again(name, src, then, timeout))
            step("link up at %s" % src, lambda: run(["ip", "link", "set", vif, "up"],
                                                    netns=src_ns))
        if stage["migration"]:
            step("abort", lambda: self._abort(stage["migration"], "aborted: %s; rolled "
                                              "back to %s" % (why, src)))
        return problems

    def mbxctl_ok(self, *args):
        """``mbxctl ARGS``; its output, or LabError with mbxctl's error line."""
        proc = self.mbxctl(*args)
        if proc.returncode != 0:
            raise LabError("mbxctl %s: %s" % (" ".join(args),
                                             (proc.stderr or proc.stdout).strip()))
        return proc.stdout

    def migration_row(self, vm):
        """The VM's latest Migration row as a dict ({} if none)."""
        rows = [m for m in self.sb().snapshot().migrations if m.vm == vm]
        return dataclasses.asdict(rows[-1]) if rows else {}

    def wait_migration(self, vm, statuses=("done",), timeout=15, after=None):
        """Wait for the VM's latest migration (begun after ``after``, a
        ``begun`` ms stamp) to reach one of ``statuses``; returns its row."""
        def check():
            row = self.migration_row(vm)
            if after is not None and row.get("timeline", {}).get("begun", 0) <= after:
                return None
            return row if row.get("status") in statuses else None
        return wait_until(check, timeout, interval=0.02,
                          what="migration of %s to reach %s" % (vm, "/".join(statuses)))

    # ------------------------------ processes in VMs and external namespaces
    def _vm_netns(self, name):
        vm = self.state["vms"].get(name)
        if vm is None:
            raise LabError("unknown VM '%s'" % name)
        return vm["netns"]

    def _ext_netns(self, name):
        ns = self.ext_ns(name)
        if name not in self.external:
            raise LabError("lab '%s' has no external namespace '%s' (is it up?)"
                           % (self.prefix, name))
        return ns

    def exec(self, name, cmd, **kwargs):
        """Run ``cmd`` inside a VM; returns the CompletedProcess.  In a QEMU
        guest through its agent: the lab's Python (``sys.executable``) is
        the guest's python3 with the checkout's lab modules."""
        if self.is_guest(name):
            return qemu.exec_(self, name, cmd, **kwargs)
        return subprocess.run(["ip", "netns", "exec", self._vm_netns(name)] + list(cmd),
                              **kwargs)

    def vm_read(self, name, path):
        """The text of file ``path`` as VM ``name`` sees it (None if there
        is none): a namespace VM shares this machine's files, a QEMU guest
        has its own."""
        if self.is_guest(name):
            data = qemu.read(self, name, path)
            return None if data is None else data.decode(errors="replace")
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def ext_exec(self, name, cmd, **kwargs):
        """Run ``cmd`` inside external namespace ``name`` (``xr``, ``xs``, ``xc``)."""
        return subprocess.run(["ip", "netns", "exec", self._ext_netns(name)] + list(cmd),
                              **kwargs)

    def ping(self, name, addr, count=2):
        return self._ping(self.exec, name, addr, count)

    def ext_ping(self, name, addr, count=2):
        """A ping from external namespace ``name``; PingResult (mac: the
        neighbour ``addr`` resolved to, None when it is off-link)."""
        return self._ping(self.ext_exec, name, addr, count)

    @staticmethod
    def _ping(execute, name, addr, count):
        proc = execute(name, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", addr],
                       capture_output=True, text=True)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
        neigh = execute(name, ["ip", "neigh", "show", addr],
                        capture_output=True, text=True).stdout
        mac = re.search(r"lladdr (\S+)", neigh)
        return PingResult(proc.returncode == 0, float(rtt.group(1)) if rtt else None,
                          mac.group(1) if mac else None)

    def tcp_try(self, name, addr, port, timeout=1.0, count=1):
        """Short TCP connections from VM ``name``; returns the outcome counts
        ({"ok", "refused", "timeout", "other", "seconds", "last_error",
        "local_ports"}), see lab.probe."""
        return self._tcp_try(self.exec, name, addr, port, timeout, count)

    def ext_tcp_try(self, name, addr, port, timeout=1.0, count=1):
        """``tcp_try`` from external namespace ``name``."""
        return self._tcp_try(self.ext_exec, name, addr, port, timeout, count)

    @staticmethod
    def _tcp_try(execute, name, addr, port, timeout, count):
        proc = execute(name, [sys.executable, "-m", "lab.probe", "try", "--to", addr,
                              "--port", str(port), "--timeout", str(timeout),
                              "--count", str(count)],
                       capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise LabError("probe in %s failed: %s" % (name, proc.stderr.strip()[-300:]))
        return json.loads(proc.stdout)

    def spawn(self, name, cmd, log_path):
        """Start a background process inside a VM; ``down`` ends it by PID
        (in a QEMU guest: ``log_path`` is the guest's, and the process ends
        with its guest)."""
        if self.is_guest(name):
            return qemu.spawn(self, name, cmd, log_path)
        return self._spawn(self._vm_netns(name), "vm/%s" % name, cmd, log_path)

    def ext_spawn(self, name, cmd, log_path):
        """Start a background process inside external namespace ``name``;
        ``down`` ends it by PID (``forget_pid`` after ending it yourself)."""
        return self._spawn(self._ext_netns(name), "vm/ext-%s" % name, cmd, log_path)

    def _spawn(self, ns, key, cmd, log_path):
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns] + list(cmd),
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._record_pid("%s/%d" % (key, proc.pid), proc.pid)
        return proc

    def forget_pid(self, pid):
        for key, value in list(self.state["pids"].items()):
            if value == pid:
                del self.state["pids"][key]
        self._save()

    # --------------------------------------------------------------- status
    def status(self):
        lines = ["lab '%s' (%s)" % (self.prefix, self.rundir)]
        if not self.is_up:
            return "lab '%s' is down" % self.prefix
        pids = self.state["pids"]
        for key in sorted(pids):
            lines.append("  process %-28s pid %-7d %s" % (
                key, pids[key], "running" if pid_alive(pids[key]) else "GONE"))
        for kind in DB_KINDS:
            for n in self.db_members(kind):
                key = self.db_key(kind, n)
                st = self.db_status(kind, n) if key in pids else {}
                lines.append("  db   %s member %d netns %-10s %s  %s" % (
                    kind, n, self.db_node_ns(n), self.db_node_ip(n),
                    ("%s, %s" % (st.get("Role", "?"), st.get("Status", "standalone"))
                     if st else "not answering")))
        try:
            snap = self.sb().snapshot()
        except MbxError as err:
            lines.append("  southbound database: %s" % err)
            snap = None
        for host, info in sorted(self.state["hosts"].items()):
            rec = snap.hosts.get(host) if snap else None
            lines.append("  host %-6s netns %-10s tunnel %-12s mgmt %-12s uplink %s %s" % (
                host, info["netns"], info["encap_ip"], info["mgmt_ip"],
                info.get("uplink_mac", "-"),
                "connected, nb_cfg %d" % rec.nb_cfg if rec and rec.connected
                else "not connected"))
        for name, vm in sorted(self.state["vms"].items()):
            lines.append("  vm   %-6s on %-4s switch %-8s %-15s %s gw %s%s" % (
                name, vm["host"], vm["switch"], vm["ip"], vm["mac"],
                vm.get("gateway") or "-",
                ", " + qemu.describe(self, name) if self.is_guest(name) else ""))
        for name, info in sorted(self.external.items()):
            lines.append("  ext  %-6s %-7s netns %-10s %s" % (
                name, info["role"], info["netns"], ", ".join(
                    "%s %s %s" % (i, v["ip"], v["mac"])
                    for i, v in sorted(info["ifaces"].items()))))
        if self.external:
            lines.append("  external network %s %s via %s (%s)%s" % (
                EXT_NAME, EXT_CIDR, EXT_GATEWAY_IP, EXT_GATEWAY_MAC,
                "" if self.state.get("ext_registered") else ", NOT in the config DB"))
        lines.append("  config DB: export MBX_DB=%s MBX_SB=%s" % (self.nb_remote,
                                                                self.sb_remote))
        lines.append("  from a host (with its certificate): --db %s --sb %s"
                     % (self.nb_ssl_remote, self.sb_ssl_remote))
        return "\n".join(lines)

    # ----------------------------------------------------------------- down
    def down(self, log=print):
        if not self.state["netns"] and not self.state["pids"]:
            log("lab '%s' is not up; nothing to do" % self.prefix)
            return
        self.close()
        pids = self.state["pids"]
        # VM processes and the controller first, then each host's daemons.
        order = sorted(pids, key=lambda k: (not k.startswith("vm/"),
                                            not _is_controller_key(k),
                                            k.endswith("ovsdb-server"), k))
        for key in order:
            stop_pid(pids[key])
            del pids[key]
            self._save()
        for ns in list(reversed(self.state["netns"])):
            self._del_netns(ns)
        removed = len(self.state["hosts"])
        self.state.update({"hosts": {}, "vms": {}, "external": {}})
        self._save()
        os.unlink(self.state_path)
        log("lab '%s' down: %d hosts removed" % (self.prefix, removed))
