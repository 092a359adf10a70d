"""mbxmodel.tenancy: the rows whose tenant columns disagree, which the
readers ignore (what OVSDB RBAC cannot check)."""

from mbxmodel import tenancy


def test_consistent_rows_are_in_force():
    assert tenancy.ignored(
        {"ls-a": "a", "ls-b": "b"},
        [("fw-a", "ls-a", "a"), ("fw-b", "ls-b", "b")],
        [("fw-a", "tenant", "r1", "a"), ("fw-a", "provider", "r2", "")],
        [("ls-a", 10, "a", ("fw-a",)), ("ls-b", 10, "b", ())]) == {}


def test_each_disagreement_is_ignored_with_its_reason():
    out = tenancy.ignored(
        {"ls-a": "a", "ls-b": "b"},
        [("fw-a", "ls-a", "a"), ("fw-x", "ls-b", "a")],
        [("fw-a", "tenant", "r1", "b"), ("fw-a", "provider", "r2", "a"),
         ("fw-x", "tenant", "r3", "a")],
        [("ls-a", 10, "b", ()), ("ls-a", 20, "a", ("fw-a", "fw-x")),
         ("ls-b", 30, "b", ("fw-x",)), ("ls-a", 40, "a", ("fw-b2",))])
    assert out == {
        ("middlebox", "fw-x"):
            "middlebox 'fw-x' claims tenant 'a', but its switch 'ls-b' is "
            "tenant 'b''s",
        ("rule", "r1"): "middlebox 'fw-a': a tenant rule claims tenant 'b', "
                        "not 'a'",
        ("rule", "r2"): "middlebox 'fw-a': a provider rule claims tenant 'a'",
        ("policy", "ls-a", 10): "steering policy ls-a 10 claims tenant 'b', "
                                "but the switch is tenant 'a''s",
        ("policy", "ls-a", 20): "steering policy ls-a 20: its middlebox "
                                "'fw-x' is ignored",
        ("policy", "ls-b", 30): "steering policy ls-b 30: its middlebox "
                                "'fw-x' is ignored",
    }


def test_a_policy_naming_another_switchs_middlebox_is_ignored():
    out = tenancy.ignored({"ls-a": "a", "ls-b": "a"},
                          [("fw-b", "ls-b", "a")], [],
                          [("ls-a", 10, "a", ("fw-b",))])
    assert out == {("policy", "ls-a", 10): "steering policy ls-a 10: its "
                   "middlebox 'fw-b' serves switch 'ls-b'"}
