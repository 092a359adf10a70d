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

from ovsdb.errors import MbxError


def option(options, key, default, cast, check, errors):
    """Option ``key`` of a service's ``options`` as ``cast`` (int or float),
    checked by ``check(key, value)`` (the validator mbxctl uses,
    ``ovsdb.validate.vip_option`` or ``middlebox_option``: the documented
    range); missing -> ``default``; invalid -> ``default`` and one line in
    ``errors``."""
    raw = (options or {}).get(key)
    if raw is None:
        return default
    try:
        return cast(check(key, raw))
    except MbxError as err:
        errors.append("%s: using %s" % (err, default))
        return default
