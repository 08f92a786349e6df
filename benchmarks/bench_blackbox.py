"""Black box: cost of ``record()`` on the caller's thread.

``.venv/bin/python -m benchmarks.bench_blackbox`` prints medians over RUNS runs of:
- non-critical ``record()`` calls per second from one thread (writer running), and the
  end-to-end rate (record N, then flush until all N are on disk);
- critical (durable, synchronous=FULL) events per second;
- per-call latency p50/p99/p99.9 of ``record()`` at a steady 20,000 events/s while the writer flushes
  every 100 ms, against the same load with no writer (memory only): the difference is what
  the writer adds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from blackbox import recorder
from tradeguard.config import BlackboxConfig
from tradeguard.paths import RuntimePaths

RUNS = 5
FIELDS = {"symbol": "BTC/USDT", "side": "buy", "amount": 0.01, "client_order_id": "tg-tg1-123"}


def _start(tmp: Path, flush_ms: int = 100) -> recorder.Recorder:
    paths = RuntimePaths(tmp / "data", tmp / "logs").ensure()
    return recorder.init(paths, "bench", BlackboxConfig(flush_interval_ms=flush_ms))


def calls_per_s(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        _start(Path(d))
        t0 = time.perf_counter()
        for i in range(n):
            recorder.record("order.state", "orders", "order open", i=i, **FIELDS)
        dt = time.perf_counter() - t0
        recorder.close()
    return n / dt


def end_to_end_per_s(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        rec = _start(Path(d))
        t0 = time.perf_counter()
        for i in range(n):
            recorder.record("order.state", "orders", "order open", i=i, **FIELDS)
        assert recorder.flush(60)
        dt = time.perf_counter() - t0
        assert rec.written == n, rec.stats()
        recorder.close()
    return n / dt


def critical_per_s(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        _start(Path(d))
        t0 = time.perf_counter()
        for i in range(n):
            recorder.record("order.intent", "orders", "intent", critical=True, i=i, **FIELDS)
        dt = time.perf_counter() - t0
        recorder.close()
    return n / dt


def latencies_us(with_writer: bool, seconds: float = 2.0, burst: int = 20) -> list[float]:
    """Per-call latency at ``burst`` events every millisecond."""
    with tempfile.TemporaryDirectory() as d:
        if with_writer:
            _start(Path(d))
        out: list[float] = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            for _ in range(burst):
                t0 = time.perf_counter_ns()
                recorder.record("order.state", "orders", "order open", i=i, **FIELDS)
                out.append((time.perf_counter_ns() - t0) / 1000)
                i += 1
            time.sleep(0.001)
        recorder.close()
    return out


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args()
    med = statistics.median
    calls = med(calls_per_s(200_000) for _ in range(args.runs))
    e2e = med(end_to_end_per_s(50_000) for _ in range(args.runs))
    crit = med(critical_per_s(300) for _ in range(args.runs))
    busy = [latencies_us(True) for _ in range(args.runs)]
    base = [latencies_us(False) for _ in range(args.runs)]
    b50, b99, b999 = (med(pct(x, q) for x in base) for q in (50, 99, 99.9))
    w50, w99, w999 = (med(pct(x, q) for x in busy) for q in (50, 99, 99.9))
    print(f"runs: {args.runs} (medians)")
    print(f"record() non-critical, one thread:       {calls:12,.0f} events/s")
    print(f"record() + flush to disk (end to end):   {e2e:12,.0f} events/s")
    print(f"record(critical=True), durable:          {crit:12,.0f} events/s")
    print(f"latency, memory only     p50/p99/p99.9:  {b50:7.2f} / {b99:7.2f} / {b999:7.2f} µs")
    print(f"latency, writer flushing p50/p99/p99.9:  {w50:7.2f} / {w99:7.2f} / {w999:7.2f} µs")
    print(f"added by the writer      p50/p99/p99.9:  {w50 - b50:7.2f} / {w99 - b99:7.2f} / "
          f"{w999 - b999:7.2f} µs")


if __name__ == "__main__":
    main()
