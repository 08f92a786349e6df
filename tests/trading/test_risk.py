"""Risk limits: every limit blocks an entry, exits always pass, the daily loss survives restarts."""
from __future__ import annotations

import pytest

from trading.risk import Book, DailyLoss, Proposal, RiskLimits
from tradeguard.config import RiskConfig
from tradeguard.exceptions import RiskLimitExceeded

CFG = RiskConfig(max_position={"BTC/USDT": 0.05}, max_position_notional=2000.0, max_exposure=3000.0,
                 max_orders_per_minute=3, daily_loss_limit=100.0, daily_loss_limit_pct=5.0)


def _limit(p: Proposal, book: Book, cfg: RiskConfig = CFG) -> str | None:
    try:
        RiskLimits(cfg).check(p, book)
    except RiskLimitExceeded as e:
        return e.limit
    return None


def test_each_limit_blocks_an_entry():
    book = Book({"BTC/USDT": 0.04, "ETH/USDT": 0.5}, {"BTC/USDT": 30000.0, "ETH/USDT": 2000.0},
                open_buys={"BTC/USDT": 0.005})
    assert _limit(Proposal("BTC/USDT", "buy", 0.005, 30000.0), book) is None
    assert _limit(Proposal("BTC/USDT", "buy", 0.006, 30000.0), book) == "max_position"
    assert _limit(Proposal("ETH/USDT", "buy", 0.6, 2000.0), book) == "max_position_notional"
    assert _limit(Proposal("SOL/USDT", "buy", 10.0, 100.0), book) == "max_exposure"
    assert _limit(Proposal("BTC/USDT", "sell", 0.05, 30000.0), book) == "no_short"


def test_exits_always_pass_even_over_every_limit():
    tight = RiskConfig(max_position={"BTC/USDT": 0.001}, max_position_notional=0.0, max_exposure=0.0,
                       max_orders_per_minute=1)
    book = Book({"BTC/USDT": 1.0}, {"BTC/USDT": 30000.0}, open_sells={"BTC/USDT": 0.4})
    limits = RiskLimits(tight)
    for _ in range(5):
        limits.check(Proposal("BTC/USDT", "sell", 0.6, 30000.0), book)
        limits.note_submitted()
    with pytest.raises(RiskLimitExceeded, match="no_short"):
        limits.check(Proposal("BTC/USDT", "sell", 0.61, 30000.0), book)


def test_order_rate_counts_the_last_60_seconds():
    now = [1000.0]
    limits = RiskLimits(CFG, clock=lambda: now[0])
    p, book = Proposal("BTC/USDT", "buy", 0.001, 100.0), Book()
    for _ in range(3):
        limits.check(p, book)
        limits.note_submitted()
    with pytest.raises(RiskLimitExceeded, match="max_orders_per_minute"):
        limits.check(p, book)
    now[0] += 60.01
    limits.check(p, book)


def test_daily_loss_in_quote_and_percent_and_day_start_persists():
    kv: dict[str, object] = {}
    day = DailyLoss(CFG, kv.get, kv.__setitem__)
    t0 = 1_795_000_000.0  # a UTC day, mid-day
    assert day.update(t0, pnl=50.0, equity=None) == 0.0
    assert day.breach(day.update(t0 + 10, pnl=-40.0, equity=None)) is None  # lost 90
    assert "daily_loss_limit 100" in day.breach(day.update(t0 + 20, pnl=-50.0, equity=None))
    pct_only = RiskConfig(daily_loss_limit=0.0, daily_loss_limit_pct=5.0)
    again = DailyLoss(pct_only, kv.get, kv.__setitem__)  # restart: the day start is kept
    assert again.update(t0 + 30, pnl=0.0, equity=1000.0) == 50.0
    assert again.start.equity == 1000.0
    assert "5.00% of the day's starting equity" in again.breach(50.0)
    assert again.update(t0 + 86400, pnl=0.0, equity=900.0) == 0.0  # a new day starts afresh
