"""Failed authentication attempts per client address, in a sliding window.

Consulted before any scrypt runs: a client over the limit gets 429 with ``Retry-After`` and
costs the host nothing. Memory is bounded: at most ``max_clients`` addresses are tracked, the
least recently failing are forgotten first.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Callable


class FailureLimiter:
    """At most ``limit`` failures per ``window_s`` per address."""

    def __init__(self, limit: int, window_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 10000):
        self.limit, self.window_s, self.clock, self.max_clients = limit, window_s, clock, max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, addr: str, now: float) -> deque[float] | None:
        q = self._failures.get(addr)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[addr]
            return None
        return q

    def retry_after(self, addr: str) -> int | None:
        """Seconds until ``addr`` may try again, or None when it is not blocked."""
        with self._lock:
            now = self.clock()
            q = self._recent(addr, now)
            if q is None or len(q) < self.limit:
                return None
            # The queue holds the last ``limit`` failures: a slot frees when the oldest leaves.
            return max(1, math.ceil(q[0] + self.window_s - now))

    def failed(self, addr: str) -> None:
        """Count one failed attempt by ``addr``."""
        with self._lock:
            now = self.clock()
            q = self._recent(addr, now)
            if q is None:
                q = self._failures[addr] = deque(maxlen=self.limit)
                while len(self._failures) > self.max_clients:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(addr)
            q.append(now)


class PasswordBudget:
    """A global budget for password verifications, whatever address they come from.

    A token bucket: ``burst`` verifications at once (10 s worth of the rate, at least 10),
    refilled at ``per_minute``; and at most ``concurrent`` running at the same moment. Many addresses (IPv6, or a proxy's clients) are
    each below the per-address limit; this bounds what they cost together. Refusing is cheap:
    the caller answers 429 before any hashing.
    """

    def __init__(self, per_minute: int, concurrent: int = 1, *,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = min(per_minute, max(10, per_minute // 6))
        self.clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._running = threading.BoundedSemaphore(concurrent)
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def retry_after(self) -> int | None:
        """Seconds until a verification may run, or None when one may run now (nothing taken)."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                return None
            return max(1, math.ceil((1.0 - self._tokens) / self.rate))

    def acquire(self) -> int | None:
        """Take one verification: None when granted (call :meth:`release` after hashing),
        else the seconds to wait. Never blocks."""
        with self._lock:
            self._refill()
            if self._tokens < 1.0:
                return max(1, math.ceil((1.0 - self._tokens) / self.rate))
            if not self._running.acquire(blocking=False):
                return 1
            self._tokens -= 1.0
            return None

    def release(self) -> None:
        self._running.release()
