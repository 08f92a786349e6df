"""Emergency flatten against the real paper exchange (real ccxt client, real state.db)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.proc import REPO, child_env, wait_until
from tests.watchdog.trading import (FAST, balance, bot_buys, bot_store, exchange_cfg,
                                    ledger_orders, recorded_position)
from watchdog.emergency import FlattenResult, flatten, pending_flatten

SYMBOL = "BTC/USDT"
PREFIX = "tg-tg1-"
EMERGENCY = "tg-tg1-x"

FLATTEN_SCRIPT = ("import sys\nfrom tradeguard.config import load_config\n"
                  "from watchdog.emergency import flatten\n"
                  "print(flatten(load_config(sys.argv[1]), 'test').state, flush=True)\n")


def sells(px) -> list[dict]:
    return [o for o in ledger_orders(px, EMERGENCY)]


def test_sells_only_what_the_bot_owns_and_cancels_only_its_orders(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    px.deposit("BTC", "0.5")  # the owner's own coins on the same account: not the bot's
    ex = px.client()
    ex.load_markets()
    low = float(ex.fetch_ticker(SYMBOL)["last"]) * 0.5
    ex.create_order(SYMBOL, "limit", "buy", 0.001, low, {"newClientOrderId": PREFIX + "77"})
    ex.create_order(SYMBOL, "limit", "buy", 0.001, low, {"newClientOrderId": "manual-1"})

    assert "0.01 BTC/USDT still held" in pending_flatten(cfg)
    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.sold == {SYMBOL: pytest.approx(0.01)} and r.canceled == [PREFIX + "77"]
    (sell,) = sells(px)
    assert sell["side"] == "SELL" and float(sell["executedQty"]) == pytest.approx(0.01)
    assert balance(px, "BTC") == pytest.approx(0.5)
    status = {o["clientOrderId"]: o["status"] for o in ledger_orders(px)}
    assert status[PREFIX + "77"] == "CANCELED" and status["manual-1"] == "NEW"
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.0)
    assert pending_flatten(cfg) is None
    with bot_store(cfg) as store:
        (o,) = store.orders(origin="watchdog")
        assert (o.purpose, o.state) == ("emergency", "FILLED")
        assert o.client_order_id == sell["clientOrderId"]
        states = [t.to_state for t in store.transitions(o.client_order_id)]
        assert states[:2] == ["INTENT", "SUBMITTING"]


def test_sells_no_more_than_the_free_balance(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    ex = px.client()
    ex.load_markets()
    high = float(ex.fetch_ticker(SYMBOL)["last"]) * 2
    # someone else's order locks 0.004 of the coins: only 0.006 are free to sell
    ex.create_order(SYMBOL, "limit", "sell", 0.004, high, {"newClientOrderId": "manual-2"})

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.sold == {SYMBOL: pytest.approx(0.006)}
    assert balance(px, "BTC", "free") == pytest.approx(0.0)
    assert balance(px, "BTC", "locked") == pytest.approx(0.004)
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.004)


def test_second_run_places_nothing(paper_exchange):
    cfg = exchange_cfg(paper_exchange)
    bot_buys(cfg, SYMBOL, 0.01)
    assert flatten(cfg, "first").state == "done"
    again = flatten(cfg, "second")
    assert again.state == "done" and again.orders == [] and again.sold == {}
    assert len(sells(paper_exchange)) == 1


def test_unknown_outcome_is_resolved_by_client_order_id(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    px.add_fault(method="POST", path="/api/v3/order", action="apply_then_fail", status=503,
                 body="Service Unavailable", times=1)

    r = flatten(cfg, "test")

    assert r.state == "done", r
    (sell,) = sells(px)  # placed once; the 503 did not make it send another
    assert r.orders == [sell["clientOrderId"]]
    with bot_store(cfg) as store:
        states = [t.to_state for t in store.transitions(sell["clientOrderId"])]
    assert states[:3] == ["INTENT", "SUBMITTING", "UNKNOWN"] and states[-1] == "FILLED"
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.0)


def test_killed_midway_and_rerun_places_no_duplicate(paper_exchange, tmp_path):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    # the sell reaches the exchange, then the answer never comes: kill the flatten right there
    px.add_fault(method="POST", path="/api/v3/order", action="apply_then_fail", then="hang",
                 seconds=30, times=1)
    env = child_env({**px.env, **FAST, "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "20000"})
    proc = subprocess.Popen([sys.executable, "-c", FLATTEN_SCRIPT, str(px.config_file)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: sells(px), 15, message="the emergency sell on the exchange")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    px.clear_faults()
    with bot_store(cfg) as store:
        (o,) = store.orders(origin="watchdog")
        assert o.state == "SUBMITTING"  # intent committed, request sent, answer lost

    r = flatten(cfg, "rerun")

    assert r.state == "done", r
    (sell,) = sells(px)
    assert r.orders == [o.client_order_id] == [sell["clientOrderId"]]
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.0)
    assert balance(px, "BTC") == pytest.approx(0.0)


def test_dust_is_recorded_and_left(paper_exchange):
    cfg = exchange_cfg(paper_exchange)
    bot_buys(cfg, SYMBOL, 0.01)
    with bot_store(cfg) as store:
        store.adjust_position(SYMBOL, 0.00001, reason="test: a remainder below the minimum")

    r = flatten(cfg, "test")

    assert r.state == "done" and r.orders == [] and r.dust == {SYMBOL: pytest.approx(0.00001)}
    assert sells(paper_exchange) == []


def test_exchange_refusal_fails_fast_and_says_what_is_left(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    px.add_fault(method="POST", path="/api/v3/order", action="respond", status=400,
                 body={"code": -2010, "msg": "Account has insufficient balance for requested action."},
                 times=None)

    r = flatten(cfg, "test")

    assert r.state == "failed"
    assert r.remaining == {SYMBOL: pytest.approx(0.01)}
    assert any("insufficient balance" in e for e in r.errors)
    with bot_store(cfg) as store:
        assert [o.state for o in store.orders(origin="watchdog")] == ["REJECTED"]


def test_nothing_to_do_without_a_state_db(paper_exchange):
    cfg = exchange_cfg(paper_exchange)
    assert flatten(cfg, "test").state == "done"
    assert pending_flatten(cfg) is None


def test_exchange_outage_fails_at_the_deadline_as_retryable(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px, TRADEGUARD_WATCHDOG_EMERGENCY_TIMEOUT_S="2")
    bot_buys(cfg, SYMBOL, 0.01)
    px.add_fault(method="*", path="/api/v3/*", action="respond", status=503, body="down", times=None)

    r = flatten(cfg, "test")

    assert r.state == "failed" and not r.refused  # the watchdog tries again later
    assert r.remaining == {SYMBOL: pytest.approx(0.01)}
    assert any("emergency_timeout_s" in e for e in r.errors)
    px.clear_faults()
    assert flatten(cfg, "again").state == "done"
    assert balance(px, "BTC") == pytest.approx(0.0)


def test_a_deadline_that_ends_inside_a_round_fails_as_retryable_and_never_raises(paper_exchange):
    """The sell is answered after the emergency timeout (a state-changing call keeps the client's
    full timeout): the round's next exchange call finds the budget spent. That is a failed,
    retryable flatten, not an exception out of the watchdog's emergency."""
    px = paper_exchange
    cfg = exchange_cfg(px, TRADEGUARD_WATCHDOG_EMERGENCY_TIMEOUT_S="1")
    bot_buys(cfg, SYMBOL, 0.01)
    px.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=2.5, times=1)

    r = flatten(cfg, "test")

    assert r.state == "failed" and not r.refused, r
    assert any("emergency_timeout_s" in e for e in r.errors)
    again = flatten(exchange_cfg(px), "again")
    assert again.state == "done", again
    assert balance(px, "BTC") == pytest.approx(0.0)
    assert sum(float(o["executedQty"]) for o in sells(px) if o["status"] == "FILLED") == pytest.approx(0.01)


