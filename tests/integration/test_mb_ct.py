"""The conntrack pipeline's OpenFlow vocabulary against a real ovs-vswitchd
(userspace datapath): every new action and match field installed through
``middlebox.ofconn.OfConn`` reads back equal (``ryu_apps.ofmsg``), select
groups with ct/nat buckets read back equal, groups ride in the flows'
bundles, and a PACKET_OUT commits a conntrack entry with its mark, label and
NAT (checked with ``ovs-appctl dpctl/dump-conntrack zone=N``).

One sandbox for the module (its own namespace ``mbxct-<pid>``, ovsdb-server
and ovs-vswitchd), removed even when a test fails.
"""

import os
import re
import socket
import struct
import sys
import time

import pytest

# ``middlebox`` may not be in the installed package list yet (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mbio_host import MB_PORT, pump, sandbox, sync  # noqa: E402
from middlebox.ofconn import OfConn  # noqa: E402
from ryu_apps import ofmsg  # noqa: E402
from ryu_apps.ofmodel import (CT_EST, CT_NEW, CT_TRK, Flow, Group,  # noqa: E402
                              canon_match, ct_state_match)

pytestmark = pytest.mark.lab

NS_PREFIX = "mbxct-"
COOKIE = 0x4D42440000000000
COOKIE_MASK = 0xFFFFFF0000000000
OFPET_GROUP_MOD_FAILED, OFPGMFC_GROUP_EXISTS = 6, 0
OFPET_EXPERIMENTER, ONFBFC_MSG_FAILED = 0xFFFF, 2313
ZONE = 7
SNAT_IP = "203.0.113.100"
LABEL = (1 << 127) | 0xABCDEF


@pytest.fixture(scope="module")
def host():
    yield from sandbox(NS_PREFIX)


class Events:
    def __init__(self):
        self.barriers, self.errors = [], []


@pytest.fixture
def ofconn(host):
    events = Events()
    conn = OfConn(host.mgmt(), on_barrier=events.barriers.append,
                  on_error=lambda *args: events.errors.append(args))
    conn.connect()
    yield conn, events
    conn.close()
    host.ofctl("del-flows")
    host.ofctl("del-groups")
    host.appctl("dpctl/flush-conntrack")


def ct_snat(port, zone="reg5", table=None):
    return ("ct", True, zone, table, ("nat", "src", SNAT_IP, SNAT_IP, port, port),
            (("set_field", "ct_mark", 0x1234), ("set_field", "ct_label", LABEL)))


def flows_of_every_kind():
    """One flow per new action and match field."""
    def flow(n, match, *actions):
        return Flow(10, 100 + n, match, (("apply", actions),), cookie=COOKIE | n)
    ip = dict(eth_type=0x0800)
    return [
        flow(1, canon_match(ct_state=ct_state_match(CT_TRK | CT_EST, CT_NEW), **ip),
             ("ct", True, "reg5", 30,
              ("nat", "src", "203.0.113.100", "203.0.113.110", 40001, 40100),
              (("set_field", "ct_mark", 0x1234), ("set_field", "ct_label", LABEL),
               ("load", "ct_mark", 5, 16, 8)))),
        flow(2, canon_match(ct_state=CT_TRK | CT_EST, ct_zone=7, ct_mark=(3, 0xFF),
                            ct_label=(5 << 64, 0xFF << 64), **ip),
             ("ct", False, 7, None, ("nat",), ())),
        flow(3, canon_match(ip_proto=1, icmpv4_type=8, icmpv4_code=0, **ip),
             ("ct", True, 9, 31, ("nat", "dst", "10.0.0.2", "10.0.0.2", None, None), ()),
             ("ct_clear",)),
        flow(4, canon_match(ip_proto=6, tcp_flags=(0x002, 0x012), ct_mark=9,
                            ct_label=LABEL, **ip),
             ct_snat(40001, zone=ZONE)),
        flow(5, canon_match(conj_id=77, **ip),
             ("load", "reg5", ZONE, 0, 16), ("load", "eth_dst", 0xA, 0, 8),
             ("move", "reg0", 0, "reg1", 8, 16), ("resubmit", 20), ("group", 1)),
        flow(6, canon_match(ipv4_src="10.0.0.1", **ip), ("conjunction", 77, 1, 2)),
        flow(7, canon_match(ipv4_dst="10.0.0.2", ip_proto=6, tcp_flags=0x002, **ip),
             ("conjunction", 77, 2, 2)),
        # in_port's register load, which OVS writes back with the NXM header.
        flow(8, canon_match(in_port=1), ("set_field", "in_port", 0), ("output", 1)),
    ]


