"""Python API to the mbx databases, built on ovsdbapp: MbxNb for the
config database (MBX_Northbound: intent), MbxSb for the southbound database
(MBX_Southbound: runtime rows).

    nb = MbxNb.connect(ovsdb.DEFAULT_DB)     # a cluster's members: its leader
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add("ls-a", 101, "10.0.0.0/24"))
        txn.add(nb.vm_add("a1", "ls-a", "10.0.0.1"))
    sb = MbxSb.connect(ovsdb.DEFAULT_SB, nb=nb)
    print(sb.host_list(), sb.migrations("a1"))
    sb.close()
    nb.close()

Arguments are validated when a command is built (before anything is sent).
Constraints that involve other rows (unknown switch, duplicate VNI, IP or
MAC, unknown or foreign address set, duplicate rule or policy priority, a
row still in use) are checked inside ``run_idl`` against the database as the
transaction sees it, so they hold with concurrent clients: a transaction that
races another one is retried by the IDL and checked again.  Every failure is
an ``MbxError`` and leaves the database unchanged.

The API is split by area, each module holding its area's ovsdbapp commands
and the methods that build them.  MbxNb: switches (logical switches, VMs),
externals, middleboxes, firewall (rules, address sets), nat, lb, steering,
database (NB_Global, the snapshot).  MbxSb: runtime (the snapshot, hosts,
VM locations), slices, migration, ids.  common holds what they share,
backend the connections and the two classes.
"""

from ovsdb.api.backend import SB_SCHEMA_NAME, SCHEMA_NAME, MbxNb, MbxSb
from ovsdb.api.common import sort_rules

__all__ = ["SB_SCHEMA_NAME", "SCHEMA_NAME", "MbxNb", "MbxSb", "sort_rules"]
