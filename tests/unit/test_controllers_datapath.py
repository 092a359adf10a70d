"""The controllers and the southbound Datapath records: the logical
controller writes only the records that changed, in one transaction with
SB_Global.nb_cfg and before northd_cfg; the physical controller computes
its flows from the records it reads, never from the northbound intent."""

import dataclasses
import logging

from mbxmodel import datapath as dplib
from mbxmodel.network import VMInfo
from mbxmodel.services import RuleInfo
from ryu_apps import flows as flowlib
from ryu_apps.flows import compute_host_flows
from test_engine import (DPID, Harness, counting_flow_computations, running,
                         running_services)


def test_the_logical_controller_writes_every_switch_once_then_only_what_changed():
    h = running()
    assert h.sb.datapath_writes == [["ls-a", "ls-b"]]
    assert h.sb.nb_cfg == h.nb.snap.nb_cfg == h.nb.snap.northd_cfg == 1
    h.nb.configure(vms={**h.nb.snap.vms, "a5": VMInfo("a5", "ls-a", "02:00:00:00:00:05",
                                                       "10.0.0.5")})
    h.nb.bump_nb_cfg()
    h.notify()
    assert h.sb.datapath_writes[-1] == ["ls-a"]
    assert h.sb.nb_cfg == 2
    writes = len(h.sb.datapath_writes)
    h.nb.configure(hv_cfg=h.nb.snap.hv_cfg)         # status only: nothing to write
    h.notify()
    assert len(h.sb.datapath_writes) == writes


def test_records_then_slices_then_the_generation_then_northd_cfg():
    """A physical controller that reports SB_Global.nb_cfg = N has seen the
    records and the slices decided for N: they are written first."""
    from mbxmodel.services import MiddleboxInfo, PolicyInfo
    h = running()
    del h.switches.events[:]
    h.nb.configure(middleboxes={"fw-a": MiddleboxInfo("fw-a", "firewall", "ls-a")},
                   policies=(PolicyInfo("ls-a", 100, "any", ("fw-a",)),))
    h.nb.bump_nb_cfg()
    h.notify()
    order = [what for kind, what in h.switches.events
             if kind == "db" and what in ("datapaths", "slices", "sb-nb_cfg", "northd_cfg")]
    assert order == ["datapaths", "slices", "sb-nb_cfg", "northd_cfg"]
    assert h.sb.nb_cfg == h.nb.snap.northd_cfg == 2


def test_a_restarted_logical_controller_rewrites_nothing():
    before = running()
    h = Harness(snap=before.nb.snap, switches=before.switches)
    h.sb = before.sb
    h.northd._sb = before.sb
    h.engine._sb = before.sb
    writes = len(h.sb.datapath_writes)
    h.notify()
    assert len(h.sb.datapath_writes) == writes


def test_a_record_left_in_the_database_for_a_deleted_switch_is_removed_on_start():
    before = running()
    before.sb.datapaths["ls-gone"] = ("Z", 4000, before.sb.datapaths["ls-a"][2])
    h = Harness(snap=before.nb.snap, switches=before.switches)
    h.sb, h.northd._sb, h.engine._sb = before.sb, before.sb, before.sb
    h.notify()
    assert set(h.sb.datapaths) == {"ls-a", "ls-b"}
    assert h.sb.datapath_writes[-1] == ["ls-gone"]


def test_the_physical_controller_follows_the_records_not_the_northbound_intent():
    h = running()
    flows = {host: h.switches.flows(host) for host in DPID}
    # the northbound intent changes, but the logical controller has not
    # translated it: the switches keep their flows
    a1 = h.nb.snap.vms["a1"]
    h.nb.configure(vms={**h.nb.snap.vms, "a1": dataclasses.replace(a1, ip="10.0.0.77")})
    assert not hasattr(h.engine, "nb_changed")      # it has no northbound connection
    assert {host: h.switches.flows(host) for host in DPID} == flows
    # translated and delivered: they follow
    h.notify()
    assert h.switches.flows("h1") != flows["h1"]
    assert any("10.0.0.77" in repr(f) for f in h.switches.flows("h1"))


def test_a_firewall_rule_changes_the_record_and_computes_no_flow(monkeypatch):
    h = running_services()
    computed = counting_flow_computations(monkeypatch)
    sent = len(h.switches.sent)
    h.nb.configure(rules={"fw-a": (RuleInfo(100, "from-vm", "proto=tcp dport=25", "deny"),)})
    h.nb.bump_nb_cfg()
    h.notify()
    record = dplib.decode("ls-a", *h.sb.datapaths["ls-a"])
    assert [r.match for r in record.rules["fw-a"]] == ["proto=tcp dport=25"]
    assert computed == [] and len(h.switches.sent) == sent
    h.ack_all()
    assert h.nb.snap.hv_cfg == h.nb.snap.nb_cfg       # acknowledged all the same


