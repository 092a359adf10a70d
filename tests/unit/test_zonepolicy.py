"""The middlebox timeout options as the zones' conntrack timeout policies."""

import types

from middlebox import zonepolicy as Z
from middlebox.config import HostConfig, SliceConfig, VmSpec


def test_options_become_timeout_policy_keys():
    assert Z.policy({}) == {}
    assert Z.policy({"check": "offload"}) == {}
    assert Z.policy({"timeout-tcp-established": "60", "timeout-udp": "5"}) == {
        "tcp_established": 60, "udp_first": 5, "udp_single": 5}
    assert Z.policy({"timeout-tcp-closing": "7"}) == {
        k: 7 for k in ("tcp_fin_wait", "tcp_close_wait", "tcp_last_ack", "tcp_time_wait",
                       "tcp_close")}
    assert Z.policy({"timeout-icmp": "nonsense", "timeout-udp-replied": "0"}) == {}


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
        10: {"udp_first": 4, "udp_single": 4},            # tag 3 comes first
        11: {"icmp_first": 9, "icmp_reply": 9},
        12: {"icmp_first": 9, "icmp_reply": 9}}
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
