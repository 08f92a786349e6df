"""The strategy API of #17 with a real bot process on the paper exchange over HTTP (real ccxt,
real SQLite): what a strategy sees of its positions (average entry, unrealized P&L, the stop on
the exchange, the take-profit) and of the account's balances; ``on_start`` / ``on_stop``; the
bot-held take-profit exiting through the normal exit path; the dedicated alert and black-box
events for a position left without its stop (real watchdog, real webhook receiver)."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from blackbox.reader import query_events
from tests.helpers.fixtures_bot import consistency_problems
from tests.helpers.proc import free_port, spawn, stop, tradeguard_cmd, wait_until
from tests.watchdog.test_alerts import receiver  # noqa: F401 - fixture

SYMBOL = "BTC/USDT"
# Writes what it sees every tick to tick.json, its hook calls to *.jsonl, and sends the buy a
# test drops into buy.json (once nothing of the bot is working on the symbol).
PROBE = """
import json, os
from dataclasses import asdict
from pathlib import Path
from bot.strategy import Order, Strategy

class Probe(Strategy):
    def __init__(self, dir, fail_hooks=False):
        self.dir, self.fail_hooks, self.ticks = Path(dir), fail_hooks, 0

    def _log(self, name, obj):
        with (self.dir / name).open("a") as f:
            f.write(json.dumps(obj) + "\\n")

    def _view(self, ctx):
        return {"position": asdict(ctx.position("BTC/USDT")), "positions": ctx.positions,
                "balances": {c: asdict(b) for c, b in ctx.balances.items()},
                "ticks_before": self.ticks, "last": ctx.market["BTC/USDT"].last
                if "BTC/USDT" in ctx.market else None}

    def on_start(self, ctx):
        self._log("start.jsonl", self._view(ctx))
        self._log("order.jsonl", ["start", self.ticks])
        if self.fail_hooks:
            raise RuntimeError("on_start broke")

    def on_stop(self):
        self._log("stop.jsonl", {"ticks": self.ticks})
        if self.fail_hooks:
            raise RuntimeError("on_stop broke")

    def on_fill(self, fill):
        self._log("fills.jsonl", [fill.client_order_id, fill.purpose, fill.side, fill.amount])
        self._log("order.jsonl", ["fill", fill.purpose, fill.side, self.ticks])

    def on_tick(self, ctx):
        self.ticks += 1
        tmp = self.dir / "tick.tmp"
        tmp.write_text(json.dumps(self._view(ctx)))
        os.replace(tmp, self.dir / "tick.json")
        cmd = self.dir / "buy.json"
        if cmd.exists() and not any(o.purpose != "protective" for o in ctx.open_orders):
            kwargs = json.loads(cmd.read_text())
            cmd.unlink()
            return [Order("BTC/USDT", "buy", **kwargs)]
        return []
