"""Binance's REST rate limits, as ``exchangeInfo`` advertises them: request weight per minute (each
endpoint's weight, per client IP) and new orders per 10 seconds and per day (per account).

Windows are fixed and aligned to the clock as on Binance (the minute counter resets at :00). A
request past a limit is refused with HTTP 429 (-1003 weight, -1015 orders) and ``Retry-After``;
a client that keeps sending while refused (``BAN_AFTER`` refusals in one minute) is banned: HTTP
418 for ``ban_s`` seconds. Every API answer carries ``X-MBX-USED-WEIGHT-1M``,
``X-MBX-ORDER-COUNT-10S`` and ``X-MBX-ORDER-COUNT-1D``.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Mapping

from paper_exchange import apierrors
from tradeguard.exceptions import PaperApiError

WEIGHT_PER_MINUTE = 6000
ORDERS_PER_10S = 100
ORDERS_PER_DAY = 200_000
BAN_AFTER = 10
MINUTE, TEN_S, DAY = 60_000, 10_000, 86_400_000

# (method, path) -> weight, or a function of the parameters (Binance's documented weights)
_FIXED = {
    ("GET", "/api/v3/ping"): 1, ("GET", "/api/v3/time"): 1, ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/klines"): 2, ("GET", "/api/v3/avgPrice"): 2, ("GET", "/api/v3/trades"): 25,
    ("GET", "/api/v3/aggTrades"): 2, ("GET", "/api/v3/account"): 20, ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4, ("DELETE", "/api/v3/order"): 1, ("DELETE", "/api/v3/openOrders"): 1,
    ("GET", "/api/v3/allOrders"): 20,
}
_ONE_OR_ALL = {("GET", "/api/v3/ticker/24hr"): (2, 80), ("GET", "/api/v3/ticker/price"): (2, 4),
               ("GET", "/api/v3/ticker/bookTicker"): (2, 4), ("GET", "/api/v3/openOrders"): (6, 80)}


def weight(method: str, path: str, params: Mapping[str, str]) -> int:
    """The request weight Binance charges for this call."""
    w = _FIXED.get((method, path))
    if w is not None:
        return w
    pair = _ONE_OR_ALL.get((method, path))
    if pair is not None:
        if params.get("symbol"):
            return pair[0]
        if params.get("symbols"):  # a list: 24hr weighs 2 per <= 20 symbols (40 to 100), the others 4
            if path.endswith("24hr"):
                n = params["symbols"].count(",") + 1
                return 2 if n <= 20 else 40 if n <= 100 else 80
            return 4
        return pair[1]
    if (method, path) == ("GET", "/api/v3/depth"):
        raw = params.get("limit", "100")
        limit = int(raw) if raw.isdigit() and len(raw) < 10 else 100
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    if (method, path) == ("GET", "/api/v3/myTrades"):
        return 5 if params.get("orderId") else 20
    return 1


@dataclass
class _Window:
    size_ms: int
    start: int = -1
    used: int = 0

    def current(self, now: int) -> int:
        start = now - now % self.size_ms
        if start != self.start:
            self.start, self.used = start, 0
        return self.used

    def retry_after_s(self, now: int) -> int:
        return max(1, math.ceil((self.start + self.size_ms - now) / 1000))


@dataclass
class RateLimiter:
    """Thread-safe counters of one exchange (every client is one IP: the loopback)."""

    multiplier: float = 1.0
    ban_s: float = 120.0
    weight_1m: _Window = field(default_factory=lambda: _Window(MINUTE))
    orders_10s: _Window = field(default_factory=lambda: _Window(TEN_S))
    orders_1d: _Window = field(default_factory=lambda: _Window(DAY))
    refusals: _Window = field(default_factory=lambda: _Window(MINUTE))
    banned_until: int = 0
    # since the start (or the last reset): the most any window held, and the answers refused
    peak_weight_1m: int = 0
    peak_orders_10s: int = 0
    refused_429: int = 0
    refused_418: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.advertised = self.rate_limits()  # exchangeInfo's list; the limits never change

    def limit(self, base: int) -> int:
        return max(1, int(base * self.multiplier))

    def rate_limits(self) -> list[dict]:
        """The ``rateLimits`` list of ``exchangeInfo``."""
        return [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": self.limit(WEIGHT_PER_MINUTE)},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.limit(ORDERS_PER_10S)},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": self.limit(ORDERS_PER_DAY)},
        ]

    def headers(self, now: int) -> dict[str, str]:
        with self._lock:
            return {"X-MBX-USED-WEIGHT-1M": str(self.weight_1m.current(now)),
                    "X-MBX-ORDER-COUNT-10S": str(self.orders_10s.current(now)),
                    "X-MBX-ORDER-COUNT-1D": str(self.orders_1d.current(now))}

    def admit(self, w: int, is_order: bool, now: int) -> tuple[PaperApiError, int] | None:
        """Count one request; None if it may be served, else the error and Retry-After seconds."""
        with self._lock:
            if now < self.banned_until:
                self.refused_418 += 1
                return apierrors.banned(self.banned_until), math.ceil((self.banned_until - now) / 1000)
            used = self.weight_1m.current(now) + w
            self.weight_1m.used = used
            self.peak_weight_1m = max(self.peak_weight_1m, used)
            refused: tuple[PaperApiError, int] | None = None
            if used > self.limit(WEIGHT_PER_MINUTE):
                refused = apierrors.too_much_weight(self.limit(WEIGHT_PER_MINUTE)), self.weight_1m.retry_after_s(now)
            elif is_order:
                for window, base, name in ((self.orders_10s, ORDERS_PER_10S, "10 SECOND"),
                                           (self.orders_1d, ORDERS_PER_DAY, "1 DAY")):
                    if window.current(now) + 1 > self.limit(base):
                        refused = apierrors.too_many_orders(self.limit(base), name), window.retry_after_s(now)
                        break
                else:
                    self.orders_10s.used += 1
                    self.orders_1d.used += 1
                    self.peak_orders_10s = max(self.peak_orders_10s, self.orders_10s.used)
            if refused is not None:
                self.refused_429 += 1
                self.refusals.used = self.refusals.current(now) + 1
                if self.refusals.used >= BAN_AFTER:
                    self.banned_until = now + int(self.ban_s * 1000)
                    self.refusals.used = 0
            return refused

    def accounting(self) -> dict[str, dict[str, int]]:
        """The most any window held since the start (or the last reset), and how many requests
        were refused with 429 and, while banned, with 418."""
        with self._lock:
            return {"peak": {"weight_1m": self.peak_weight_1m, "orders_10s": self.peak_orders_10s},
                    "refused": {"429": self.refused_429, "418": self.refused_418}}

    def reset(self) -> None:
        """Forget all counters, peaks and any ban (control API)."""
        with self._lock:
            for w in (self.weight_1m, self.orders_10s, self.orders_1d, self.refusals):
                w.start, w.used = -1, 0
            self.banned_until = 0
            self.peak_weight_1m = self.peak_orders_10s = self.refused_429 = self.refused_418 = 0
