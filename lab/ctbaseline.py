"""The conntrack baseline of the migration benchmark: an OVS-conntrack
pipeline of the kind OVN and Neutron build (``ct(commit)`` + ``ct(nat)`` in
per-port zones, NO state transfer), on the same namespace lab and with the
same traffic as mbx's migration tests, so the benchmark can report the share
of established connections that survive a live migration with mbx and with
plain conntrack.

``run(hosts=3, per_kind=3, settle=3.0)`` brings up its own lab (prefix
``mbxc``, run dir ``/run/mbx-ct``), builds the scenario below, stops the lab's
controller and the hosts' mbxd (by the PIDs the lab recorded), replaces every
host's br-int flows with the pipeline below (``del-controller``,
``del-flows``, then ``ovs-ofctl add-groups`` and ``replace-flows`` from files,
OpenFlow 1.3, cookie ``COOKIE``; after a move ``replace-flows`` changes only
what differs), opens 3 long-lived connections of each kind
(``lab.probe conns`` in mv and in peer), checks that all of them work, moves mv
from h1 to h2 (``migrate``: unplug, move the veth, plug, install the flows for
mv's new place on every host, link up; nothing copies conntrack entries),
lets traffic run ``settle`` seconds, and returns per kind how many
connections survived.  ``python -m lab.ctbaseline`` prints that as JSON.

Scenario (the same names and addresses as mbx's migration tests and bench):

* hosts h1..h3; switch ``ls-red`` (tenant red, 10.0.0.0/24, gateway 10.0.0.1,
  VNI 100); VMs mv 10.0.0.10 on h1 (migrates to h2), peer 10.0.0.20 on h3,
  LB backends b1 10.0.0.31 on h2, b2 10.0.0.32 and b3 10.0.0.33 on h3 (echo
  on 8080), VIP 10.0.0.100:80; internet server xs 198.51.100.10:80 behind the
  lab's router xr; SNAT address 203.0.113.100.
* kinds: ``fw-in`` peer -> mv:7000, ``fw-out`` mv -> peer:7001, ``snat``
  mv -> 198.51.100.10:80, ``lb`` mv -> 10.0.0.100:80.
* mv's firewall (OVN ACLs on mv's port): from mv any new connection is
  allowed (allow-related); to mv only new TCP to 7000; anything else only as
  part of a tracked connection (+est/+rel); +inv is dropped.

The pipeline (per host, OpenFlow 1.3), organised as OVN's logical stages:

====  =================  ===============================  ====================================
table name               OVN stage                        what it does here
====  =================  ===============================  ====================================
0     CLASSIFY           ls_in_port_sec_l2/_ip,           VM port + MAC + IP -> reg13 = the
                         physical table 0                 port's ct zone; tunnel (VNI 100) ->
                                                          reg10=1; uplink: ARP for the SNAT
                                                          address (answered by h1 only), IPv4
                                                          to it -> UPLINK_IN
1     ARP_RSP            ls_in_arp_rsp                    ARP for gateway, VIP (GW_MAC) and
                                                          every VM (its MAC) answered on the
                                                          spot; nothing is flooded
2     UPLINK_IN          chassis-redirect of the          SNAT address by port block: own ->
                         gateway port                     UNSNAT, other host's -> tunnel
                                                          (eth_dst=GW_MAC)
3     UNSNAT             lr_in_unsnat                     ``ct(zone=SNAT_ZONE,nat,table=4)``
4     UNSNAT_DONE        (lr_in_unsnat's next)            +est/+rel to the subnet -> ROUTE
10    PRE_STATEFUL       ls_in_pre_acl/pre_lb/            ``ct(zone=reg13,nat,table=11)``:
                         pre_stateful                     established LB packets are DNATed
11    ACL                ls_in_acl                        +inv drop; -new+est / -new+rel on;
                                                          mv +new: allow-related (commit);
                                                          other ports: no ACL, +new commit
12    STATEFUL           ls_in_lb, ls_in_stateful         +new to VIP:80 -> group 1 (select,
                                                          OVS's default dp_hash like OVN):
                                                          bucket ``ct(commit,zone=reg13,
                                                          nat(dst=B:8080),table=13)``, the
                                                          client port's zone is the LB zone,
                                                          as in OVN; marked -> ct(commit)
13    ROUTE              lr_in_ip_routing,                to GW_MAC: a VM address -> its MAC;
                         lr_in_arp_resolve                outside the subnet -> SNAT
14    SNAT               lr_out_snat (distributed, on     ``ct(commit,zone=SNAT_ZONE,
                         the VM's chassis)                nat(src=203.0.113.100:LO-HI))``,
                                                          LO-HI = this host's port block
15    EXT_OUT            lr_out_delivery -> localnet      uplink MAC -> router MAC, uplink
20    L2_LOOKUP          ls_in_l2_lkup, physical          local VM: reg15 = port, reg13 = its
                         output                           zone, egress; remote: tunnel with
                                                          tun_id=100, tun_dst (not from tunnel)
30    OUT_PRE_STATEFUL   ls_out_pre_acl/pre_stateful      ``ct(zone=reg13,nat,table=31)``:
                                                          un-DNATs LB replies in the client's
                                                          zone
31    OUT_ACL            ls_out_acl, ls_out_stateful      +inv drop; est/rel on; to mv +new
                                                          TCP 7000 -> ct(commit), other +new
                                                          to mv drop; other ports: commit
32    OUTPUT             physical output                  reg15 -> the port
====  =================  ===============================  ====================================

What survives, and why (measured: 10 runs of ``run()`` on the 3-host lab,
every run the same: 9 of 12; fw-in 3/3, fw-out 3/3, lb 3/3, snat 0/3; the
survivors' largest reply gap 225-250 ms, the re-plumb 150-190 ms):

* ``fw-in``, ``fw-out`` survive.  OVS's userspace conntrack takes a
  mid-stream TCP segment (no SYN) as ``+new`` (only bad flags and SYN+ACK
  cannot start a connection), so at h2, where mv's zone is empty, the first
  segment of each connection that reaches ct is judged as a new connection
  and committed: from mv, anything new is allowed; to mv, new TCP to 7000
  is allowed.  (In a run inspected with ``dpctl/dump-conntrack``, h2 had
  re-created the fw-in connections the other way round, mv:7000 as the
  originator: mv's retransmitted echo got there first.)  A segment the ACL
  drops (peer's reply to a port of mv other than 7000 before mv sent
  anything) is retransmitted by TCP.  A firewall that insisted on a SYN
  for new connections would cut both.
* ``snat`` dies, every time, with a reset.  h2 has no SNAT entry, so mv's
  next segment is committed with a NEW port from h2's block (8192-12287;
  h2's SNAT zone shows it); the server gets a segment of a connection it does
  not know, from 203.0.113.100:NEW, and answers with a RST, which h1 sends by
  port block to h2, where ct un-NATs it to mv.  (h1 still holds the old
  mapping, but nothing sends to the old port any more.)
* ``lb`` survives, every time: h2 re-picks the backend h1 picked (30 of 30
  connections, ``result["lb_backends"]``).  The select group has no
  ``selection_method`` (OpenFlow 1.3), so OVS uses ``dp_hash``: the datapath
  flow is ``hash(sym_l4(0))``, a hash of the 5-tuple with basis 0, the same
  on every host, and every host has the same buckets in the same order;
  the mid-stream segment is +new, goes through the group again and is
  committed with the same DNAT.  It would pick another backend (whose kernel
  answers with a RST) if the buckets differed between the hosts (a backend
  added, removed or taken out by a health check since the connection
  started) or with a per-host hash basis.

Everything the module exports for other tests: the scenario constants below,
``pipeline_flows``, ``install``, ``migrate``, ``run``, ``wait_listening``.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

from lab.lab import Lab
from lab.probe import Conns
from lab.sh import LabError, run as sh_run, wait_until

# ------------------------------------------------------------------ scenario
PREFIX = "mbxc"
RUNDIR = "/run/mbx-ct"
HOSTS = ("h1", "h2", "h3")
SWITCH = "ls-red"
TENANT = "red"
SUBNET = "10.0.0.0/24"
PREFIXLEN = 24
GATEWAY_IP = "10.0.0.1"
VNI = 100
VIP = "10.0.0.100"
VIP_PORT = 80
BACKEND_PORT = 8080
MIGRATING_VM = "mv"
SOURCE_HOST = "h1"
DEST_HOST = "h2"
# name -> (address, initial host)
VMS = {
    "mv": ("10.0.0.10", "h1"),
    "peer": ("10.0.0.20", "h3"),
    "b1": ("10.0.0.31", "h2"),
    "b2": ("10.0.0.32", "h3"),
    "b3": ("10.0.0.33", "h3"),
}
BACKENDS = ("b1", "b2", "b3")
EXT_SERVER = "xs"
EXT_SERVER_IP = "198.51.100.10"
EXT_SERVER_PORT = 80
EXT_ROUTER_IP = "203.0.113.1"
EXT_ROUTER_MAC = "02:ee:ff:00:00:01"
SNAT_IP = "203.0.113.100"
SNAT_DESIGNATED = "h1"            # answers the router's ARP for SNAT_IP
SNAT_BLOCK = 4096                 # h1 4096-8191, h2 8192-12287, h3 12288-16383
FW_IN_PORT = 7000                 # the only new inbound TCP mv's firewall allows
FW_OUT_PORT = 7001                # peer serves it
# kind -> (client VM, target address, target port)
KINDS = {
    "fw-in": ("peer", "10.0.0.10", FW_IN_PORT),
    "fw-out": ("mv", "10.0.0.20", FW_OUT_PORT),
    "snat": ("mv", EXT_SERVER_IP, EXT_SERVER_PORT),
    "lb": ("mv", VIP, VIP_PORT),
}

# ------------------------------------------------------------------ pipeline
PIPELINE = "ovs-conntrack"
COOKIE = 0x4354420000000000       # "CTB"
GW_MAC = "02:c7:00:00:00:01"      # the distributed gateway's (and VIP's) MAC
SNAT_ZONE = 64000
LB_GROUP = 1
# ``make bench``'s throughput VIP (lab.perfbench): VIP:BENCH_PORT -> the
# backends' BENCH_PORT, the backend picked by a hash of the client address
# (OVN's ``selection_fields=ip_src``: OpenFlow 1.5 ``selection_method=hash``),
# so iperf3's control and data connections reach the same backend.
BENCH_PORT = 5201
HASH_GROUP = 2
# VMs of another switch with no middlebox at all (lab.perfbench's "plain"):
# port security, answered ARP, L2 to the port or the tunnel, nothing else.
PLAIN_VNI = 101
T_PLAIN = 40
T_CLASSIFY, T_ARP_RSP = 0, 1
T_PRE_STATEFUL, T_ACL, T_STATEFUL, T_ROUTE, T_SNAT, T_EXT_OUT = 10, 11, 12, 13, 14, 15
T_L2 = 20
T_UPLINK_IN, T_UNSNAT, T_UNSNAT_DONE = 2, 3, 4
T_OUT_PRE_STATEFUL, T_OUT_ACL, T_OUTPUT = 30, 31, 32
TUNNEL_PORT = "mbx-tun"
UPLINK_PORT = "mbx-uplink"
ZONE = "NXM_NX_REG13[0..15]"
COMMIT_BIT = "0x2/0x2"            # reg0[1], as OVN's REGBIT_CONNTRACK_COMMIT


def zone_of(vm):
    """The conntrack zone of a VM's port (the same on every host, 1..)."""
    return 1 + sorted(VMS).index(vm)


