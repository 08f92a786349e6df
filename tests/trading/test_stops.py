"""Protective stops (#17) with a real bot process on the paper exchange over HTTP (real ccxt,
real SQLite): placed after an entry fills, resized with the position, released for an exit and
put back, filled by the exchange as an exit, restored at startup; refused on a venue without
stop orders."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers.fixtures_bot import consistency_problems
from tests.helpers.proc import child_env, tradeguard_cmd, wait_until
from tradeguard.config import load_config
from tradeguard.exceptions import ConfigError
from trading.stops import stop_policy

# Runs the commands a test writes to a JSON file, one per tick once nothing of the bot is in
# flight; a command is taken off the file when it is sent (a restart does not repeat it).
SCRIPTED = """
import json, os
from pathlib import Path
from bot.strategy import Order, Strategy

class Scripted(Strategy):
    def __init__(self, commands):
        self.path = Path(commands)
        self.fills = self.path.with_name("fills.jsonl")

    def on_fill(self, fill):
        with self.fills.open("a") as f:
            f.write(json.dumps([fill.client_order_id, fill.purpose, fill.side, fill.amount]) + "\\n")

    def on_tick(self, ctx):
        try:
            cmds = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not cmds or any(o.state != "OPEN" for o in ctx.open_orders):
            return []
        side, amount, *stop = cmds[0]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cmds[1:]))
        os.replace(tmp, self.path)
        return [Order("BTC/USDT", side, amount, tag="scripted", stop_loss_pct=stop[0] if stop else None)]
"""
SYMBOL = "BTC/USDT"


@pytest.fixture
def scripted(bot_factory, paper_exchange_factory, tmp_path):
    """``start(**env) -> (bot, run)``: a scripted bot on a still paper exchange; ``run(cmd...)``
    queues commands."""
    strategy = tmp_path / "scripted.py"
    strategy.write_text(SCRIPTED)
    commands = tmp_path / "commands.json"
    commands.write_text("[]")
    paper = paper_exchange_factory(volatility=0.0)

    def run(*cmds: tuple[str, float]) -> None:
        pending = json.loads(commands.read_text())
        commands.write_text(json.dumps(pending + [list(c) for c in cmds]))

    run.fills = commands.with_name("fills.jsonl")  # what the strategy's on_fill heard

    def start(**env: str):
        bot = bot_factory(paper=paper, strategy=f"{strategy}:Scripted",
                          strategy_params={"commands": str(commands)}, env=env)
        bot.wait_state("running")
        return bot, run

    return start


def _ours(bot) -> list[dict]:
    return [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"].startswith("tg-tg1-")]


def _stops_on_exchange(bot, status: str = "NEW") -> list[dict]:
    return [o for o in _ours(bot) if o["type"] in ("STOP_LOSS", "STOP_LOSS_LIMIT") and o["status"] == status]


def _protective(bot, state: str = "OPEN") -> list[dict]:
    return [o for o in bot.state_reader().orders(state) if o["purpose"] == "protective"]


def _position(bot) -> float:
    return bot.state_reader().positions().get(SYMBOL, 0.0)


def _one_stop_sized(bot, amount: float) -> bool:
    stops = _stops_on_exchange(bot)
    return len(stops) == 1 and abs(float(stops[0]["origQty"]) - amount) < 1e-9 and \
        [o["client_order_id"] for o in _protective(bot)] == [stops[0]["clientOrderId"]]


def _views(bot) -> tuple[dict, str, str]:
    """What a person sees: /health/detailed's snapshot, /metrics and `tradeguard status`."""
    from watchdog.health.metrics import render_metrics
    from watchdog.health.snapshot import build_snapshot

    cfg = load_config(bot.config_file, data_dir=bot.data_dir, logs_dir=bot.logs_dir, env=bot.env)
    snap = build_snapshot(cfg)
    metrics = render_metrics(lambda: snap).decode()
    out = subprocess.run(tradeguard_cmd("status", "--config", str(bot.config_file), "--data-dir",
                                        str(bot.data_dir), "--logs-dir", str(bot.logs_dir)),
                         env=child_env(bot.env), capture_output=True, text=True, timeout=60)
    return snap, metrics, out.stdout


