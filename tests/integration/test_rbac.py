"""OVSDB RBAC over TLS against a real ovsdb-server (ovsdb/rbac.py).

One standalone server serves both databases: privileged on a unix socket
(the provider, controllers), and on the pssl remotes that ovsdb.rbac.install
writes as Connection rows with the roles mbx-chassis (southbound) and
mbx-tenant (northbound).  Certificates come from middlebox/pki.py: CN = the
host's or tenant's name.  Every refusal asserted here is the server's
("permission error"), not a client-side check; mbxctl turns it into one
line.
"""

import json
import os
import socket
import ssl
import subprocess
import sys

import pytest

from middlebox import pki
from ovsdb import rbac, server

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
HOSTS = ("h1", "h2", "h3")
TENANTS = ("teal", "plum")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    def __init__(self, rundir):
        self.rundir = rundir
        self.pki = os.path.join(rundir, "pki")
        self.sock = "unix:" + os.path.join(rundir, "db.sock")
        self.sb_port, self.nb_port = free_port(), free_port()
        self.sb_ssl = f"ssl:127.0.0.1:{self.sb_port}"
        self.nb_ssl = f"ssl:127.0.0.1:{self.nb_port}"
        self.pid = None

    def files(self, name):
        return (os.path.join(self.pki, name + ".key"),
                os.path.join(self.pki, name + ".pem"),
                os.path.join(self.pki, "ca.pem"))

    def transact(self, who, db, *ops):
        """The reply of ``ops`` on ``db`` ("sb"/"nb"), as ``who`` (a
        certificate name) over TLS, or privileged (None) on the socket."""
        name = rbac.DATABASES[db][0]
        argv = ["ovsdb-client", "--timeout=10"]
        if who is None:
            remote = self.sock
        else:
            key, cert, ca = self.files(who)
            argv += [f"--private-key={key}", f"--certificate={cert}",
                     f"--ca-cert={ca}"]
            remote = self.sb_ssl if db == "sb" else self.nb_ssl
        out = subprocess.run(argv + ["transact", remote,
                                     json.dumps([name, *ops])],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def ok(self, who, db, *ops):
        reply = self.transact(who, db, *ops)
        assert not [r for r in reply if r and "error" in r], reply
        return reply

    def refused(self, who, db, *ops):
        """``ops`` fail with the server's RBAC refusal and change nothing."""
        reply = self.transact(who, db, *ops)
        errors = [r for r in reply if r and "error" in r]
        assert errors and errors[0]["error"] == "permission error", reply
        assert f'client "{who}"' in errors[0]["details"], errors[0]
        return errors[0]["details"]

    def rows(self, db, table, where=()):
        return self.ok(None, db, {"op": "select", "table": table,
                                  "where": list(where)})[0]["rows"]

    def mbxctl(self, who, *args):
        env = {k: v for k, v in os.environ.items()
               if k not in ("MBX_DB", "MBX_SB")}
        if who is None:
            argv = [sys.executable, "-m", "ovsdb.ctl", "--db", self.sock]
        else:
            key, cert, ca = self.files(who)
            argv = [sys.executable, "-m", "ovsdb.ctl", "-p", key, "-c", cert,
                    "-C", ca, "--db", self.nb_ssl, "--sb", self.sb_ssl]
        return subprocess.run(argv + list(args), env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)


def ins(table, row, name=None):
    op = {"op": "insert", "table": table, "row": row}
    if name:
        op["uuid-name"] = name
    return op


def upd(table, where, row):
    return {"op": "update", "table": table, "where": where, "row": row}


def delete(table, where):
    return {"op": "delete", "table": table, "where": where}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("rbac")))
    pki.init_ca(w.pki)
    issue = getattr(pki, "issue", None)         # mbx-pki with roles
    for name, role in ([("db1", "server")] + [(h, "host") for h in HOSTS]
                       + [(t, "tenant") for t in TENANTS]):
        if issue is not None:
            issue(w.pki, name, role)
        else:
            pki.issue_host(w.pki, name)
    nb, sb = os.path.join(w.rundir, "nb.db"), os.path.join(w.rundir, "sb.db")
    server.ensure_db(nb)
    server.ensure_db(sb, server.SB_SCHEMA_PATH)
    # the roles and remotes go in before the server starts (a file) ...
    assert rbac.install(sb, "sb", f"pssl:{w.sb_port}:127.0.0.1")
    key, cert, ca = w.files("db1")
    pidfile = os.path.join(w.rundir, "ovsdb-server.pid")
    subprocess.run(
        ["ovsdb-server", "--detach", "--no-chdir", f"--pidfile={pidfile}",
         f"--unixctl={os.path.join(w.rundir, 'ovsdb-server.ctl')}",
         f"--log-file={os.path.join(w.rundir, 'ovsdb-server.log')}",
         f"--remote=p{w.sock}",
         "--remote=db:MBX_Southbound,SB_Global,connections",
         "--remote=db:MBX_Northbound,NB_Global,connections",
         f"--private-key={key}", f"--certificate={cert}", f"--ca-cert={ca}",
         sb, nb], check=True, capture_output=True)
    with open(pidfile) as f:
        w.pid = int(f.read())
    try:
        # ... or into a running one (its unix socket), as the lab does
        assert rbac.install(w.sock, "nb", f"pssl:{w.nb_port}:127.0.0.1")
        assert not rbac.install(w.sock, "sb", f"pssl:{w.sb_port}:127.0.0.1")
        wait_listening(w.sb_port)
        wait_listening(w.nb_port)
        populate(w)
        yield w
    finally:
        server.stop(w.pid)


