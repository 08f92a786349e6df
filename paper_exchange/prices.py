"""Prices of the paper exchange: a seeded random walk per symbol (or an OHLCV CSV replay), kept as
1-minute candles from which klines and 24 h tickers are derived.

Step ``k`` of a symbol draws from ``Random(f"{seed}:{symbol}:{k}")``: the walk is deterministic for a
seed and continues where it stopped after a restart (the step counter is persisted).
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Iterable

from paper_exchange import apierrors
from paper_exchange.markets import ZERO, Market, dec, fmt, q8
from tradeguard.exceptions import ConfigError

MINUTE_MS = 60_000
HISTORY_MINUTES = 500      # backfilled on a fresh database so strategies can warm up at once
KEEP_MINUTES = 7 * 24 * 60  # 1-minute candles kept per symbol
MIN_BARS = 1000            # klines history of every interval (older bars synthesised)
# Binance weeks start on Monday; the epoch was a Thursday.
_WEEK_OFFSET_MS = 4 * 24 * 3600 * 1000
INTERVALS_MS = {
    "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS, "1h": 60 * MINUTE_MS, "2h": 120 * MINUTE_MS, "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS, "8h": 480 * MINUTE_MS, "12h": 720 * MINUTE_MS, "1d": 1440 * MINUTE_MS,
    "3d": 3 * 1440 * MINUTE_MS, "1w": 7 * 1440 * MINUTE_MS,
}


@dataclass
class Candle:
    open_time: int  # ms, start of the minute
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = ZERO
    quote_volume: Decimal = ZERO
    trades: int = 0

    def add(self, price: Decimal, qty: Decimal = ZERO, trades: int = 0) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += qty
        self.quote_volume += q8(qty * price)
        self.trades += trades


@dataclass
class SymbolState:
    price: Decimal
    step: int
    candles: list[Candle]  # 1-minute candles, oldest first
    last_qty: Decimal = ZERO  # size of the walk's last print (not stored)


def load_csv_series(path: Path, markets: Iterable[Market]) -> dict[str, list[Decimal]]:
    """Close prices per market id from an OHLCV CSV with a header.

    With a ``symbol`` column each market replays its own rows; without one the series drives every
    market, scaled so that it starts at the market's start price. Raises ConfigError when unusable.
    """
    markets = list(markets)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"[paper] prices_csv = {str(path)!r}: cannot be read: {e}") from None
    closes: dict[str, list[Decimal]] = {}
    for n, row in enumerate(rows, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            close = Decimal(row["close"])
            if not close.is_finite() or close <= 0:
                raise ValueError
        except (KeyError, ArithmeticError, ValueError):
            raise ConfigError(f"[paper] prices_csv = {str(path)!r}: line {n} needs a positive 'close' "
                              "(columns: timestamp,open,high,low,close,volume[,symbol])") from None
        closes.setdefault(row.get("symbol", "").replace("/", "").upper(), []).append(close)
    if not closes:
        raise ConfigError(f"[paper] prices_csv = {str(path)!r}: no rows")
    if "" in closes:
        series = closes[""]
        return {m.id: [m.round_price(m.start_price * c / series[0]) for c in series] for m in markets}
    return {m.id: [m.round_price(c) for c in closes[m.id]] for m in markets if m.id in closes}


class PriceFeed:
    """Current prices and 1-minute candles of every market (not thread-safe: the engine locks)."""

    def __init__(self, markets: dict[str, Market], *, seed: int, volatility: float, tick_s: float,
                 series: dict[str, list[Decimal]] | None = None,
                 state: dict[str, SymbolState] | None = None, now_ms: int = 0):
        self.markets = markets
        self.seed = seed
        self.volatility = volatility
        self.minute_sigma = max(volatility, 1e-9) * math.sqrt(60.0 / tick_s)
        self.series = series or {}
        self.state: dict[str, SymbolState] = dict(state or {})
        self._older_cache: dict[tuple, list[Candle]] = {}
        for m in markets.values():
            if m.id not in self.state:
                start = self.series[m.id][0] if m.id in self.series else m.start_price
                self.state[m.id] = SymbolState(start, 0, self._backfill(m, start, now_ms))

    def price(self, symbol_id: str) -> Decimal:
        return self.state[symbol_id].price

    def _rng(self, symbol_id: str, key: object) -> random.Random:
        return random.Random(f"{self.seed}:{symbol_id}:{key}")

    def _backfill(self, m: Market, end_price: Decimal, now_ms: int) -> list[Candle]:
        """HISTORY_MINUTES synthetic candles that end at ``end_price`` (a backward walk)."""
        minute = now_ms - now_ms % MINUTE_MS
        sigma = self.minute_sigma
        close = float(end_price)
        out: list[Candle] = []
        for i in range(1, HISTORY_MINUTES + 1):
            rng = self._rng(m.id, f"history:{i}")
            open_ = close / math.exp(rng.gauss(0.0, sigma))
            hi = max(open_, close) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(open_, close) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            qty = q8(dec(rng.uniform(0.2, 2.0) * 1000 / close))
            c = Candle(minute - i * MINUTE_MS, m.round_price(dec(open_)), m.round_price(dec(hi), up=True),
                       m.round_price(dec(lo)), m.round_price(dec(close)), qty,
                       q8(qty * dec(close)), rng.randint(5, 50))
            out.append(c)
            close = open_
        out.reverse()
        return out

    def step(self, now_ms: int) -> dict[str, Decimal]:
        """Advance every market by one step; returns the new prices by market id."""
        out = {}
        for m in self.markets.values():
            st = self.state[m.id]
            st.step += 1
            rng = self._rng(m.id, st.step)
            if m.id in self.series:
                series = self.series[m.id]
                new = series[st.step % len(series)]
            else:
                new = m.round_price(dec(float(st.price) * math.exp(rng.gauss(0.0, self.volatility))))
            qty = q8(dec(rng.uniform(0.0, 0.05) * 1000 / float(new)))
            self._record(st, new, now_ms, qty, 1)
            st.last_qty = qty
            out[m.id] = new
        return out

    def set_price(self, symbol_id: str, price: Decimal, now_ms: int) -> None:
        """Jump a market's price (control API)."""
        self._record(self.state[symbol_id], price, now_ms, ZERO, 0)

    def add_trade(self, symbol_id: str, price: Decimal, qty: Decimal, now_ms: int) -> None:
        """Count a fill in the current candle's volume (the price does not move)."""
        c = self._candle(self.state[symbol_id], now_ms)
        c.volume += qty
        c.quote_volume += q8(qty * price)
        c.trades += 1

    def _candle(self, st: SymbolState, now_ms: int) -> Candle:
        minute = now_ms - now_ms % MINUTE_MS
        if not st.candles or st.candles[-1].open_time < minute:
            p = st.price
            st.candles.append(Candle(minute, p, p, p, p))
            if len(st.candles) > KEEP_MINUTES:
                del st.candles[: len(st.candles) - KEEP_MINUTES]
        return st.candles[-1]

    def _record(self, st: SymbolState, price: Decimal, now_ms: int, qty: Decimal, trades: int) -> None:
        c = self._candle(st, now_ms)
        c.add(price, qty, trades)
        st.price = price

    def current_candle(self, symbol_id: str) -> Candle:
        return self.state[symbol_id].candles[-1]

    # --- market data views ----------------------------------------------------------------
    def klines(self, symbol_id: str, interval: str, start: int | None, end: int | None,
               limit: int) -> list[list]:
        """Binance kline rows, aggregated from the 1-minute candles."""
        size = INTERVALS_MS.get(interval)
        if size is None:
            raise apierrors.invalid_interval()
        offset = _WEEK_OFFSET_MS if interval == "1w" else 0
        buckets: dict[int, Candle] = {}
        for c in self.state[symbol_id].candles:
            t = (c.open_time - offset) // size * size + offset
            b = buckets.get(t)
            if b is None:
                buckets[t] = Candle(t, c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades)
            else:
                b.high, b.low, b.close = max(b.high, c.high), min(b.low, c.low), c.close
                b.volume += c.volume
                b.quote_volume += c.quote_volume
                b.trades += c.trades
        real = [b for _, b in sorted(buckets.items())]
        older = self._older(symbol_id, interval, size, real[0] if real else None, MIN_BARS - len(real))
        rows = [b for b in older + real
                if (start is None or b.open_time + size > start) and (end is None or b.open_time <= end)]
        rows = rows[:limit] if start is not None else rows[-limit:]
        return [[b.open_time, fmt(b.open), fmt(b.high), fmt(b.low), fmt(b.close), fmt(b.volume),
                 b.open_time + size - 1, fmt(b.quote_volume), b.trades, fmt(q8(b.volume / 2)),
                 fmt(q8(b.quote_volume / 2)), "0"] for b in rows]

    def _older(self, symbol_id: str, interval: str, size: int, first: Candle | None, count: int) -> list[Candle]:
        """``count`` synthetic bars of ``interval`` before the first real one (a seeded backward walk
        anchored at its open), so that every interval has MIN_BARS of history. Cached per anchor."""
        if first is None or count <= 0:
            return []
        key = (symbol_id, interval, first.open_time, count)
        cached = self._older_cache.get(key)
        if cached is not None:
            return cached
        m = self.markets[symbol_id]
        sigma = self.minute_sigma * math.sqrt(size / MINUTE_MS)
        close = float(first.open)
        out: list[Candle] = []
        for i in range(1, count + 1):
            rng = self._rng(symbol_id, f"{interval}:{first.open_time - i * size}")
            open_ = close / math.exp(rng.gauss(0.0, sigma))
            hi = max(open_, close) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(open_, close) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            qty = q8(dec(rng.uniform(0.2, 2.0) * 1000 * size / MINUTE_MS / close))
            out.append(Candle(first.open_time - i * size, m.round_price(dec(open_)),
                              m.round_price(dec(hi), up=True), m.round_price(dec(lo)),
                              m.round_price(dec(close)), qty, q8(qty * dec(close)), rng.randint(5, 50)))
            close = open_
        out.reverse()
        if len(self._older_cache) >= 64:  # bounded: anchors move once a minute
            self._older_cache.clear()
        self._older_cache[key] = out
        return out

    def ticker_24h(self, m: Market, now_ms: int, spread: Decimal) -> dict:
        """``GET /api/v3/ticker/24hr`` for one market."""
        st = self.state[m.id]
        since = now_ms - 24 * 60 * MINUTE_MS
        window = [c for c in st.candles if c.open_time >= since - MINUTE_MS] or [self._candle(st, now_ms)]
        last = st.price
        open_ = window[0].open
        high = max(max(c.high for c in window), last)
        low = min(min(c.low for c in window), last)
        volume = sum((c.volume for c in window), ZERO)
        quote_volume = sum((c.quote_volume for c in window), ZERO)
        count = sum(c.trades for c in window)
        change = last - open_
        bid, ask = m.round_price(last * (1 - spread)), m.round_price(last * (1 + spread), up=True)
        return {
            "symbol": m.id, "priceChange": fmt(change),
            "priceChangePercent": f"{(change / open_ * 100) if open_ else ZERO:.3f}",
            "weightedAvgPrice": fmt(q8(quote_volume / volume) if volume else last),
            "prevClosePrice": fmt(open_), "lastPrice": fmt(last), "lastQty": fmt(ZERO),
            "bidPrice": fmt(bid), "bidQty": fmt(q8(dec(1000) / last)),
            "askPrice": fmt(ask), "askQty": fmt(q8(dec(1000) / last)),
            "openPrice": fmt(open_), "highPrice": fmt(high), "lowPrice": fmt(low),
            "volume": fmt(volume), "quoteVolume": fmt(quote_volume),
            "openTime": since, "closeTime": now_ms, "firstId": -1, "lastId": -1, "count": count,
        }
