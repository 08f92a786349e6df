"""Emergency flatten benchmark (#16): from "the bot cannot be brought back" to "account flat".

    .venv/bin/python -m benchmarks.bench_flatten [--runs 5] [--symbols 2,10]

A real supervisord system (paper exchange, bot, watchdog) per run, in a scratch directory. The bot
(its strategy idle) owns a position in each of N symbols, bought through its own order lifecycle;
the owner holds coins of their own beside them. Two ways the bot cannot be brought back:

* ``kill``: SIGSTOP the bot, then ``tradeguard kill --flatten`` (the watchdog waits
  ``[watchdog] flatten_deadline_s`` for the bot to do it, judges it hung, proves it dead, flattens);
* ``budget``: ``restart_budget = 0``, then SIGKILL the bot (nothing left to restart with).

Each prints the median time from the injection to the account flat (every position sold, the
owner's coins untouched), and from the watchdog's decision (its emergency start) to flat. Target:
<= 2 s plus one order round trip per symbol, from the decision.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_watchdog import System
from tests.helpers.proc import wait_until
from tests.watchdog.trading import balance, bot_buys

CONFIG = """
[exchange]
symbols = {symbols}

[paper]
port = {{paper_port}}

[bot]
loop_interval_s = 0.5
tick_deadline_s = 4.0
strategy_params = {{{{ interval_s = 1000000.0 }}}}

[watchdog]
manager = "supervisor"
restart_budget = {budget}
restart_window_s = 600

[health]
port = {{health_port}}
"""
OWNERS = 1.0  # of each base asset, the owner's own


def _amounts(s: System, symbols: list[str]) -> dict[str, float]:
    """A position worth ~50 USDT in each symbol."""
    ex = s.paper().client()
    ex.load_markets()
    return {sym: float(ex.amount_to_precision(sym, 50.0 / float(ex.fetch_ticker(sym)["last"])))
            for sym in symbols}


def one_run(mode: str, symbols: list[str]) -> tuple[float, float]:
    budget = 0 if mode == "budget" else 1000
    s = System(watchdog=True, config=CONFIG.format(symbols=json.dumps(symbols), budget=budget))
    try:
        px = s.paper()
        bases = [sym.split("/")[0] for sym in symbols]
        for b in bases:
            px.deposit(b, OWNERS)
        for sym, amount in _amounts(s, symbols).items():
            bot_buys(s.cfg, sym, amount)
        pid = s.bot_pid()
        t0 = time.monotonic()
        if mode == "kill":
            os.kill(pid, signal.SIGSTOP)
            tg = Path(sys.executable).parent / "tradeguard"
            subprocess.run([str(tg), "kill", "--flatten", "--reason", "bench",
                            "--data-dir", str(s.paths.data_dir), "--logs-dir", str(s.paths.logs_dir)],
                           check=True, capture_output=True)
        else:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(abs(balance(px, b) - OWNERS) < 1e-9 for b in bases), 120, 0.02,
                   message="account flat")
        t_flat = time.monotonic()
        state = json.loads(s.paths.watchdog_state.read_text())
        decided = float(state["emergency"]["started_at"])  # wall clock, when the watchdog decided
        from_decision = time.time() - (time.monotonic() - t_flat) - decided
        return t_flat - t0, from_decision
    finally:
        s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--symbols", default="2,10", help="comma-separated numbers of symbols")
    a = ap.parse_args()
    from paper_exchange.markets import MARKETS

    every = [m.symbol for m in MARKETS.values()]
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; default [watchdog] "
          "and [exchange] settings, manager supervisor", flush=True)
    for n in (int(x) for x in a.symbols.split(",")):
        if n > len(every):
            print(f"{n} symbols: the paper exchange lists {len(every)} markets", flush=True)
            return 2
        for mode in ("kill", "budget"):
            runs = [one_run(mode, every[:n]) for _ in range(a.runs)]
            total = statistics.median(r[0] for r in runs)
            decision = statistics.median(r[1] for r in runs)
            print(f"{n} symbols, {mode}: injection -> flat median {total:.2f} s "
                  f"(min {min(r[0] for r in runs):.2f}, max {max(r[0] for r in runs):.2f}); "
                  f"watchdog decision -> flat median {decision:.2f} s (n={len(runs)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
