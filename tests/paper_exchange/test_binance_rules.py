"""The Binance spot rules that threaten the bot's invariants (issue #15), each driven through ccxt
AND through an independent client (Binance's own ``binance-connector``), pointed at the paper
exchange on 127.0.0.1 only. Every assertion is documented Binance behaviour (docs/PAPER_EXCHANGE.md).
"""
from __future__ import annotations

import time
from decimal import Decimal

import ccxt
import pytest
from binance.error import ClientError
from binance.spot import Spot

from tests.helpers.proc import wait_until


def spot(px, **kw) -> Spot:
    """The independent client: Binance's connector, its base URL the local paper exchange."""
    return Spot(api_key=px.api_key, api_secret=px.secret, base_url=px.url, timeout=10, **kw)


def error_of(fn, *args, **kw) -> ClientError:
    with pytest.raises(ClientError) as ei:
        fn(*args, **kw)
    return ei.value


@pytest.fixture
def fresh(paper_exchange_factory):
    """A still market (no walk), BTC at 50,000, zero spread, fees 0.1%."""
    def make(**settings):
        px = paper_exchange_factory(**{"tick_s": 3600, "slippage": 0.0, **settings})
        px.set_price("BTC/USDT", 50000)
        c = px.client()
        c.load_markets()
        return px, c, spot(px)
    return make


# --- 1. client order id reuse ---------------------------------------------------------------
def test_client_order_id_is_unique_only_among_open_orders(fresh) -> None:
    px, c, s = fresh()
    s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="0.001", price="40000", timeInForce="GTC",
                newClientOrderId="tg-r-1")
    e = error_of(s.new_order, "BTCUSDT", "BUY", "MARKET", quantity="0.001", newClientOrderId="tg-r-1")
    assert (e.status_code, e.error_code, e.error_message) == (400, -2010, "Duplicate order sent.")
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        c.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-r-1"})
    s.cancel_order("BTCUSDT", origClientOrderId="tg-r-1")
    # canceled: the id is free again; filled: free again -- a lost-ack resubmit duplicates a fill
    first = s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001", newClientOrderId="tg-r-1")
    second = c.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-r-1"})
    assert first["status"] == "FILLED" and second["status"] == "closed"
    same = [o for o in s.get_orders("BTCUSDT") if o["clientOrderId"] == "tg-r-1"]
    assert [o["status"] for o in same] == ["CANCELED", "FILLED", "FILLED"]
    assert Decimal(px.balances()["BTC"]["total"]) == Decimal("0.002")


# --- 2. eventual visibility -------------------------------------------------------------------
def _invisible_everywhere(px, c, s, order_id: int, cid: str) -> None:
    e = error_of(s.get_order, "BTCUSDT", orderId=order_id)
    assert (e.error_code, e.error_message) == (-2013, "Order does not exist.")
    with pytest.raises(ccxt.OrderNotFound):
        c.fetch_order(None, "BTC/USDT", {"origClientOrderId": cid})
    assert order_id not in {o["orderId"] for o in s.get_open_orders("BTCUSDT")}
    assert order_id not in {o["orderId"] for o in s.get_orders("BTCUSDT")}
    assert order_id not in {t["orderId"] for t in s.my_trades("BTCUSDT")}
    assert order_id in {o["orderId"] for o in px.ledger()["orders"]}  # yet it exists


def test_visibility_lag_hides_new_orders_then_shows_them(fresh) -> None:
    px, c, s = fresh(visibility_lag_s=2.0)
    filled = s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001", newClientOrderId="tg-v-1")
    _invisible_everywhere(px, c, s, filled["orderId"], "tg-v-1")
    rest = s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="0.001", price="40000", timeInForce="GTC",
                       newClientOrderId="tg-v-2")
    e = error_of(s.cancel_order, "BTCUSDT", orderId=rest["orderId"])
    assert e.error_code == -2011  # not visible to cancel either
    # the account already shows the effects: the exchange, not the order view, is the truth
    assert Decimal(s.account()["balances"][0]["free"]) > 0
    wait_until(lambda: c.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tg-v-1"})["status"] == "closed",
               timeout=15)
    assert {t["orderId"] for t in s.my_trades("BTCUSDT")} == {filled["orderId"]}
    wait_until(lambda: [o["clientOrderId"] for o in s.get_open_orders("BTCUSDT")] == ["tg-v-2"], timeout=15)


