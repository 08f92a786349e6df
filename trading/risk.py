"""Risk limits, enforced before any order is sent (``[risk]`` in the configuration).

* max position per symbol, in base units (``max_position``) and in quote (``max_position_notional``);
* max total exposure of all positions in quote (``max_exposure``);
* max orders submitted in any 60 s (``max_orders_per_minute``);
* daily loss, realized + unrealized, in quote (``daily_loss_limit``) or as a percentage of the
  day's starting equity (``daily_loss_limit_pct``): breaking it engages the kill switch (halt).

Open buy orders count as if they had filled (worst case). An exit — a sell no larger than what
the bot holds minus what it already offers — is always allowed: limits never trap a position.
Spot only: a sell larger than the bot's position is never allowed (it would sell the owner's
other holdings).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from tradeguard.config import RiskConfig
from tradeguard.exceptions import RiskLimitExceeded

EPS = 1e-12
DAY_KEY = "risk.day"
DAILY_LOSS_PREFIX = "daily loss limit"


@dataclass(frozen=True)
class Proposal:
    """An order about to be sent, with the price used to value it."""

    symbol: str
    side: str
    amount: float
    price: float


@dataclass
class Book:
    """The bot's exposure right now: positions, prices, amounts still open in orders."""

    positions: dict[str, float] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    open_buys: dict[str, float] = field(default_factory=dict)
    open_sells: dict[str, float] = field(default_factory=dict)

    def available(self, symbol: str) -> float:
        """What the bot can still sell: its position minus what open sells already offer."""
        return self.positions.get(symbol, 0.0) - self.open_sells.get(symbol, 0.0)

    def worst_case(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0) + self.open_buys.get(symbol, 0.0)

    def exposure(self) -> float:
        symbols = set(self.positions) | set(self.open_buys)
        return sum(max(0.0, self.worst_case(s)) * self.prices.get(s, 0.0) for s in symbols)


def is_exit(p: Proposal, book: Book) -> bool:
    """A sell that only reduces what the bot holds."""
    return p.side == "sell" and p.amount <= book.available(p.symbol) + EPS


class RiskLimits:
    """Checks a proposal against every limit; counts submissions for the rate limit."""

    def __init__(self, cfg: RiskConfig, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self._sent: deque[float] = deque()

    def note_submitted(self, ts: float | None = None) -> None:
        self._sent.append(self.clock() if ts is None else ts)

    def orders_last_minute(self) -> int:
        cutoff = self.clock() - 60.0
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()
        return len(self._sent)

    def check(self, p: Proposal, book: Book) -> None:
        """Raise RiskLimitExceeded if ``p`` breaks a limit; exits always pass."""
        if is_exit(p, book):
            return
        if p.side == "sell":
            raise RiskLimitExceeded("no_short", f"sell {p.amount:g} {p.symbol} exceeds the bot's "
                                    f"available position {max(0.0, book.available(p.symbol)):g}")
        after = book.worst_case(p.symbol) + p.amount
        cap = self.cfg.max_position.get(p.symbol)
        if cap is not None and after > cap + EPS:
            raise RiskLimitExceeded("max_position", f"{p.symbol} would reach {after:g} "
                                    f"(incl. open buys) > max_position {cap:g}")
        notional = after * p.price
        if notional > self.cfg.max_position_notional + EPS:
            raise RiskLimitExceeded("max_position_notional", f"{p.symbol} would reach {notional:.2f} "
                                    f"> max_position_notional {self.cfg.max_position_notional:g}")
        prices = dict(book.prices, **{p.symbol: p.price})
        total = Book(book.positions, prices, book.open_buys, book.open_sells).exposure() + p.amount * p.price
        if total > self.cfg.max_exposure + EPS:
            raise RiskLimitExceeded("max_exposure", f"total exposure would reach {total:.2f} "
                                    f"> max_exposure {self.cfg.max_exposure:g}")
        sent = self.orders_last_minute()
        if sent >= self.cfg.max_orders_per_minute:
            raise RiskLimitExceeded("max_orders_per_minute", f"{sent} orders in the last 60 s "
                                    f"(max_orders_per_minute {self.cfg.max_orders_per_minute})")


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


@dataclass
class DayStart:
    day: str
    pnl: float  # the bot's P&L (realized + unrealized) when the day began
    equity: float | None  # account equity in quote when the day began (None until known)


class DailyLoss:
    """Tracks the day's P&L against the daily loss limit; the day start survives restarts (kv)."""

    def __init__(self, cfg: RiskConfig, kv_get: Callable[[str], Any], kv_set: Callable[[str, Any], None]):
        self.cfg = cfg
        self.kv_get, self.kv_set = kv_get, kv_set
        self.start: DayStart | None = None
        saved = kv_get(DAY_KEY)
        if isinstance(saved, dict):
            try:
                self.start = DayStart(**saved)
            except TypeError:
                self.start = None  # unreadable: the day starts again now

    @property
    def enabled(self) -> bool:
        return self.cfg.daily_loss_limit > 0 or self.cfg.daily_loss_limit_pct > 0

    def _save(self) -> None:
        assert self.start is not None
        self.kv_set(DAY_KEY, dict(self.start.__dict__))

    def update(self, now: float, pnl: float, equity: float | None) -> float:
        """Roll the day over if needed; return today's loss (positive = money lost)."""
        day = utc_day(now)
        if self.start is None or self.start.day != day:
            self.start = DayStart(day, pnl, equity)
            self._save()
        elif self.start.equity is None and equity is not None:
            self.start.equity = equity
            self._save()
        return self.start.pnl - pnl

    def rebase(self, now: float, pnl: float) -> None:
        """Count today's loss from here on (a person resumed after the limit halted trading)."""
        equity = self.start.equity if self.start else None
        self.start = DayStart(utc_day(now), pnl, equity)
        self._save()

    def breach(self, loss: float) -> str | None:
        """The reason to halt, or None while the loss is within the limits."""
        if self.cfg.daily_loss_limit > 0 and loss >= self.cfg.daily_loss_limit:
            return f"{DAILY_LOSS_PREFIX}: lost {loss:.2f} today >= daily_loss_limit {self.cfg.daily_loss_limit:g}"
        if self.cfg.daily_loss_limit_pct > 0 and self.start and self.start.equity:
            pct = 100.0 * loss / self.start.equity
            if pct >= self.cfg.daily_loss_limit_pct:
                return (f"{DAILY_LOSS_PREFIX}: lost {loss:.2f} today = {pct:.2f}% of the day's starting "
                        f"equity {self.start.equity:.2f} >= daily_loss_limit_pct {self.cfg.daily_loss_limit_pct:g}")
        return None
