"""What the bot does when it must stop trading: the kill switch and the daily loss limit.

* ``halt``: no new orders; open entry orders are canceled (exits and protective orders stay).
* ``flatten``: every open order is canceled, then each position is sold at market — the smaller
  of the bot's position and the exchange's free balance, rounded down to the lot step; no buys.
* daily loss (realized + unrealized since the day began, UTC) at or over the limit engages the
  kill switch in ``halt`` with the reason. When a person releases it (``tradeguard resume``),
  the day's loss counts again from that moment.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from blackbox import recorder
from bot.marketdata import MarketFeed
from trading.orders import OrderBook, OrderSpec, as_float
from trading.risk import DAILY_LOSS_PREFIX, DailyLoss
from trading.runtime import Budget, Runtime
from bot.sizing import lot

log = logging.getLogger(__name__)
SOURCE = "bot.guard"


class Guard:
    def __init__(self, rt: Runtime, orders: OrderBook, feed: MarketFeed):
        self.rt = rt
        self.orders = orders
        self.feed = feed
        self.daily = DailyLoss(rt.cfg.risk, rt.store.kv_get, rt.store.kv_set)
        self.mode: str | None = None  # the kill switch as last seen
        self.reason = ""
        self.equity: float | None = None
        self._rebase_daily = False

    # --- the kill switch -----------------------------------------------------------------
    def note(self, kill: Any) -> None:
        """Log and record a change of the kill switch."""
        mode = kill.mode if kill is not None else None
        if mode == self.mode:
            return
        if mode:
            log.warning("kill switch engaged (%s, from %s): %s", mode, kill.source, kill.reason)
            recorder.record("bot.kill_seen", SOURCE, f"kill switch {mode}: {kill.reason}", severity="warning",
                            mode=mode, reason=kill.reason, origin=kill.source)
        else:
            log.warning("kill switch released: trading resumes")
            recorder.record("bot.kill_released", SOURCE, "kill switch released: trading resumes")
            self._rebase_daily = self.reason.startswith(DAILY_LOSS_PREFIX)
        self.mode, self.reason = mode, (kill.reason if kill is not None else "")

    def cancel_for(self, kill: Any, budget: Budget) -> int:
        """halt: cancel entry orders; flatten: cancel every open order of the bot."""
        if kill.mode == "flatten":
            return self.orders.cancel_where(lambda o: True, f"kill switch (flatten): {kill.reason}", budget)
        return self.orders.cancel_where(lambda o: o.purpose == "entry", f"kill switch (halt): {kill.reason}",
                                        budget)

    def flatten(self, kill: Any, budget: Budget) -> None:
        """Sell every position that has no order working on it."""
        positions = {s: p.amount for s, p in self.rt.store.positions().items() if as_float(p.amount) > 0}
        busy = {o.symbol for o in self.orders.live_orders()}
        todo = [s for s in positions if s not in busy and s in self.rt.exchange.markets]
        if not todo:
            return
        free = self.rt.call("account", self.rt.exchange.fetch_balance, budget=budget).get("free") or {}
        for symbol in todo:
            base = self.rt.exchange.markets[symbol]["base"]
            price = self.feed.prices.get(symbol)
            amount = lot(self.rt.exchange, symbol, min(positions[symbol], as_float(free.get(base))), price)
            if amount <= 0:
                continue  # dust below the market's minimum: no order can sell it
            spec = OrderSpec(symbol, "sell", "market", amount, None, "exit", price or 0.0,
                             f"flatten: {kill.reason}"[:100])
            self.orders.place(spec, self.orders.book(self.feed.prices), budget, flattening=True)

    # --- the daily loss limit ------------------------------------------------------------
    def pnl(self) -> float:
        """Realized + unrealized P&L of the bot's positions at the last known prices."""
        total = 0.0
        for symbol, p in self.rt.store.positions().items():
            total += as_float(p.realized_pnl)
            price = self.feed.prices.get(symbol)
            if price is not None and as_float(p.amount):
                total += as_float(p.amount) * price - as_float(p.cost)
        return total

    def check_daily_loss(self, kill: Any) -> Any:
        """Engage the kill switch (halt) when today's loss reaches the limit; the kill state in force."""
        if not self.daily.enabled or not self.feed.prices:
            return kill
        now = time.time()
        if self._rebase_daily and kill is None:
            self.daily.rebase(now, self.pnl())
            self._rebase_daily = False
        loss = self.daily.update(now, self.pnl(), self.equity)
        reason = self.daily.breach(loss)
        if reason is None or kill is not None:
            return kill
        log.error("%s: halting (kill switch)", reason)
        recorder.record("risk.blocked", SOURCE, reason, severity="critical", critical=True,
                        limit="daily_loss", loss=round(loss, 8))
        self.rt.engage_kill("halt", reason)
        kill = self.rt.killswitch.check()
        self.note(kill)
        return kill

    def note_balance(self, balance: dict[str, Any] | None) -> None:
        """Account equity in quote (quote balances + base balances at the last prices)."""
        if not balance:
            return
        totals = balance.get("total") or {}
        markets = self.rt.exchange.markets
        symbols = [s for s in self.rt.cfg.exchange.symbols if s in markets]
        equity = sum(as_float(totals.get(q)) for q in {markets[s]["quote"] for s in symbols})
        for s in symbols:
            if s in self.feed.prices:
                equity += as_float(totals.get(markets[s]["base"])) * self.feed.prices[s]
        if math.isfinite(equity):
            self.equity = equity