def wait_listening(port, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def populate(w):
    """Provider intent (privileged): two tenants' switches, middleboxes,
    rules of both tiers, address sets, policies; each host's own rows
    written with its own certificate."""
    load = os.path.join(w.rundir, "intent.yaml")
    with open(load, "w") as f:
        f.write("""\
switches:
  - {name: ls-teal, tenant: teal, vni: 301, subnet: 10.3.0.0/24}
  - {name: ls-plum, tenant: plum, vni: 302, subnet: 10.4.0.0/24}
vms:
  - {name: t1, switch: ls-teal, ip: 10.3.0.11}
  - {name: p1, switch: ls-plum, ip: 10.4.0.11}
address_sets:
  - {name: teal-web, tenant: teal, addresses: [10.3.0.11]}
  - {name: plum-web, tenant: plum, addresses: [10.4.0.11]}
middleboxes:
  - name: fw-teal
    switch: ls-teal
    rules:
      - {priority: 100, direction: to-vm, match: "src=$teal-web", action: allow}
      - {priority: 900, direction: to-vm, match: "proto=tcp dport=23",
         action: reject, tier: provider}
  - name: fw-plum
    switch: ls-plum
    rules:
      - {priority: 100, direction: to-vm, match: "src=$plum-web", action: allow}
steering:
  - {switch: ls-teal, priority: 100, match: any, chain: [fw-teal]}
  - {switch: ls-plum, priority: 100, match: any, chain: [fw-plum]}
""")
    proc = w.mbxctl(None, "init", "--", "load", load)
    assert proc.returncode == 0, proc.stderr
    for h in HOSTS:
        w.ok(h, "sb",
             ins("Chassis", {"name": h, "encap_type": "vxlan",
                             "encap_ip": "10.200.0.1" + h[1:]}),
             ins("Port_Binding", {"logical_port": "vm-" + h, "chassis": h,
                                  "ofport": 5, "mac": "02:00:00:00:00:0" + h[1:]}),
             ins("Chassis_Private", {"name": h, "mb_cfg": 0}),
             ins("Shared_State", {"middlebox": "fw-teal", "host": h,
                                  "service": "lb-health", "key": "k",
                                  "value": "1", "stamp": 1}),
             ins("IDS_Alert", {"middlebox": "ids", "kind": "port-scan",
                               "source": "10.9.9.9", "count": 1,
                               "first_seen": 1, "last_seen": 1,
                               "reported_by": h}))
    # a migration h2 -> h3 (the destination's libvirt hook records it)
    w.ok("h3", "sb", ins("Migration", {
        "vm": "t1", "source": "h2", "destination": "h3", "path": "announced",
        "status": "begun", "token": "0" * 32}))


def by(column, value):
    return [[column, "==", value]]


# ------------------------------------------------------------- southbound
def test_a_host_writes_its_own_southbound_rows(world):
    w = world
    w.ok("h1", "sb",
         upd("Chassis", by("name", "h1"), {"encap_ip": "10.200.0.21",
                                            "migration_address": "ssl:10.201.0.11:6650"}),
         upd("Port_Binding", by("chassis", "h1"), {"ofport": 6}),
         ins("Port_Binding", {"logical_port": "vm-new", "chassis": "h1",
                              "ofport": 7, "mac": "02:00:00:00:01:07"}),
         delete("Port_Binding", by("logical_port", "vm-new")),
         # mbxd's mb_cfg, the per-host controller's status columns
         upd("Chassis_Private", by("name", "h1"),
             {"mb_cfg": 3, "controller": "h1/controller", "connected": True,
              "nb_cfg": 3, "sb_cfg": 2}),
         # shared state: a lease refresh, a new key, a withdrawal
         upd("Shared_State", by("host", "h1"), {"value": "2", "stamp": 2}),
         ins("Shared_State", {"middlebox": "fw-teal", "host": "h1",
                              "service": "lb-health", "key": "k2",
                              "value": "1", "stamp": 2}),
         delete("Shared_State", by("host", "h1") + by("key", "k2")),
         upd("IDS_Alert", by("reported_by", "h1"), {"count": 4, "last_seen": 2}))
    # the source and the destination both write their migration
    for host in ("h2", "h3"):
        w.ok(host, "sb",
             upd("Migration", by("vm", "t1"), {"status": "streaming"}),
             {"op": "mutate", "table": "Migration", "where": by("vm", "t1"),
              "mutations": [["timeline", "insert", ["map", [[host, 5]]]]]})
    assert [r["encap_ip"] for r in w.rows("sb", "Chassis", by("name", "h1"))] \
        == ["10.200.0.21"]


def test_a_host_cannot_write_another_hosts_southbound_rows(world):
    w = world
    cases = [
        ins("Chassis", {"name": "h2", "encap_type": "vxlan",
                        "encap_ip": "10.200.0.99"}),
        upd("Chassis", by("name", "h2"), {"encap_ip": "10.200.0.99"}),
        delete("Chassis", by("name", "h2")),
        ins("Port_Binding", {"logical_port": "vm-h2", "chassis": "h2",
                             "ofport": 9, "mac": "02:00:00:00:09:09"}),
        upd("Port_Binding", by("chassis", "h2"), {"ofport": 9}),
        delete("Port_Binding", by("chassis", "h2")),
        upd("Chassis_Private", by("name", "h2"), {"connected": False}),
        ins("Shared_State", {"middlebox": "fw-teal", "host": "h2",
                             "service": "lb-health", "key": "x", "value": "0",
                             "stamp": 9}),
        upd("Shared_State", by("host", "h2"), {"value": "0"}),
        delete("Shared_State", by("host", "h2")),
        ins("IDS_Alert", {"middlebox": "ids", "kind": "port-scan",
                          "source": "10.9.9.8", "count": 1, "first_seen": 1,
                          "last_seen": 1, "reported_by": "h2"}),
        upd("IDS_Alert", by("reported_by", "h2"), {"count": 0}),
        # a migration that is not h1's
        upd("Migration", by("vm", "t1"), {"status": "aborted"}),
        ins("Migration", {"vm": "p1", "source": "h2", "destination": "h3",
                          "path": "announced", "status": "begun",
                          "token": "1" * 32}),
        # every row at once, its own among them
        upd("Port_Binding", [], {"ofport": 9}),
    ]
    for op in cases:
        w.refused("h1", "sb", op)
    # nor may it take over a row by renaming it to itself
    w.refused("h2", "sb", upd("Chassis", by("name", "h2"), {"name": "h1"}))
    # and the controllers' and the server's tables are not a host's at all
    for op in (ins("Slice", {"chain": ["map", [[0, "fw-teal"]]],
                             "chassis": "h1", "tag": 9}),
               upd("SB_Global", [], {"sb_cfg": 99}),
               ins("Datapath", {"name": "ls-x", "tenant": "h1", "vni": 9}),
               ins("VM_Location", {"vm": "t1", "chassis": "h1", "epoch": 99}),
               upd("Connection", [], {"role": ""}),
               delete("RBAC_Role", [])):
        w.refused("h1", "sb", op)
    assert [r["ofport"] for r in w.rows("sb", "Port_Binding", by("chassis", "h2"))] == [5]
    assert [r["status"] for r in w.rows("sb", "Migration")] in (["begun"], ["streaming"])
    assert len(w.rows("sb", "Shared_State", by("host", "h2"))) == 1


def test_mbxctl_says_in_one_line_that_the_server_refused(world):
    """The libvirt hook's mbxctl on h1 aborting h2 -> h3's migration."""
    proc = world.mbxctl("h1", "migrate-abort", "t1")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "mbxctl: permission denied: certificate 'h1' (role mbx-chassis) may "
        "not change rows of table Migration there: a host's certificate "
        "writes only the rows of its own host"]


