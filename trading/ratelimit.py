"""Slowing down before the venue refuses: the usage a Binance-style exchange reports on every
answer (``X-MBX-USED-WEIGHT-1M``, ``X-MBX-ORDER-COUNT-10S``) against the limits its
``exchangeInfo`` advertises. Past ``HEADROOM`` of a limit, reads (and new orders, for the order
count) wait for the window to turn — within the tick's budget, else the tick gives them up —
instead of being answered 429 and, repeated, 418 (a ban).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

HEADROOM = 0.8
_WINDOW_S = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


@dataclass
class RateGovernor:
    """Usage seen in the venue's headers; how long the next call should wait."""

    weight_limit: int | None = None      # per minute
    orders_limit: int | None = None      # per 10 s
    weight_used: int = 0
    orders_used: int = 0
    seen_at: float = 0.0                 # wall clock of the answer the counts came from
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def load_limits(self, exchange: Any, symbol_id: str) -> None:
        """Read the limits from ``exchangeInfo`` (one small request, at start)."""
        info = exchange.publicGetExchangeInfo({"symbol": symbol_id})
        for lim in info.get("rateLimits") or []:
            window = _WINDOW_S.get(str(lim.get("interval"))) or 0
            window *= int(lim.get("intervalNum") or 1)
            if lim.get("rateLimitType") == "REQUEST_WEIGHT" and window == 60:
                self.weight_limit = int(lim["limit"])
            elif lim.get("rateLimitType") == "ORDERS" and window == 10:
                self.orders_limit = int(lim["limit"])
        log.info("rate limits: %s weight/min, %s orders/10 s", self.weight_limit, self.orders_limit)

    def observe(self, headers: Mapping[str, Any] | None) -> None:
        """Take the usage counters of one answer (header names in any case)."""
        if not headers:
            return
        low = {str(k).lower(): v for k, v in headers.items()}
        weight, orders = low.get("x-mbx-used-weight-1m"), low.get("x-mbx-order-count-10s")
        if weight is None and orders is None:
            return
        try:
            self.weight_used = int(weight) if weight is not None else self.weight_used
            self.orders_used = int(orders) if orders is not None else self.orders_used
        except (TypeError, ValueError):
            return
        self.seen_at = self.clock()

    def _wait(self, used: int, limit: int | None, window_s: int) -> float:
        if not limit or used < HEADROOM * limit:
            return 0.0
        now = self.clock()
        turn = (self.seen_at // window_s + 1) * window_s  # the venue's windows are aligned
        return max(0.0, turn - now)

    def read_wait_s(self) -> float:
        """Seconds a read should wait (0: go)."""
        return self._wait(self.weight_used, self.weight_limit, 60)

    def order_wait_s(self) -> float:
        """Seconds a new order should wait (0: go)."""
        return max(self.read_wait_s(), self._wait(self.orders_used, self.orders_limit, 10))


def load_rate_limits(rt: Any, budget: Any) -> None:
    """Give ``rt.governor`` the venue's limits, where the venue reports its usage (capability
    ``rate_headers``); without them the governor stays out of the way."""
    from trading.exchange import capabilities

    if not capabilities(rt.exchange.id).get("rate_headers") or rt.governor.weight_limit:
        return
    symbol_id = rt.exchange.market(rt.cfg.exchange.symbols[0])["id"]
    try:
        rt.call("market_data", rt.governor.load_limits, rt.exchange, symbol_id, budget=budget)
    except Exception as e:  # noqa: BLE001 - the 429 handling still stands behind it
        log.warning("rate limits not read (%s); relying on the exchange's 429 answers", e)
