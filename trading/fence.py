"""The fence (docs/DESIGN.md, "The order lifecycle"): when an order request whose answer was lost
can no longer execute on the exchange.

A Binance-style venue executes a signed request only while ``serverTime - timestamp <=
recvWindow``. The request's timestamp is taken when ccxt signs it, which is before the order is
marked UNKNOWN (or SUBMITTING is found stranded), so that mark — ``Order.updated_at`` on the
local clock, shifted by the client's known offset to the exchange's clock — bounds it from
above. The fence on the exchange's clock is that bound plus ``recvWindow``, the client timeout
and a margin; ``[bot] unknown_grace_s`` more allows for an accepted order that is not visible yet
(eventual consistency). Only the exchange's own clock (``fetch_time``, else the ``Date`` header of
its last answer) may say the fence has passed: a local timer can only say it has not.
"""
from __future__ import annotations

import email.utils
import time
from typing import Any

from resilience.state import Order
from trading.exchange import capabilities
from trading.runtime import Budget, Runtime

MARGIN_MS = 1000.0


def _offset_ms(exchange: Any) -> float:
    """How far the client's timestamps are behind its local clock (ccxt's timeDifference)."""
    try:
        return float((exchange.options or {}).get("timeDifference") or 0.0)
    except (TypeError, ValueError, AttributeError):
        return 0.0


class Fence:
    """Answers "can the exchange still execute this order's last request?" for one runtime."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def window_ms(self) -> float:
        """How long after its timestamp a request may still execute, beyond the client timeout."""
        cfg = self.rt.cfg
        if capabilities(self.rt.exchange.id).get("recv_window"):
            return float(cfg.exchange.recv_window_ms)
        # a venue without a receive window bounds nothing: the grace is all there is
        return float(cfg.bot.unknown_grace_s) * 1000.0

    def at_ms(self, o: Order) -> float:
        """The fence of ``o``'s last request, on the exchange's clock (ms), visibility included."""
        cfg = self.rt.cfg
        sent_bound = float(o.updated_at) * 1000.0 - _offset_ms(self.rt.exchange)
        return (sent_bound + self.window_ms() + cfg.exchange.timeout_ms + MARGIN_MS
                + cfg.bot.unknown_grace_s * 1000.0)

    def not_yet(self, o: Order) -> bool:
        """True while the local clock says the fence is still ahead (no need to ask)."""
        return time.time() * 1000.0 - _offset_ms(self.rt.exchange) < self.at_ms(o)

    def local_wait_s(self, o: Order) -> float:
        """Seconds until the local clock expects the fence (0 when it expects it passed)."""
        return max(0.0, (self.at_ms(o) - (time.time() * 1000.0 - _offset_ms(self.rt.exchange))) / 1000)

    def passed(self, o: Order, budget: Budget) -> bool:
        """True only when the exchange's clock is past the fence of ``o``."""
        if self.not_yet(o):
            return False
        return self.exchange_now_ms(budget) >= self.at_ms(o)

    def exchange_now_ms(self, budget: Budget) -> float:
        """The exchange's clock: ``fetch_time``, else the Date header of its last answer."""
        ex = self.rt.exchange
        if ex.has.get("fetchTime"):
            return float(self.rt.call("market_data", ex.fetch_time, budget=budget))
        headers = getattr(ex, "last_response_headers", None) or {}
        date = headers.get("Date") or headers.get("date")
        if not date:
            self.rt.call("market_data", ex.fetch_ticker, self.rt.cfg.exchange.symbols[0],
                         budget=budget)
            headers = getattr(ex, "last_response_headers", None) or {}
            date = headers.get("Date") or headers.get("date")
        if not date:
            return float("-inf")  # no exchange clock to be had: the fence never passes
        # the header has whole seconds: its second may have begun up to 1 s earlier
        return email.utils.parsedate_to_datetime(date).timestamp() * 1000.0 - 1000.0
