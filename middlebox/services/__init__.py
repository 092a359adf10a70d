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