# ------------------------------------------------------------- northbound
def test_a_host_certificate_writes_no_northbound_intent(world):
    w = world
    # (RBAC knows names, not roles: rows with tenant "h1" it would accept,
    # as any tenant's own; mbx-pki gives no tenant a host's name, so no
    # switch belongs to "h1" and mbx ignores such rows)
    for op in (ins("Logical_Switch", {"name": "ls-h1", "tenant": "h1",
                                      "vni": 999, "subnet": "10.9.0.0/24"}),
               ins("VM", {"name": "h1vm", "logical_switch": ["named-uuid", "x"],
                          "mac": "02:00:00:00:09:09", "ip": "10.3.0.99"}),
               ins("Address_Set", {"name": "h1-set", "tenant": "teal"}),
               upd("Address_Set", by("name", "teal-web"), {"addresses": ""}),
               ins("Firewall_Rule", {"priority": 1, "direction": "to-vm",
                                     "match": "any", "action": "allow",
                                     "tenant": "teal"}),
               {"op": "mutate", "table": "Middlebox", "where": [],
                "mutations": [["rules", "delete", ["set", []]]]},
               upd("NB_Global", [], {"nb_cfg": 99})):
        w.refused("h1", "nb", op)
    for args in (("ls-add", "ls-h1", "--vni", "999", "--subnet", "10.9.0.0/24"),
                 ("vm-add", "h1vm", "--switch", "ls-teal", "--ip", "10.3.0.99"),
                 ("fw-add", "fw-teal", "10", "to-vm", "any", "allow"),
                 ("as-add", "h1-set", "teal")):
        proc = w.mbxctl("h1", *args)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith(
            "mbxctl: permission denied: certificate 'h1' (role mbx-tenant)"), \
            proc.stderr
    assert [r["name"] for r in w.rows("nb", "Logical_Switch")] != []
    assert w.rows("nb", "VM", by("name", "h1vm")) == []


