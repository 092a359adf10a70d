"""Python API to the mbx config database (MBX_Northbound), built on ovsdbapp.

    nb = MbxNb.connect("unix:/run/mbx/nb.sock")
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add("ls-a", 101, "10.0.0.0/24"))
        txn.add(nb.vm_add("a1", "ls-a", "10.0.0.1"))
    nb.close()

Arguments are validated when a command is built (before anything is sent).
Constraints that involve other rows (unknown switch, duplicate VNI, IP or
MAC, unknown or foreign address set, duplicate rule or policy priority, a
row still in use) are checked inside ``run_idl`` against the database as the
transaction sees it, so they hold with concurrent clients: a transaction that
races another one is retried by the IDL and checked again.  Every failure is
an ``MbxError`` and leaves the database unchanged.

The API is split by area, each module holding its area's ovsdbapp commands
and the MbxNb methods that build them: switches (logical switches, VMs,
hosts), externals, middleboxes, firewall (rules, address sets), nat, lb,
ids, steering, migration, database (NB_Global, the snapshot); common holds
what they share, backend the connection and MbxNb itself.
"""

from ovsdb.api.backend import SCHEMA_NAME, MbxNb
from ovsdb.api.common import sort_rules

__all__ = ["SCHEMA_NAME", "MbxNb", "sort_rules"]
