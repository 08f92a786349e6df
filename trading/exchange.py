"""The exchange client: a real ccxt client for the paper exchange or any ccxt exchange, plus the few
exchange-specific details the order lifecycle needs (client order ids, lookups by them).

``build_exchange(cfg)`` with ``[exchange] id = "paper"`` gives ``ccxt.binance`` pointed at the local
paper exchange (spot only, no currency/margin/sapi calls, no time sync), using Binance's spot error
table so that every error maps to the same ccxt class as on the real Binance.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

import ccxt

from blackbox.redact import register_secret
from resilience.classify import UnreadableResponse
from tradeguard.config import Config
from tradeguard.exceptions import ConfigError, SecretError
from tradeguard.secrets import load_secret

log = logging.getLogger(__name__)

# How each exchange names and looks up client order ids (freqtrade-style capability table).
CAPABILITIES: dict[str, dict[str, Any]] = {
    "binance": {"client_order_id_param": "newClientOrderId",
                "fetch_order_by_client_id": "origClientOrderId",
                "max_client_order_id_len": 36,
                "recv_window": True,  # a signed request executes only within recvWindow
                "rate_headers": True,  # X-MBX-USED-WEIGHT-1M / X-MBX-ORDER-COUNT-10S
                # resting stop-loss sells ccxt places with ``stopLossPrice``: on a limit order
                # STOP_LOSS_LIMIT, on a market order STOP_LOSS
                "stop_loss": ("limit", "market")},
    "default": {"client_order_id_param": "clientOrderId",
                "fetch_order_by_client_id": None,  # scan open and closed orders instead
                "max_client_order_id_len": 32,
                "recv_window": False,
                "rate_headers": False,
                "stop_loss": ()},  # unknown venue: no stop orders tradeguard relies on
}
CAPABILITIES["paper"] = CAPABILITIES["binance"]
_CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]+$")


class PaperBinance(ccxt.binance):
    """``ccxt.binance`` for the paper exchange: Binance's spot error table applies to its URL too
    (ccxt picks the table by host name, which a local URL does not match)."""

    paper_base_url = ""

    def get_exceptions_by_url(self, url: str | None, exactOrBroad: str) -> dict:  # noqa: N803 - ccxt API
        if url and self.paper_base_url and url.startswith(self.paper_base_url + "/"):
            return self.safe_dict(self.safe_dict(self.exceptions, "spot", {}), exactOrBroad, {})
        return super().get_exceptions_by_url(url, exactOrBroad)


def check_exchange_id(ex_id: str) -> None:
    """ConfigError unless ``ex_id`` is 'paper' or a ccxt exchange id."""
    if ex_id != "paper" and ex_id not in ccxt.exchanges:
        raise ConfigError(f"[exchange] id = {ex_id!r}: not a ccxt exchange id "
                          "(e.g. 'binance', 'kraken', 'okx') and not 'paper'")


def capabilities(exchange_id: str) -> dict[str, Any]:
    return CAPABILITIES.get(exchange_id, CAPABILITIES["default"])


def _paper_client(cfg: Config, role: str, environ: Mapping[str, str]) -> ccxt.Exchange:
    from trading.paper_credentials import load_or_create

    api_key, secret = load_or_create(cfg.runtime, environ)
    host = cfg.paper.host
    if host in ("0.0.0.0", "::", ""):  # bound to every interface: reach it over loopback
        host = "127.0.0.1"
    base = f"http://{'[' + host + ']' if ':' in host else host}:{cfg.paper.port}"
    ex = PaperBinance({
        "apiKey": api_key, "secret": secret,
        "enableRateLimit": False, "timeout": cfg.exchange.timeout_ms,
        "headers": {"User-Agent": f"tradeguard-{role}"},
        "options": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False, "fetchMargins": False,
                    "adjustForTimeDifference": False,
                    "recvWindow": cfg.exchange.recv_window_ms},
    })
    ex.paper_base_url = base
    # Every API family points at the paper exchange: a call it does not serve gets a 404 from
    # it instead of leaving the host.
    ex.urls["api"] = {name: base + urlsplit(url).path for name, url in ex.urls["api"].items()}
    return ex


def _real_client(cfg: Config, role: str, environ: Mapping[str, str]) -> ccxt.Exchange:
    ex_id = cfg.exchange.id
    check_exchange_id(ex_id)
    keys = cfg.runtime.keys_dir
    creds = {name: load_secret(f"exchange.{name}", file=keys / f"exchange.{name}",
                               env=f"TRADEGUARD_EXCHANGE_{name.upper()}", environ=environ)
             for name in ("api_key", "api_secret", "password")}
    if not creds["api_key"] or not creds["api_secret"]:
        raise SecretError(f"no API key for exchange {ex_id!r}: put it in systemd credentials "
                          f"exchange.api_key / exchange.api_secret, 0600 files in {keys}, or "
                          "TRADEGUARD_EXCHANGE_API_KEY / TRADEGUARD_EXCHANGE_API_SECRET")
    for value in creds.values():
        register_secret(value)
    params: dict[str, Any] = {"apiKey": creds["api_key"], "secret": creds["api_secret"],
                              "enableRateLimit": True, "timeout": cfg.exchange.timeout_ms,
                              "headers": {"User-Agent": f"tradeguard-{role}"}}
    if creds["password"]:
        params["password"] = creds["password"]
    if capabilities(ex_id)["recv_window"]:
        params["options"] = {"recvWindow": cfg.exchange.recv_window_ms}
    ex = getattr(ccxt, ex_id)(params)
    if cfg.exchange.sandbox:
        if not ex.urls.get("test"):
            raise ConfigError(f"[exchange] sandbox = true: {ex_id} has no sandbox in ccxt")
        ex.set_sandbox_mode(True)
    return ex


def build_exchange(cfg: Config, *, role: str = "bot", environ: Mapping[str, str] | None = None) -> ccxt.Exchange:
    """A configured ccxt client (markets not loaded yet); ``role`` names the caller in its User-Agent."""
    environ = os.environ if environ is None else environ
    if cfg.exchange.id == "paper":
        ex = _paper_client(cfg, role, environ)
    else:
        ex = _real_client(cfg, role, environ)
    log.info("exchange client for %s: %s (%s)", role, cfg.exchange.id, ex.urls["api"].get("public", ""))
    return ex


def create_order_params(exchange: ccxt.Exchange | str, client_order_id: str) -> dict[str, str]:
    """The ``params`` that carry ``client_order_id`` on ``create_order`` for this exchange (or its id)."""
    caps = capabilities(exchange if isinstance(exchange, str) else exchange.id)
    if not 1 <= len(client_order_id) <= caps["max_client_order_id_len"] or \
            not _CLIENT_ID_RE.fullmatch(client_order_id):
        raise ValueError(f"client order id {client_order_id!r} is not valid here "
                         f"(1-{caps['max_client_order_id_len']} of [.A-Z:/a-z0-9_-])")
    return {caps["client_order_id_param"]: client_order_id}


def checked_order(order: Any) -> dict[str, Any]:
    """``order`` if it describes an order (has an id); else UnreadableResponse (outcome unknown)."""
    if not isinstance(order, dict) or order.get("id") in (None, ""):
        raise UnreadableResponse(f"the exchange answered without an order id: {str(order)[:200]!r}")
    return order


def fetch_order_by_client_id(exchange: ccxt.Exchange, symbol: str, client_order_id: str) -> dict | None:
    """The order with this client order id, or None when the exchange says it does not exist."""
    param = capabilities(exchange.id)["fetch_order_by_client_id"]
    if param:
        try:
            return checked_order(exchange.fetch_order(None, symbol, {param: client_order_id}))
        except ccxt.OrderNotFound:
            return None
    orders = list(exchange.fetch_open_orders(symbol))
    if exchange.has.get("fetchClosedOrders"):
        orders += exchange.fetch_closed_orders(symbol)
    elif exchange.has.get("fetchOrders"):
        orders += exchange.fetch_orders(symbol)
    return next((checked_order(o) for o in orders if o.get("clientOrderId") == client_order_id), None)


def tradable_amount(exchange: ccxt.Exchange, symbol: str, amount: float, price: float | None = None) -> float:
    """``amount`` truncated to the market's step; 0.0 when below its minimum amount or cost (dust)."""
    market = exchange.market(symbol)
    # round away float noise first: 0.0016399999999999997 must not truncate to 0.00163
    amount = round(amount, 12)
    try:
        value = float(exchange.amount_to_precision(symbol, amount))
    except ccxt.InvalidOrder:  # below one step
        return 0.0
    limits = market.get("limits") or {}
    min_amount = (limits.get("amount") or {}).get("min")
    min_cost = (limits.get("cost") or {}).get("min")
    if value <= 0 or (min_amount and value < min_amount) or \
            (price is not None and min_cost and value * price < min_cost):
        return 0.0
    return value


def amount_step(exchange: ccxt.Exchange, symbol: str) -> float:
    """The market's lot step (0.0 when unknown)."""
    try:
        prec = exchange.markets[symbol]["precision"]["amount"]
        return float(prec) if prec is not None else 0.0
    except (KeyError, TypeError, ValueError):
        return 0.0
