"""mbxd's middlebox services beyond the firewall (see docs/services.md).

Pure logic, no I/O and no clock (every time is the caller's ``now``):

* ``snat``: external port allocation inside this host's SNAT port block
  (the blocks themselves: ``ovsdb.natblocks``).
* ``lb``: backend choice, health-check state machine, merged health view.
* ``ids``: port-scan (shared across hosts) and SYN-flood detection.

Each module declares ``SHARED_STATE`` (names it publishes through
``middlebox.shared.SharedState``) and ``LOCAL_STATE`` (names that never leave
the host).
"""

import math


def option(options, key, default, cast, minimum, errors):
    """Option ``key`` of a service's ``options`` as ``cast`` (int or float),
    at least ``minimum``; missing -> ``default``; invalid -> ``default`` and
    one line in ``errors``."""
    raw = (options or {}).get(key)
    if raw is None:
        return default
    try:
        value = cast(str(raw).strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        errors.append('option %s="%s" is invalid: using %s' % (key, raw, default))
        return default
    return value
