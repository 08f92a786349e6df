"""The bot's loop. Each tick: kill switch -> market data -> strategy -> risk -> order actions ->
reconciliation when due -> heartbeat.

Nothing in a tick waits longer than ``[bot] tick_deadline_s`` on the exchange. A failing step is
logged and skipped — the loop and the heartbeat keep going; slow or failing dependencies show as
``degraded`` or ``safe`` (the resilience manager decides) instead of stopping the bot.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from typing import Any, Callable

import ccxt

from blackbox import recorder
from trading.failpoints import Leak
from bot.guard import Guard
from bot.marketdata import MarketFeed
from bot.probe import due_probes, probe
from tradeguard.notify import Notifier
from trading.orders import FILL_EPS, FINAL, REJECTED_ATTENTION, OrderBook, recent_submissions
from bot.reconcile import MARGIN_S, Reconciler
from resilience.state import Archiver
from trading.risk import RiskLimits
from trading.ratelimit import load_rate_limits
from trading.runtime import Budget, Runtime, StoppableBudget, TickDeadline
from trading.stops import ProtectiveStops, stop_policy
from bot.sizing import order_spec
from bot.strategy import (Balance, Cancel, FillEvent, LoadedStrategy, MarketData, OpenOrder,
                          PositionView, Target, TickContext, to_actions)
from bot.takeprofit import TakeProfits
from trading.pnl import average_entry, unrealized_pnl
from resilience.netcause import describe
from tradeguard.exceptions import CircuitOpenError, KillSwitchEngaged, RetryBudgetExhausted
from tradeguard.heartbeat import Heartbeat, HeartbeatFile

log = logging.getLogger(__name__)
SOURCE = "bot"
STRATEGY_KEY = "strategy.state"
ARCHIVE_SLICE_S, ARCHIVE_IDLE_S = 0.05, 60.0  # retention: time per tick; pause when nothing is due
FILLS_LOOKBACK_S = 86400.0  # startup: orders changed this long before the last pass may lack fills
WRITE_PROBE_KEY = "bot.write_probe"  # rewritten while in safe for a failed commit: is it back?
EXCHANGE_ERRORS = (ccxt.BaseError, CircuitOpenError, RetryBudgetExhausted, OSError)
WATCHDOG = "watchdog"  # KillState.by of a kill switch the watchdog engaged
FILL_EVENTS_MAX = 10000  # fills waiting for the strategy's on_fill; the oldest dropped beyond


class Bot:
    """One trading bot: the loop, startup recovery, the heartbeat, shutdown."""

    def __init__(self, rt: Runtime, strategy: LoadedStrategy, notifier: Notifier | None = None,
                 stop: threading.Event | None = None):
        self.rt = rt
        self.cfg = rt.cfg
        self.strategy = strategy
        self.notifier = notifier or Notifier({})
        self.stop = stop or threading.Event()
        self.symbols = list(self.cfg.exchange.symbols)
        self.risk = RiskLimits(self.cfg.risk, clock=rt.clock)
        self._new_fills: deque[FillEvent] = deque(maxlen=FILL_EVENTS_MAX)
        self.orders = OrderBook(rt, self.risk, on_fill=self._note_fill)
        for ts in recent_submissions(rt.store.path, time.time() - 60.0):  # the rate survives restarts
            self.risk.note_submitted(ts)
        s = strategy.instance
        self.feed = MarketFeed(rt, self.symbols, getattr(s, "timeframe", "1m"),
                               getattr(s, "ohlcv_limit", 0), getattr(s, "ohlcv_refresh_s", 10.0))
        self.reconciler = Reconciler(rt, self.orders, self.symbols, progress=self._adopting)
        self._adopted: dict[str, int] | None = None  # a long adoption's progress, for the heartbeat
        policy = stop_policy(self.cfg)  # ConfigError when the venue cannot hold the stops asked for
        self.stops = ProtectiveStops(rt, self.orders, policy, self.symbols) if policy else None
        self.take_profits = TakeProfits(rt.store)
        self._bare: set[str] = set()  # positions without their stop past the attention threshold
        self._balances: tuple[Any, dict[str, Balance]] = (None, {})  # (raw balance, its view)
        self._started = False  # the strategy's on_start ran
        ret = self.cfg.retention
        self.archiver = Archiver(rt.store, max_age_s=ret.archive_after_days * 86400.0,
                                 batch=ret.batch_orders) if ret.enabled else None
        self._archive_next = 0.0  # monotonic: when to look for old orders again
        self.guard = Guard(rt, self.orders, self.feed)
        self.leak = Leak()
        self.heartbeat_file = HeartbeatFile(self.cfg.runtime.heartbeat)
        self.seq = 0
        self.started_at = time.time()
        self.state = "starting"
        self.recovered = False
        self.stalled = False
        self.loop_ms = 0.0
        self._step_errors: dict[str, str] = {}  # step -> its last error, while it keeps failing
        self._faults: dict[str, str] = {}  # the subset not caused by the exchange
        self._degraded_skips = 0
        self._strategy_failures = 0  # consecutive ticks the strategy raised
        self._strategy_error = ""
        self._left_to_watchdog: float | None = None  # the watchdog flatten already logged
        self.store_fault: str | None = None  # why state.db could not commit, while it cannot

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Tick until asked to stop; then shut down in order. Returns the exit code."""
        self.write_heartbeat()
        interval = self.cfg.bot.loop_interval_s
        while not self.stop.is_set():
            t0 = time.monotonic()
            self.tick()
            self.stop.wait(max(0.0, interval - (time.monotonic() - t0)))
        self.shutdown()
        return 0

    def tick(self) -> None:
        """One iteration (see the module docstring); never raises, always ends with a heartbeat."""
        t0 = time.perf_counter()
        fps = self.rt.failpoints
        if fps:
            self._failpoints(fps)
        self.leak.tick()
        if self.stalled:  # failpoint: fresh ts, same seq, nothing else
            self.write_heartbeat(advance=False)
            return
        budget = StoppableBudget(self.cfg.bot.tick_deadline_s, self.stop)
        self.orders.forget_cache()
        kill = self.rt.killswitch.check()
        self.guard.note(kill)
        try:
            if not self.recovered:
                self._step("recovery", self.recover, budget)
                kill = self.rt.killswitch.check()  # recovery may have engaged it
            if self.recovered:
                self._trade(kill, budget)
                self._tell_fills()
        except KillSwitchEngaged as e:
            log.warning("tick stopped: %s", e)
        except Exception as e:  # noqa: BLE001 - a tick's failure must never end the bot
            log.exception("tick failed")
            recorder.record("bot.tick_error", SOURCE, f"{type(e).__name__}: {e}", severity="error")
        self.loop_ms = (time.perf_counter() - t0) * 1000
        self.write_heartbeat()

    def _failpoints(self, fps: Any) -> None:
        fp = fps.hit("loop.tick")
        if fp is not None and fp.action == "stall":
            log.warning("failpoint: stalling the loop (heartbeat keeps its seq)")
            self.stalled = True
        fp = fps.hit("memory")
        if fp is not None and fp.action == "leak":
            self.leak.start(fp.arg or 0)

    def _step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step; a failure is logged (once per new error) and the tick goes on."""
        try:
            out = fn(*args)
        except KillSwitchEngaged:
            raise
        except TickDeadline as e:
            log.debug("%s: %s", name, e)
            return None
        except Exception as e:  # noqa: BLE001 - see module docstring
            msg = describe(e)[:300]
            if isinstance(e, sqlite3.Error):
                self._commit_failed(name, e)
            exchange_side = isinstance(e, EXCHANGE_ERRORS)
            if not exchange_side:
                self._faults[name] = msg  # not the exchange's doing: a person should look
            if self._step_errors.get(name) != msg:
                self._step_errors[name] = msg
                level = logging.WARNING if exchange_side else logging.ERROR
                log.log(level, "%s failed: %s", name, msg, exc_info=not exchange_side)
                recorder.record("bot.step_error", SOURCE, f"{name}: {msg}",
                                severity="warning" if exchange_side else "error", step=name)
            return None
        if name in self._step_errors:
            log.info("%s works again", name)
            del self._step_errors[name]
            self._faults.pop(name, None)
        return out

    # --- startup recovery ----------------------------------------------------------------
    def recover(self, budget: Budget) -> None:
        """Resolve every in-flight order, adopt what happened while down, reconcile; then READY."""
        rt, store = self.rt, self.rt.store
        if not rt.exchange.markets:
            rt.call("market_data", rt.exchange.load_markets, budget=budget)
        load_rate_limits(rt, budget)
        full = bool(store.quarantined or store.needs_reconciliation)
        if full:
            log.warning("state.db needs rebuilding from the exchange (quarantined=%s); rebuilding before "
                        "trading", store.quarantined)
        self.orders.recover_stranded(budget)
        previous = self.reconciler.last
        rep = self.reconciler.run(budget, full=full)
        if full:
            store.set_needs_reconciliation(False, reason=f"rebuilt from the exchange: {rep.summary()}")
            recorder.record("reconcile.rebuilt", SOURCE, f"state.db rebuilt from the exchange: {rep.summary()}",
                            severity="warning", critical=True)
        self.guard.note_balance(self.reconciler.balance)
        # fills still to record: orders with a fill changed since the pass before this start
        # (older ones were settled by that pass); an indexed range, nothing decrypted
        since = (previous or time.time()) - max(FILLS_LOOKBACK_S, MARGIN_S)
        self.orders.want_fills(store.order_ids(("OPEN", "FILLED", "CANCELED"), updated_since=since,
                                               filled_only=True))
        if self.stops is not None and rt.killswitch.check() is None and not self.reconciler.pending():
            # every position has its stop before the strategy runs
            self._step("market data", self.feed.refresh, budget)
            self.orders.sync_fills(budget)
            self.stops.maintain(self.feed.prices, budget)
        self._restore_strategy()
        self._tell_fills()  # what recovery adopted (a stop that sold while down) before the strategy acts
        self.recovered = True
        log.info("recovered: %s; trading", rep.summary())
        recorder.record("bot.recovered", SOURCE, f"startup recovery done: {rep.summary()}")
        self._start_strategy()
        self.notifier.ready(self.status_text(self.current_state()))

    def _start_strategy(self) -> None:
        """The strategy's ``on_start`` once, with what a tick would show (``market`` may be empty)."""
        on_start = getattr(self.strategy.instance, "on_start", None)
        if self._started or not callable(on_start):
            return
        self._started = True
        try:
            on_start(self._context({}, self.rt.manager.degradation(kill_state=self.rt.killswitch.check())))
        except Exception as e:  # noqa: BLE001 - a strategy's bug never stops the bot
            self._strategy_raised("on_start failed", e)

    def _stop_strategy(self) -> None:
        """The strategy's ``on_stop`` once, on a clean shutdown after it was started."""
        on_stop = getattr(self.strategy.instance, "on_stop", None)
        if not self._started or not callable(on_stop):
            return
        self._started = False
        try:
            on_stop()
        except Exception as e:  # noqa: BLE001 - a strategy's bug never stops the shutdown
            self._strategy_raised("on_stop failed", e)

    def _restore_strategy(self) -> None:
        saved = self.rt.store.kv_get(STRATEGY_KEY)
        restore = getattr(self.strategy.instance, "restore", None)
        if saved is not None and callable(restore):
            try:
                restore(saved)
            except Exception as e:  # noqa: BLE001 - a strategy's old state must not stop the bot
                log.warning("strategy state not restored: %s", e)

    def save_strategy(self) -> None:
        """Keep the strategy's own state (``snapshot()``) in state.db for the next start."""
        snap = getattr(self.strategy.instance, "snapshot", None)
        if not callable(snap):
            return
        try:
            state = snap()
            if state is not None:
                self.rt.store.kv_set(STRATEGY_KEY, state)
        except sqlite3.Error as e:
            self._commit_failed("strategy state", e)
        except Exception as e:  # noqa: BLE001
            log.warning("strategy state not saved: %s", e)

    # --- trading -------------------------------------------------------------------------
    def _trade(self, kill: Any, budget: Budget) -> None:
        if self.store_fault is not None and not self._store_writable():
            # safe: nothing is sent that could not first be recorded — no order, no cancel
            self._step("market data", self.feed.refresh, budget)
            return
        if kill is None and self.reconciler.pending():
            self.reconciler.adopt_exchange_truth()
            self._step("reconciliation", self._reconcile, budget)
        market = self._step("market data", self.feed.refresh, budget) or {}
        self._step("unknown orders", self.orders.resolve_pending, budget)
        self._step("open orders", self.orders.follow_open, budget)
        self._step("fills", self.orders.sync_fills, budget)
        kill = self.guard.check_daily_loss(kill)
        degradation = self.rt.manager.degradation(kill_state=kill)
        if kill is not None and kill.mode == "flatten" and kill.by == WATCHDOG:
            self._leave_flatten_to_watchdog(kill)
        elif kill is not None:
            self._step("kill switch", self.guard.cancel_for, kill, budget)
            if kill.mode == "flatten":
                self._step("flatten", self.guard.flatten, kill, budget)
        elif degradation == "safe":
            self._step("safe mode", self.orders.cancel_where, lambda o: o.purpose == "entry",
                       "safe mode: no entries while dependencies are down", budget)
        elif market:
            self._step("take-profit", self._take_profit, degradation, budget)
            actions = self._run_strategy(market, degradation)
            if actions:
                self._execute(actions, degradation, budget)
                self._step("fills", self.orders.sync_fills, budget)
        if self.stops is not None and kill is None and degradation != "safe":
            self._step("protective stops", self.stops.maintain, self.feed.prices, budget)
        if time.time() - (self.reconciler.last or 0) >= self.cfg.bot.reconcile_interval_s:
            self._step("reconciliation", self._reconcile, budget)
        self._step("retention", self._archive, budget)
        for dependency in due_probes(self.rt.manager):
            self._step(f"{dependency} probe", probe, self.rt, dependency, budget)

    def _archive(self, budget: Budget) -> None:
        """Retention: a few short batches of old closed orders to the archives, with what is
        left of the tick; once nothing is due, look again a minute later."""
        if self.archiver is None or time.monotonic() < self._archive_next or budget.expired():
            return
        if not self.archiver.step(time_limit_s=min(ARCHIVE_SLICE_S, budget.remaining())):
            self._archive_next = time.monotonic() + ARCHIVE_IDLE_S

    def _commit_failed(self, step: str, e: sqlite3.Error) -> None:
        """state.db could not commit (disk full, I/O error, read-only...): the bot goes ``safe``
        until a write succeeds again."""
        reason = f"state.db cannot commit ({step}): {e}"[:300]
        if self.store_fault is None:
            log.critical("%s; safe mode: no orders until state.db can be written", reason)
            recorder.record("bot.store_fault", SOURCE, f"{reason}; safe mode until it can be "
                            "written", severity="critical", critical=True, step=step)
        self.store_fault = reason

    def _store_writable(self) -> bool:
        """One small committed write: does state.db take writes again?"""
        try:
            self.rt.store.kv_set(WRITE_PROBE_KEY, time.time())
        except sqlite3.Error as e:
            self.store_fault = f"state.db cannot commit: {e}"[:300]
            return False
        log.warning("state.db takes writes again (was: %s); leaving safe mode", self.store_fault)
        recorder.record("bot.store_recovered", SOURCE, f"state.db takes writes again (was: "
                        f"{self.store_fault})", severity="warning", critical=True)
        self.store_fault = None
        return True

    def _leave_flatten_to_watchdog(self, kill: Any) -> None:
        """Never two sellers: a flatten the watchdog engaged is the watchdog's to carry out (it
        ends this bot first). The bot sends nothing — no sale, no cancel, no new order."""
        if self._left_to_watchdog != kill.at:
            self._left_to_watchdog = kill.at
            log.warning("kill switch (flatten) engaged by the watchdog: no orders; the watchdog "
                        "sells: %s", kill.reason)
            recorder.record("bot.flatten_left_to_watchdog", SOURCE, "the watchdog carries out this "
                            f"flatten; the bot sends nothing: {kill.reason}", severity="warning",
                            critical=True)

    def _adopting(self, rep: Any) -> None:
        """A long adoption from the exchange (a lost state.db rebuilt from months of orders) is
        progress: a heartbeat every half second of it, saying how far it got, so the watchdog
        does not take the busy loop for a hung one."""
        self._adopted = {"orders": len(rep.adopted_orders), "fills": rep.adopted_fills}
        self.write_heartbeat()

    def _reconcile(self, budget: Budget) -> None:
        self.reconciler.run(budget)
        self.guard.note_balance(self.reconciler.balance)
        self.save_strategy()

    def _note_fill(self, fill: Any, order: Any) -> None:
        self._new_fills.append(FillEvent(fill.client_order_id or order.client_order_id, fill.symbol,
                                         fill.side, fill.amount, fill.price, fill.fee,
                                         fill.fee_currency, order.purpose, fill.ts))

    def _tell_fills(self) -> None:
        """The strategy's ``on_fill`` for each new fill; a raise is the strategy's bug, isolated."""
        on_fill = getattr(self.strategy.instance, "on_fill", None)
        while self._new_fills:
            f = self._new_fills.popleft()
            if not callable(on_fill):
                continue
            try:
                on_fill(f)
            except Exception as e:  # noqa: BLE001 - a strategy's bug is isolated to its call
                log.error("strategy on_fill failed for %s: %s: %s", f.client_order_id,
                          type(e).__name__, e, exc_info=True)
                recorder.record("strategy.error", SOURCE, f"on_fill failed: {type(e).__name__}: "
                                f"{e}"[:500], severity="error", strategy=self.strategy.spec)

    def _take_profit(self, degradation: str, budget: Budget) -> None:
        """Exit the positions whose bot-held take-profit is reached (bot/takeprofit.py)."""
        exits = self.take_profits.due(self.rt.store.positions(), self.feed.prices,
                                      self.orders.live_orders())
        if exits:
            self._execute(exits, degradation, budget)
            self._step("fills", self.orders.sync_fills, budget)

    def _run_strategy(self, market: dict[str, MarketData], degradation: str) -> list[Any]:
        ctx = self._context(market, degradation)
        try:
            actions = to_actions(self.strategy.instance.on_tick(ctx))
            self._strategy_failures = 0
            return actions
        except Exception as e:  # noqa: BLE001 - a strategy's bug is isolated to its tick
            self._strategy_raised("strategy failed; tick skipped", e)
            return []

    def _strategy_raised(self, what: str, e: Exception) -> None:
        """A raise in the strategy's code: logged, recorded, counted towards needs_attention."""
        msg = f"{type(e).__name__}: {e}"[:500]
        self._strategy_failures += 1
        self._strategy_error = msg
        log.error("strategy %s: %s: %s", self.strategy.spec, what, msg, exc_info=True)
        recorder.record("strategy.error", SOURCE, f"{what}: {msg}", severity="error",
                        strategy=self.strategy.spec)

    def _context(self, market: dict[str, MarketData], degradation: str) -> TickContext:
        open_orders = tuple(self.open_orders())
        stops = {o.symbol: o.stop_price for o in open_orders
                 if o.purpose == "protective" and o.state == "OPEN" and o.stop_price is not None}
        views: dict[str, PositionView] = {}
        for symbol, p in self.rt.store.positions().items():
            if abs(p.amount) <= FILL_EPS:
                continue
            entry = average_entry(p.amount, p.cost)
            views[symbol] = PositionView(p.amount, entry,
                                         unrealized_pnl(p.amount, p.cost, self.feed.prices.get(symbol)),
                                         stops.get(symbol), self.take_profits.price(symbol, entry))
        return TickContext(time.time(), market, self.positions(), open_orders, degradation,
                           views, self.balances())

    def balances(self) -> dict[str, Balance]:
        """Free and total per currency from the last balance read (reconciliation's; no request)."""
        raw = self.reconciler.balance
        if raw is not self._balances[0]:
            free, total = ((raw.get("free") or {}), (raw.get("total") or {})) if raw else ({}, {})
            view = {str(c): Balance(float(free.get(c) or 0.0), float(t))
                    for c, t in total.items() if isinstance(t, (int, float))}
            self._balances = (raw, view)
        return dict(self._balances[1])

    def _execute(self, actions: list[Any], degradation: str, budget: Budget) -> None:
        for a in actions:
            if budget.expired():
                log.info("tick budget spent; %d actions left for later ticks", len(actions))
                return
            if isinstance(a, Cancel):
                self._cancel_action(a, budget)
                continue
            self._note_take_profit(a, degradation)
            book = self.orders.book(self.feed.prices)
            spec = order_spec(self.rt.exchange, a, self.feed.prices.get(a.symbol), book)
            if spec is None:
                continue
            if degradation != "running" and spec.purpose != "exit":
                self._degraded_skips += 1
                if self._degraded_skips == 1 or self._degraded_skips % 100 == 0:
                    log.info("%s: entry not sent (exits only) [%d skipped]", degradation, self._degraded_skips)
                continue
            if spec.side == "sell" and self.stops is not None and self.stops.live(spec.symbol):
                if self.orders.rejections.wait_s(spec.symbol, spec.purpose) > 0 or \
                        not self.rt.order_can_go(budget):
                    continue  # the sell could not go now: the stop stays until it can
                if not self._step("release stop", self.stops.release, spec.symbol, budget):
                    # spot: the stop locks the coins. Canceled first; the sell waits for a later tick
                    # while the cancel is unconfirmed or the stop traded (the position changed)
                    continue
                self.rt.failpoints.hit("exit.after_stop_cancel")  # chaos: the unprotected window
            if spec.purpose == "entry" and getattr(a, "stop_loss_pct", None) is not None:
                self._strategy_stop(spec.symbol, a.stop_loss_pct)
            self._step("order", self.orders.place, spec, book, budget)

    def _strategy_stop(self, symbol: str, pct: float) -> None:
        """The strategy's own stop distance for this position (until it is flat again)."""
        if self.stops is None:
            log.warning("strategy asked for a %g %% stop on %s, but protective stops are off "
                        "([risk] stop_loss_pct = 0): none is placed", pct, symbol)
            return
        self.stops.set_pct(symbol, pct)

    def _note_take_profit(self, a: Any, degradation: str) -> None:
        """An entry's ``take_profit_pct`` applies to its symbol's position until it is flat."""
        pct = getattr(a, "take_profit_pct", None)
        if pct is None or degradation != "running":  # entries are sent only while running
            return
        if isinstance(a, Target) and a.amount <= self.positions().get(a.symbol, 0.0):
            return  # a target that does not add is no entry (an Order with it is a buy)
        self.take_profits.set_pct(a.symbol, pct)

    def _cancel_action(self, a: Cancel, budget: Budget) -> None:
        o = self.rt.store.get_order(a.client_order_id)
        if o is None or not o.client_order_id.startswith(self.rt.prefix) or o.state in FINAL:
            return
        self._step("cancel", self.orders.cancel, o, a.reason, budget)

    # --- views ---------------------------------------------------------------------------
    def positions(self) -> dict[str, float]:
        return {s: p.amount for s, p in self.rt.store.positions().items()}

    def open_orders(self) -> list[OpenOrder]:
        return [OpenOrder(o.client_order_id, o.symbol, o.side, o.type, o.amount,
                          o.price, o.filled, o.state, o.purpose, o.created_at,
                          o.reason or "", self.stops.stop_price(o.client_order_id)
                          if self.stops is not None and o.purpose == "protective" else None)
                for o in self.orders.live_orders()]

    def current_state(self) -> str:
        if self.stop.is_set():
            return "stopping"
        if not self.recovered:
            return "starting" if self.seq == 0 else "safe"
        kill = self.rt.killswitch.check()
        self.guard.note(kill)  # the heartbeat's kill_switch and state agree
        if self.store_fault is not None:
            return "safe"  # state.db cannot commit: nothing may be sent
        if self.reconciler.pending():
            return "safe"  # until the exchange's truth is adopted (after `tradeguard resume`)
        return self.rt.manager.degradation(kill_state=kill)

    def status_text(self, state: str | None = None, positions: dict[str, float] | None = None) -> str:
        """One line for systemd's STATUS=: state, positions, kill switch."""
        positions = self.positions() if positions is None else positions
        pos = " ".join(f"{s}={a:g}" for s, a in sorted(positions.items()))
        kill = f"; kill switch {self.guard.mode}" if self.guard.mode else ""
        return f"{state or self.state}; positions {pos or 'none'}{kill}"

    def heartbeat_detail(self, positions: dict[str, float]) -> dict[str, Any]:
        """The heartbeat's ``detail`` (docs/INTERNALS.md, "Heartbeat and pid file")."""
        m = self.rt.manager
        stops = self._stops_report()
        if not self.recovered:
            attention = self._step_errors.get("recovery") and \
                f"startup recovery pending: {self._step_errors['recovery']}"
        else:
            attention = self.store_fault or self.reconciler.attention() or "; ".join(
                f"{step} failing: {msg}" for step, msg in self._faults.items())
            attention = "; ".join(filter(None, (attention, self._strategy_attention(),
                                                self._stops_attention(stops),
                                                self._rejections_attention())))
        return {
            "bot_id": self.rt.bot_id, "started_at": self.started_at, "degradation": self.state,
            "breakers": m.breaker_states(), "positions": positions,
            "open_orders": len(self.orders.live_orders()), "kill_switch": self.guard.mode,
            "last_reconcile": self.reconciler.last, "needs_attention": attention or None,
            "loop_ms": round(self.loop_ms, 3), "exchange": m.stats(), "pnl": self._pnl_detail(),
            "store_fault": self.store_fault, "stops": stops, "stops_missing": sorted(self._bare),
            "rejections": self.orders.rejections.report(),
            "adopting": None if self.recovered else self._adopted,
        }

    def _pnl_detail(self) -> dict[str, Any]:
        """What P&L reports need besides state.db (trading.pnl): prices, equity, the day's start."""
        start = self.guard.daily.start
        return {"prices": dict(self.feed.prices), "equity": self.guard.equity,
                "day_start": None if start is None else
                {"day": start.day, "pnl": start.pnl, "equity": start.equity}}

    def _stops_report(self) -> dict[str, Any] | None:
        """Each position's protective stop (None when stops are off)."""
        if self.stops is None or not self.recovered:
            return None
        try:
            return self.stops.report(self.feed.prices)
        except sqlite3.Error as e:
            log.warning("protective stops not reported: %s", e)
            return None

    def _stops_attention(self, stops: dict[str, Any] | None) -> str | None:
        """Positions without a stop on the exchange for longer than ``[risk] stop_missing_attention_s``."""
        now, limit = time.time(), self.cfg.risk.stop_missing_attention_s
        bare = sorted(s for s, v in (stops or {}).items()
                      if v["state"] == "missing" and now - v["since"] >= limit)
        if stops is not None or self.stops is None:  # None with stops on: not known this time
            self._note_bare(set(bare), limit)
        return f"no protective stop on the exchange for {', '.join(bare)} for over {limit:g} s" \
            if bare else None

    def _note_bare(self, bare: set[str], limit: float) -> None:
        """One black-box event when a position's stop has been missing past the threshold, one
        when it is covered again (or flat); the watchdog alerts on ``detail.stops_missing``."""
        for symbol in sorted(bare - self._bare):
            log.error("%s: no protective stop on the exchange for over %g s", symbol, limit)
            recorder.record("stops.missing", SOURCE, f"{symbol}: the position has had no protective "
                            f"stop on the exchange for over {limit:g} s", severity="critical",
                            critical=True, symbol=symbol)
        for symbol in sorted(self._bare - bare):
            log.warning("%s: protective stop back on the exchange (or no position left)", symbol)
            recorder.record("stops.missing_cleared", SOURCE, f"{symbol}: no longer without a "
                            "protective stop", severity="warning", symbol=symbol)
        self._bare = bare

    def _rejections_attention(self) -> str | None:
        """Set while the exchange has rejected REJECTED_ATTENTION orders in a row of a symbol and
        purpose (an exit it keeps refusing leaves the position to its stop alone)."""
        keys = self.orders.rejections.persistent(REJECTED_ATTENTION)
        return f"the exchange keeps rejecting orders: {', '.join(keys)} (held back between " \
               "tries; see detail.rejections)" if keys else None

    def _strategy_attention(self) -> str | None:
        """Set while the strategy has raised on ``[bot] strategy_failures_attention`` ticks in a row."""
        n = self._strategy_failures
        if n < self.cfg.bot.strategy_failures_attention:
            return None
        return f"strategy failing: raised on {n} consecutive ticks, no orders from it (last: " \
               f"{self._strategy_error})"

    def write_heartbeat(self, advance: bool = True, state: str | None = None) -> None:
        """Replace bot.heartbeat (seq + 1 unless ``advance`` is False) and tell systemd."""
        new_state = state or self.current_state()
        if new_state != self.state:
            log.info("state %s -> %s", self.state, new_state)
            recorder.record("bot.state", SOURCE, f"{self.state} -> {new_state}", from_state=self.state,
                            to_state=new_state)
            self.state = new_state
        if advance:
            self.seq += 1
        positions = self.positions()
        try:
            self.heartbeat_file.write(Heartbeat(
                os.getpid(), time.time(), self.seq, self.state, self.heartbeat_detail(positions)))
        except Exception as e:  # noqa: BLE001 - a full disk must not kill the loop
            log.error("heartbeat not written: %s", e)
        self.notifier.tick(self.status_text(positions=positions))

    # --- shutdown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop new orders, cancel entries if configured, record fills still due, persist, record."""
        log.info("stopping")
        self.write_heartbeat(advance=False, state="stopping")
        self.notifier.stopping()
        budget = Budget.start(min(5.0, self.cfg.bot.tick_deadline_s))
        if self.recovered and self.cfg.bot.cancel_entries_on_stop:
            n = self._step("cancel on stop", self.orders.cancel_where, lambda o: o.purpose == "entry",
                           "bot stopping (cancel_entries_on_stop)", budget)
            if n:
                log.info("canceled %d entry orders on stop", n)
        if self.recovered:  # an order acknowledged as the signal came (or just canceled) leaves fills
            self._step("fills on stop", self.orders.sync_fills, budget)
            self._tell_fills()
        self._stop_strategy()
        self.save_strategy()
        try:
            self.rt.store.checkpoint()
        except Exception as e:  # noqa: BLE001
            log.warning("checkpoint on stop failed: %s", e)
        recorder.record("bot.stopped", SOURCE, "bot stopped on request", critical=True,
                        positions=self.positions())
        try:
            self.heartbeat_file.close()
        except OSError as e:
            log.warning("heartbeat spare not removed: %s", e)
