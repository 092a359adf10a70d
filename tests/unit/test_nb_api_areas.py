"""The database APIs split by area: MbxNb (intent) and MbxSb (runtime rows)
are each one API, each of their methods defined in exactly one area module,
and no method is on both."""

import collections

import pytest

from ovsdb.api import MbxNb, MbxSb


def homes(api):
    """{method name: [area modules defining it]} over the API's own classes."""
    found = collections.defaultdict(list)
    for cls in api.__mro__:
        if cls.__module__.startswith("ovsdb.api."):
            for name, value in vars(cls).items():
                if callable(value) or isinstance(value, classmethod):
                    found[name].append(cls.__module__)
    return found


@pytest.mark.parametrize("api", [MbxNb, MbxSb])
def test_every_api_method_has_one_home(api):
    assert {name: where for name, where in homes(api).items()
            if len(where) > 1} == {}


def test_each_area_holds_its_methods():
    nb, sb = homes(MbxNb), homes(MbxSb)
    assert nb["ls_add"] == ["ovsdb.api.switches"]
    assert nb["fw_add"] == ["ovsdb.api.firewall"]
    assert nb["snapshot"] == ["ovsdb.api.database"]
    assert nb["connect"] == ["ovsdb.api.backend"]
    assert sb["set_slices"] == ["ovsdb.api.slices"]
    assert sb["migration_update"] == ["ovsdb.api.migration"]
    assert sb["snapshot"] == ["ovsdb.api.runtime"]
    assert sb["host_list"] == ["ovsdb.api.runtime"]
    assert sb["connect"] == ["ovsdb.api.backend"]


def test_runtime_rows_are_written_through_the_southbound_api_only():
    nb, sb = homes(MbxNb), homes(MbxSb)
    for name in ("set_slices", "set_vm_location", "migrate_begin", "migration_create",
                 "migration_update", "ids_alerts", "host_list"):
        assert name in sb and name not in nb, name
    assert "host_register" not in nb and "set_host_status" not in nb
