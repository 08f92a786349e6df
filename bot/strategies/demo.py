"""The default strategy: trades every few seconds on the paper exchange so that every code path
runs — small market buys and sells, and now and then a resting limit entry that is canceled.

Not a strategy to run with money: it buys and sells at random (seeded, so a run can be
repeated). It stays inside the default risk limits by keeping each position under
``max_quote`` of quote currency.
"""
from __future__ import annotations

import random
from typing import Any

from bot.strategy import Action, Cancel, FillEvent, Order, Strategy, TickContext

LIMIT_TAG = "demo-limit"


class DemoStrategy(Strategy):
    timeframe = "1m"
    ohlcv_limit = 5

    def __init__(self, interval_s: float = 3.0, order_quote: float = 25.0, max_quote: float = 250.0,
                 limit_probability: float = 0.25, limit_offset: float = 0.02,
                 limit_ttl_s: float = 6.0, stop_cooldown_s: float = 60.0, seed: int = 7):
        if interval_s <= 0 or order_quote <= 0 or max_quote < order_quote or stop_cooldown_s < 0:
            raise ValueError("need interval_s > 0, order_quote > 0, max_quote >= order_quote and "
                             "stop_cooldown_s >= 0")
        if not 0 <= limit_probability <= 1 or not 0 < limit_offset < 1:
            raise ValueError("need 0 <= limit_probability <= 1 and 0 < limit_offset < 1")
        self.interval_s, self.order_quote, self.max_quote = interval_s, order_quote, max_quote
        self.limit_probability, self.limit_offset = limit_probability, limit_offset
        self.limit_ttl_s = limit_ttl_s
        self.stop_cooldown_s = stop_cooldown_s
        self.stopped_out: dict[str, float] = {}  # symbol -> when its protective stop last filled
        self.rng = random.Random(seed)
        self._last_trade = 0.0
        self._turn = 0

    def on_tick(self, ctx: TickContext) -> list[Action]:
        actions: list[Action] = [
            Cancel(o.client_order_id, "demo: resting entry expired")
            for o in ctx.open_orders
            if o.tag == LIMIT_TAG and o.state == "OPEN" and ctx.now - o.created_at > self.limit_ttl_s]
        if ctx.now - self._last_trade < self.interval_s or not ctx.market:
            return actions
        symbols = sorted(ctx.market)
        symbol = symbols[self._turn % len(symbols)]
        self._turn += 1
        if any(o.symbol == symbol and o.state != "OPEN" for o in ctx.open_orders):
            return actions  # an order is still in flight there: let it settle first
        self._last_trade = ctx.now
        md = ctx.market[symbol]
        position = ctx.positions.get(symbol, 0.0)
        committed = sum(o.amount - o.filled for o in ctx.orders_for(symbol)
                        if o.side == "sell" and o.purpose != "protective")  # the bot moves its stop
        available = max(0.0, position - committed)
        roll = self.rng.random()
        room = self.max_quote - position * md.last
        has_limit = any(o.tag == LIMIT_TAG for o in ctx.orders_for(symbol))
        cooling = ctx.now - self.stopped_out.get(symbol, float("-inf")) < self.stop_cooldown_s
        if ctx.degradation == "running" and room >= self.order_quote and not cooling:
            if roll < self.limit_probability and not has_limit:
                price = md.last * (1 - self.limit_offset)
                actions.append(Order(symbol, "buy", self.order_quote / price, "limit", price, LIMIT_TAG))
                return actions
            if roll < 0.6 or available * md.last < self.order_quote:
                actions.append(Order(symbol, "buy", self.order_quote / md.last, tag="demo-buy"))
                return actions
        if available > 0:
            # sell a slice, or everything when what is left would be too small to trade
            amount = available if available * md.last < 2 * self.order_quote else self.order_quote / md.last
            actions.append(Order(symbol, "sell", amount, tag="demo-sell"))
        return actions

    def on_fill(self, fill: FillEvent) -> None:
        """A protective stop that fills: no new entry in that symbol for ``stop_cooldown_s``."""
        if fill.purpose == "protective":
            self.stopped_out[fill.symbol] = max(fill.ts, self.stopped_out.get(fill.symbol, 0.0))

    def snapshot(self) -> dict[str, Any]:
        return {"turn": self._turn}

    def restore(self, state: dict[str, Any]) -> None:
        self._turn = int(state.get("turn", 0))
