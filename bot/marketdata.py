"""Market data for the strategy: tickers every tick, candles when the strategy wants them.

Everything goes through the resilience manager (dependency ``market_data``) within the tick's
budget. A symbol whose data could not be fetched this tick is left out of the strategy's view;
the last known price is kept for valuing positions (risk limits, daily loss).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from trading.runtime import Budget, Runtime
from bot.strategy import MarketData

log = logging.getLogger(__name__)
DEPENDENCY = "market_data"


def ticker_price(t: dict[str, Any]) -> float | None:
    """The ticker's last price, else the bid/ask midpoint."""
    for key in ("last", "close"):
        v = t.get(key)
        if v:
            return float(v)
    bid, ask = t.get("bid"), t.get("ask")
    return (float(bid) + float(ask)) / 2 if bid and ask else None


class MarketFeed:
    def __init__(self, rt: Runtime, symbols: list[str], timeframe: str = "1m", ohlcv_limit: int = 0,
                 ohlcv_refresh_s: float = 10.0):
        self.rt = rt
        self.symbols = list(symbols)
        self.timeframe, self.ohlcv_limit, self.ohlcv_refresh_s = timeframe, ohlcv_limit, ohlcv_refresh_s
        self.prices: dict[str, float] = {}
        self._ohlcv: dict[str, tuple] = {}
        self._ohlcv_at: dict[str, float] = {}
        self._batch = bool(rt.exchange.has.get("fetchTickers"))

    def _tickers(self, budget: Budget) -> dict[str, dict[str, Any]]:
        ex = self.rt.exchange
        if self._batch:
            return self.rt.call(DEPENDENCY, ex.fetch_tickers, self.symbols, budget=budget)
        return {s: self.rt.call(DEPENDENCY, ex.fetch_ticker, s, budget=budget) for s in self.symbols}

    def refresh(self, budget: Budget) -> dict[str, MarketData]:
        """This tick's market data; raises what the manager raises when tickers are unavailable."""
        tickers = self._tickers(budget)
        now = time.monotonic()
        out: dict[str, MarketData] = {}
        for symbol in self.symbols:
            t = tickers.get(symbol)
            price = ticker_price(t) if t else None
            if price is None or price <= 0:
                continue
            self.prices[symbol] = price
            if self.ohlcv_limit and now - self._ohlcv_at.get(symbol, -1e9) >= self.ohlcv_refresh_s \
                    and not budget.expired():
                try:
                    bars = self.rt.call(DEPENDENCY, self.rt.exchange.fetch_ohlcv, symbol, self.timeframe,
                                        limit=self.ohlcv_limit, budget=budget)
                    self._ohlcv[symbol] = tuple(tuple(float(x) for x in b[:6]) for b in bars)
                    self._ohlcv_at[symbol] = now
                except Exception as e:  # noqa: BLE001 - stale candles beat no tick at all
                    log.info("candles for %s not refreshed: %s", symbol, e)
            out[symbol] = MarketData(symbol, price, _f(t.get("bid")), _f(t.get("ask")),
                                     (t.get("timestamp") or 0) / 1000.0, self._ohlcv.get(symbol, ()))
        return out


def _f(v: Any) -> float | None:
    return float(v) if v is not None else None
