"""The public trade tape of each market (``GET /api/v3/trades`` and ``aggTrades``): the price walk's
own prints and the paper account's fills, newest last, kept in memory (the last ``KEEP`` per market).
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from paper_exchange.markets import fmt, q8

KEEP = 1000


@dataclass(frozen=True)
class PublicTrade:
    id: int
    price: Decimal
    qty: Decimal
    time: int
    buyer_maker: bool

    def trade(self) -> dict[str, Any]:
        return {"id": self.id, "price": fmt(self.price), "qty": fmt(self.qty),
                "quoteQty": fmt(q8(self.price * self.qty)), "time": self.time,
                "isBuyerMaker": self.buyer_maker, "isBestMatch": True}

    def agg(self) -> dict[str, Any]:
        """One aggregate trade per trade: the tape never has two fills of one taker at one price."""
        return {"a": self.id, "p": fmt(self.price), "q": fmt(self.qty), "f": self.id, "l": self.id,
                "T": self.time, "m": self.buyer_maker, "M": True}


class Tape:
    """Recent public trades per market id (not thread-safe: the engine locks)."""

    def __init__(self) -> None:
        # ids grow across restarts as long as there is less than one print per millisecond
        self._ids = itertools.count(int(time.time() * 1000))
        self._trades: dict[str, deque[PublicTrade]] = {}

    def add(self, symbol: str, price: Decimal, qty: Decimal, t: int, buyer_maker: bool) -> None:
        if qty > 0:
            self._trades.setdefault(symbol, deque(maxlen=KEEP)).append(
                PublicTrade(next(self._ids), price, qty, t, buyer_maker))

    def trades(self, symbol: str) -> list[PublicTrade]:
        return list(self._trades.get(symbol, ()))
