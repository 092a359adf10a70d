"""mbxd's applied config generation (southbound ``Chassis_Private.mb_cfg``)
and what ``--wait=hv`` waits for (``NB_Global.hv_cfg``): the pure parts.
The daemon and the controllers together on a real lab:
``tests/integration/test_firewall.py``
(``test_wait_hv_returns_once_every_daemon_applied_the_rule``)."""

import dataclasses
import json
import os
import sys
from types import SimpleNamespace as Row

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mbxmodel.network import ChassisStatus  # noqa: E402
from middlebox import confmon  # noqa: E402
from middlebox.mbcfg import Reporter  # noqa: E402
from ovsdb.server import SB_SCHEMA_PATH, SCHEMA_PATH  # noqa: E402
from ryu_apps.northd import hv_cfg_of  # noqa: E402
from test_engine import running  # noqa: E402

HOSTS = {"h1": None, "h2": None, "h3": None}


def host(name, nb_cfg, mb_cfg=None, connected=True):
    return ChassisStatus(name, "ctl", connected, nb_cfg, 0, mb_cfg)


# ------------------------------------------------------ northd: hv_cfg

def test_hv_cfg_waits_for_the_daemon_behind_the_flows():
    statuses = [host("h1", 7, 7), host("h2", 7, 5), host("h3", 7, 7)]
    assert hv_cfg_of(statuses, HOSTS, 7) == 5


def test_hv_cfg_waits_for_the_flows_behind_the_daemon():
    statuses = [host("h1", 6, 7), host("h2", 7, 7)]
    assert hv_cfg_of(statuses, HOSTS, 7) == 6


def test_a_host_whose_daemon_never_reported_is_waited_for_by_its_flows_only():
    statuses = [host("h1", 7, None), host("h2", 7, 7)]
    assert hv_cfg_of(statuses, HOSTS, 7) == 7
    assert hv_cfg_of([host("h1", 4, None)], HOSTS, 7) == 4


def test_a_daemon_that_reported_once_is_waited_for_even_at_zero():
    """0 is a report (the generation of a fresh database), not 'none'."""
    assert hv_cfg_of([host("h1", 3, 0)], HOSTS, 3) == 0


def test_disconnected_hosts_and_hosts_without_chassis_do_not_hold_hv_cfg_back():
    statuses = [host("h1", 9, 9), host("h2", 9, 2, connected=False),
                host("h9", 1, 1)]
    assert hv_cfg_of(statuses, HOSTS, 9) == 9
    assert hv_cfg_of([], HOSTS, 9) == 9


def with_daemons(h):
    """The fake southbound database keeps the daemons' column when a
    controller writes its own, as the real one does (``ovsdb.southbound``:
    only the controller's columns are written)."""
    write = h.sb.set_chassis_statuses

    def keep(statuses):
        write([dataclasses.replace(st, mb_cfg=h.sb.status[st.name].mb_cfg)
               if st.name in h.sb.status else st for st in statuses])
    h.sb.set_chassis_statuses = keep
    return h


def daemon_reports(h, host, value):
    h.sb.status[host] = dataclasses.replace(h.sb.status[host], mb_cfg=value)
    h.sb.status_dirty = True
    h.notify()


def test_the_logical_controller_waits_for_the_daemons_once_they_reported():
    """A rule changes no flow: the controllers acknowledge it at once, and
    hv_cfg waits for every daemon that has reported."""
    h = with_daemons(running(hosts=("h1", "h2")))
    daemon_reports(h, "h1", 1)
    h.nb.bump_nb_cfg()
    h.notify()
    assert {n: s.nb_cfg for n, s in h.sb.status.items()} == {"h1": 2, "h2": 2}
    assert h.nb.snap.hv_cfg == 1                 # h1's daemon is at 1; h2's never reported
    daemon_reports(h, "h2", 1)
    daemon_reports(h, "h1", 2)
    assert h.nb.snap.hv_cfg == 1                 # h2's daemon now counts
    daemon_reports(h, "h2", 2)
    assert h.nb.snap.hv_cfg == 2
    assert h.sb.status["h1"].mb_cfg == 2         # the controllers' writes kept it


# ------------------------------------------------------ mbxd: reporting

