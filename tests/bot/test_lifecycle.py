"""The order lifecycle under the worst timing: SIGKILL at every order failpoint, responses lost
after the exchange placed the order, a corrupted state.db. Never a duplicate, never a lost fill."""
from __future__ import annotations

import json
import random
import signal
import time

import pytest

from tests.helpers.fixtures_bot import LEDGER_TO_STATE, consistency_problems
from tests.helpers.proc import wait_until

POINTS = ("orders.after_intent", "orders.before_submit", "orders.after_submit", "orders.after_ack")


def _settled(bot) -> bool:
    """Nothing in flight and the books match the exchange."""
    reader = bot.state_reader()
    if any(o["state"] in ("INTENT", "SUBMITTING", "UNKNOWN") for o in reader.orders()):
        return False
    return not consistency_problems(reader, bot.paper)


def test_sigkill_at_every_order_failpoint_then_restart(bot_factory):
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.0}, start=False)
    for point in POINTS:
        bot.start(env={"TRADEGUARD_FAILPOINTS": f"{point}=crash@2"})
        assert bot.wait_exit(30) == -signal.SIGKILL, f"{point} did not fire:\n{bot.output()[-2000:]}"
        victim = bot.state_reader().orders()[-1]
        bot.start()
        bot.wait_state("running")
        wait_until(lambda: _settled(bot), 20, interval=0.2, message=f"books settled after {point}")
        after = {o["client_order_id"]: o for o in bot.state_reader().orders()}[victim["client_order_id"]]
        on_exchange = [o for o in bot.paper.ledger()["orders"]
                       if o["clientOrderId"] == victim["client_order_id"]]
        if point == "orders.after_intent":  # never sent: the intent is canceled, nothing reached the exchange
            assert after["state"] == "CANCELED" and on_exchange == []
        else:  # sent (or resent with the same id after the grace period): exactly once
            # a market order fills; the protective stop of an earlier fill rests (or was
            # replaced since: the demo keeps trading) — as the exchange says, either way
            assert len(on_exchange) == 1
            assert after["state"] == LEDGER_TO_STATE[on_exchange[0]["status"]]
            assert after["state"] == "FILLED" or victim["purpose"] == "protective"
        resting = [o for o in bot.paper.ledger()["orders"] if o["status"] == "NEW"
                   and o["type"] in ("STOP_LOSS", "STOP_LOSS_LIMIT")]
        assert len(resting) <= len({o["symbol"] for o in resting}), resting  # one stop per symbol
        bot.kill(signal.SIGKILL)
    assert consistency_problems(bot.state_reader(), bot.paper) == []


@pytest.mark.parametrize("then", ["respond", "reset", "hang"])
def test_lost_acknowledgement_never_duplicates(bot_factory, then):
    bot = bot_factory(strategy_params={"interval_s": 0.3, "limit_probability": 0.0})
    bot.wait_state("running")
    wait_until(lambda: bot.paper.ledger()["orders"], 15, message="a first order")
    fault = {"method": "POST", "path": "/api/v3/order", "action": "apply_then_fail", "times": 2}
    fault.update({"status": 503} if then == "respond" else {"then": then})
    before = len(bot.paper.ledger()["orders"])
    bot.paper.add_fault(**fault)
    wait_until(lambda: len(bot.paper.ledger()["orders"]) >= before + 2, 20, message="two orders applied")
    bot.paper.clear_faults()
    hit = [o["clientOrderId"] for o in bot.paper.ledger()["orders"][before:before + 2]]
    wait_until(lambda: _settled(bot), 20, interval=0.2, message="lost acks resolved")
    for cid in hit:
        states = [t for _, t in bot.state_reader().transitions(cid)]
        assert "UNKNOWN" in states and states[-1] == "FILLED", (cid, states)
    assert bot.alive()


def _corrupt(path, seed: int = 5) -> None:
    """Overwrite the header and some pages with random bytes (seeded)."""
    rng = random.Random(seed)
    data = bytearray(path.read_bytes())
    for start in [0] + [4096 * k for k in range(1, len(data) // 4096, 2)]:
        data[start:start + 512] = bytes(rng.randrange(256) for _ in range(min(512, len(data) - start)))
    path.write_bytes(bytes(data))


def test_corrupted_state_db_is_rebuilt_from_the_exchange(bot_factory):
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.0})
    bot.wait_state("running")
    wait_until(lambda: len(bot.paper.ledger()["fills"]) >= 4 and _settled(bot), 20, interval=0.2,
               message="some trading")
    assert bot.stop() == 0
    ledger = bot.paper.ledger()
    max_seq = max(int(o["clientOrderId"].rsplit("-", 1)[1]) for o in ledger["orders"])
    _corrupt(bot.paths.state_db)

    bot.start(env={"TRADEGUARD_BOT_STRATEGY_PARAMS": '{"interval_s": 0.2, "limit_probability": 0.0}'})
    bot.wait_state("running")
    assert list(bot.data_dir.glob("state.db.corrupt-*")), "the damaged file was not kept aside"
    reader = bot.state_reader()
    restored = {o["client_order_id"] for o in reader.orders()}
    assert {o["clientOrderId"] for o in ledger["orders"]} <= restored
    wait_until(lambda: len(bot.paper.ledger()["orders"]) > len(ledger["orders"]), 15, message="a new order")
    new = [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"] not in
           {x["clientOrderId"] for x in ledger["orders"]}]
    assert all(int(o["clientOrderId"].rsplit("-", 1)[1]) > max_seq for o in new)
    wait_until(lambda: _settled(bot), 15, interval=0.2, message="books settled after the rebuild")


