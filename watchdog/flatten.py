"""The emergency flatten's machinery (docs/DESIGN.md, "The emergency flatten"); the entry points
and the result type are in :mod:`watchdog.emergency`, which imports this module (and with it
ccxt) only when an emergency needs it.

Round after round, until nothing is left to sell, the exchange refuses (a non-retryable error)
or ``[watchdog] emergency_timeout_s`` passes, a :class:`Flattener`

1. learns what the exchange knows of the bot (``trading.history``): every order under its
   client-id prefix and every fill of them — orders that filled while the bot was down, orders
   state.db never heard of — adopted into state.db. With state.db lost (missing, quarantined)
   the bot's positions are rebuilt this way from ``[watchdog] flatten_lookback_h`` of history;
2. settles the orders in flight by client order id — its own emergency orders and the stopped
   bot's ``INTENT``/``SUBMITTING``/``UNKNOWN`` ones. An order of unknown outcome is possibly live
   until its fence has passed on the exchange's clock (``trading.fence``): until then nothing
   of that symbol is sold; a bot order still absent after it never arrived (never resent: a
   flatten only sells);
3. cancels every open order of the bot on the exchange, protective stops included;
4. sells the smaller of the bot's position and the exchange's free balance (the owner's other
   coins are never touched), rounded down to the lot step; a remainder below the market minimum
   is dust, recorded and left alone.

Each sell follows the order lifecycle (:class:`trading.orders.OrderBook`): intent committed
(origin ``watchdog``, purpose ``emergency``, id ``tg-<bot_id>-x<seq>``) before the request,
SUBMITTING, then the answer — or UNKNOWN, resolved by client order id behind the fence. No field
key is needed: without one (or with the wrong one) state.db is opened keyless (amounts, states
and positions are plain columns). Every step is black-boxed as a critical event.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ccxt

from blackbox import recorder
from resilience.classify import ErrorClass, classify
from resilience.keys import ensure_cipher
from resilience.killswitch import KillSwitch
from resilience.manager import ResilienceManager
from resilience.state import NewOrder, StateStore
from tradeguard.config import Config
from tradeguard.exceptions import (CircuitOpenError, RetryBudgetExhausted, TradeguardError,
                                   WrongKeyError)
from trading.exchange import (build_exchange, checked_order, create_order_params,
                              fetch_order_by_client_id, tradable_amount)
from trading.history import ExchangeHistory
from trading.orders import IN_FLIGHT, LIVE, MIN_MISSES, OrderBook
from trading.risk import RiskLimits
from trading.runtime import Runtime, StoppableBudget, TickDeadline
from watchdog.emergency import FlattenResult

log = logging.getLogger(__name__)

SOURCE = "watchdog.emergency"
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.2, 5.0
UNSETTLED_POLL_S = 1.0  # between rounds while an order's outcome or fills are not known yet
LEARN_MARGIN_S = 120.0  # how far before the newest known order the exchange's record is read


@dataclass(frozen=True)
class SellPlan:
    symbol: str
    amount: float      # min(position, free), rounded down to the lot step
    recorded: float    # the bot's position in state.db (after learning from the exchange)
    free: float        # free balance of the base asset on the exchange
    price: float


def _record(kind: str, message: str, *, severity: str = "warning", **fields: Any) -> None:
    recorder.record(f"emergency.{kind}", SOURCE, message, severity=severity, critical=True,
                    **fields)


class _Retry(Exception):
    """Something is not resolved yet; the next round tries again."""


class _Unsettled(_Retry):
    """An order's outcome or fills are not known yet: nothing failed, the next round looks
    again soon (its fence is a known time away; backing off would only delay the sale)."""


class Flattener:
    """Flatten rounds over one runtime (exchange client, resilience manager, state store)."""

    def __init__(self, rt: Runtime, stop: threading.Event, deadline: float, *, basis: str = "state.db"):
        self.rt, self.cfg, self.store, self.ex = rt, rt.cfg, rt.store, rt.exchange
        self.stop, self.deadline = stop, deadline
        self.basis = basis
        self.book = OrderBook(rt, RiskLimits(rt.cfg.risk))
        self.history = ExchangeHistory(rt, self.book, source=SOURCE,
                                       skip_archived=basis != "exchange")
        self.refused: dict[str, str] = {}
        self._misses: dict[str, int] = {}  # bot order -> "not found" answers past its fence
        self._learned_since: int | None = None

    def budget(self) -> StoppableBudget:
        return StoppableBudget(max(0.0, self.deadline - time.monotonic()), self.stop)

    # --- the run -------------------------------------------------------------------------
    def run(self, reason: str) -> FlattenResult:
        result = FlattenResult("failed", reason, basis=self.basis)
        _record("flatten_started", f"flatten started: {reason} (positions from {self.basis})",
                reason=reason, bot_id=self.rt.bot_id, basis=self.basis)
        backoff = BACKOFF_BASE_S  # after a failure; doubles while failures repeat
        while True:
            if self.stop.is_set():
                result.state = "aborted"
                break
            wait, failed = backoff, True
            try:
                if self.round(result):
                    result.state = "failed" if self.refused else "done"
                    break
                backoff = BACKOFF_BASE_S
                continue  # sold or learned something: re-plan at once; done only when settled
            except TickDeadline:  # the round's budget ended inside an exchange call
                if self.stop.is_set():
                    result.state = "aborted"
                    break
                result.errors.append(f"emergency_timeout_s={self.cfg.watchdog.emergency_timeout_s} "
                                     "reached during an exchange call")
                break
            except _Unsettled as e:
                result.errors.append(str(e))
                wait, failed = UNSETTLED_POLL_S, False
            except _Retry as e:
                result.errors.append(str(e))
            except (CircuitOpenError, RetryBudgetExhausted) as e:
                result.errors.append(str(e))
            except ccxt.BaseError as e:
                result.errors.append(f"{type(e).__name__}: {e}"[:300])
                if classify(e, state_changing=False) is ErrorClass.NOT_RETRYABLE:
                    _record("refused", f"the exchange refuses: {e}", severity="critical")
                    result.refused = True
                    break
            if time.monotonic() + wait > self.deadline:
                result.errors.append(f"emergency_timeout_s={self.cfg.watchdog.emergency_timeout_s} "
                                     "reached")
                break
            log.warning("flatten: retrying in %.1fs (%s)", wait, result.errors[-1])
            self.stop.wait(wait)
            if failed:
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self._finish(result)
        return result

    def round(self, result: FlattenResult) -> bool:
        """One pass; True when nothing is left to sell or settle (or what is left is refused)."""
        budget = self.budget()
        if not self.ex.markets:
            self.rt.call("market_data", self.ex.load_markets, budget=budget)
        learned = self.learn(result, budget)
        unresolved = self.resolve_own(result, budget)
        self.cancel_bot_orders(result, budget)
        self.book.sync_fills(budget)
        for cid in self.book.fills_pending():
            # filled, but the trades are not visible yet (eventual consistency): until they are,
            # the position is not known and nothing of that symbol is sold
            o = self.store.get_order(cid, decrypt=False)
            if o is not None and o.exchange_order_id:
                unresolved.setdefault(o.symbol, cid)
        plans, result.dust = self.plan(budget)
        result.remaining = {p.symbol: p.amount for p in plans}
        todo = [p for p in plans if p.symbol not in self.refused and p.symbol not in unresolved]
        sent = [self.sell(p, result, budget) for p in todo]
        if unresolved:
            raise _Unsettled(f"order(s) {', '.join(sorted(unresolved.values()))} unsettled (outcome "
                         "unknown until the fence, or fills not visible yet)")
        if not todo:
            return not learned  # whatever the exchange reported last time is now accounted for
        if not any(sent):
            raise _Retry("no sell could be sent (circuit breaker open or retry budget spent)")
        return False

    # --- steps ---------------------------------------------------------------------------
    def symbols(self) -> list[str]:
        held = [s for s, p in self.store.positions().items() if p.amount > 0]
        return list(dict.fromkeys([*self.cfg.exchange.symbols, *held]))

    def learn(self, result: FlattenResult, budget: StoppableBudget) -> bool:
        """Adopt the exchange's record of the bot's orders and fills; True if it changed
        state.db. The first pass reads back to what state.db knows (or, with no history, the
        look-back); later passes from the start of this run."""
        if self._learned_since is None:
            oldest_live, newest = self.store.order_times()
            if newest is None:
                since_s = time.time() - self.cfg.watchdog.flatten_lookback_h * 3600
                result.learned_from = since_s
            else:
                since_s = min(t for t in (oldest_live, newest) if t is not None) - LEARN_MARGIN_S
        else:
            since_s = self._learned_since / 1000
        started = time.time()
        rep = self.history.learn(self.symbols(), int(since_s * 1000), budget)
        self._learned_since = int((started - LEARN_MARGIN_S) * 1000)
        emergency = self.rt.prefix + "x"
        # an emergency sell an interrupted run left unsettled, settled now, is this run's too
        result.orders += [c for c in rep.updated_orders
                          if c.startswith(emergency) and c not in result.orders]
        if rep.adopted_orders or rep.updated_orders or rep.adopted_fills:
            result.adopted += len(rep.adopted_orders)
            _record("learned", f"from the exchange: {rep.summary()}", adopted=rep.adopted_orders,
                    updated=rep.updated_orders, fills=rep.adopted_fills)
            return True
        return False

    def resolve_own(self, result: FlattenResult, budget: StoppableBudget) -> dict[str, str]:
        """Settle the orders in flight (emergency ones, and the stopped bot's); returns
        {symbol: cid} still unresolved. The bot's OPEN orders are cancel_bot_orders' job."""
        unresolved: dict[str, str] = {}
        for o in self.store.orders(states=LIVE):
            mine = o.origin == "watchdog"
            if not mine and o.state not in IN_FLIGHT:
                continue
            cid = o.client_order_id
            if mine and cid not in result.orders:
                result.orders.append(cid)
            if o.state in ("INTENT", "SUBMITTING"):
                ex = self.rt.call("orders", fetch_order_by_client_id, self.ex, o.symbol, cid,
                                  budget=budget)
                if ex is not None:
                    if o.state == "INTENT":
                        o = self._transition(o, "SUBMITTING", "found on the exchange")
                    o = self.book.apply(o, ex, "emergency: found on the exchange by client order id")
                elif o.state == "INTENT":  # committed, never sent (SUBMITTING precedes the request)
                    who = "flatten" if mine else "bot"
                    o = self._transition(o, "CANCELED", f"not sent: the {who} stopped before "
                                         "submitting it")
                else:  # the request may be on its way: its fence starts now
                    o = self._transition(o, "UNKNOWN", "interrupted while submitting; not on the "
                                         "exchange yet")
            if o.state == "UNKNOWN" and mine:
                self.book.resolve(o, budget)  # an emergency sell is resent past its fence, same id
                o = self.store.get_order(cid)
            elif o.state == "UNKNOWN":
                o = self._settle_bot_unknown(o, budget)
            elif o.state == "OPEN" and mine:
                ex = self.rt.call("orders", fetch_order_by_client_id, self.ex, o.symbol, cid,
                                  budget=budget)
                if ex is not None:
                    o = self.book.apply(o, ex, "emergency: exchange update")
                if o.state == "OPEN":
                    self.book.cancel(o, "emergency: replaced by a fresh market sell", budget)
                    o = self.store.get_order(cid)
            if o.state in IN_FLIGHT or (mine and o.state == "OPEN"):
                unresolved[o.symbol] = cid
        return unresolved

    def _settle_bot_unknown(self, o: Any, budget: StoppableBudget) -> Any:
        """A bot order of unknown outcome: adopt what the exchange has, never resend it (a
        flatten only sells); absent MIN_MISSES times past its fence, it never arrived."""
        ex = self.rt.call("orders", fetch_order_by_client_id, self.ex, o.symbol,
                          o.client_order_id, budget=budget)
        if ex is not None:
            self._misses.pop(o.client_order_id, None)
            return self.book.apply(o, ex, "emergency: found on the exchange by client order id")
        if not self.book.fence.passed(o, budget):
            return o
        n = self._misses[o.client_order_id] = self._misses.get(o.client_order_id, 0) + 1
        if n < MIN_MISSES:
            return o
        return self._transition(o, "CANCELED", "never reached the exchange (absent past its "
                                "fence); not resubmitted during an emergency flatten")

    def cancel_bot_orders(self, result: FlattenResult, budget: StoppableBudget) -> None:
        """Cancel every open order of this bot on the exchange; record what the exchange says."""
        for symbol in self.symbols():
            for ex in self.rt.call("orders", self.ex.fetch_open_orders, symbol, budget=budget):
                cid = str(ex.get("clientOrderId") or "")
                if not cid.startswith(self.rt.prefix):
                    continue  # not the bot's: another program's order on the same account
                local = self.store.get_order(cid)
                if local is not None:
                    local = self.book.apply(local, ex, "emergency: open on the exchange")
                    self.book.cancel(local, "emergency flatten", budget)
                else:
                    try:
                        self.rt.call("orders", self.ex.cancel_order, ex["id"], symbol,
                                     budget=budget, state_changing=True)
                    except ccxt.OrderNotFound:
                        continue
                if cid not in result.canceled:
                    result.canceled.append(cid)
                _record("cancel", f"cancelled {cid}: {ex.get('side')} {ex.get('amount')} {symbol}",
                        client_order_id=cid, symbol=symbol, known_to_state_db=local is not None)

    def plan(self, budget: StoppableBudget) -> tuple[list[SellPlan], dict[str, float]]:
        """What to sell per symbol, and what is dust."""
        positions = {s: p.amount for s, p in self.store.positions().items()}
        free = self.rt.call("account", self.ex.fetch_balance, budget=budget).get("free") or {}
        plans, dust = [], {}
        for symbol in self.symbols():
            recorded = float(positions.get(symbol) or 0.0)
            if recorded <= 0:
                continue
            if symbol not in self.ex.markets:
                self.refused[symbol] = f"{symbol} is not a market of {self.ex.id}"
                continue
            have = float(free.get(self.ex.markets[symbol]["base"]) or 0.0)
            want = min(recorded, have)
            ticker = self.rt.call("market_data", self.ex.fetch_ticker, symbol, budget=budget)
            price = float(ticker.get("bid") or ticker.get("last") or 0.0)
            amount = tradable_amount(self.ex, symbol, want, price or None)
            if amount <= 0:
                if want > 0:
                    dust[symbol] = want
                    _record("dust", f"{symbol}: {want:g} is below the market minimum; left alone",
                            severity="info", symbol=symbol, amount=want, price=price)
                continue
            plans.append(SellPlan(symbol, amount, recorded, have, price))
        return plans, dust

    def sell(self, p: SellPlan, result: FlattenResult, budget: StoppableBudget) -> bool:
        """One market sell: intent committed first, then the lifecycle. False if not sent."""
        cid, seq = self.store.next_client_order_id(self.rt.bot_id, emergency=True)
        o = self.store.add_intent(NewOrder(
            client_order_id=cid, seq=seq, bot_id=self.rt.bot_id, origin="watchdog",
            purpose="emergency", symbol=p.symbol, side="sell", type="market", amount=p.amount,
            price=None))
        result.orders.append(cid)
        _record("intent", f"{cid}: sell {p.amount:g} {p.symbol} (position {p.recorded:g}, free "
                f"{p.free:g})", client_order_id=cid, symbol=p.symbol, amount=p.amount,
                recorded=p.recorded, free=p.free, price=p.price)
        return self._submit(o, budget)

    def _submit(self, o: Any, budget: StoppableBudget) -> bool:
        """Send one emergency order; False when nothing left (breaker open, budget spent)."""
        o = self._transition(o, "SUBMITTING", "emergency sell", attempts=int(o.attempts or 0) + 1)
        params = create_order_params(self.ex.id, o.client_order_id)
        try:
            resp = checked_order(self.rt.call(
                "orders", self.ex.create_order, o.symbol, "market", "sell", o.amount, None, params,
                budget=budget, state_changing=True))
        except (CircuitOpenError, RetryBudgetExhausted) as e:  # refused before any request left
            self._transition(o, "CANCELED", f"not sent: {e}")
            return False
        except Exception as e:  # noqa: BLE001 - every exchange error has a defined outcome
            reason = f"{type(e).__name__}: {e}"[:500]
            if classify(e, state_changing=True) is ErrorClass.NOT_RETRYABLE:
                self._transition(o, "REJECTED", "rejected by the exchange", reason=reason)
                self.refused[o.symbol] = reason
                _record("refused", f"{o.client_order_id} rejected: {reason}", severity="critical",
                        client_order_id=o.client_order_id)
            else:  # resolved by client order id in the next round, behind its fence
                self._transition(o, "UNKNOWN", f"outcome unknown: {reason}")
            return True
        self.book.apply(o, resp, "acknowledged")
        return True

    def _transition(self, o: Any, to_state: str, note: str, **fields: Any) -> Any:
        updated = self.store.transition(o.client_order_id, to_state, note=note, **fields)
        _record("order", f"{o.client_order_id} {o.state} -> {to_state}: {note}",
                client_order_id=o.client_order_id, from_state=o.state, to_state=to_state)
        return updated

    def _finish(self, result: FlattenResult) -> None:
        result.sold = {}
        for cid in result.orders:
            o = self.store.get_order(cid)
            if o is not None and float(o.filled or 0) > 0:
                result.sold[o.symbol] = result.sold.get(o.symbol, 0.0) + float(o.filled)
        if result.state != "done" and self.refused:
            result.refused = True
            result.errors += [f"{s}: the exchange refused: {why}" for s, why in self.refused.items()]
        if result.state == "done":
            result.remaining = {}
        elif not result.remaining:  # it failed before a plan: report what state.db holds
            result.remaining = {s: p.amount for s, p in self.store.positions().items()
                                if p.amount > 0}
        _record(f"flatten_{result.state}", f"flatten {result.state}: {result.summary()}",
                severity="critical" if result.state == "failed" else "warning",
                orders=result.orders, sold=result.sold, dust=result.dust, basis=result.basis,
                remaining=result.remaining, errors=result.errors[-5:])


def open_runtime(cfg: Config, *, exchange: Any | None = None) -> tuple[Runtime, str]:
    """The watchdog's own exchange client, resilience manager and state store, and where the
    bot's positions come from: ``state.db``, ``state.db (keyless)`` or ``exchange`` (state.db
    missing or quarantined: rebuilt from the exchange's record)."""
    paths = cfg.runtime

    def on_event(kind: str, message: str, **fields: Any) -> None:
        recorder.record(kind, SOURCE, message, severity="warning", critical=True, **fields)

    existed = paths.state_db.exists()
    try:
        cipher, _generated = ensure_cipher(paths, allow_generate=False)
    except TradeguardError as e:  # no field key: amounts and positions are plain columns
        _record("keyless", f"no field key ({e}); state.db opened without it", severity="error")
        cipher = None
    try:
        store = StateStore.open(paths.state_db, cipher, synchronous="FULL", on_event=on_event)
    except WrongKeyError as e:
        _record("keyless", f"the field key does not open state.db ({e}); opened without it",
                severity="error")
        cipher = None
        store = StateStore.open(paths.state_db, None, synchronous="FULL", on_event=on_event)
    if not existed or store.quarantined is not None:
        basis = "exchange"
    else:
        basis = "state.db" if cipher is not None else "state.db (keyless)"
    ex = exchange if exchange is not None else build_exchange(cfg, role="watchdog")
    rt = Runtime(cfg, ex, ResilienceManager(cfg.resilience), store, KillSwitch(paths.kill_file))
    return rt, basis


def run_flatten(cfg: Config, reason: str, stop: threading.Event, deadline: float,
                exchange: Any | None = None) -> FlattenResult:
    """Open the runtime and run the flatten rounds (the bot is proven dead)."""
    try:
        rt, basis = open_runtime(cfg, exchange=exchange)
    except Exception as e:  # noqa: BLE001 - reported as a failed flatten, with the reason
        log.exception("flatten could not start: %s", e)
        _record("flatten_failed", f"flatten could not start: {e}", severity="critical")
        return FlattenResult.failed(f"cannot start: {type(e).__name__}: {e}", reason)
    try:
        return Flattener(rt, stop, deadline, basis=basis).run(reason)
    finally:
        rt.store.close()


def what_is_left(cfg: Config) -> str | None:
    """What a flatten would still do (open bot orders, positions to sell), or None."""
    rt, basis = open_runtime(cfg)
    try:
        f = Flattener(rt, threading.Event(), time.monotonic() + cfg.bot.tick_deadline_s,
                      basis=basis)
        budget = f.budget()
        rt.call("market_data", rt.exchange.load_markets, budget=budget)
        plans, _dust = f.plan(budget)
        left = [f"{p.amount:g} {p.symbol} still held" for p in plans]
        left += [f"{s}: {why}" for s, why in f.refused.items()]
        n_open = sum(1 for s in f.symbols()
                     for o in rt.call("orders", rt.exchange.fetch_open_orders, s, budget=budget)
                     if str(o.get("clientOrderId") or "").startswith(rt.prefix))
        if n_open:
            left.append(f"{n_open} open bot order(s)")
    finally:
        rt.store.close()
    return "; ".join(left) or None
