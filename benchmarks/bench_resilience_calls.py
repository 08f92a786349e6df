"""Resilience calls benchmark (issue 3): what ``ResilienceManager.call`` adds to a call, beside
tenacity alone and pybreaker alone, and what a kill switch check costs.

    .venv/bin/python -m benchmarks.bench_resilience_calls [--rounds 15] [--loops 20000]

Every case calls a no-op function on its success path (no failure, nothing to retry), in
``--loops`` calls per round; the figure is the median over ``--rounds`` rounds of the time per
call. "added" is that median minus the bare call's. Target: ``manager.call`` adds <= 10 us.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

TARGET_ADDED_NS = 10_000


def _noop(*_args: object, **_kwargs: object) -> None:
    return None


def _per_call_ns(cases: dict[str, Callable[[], object]], loops: int, rounds: int) -> dict[str, float]:
    """Median ns per call of each case; rounds interleave the cases so that noise from other
    processes on the machine hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            samples[name].append((time.perf_counter_ns() - t0) / loops)
    return {name: statistics.median(v) for name, v in samples.items()}


def call_cases() -> dict[str, Callable[[], object]]:
    import pybreaker
    import tenacity

    from resilience.manager import ResilienceManager
    from tradeguard.config import ResilienceConfig

    manager = ResilienceManager(ResilienceConfig())
    retrying = tenacity.retry(stop=tenacity.stop_after_attempt(4),
                              wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0),
                              retry=tenacity.retry_if_exception_type(OSError))(_noop)
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=10)
    return {
        "bare call": lambda: _noop("BTC/USDT"),
        "manager.call": lambda: manager.call("market_data", _noop, "BTC/USDT"),
        "manager.call, deadline=": lambda: manager.call("market_data", _noop, "BTC/USDT",
                                                        deadline=1e18),
        "tenacity Retrying wrapper": lambda: retrying("BTC/USDT"),
        "pybreaker CircuitBreaker.call": lambda: breaker.call(_noop, "BTC/USDT"),
    }


def kill_cases(tmp: Path) -> dict[str, Callable[[], object]]:
    from resilience.killswitch import KillSwitch

    absent = KillSwitch(tmp / "absent" / "KILL", environ={})
    engaged = KillSwitch(tmp / "KILL", environ={})
    engaged.engage("halt", "benchmark", by="bench")
    env = KillSwitch(tmp / "absent" / "KILL", environ={"BOT_EMERGENCY_SHUTDOWN": "halt"})
    real_env = KillSwitch(tmp / "absent" / "KILL")  # os.environ, as the bot uses it
    return {
        "KillSwitch.check, no file": absent.check,
        "KillSwitch.check, file engaged (cached)": engaged.check,
        "KillSwitch.check, env engaged": env.check,
        "KillSwitch.check, os.environ, no file": real_env.check,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--loops", type=int, default=20000)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the kill switch logs its engagement; not part of the figures
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.rounds} rounds x "
          f"{args.loops} calls; median ns per call")

    results = _per_call_ns(call_cases(), args.loops, args.rounds)
    bare = results["bare call"]
    print(f"{'case':42} {'ns/call':>10} {'added ns':>10}")
    for name, ns in results.items():
        print(f"{name:42} {ns:10.0f} {ns - bare:10.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, ns in _per_call_ns(kill_cases(Path(tmp)), args.loops, args.rounds).items():
            print(f"{name:42} {ns:10.0f}")

    added = results["manager.call"] - bare
    verdict = "OK" if added <= TARGET_ADDED_NS else "OVER TARGET"
    print(f"manager.call adds {added / 1000:.2f} us (target <= {TARGET_ADDED_NS / 1000:.0f} us): {verdict}")
    return 0 if added <= TARGET_ADDED_NS else 1


if __name__ == "__main__":
    sys.exit(main())
