"""mbx-host-register: register this host in the config database.

Run on a host.  Reads the host's identity from its local OVS database
(Open_vSwitch external_ids) and creates or updates its Host row:

    system-id          the host's name
    mbx-encap-ip       underlay tunnel endpoint address
    mbx-encap-type     vxlan (default) or geneve
    mbx-mgmt-address   where the controller reaches this host's OVSDB,
                       e.g. tcp:10.201.0.11:6640
    mbx-migration-address
                       optional: where this host's mbxd accepts migrated
                       connection state, e.g. ssl:10.201.0.11:6650
                       (unset: none)
"""

import argparse
import json
import os
import subprocess
import sys

from ovsdb import DEFAULT_DB, validate
from ovsdb.api import MbxNb
from ovsdb.errors import MbxError

PROG = "mbx-host-register"
LOCAL_DB = "unix:/var/run/openvswitch/db.sock"
REQUIRED_KEYS = ("system-id", "mbx-encap-ip", "mbx-mgmt-address")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise MbxError(f"{message} (see {PROG} --help)")


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


def host_fields(external_ids):
    """(name, encap_type, encap_ip, mgmt_address, migration_address) from
    external_ids; migration_address is "" when unset."""
    for key in REQUIRED_KEYS:
        if not external_ids.get(key):
            raise MbxError(f"external_ids:{key} is not set in the local OVS "
                           "database; set it with ovs-vsctl set "
                           f"Open_vSwitch . external_ids:{key}=VALUE")
    migration_address = external_ids.get("mbx-migration-address", "")
    try:
        validate.migration_address(migration_address)
    except MbxError as e:
        raise MbxError("external_ids:mbx-migration-address in the local OVS "
                       f"database: {e}") from None
    return (external_ids["system-id"],
            external_ids.get("mbx-encap-type", "vxlan"),
            external_ids["mbx-encap-ip"], external_ids["mbx-mgmt-address"],
            migration_address)


def main(argv=None):
    parser = _Parser(prog=PROG, allow_abbrev=False, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("MBX_DB") or DEFAULT_DB,
                        help="config database (default: $MBX_DB, else "
                        f"{DEFAULT_DB})")
    parser.add_argument("--local-db", default=LOCAL_DB,
                        help=f"this host's OVS database (default: {LOCAL_DB})")
    try:
        args = parser.parse_args(argv)
        fields = host_fields(read_external_ids(args.local_db))
        nb = MbxNb.connect(args.db)
        try:
            nb.host_register(*fields).execute(check_error=True)
        finally:
            nb.close()
    except MbxError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
