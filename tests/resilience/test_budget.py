"""The retry budget (token bucket): never above its cap, refills at capacity per window."""
from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_starts_full_and_empties():
    b = RetryBudget(3, 60.0, clock=Clock())
    assert b.left() == 3
    assert [b.try_take() for _ in range(4)] == [True, True, True, False]
    assert b.left() == 0


def test_refills_at_capacity_per_window():
    clock = Clock()
    b = RetryBudget(100, 3600.0, clock=clock)  # 100 an hour: one every 36 s
    while b.try_take():
        pass
    clock.t += 35.9
    assert not b.try_take()
    clock.t += 0.1
    assert b.try_take()
    clock.t += 3600 * 5  # a long quiet spell refills to the cap, not beyond
    assert b.left() == 100


def test_zero_capacity_never_gives_a_token():
    clock = Clock()
    b = RetryBudget(0, 10.0, clock=clock)
    clock.t += 1e6
    assert not b.try_take() and b.left() == 0


def test_a_clock_stepping_back_adds_nothing():
    clock = Clock()
    b = RetryBudget(2, 10.0, clock=clock)
    b.try_take(), b.try_take()
    clock.t -= 100
    assert b.left() == 0
    clock.t += 100 + 5  # 5 s after the drain = 1 token
    assert b.left() == 1


def test_shared_across_threads_never_overspends():
    b = RetryBudget(500, 1e6)
    taken = []

    def worker():
        taken.append(sum(b.try_take() for _ in range(300)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(taken) <= 500 + 1  # 1e6 s window: at most a sliver refills during the test


@pytest.mark.parametrize("capacity, window", [(-1, 10.0), (1, 0.0), (1, -5.0)])
def test_rejects_bad_settings(capacity, window):
    with pytest.raises(ValueError):
        RetryBudget(capacity, window)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(0, 200), window=st.floats(1, 7200),
       steps=st.lists(st.tuples(st.floats(0, 600, allow_nan=False), st.integers(0, 50)), max_size=40))
def test_never_above_cap_and_never_more_than_earned(capacity, window, steps):
    clock = Clock()
    b = RetryBudget(capacity, window, clock=clock)
    start, granted = clock.t, 0
    for advance, takes in steps:
        clock.t += advance
        for _ in range(takes):
            granted += b.try_take()
        left = b.left()
        assert 0 <= left <= capacity
        # everything granted so far came from the initial fill plus what the rate earned
        earned = capacity + (clock.t - start) * capacity / window
        assert granted <= earned + 1e-6
        assert granted + left <= earned + 1e-6


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 500), window=st.floats(1, 7200), wait=st.floats(0, 10000))
def test_refill_after_drain_matches_the_rate(capacity, window, wait):
    clock = Clock()
    b = RetryBudget(capacity, window, clock=clock)
    while b.try_take():
        pass
    clock.t += wait
    expected = min(capacity, wait * capacity / window)
    # allow for float rounding right at a whole token
    assert b.left() in {min(capacity, math.floor(expected - 1e-6)), min(capacity, math.floor(expected + 1e-6))}