def snat_range(host_index):
    """This host's SNAT port block (host_index 1..): (lo, hi)."""
    lo = SNAT_BLOCK * host_index
    return lo, lo + SNAT_BLOCK - 1


def _arp_reply(mac, ip):
    return ("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:%s->eth_src,"
            "set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
            "set_field:%s->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
            "set_field:%s->arp_spa,IN_PORT" % (mac, mac, ip))


def _tunnel(encap_ip, tun_port, vni=VNI):
    return "set_field:%d->tun_id,set_field:%s->tun_dst,output:%d" % (
        vni, encap_ip, tun_port)


def pipeline_groups():
    """The LB group (the same on every host, buckets in the same order)."""
    buckets = ",".join(
        "bucket=bucket_id:%d,actions=ct(commit,table=%d,zone=%s,nat(dst=%s:%d))"
        % (i, T_ROUTE, ZONE, VMS[b][0], BACKEND_PORT) for i, b in enumerate(BACKENDS))
    return ["group_id=%d,type=select,%s" % (LB_GROUP, buckets)]


def hash_groups():
    """The bench VIP's group (OpenFlow 1.5: ``selection_method``)."""
    buckets = ",".join(
        "bucket=bucket_id:%d,actions=ct(commit,table=%d,zone=%s,nat(dst=%s:%d))"
        % (i, T_ROUTE, ZONE, VMS[b][0], BENCH_PORT) for i, b in enumerate(BACKENDS))
    return ["group_id=%d,type=select,selection_method=hash,fields(ip_src),%s"
            % (HASH_GROUP, buckets)]


