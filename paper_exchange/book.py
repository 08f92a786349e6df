"""The synthetic order book of each market: ``levels`` price levels on each side of the last price,
``step`` apart, each with its own size, and the liquidity that orders have taken from it.

Level ``i`` of the asks is at ``best ask + i * gap`` (best ask = last price plus the half spread,
rounded up to the tick); bids mirror it downwards. Sizes are drawn from a seeded generator per
market and *book version* (a new version at every price step or price jump), averaging
``level_quote`` of quote per level, so the book looks different after every move and the same for
the same seed. Liquidity taken by fills is subtracted until the next version: two market orders
in one step walk deeper than one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from paper_exchange.markets import ZERO, Market

ASK, BID = "ask", "bid"


@dataclass(frozen=True)
class BookSettings:
    levels: int
    level_quote: Decimal
    step: Decimal    # distance between levels as a fraction of the price
    spread: Decimal  # best ask/bid distance from the last price (fraction)
    seed: int


@dataclass
class _Side:
    prices: list[Decimal]
    qty: list[Decimal]  # what is left at each level in this version


@dataclass
class _MarketBook:
    version: int = 0
    sides: dict[str, _Side] = field(default_factory=dict)
    last: Decimal = ZERO


class Book:
    """Levels and remaining liquidity per market (not thread-safe: the engine locks)."""

    def __init__(self, settings: BookSettings):
        self.settings = settings
        self._books: dict[str, _MarketBook] = {}

    def best(self, m: Market, last: Decimal) -> tuple[Decimal, Decimal]:
        """(best bid, best ask) around ``last``."""
        s = self.settings.spread
        return m.round_price(last * (1 - s)), m.round_price(last * (1 + s), up=True)

    def gap(self, m: Market, last: Decimal) -> Decimal:
        return max(m.tick_size, m.round_price(last * self.settings.step))

    def moved(self, symbol: str) -> None:
        """The price moved: the next look at this market's book draws a new one."""
        b = self._books.setdefault(symbol, _MarketBook())
        b.version += 1
        b.sides.clear()

    def side(self, m: Market, last: Decimal, side: str) -> _Side:
        b = self._books.setdefault(m.id, _MarketBook())
        if b.last != last:
            b.sides.clear()
            b.last = last
        s = b.sides.get(side)
        if s is None:
            s = b.sides[side] = self._draw(m, last, side, b.version)
        return s

    def _draw(self, m: Market, last: Decimal, side: str, version: int) -> _Side:
        st = self.settings
        rng = random.Random(f"{st.seed}:{m.id}:{version}:{side}")
        bid, ask = self.best(m, last)
        gap = self.gap(m, last)
        unit = st.level_quote / last / m.step_size
        prices, qty = [], []
        for i in range(st.levels):
            price = ask + i * gap if side == ASK else bid - i * gap
            if price < m.min_price:
                break
            lots = (unit * Decimal(0.25 + 1.5 * rng.random() + 0.02 * i)).to_integral_value(ROUND_DOWN)
            prices.append(price)
            qty.append(max(lots * m.step_size, m.min_qty))
        return _Side(prices, qty)

    def view(self, m: Market, last: Decimal, side: str, limit: int) -> list[tuple[Decimal, Decimal]]:
        """The levels that still hold liquidity, best first (``GET /api/v3/depth``)."""
        s = self.side(m, last, side)
        return [(p, q) for p, q in zip(s.prices, s.qty) if q > 0][:limit]

    def plan(self, m: Market, last: Decimal, side: str, *, qty: Decimal | None = None,
             quote: Decimal | None = None, limit_price: Decimal | None = None) -> list[tuple[Decimal, Decimal]]:
        """Fills a taker would get: (price, qty) per level walked, without taking them yet.

        A BUY walks the asks (``side`` = ASK) up to ``limit_price``; ``qty`` in base or ``quote`` to
        spend (whole steps only)."""
        s = self.side(m, last, side)
        out: list[tuple[Decimal, Decimal]] = []
        left_qty, left_quote = qty, quote
        for price, avail in zip(s.prices, s.qty):
            if limit_price is not None and (price > limit_price if side == ASK else price < limit_price):
                break
            if avail <= 0:
                continue
            take = avail
            if left_qty is not None:
                take = min(take, left_qty)
            if left_quote is not None:
                take = min(take, (left_quote / price / m.step_size).to_integral_value(ROUND_DOWN) * m.step_size)
            if take <= 0:
                break
            out.append((price, take))
            if left_qty is not None:
                left_qty -= take
                if left_qty <= 0:
                    break
            if left_quote is not None:
                left_quote -= take * price
        return out

    def crossed(self, m: Market, last: Decimal, side: str, limit_price: Decimal) -> Decimal:
        """Liquidity a resting order at ``limit_price`` meets when the last price crosses it: the
        levels from the touch up to the depth of the crossing (at least one level)."""
        s = self.side(m, last, side)
        depth = int(abs(limit_price - last) / self.gap(m, last)) + 1
        return sum(s.qty[:depth], ZERO)

    def take(self, m: Market, last: Decimal, side: str, qty: Decimal) -> None:
        """Remove ``qty`` from the levels, best first (what :meth:`plan` or :meth:`crossed` offered)."""
        s = self.side(m, last, side)
        for i, avail in enumerate(s.qty):
            if qty <= 0:
                return
            used = min(avail, qty)
            s.qty[i] = avail - used
            qty -= used
