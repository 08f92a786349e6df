"""Handlers of the Binance spot REST subset the ccxt ``binance`` client uses.

Each handler takes the :class:`~paper_exchange.engine.Engine` and the request parameters (already
authenticated for signed endpoints) and returns the JSON value Binance would return, or raises a
:class:`~tradeguard.exceptions.PaperApiError` with the Binance code.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

from paper_exchange import apierrors
from paper_exchange.engine import Engine, OrderRequest, now_ms
from paper_exchange.ledger_types import Order
from paper_exchange.markets import MARKETS, ORDER_TYPES, STOP_TYPES, Market, fmt, market_for, parse_number, q8

log = logging.getLogger("paper_exchange")
Params = Mapping[str, str]


class RequestParams(dict):
    """The request's parameters, plus what the server learned about the request itself."""

    deadline_ms: float | None = None  # timestamp + recvWindow of a signed request
    hidden_ms: int = 0                # the ``invisible`` fault: hide the order it creates this long
    rate_limits: list = []            # exchangeInfo's rateLimits (set by the app)
_CLIENT_ID_RE = re.compile(apierrors.CLIENT_ID_PATTERN)
_INT_PATTERN = "^[0-9]{1,19}$"


@dataclass(frozen=True)
class Route:
    handler: Callable[[Engine, Params], Any]
    signed: bool


def _int(p: Params, name: str, *, default: int | None = None, lo: int | None = None,
         hi: int | None = None) -> int | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 19:
        raise apierrors.illegal(name, _INT_PATTERN)
    v = int(raw)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise apierrors.invalid_value(name)
    return v


def _limit(p: Params, default: int = 500, hi: int = 1000) -> int:
    return _int(p, "limit", default=default, lo=1, hi=hi)


def _symbols(p: Params) -> list[Market]:
    """Markets named by ``symbol`` or ``symbols`` (a JSON array), or all."""
    if p.get("symbol"):
        return [market_for(p["symbol"])]
    if p.get("symbols"):
        try:
            names = json.loads(p["symbols"])
        except ValueError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise apierrors.illegal("symbols", '["BTCUSDT","ETHUSDT"]')
        return [market_for(n) for n in names]
    return list(MARKETS.values())


def _one_or_list(p: Params, view: Callable[[Market], dict]) -> Any:
    markets = _symbols(p)
    return view(markets[0]) if p.get("symbol") else [view(m) for m in markets]


def _window(rows: list, key: Callable[[Any], int], p: Params, from_key: str) -> list:
    """Binance paging: from an id, or within startTime/endTime (oldest first), else the newest."""
    limit = _limit(p)
    start, end, from_id = _int(p, "startTime"), _int(p, "endTime"), _int(p, from_key)
    if from_id is not None:
        return [r for r in rows if r[0] >= from_id][:limit]
    if start is not None or end is not None:
        return [r for r in rows if (start is None or key(r) >= start) and (end is None or key(r) <= end)][:limit]
    return rows[-limit:]


# --- public ---------------------------------------------------------------------------------
def ping(engine: Engine, p: Params) -> Any:
    return {}


def server_time(engine: Engine, p: Params) -> Any:
    return {"serverTime": now_ms()}


def exchange_info(engine: Engine, p: Params) -> Any:
    return {
        "timezone": "UTC", "serverTime": now_ms(),
        "rateLimits": getattr(p, "rate_limits", []),
        "exchangeFilters": [],
        "symbols": [m.exchange_info() for m in _symbols(p)],
    }


def ticker_24hr(engine: Engine, p: Params) -> Any:
    return _one_or_list(p, engine.ticker)


def ticker_price(engine: Engine, p: Params) -> Any:
    prices = engine.prices()
    return _one_or_list(p, lambda m: {"symbol": m.id, "price": fmt(prices[m.id])})


