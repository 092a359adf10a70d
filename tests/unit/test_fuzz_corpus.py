"""The fuzz targets' corpus in the tree (fuzz/corpus/<target>/): every input,
the seeds and those that once found a bug, is handled by its parser (the
input accepted, or refused with the component's one-line error)."""

import pytest

from fuzz import run
from fuzz.targets import TARGETS


@pytest.mark.parametrize("name", run.NAMES)
def test_every_corpus_input_is_accepted_or_refused_with_the_documented_error(name):
    inputs = list(run.corpus_inputs(name))
    assert inputs, "the %s corpus is empty" % name
    assert run.replay([name]) == []


def test_every_target_has_a_corpus_and_a_runner_name():
    assert sorted(TARGETS) == sorted(run.NAMES)


def test_an_undocumented_exception_of_a_parser_is_reported_as_a_finding(monkeypatch):
    from ovsdb import match

    def broken(text):
        raise KeyError(text)
    monkeypatch.setattr(match, "parse_match", broken)
    failures = run.replay(["match"])
    assert failures and all(isinstance(err, KeyError) for _, _, err in failures)
