"""Emergency flatten: cancel the bot's orders and sell only what the bot owns.

:func:`flatten` is what the watchdog runs when the bot cannot be brought back (usable on its own
too); :func:`pending_flatten` tells whether a healthy bot carried out a ``flatten`` kill switch
itself. The machinery is in :mod:`watchdog.flatten`, imported — with ccxt and the order machinery
— only when one of these runs, so that a watchdog with nothing to do stays small.

Guarantees (docs/DESIGN.md, "The emergency flatten"): the exchange is the truth (the bot's orders
and fills are learned from it before any sale, and with state.db lost its positions are rebuilt
from it); it sells only once the bot is proven dead (``bot_stopped``); nothing is declared "never
sent" before the fence; it sells the smaller of the bot's position and the free balance; it needs
no field key; it can be killed and run again at any point.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from blackbox import recorder
from tradeguard.config import Config

SOURCE = "watchdog.emergency"


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
    basis: str = "state.db"  # where the bot's positions came from (state.db, keyless, exchange)
    learned_from: float | None = None  # rebuilt from the exchange's record since (unix s)
    adopted: int = 0  # orders of the bot found on the exchange that state.db did not have

    @classmethod
    def failed(cls, error: str, reason: str = "") -> "FlattenResult":
        return cls("failed", reason, errors=[error])

    def summary(self) -> str:
        parts = [f"sold {_fmt(self.sold) or 'nothing'} in {len(self.orders)} order(s)",
                 f"cancelled {len(self.canceled)} bot order(s)"]
        if self.adopted:
            parts.append(f"{self.adopted} bot order(s) learned from the exchange")
        if self.learned_from is not None:
            since = datetime.fromtimestamp(self.learned_from, timezone.utc)
            parts.append(f"state.db was lost: positions rebuilt from the exchange's record since "
                         f"{since:%Y-%m-%d %H:%M} UTC ([watchdog] flatten_lookback_h); coins the "
                         "bot bought before that cannot be told from the owner's and were left")
        if self.dust:
            parts.append(f"dust left {_fmt(self.dust)}")
        if self.remaining:
            parts.append(f"STILL HELD {_fmt(self.remaining)}")
        if self.errors and self.state != "done":
            parts.append(f"last error: {self.errors[-1]}")
        elif self.errors:  # what it waited through, not what is wrong now
            parts.append(f"{len(self.errors)} round(s) retried")
        return "; ".join(parts)


def _fmt(amounts: dict[str, float]) -> str:
    return ", ".join(f"{a:g} {s}" for s, a in sorted(amounts.items()))


def flatten(cfg: Config, reason: str, *, stop: threading.Event | None = None,
            exchange: Any | None = None, bot_stopped: bool = True) -> FlattenResult:
    """Cancel the bot's orders and sell what it owns; returns the outcome, never raises for
    exchange trouble (a flatten that cannot even start is a failed flatten).

    ``bot_stopped=False`` (the bot is not proven dead) sells nothing: two sellers must never
    act on one position. The result is a retryable failure."""
    if not bot_stopped:
        msg = "the bot is not proven dead: nothing sold (two sellers must never act at once)"
        recorder.record("emergency.flatten_failed", SOURCE, f"flatten not started: {msg}",
                        severity="critical", critical=True)
        return FlattenResult.failed(msg, reason)
    from watchdog.flatten import run_flatten

    deadline = time.monotonic() + cfg.watchdog.emergency_timeout_s
    return run_flatten(cfg, reason, stop or threading.Event(), deadline, exchange)


def pending_flatten(cfg: Config) -> str | None:
    """What a flatten would still do (open bot orders, positions to sell), or None.

    Verifies that a healthy bot carried out a ``flatten`` kill switch itself."""
    if not cfg.runtime.state_db.exists():
        return None
    from watchdog.flatten import what_is_left

    return what_is_left(cfg)