def fw_list(w, mb):
    proc = w.mbxctl(None, "fw-list", mb)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[1:]


def test_a_tenant_manages_its_own_rules_sets_and_policies(world):
    w = world
    before = fw_list(w, "fw-teal")
    run = [("as-add", "teal-db", "teal", "10.3.0.12"),
           ("fw-add", "fw-teal", "200", "from-vm", "dst=$teal-db", "deny"),
           ("steer-add", "ls-teal", "200", "src=$teal-db", "fw-teal"),
           ("as-set", "teal-db", "10.3.0.13"),
           ("steer-del", "ls-teal", "200"),
           ("fw-del", "fw-teal", "from-vm", "200"),
           ("as-del", "teal-db")]
    for args in run:
        proc = w.mbxctl("teal", *args)
        assert (proc.returncode, proc.stderr) == (0, ""), args
    proc = w.mbxctl("teal", "fw-add", "fw-teal", "300", "to-vm", "proto=udp",
                    "deny")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sorted(fw_list(w, "fw-teal")) == sorted(before + [
        "to-vm      tenant    300       deny    proto=udp"])
    [rule] = w.rows("nb", "Firewall_Rule", by("match", "proto=udp"))
    assert rule["tenant"] == "teal"
    proc = w.mbxctl("teal", "fw-del", "fw-teal", "to-vm", "300")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert fw_list(w, "fw-teal") == before


