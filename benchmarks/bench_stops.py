"""Protective stops (#17): how soon a stop rests after an entry fills, and how long an exit
leaves the position without one.

    .venv/bin/python -m benchmarks.bench_stops              # ~1.5 minutes
    .venv/bin/python -m benchmarks.bench_stops --cycles 100 --loop-s 1.0

A real ``tradeguard bot`` on the paper exchange (127.0.0.1, a temporary directory) runs a
strategy that buys, waits for the stop, sells everything, and again. Both figures come from the
exchange's own ledger (its clock, ms):

* fill -> stop resting: an entry's ``updateTime`` (its fill) to the ``time`` of the next
  stop (STOP_LOSS by default) the exchange accepted (target: within one loop tick);
* exit window: the stop's cancel (``updateTime`` of the canceled stop) to the ``time`` of the
  market sell that follows it — the coins are unprotected in between.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port, spawn, stop, tradeguard_cmd

CYCLER = """
from bot.strategy import Order, Strategy

class Cycler(Strategy):
    def __init__(self, amount=0.002, hold_s=0.3):
        self.amount, self.hold_s, self.since = amount, hold_s, None

    def on_tick(self, ctx):
        if any(o.purpose != "protective" for o in ctx.open_orders):
            return []
        held = ctx.positions.get("BTC/USDT", 0.0)
        stopped = any(o.purpose == "protective" and o.state == "OPEN" for o in ctx.open_orders)
        if held <= 0:
            return [Order("BTC/USDT", "buy", self.amount, tag="bench-entry")]
        if stopped:
            self.since = self.since or ctx.now
            if ctx.now - self.since >= self.hold_s:
                self.since = None
                return [Order("BTC/USDT", "sell", held, tag="bench-exit")]
        return []
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(ledger: list[dict]) -> tuple[list[float], list[float]]:
    """(fill -> stop ms, exit window ms) from the exchange's ledger, in order of time."""
    orders = sorted((o for o in ledger if o["clientOrderId"].startswith("tg-tg1-")),
                    key=lambda o: (o["time"], o["orderId"]))
    stops = [o for o in orders if o["type"] in ("STOP_LOSS", "STOP_LOSS_LIMIT")]
    to_stop, window = [], []
    for o in orders:
        if o["type"] != "MARKET" or o["status"] != "FILLED":
            continue
        if o["side"] == "BUY":
            nxt = next((s for s in stops if s["time"] >= o["updateTime"]), None)
            if nxt is not None:
                to_stop.append(nxt["time"] - o["updateTime"])
        else:
            canceled = [s for s in stops if s["status"] == "CANCELED" and s["updateTime"] <= o["time"]]
            if canceled:
                window.append(o["time"] - max(s["updateTime"] for s in canceled))
    return to_stop, window


def run(cycles: int, loop_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        px = PaperExchange.create(root / "paper", free_port(), paper={"volatility": 0.0},
                                  launch=lambda a, env, log: spawn(a, env=env, log=log),
                                  terminate=stop).start()
        strategy = root / "cycler.py"
        strategy.write_text(CYCLER)
        env = {**px.env, "TRADEGUARD_BOT_LOOP_INTERVAL_S": str(loop_s),
               "TRADEGUARD_BOT_STRATEGY": f"{strategy}:Cycler",
               "TRADEGUARD_BOT_STRATEGY_PARAMS": json.dumps({"hold_s": 0.3}),
               "TRADEGUARD_RISK_MAX_ORDERS_PER_MINUTE": "100000",
               "TRADEGUARD_BOT_STATE_SYNCHRONOUS": "FULL"}
        bot = spawn(tradeguard_cmd("bot", "--config", str(px.config_file), "--data-dir",
                                   str(px.data_dir), "--logs-dir", str(px.logs_dir)),
                    env=env, log=root / "bot.out")
        try:
            deadline = time.monotonic() + cycles * (6 * loop_s + 2) + 30
            while time.monotonic() < deadline:
                sells = [o for o in px.ledger()["orders"] if o["type"] == "MARKET" and o["side"] == "SELL"]
                if len(sells) >= cycles:
                    break
                time.sleep(0.5)
            to_stop, window = measure(px.ledger()["orders"])
        finally:
            stop(bot)
            px.stop()
    return {"cycles": cycles, "loop_s": loop_s, "fill_to_stop_ms": to_stop, "exit_window_ms": window}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--loop-s", type=float, default=0.2)
    a = ap.parse_args(argv)
    r = run(a.cycles, a.loop_s)
    for name in ("fill_to_stop_ms", "exit_window_ms"):
        v = r[name]
        if not v:
            print(f"{name}: no samples")
            return 1
        print(f"{name}: n={len(v)} median={statistics.median(v):.0f} p99={_pct(v, 0.99):.0f} "
              f"max={max(v):.0f} (loop {r['loop_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
