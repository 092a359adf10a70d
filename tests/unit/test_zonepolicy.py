"""The middlebox timeout options as the zones' conntrack timeout policies."""

import types

import pytest

from middlebox import zonepolicy as Z
from middlebox.config import HostConfig, SliceConfig, VmSpec


SYN = {"tcp_syn_sent": Z.DEFAULT_SYN_TIMEOUT, "tcp_syn_recv": Z.DEFAULT_SYN_TIMEOUT}


def test_options_become_timeout_policy_keys():
    # A half-open connection ages out quickly even when nothing is set.
    assert Z.policy({}) == SYN
    assert Z.policy({"check": "offload"}) == SYN
    assert Z.policy({"timeout-tcp-syn": "3"}) == {"tcp_syn_sent": 3, "tcp_syn_recv": 3}
    assert Z.policy({"timeout-tcp-established": "60", "timeout-udp": "5"}) == {
        "tcp_established": 60, "udp_first": 5, "udp_single": 5, **SYN}
    assert Z.policy({"timeout-tcp-closing": "7"}) == {
        **SYN, **{k: 7 for k in ("tcp_fin_wait", "tcp_close_wait", "tcp_last_ack",
                                 "tcp_time_wait", "tcp_close")}}
    assert Z.policy({"timeout-icmp": "nonsense", "timeout-udp-replied": "0"}) == SYN


def slice_config(tag, vms, options, snat=()):
    return SliceConfig(tag, "fw-%d" % tag, "firewall", "t", "ls", 100, options=options,
                       vms=tuple(VmSpec(n, "02:00:00:00:00:%02x" % i, "10.0.0.%d" % i, "h1")
                                 for i, n in enumerate(vms, 1)),
                       snat_blocks={u: ("203.0.113.1", 4096, 8191) for u in snat})


def test_a_zone_takes_the_policy_of_its_first_slice():
    config = HostConfig("h1", {
        7: slice_config(7, ("a", "b"), {"timeout-icmp": "9"}, snat=("r1",)),
        3: slice_config(3, ("a",), {"timeout-udp": "4"})})
    zones = {("vm", "a"): 10, ("vm", "b"): 11, ("snat", "r1"): 12, ("vm", "gone"): 13}
    assert Z.zone_policies(config, zones) == {
        10: {"udp_first": 4, "udp_single": 4, **SYN},     # tag 3 comes first
        11: {"icmp_first": 9, "icmp_reply": 9, **SYN},
        12: {"icmp_first": 9, "icmp_reply": 9, **SYN}}
    assert Z.zone_policies(None, zones) == {}


class FakeVsctl:
    def __init__(self):
        self.calls = []
        self.datapath = False

    def __call__(self, cmd, **_kw):
        args = cmd[3:]
        self.calls.append(args)
        if args[:1] == ["get"]:
            return types.SimpleNamespace(returncode=0 if self.datapath else 1, stderr="")
        if "create" in args:
            self.datapath = True
        return types.SimpleNamespace(returncode=0, stderr="")


def test_policies_are_written_once_and_removed_with_their_zone():
    run = FakeVsctl()
    zp = Z.ZonePolicies("unix:/x/db.sock", run=run)
    zp.update({5: {"tcp_established": 60}})
    assert any("create" in c for c in run.calls)          # the netdev Datapath row
    add = [c for c in run.calls if "add-zone-tp" in c]
    assert add and add[-1][-2:] == ["zone=5", "tcp_established=60"]
    n = len(run.calls)
    zp.update({5: {"tcp_established": 60}})                # unchanged: nothing to do
    assert len(run.calls) == n
    zp.update({})
    assert run.calls[-1] == ["--if-exists", "del-zone-tp", "netdev", "zone=5"]
    assert zp.applied == {}


