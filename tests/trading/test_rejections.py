"""The rejection back-off (trading.rejections) on a clock the test moves."""
from __future__ import annotations

import pytest

from trading.rejections import RejectBackoff


def test_waits_double_per_rejection_up_to_the_cap_and_an_acceptance_ends_the_run():
    now = [100.0]
    b = RejectBackoff(start_s=1.0, max_s=8.0, clock=lambda: now[0])
    assert b.wait_s("BTC/USDT", "exit") == 0
    waits = []
    for _ in range(5):
        b.rejected("BTC/USDT", "exit", "-2010 insufficient balance")
        waits.append(b.wait_s("BTC/USDT", "exit"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    # kept apart per purpose and symbol: a refused exit never delays the stop going back
    assert b.wait_s("BTC/USDT", "protective") == 0 and b.wait_s("ETH/USDT", "exit") == 0
    now[0] += 3.0
    assert b.wait_s("BTC/USDT", "exit") == pytest.approx(5.0)
    assert b.persistent(3) == ["BTC/USDT exit"] and b.persistent(6) == []
    report = b.report()["BTC/USDT exit"]
    assert report["count"] == 5 and report["reason"] == "-2010 insufficient balance"
    assert b.accepted("BTC/USDT", "exit").count == 5
    assert b.wait_s("BTC/USDT", "exit") == 0 and b.report() == {}
    assert b.accepted("BTC/USDT", "exit") is None


def test_a_run_nobody_asks_again_is_forgotten_after_the_cap():
    now = [0.0]
    b = RejectBackoff(start_s=1.0, max_s=8.0, clock=lambda: now[0])
    b.rejected("BTC/USDT", "entry", "filter")
    b.rejected("BTC/USDT", "entry", "filter")  # wait 2 s, until t=2
    now[0] = 2.0 + 8.0  # the wait ended max_s ago: still there, right at the edge
    assert b.persistent(2) == ["BTC/USDT entry"]
    now[0] += 0.001
    assert b.persistent(2) == [] and b.report() == {}
    b.rejected("BTC/USDT", "entry", "filter")
    assert b.wait_s("BTC/USDT", "entry") == 1.0  # a new run starts from the beginning
