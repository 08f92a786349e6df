"""The state store API: order lifecycle, audit trail, fills and positions, kv, reconciliation flag."""
from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from resilience.state import (ALLOWED, ORDER_STATES, TERMINAL, Fill, NewOrder, StateStore,
                              open_readonly)
from tests.resilience._state_support import cipher_for, intent
from tradeguard.exceptions import StateError


@pytest.fixture
def store(data_dir):
    s = StateStore.open(data_dir / "state.db", cipher_for(1))
    yield s
    s.close()


def test_connection_pragmas(store, data_dir):
    c = store._conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert (data_dir / "state.db").stat().st_mode & 0o077 == 0
    normal = StateStore.open(data_dir / "other.db", cipher_for(1), synchronous="NORMAL")
    assert normal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    normal.close()
    with pytest.raises(StateError, match="synchronous"):
        StateStore.open(data_dir / "x.db", cipher_for(1), synchronous="OFF")


def test_client_order_ids_are_durable_and_never_reused(store, data_dir):
    a, seq_a = store.next_client_order_id("tg1")
    b, seq_b = store.next_client_order_id("tg1")
    x, seq_x = store.next_client_order_id("tg1", emergency=True)
    assert a == f"tg-tg1-{seq_a}" and seq_b == seq_a + 1
    assert x == f"tg-tg1-x{seq_x}" and len(a) <= 36
    store.close()
    reopened = StateStore.open(data_dir / "state.db", cipher_for(1))
    assert reopened.next_client_order_id("tg1")[1] == seq_b + 1
    assert reopened.meta["bot_id"] == "tg1"
    reopened.close()
    with pytest.raises(StateError, match="bot_id"):
        StateStore.open(data_dir / "state.db", cipher_for(1)).next_client_order_id("bad id!")


def test_intent_is_committed_with_its_audit_row(store, data_dir):
    o = intent(store, reason="breakout above 100")
    assert o.state == "INTENT" and o.reason == "breakout above 100" and o.filled == 0
    # another connection sees it at once: it was committed before add_intent returned
    with closing(sqlite3.connect(data_dir / "state.db")) as c:
        assert c.execute("SELECT state FROM orders WHERE client_order_id = ?",
                         (o.client_order_id,)).fetchone() == ("INTENT",)
        raw_reason = c.execute("SELECT reason FROM orders").fetchone()[0]
    assert b"breakout" not in raw_reason  # encrypted at rest
    [t] = store.transitions(o.client_order_id)
    assert (t.from_state, t.to_state, t.note) == (None, "INTENT", None)  # no note: NULL, None
    with pytest.raises(StateError, match="already exists"):
        store.add_intent(NewOrder(o.client_order_id, o.seq, "tg1", "BTC/USDT", "buy", "market", 1))


@pytest.mark.parametrize("bad", [
    dict(side="hold"), dict(amount=0), dict(amount=float("nan")), dict(price=-1),
    dict(purpose="fun"), dict(origin="me"), dict(symbol="BTCUSDT"), dict(type="Market Order"),
    dict(client_order_id="has space"), dict(client_order_id="x" * 37),
])
def test_bad_intents_are_refused_and_nothing_is_written(store, bad):
    fields = dict(client_order_id="tg-tg1-1", seq=1, bot_id="tg1", symbol="BTC/USDT",
                  side="buy", type="market", amount=1.0)
    with pytest.raises(StateError):
        store.add_intent(NewOrder(**{**fields, **bad}))
    assert store.orders() == [] and store.transitions() == []


def test_every_allowed_transition_and_no_other(store):
    for frm in ORDER_STATES:
        for to in ORDER_STATES:
            o = intent(store)
            path = {"INTENT": [], "SUBMITTING": ["SUBMITTING"], "UNKNOWN": ["UNKNOWN"],
                    "OPEN": ["OPEN"], "FILLED": ["FILLED"], "CANCELED": ["CANCELED"],
                    "REJECTED": ["REJECTED"]}[frm]
            for s in path:
                store.transition(o.client_order_id, s)
            if to in ALLOWED[frm]:
                assert store.transition(o.client_order_id, to).state == to
            else:
                with pytest.raises(StateError, match=f"illegal transition {frm} -> {to}"):
                    store.transition(o.client_order_id, to)
                assert store.get_order(o.client_order_id).state == frm
    assert all(ALLOWED[t] == {t} for t in TERMINAL)


