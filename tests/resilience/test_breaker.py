"""The circuit breaker's state machine, by example and by property (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.breaker import CLOSED, HALF_OPEN, OPEN, STATES, TRANSITIONS, CircuitBreaker
from tradeguard.exceptions import CircuitOpenError


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(fail_max: int = 3, reset_s: float = 10.0) -> tuple[CircuitBreaker, Clock, list]:
    clock, changes = Clock(), []
    b = CircuitBreaker("orders", fail_max, reset_s, clock=clock,
                       on_change=lambda name, old, new: changes.append((name, old, new)))
    return b, clock, changes


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.before_call()
        b.record_failure()


def test_opens_after_fail_max_consecutive_failures_and_refuses():
    b, clock, changes = make(fail_max=3)
    fail(b, 2)
    assert b.state == CLOSED and b.failures == 2
    fail(b, 1)
    assert b.state == OPEN
    assert changes == [("orders", CLOSED, OPEN)]
    with pytest.raises(CircuitOpenError) as e:
        b.before_call()
    assert e.value.dependency == "orders"


def test_a_success_resets_the_count():
    b, _, _ = make(fail_max=3)
    fail(b, 2)
    b.before_call()
    b.record_success()
    fail(b, 2)
    assert b.state == CLOSED and b.failures == 2


def test_half_open_after_cool_down_one_probe_success_closes():
    b, clock, changes = make(fail_max=1, reset_s=10.0)
    fail(b)
    clock.t += 9.999
    with pytest.raises(CircuitOpenError):
        b.before_call()
    clock.t += 0.001
    b.before_call()  # the probe
    assert b.state == HALF_OPEN
    with pytest.raises(CircuitOpenError):  # only one probe in flight
        b.before_call()
    b.record_success()
    assert b.state == CLOSED
    assert [c[1:] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    b.before_call()  # closed: calls pass


def test_probe_due_only_when_open_with_the_cool_down_over():
    b, clock, _ = make(fail_max=1, reset_s=10.0)
    assert not b.probe_due()  # closed
    fail(b)
    clock.t += 9.999
    assert not b.probe_due()
    clock.t += 0.001
    assert b.probe_due()
    b.before_call()  # the probe is in flight: no second one
    assert not b.probe_due()


def test_failed_probe_reopens_for_another_cool_down():
    b, clock, changes = make(fail_max=2, reset_s=5.0)
    fail(b, 2)
    clock.t += 5
    b.before_call()
    b.record_failure()
    assert b.state == OPEN and b.opened_at == clock.t
    clock.t += 4.9
    with pytest.raises(CircuitOpenError):
        b.before_call()
    assert [c[1:] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


def test_interrupted_probe_frees_the_probe_slot():
    b, clock, _ = make(fail_max=1)
    fail(b)
    clock.t += 10
    b.before_call()
    b.record_ignored()
    b.before_call()  # another caller may probe now
    assert b.state == HALF_OPEN


def test_outage_survives_reopening_and_a_short_close_but_not_a_stable_one():
    b, clock, _ = make(fail_max=1, reset_s=10.0)
    start = clock.t
    fail(b)
    assert b.outage_since == start
    clock.t += 10
    fail(b)  # failed probe
    assert b.outage_since == start
    clock.t += 10
    b.before_call()
    b.record_success()
    assert b.state == CLOSED and b.outage_since is None
    clock.t += 3  # closed for less than the cool-down: the same outage (flapping)
    fail(b)
    assert b.outage_since == start
    clock.t += 10
    b.before_call()
    b.record_success()
    clock.t += 10  # stayed closed a full cool-down: a new failure starts a new outage
    fail(b)
    assert b.outage_since == clock.t


def test_a_failing_listener_does_not_break_the_breaker(caplog):
    def boom(*_):
        raise RuntimeError("listener bug")

    b = CircuitBreaker("x", 1, 1.0, clock=Clock(), on_change=boom)
    b.before_call()
    b.record_failure()
    assert b.state == OPEN
    assert "state listener failed" in caplog.text


@pytest.mark.parametrize("fail_max, reset_s", [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_bad_settings(fail_max, reset_s):
    with pytest.raises(ValueError):
        CircuitBreaker("x", fail_max, reset_s)


# --- property: any sequence of calls, outcomes and clock advances keeps the invariants ---------
_steps = st.lists(st.one_of(
    st.tuples(st.just("call"), st.sampled_from(["ok", "fail", "ignored"])),
    st.tuples(st.just("advance"), st.floats(min_value=0, max_value=30, allow_nan=False)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(fail_max=st.integers(1, 5), reset_s=st.floats(0.5, 20), steps=_steps)
def test_state_machine_invariants(fail_max, reset_s, steps):
    b, clock, changes = make(fail_max, reset_s)
    streak = 0  # consecutive failed calls since the breaker was last closed and admitting
    for kind, arg in steps:
        if kind == "advance":
            clock.t += arg
            continue
        state_before = b.state
        due = state_before == OPEN and clock.t - b.opened_at >= reset_s
        try:
            b.before_call()
        except CircuitOpenError:
            # refused only while open within the cool-down; nothing changes
            assert state_before == OPEN and not due
            assert b.state == OPEN
            continue
        # admitted when closed, when the cool-down passed, or half-open with the probe slot free
        assert state_before in (CLOSED, HALF_OPEN) or due
        if due:
            assert b.state == HALF_OPEN
        if arg == "ok":
            b.record_success()
            assert b.state == CLOSED and b.failures == 0
            streak = 0
        elif arg == "fail":
            was = b.state
            b.record_failure()
            streak = streak + 1 if was == CLOSED else 0
            if was == HALF_OPEN:
                assert b.state == OPEN and b.opened_at == clock.t
            elif streak >= fail_max:
                assert b.state == OPEN
                streak = 0
            else:
                assert b.state == CLOSED and b.failures == streak
        else:
            b.record_ignored()
        # invariants after every admitted call
        assert b.state in STATES
        assert b.state != CLOSED or b.failures < fail_max
        assert (b.outage_since is None) == (b.state == CLOSED)
        if b.state != CLOSED:
            assert b.outage_since <= b.opened_at <= clock.t
    # every reported change is a legal edge, they chain, and end in the current state
    prev = CLOSED
    for name, old, new in changes:
        assert name == "orders" and old == prev and (old, new) in TRANSITIONS
        prev = new
    assert prev == b.state


def test_a_transition_is_logged_once_with_the_bots_listener(caplog: pytest.LogCaptureFixture) -> None:
    from bot.main import _on_breaker_change

    b = CircuitBreaker("orders", 2, 10.0, clock=Clock(), on_change=_on_breaker_change)
    with caplog.at_level("INFO"):
        fail(b, 2)
    lines = [r for r in caplog.records if "circuit breaker orders" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in lines] == \
        [("WARNING", "circuit breaker orders: closed -> open")]
