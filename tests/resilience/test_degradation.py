"""Degradation levels: the pure rule (by property) and as the manager derives it from live breakers."""
from __future__ import annotations

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.degradation import DEGRADED, LEVELS, RUNNING, SAFE, level
from resilience.killswitch import KillState
from resilience.manager import ResilienceManager
from tradeguard.config import ResilienceConfig
from tradeguard.exceptions import CircuitOpenError

_names = st.sampled_from(["orders", "market_data", "account", "news"])
_views = st.dictionaries(_names, st.one_of(
    st.just(("closed", None)),
    st.tuples(st.sampled_from(["open", "half-open"]), st.floats(0, 1000)),
))


def test_examples():
    assert level({}, 0, 60) == RUNNING
    assert level({"orders": ("closed", None)}, 0, 60) == RUNNING
    assert level({"account": ("open", 0.0)}, 1e6, 60) == DEGRADED  # not critical: never safe
    assert level({"orders": ("half-open", 0.0)}, 59.9, 60) == DEGRADED
    assert level({"orders": ("half-open", 0.0)}, 60, 60) == SAFE
    assert level({"market_data": ("open", 10.0)}, 70, 60) == SAFE
    assert level({}, 0, 60, kill_engaged=True) == SAFE


@given(views=_views, now=st.floats(0, 2000), later=st.floats(0, 2000), safe_after=st.floats(1, 500))
def test_properties(views, now, later, safe_after):
    lv = level(views, now, safe_after)
    assert lv in LEVELS
    assert level(views, now, safe_after, kill_engaged=True) == SAFE
    all_closed = all(state == "closed" for state, _ in views.values())
    assert (lv == RUNNING) == all_closed
    if lv == SAFE:
        assert any(n in ("orders", "market_data") and s != "closed" for n, (s, _) in views.items())
    # an outage only gets worse with time, never better
    t2 = max(now, later)
    assert LEVELS.index(level(views, t2, safe_after)) >= LEVELS.index(lv)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _down(*_a, **_k):
    raise ccxt.ExchangeNotAvailable("503")


def _up(*_a, **_k):
    return "ok"


@pytest.fixture
def mgr():
    clock = Clock()
    cfg = ResilienceConfig(breaker_fail_max=2, breaker_reset_s=10.0, safe_after_s=60.0, max_attempts=1)
    return ResilienceManager(cfg, clock=clock, sleep=lambda s: None), clock


def _probe(m, fn):
    try:
        m.call("market_data", fn)
    except (ccxt.ExchangeNotAvailable, CircuitOpenError):
        pass


def test_long_outage_of_market_data_goes_safe_then_recovers(mgr):
    m, clock = mgr
    assert m.degradation() == RUNNING
    _probe(m, _down), _probe(m, _down)
    assert m.breaker_states()["market_data"] == "open"
    assert m.degradation() == DEGRADED
    for _ in range(6):  # re-opening every cool-down keeps the outage going
        clock.t += 10
        _probe(m, _down)
        assert m.breaker_states()["market_data"] == "open"
    assert m.degradation() == SAFE  # 60 s since it first opened
    clock.t += 10
    _probe(m, _up)  # the probe succeeds: closed
    assert m.degradation() == RUNNING


def test_kill_switch_means_safe(mgr):
    m, _ = mgr
    kill = KillState("halt", "test", 0.0, "file", "cli")
    assert m.degradation(kill_state=kill) == SAFE
    assert m.degradation(kill_state=None) == RUNNING


def test_outage_of_a_non_critical_dependency_stays_degraded(mgr):
    m, clock = mgr
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            m.call("account", _down)
    clock.t += 1000
    assert m.degradation() == DEGRADED