class Switch:
    """Barriers sent, answered in order by ``answer``."""

    def __init__(self):
        self.sent = []

    def barrier(self):
        self.sent.append(100 + len(self.sent))
        return self.sent[-1]


def test_a_generation_is_reported_only_once_the_switch_answered_its_barrier():
    r, sw = Reporter(), Switch()
    r.settled(5, sw.barrier)
    assert sw.sent == [100]
    assert r.wanted(True, None) is None          # nothing acknowledged yet
    assert r.on_barrier(100)
    assert r.wanted(True, None) == 5
    assert r.wanted(True, 5) is None             # the row says so already


def test_an_unchanged_generation_sends_no_further_barrier():
    r, sw = Reporter(), Switch()
    for _ in range(3):
        r.settled(5, sw.barrier)
    assert sw.sent == [100]


def test_no_generation_while_the_monitors_are_not_settled():
    r, sw = Reporter(), Switch()
    r.settled(None, sw.barrier)
    assert sw.sent == [] and r.wanted(False, None) is None


def test_an_answer_covers_every_earlier_barrier():
    r, sw = Reporter(), Switch()
    r.settled(5, sw.barrier)
    r.settled(6, sw.barrier)
    r.settled(7, sw.barrier)
    assert r.on_barrier(101)                     # 100 is answered by it too
    assert r.wanted(True, 4) == 6
    assert not r.on_barrier(100)                 # already covered
    assert r.on_barrier(102)
    assert r.wanted(True, 6) == 7


def test_an_unknown_barrier_answer_changes_nothing():
    """Barriers the daemon sends for other reasons (packet-outs, migrations)."""
    r, sw = Reporter(), Switch()
    r.settled(5, sw.barrier)
    assert not r.on_barrier(42)
    assert r.wanted(True, None) is None


def test_a_report_is_written_again_when_the_row_lost_it():
    """A controller that created the row after ours, a database restarted
    empty: the replica's row is what is compared."""
    r, sw = Reporter(), Switch()
    r.settled(5, sw.barrier)
    r.on_barrier(100)
    assert r.wanted(False, None) == 5            # no row: create it
    assert r.wanted(True, None) == 5             # a row without our column
    assert r.wanted(True, 3) == 5


def test_the_report_follows_a_database_that_starts_again_lower():
    r, sw = Reporter(), Switch()
    r.settled(9, sw.barrier)
    r.on_barrier(100)
    r.settled(1, sw.barrier)
    r.on_barrier(101)
    assert r.wanted(True, 9) == 1


# ------------------------------------------------------ mbxd: the generation

def test_the_generation_is_the_lower_of_the_intent_and_the_translation():
    """The northbound nb_cfg arrives with the change it counts; the
    southbound one after the slices the logical controller decided for it."""
    nb, sb = [Row(nb_cfg=8)], [Row(nb_cfg=7)]
    assert confmon.generation_of(nb, sb) == 7
    assert confmon.generation_of([Row(nb_cfg=6)], sb) == 6
    assert confmon.generation_of([], sb) == 0
    assert confmon.generation_of(nb, []) == 0


def test_the_generation_rows_are_in_their_schemas_and_outside_the_walk():
    def columns(path):
        with open(path) as f:
            return {t: set(spec["columns"]) for t, spec in json.load(f)["tables"].items()}
    sb, nb = columns(SB_SCHEMA_PATH), columns(SCHEMA_PATH)
    for table, cols in confmon.SB_CFG_COLUMNS.items():
        assert set(cols) <= sb[table], table
    for table, cols in confmon.NB_CFG_COLUMNS.items():
        assert set(cols) <= nb[table], table
    # held_rows() and the HostConfig know nothing of them
    assert not (set(confmon.SB_CFG_COLUMNS) | set(confmon.NB_CFG_COLUMNS)) & set(confmon.TABLES)


def test_the_southbound_schema_says_mb_cfg_is_optional():
    with open(SB_SCHEMA_PATH) as f:
        schema = json.load(f)
    assert schema["version"] == "2.2.0"
    assert schema["tables"]["Chassis_Private"]["columns"]["mb_cfg"]["type"] == {
        "key": "integer", "min": 0, "max": 1}