def test_transition_updates_fields_and_audits(store):
    o = intent(store)
    cid = o.client_order_id
    store.transition(cid, "SUBMITTING", attempts=1)
    store.transition(cid, "UNKNOWN", note="RequestTimeout: read timed out")
    store.transition(cid, "OPEN", exchange_order_id=12345, raw={"orderId": 12345, "status": "NEW"})
    done = store.transition(cid, "FILLED", filled=0.01, average=101.5, note="filled")
    fee = store.transition(cid, "FILLED", fee=0.0101)  # terminal: field update only
    assert (done.state, done.filled, done.average, done.exchange_order_id) == \
        ("FILLED", 0.01, 101.5, "12345")
    assert fee.fee == 0.0101 and fee.raw == {"orderId": 12345, "status": "NEW"}
    assert fee.attempts == 1 and fee.is_terminal and fee.remaining == 0
    trail = [(t.from_state, t.to_state, t.note) for t in store.transitions(cid)]
    assert trail == [(None, "INTENT", None), ("INTENT", "SUBMITTING", None),
                     ("SUBMITTING", "UNKNOWN", "RequestTimeout: read timed out"),
                     ("UNKNOWN", "OPEN", None), ("OPEN", "FILLED", "filled"),
                     ("FILLED", "FILLED", None)]
    with pytest.raises(StateError, match="unknown field"):
        store.transition(cid, "FILLED", colour="red")
    with pytest.raises(StateError, match="must be a finite"):
        store.transition(cid, "FILLED", filled=-1)
    with pytest.raises(StateError, match="no order"):
        store.transition("tg-tg1-404", "OPEN")
    with pytest.raises(StateError, match="unknown order state"):
        store.transition(cid, "DONE")


def test_orders_filters(store):
    a = intent(store, symbol="BTC/USDT")
    b = intent(store, symbol="ETH/USDT")
    x = intent(store, symbol="ETH/USDT", origin="watchdog", purpose="emergency", emergency=True)
    store.transition(b.client_order_id, "OPEN")
    ids = lambda orders: [o.client_order_id for o in orders]  # noqa: E731
    assert ids(store.orders()) == [a.client_order_id, b.client_order_id, x.client_order_id]
    assert ids(store.orders("OPEN")) == [b.client_order_id]
    assert ids(store.orders(["INTENT", "OPEN"], symbol="ETH/USDT")) == \
        [b.client_order_id, x.client_order_id]
    assert ids(store.orders(origin="watchdog")) == [x.client_order_id]
    assert store.orders([]) == []
    with pytest.raises(StateError, match="unknown order state"):
        store.orders("DONE")
    assert store.get_order("nope") is None


def test_fills_are_idempotent_and_drive_positions(store):
    buy = Fill("1", "tg-tg1-1", "e1", "BTC/USDT", "buy", 2.0, 100.0, fee=0.002, fee_currency="BTC",
               raw={"id": "1", "account": "secret-acct"})
    assert store.add_fill(buy) is True
    assert store.add_fill(buy) is False  # the same trade again: ignored
    p = store.positions()["BTC/USDT"]
    assert p.amount == pytest.approx(1.998) and p.cost == pytest.approx(200.0)
    assert p.avg_price == pytest.approx(200.0 / 1.998)
    # the same trade id on another market is another trade (ids are per market)
    assert store.add_fill(Fill("1", None, "e9", "ETH/USDT", "buy", 1.0, 10.0)) is True
    sell = Fill("2", "tg-tg1-2", "e2", "BTC/USDT", "sell", 0.998, 150.0, fee=0.15,
                fee_currency="USDT")
    assert store.add_fill(sell)
    p = store.positions()["BTC/USDT"]
    avg = 200.0 / 1.998
    assert p.amount == pytest.approx(1.0)
    assert p.realized_pnl == pytest.approx((150.0 - avg) * 0.998 - 0.15)
    assert p.cost == pytest.approx(avg * 1.0)
    store.add_fill(Fill("3", None, None, "BTC/USDT", "sell", 1.0, 90.0))
    flat = store.positions()["BTC/USDT"]
    assert flat.amount == 0 and flat.cost == 0 and flat.avg_price == 0
    assert [f.fill_id for f in store.fills(symbol="BTC/USDT")] == ["1", "2", "3"]
    [f] = store.fills(client_order_id="tg-tg1-1")
    assert f.raw == {"id": "1", "account": "secret-acct"} and f.fee_currency == "BTC"
    with pytest.raises(StateError):
        store.add_fill(Fill("4", None, None, "BTC/USDT", "buy", 0, 1.0))