def book_ticker(engine: Engine, p: Params) -> Any:
    def view(m: Market) -> dict:
        t = engine.ticker(m)
        return {k: t[k] for k in ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")}
    return _one_or_list(p, view)


def depth(engine: Engine, p: Params) -> Any:
    """The synthetic book (levels of varying size, less what fills took in this price step)."""
    m = market_for(p.get("symbol"))
    book = engine.depth(m, _limit(p, default=100, hi=5000))
    return {"lastUpdateId": now_ms(),
            "bids": [[fmt(price), fmt(qty)] for price, qty in book["bids"]],
            "asks": [[fmt(price), fmt(qty)] for price, qty in book["asks"]]}


def trades(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    return [t.trade() for t in engine.public_trades(m)[-_limit(p):]]


def agg_trades(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    rows = [(t.id, t) for t in engine.public_trades(m)]
    return [t.agg() for _, t in _window(rows, lambda r: r[1].time, p, "fromId")]


def klines(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    interval = p.get("interval")
    if not interval:
        raise apierrors.mandatory("interval")
    return engine.klines(m, interval, _int(p, "startTime"), _int(p, "endTime"), _limit(p))


# --- signed ---------------------------------------------------------------------------------
def account(engine: Engine, p: Params) -> Any:
    t = now_ms()
    return {
        "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
        "commissionRates": {"maker": fmt(engine.settings.fee), "taker": fmt(engine.settings.fee),
                            "buyer": fmt(Decimal(0)), "seller": fmt(Decimal(0))},
        "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
        "requireSelfTradePrevention": False, "preventSor": False, "updateTime": t,
        "accountType": "SPOT", "permissions": ["SPOT"], "uid": 1,
        "balances": [{"asset": a, "free": fmt(f), "locked": fmt(lk)}
                     for a, (f, lk) in engine.balance_view().items()],
    }


def _order_request(engine: Engine, p: Params) -> OrderRequest:
    m = market_for(p.get("symbol"))
    side = p.get("side")
    if not side:
        raise apierrors.mandatory("side")
    if side not in ("BUY", "SELL"):
        raise apierrors.invalid_side()
    otype = p.get("type")
    if not otype:
        raise apierrors.mandatory("type")
    if otype not in ORDER_TYPES:
        raise apierrors.invalid_type()
    qty = parse_number("quantity", p["quantity"]) if p.get("quantity") else None
    quote_qty = parse_number("quoteOrderQty", p["quoteOrderQty"]) if p.get("quoteOrderQty") else None
    price = parse_number("price", p["price"]) if p.get("price") else None
    stop = parse_number("stopPrice", p["stopPrice"]) if p.get("stopPrice") else None
    tif = p.get("timeInForce", "")
    if otype == "MARKET":
        if qty is None and quote_qty is None:
            raise apierrors.one_of("quantity", "quoteOrderQty")
        if qty is not None and quote_qty is not None:
            raise apierrors.not_required("quoteOrderQty")
    else:
        needed = {"quantity": qty}
        if otype in ("LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
            needed = {"timeInForce": tif, **needed}
        if otype not in ("STOP_LOSS", "TAKE_PROFIT"):
            needed["price"] = price
        if otype in STOP_TYPES:
            needed["stopPrice"] = stop
        for name, value in needed.items():
            if not value:
                raise apierrors.mandatory(name)
        if tif and tif not in ("GTC", "IOC", "FOK"):
            raise apierrors.invalid_tif()
        if quote_qty is not None:
            raise apierrors.not_required("quoteOrderQty")
    allowed = {"MARKET": (), "LIMIT": ("price", "timeInForce"), "LIMIT_MAKER": ("price",),
               "STOP_LOSS": ("stopPrice",), "TAKE_PROFIT": ("stopPrice",)}.get(
        otype, ("price", "timeInForce", "stopPrice"))
    for name in ("price", "timeInForce", "stopPrice"):
        if p.get(name) and name not in allowed:
            raise apierrors.not_required(name)
    cid = p.get("newClientOrderId") or engine.new_client_order_id()
    if not _CLIENT_ID_RE.fullmatch(cid):
        raise apierrors.illegal("newClientOrderId", apierrors.CLIENT_ID_PATTERN)
    return OrderRequest(m, side, otype, qty, quote_qty, price, tif, cid, stop,
                        getattr(p, "deadline_ms", None), getattr(p, "hidden_ms", 0))


def new_order(engine: Engine, p: Params) -> Any:
    resp_type = p.get("newOrderRespType") or "FULL"
    if resp_type not in ("ACK", "RESULT", "FULL"):
        raise apierrors.invalid_value("newOrderRespType")
    order, fills = engine.place(_order_request(engine, p))
    log.info("order %d %s: %s %s %s %s -> %s", order.order_id, order.client_order_id, order.side,
             order.type, order.orig_qty, order.symbol, order.status)
    if resp_type == "ACK":
        return order.ack()
    out = order.result()
    if resp_type == "FULL":
        out["fills"] = [f.order_fill() for f in fills]
    return out


def _order_ref(p: Params) -> tuple[Market, int | None, str | None]:
    m = market_for(p.get("symbol"))
    order_id = _int(p, "orderId")
    cid = p.get("origClientOrderId") or None
    if order_id is None and cid is None:
        raise apierrors.one_of("orderId", "origClientOrderId")
    return m, order_id, cid


def get_order(engine: Engine, p: Params) -> Any:
    m, order_id, cid = _order_ref(p)
    o = engine.find(m.id, order_id, cid)
    if o is None:
        raise apierrors.no_such_order()
    return o.binance()


def _cancel_view(o: Order, cancel_id: str) -> dict[str, Any]:
    out = o.result()
    out.pop("workingTime", None)
    out.pop("origQuoteOrderQty", None)
    out.update(origClientOrderId=o.client_order_id, clientOrderId=cancel_id, transactTime=o.update_time)
    return out


def cancel_order(engine: Engine, p: Params) -> Any:
    m, order_id, cid = _order_ref(p)
    cancel_id = p.get("newClientOrderId") or engine.new_client_order_id()
    order = engine.cancel(m.id, order_id, cid, getattr(p, "deadline_ms", None))
    log.info("order %d %s canceled", order.order_id, order.client_order_id)
    return _cancel_view(order, cancel_id)


def cancel_open_orders(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    return [_cancel_view(o, engine.new_client_order_id())
            for o in engine.cancel_all(m.id, getattr(p, "deadline_ms", None))]


def open_orders(engine: Engine, p: Params) -> Any:
    m = market_for(p["symbol"]) if p.get("symbol") else None
    return [o.binance() for o in engine.open_orders(m.id if m else None)]


def all_orders(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    rows = [(o.order_id, o) for o in engine.all_orders(m.id)]
    return [o.binance() for _, o in _window(rows, lambda r: r[1].time, p, "orderId")]


def my_trades(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    order_id = _int(p, "orderId")
    rows = [(f.trade_id, f) for f in engine.trades(m.id) if order_id is None or f.order_id == order_id]
    return [f.trade() for _, f in _window(rows, lambda r: r[1].time, p, "fromId")]


def avg_price(engine: Engine, p: Params) -> Any:
    m = market_for(p.get("symbol"))
    return {"mins": 5, "price": fmt(q8(engine.prices()[m.id])), "closeTime": now_ms()}


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/api/v3/ping"): Route(ping, False),
    ("GET", "/api/v3/time"): Route(server_time, False),
    ("GET", "/api/v3/exchangeInfo"): Route(exchange_info, False),
    ("GET", "/api/v3/ticker/24hr"): Route(ticker_24hr, False),
    ("GET", "/api/v3/ticker/price"): Route(ticker_price, False),
    ("GET", "/api/v3/ticker/bookTicker"): Route(book_ticker, False),
    ("GET", "/api/v3/depth"): Route(depth, False),
    ("GET", "/api/v3/klines"): Route(klines, False),
    ("GET", "/api/v3/avgPrice"): Route(avg_price, False),
    ("GET", "/api/v3/trades"): Route(trades, False),
    ("GET", "/api/v3/aggTrades"): Route(agg_trades, False),
    ("GET", "/api/v3/account"): Route(account, True),
    ("POST", "/api/v3/order"): Route(new_order, True),
    ("GET", "/api/v3/order"): Route(get_order, True),
    ("DELETE", "/api/v3/order"): Route(cancel_order, True),
    ("GET", "/api/v3/openOrders"): Route(open_orders, True),
    ("DELETE", "/api/v3/openOrders"): Route(cancel_open_orders, True),
    ("GET", "/api/v3/allOrders"): Route(all_orders, True),
    ("GET", "/api/v3/myTrades"): Route(my_trades, True),
}
PATHS = {path for _, path in ROUTES}