def test_a_malformed_record_written_into_the_database_is_skipped_and_logged(caplog):
    h = running()
    flows = {host: h.switches.flows(host) for host in DPID}
    tenant, vni, _config = h.sb.datapaths["ls-a"]
    with caplog.at_level(logging.ERROR):
        h.sb.set_datapaths({"ls-a": (tenant, vni, '{"version": 1, "vms": 3}')})
        h.sb.deliver_datapaths([h.engine])
    assert "Datapath ls-a: config.subnet is missing" in caplog.text
    assert {host: h.switches.flows(host) for host in DPID} == flows
    # a new controller that never read it good leaves the switch out, and runs
    fresh = Harness(snap=h.nb.snap)
    fresh.engine.datapaths_changed(dict(h.sb.datapaths), h.sb.nb_cfg)
    assert set(fresh.engine._datapaths.records) == {"ls-b"}


def test_the_logical_controller_puts_back_a_row_someone_else_changed():
    h = running()
    good = dict(h.sb.datapaths)
    tenant, vni, _config = good["ls-a"]
    h.sb.set_datapaths({"ls-a": (tenant, vni, "{}"), "ls-x": ("X", 9, "{}")})
    h.northd.datapaths_changed(dict(h.sb.datapaths), h.sb.nb_cfg)
    assert h.sb.datapaths == good
    writes = len(h.sb.datapath_writes)
    h.northd.datapaths_changed(dict(h.sb.datapaths), h.sb.nb_cfg)     # as written
    assert len(h.sb.datapath_writes) == writes


def test_an_unknown_record_version_is_left_out_by_the_reader():
    h = running()
    tenant, vni, config = h.sb.datapaths["ls-b"]
    bad = config.replace('"version":1', '"version":2')
    reader = dplib.Reader()
    reader.update({"ls-b": (tenant, vni, bad)})
    assert reader.records == {}


def every_switch_holds_a_fresh_computation(h):
    topo = h.engine.topology()
    for host in DPID:
        assert h.switches.flows(host) == sorted(
            compute_host_flows(topo, host, h.engine._snat_blocks), key=repr), host


def test_a_switchs_new_record_computes_only_that_switchs_parts(monkeypatch):
    h = running_services()
    every_switch_holds_a_fresh_computation(h)
    computed = counting_flow_computations(monkeypatch)
    snap = h.nb.snap
    b1 = snap.vms["b1"]
    h.nb.configure(vms={**snap.vms, "b1": dataclasses.replace(b1, ip="10.1.0.77")})
    h.nb.bump_nb_cfg()
    h.notify()
    assert computed and {part for _host, part in computed} <= {
        flowlib.HOST_PART, ("switch", "ls-b"), ("remote", "ls-b"), ("nat", "ls-b")}
    every_switch_holds_a_fresh_computation(h)

    # ls-a's NAT moves its SNAT address: ls-a's parts, and the own part of
    # the hosts answering for the addresses
    computed.clear()
    nat = h.nb.snap.nat_rules["nat-a"]
    h.nb.configure(nat_rules={"nat-a": (dataclasses.replace(nat[0], external_ips=(
        "203.0.113.9",)),) + nat[1:]})
    h.nb.bump_nb_cfg()
    h.notify()
    assert {part for _host, part in computed} <= {
        flowlib.HOST_PART, ("switch", "ls-a"), ("remote", "ls-a"), ("nat", "ls-a")}
    every_switch_holds_a_fresh_computation(h)

    # ls-b takes ls-a's VNI: both are unusable (fail closed), then back
    for vni in (h.nb.snap.switches["ls-a"].vni, h.nb.snap.switches["ls-b"].vni):
        switches = dict(h.nb.snap.switches)
        switches["ls-b"] = dataclasses.replace(switches["ls-b"], vni=vni)
        h.nb.configure(switches=switches)
        h.nb.bump_nb_cfg()
        h.notify()
        every_switch_holds_a_fresh_computation(h)
    h.ack_all()
    assert h.nb.snap.hv_cfg == h.nb.snap.nb_cfg


def test_switch_records_added_and_removed_keep_every_switch_fresh():
    from mbxmodel.services import MiddleboxInfo, PolicyInfo
    h = running_services()
    snap = h.nb.snap
    h.nb.configure(middleboxes={**snap.middleboxes,
                                "fw-b": MiddleboxInfo("fw-b", "firewall", "ls-b")},
                   policies=snap.policies + (PolicyInfo("ls-b", 100, "proto=tcp",
                                                        ("fw-b",)),))
    h.nb.bump_nb_cfg()
    h.notify()
    assert any(chain == ("fw-b",) for chain, _host in h.sb.snap.slices)
    every_switch_holds_a_fresh_computation(h)
    snap = h.nb.snap
    h.nb.configure(switches={n: s for n, s in snap.switches.items() if n != "ls-b"},
                   vms={n: v for n, v in snap.vms.items() if v.switch != "ls-b"},
                   middleboxes={n: m for n, m in snap.middleboxes.items() if n != "fw-b"},
                   policies=tuple(p for p in snap.policies if p.switch != "ls-b"))
    h.nb.bump_nb_cfg()
    h.notify()
    assert "ls-b" not in h.sb.datapaths
    every_switch_holds_a_fresh_computation(h)
    assert not any(vm.switch == "ls-b" for vm in h.engine.topology().vms.values())


def test_the_logical_controller_writes_each_slices_switch_with_it():
    h = running_services()
    assert h.sb.snap.slices
    middleboxes = h.nb.snap.middleboxes
    assert h.sb.slice_datapaths == {chain: middleboxes[chain[0]].switch
                                    for chain, _host in h.sb.snap.slices}
