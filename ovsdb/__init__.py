"""The mbx config database: schema, Python API, mbxctl and server helpers."""

import warnings

# Where mbxctl, the controller and the lab find the config database unless told
# otherwise (mbxctl: --db, or the MBX_DB environment variable).
DEFAULT_DB = "unix:/run/mbx/nb.sock"

# python-ovs imports eventlet when it is installed (os-ken needs it), and
# eventlet warns on import: noise on mbxctl's one-line stderr.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
