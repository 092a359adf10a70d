"""mbxd: the per-host middlebox daemon (see docs/middlebox.md)."""

import ovsdb  # noqa: F401  (quiets python-ovs' optional eventlet import first)
