"""Orders, balances and fills through the real ccxt client; a fresh account per test."""
from __future__ import annotations

import threading

import ccxt
import pytest

from trading.exchange import fetch_order_by_client_id
from resilience.classify import ErrorClass, classify


@pytest.fixture
def fresh(paper_exchange_factory):
    px = paper_exchange_factory(tick_s=3600, slippage=0.0, fee=0.001)
    px.set_price("BTC/USDT", 50000)
    client = px.client()
    client.load_markets()
    return px, client


def _bal(px, asset: str) -> tuple[float, float]:
    b = px.balances().get(asset, {"free": "0", "locked": "0"})
    return float(b["free"]), float(b["locked"])


def test_market_buy_then_sell_moves_balances_and_records_fills(fresh) -> None:
    px, client = fresh
    o = client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-a-1"})
    assert o["status"] == "closed" and o["filled"] == 0.01 and o["clientOrderId"] == "tg-a-1"
    assert o["average"] == 50000 and o["fee"] == {"currency": "USDT", "cost": 0.5}
    assert _bal(px, "USDT") == (10000 - 500 - 0.5, 0) and _bal(px, "BTC") == (0.01, 0)
    s = client.create_order("BTC/USDT", "market", "sell", 0.01, None, {"newClientOrderId": "tg-a-2"})
    assert s["status"] == "closed"
    assert _bal(px, "USDT")[0] == pytest.approx(10000 - 0.5 - 0.5) and _bal(px, "BTC") == (0, 0)
    ledger = px.ledger()
    assert [o["clientOrderId"] for o in ledger["orders"]] == ["tg-a-1", "tg-a-2"]
    assert [(f["side"], f["qty"], f["commission"]) for f in ledger["fills"]] == \
        [("BUY", "0.01000000", "0.50000000"), ("SELL", "0.01000000", "0.50000000")]
    trades = client.fetch_my_trades("BTC/USDT")
    assert [t["order"] for t in trades] == [o["id"], s["id"]]
    assert client.fetch_balance()["total"]["USDT"] == pytest.approx(9999.0)


def test_limit_order_rests_locks_funds_and_fills_when_price_crosses(fresh) -> None:
    px, client = fresh
    o = client.create_order("BTC/USDT", "limit", "buy", 0.02, 49000, {"newClientOrderId": "tg-b-1"})
    assert o["status"] == "open"
    locked = 0.02 * 49000 * 1.001
    assert _bal(px, "USDT") == pytest.approx((10000 - locked, locked))
    assert [x["id"] for x in client.fetch_open_orders("BTC/USDT")] == [o["id"]]
    px.set_price("BTC/USDT", 49500)  # not crossed yet
    assert fetch_order_by_client_id(client, "BTC/USDT", "tg-b-1")["status"] == "open"
    assert px.set_price("BTC/USDT", 48900)["filled"] == [int(o["id"])]
    done = fetch_order_by_client_id(client, "BTC/USDT", "tg-b-1")
    assert done["status"] == "closed" and done["filled"] == 0.02 and done["average"] == 49000
    assert _bal(px, "USDT") == pytest.approx((10000 - 980 - 0.98, 0)) and _bal(px, "BTC") == (0.02, 0)
    assert client.fetch_open_orders("BTC/USDT") == []
    assert client.fetch_my_trades("BTC/USDT")[0]["takerOrMaker"] == "maker"


