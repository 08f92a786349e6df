"""SMA crossover: hold a position while the fast moving average of closes is above the slow one.

It acts on crossings only (the first observation of a symbol just records which side the fast
average is on) and computes from closed candles, so a restart in the middle of a candle does not
trade on a half-formed bar. Position size: ``amount`` base units, or ``quote_amount`` of quote
currency at the price of the crossing.
"""
from __future__ import annotations

from typing import Any

from bot.strategy import Action, Strategy, Target, TickContext


def sma(values: list[float], n: int) -> float:
    return sum(values[-n:]) / n


class SmaCross(Strategy):
    ohlcv_refresh_s = 10.0

    def __init__(self, fast: int = 10, slow: int = 30, timeframe: str = "1m",
                 amount: float | None = None, quote_amount: float = 100.0,
                 symbols: list[str] | None = None):
        if not 1 <= fast < slow <= 500:
            raise ValueError("need 1 <= fast < slow <= 500")
        if amount is not None and amount <= 0 or quote_amount <= 0:
            raise ValueError("amount and quote_amount must be > 0")
        self.fast, self.slow, self.timeframe = fast, slow, timeframe
        self.amount, self.quote_amount = amount, quote_amount
        self.symbols = set(symbols) if symbols else None
        self.ohlcv_limit = slow + 2  # slow + previous bar + the bar still forming
        self._above: dict[str, bool] = {}  # symbol -> fast above slow at the last closed bar
        self._target: dict[str, float] = {}

    def on_tick(self, ctx: TickContext) -> list[Action]:
        actions: list[Action] = []
        for symbol, md in sorted(ctx.market.items()):
            if self.symbols is not None and symbol not in self.symbols:
                continue
            closes = [c[4] for c in md.ohlcv[:-1]]  # the last bar is still forming
            if len(closes) < self.slow:
                continue
            above = sma(closes, self.fast) > sma(closes, self.slow)
            before = self._above.get(symbol)
            self._above[symbol] = above
            if before is not None and above != before:
                size = self.amount if self.amount is not None else self.quote_amount / md.last
                self._target[symbol] = size if above else 0.0
            if symbol in self._target:
                actions.append(Target(symbol, self._target[symbol], "sma-cross"))
        return actions

    def snapshot(self) -> dict[str, Any]:
        return {"above": self._above, "target": self._target}

    def restore(self, state: dict[str, Any]) -> None:
        self._above = {k: bool(v) for k, v in state.get("above", {}).items()}
        self._target = {k: float(v) for k, v in state.get("target", {}).items()}
