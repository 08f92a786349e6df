"""The bot slows down before the venue refuses it: the usage headers of a real paper exchange with
low limits, read through the runtime every exchange call goes through."""
from __future__ import annotations

import ccxt
import pytest

from tests.watchdog.trading import bot_runtime, exchange_cfg
from trading.ratelimit import HEADROOM, RateGovernor, load_rate_limits
from trading.runtime import Budget, TickDeadline


def test_reads_are_held_back_before_the_weight_limit_and_never_refused(paper_exchange_factory):
    px = paper_exchange_factory(rate_limit_multiplier=0.02)  # 120 weight a minute
    rt = bot_runtime(exchange_cfg(px))
    try:
        rt.exchange.load_markets()
        load_rate_limits(rt, Budget.start(5))
        assert rt.governor.weight_limit == 120
        held = refused = 0
        for _ in range(200):
            try:
                rt.call("market_data", rt.exchange.fetch_ticker, "BTC/USDT", budget=Budget.start(0.5))
            except TickDeadline as e:
                assert "rate limit" in str(e)
                held += 1
                break
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection):
                refused += 1
                break
        assert refused == 0 and held == 1
        assert rt.governor.weight_used >= HEADROOM * 120
        status = px.rate_limits()
        assert int(status["used"]["X-MBX-USED-WEIGHT-1M"]) <= 120 and status["banned_until"] in (None, 0)
    finally:
        rt.store.close()


def test_headers_in_any_case_and_windows_aligned_to_the_venues():
    now = [1_000_020.0 + 42.5]  # a whole minute + 42.5 s
    g = RateGovernor(weight_limit=100, orders_limit=10, clock=lambda: now[0])
    g.observe({"X-Mbx-Used-Weight-1m": "79", "x-mbx-order-count-10s": "3"})
    assert g.read_wait_s() == 0 and g.order_wait_s() == 0
    g.observe({"X-MBX-USED-WEIGHT-1M": "80"})
    assert g.read_wait_s() == pytest.approx(17.5)  # until the minute turns
    g.observe({"X-MBX-USED-WEIGHT-1M": "1", "X-MBX-ORDER-COUNT-10S": "9"})
    assert g.read_wait_s() == 0 and g.order_wait_s() == pytest.approx(7.5)
    g.observe({"X-MBX-USED-WEIGHT-1M": "not a number"})  # ignored, nothing raised
    assert g.weight_used == 1
    g.observe(None)
    assert RateGovernor().read_wait_s() == 0  # no limits known: out of the way


def test_an_order_held_back_or_past_the_tick_is_not_sent_not_rejected(paper_exchange_factory):
    """TickDeadline is raised before any request: the intent ends CANCELED "not sent", never
    REJECTED (the exchange refused nothing), and starts no rejection back-off."""
    from trading.orders import OrderBook, OrderSpec
    from trading.risk import RiskLimits

    px = paper_exchange_factory()
    rt = bot_runtime(exchange_cfg(px))
    try:
        rt.exchange.load_markets()
        price = float(rt.exchange.fetch_ticker("BTC/USDT")["last"])
        book = OrderBook(rt, RiskLimits(rt.cfg.risk))
        spec = OrderSpec("BTC/USDT", "buy", "market", 0.001, None, "entry", price)
        spent = Budget.start(0.0)
        held_back = Budget.start(0.5)
        # 1 s into the venue's 10-second order window: 9 s until it turns (a fixed clock: the
        # real one could be a moment before the turn, when the wait is shorter than the budget)
        rt.governor = RateGovernor(weight_limit=6000, orders_limit=10, clock=lambda: 1_000_001.0)
        outcomes = [book.place(spec, book.book({"BTC/USDT": price}), spent)]
        rt.governor.observe({"X-MBX-ORDER-COUNT-10S": "9"})  # near the venue's order window
        assert not rt.order_can_go(held_back)
        outcomes.append(book.place(spec, book.book({"BTC/USDT": price}), held_back))
        assert [o.state for o in outcomes] == ["CANCELED", "CANCELED"]
        notes = [rt.store.transitions(o.client_order_id)[-1].note for o in outcomes]
        assert notes[0].startswith("not sent: tick deadline reached before create_order"), notes
        assert notes[1].startswith("not sent: create_order held back: near the exchange's rate limit"), notes
        assert book.rejections.report() == {}
        assert not [o for o in px.ledger()["orders"] if o["clientOrderId"].startswith("tg-")]
    finally:
        rt.store.close()
