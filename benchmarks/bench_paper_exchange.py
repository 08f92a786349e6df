"""Paper exchange: signed round trips through the real ccxt client, and cold start.

``.venv/bin/python -m benchmarks.bench_paper_exchange`` prints medians over RUNS runs of:
- signed ``fetch_balance`` round trips per second, loopback (target >= 500/s): one client, and
  CLIENTS clients in their own processes at once (what the exchange answers when a bot, its
  watchdog and a test or two call it together; one client alone is bound by its own ccxt CPU);
- limit order create + cancel pairs per second (two signed, durable writes per pair);
- market orders per second (order + fill + balances in one durable transaction);
- CPU time per ``fetch_balance`` in the server process and in the client (ccxt) process: what
  the round trip rate is made of, and steadier than wall time on a shared machine;
- cold start of ``tradeguard paper-exchange`` (fresh data dir) to the first answered request;
- market orders that walk exactly 5 book levels per second (5 fills each; only the create_order
  call is timed, the depth look-up that sizes it is not) (target >= 150/s);
- one step of the price walk with 1,000 resting limit orders and 100 stops, in process, with the
  exchange's own durable store (target < 5 ms).
The exchange runs with ``rate_limit_multiplier`` = 1000 so that the limits do not interfere.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import psutil

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port

RUNS = 5
CLIENTS = 3
UNLIMITED = {"rate_limit_multiplier": 1000.0}


def _start(root: Path, **paper) -> PaperExchange:
    return PaperExchange.create(root, free_port(), paper={"tick_s": 3600, **UNLIMITED, **paper}).start()


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


def _client_loop(px: PaperExchange, seconds: float, ready: Any, go: Any, out: Any) -> None:
    client = px.client()
    client.load_markets()
    for _ in range(50):
        client.fetch_balance()
    ready.release()
    go.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.fetch_balance()
        n += 1
    out.put((n, time.perf_counter() - t0))


def parallel_round_trips(px: PaperExchange, clients: int, seconds: float, runs: int) -> float:
    """Signed ``fetch_balance`` round trips per second of ``clients`` ccxt clients, each in its own
    process, all started together; the rate is their total over the longest client's time."""
    ctx = multiprocessing.get_context("fork")
    rates = []
    for _ in range(runs):
        ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_client_loop, args=(px, seconds, ready, go, out)) for _ in range(clients)]
        for p in procs:
            p.start()
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a benchmark client did not start within 60 s")
        go.set()
        done = [out.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join(timeout=10)
        rates.append(sum(n for n, _ in done) / max(t for _, t in done))
    return statistics.median(rates)


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


def walk_five_levels(px: PaperExchange, n: int, runs: int) -> float:
    """Market orders sized to take the first 4 levels and half the 5th, on a fresh book each."""
    client = px.client()
    client.load_markets()
    px.deposit("BTC", 1000)
    px.deposit("USDT", 10_000_000)
    rates = []
    for run in range(runs):
        spent = 0.0
        for i in range(n):
            px.set_price("BTC/USDT", 60000 + (i % 2))  # a new book version each order
            side = "buy" if i % 2 == 0 else "sell"
            levels = client.fetch_order_book("BTC/USDT", 5)["asks" if side == "buy" else "bids"]
            qty = sum(Decimal(str(q)) for _, q in levels[:4]) + Decimal(str(levels[4][1])) / 2
            qty = float(qty.quantize(Decimal("0.00001")))
            t0 = time.perf_counter()
            o = client.create_order("BTC/USDT", "market", side, qty)
            spent += time.perf_counter() - t0
            assert len(o["trades"]) == 5, o["info"]
        rates.append(n / spent)
    return statistics.median(rates)


def walk_step_ms(root: Path, steps: int) -> float:
    """Median time of ``Engine.tick()`` with 1,000 resting limit orders and 100 stops (in process)."""
    from paper_exchange import engine as eng
    from paper_exchange.markets import MARKETS
    from paper_exchange.prices import PriceFeed
    from paper_exchange.store import Store

    store = Store(root / "exchange.db")
    settings = eng.EngineSettings(Decimal("0.001"), "quote", Decimal("0.0005"),
                                  {"USDT": Decimal(10**9), "BTC": Decimal(10**5), "ETH": Decimal(10**6)})
    e = eng.Engine(store, lambda st: PriceFeed(MARKETS, seed=1, volatility=0.001, tick_s=0.5, state=st,
                                               now_ms=eng.now_ms()), settings)
    rng = random.Random(5)
    m = MARKETS["BTCUSDT"]
    last = e.feed.price("BTCUSDT")
    has_stops = hasattr(eng, "_triggered")
    for i in range(1100):
        side = "BUY" if i % 2 == 0 else "SELL"
        away = Decimal(str(rng.uniform(0.002, 0.05)))
        price = m.round_price(last * (1 - away if side == "BUY" else 1 + away))
        if i < 1000:
            e.place(eng.OrderRequest(m, side, "LIMIT", Decimal("0.01"), None, price, "GTC", f"b-{i}"))
        elif has_stops:  # stops below (sell) / above (buy) the price
            stop = m.round_price(last * (1 - away if side == "SELL" else 1 + away))
            e.place(eng.OrderRequest(m, side, "STOP_LOSS", Decimal("0.01"), None, None, "", f"s-{i}",
                                     stop_price=stop))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        e.tick()
        times.append((time.perf_counter() - t0) * 1000)
    store.close()
    return statistics.median(times)


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
    ap.add_argument("--steps", type=int, default=500, help="price walk steps timed")
    ap.add_argument("--clients", type=int, default=CLIENTS, help="clients at once for the parallel rate")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each parallel run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        px = _start(Path(d) / "rt")
        try:
            results = round_trips(px, args.n, args.runs)
            results.update(cpu_per_call_us(px, args.n // 2, args.runs))
            results[f"fetch_balance round trips/s, {args.clients} clients"] = parallel_round_trips(
                px, args.clients, args.seconds, args.runs)
        finally:
            px.stop()
        px = _start(Path(d) / "walk", slippage=0.0, book_level_quote=500.0)
        try:
            results["market orders walking 5 levels/s"] = walk_five_levels(px, args.n // 8, args.runs)
        finally:
            px.stop()
        results["price walk step, 1000 limits + 100 stops (ms)"] = walk_step_ms(Path(d), args.steps)
        results["cold start to first answer (s)"] = cold_start_s(Path(d), args.runs)
    print(f"paper exchange, medians of {args.runs} runs:")
    for name, value in results.items():
        print(f"  {name:<46} {value:10.3f}" if value < 100 else f"  {name:<46} {value:10.0f}")


if __name__ == "__main__":
    main()
