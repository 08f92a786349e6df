"""The fence: an order whose answer was lost is never sent again while the exchange could still
execute the first request (real paper exchange, real ccxt client, real state.db)."""
from __future__ import annotations

import dataclasses
import threading
import time

from tests.helpers.proc import wait_until
from tests.watchdog.trading import bot_runtime, exchange_cfg
from trading.fence import MARGIN_MS, Fence
from trading.orders import OrderBook, OrderSpec
from trading.risk import RiskLimits
from trading.runtime import StoppableBudget

SYMBOL = "BTC/USDT"
TIMING = {"TRADEGUARD_EXCHANGE_TIMEOUT_MS": "1000", "TRADEGUARD_EXCHANGE_RECV_WINDOW_MS": "2500",
          "TRADEGUARD_BOT_UNKNOWN_GRACE_S": "0.5"}


def _place_unanswered(paper_exchange, fault: dict):
    """A market buy whose answer is lost (``fault`` on POST /api/v3/order); returns the parts."""
    cfg = exchange_cfg(paper_exchange, **TIMING)
    rt = bot_runtime(cfg)
    rt.exchange.load_markets()
    price = float(rt.exchange.fetch_ticker(SYMBOL)["last"])
    book = OrderBook(rt, RiskLimits(cfg.risk))
    paper_exchange.add_fault(method="POST", path="/api/v3/order", times=1, **fault)
    o = book.place(OrderSpec(SYMBOL, "buy", "market", 0.001, None, "entry", price),
                   book.book({SYMBOL: price}), StoppableBudget(10.0, threading.Event()))
    assert o is not None and o.state == "UNKNOWN", o
    return cfg, rt, book, o


def _resolve_until_settled(rt, book, cid: str) -> None:
    def settled() -> bool:
        book.resolve(rt.store.get_order(cid), StoppableBudget(5.0, threading.Event()))
        return rt.store.get_order(cid).state not in ("UNKNOWN", "SUBMITTING")
    wait_until(settled, 30, interval=0.05, message=f"{cid} resolved")


def _on_exchange(paper_exchange, cid: str) -> list[dict]:
    return [o for o in paper_exchange.ledger()["orders"] if o["clientOrderId"] == cid]


def test_a_request_executed_late_is_adopted_never_sent_again(paper_exchange):
    # held 2 s by the exchange, the client gave up after 1 s: the order executes late, inside
    # the fence, after several "does not exist" answers
    cfg, rt, book, o = _place_unanswered(paper_exchange, {"action": "delay", "seconds": 2.0})
    try:
        _resolve_until_settled(rt, book, o.client_order_id)
        states = [t.to_state for t in rt.store.transitions(o.client_order_id)]
        assert states.count("SUBMITTING") == 1, states  # never resubmitted
        assert rt.store.get_order(o.client_order_id).state == "FILLED"
        assert len(_on_exchange(paper_exchange, o.client_order_id)) == 1
    finally:
        rt.store.close()


def test_a_request_that_never_arrived_is_resent_only_past_the_fence(paper_exchange):
    cfg, rt, book, o = _place_unanswered(paper_exchange, {"action": "reset"})
    try:
        unknown_at = rt.store.get_order(o.client_order_id).updated_at
        _resolve_until_settled(rt, book, o.client_order_id)
        trs = rt.store.transitions(o.client_order_id)
        resent = [t.ts for t in trs if t.to_state == "SUBMITTING"][1:]
        assert len(resent) == 1, [t.to_state for t in trs]
        fence_s = (cfg.exchange.recv_window_ms + cfg.exchange.timeout_ms + MARGIN_MS) / 1000 \
            + cfg.bot.unknown_grace_s
        assert resent[0] >= unknown_at + fence_s, (resent[0] - unknown_at, fence_s)
        assert rt.store.get_order(o.client_order_id).state == "FILLED"
        assert len(_on_exchange(paper_exchange, o.client_order_id)) == 1
    finally:
        rt.store.close()


def test_the_fence_is_judged_on_the_exchanges_clock(paper_exchange):
    cfg, rt, book, o = _place_unanswered(paper_exchange, {"action": "reset"})
    try:
        fence = Fence(rt)
        o = rt.store.get_order(o.client_order_id)
        budget = StoppableBudget(5.0, threading.Event())
        assert fence.not_yet(o) and not fence.passed(o, budget)
        # the exchange's clock, as it answers: within a second of ours on this one machine
        assert abs(fence.exchange_now_ms(budget) - time.time() * 1000) < 1000
        marked_a_minute_ago = dataclasses.replace(o, updated_at=o.updated_at - 60)
        assert not fence.not_yet(marked_a_minute_ago) and fence.passed(marked_a_minute_ago, budget)
        # a client whose timestamps run 10 minutes ahead of its clock (ccxt timeDifference):
        # a minute has passed here, but not on the exchange's clock for that request's timestamp
        rt.exchange.options["timeDifference"] = -600_000
        assert not fence.not_yet(marked_a_minute_ago)
        assert not fence.passed(marked_a_minute_ago, budget)
    finally:
        rt.store.close()
