"""What keeps the owner's money safe while the bot runs: the kill switch (file and environment),
flatten, the daily loss limit, an isolated strategy failure, and degrading under exchange storms."""
from __future__ import annotations

import json
import time

import pytest

from tests.helpers.proc import wait_until

BUY_ONCE = """
from bot.strategy import Strategy, Target

class BuyOnce(Strategy):
    def __init__(self, amount=0.004):
        self.amount = amount

    def on_tick(self, ctx):
        return [Target("BTC/USDT", self.amount)]
"""

FLAKY = """
from bot.strategy import Strategy, Target

class Flaky(Strategy):
    calls = 0

    def on_tick(self, ctx):
        Flaky.calls += 1
        if Flaky.calls % 2:
            raise RuntimeError("strategy bug on purpose")
        return [Target("BTC/USDT", 0.001)]
"""


def _orders(bot) -> list[dict]:
    return [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"].startswith("tg-tg1-")]


def _base_total(bot, asset: str) -> float:
    return float(bot.paper.balances().get(asset, {}).get("total", 0))


@pytest.mark.parametrize("how", ["file", "env"])
def test_kill_switch_halt_stops_orders_within_a_tick_and_cancels_entries(bot_factory, how):
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.6, "limit_ttl_s": 60})
    bot.wait_state("running")
    wait_until(lambda: any(o["status"] == "NEW" for o in _orders(bot)), 15, message="a resting entry")
    if how == "file":
        engaged_ms = time.time() * 1000
        bot.kill_switch("halt", "test halt")
    else:  # BOT_EMERGENCY_SHUTDOWN is read at start: restart the bot with it set
        bot.kill()
        engaged_ms = time.time() * 1000
        bot.start(env={"BOT_EMERGENCY_SHUTDOWN": "halt"})
    hb = bot.wait_state("safe")
    assert hb.detail["kill_switch"] == "halt"
    wait_until(lambda: not any(o["status"] == "NEW" for o in _orders(bot)), 10, message="entries canceled")
    bot.wait_ticks(5)
    tick_ms = 1000 * 0.2 * 2 + 500  # one loop interval plus one tick in flight, with margin
    late = [o for o in _orders(bot) if o["time"] > engaged_ms + tick_ms]
    assert late == [], f"orders created after the kill switch: {late}"


def test_flatten_sells_what_the_bot_holds_and_buys_nothing(bot_factory):
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.0})
    bot.wait_state("running")
    wait_until(lambda: _base_total(bot, "BTC") > 0 and _base_total(bot, "ETH") > 0, 20,
               message="positions in both symbols")
    engaged_ms = time.time() * 1000
    bot.kill_switch("flatten", "test flatten")
    wait_until(lambda: _base_total(bot, "BTC") == 0 and _base_total(bot, "ETH") == 0, 15,
               message="positions closed")
    wait_until(lambda: bot.heartbeat().detail["positions"] == {"BTC/USDT": 0.0, "ETH/USDT": 0.0}, 10,
               message="the heartbeat shows flat positions")
    assert bot.heartbeat().state == "safe"
    buys = [o for o in _orders(bot) if o["side"] == "BUY" and o["time"] > engaged_ms + 900]
    assert buys == []


def test_daily_loss_limit_engages_the_kill_switch(bot_factory, paper_exchange_factory, tmp_path):
    strategy = tmp_path / "buy_once.py"
    strategy.write_text(BUY_ONCE)
    paper = paper_exchange_factory(volatility=0.0)
    bot = bot_factory(paper=paper, strategy=f"{strategy}:BuyOnce",
                      env={"TRADEGUARD_RISK_DAILY_LOSS_LIMIT": "20"})
    bot.wait_state("running")
    wait_until(lambda: _base_total(bot, "BTC") >= 0.004, 15, message="the position")
    price = float(paper.health()["prices"]["BTCUSDT"])
    paper.set_price("BTC/USDT", price * 0.9)  # 0.004 BTC loses ~24 USDT
    hb = bot.wait_state("safe", timeout=10)
    kill = json.loads(bot.paths.kill_file.read_text())
    assert kill["mode"] == "halt" and "daily loss limit" in kill["reason"]
    assert hb.detail["kill_switch"] == "halt"
    n = len(_orders(bot))
    bot.wait_ticks(5)
    assert len(_orders(bot)) == n


def test_a_failing_strategy_does_not_stop_the_bot(bot_factory, tmp_path):
    strategy = tmp_path / "flaky.py"
    strategy.write_text(FLAKY)
    bot = bot_factory(strategy=f"{strategy}:Flaky")
    bot.wait_state("running")
    wait_until(lambda: _base_total(bot, "BTC") >= 0.001, 15, message="the good ticks trade")
    seq = bot.heartbeat().seq
    bot.wait_ticks(5)
    assert bot.alive() and bot.heartbeat().seq >= seq + 5
    assert "strategy bug on purpose" in bot.output()