"""


@pytest.fixture
def probe(bot_factory, paper_exchange_factory, tmp_path):
    """``start(fail_hooks=False, **env) -> (bot, dir)``: the probe strategy on a still paper exchange."""
    strategy = tmp_path / "probe.py"
    strategy.write_text(PROBE)
    out = tmp_path / "probe"
    out.mkdir()
    paper = paper_exchange_factory(volatility=0.0)

    def start(fail_hooks: bool = False, **env: str):
        bot = bot_factory(paper=paper, strategy=f"{strategy}:Probe",
                          strategy_params={"dir": str(out), "fail_hooks": fail_hooks}, env=env)
        bot.wait_state("running")
        return bot, out

    return start


def _lines(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _tick(out: Path) -> dict:
    return json.loads((out / "tick.json").read_text()) if (out / "tick.json").exists() else {}


def _stops(bot, status: str = "NEW") -> list[dict]:
    return [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"].startswith("tg-tg1-")
            and o["type"] in ("STOP_LOSS", "STOP_LOSS_LIMIT") and o["status"] == status]


def _events(bot, kind: str) -> list[dict]:
    return [e for e in query_events(bot.paths.blackbox_db, kinds=(kind,)) if e["kind"] == kind]


def _position(bot) -> float:
    return bot.state_reader().positions().get(SYMBOL, 0.0)


def test_a_strategy_sees_entry_pnl_stop_and_balances_and_its_take_profit_exits(probe):
    bot, out = probe()
    [started] = _lines(out / "start.jsonl")  # once, after recovery, before the first tick
    assert started["ticks_before"] == 0 and started["positions"] == {}
    usdt = float(bot.paper.balances()["USDT"]["free"])
    assert started["balances"]["USDT"] == {"free": pytest.approx(usdt), "total": pytest.approx(usdt)}

    (out / "buy.json").write_text(json.dumps({"amount": 0.01, "take_profit_pct": 2.0}))
    wait_until(lambda: len(_stops(bot)) == 1 and _tick(out).get("position", {}).get("stop_price"),
               20, interval=0.1, message="the entry's stop on the exchange, seen by the strategy")
    buys = [f for f in bot.state_reader().fills() if f["side"] == "buy"]
    paid = sum(f["amount"] * f["price"] for f in buys) / sum(f["amount"] for f in buys)
    view = _tick(out)["position"]
    assert view["amount"] == pytest.approx(0.01)
    assert view["avg_entry"] == pytest.approx(paid, rel=5e-3)  # average cost, fees included
    entry = view["avg_entry"]
    assert view["stop_price"] == float(_stops(bot)[0]["stopPrice"])
    assert view["take_profit_price"] == pytest.approx(entry * 1.02)
    # the balance as of the last reconciliation: the stop locks the coins (free 0, total 0.01)
    seen = wait_until(lambda: (b := _tick(out).get("balances", {}).get("BTC")) and
                      b["total"] == pytest.approx(0.01) and b, 20, interval=0.1,
                      message="the bought coins in the strategy's balances")
    assert seen["free"] == pytest.approx(0.0)

    bot.kill(signal.SIGKILL)  # a restart: on_start again, and the take-profit is still watched
    bot.start()
    bot.wait_state("running")
    starts = _lines(out / "start.jsonl")
    assert len(starts) == 2 and starts[1]["ticks_before"] == 0
    assert starts[1]["position"]["stop_price"] == float(_stops(bot)[0]["stopPrice"])
    assert starts[1]["position"]["take_profit_price"] == pytest.approx(entry * 1.02)
    assert starts[1]["balances"]["BTC"]["total"] == pytest.approx(0.01)  # recovery's balance read

    up = round(entry * 1.01, 2)  # 1 % up: below the take-profit
    bot.paper.set_price(SYMBOL, up)
    view = wait_until(lambda: (t := _tick(out)) and t["last"] == up and t["position"], 20,
                      interval=0.1, message="the strategy sees the new price")
    assert view["unrealized_pnl"] == pytest.approx(0.01 * (up - entry), rel=1e-6)
    assert view["unrealized_pnl"] > 0 and _position(bot) == pytest.approx(0.01)
    bot.wait_ticks(3)
    assert _position(bot) == pytest.approx(0.01) and _events(bot, "takeprofit.reached") == []

    bot.paper.set_price(SYMBOL, round(entry * 1.025, 2))  # through the take-profit
    wait_until(lambda: _position(bot) == 0.0 and not _stops(bot), 20, interval=0.1,
               message="the take-profit exit: stop released, position sold")
    sells = [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"].startswith("tg-tg1-")
             and o["type"] == "MARKET" and o["side"] == "SELL"]
    assert [(s["status"], float(s["executedQty"])) for s in sells] == [("FILLED", 0.01)]  # sold once
    exit_id = sells[0]["clientOrderId"]
    assert next(o for o in bot.state_reader().orders()
                if o["client_order_id"] == exit_id)["purpose"] == "exit"
    assert len(_events(bot, "takeprofit.reached")) == 1
    wait_until(lambda: [exit_id, "exit", "sell", 0.01] in _lines(out / "fills.jsonl"), 10,
               interval=0.1, message="on_fill told of the exit")
    view = wait_until(lambda: (t := _tick(out)) and t["positions"].get(SYMBOL, 0.0) == 0.0 and
                      t["position"], 10, interval=0.1, message="flat in the strategy's view")
    assert view["take_profit_price"] is None and view["stop_price"] is None
    bot.wait_ticks(5)
    assert consistency_problems(bot.state_reader(), bot.paper) == []

    assert bot.stop() == 0  # SIGTERM: on_stop once (none for the SIGKILL)
    assert len(_lines(out / "stop.jsonl")) == 1 and len(_lines(out / "start.jsonl")) == 2


def test_fills_adopted_at_startup_are_told_before_the_strategy_starts(probe):
    """A stop that filled while the bot was down: the restarted strategy hears of the fill
    before on_start and its first tick (it must not re-enter as if still holding, or as if the
    stop had not sold)."""
    bot, out = probe()
    (out / "buy.json").write_text(json.dumps({"amount": 0.01}))
    wait_until(lambda: len(_stops(bot)) == 1, 20, interval=0.1, message="the entry's stop")
    stop_price = float(_stops(bot)[0]["stopPrice"])
    bot.kill(signal.SIGKILL)
    bot.paper.set_price(SYMBOL, round(stop_price * 0.99, 2))
    wait_until(lambda: _stops(bot, "FILLED"), 20, interval=0.1,
               message="the stop filled while the bot was down")

    bot.start()
    bot.wait_state("running")
    seq = wait_until(lambda: (x := _lines(out / "order.jsonl")) and x.count(["start", 0]) == 2 and x,
                     20, interval=0.1, message="the second on_start")
    restart = [i for i, e in enumerate(seq) if e == ["start", 0]][1]
    told = [i for i, e in enumerate(seq) if e[:3] == ["fill", "protective", "sell"]]
    assert told and told[0] < restart and seq[told[0]][3] == 0, seq
    assert _position(bot) == 0.0


def test_hooks_that_raise_are_recorded_and_never_stop_the_bot(probe):
    bot, out = probe(fail_hooks=True)
    wait_until(lambda: any("on_start failed: RuntimeError: on_start broke" in e["message"]
                           for e in _events(bot, "strategy.error")), 10, message="on_start's error")
    wait_until(lambda: _tick(out).get("ticks_before", 0) >= 3, 20, message="ticks go on")
    assert bot.alive()
    assert bot.stop() == 0
    assert len(_lines(out / "stop.jsonl")) == 1
    assert any("on_stop failed: RuntimeError: on_stop broke" in e["message"]
               for e in _events(bot, "strategy.error"))


def test_a_position_without_its_stop_raises_one_alert_and_event_per_episode(probe, receiver):  # noqa: F811
    bot, out = probe(TRADEGUARD_RISK_STOP_MISSING_ATTENTION_S="1")
    wd = spawn(tradeguard_cmd("watchdog", "--config", str(bot.config_file), "--data-dir",
                              str(bot.data_dir), "--logs-dir", str(bot.logs_dir)),
               env={**bot.env, "TRADEGUARD_WATCHDOG_MANAGER": "standalone",
                    "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.1",
                    "TRADEGUARD_HEALTH_PORT": str(free_port()),
                    "TRADEGUARD_ALERTS_WEBHOOK_URL": receiver.url()},
               log=bot.logs_dir / "watchdog.out")
    try:
        (out / "buy.json").write_text(json.dumps({"amount": 0.01}))
        wait_until(lambda: len(_stops(bot)) == 1, 20, interval=0.1, message="the entry's stop")
        bot.kill_switch("halt", "test: halt keeps stops, places none")
        bot.wait_state("safe")
        client = bot.paper.client()
        client.load_markets()
        client.cancel_order(_stops(bot)[0]["orderId"], SYMBOL)  # gone from the exchange
        alert = wait_until(lambda: [b for b in receiver.bodies if b["event"] == "stop_missing"],
                           30, interval=0.1, message="the stop_missing alert")[0]
        assert alert["severity"] == "critical" and SYMBOL in alert["message"]
        [event] = wait_until(lambda: _events(bot, "stops.missing"), 10, message="the event")
        assert event["severity"] == "critical" and SYMBOL in event["message"]
        hb = bot.heartbeat()
        assert hb.detail["stops_missing"] == [SYMBOL]
        assert "no protective stop on the exchange for BTC/USDT" in hb.detail["needs_attention"]
        bot.wait_ticks(10)  # once per episode, not per tick
        assert len(_events(bot, "stops.missing")) == 1
        assert [b["event"] for b in receiver.bodies].count("stop_missing") == 1

        bot.release_kill_switch()  # trading again: the bot puts the stop back
        wait_until(lambda: len(_stops(bot)) == 1, 20, interval=0.1, message="the stop back")
        wait_until(lambda: _events(bot, "stops.missing_cleared"), 10, message="cleared event")
        wait_until(lambda: any(b["event"] == "stop_restored" for b in receiver.bodies), 15,
                   interval=0.1, message="the stop_restored alert")
        assert bot.heartbeat().detail["stops_missing"] == []
        bot.wait_ticks(5)
        assert len(_events(bot, "stops.missing")) == 1
        assert [b["event"] for b in receiver.bodies].count("stop_missing") == 1
        assert bot.alive()
    finally:
        stop(wd)
    bot.kill(signal.SIGTERM)
