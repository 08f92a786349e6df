"""One entry point for every call to a dependency: breaker, retries, budget, statistics.

``manager.call("market_data", exchange.fetch_ticker, "BTC/USDT", deadline=t)``:

1. the dependency's breaker may refuse at once (:class:`~tradeguard.exceptions.CircuitOpenError`,
   ``fn`` is not called);
2. ``fn`` runs once, directly — the success path builds no retry machinery;
3. a failure is classified (:func:`resilience.classify.classify`): RETRYABLE and UNKNOWN_OUTCOME
   errors (network, timeouts, 5xx, rate limits) count against the breaker; anything else (a
   rejected order, a bad symbol, a bug) proves the dependency answered and counts as a success;
4. ``state_changing=True`` calls are never retried: the error propagates after exactly one
   attempt and the caller follows the order lifecycle. Reads that failed RETRYABLE are retried
   by :func:`resilience.retry.retry_call` (backoff, retry budget, ``deadline``).

``deadline`` is a time on the manager's clock (``time.monotonic`` by default): no retry starts or
sleeps past it. The first attempt always runs — the deadline bounds the waiting the manager adds,
and the client's own timeout bounds an attempt in flight. ``state_changing`` and ``deadline`` are
the manager's keywords; every other argument goes to ``fn``.

Dependencies are created on first use; ``market_data``, ``orders`` and ``account`` exist from the
start, so that their breakers show in the heartbeat before the first call.
"""
from __future__ import annotations

import bisect
import random
import threading
import time
from typing import Any, Callable

from resilience import degradation as _degradation
from resilience.breaker import CircuitBreaker, StateListener
from resilience.budget import RetryBudget
from resilience.classify import ErrorClass, classify
from resilience.retry import RetryPolicy, retry_call
from tradeguard.config import ResilienceConfig
from tradeguard.exceptions import CircuitOpenError

DEPENDENCIES = ("market_data", "orders", "account")
# Upper bounds (seconds) of the latency histogram, Prometheus style; "+Inf" is implied.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_LABELS = tuple(repr(b) for b in LATENCY_BUCKETS) + ("+Inf",)
_UNHEALTHY = (ErrorClass.RETRYABLE, ErrorClass.UNKNOWN_OUTCOME)


