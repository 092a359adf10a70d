"""The control-plane benchmark (lab.cpbench) at a small size: what it
reports must be what the controller's engine and mbxd's monitor conditions
really do."""

from lab import cpbench as C
from ryu_apps.flows import compute_host_flows

VMS_PER_HOST = 10       # one tenant slot per host: 5 VMs of each of its 2 switches


def started(hosts=20):
    cloud = C.build_cloud(hosts, VMS_PER_HOST)
    ctl, _seconds = C.cold_start(cloud)
    ctl.ack_all()
    return cloud, ctl


def test_every_host_gets_the_flows_compute_host_flows_gives_it():
    cloud, ctl = started()
    topo = ctl.engine.topology()
    for host in cloud.hosts[:3]:
        assert sorted(ctl.flows_of(host).values(), key=repr) == sorted(
            compute_host_flows(topo, host, ctl.engine._snat_blocks), key=repr)


def test_flows_per_host_do_not_grow_with_the_number_of_hosts():
    scales = []
    for hosts in (20, 40, 80):
        ctl, _ = C.cold_start(C.build_cloud(hosts, VMS_PER_HOST))
        counts = C.flows_per_host(ctl)
        assert min(counts) > 100
        scales.append({"hosts": hosts, "median_flows": sorted(counts)[len(counts) // 2],
                       "max_flows": max(counts)})
    assert C.flat(scales), scales
    # with every tenant on every host, a host's flows grow with the cloud
    assert not C.flat([{"median_flows": 100}, {"median_flows": 200}])


def test_a_move_only_messages_the_hosts_of_the_vms_switch():
    cloud, ctl = started()
    vm = sorted(cloud.placement)[0]
    src, switch = cloud.placement[vm], cloud.snap.vms[vm].switch
    holders = {h for v, h in cloud.placement.items() if cloud.snap.vms[v].switch == switch}
    dst = C._new_host_for(cloud, vm, ctl.placement)
    assert dst not in holders
    before = {h: dict(ctl.flows_of(h)) for h in cloud.hosts}

    rec = C.move(ctl, vm, dst)
    assert set(rec["appear"]["hosts"]) == holders | {dst}
    assert rec["appear"]["flow_mods"] > 0 and rec["gone"]["flow_mods"] == 0
    changed = {h for h in cloud.hosts if ctl.flows_of(h) != before[h]}
    assert changed == holders | {dst}
    # ... and every host holds exactly the flows a full computation gives it
    topo = ctl.engine.topology()
    for host in cloud.hosts:
        assert sorted(ctl.flows_of(host).values(), key=repr) == sorted(
            compute_host_flows(topo, host, ctl.engine._snat_blocks), key=repr)
    assert ctl.engine.topology().bindings[vm].host == dst
    assert src != dst


def test_status_only_changes_compute_and_send_no_flow():
    _cloud, ctl = started()
    changes = C.status_writes(ctl)
    assert len(changes) == 4
    assert all(c["flow_parts_computed"] == 0 and c["flow_mods"] == 0 for c in changes)
    # what it counts does count: a move computes parts
    vm = sorted(ctl.placement)[3]
    rec = C.move(ctl, vm, C._new_host_for(ctl.cloud, vm, ctl.placement))
    assert rec["appear"]["flow_mods"] > 0


def test_one_host_alone_computes_the_flows_its_switch_holds():
    _cloud, ctl = started()
    assert len(C.one_host(ctl, sample=3)) == 3
    topo = ctl.engine.topology().unshared()
    host = ctl.cloud.hosts[0]
    assert sorted(ctl.flows_of(host).values(), key=repr) == sorted(
        compute_host_flows(topo, host, ctl.engine._snat_blocks), key=repr)


def test_measured_moves_report_the_hosts_involved():
    _cloud, ctl = started()
    [rec] = C.measure_moves(ctl, 1)
    assert rec["only_involved_hosts"]
    # every host of the switch and the destination; the destination twice:
    # the binding first, then the slice the logical controller gave it
    assert len(set(rec["appear"]["hosts"])) == rec["hosts_of_switch"] + 1
    assert rec["appear"]["hosts"].count(rec["to"]) == 2
    assert any(host == rec["to"] for (_chain, host) in ctl.sb.snap.slices)
    assert rec["appear"]["reaction_ms"] <= rec["appear"]["handled_ms"]


def test_a_host_receives_no_row_of_a_tenant_it_does_not_run():
    cloud, ctl = started()
    db = C.nb_rows(cloud, ctl.sb.snap.slices, ctl.sb.snap.slice_status, shared_per_mb=1)
    host = cloud.hosts[0]
    held = C.monitored_rows(db, host)
    mine = cloud.tenants_on(host)
    assert held["Middlebox"] and held["Firewall_Rule"] and held["VM"]
    assert {db.tenant[u] for rows in held.values() for u in rows} - {None} == mine
    other, by_table, total, _provider = C.other_tenant_bytes(db, held, mine)
    assert (other, by_table) == (0, {}) and total > 0


def test_other_tenant_bytes_come_from_the_real_conditions():
    """A slice of a foreign tenant's chain on the host: the monitor
    conditions follow it, and the figure says so."""
    cloud, ctl = started()
    host = cloud.hosts[0]
    slices = dict(ctl.sb.snap.slices)
    foreign = next(chain for (chain, h) in slices
                   if cloud.tenant_of_switch[cloud.snap.middleboxes[chain[0]].switch]
                   not in cloud.tenants_on(host))
    slices[(foreign, host)] = 4000
    db = C.nb_rows(cloud, slices, ctl.sb.snap.slice_status)
    held = C.monitored_rows(db, host)
    other, by_table, _total, _provider = C.other_tenant_bytes(db, held, cloud.tenants_on(host))
    assert other > 0
    assert {"Slice", "Middlebox", "Firewall_Rule", "VM", "Logical_Switch"} <= set(by_table)


def test_markdown_states_figures_targets_and_the_gap():
    cloud, ctl = started(10)
    res = {"hosts": 10, "vms_per_host": VMS_PER_HOST,
           "cloud": {"vms": len(cloud.snap.vms), "tenants": 5, "switches": 10,
                     "middleboxes": 15, "firewall_rules": 200, "steering_policies": 35,
                     "lb_vips": 3, "nat_rules": 4,
                     "tenants_per_host": {"min": 1, "median": 1, "max": 1}},
           "northd_full": {"seconds": 0.5, "slices": 40, "met": True},
           "full": {"seconds": 3.5, "flow_mods": 1000, "met": False},
           "memory": {"rss_before_mb": 100.0, "rss_after_mb": 350.0, "controllers_mb": 250.0},
           "flows_per_host": {"min": 90, "median": 100, "max": 110},
           "one_host": {"ms": {"min": 5, "median": 10, "max": 60}, "hosts": 3, "met": False},
           "one_host_controller": {"seconds": 0.25, "flow_mods": 100},
           "move": {"reaction_ms": {"min": 1, "median": 2, "max": 30, "p99": 30},
                    "met": False,
                    "source_gone_handled_ms": {"min": 1, "median": 1, "max": 1},
                    "only_involved_hosts": True,
                    "moves": [{"appear": {"hosts": ["a", "b"]}, "hosts_of_switch": 1}]},
           "move_gc_frozen": {"reaction_ms": {"min": 1, "median": 1, "max": 5, "p99": 5},
                              "met": True},
           "status_writes": [{"change": "IDS_Alert", "flow_parts_computed": 0,
                              "flow_mods": 0, "ms": 3.0}],
           "profile_full": [{"function": "ryu_apps/flows.py:22(compute_host_flows)",
                             "calls": 10, "cumulative_s": 3.0}],
           "profile_move": [],
           "scales": [{"hosts": 10, "median_flows": 100}, {"hosts": 20, "median_flows": 100}],
           "config_bytes": {"hosts_sampled": 3, "other_tenant_bytes_max": 0,
                            "bytes_per_host": {"median": 1000}},
           "config_bytes_real": None}
    text = "\n".join(C.markdown(res))
    assert text.startswith("## Control plane at scale")
    assert "| 3.50 s (1000 flow-mods) | <= 2 s | **not met** |" in text
    assert "full translation (slices, SNAT blocks, status) | 0.50 s (40 slices) | <= 2 s | met |" \
        in text
    assert "| 250 MB | reported |" in text
    assert "compute_host_flows" in text and "What would close the gap" in text
    assert "10 hosts: 100, 20 hosts: 100 | constant (within 5%) | met |" in text
    assert "median 10.0 ms, max 60.0 ms | <= 50 ms | **not met** |" in text
    assert "median 2.0 ms, p99 30.0 ms, max 30.0 ms (1 moves) | p99 <= 20 ms | **not met** |" \
        in text
    assert "(IDS_Alert): flow parts computed, flow-mods | 0, 0 (3 ms) | 0, 0 | met |" in text
