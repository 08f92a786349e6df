"""The invariant checker catches each kind of broken promise (and passes a clean record).

The ledger is the paper exchange's /_paper/ledger shape; state.db is a real StateStore file."""
from __future__ import annotations

import copy

import pytest

from chaos.invariants import CheckInput, Window, check
from resilience.crypto import FieldCipher
from resilience.state import Fill, NewOrder, StateStore

T0 = 1_763_900_000.0


def _ledger() -> dict:
    return {
        "orders": [
            {"symbol": "BTCUSDT", "orderId": 1, "clientOrderId": "tg-tg1-1", "side": "BUY",
             "type": "MARKET", "status": "FILLED", "price": "0", "origQty": "0.01",
             "executedQty": "0.01", "time": int((T0 + 1) * 1000)},
            {"symbol": "BTCUSDT", "orderId": 2, "clientOrderId": "tg-tg1-2", "side": "SELL",
             "type": "MARKET", "status": "FILLED", "price": "0", "origQty": "0.004",
             "executedQty": "0.004", "time": int((T0 + 5) * 1000)},
            {"symbol": "ETHUSDT", "orderId": 3, "clientOrderId": "someone-else", "side": "BUY",
             "type": "MARKET", "status": "FILLED", "price": "0", "origQty": "1",
             "executedQty": "1", "time": int((T0 + 6) * 1000)},
        ],
        "fills": [
            {"id": 11, "orderId": 1, "clientOrderId": "tg-tg1-1", "symbol": "BTCUSDT", "side": "BUY",
             "price": "60000", "qty": "0.01", "commission": "0.6", "commissionAsset": "USDT",
             "time": int((T0 + 1) * 1000)},
            {"id": 12, "orderId": 2, "clientOrderId": "tg-tg1-2", "symbol": "BTCUSDT", "side": "SELL",
             "price": "61000", "qty": "0.004", "commission": "0.2", "commissionAsset": "USDT",
             "time": int((T0 + 5) * 1000)},
        ],
    }


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore.open(path, FieldCipher.from_keys(b"k" * 32))
    for cid, seq, side, amount, fill_id, price in (("tg-tg1-1", 1, "buy", 0.01, "11", 60000.0),
                                                   ("tg-tg1-2", 2, "sell", 0.004, "12", 61000.0)):
        store.add_intent(NewOrder(cid, seq, "tg1", "BTC/USDT", side, "market", amount))
        store.transition(cid, "SUBMITTING")
        store.transition(cid, "FILLED", filled=amount, exchange_order_id=str(seq))
        store.add_fill(Fill(fill_id, cid, str(seq), "BTC/USDT", side, amount, price, 0.5, "USDT",
                            T0 + seq))
    store.close()
    return path


def _input(db, ledger=None, **kw) -> CheckInput:
    args = dict(ledger=ledger or _ledger(), balances={"USDT": {"total": 9640.0},
                                                      "BTC": {"total": 0.006}, "ETH": {"total": 1.0}},
                state_db=db, bot_id="tg1", start_balances={"USDT": 10000.0, "ETH": 1.0},
                max_position={"BTC/USDT": 0.05}, max_orders_per_minute=30)
    args.update(kw)
    return CheckInput(**args)


def names(violations) -> set[str]:
    return {v.invariant for v in violations}


def test_clean_record_passes(db) -> None:
    assert check(_input(db)) == []


def test_duplicate_client_order_id(db) -> None:
    led = _ledger()
    led["orders"].append(dict(led["orders"][0], orderId=9))
    assert "unique-client-order-id" in names(check(_input(db, led)))


def test_exchange_order_or_fill_missing_from_state(db) -> None:
    led = _ledger()
    led["orders"].append(dict(copy.deepcopy(led["orders"][0]), orderId=7, clientOrderId="tg-tg1-7"))
    led["fills"].append(dict(led["fills"][0], id=77, orderId=7, clientOrderId="tg-tg1-7", qty="0"))
    got = names(check(_input(db, led)))
    assert {"orders-recorded", "fills-recorded"} <= got


def test_positions_must_equal_holdings(db) -> None:
    got = check(_input(db, balances={"USDT": {"total": 9640.0}, "BTC": {"total": 0.007},
                                     "ETH": {"total": 1.0}}))
    assert names(got) == {"positions-match"}


def test_orders_during_kill_switch(db) -> None:
    halt = [Window(T0 + 3, T0 + 10, "halt")]
    assert "kill-switch-respected" in names(check(_input(db, kill_windows=halt)))
    # a sell while flattening is what flatten is for
    flatten = [Window(T0 + 3, T0 + 10, "flatten")]
    assert check(_input(db, kill_windows=flatten)) == []


def test_not_flat_after_flatten(db) -> None:
    assert "flat-after-flatten" in names(check(_input(db, flattened=True)))


def test_risk_limits(db) -> None:
    assert "max-position" in names(check(_input(db, max_position={"BTC/USDT": 0.005})))
    # two entries in a minute break a limit of one; the exit does not count against it
    led = _ledger()
    led["orders"].append(dict(led["orders"][0], orderId=8, clientOrderId="tg-tg1-8"))
    assert "order-rate" in names(check(_input(db, led, max_orders_per_minute=1)))
    assert "order-rate" not in names(check(_input(db, max_orders_per_minute=1)))


def test_integrity_and_unresolved_intents(db, tmp_path) -> None:
    store = StateStore.open(db, FieldCipher.from_keys(b"k" * 32))
    store.add_intent(NewOrder("tg-tg1-3", 3, "tg1", "BTC/USDT", "buy", "market", 0.001))
    store.close()
    assert "intents-resolved" in names(check(_input(db)))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    assert names(check(_input(junk))) & {"state-db-readable", "state-db-integrity"}
