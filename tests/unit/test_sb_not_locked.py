"""A southbound write asserting a lock the client no longer holds (its
connection went, the other instance took the lock) fails with NotLocked,
and the writer says so once until a write goes through again."""

import concurrent.futures
import logging

import pytest
from ovs.db import idl

from ovsdb.southbound import NotLocked, Southbound


class FakeTxn:
    def __init__(self, status, error=""):
        self.status, self.error = status, error

    def commit(self):
        return self.status

    def get_error(self):
        return self.error

    def get_insert_uuid(self, uuid):
        return None


def writer():
    sb = object.__new__(Southbound)         # no connection: only _push is used
    sb._unlocked = False
    return sb


def push(sb, txn, what="18 datapaths"):
    future = concurrent.futures.Future()
    sb._push(txn, (None, what, future), None, [])
    return future


def test_writes_refused_for_want_of_the_lock_are_said_once_until_one_goes_through(caplog):
    sb = writer()
    with caplog.at_level(logging.WARNING, logger="ovsdb.southbound"):
        for _ in range(50):
            future = push(sb, FakeTxn(idl.Transaction.ERROR, "not locked not locked"))
            with pytest.raises(NotLocked):
                future.result()
        assert len(caplog.records) == 1 and "lock" in caplog.records[0].getMessage()
        assert push(sb, FakeTxn(idl.Transaction.SUCCESS)).result() is None
        push(sb, FakeTxn(idl.Transaction.ERROR, "not locked"))
        assert len(caplog.records) == 2         # a new loss of the lock: said again


def test_other_failures_are_logged_each_time(caplog):
    sb = writer()
    with caplog.at_level(logging.WARNING, logger="ovsdb.southbound"):
        for _ in range(3):
            future = push(sb, FakeTxn(idl.Transaction.ERROR, "constraint violation"))
            with pytest.raises(Exception) as err:
                future.result()
            assert not isinstance(err.value, NotLocked)
    assert len(caplog.records) == 3
