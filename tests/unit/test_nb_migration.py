"""Migrations: validation, the southbound API's argument checks, mbxctl's
parsing and output, and the chassis fields mbx-chassis reads from its
host's external_ids (no database)."""

import re

import pytest

from hypervisor import chassis
from ovsdb import ctl, validate
from mbxmodel.snapshot import SbSnapshot
from mbxmodel import state
from mbxmodel.state import MigrationRecord
from ovsdb.api import MbxNb, MbxSb
from ovsdb.errors import MbxError


def raises(hint):
    return pytest.raises(MbxError, match=re.escape(hint))


def test_status_groups():
    assert state.ACTIVE_MIGRATION == ("begun", "streaming", "stunned",
                                      "imported")
    assert state.FINAL_MIGRATION == ("done", "aborted", "fallback")
    assert set(state.ACTIVE_MIGRATION + state.FINAL_MIGRATION) == set(
        validate.MIGRATION_STATUSES)


@pytest.mark.parametrize("value,expected", [
    (100, 100), ("3000", 3000), ("60000", 60000)])
def test_migration_wait_ms_accepts(value, expected):
    assert validate.migration_wait_ms(value) == expected


@pytest.mark.parametrize("value", [99, 60001, "1.5", "", "3s", True, None])
def test_migration_wait_ms_rejects(value):
    with raises(f"invalid migration-wait-ms {value!r}: use an integer from "
                "100 to 60000"):
        validate.migration_wait_ms(value)


def test_global_options():
    assert validate.global_option("migration-wait-ms", "0750") == "750"
    with raises("unknown global option 'wait-ms'; known options: "
                "migration-wait-ms"):
        validate.global_option("wait-ms", "750")
    assert validate.global_wait_ms({}) == 3000
    assert validate.global_wait_ms({"migration-wait-ms": "750"}) == 750
    assert validate.global_wait_ms({"migration-wait-ms": "bad"}) == 3000


@pytest.mark.parametrize("value", ["", "ssl:10.201.0.12:6650",
                                   "ssl:1.2.3.4:1"])
def test_migration_address_accepts(value):
    assert validate.migration_address(value) == value


@pytest.mark.parametrize("value", ["tcp:10.201.0.12:6650", "ssl:10.201.0.12",
                                   "ssl:10.201.0.300:6650",
                                   "ssl:10.201.0.12:0", "ssl:010.1.1.1:5",
                                   "ssl:10.201.0.12:65536", None])
def test_migration_address_rejects(value):
    with raises(f"invalid migration address {value!r}: use ssl:IP:PORT"):
        validate.migration_address(value)


def test_migration_counters():
    assert validate.migration_counters({"entries": 3}, "stats") == {
        "entries": 3}
    for bad in ({"entries": -1}, {"entries": "3"}, {"x": True}, {"": 1}, []):
        with raises("invalid migration stats"):
            validate.migration_counters(bad, "stats")


# --- the API checks its arguments before anything is sent --------------------

@pytest.mark.parametrize("build,hint", [
    (lambda: MbxSb.migrate_begin(None, "a b", "h1"), "invalid VM name 'a b'"),
    (lambda: MbxSb.migrate_begin(None, "a1", ""), "invalid host name ''"),
    (lambda: MbxSb.migrate_stun(None, None), "invalid VM name None"),
    (lambda: MbxSb.migration_create(None, "a1", "h1", "h1"),
     "a migration of VM 'a1' needs two hosts, not 'h1' twice"),
    (lambda: MbxSb.migration_create(None, "a1", "h1", "h2", "sideways"),
     "invalid migration path 'sideways': use announced or unannounced"),
    (lambda: MbxSb.migration_create(None, "a1", "h1", "h2", wait_ms=99),
     "invalid wait-ms 99: use an integer from 100 to 60000"),
    (lambda: MbxSb.migration_update(None, "nope"), "invalid UUID 'nope'"),
    (lambda: MbxSb.migration_update(
        None, "00000000-0000-0000-0000-000000000001", status="gone"),
     "invalid migration status 'gone'"),
    (lambda: MbxSb.migration_update(
        None, "00000000-0000-0000-0000-000000000001",
        timeline={"done": 1.5}), "invalid migration timeline"),
    (lambda: MbxNb.global_set(None, {"migration-wait-ms": "5"}),
     "invalid migration-wait-ms '5'"),
    (lambda: MbxNb.global_set(None, {"other": ""}),
     "unknown global option 'other'"),
])
def test_api_rejects(build, hint):
    with raises(hint):
        build()


def test_api_builds_commands_with_canonical_arguments():
    cmd = MbxSb.migration_create(None, "a1", "h1", "h2", wait_ms="500")
    assert (cmd.vm, cmd.source, cmd.destination, cmd.path, cmd.wait_ms) == (
        "a1", "h1", "h2", "unannounced", 500)
    cmd = MbxSb.migrate_begin(None, "a1", "h2")
    assert (cmd.source, cmd.path, cmd.wait_ms) == (None, "announced", None)
    cmd = MbxNb.global_set(None, {"migration-wait-ms": "0500"})
    assert cmd.options == {"migration-wait-ms": "500"}


# --- mbxctl: parsing and output ---------------------------------------------

def test_mbxctl_parses_the_migration_commands():
    (c1, a1), (c2, a2), (c3, a3), (c4, a4) = ctl._commands([
        "migrate-begin", "red2", "--to", "h3", "--",
        "migrate-stun", "red2", "--wait", "--",
        "migrate-abort", "red2", "--if-exists", "--",
        "global-set", "migration-wait-ms=500"])
    assert (c1, a1.vm, a1.to) == ("migrate-begin", "red2", "h3")
    assert (c2, a2.vm, a2.wait) == ("migrate-stun", "red2", True)
    assert (c3, a3.if_exists) == ("migrate-abort", True)
    assert (c4, a4.options) == ("global-set", ["migration-wait-ms=500"])
    (_, args), = ctl._commands(["migrate-stun", "red2"])
    assert args.wait is False
    (_, args), = ctl._commands(["migration-list"])
    assert args.vm is None