def lb_group(group_id=1):
    backends = (("10.0.0.2", 80), ("10.0.0.3", 8080))
    return Group(group_id, "select", tuple(
        (weight, (("load", "reg5", ZONE, 0, 16),
                  ("ct", True, "reg5", 30, ("nat", "dst", ip, ip, port, port),
                   (("set_field", "ct_mark", 0x10 + weight),))))
        for weight, (ip, port) in zip((1, 3), backends)))


def test_every_new_action_and_match_field_reads_back_equal(host, ofconn):
    conn, events = ofconn
    group = lb_group()
    conn.send_groups([group])
    flows = flows_of_every_kind()
    conn.send_flows(add=flows, send_flow_rem=False)
    sync(conn, events.barriers)
    assert not events.errors
    got = sorted((e[0] for e in conn.dump_flows(COOKIE, COOKIE_MASK)), key=repr)
    assert got == sorted(flows, key=repr)
    text = host.ofctl("dump-flows", "table=10")
    # The clause numbering is ovs-ofctl's (the wire carries k - 1).
    assert "conjunction(77,1/2)" in text and "conjunction(77,2/2)" in text
    assert "nat(src=203.0.113.100-203.0.113.110:40001-40100)" in text
    assert "ct_state=-new+est+trk" in text


def test_groups_read_back_equal_and_change_by_command(host, ofconn):
    conn, events = ofconn
    groups = [lb_group(1),
              Group(2, "all", ((0, (("output", 1),)), (0, (("ct_clear",), ("output", 2))))),
              Group(3, "indirect", ((0, (ct_snat(40001),)),))]
    conn.send_groups(groups, "add")
    sync(conn, events.barriers)
    assert not events.errors
    assert sorted(conn.dump_groups(), key=repr) == sorted(groups, key=repr)
    # add_or_mod (Open vSwitch's extension) on OpenFlow 1.3: replaces group
    # 2, adds group 4; modify replaces; delete removes.
    changed = Group(2, "all", ((0, (("output", 3),)),))
    new = Group(4, "select", ((5, (("group", 3),)),))
    conn.send_groups([changed, new], "add_or_mod")
    conn.send_groups([Group(3, "indirect", ((0, (ct_snat(40002),)),))], "modify")
    sync(conn, events.barriers)
    assert not events.errors
    assert sorted(conn.dump_groups(), key=repr) == sorted(
        [groups[0], changed, new, Group(3, "indirect", ((0, (ct_snat(40002),)),))], key=repr)
    conn.send_groups([new, groups[0]], "delete")
    sync(conn, events.barriers)
    assert sorted(g.group_id for g in conn.dump_groups()) == [2, 3]
    # "add" of an existing group is refused, and the error names the request.
    xids = conn.send_groups([changed], "add")
    sync(conn, events.barriers)
    assert events.errors == [(xids[0], OFPET_GROUP_MOD_FAILED, OFPGMFC_GROUP_EXISTS)]


def test_groups_and_the_flows_using_them_go_in_one_bundle(host, ofconn):
    conn, events = ofconn
    group = lb_group(5)
    uses = Flow(10, 50, canon_match(eth_type=0x0800), (("apply", (("group", 5),)),),
                cookie=COOKIE | 50)
    conn.send_flows(add=[uses], groups=[("add", group)], bundle=True, send_flow_rem=False)
    sync(conn, events.barriers)
    assert not events.errors and conn.bundles_committed == 1
    assert conn.dump_groups() == [group]
    assert [e[0] for e in conn.dump_flows(COOKIE, COOKIE_MASK)] == [uses]
    # A flow using a group that does not exist spoils the whole bundle: the
    # group added with it is not there either.  OVS finds it only at the
    # commit (a group of the same bundle might have been the one): the
    # flow-mod's error, then the commit's (ONF bundle error MSG_FAILED).
    other = Group(6, "all", ((0, (("output", 1),)),))
    dangling = Flow(10, 51, canon_match(eth_type=0x0800), (("apply", (("group", 99),)),),
                    cookie=COOKIE | 51)
    xids = conn.send_flows(add=[dangling], groups=[("add", other)], bundle=True)
    sync(conn, events.barriers)
    assert [e[0] for e in events.errors][:1] == [xids[1]]
    assert [e[1:] for e in events.errors[1:]] == [(OFPET_EXPERIMENTER, ONFBFC_MSG_FAILED)]
    assert conn.bundles_failed == 1
    assert conn.dump_groups() == [group]
    assert [e[0] for e in conn.dump_flows(COOKIE, COOKIE_MASK)] == [uses]