class _Dependency:
    """A dependency's breaker, budget and counters."""

    __slots__ = ("name", "breaker", "budget", "lock", "calls", "retries", "errors",
                 "lat_count", "lat_sum", "lat_hist")

    def __init__(self, name: str, breaker: CircuitBreaker, budget: RetryBudget):
        self.name = name
        self.breaker = breaker
        self.budget = budget
        self.lock = threading.Lock()
        self.calls = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.lat_count = 0
        self.lat_sum = 0.0
        self.lat_hist = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative

    def observe(self, elapsed: float | None, error: BaseException | None) -> None:
        """Count one finished call (``elapsed`` None: refused before it ran)."""
        with self.lock:
            self.calls += 1
            if error is not None:
                name = type(error).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            if elapsed is not None:
                self.lat_count += 1
                self.lat_sum += elapsed
                self.lat_hist[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            cumulative, buckets = 0, {}
            for label, n in zip(_BUCKET_LABELS, self.lat_hist):
                cumulative += n
                buckets[label] = cumulative
            out = {"calls": self.calls, "retries": self.retries, "errors": dict(self.errors),
                   "latency": {"count": self.lat_count, "sum_s": self.lat_sum, "buckets": buckets}}
        out["breaker"] = self.breaker.state
        out["retry_budget_left"] = self.budget.left()
        return out


class ResilienceManager:
    """Breakers, retry budgets and retries for every dependency of one process."""

    def __init__(self, cfg: ResilienceConfig, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 on_breaker_change: StateListener | None = None,
                 rng: random.Random | None = None):
        self.cfg = cfg
        self.policy = RetryPolicy.from_config(cfg)
        self._clock = clock
        self._sleep = sleep
        self._on_change = on_breaker_change
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._deps: dict[str, _Dependency] = {}
        for name in DEPENDENCIES:
            self._dependency(name)

    # --- the call -----------------------------------------------------------------------------
    def call(self, dependency: str, fn: Callable[..., Any], *args: Any,
             state_changing: bool = False, deadline: float | None = None, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` on behalf of ``dependency`` (see the module docstring)."""
        dep = self._deps.get(dependency) or self._dependency(dependency)
        breaker = dep.breaker
        try:
            breaker.before_call()
        except CircuitOpenError as e:
            dep.observe(None, e)
            raise
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified, counted and re-raised or retried
            return self._after_failure(dep, fn, args, kwargs, exc, state_changing, deadline, start)
        except BaseException as exc:
            breaker.record_ignored()
            dep.observe(clock() - start, exc)
            raise
        breaker.record_success()
        dep.observe(clock() - start, None)
        return result

    def _after_failure(self, dep: _Dependency, fn: Callable[..., Any], args: tuple, kwargs: dict,
                       exc: Exception, state_changing: bool, deadline: float | None,
                       start: float) -> Any:
        kind = classify(exc, state_changing)
        self._judge(dep.breaker, kind)
        if state_changing or kind is not ErrorClass.RETRYABLE or self.policy.max_attempts < 2:
            dep.observe(self._clock() - start, exc)
            raise exc
        last = [exc]
        try:
            result, _ = retry_call(lambda: self._retry_attempt(dep, fn, args, kwargs, last), exc,
                                   dependency=dep.name, policy=self.policy, budget=dep.budget,
                                   clock=self._clock, sleep=self._sleep, deadline=deadline,
                                   rng=self._rng)
        except BaseException as final:
            dep.observe(self._clock() - start, final)
            raise
        dep.observe(self._clock() - start, None)
        return result

    def _retry_attempt(self, dep: _Dependency, fn: Callable[..., Any], args: tuple, kwargs: dict,
                       last: list[BaseException]) -> Any:
        try:
            dep.breaker.before_call()
        except CircuitOpenError as e:
            raise e from last[0]  # the breaker opened during the retries: say why
        with dep.lock:
            dep.retries += 1
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._judge(dep.breaker, classify(exc, state_changing=False))
            last[0] = exc
            raise
        except BaseException:
            dep.breaker.record_ignored()
            raise
        dep.breaker.record_success()
        return result

    @staticmethod
    def _judge(breaker: CircuitBreaker, kind: ErrorClass) -> None:
        if kind in _UNHEALTHY:
            breaker.record_failure()
        else:
            breaker.record_success()  # the dependency answered: it is up

    # --- observation ----------------------------------------------------------------------------
    def breaker(self, dependency: str) -> CircuitBreaker:
        """The breaker of ``dependency`` (created if new)."""
        return (self._deps.get(dependency) or self._dependency(dependency)).breaker

    def budget(self, dependency: str) -> RetryBudget:
        """The retry budget of ``dependency`` (created if new)."""
        return (self._deps.get(dependency) or self._dependency(dependency)).budget

    def breaker_states(self) -> dict[str, str]:
        """``{dependency: "closed" | "open" | "half-open"}``."""
        return {name: d.breaker.state for name, d in list(self._deps.items())}

    def degradation(self, kill_state: Any = None) -> str:
        """``running``, ``degraded`` or ``safe`` (see :mod:`resilience.degradation`)."""
        views = {name: d.breaker.snapshot() for name, d in list(self._deps.items())}
        return _degradation.level(views, self._clock(), self.cfg.safe_after_s,
                                  kill_engaged=kill_state is not None)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per dependency: ``calls``, ``retries``, ``errors`` (exception name → count), ``latency``
        (``count``, ``sum_s``, cumulative ``buckets`` keyed by LATENCY_BUCKETS and ``+Inf``),
        ``breaker`` and ``retry_budget_left``. ``calls`` includes calls the breaker refused
        (counted as ``CircuitOpenError``); latency covers the calls that ran, retries included."""
        return {name: d.stats() for name, d in list(self._deps.items())}

    # --- internals ------------------------------------------------------------------------------
    def _dependency(self, name: str) -> _Dependency:
        with self._lock:
            dep = self._deps.get(name)
            if dep is None:
                cfg = self.cfg
                dep = _Dependency(
                    name,
                    CircuitBreaker(name, cfg.breaker_fail_max, cfg.breaker_reset_s, clock=self._clock,
                                   on_change=self._on_change),
                    RetryBudget(cfg.retry_budget, cfg.retry_budget_window_s, clock=self._clock))
                self._deps[name] = dep
            return dep
