"""Average-cost position maths: a position after one fill."""
from __future__ import annotations

_DUST = 1e-12


def apply_fill(amount: float, cost: float, pnl: float, *, side: str, qty: float, price: float,
               fee: float, fee_currency: str | None, base: str, quote: str
               ) -> tuple[float, float, float]:
    """Average-cost position after one fill: (amount, cost, realized_pnl).

    A buy adds ``qty`` (minus the fee when charged in the base asset) at ``qty * price``; a sell
    removes ``qty`` (plus a base-asset fee) and realizes the gain over the average cost. Fees in
    the quote asset reduce realized pnl; fees in a third asset are recorded on the fill only."""
    notional = qty * price
    fee_base = fee if fee_currency == base else 0.0
    q = (qty - fee_base) if side == "buy" else -(qty + fee_base)
    if q == 0:
        return amount, cost, pnl - (fee if fee_currency == quote else 0.0)
    unit = notional / abs(q)  # effective price per unit that moved
    if amount == 0 or (amount > 0) == (q > 0):
        amount, cost = amount + q, cost + q * unit
    else:
        closing = min(abs(q), abs(amount))
        sign = 1.0 if amount > 0 else -1.0
        avg = cost / amount
        pnl += (unit - avg) * closing * sign
        cost -= avg * closing * sign
        amount -= closing * sign
        rest = abs(q) - closing
        if rest > 0:  # crossed zero: the remainder opens the other way at this fill's price
            amount, cost = amount - sign * rest, cost - sign * rest * unit
    if fee_currency == quote:
        pnl -= fee
    if abs(amount) < _DUST:
        amount, cost = 0.0, 0.0
    return amount, cost, pnl
