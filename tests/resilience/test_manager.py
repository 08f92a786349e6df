"""ResilienceManager: breakers per dependency, what counts as unhealthy, statistics, callbacks."""
from __future__ import annotations

import ccxt
import pytest

from resilience.manager import DEPENDENCIES, LATENCY_BUCKETS, ResilienceManager
from tradeguard.config import ResilienceConfig
from tradeguard.exceptions import CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


class Fn:
    """A dependency call that fails with the queued errors, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException, clock: Clock | None = None, takes: float = 0.0):
        self.errors = list(errors)
        self.calls = 0
        self.clock, self.takes = clock, takes

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.last = (args, kwargs)
        if self.clock:
            self.clock.t += self.takes
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture
def env():
    clock, changes, sleeps = Clock(), [], []
    cfg = ResilienceConfig(breaker_fail_max=3, breaker_reset_s=5.0, retry_budget=50, max_attempts=3)
    m = ResilienceManager(cfg, clock=clock, sleep=sleeps.append,
                          on_breaker_change=lambda *c: changes.append(c))
    return m, clock, changes, sleeps


def test_passes_arguments_and_returns_the_result(env):
    m, *_ = env
    fn = Fn()
    assert m.call("market_data", fn, "BTC/USDT", limit=5) == "ok"
    assert fn.last == (("BTC/USDT",), {"limit": 5})
    assert set(m.breaker_states()) == set(DEPENDENCIES)
    assert all(s == "closed" for s in m.breaker_states().values())


def test_unhealthy_errors_open_the_breaker_and_an_open_breaker_does_not_call(env):
    m, clock, changes, _ = env
    fn = Fn(*[ccxt.RequestTimeout("t")] * 3)
    with pytest.raises(ccxt.RequestTimeout):
        m.call("orders", fn, state_changing=True)  # UNKNOWN_OUTCOME counts
    with pytest.raises(ccxt.RequestTimeout):
        m.call("orders", fn, state_changing=True)
    with pytest.raises(ccxt.RequestTimeout):
        m.call("orders", fn, state_changing=True)
    assert m.breaker_states()["orders"] == "open"
    assert changes == [("orders", "closed", "open")]
    with pytest.raises(CircuitOpenError):
        m.call("orders", fn, state_changing=True)
    assert fn.calls == 3
    assert m.stats()["orders"]["errors"] == {"RequestTimeout": 3, "CircuitOpenError": 1}
    assert m.breaker_states()["market_data"] == "closed"  # per dependency
    clock.t += 5
    assert m.call("orders", fn, state_changing=True) == "ok"  # the probe
    assert [c[2] for c in changes] == ["open", "half-open", "closed"]


@pytest.mark.parametrize("exc", [ccxt.InsufficientFunds("no money"), ccxt.InvalidOrder("too small"),
                                 ccxt.BadSymbol("?"), ccxt.AuthenticationError("key"),
                                 ccxt.InvalidOrder("Duplicate order sent."), ValueError("bug")])
def test_business_rejections_never_open_the_breaker(env, exc):
    m, _, changes, sleeps = env
    for _ in range(10):
        with pytest.raises(type(exc)):
            m.call("orders", Fn(exc), state_changing=True)
        with pytest.raises(type(exc)):
            m.call("account", Fn(exc))
    assert m.breaker_states() == {d: "closed" for d in DEPENDENCIES}
    assert changes == [] and sleeps == []  # and never retried


def test_a_rejection_resets_the_failure_count(env):
    m, *_ = env
    for exc in [ccxt.NetworkError("x"), ccxt.NetworkError("x"), ccxt.InsufficientFunds("x"),
                ccxt.NetworkError("x"), ccxt.NetworkError("x")]:
        with pytest.raises(type(exc)):
            m.call("orders", Fn(exc), state_changing=True)
    assert m.breaker_states()["orders"] == "closed"


def test_breaker_opening_during_retries_stops_them_and_says_why():
    cfg = ResilienceConfig(breaker_fail_max=3, max_attempts=6)
    m = ResilienceManager(cfg, clock=Clock(), sleep=lambda s: None)
    fn = Fn(*[ccxt.ExchangeNotAvailable("503")] * 6)
    with pytest.raises(CircuitOpenError) as e:
        m.call("market_data", fn)
    assert fn.calls == 3  # the third failure opened it; the fourth attempt is refused
    assert isinstance(e.value.__cause__, ccxt.ExchangeNotAvailable)


def test_max_attempts_bounds_the_retries(env):
    m, _, _, sleeps = env
    fn = Fn(*[ccxt.NetworkError("x")] * 5)
    with pytest.raises(ccxt.NetworkError):
        m.call("account", fn)
    assert fn.calls == 3 and len(sleeps) == 2
    assert m.stats()["account"]["retry_budget_left"] == 48


def test_an_interrupted_probe_lets_the_next_call_probe(env):
    m, clock, *_ = env
    for _ in range(3):
        with pytest.raises(ccxt.NetworkError):
            m.call("orders", Fn(ccxt.NetworkError("x")), state_changing=True)
    clock.t += 5
    with pytest.raises(KeyboardInterrupt):
        m.call("orders", Fn(KeyboardInterrupt()), state_changing=True)
    assert m.call("orders", Fn(), state_changing=True) == "ok"


def test_new_dependencies_appear_on_first_use(env):
    m, *_ = env
    m.call("news", Fn())
    assert m.breaker_states()["news"] == "closed" and m.stats()["news"]["calls"] == 1


def test_stats_latency_histogram_is_cumulative(env):
    m, clock, *_ = env
    for takes in (0.001, 0.02, 0.02, 0.7, 30.0):
        m.call("market_data", Fn(clock=clock, takes=takes))
    st = m.stats()["market_data"]
    lat = st["latency"]
    assert lat["count"] == 5 and lat["sum_s"] == pytest.approx(30.741)
    assert list(lat["buckets"]) == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    b = lat["buckets"]
    assert (b["0.005"], b["0.025"], b["0.5"], b["1.0"], b["10.0"], b["+Inf"]) == (1, 3, 3, 4, 4, 5)
    assert st["calls"] == 5 and st["errors"] == {} and st["retry_budget_left"] == 50


def test_stats_fit_the_watchdog_health_snapshot(env):
    """The heartbeat carries stats(); the watchdog keeps only well-formed entries."""
    from watchdog.health.snapshot import exchange_stats

    m, *_ = env
    m.call("market_data", Fn())
    with pytest.raises(ccxt.InsufficientFunds):
        m.call("orders", Fn(ccxt.InsufficientFunds("x")), state_changing=True)
    kept = exchange_stats(m.stats())
    assert kept["market_data"]["latency"]["buckets"]["+Inf"] == 1
    assert kept["orders"]["errors"] == {"InsufficientFunds": 1}
