"""Regressions of the state store.

"cannot commit transaction - SQL statements in progress" while the bot opened state.db: the
crash-dump thread takes an objgraph baseline at start-up (``gc.get_objects()``), and that list
briefly held a strong reference to the cursor of ``PRAGMA journal_mode = WAL`` that ``_connect``
had just discarded. Python 3.11 resets a statement only when its cursor is closed or freed, so
the PRAGMA (a statement that writes, with one unread row) was still running when
``_init_schema`` committed. The ``cursors_kept_alive`` fixture reproduces that condition
deterministically: every cursor of every connection is kept referenced, as that list did.
"""
from __future__ import annotations

import sqlite3

import pytest

from resilience.state import Fill, StateStore, open_readonly
from tests.resilience._state_support import cipher_for, intent


@pytest.fixture
def cursors_kept_alive(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Cursor]:
    """Every cursor created on a new connection stays referenced until the test ends."""
    held: list[sqlite3.Cursor] = []
    real_connect = sqlite3.connect

    def connect(*args, factory=sqlite3.Connection, **kwargs):
        class Holding(factory):  # type: ignore[misc, valid-type]
            def cursor(self, *a, **k):
                cur = super().cursor(*a, **k)
                held.append(cur)
                return cur

            def execute(self, *a):
                cur = super().execute(*a)
                held.append(cur)
                return cur

            def executemany(self, *a):
                cur = super().executemany(*a)
                held.append(cur)
                return cur

        return real_connect(*args, factory=Holding, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield held
    held.clear()


def test_open_commits_while_something_holds_the_pragma_cursors(data_dir, cursors_kept_alive):
    path = data_dir / "state.db"
    store = StateStore.open(path, cipher_for(1))  # was: OperationalError at COMMIT
    try:
        assert cursors_kept_alive, "the fixture must see the store's cursors"
        o = intent(store, reason="why")
        store.transition(o.client_order_id, "OPEN", exchange_order_id="1", raw={"id": "1"})
        assert store.add_fill(Fill("f1", o.client_order_id, "1", "BTC/USDT", "buy", 0.01, 100.0,
                                   ts=1.0))
        store.kv_set("k", {"v": 1})
        store.adjust_position("ETH/USDT", 0.5, reason="test", price=10.0)
        store.checkpoint()
        assert not store._conn.in_transaction
    finally:
        store.close()
    # the restart: an existing database, the path of the failing bot start
    store = StateStore.open(path, cipher_for(1))
    try:
        assert store.get_order(o.client_order_id).reason == "why"
        assert store.kv_get("k") == {"v": 1}
        assert store.reencrypt() == 0
        intent(store)
    finally:
        store.close()
    with open_readonly(path, cipher_for(1)) as reader:
        assert len(reader.orders()) == 2 and reader.positions()["BTC/USDT"].amount == 0.01


def test_write_commits_with_an_unfinished_statement_inside(data_dir):
    store = StateStore.open(data_dir / "state.db", cipher_for(1))
    try:
        with store._write() as c:
            pragma = c.execute("PRAGMA journal_mode = WAL")  # a writing statement, row unread
            returning = c.execute("INSERT INTO sequences(name, value) VALUES ('a', 1), ('b', 2) "
                                  "RETURNING name")
            assert returning.fetchone() is not None  # one of two rows: still running
        # both rows are committed; the cursors were closed rather than left running
        assert store._conn.execute("SELECT COUNT(*) FROM sequences WHERE name IN ('a', 'b')"
                                   ).fetchone()[0] == 2
        with pytest.raises(sqlite3.ProgrammingError):
            pragma.fetchone()
        store.kv_set("after", 1)
        assert store.kv_get("after") == 1
    finally:
        store.close()


def test_a_failed_commit_is_rolled_back_and_the_store_keeps_working(data_dir):
    store = StateStore.open(data_dir / "state.db", cipher_for(1))
    try:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            with store._write() as c:
                # a deferred foreign key violation fails at COMMIT, leaving the transaction open
                c.execute("PRAGMA defer_foreign_keys = ON")
                c.execute("INSERT INTO transitions(id, client_order_id, to_state, ts) "
                          "VALUES (1, 'no-such-order', 'OPEN', 0)")
        assert not store._conn.in_transaction
        assert store.transitions() == []
        store.kv_set("k", 1)  # was: "cannot start a transaction within a transaction"
        assert store.kv_get("k") == 1
    finally:
        store.close()