def _avg_entry(bot) -> float:
    fills = [f for f in bot.state_reader().fills() if f["side"] == "buy"]
    return sum(f["amount"] * f["price"] for f in fills) / sum(f["amount"] for f in fills)


@pytest.mark.parametrize("offset", [None, "0.5"])
def test_entry_gets_a_stop_that_follows_the_position_and_fills_as_an_exit(scripted, offset):
    bot, run = scripted(**({"TRADEGUARD_RISK_STOP_LIMIT_OFFSET_PCT": offset} if offset else {}))
    run(("buy", 0.01))
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the entry")
    stop = _stops_on_exchange(bot)[0]
    entry = _avg_entry(bot)
    # 5 % below the average entry (the default); by default it sells at market when triggered
    # (STOP_LOSS), with an offset it is a stop-limit with its limit that far below the stop
    assert stop["side"] == "SELL"
    assert float(stop["stopPrice"]) == pytest.approx(entry * 0.95, abs=0.01)
    if offset is None:
        assert stop["type"] == "STOP_LOSS"
    else:
        assert stop["type"] == "STOP_LOSS_LIMIT"
        assert float(stop["price"]) == pytest.approx(float(stop["stopPrice"]) * 0.995, abs=0.01)
    assert float(bot.paper.balances()["BTC"]["locked"]) == pytest.approx(0.01)

    run(("sell", 0.004))  # an exit on spot: the stop is released, the sell fills, the rest is covered
    wait_until(lambda: abs(_position(bot) - 0.006) < 1e-9 and _one_stop_sized(bot, 0.006), 15,
               interval=0.1, message="the stop resized to what is left")
    first = next(o for o in bot.state_reader().orders() if o["client_order_id"] == stop["clientOrderId"])
    assert first["state"] == "CANCELED"
    sell = next(o for o in _ours(bot) if o["type"] == "MARKET" and o["side"] == "SELL")
    assert sell["status"] == "FILLED" and float(sell["executedQty"]) == pytest.approx(0.004)

    run(("buy", 0.004))  # an add: the stop grows with the position
    wait_until(lambda: abs(_position(bot) - 0.01) < 1e-9 and _one_stop_sized(bot, 0.01), 15,
               interval=0.1, message="the stop resized after the add")

    resting = _stops_on_exchange(bot)[0]
    bot.paper.set_price(SYMBOL, float(resting["stopPrice"]) * 0.999)  # through the stop
    wait_until(lambda: _position(bot) == 0.0 and not _protective(bot), 15, interval=0.1,
               message="the stop's fill recorded as an exit")
    mine = next(o for o in bot.state_reader().orders() if o["client_order_id"] == resting["clientOrderId"])
    assert mine["state"] == "FILLED" and mine["filled"] == pytest.approx(0.01)
    assert sum(f["amount"] for f in bot.state_reader().fills()
               if f["client_order_id"] == resting["clientOrderId"]) == pytest.approx(0.01)
    bot.wait_ticks(5)
    assert _stops_on_exchange(bot) == [] and consistency_problems(bot.state_reader(), bot.paper) == []
    # the strategy heard every fill once, the stop's as "protective"
    told = [json.loads(line) for line in run.fills.read_text().splitlines()]
    purposes = {o["client_order_id"]: o["purpose"] for o in bot.state_reader().orders()}
    assert sorted(told) == sorted([f["client_order_id"], purposes[f["client_order_id"]], f["side"],
                                   f["amount"]] for f in bot.state_reader().fills())
    assert sum(t[3] for t in told if t[1] == "protective") == pytest.approx(0.01)


def test_a_failed_exit_puts_the_stop_back(scripted):
    bot, run = scripted()
    run(("buy", 0.01))
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the entry")
    # the sell after the stop's cancel is refused by the exchange (non-retryable): the stop returns
    bot.paper.add_fault(method="POST", path="/api/v3/order", action="respond", status=400,
                        body={"code": -1013, "msg": "Filter failure: LOT_SIZE"}, times=1)
    first = _stops_on_exchange(bot)[0]["clientOrderId"]
    run(("sell", 0.004))
    wait_until(lambda: any(o["state"] == "REJECTED" and o["side"] == "sell"
                           for o in bot.state_reader().orders()), 15, interval=0.1,
               message="the exit rejected")
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="the stop put back")
    assert _stops_on_exchange(bot)[0]["clientOrderId"] != first and _position(bot) == pytest.approx(0.01)


