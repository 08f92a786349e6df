"""Emergency flatten: cancel the bot's orders and sell only what the bot owns.

:func:`flatten` is what the watchdog runs when the bot cannot be brought back (usable on its
own too). Round after round, until nothing is left to sell, the exchange refuses (a
non-retryable error) or ``[watchdog] emergency_timeout_s`` passes, it

1. resolves the orders still in flight — the emergency orders an earlier, interrupted run left
   behind and, once the bot is stopped, the bot's own ``INTENT``/``SUBMITTING``/``UNKNOWN``
   orders (a buy that filled while the bot died before recording it is part of what must be
   sold) — by client order id, never by sending a new id for an order whose outcome is unknown
   (an ``INTENT`` that the exchange does not have was never sent: it is cancelled, as the bot
   does at startup; a bot order the exchange still lacks after ``unknown_grace_s`` is cancelled,
   never resent: a flatten only sells);
2. cancels the bot's open orders on the exchange (client order id prefix ``tg-<bot_id>-``) and
   records their final state and fills in ``state.db``;
3. sells the smaller of the position recorded in ``state.db`` and the exchange's free balance,
   rounded down to the market's lot step; a remainder below the market minimum is dust,
   recorded and left alone.

Each sell follows the bot's order lifecycle (it reuses :class:`trading.orders.OrderBook`): intent
committed (origin ``watchdog``, purpose ``emergency``, id ``tg-<bot_id>-x<seq>``) before the
request, SUBMITTING, then the exchange's answer — or UNKNOWN, resolved by client order id with
the same-id resubmission rule. Every step is black-boxed as a critical event.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ccxt

from blackbox import recorder
from trading.runtime import StoppableBudget
from trading.exchange import (build_exchange, checked_order, create_order_params,
                          fetch_order_by_client_id, tradable_amount)
from trading.orders import IN_FLIGHT, LIVE, OrderBook
from trading.risk import RiskLimits
from trading.runtime import Runtime
from resilience.classify import ErrorClass, classify
from resilience.keys import ensure_cipher
from resilience.killswitch import KillSwitch
from resilience.manager import ResilienceManager
from resilience.state import NewOrder, StateStore
from tradeguard.config import Config
from tradeguard.exceptions import CircuitOpenError, RetryBudgetExhausted

log = logging.getLogger(__name__)

SOURCE = "watchdog.emergency"
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.2, 5.0


@dataclass(frozen=True)
class SellPlan:
    symbol: str
    amount: float      # min(recorded, free), rounded down to the lot step
    recorded: float    # the bot's position in state.db
    free: float        # free balance of the base asset on the exchange
    price: float


@dataclass
class FlattenResult:
    state: str                                              # done | failed | aborted
    reason: str = ""
    orders: list[str] = field(default_factory=list)         # emergency client order ids
    canceled: list[str] = field(default_factory=list)       # the bot's orders cancelled
    sold: dict[str, float] = field(default_factory=dict)
    dust: dict[str, float] = field(default_factory=dict)
    remaining: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    refused: bool = False  # the exchange said no (non-retryable): trying again will not help

    @classmethod
    def failed(cls, error: str, reason: str = "") -> "FlattenResult":
        return cls("failed", reason, errors=[error])

    def summary(self) -> str:
        parts = [f"sold {_fmt(self.sold) or 'nothing'} in {len(self.orders)} order(s)",
                 f"cancelled {len(self.canceled)} bot order(s)"]
        if self.dust:
            parts.append(f"dust left {_fmt(self.dust)}")
        if self.remaining:
            parts.append(f"STILL HELD {_fmt(self.remaining)}")
        if self.errors:
            parts.append(f"last error: {self.errors[-1]}")
        return "; ".join(parts)


def _fmt(amounts: dict[str, float]) -> str:
    return ", ".join(f"{a:g} {s}" for s, a in sorted(amounts.items()))


def _record(kind: str, message: str, *, severity: str = "warning", **fields: Any) -> None:
    recorder.record(f"emergency.{kind}", SOURCE, message, severity=severity, critical=True,
                    **fields)


class _Retry(Exception):
    """Something is not resolved yet; the next round tries again."""


class Flattener:
    """Flatten rounds over one runtime (exchange client, resilience manager, state store)."""

    def __init__(self, rt: Runtime, stop: threading.Event, deadline: float, *,
                 bot_stopped: bool = True):
        self.rt, self.cfg, self.store, self.ex = rt, rt.cfg, rt.store, rt.exchange
        self.stop, self.deadline = stop, deadline
        self.bot_stopped = bot_stopped  # only then are the bot's own orders ours to settle
        self._bot_missing: dict[str, float] = {}  # cid -> when the exchange first lacked it
        self.book = OrderBook(rt, RiskLimits(rt.cfg.risk))
        self.refused: dict[str, str] = {}

    def budget(self) -> StoppableBudget:
        return StoppableBudget(max(0.0, self.deadline - time.monotonic()), self.stop)

    # --- the run -------------------------------------------------------------------------
    def run(self, reason: str) -> FlattenResult:
        result = FlattenResult("failed", reason)
        _record("flatten_started", f"flatten started: {reason}", reason=reason,
                bot_id=self.rt.bot_id)
        delay = BACKOFF_BASE_S
        while True:
            if self.stop.is_set():
                result.state = "aborted"
                break
            try:
                if self.round(result):
                    result.state = "failed" if self.refused else "done"
                    break
                delay = BACKOFF_BASE_S
                continue  # sold something: re-plan at once; done only when nothing is left
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
            if time.monotonic() + delay > self.deadline:
                result.errors.append(f"emergency_timeout_s={self.cfg.watchdog.emergency_timeout_s} "
                                     "reached")
                break
            log.warning("flatten: retrying in %.1fs (%s)", delay, result.errors[-1])
            self.stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        self._finish(result)
        return result

    def round(self, result: FlattenResult) -> bool:
        """One pass; True when nothing is left to sell (or what is left is refused)."""
        budget = self.budget()
        if not self.ex.markets:
            self.rt.call("market_data", self.ex.load_markets, budget=budget)
        unresolved = self.resolve_own(result, budget)
        self.cancel_bot_orders(result, budget)
        self.book.sync_fills(budget)
        plans, result.dust = self.plan(budget)
        result.remaining = {p.symbol: p.amount for p in plans}
        todo = [p for p in plans if p.symbol not in self.refused and p.symbol not in unresolved]
        sent = [self.sell(p, result, budget) for p in todo]
        if unresolved:
            raise _Retry(f"order(s) {', '.join(sorted(unresolved.values()))} still unresolved; "
                         "resolving by client order id")
        if not todo:
            return True
        if not any(sent):
            raise _Retry("no sell could be sent (circuit breaker open or retry budget spent)")
        return False

    # --- steps ---------------------------------------------------------------------------
    def symbols(self) -> list[str]:
        held = [s for s, p in self.store.positions().items() if p.amount > 0]
        return list(dict.fromkeys([*self.cfg.exchange.symbols, *held]))

    def resolve_own(self, result: FlattenResult, budget: StoppableBudget) -> dict[str, str]:
        """Settle the orders in flight (emergency ones, and the stopped bot's); returns
        {symbol: cid} still unresolved. The bot's OPEN orders are cancel_bot_orders' job."""
        unresolved: dict[str, str] = {}
        for o in self.store.orders(states=LIVE):
            mine = o.origin == "watchdog"
            if not mine and not (self.bot_stopped and o.state in IN_FLIGHT):
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
                else:
                    o = self._transition(o, "UNKNOWN", "interrupted while submitting; not on the "
                                         "exchange yet")
            if o.state == "UNKNOWN" and mine:
                self.book.resolve(o, budget)  # an emergency sell may be resent, same id
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
        flatten only sells); still absent after ``unknown_grace_s``, it never arrived."""
        ex = self.rt.call("orders", fetch_order_by_client_id, self.ex, o.symbol,
                          o.client_order_id, budget=budget)
        if ex is not None:
            return self.book.apply(o, ex, "emergency: found on the exchange by client order id")
        first = self._bot_missing.setdefault(o.client_order_id, time.monotonic())
        if time.monotonic() - first < self.cfg.bot.unknown_grace_s:
            return o
        return self._transition(o, "CANCELED", "never reached the exchange; not resubmitted "
                                "during an emergency flatten")

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
        _record("intent", f"{cid}: sell {p.amount:g} {p.symbol} (recorded {p.recorded:g}, free "
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
            else:  # resolved by client order id in the next round
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
                orders=result.orders, sold=result.sold, dust=result.dust,
                remaining=result.remaining, errors=result.errors[-5:])


def open_runtime(cfg: Config, *, exchange: Any | None = None) -> Runtime:
    """The watchdog's own exchange client, resilience manager and state store, as a Runtime."""
    paths = cfg.runtime
    cipher, _generated = ensure_cipher(paths, allow_generate=False)

    def on_event(kind: str, message: str, **fields: Any) -> None:
        recorder.record(kind, SOURCE, message, severity="warning", critical=True, **fields)

    store = StateStore.open(paths.state_db, cipher, synchronous="FULL", on_event=on_event)
    ex = exchange if exchange is not None else build_exchange(cfg, role="watchdog")
    return Runtime(cfg, ex, ResilienceManager(cfg.resilience), store, KillSwitch(paths.kill_file))


def flatten(cfg: Config, reason: str, *, stop: threading.Event | None = None,
            exchange: Any | None = None, bot_stopped: bool = True) -> FlattenResult:
    """Cancel the bot's orders and sell what it owns; returns the outcome, never raises for
    exchange trouble (a flatten that cannot even start is a failed flatten).

    ``bot_stopped=False`` (the bot could not be stopped) leaves the bot's orders in flight to
    the bot: two writers must not settle the same order."""
    deadline = time.monotonic() + cfg.watchdog.emergency_timeout_s
    if not cfg.runtime.state_db.exists():
        msg = f"no {cfg.runtime.state_db}: the bot has no recorded position to sell"
        _record("flatten_done", msg)
        return FlattenResult("done", reason, errors=[msg])
    try:
        rt = open_runtime(cfg, exchange=exchange)
    except Exception as e:  # noqa: BLE001 - reported as a failed flatten, with the reason
        log.exception("flatten could not start: %s", e)
        _record("flatten_failed", f"flatten could not start: {e}", severity="critical")
        return FlattenResult.failed(f"cannot start: {type(e).__name__}: {e}", reason)
    try:
        return Flattener(rt, stop or threading.Event(), deadline,
                         bot_stopped=bot_stopped).run(reason)
    finally:
        rt.store.close()


def pending_flatten(cfg: Config) -> str | None:
    """What a flatten would still do (open bot orders, positions to sell), or None.

    Verifies that a healthy bot carried out a ``flatten`` kill switch itself.
    """
    if not cfg.runtime.state_db.exists():
        return None
    rt = open_runtime(cfg)
    try:
        f = Flattener(rt, threading.Event(), time.monotonic() + cfg.bot.tick_deadline_s)
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