def test_invisible_fault_after_a_lost_answer(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600)
    c, s = px.client(), spot(px)
    c.timeout = 1000
    px.add_fault(method="POST", path="/api/v3/order", action="apply_then_fail", then="reset", invisible_s=2)
    with pytest.raises(ccxt.NetworkError):
        c.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": "tg-v-3"})
    order_id = [o for o in px.ledger()["orders"] if o["clientOrderId"] == "tg-v-3"][0]["orderId"]
    _invisible_everywhere(px, c, s, order_id, "tg-v-3")
    wait_until(lambda: s.get_order("BTCUSDT", origClientOrderId="tg-v-3")["status"] == "FILLED", timeout=15)
    px.add_fault(method="POST", path="/api/v3/order", action="invisible", seconds=30)
    ok = s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001")  # answered normally ...
    assert ok["status"] == "FILLED"
    assert error_of(s.get_order, "BTCUSDT", orderId=ok["orderId"]).error_code == -2013  # ... but hidden


# --- 3. recvWindow as a fence -----------------------------------------------------------------
def test_recv_window_is_checked_again_at_the_matching_engine(fresh) -> None:
    px, c, s = fresh()
    px.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=1.5)
    e = error_of(s.new_order, "BTCUSDT", "BUY", "MARKET", quantity="0.001", newClientOrderId="tg-w-1",
                 recvWindow=1000)
    assert (e.error_code, e.error_message) == (-1021, "Timestamp for this request is outside of the recvWindow.")
    assert px.ledger()["orders"] == []  # never executed late
    # the same delay inside the window executes
    px.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=0.3)
    assert s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001", recvWindow=5000)["status"] == "FILLED"
    # ccxt sees -1021 as InvalidNonce
    px.add_fault(method="DELETE", path="/api/v3/order", action="delay", seconds=1.5)
    o = c.create_order("BTC/USDT", "limit", "buy", 0.001, 40000)
    with pytest.raises(ccxt.InvalidNonce):
        c.cancel_order(o["id"], "BTC/USDT", {"recvWindow": 1000})
    assert c.fetch_order(o["id"], "BTC/USDT")["status"] == "open"


def test_without_the_second_check_a_delayed_order_executes_late(fresh) -> None:
    px, _, s = fresh(recv_window_at_matching=False)
    px.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=1.5)
    late = s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001", recvWindow=1000)
    assert late["status"] == "FILLED"


def test_timestamp_ahead_and_decimal_recv_window(fresh, monkeypatch) -> None:
    px, c, s = fresh()
    assert s.account(recvWindow=5000.5)["canTrade"] is True  # decimals (microseconds) accepted
    import binance.api
    monkeypatch.setattr(binance.api, "get_timestamp", lambda: int(time.time() * 1000) + 3000)  # skewed clock
    e = error_of(s.account)
    assert (e.error_code, e.error_message) == (-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    monkeypatch.undo()
    e = error_of(s.account, recvWindow="5000.1234")
    assert e.error_code == -1100


# --- 4. a real book, partial fills ------------------------------------------------------------
def test_depth_has_varying_sizes_and_a_market_order_walks_it(fresh) -> None:
    px, c, s = fresh(book_level_quote=1000, book_step=0.0001)
    book = s.depth("BTCUSDT", limit=10)
    sizes = [Decimal(q) for _, q in book["asks"]]
    assert len(sizes) == 10 and len(set(sizes)) > 3
    prices = [Decimal(p) for p, _ in book["asks"]]
    assert prices == sorted(prices) and prices[0] == Decimal("50000")
    qty = sum(sizes[:4]) + sizes[4] / 2
    qty = qty.quantize(Decimal("0.00001"), rounding="ROUND_DOWN")
    r = s.new_order("BTCUSDT", "BUY", "MARKET", quantity=str(qty), newOrderRespType="FULL")
    assert r["status"] == "FILLED" and len(r["fills"]) == 5
    assert [Decimal(f["price"]) for f in r["fills"]] == prices[:5]
    assert [Decimal(f["qty"]) for f in r["fills"][:4]] == sizes[:4]
    avg = sum(Decimal(f["price"]) * Decimal(f["qty"]) for f in r["fills"]) / qty
    assert Decimal(r["cummulativeQuoteQty"]) == pytest.approx(avg * qty, abs=Decimal("0.01"))
    # the taken liquidity is gone until the price moves
    after = s.depth("BTCUSDT", limit=5)["asks"]
    assert Decimal(after[0][0]) == prices[4] and Decimal(after[0][1]) < sizes[4]
    # ccxt sees one order with the average price
    o = c.create_order("BTC/USDT", "market", "sell", float(qty))
    assert o["status"] == "closed" and len(o["trades"]) >= 4 and o["average"] < 50000


def test_resting_limit_fills_partially_then_fully_and_cancel_keeps_the_fill(fresh) -> None:
    px, c, s = fresh(book_level_quote=500, book_step=0.0001)
    s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="0.05", price="49000", timeInForce="GTC",
                newClientOrderId="tg-p-1")
    s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="0.05", price="48000", timeInForce="GTC",
                newClientOrderId="tg-p-2")
    px.set_price("BTC/USDT", 49000)  # touches the first: one level of liquidity (~0.01 BTC)
    o = s.get_order("BTCUSDT", origClientOrderId="tg-p-1")
    assert o["status"] == "PARTIALLY_FILLED" and 0 < Decimal(o["executedQty"]) < Decimal("0.05")
    assert c.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tg-p-1"})["status"] == "open"
    for _ in range(20):
        if s.get_order("BTCUSDT", origClientOrderId="tg-p-1")["status"] == "FILLED":
            break
        px.set_price("BTC/USDT", 48990)
        px.set_price("BTC/USDT", 48980)
    done = s.get_order("BTCUSDT", origClientOrderId="tg-p-1")
    assert done["status"] == "FILLED" and done["executedQty"] == "0.05000000"
    assert {Decimal(t["price"]) for t in s.my_trades("BTCUSDT", orderId=done["orderId"])} == {Decimal(49000)}
    px.set_price("BTC/USDT", 48000)
    part = s.get_order("BTCUSDT", origClientOrderId="tg-p-2")
    assert part["status"] == "PARTIALLY_FILLED"
    executed = Decimal(part["executedQty"])
    canceled = s.cancel_order("BTCUSDT", origClientOrderId="tg-p-2")
    assert canceled["status"] == "CANCELED" and Decimal(canceled["executedQty"]) == executed
    bal = px.balances()
    assert Decimal(bal["BTC"]["total"]) == Decimal("0.05") + executed
    assert Decimal(bal["USDT"]["locked"]) == 0
    spent = Decimal(2450) + executed * 48000
    assert Decimal(bal["USDT"]["free"]) == pytest.approx(Decimal(10000) - spent * Decimal("1.001"), abs=Decimal("0.0001"))


