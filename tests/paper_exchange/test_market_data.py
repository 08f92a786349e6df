"""Public endpoints, read through the real ccxt binance client."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest


def _get(px, path: str):
    with urllib.request.urlopen(px.url + path, timeout=5) as r:
        return r.status, json.loads(r.read())


def test_markets_carry_binance_filters(client) -> None:
    m = client.market("BTC/USDT")
    assert m["spot"] and m["id"] == "BTCUSDT" and m["quote"] == "USDT"
    assert m["precision"]["amount"] == 0.00001 and m["precision"]["price"] == 0.01
    assert m["limits"]["cost"]["min"] == 5.0 and m["limits"]["amount"]["min"] == 0.00001
    assert m["limits"]["market"]["max"] == 100.0
    assert {"BTC/USDT", "ETH/USDT"} <= set(client.markets)


def test_ticker_price_and_set_price(px, client) -> None:
    px.set_price("BTC/USDT", 61234.5)
    t = client.fetch_ticker("BTC/USDT")
    assert t["last"] == 61234.5
    assert t["bid"] < t["last"] < t["ask"]
    assert client.fetch_tickers(["BTC/USDT", "ETH/USDT"]).keys() == {"BTC/USDT", "ETH/USDT"}
    status, body = _get(px, "/api/v3/ticker/price?symbol=BTCUSDT")
    assert status == 200 and body == {"symbol": "BTCUSDT", "price": "61234.50000000"}


def test_ohlcv_history_is_available_at_once(px, client) -> None:
    rows = client.fetch_ohlcv("ETH/USDT", "1m", limit=100)
    assert len(rows) == 100
    times = [r[0] for r in rows]
    assert times == sorted(times) and all(b - a == 60_000 for a, b in zip(times, times[1:]))
    assert all(r[3] <= min(r[1], r[4]) and r[2] >= max(r[1], r[4]) for r in rows)
    hourly = client.fetch_ohlcv("ETH/USDT", "1h", limit=3)
    assert len(hourly) == 3 and all(r[0] % 3_600_000 == 0 for r in hourly)
    since = times[10]
    assert client.fetch_ohlcv("ETH/USDT", "1m", since=since, limit=5)[0][0] == since


def test_time_ping_order_book(px, client) -> None:
    assert abs(client.fetch_time() - time.time() * 1000) < 5000
    assert _get(px, "/api/v3/ping") == (200, {})
    book = client.fetch_order_book("BTC/USDT", limit=5)
    assert book["bids"][0][0] < book["asks"][0][0]


def test_unknown_interval_and_symbol_are_binance_errors(client) -> None:
    import ccxt

    with pytest.raises(ccxt.BadRequest):
        client.publicGetKlines({"symbol": "BTCUSDT", "interval": "7m"})
    with pytest.raises(ccxt.BadSymbol):
        client.publicGetTicker24hr({"symbol": "PEPEUSDT"})  # not listed here
