"""The emergency flatten, whatever state it finds (#16: A1, A2, A12, A18): the exchange is the
truth, the owner's own coins are never sold, nothing is sold twice. Real paper exchange, real
ccxt client, real state.db files; the owner holds BTC of their own in every test."""
from __future__ import annotations

import os
import random

import pytest

from resilience.state import open_readonly
from tests.helpers.proc import wait_until
from tests.watchdog.trading import (balance, bot_buys, bot_order, bot_store, exchange_cfg,
                                    ledger_orders, recorded_position)
from watchdog.emergency import flatten

SYMBOL = "BTC/USDT"
OWNERS = 0.05  # BTC the owner holds outside the bot


@pytest.fixture
def px(paper_exchange):
    paper_exchange.deposit("BTC", OWNERS)
    return paper_exchange


def emergency_sells(px) -> list[dict]:
    return ledger_orders(px, "tg-tg1-x")


def test_state_db_deleted_positions_are_rebuilt_from_the_exchange(px):  # A1
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    bot_buys(cfg, "ETH/USDT", 0.2)
    for suffix in ("", "-wal", "-shm"):
        p = cfg.runtime.state_db.with_name(cfg.runtime.state_db.name + suffix)
        if p.exists():
            p.unlink()

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.basis == "exchange" and r.learned_from is not None and r.adopted == 2
    assert r.sold == {SYMBOL: pytest.approx(0.01), "ETH/USDT": pytest.approx(0.2)}
    assert balance(px, "BTC") == pytest.approx(OWNERS)  # the owner's coins stay
    assert balance(px, "ETH") == pytest.approx(0.0)
    assert "rebuilt from the exchange" in r.summary()


def test_state_db_corrupted_is_quarantined_and_rebuilt(px):  # A1
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    db = cfg.runtime.state_db
    with bot_store(cfg) as store:
        store.checkpoint()
    data = bytearray(db.read_bytes())
    rng = random.Random(7)
    data[0:100] = bytes(rng.randrange(256) for _ in range(100))
    db.write_bytes(bytes(data))

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.basis == "exchange" and r.sold == {SYMBOL: pytest.approx(0.01)}
    assert balance(px, "BTC") == pytest.approx(OWNERS)
    assert list(db.parent.glob("state.db.corrupt-*")) or list(db.parent.glob("*quarantine*")) \
        or any("corrupt" in p.name for p in db.parent.iterdir())


def test_a_limit_buy_that_filled_while_the_bot_was_down_is_sold(px):  # A2
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    ex = px.client()
    ex.load_markets()
    last = float(ex.fetch_ticker(SYMBOL)["last"])
    cid = bot_order(cfg, px, "buy", "limit", 0.004, price=round(last * 0.9, 2))
    with bot_store(cfg) as store:
        assert store.get_order(cid).state == "OPEN"
    px.set_price(SYMBOL, last * 0.85)  # through the limit: it fills, the bot hears nothing
    wait_until(lambda: balance(px, "BTC") >= OWNERS + 0.014 - 1e-9, 10, message="the limit filled")

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.sold == {SYMBOL: pytest.approx(0.014)}
    assert balance(px, "BTC") == pytest.approx(OWNERS)
    with bot_store(cfg) as store:
        assert store.get_order(cid).state == "FILLED"
        assert store.positions()[SYMBOL].amount == pytest.approx(0.0)


@pytest.mark.parametrize("key", ["missing", "wrong"])
def test_no_field_key_is_needed(px, key):  # A12
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    key_file = cfg.runtime.field_key
    original = key_file.read_bytes()
    if key == "missing":
        key_file.unlink()
    else:
        from resilience.keys import encode_key
        key_file.write_text(encode_key(os.urandom(32)))  # a valid key, not the one it was written with

    r = flatten(cfg, "test")

    assert r.state == "done", r
    assert r.basis == "state.db (keyless)" and r.sold == {SYMBOL: pytest.approx(0.01)}
    assert balance(px, "BTC") == pytest.approx(OWNERS)
    # state.db was not quarantined, and the right key still opens it, emergency orders included
    key_file.unlink(missing_ok=True)
    key_file.write_bytes(original)
    os.chmod(key_file, 0o600)
    with bot_store(cfg) as store:
        (sell,) = store.orders(origin="watchdog")
        assert sell.state == "FILLED" and store.positions()[SYMBOL].amount == pytest.approx(0.0)
    assert not any("corrupt" in p.name or "quarantin" in p.name
                   for p in cfg.runtime.state_db.parent.iterdir())


def test_a_bot_sell_held_by_the_exchange_is_never_sold_again(px):  # A18
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    # the bot's exit: the exchange holds the request 1.6 s (inside recvWindow 2 s), the client
    # gives up after 1 s
    cid = bot_order(cfg, px, "sell", "market", 0.01, fault={"action": "delay", "seconds": 1.6})
    with bot_store(cfg) as store:
        assert store.get_order(cid).state == "UNKNOWN"

    r = flatten(cfg, "test")  # the bot is dead; its request is still in the exchange's hands

    assert r.state == "done", r
    assert emergency_sells(px) == [] and r.sold == {}  # the held sell did it, once
    assert balance(px, "BTC") == pytest.approx(OWNERS)
    with bot_store(cfg) as store:
        assert store.get_order(cid).state == "FILLED"
        assert store.orders(states=("INTENT", "SUBMITTING", "UNKNOWN")) == []
    assert recorded_position(cfg, SYMBOL) == pytest.approx(0.0)


def test_a_bot_buy_that_never_arrived_is_closed_only_past_its_fence(px):  # A18, the other half
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    cid = bot_order(cfg, px, "buy", "market", 0.002, fault={"action": "reset"})

    r = flatten(cfg, "test")

    assert r.state == "done", r
    with bot_store(cfg) as store:
        o = store.get_order(cid)
        (closed,) = [t for t in store.transitions(cid) if t.to_state == "CANCELED"]
        (unknown,) = [t for t in store.transitions(cid) if t.to_state == "UNKNOWN"]
    fence_s = (cfg.exchange.recv_window_ms + cfg.exchange.timeout_ms) / 1000 + cfg.bot.unknown_grace_s
    assert o.state == "CANCELED" and closed.ts - unknown.ts >= fence_s
    assert balance(px, "BTC") == pytest.approx(OWNERS)
    assert [o["clientOrderId"] for o in ledger_orders(px)].count(cid) == 0


def test_the_flatten_reads_state_db_with_the_reader_after_a_keyless_run(px):
    cfg = exchange_cfg(px)
    bot_buys(cfg, SYMBOL, 0.01)
    cfg.runtime.field_key.unlink()
    assert flatten(cfg, "test").state == "done"
    with open_readonly(cfg.runtime.state_db) as reader:  # plain columns, no key
        (sell,) = reader.orders(origin="watchdog")
        assert sell.filled == pytest.approx(0.01) and sell.reason is None