def test_fok_that_cannot_fill_whole_expires_and_ioc_takes_what_there_is(fresh) -> None:
    px, c, s = fresh(book_level_quote=500, book_levels=3)
    fok = s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="1", price="50100", timeInForce="FOK")
    assert fok["status"] == "EXPIRED" and fok["executedQty"] == "0.00000000"
    ioc = s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="1", price="50100", timeInForce="IOC")
    assert ioc["status"] == "EXPIRED" and Decimal(ioc["executedQty"]) > 0 and len(ioc["fills"]) == 3


# --- 5. protective order types -----------------------------------------------------------------
def test_limit_maker_rests_or_is_rejected_when_it_would_take(fresh) -> None:
    px, c, s = fresh()
    e = error_of(s.new_order, "BTCUSDT", "BUY", "LIMIT_MAKER", quantity="0.001", price="50000")
    assert (e.error_code, e.error_message) == (-2010, "Order would immediately match and take.")
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        c.create_order("BTC/USDT", "limit", "buy", 0.001, 50001, {"postOnly": True})
    ok = c.create_order("BTC/USDT", "limit", "buy", 0.001, 49000, {"postOnly": True})
    assert ok["status"] == "open" and ok["info"]["type"] == "LIMIT_MAKER"
    e = error_of(s.new_order, "BTCUSDT", "BUY", "LIMIT_MAKER", quantity="0.001", price="49000", timeInForce="GTC")
    assert e.error_code == -1106


def test_stop_loss_sell_locks_the_base_and_fires_on_the_price(fresh) -> None:
    px, c, s = fresh()
    assert {"STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT", "LIMIT_MAKER"} <= \
        set(s.exchange_info(symbol="BTCUSDT")["symbols"][0]["orderTypes"])
    c.create_order("BTC/USDT", "market", "buy", 0.01)
    stop = c.create_order("BTC/USDT", "market", "sell", 0.01, None, {"stopLossPrice": 48000})
    assert stop["info"]["type"] == "STOP_LOSS" and stop["status"] == "open"
    view = s.get_order("BTCUSDT", orderId=int(stop["id"]))
    assert view["isWorking"] is False and view["stopPrice"] == "48000.00000000"
    assert px.balances()["BTC"]["locked"] == "0.01000000"  # as on Binance: the coins are locked
    with pytest.raises(ccxt.InsufficientFunds):
        c.create_order("BTC/USDT", "market", "sell", 0.01)
    px.set_price("BTC/USDT", 48500)
    assert c.fetch_order(stop["id"], "BTC/USDT")["status"] == "open"
    px.set_price("BTC/USDT", 47990)  # through the stop: sold at the market
    done = s.get_order("BTCUSDT", orderId=int(stop["id"]))
    assert done["status"] == "FILLED" and done["isWorking"] is True
    assert px.balances()["BTC"]["total"] == "0.00000000"
    e = error_of(s.new_order, "BTCUSDT", "SELL", "STOP_LOSS", quantity="0.001", stopPrice="48000")
    assert (e.error_code, e.error_message) == (-2010, "Order would immediately trigger.")


