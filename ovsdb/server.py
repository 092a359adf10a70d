"""Run a real config database server (ovsdb-server) for the lab and tests."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

from ovsdb.errors import MbxError

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "mbx_nb.ovsschema")
SB_SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "mbx_sb.ovsschema")


def _run(argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise MbxError(f"{' '.join(argv)} failed: "
                       f"{result.stderr.strip() or result.returncode}")
    return result.stdout.strip()


def _version(text):
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _old_policy_middleboxes(db_path, version):
    """{Steering_Policy uuid: Middlebox uuid} of a database whose schema
    (``version``) predates 1.2.0 (Steering_Policy.middlebox, replaced by
    ``chain``)."""
    if not (1, 1) <= version[:2] < (1, 2):
        return {}
    query = ["MBX_Northbound", {"op": "select", "table": "Steering_Policy",
                                "where": [],
                                "columns": ["_uuid", "middlebox"]}]
    reply = json.loads(_run(["ovsdb-tool", "query", db_path,
                             json.dumps(query)]))
    if not isinstance(reply, list) or "error" in reply[0]:
        raise MbxError(f"cannot read the steering policies of {db_path} "
                       f"to convert it: {reply}")
    out = {}
    for row in reply[0]["rows"]:
        middlebox = row["middlebox"]     # ["uuid", U] or ["set", []]
        if middlebox[0] == "uuid":
            out[row["_uuid"][1]] = middlebox[1]
    return out


def _transact(db_path, ops, what):
    """Run ``ops`` (MBX_Northbound operations) on the file ``db_path``;
    MbxError naming ``what`` when one fails."""
    if not ops:
        return
    reply = json.loads(_run(["ovsdb-tool", "transact", db_path,
                             json.dumps(["MBX_Northbound"] + ops)]))
    errors = [r for r in reply if isinstance(r, dict) and "error" in r]
    if errors:
        raise MbxError(f"cannot convert {what} of {db_path}: {errors[0]}")


def _migrate_to_1_2(db_path, policies, slices):
    """After converting to 1.2.0 or later: each policy's old middlebox
    becomes its chain {0: middlebox}; Slice rows (whose ``middlebox`` is
    gone), when the new schema still has them (``slices``), are dropped:
    the controller writes them again."""
    ops = [{"op": "delete", "table": "Slice", "where": []}] if slices else []
    ops += [{"op": "update", "table": "Steering_Policy",
             "where": [["_uuid", "==", ["uuid", policy]]],
             "row": {"chain": ["map", [[0, ["uuid", middlebox]]]]}}
            for policy, middlebox in sorted(policies.items())]
    _transact(db_path, ops, "the steering policies")


def _vm_hosts(db_path):
    """{VM uuid: host name} of a 1.x database, where VM.host references a
    Host row; the VMs' references are cleared in the file so that it
    converts (VM.host is the chassis name from 2.0.0 on)."""
    query = ["MBX_Northbound",
             {"op": "select", "table": "Host", "where": [],
              "columns": ["_uuid", "name"]},
             {"op": "select", "table": "VM", "where": [],
              "columns": ["_uuid", "host"]}]
    reply = json.loads(_run(["ovsdb-tool", "query", db_path,
                             json.dumps(query)]))
    if not isinstance(reply, list) or any("error" in r for r in reply):
        raise MbxError(f"cannot read the VMs' hosts of {db_path} to convert "
                       f"it: {reply}")
    names = {row["_uuid"][1]: row["name"] for row in reply[0]["rows"]}
    out = {}
    for row in reply[1]["rows"]:
        host = row["host"]               # ["uuid", U] or ["set", []]
        if host[0] == "uuid" and host[1] in names:
            out[row["_uuid"][1]] = names[host[1]]
    _transact(db_path, [{"op": "update", "table": "VM", "where": [],
                         "row": {"host": ["set", []]}}], "the VMs' hosts")
    _run(["ovsdb-tool", "compact", db_path])    # no reference left in its log
    return out


def _restore_vm_hosts(db_path, hosts):
    """After converting to 2.0.0: VM.host names the chassis again."""
    _transact(db_path, [{"op": "update", "table": "VM",
                         "where": [["_uuid", "==", ["uuid", vm]]],
                         "row": {"host": name}}
                        for vm, name in sorted(hosts.items())], "the VMs' hosts")


def _query(db_path, ops, what):
    """The replies of ``ops`` (MBX_Northbound selects) on file ``db_path``;
    MbxError naming ``what`` when one fails."""
    reply = json.loads(_run(["ovsdb-tool", "query", db_path,
                             json.dumps(["MBX_Northbound"] + ops)]))
    if not isinstance(reply, list) or any("error" in r for r in reply):
        raise MbxError(f"cannot read {what} of {db_path} to convert it: "
                       f"{reply}")
    return reply


def _provider_rules(db_path):
    """The uuids of the provider-tier Firewall_Rule rows of a database
    whose schema predates 2.1.0 (Firewall_Rule.tier; from 2.1.0 on the
    tier is the Middlebox column that holds the rule)."""
    query = {"op": "select", "table": "Firewall_Rule", "where": [],
             "columns": ["_uuid", "tier"]}
    reply = json.loads(_run(["ovsdb-tool", "query", db_path,
                             json.dumps(["MBX_Northbound", query])]))
    if isinstance(reply, list) and "error" in reply[0] and \
            "tier" in json.dumps(reply[0]):
        return set()                     # no tier column yet: all tenant
    if not isinstance(reply, list) or "error" in reply[0]:
        raise MbxError(f"cannot read the firewall rules' tiers of {db_path} "
                       f"to convert it: {reply}")
    return {row["_uuid"][1] for row in reply[0]["rows"]
            if row["tier"] == "provider"}


def _migrate_to_2_1(db_path, providers):
    """After converting to 2.1.0 or later: the provider rules (uuids
    ``providers``) move from Middlebox.rules to Middlebox.provider_rules;
    Middlebox.tenant, Steering_Policy.tenant and the tenant rules'
    Firewall_Rule.tenant become the tenant of their logical switch (the
    columns OVSDB RBAC authorizes a tenant on)."""
    switches, middleboxes, policies = _query(db_path, [
        {"op": "select", "table": "Logical_Switch", "where": [],
         "columns": ["_uuid", "tenant"]},
        {"op": "select", "table": "Middlebox", "where": [],
         "columns": ["_uuid", "logical_switch", "rules"]},
        {"op": "select", "table": "Steering_Policy", "where": [],
         "columns": ["_uuid", "logical_switch"]}], "the tenants")

    def uuids(value):                    # ["uuid", U] or ["set", [...]]
        return [value[1]] if value[0] == "uuid" else [v[1] for v in value[1]]

    def refs(values):
        return ["set", [["uuid", u] for u in values]]

    tenant = {row["_uuid"][1]: row["tenant"] for row in switches["rows"]}
    ops = []
    for row in sorted(middleboxes["rows"], key=lambda r: r["_uuid"][1]):
        owner = tenant.get(next(iter(uuids(row["logical_switch"])), ""), "")
        rules = uuids(row["rules"])
        ops.append({"op": "update", "table": "Middlebox",
                    "where": [["_uuid", "==", ["uuid", row["_uuid"][1]]]],
                    "row": {"tenant": owner,
                            "rules": refs(r for r in rules
                                          if r not in providers),
                            "provider_rules": refs(r for r in rules
                                                   if r in providers)}})
        ops += [{"op": "update", "table": "Firewall_Rule",
                 "where": [["_uuid", "==", ["uuid", r]]],
                 "row": {"tenant": owner}}
                for r in rules if r not in providers]
    ops += [{"op": "update", "table": "Steering_Policy",
             "where": [["_uuid", "==", ["uuid", row["_uuid"][1]]]],
             "row": {"tenant": tenant.get(
                 next(iter(uuids(row["logical_switch"])), ""), "")}}
            for row in sorted(policies["rows"], key=lambda r: r["_uuid"][1])]
    _transact(db_path, ops, "the firewall tiers and tenants")


def ensure_db(db_path, schema_path=SCHEMA_PATH):
    """Create the database file if missing; convert it if its schema is old.

    Converting keeps the rows of the tables the new schema still has.
    From before 1.2.0, each steering policy's middlebox becomes a chain of
    one.  From 1.x to 2.0.0 the runtime tables leave the config database
    (Host, Slice, Shared_State, IDS_Alert, Migration: hosts publish their
    chassis again, mbx-northd allocates the slices again, migration
    history and alerts are lost) and VM.host, a reference to a Host row,
    becomes that host's name.  From before 2.1.0, Firewall_Rule.tier goes:
    provider rules move to Middlebox.provider_rules, and the new tenant
    columns (Middlebox, Firewall_Rule of the tenant tier, Steering_Policy)
    are filled from the logical switches.  The converted file replaces the
    old one only once everything worked."""
    if not os.path.exists(db_path):
        _run(["ovsdb-tool", "create", db_path, schema_path])
        return
    if _run(["ovsdb-tool", "needs-conversion", db_path,
             schema_path]) != "yes":
        return
    source = _version(_run(["ovsdb-tool", "db-version", db_path]))
    northbound = _run(["ovsdb-tool", "schema-name", schema_path]) == "MBX_Northbound"
    target = _version(_run(["ovsdb-tool", "schema-version", schema_path]))
    old = db_path + ".old-schema"
    tmp = db_path + ".converting"
    for path in (old, tmp):
        if os.path.exists(path):
            os.unlink(path)
    try:
        shutil.copyfile(db_path, old)
        policies = _old_policy_middleboxes(old, source) if northbound else {}
        vm_hosts = {}
        if northbound and source[:1] < (2,) <= target[:1]:
            vm_hosts = _vm_hosts(old)
        to_2_1 = northbound and source[:2] < (2, 1) <= target[:2]
        providers = _provider_rules(old) if to_2_1 else set()
        _run(["ovsdb-tool", "convert", old, schema_path, tmp])
        if northbound and source[:2] < (1, 2) <= target[:2]:
            _migrate_to_1_2(tmp, policies, slices=target[:1] < (2,))
        _restore_vm_hosts(tmp, vm_hosts)
        if to_2_1:
            _migrate_to_2_1(tmp, providers)
        os.replace(tmp, db_path)
    finally:
        for path in (old, tmp):
            if os.path.exists(path):
                os.unlink(path)


def _socket_path(remotes):
    for remote in remotes:
        if remote.startswith("punix:"):
            return remote[len("punix:"):]
    raise MbxError("ovsdb-server needs a punix: remote among "
                   f"{', '.join(remotes) or 'no remotes'}")


def _wait_connectable(path, timeout):
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(path)
                return
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise MbxError(f"ovsdb-server socket {path} does not "
                                   f"accept connections: {e}") from None
        time.sleep(0.05)


def start(rundir, db_path, remotes, netns=None, timeout=10.0):
    """Start a detached ovsdb-server serving ``db_path`` (a database file,
    or a list of them: one server may serve the northbound and the
    southbound database, each client asks for its own by name) on
    ``remotes`` (at least one "punix:PATH"), optionally inside network
    namespace ``netns``.  Files go to ``rundir``.  Returns the server's PID
    once its unix socket accepts connections."""
    rundir = os.path.abspath(rundir)
    os.makedirs(rundir, exist_ok=True)
    sock = _socket_path(remotes)
    pidfile = os.path.join(rundir, "ovsdb-server-nb.pid")
    argv = ["ovsdb-server", "--detach", "--no-chdir",
            f"--pidfile={pidfile}",
            f"--unixctl={os.path.join(rundir, 'ovsdb-server-nb.ctl')}",
            f"--log-file={os.path.join(rundir, 'ovsdb-server-nb.log')}"]
    argv += [f"--remote={remote}" for remote in remotes]
    paths = [db_path] if isinstance(db_path, str) else list(db_path)
    argv += [os.path.abspath(path) for path in paths]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns] + argv
    _run(argv)
    with open(pidfile) as f:
        pid = int(f.read().strip())
    _wait_connectable(sock, timeout)
    return pid


def pid_alive(pid):
    """True while ``pid`` runs; a zombie has ended (its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stop(pid, timeout=5.0):
    """SIGTERM process ``pid``; SIGKILL it if it is still alive after
    ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
