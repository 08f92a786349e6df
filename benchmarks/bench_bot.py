"""Bot benchmarks: cold start, loop overhead per tick, failpoint cost, RSS over a paper run.

    .venv/bin/python -m benchmarks.bench_bot                  # ~1.5 minutes
    .venv/bin/python -m benchmarks.bench_bot --rss-seconds 600  # the 10-minute RSS run

* cold start: ``tradeguard bot`` spawned on a fresh data dir until its first heartbeat
  (``starting``) and until ``running`` (recovery done), median of ``--runs`` (target <= 1.5 s);
* tick overhead: ticks of an in-process bot against the paper exchange, minus the time the
  resilience manager measured inside exchange calls (target <= 2 ms median);
* failpoints: the cost of ``Failpoints.hit`` with nothing armed (one dict lookup);
* RSS: a bot process trading on the paper exchange, sampled every second: steady RSS (median
  after a 10 s warm-up, target <= 150 MB) and growth (median of the last 10 samples minus the
  first 10 after warm-up), over the whole run, over its second half and over every whole
  10 minutes (a leak keeps growing; bounded buffers fill and level off), split into anonymous
  memory (heap) and file-backed pages (shared libraries, SQLite's -shm mapping). ``--rss-rate
  shipped`` runs the bot as ``make run`` does (demo strategy trading every 3 s, 1 s loop; the
  target's run), ``fast`` (default) six times as many orders (0.5 s, 0.2 s loop).
Everything runs on 127.0.0.1 with a paper exchange in a temporary directory.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port, spawn, stop, tradeguard_cmd
from tradeguard.heartbeat import read_heartbeat

WINDOW_S = 600  # growth is also reported per whole 10 minutes of the run
FAST = {"TRADEGUARD_BOT_LOOP_INTERVAL_S": "0.2", "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "2000",
        "TRADEGUARD_BOT_STRATEGY_PARAMS": '{"interval_s": 0.5, "limit_probability": 0.3, "limit_ttl_s": 2}'}


def _bot_argv(px: PaperExchange, data: Path, logs: Path) -> list[str]:
    return tradeguard_cmd("bot", "--config", str(px.config_file), "--data-dir", str(data),
                          "--logs-dir", str(logs))


def _wait_heartbeat(path: Path, pid: int, states: tuple[str, ...], timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hb = read_heartbeat(path)
        if hb is not None and hb.pid == pid and hb.state in states:
            return time.perf_counter()
        time.sleep(0.002)
    raise RuntimeError(f"no {states} heartbeat from pid {pid} within {timeout}s")


def cold_start(px: PaperExchange, root: Path, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from spawn to the first heartbeat, and to ``running``, per run (fresh data dir)."""
    first, ready = [], []
    for i in range(runs):
        data, logs = root / f"cold{i}" / "data", root / f"cold{i}" / "logs"
        data.mkdir(parents=True, mode=0o700)
        t0 = time.perf_counter()
        env = {**px.env, **FAST, "TRADEGUARD_BOT_BOT_ID": f"cold{i}"}  # one account, separate bots
        proc = spawn(_bot_argv(px, data, logs), env=env, log=root / f"cold{i}.out")
        try:
            first.append(_wait_heartbeat(data / "bot.heartbeat", proc.pid, ("starting", "running")) - t0)
            ready.append(_wait_heartbeat(data / "bot.heartbeat", proc.pid, ("running",)) - t0)
        finally:
            stop(proc)
    return first, ready


def tick_overhead(px: PaperExchange, root: Path, ticks: int) -> tuple[list[float], list[float]]:
    """Per tick: wall ms, and ms outside exchange calls, for an in-process bot."""
    from blackbox import recorder
    from bot.engine import Bot
    from trading.failpoints import Failpoints
    from bot.main import build_runtime
    from bot.strategy import load_strategy
    from tradeguard.config import load_config

    env = {**px.env, **FAST, "TRADEGUARD_BOT_BOT_ID": "inproc"}
    data = root / "inproc" / "data"
    data.mkdir(parents=True, mode=0o700)
    cfg = load_config(px.config_file, data_dir=data, logs_dir=root / "inproc" / "logs", env=env)
    cfg.runtime.ensure()
    recorder.init(cfg.runtime, "bot", cfg.blackbox)
    rt = build_runtime(cfg, Failpoints(), env)
    bot = Bot(rt, load_strategy(cfg.bot.strategy, cfg.bot.strategy_params), stop=threading.Event())

    def exchange_s() -> float:
        return sum(d["latency"]["sum_s"] for d in rt.manager.stats().values())

    wall, own = [], []
    try:
        for i in range(ticks + 20):
            before = exchange_s()
            t0 = time.perf_counter()
            bot.tick()
            elapsed = time.perf_counter() - t0
            if i >= 20:  # warm-up: recovery, first candles
                wall.append(elapsed * 1000)
                own.append((elapsed - (exchange_s() - before)) * 1000)
            time.sleep(0.02)
    finally:
        rt.store.close()
        recorder.close()
    return wall, own