def test_stop_limit_and_take_profit_through_both_clients(fresh) -> None:
    px, c, s = fresh()
    c.create_order("BTC/USDT", "market", "buy", 0.02)
    sl = c.create_order("BTC/USDT", "limit", "sell", 0.01, 47000, {"triggerPrice": 48000})
    assert sl["info"]["type"] == "STOP_LOSS_LIMIT"
    tp = s.new_order("BTCUSDT", "SELL", "TAKE_PROFIT_LIMIT", quantity="0.01", price="52000",
                     stopPrice="52000", timeInForce="GTC")
    tpb = s.new_order("BTCUSDT", "BUY", "TAKE_PROFIT", quantity="0.001", stopPrice="45000")
    assert Decimal(px.balances()["USDT"]["locked"]) > 0  # a buy stop locks its quote
    px.set_price("BTC/USDT", 52000)  # take profit triggers: a limit at 52000 rests ... and fills
    px.set_price("BTC/USDT", 52001)
    assert s.get_order("BTCUSDT", orderId=tp["orderId"])["status"] == "FILLED"
    px.set_price("BTC/USDT", 47500)  # stop triggers, its limit 47000 is below: sells at the book
    assert c.fetch_order(sl["id"], "BTC/USDT")["status"] == "closed"
    px.set_price("BTC/USDT", 44000)
    assert s.get_order("BTCUSDT", orderId=tpb["orderId"])["status"] == "FILLED"
    assert Decimal(px.balances()["USDT"]["locked"]) == 0


# --- 6. rate limits ------------------------------------------------------------------------------
def _early_in_window(size_s: float, room_s: float) -> bool:
    return time.time() % size_s < size_s - room_s


