"""Partial fills through the order lifecycle (real paper exchange with a thin book): every fill
recorded as it comes, positions exact, a cancel keeps what filled."""
from __future__ import annotations

import threading

import pytest

from tests.helpers.proc import wait_until
from tests.watchdog.trading import bot_runtime, exchange_cfg
from trading.orders import OrderBook, OrderSpec
from trading.risk import RiskLimits
from trading.runtime import StoppableBudget

SYMBOL = "BTC/USDT"


def _budget() -> StoppableBudget:
    return StoppableBudget(10.0, threading.Event())


@pytest.fixture
def thin(paper_exchange_factory):
    return paper_exchange_factory(book_level_quote=100.0)  # ~0.0017 BTC a level


def _parts(px):
    cfg = exchange_cfg(px)
    rt = bot_runtime(cfg)
    rt.exchange.load_markets()
    return rt, OrderBook(rt, RiskLimits(cfg.risk)), float(rt.exchange.fetch_ticker(SYMBOL)["last"])


def test_a_market_order_walking_the_book_records_every_fill(thin):
    rt, book, last = _parts(thin)
    try:
        o = book.place(OrderSpec(SYMBOL, "buy", "market", 0.01, None, "entry", last),
                       book.book({SYMBOL: last}), _budget())
        assert o.state == "FILLED" and o.filled == pytest.approx(0.01)
        wait_until(lambda: (book.sync_fills(_budget()) or True)
                   and sum(f.amount for f in rt.store.fills(client_order_id=o.client_order_id))
                   >= 0.01 - 1e-12, 10, message="fills recorded")
        fills = rt.store.fills(client_order_id=o.client_order_id)
        assert len(fills) >= 3 and len({f.price for f in fills}) >= 3  # several levels
        assert rt.store.positions()[SYMBOL].amount == pytest.approx(0.01)
    finally:
        rt.store.close()


def test_a_resting_limit_filled_in_part_then_canceled_keeps_what_filled(thin):
    rt, book, last = _parts(thin)
    try:
        price = round(last * 0.99, 2)
        o = book.place(OrderSpec(SYMBOL, "buy", "limit", 0.02, price, "entry", price),
                       book.book({SYMBOL: last}), _budget())
        assert o.state == "OPEN"
        thin.set_price(SYMBOL, price)  # touches it: one level's worth fills

        def partly() -> bool:
            book.follow_open(_budget())
            book.sync_fills(_budget())
            got = rt.store.get_order(o.client_order_id)
            return got.state == "OPEN" and 0 < got.filled < 0.02
        wait_until(partly, 10, interval=0.1, message="a partial fill")
        book.cancel(rt.store.get_order(o.client_order_id), "test", _budget())
        done = rt.store.get_order(o.client_order_id)
        book.sync_fills(_budget())
        recorded = sum(f.amount for f in rt.store.fills(client_order_id=o.client_order_id))
        assert done.state == "CANCELED" and 0 < done.filled < 0.02
        assert recorded == pytest.approx(done.filled)
        assert rt.store.positions()[SYMBOL].amount == pytest.approx(done.filled)
        balance = float(rt.exchange.fetch_balance()["total"].get("BTC") or 0)
        assert balance == pytest.approx(done.filled)
    finally:
        rt.store.close()


def test_the_fills_an_answer_carries_are_recorded_before_the_trade_history_shows_them(
        paper_exchange_factory):
    # eventual visibility: the order and its trades stay out of queries for a minute, but the
    # FULL create response lists the fills (Binance does): the position is known at once
    px = paper_exchange_factory(book_level_quote=100.0, visibility_lag_s=60)
    rt, book, last = _parts(px)
    try:
        o = book.place(OrderSpec(SYMBOL, "buy", "market", 0.01, None, "entry", last),
                       book.book({SYMBOL: last}), _budget())
        assert o.state == "FILLED"
        assert rt.exchange.fetch_my_trades(SYMBOL) == []  # the trade history does not show them
        fills = rt.store.fills(client_order_id=o.client_order_id)
        assert len(fills) >= 3 and sum(f.amount for f in fills) == pytest.approx(0.01)
        assert all(f.exchange_order_id == o.exchange_order_id and f.side == "buy" for f in fills)
        assert rt.store.positions()[SYMBOL].amount == pytest.approx(0.01)
        assert o.client_order_id not in book.fills_pending()
        # the ids are the trade ids the history will show: taken again, nothing is added
        fill_ids = {f.fill_id for f in fills}
        ledger = {str(f["id"]) for f in px.ledger()["fills"]
                  if f.get("clientOrderId") == o.client_order_id}
        assert fill_ids == ledger
    finally:
        rt.store.close()
