"""What the bot's parts share: the exchange, the resilience manager, the state store, the kill
switch, failpoints and the clock — plus the per-tick time budget on the exchange."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from blackbox import recorder
from trading.failpoints import Failpoints
from trading.ratelimit import RateGovernor
from tradeguard.config import Config


MIN_TIMEOUT_MS = 100


class TickDeadline(Exception):
    """This tick's time on the exchange is spent; the step waits for the next tick."""


@dataclass
class Budget:
    """How long this tick may still wait on the exchange (monotonic deadline)."""

    deadline: float

    @classmethod
    def start(cls, seconds: float) -> "Budget":
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


class StoppableBudget(Budget):
    """A tick budget that also ends when the bot is asked to stop (SIGTERM) or a flatten is told to stop."""

    def __init__(self, seconds: float, stop: threading.Event):
        super().__init__(time.monotonic() + seconds)
        self.stop = stop

    def remaining(self) -> float:
        return 0.0 if self.stop.is_set() else super().remaining()

    def expired(self) -> bool:
        return self.stop.is_set() or super().expired()


@dataclass
class Runtime:
    cfg: Config
    exchange: Any  # ccxt.Exchange
    manager: Any  # resilience.manager.ResilienceManager
    store: Any  # resilience.state.StateStore
    killswitch: Any  # resilience.killswitch.KillSwitch
    failpoints: Failpoints = field(default_factory=Failpoints)
    clock: Callable[[], float] = time.time
    governor: RateGovernor = field(default_factory=RateGovernor)

    @property
    def bot_id(self) -> str:
        return self.cfg.bot.bot_id

    @property
    def prefix(self) -> str:
        """Client order ids of this bot (and of the watchdog's emergency orders for it)."""
        return f"tg-{self.cfg.bot.bot_id}-"

    def engage_kill(self, mode: str, reason: str) -> Any:
        """Engage the kill switch on the bot's own judgement, and record it (critical)."""
        state = self.killswitch.engage(mode, reason, by="bot")
        recorder.record("kill.engaged", "bot", f"kill switch engaged ({mode}) by the bot: {reason}",
                        severity="critical", critical=True, mode=mode, reason=reason, by="bot")
        return state

    def call(self, dependency: str, fn: Callable[..., Any], *args: Any, budget: Budget | None = None,
             state_changing: bool = False, **kwargs: Any) -> Any:
        """One exchange call through the resilience manager, bounded by the tick's budget.

        A read waits at most what is left of the budget (the client's timeout is lowered to it);
        a spent budget raises TickDeadline without calling. A state-changing call always gets the
        full client timeout: cutting it short would only turn answers into unknown outcomes.
        """
        name = getattr(fn, "__name__", "call")
        self._hold_back(name, state_changing, budget)
        timeout = self.cfg.exchange.timeout_ms
        if budget is not None:
            left = budget.remaining()
            if left <= 0:
                raise TickDeadline(f"tick deadline reached before {name}")
            if not state_changing:
                timeout = max(MIN_TIMEOUT_MS, min(timeout, int(left * 1000)))
        self.exchange.timeout = timeout
        try:
            return self.manager.call(dependency, fn, *args, state_changing=state_changing,
                                     deadline=budget.deadline if budget else None, **kwargs)
        finally:
            self.governor.observe(getattr(self.exchange, "last_response_headers", None))

    def order_can_go(self, budget: Budget) -> bool:
        """Would a new order be sent now, rather than refused as TickDeadline (budget spent, or
        held back by the venue's rate window for longer than the budget has left)?"""
        left = budget.remaining()
        return left > 0 and self.governor.order_wait_s() < left

    def _hold_back(self, name: str, state_changing: bool, budget: Budget | None) -> None:
        """Wait out the venue's rate window when its headers say we are near a limit: reads and
        new orders only (a cancel is never held back); within the budget, else TickDeadline."""
        if state_changing and name != "create_order":
            return
        wait = self.governor.order_wait_s() if state_changing else self.governor.read_wait_s()
        if wait <= 0:
            return
        if budget is not None and wait >= budget.remaining():
            raise TickDeadline(f"{name} held back: near the exchange's rate limit for "
                               f"{wait:.1f} s more")
        recorder.record("exchange.rate_hold", "trading.runtime", f"{name} waits {wait:.2f} s: "
                        "near the exchange's rate limit", weight=self.governor.weight_used,
                        orders=self.governor.orders_used)
        time.sleep(wait)