# Holds what a file says, every tick: the way a Target strategy re-asks until it is there.
TARGETED = """
from pathlib import Path
from bot.strategy import Strategy, Target

class Targeted(Strategy):
    def __init__(self, target):
        self.path = Path(target)

    def on_tick(self, ctx):
        try:
            return [Target("BTC/USDT", float(self.path.read_text()))]
        except (OSError, ValueError):
            return []
"""


def test_an_exit_the_exchange_keeps_rejecting_backs_off_and_keeps_its_stop(bot_factory,
                                                                           paper_exchange_factory,
                                                                           tmp_path):
    """A Target re-asks every tick (0.2 s here); a venue that rejects the sell every time is
    asked again after 1, 2, 4... s, not per tick, and the stop is not canceled for a sell that
    cannot go (the exit-window chaos failure: a rejected exit re-asked until the IP ban)."""
    strategy = tmp_path / "targeted.py"
    strategy.write_text(TARGETED)
    target = tmp_path / "target"
    target.write_text("0.01")
    paper = paper_exchange_factory(volatility=0.0)
    bot = bot_factory(paper=paper, strategy=f"{strategy}:Targeted",
                      strategy_params={"target": str(target)})
    wait_until(lambda: _one_stop_sized(bot, 0.01), 20, interval=0.1, message="a stop for the entry")
    paper.add_fault(method="POST", path="/api/v3/order", params={"type": "MARKET", "side": "SELL"},
                    action="respond", status=400, times=None,
                    body={"code": -2010, "msg": "Account has insufficient balance for requested action."})
    target.write_text("0")  # from now on the strategy asks for the exit on every tick
    wait_until(lambda: "the exchange keeps rejecting orders: BTC/USDT exit" in
               (bot.heartbeat().detail.get("needs_attention") or ""), 30, interval=0.1,
               message="needs_attention after 3 rejected exits")
    first = bot.heartbeat()
    assert first.detail["rejections"]["BTC/USDT exit"]["count"] >= 3
    assert "insufficient balance" in first.detail["rejections"]["BTC/USDT exit"]["reason"]
    hb = bot.wait_ticks(20)
    # 20 ticks of a strategy asking for the sell: a few sells (1, 2, 4, 8 s apart), not one a tick
    ticks, sells = hb.seq - first.seq, paper.faults()[0]["hits"]
    tries = hb.detail["rejections"]["BTC/USDT exit"]["count"]
    assert ticks >= 20 and sells == tries and tries - first.detail["rejections"]["BTC/USDT exit"]["count"] <= 3
    # each try cancels the stop once and puts it back once: none is canceled for a sell that
    # cannot go, and between tries the position keeps its stop
    wait_until(lambda: _one_stop_sized(bot, 0.01), 10, interval=0.1, message="the stop back")
    canceled = [o for o in _ours(bot) if o["type"] == "STOP_LOSS" and o["status"] == "CANCELED"]
    assert len(canceled) == tries
    assert len([o for o in bot.state_reader().orders("REJECTED") if o["purpose"] == "exit"]) == tries
    paper.clear_faults()  # the venue takes the sell again: it goes at the next try
    wait_until(lambda: _position(bot) == 0.0, 40, interval=0.2, message="the exit after the back-off")
    hb = bot.wait_ticks(2)
    assert hb.detail["rejections"] == {} and not hb.detail.get("needs_attention")
    assert _stops_on_exchange(bot) == [] and consistency_problems(bot.state_reader(), paper) == []

