"""Buy the dip: a small shipped strategy that shows the whole strategy API.

It buys a symbol when the last price is ``dip_pct`` below the highest close of the last
``lookback`` candles, spending ``quote_amount`` but never more than ``max_free_fraction`` of the
free quote balance (``ctx.balances``). Each entry carries its own protective stop
(``stop_loss_pct``, held by the exchange) and take-profit (``take_profit_pct``, held by the bot):
one of them ends the position. It never adds to a position it holds (``ctx.position``); when a
held position has no stop on the exchange (stops off, or the stop is missing) and the price is
already below where the stop would be, it sells by itself. ``on_start`` notes the positions it
takes over, ``on_stop`` logs what is still open with its unrealized P&L.
"""
from __future__ import annotations

import logging
from bot.strategy import Action, Order, PositionView, Strategy, TickContext

log = logging.getLogger(__name__)
TAG = "dip"


class DipBuyer(Strategy):
    timeframe = "1m"
    ohlcv_limit = 30

    def __init__(self, dip_pct: float = 2.0, lookback: int = 20, quote_amount: float = 50.0,
                 max_free_fraction: float = 0.25, stop_loss_pct: float = 4.0,
                 take_profit_pct: float = 3.0, timeframe: str = "1m"):
        if not 0 < dip_pct < 100 or not 1 <= lookback < self.ohlcv_limit or quote_amount <= 0:
            raise ValueError(f"need 0 < dip_pct < 100, 1 <= lookback < {self.ohlcv_limit} and "
                             "quote_amount > 0")
        if not 0 < max_free_fraction <= 1:
            raise ValueError("need 0 < max_free_fraction <= 1")
        Order("X/Y", "buy", 1.0, stop_loss_pct=stop_loss_pct, take_profit_pct=take_profit_pct)  # checks both
        self.dip_pct, self.lookback, self.quote_amount = dip_pct, lookback, quote_amount
        self.max_free_fraction = max_free_fraction
        self.stop_loss_pct, self.take_profit_pct = stop_loss_pct, take_profit_pct
        self.timeframe = timeframe
        self.taken_over: dict[str, PositionView] = {}  # positions held when the bot started
        self.last: dict[str, PositionView] = {}  # each held position at the last tick

    def on_start(self, ctx: TickContext) -> None:
        self.taken_over = {s: ctx.position(s) for s, a in ctx.positions.items() if a > 0}
        for symbol, p in sorted(self.taken_over.items()):
            log.info("dip: holding %g %s from before (entry %s, stop %s, take-profit %s)", p.amount,
                     symbol, p.avg_entry, p.stop_price, p.take_profit_price)

    def on_tick(self, ctx: TickContext) -> list[Action]:
        actions: list[Action] = []
        self.last = {s: ctx.position(s) for s, a in ctx.positions.items() if a > 0}
        for symbol, md in sorted(ctx.market.items()):
            if any(o.purpose != "protective" for o in ctx.orders_for(symbol)):
                continue  # an order of ours is working there: wait for it
            pos = ctx.position(symbol)
            if pos.amount > 0:
                floor = pos.avg_entry * (1 - self.stop_loss_pct / 100) if pos.avg_entry else None
                if pos.stop_price is None and floor is not None and md.last <= floor:
                    log.warning("dip: %s has no stop on the exchange and is %.2f below its entry: "
                                "selling", symbol, pos.unrealized_pnl or 0.0)
                    actions.append(Order(symbol, "sell", pos.amount, tag=f"{TAG}-stop"))
                continue  # never adds to a position
            if ctx.degradation != "running":
                continue
            closes = [bar[4] for bar in md.ohlcv[-self.lookback - 1:-1]]
            if len(closes) < self.lookback or md.last > max(closes) * (1 - self.dip_pct / 100):
                continue
            quote = symbol.partition("/")[2]
            free = ctx.balances.get(quote)
            spend = min(self.quote_amount, free.free * self.max_free_fraction) if free else 0.0
            if spend > 0:
                actions.append(Order(symbol, "buy", spend / md.last, tag=TAG,
                                     stop_loss_pct=self.stop_loss_pct,
                                     take_profit_pct=self.take_profit_pct))
        return actions

    def on_stop(self) -> None:
        for symbol, p in sorted(self.last.items()):
            log.info("dip: stopping with %g %s open (entry %s, unrealized %s, stop %s)", p.amount,
                     symbol, p.avg_entry, p.unrealized_pnl, p.stop_price)
