"""Who may write what over the network: the OVSDB RBAC roles of the two
databases, in one place, and ``install``, which writes them and the
network remote (a ``Connection`` row) into a running database.

How ``ovsdb-server`` applies them (``ovsdb/rbac.c``): a client on a remote
that a ``Connection`` row opens (``--remote=db:DB,TABLE,connections``)
has that row's ``role``; its identity is the CN of its certificate.  Each
role has one ``RBAC_Permission`` row per table it may write:

* ``authorization``: column names; a row may be written when one of those
  columns equals the client's CN (``""``: any row).  Insert is checked
  against the new row, update, mutate and delete against the existing
  rows the operation's ``where`` selects.
* ``insert_delete``: whether it may insert and delete such rows.
* ``update``: the columns it may update or mutate.

A table without a permission row is read-only to the role; a role the
database does not hold may write nothing.  Clients on the remotes given on
the server's command line (the database members' unix sockets, used by the
controller nodes and the provider) have no role and may write everything.
Reads are never restricted: a host reads what it needs through monitor
conditions (``middlebox.confmon``), but nothing stops it from reading
more (see docs/operations.md).

Roles:

* ``mbx-chassis`` (southbound, ``pssl:6642``): a hypervisor's processes
  with the host's certificate (CN = chassis name): ``mbx-chassis``,
  ``mbxd``, a per-host physical controller and the libvirt hook's
  ``mbxctl migrate-*``.  Each writes only rows naming its host.
* ``mbx-tenant`` (northbound, ``pssl:6641``): a tenant's certificate (CN =
  tenant name) manages its own tenant-tier firewall rules, address sets
  and steering policies, and links its rules into its own middleboxes.
  A host's certificate matches no tenant there, so it writes nothing.

``explain`` turns the server's refusal into one line.
"""

import dataclasses
import json
import os
import re
import subprocess
from typing import Dict, Tuple

from ovsdb.errors import MbxError


@dataclasses.dataclass(frozen=True)
class Permission:
    """One RBAC_Permission row."""
    authorization: Tuple[str, ...]
    insert_delete: bool
    update: Tuple[str, ...] = ()


# Southbound: every write a hypervisor makes, each authorized on the column
# naming the host.
CHASSIS_ROLE = "mbx-chassis"
CHASSIS_PERMISSIONS: Dict[str, Permission] = {
    # mbx-chassis (hypervisor/chassis.py): its own Chassis row ...
    "Chassis": Permission(
        ("name",), True,
        ("encap_type", "encap_ip", "migration_address", "datapath_id",
         "tunnel_ofport", "mb_ofport", "uplink_ofport", "uplink_mac")),
    # ... and the bindings of the VM ports it sees
    "Port_Binding": Permission(("chassis",), True, ("ofport", "mac")),
    # mbxd (middlebox/mbcfg.py: mb_cfg) and a per-host physical controller
    # (ovsdb/southbound.py set_chassis_statuses); either may create the row
    "Chassis_Private": Permission(
        ("name",), True,
        ("mb_cfg", "controller", "connected", "nb_cfg", "sb_cfg")),
    # mbxd (middlebox/shared.py): its own shared state rows, their value
    # and lease stamp
    "Shared_State": Permission(("host",), True, ("value", "stamp")),
    # mbxd (middlebox/shared.py): its own alert rows (one per reporting host)
    "IDS_Alert": Permission(("reported_by",), True,
                            ("target", "count", "hosts", "last_seen")),
    # mbxd (middlebox/migration.py RowWriter), the libvirt hook's mbxctl
    # migrate-begin/stun/done/abort and a per-host controller's unannounced
    # migration: rows whose source or destination is the host.  Deleting
    # (finished rows) is the logical controller's, but insert_delete is one
    # flag: a host may also delete its own migrations.
    "Migration": Permission(("source", "destination"), True,
                            ("status", "outcome", "timeline", "stats")),
}

# Northbound: a tenant's own rows, authorized on their ``tenant`` column.
TENANT_ROLE = "mbx-tenant"
TENANT_PERMISSIONS: Dict[str, Permission] = {
    # tenant-tier rules only: a provider rule has tenant "" and lives in
    # Middlebox.provider_rules, which the role may not change
    "Firewall_Rule": Permission(
        ("tenant",), True,
        ("priority", "direction", "match", "address_sets", "action",
         "options", "external_ids")),
    "Address_Set": Permission(("tenant",), True,
                              ("addresses", "external_ids")),
    "Steering_Policy": Permission(
        ("tenant",), True,
        ("priority", "match", "address_sets", "chain", "options",
         "external_ids")),
    # link and unlink its rules in its own middleboxes; nothing else of them
    "Middlebox": Permission(("tenant",), False, ("rules",)),
}

ROLES = {"sb": (CHASSIS_ROLE, CHASSIS_PERMISSIONS),
         "nb": (TENANT_ROLE, TENANT_PERMISSIONS)}
DATABASES = {"sb": ("MBX_Southbound", "SB_Global"),
             "nb": ("MBX_Northbound", "NB_Global")}
DEFAULT_TARGETS = {"sb": "pssl:6642", "nb": "pssl:6641"}