def test_startup_restores_a_missing_stop_before_trading(scripted):
    bot, run = scripted()
    run(("buy", 0.01))
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the entry")
    bot.kill(signal.SIGKILL)
    gone = _stops_on_exchange(bot)[0]
    client = bot.paper.client()
    client.load_markets()
    client.cancel_order(gone["orderId"], SYMBOL)  # someone removed it while the bot was down
    assert _stops_on_exchange(bot) == []
    bot.start()
    hb = bot.wait_state("running")
    # the first heartbeat after recovery already shows the stop on the exchange
    assert hb.detail["stops"][SYMBOL]["state"] == "on_exchange", hb.detail["stops"]
    assert _one_stop_sized(bot, 0.01)
    assert next(o for o in bot.state_reader().orders()
                if o["client_order_id"] == gone["clientOrderId"])["state"] == "CANCELED"
    detail = hb.detail["stops"][SYMBOL]
    stop_price = float(_stops_on_exchange(bot)[0]["stopPrice"])
    assert detail["stop_price"] == pytest.approx(stop_price)
    assert 4.0 < detail["distance_pct"] < 6.0
    snap, metrics, status = _views(bot)
    shown = snap["stops"][SYMBOL]
    assert shown["state"] == "on_exchange" and shown["stop_price"] == pytest.approx(stop_price)
    assert shown["amount"] == pytest.approx(0.01) and 4.0 < shown["distance_pct"] < 6.0
    assert 'tradeguard_position_unprotected{symbol="BTC/USDT"} 0.0' in metrics
    assert f'tradeguard_position_stop_price{{symbol="BTC/USDT"}} {stop_price}' in metrics
    assert f"BTC/USDT: stop {stop_price:g} for 0.01 on the exchange" in status


def test_a_position_left_without_its_stop_needs_attention(scripted):
    bot, run = scripted(TRADEGUARD_RISK_STOP_MISSING_ATTENTION_S="1")
    run(("buy", 0.01))
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the entry")
    bot.kill_switch("halt", "test: halt keeps stops, places none")
    bot.wait_state("safe")
    bot.wait_ticks(3)
    assert len(_stops_on_exchange(bot)) == 1  # halt keeps the protective order
    client = bot.paper.client()
    client.load_markets()
    client.cancel_order(_stops_on_exchange(bot)[0]["orderId"], SYMBOL)
    wait_until(lambda: "no protective stop on the exchange for BTC/USDT" in
               (bot.heartbeat().detail.get("needs_attention") or ""), 20, interval=0.2,
               message="needs_attention for the bare position")
    assert bot.heartbeat().detail["stops"][SYMBOL]["state"] == "missing"
    snap, metrics, status = _views(bot)
    assert snap["stops"][SYMBOL]["state"] == "missing" and snap["status"] != "healthy"
    assert 'tradeguard_position_unprotected{symbol="BTC/USDT"} 1.0' in metrics
    assert "BTC/USDT: NO STOP on the exchange" in status
    assert _stops_on_exchange(bot) == []  # halted: no new order, not even a stop


def _cfg(tmp_path: Path, **risk: object):
    env = {f"TRADEGUARD_RISK_{k.upper()}": str(v) for k, v in risk.items()}
    return load_config(None, data_dir=tmp_path / "d", logs_dir=tmp_path / "l",
                       env={"TRADEGUARD_EXCHANGE_ID": "kraken", **env})


def test_a_venue_without_stop_orders_is_refused_unless_stops_are_off(tmp_path):
    with pytest.raises(ConfigError, match=r"stop_loss_pct = 0"):
        stop_policy(_cfg(tmp_path))
    assert stop_policy(_cfg(tmp_path, stop_loss_pct=0)) is None
    assert stop_policy(load_config(None, env={})).order_type == "market"  # the default: STOP_LOSS
    assert stop_policy(load_config(None, env={"TRADEGUARD_RISK_STOP_LIMIT_OFFSET_PCT": "0.5"})) \
        .order_type == "limit"
    with pytest.raises(ConfigError, match="stop_loss_pct"):
        load_config(None, env={"TRADEGUARD_RISK_STOP_LOSS_PCT": "-1"})


