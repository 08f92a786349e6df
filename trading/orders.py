"""The order lifecycle (DESIGN.md, "The order lifecycle"): never place an order twice for one
intent, never forget an order that reached the exchange.

``INTENT`` is committed before anything is sent, ``SUBMITTING`` right before the HTTP call. An
unknown outcome (timeout, reset, 5xx, unreadable 2xx) moves the order to ``UNKNOWN``; later ticks
fetch it by client order id with backoff and resubmit it — with the same id — only once the fence
has passed on the exchange's clock (``trading.fence``: the request can no longer execute) and the
exchange has said "no such order" several times after it. The id alone protects nothing: the
exchange accepts a reused id once the earlier order is filled or canceled. A duplicate means the
order exists: it is fetched. A non-retryable error rejects the intent with the reason. Fills come
from the exchange's trades for the order (those an answer carries, then the trade history) and
are added idempotently (trade id).
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import ccxt

from blackbox import recorder
from trading.exchange import checked_order, create_order_params, fetch_order_by_client_id
from trading.fence import Fence
from trading.rejections import RejectBackoff
from trading.risk import Book, Proposal, RiskLimits
from trading.runtime import Budget, Runtime, TickDeadline
from resilience.classify import ErrorClass, classify
from resilience.state import TERMINAL, Fill, NewOrder, Order
from tradeguard.exceptions import CircuitOpenError, KillSwitchEngaged, RiskLimitExceeded

log = logging.getLogger(__name__)
SOURCE = "trading.orders"

FINAL = tuple(sorted(TERMINAL))
IN_FLIGHT = ("INTENT", "SUBMITTING", "UNKNOWN")
LIVE = ("OPEN",) + IN_FLIGHT
REJECTED_ATTENTION = 3  # rejections in a row of one symbol and purpose that need a person
STATUS_TO_STATE = {"open": "OPEN", "closed": "FILLED", "canceled": "CANCELED",
                   "cancelled": "CANCELED", "expired": "CANCELED", "rejected": "REJECTED"}
MIN_MISSES = 3  # "not found" answers after the fence needed before a resubmission
MISS_INTERVAL_S = 0.5  # between those answers
BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 5.0
FILL_EPS = 1e-12
STOP_PRICE_KEY = "stop_price.{}"  # kv: the trigger price of a protective order, by client order id
BLOCKED_REPEAT_S = 60.0  # a risk block is reported once a minute per limit and symbol


@dataclass(frozen=True)
class OrderSpec:
    """An order the bot wants to send (after sizing), with what it is for."""

    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    purpose: str  # entry | exit | protective
    ref_price: float  # to value it for the risk limits
    tag: str = ""
    stop_price: float | None = None  # a resting stop-loss (purpose protective) triggers here


@dataclass
class _Unresolved:
    next_check: float
    backoff: float = BACKOFF_START_S
    misses: int = 0


def exchange_state(ex_order: dict[str, Any]) -> str | None:
    return STATUS_TO_STATE.get(str(ex_order.get("status") or "").lower())


def as_float(value: Any, default: float = 0.0) -> float:
    """A finite float from an exchange value (str, number, None), else ``default``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def recent_submissions(db: Path, since: float) -> list[float]:
    """When the bot's orders created since ``since`` (unix s) were sent: the order-rate limit
    survives a restart. A read-only query on plain columns of ``orders`` (docs/INTERNALS.md)."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT created_at FROM orders WHERE created_at >= ? AND attempts > 0 "
                           "AND origin = 'bot' ORDER BY created_at", (since,)).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


class OrderBook:
    """Places, resolves, follows and cancels the bot's orders; records fills."""

    def __init__(self, rt: Runtime, risk: RiskLimits,
                 on_fill: Callable[[Fill, Order], None] | None = None):
        self.rt = rt
        self.risk = risk
        self.on_fill = on_fill  # told of every fill recorded for the first time
        self.fence = Fence(rt)
        self._unresolved: dict[str, _Unresolved] = {}
        self._fills_due: set[str] = set()
        self._cancel_wanted: dict[str, str] = {}
        self._live: list[Order] | None = None  # cached live orders; every order write clears it
        self._blocks: dict[tuple[str, str], tuple[float, int]] = {}  # (limit, symbol) -> (reported, since)
        self.rejections = RejectBackoff()

    # --- helpers -------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        return self.rt.store

    def live_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders not final yet (OPEN or in flight), oldest first."""
        if self._live is None:
            self._live = self.store.orders(states=LIVE)
        return [o for o in self._live if symbol is None or o.symbol == symbol]

    def forget_cache(self) -> None:
        """Read live orders from state.db again (each tick: another process may have written)."""
        self._live = None

    def add(self, order: NewOrder) -> Order:
        """Commit a new order as INTENT."""
        self._live = None
        return self.store.add_intent(order)

    def book(self, prices: dict[str, float]) -> Book:
        """Positions, prices and amounts still open in live orders, for the risk limits."""
        b = Book({s: p.amount for s, p in self.store.positions().items()}, dict(prices))
        for o in self.live_orders():
            if o.purpose == "protective":
                continue  # the stop sells the position's own coins; an exit releases it first
            left = max(0.0, as_float(o.amount) - as_float(o.filled))
            side = b.open_buys if o.side == "buy" else b.open_sells
            side[o.symbol] = side.get(o.symbol, 0.0) + left
        return b

    def transition(self, o: Order, to_state: str, note: str, **fields: Any) -> Order:
        """Move ``o`` to ``to_state`` in state.db (audited) and record it."""
        before = o.state
        self._live = None
        updated = self.store.transition(o.client_order_id, to_state, note=note, **fields)
        if to_state != before:
            recorder.record("order.state", SOURCE, f"{o.client_order_id} {before} -> {to_state}: {note}",
                            client_order_id=o.client_order_id, symbol=o.symbol,
                            from_state=before, to_state=to_state, note=note)
        if to_state not in IN_FLIGHT:
            self._unresolved.pop(o.client_order_id, None)
        if to_state in FINAL:
            self._cancel_wanted.pop(o.client_order_id, None)
        return updated

    def _guard(self, o: Order, flattening: bool) -> None:
        """The kill switch, checked again right before a submission."""
        kill = self.rt.killswitch.check()
        if kill is None or (flattening and kill.mode == "flatten"):
            return
        self.transition(o, "CANCELED", f"not sent: kill switch ({kill.mode}): {kill.reason}")
        raise KillSwitchEngaged(kill.mode, kill.reason)

    # --- placing -------------------------------------------------------------------------
    def place(self, spec: OrderSpec, book: Book, budget: Budget, *, flattening: bool = False) -> Order | None:
        """Risk check, intent, submission. Returns the stored order, or None when blocked by risk
        or held back after the exchange rejected the last ones of its symbol and purpose.

        Raises KillSwitchEngaged when the kill switch stopped it (the intent is then CANCELED).
        """
        if self.rejections.wait_s(spec.symbol, spec.purpose) > 0:
            return None
        try:
            self.risk.check(Proposal(spec.symbol, spec.side, spec.amount, spec.ref_price), book)
        except RiskLimitExceeded as e:
            self._blocked(spec, e)
            return None
        cid, seq = self.store.next_client_order_id(self.rt.bot_id)
        if spec.stop_price is not None:  # kept before the intent: a resubmission sends the same stop
            self.store.kv_set(STOP_PRICE_KEY.format(cid), spec.stop_price)
        o = self.add(NewOrder(
            client_order_id=cid, seq=seq, bot_id=self.rt.bot_id, origin="bot", purpose=spec.purpose,
            symbol=spec.symbol, side=spec.side, type=spec.type, amount=spec.amount, price=spec.price,
            reason=spec.tag))
        recorder.record("order.intent", SOURCE, f"{cid}: {spec.type} {spec.side} {spec.amount:g} {spec.symbol}"
                        + (f" @ {spec.price:g}" if spec.price else ""), critical=True,
                        client_order_id=cid, symbol=spec.symbol, side=spec.side, type=spec.type,
                        amount=spec.amount, price=spec.price, purpose=spec.purpose, tag=spec.tag)
        self.rt.failpoints.hit("orders.after_intent")
        self._guard(o, flattening)
        return self._note_outcome(self._submit(o, budget, note="submitting"))

    def _note_outcome(self, o: Order) -> Order:
        """Feed the rejection back-off: a rejection holds this symbol and purpose back for a
        while (trading.rejections); anything the exchange took clears it; "not sent" neither."""
        if o.state == "REJECTED":
            run = self.rejections.rejected(o.symbol, o.purpose, o.reason or "rejected")
            wait = self.rejections.wait_s(o.symbol, o.purpose)
            log.warning("%s %s orders held back %.1f s: the exchange rejected %d in a row (%s)",
                        o.symbol, o.purpose, wait, run.count, run.reason)
            recorder.record("orders.rejected_backoff", SOURCE, f"{o.symbol} {o.purpose}: rejected "
                            f"{run.count} in a row; the next waits {wait:.1f} s: {run.reason}"[:500],
                            severity="error" if run.count >= REJECTED_ATTENTION else "warning",
                            critical=run.count == 1, symbol=o.symbol, purpose=o.purpose,
                            count=run.count, wait_s=wait)
        elif o.state != "CANCELED":
            ended = self.rejections.accepted(o.symbol, o.purpose)
            if ended is not None:
                log.info("%s %s: the exchange took an order again after %d rejections", o.symbol,
                         o.purpose, ended.count)
                recorder.record("orders.rejected_cleared", SOURCE, f"{o.symbol} {o.purpose}: "
                                f"accepted again after {ended.count} rejections", severity="info",
                                symbol=o.symbol, purpose=o.purpose, count=ended.count)
        return o

    def _blocked(self, spec: OrderSpec, e: RiskLimitExceeded) -> None:
        """Log and record a blocked order — once a minute per limit and symbol, with a count."""
        key = (e.limit, spec.symbol)
        now = time.monotonic()
        first, count = self._blocks.get(key, (-BLOCKED_REPEAT_S, 0))
        if now - first < BLOCKED_REPEAT_S:
            self._blocks[key] = (first, count + 1)
            return
        self._blocks[key] = (now, 0)
        more = f" (and {count} more since the last report)" if count else ""
        log.warning("risk: blocked %s %s %g %s: %s%s", spec.type, spec.side, spec.amount, spec.symbol, e, more)
        recorder.record("risk.blocked", SOURCE, f"{e}{more}", severity="warning", limit=e.limit,
                        symbol=spec.symbol, side=spec.side, amount=spec.amount, purpose=spec.purpose,
                        suppressed=count)

    def _submit(self, o: Order, budget: Budget, note: str) -> Order:
        rt = self.rt
        params: dict[str, Any] = create_order_params(rt.exchange.id, o.client_order_id)
        if o.purpose == "protective":  # a resting stop-loss: ccxt's unified trigger parameter
            stop = self.store.kv_get(STOP_PRICE_KEY.format(o.client_order_id))
            if not isinstance(stop, (int, float)):
                return self.transition(o, "CANCELED", "not sent: its stop price is not recorded")
            params["stopLossPrice"] = float(stop)
        o = self.transition(o, "SUBMITTING", note, attempts=int(o.attempts or 0) + 1)
        self.risk.note_submitted()
        rt.failpoints.hit("orders.before_submit")
        try:
            resp = checked_order(rt.call("orders", rt.exchange.create_order, o.symbol, o.type, o.side,
                                         o.amount, o.price, params, budget=budget, state_changing=True))
        except (CircuitOpenError, TickDeadline) as e:
            # refused before any request left (an open breaker, a spent tick, the rate limit held
            # it back): nothing can exist on the exchange. Not a rejection: no back-off
            return self.transition(o, "CANCELED", f"not sent: {e}")
        except Exception as e:  # noqa: BLE001 - every exchange error has a defined outcome
            return self._submit_failed(o, e, budget)
        rt.failpoints.hit("orders.after_submit")
        o = self.apply(o, resp, "acknowledged")
        rt.failpoints.hit("orders.after_ack")
        return o

    def _submit_failed(self, o: Order, exc: BaseException, budget: Budget) -> Order | None:
        kind = classify(exc, state_changing=True)
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if kind is ErrorClass.NOT_RETRYABLE:
            log.warning("order %s rejected: %s", o.client_order_id, reason)
            return self.transition(o, "REJECTED", "rejected by the exchange", reason=reason)
        if kind is ErrorClass.DUPLICATE:
            log.info("order %s: the exchange already has it; fetching it", o.client_order_id)
            o = self.transition(o, "UNKNOWN", f"duplicate: {reason}")
            self._unresolved[o.client_order_id] = _Unresolved(next_check=0.0)
            self.resolve(o, budget)
            return self.store.get_order(o.client_order_id)
        log.warning("order %s: outcome unknown (%s); resolving by client order id", o.client_order_id, reason)
        self._unresolved[o.client_order_id] = _Unresolved(next_check=time.monotonic() + BACKOFF_START_S)
        return self.transition(o, "UNKNOWN", f"outcome unknown: {reason}")

    # --- what the exchange says ----------------------------------------------------------
    def apply(self, o: Order, ex: dict[str, Any], note: str) -> Order:
        """Bring the stored order in line with the exchange's view of it."""
        state = exchange_state(ex) or o.state
        if o.state in FINAL and state != o.state:
            # a final state is never reopened; the exchange's fills still count (fields below)
            log.warning("order %s is %s here but %s on the exchange; keeping %s, taking its fills",
                        o.client_order_id, o.state, state, o.state)
            state = o.state
        fields: dict[str, Any] = {}
        if ex.get("id") and str(ex["id"]) != o.exchange_order_id:
            fields["exchange_order_id"] = str(ex["id"])
        filled = as_float(ex.get("filled"), as_float(o.filled))
        if filled != as_float(o.filled):
            fields["filled"] = filled
        average = ex.get("average")
        if average is not None and as_float(average) != as_float(o.average):
            fields["average"] = as_float(average)
        if state == o.state and not fields:
            return o
        o = self.transition(o, state, note, **fields)
        if filled > FILL_EPS:
            self._fills_due.add(o.client_order_id)
            self._take_reported_trades(o, ex)
        return o

    def _take_reported_trades(self, o: Order, ex: dict[str, Any]) -> None:
        """Record the trades an answer carries (Binance's ``FULL`` create response lists its
        fills with their trade ids): the same trades, under the same ids, that the trade
        history returns later, so the position is known at once instead of after a fetch that
        eventual visibility may delay. What is missing is still fetched (``sync_fills``)."""
        trades = [t for t in ex.get("trades") or [] if t.get("id") is not None]
        if not trades or not o.exchange_order_id:
            return
        ts = ex.get("lastTradeTimestamp") or ex.get("timestamp")
        self.add_trades(o, [{**t, "order": t.get("order") or o.exchange_order_id,
                             "side": t.get("side") or o.side,
                             "timestamp": t.get("timestamp") or ts} for t in trades])
        if self.store.recorded_fill_amount(o.client_order_id) >= as_float(o.filled) - FILL_EPS \
                and o.state in FINAL:
            self._fills_due.discard(o.client_order_id)

    def resolve(self, o: Order, budget: Budget) -> None:
        """One attempt to learn the outcome of an UNKNOWN (or stranded SUBMITTING) order.

        Found: adopted. Not found: counts as evidence only once the fence has passed on the
        exchange's clock (trading.fence); MIN_MISSES such answers and it never reached the
        exchange — it is resubmitted with the same id."""
        u = self._unresolved.setdefault(o.client_order_id, _Unresolved(next_check=0.0))
        now = time.monotonic()
        if now < u.next_check or budget.expired():
            return
        try:
            ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, o.symbol,
                              o.client_order_id, budget=budget)
            past_fence = ex is None and self.fence.passed(o, budget)
        except Exception as e:  # noqa: BLE001 - try again later, with backoff
            u.next_check, u.backoff = now + u.backoff, min(u.backoff * 2, BACKOFF_MAX_S)
            log.info("order %s still unresolved: %s", o.client_order_id, e)
            return
        if ex is not None:
            self._unresolved.pop(o.client_order_id, None)
            self.apply(o, ex, "resolved: found on the exchange by client order id")
            return
        if past_fence:
            u.misses += 1
            if u.misses >= MIN_MISSES:
                self._resubmit(o, budget)
            else:
                u.next_check = now + MISS_INTERVAL_S
            return
        # before the fence: keep looking (a late execution shows up), and be there when it passes
        u.next_check = now + max(min(u.backoff, self.fence.local_wait_s(o)), BACKOFF_START_S)
        u.backoff = min(u.backoff * 2, BACKOFF_MAX_S)

    def _resubmit(self, o: Order, budget: Budget) -> None:
        """The exchange kept saying it never got the order: send it again, with the same id."""
        kill = self.rt.killswitch.check()
        if kill is not None and not (kill.mode == "flatten" and o.purpose in ("exit", "emergency")):
            self.transition(o, "CANCELED", f"not resubmitted: kill switch ({kill.mode}): {kill.reason}")
            return
        self._unresolved.pop(o.client_order_id, None)
        log.warning("order %s never reached the exchange; resubmitting with the same id", o.client_order_id)
        self._submit(o, budget, note="resubmitting with the same id: past the fence, the exchange "
                                     "keeps saying 'order does not exist'")

    def resolve_pending(self, budget: Budget) -> None:
        """Work on every UNKNOWN order (and SUBMITTING ones a previous run left behind)."""
        for o in [o for o in self.live_orders() if o.state in ("UNKNOWN", "SUBMITTING")]:
            if budget.expired():
                return
            self.resolve(o, budget)

    def recover_stranded(self, budget: Budget) -> None:
        """At startup: every INTENT/SUBMITTING/UNKNOWN order a previous run left, asked for by id.

        Found -> adopt the exchange's state. Not found: an INTENT was never sent (SUBMITTING is
        committed before the request), so it is CANCELED; a SUBMITTING one becomes UNKNOWN and is
        resolved by the loop like any other (the fence, then a same-id resubmission).
        """
        for o in self.store.orders(states=IN_FLIGHT):
            ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, o.symbol,
                              o.client_order_id, budget=budget)
            if ex is not None:
                if o.state == "INTENT":
                    o = self.transition(o, "SUBMITTING", "found on the exchange at startup")
                self.apply(o, ex, "startup: found on the exchange by client order id")
            elif o.state == "INTENT":
                self.transition(o, "CANCELED", "not sent: the bot stopped before submitting it")
            elif o.state == "SUBMITTING":
                self.transition(o, "UNKNOWN", "startup: interrupted while submitting; not on the exchange yet")

    def follow_open(self, budget: Budget) -> None:
        """Refresh OPEN orders from the exchange (fills, external cancels) and retry wanted cancels."""
        open_orders = [o for o in self.live_orders() if o.state == "OPEN"]
        for symbol in sorted({o.symbol for o in open_orders}):
            if budget.expired():
                return
            listed = {str(x.get("clientOrderId")): x for x in
                      self.rt.call("orders", self.rt.exchange.fetch_open_orders, symbol, budget=budget)}
            for o in (x for x in open_orders if x.symbol == symbol):
                ex = listed.get(o.client_order_id)
                if ex is None:  # no longer open there: filled or canceled; fetch the final word
                    ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, symbol,
                                      o.client_order_id, budget=budget)
                    if ex is None:
                        log.warning("order %s is OPEN here but unknown to the exchange", o.client_order_id)
                        continue  # reconciliation decides
                o = self.apply(o, ex, "exchange update")
                if o.state == "OPEN" and o.client_order_id in self._cancel_wanted:
                    self.cancel(o, self._cancel_wanted[o.client_order_id], budget)

    # --- canceling -----------------------------------------------------------------------
    def cancel(self, o: Order, reason: str, budget: Budget) -> None:
        """Ask the exchange to cancel; an unknown outcome is retried on the next tick."""
        self._cancel_wanted[o.client_order_id] = reason
        if not o.exchange_order_id:
            return  # not acknowledged yet: follow_open/resolve will learn its id first
        try:
            ex = self.rt.call("orders", self.rt.exchange.cancel_order, o.exchange_order_id, o.symbol,
                              budget=budget, state_changing=True)
        except ccxt.OrderNotFound:
            ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, o.symbol,
                              o.client_order_id, budget=budget)
            if ex is None:
                return
        except Exception as e:  # noqa: BLE001 - retried next tick; the order stays OPEN meanwhile
            log.info("cancel of %s did not complete (%s); retrying next tick", o.client_order_id, e)
            return
        if not exchange_state(ex) or ex.get("filled") is None:
            ex = self.rt.call("orders", fetch_order_by_client_id, self.rt.exchange, o.symbol,
                              o.client_order_id, budget=budget) or ex
        self.apply(o, ex, f"canceled: {reason}")

    def cancel_where(self, pred: Any, reason: str, budget: Budget) -> int:
        """Cancel every OPEN order matching ``pred``; returns how many were asked to cancel."""
        n = 0
        for o in [o for o in self.live_orders() if o.state == "OPEN"]:
            if pred(o) and not budget.expired():
                self.cancel(o, reason, budget)
                n += 1
        return n

    # --- fills ---------------------------------------------------------------------------
    def fills_pending(self) -> set[str]:
        """Orders the exchange says filled (in part) whose fills are not all recorded yet."""
        return set(self._fills_due)

    def want_fills(self, cids: Iterable[str]) -> None:
        self._fills_due.update(cids)

    def sync_fills(self, budget: Budget) -> None:
        """Fetch the trades of orders whose recorded fills fall short of what the exchange filled.

        The set holds work in hand only (orders with fills still to record): each check reads
        two indexed rows and decrypts nothing; an order is read whole only to fetch its trades."""
        for cid in sorted(self._fills_due):
            if budget.expired():
                return
            o = self.store.get_order(cid, decrypt=False)
            if o is None or not o.exchange_order_id:
                self._fills_due.discard(cid)
                continue
            if self.store.recorded_fill_amount(cid) >= as_float(o.filled) - FILL_EPS:
                if o.state in FINAL or o.state == "OPEN":
                    self._fills_due.discard(cid)
                continue
            trades = self.rt.call("account", self.rt.exchange.fetch_order_trades, o.exchange_order_id,
                                  o.symbol, budget=budget)
            self.add_trades(o, trades)
            if self.store.recorded_fill_amount(cid) >= as_float(o.filled) - FILL_EPS:
                self._fills_due.discard(cid)

    def add_trades(self, o: Order, trades: Iterable[dict[str, Any]]) -> int:
        """Record the exchange's trades of order ``o``; returns how many were new."""
        new = 0
        for t in trades:
            if str(t.get("order")) != str(o.exchange_order_id) or t.get("id") is None:
                continue
            fee = t.get("fee") or {}
            fill = Fill(fill_id=str(t["id"]), client_order_id=o.client_order_id,
                        exchange_order_id=str(o.exchange_order_id), symbol=o.symbol,
                        side=str(t.get("side") or o.side), amount=as_float(t.get("amount")),
                        price=as_float(t.get("price")), fee=as_float(fee.get("cost")),
                        fee_currency=fee.get("currency"),
                        ts=as_float(t.get("timestamp")) / 1000.0 or time.time(), raw=t.get("info"))
            if self.store.add_fill(fill):
                new += 1
                if self.on_fill is not None:
                    self.on_fill(fill, o)
                recorder.record("order.fill", SOURCE, f"{o.client_order_id}: {fill.side} {fill.amount:g} "
                                f"{fill.symbol} @ {fill.price:g}", client_order_id=o.client_order_id,
                                fill_id=fill.fill_id, symbol=fill.symbol, side=fill.side,
                                amount=fill.amount, price=fill.price, fee=fill.fee)
        return new
