"""Signed endpoints check the API key, the HMAC signature and the timestamp like Binance."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import ccxt
import pytest

from resilience.classify import ErrorClass, classify


def _raw(px, method: str, path: str, params: dict, *, key: str | None = None, secret: str | None = None,
         signature: str | None = None) -> tuple[int, bytes]:
    query = urllib.parse.urlencode(params)
    sig = signature or hmac.new((secret or px.secret).encode(), query.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{px.url}{path}?{query}&signature={sig}", method=method,
                                 headers={"X-MBX-APIKEY": key if key is not None else px.api_key})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_wrong_key_and_wrong_secret_are_authentication_errors(px) -> None:
    wrong_key = px.client()
    wrong_key.apiKey = "not-the-key"
    with pytest.raises(ccxt.AuthenticationError, match="-2015") as ei:
        wrong_key.fetch_balance()
    assert classify(ei.value, state_changing=False) is ErrorClass.NOT_RETRYABLE
    wrong_secret = px.client()
    wrong_secret.secret = "0" * 64
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        wrong_secret.create_order("BTC/USDT", "market", "buy", 0.001)
    assert px.ledger()["orders"] == []


def test_signature_covers_every_parameter(px) -> None:
    ts = int(time.time() * 1000)
    good = {"symbol": "BTCUSDT", "timestamp": ts}
    assert _raw(px, "GET", "/api/v3/openOrders", good)[0] == 200
    sig = hmac.new(px.secret.encode(), urllib.parse.urlencode(good).encode(), hashlib.sha256).hexdigest()
    status, body = _raw(px, "GET", "/api/v3/openOrders", {**good, "symbol": "ETHUSDT"}, signature=sig)
    assert (status, json.loads(body)["code"]) == (400, -1022)
    assert _raw(px, "GET", "/api/v3/account", good, key="")[0] == 401  # missing key: -2014


@pytest.mark.parametrize("offset_ms, window, code", [(-70_000, None, b"-1021"), (5_000, None, b"-1021"),
                                                       (0, 70_000, b"-1131")])
def test_timestamp_must_be_within_recv_window(px, offset_ms, window, code) -> None:
    params = {"timestamp": int(time.time() * 1000) + offset_ms}
    if window:
        params["recvWindow"] = window
    status, body = _raw(px, "GET", "/api/v3/account", params)
    assert status == 400 and code in body


def test_stale_timestamp_maps_to_invalid_nonce(px) -> None:
    client = px.client()
    client.options["timeDifference"] = 120_000  # the client's clock is two minutes behind
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()
