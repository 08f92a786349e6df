"""A breaker opened by a storm closes again although the bot has no work for that dependency:
without a probe, nothing would call it, and the bot would stay degraded (then safe) for good."""
from __future__ import annotations

from tests.helpers.proc import wait_until

REST_ONCE = """
from bot.strategy import Order, Strategy

class RestOnce(Strategy):
    placed = False

    def on_tick(self, ctx):
        if RestOnce.placed or "BTC/USDT" not in ctx.market or ctx.degradation != "running":
            return []
        RestOnce.placed = True
        price = round(ctx.market["BTC/USDT"].last * 0.5, 2)
        return [Order("BTC/USDT", "buy", 0.002, "limit", price, "rest")]
"""


def test_an_orders_breaker_with_nothing_left_to_call_closes_again(bot_factory, tmp_path):
    strategy = tmp_path / "rest_once.py"
    strategy.write_text(REST_ONCE)
    bot = bot_factory(strategy=f"{strategy}:RestOnce")
    bot.wait_state("running")
    reader = bot.state_reader()
    order = wait_until(lambda: reader.orders("OPEN"), 20, message="the resting order")[0]
    # the orders API refuses: following the open order opens the orders breaker
    bot.paper.add_fault(method="GET", path="/api/v3/openOrders", action="respond", status=429,
                        body='{"code":-1003,"msg":"Too many requests."}', times=None)
    wait_until(lambda: (hb := bot.heartbeat()) and hb.detail["breakers"]["orders"] != "closed",
               20, message="the orders breaker opens")
    # meanwhile the order ends on the exchange; reconciliation (the account's history) learns it
    bot.paper.client().cancel_order(order["exchange_order_id"], "BTC/USDT")
    wait_until(lambda: not reader.orders("OPEN"), 20, message="state.db learns the cancel")
    bot.paper.clear_faults()
    # nothing is open and the strategy sends nothing while degraded: only a probe can close it
    hb = bot.wait_state("running", timeout=20, min_seq=bot.heartbeat().seq + 1)
    assert hb.detail["breakers"]["orders"] == "closed"
    assert bot.alive()
