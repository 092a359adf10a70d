"""mbx's model: the records of the system as plain immutable values.

Shared by mbxctl, the controllers, the host agents and mbxd; it imports
none of them (and nothing but the standard library), so no package needs
another's internals to speak of a host, a VM or a rule.

* ``network``: hosts, logical switches, VMs, external networks, and the
  ports a host's own OVSDB reports;
* ``services``: middleboxes, firewall rules, address sets, steering
  policies, NAT rules, VIPs;
* ``state``: rows the system writes about itself (host status, shared
  service state, IDS alerts, migrations);
* ``snapshot``: the whole config database at one moment;
* ``topology``: the controller's view, the input of flow computation.

``XxxInfo`` is intent an operator writes; ``XxxRecord`` a row the system
writes.  One type per record: every reader of a row builds this value.
"""
