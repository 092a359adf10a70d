"""mbx's model: the records of the system as plain immutable values.

Shared by mbxctl, the controllers, the host agents and mbxd; it imports
none of them (and nothing but the standard library), so no package needs
another's internals to speak of a host, a VM or a rule.
"""
