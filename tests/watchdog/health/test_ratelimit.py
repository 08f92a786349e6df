"""The per-address failure window."""
from __future__ import annotations

from tests.watchdog.health.conftest import FakeClock
from watchdog.health.ratelimit import FailureLimiter


def test_limit_per_address_and_sliding_window():
    clock = FakeClock()
    lim = FailureLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        assert lim.retry_after("a") is None
        lim.failed("a")
        clock.advance(10)
    assert lim.retry_after("a") == 30  # the first failure (t=0) leaves the window at t=60
    assert lim.retry_after("b") is None
    clock.advance(30)
    assert lim.retry_after("a") is None
    lim.failed("a")
    assert lim.retry_after("a") == 10


def test_memory_is_bounded():
    lim = FailureLimiter(1, 60.0, clock=FakeClock(), max_clients=100)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._failures) == 100
    assert lim.retry_after("10.0.3.231") == 60  # the most recent are kept
