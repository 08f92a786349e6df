"""Profit and loss: what ``tradeguard status``, ``tradeguard trades``, ``/health/detailed`` and
``/metrics`` show a trader.

Read from ``state.db``'s plain columns only (no field key): ``positions`` (average-cost amount,
cost and realized P&L per symbol, kept by the bot) and ``fills`` (price, amount, fee), plus what
the bot's heartbeat carries in ``detail.pnl``: its last prices, the account equity and the day's
starting P&L (the daily loss limit's reference, see :class:`trading.risk.DailyLoss`).

* unrealized = amount x last price - cost, per symbol (unknown without a price);
* today's P&L = realized + unrealized now - the P&L when the UTC day began (the bot's own
  measure, so it is the figure the daily loss limit acts on);
* per fill, the realized P&L is found by replaying the fills in order through the same
  average-cost rule as the bot (:func:`resilience.state.apply_fill`).
"""
from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from resilience.state import apply_fill
from tradeguard.config import RiskConfig
from trading.risk import utc_day


@dataclass(frozen=True)
class SymbolPnl:
    symbol: str
    amount: float          # base units held
    cost: float            # quote paid for what is held (average cost x amount)
    price: float | None    # the bot's last price
    realized: float        # quote, fees in quote included
    unrealized: float | None
    fees: dict[str, float] = field(default_factory=dict)  # by currency

    @property
    def avg_price(self) -> float | None:
        return average_entry(self.amount, self.cost)


@dataclass(frozen=True)
class PnlReport:
    symbols: dict[str, SymbolPnl]
    realized: float
    unrealized: float | None           # None when a held position has no price
    fees: dict[str, float]             # total fees paid, by currency
    equity: float | None               # account equity in quote at the bot's last balance
    daily_pnl: float | None            # None until the bot has measured the day
    daily_loss_limit: float | None     # the tighter of the two limits, in quote; None = off
    day: str | None

    @property
    def total(self) -> float | None:
        return None if self.unrealized is None else self.realized + self.unrealized

    @property
    def daily_loss_used(self) -> float | None:
        """Today's loss as a fraction of the limit (0 when in profit); None without a limit."""
        if self.daily_loss_limit is None or self.daily_pnl is None:
            return None
        return max(0.0, -self.daily_pnl) / self.daily_loss_limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "equity": self.equity, "realized": self.realized, "unrealized": self.unrealized,
            "total": self.total, "fees": self.fees, "day": self.day, "daily_pnl": self.daily_pnl,
            "daily_loss_limit": self.daily_loss_limit, "daily_loss_used": self.daily_loss_used,
            "symbols": {s: {**asdict(p), "avg_price": p.avg_price} for s, p in self.symbols.items()},
        }


@dataclass(frozen=True)
class Trade:
    """One fill with the P&L it realized (average cost, fees in quote included)."""

    ts: float
    symbol: str
    side: str
    amount: float
    price: float
    fee: float
    fee_currency: str | None
    client_order_id: str | None
    realized_pnl: float
    position_after: float


def unrealized_pnl(amount: float, cost: float, price: float | None) -> float | None:
    """Quote gained (or lost) on ``amount`` bought for ``cost`` at ``price``: 0 when flat, None
    without a price."""
    if not amount:
        return 0.0
    return None if price is None else amount * price - cost


def average_entry(amount: float, cost: float) -> float | None:
    """The average entry price of a position (average cost); None when flat."""
    return cost / amount if amount else None


def _connect(state_db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{Path(state_db).resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def pnl_report(state_db: Path, detail: Mapping[str, Any] | None, risk: RiskConfig,
               now: float) -> PnlReport:
    """The P&L picture from state.db and the heartbeat's ``detail`` (raises sqlite3.Error)."""
    pnl = (detail or {}).get("pnl")
    pnl = pnl if isinstance(pnl, dict) else {}
    raw_prices = pnl.get("prices") if isinstance(pnl.get("prices"), dict) else {}
    prices = {str(k): p for k, v in raw_prices.items() if (p := _num(v)) is not None}
    conn = _connect(state_db)
    try:
        positions = conn.execute("SELECT symbol, amount, cost, realized_pnl FROM positions").fetchall()
        fee_rows = conn.execute("SELECT symbol, currency, total FROM fees").fetchall()
    finally:
        conn.close()
    fees: dict[str, dict[str, float]] = {}
    for symbol, cur, total in fee_rows:
        if total:
            fees.setdefault(symbol, {})[cur or "?"] = float(total)
    symbols: dict[str, SymbolPnl] = {}
    for symbol, amount, cost, realized in positions:
        price = prices.get(symbol)
        unrealized = unrealized_pnl(amount, cost, price)
        symbols[symbol] = SymbolPnl(symbol, float(amount), float(cost), price, float(realized),
                                    unrealized, fees.get(symbol, {}))
    for symbol in set(fees) - set(symbols):  # fills but no position row yet
        symbols[symbol] = SymbolPnl(symbol, 0.0, 0.0, prices.get(symbol), 0.0, 0.0, fees[symbol])
    realized = sum(p.realized for p in symbols.values())
    unrealized = None if any(p.unrealized is None for p in symbols.values()) \
        else sum(p.unrealized or 0.0 for p in symbols.values())
    totals: dict[str, float] = {}
    for p in symbols.values():
        for cur, v in p.fees.items():
            totals[cur] = totals.get(cur, 0.0) + v
    day_start = pnl.get("day_start") if isinstance(pnl.get("day_start"), dict) else {}
    today = utc_day(now)
    start_pnl = _num(day_start.get("pnl")) if day_start.get("day") == today else None
    daily = None if start_pnl is None or unrealized is None else realized + unrealized - start_pnl
    limits = [risk.daily_loss_limit] if risk.daily_loss_limit > 0 else []
    start_equity = _num(day_start.get("equity"))
    if risk.daily_loss_limit_pct > 0 and start_equity:
        limits.append(risk.daily_loss_limit_pct / 100.0 * start_equity)
    return PnlReport(dict(sorted(symbols.items())), realized, unrealized, totals,
                     _num(pnl.get("equity")), daily, min(limits) if limits else None,
                     today if start_pnl is not None else None)


def trades(state_db: Path, since: float | None = None) -> list[Trade]:
    """Every fill (oldest first) from ``since`` on, each with the P&L it realized.

    The replay starts at the first fill whatever ``since`` is: the average cost depends on every
    earlier fill. Position adjustments made by reconciliation are not fills and are not replayed,
    so after one the per-fill figures can differ from the ``positions`` totals.
    """
    conn = _connect(state_db)
    try:
        rows = conn.execute("SELECT ts, symbol, side, amount, price, fee, fee_currency, "
                            "client_order_id FROM fills ORDER BY ts, rowid").fetchall()
    finally:
        conn.close()
    book: dict[str, tuple[float, float, float]] = {}
    out: list[Trade] = []
    for ts, symbol, side, amount, price, fee, fee_cur, cid in rows:
        base, _, quote = symbol.partition("/")
        amt, cost, pnl = book.get(symbol, (0.0, 0.0, 0.0))
        new = apply_fill(amt, cost, pnl, side=side, qty=amount, price=price, fee=fee or 0.0,
                         fee_currency=fee_cur, base=base, quote=quote)
        book[symbol] = new
        if since is None or ts >= since:
            out.append(Trade(ts, symbol, side, amount, price, fee or 0.0, fee_cur, cid,
                             new[2] - pnl, new[0]))
    return out

