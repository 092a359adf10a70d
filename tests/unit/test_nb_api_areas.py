"""The config database API split by area: MbxNb is the same one API, each
of its methods defined in exactly one area module."""

import collections

from ovsdb.api import MbxNb


def homes():
    """{method name: [area modules defining it]} over MbxNb's own classes."""
    found = collections.defaultdict(list)
    for cls in MbxNb.__mro__:
        if cls.__module__.startswith("ovsdb.api."):
            for name, value in vars(cls).items():
                if callable(value) or isinstance(value, classmethod):
                    found[name].append(cls.__module__)
    return found


def test_every_api_method_has_one_home():
    assert {name: where for name, where in homes().items()
            if len(where) > 1} == {}


def test_each_area_holds_its_methods():
    found = homes()
    assert found["ls_add"] == ["ovsdb.api.switches"]
    assert found["fw_add"] == ["ovsdb.api.firewall"]
    assert found["set_slices"] == ["ovsdb.api.steering"]
    assert found["migration_update"] == ["ovsdb.api.migration"]
    assert found["snapshot"] == ["ovsdb.api.database"]
    assert found["connect"] == ["ovsdb.api.backend"]