def pipeline_flows(host, hosts, placement, macs, ports, uplink_mac, plain=None):
    """The flows of ``host``'s br-int (ovs-ofctl add-flows lines).

    ``hosts``: {host: {"index", "encap_ip"}}; ``placement``: {vm: host};
    ``macs``: {vm: MAC}; ``ports``: {vm: ofport} for the VMs on ``host``
    and {TUNNEL_PORT: ofport, UPLINK_PORT: ofport}; ``uplink_mac``: this
    host's uplink MAC; ``plain``: {vm: address} of VMs (also in
    ``placement``) on a switch without middleboxes (VNI ``PLAIN_VNI``)."""
    plain = plain or {}
    tun, uplink = ports[TUNNEL_PORT], ports[UPLINK_PORT]
    flows = []

    def add(table, prio, match, actions):
        flows.append("cookie=%#x,table=%d,priority=%d,%s%sactions=%s" % (
            COOKIE, table, prio, match, "," if match else "", actions))

    local = sorted(vm for vm, h in placement.items() if h == host and vm in VMS)
    # 0 CLASSIFY: port security; tunnel; uplink.
    for vm in local:
        ip, port, mac = VMS[vm][0], ports[vm], macs[vm]
        add(T_CLASSIFY, 100, "in_port=%d,dl_src=%s,ip,nw_src=%s" % (port, mac, ip),
            "set_field:%d->reg13,goto_table:%d" % (zone_of(vm), T_PRE_STATEFUL))
        add(T_CLASSIFY, 100, "in_port=%d,dl_src=%s,arp,arp_spa=%s,arp_sha=%s"
            % (port, mac, ip, mac), "goto_table:%d" % T_ARP_RSP)
    add(T_CLASSIFY, 110, "in_port=%d,tun_id=%d,dl_dst=%s,ip,nw_dst=%s"
        % (tun, VNI, GW_MAC, SNAT_IP),
        "set_field:1->reg10,goto_table:%d" % T_UNSNAT)
    add(T_CLASSIFY, 100, "in_port=%d,tun_id=%d" % (tun, VNI),
        "set_field:1->reg10,goto_table:%d" % T_L2)
    if host == SNAT_DESIGNATED:
        add(T_CLASSIFY, 100, "in_port=%d,arp,arp_op=1,arp_tpa=%s" % (uplink, SNAT_IP),
            _arp_reply(uplink_mac, SNAT_IP))
    add(T_CLASSIFY, 100, "in_port=%d,ip,nw_dst=%s" % (uplink, SNAT_IP),
        "goto_table:%d" % T_UPLINK_IN)
    add(T_CLASSIFY, 0, "", "drop")
    # 1 ARP_RSP: nothing is flooded.
    for vm, (ip, _) in sorted(VMS.items()):
        add(T_ARP_RSP, 110, "arp,arp_spa=%s,arp_tpa=%s" % (ip, ip), "drop")
        add(T_ARP_RSP, 100, "arp,arp_op=1,arp_tpa=%s" % ip, _arp_reply(macs[vm], ip))
    for ip in (GATEWAY_IP, VIP):
        add(T_ARP_RSP, 100, "arp,arp_op=1,arp_tpa=%s" % ip, _arp_reply(GW_MAC, ip))
    add(T_ARP_RSP, 0, "", "drop")
    # 10 PRE_STATEFUL, 11 ACL, 12 STATEFUL (from-lport).
    add(T_PRE_STATEFUL, 100, "ip", "ct(table=%d,zone=%s,nat)" % (T_ACL, ZONE))
    add(T_PRE_STATEFUL, 0, "", "drop")
    add(T_ACL, 65535, "ct_state=+inv+trk", "drop")
    add(T_ACL, 65534, "ct_state=-new+est-inv+trk", "goto_table:%d" % T_ROUTE)
    add(T_ACL, 65534, "ct_state=-new+rel-inv+trk", "goto_table:%d" % T_ROUTE)
    # mv's from-lport ACL: any new connection, allow-related.  The other
    # ports have no ACL, but as in OVN on a switch with stateful ACLs their
    # new connections are committed too (or their SYN+ACKs would be +inv).
    add(T_ACL, 2000, "reg13=%d,ct_state=+new+trk" % zone_of(MIGRATING_VM),
        "set_field:%s->reg0,goto_table:%d" % (COMMIT_BIT, T_STATEFUL))
    add(T_ACL, 1, "ct_state=+new+trk",
        "set_field:%s->reg0,goto_table:%d" % (COMMIT_BIT, T_STATEFUL))
    add(T_ACL, 0, "", "drop")
    add(T_STATEFUL, 120, "ct_state=+new+trk,tcp,nw_dst=%s,tp_dst=%d" % (VIP, VIP_PORT),
        "group:%d" % LB_GROUP)
    add(T_STATEFUL, 120, "ct_state=+new+trk,tcp,nw_dst=%s,tp_dst=%d" % (VIP, BENCH_PORT),
        "group:%d" % HASH_GROUP)
    add(T_STATEFUL, 100, "ip,reg0=%s" % COMMIT_BIT,
        "ct(commit,zone=%s),goto_table:%d" % (ZONE, T_ROUTE))
    add(T_STATEFUL, 0, "", "goto_table:%d" % T_ROUTE)
    # 13 ROUTE, 14 SNAT, 15 EXT_OUT.
    for vm, (ip, _) in sorted(VMS.items()):
        add(T_ROUTE, 100, "ip,dl_dst=%s,nw_dst=%s" % (GW_MAC, ip),
            "set_field:%s->eth_src,set_field:%s->eth_dst,goto_table:%d"
            % (GW_MAC, macs[vm], T_L2))
    add(T_ROUTE, 50, "ip,dl_dst=%s,nw_dst=%s" % (GW_MAC, SUBNET), "drop")
    add(T_ROUTE, 10, "ip,dl_dst=%s,nw_src=%s" % (GW_MAC, SUBNET),
        "goto_table:%d" % T_SNAT)
    add(T_ROUTE, 5, "dl_dst=%s" % GW_MAC, "drop")
    add(T_ROUTE, 0, "", "goto_table:%d" % T_L2)
    lo, hi = snat_range(hosts[host]["index"])
    add(T_SNAT, 100, "ip,nw_src=%s" % SUBNET,
        "ct(commit,table=%d,zone=%d,nat(src=%s:%d-%d))" % (T_EXT_OUT, SNAT_ZONE, SNAT_IP,
                                                           lo, hi))
    add(T_SNAT, 0, "", "drop")
    add(T_EXT_OUT, 100, "ip,nw_src=%s" % SNAT_IP,
        "set_field:%s->eth_src,set_field:%s->eth_dst,output:%d"
        % (uplink_mac, EXT_ROUTER_MAC, uplink))
    add(T_EXT_OUT, 0, "", "drop")
    # 20 L2_LOOKUP.
    for vm in sorted(VMS):
        where = placement.get(vm)
        if where == host:
            add(T_L2, 100, "dl_dst=%s" % macs[vm],
                "set_field:%d->reg15,set_field:%d->reg13,goto_table:%d"
                % (ports[vm], zone_of(vm), T_OUT_PRE_STATEFUL))
        elif where is not None:
            add(T_L2, 100, "reg10=0,dl_dst=%s" % macs[vm],
                _tunnel(hosts[where]["encap_ip"], tun))
    add(T_L2, 0, "", "drop")
    # 2 UPLINK_IN, 3 UNSNAT, 4 UNSNAT_DONE (only goto_table forward: they come early).
    for other, info in sorted(hosts.items()):
        blo, _ = snat_range(info["index"])
        mask = 0x10000 - SNAT_BLOCK
        for proto in ("tcp", "udp"):
            match = "%s,nw_dst=%s,tp_dst=%#x/%#x" % (proto, SNAT_IP, blo, mask)
            if other == host:
                add(T_UPLINK_IN, 100, match, "goto_table:%d" % T_UNSNAT)
            else:
                add(T_UPLINK_IN, 100, match, "set_field:%s->eth_dst,%s"
                    % (GW_MAC, _tunnel(info["encap_ip"], tun)))
    add(T_UPLINK_IN, 0, "", "drop")
    add(T_UNSNAT, 100, "ip,nw_dst=%s" % SNAT_IP,
        "ct(table=%d,zone=%d,nat)" % (T_UNSNAT_DONE, SNAT_ZONE))
    add(T_UNSNAT, 0, "", "drop")
    for state in ("+est+trk", "+rel+trk"):
        add(T_UNSNAT_DONE, 100, "ct_state=%s,ip,nw_dst=%s" % (state, SUBNET),
            "set_field:%s->eth_dst,goto_table:%d" % (GW_MAC, T_ROUTE))
    add(T_UNSNAT_DONE, 0, "", "drop")
    # 30 OUT_PRE_STATEFUL, 31 OUT_ACL, 32 OUTPUT (to-lport).
    add(T_OUT_PRE_STATEFUL, 100, "ip", "ct(table=%d,zone=%s,nat)" % (T_OUT_ACL, ZONE))
    add(T_OUT_PRE_STATEFUL, 0, "", "goto_table:%d" % T_OUTPUT)
    add(T_OUT_ACL, 65535, "ct_state=+inv+trk", "drop")
    add(T_OUT_ACL, 65534, "ct_state=-new+est-inv+trk", "goto_table:%d" % T_OUTPUT)
    add(T_OUT_ACL, 65534, "ct_state=-new+rel-inv+trk", "goto_table:%d" % T_OUTPUT)
    mv_zone = zone_of(MIGRATING_VM)
    add(T_OUT_ACL, 2001, "reg13=%d,ct_state=+new+trk,tcp,tp_dst=%d" % (mv_zone, FW_IN_PORT),
        "ct(commit,zone=%s),goto_table:%d" % (ZONE, T_OUTPUT))
    add(T_OUT_ACL, 2000, "reg13=%d,ct_state=+new+trk" % mv_zone, "drop")
    add(T_OUT_ACL, 1, "ct_state=+new+trk,ip",
        "ct(commit,zone=%s),goto_table:%d" % (ZONE, T_OUTPUT))
    add(T_OUT_ACL, 0, "", "drop")
    for vm in local:
        add(T_OUTPUT, 100, "reg15=%d" % ports[vm], "output:%d" % ports[vm])
    add(T_OUTPUT, 0, "", "drop")
    # 40 PLAIN: the switch without middleboxes.
    for vm, ip in sorted(plain.items()):
        where = placement.get(vm)
        add(T_PLAIN, 100, "arp,arp_op=1,arp_tpa=%s" % ip, _arp_reply(macs[vm], ip))
        if where == host:
            add(T_CLASSIFY, 100, "in_port=%d,dl_src=%s" % (ports[vm], macs[vm]),
                "goto_table:%d" % T_PLAIN)
            add(T_PLAIN, 90, "dl_dst=%s" % macs[vm], "output:%d" % ports[vm])
        elif where is not None:
            add(T_PLAIN, 90, "reg10=0,dl_dst=%s" % macs[vm],
                _tunnel(hosts[where]["encap_ip"], tun, PLAIN_VNI))
    if plain:
        add(T_CLASSIFY, 100, "in_port=%d,tun_id=%d" % (tun, PLAIN_VNI),
            "set_field:1->reg10,goto_table:%d" % T_PLAIN)
        add(T_PLAIN, 0, "", "drop")
    return flows


