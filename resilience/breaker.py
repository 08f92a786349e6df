"""A circuit breaker per dependency: closed → open → half-open → closed.

* **closed** — calls pass. ``fail_max`` consecutive counted failures open it; a success (or an
  error that proves the dependency answered, e.g. a rejected order) resets the count.
* **open** — calls are refused with :class:`~tradeguard.exceptions.CircuitOpenError` without
  running. Once ``reset_s`` has passed since it opened, the next call becomes the probe.
* **half-open** — exactly one probe call runs; others are refused while it is in flight. Its
  success closes the breaker, its counted failure opens it again for another ``reset_s``.

Which failures count is the caller's decision (the manager counts RETRYABLE/UNKNOWN_OUTCOME
errors, never business rejections). ``outage_since`` is when the current outage began: it
survives re-opening, and also a close that lasts less than ``reset_s`` (a flapping dependency is
one outage), so that the degradation level can tell a long outage from a blip.

Why not pybreaker 1.4.1 (read in .venv): it times the cool-down with ``datetime.now(UTC)`` (the
wall clock, which steps, and cannot be injected for deterministic tests); it holds its lock for
the whole guarded call, so one hanging request would block every other call to the dependency;
and its half-open state lets every waiting call through instead of one probe. This one has an
injectable monotonic clock, never holds a lock across a call, and costs two attribute reads on
the closed-state success path (see benchmarks/bench_resilience_calls.py).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tradeguard.exceptions import CircuitOpenError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
STATES = (CLOSED, OPEN, HALF_OPEN)
# The only state changes a breaker makes.
TRANSITIONS = frozenset({(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)})

StateListener = Callable[[str, str, str], None]  # (name, old, new)


class CircuitBreaker:
    """One dependency's breaker. Thread-safe; state changes are reported to ``on_change``."""

    def __init__(self, name: str, fail_max: int, reset_s: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: StateListener | None = None):
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, not {fail_max!r}")
        if reset_s <= 0:
            raise ValueError(f"reset_s must be > 0, not {reset_s!r}")
        self.name = name
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0            # consecutive counted failures while closed
        self.opened_at: float | None = None
        self._closed_at: float | None = None
        self._outage_start: float | None = None
        self._probing = False

    # --- before the call ----------------------------------------------------------------------
    def before_call(self) -> None:
        """Let the call run, or raise CircuitOpenError (open, or a probe already in flight)."""
        if self.state == CLOSED:
            return
        changed = None
        with self._lock:
            if self.state == OPEN:
                if self._clock() - self.opened_at < self.reset_s:  # type: ignore[operator]
                    raise CircuitOpenError(self.name)
                changed = self._set(HALF_OPEN)
                self._probing = True
            elif self.state == HALF_OPEN:
                if self._probing:
                    raise CircuitOpenError(self.name)
                self._probing = True
        self._notify(changed)

    # --- after the call -----------------------------------------------------------------------
    def record_success(self) -> None:
        """The dependency answered (a result, or an error that proves it is up)."""
        if self.state == CLOSED and not self.failures:
            return
        changed = None
        with self._lock:
            if self.state == HALF_OPEN:
                self._probing = False
                changed = self._set(CLOSED)
            self.failures = 0
        self._notify(changed)

    def record_failure(self) -> None:
        """The dependency looks unhealthy (network error, 5xx, rate limit, timeout)."""
        changed = None
        with self._lock:
            if self.state == CLOSED:
                self.failures += 1
                if self.failures >= self.fail_max:
                    changed = self._open()
            elif self.state == HALF_OPEN:
                self._probing = False
                changed = self._open()
            # OPEN: a call admitted before another thread opened it; already counted as open.
        self._notify(changed)

    def record_ignored(self) -> None:
        """The call ended without telling anything about the dependency (e.g. interrupted):
        free the probe slot so that the next call can probe."""
        with self._lock:
            self._probing = False

    # --- observation ----------------------------------------------------------------------------
    @property
    def outage_since(self) -> float | None:
        """Clock time the current outage began; None while the breaker is closed."""
        return None if self.state == CLOSED else self._outage_start

    def probe_due(self) -> bool:
        """Open with its cool-down over: the next call would run as the probe."""
        with self._lock:
            return self.state == OPEN and self._clock() - self.opened_at >= self.reset_s  # type: ignore[operator]

    def snapshot(self) -> tuple[str, float | None]:
        """``(state, outage_since)`` read together."""
        with self._lock:
            return self.state, (None if self.state == CLOSED else self._outage_start)

    # --- internals (lock held) --------------------------------------------------------------------
    def _open(self) -> tuple[str, str]:
        now = self._clock()
        flapped = self._closed_at is not None and now - self._closed_at < self.reset_s
        if self.state == CLOSED and not (flapped and self._outage_start is not None):
            self._outage_start = now
        self.opened_at = now
        self.failures = 0
        return self._set(OPEN)

    def _set(self, new: str) -> tuple[str, str]:
        old, self.state = self.state, new
        if new == CLOSED:
            self._closed_at = self._clock()
        return old, new

    def _notify(self, changed: tuple[str, str] | None) -> None:
        if changed is None:
            return
        old, new = changed
        log.log(logging.WARNING if new == "open" else logging.INFO,
                "circuit breaker %s: %s -> %s", self.name, old, new)  # the one log line of it
        if self._on_change is not None:
            try:
                self._on_change(self.name, old, new)
            except Exception:  # noqa: BLE001 - an observer must never break the call
                log.exception("circuit breaker %s: state listener failed", self.name)