def test_rate_limit_headers_429_and_418(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600, rate_limit_multiplier=0.01, rate_limit_ban_s=5)  # 60 weight/min
    s = spot(px, show_header=True)
    info = s.exchange_info()
    limits = {(r["rateLimitType"], r["interval"]): r["limit"] for r in info["data"]["rateLimits"]}
    assert limits == {("REQUEST_WEIGHT", "MINUTE"): 60, ("ORDERS", "SECOND"): 1, ("ORDERS", "DAY"): 2000}
    wait_until(lambda: _early_in_window(60, 20), timeout=25)
    px.reset_rate_limits()
    first = s.time()
    assert first["header"]["X-MBX-USED-WEIGHT-1M"] == "1"
    assert first["header"]["X-MBX-ORDER-COUNT-10S"] == "0" and first["header"]["X-MBX-ORDER-COUNT-1D"] == "0"
    assert s.account()["header"]["X-MBX-USED-WEIGHT-1M"] == "21"  # account weighs 20
    used = 21
    while used + 20 <= 60:
        used = int(s.exchange_info()["header"]["X-MBX-USED-WEIGHT-1M"])
    e = error_of(s.exchange_info)
    assert (e.status_code, e.error_code) == (429, -1003)
    assert 1 <= int(e.header["Retry-After"]) <= 60
    # ccxt reads it as a rate-limit error
    c = px.client()
    with pytest.raises((ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        c.fetch_time()
    for _ in range(20):  # keeps hammering after the 429s: banned
        try:
            s.time()
        except ClientError as err:
            e = err
            if err.status_code == 418:
                break
    assert e.status_code == 418 and "IP banned until" in e.error_message
    assert int(e.header["Retry-After"]) <= 5
    # the exchange's own accounting: what the limits were asked to bear, and what was refused
    acc = px.rate_limits()
    assert acc["peak"]["weight_1m"] > 60 and acc["peak"]["orders_10s"] == 0
    assert acc["refused"]["429"] >= 2 and acc["refused"]["418"] == 1
    px.reset_rate_limits()
    assert s.time()["header"]["X-MBX-USED-WEIGHT-1M"] == "1"
    acc = px.rate_limits()
    assert acc["peak"] == {"weight_1m": 1, "orders_10s": 0} and acc["refused"] == {"429": 0, "418": 0}


def test_order_count_limit_is_minus_1015(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600, rate_limit_multiplier=0.01)  # 1 order per 10 s
    s = spot(px, show_header=True)
    wait_until(lambda: _early_in_window(10, 4), timeout=15)
    px.reset_rate_limits()
    r = s.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001")
    assert r["header"]["X-MBX-ORDER-COUNT-10S"] == "1" and r["header"]["X-MBX-ORDER-COUNT-1D"] == "1"
    e = error_of(s.new_order, "BTCUSDT", "BUY", "MARKET", quantity="0.001")
    assert (e.status_code, e.error_code) == (429, -1015)
    assert e.error_message == "Too many new orders; current limit is 1 orders per 10 SECOND."
    assert 1 <= int(e.header["Retry-After"]) <= 10
    assert len(px.ledger()["orders"]) == 1
    acc = px.rate_limits()
    assert acc["peak"]["orders_10s"] == 1 and acc["refused"] == {"429": 1, "418": 0}


# --- 7. the rest ----------------------------------------------------------------------------------
def test_cancel_all_order_refs_and_quote_orders(fresh) -> None:
    px, c, s = fresh()
    e = error_of(s.cancel_open_orders, "BTCUSDT")
    assert (e.error_code, e.error_message) == (-2011, "Unknown order sent.")
    a = s.new_order("BTCUSDT", "BUY", "LIMIT", quantity="0.001", price="40000", timeInForce="GTC",
                    newClientOrderId="tg-x-1")
    assert error_of(s.get_order, "BTCUSDT", orderId=a["orderId"], origClientOrderId="tg-x-2").error_code == -2013
    assert error_of(s.cancel_order, "BTCUSDT", orderId=a["orderId"], origClientOrderId="tg-x-2").error_code == -2011
    assert s.get_order("BTCUSDT", orderId=a["orderId"], origClientOrderId="tg-x-1")["status"] == "NEW"
    assert [o["origClientOrderId"] for o in s.cancel_open_orders("BTCUSDT")] == ["tg-x-1"]
    q = s.new_order("BTCUSDT", "BUY", "MARKET", quoteOrderQty="100")
    assert q["origQuoteOrderQty"] == "100.00000000" and Decimal(q["cummulativeQuoteQty"]) <= 100
    assert s.get_order("BTCUSDT", orderId=q["orderId"])["origQuoteOrderQty"] == "100.00000000"


def test_public_trades_agg_trades_and_long_kline_history(fresh) -> None:
    px, c, s = fresh()
    c.create_order("BTC/USDT", "market", "buy", 0.002)
    trades = c.fetch_trades("BTC/USDT")
    assert trades and trades[-1]["price"] == 50000 and trades[-1]["amount"] == 0.002
    raw = s.trades("BTCUSDT", limit=5)
    assert raw[-1]["isBuyerMaker"] is False and raw[-1]["qty"] == "0.00200000"
    agg = s.agg_trades("BTCUSDT")
    assert agg[-1]["p"] == "50000.00000000" and agg[-1]["a"] == raw[-1]["id"]
    for tf in ("1m", "1h", "1d"):
        bars = c.fetch_ohlcv("BTC/USDT", tf, limit=1000)
        assert len(bars) == 1000
    assert len(s.klines("BTCUSDT", "4h", limit=1000)) == 1000


@pytest.mark.parametrize("params, code", [
    ({"type": "OCO"}, -1116),
    ({"type": "STOP_LOSS", "quantity": "0.001"}, -1102),
    ({"type": "MARKET", "quantity": "1e9"}, -1100),
    ({"type": "MARKET", "quantity": "-1"}, -1100),
    ({"type": "MARKET", "quantity": "99999999999999999999"}, -1013),
    ({"type": "LIMIT", "quantity": "0.001", "price": "40000", "timeInForce": "GTC", "stopPrice": "1"}, -1106),
    ({"type": "LIMIT", "quantity": "0.001", "price": "40000", "timeInForce": "DAY"}, -1115),
    ({"type": "STOP_LOSS_LIMIT", "quantity": "0.001", "price": "1", "stopPrice": "0.001",
      "timeInForce": "GTC"}, -1013),
])
def test_bad_order_input_gets_binance_codes_never_500(paper_exchange, params, code) -> None:
    s = spot(paper_exchange)
    args = dict(params)
    otype = args.pop("type")
    e = error_of(s.new_order, "BTCUSDT", "SELL", otype, **args)
    assert e.status_code == 400 and e.error_code == code
