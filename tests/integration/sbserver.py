"""A southbound database server of a test's own, and transactions on it
with ovsdb-client, for the tests of the controllers' southbound
connection (``from sbserver import remote, transact``: ``remote`` is a
fixture)."""

import json
import subprocess

import pytest

from ovsdb import server


@pytest.fixture
def remote(tmp_path):
    """An empty southbound database (current schema) served on a unix
    socket: its remote."""
    db = str(tmp_path / "sb.db")
    server.ensure_db(db, server.SB_SCHEMA_PATH)
    sock = str(tmp_path / "sb.sock")
    pid = server.start(str(tmp_path), db, ["punix:" + sock])
    yield "unix:" + sock
    server.stop(pid)


def transact(remote, *ops):
    """Run OVSDB operations on the southbound database; their results
    (raises on any error)."""
    out = subprocess.run(["ovsdb-client", "transact", remote,
                          json.dumps(["MBX_Southbound", *ops])],
                         check=True, capture_output=True, text=True).stdout
    assert "error" not in out, out
    return json.loads(out)
