"""Take-profits held by the bot: sell a position once the last price reaches its average entry
plus the strategy's ``take_profit_pct``.

On spot the protective stop locks the position's coins on the exchange, so a take-profit sell
cannot rest beside it (Binance spot would need an OCO order, which tradeguard does not place and
the paper exchange does not serve). The take-profit is therefore the bot's: every tick it compares
the last price with ``avg entry x (1 + pct / 100)`` and, once reached, exits through the normal
path (the stop is released, then the position is sold at market). It protects nothing while the
bot is down; the stop, held by the exchange, does. The percentage is kept in state.db per symbol,
so a restarted bot keeps watching, and it is forgotten once the position is flat.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from blackbox import recorder
from bot.strategy import Order
from trading.orders import FILL_EPS, IN_FLIGHT, as_float

log = logging.getLogger(__name__)
SOURCE = "bot.takeprofit"
TAG = "take-profit"
PCT_KEY = "take_profit_pct.{}"  # kv: the take-profit distance of a symbol's position


class TakeProfits:
    """The take-profit distance of each position and the exits it calls for."""

    def __init__(self, store: Any):
        self.store = store
        self._pct: dict[str, float | None] = {}  # kv PCT_KEY, read once
        self._fired: set[str] = set()  # symbols whose take-profit was reached (recorded once)

    def pct(self, symbol: str) -> float | None:
        if symbol not in self._pct:
            v = self.store.kv_get(PCT_KEY.format(symbol))
            self._pct[symbol] = float(v) if isinstance(v, (int, float)) else None
        return self._pct[symbol]

    def set_pct(self, symbol: str, pct: float | None) -> None:
        """Sell ``symbol``'s position ``pct`` above its average entry (None: no take-profit)."""
        if self.pct(symbol) != pct:
            self.store.kv_set(PCT_KEY.format(symbol), pct)
            self._pct[symbol] = pct

    def price(self, symbol: str, avg_entry: float | None) -> float | None:
        """The take-profit price of ``symbol``'s position, or None."""
        pct = self.pct(symbol)
        return avg_entry * (1 + pct / 100) if pct is not None and avg_entry else None

    def due(self, positions: dict[str, Any], prices: dict[str, float],
            live: Iterable[Any]) -> list[Order]:
        """The exits to send now: one market sell of the whole position per take-profit reached.

        Nothing while an order of the symbol is in flight or another sell of the bot works on it
        (the exit of an earlier tick). Forgets the distance of a position that is flat with
        nothing working."""
        live = list(live)
        out: list[Order] = []
        for symbol in sorted(set(positions) | set(self._fired)):
            pos = positions.get(symbol)
            amount = as_float(pos.amount) if pos is not None else 0.0
            working = [o for o in live if o.symbol == symbol]
            if amount <= FILL_EPS:
                self._fired.discard(symbol)
                if not working and self.pct(symbol) is not None:
                    self.set_pct(symbol, None)
                continue
            target = self.price(symbol, pos.avg_price)
            last = prices.get(symbol)
            if target is None or last is None or last < target:
                self._fired.discard(symbol)
                continue
            if any(o.state in IN_FLIGHT or (o.side == "sell" and o.purpose != "protective")
                   for o in working):
                continue
            if symbol not in self._fired:
                self._fired.add(symbol)
                log.info("%s: take-profit reached (last %g >= %g, entry %g): selling %g", symbol,
                         last, target, pos.avg_price, amount)
                recorder.record("takeprofit.reached", SOURCE, f"{symbol}: last price {last:g} reached "
                                f"the take-profit {target:g}; selling {amount:g}", symbol=symbol,
                                price=last, take_profit_price=target, amount=amount)
            out.append(Order(symbol, "sell", amount, tag=TAG))
        return out