def test_the_bot_refuses_to_start_on_a_venue_without_stops(tmp_path):
    env = {"TRADEGUARD_EXCHANGE_ID": "kraken", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(tradeguard_cmd("bot", "--data-dir", str(tmp_path / "d"), "--logs-dir",
                                        str(tmp_path / "l")),
                         env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "stop_loss_pct = 0" in out.stderr and "Traceback" not in out.stderr


def _place_stop(cfg) -> None:
    """The bot's stop for what it holds, placed by the real ProtectiveStops."""
    import threading

    from tests.watchdog.trading import bot_runtime
    from trading.orders import OrderBook
    from trading.risk import RiskLimits
    from trading.runtime import StoppableBudget
    from trading.stops import ProtectiveStops

    rt = bot_runtime(cfg)
    try:
        rt.exchange.load_markets()
        orders = OrderBook(rt, RiskLimits(cfg.risk))
        price = float(rt.exchange.fetch_ticker(SYMBOL)["last"])
        ProtectiveStops(rt, orders, stop_policy(cfg), [SYMBOL]).maintain(
            {SYMBOL: price}, StoppableBudget(10.0, threading.Event()))
    finally:
        rt.store.close()


@pytest.mark.parametrize("interrupted", [False, True])
def test_the_watchdog_flatten_cancels_the_stop_then_sells_once(paper_exchange, interrupted):
    from tests.watchdog.trading import balance, bot_buys, bot_store, exchange_cfg, ledger_orders
    from watchdog.emergency import flatten

    owners = 0.05
    paper_exchange.deposit("BTC", owners)
    cfg = exchange_cfg(paper_exchange)
    bot_buys(cfg, SYMBOL, 0.01)
    _place_stop(cfg)
    stop = [o for o in ledger_orders(paper_exchange, "tg-tg1-") if o["type"] == "STOP_LOSS"]
    assert len(stop) == 1 and stop[0]["status"] == "NEW"
    assert balance(paper_exchange, "BTC", "locked") == pytest.approx(0.01)
    if interrupted:  # the stop is canceled, every sell is refused, and the flatten is stopped there
        fault = paper_exchange.add_fault(method="POST", path="/api/v3/order", action="respond",
                                         status=503, times=None)
        halt, out = threading.Event(), []
        def first_flatten() -> None:
            try:
                out.append(flatten(cfg, "test", stop=halt))
            except BaseException as e:  # noqa: BLE001 - shown by the assertion below
                out.append(e)

        runner = threading.Thread(target=first_flatten)
        runner.start()
        try:
            wait_until(lambda: any(f["id"] == fault and f["hits"] >= 1 for f in paper_exchange.faults()),
                       60, interval=0.1, message="the flatten's first sell refused")
        finally:
            halt.set()
            runner.join(60)
        assert not runner.is_alive() and out and getattr(out[0], "state", None) == "aborted", out
        paper_exchange.clear_faults()
        assert balance(paper_exchange, "BTC", "locked") == pytest.approx(0.0)  # the stop is gone

    r = flatten(exchange_cfg(paper_exchange), "test")  # again (resumed), with time to pass the fence

    assert r.state == "done", r
    assert balance(paper_exchange, "BTC") == pytest.approx(owners)  # all the bot's, nothing more
    assert balance(paper_exchange, "BTC", "locked") == pytest.approx(0.0)
    sells = [o for o in ledger_orders(paper_exchange, "tg-tg1-x") if o["status"] == "FILLED"]
    assert sum(float(o["executedQty"]) for o in sells) == pytest.approx(0.01)  # sold once
    assert next(o for o in ledger_orders(paper_exchange, "tg-tg1-")
                if o["clientOrderId"] == stop[0]["clientOrderId"])["status"] == "CANCELED"
    with bot_store(cfg) as store:
        assert store.get_order(stop[0]["clientOrderId"]).state == "CANCELED"
        assert store.positions()[SYMBOL].amount == pytest.approx(0.0)


def test_a_strategy_sets_its_own_stop_distance_per_entry(scripted):
    bot, run = scripted()
    run(("buy", 0.01, 2.0))  # Order(stop_loss_pct=2): this position's stop 2 % below its entry
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the entry")
    assert float(_stops_on_exchange(bot)[0]["stopPrice"]) == pytest.approx(_avg_entry(bot) * 0.98, abs=0.01)
    run(("sell", 0.01))
    wait_until(lambda: _position(bot) == 0.0 and not _stops_on_exchange(bot), 15, interval=0.1,
               message="flat, no stop")
    run(("buy", 0.01))  # flat in between: the next entry without its own distance gets the default
    wait_until(lambda: _one_stop_sized(bot, 0.01), 15, interval=0.1, message="a stop for the new entry")
    entry = [f for f in bot.state_reader().fills() if f["side"] == "buy"][-1]["price"]
    assert float(_stops_on_exchange(bot)[0]["stopPrice"]) == pytest.approx(entry * 0.95, abs=0.01)
