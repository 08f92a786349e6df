"""What the health snapshot reads from ``state.db``: positions, live orders, counts.

Read-only through :func:`resilience.state.open_readonly` without a cipher, so encrypted columns
are never decrypted (no key is needed here, and nothing encrypted can leak into a response).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from resilience.state import ORDER_STATES, TERMINAL, open_readonly
from tradeguard.exceptions import TradeguardError

LIVE_STATES = tuple(s for s in ORDER_STATES if s not in TERMINAL)
MAX_LISTED_ORDERS = 200


def read_state_summary(path: Path) -> dict[str, Any]:
    """Positions, live orders and counts; ``{"available": False, "error": ...}`` when the
    database is missing or unreadable (the snapshot reports it rather than failing)."""
    if not path.is_file():
        return {"available": False, "error": "no state.db yet"}
    try:
        reader = open_readonly(path)
        try:
            live = reader.orders(LIVE_STATES)
            positions = {sym: p.amount for sym, p in reader.positions().items()}
            # counters the schema keeps as rows change: nothing here grows with the history
            counts = reader.counts()
            by_state = reader.orders_by_state()
            needs_reconciliation = reader.needs_reconciliation
        finally:
            reader.close()
        fills = counts.get("fills", 0)
    except (TradeguardError, sqlite3.Error) as e:
        return {"available": False, "error": f"state.db cannot be read: {e}"}
    return {
        "available": True,
        "positions": positions,
        "orders_by_state": by_state,
        "open_orders": [_order(o) for o in live[:MAX_LISTED_ORDERS]],
        "open_orders_count": len(live),
        "fills_total": fills,
        "needs_reconciliation": needs_reconciliation,
    }


def _order(o: Any) -> dict[str, Any]:
    return {"client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side,
            "type": o.type, "purpose": o.purpose, "origin": o.origin, "amount": o.amount,
            "price": o.price, "filled": o.filled, "state": o.state, "created_at": o.created_at,
            "updated_at": o.updated_at}
