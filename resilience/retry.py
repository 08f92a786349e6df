"""Retries of read calls with tenacity: exponential backoff with jitter, longer waits after rate
limits (honouring Retry-After), the retry budget, and a deadline that is never overrun.

Only the *retries* run here: the manager makes the first attempt itself (so the success path
builds no tenacity object) and hands the failure to :func:`retry_call`. A retry happens only when

* ``classify(exc, state_changing=False)`` says RETRYABLE (state-changing calls never get here);
* fewer than ``max_attempts`` attempts were made (the first included);
* the wait before it ends before the caller's deadline (``clock() + wait < deadline``): the
  manager never sleeps past a deadline and never starts an attempt after it;
* a Retry-After the server sent fits under the longest wait
  (``max(backoff_max_s, rate_limit_backoff_s)``) — retrying earlier than the server allows is
  pointless, so a longer Retry-After ends the retries at once;
* the dependency's retry budget gives a token (checked last, so a token is spent only on a retry
  that happens).

Waits: retry *n* waits ``uniform(e/2, e)`` with ``e = min(backoff_max_s, backoff_base_s * 2**(n-1))``
("equal jitter": spread out, never shorter than half the backoff). After a rate-limit error the
wait is at least ``rate_limit_backoff_s`` and at least the server's Retry-After.

When the retries end, the last exchange error propagates unchanged — except when the budget was
empty: then :class:`~tradeguard.exceptions.RetryBudgetExhausted` is raised *from* the exchange
error (``__cause__``), so the caller sees both that it failed fast and why the call failed.
"""
from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import tenacity

from resilience.budget import RetryBudget
from resilience.classify import ErrorClass, classify, is_rate_limit
from resilience.netcause import describe
from tradeguard.config import ResilienceConfig
from tradeguard.exceptions import RetryBudgetExhausted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How read calls are retried (``[resilience]`` keys of the same names)."""

    max_attempts: int = 4
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    rate_limit_backoff_s: float = 2.0

    @classmethod
    def from_config(cls, cfg: ResilienceConfig) -> "RetryPolicy":
        return cls(cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s, cfg.rate_limit_backoff_s)

    @property
    def longest_wait_s(self) -> float:
        return max(self.backoff_max_s, self.rate_limit_backoff_s)


def retry_after_s(exc: BaseException, now: float | None = None) -> float | None:
    """The server's Retry-After (seconds) from the HTTP response behind ``exc``, if any.

    ccxt raises its errors while handling the HTTP library's error, so the response with its
    headers is on the exception chain (``__cause__``/``__context__``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        headers = getattr(response, "headers", None) or getattr(e, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            value = headers.get("Retry-After") or headers.get("retry-after")
            if value is not None:
                return _parse_retry_after(str(value), now)
        e = e.__cause__ or e.__context__
    return None


def _parse_retry_after(value: str, now: float | None) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def backoff_s(exc: BaseException, retry_number: int, policy: RetryPolicy,
              rng: random.Random) -> float:
    """The wait before retry ``retry_number`` (1 = the first retry) after ``exc``.

    ``math.inf`` means: do not retry (the server asked for a longer pause than we would wait).
    """
    cap = min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** (retry_number - 1))
    wait = rng.uniform(cap / 2.0, cap)
    if is_rate_limit(exc):
        wait = max(wait, policy.rate_limit_backoff_s)
    after = retry_after_s(exc)
    if after is not None:
        if after > policy.longest_wait_s:
            return math.inf
        wait = max(wait, after)
    return wait


class _Sequence:
    """One call's retries: the tenacity callbacks, with the reason they stopped."""

    def __init__(self, dependency: str, policy: RetryPolicy, budget: RetryBudget,
                 clock: Callable[[], float], deadline: float | None, rng: random.Random):
        self.dependency = dependency
        self.policy = policy
        self.budget = budget
        self.clock = clock
        self.deadline = deadline
        self.rng = rng
        self.budget_empty = False
        self.retries = 0

    def retryable(self, exc: BaseException) -> bool:
        return classify(exc, state_changing=False) is ErrorClass.RETRYABLE

    def wait(self, rs: tenacity.RetryCallState) -> float:
        return backoff_s(rs.outcome.exception(), rs.attempt_number, self.policy, self.rng)

    def stop(self, rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number >= self.policy.max_attempts or math.isinf(rs.upcoming_sleep):
            return True
        if self.deadline is not None and self.clock() + rs.upcoming_sleep >= self.deadline:
            return True
        if not self.budget.try_take():
            self.budget_empty = True
            return True
        self.retries += 1
        return False

    def before_sleep(self, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception()
        log.info("%s: retry %d/%d in %.2fs after %s", self.dependency, rs.attempt_number,
                 self.policy.max_attempts - 1, rs.upcoming_sleep, describe(exc))

    def give_up(self, rs: tenacity.RetryCallState) -> Any:
        exc = rs.outcome.exception()
        if self.budget_empty:
            log.warning("%s: retry budget exhausted; failing fast after %s", self.dependency,
                        type(exc).__name__)
            raise RetryBudgetExhausted(self.dependency) from exc
        raise exc


def retry_call(attempt: Callable[[], Any], first_error: BaseException, *, dependency: str,
               policy: RetryPolicy, budget: RetryBudget, clock: Callable[[], float],
               sleep: Callable[[float], None], deadline: float | None,
               rng: random.Random) -> tuple[Any, int]:
    """Retry ``attempt`` after its first try failed with ``first_error``.

    Returns ``(result, retries made)``; raises the last error (or RetryBudgetExhausted from it).
    """
    seq = _Sequence(dependency, policy, budget, clock, deadline, rng)
    pending: list[BaseException] = [first_error]

    def run() -> Any:
        if pending:  # the first attempt already happened: replay its outcome to tenacity
            raise pending.pop()
        return attempt()

    retrying = tenacity.Retrying(
        sleep=sleep, stop=seq.stop, wait=seq.wait,
        retry=tenacity.retry_if_exception(seq.retryable),
        before_sleep=seq.before_sleep, retry_error_callback=seq.give_up)
    return retrying(run), seq.retries