def failpoint_cost() -> float:
    """Nanoseconds per ``Failpoints.hit`` with nothing armed."""
    from trading.failpoints import Failpoints

    fps = Failpoints()
    n = 1_000_000
    return min(timeit.repeat(lambda: fps.hit("orders.after_intent"), number=n, repeat=5)) / n * 1e9


def _rss_split(pid: int) -> tuple[float, float, float]:
    """(RSS, anonymous, file + shmem) of ``pid`` in MB, from /proc/PID/status."""
    kb = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            kb[key] = int(rest.split()[0])
    return kb["VmRSS"] / 1024, kb["RssAnon"] / 1024, (kb["RssFile"] + kb["RssShmem"]) / 1024


def rss_run(px: PaperExchange, root: Path, seconds: float, rate: str = "fast") -> list[tuple[float, float, float]]:
    """(RSS, anonymous, file-backed) MB of a trading bot process, one sample per second."""
    data, logs = root / "rss" / "data", root / "rss" / "logs"
    data.mkdir(parents=True, mode=0o700)
    env = {**px.env, **(FAST if rate == "fast" else {}), "TRADEGUARD_BOT_BOT_ID": "rss"}
    proc = spawn(_bot_argv(px, data, logs), env=env, log=root / "rss.out")
    samples = []
    try:
        _wait_heartbeat(data / "bot.heartbeat", proc.pid, ("running",))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(_rss_split(proc.pid))
            time.sleep(1.0)
    finally:
        stop(proc)
    return samples


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="cold starts (default 5)")
    ap.add_argument("--ticks", type=int, default=300, help="in-process ticks (default 300)")
    ap.add_argument("--rss-seconds", type=float, default=60.0,
                    help="length of the RSS run (default 60; 600 for the 10-minute run)")
    ap.add_argument("--rss-rate", choices=("fast", "shipped"), default="fast",
                    help="how fast the RSS run's bot trades: fast (default) or as shipped (make run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the in-process bot's warnings are not results
    with tempfile.TemporaryDirectory(prefix="tg-bench-bot-") as tmp:
        root = Path(tmp)
        px = PaperExchange.create(root / "paper", free_port()).start()
        try:
            first, ready = cold_start(px, root, args.runs)
            print(f"cold start to first heartbeat: median {statistics.median(first):.3f} s "
                  f"(runs: {', '.join(f'{x:.3f}' for x in first)})")
            print(f"cold start to running:         median {statistics.median(ready):.3f} s")
            wall, own = tick_overhead(px, root, args.ticks)
            print(f"tick wall time:                median {statistics.median(wall):.3f} ms, "
                  f"p90 {_pct(wall, 0.9):.3f} ms ({len(wall)} ticks)")
            print(f"tick overhead (no exchange):   median {statistics.median(own):.3f} ms, "
                  f"p90 {_pct(own, 0.9):.3f} ms")
            print(f"failpoint hit, none armed:     {failpoint_cost():.1f} ns")
            samples = rss_run(px, root, args.rss_seconds, args.rss_rate)
            rss = [s[0] for s in samples]
            steady = samples[10:] or samples
            print(f"steady RSS:                    median {statistics.median(rss[10:] or rss):.1f} MB "
                  f"(max {max(rss):.1f} MB, {len(rss)} s run, {args.rss_rate} rate)")
            for label, part in (("whole run", steady), ("second half", steady[len(steady) // 2:])):
                print(f"RSS growth, {label + ':':<19}{_growth(part)}")
            for start in range(0, len(steady) - WINDOW_S + 1, WINDOW_S):
                label = f"minutes {start // 60}-{(start + WINDOW_S) // 60}:"
                print(f"RSS growth, {label:<19}{_growth(steady[start:start + WINDOW_S])}")
        finally:
            px.stop()
    return 0


def _growth(samples: list[tuple[float, float, float]]) -> str:
    """Median of the last 10 samples minus the first 10: total, anonymous, file-backed."""
    head, tail = samples[:10], samples[-10:]
    d = [statistics.median(x[i] for x in tail) - statistics.median(x[i] for x in head)
         for i in range(3)]
    return f"{d[0]:+.1f} MB (anonymous {d[1]:+.1f} MB, file-backed {d[2]:+.1f} MB)"


if __name__ == "__main__":
    sys.exit(main())
