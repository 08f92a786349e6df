"""The retry budget: a token bucket per dependency, shared by every call to it.

``capacity`` tokens (``[resilience] retry_budget``) refill continuously at
``capacity / window_s`` per second (``retry_budget_window_s``) and never beyond ``capacity``;
the bucket starts full. Each retry takes one token; the first attempt of a call is free. When the
bucket is empty the caller fails fast instead of retrying, so that an outage costs a bounded
number of extra requests per window whatever the number of callers.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

_EPS = 1e-9  # float refills may land a hair under a whole token


class RetryBudget:
    """A thread-safe token bucket with an injectable monotonic clock."""

    def __init__(self, capacity: int, window_s: float, *,
                 clock: Callable[[], float] = time.monotonic):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity!r}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, not {window_s!r}")
        self.capacity = capacity
        self.rate = capacity / window_s  # tokens per second
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(capacity)
        self._at = clock()

    def try_take(self) -> bool:
        """Take one token if there is one; False means: do not retry."""
        with self._lock:
            self._refill()
            if self._tokens < 1.0 - _EPS:
                return False
            self._tokens = max(0.0, self._tokens - 1.0)
            return True

    def left(self) -> int:
        """Whole tokens available now."""
        with self._lock:
            self._refill()
            return int(self._tokens + _EPS)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._at
        if elapsed > 0:  # a clock that does not advance (or steps back) adds nothing
            self._tokens = min(float(self.capacity), self._tokens + elapsed * self.rate)
            self._at = now