def _set(values):
    return ["set", sorted(values)]


def _sorted(perm):
    return dataclasses.replace(perm, authorization=tuple(sorted(perm.authorization)),
                               update=tuple(sorted(perm.update)))


def _permission(row):
    def strings(value):
        if isinstance(value, list) and value and value[0] == "set":
            return tuple(sorted(value[1]))
        return (value,)
    return Permission(strings(row["authorization"]), row["insert_delete"],
                      strings(row["update"]))


def _is_remote(where):
    return bool(re.match(r"^(unix|ssl|tcp):", where))


class _Target:
    """A database file (standalone) or a running server's remote list
    (comma-separated: the first member that answers; a follower of a
    cluster forwards the write to the leader)."""

    def __init__(self, where, db, tls=None):
        self.where = where
        self.db = db
        self.tls = tls

    def _client(self, verb, ops):
        """ovsdb-client VERB against the first member that answers."""
        args = []
        if self.tls is not None:
            args = [f"--private-key={self.tls[0]}",
                    f"--certificate={self.tls[1]}",
                    f"--ca-cert={self.tls[2]}"]
        errors = []
        for member in [m.strip() for m in self.where.split(",") if m.strip()]:
            result = subprocess.run(
                ["ovsdb-client", "--timeout=10"] + args +
                [verb, member, json.dumps([self.db] + ops)],
                capture_output=True, text=True)
            if result.returncode == 0:
                return json.loads(result.stdout)
            errors.append(f"{member}: {result.stderr.strip()}")
        raise MbxError(f"cannot reach the {self.db} database: "
                       + "; ".join(errors))

    def _tool(self, verb, ops):
        result = subprocess.run(["ovsdb-tool", verb, self.where,
                                 json.dumps([self.db] + ops)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise MbxError(f"ovsdb-tool {verb} {self.where}: "
                           f"{result.stderr.strip()}")
        return json.loads(result.stdout)

    def run(self, ops, write):
        if _is_remote(self.where):
            reply = self._client("transact" if write else "query", ops)
        else:
            if not os.path.exists(self.where):
                raise MbxError(f"no database file {self.where}")
            reply = self._tool("transact" if write else "query", ops)
        errors = [r for r in reply if isinstance(r, dict) and "error" in r]
        if errors or len(reply) < len(ops):
            raise MbxError(f"{self.db}: {'writing' if write else 'reading'} "
                           f"the access rules failed: "
                           f"{errors[0] if errors else reply}")
        return reply


def install(where, kind="sb", target=None, tls=None):
    """Make database ``kind`` ("sb" or "nb") at ``where`` (a running
    server's remote, or a comma-separated list of a cluster's members, or a
    standalone database file) hold this module's role for it and a
    ``Connection`` row that opens ``target`` (default pssl:6642 / pssl:6641)
    with that role, listed in the global row's ``connections`` (the global
    row is created if missing).  Idempotent: what is already so is not
    written again; an existing role of the same name is replaced whole, an
    existing Connection row of ``target`` gets the role.  ``tls``: (private
    key, certificate, CA certificate) files for an ssl: ``where``.  Returns
    True when it wrote something."""
    if kind not in ROLES:
        raise MbxError(f"unknown database kind {kind!r}: use sb or nb")
    role, permissions = ROLES[kind]
    db, global_table = DATABASES[kind]
    target = target or DEFAULT_TARGETS[kind]
    conn = _Target(where, db, tls)
    roles, perms, conns, top = conn.run([
        {"op": "select", "table": "RBAC_Role",
         "where": [["name", "==", role]], "columns": ["_uuid", "permissions"]},
        {"op": "select", "table": "RBAC_Permission", "where": [],
         "columns": ["_uuid", "table", "authorization", "insert_delete",
                     "update"]},
        {"op": "select", "table": "Connection",
         "where": [["target", "==", target]], "columns": ["_uuid", "role"]},
        {"op": "select", "table": global_table, "where": [],
         "columns": ["_uuid", "connections"]}], write=False)
    by_uuid = {row["_uuid"][1]: row for row in perms["rows"]}
    ops = []
    current = None
    if len(roles["rows"]) == 1:
        current = {}
        for table, (_, uuid) in roles["rows"][0]["permissions"][1]:
            row = by_uuid.get(uuid)
            if row is not None and row["table"] == table:
                current[table] = _permission(row)
    if current != {table: _sorted(perm) for table, perm in permissions.items()}:
        # its permission rows go with it (strong references, not root)
        ops.append({"op": "delete", "table": "RBAC_Role",
                    "where": [["name", "==", role]]})
        entries = []
        for i, (table, perm) in enumerate(sorted(permissions.items())):
            name = f"perm{i}"
            ops.append({"op": "insert", "table": "RBAC_Permission",
                        "uuid-name": name,
                        "row": {"table": table,
                                "authorization": _set(perm.authorization),
                                "insert_delete": perm.insert_delete,
                                "update": _set(perm.update)}})
            entries.append([table, ["named-uuid", name]])
        ops.append({"op": "insert", "table": "RBAC_Role",
                    "row": {"name": role,
                            "permissions": ["map", entries]}})
    if top["rows"]:
        top_where = [["_uuid", "==", top["rows"][0]["_uuid"]]]
        listed = {u for _, u in _uuids(top["rows"][0]["connections"])}
    else:
        ops.append({"op": "insert", "table": global_table,
                    "uuid-name": "top", "row": {}})
        top_where, listed = None, set()
    if conns["rows"]:
        row = conns["rows"][0]
        if row["role"] != role:
            ops.append({"op": "update", "table": "Connection",
                        "where": [["_uuid", "==", row["_uuid"]]],
                        "row": {"role": role}})
        ref = row["_uuid"]
        if row["_uuid"][1] not in listed:
            ops.append(_link(global_table, top_where, ref))
    else:
        ops.append({"op": "insert", "table": "Connection",
                    "uuid-name": "conn",
                    "row": {"target": target, "role": role}})
        ops.append(_link(global_table, top_where, ["named-uuid", "conn"]))
    if not ops:
        return False
    if top_where is None:
        # the new global row lists the new (or existing) connection
        link = ops.pop()
        ops[[o.get("uuid-name") for o in ops].index("top")]["row"] = {
            "connections": ["set", [link["mutations"][0][2]]]}
    conn.run(ops, write=True)
    return True


def _uuids(value):
    """The (kind, uuid) pairs of a set-of-uuids column as OVSDB JSON."""
    if value[0] == "uuid":
        return [tuple(value)]
    return [tuple(v) for v in value[1]]


def _link(table, where, ref):
    return {"op": "mutate", "table": table, "where": where or [],
            "mutations": [["connections", "insert", ref]]}


_REFUSAL = re.compile(
    r'RBAC rules for client \\?"(?P<client>[^"\\]*)\\?" role '
    r'\\?"(?P<role>[^"\\]*)\\?" prohibit (?P<what>.*?) table '
    r'\\?"(?P<table>[^"\\]*)\\?"')
_WHAT = {"row insertion into": "insert rows into",
         "row deletion from": "delete rows of",
         "modification of": "change rows of",
         "mutate operation on": "change rows of"}
_RULE = {CHASSIS_ROLE: "a host's certificate writes only the rows of "
                       "its own host",
         TENANT_ROLE: "a tenant's certificate writes only its own "
                      "tenant-tier rules, address sets and steering "
                      "policies"}


def explain(text):
    """One line for an error text that holds the server's RBAC refusal
    ("permission error": RBAC rules for client "X" role "R" prohibit ...),
    or None when it holds none."""
    found = _REFUSAL.search(str(text))
    if found is None:
        return None
    what = _WHAT.get(found["what"], found["what"])
    role, rule = found["role"], _RULE.get(found["role"])
    return (f"permission denied: certificate '{found['client']}' (role "
            f"{role}) may not {what} table {found['table']} there"
            + (f": {rule}" if rule else ""))


PROGRAM = "mbx-rbac"


def main(argv=None):
    """``mbx-rbac install --kind sb|nb --db WHERE [--target T] [-p KEY -c CERT
    -C CA]``: what ``install`` does, for an operator (after building a
    cluster, and again after an upgrade).  ``mbx-rbac show --kind sb|nb``
    prints the roles in this release, table by table."""
    import argparse
    import sys
    from ovsdb import tls as tlsopts

    parser = argparse.ArgumentParser(prog=PROGRAM, description=(
        "the databases' RBAC roles and network remotes (Connection rows)"))
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    inst = sub.add_parser("install", help="write the role, its permissions and "
                          "the Connection row into a database (idempotent)")
    inst.add_argument("--kind", choices=sorted(ROLES), required=True)
    inst.add_argument("--db", required=True, metavar="WHERE",
                      help="a cluster's members (unix:PATH,... or ssl:IP:PORT,...) "
                      "or a standalone database file")
    inst.add_argument("--target", default=None,
                      help="the remote to open (default pssl:6642 for sb, pssl:6641 for nb)")
    tlsopts.add_arguments(inst, short=True)
    show = sub.add_parser("show", help="the role of a database, table by table")
    show.add_argument("--kind", choices=sorted(ROLES), required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "show":
            role, permissions = ROLES[args.kind]
            print("role %s (%s): %s" % (role, DATABASES[args.kind][0],
                                        DEFAULT_TARGETS[args.kind]))
            for table in sorted(permissions):
                p = permissions[table]
                print("  %-16s authorized on %-24s insert/delete %-3s update %s" % (
                    table, ",".join(p.authorization) or '""',
                    "yes" if p.insert_delete else "no", ",".join(p.update) or "-"))
            return 0
        given = tlsopts.files(args)
        tls = tuple(given) if all(given) else None
        if any(given) and tls is None:
            raise MbxError("give all three of -p/--private-key, -c/--certificate "
                           "and -C/--ca-cert")
        wrote = install(args.db, kind=args.kind, target=args.target, tls=tls)
        print("%s: %s" % (args.kind, "written" if wrote else "already in place"))
        return 0
    except MbxError as err:
        print("%s: %s" % (PROGRAM, err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
