"""The invariant checker catches each kind of broken promise (and passes a clean record).

The ledger is the paper exchange's /_paper/ledger shape; state.db is a real StateStore file."""
from __future__ import annotations

import copy

import pytest

import sqlite3

from chaos.invariants import CheckInput, Window, bot_net, check, flat_of_bot_coins
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


# --- the owner's own coins (issue #16) -------------------------------------------------------
OWNER = {"BTC": 0.02, "ETH": 0.5}


def _owner_balances(btc: float) -> dict:
    return {"USDT": {"total": 9640.0}, "BTC": {"total": btc}, "ETH": {"total": 1.5}}


def _emergency_sell(qty: str, t: float = T0 + 8) -> tuple[dict, dict]:
    order = {"symbol": "BTCUSDT", "orderId": 4, "clientOrderId": "tg-tg1-x4", "side": "SELL",
             "type": "MARKET", "status": "FILLED", "price": "0", "origQty": qty,
             "executedQty": qty, "time": int(t * 1000)}
    fill = {"id": 14, "orderId": 4, "clientOrderId": "tg-tg1-x4", "symbol": "BTCUSDT",
            "side": "SELL", "price": "61000", "qty": qty, "commission": "0.1",
            "commissionAsset": "USDT", "time": int(t * 1000)}
    return order, fill


def test_owner_coins_beside_the_bot_pass(db) -> None:
    assert check(_input(db, balances=_owner_balances(0.026), owner=OWNER)) == []


def test_owner_coins_short(db) -> None:
    got = check(_input(db, balances=_owner_balances(0.016), owner=OWNER))
    assert "owner-coins-intact" in names(got)
    assert "0.004 BTC" in next(v.detail for v in got if v.invariant == "owner-coins-intact")


def test_emergency_sell_of_more_than_the_bot_bought(db) -> None:
    led = _ledger()
    order, fill = _emergency_sell("0.01")  # the bot holds 0.006: 0.004 of it is the owner's
    led["orders"].append(order)
    led["fills"].append(fill)
    got = names(check(_input(db, led, balances=_owner_balances(0.016), owner=OWNER)))
    assert {"bot-sold-only-its-own", "owner-coins-intact"} <= got


def test_bot_net_counts_fees_paid_in_the_coin() -> None:
    fills = [{"id": 1, "clientOrderId": "tg-tg1-1", "symbol": "ETHUSDT", "side": "BUY", "qty": "1",
              "commission": "0.001", "commissionAsset": "ETH", "time": 1},
             {"id": 2, "clientOrderId": "tg-tg1-2", "symbol": "ETHUSDT", "side": "SELL",
              "qty": "1", "commission": "0", "commissionAsset": "USDT", "time": 2}]
    net, oversold = bot_net(fills)
    assert net["ETH"] < 0 and oversold  # it received 0.999 and sold 1: 0.001 was the owner's
    assert flat_of_bot_coins(fills[:1]) == {"ETH": 0.999}


def test_bot_sells_during_the_watchdogs_flatten(db) -> None:
    # the bot's own sell (tg-tg1-2 at T0+5) while the watchdog flattens: two sellers
    emergency = [Window(T0 + 3, None, "emergency")]
    assert "kill-switch-respected" in names(check(_input(db, kill_windows=emergency)))
    led = _ledger()
    order, fill = _emergency_sell("0.006")
    led["orders"].append(order)
    led["fills"].append(fill)
    late = [Window(T0 + 6, None, "emergency")]  # only the watchdog's exit after it: fine
    assert "kill-switch-respected" not in names(check(_input(db, led, kill_windows=late)))


def test_negative_position_in_state_db(db) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE positions SET amount = -0.001 WHERE symbol = 'BTC/USDT'")
    con.commit()
    con.close()
    assert "no-negative-position" in names(check(_input(db)))


def test_orders_before_a_deliberate_state_loss_are_exempt(db) -> None:
    led = _ledger()
    lost = copy.deepcopy(led["orders"][0])
    lost.update(orderId=5, clientOrderId="tg-tg1-5", time=int((T0 + 2) * 1000))
    led["orders"].append(lost)
    assert "orders-recorded" in names(check(_input(db, led)))
    assert "orders-recorded" not in names(check(_input(db, led, state_lost_at=T0 + 3)))
    later = dict(lost, orderId=6, clientOrderId="tg-tg1-6", time=int((T0 + 4) * 1000))
    led["orders"].append(later)
    assert "orders-recorded" in names(check(_input(db, led, state_lost_at=T0 + 3)))