def tcp_syn(sport, src="10.0.0.1", dst="10.0.0.2", dport=80):
    """An Ethernet/IPv4/TCP SYN with correct checksums (conntrack checks them)."""
    def csum(data):
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(saddr + daddr + struct.pack("!BBH", 0, 6, 20)
                                            + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + tcp


def commit_actions(zone, port, mark, label):
    """What the migration import sends per connection."""
    return (("load", "reg5", zone, 0, 16),
            ("ct", True, "reg5", None, ("nat", "src", SNAT_IP, SNAT_IP, port, port),
             (("set_field", "ct_mark", mark), ("set_field", "ct_label", label))))


def conntrack(host, zone):
    return [line for line in host.appctl("dpctl/dump-conntrack", "zone=%d" % zone).splitlines()
            if line.strip()]


def test_packet_out_commits_a_conntrack_entry_with_mark_label_and_nat(host, ofconn):
    conn, events = ofconn
    plain = ofmsg.packet_out_bytes(tcp_syn(40000), commit_actions(ZONE, 40001, 0x1234, LABEL))
    encoder = ofmsg.PacketOutEncoder(commit_actions(ZONE, 40001, 0x1234, LABEL))
    fast = encoder.encode(tcp_syn(40010), commit_actions(ZONE + 1, 40011, 77, 5 << 64))
    xids = conn.send_packet_outs([plain, fast])
    sync(conn, events.barriers)
    assert not events.errors and len(xids) == 2 and conn.packet_outs_sent == 2
    (entry,) = conntrack(host, ZONE)
    assert "orig=(src=10.0.0.1,dst=10.0.0.2,sport=40000,dport=80)" in entry
    assert "reply=(src=10.0.0.2,dst=%s,sport=80,dport=40001)" % SNAT_IP in entry
    assert "mark=%d," % 0x1234 in entry and "labels=%#x," % LABEL in entry
    (entry,) = conntrack(host, ZONE + 1)
    assert "reply=(src=10.0.0.2,dst=%s,sport=80,dport=40011)" % SNAT_IP in entry
    assert "mark=77," in entry and "labels=%#x," % (5 << 64) in entry


def test_commit_2000_connections_rate(host, ofconn):
    conn, events = ofconn
    n, zone = 2000, 300
    template = commit_actions(zone, 40001, 1, 1)
    encoder = ofmsg.PacketOutEncoder(template)
    packets = [(tcp_syn(10000 + i), commit_actions(zone, 40001 + i, 1 + i, (1 + i) << 64))
               for i in range(n)]
    start = time.perf_counter()
    msgs = [encoder.encode(data, actions) for data, actions in packets]
    built = time.perf_counter()
    conn.send_packet_outs(msgs)
    sync(conn, events.barriers, timeout=20)
    done = time.perf_counter()
    assert not events.errors
    entries = conntrack(host, zone)
    assert len(entries) == n
    marks = {int(re.search(r"mark=(\d+),", e).group(1)): e for e in entries}
    assert sorted(marks) == list(range(1, n + 1))
    assert all("dport=%d)" % (40000 + i) in e and "labels=%#x," % (i << 64) in e
               for i, e in marks.items())
    print("\n%d conntrack commits by PACKET_OUT: built in %.1f ms (%.1f us each), "
          "committed (barrier) after %.0f ms = %.0f/s"
          % (n, 1e3 * (built - start), 1e6 * (built - start) / n, 1e3 * (done - start),
             n / (done - start)))


def test_port_number_by_name(host, ofconn):
    conn, _ = ofconn
    assert conn.port_number(MB_PORT) == host.ofport(MB_PORT)
    assert conn.port_number("no-such-port") is None