@pytest.mark.parametrize("argv,hint", [
    (["migrate-begin", "red2"], "migrate-begin: missing option --to (see "
     "mbxctl --help)"),
    (["migrate-begin", "--to", "h3"], "migrate-begin: missing VM"),
    (["migrate-done"], "migrate-done: missing VM"),
    (["migrate-done", "red2", "red3"], "migrate-done: unrecognized arguments: "
     "red3"),
    (["migration-show"], "migration-show: missing VM"),
    (["migrate-abort", "red2", "--force"], "unrecognized arguments: --force"),
])
def test_mbxctl_rejects(argv, hint):
    with raises(hint):
        ctl._commands(argv)


def test_mbxctl_global_set_needs_an_option():
    (command, args), = ctl._commands(["global-set"])
    with raises("global-set: give at least one KEY=VALUE"):
        ctl._write(None, None, command, args)


def record(vm="red2", status="done", begun=1767323045000, uuid="u1",
           **kw):
    fields = dict(
        uuid=uuid, vm=vm, source="h2", destination="h3", path="announced",
        status=status, token="0" * 32,
        timeline={"begun": begun, "stunned": begun + 40, "streaming":
                  begun + 12, "imported": begun + 52, "done": begun + 60,
                  "custom": begun + 1},
        stats={"bytes": 2048, "entries": 12, "zzz": 1, "import_ms": 3},
        outcome="ok: 12 connections", options={"wait-ms": "3000"})
    fields.update(kw)
    return MigrationRecord(**fields)


def snapshot(*migrations):
    return SbSnapshot(migrations=tuple(migrations))


def test_migration_show_text():
    (_, args), = ctl._commands(["migration-show", "red2"])
    older = record(begun=1000, uuid="u0", status="aborted")
    assert ctl._read("migration-show", args, sb_snap=snapshot(older, record())) == [
        "migration of VM red2: h2 -> h3 (announced)",
        "uuid: u1",
        "status: done",
        "begun: 2026-01-02T03:04:05.000Z",
        "timeline:",
        "  +   0.0 ms  begun",
        "  +  12.0 ms  streaming",
        "  +  40.0 ms  stunned",
        "  +  52.0 ms  imported",
        "  +  60.0 ms  done",
        "  +   1.0 ms  custom",
        "stats: entries=12, bytes=2048, import_ms=3, zzz=1",
        "options: wait-ms=3000",
        "outcome: ok: 12 connections"]
    bare = record(timeline={}, stats={}, options={}, outcome="",
                  status="begun")
    assert ctl._read("migration-show", args, sb_snap=snapshot(bare))[3:] == [
        "begun: -", "timeline: -", "stats: -", "options: -", "outcome: -"]


def test_migration_list_text():
    (_, args), = ctl._commands(["migration-list"])
    rows = [record(), record(vm="blue1", uuid="u2", begun=1767323046000,
                             status="streaming", stats={}, outcome="",
                             path="unannounced")]
    assert ctl._read("migration-list", args, sb_snap=snapshot(*rows)) == [
        "VM     HOSTS     PATH         STATUS     ENTRIES  BYTES  OUTCOME",
        "red2   h2 -> h3  announced    done       12       2048   ok: 12 "
        "connections",
        "blue1  h2 -> h3  unannounced  streaming  -        -      -"]
    (_, args), = ctl._commands(["migration-list", "blue1"])
    assert len(ctl._read("migration-list", args, sb_snap=snapshot(*rows))) == 2


def test_chassis_fields_read_the_encap_and_the_optional_migration_address():
    ids = {"system-id": "h1", "mbx-encap-ip": "10.200.0.11"}
    assert chassis.chassis_fields(ids) == ("h1", "vxlan", "10.200.0.11", "")
    ids.update({"mbx-encap-type": "geneve",
                "mbx-migration-address": "ssl:10.201.0.11:6650"})
    assert chassis.chassis_fields(ids) == ("h1", "geneve", "10.200.0.11",
                                           "ssl:10.201.0.11:6650")
    ids["mbx-migration-address"] = "ssl:nowhere"
    with raises("external_ids:mbx-migration-address in the local OVS "
                "database: invalid migration address 'ssl:nowhere'"):
        chassis.chassis_fields(ids)


@pytest.mark.parametrize("missing", ["system-id", "mbx-encap-ip"])
def test_chassis_fields_name_the_missing_key_and_how_to_set_it(missing):
    ids = {"system-id": "h1", "mbx-encap-ip": "10.200.0.11"}
    del ids[missing]
    with raises(f"external_ids:{missing} is not set in the local OVS database; "
                f"set it with ovs-vsctl set Open_vSwitch . external_ids:{missing}=VALUE"):
        chassis.chassis_fields(ids)


@pytest.mark.parametrize("ids,hint", [
    ({"mbx-encap-type": "gre"}, "external_ids:mbx-encap-type in the local OVS "
     "database: invalid encap type 'gre': use one of vxlan, geneve"),
    ({"mbx-encap-ip": "10.200.0"}, "external_ids:mbx-encap-ip in the local OVS "
     "database: invalid encap IP '10.200.0': use a dotted IPv4 address"),
])
def test_chassis_fields_reject_what_the_schema_would(ids, hint):
    with raises(hint):
        chassis.chassis_fields(dict({"system-id": "h1", "mbx-encap-ip": "10.200.0.11"},
                                    **ids))
