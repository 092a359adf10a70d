"""Which ``Datapath`` rows a physical controller monitors: those of its hosts.

A controller that serves a fixed set of hosts (``[mbx] chassis`` with no
standby: the lab's per-host controllers) reads only the translated intent
of the logical switches present on them, as ovn-controller monitors only
its chassis' local datapaths: the server sends it nothing of the other
tenants' switches.  A switch is present on a host when a VM of it is bound
there (a ``Port_Binding`` row of the host; the switch's ``Datapath.ports``
names its VMs) or a slice of the host runs one of its chains
(``Slice.datapath``), the same two ways as ``ryu_apps.flows.present_switches``.

The bindings and the slices arrive before the records, so a switch joins
the condition one round trip after its first VM binds (or its first slice
is decided) here, and leaves it when its last VM and slice have gone (the
server then deletes its row from the replica).  Every other table is
monitored whole: the flows of a present switch use the other hosts'
bindings of its VMs (tunnels to them), their slices of its chains and the
SNAT blocks those slices record (the NAT way in sends a reply to the host
owning the block), and every host's tunnel endpoint.

Pure: ``local_of`` and ``condition`` take plain values; the southbound
connection (``ovsdb.southbound``) applies the condition.
"""


def local_of(hosts, bindings, slices):
    """(VM names, datapath names) local to ``hosts``: the VMs of the
    ``bindings`` ((vm, chassis) pairs) on one of them, and the datapaths
    of the ``slices`` ((chassis, datapath or None) pairs) on one of them."""
    hosts = frozenset(hosts)
    vms = frozenset(vm for vm, chassis in bindings if chassis in hosts)
    datapaths = frozenset(dp for chassis, dp in slices if chassis in hosts and dp)
    return vms, datapaths


def condition(vms, datapaths):
    """The OVSDB condition on ``Datapath`` selecting the rows whose
    ``ports`` include one of ``vms`` or whose ``name`` is one of
    ``datapaths`` (clauses are ORed), sorted: the same sets give an equal
    condition.  ``[]``: no row (python-ovs' meaning of an empty condition)."""
    return ([["ports", "includes", vm] for vm in sorted(set(vms))]
            + [["name", "==", dp] for dp in sorted(set(datapaths))])
