"""ovsdb/rbac.py: the roles fit the schemas, and the server's refusal
becomes one line."""

import json

import pytest

from ovsdb import rbac
from ovsdb.server import SB_SCHEMA_PATH, SCHEMA_PATH


@pytest.mark.parametrize("kind, path", [("sb", SB_SCHEMA_PATH),
                                        ("nb", SCHEMA_PATH)])
def test_every_permission_names_columns_of_its_schema(kind, path):
    with open(path) as f:
        tables = json.load(f)["tables"]
    role, permissions = rbac.ROLES[kind]
    assert {"Connection", "RBAC_Role", "RBAC_Permission"} <= set(tables)
    for table, perm in permissions.items():
        columns = tables[table]["columns"]
        for column in perm.authorization:
            # ovsdb-server compares a plain string column with the CN
            assert columns[column]["type"] == "string", (table, column)
        assert set(perm.update) <= set(columns), table
        # a client may never rename a row away from (or to) itself
        assert not set(perm.update) & set(perm.authorization), table
    # the access-control tables and the global row are never a role's
    assert not {"Connection", "RBAC_Role", "RBAC_Permission", "SB_Global",
                "NB_Global"} & set(permissions)


def test_a_tenant_never_touches_the_provider_tier_or_creates_middleboxes():
    perm = rbac.TENANT_PERMISSIONS["Middlebox"]
    assert (perm.insert_delete, perm.update) == (False, ("rules",))
    assert set(rbac.TENANT_PERMISSIONS) == {
        "Firewall_Rule", "Address_Set", "Steering_Policy", "Middlebox"}


def test_the_servers_refusal_is_one_line():
    error = ('OVSDB Error: {"details":"RBAC rules for client \\"h2\\" role '
             '\\"mbx-chassis\\" prohibit row insertion into table '
             '\\"Chassis\\".","error":"permission error"}')
    assert rbac.explain("southbound database transaction failed: " + error) == (
        "permission denied: certificate 'h2' (role mbx-chassis) may not "
        "insert rows into table Chassis there: a host's certificate writes "
        "only the rows of its own host")
    assert rbac.explain('RBAC rules for client "t" role "x" prohibit mutate '
                        'operation on table "Y".') == (
        "permission denied: certificate 't' (role x) may not change rows of "
        "table Y there")
    assert rbac.explain("constraint violation") is None


def test_mbx_rbac_show_lists_every_table_of_the_role(capsys):
    assert rbac.main(["show", "--kind", "nb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("role mbx-tenant (MBX_Northbound): pssl:6641")
    for table in rbac.TENANT_PERMISSIONS:
        assert "\n  %s " % table in out, table


def test_mbx_rbac_install_errors_are_one_line(tmp_path, capsys):
    assert rbac.main(["install", "--kind", "sb", "--db", str(tmp_path / "none.db")]) == 1
    assert capsys.readouterr().err == "mbx-rbac: no database file %s\n" % (tmp_path / "none.db")
    assert rbac.main(["install", "--kind", "sb", "--db", "x.db", "-p", "k.pem"]) == 1
    assert "give all three of" in capsys.readouterr().err