def test_reconciliation_adopts_what_happened_while_down_and_halts_on_the_unexplained(
        bot_factory, paper_exchange_factory):
    paper = paper_exchange_factory(volatility=0.0)
    bot = bot_factory(paper=paper, strategy_params={"interval_s": 0.2, "limit_probability": 1.0,
                                                    "limit_ttl_s": 60})
    bot.wait_state("running")
    wait_until(lambda: any(o["status"] == "NEW" and o["symbol"] == "BTCUSDT" for o in paper.ledger()["orders"])
               and float(paper.balances().get("BTC", {}).get("total", 0)) > 0.0005, 20,
               message="a resting BTC entry and a BTC position")
    bot.kill(signal.SIGKILL)
    resting = next(o for o in paper.ledger()["orders"] if o["status"] == "NEW" and o["symbol"] == "BTCUSDT")
    paper.set_price("BTC/USDT", float(resting["price"]) * 0.999)  # it fills while the bot is down
    assert {o["clientOrderId"]: o["status"] for o in paper.ledger()["orders"]}[resting["clientOrderId"]] == "FILLED"
    paper.client().create_order("BTC/USDT", "market", "sell", 0.0002)  # someone else sells some of it

    bot.start()
    # safe already while recovery adopts (heartbeats of its progress); then safe for the sale
    hb = wait_until(lambda: (h := bot.heartbeat()) and h.state == "safe"
                    and "BTC/USDT" in (h.detail.get("needs_attention") or "") and h, 20,
                    message="safe for the unexplained sale")
    assert json.loads(bot.paths.kill_file.read_text())["reason"].startswith("reconciliation: BTC/USDT")
    adopted = {o["client_order_id"]: o for o in bot.state_reader().orders()}[resting["clientOrderId"]]
    assert adopted["state"] == "FILLED"  # the fill that happened while down is adopted
    bot.release_kill_switch()  # `tradeguard resume`: a person takes responsibility
    hb = bot.wait_state("running")
    btc = float(paper.balances()["BTC"]["total"])
    assert abs(bot.state_reader().positions()["BTC/USDT"] - btc) < 1e-9
    assert hb.detail["needs_attention"] is None


def test_a_long_history_is_rebuilt_with_heartbeats_while_it_is_adopted(bot_factory,
                                                                       paper_exchange_factory):
    """The full chaos suite's state-corruption #10 under load: rebuilding a lost state.db from a
    long history adopted for seconds without a heartbeat (3.4 s here before the fix, more under
    load), longer than the chaos watchdog waits (2.5 s), so the watchdog killed the rebuilding
    bot as hung, again and again. Every half second of adoption is now a heartbeat that says how
    far it got."""
    paper = paper_exchange_factory(volatility=0.0, rate_limit_multiplier=100)
    bot = bot_factory(paper=paper, strategy_params={"interval_s": 3600, "limit_probability": 0.0})
    bot.wait_state("running")
    assert bot.stop() == 0
    client = paper.client()
    client.load_markets()
    n = 600  # the bot's orders, placed while it was down: buys and sells of the same amount
    for i in range(n):
        client.create_order("BTC/USDT", "market", "buy" if i % 2 == 0 else "sell", 0.00025, None,
                            {"newClientOrderId": f"tg-tg1-{10_000 + i}"})
    _corrupt(bot.paths.state_db)
    bot.start()
    adopting: list[dict] = []

    def running() -> bool:
        hb = bot.heartbeat()
        if hb is not None and hb.detail.get("adopting"):
            adopting.append(hb.detail["adopting"])
        return hb is not None and hb.state == "running"

    wait_until(running, 120, interval=0.01, message="the rebuild done and the bot trading")
    # heartbeats came while the orders were being adopted, each saying how far it got
    assert any(0 < a["orders"] < n for a in adopting), adopting
    restored = {o["client_order_id"] for o in bot.state_reader().orders()}
    assert {f"tg-tg1-{10_000 + i}" for i in range(n)} <= restored