def _bot_order_in_flight(cfg, amount: float, state: str) -> str:
    """The bot's market buy committed as INTENT (and moved to ``state``), as a bot killed in
    the middle of its order lifecycle leaves it; returns the client order id."""
    from resilience.state import NewOrder

    with bot_store(cfg) as store:
        cid, seq = store.next_client_order_id(cfg.bot.bot_id)
        store.add_intent(NewOrder(client_order_id=cid, seq=seq, bot_id=cfg.bot.bot_id,
                                  symbol=SYMBOL, side="buy", type="market", amount=amount))
        if state != "INTENT":
            store.transition(cid, "SUBMITTING", note="test: submitting")
        if state == "UNKNOWN":
            store.transition(cid, "UNKNOWN", note="test: outcome unknown")
    return cid


def test_the_stopped_bots_orders_in_flight_are_settled_and_their_fills_sold(paper_exchange):
    px = paper_exchange
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    never_sent = _bot_order_in_flight(cfg, 0.001, "INTENT")
    filled_unrecorded = _bot_order_in_flight(cfg, 0.002, "SUBMITTING")
    lost = _bot_order_in_flight(cfg, 0.003, "UNKNOWN")
    # the bot's request for the SUBMITTING one reached the exchange; the bot died before the answer
    ex = px.client()
    ex.create_order(SYMBOL, "market", "buy", 0.002, None, {"newClientOrderId": filled_unrecorded})
    assert balance(px, "BTC") == pytest.approx(0.012)

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.sold == {SYMBOL: pytest.approx(0.012)}  # including the fill the bot never recorded
    assert balance(px, "BTC") == pytest.approx(0.0)
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.0)
    with bot_store(cfg) as store:
        assert store.get_order(never_sent).state == "CANCELED"
        assert store.get_order(filled_unrecorded).state == "FILLED"
        assert [f.amount for f in store.fills(client_order_id=filled_unrecorded)] == \
            [pytest.approx(0.002)]
        assert store.get_order(lost).state == "CANCELED"  # never resent: a flatten only sells
        assert store.orders(states=("INTENT", "SUBMITTING", "UNKNOWN")) == []
    assert [o["clientOrderId"] for o in ledger_orders(px, PREFIX) if o["side"] == "BUY"].count(lost) == 0


def test_a_bot_not_proven_dead_is_not_flattened(paper_exchange):
    cfg = exchange_cfg(paper_exchange)
    bot_buys(cfg, SYMBOL, 0.01)
    cid = _bot_order_in_flight(cfg, 0.001, "INTENT")

    r = flatten(cfg, "test", bot_stopped=False)

    assert r.state == "failed" and not r.refused and r.orders == []  # retried later
    assert sells(paper_exchange) == []
    with bot_store(cfg) as store:
        assert store.get_order(cid).state == "INTENT"  # the bot's to settle: two writers must not


def test_a_done_flatten_does_not_report_what_it_waited_through_as_an_error() -> None:
    waited = ["order(s) tg-tg1-x1 unsettled (outcome unknown until the fence)"]
    done = FlattenResult("done", "test", sold={SYMBOL: 0.01}, errors=list(waited))
    assert "last error" not in done.summary() and "1 round(s) retried" in done.summary()
    failed = FlattenResult("failed", "test", remaining={SYMBOL: 0.01}, errors=list(waited))
    assert f"last error: {waited[0]}" in failed.summary() and "STILL HELD" in failed.summary()
