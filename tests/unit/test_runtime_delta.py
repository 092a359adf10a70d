"""The southbound runtime rows handed over as what changed
(``mbxmodel.snapshot.RuntimeRows`` -> ``SbDelta`` -> ``SbRuntime``): after
any sequence of row changes the kept runtime is the snapshot of the rows."""

import random
import uuid as uuidlib
from types import SimpleNamespace

from mbxmodel.snapshot import RuntimeRows, SbRuntime, sb_delta, sb_snapshot
from ryu_apps import slices as slicelib

HOSTS = ("h1", "h2", "h3")
CHAINS = (("fw",), ("fw", "nat"), ("lb",))


def _row(table, uuid, **columns):
    return SimpleNamespace(uuid=uuid, _table=table, **columns)


def random_row(rng, table, uuid):
    host = rng.choice(HOSTS)
    if table == "Chassis":
        return _row(table, uuid, name=rng.choice(HOSTS), encap_type=["vxlan"],
                    encap_ip="192.0.2.%d" % rng.randint(1, 3),
                    datapath_id=["%x" % rng.randint(1, 3)], migration_address="")
    if table == "Chassis_Private":
        return _row(table, uuid, name=host, nb_cfg=rng.randint(0, 3),
                    connected=rng.random() < 0.5)
    if table == "VM_Location":
        return _row(table, uuid, vm="vm%d" % rng.randint(1, 6),
                    chassis=rng.choice(([], [host])), epoch=rng.randint(0, 4))
    if table == "Slice":
        chain = rng.choice(CHAINS + ((),))
        status = rng.choice(({}, {"snat-block:r1": "%d-%d" % (1024 * rng.randint(1, 3),
                                                                1024 * rng.randint(4, 5) - 1)}))
        return _row(table, uuid, chain=dict(enumerate(chain)), chassis=host,
                    tag=rng.randint(1, 4), status=status)
    if table == "Migration":
        return _row(table, uuid, vm="vm1", source="h1", destination=host,
                    path="announced", status=rng.choice(("begun", "done")), token="t",
                    timeline={"begun": rng.randint(1, 9)}, stats={}, outcome="", options={})
    if table == "Shared_State":
        return _row(table, uuid, middlebox="lb", host=host, service="lb-health",
                    key="k%d" % rng.randint(1, 3), value="{}", stamp=1)
    if table == "IDS_Alert":
        return _row(table, uuid, middlebox="ids", kind="scan", source="s", target="t",
                    count=1, hosts=[host], first_seen=rng.randint(1, 5), last_seen=6,
                    reported_by=host)
    return _row(table, uuid, sb_cfg=rng.randint(0, 9), nb_cfg=0)


TABLES = ("Chassis", "Chassis_Private", "VM_Location", "Slice", "Migration",
          "Shared_State", "IDS_Alert", "SB_Global")


def test_deltas_of_any_row_changes_keep_the_snapshot_of_the_rows():
    for seed in range(30):
        rng = random.Random(seed)
        tables = {t: {} for t in TABLES}
        rows, runtime = RuntimeRows(), SbRuntime()
        blocks = slicelib.RecordedBlocks()
        for step in range(60):
            changed = {}
            for _ in range(rng.randint(1, 4)):
                table = rng.choice(TABLES)
                if tables[table] and rng.random() < 0.4:
                    uuid = rng.choice(sorted(tables[table]))
                    if rng.random() < 0.5:
                        del tables[table][uuid]
                        changed.setdefault(table, {})[uuid] = None
                        continue
                else:
                    uuid = uuidlib.UUID(int=rng.getrandbits(128))
                if table == "SB_Global" and tables[table] and uuid not in tables[table]:
                    continue            # one row
                row = random_row(rng, table, uuid)
                unique = {"Chassis": "name", "VM_Location": "vm"}.get(table)
                if unique:      # the schema's index: the row replaces another
                    for other in [u for u, r in tables[table].items() if u != uuid and
                                  getattr(r, unique) == getattr(row, unique)]:
                        del tables[table][other]
                        changed.setdefault(table, {})[other] = None
                tables[table][uuid] = row
                changed.setdefault(table, {})[uuid] = row
            delta = rows.delta(changed, tables)
            runtime.apply(delta)
            blocks.update({k: None if v is None else v[1] for k, v in delta.slices.items()})
            # hosts' records are made when their Chassis row changes: compare
            # the rest with the snapshot, the hosts' chassis columns too
            want = sb_snapshot({t: r.values() for t, r in tables.items()})
            got = runtime.snapshot()
            where = f"seed {seed}, step {step}"
            assert set(got.hosts) == set(want.hosts), where
            assert {n: (r.encap_ip, r.encap_type, r.datapath_id) for n, r in got.hosts.items()} \
                == {n: (r.encap_ip, r.encap_type, r.datapath_id)
                    for n, r in want.hosts.items()}, where
            for name in ("vm_locations", "slices", "slice_status", "shared_state",
                         "ids_alerts", "migrations", "sb_cfg"):
                assert getattr(got, name) == getattr(want, name), (where, name)
            fresh = slicelib.Blocks(slicelib.blocks_from_status(want.slice_status))
            assert blocks.blocks == fresh, where
            for rule in {k[0] for k in fresh} | {"r1", "r2"}:
                assert blocks.blocks.of_rule(rule) == fresh.of_rule(rule), where