def test_a_tenant_cannot_touch_another_tenant_or_the_provider_tier(world):
    w = world
    teal_rules = fw_list(w, "fw-teal")
    plum_rules = fw_list(w, "fw-plum")
    for args in (("fw-add", "fw-plum", "10", "to-vm", "any", "deny"),
                 ("fw-del", "fw-plum"),
                 ("fw-add", "fw-teal", "10", "to-vm", "any", "allow",
                  "--tier", "provider"),
                 ("fw-del", "fw-teal", "to-vm", "900", "--tier", "provider"),
                 ("fw-del", "fw-teal"),          # every rule: the provider's too
                 ("as-add", "teal-x", "plum"),
                 ("as-set", "plum-web", "10.4.0.99"),
                 ("steer-add", "ls-plum", "300", "any", "fw-plum"),
                 ("steer-del", "ls-plum", "100"),
                 ("ls-add", "ls-teal2", "--tenant", "teal", "--vni", "303",
                  "--subnet", "10.5.0.0/24"),
                 ("mb-add", "fw-teal2", "ls-teal"),
                 ("mb-set", "fw-teal", "tier-order=tenant-first"),
                 ("vm-add", "t2", "--switch", "ls-teal", "--ip", "10.3.0.12"),
                 ("global-set", "migration-wait-ms=500")):
        proc = w.mbxctl("teal", *args)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith(
            "mbxctl: permission denied: certificate 'teal' (role mbx-tenant)"
        ) and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
    # raw writes RBAC must refuse (what mbxctl would not even send)
    [provider] = [r for r in w.rows("nb", "Firewall_Rule")
                  if r["match"] == "proto=tcp dport=23"]
    assert provider["tenant"] == ""
    uuid = ["uuid", provider["_uuid"][1]]
    [fw_teal] = w.rows("nb", "Middlebox", by("name", "fw-teal"))
    for op in (upd("Firewall_Rule", [["_uuid", "==", uuid]], {"action": "allow"}),
               {"op": "mutate", "table": "Middlebox",
                "where": by("name", "fw-teal"),
                "mutations": [["provider_rules", "delete", uuid]]},
               upd("Middlebox", by("name", "fw-teal"), {"tenant": "plum"}),
               upd("Firewall_Rule", by("tenant", "teal"), {"tenant": "plum"}),
               upd("Address_Set", by("name", "teal-web"), {"tenant": "plum"}),
               delete("Address_Set", by("name", "plum-web")),
               delete("Steering_Policy", []),
               ins("Firewall_Rule", {"priority": 1, "direction": "to-vm",
                                     "match": "any", "action": "allow",
                                     "tenant": "plum"}),
               ins("Firewall_Rule", {"priority": 1, "direction": "to-vm",
                                     "match": "any", "action": "allow",
                                     "tenant": ""})):
        w.refused("teal", "nb", op)
    assert fw_teal["tenant"] == "teal"
    assert fw_list(w, "fw-teal") == teal_rules
    assert fw_list(w, "fw-plum") == plum_rules
    assert [r["tenant"] for r in w.rows("nb", "Address_Set",
                                        by("name", "plum-web"))] == ["plum"]


