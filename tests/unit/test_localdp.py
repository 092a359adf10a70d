"""The Datapath rows a controller serving fixed hosts monitors (ovsdb.localdp)."""

from ovsdb import localdp


def test_only_vms_bound_on_the_hosts_and_their_slices_datapaths_count():
    vms, datapaths = localdp.local_of(
        {"h1", "h2"},
        [("a1", "h1"), ("b1", "h3"), ("c1", "h2")],
        [("h1", "ls-x"), ("h3", "ls-y"), ("h2", None)])
    assert vms == {"a1", "c1"}
    assert datapaths == {"ls-x"}


def test_the_condition_matches_a_vm_of_the_row_or_its_name():
    assert localdp.condition({"c1", "a1"}, {"ls-x"}) == [
        ["ports", "includes", "a1"], ["ports", "includes", "c1"],
        ["name", "==", "ls-x"]]


def test_no_vm_and_no_slice_selects_no_row():
    assert localdp.condition(*localdp.local_of({"h1"}, [("a1", "h2")],
                                               [("h2", "ls-x")])) == []


def test_the_same_sets_give_an_equal_condition_whatever_the_order():
    one = localdp.condition(["b", "a", "a"], ["y", "x"])
    assert one == localdp.condition(["a", "b"], ["x", "y"])


def test_a_host_whose_last_vm_leaves_narrows_the_condition():
    before = localdp.condition(*localdp.local_of(
        {"h1"}, [("a1", "h1"), ("b1", "h1")], []))
    after = localdp.condition(*localdp.local_of({"h1"}, [("a1", "h1")], []))
    assert ["ports", "includes", "b1"] in before
    assert after == [["ports", "includes", "a1"]]
