"""Reconciliation: the exchange is the source of truth for balances, orders and fills.

At startup (before the strategy runs) and every ``[bot] reconcile_interval_s``:

1. every order of ours on the exchange (client order id ``tg-<bot_id>-``) is compared with
   state.db: unknown ones are adopted, externally canceled/filled ones are updated;
2. every trade of our orders is added (idempotent by trade id): fills that happened while the
   bot was down are adopted;
3. the bot's positions are compared with the exchange's balances.

Explained differences are fixed and recorded (``reconcile.*``). Unexplained ones (an order
OPEN here but unknown there, a position larger than the balance) engage the kill switch in
``halt`` with reason ``reconciliation: <what>`` and are kept in kv ``reconcile.pending``; when a
person releases the kill switch (``tradeguard resume``) the bot adopts the exchange's truth.
After a quarantined state store the same pass runs over the whole history ("rebuild"), and the
order sequence is moved above the highest one seen on the exchange so no id is ever reused.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from blackbox import recorder
from trading.exchange import amount_step, fetch_order_by_client_id
from trading.history import ExchangeHistory, Report
from trading.orders import FINAL, LIVE, OrderBook, as_float
from trading.runtime import Budget, Runtime

log = logging.getLogger(__name__)
SOURCE = "bot.reconcile"
PENDING_KEY = "reconcile.pending"
LAST_KEY = "reconcile.last"
# How far behind the last reconciliation a pass looks: it covers a trade that reached the
# exchange's history late or a clock off by this much (an exchange refuses requests whose clock
# is off by more than seconds). Every item in the window is fetched and checked on every pass,
# so a longer look-back costs request weight and memory at every pass, for nothing.
MARGIN_S = 120.0
POSITION_TOL = 1e-9
MARGIN_VISIBLE_S = 2.0  # beyond [bot] unknown_grace_s, before an acknowledged order must show


class Reconciler:
    def __init__(self, rt: Runtime, orders: OrderBook, symbols: list[str],
                 progress: Callable[[Report], None] | None = None):
        self.rt = rt
        self.orders = orders
        self.symbols = list(symbols)
        self.history = ExchangeHistory(rt, orders, source=SOURCE, progress=progress)
        last = rt.store.kv_get(LAST_KEY)
        self.last: float | None = float(last) if isinstance(last, (int, float)) else None
        self.balance: dict[str, Any] | None = None  # the last one fetched (for equity)
        saved = rt.store.kv_get(PENDING_KEY)
        self._pending: list[dict[str, Any]] = [p for p in saved if isinstance(p, dict) and "what" in p] \
            if isinstance(saved, list) else []

    # --- pending problems (waiting for a person) ----------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """Problems waiting for a person (kept in kv, so they survive restarts)."""
        return list(self._pending)

    def _set_pending(self, problems: list[dict[str, Any]]) -> None:
        self.rt.store.kv_set(PENDING_KEY, problems)
        self._pending = list(problems)

    def attention(self) -> str | None:
        p = self.pending()
        return "; ".join(x["what"] for x in p) if p else None

    def adopt_exchange_truth(self) -> None:
        """The kill switch was released by a person: take the exchange's word for every problem."""
        store = self.rt.store
        for p in self.pending():
            if p["kind"] == "position":
                store.adjust_position(p["symbol"], p["exchange"],
                                      reason=f"adopted the exchange's balance after resume: {p['what']}")
            elif p["kind"] == "order":
                o = store.get_order(p["client_order_id"])
                if o is not None and o.state not in FINAL:
                    self.orders.transition(o, "CANCELED", "adopted the exchange's truth after resume: "
                                            "the exchange does not have it")
            recorder.record("reconcile.adopted", SOURCE, f"adopted the exchange's truth: {p['what']}",
                            severity="warning", critical=True, problem=p)
            log.warning("reconciliation: adopted the exchange's truth: %s", p["what"])
        self._set_pending([])

    # --- the pass ------------------------------------------------------------------------
    def run(self, budget: Budget, *, full: bool = False) -> Report:
        """One reconciliation; ``full`` reads the whole history (rebuild after corruption)."""
        since = None if full else self._since()
        rep = self.history.learn(self.symbols, since, budget)
        for symbol in self.symbols:
            self._missing_open(symbol, rep.seen.get(symbol, set()), budget, rep)
        # the balance last: a fill after this read can only make the exchange hold more than
        # state.db, which is never taken for a problem
        balance = self.rt.call("account", self.rt.exchange.fetch_balance, budget=budget)
        self.balance = balance
        self._positions(balance, rep)
        self._conclude(rep)
        return rep

    def _since(self) -> int | None:
        oldest = [o.created_at for o in self.rt.store.orders(states=LIVE)]
        marks = [t for t in [self.last, *oldest] if t]
        return int((min(marks) - MARGIN_S) * 1000) if marks else None

    def _missing_open(self, symbol: str, seen: set[str], budget: Budget, rep: Report) -> None:
        """OPEN here but absent from the exchange's list: ask for it by id before calling it a problem."""
        for o in self.rt.store.orders(states=("OPEN",), symbol=symbol):
            if o.client_order_id in seen:
                continue
            ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, symbol,
                              o.client_order_id, budget=budget)
            if ex is not None:
                self.orders.apply(o, ex, "reconcile: fetched by client order id")
                rep.updated_orders.append(o.client_order_id)
            elif self.rt.clock() - o.updated_at < self.rt.cfg.bot.unknown_grace_s + MARGIN_VISIBLE_S:
                continue  # acknowledged moments ago: venues show new orders late (eventual visibility)
            else:
                rep.problems.append({"kind": "order", "client_order_id": o.client_order_id,
                                     "symbol": symbol, "what": f"order {o.client_order_id} is OPEN in "
                                     "state.db but the exchange does not have it"})

    def _positions(self, balance: dict[str, Any], rep: Report) -> None:
        totals = balance.get("total") or {}
        for symbol, pos in self.rt.store.positions().items():
            if symbol not in self.rt.exchange.markets:
                continue
            base = self.rt.exchange.markets[symbol]["base"]
            have = as_float(totals.get(base))
            mine = as_float(pos.amount)
            step = amount_step(self.rt.exchange, symbol)
            if mine > have + max(POSITION_TOL, step / 2) or mine < -POSITION_TOL:
                rep.problems.append({
                    "kind": "position", "symbol": symbol, "state": mine, "exchange": max(have, 0.0),
                    "what": f"{symbol}: state.db holds {mine:g} {base} but the exchange balance is {have:g}"})

    def _conclude(self, rep: Report) -> None:
        now = self.rt.clock()
        self.last = now
        self.rt.store.kv_set(LAST_KEY, now)
        if rep.adopted_orders or rep.updated_orders or rep.adopted_fills:
            log.info("reconciliation: %s", rep.summary())
        if not rep.problems:
            if self._pending:  # the difference went away (someone put it right): nothing to adopt
                log.warning("reconciliation: the earlier differences are gone")
                self._set_pending([])
            return
        what = "; ".join(p["what"] for p in rep.problems)
        if what != self.attention():  # record a difference once, not on every pass
            recorder.record("reconcile.unexplained", SOURCE, what, severity="error", critical=True,
                            problems=rep.problems)
        self._set_pending(rep.problems)
        if self.rt.killswitch.check() is None:
            log.error("reconciliation found what it cannot explain; halting until `tradeguard resume`: %s", what)
            self.rt.engage_kill("halt", f"reconciliation: {what}"[:500])