# ------------------------------------------------------------ lab plumbing
def _ofport(lab, host, iface, timeout=10):
    def get():
        out = lab.vsctl(host, "get", "interface", iface, "ofport").strip()
        return int(out) if out.lstrip("-").isdigit() and int(out) > 0 else None
    return wait_until(get, timeout, interval=0.01, what="ofport of %s on %s" % (iface, host))


def _write_lines(lines):
    fd, path = tempfile.mkstemp(prefix="ctbaseline-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def host_flows(lab, host):
    """The pipeline flows of ``host`` for the VMs where the lab state has them."""
    placement = {vm: info["host"] for vm, info in lab.state["vms"].items()}
    macs = {vm: info["mac"] for vm, info in lab.state["vms"].items()}
    plain = {vm: info["ip"].split("/")[0] for vm, info in lab.state["vms"].items()
             if vm not in VMS}
    ports = {vm: _ofport(lab, host, info["vif"])
             for vm, info in lab.state["vms"].items() if info["host"] == host}
    for iface in (TUNNEL_PORT, UPLINK_PORT):
        ports[iface] = _ofport(lab, host, iface)
    return pipeline_flows(host, lab.state["hosts"], placement, macs, ports,
                          lab.uplink_mac(host), plain)


def _ofctl_file(lab, host, command, lines):
    path = _write_lines(lines)
    try:
        lab.ofctl(host, command, path)
    finally:
        os.unlink(path)


def take_over(lab, log=print):
    """Stop the lab's controller and every host's mbxd (by their recorded
    PIDs), disconnect br-int from the controller and delete all its flows and
    groups."""
    stopped = lab.controllers_stop()
    for host in lab.state["hosts"]:
        lab.mbxd_stop(host)
        lab.vsctl(host, "del-controller", "br-int")
        lab.ofctl(host, "del-flows")
        lab.ofctl(host, "del-groups")
        lab.vsctl(host, "set", "bridge", "br-int", "protocols=OpenFlow13,OpenFlow15")
    log("controller and mbxd stopped; br-int flows deleted on %s"
        % ", ".join(sorted(lab.state["hosts"])))
    return stopped


def install(lab, hosts=None):
    """Install (or, after a move, update: ``replace-flows`` changes only what
    differs) the conntrack pipeline on ``hosts`` (default: all)."""
    for host in hosts or sorted(lab.state["hosts"]):
        flows = host_flows(lab, host)
        groups = lab.ofctl(host, "dump-groups")
        if not groups.count("group_id=%d," % LB_GROUP):
            _ofctl_file(lab, host, "add-groups", pipeline_groups())
        if not groups.count("group_id=%d," % HASH_GROUP):
            path = _write_lines(hash_groups())
            try:
                sh_run(["ovs-ofctl", "-O", "OpenFlow15", "add-groups",
                        "unix:%s/br-int.mgmt" % lab.host_dir(host), path])
            finally:
                os.unlink(path)
        _ofctl_file(lab, host, "replace-flows", flows)


def migrate(lab, name, to):
    """Live-migration re-plumb without a controller: unplug on the source,
    move the veth, plug on the destination, install the flows for the VM's
    new place on every host (destination first), link up.  No conntrack
    entry goes anywhere.  Returns the step timings in milliseconds."""
    vm = lab.state["vms"].get(name)
    if vm is None:
        raise LabError("unknown VM '%s'" % name)
    src = vm["host"]
    if to == src or to not in lab.state["hosts"]:
        raise LabError("cannot move %s from %s to %s" % (name, src, to))
    marks = [("start", time.monotonic())]
    lab.vsctl(src, "del-port", "br-int", vm["vif"])
    marks.append(("unplug", time.monotonic()))
    sh_run(["ip", "link", "set", vm["vif"], "netns", lab.host_ns(to)],
           netns=lab.host_ns(src))
    marks.append(("move", time.monotonic()))
    vm["host"] = to
    lab._save()
    lab.vsctl(to, "add-port", "br-int", vm["vif"], "--", "set", "interface", vm["vif"],
              "external_ids:iface-id=%s" % name, "external_ids:attached-mac=%s" % vm["mac"])
    marks.append(("plug", time.monotonic()))
    install(lab, [to] + sorted(h for h in lab.state["hosts"] if h != to))
    marks.append(("flows", time.monotonic()))
    sh_run(["ip", "link", "set", vm["vif"], "up"], netns=lab.host_ns(to))
    marks.append(("link-up", time.monotonic()))
    steps = {label: round((t - prev) * 1000, 1)
             for (_, prev), (label, t) in zip(marks, marks[1:])}
    steps["total"] = round((marks[-1][1] - marks[0][1]) * 1000, 1)
    return steps


def build(lab, hosts, log=print):
    """The lab and the scenario's VMs (placed by the controller), then the
    conntrack pipeline instead of mbx's."""
    lab.up(list(hosts), log=log)
    proc = lab.mbxctl("ls-add", SWITCH, "--vni", str(VNI), "--subnet", SUBNET,
                      "--tenant", TENANT, "--gateway", GATEWAY_IP)
    if proc.returncode != 0:
        raise LabError("mbxctl ls-add: %s" % proc.stderr.strip())
    for vm, (ip, host) in VMS.items():
        if host not in hosts:
            host = hosts[-1]
        lab.vm_add(vm, host, SWITCH, "%s/%d" % (ip, PREFIXLEN))
    take_over(lab, log)
    install(lab)


def _servers(lab, rundir):
    py = sys.executable
    procs = []
    for vm in BACKENDS:
        procs.append(lab.spawn(vm, [py, "-m", "lab.probe", "serve", "--port",
                                    str(BACKEND_PORT)], os.path.join(rundir, vm + ".serve.log")))
    procs.append(lab.spawn("mv", [py, "-m", "lab.probe", "serve", "--port", str(FW_IN_PORT)],
                           os.path.join(rundir, "mv.serve.log")))
    procs.append(lab.spawn("peer", [py, "-m", "lab.probe", "serve", "--port",
                                    str(FW_OUT_PORT)], os.path.join(rundir, "peer.serve.log")))
    procs.append(lab.ext_spawn(EXT_SERVER, [py, "-m", "lab.probe", "serve", "--port",
                                            str(EXT_SERVER_PORT)],
                               os.path.join(rundir, "xs.serve.log")))
    return procs


def _wait_listening(lab, timeout=10):
    """Every server of the scenario listens."""
    wait_listening([(lab.exec, vm, BACKEND_PORT) for vm in BACKENDS] + [
        (lab.exec, "mv", FW_IN_PORT), (lab.exec, "peer", FW_OUT_PORT),
        (lab.ext_exec, EXT_SERVER, EXT_SERVER_PORT)], timeout)


def wait_listening(checks, timeout=10):
    """Each ``(execute, namespace name, port)`` listens: a local connect
    inside its namespace (``execute``: ``Lab.exec`` or ``Lab.ext_exec``)."""
    code = ("import socket,sys\ntry:\n socket.create_connection(('127.0.0.1',%d),0.5)"
            ".close()\nexcept OSError:\n sys.exit(1)")
    for execute, name, port in checks:
        wait_until(lambda: execute(name, [sys.executable, "-c", code % port],
                                   capture_output=True).returncode == 0,
                   timeout, interval=0.1, what="%s to listen on %d" % (name, port))


def lb_backends(lab, host):
    """{client port: backend address} of mv's LB connections in ``host``'s
    conntrack (mv's zone), from ``dpctl/dump-conntrack``."""
    out = lab.appctl(host, "dpctl/dump-conntrack", "zone=%d" % zone_of(MIGRATING_VM))
    found = {}
    for line in out.splitlines():
        m = re.search(r"orig=\(src=%s,dst=%s,sport=(\d+),dport=%d\),"
                      r"reply=\(src=([\d.]+),"
                      % (re.escape(VMS[MIGRATING_VM][0]), re.escape(VIP), VIP_PORT), line)
        if m and "state=ESTABLISHED" in line:
            found[int(m.group(1))] = m.group(2)
    return found


def _by_name(*reports):
    return {c["name"]: c for r in reports for c in r.get("connections", [])}


def run(hosts=3, per_kind=3, settle=3.0, log=print, prefix=PREFIX, rundir=RUNDIR):
    """Build the scenario on a fresh lab, check every connection works, move
    mv h1 -> h2, give it ``settle`` seconds, and count the survivors per
    kind.  The lab is always torn down."""
    if hosts < 2:
        raise LabError("the baseline needs at least 2 hosts (mv moves h1 -> h2)")
    names = ["h%d" % i for i in range(1, hosts + 1)]
    Lab(prefix=prefix, rundir=rundir).down(log=lambda *_: None)   # a leftover
    lab = Lab(prefix=prefix, rundir=rundir)
    probes = {}
    try:
        t0 = time.monotonic()
        build(lab, names, log)
        log("conntrack pipeline on %d hosts (%.1f s)" % (hosts, time.monotonic() - t0))
        _servers(lab, rundir)
        _wait_listening(lab)
        duration = settle + 120
        targets = {"mv": [], "peer": []}
        for kind, (client, addr, port) in KINDS.items():
            targets[client].append((kind, addr, port, per_kind))
        for client, tlist in targets.items():
            probes[client] = Conns(lab, client, tlist,
                                   os.path.join(rundir, "conns-%s.json" % client),
                                   duration=duration)
        total = per_kind * len(KINDS)

        def exchanging(min_replies):
            def check(_=None):
                reports = [p.read() for p in probes.values()]
                conns = _by_name(*reports)
                return len(conns) == total and all(
                    c["connected"] and c["error"] is None and c["received"] >= min_replies
                    for c in conns.values())
            return check
        try:
            wait_until(exchanging(10), 20, interval=0.1,
                       what="all %d connections to exchange 10 echoes" % total)
        except LabError:
            conns = _by_name(*[p.read() for p in probes.values()])
            raise LabError("the conntrack pipeline does not work before the move: %s"
                           % json.dumps({n: (c["connected"], c["received"], c["error"])
                                         for n, c in sorted(conns.items())}))
        before = _by_name(*[p.read() for p in probes.values()])
        picked = lb_backends(lab, SOURCE_HOST)
        steps = migrate(lab, MIGRATING_VM, DEST_HOST)
        at_move = _by_name(*[p.read() for p in probes.values()])
        log("migrated %s %s -> %s in %.1f ms" % (MIGRATING_VM, SOURCE_HOST, DEST_HOST,
                                                steps["total"]))
        time.sleep(settle)
        repicked = lb_backends(lab, DEST_HOST)
        finals = [p.stop() for p in probes.values()]
        probes.clear()
        final = _by_name(*finals)
        result = summarize(before, at_move, final, steps, settle)
        result["lb_backends"] = {
            name: {"before": picked.get(c["local_port"]),
                   "after": repicked.get(c["local_port"])}
            for name, c in sorted(final.items()) if name.split("#")[0] == "lb"}
        return result
    finally:
        for probe in probes.values():
            try:
                probe.stop()
            except Exception:       # the lab goes down anyway
                pass
        lab.down(log=lambda *_: None)


def summarize(before, at_move, final, steps=None, settle=0.0):
    """The result dict from the per-connection reports: before the move
    (all exchanging), right after it, and the final one.  A connection
    survived if it has no error and got echoes after the move."""
    kinds = {kind: {"total": 0, "survived": 0} for kind in KINDS}
    errors, gaps = {}, {}
    for name, conn in sorted(final.items()):
        kind = name.split("#")[0]
        kinds.setdefault(kind, {"total": 0, "survived": 0})["total"] += 1
        error = conn["error"]
        moved = at_move.get(name, conn)
        if error is None and conn["received"] <= moved["received"]:
            error = "stalled: no reply in the %.1f s after the move" % settle
        if error is None:
            kinds[kind]["survived"] += 1
            gaps[name] = conn["max_gap_ms"]
        else:
            errors[name] = error
    return {"pipeline": PIPELINE,
            "kinds": kinds,
            "total": sum(k["total"] for k in kinds.values()),
            "survived": sum(k["survived"] for k in kinds.values()),
            "errors": errors,
            "before": {"connected": sum(1 for c in before.values() if c["connected"]),
                       "exchanging": sum(1 for c in before.values()
                                         if c["error"] is None and c["received"] > 0)},
            "max_gap_ms": gaps,
            "migrate_ms": steps or {}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.ctbaseline", description=(
        "How many established connections survive a VM migration with an "
        "OVS-conntrack pipeline (no state transfer); prints JSON."))
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--per-kind", type=int, default=3)
    p.add_argument("--settle", type=float, default=3.0)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m lab.ctbaseline needs root (network namespaces)", file=sys.stderr)
        return 2
    result = run(hosts=args.hosts, per_kind=args.per_kind, settle=args.settle,
                 log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
