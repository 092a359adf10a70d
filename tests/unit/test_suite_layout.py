"""The test suite itself: ``make test`` collects tests/unit and
tests/integration in one run, which fails if two test modules share a
basename (the directories are not packages)."""

import collections
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def test_no_two_test_modules_share_a_name():
    names = collections.Counter()
    for d in (HERE, os.path.join(HERE, "..", "integration")):
        names.update(f for f in os.listdir(d) if f.startswith("test_") and f.endswith(".py"))
    assert [n for n, count in names.items() if count > 1] == []
