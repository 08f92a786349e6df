"""Each fault action produces the ccxt exception and the classification the bot relies on."""
from __future__ import annotations

import threading
import time

import ccxt
import pytest

from trading.exchange import checked_order
from paper_exchange.control import ControlError
from resilience.classify import ErrorClass, UnreadableResponse, classify
from tests.helpers.proc import wait_until

ORDER = {"method": "POST", "path": "/api/v3/order"}


@pytest.fixture
def fast_client(px):
    px.clear_faults()
    c = px.client()
    c.timeout = 600
    c.load_markets()
    return c


def _buy(client, cid: str):
    return checked_order(client.create_order("BTC/USDT", "market", "buy", 0.001, None,
                                             {"newClientOrderId": cid}))


@pytest.mark.parametrize("spec, exc", [
    ({"action": "respond", "status": 503, "body": "Service Unavailable"}, ccxt.ExchangeNotAvailable),
    ({"action": "respond", "status": 502}, ccxt.ExchangeNotAvailable),
    ({"action": "respond", "status": 429, "body": {"code": -1003, "msg": "Too many requests."}},
     ccxt.DDoSProtection),
    ({"action": "respond", "status": 400, "body": {"code": -1015, "msg": "Too many new orders."}},
     ccxt.RateLimitExceeded),
    ({"action": "respond", "status": 500, "body": {"code": -1000, "msg": "An unknown error occurred."}},
     ccxt.OperationFailed),
    ({"action": "respond", "status": 200, "body": "<html>maintenance</html>"}, UnreadableResponse),
    ({"action": "respond", "status": 200, "body": {}}, UnreadableResponse),
    ({"action": "delay", "seconds": 2}, ccxt.RequestTimeout),
    ({"action": "hang"}, ccxt.RequestTimeout),
    ({"action": "reset"}, ccxt.NetworkError),
])
def test_fault_before_apply(px, fast_client, spec, exc) -> None:
    fid = px.add_fault(**ORDER, **spec)
    assert [f["id"] for f in px.faults()] == [fid]
    with pytest.raises(exc) as ei:
        _buy(fast_client, f"tg-f-{fid}")
    assert classify(ei.value, state_changing=True) is ErrorClass.UNKNOWN_OUTCOME
    assert classify(ei.value, state_changing=False) is ErrorClass.RETRYABLE
    assert f"tg-f-{fid}" not in {o["clientOrderId"] for o in px.ledger()["orders"]}
    assert px.faults() == []  # fired its one time
    assert _buy(fast_client, f"tg-f-{fid}")["status"] == "closed"  # the next one goes through


@pytest.mark.parametrize("then", [{"status": 503}, {"then": "reset"}, {"then": "hang"}])
def test_apply_then_fail_leaves_the_order_on_the_exchange(px, fast_client, then) -> None:
    fid = px.add_fault(**ORDER, action="apply_then_fail", **then)
    cid = f"tg-atf-{fid}"
    with pytest.raises(ccxt.NetworkError) as ei:
        _buy(fast_client, cid)
    assert classify(ei.value, state_changing=True) is ErrorClass.UNKNOWN_OUTCOME
    orders = [o for o in px.ledger()["orders"] if o["clientOrderId"] == cid]
    assert len(orders) == 1 and orders[0]["status"] == "FILLED"
    # as on Binance, the id is unique only among OPEN orders: resubmitting it after the fill is
    # accepted and executes a second time -- the id alone does not protect the intent
    assert _buy(fast_client, cid)["status"] == "closed"
    orders = [o for o in px.ledger()["orders"] if o["clientOrderId"] == cid]
    assert [o["status"] for o in orders] == ["FILLED", "FILLED"]


def test_faults_match_method_path_and_count(px, fast_client) -> None:
    px.add_fault(method="GET", path="/api/v3/account", action="respond", status=503, times=2)
    px.add_fault(method="*", path="/api/v3/ticker/*", action="respond", status=503, times=None)
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            fast_client.fetch_balance()
    assert fast_client.fetch_balance()["free"]["USDT"] > 0
    for _ in range(3):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            fast_client.fetch_ticker("BTC/USDT")
    assert [f["hits"] for f in px.faults()] == [3]
    assert px.clear_faults() == 1
    assert fast_client.fetch_ticker("BTC/USDT")["last"] > 0


def test_a_fault_with_params_matches_only_requests_carrying_them(px, fast_client) -> None:
    """A venue that refuses market sells and takes everything else on the same path."""
    px.add_fault(**ORDER, params={"type": "MARKET", "side": "SELL"}, action="respond", status=400,
                 body={"code": -2010, "msg": "Account has insufficient balance for requested action."},
                 times=None)
    assert _buy(fast_client, "tg-f-p1")["status"] == "closed"  # a market buy goes through
    last = fast_client.fetch_ticker("BTC/USDT")["last"]
    price = float(fast_client.price_to_precision("BTC/USDT", last * 1.2))
    limit = checked_order(fast_client.create_order("BTC/USDT", "limit", "sell", 0.001, price,
                                                   {"newClientOrderId": "tg-f-p2"}))
    assert limit["status"] == "open"  # a limit sell too (its form body was read for the match)
    for _ in range(2):
        with pytest.raises(ccxt.InsufficientFunds):
            fast_client.create_order("BTC/USDT", "market", "sell", 0.001, None,
                                     {"newClientOrderId": "tg-f-p3"})
    assert [f["hits"] for f in px.faults()] == [2]
    assert "tg-f-p3" not in {o["clientOrderId"] for o in px.ledger()["orders"]}
    fast_client.cancel_order(limit["id"], "BTC/USDT")
    px.clear_faults()
    assert checked_order(fast_client.create_order("BTC/USDT", "market", "sell", 0.001, None,
                                                  {"newClientOrderId": "tg-f-p3"}))["status"] == "closed"


def test_probability_is_seeded_and_repeatable(px, fast_client) -> None:
    def pattern() -> list[bool]:
        px.clear_faults()
        px.add_fault(method="GET", path="/api/v3/time", action="respond", status=503,
                     probability=0.5, times=None)
        out = []
        for _ in range(20):
            try:
                fast_client.fetch_time()
                out.append(True)
            except ccxt.ExchangeNotAvailable:
                out.append(False)
        return out

    px.restart()
    first = pattern()
    assert 2 < first.count(False) < 18
    px.restart()  # same seed, same fault id: the same draws
    assert pattern() == first
    px.clear_faults()


def test_bad_fault_specs_are_refused(px) -> None:
    px.clear_faults()
    for spec in ({"action": "explode"}, {"action": "delay"}, {"action": "respond", "status": 99},
                 {"action": "hang", "seconds": 600}, {"action": "reset", "probability": 0},
                 {"action": "reset", "path": "/_paper/ledger"}, {"action": "reset", "color": "red"},
                 {"action": "reset", "params": ["type"]}, {"action": "reset", "params": {"quantity": 1}}):
        with pytest.raises(ControlError) as ei:
            px.add_fault(**spec)
        assert ei.value.status == 400 and ei.value.body["code"] == -1130
    assert px.faults() == []


def test_a_hang_is_released_when_the_server_stops(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600)
    px.add_fault(method="*", path="*", action="hang", times=None)
    client = px.client()
    client.timeout = 30_000
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, client.fetch_time))
    t.start()
    wait_until(lambda: px.faults()[0]["hits"] == 1, message="the request to hang")
    t0 = time.monotonic()
    assert px.stop() == 0
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert errors and isinstance(errors[0], ccxt.NetworkError)


def _catch(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        errors.append(e)
