"""Restart budget and backoff."""
from __future__ import annotations

from watchdog.budget import BACKOFF_CAP_S, RestartBudget


def test_budget_is_spent_within_the_window_and_refills_after_it():
    b = RestartBudget(budget=2, window_s=10.0)
    assert b.left(100.0) == 2 and not b.spent(100.0)
    b.record(100.0)
    b.record(101.0)
    assert b.spent(105.0)
    assert b.left(110.5) == 1  # the first restart left the window
    assert b.left(111.5) == 2 and b.restarts == []


def test_backoff_doubles_per_restart_without_a_healthy_bot_and_resets():
    b = RestartBudget(budget=100, window_s=600.0)
    waits = []
    for i in range(5):
        waits.append(b.backoff_s())
        b.record(float(i))
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0]
    b.healthy()
    assert b.backoff_s() == 0.0
    b.streak = 50
    assert b.backoff_s() == BACKOFF_CAP_S


def test_zero_budget_is_spent_at_once():
    assert RestartBudget(budget=0, window_s=60.0).spent(0.0)