def test_adjust_position_is_audited(store):
    store.add_fill(Fill("1", None, None, "ETH/USDT", "buy", 2.0, 10.0))
    store.adjust_position("ETH/USDT", 1.5, reason="exchange balance is 1.5")
    p = store.positions()["ETH/USDT"]
    assert p.amount == 1.5 and p.avg_price == pytest.approx(10.0)
    store.adjust_position("ETH/USDT", 2.5, reason="deposit", price=20.0)
    assert store.positions()["ETH/USDT"].cost == pytest.approx(15.0 + 20.0)
    audit = [t for t in store.transitions() if t.client_order_id is None]
    assert [(t.from_state, t.to_state) for t in audit] == [("POSITION", "ADJUST")] * 2
    assert "exchange balance is 1.5" in audit[0].note and '"to":1.5' in audit[0].note
    with pytest.raises(StateError, match="reason"):
        store.adjust_position("ETH/USDT", 1.0, reason="")
    for bad in ("ETHUSDT", " ETH/USDT", "/USDT", None):  # the position table takes no odd keys
        with pytest.raises(StateError, match="must look like 'BTC/USDT'"):
            store.adjust_position(bad, 1.0, reason="test")
        with pytest.raises(StateError, match="must look like 'BTC/USDT'"):
            store.add_fill(Fill("9", None, None, bad, "buy", 1.0, 10.0))
    assert sorted(store.positions()) == ["ETH/USDT"]


def test_kv_round_trips_json_encrypted(store, data_dir):
    assert store.kv_get("day", {"default": True}) == {"default": True}
    store.kv_set("day", {"start_equity": 10000.5, "date": "2026-11-23"})
    store.kv_set("n", 3)
    assert store.kv_get("day") == {"start_equity": 10000.5, "date": "2026-11-23"}
    assert store.kv_get("n") == 3
    with closing(sqlite3.connect(data_dir / "state.db")) as c:
        assert b"10000.5" not in c.execute("SELECT value FROM kv WHERE key='day'").fetchone()[0]
    with pytest.raises(StateError, match="JSON"):
        store.kv_set("bad", object())


def test_reconciliation_flag(store):
    assert store.needs_reconciliation is False
    store.set_needs_reconciliation(True, "restart after crash")
    assert store.needs_reconciliation is True
    assert store.meta["needs_reconciliation_reason"] == "restart after crash"
    store.set_needs_reconciliation(False)
    assert store.needs_reconciliation is False


def test_reader_never_decrypts_without_a_cipher(store, data_dir):
    o = intent(store, reason="secret reason")
    store.transition(o.client_order_id, "OPEN", raw={"x": 1})
    store.add_fill(Fill("1", o.client_order_id, None, "BTC/USDT", "buy", 0.01, 100.0))
    with open_readonly(data_dir / "state.db") as r:
        [ro] = r.orders()
        assert (ro.state, ro.reason, ro.raw) == ("OPEN", None, None)
        assert r.positions()["BTC/USDT"].amount == 0.01
        assert r.counts()["orders"] == 1 and not r.needs_reconciliation
        assert r.meta["schema_version"] == "4" and "canary" not in r.meta
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            r._conn.execute("DELETE FROM orders")
    with open_readonly(data_dir / "state.db", cipher_for(1)) as r:
        assert r.orders()[0].reason == "secret reason" and r.orders()[0].raw == {"x": 1}
    with pytest.raises(StateError, match="no state database"):
        open_readonly(data_dir / "missing.db")


def test_checkpoint_truncates_the_wal(data_dir):
    s = StateStore(data_dir / "state.db", cipher_for(1), checkpoint_every=10)
    wal = data_dir / "state.db-wal"
    for _ in range(4):
        intent(s)  # two writes each
    assert wal.stat().st_size > 0
    s.checkpoint()
    assert wal.stat().st_size == 0
    for _ in range(5):  # the tenth write checkpoints by itself
        intent(s)
    assert wal.stat().st_size == 0
    assert s.check()["wal_bytes"] == 0
    s.close()


def test_closed_store_refuses_calls(store):
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.orders()


def test_raise_sequence_moves_above_the_highest_seen_and_never_lowers(store):
    _, first = store.next_client_order_id("tg1")
    far = first + 10**9  # an id the exchange has that this database never handed out
    store.raise_sequence("orders", far)
    cid, seq = store.next_client_order_id("tg1")
    assert seq == far + 1 and cid == f"tg-tg1-{far + 1}"
    store.raise_sequence("orders", first)  # lower: no effect
    assert store.next_client_order_id("tg1")[1] == far + 2
    store.raise_sequence("emergency", far * 2)  # not used yet: starts above it
    assert store.next_client_order_id("tg1", emergency=True) == (f"tg-tg1-x{far * 2 + 1}", far * 2 + 1)
    for name, seen in (("trades", 5), ("orders", -1), ("orders", "9"), ("orders", True)):
        with pytest.raises(StateError):
            store.raise_sequence(name, seen)
    assert store.next_client_order_id("tg1")[1] == far + 3
