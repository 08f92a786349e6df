"""Retries driven by real ccxt errors: the paper exchange's fault rules over HTTP, and a local
server that sends Retry-After. Sleeps are virtual (recorded, added to the clock) so that the
backoff is measured exactly and the tests stay fast."""
from __future__ import annotations

import http.server
import math
import random
import threading
import time
from dataclasses import replace

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.manager import ResilienceManager
from resilience.retry import RetryPolicy, backoff_s, retry_after_s
from tradeguard.config import ResilienceConfig
from tradeguard.exceptions import RetryBudgetExhausted

TICKER = "/api/v3/ticker/24hr"


class VirtualTime:
    """The real monotonic clock plus every sleep, which returns at once."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.offset += s


def manager(vt: VirtualTime, **cfg) -> ResilienceManager:
    base = ResilienceConfig(backoff_base_s=0.2, backoff_max_s=5.0, rate_limit_backoff_s=2.0,
                            max_attempts=4, breaker_fail_max=10)
    return ResilienceManager(replace(base, **cfg), clock=vt.clock, sleep=vt.sleep,
                             rng=random.Random(7))


def hits(px, fault_id: int) -> int | None:
    """How often a fault fired (None once it is used up and gone)."""
    return next((f["hits"] for f in px.faults() if f["id"] == fault_id), None)


@pytest.fixture(scope="module")
def _exchange(tmp_path_factory):
    """One paper exchange for the module (as the ``paper_exchange`` fixture starts it): these
    tests only add faults, so sharing it saves a process start per test."""
    from paper_exchange.control import PaperExchange
    from tests.helpers.proc import free_port, spawn, stop

    ex = PaperExchange.create(tmp_path_factory.mktemp("paper"), free_port(),
                              launch=lambda argv, env, log: spawn(argv, env=env, log=log),
                              terminate=stop).start()
    ex.ccxt = ex.client()
    ex.ccxt.load_markets()
    yield ex
    ex.stop()


@pytest.fixture
def px(_exchange):
    _exchange.clear_faults()
    yield _exchange
    _exchange.clear_faults()


# --- with the paper exchange --------------------------------------------------------------------
def test_two_503_then_success_retries_twice_from_the_budget(px):
    vt = VirtualTime()
    m = manager(vt, retry_budget=10)
    px.add_fault(method="GET", path=TICKER, action="respond", status=503, times=2)
    ticker = m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT")
    assert ticker["symbol"] == "BTC/USDT" and ticker["last"] > 0
    assert px.faults() == []  # both 503s were served
    assert len(vt.sleeps) == 2
    assert 0.1 <= vt.sleeps[0] <= 0.2 and 0.2 <= vt.sleeps[1] <= 0.4  # equal jitter, doubling
    st_ = m.stats()["market_data"]
    assert st_["retry_budget_left"] == 8 and st_["retries"] == 2
    assert st_["calls"] == 1 and st_["errors"] == {}
    assert m.breaker_states()["market_data"] == "closed"


def test_rate_limit_waits_longer(px):
    vt = VirtualTime()
    m = manager(vt)
    px.add_fault(method="GET", path=TICKER, action="respond", status=429, times=1)
    m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT")
    assert len(vt.sleeps) == 1 and vt.sleeps[0] >= 2.0  # rate_limit_backoff_s, not ~0.2


def test_state_changing_call_gets_exactly_one_attempt(px):
    vt = VirtualTime()
    m = manager(vt)
    fid = px.add_fault(method="POST", path="/api/v3/order", action="respond", status=503, times=3)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        m.call("orders", px.ccxt.create_order, "BTC/USDT", "market", "buy", 0.001,
               state_changing=True)
    assert hits(px, fid) == 1  # one POST reached the exchange
    assert px.ledger()["orders"] == []
    assert vt.sleeps == [] and m.stats()["orders"]["retry_budget_left"] == 100
    assert m.stats()["orders"]["errors"] == {"ExchangeNotAvailable": 1}


def test_empty_budget_fails_fast(px):
    vt = VirtualTime()
    m = manager(vt, retry_budget=1)
    fid = px.add_fault(method="GET", path=TICKER, action="respond", status=503, times=None)
    with pytest.raises(RetryBudgetExhausted) as e:
        m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT")
    assert isinstance(e.value.__cause__, ccxt.ExchangeNotAvailable)
    assert hits(px, fid) == 2  # the first attempt and the one retry the budget allowed
    with pytest.raises(RetryBudgetExhausted):
        m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT")
    assert hits(px, fid) == 3  # no retry at all now
    assert len(vt.sleeps) == 1
    assert m.stats()["market_data"]["errors"] == {"RetryBudgetExhausted": 2}


def test_deadline_is_never_overrun(px):
    vt = VirtualTime()
    m = manager(vt, backoff_base_s=0.4, max_attempts=10, retry_budget=100)
    fid = px.add_fault(method="GET", path=TICKER, action="respond", status=503, times=None)
    deadline = vt.clock() + 1.5
    with pytest.raises(ccxt.ExchangeNotAvailable):
        m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT", deadline=deadline)
    assert vt.clock() < deadline
    assert 2 <= hits(px, fid) < 10  # it retried, then gave up before max_attempts
    # the wait it did not take would have crossed the deadline
    assert vt.clock() + min(5.0, 0.4 * 2 ** (len(vt.sleeps))) / 2 >= deadline


def test_business_rejection_is_not_retried_and_does_not_count(px):
    vt = VirtualTime()
    m = manager(vt, breaker_fail_max=1)
    fid = px.add_fault(method="GET", path=TICKER, action="respond", status=400,
                       body={"code": -1121, "msg": "Invalid symbol."}, times=2)
    with pytest.raises(ccxt.BadSymbol):
        m.call("market_data", px.ccxt.fetch_ticker, "BTC/USDT")
    assert hits(px, fid) == 1 and vt.sleeps == []
    assert m.breaker_states()["market_data"] == "closed"  # the exchange answered: it is up


# --- Retry-After from a real HTTP response ------------------------------------------------------
class _TooMany(http.server.BaseHTTPRequestHandler):
    retry_after = "3"
    count = 0

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).count += 1
        if type(self).count == 1:
            self.send_response(429)
            self.send_header("Retry-After", self.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def too_many():
    handler = type("Handler", (_TooMany,), {"count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/x"
    server.shutdown()
    server.server_close()


def test_retry_after_is_honoured(too_many):
    handler, url = too_many
    handler.retry_after = "4"
    vt = VirtualTime()
    m = manager(vt, rate_limit_backoff_s=1.0)
    ex = ccxt.binance({"enableRateLimit": False, "timeout": 5000})
    assert m.call("market_data", ex.fetch, url) == {"ok": True}
    assert handler.count == 2 and len(vt.sleeps) == 1 and vt.sleeps[0] >= 4.0


def test_retry_after_longer_than_we_would_wait_ends_the_retries(too_many):
    handler, url = too_many
    handler.retry_after = "120"
    vt = VirtualTime()
    m = manager(vt)
    ex = ccxt.binance({"enableRateLimit": False, "timeout": 5000})
    with pytest.raises(ccxt.DDoSProtection) as e:
        m.call("market_data", ex.fetch, url)
    assert retry_after_s(e.value) == 120.0
    assert handler.count == 1 and vt.sleeps == []


# --- the pure parts ---------------------------------------------------------------------------
class _Resp:
    def __init__(self, headers):
        self.headers = headers


def _chained(headers) -> ccxt.RateLimitExceeded:
    cause = OSError("http")
    cause.response = _Resp(headers)
    try:
        try:
            raise cause
        except OSError:
            raise ccxt.RateLimitExceeded("429")
    except ccxt.RateLimitExceeded as e:
        return e


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), ("1.5", 1.5), ("-3", 0.0), ("soon", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
])
def test_retry_after_values(value, expected):
    now = 1445412450.0  # 2015-10-21 07:27:30 UTC
    assert retry_after_s(_chained({"Retry-After": value}), now=now) == expected


def test_no_retry_after_without_a_response():
    assert retry_after_s(ccxt.NetworkError("down")) is None


@given(n=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_backoff_is_equal_jitter_of_a_capped_doubling(n, seed):
    p = RetryPolicy(max_attempts=13, backoff_base_s=0.2, backoff_max_s=5.0, rate_limit_backoff_s=2.0)
    cap = min(5.0, 0.2 * 2 ** (n - 1))
    w = backoff_s(ccxt.ExchangeNotAvailable("503"), n, p, random.Random(seed))
    assert cap / 2 <= w <= cap
    w_rl = backoff_s(ccxt.RateLimitExceeded("429"), n, p, random.Random(seed))
    assert max(2.0, cap / 2) <= w_rl <= max(2.0, cap)


def test_retry_after_beyond_the_longest_wait_means_no_retry():
    p = RetryPolicy()
    assert math.isinf(backoff_s(_chained({"Retry-After": "600"}), 1, p, random.Random(1)))
    assert backoff_s(_chained({"Retry-After": "4"}), 1, p, random.Random(1)) == 4.0
