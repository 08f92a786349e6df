"""From a strategy's wish to an order the exchange accepts: lot step, minimums, purpose."""
from __future__ import annotations

import logging
from typing import Any

from trading.exchange import tradable_amount
from trading.orders import OrderSpec
from trading.risk import Book, Proposal, is_exit
from bot.strategy import Order, Target

log = logging.getLogger(__name__)


def lot(exchange: Any, symbol: str, amount: float, price: float | None = None) -> float:
    """``amount`` rounded down to the lot step; 0.0 below the market's minimum amount or cost."""
    return tradable_amount(exchange, symbol, amount, price)


def order_spec(exchange: Any, action: Order | Target, price: float | None, book: Book) -> OrderSpec | None:
    """The order that carries out ``action`` at market ``price``; None when there is nothing to send."""
    if action.symbol not in exchange.markets or not price:
        log.warning("strategy asked for %s, which is not a traded symbol with a price", action.symbol)
        return None
    if isinstance(action, Target):
        diff = action.amount - (book.worst_case(action.symbol) - book.open_sells.get(action.symbol, 0.0))
        side, amount, otype, limit = ("buy" if diff > 0 else "sell"), abs(diff), "market", None
    else:
        side, amount, otype, limit = action.side, action.amount, action.type, action.price
    if limit is not None:
        limit = float(exchange.price_to_precision(action.symbol, limit))
    ref = limit or price
    amount = lot(exchange, action.symbol, amount, ref)
    if amount <= 0:
        return None
    purpose = "exit" if is_exit(Proposal(action.symbol, side, amount, ref), book) else "entry"
    return OrderSpec(action.symbol, side, otype, amount, limit, purpose, ref, action.tag)