# ------------------------------------------------------------ connection
def tls_handshake(port, cert=None, key=None, ca=None):
    """A TLS handshake with the server, then one request: True when the
    server answers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(json.dumps({"method": "list_dbs", "params": [],
                                      "id": 1}).encode())
                return b"result" in s.recv(4096)
        except (ssl.SSLError, ConnectionError, socket.timeout):
            return False


def test_a_client_without_a_certificate_cannot_connect(world, tmp_path):
    w = world
    key, cert, _ = w.files("teal")
    assert tls_handshake(w.nb_port, cert, key)          # the control
    for port in (w.sb_port, w.nb_port):
        assert not tls_handshake(port)
    # nor with a certificate of another CA, whatever its name
    other = str(tmp_path / "other-ca")
    pki.init_ca(other)
    files = pki.issue_host(other, "h1")
    assert not tls_handshake(w.sb_port, files.cert, files.key)
    # python-ovs / ovsdb-client refuse to start without one, too
    proc = subprocess.run(["ovsdb-client", "--timeout=5", "list-dbs", w.sb_ssl],
                          capture_output=True, text=True)
    assert proc.returncode != 0


def test_install_is_idempotent_and_repairs(world):
    w = world
    target = f"pssl:{w.sb_port}:127.0.0.1"
    assert not rbac.install(w.sock, "sb", target)
    # an operator's change of a permission is put back
    w.ok(None, "sb", upd("RBAC_Permission", by("table", "Chassis"),
                         {"authorization": ""}))
    assert rbac.install(w.sock, "sb", target)
    assert not rbac.install(w.sock, "sb", target)
    [perm] = w.rows("sb", "RBAC_Permission", by("table", "Chassis"))
    assert perm["authorization"] == "name"
    assert len(w.rows("sb", "RBAC_Permission")) == len(rbac.CHASSIS_PERMISSIONS)
    [conn] = w.rows("sb", "Connection")
    assert (conn["target"], conn["role"]) == (target, "mbx-chassis")


def test_what_rbac_cannot_check_is_ignored_where_used(world):
    """A tenant writing the database directly (not through mbxctl) may
    create a policy that claims its own tenant on another tenant's switch:
    RBAC accepts it, the logical controller's translation ignores it and
    mbxctl show says why; mbxctl itself refuses to write such a policy."""
    from ovsdb.api import MbxNb
    from ryu_apps.translate import Translator
    w = world
    [ls_plum] = w.rows("nb", "Logical_Switch", by("name", "ls-plum"))
    [fw_plum] = w.rows("nb", "Middlebox", by("name", "fw-plum"))
    w.ok("teal", "nb", ins("Steering_Policy", {
        "logical_switch": ["uuid", ls_plum["_uuid"][1]], "tenant": "teal",
        "priority": 555, "match": "any",
        "chain": ["map", [[0, ["uuid", fw_plum["_uuid"][1]]]]]}))
    try:
        api = MbxNb.connect(w.sock, timeout=5)
        try:
            snap = api.snapshot()
        finally:
            api.close()
        assert snap.ignored == {("policy", "ls-plum", 555):
                                "steering policy ls-plum 555 claims tenant "
                                "'teal', but the switch is tenant 'plum''s"}
        record = Translator().update(snap)["ls-plum"]
        assert [p.priority for p in record.policies] == [100]
        show = w.mbxctl(None, "show")
        assert show.stdout.splitlines()[-1] == (
            "ignored: steering policy ls-plum 555 claims tenant 'teal', but "
            "the switch is tenant 'plum''s")
        # through mbxctl, the tenant cannot write it
        proc = w.mbxctl("teal", "steer-add", "ls-teal", "556", "any", "fw-plum")
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
        assert "fw-plum" in proc.stderr and "permission" not in proc.stderr
    finally:
        w.ok(None, "nb", delete("Steering_Policy", by("priority", 555)))
