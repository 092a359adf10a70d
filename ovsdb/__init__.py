"""The mbx config database: schema, Python API, mbxctl and server helpers."""

import warnings

# Where mbxctl, the controllers and the lab find the databases unless told
# otherwise (mbxctl: --db/--sb, or MBX_DB/MBX_SB): the unix sockets of the
# default lab's database members (mbx-lab up; a client uses the leader).
DEFAULT_DB = ",".join("unix:/run/mbx/db/%d/nb.sock" % n for n in (1, 2, 3))
DEFAULT_SB = ",".join("unix:/run/mbx/db/%d/sb.sock" % n for n in (1, 2, 3))


def default_sb(db, sb=None):
    """The southbound remote a client uses: ``sb`` if given, else the
    default lab's southbound members when ``db`` is the default northbound
    one, else ``db`` (one server serving both databases)."""
    return sb or (DEFAULT_SB if db == DEFAULT_DB else db)

# python-ovs imports eventlet when it is installed (os-ken needs it), and
# eventlet warns on import: noise on mbxctl's one-line stderr.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