@pytest.mark.parametrize("faults", [
    [{"action": "respond", "status": 503, "body": "Service Unavailable"},
     {"action": "respond", "status": 429, "body": '{"code":-1003,"msg":"Too many requests."}'}],
    [{"action": "hang", "seconds": 5}],
], ids=["503-then-429", "timeouts"])
def test_exchange_storms_degrade_and_recover(bot_factory, faults):
    bot = bot_factory(env={"TRADEGUARD_BOT_TICK_DEADLINE_S": "1", "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "500"})
    hb = bot.wait_state("running")
    for fault in faults:
        bot.paper.add_fault(method="*", path="*", times=None, **fault)
        storm = bot.wait_state("degraded", "safe", timeout=20, min_seq=hb.seq + 1)
        hb = bot.wait_ticks(2, timeout=20)  # the loop and the heartbeat go on through the storm
        assert hb.detail["loop_ms"] < 1000 + 500  # the tick deadline, plus an order's full timeout
        bot.paper.clear_faults()
        hb = bot.wait_state("running", timeout=20, min_seq=storm.seq + 1)
    assert bot.alive()


def test_an_order_over_a_risk_limit_is_not_sent(bot_factory, tmp_path):
    strategy = tmp_path / "buy_once.py"
    strategy.write_text(BUY_ONCE)
    bot = bot_factory(strategy=f"{strategy}:BuyOnce", strategy_params={"amount": 0.004},
                      env={"TRADEGUARD_RISK_MAX_POSITION": '{"BTC/USDT": 0.003}'})
    bot.wait_state("running")
    bot.wait_ticks(5)
    assert _orders(bot) == []
    wait_until(lambda: "risk limit max_position" in bot.output(), 5, message="the block logged")
    assert bot.output().count("risk: blocked") == 1  # reported once a minute, not every tick


BUY_EVERY_TICK = """
from bot.strategy import Order, Strategy

class Buyer(Strategy):
    def on_tick(self, ctx):
        return [Order("BTC/USDT", "buy", 0.0002)]
"""


def test_the_order_rate_limit_survives_a_restart(bot_factory, tmp_path):
    strategy = tmp_path / "buyer.py"
    strategy.write_text(BUY_EVERY_TICK)
    bot = bot_factory(strategy=f"{strategy}:Buyer", env={"TRADEGUARD_RISK_MAX_ORDERS_PER_MINUTE": "3"})
    bot.wait_state("running")
    # the protective stop after each fill is an exit (never blocked) but is counted as sent
    wait_until(lambda: "risk: blocked" in bot.output(), 10, message="the order rate limit reached")
    buys = [o["clientOrderId"] for o in _orders(bot) if o["side"] == "BUY"]
    assert 1 <= len(buys) <= 3
    bot.kill()
    bot.start()
    bot.wait_state("running")
    bot.wait_ticks(5)
    assert [o["clientOrderId"] for o in _orders(bot) if o["side"] == "BUY"] == buys


def _engage(bot, mode: str, reason: str, by: str) -> None:
    """The kill file as ``tradeguard kill`` (by "cli") or the watchdog (by "watchdog") writes it."""
    from resilience.killswitch import KillSwitch

    KillSwitch(bot.paths.kill_file).engage(mode, reason, by=by)


def test_a_flatten_the_watchdog_engaged_is_left_to_the_watchdog(bot_factory):
    """Never two sellers (#16): the bot does not sell on a watchdog's flatten; it sends nothing.
    The same flatten engaged by a person is carried out by the healthy bot."""
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.0})
    bot.wait_state("running")
    wait_until(lambda: _base_total(bot, "BTC") > 0, 20, message="a BTC position")
    _engage(bot, "flatten", "emergency: restart budget spent", by="watchdog")
    engaged_ms = time.time() * 1000
    hb = bot.wait_state("safe")
    assert hb.detail["kill_switch"] == "flatten"
    bot.wait_ticks(10)
    held = _base_total(bot, "BTC")
    late = [o for o in _orders(bot) if o["time"] > engaged_ms + 900]
    assert late == [] and held > 0, f"the bot traded on the watchdog's flatten: {late}"
    assert bot.heartbeat().detail["positions"]["BTC/USDT"] > 0

    bot.kill_switch("flatten", "the owner flattens")  # the file rewritten by a person: the bot sells
    wait_until(lambda: _base_total(bot, "BTC") == 0, 15, message="the bot flattened")
    sells = [o for o in _orders(bot) if o["side"] == "SELL" and o["time"] > engaged_ms + 900]
    assert sells
