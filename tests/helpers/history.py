"""A trading history written through the state store's own API, as the bot writes it.

Each order: an intent (with a reason), three transitions (SUBMITTING, OPEN with the exchange's
payload, FILLED) and one fill (with its payload) -- every encrypted column encrypted as the bot
does. Orders alternate buy and sell so positions stay small. The store's clock is set to each
order's time, spread evenly over ``[start, end)``, so the history can be as old as wanted.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from resilience.crypto import FieldCipher
from resilience.state import Fill, NewOrder, StateStore

RECONCILE_LAST_KEY = "reconcile.last"  # bot.reconcile.LAST_KEY: when the last pass ran
BATCH = 500  # orders a transaction (StateStore.batch): a commit per order costs more than the rows


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def build_history(path: Path, cipher: FieldCipher, n: int, *, start: float, end: float,
                  bot_id: str = "tg1", symbol: str = "BTC/USDT", first_seq: int = 1,
                  progress: Callable[[int], None] | None = None, resume: bool = False,
                  synchronous: str = "NORMAL") -> list[str]:
    """Write ``n`` closed orders to the state database at ``path``; their client order ids.

    ``resume``: continue a history an earlier (interrupted) call began, after the orders it
    holds. Marks a reconciliation pass right after the history (as the bot that made it would)."""
    clock = _Clock()
    store = StateStore(path, cipher, synchronous=synchronous, clock=clock,
                       checkpoint_every=20000)
    cids = []
    try:
        done = max(store.orders_by_state().get("FILLED", 0) - 1, 0) if resume else 0
        for first in range(done, n, BATCH):
            with store.batch():  # the same calls, committed BATCH orders at a time
                for i in range(first, min(first + BATCH, n)):
                    clock.now = start + (end - start) * i / max(n, 1)
                    cids.append(_order(store, i, first_seq + i, bot_id, symbol, clock.now))
            if progress is not None and (i + 1) % 10000 == 0:
                progress(i + 1)
        clock.now = end
        store.kv_set(RECONCILE_LAST_KEY, end)
        store.raise_sequence("orders", first_seq + n)
    finally:
        store.close()
    return cids


def _order(store: StateStore, i: int, seq: int, bot_id: str, symbol: str, now: float) -> str:
    """One closed order and its fill (finishing one an interrupted run left half-written)."""
    cid = f"tg-{bot_id}-{seq}"
    side = "buy" if i % 2 == 0 else "sell"
    price = 30000.0 + (i % 100)
    eid = str(10_000_000 + seq)
    o = store.get_order(cid, decrypt=False)
    state = o.state if o is not None else None
    if state is None:
        store.add_intent(NewOrder(cid, seq, bot_id, symbol, side, "market", 0.001,
                                  reason=f"history {side} #{i}"))
        state = "INTENT"
    if state == "INTENT":
        store.transition(cid, "SUBMITTING", note="submitting", attempts=1)
        state = "SUBMITTING"
    if state == "SUBMITTING":
        payload = {"orderId": eid, "clientOrderId": cid, "status": "FILLED", "side": side.upper(),
                   "executedQty": "0.00100000", "cummulativeQuoteQty": f"{price * 0.001:.8f}"}
        store.transition(cid, "OPEN", note="acknowledged", exchange_order_id=eid, raw=payload)
        state = "OPEN"
    if state == "OPEN":
        store.transition(cid, "FILLED", note="exchange update", filled=0.001, average=price)
    store.add_fill(Fill(f"t{seq}", cid, eid, symbol, side, 0.001, price, fee=price * 1e-6,
                        fee_currency="USDT", ts=now,
                        raw={"id": f"t{seq}", "orderId": eid, "price": str(price),
                             "qty": "0.00100000", "commissionAsset": "USDT"}))
    return cid
