"""What the raw-row fuzzer reads in the daemons' logs (lab.rowfuzz.log_findings):
tracebacks with their cause, and the warnings said again and again."""

import os

from lab import rowfuzz as RF

STAMP = "01:00:00.000 "


def write(tmp_path, name, lines, mode="w"):
    path = os.path.join(tmp_path, name)
    with open(path, mode) as f:
        f.write("".join(STAMP + line + "\n" if not line.startswith((" ", "T", "V")) else
                        line + "\n" for line in lines))
    return path


def test_a_warning_said_more_than_the_limit_is_reported_once_with_its_count(tmp_path):
    write(tmp_path, "northd.log",
          ["WARNING ryu_apps.northd: ignoring the same row"] * (RF.REPEAT_LIMIT + 5))
    _, repeated = RF.log_findings(str(tmp_path), {})
    assert repeated == {"northd.log: WARNING ryu_apps.northd: ignoring the same row":
                        RF.REPEAT_LIMIT + 5}


def test_warnings_of_rows_that_share_a_long_prefix_are_not_one_repeated_warning(tmp_path):
    long_name = "rf-5" + "x" * 300
    write(tmp_path, "northd.log",
          ["WARNING ryu_apps.northd: ignoring steering policy %s %d: bad" % (long_name, i)
           for i in range(RF.REPEAT_LIMIT * 2)])
    assert RF.log_findings(str(tmp_path), {}) == ({}, {})


def test_only_what_was_logged_after_the_start_counts(tmp_path):
    path = write(tmp_path, "mbxd.log", ["ERROR middlebox: old news"] * (RF.REPEAT_LIMIT + 1))
    since = RF.log_sizes(str(tmp_path))
    write(tmp_path, "mbxd.log", ["INFO middlebox: fine"], mode="a")
    assert RF.log_findings(str(tmp_path), since) == ({}, {})
    assert since == {path: os.path.getsize(path) - len(STAMP + "INFO middlebox: fine\n")}


def test_a_traceback_is_reported_with_its_last_frame_and_exception(tmp_path):
    write(tmp_path, "northd.log", [
        "ERROR ryu_apps.engine: engine event _nb failed",
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in f',
        "    g()",
        '  File "b.py", line 2, in g',
        "    raise ValueError('bad')",
        "ValueError: bad",
        "INFO ryu_apps.northd: next"])
    tracebacks, _ = RF.log_findings(str(tmp_path), {})
    assert list(tracebacks) == ["northd.log"]
    [found] = tracebacks["northd.log"]
    assert "engine event _nb failed" in found and "b.py" in found and \
        found.endswith("ValueError: bad")