# ------------------------------------------------------------------ limits
class FakeSwitch:
    """ovs-vswitchd's conntrack limits as ``dpctl/ct-*-limits`` and
    ``ct-*-maxconns`` keep them (``restart`` forgets them, as a restarted
    ovs-vswitchd does)."""

    def __init__(self):
        self.limits, self.maxconns, self.calls = {}, 3000000, []

    def call(self, command, *args):
        self.calls.append((command,) + args)
        if command == "dpctl/ct-set-limits":
            for arg in args:
                zone, limit = (int(p.split("=")[1]) for p in arg.split(","))
                self.limits[zone] = limit
        elif command == "dpctl/ct-del-limits":
            for z in self.zones(args):
                self.limits.pop(z, None)
        elif command == "dpctl/ct-get-limits":
            zones = self.zones(args)
            return "default limit=0\n" + "".join(
                "zone=%d,limit=%d,count=%d\n" % (z, self.limits.get(z, 0), 7) for z in zones)
        elif command == "dpctl/ct-set-maxconns":
            self.maxconns = int(args[0])
        elif command == "dpctl/ct-get-maxconns":
            return "%d\n" % self.maxconns
        elif command == "dpctl/ct-get-nconns":
            return "21\n"
        return ""

    @staticmethod
    def zones(args):
        """zone=N1[,N2]... (ovs-vswitchd: "invalid zone" for anything else)"""
        [arg] = args
        assert arg.startswith("zone=") and all(z.isdigit() for z in arg[5:].split(",")), arg
        return [int(z) for z in arg[5:].split(",")]

    def restart(self):
        self.limits, self.maxconns = {}, 3000000


def test_every_vm_zone_gets_the_per_vm_limit_and_an_snat_zone_none():
    zones = {("vm", "a"): 10, ("vm", "b"): 11, ("snat", "r1"): 12}
    assert Z.zone_limits(zones, 500) == {10: 500, 11: 500}
    assert Z.parse_limits("default limit=0\nzone=10,limit=500,count=3\n") == {10: (500, 3)}


def test_limits_are_set_changed_removed_and_set_again_after_a_switch_restart():
    sw, zl = FakeSwitch(), Z.ZoneLimits()
    zl.update(sw, {10: 500, 11: 500}, 200000, rate=50)
    assert sw.limits == {10: 500, 11: 500} and sw.maxconns == 200000
    n = len(sw.calls)
    zl.update(sw, {10: 500, 11: 500}, 200000, rate=50)     # unchanged: nothing sent
    assert len(sw.calls) == n
    zl.update(sw, {10: 900}, 200000, rate=50)              # b left, the limit changed
    assert sw.limits == {10: 900}
    zl.refresh(sw)
    assert zl.counts == {10: 7} and zl.host_count == 21
    sw.restart()
    zl.refresh(sw)                                         # noticed and set again
    assert sw.limits == {10: 900} and sw.maxconns == 200000
    rep = zl.report({("vm", "a"): 10, ("snat", "r"): 12}, {10: 3}, {10: (40, 9)})
    assert rep["conn_limit_host"] == 200000 and rep["host_count"] == 21
    assert rep["vms"] == [{"vm": "a", "zone": 10, "limit": 900, "count": 7,
                           "new_conn_rate": 50, "timeout_tcp_syn": 3,
                           "new_conn_in": 40, "new_conn_dropped": 9}]


def test_the_limit_options_have_ranges_and_a_bad_value_falls_back_to_the_default():
    from ovsdb import validate as V
    from ovsdb.errors import MbxError
    assert V.global_option("conn-limit-vm", "0500") == "500"
    assert V.global_option("conn-limit-host", "3000000") == "3000000"
    assert V.global_option("new-conn-rate-vm", 1) == "1"
    for key, bad in (("conn-limit-vm", "0"), ("conn-limit-vm", "3000001"),
                     ("conn-limit-host", "999"), ("new-conn-rate-vm", "1e3"),
                     ("new-conn-rate-vm", "-5")):
        with pytest.raises(MbxError, match="invalid %s %r: use an integer from" % (key, bad)):
            V.global_option(key, bad)
    assert V.global_limits({}) == (V.DEFAULT_CONN_LIMIT_VM, V.DEFAULT_CONN_LIMIT_HOST,
                                   V.DEFAULT_NEW_CONN_RATE_VM, ())
    per_vm, per_host, rate, errors = V.global_limits(
        {"conn-limit-vm": "300", "new-conn-rate-vm": "lots", "migration-wait-ms": "900"})
    assert (per_vm, per_host, rate) == (300, V.DEFAULT_CONN_LIMIT_HOST,
                                        V.DEFAULT_NEW_CONN_RATE_VM)
    assert errors == ("NB_Global options: invalid new-conn-rate-vm 'lots': use an integer "
                      "from 1 to 1000000; using 5000",)
