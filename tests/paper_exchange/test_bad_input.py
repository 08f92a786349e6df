"""Bad requests get Binance-style JSON errors and never a traceback; the server keeps serving."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.parse

import pytest
from werkzeug.test import Client

from paper_exchange.server import build_app
from tradeguard.config import load_config


def _call(px, method: str, path: str, params: dict | list | None = None, *, body: bytes | None = None,
          sign: bool = True, headers: dict | None = None) -> tuple[int, dict]:
    query = urllib.parse.urlencode(params or {})
    if sign:
        query += ("&" if query else "") + f"timestamp={int(time.time() * 1000)}"
        payload = query + (body or b"").decode("latin-1")
        query += "&signature=" + hmac.new(px.secret.encode(), payload.encode("latin-1"),
                                          hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=5)
    try:
        conn.request(method, f"{path}?{query}" if query else path, body=body,
                     headers={"X-MBX-APIKEY": px.api_key, **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    assert b"Traceback" not in raw
    return r.status, json.loads(raw)


ORDER = "/api/v3/order"


@pytest.mark.parametrize("params, code", [
    ({"side": "BUY", "type": "MARKET", "quantity": "1"}, -1102),                       # no symbol
    ({"symbol": "NOPEUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"}, -1121),
    ({"symbol": "BTCUSDT", "side": "UP", "type": "MARKET", "quantity": "1"}, -1117),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "STOP", "quantity": "1"}, -1116),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "-0.01"}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "abc"}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1e3"}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0"}, -1013),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET"}, -1102),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001", "price": "1"}, -1106),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "60000"}, -1102),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "60000",
      "timeInForce": "GTD"}, -1115),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001",
      "newClientOrderId": "bad id!"}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001",
      "newClientOrderId": "x" * 37}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001",
      "newOrderRespType": "ALL"}, -1130),
])
def test_bad_order_parameters(px, params, code) -> None:
    status, body = _call(px, "POST", ORDER, params)
    assert status == 400 and body["code"] == code and body["msg"]


def test_an_order_without_client_id_gets_one(px) -> None:
    params = {"symbol": "ETHUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    first, second = (_call(px, "POST", ORDER, params)[1] for _ in range(2))
    assert first["clientOrderId"].startswith("paper-") and first["clientOrderId"] != second["clientOrderId"]


def test_bad_lookups_and_paging(px) -> None:
    assert _call(px, "GET", ORDER, {"symbol": "BTCUSDT"})[1]["code"] == -1102
    assert _call(px, "GET", ORDER, {"symbol": "BTCUSDT", "orderId": "x1"})[1]["code"] == -1100
    assert _call(px, "GET", ORDER, {"symbol": "BTCUSDT", "orderId": "42"})[1]["code"] == -2013
    assert _call(px, "DELETE", ORDER, {"symbol": "BTCUSDT", "orderId": "42"})[1]["code"] == -2011
    assert _call(px, "GET", "/api/v3/allOrders", {"symbol": "BTCUSDT", "limit": "0"})[1]["code"] == -1130
    assert _call(px, "GET", "/api/v3/myTrades", {})[1]["code"] == -1102
    assert _call(px, "GET", "/api/v3/klines", {"symbol": "BTCUSDT"}, sign=False)[1]["code"] == -1102
    assert _call(px, "GET", "/api/v3/ticker/price", {"symbols": "[1]"}, sign=False)[1]["code"] == -1100
    status, body = _call(px, "GET", "/api/v3/account", {"timestamp": "1"}, sign=False)
    assert status == 400 and body["code"] == -1102  # no signature
    status, body = _call(px, "GET", "/api/v3/ticker/price", [("symbol", "BTCUSDT"), ("symbol", "ETHUSDT")],
                         sign=False)
    assert status == 400 and body["code"] == -1101  # a parameter sent twice


def test_unknown_paths_methods_and_huge_bodies(px) -> None:
    assert _call(px, "GET", "/api/v3/nothing", sign=False) == \
        (404, {"code": -1, "msg": "Unknown endpoint: GET /api/v3/nothing"})
    assert _call(px, "PUT", ORDER, sign=False)[0] == 405
    assert _call(px, "GET", "/_paper/nothing", sign=False)[0] == 404
    status, body = _call(px, "POST", ORDER, body=b"a=" + b"x" * 70_000,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 413 and body["code"] == -1101
    status, body = _call(px, "POST", ORDER, body=b"\xff\xfe=1", sign=False)
    assert status == 400 and body["code"] == -1100
    assert _call(px, "POST", "/_paper/price", body=b"{not json", sign=False)[1]["code"] == -1130
    assert _call(px, "POST", "/_paper/price", body=b'{"symbol": "BTC/USDT", "price": "x"}',
                 sign=False)[1]["code"] == -1130
    assert _call(px, "POST", "/_paper/price", body=b'{"symbol": "BTC/USDT", "price": -5}',
                 sign=False)[1]["code"] == -1130
    assert _call(px, "POST", "/_paper/deposit", body=b'{"asset": "BTC", "amount": "-1"}',
                 sign=False)[1]["code"] == -2010
    assert _call(px, "GET", "/api/v3/ping", sign=False) == (200, {})  # still serving
    assert "Traceback" not in px.output()


def test_control_api_refuses_remote_clients(tmp_path) -> None:
    cfg = load_config(None, data_dir=tmp_path / "d", logs_dir=tmp_path / "l", env={})
    app = build_app(cfg)
    try:
        remote = Client(app).get("/_paper/ledger", environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert remote.status_code == 403 and remote.get_json()["code"] == -1002
        local = Client(app).get("/_paper/ledger", environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert local.status_code == 200 and local.get_json() == {"orders": [], "fills": []}
    finally:
        app.engine.store.close()


def test_unexpected_errors_answer_minus_1000(tmp_path, monkeypatch) -> None:
    cfg = load_config(None, data_dir=tmp_path / "d", logs_dir=tmp_path / "l", env={})
    app = build_app(cfg)
    try:
        monkeypatch.setattr(app.engine, "prices", lambda: 1 / 0)
        r = Client(app).get("/api/v3/ticker/price")
        assert r.status_code == 500 and r.get_json()["code"] == -1000
        assert Client(app).get("/api/v3/ping").status_code == 200
    finally:
        app.engine.store.close()