def test_a_resync_after_missed_deletions_gives_the_snapshot_of_the_rows():
    rng = random.Random(7)
    tables = {t: {} for t in TABLES}
    rows, runtime = RuntimeRows(), SbRuntime()
    for table in TABLES[:-1]:
        for _ in range(5):
            uuid = uuidlib.UUID(int=rng.getrandbits(128))
            row = random_row(rng, table, uuid)
            unique = {"Chassis": "name", "VM_Location": "vm"}.get(table)
            if not unique or all(getattr(r, unique) != getattr(row, unique)
                                 for r in tables[table].values()):
                tables[table][uuid] = row
    runtime.apply(rows.resync(tables))
    # a reconnection: some rows went meanwhile, some came, none reported
    for table in TABLES[:-1]:
        for uuid in sorted(tables[table])[:3]:
            del tables[table][uuid]
        uuid = uuidlib.UUID(int=rng.getrandbits(128))
        row = random_row(rng, table, uuid)
        unique = {"Chassis": "name", "VM_Location": "vm"}.get(table)
        if not unique or all(getattr(r, unique) != getattr(row, unique)
                             for r in tables[table].values()):
            tables[table][uuid] = row
    runtime.apply(rows.resync(tables))
    want = sb_snapshot({t: r.values() for t, r in tables.items()})
    got = runtime.snapshot()
    assert set(got.hosts) == set(want.hosts)
    for name in ("vm_locations", "slices", "slice_status", "shared_state", "ids_alerts",
                 "migrations"):
        assert getattr(got, name) == getattr(want, name), name


def test_the_delta_between_two_snapshots_takes_one_to_the_other():
    rng = random.Random(3)
    snaps = []
    for _ in range(10):
        tables = {t: {} for t in TABLES[:-1]}
        for table in tables:
            for _ in range(rng.randint(0, 5)):
                uuid = uuidlib.UUID(int=rng.getrandbits(128))
                tables[table][uuid] = random_row(rng, table, uuid)
        snaps.append(sb_snapshot({t: r.values() for t, r in tables.items()}))
    runtime = SbRuntime.of(snaps[0])
    for old, new in zip(snaps, snaps[1:]):
        runtime.apply(sb_delta(old, new))
        assert runtime.snapshot() == new


def test_host_names_follow_a_snapshot_then_deltas():
    """The hosts a standby controller asks locks for: a delta names only the
    hosts that changed, the others stay."""
    from mbxmodel.snapshot import SbDelta, SbSnapshot, host_names
    from mbxmodel.state import HostRecord
    h = {n: HostRecord(name=n, encap_type="vxlan", encap_ip="10.0.0.%d" % i)
         for i, n in enumerate(("h1", "h2", "h3"), 1)}
    names = host_names(None, SbSnapshot(hosts={"h1": h["h1"], "h2": h["h2"]}))
    assert names == {"h1", "h2"}
    names = host_names(names, SbDelta(hosts={"h3": h["h3"]}))
    assert names == {"h1", "h2", "h3"}
    names = host_names(names, SbDelta(hosts={"h1": None}))
    assert names == {"h2", "h3"}
    assert host_names(names, SbDelta(sb_cfg=4)) == {"h2", "h3"}
    assert host_names(None, SbDelta(hosts={"h1": h["h1"]})) == {"h1"}


def test_one_alert_reported_by_several_hosts_is_one_record():
    """Each host writes its own IDS_Alert row (RBAC); readers see one."""
    from mbxmodel.snapshot import alert_records
    from mbxmodel.state import AlertRecord

    def row(host, count, hosts, first, last):
        return SimpleNamespace(middlebox="ids", kind="port-scan",
                                     source="10.0.0.9", target="", count=count,
                                     hosts=hosts, first_seen=first,
                                     last_seen=last, reported_by=host)
    assert alert_records([row("h2", 9, ["h2"], 5, 8),
                          row("h1", 7, ["h1", "h3"], 3, 6)]) == (
        AlertRecord("ids", "port-scan", "10.0.0.9", "", 9, ("h1", "h2", "h3"),
                    3, 8, "h1,h2"),)
