"""Back-off after the exchange rejects an order: a venue that refused an exit (or a stop, or an
entry) of a symbol is not asked the same again on every tick.

A strategy that states a ``Target`` re-asks for its order each tick; without this, an exit the
venue refuses turns into a cancel of the stop, a refused sell and a new stop per tick, which
spends the venue's request weight until it bans the address (seen in the exit-window chaos
scenario, docs/CHAOS.md). Keyed by (symbol, purpose), so a refused exit does not delay putting
the stop back. The wait doubles per rejection in a row, from ``start_s`` up to ``max_s``, and an
accepted order of the same key clears it, and so does asking nothing for ``max_s`` after the
wait ended (the strategy gave up: nothing is being refused any more).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

START_S = 1.0
MAX_S = 30.0


@dataclass
class Rejections:
    """Rejections in a row of one (symbol, purpose) and when it may be asked again."""

    count: int
    until: float  # on the back-off's clock
    reason: str
    since: float  # wall clock of the first of the run


class RejectBackoff:
    """Per (symbol, purpose): how long to hold new orders after the exchange rejected one."""

    def __init__(self, start_s: float = START_S, max_s: float = MAX_S,
                 clock: Callable[[], float] = time.monotonic):
        self.start_s, self.max_s, self._clock = start_s, max_s, clock
        self._runs: dict[tuple[str, str], Rejections] = {}

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, r in self._runs.items() if now - r.until > self.max_s]:
            del self._runs[key]

    def wait_s(self, symbol: str, purpose: str) -> float:
        """Seconds before an order of this symbol and purpose may be sent again (0: now)."""
        self._expire()
        run = self._runs.get((symbol, purpose))
        return 0.0 if run is None else max(0.0, run.until - self._clock())

    def rejected(self, symbol: str, purpose: str, reason: str) -> Rejections:
        """Note a rejection; returns the run with its new wait."""
        self._expire()
        run = self._runs.get((symbol, purpose))
        count = 1 if run is None else run.count + 1
        wait = min(self.max_s, self.start_s * 2 ** (count - 1))
        new = Rejections(count, self._clock() + wait, reason,
                         time.time() if run is None else run.since)
        self._runs[(symbol, purpose)] = new
        return new

    def accepted(self, symbol: str, purpose: str) -> Rejections | None:
        """The exchange took an order of this key: the run (if any) ends; returns it."""
        return self._runs.pop((symbol, purpose), None)

    def report(self) -> dict[str, dict[str, object]]:
        """Current runs for the heartbeat: ``{"BTC/USDT exit": {count, wait_s, reason, since}}``."""
        self._expire()
        return {f"{s} {p}": {"count": r.count, "wait_s": round(self.wait_s(s, p), 3),
                             "reason": r.reason, "since": r.since}
                for (s, p), r in sorted(self._runs.items())}

    def persistent(self, min_count: int) -> list[str]:
        """Keys whose run has reached ``min_count`` rejections in a row, e.g. ``BTC/USDT exit``."""
        self._expire()
        return [f"{s} {p}" for (s, p), r in sorted(self._runs.items()) if r.count >= min_count]
