"""Conntrack entries re-created by PACKET_OUT (``middlebox.ctcommit``) in a
real ovs-vswitchd (userspace datapath), read back with ``ovs-appctl
dpctl/dump-conntrack -s zone=Z`` and ``middlebox.conn.parse_dump``: every
kind of record (TCP established plain, through SNAT, through DNAT, TCP
SYN_SENT, UDP through SNAT, ICMP plain and through SNAT) comes back as it
was committed, with its translation, mark and label; a zone dumped and
committed into another zone is the same zone's content again (what a
migration does).

One sandbox for the module (its own namespace ``mbxcc-<pid>``, ovsdb-server
and ovs-vswitchd), removed even when a test fails.
"""

import os
import sys
import time

import pytest

# ``middlebox`` may not be in the installed package list yet (setup.cfg's
# package list); make the repo root importable either way.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mbio_host import pump, sandbox  # noqa: E402
from middlebox import ctcommit  # noqa: E402
from middlebox.conn import Conn, parse_dump  # noqa: E402
from middlebox.ofconn import OfConn  # noqa: E402
from middlebox.packet import ip_int  # noqa: E402

pytestmark = pytest.mark.lab

NS_PREFIX = "mbxcc-"
A, B, PEER, VIP = ip_int("10.0.0.10"), ip_int("10.0.0.20"), ip_int("198.51.100.10"), \
    ip_int("10.0.0.100")
SNAT_IP = ip_int("203.0.113.100")
LABEL = (0xABCDEF << 32) | (1 << 127) | 0x77
DAY = 24 * 3600


def records(zone):
    """One record of each kind, as a zone of ``zone`` would hold them."""
    def c(*fields, mark=0x1005, label=LABEL, state=""):
        return Conn(*fields, zone, mark, label, state)
    est = "ESTABLISHED"
    return [
        c(6, A, 40000, B, 80, B, 80, A, 40000, state=est),                       # plain
        c(6, A, 40001, PEER, 80, PEER, 80, SNAT_IP, 5001, state=est),            # SNAT
        c(6, PEER, 40002, VIP, 80, B, 8080, PEER, 40002, mark=0x3005, state=est),  # DNAT
        c(6, A, 40003, PEER, 443, PEER, 443, SNAT_IP, 5003, state="SYN_SENT"),
        c(17, A, 40004, PEER, 53, PEER, 53, SNAT_IP, 5004),                      # UDP SNAT
        c(17, A, 40005, B, 53, B, 53, A, 40005, mark=7, label=0),                # UDP plain
        c(1, A, 4242, B, 8 << 8, B, 4242, A, 0),                                 # ICMP echo
        c(1, A, 4343, PEER, 8 << 8, PEER, 4343, SNAT_IP, 0),                     # ICMP SNAT
    ]


@pytest.fixture(scope="module")
def host():
    yield from sandbox(NS_PREFIX)


def dump(host, zone):
    return parse_dump(host.appctl("dpctl/dump-conntrack", "-s", "zone=%d" % zone))


@pytest.fixture
def ofconn(host):
    barriers, errors = [], []
    conn = OfConn(host.mgmt(), on_barrier=barriers.append,
                  on_error=lambda *args: errors.append(args))
    conn.connect()
    yield conn, barriers, errors
    conn.close()
    host.appctl("dpctl/flush-conntrack")


def commit(ofconn, data, timeout=30.0):
    """Send the packet-outs, then wait for a barrier after them."""
    conn, barriers, errors = ofconn
    conn.send_packet_outs([data])
    xid = conn.barrier()
    pump(conn, lambda: xid in barriers, timeout)
    assert not errors, errors


def same_entries(got, want):
    """The dump equals the records, timeouts aside; the timeouts are those
    of re-created entries (ESTABLISHED: a day; SYN_SENT: 30 s; UDP, ICMP:
    60 s)."""
    assert got.other == got.malformed == 0
    assert sorted(c._replace(timeout=None) for c in got) == sorted(want)
    for c in got:
        if c.state == "ESTABLISHED":
            assert DAY - 60 < c.timeout <= DAY, c
        else:
            assert 0 < c.timeout <= 60, c


def test_every_kind_of_record_is_re_created_as_it_was(host, ofconn):
    zone = 71
    want = records(zone)
    skipped = []
    commit(ofconn, ctcommit.packet_outs(want, lambda c: c.zone, lambda c: c.mark,
                                        lambda c: c.label, skipped))
    assert skipped == []
    got = dump(host, zone)
    same_entries(got, want)
    by_key = {c.key: c for c in got}
    assert by_key[want[1].key].snat == (SNAT_IP, 5001)
    assert by_key[want[2].key].dnat == (B, 8080)
    assert by_key[want[7].key].snat == (SNAT_IP, None)


def test_a_dumped_zone_committed_elsewhere_is_the_same_zone(host, ofconn):
    # What a migration does: dump, move the records, commit into the zone
    # the VM has on the new host (here: another zone of the same switch).
    commit(ofconn, ctcommit.packet_outs(records(72), lambda c: c.zone, lambda c: c.mark,
                                        lambda c: c.label))
    dumped = dump(host, 72)
    commit(ofconn, ctcommit.packet_outs(dumped, lambda c: 73, lambda c: c.mark,
                                        lambda c: c.label))
    same_entries(dump(host, 73), [c._replace(zone=73, timeout=None) for c in dumped])


def test_lazy_commits_commit_into_each_record_s_own_zone(host, ofconn):
    want = records(74) + [c._replace(zone=75) for c in records(75)[:2]]
    lazy = ctcommit.LazyCommits(want)
    first = lazy.take(ctcommit.packet_keys(want[1])[1])     # a reply's first packet
    commit(ofconn, b"".join(first + lazy.chunk(len(want))))
    same_entries(dump(host, 74), want[:-2])
    same_entries(dump(host, 75), want[-2:])


def test_10k_connections_round_trip_through_the_switch(host, ofconn):
    zone, n = 76, 10000
    want = [Conn(6, A + i % 7, 1024 + i, PEER + i % 100, 443, PEER + i % 100, 443, SNAT_IP,
                 20000 + i, zone, 0x1005, (i << 32) | 9, "ESTABLISHED") for i in range(n)]
    t0 = time.perf_counter()
    data = ctcommit.packet_outs(want, lambda c: c.zone, lambda c: c.mark, lambda c: c.label)
    t1 = time.perf_counter()
    commit(ofconn, data, timeout=120)
    t2 = time.perf_counter()
    text = host.appctl("dpctl/dump-conntrack", "-s", "zone=%d" % zone)
    t3 = time.perf_counter()
    got = parse_dump(text)
    t4 = time.perf_counter()
    same_entries(got, want)
    print("\n%d established SNAT connections: packet-outs built in %.0f ms, committed "
          "(barrier) in %.0f ms, dumped in %.0f ms, parsed in %.0f ms"
          % (n, 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2), 1e3 * (t4 - t3)))
