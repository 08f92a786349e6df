"""Paper exchange: signed round trips through the real ccxt client, and cold start.

``.venv/bin/python -m benchmarks.bench_paper_exchange`` prints medians over RUNS runs of:
- signed ``fetch_balance`` round trips per second, one client, loopback (target >= 500/s);
- limit order create + cancel pairs per second (two signed, durable writes per pair);
- market orders per second (order + fill + balances in one durable transaction);
- CPU time per ``fetch_balance`` in the server process and in the client (ccxt) process: what
  the round trip rate is made of, and steadier than wall time on a shared machine;
- cold start of ``tradeguard paper-exchange`` (fresh data dir) to the first answered request.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port

RUNS = 5


def _start(root: Path) -> PaperExchange:
    return PaperExchange.create(root, free_port(), paper={"tick_s": 3600}).start()


def _rate(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def round_trips(px: PaperExchange, n: int, runs: int) -> dict[str, float]:
    client = px.client()
    client.load_markets()
    for _ in range(50):  # warm up the connection pool and both processes
        client.fetch_balance()
    price = float(client.fetch_ticker("BTC/USDT")["last"]) * 0.5

    def create_cancel(i: int) -> None:
        o = client.create_order("BTC/USDT", "limit", "buy", 0.001, price)
        client.cancel_order(o["id"], "BTC/USDT")

    def market(i: int) -> None:
        client.create_order("BTC/USDT", "market", "buy" if i % 2 == 0 else "sell", 0.001)

    return {
        "fetch_balance round trips/s": statistics.median(
            _rate(lambda i: client.fetch_balance(), n) for _ in range(runs)),
        "create+cancel pairs/s": statistics.median(_rate(create_cancel, n // 4) for _ in range(runs)),
        "market orders/s": statistics.median(_rate(market, n // 4) for _ in range(runs)),
    }


def cpu_per_call_us(px: PaperExchange, n: int, runs: int) -> dict[str, float]:
    client = px.client()
    client.load_markets()
    server, me = psutil.Process(px.proc.pid), psutil.Process()
    srv, cli = [], []
    for _ in range(runs):
        s0, c0 = sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2])
        for _ in range(n):
            client.fetch_balance()
        srv.append((sum(server.cpu_times()[:2]) - s0) / n * 1e6)
        cli.append((sum(me.cpu_times()[:2]) - c0) / n * 1e6)
    return {"server CPU per fetch_balance (us)": statistics.median(srv),
            "client CPU per fetch_balance (us)": statistics.median(cli)}


def cold_start_s(base: Path, runs: int) -> float:
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        px = _start(base / f"cold{i}")
        times.append(time.perf_counter() - t0)
        px.stop()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("-n", type=int, default=2000, help="round trips per run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        px = _start(Path(d) / "rt")
        try:
            results = round_trips(px, args.n, args.runs)
            results.update(cpu_per_call_us(px, args.n // 2, args.runs))
        finally:
            px.stop()
        results["cold start to first answer (s)"] = cold_start_s(Path(d), args.runs)
    print(f"paper exchange, medians of {args.runs} runs:")
    for name, value in results.items():
        print(f"  {name:<34} {value:10.3f}" if value < 100 else f"  {name:<34} {value:10.0f}")


if __name__ == "__main__":
    main()
