"""The control API under ``/_paper/`` (loopback only, no signature, no rate limit): ledger,
balances, health, faults, prices, pause/resume of the random walk, deposits, rate-limit counters.
JSON in, JSON out. Documented as a stable interface in docs/PAPER_EXCHANGE.md."""
from __future__ import annotations

import json
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from paper_exchange import apierrors
from paper_exchange.markets import fmt, market_for
from tradeguard.exceptions import PaperApiError

if TYPE_CHECKING:
    from paper_exchange.app import PaperApp


def _body(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PaperApiError(-1130, "The body must be JSON.") from None


def _decimal(spec: dict, name: str) -> Decimal:
    raw = spec.get(name)
    try:
        if isinstance(raw, bool) or raw is None:
            raise InvalidOperation
        value = Decimal(str(raw))
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise PaperApiError(-1130, f"'{name}' = {raw!r}: must be a number.") from None
    return value


def ledger(app: "PaperApp") -> dict[str, Any]:
    e = app.engine
    return {"orders": [o.binance() for o in e.all_orders(hidden=True)],
            "fills": [f.ledger() for f in e.trades(hidden=True)]}


def balances(app: "PaperApp") -> dict[str, Any]:
    return {a: {"free": fmt(f), "locked": fmt(lk), "total": fmt(f + lk)}
            for a, (f, lk) in app.engine.balance_view().items()}


def health(app: "PaperApp") -> dict[str, Any]:
    return {"status": "ok", "uptime_s": round(time.time() - app.started, 3),
            "paused": app.paused.is_set(), "ticks": app.ticks, "orders": len(app.engine.orders),
            "open_orders": len(app.engine.open), "faults": len(app.faults.views()),
            "prices": {s: fmt(p) for s, p in app.engine.prices().items()}}


def rate_limits(app: "PaperApp") -> dict[str, Any]:
    lim = app.limits
    return {"limits": lim.rate_limits(), "used": lim.headers(int(time.time() * 1000)),
            "banned_until": lim.banned_until, **lim.accounting()}


def set_price(app: "PaperApp", spec: dict) -> dict[str, Any]:
    m = market_for(spec.get("symbol"))
    price = _decimal(spec, "price")
    if price <= 0:
        raise PaperApiError(-1130, f"'price' = {spec.get('price')!r}: must be > 0.")
    fills = app.engine.set_price(m.id, price)
    return {"symbol": m.id, "price": fmt(app.engine.prices()[m.id]),
            "filled": [f.order_id for f in fills]}


def deposit(app: "PaperApp", spec: dict) -> dict[str, Any]:
    asset = spec.get("asset")
    if not isinstance(asset, str) or not asset.isalnum() or not 1 <= len(asset) <= 12:
        raise PaperApiError(-1130, f"'asset' = {asset!r}: must be an asset code such as BTC.")
    free, locked = app.engine.deposit(asset.upper(), _decimal(spec, "amount"))
    return {"asset": asset.upper(), "free": fmt(free), "locked": fmt(locked)}


def handle(app: "PaperApp", method: str, path: str, raw: bytes) -> Any:
    """Serve one control request; unknown paths are 404."""
    name = path[len("/_paper/"):].strip("/")
    if (method, name) == ("GET", "health"):
        return health(app)
    if (method, name) == ("GET", "ledger"):
        return ledger(app)
    if (method, name) == ("GET", "balances"):
        return balances(app)
    if (method, name) == ("GET", "faults"):
        return app.faults.views()
    if (method, name) == ("POST", "faults"):
        fault = app.faults.add(_body(raw))
        return {"id": fault.id, "fault": fault.view()}
    if (method, name) == ("DELETE", "faults"):
        return {"cleared": app.faults.clear()}
    if (method, name) == ("GET", "rate-limits"):
        return rate_limits(app)
    if (method, name) == ("DELETE", "rate-limits"):
        app.limits.reset()
        return rate_limits(app)
    if (method, name) == ("POST", "pause"):
        app.paused.set()
        return {"paused": True}
    if (method, name) == ("POST", "resume"):
        app.paused.clear()
        return {"paused": False}
    spec = _body(raw) if method == "POST" else None
    if (method, name) == ("POST", "price"):
        return set_price(app, spec if isinstance(spec, dict) else {})
    if (method, name) == ("POST", "deposit"):
        return deposit(app, spec if isinstance(spec, dict) else {})
    raise apierrors.not_found(method, path)
