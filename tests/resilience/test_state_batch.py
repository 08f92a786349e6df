"""StateStore.batch(): one transaction across many calls, each call still all or nothing."""
from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from resilience.state import Fill, NewOrder, StateStore
from tests.resilience._state_support import cipher_for, intent
from tradeguard.exceptions import StateError


@pytest.fixture
def store(data_dir):
    s = StateStore.open(data_dir / "state.db", cipher_for(1))
    yield s
    s.close()


def _outside(data_dir) -> int:
    """Orders another connection sees (what is committed)."""
    with closing(sqlite3.connect(data_dir / "state.db")) as c:
        return c.execute("SELECT COUNT(*) FROM orders").fetchone()[0]


def _lifecycle(store: StateStore, n: int) -> None:
    """``n`` orders through intent, SUBMITTING, OPEN, FILLED and a fill (as the bot writes them)."""
    for i in range(n):
        o = intent(store, reason=f"why {i}")
        cid = o.client_order_id
        store.transition(cid, "SUBMITTING", attempts=1)
        store.transition(cid, "OPEN", exchange_order_id=f"e{i}", raw={"id": f"e{i}"})
        store.transition(cid, "FILLED", filled=0.01, average=100.0)
        store.add_fill(Fill(f"f{i}", cid, f"e{i}", "BTC/USDT", "buy", 0.01, 100.0, fee=0.01,
                            fee_currency="USDT", ts=1000.0 + i, raw={"id": f"f{i}"}))


def _plain(store: StateStore) -> dict:
    """Everything the store reads back (decrypted) and its kept counters, ids aside."""
    return {"orders": [(o.state, o.filled, o.reason, o.raw, o.exchange_order_id)
                       for o in store.orders()],
            "fills": [(f.fill_id, f.amount, f.raw) for f in store.fills()],
            "transitions": [(t.from_state, t.to_state, t.note) for t in store.transitions()],
            "positions": {s: (p.amount, p.cost) for s, p in store.positions().items()},
            "counts": store.counts(), "by_state": store.orders_by_state()}


def test_a_batch_writes_the_same_rows_and_commits_them_together(store, data_dir, tmp_path):
    alone = StateStore.open(tmp_path / "alone.db", cipher_for(1))
    _lifecycle(alone, 3)
    with store.batch() as b:
        assert b is store
        _lifecycle(store, 3)
        assert _outside(data_dir) == 0  # nothing is visible before the block ends
        assert len(store.orders()) == 3  # the writer reads its own batch
    assert _outside(data_dir) == 3
    assert _plain(store) == _plain(alone)
    alone.close()


def test_a_failing_call_leaves_nothing_of_itself_and_the_batch_goes_on(store, data_dir):
    # a veto on the audit row: transition() has already updated the order when its insert fails
    store._conn.execute("CREATE TEMP TRIGGER veto BEFORE INSERT ON main.transitions "
                        "WHEN NEW.to_state = 'CANCELED' BEGIN SELECT RAISE(ABORT, 'veto'); END")
    with store.batch():
        o = intent(store)
        with pytest.raises(StateError, match="already exists"):
            store.add_intent(NewOrder(o.client_order_id, o.seq, "tg1", "BTC/USDT", "buy",
                                      "market", 0.01))
        with pytest.raises(sqlite3.IntegrityError, match="veto"):
            store.transition(o.client_order_id, "CANCELED")
        assert store.get_order(o.client_order_id).state == "INTENT"  # its UPDATE undone
        store.transition(o.client_order_id, "SUBMITTING")
    assert store.get_order(o.client_order_id).state == "SUBMITTING"
    assert [t.to_state for t in store.transitions(o.client_order_id)] == ["INTENT", "SUBMITTING"]
    assert store.counts()["orders"] == 1 and _outside(data_dir) == 1


def test_an_exception_leaving_the_block_rolls_the_whole_batch_back(store, data_dir):
    intent(store)
    with pytest.raises(RuntimeError, match="boom"):
        with store.batch():
            _lifecycle(store, 2)
            raise RuntimeError("boom")
    assert store.counts()["orders"] == 1 and len(store.transitions()) == 1
    assert store.positions() == {}
    _lifecycle(store, 1)  # the store is usable after the rollback
    assert _outside(data_dir) == 2


def test_batches_do_not_nest_and_refuse_what_ends_transactions(store):
    with store.batch():
        with pytest.raises(StateError, match="do not nest"):
            with store.batch():
                pass
        with pytest.raises(StateError, match="checkpoint"):
            store.checkpoint()
        with pytest.raises(StateError, match="release_free_pages"):
            store.release_free_pages()
        intent(store)
    assert store.counts()["orders"] == 1
    store.checkpoint()  # fine again outside