def test_cancel_releases_funds_and_unknown_orders_are_not_found(fresh) -> None:
    px, client = fresh
    o = client.create_order("BTC/USDT", "limit", "buy", 0.01, 40000, {"newClientOrderId": "tg-c-1"})
    c = client.cancel_order(o["id"], "BTC/USDT")
    assert c["status"] == "canceled"
    assert _bal(px, "USDT") == (10000, 0)
    assert client.fetch_order(o["id"], "BTC/USDT")["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        client.cancel_order(o["id"], "BTC/USDT")  # already canceled: -2011
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order("999", "BTC/USDT")
    assert fetch_order_by_client_id(client, "BTC/USDT", "tg-c-404") is None
    assert [x["status"] for x in client.fetch_orders("BTC/USDT")] == ["canceled"]
    assert client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tg-c-1"})["id"] == o["id"]


def test_duplicate_client_order_id_is_classified_duplicate(fresh) -> None:
    px, client = fresh
    client.create_order("BTC/USDT", "limit", "buy", 0.01, 40000, {"newClientOrderId": "tg-d-1"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent") as ei:
        client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-d-1"})
    assert classify(ei.value, state_changing=True) is ErrorClass.DUPLICATE
    client.cancel_order(None, "BTC/USDT", {"origClientOrderId": "tg-d-1"})
    # Binance: unique only among open orders -- once canceled (or filled) the id is accepted again
    again = client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-d-1"})
    assert again["status"] == "closed"
    assert [o["status"] for o in px.ledger()["orders"]] == ["CANCELED", "FILLED"]
    # a lookup by client id finds the newest order with it
    assert fetch_order_by_client_id(client, "BTC/USDT", "tg-d-1")["id"] == again["id"]


def test_client_id_reuse_never_is_the_strict_kinder_mode(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600, client_id_reuse="never")
    client = px.client()
    client.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-n-1"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        client.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-n-1"})
    assert len(px.ledger()["orders"]) == 1


def test_insufficient_balance(fresh) -> None:
    px, client = fresh
    with pytest.raises(ccxt.InsufficientFunds) as ei:
        client.create_order("BTC/USDT", "market", "buy", 0.5, None, {"newClientOrderId": "tg-e-1"})
    assert classify(ei.value, state_changing=True) is ErrorClass.NOT_RETRYABLE
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("ETH/USDT", "market", "sell", 1, None)
    with pytest.raises(ccxt.InsufficientFunds):  # locked funds are not free
        client.create_order("BTC/USDT", "limit", "buy", 0.19, 50000)
        client.create_order("BTC/USDT", "limit", "buy", 0.01, 50000)
    # a rejected order is not on the exchange, and its client id stays usable
    client.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-e-1"})
    assert [o["clientOrderId"] for o in px.ledger()["orders"]][-1] == "tg-e-1"


@pytest.mark.parametrize("params, error", [
    ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01", "price": "50000.001"}, "PRICE_FILTER"),
    ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01", "price": "2000000"}, "PRICE_FILTER"),
    ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.000015", "price": "50000"}, "LOT_SIZE"),
    ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "10000", "price": "1"}, "LOT_SIZE"),
    ({"type": "MARKET", "quantity": "101"}, "MARKET_LOT_SIZE"),
    ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0001", "price": "40000"}, "NOTIONAL"),
])
def test_filters_reject_like_binance(px, client, params, error) -> None:
    # ccxt maps LOT_SIZE and PRICE_FILTER messages to InvalidOrder, -1013 NOTIONAL to BadRequest
    # (as against the real Binance); both are rejections, never retried
    expected = ccxt.BadRequest if error == "NOTIONAL" else ccxt.InvalidOrder
    with pytest.raises(expected, match=f"Filter failure: {error}") as ei:
        client.privatePostOrder({"symbol": "BTCUSDT", "side": "BUY", **params})
    assert classify(ei.value, state_changing=True) is ErrorClass.NOT_RETRYABLE


def test_ioc_limit_expires_and_fee_in_received_asset(paper_exchange_factory) -> None:
    # one deep book level: this test is about fees, not about walking the book
    px = paper_exchange_factory(tick_s=3600, slippage=0.0, fee=0.001, fee_asset="received",
                                book_level_quote=1e7)
    px.set_price("ETH/USDT", 2000)
    client = px.client()
    client.load_markets()
    ioc = client.create_order("ETH/USDT", "limit", "buy", 1, 1900, {"timeInForce": "IOC"})
    assert ioc["status"] == "expired" and ioc["filled"] == 0
    buy = client.create_order("ETH/USDT", "market", "buy", 1)
    assert buy["fee"] == {"currency": "ETH", "cost": 0.001}
    sell = client.create_order("ETH/USDT", "market", "sell", 0.999)
    assert sell["fee"]["currency"] == "USDT"
    assert float(px.balances()["ETH"]["total"]) == 0
    assert float(px.balances()["USDT"]["total"]) == pytest.approx(10000 - 2000 + 1998 - 1.998)


def test_concurrent_clients_get_unique_orders(fresh) -> None:
    px, _ = fresh
    errors: list[BaseException] = []

    def trade(n: int) -> None:
        c = px.client()
        try:
            for i in range(8):
                c.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": f"tg-t{n}-{i}"})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=trade, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    ledger = px.ledger()
    assert len({o["orderId"] for o in ledger["orders"]}) == len(ledger["fills"]) == 32
    assert float(px.balances()["BTC"]["total"]) == pytest.approx(0.032)
    assert float(px.balances()["USDT"]["total"]) == pytest.approx(10000 - 32 * 50 * 1.001)


def test_response_types(client) -> None:
    base = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}
    ack = client.privatePostOrder({**base, "newOrderRespType": "ACK"})
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    result = client.privatePostOrder({**base, "newOrderRespType": "RESULT"})
    assert result["status"] == "FILLED" and "fills" not in result
    full = client.privatePostOrder(base)  # FULL by default for MARKET and LIMIT
    assert full["fills"][0]["qty"] == "0.00100000" and full["clientOrderId"].startswith("x-")  # ccxt's
