"""trading.exchange: the ccxt client for the paper exchange and any ccxt exchange, and the helpers the
order lifecycle uses. Network calls go only to a local paper exchange."""
from __future__ import annotations

import ccxt
import pytest

from trading.exchange import (CAPABILITIES, PaperBinance, build_exchange, capabilities, checked_order,
                          create_order_params, fetch_order_by_client_id, tradable_amount)
from blackbox.redact import redact_text
from resilience.classify import ErrorClass, UnreadableResponse, classify
from tradeguard.config import load_config
from tests.helpers.fixtures_paper import start_paper_exchange
from tradeguard.exceptions import ConfigError, SecretError


@pytest.fixture(scope="module")
def px(tmp_path_factory):
    ex = start_paper_exchange(tmp_path_factory.mktemp("paper"), tick_s=3600)
    yield ex
    ex.stop()


def _cfg(tmp_path, **env):
    return load_config(None, data_dir=tmp_path / "data", logs_dir=tmp_path / "logs",
                       env={f"TRADEGUARD_{k.upper()}": str(v) for k, v in env.items()})


def test_paper_client_is_spot_only_and_local(tmp_path) -> None:
    cfg = _cfg(tmp_path, paper_port=9123, exchange_timeout_ms=1234)
    ex = build_exchange(cfg, environ={})
    assert isinstance(ex, PaperBinance) and ex.id == "binance"
    assert all(url.startswith("http://127.0.0.1:9123/") for url in ex.urls["api"].values())
    assert ex.urls["api"]["public"] == ex.urls["api"]["private"] == "http://127.0.0.1:9123/api/v3"
    assert ex.options["fetchMarkets"]["types"] == ["spot"] and ex.options["fetchCurrencies"] is False
    assert ex.options["adjustForTimeDifference"] is False and ex.options["defaultType"] == "spot"
    assert ex.timeout == 1234 and ex.enableRateLimit is False
    assert ex.headers["User-Agent"] == "tradeguard-bot"
    # the generated credentials are shared with the exchange through the data dir, and masked
    assert (tmp_path / "data" / "paper" / "credentials.json").exists()
    assert redact_text(f"key {ex.secret}") == "key ***"


def test_a_client_with_another_data_dir_uses_the_env(px, tmp_path) -> None:
    cfg = load_config(None, data_dir=tmp_path / "elsewhere", logs_dir=tmp_path / "logs", env=px.env)
    client = build_exchange(cfg, role="watchdog", environ=px.env)
    assert client.fetch_balance()["total"]["USDT"] > 0
    assert not (tmp_path / "elsewhere" / "paper").exists()


def test_spot_error_table_applies_to_the_local_url(px) -> None:
    client = px.client()
    client.load_markets()
    # -1004 is only in Binance's *spot* table (OperationFailed); elsewhere it is a plain ExchangeError
    px.add_fault(method="GET", path="/api/v3/account", action="respond", status=400,
                 body={"code": -1004, "msg": "Server is busy, please wait and try again"})
    with pytest.raises(ccxt.OperationFailed) as ei:
        client.fetch_balance()
    assert classify(ei.value, state_changing=False) is ErrorClass.RETRYABLE


def test_fetch_order_by_client_id(px) -> None:
    client = px.client()
    client.load_markets()
    params = create_order_params(client, "tg-x-1")
    assert params == {"newClientOrderId": "tg-x-1"} == create_order_params("binance", "tg-x-1")
    placed = client.create_order("BTC/USDT", "limit", "buy", 0.001, 30000, params)
    found = fetch_order_by_client_id(client, "BTC/USDT", "tg-x-1")
    assert found["id"] == placed["id"] and found["clientOrderId"] == "tg-x-1"
    assert fetch_order_by_client_id(client, "BTC/USDT", "tg-x-2") is None
    assert fetch_order_by_client_id(client, "ETH/USDT", "tg-x-1") is None  # other market


def test_fetch_order_by_client_id_scans_where_no_lookup_exists(px) -> None:
    client = px.client()
    client.load_markets()
    client.create_order("ETH/USDT", "limit", "buy", 0.01, 1000, {"newClientOrderId": "tg-s-1"})
    client.create_order("ETH/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-s-2"})
    client.id = "somewhere"  # an exchange without the binance capability: open + closed orders
    assert capabilities(client.id) is CAPABILITIES["default"]
    assert fetch_order_by_client_id(client, "ETH/USDT", "tg-s-1")["status"] == "open"
    assert fetch_order_by_client_id(client, "ETH/USDT", "tg-s-2")["status"] == "closed"
    assert fetch_order_by_client_id(client, "ETH/USDT", "tg-s-3") is None


def test_create_order_params_validate_the_id() -> None:
    assert create_order_params("kraken", "tg-a-1") == {"clientOrderId": "tg-a-1"}
    for bad in ("", "x" * 37, "has space", "é"):
        with pytest.raises(ValueError):
            create_order_params("binance", bad)
    with pytest.raises(ValueError):
        create_order_params("kraken", "x" * 33)


def test_checked_order_flags_unreadable_answers() -> None:
    assert checked_order({"id": "1"}) == {"id": "1"}
    for bad in ({"id": None}, {"id": ""}, "<html>", None):
        with pytest.raises(UnreadableResponse) as ei:
            checked_order(bad)
        assert classify(ei.value, state_changing=True) is ErrorClass.UNKNOWN_OUTCOME


def test_tradable_amount(px) -> None:
    client = px.client()
    client.load_markets()
    assert tradable_amount(client, "BTC/USDT", 0.0123456) == 0.01234
    assert tradable_amount(client, "BTC/USDT", 0.000001) == 0.0           # below one step
    assert tradable_amount(client, "BTC/USDT", 0.00005, price=60000) == 0.0  # below 5 USDT
    assert tradable_amount(client, "BTC/USDT", 0.0001, price=60000) == 0.0001


def test_real_exchanges_need_keys_and_a_known_id(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a ccxt exchange id"):
        build_exchange(_cfg(tmp_path, exchange_id="nosuchexchange"), environ={})
    with pytest.raises(SecretError, match="TRADEGUARD_EXCHANGE_API_KEY"):
        build_exchange(_cfg(tmp_path, exchange_id="binance"), environ={})
    env = {"TRADEGUARD_EXCHANGE_API_KEY": "abcdef123", "TRADEGUARD_EXCHANGE_API_SECRET": "s3cr3t-value",
           "TRADEGUARD_EXCHANGE_PASSWORD": "pass-phrase"}
    ex = build_exchange(_cfg(tmp_path, exchange_id="kucoin"), environ=env)
    assert isinstance(ex, ccxt.kucoin) and ex.password == "pass-phrase" and ex.apiKey == "abcdef123"
    ex = build_exchange(_cfg(tmp_path, exchange_id="binance", exchange_sandbox="true"), environ=env)
    assert ex.isSandboxModeEnabled and "testnet" in ex.urls["api"]["public"]
    assert "s3cr3t-value" not in redact_text("secret s3cr3t-value")
    keys = tmp_path / "data" / "keys"
    keys.mkdir(parents=True)
    for name, value in (("api_key", "file-key"), ("api_secret", "file-secret")):
        (keys / f"exchange.{name}").write_text(value)
        (keys / f"exchange.{name}").chmod(0o600)
    ex = build_exchange(_cfg(tmp_path, exchange_id="binance"), environ={})
    assert (ex.apiKey, ex.secret) == ("file-key", "file-secret")
    with pytest.raises(ConfigError, match="sandbox"):
        build_exchange(_cfg(tmp_path, exchange_id="kucoin", exchange_sandbox="true"), environ=env)
