"""The demo bot against the realistic rate limits: does it ever get a 429 (issue 15)?

    .venv/bin/python -m benchmarks.bench_demo_limits --minutes 10

Runs the whole system as ``make run`` does — ``tradeguard run``: supervisord with the paper
exchange (its default ``[paper]`` settings, i.e. Binance's limits: 6,000 request weight per
minute, 100 orders per 10 s), the bot (default ``[bot]`` settings, the demo strategy) and the
watchdog — in a temporary directory on 127.0.0.1 with free ports. Only the ports and the paths
are set. The exchange's own accounting (``GET /_paper/rate-limits``) is sampled every second;
at the end the script prints the peak request weight of any minute, the peak orders of any
10 seconds, the requests the exchange refused with 429 and 418 (must be 0), how many orders
reached the exchange and how often the bot held a call back because its governor saw the
headers near a limit. Everything is stopped with SIGTERM (SIGKILL after a deadline).
Exit 0 when nothing was refused, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port, spawn, stop, tradeguard_cmd
from tradeguard.heartbeat import read_heartbeat

START_TIMEOUT_S = 120.0


def _config(root: Path, paper_port: int, health_port: int) -> Path:
    conf = root / "tradeguard.toml"
    conf.write_text(f'[paths]\ndata_dir = "{root / "data"}"\nlogs_dir = "{root / "logs"}"\n\n'
                    f"[paper]\nport = {paper_port}\n\n[health]\nport = {health_port}\n")
    return conf


def _wait_running(heartbeat: Path, proc, timeout: float) -> float:
    """Wall-clock time of the bot's first ``running`` heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tradeguard run exited with {proc.returncode}")
        hb = read_heartbeat(heartbeat)
        if hb is not None and hb.state == "running":
            return hb.ts
        time.sleep(0.2)
    raise RuntimeError(f"the bot was not running within {timeout:.0f} s")


def _rate_holds(conf: Path, since: float) -> int:
    """How many times the bot's governor held a call back (black-box ``exchange.rate_hold``)."""
    from blackbox.reader import query_events
    from tradeguard.config import load_config

    db = load_config(conf, env={}).runtime.blackbox_db
    return len(query_events(db, since=since, kinds=("exchange.rate_hold",)))


def measure(root: Path, minutes: float, sample_s: float) -> dict:
    paper_port, health_port = free_port(), free_port()
    conf = _config(root, paper_port, health_port)
    data, logs = root / "data", root / "logs"
    px = PaperExchange(data, logs, paper_port, conf)
    proc = spawn(tradeguard_cmd("run", "--config", str(conf), "--data-dir", str(data),
                                "--logs-dir", str(logs)), log=root / "run.out", cwd=root)
    samples: list[dict] = []
    states: dict[str, int] = {}
    try:
        t_running = _wait_running(data / "bot.heartbeat", proc, START_TIMEOUT_S)
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"tradeguard run exited with {proc.returncode} during the run")
            samples.append(px.rate_limits())
            hb = read_heartbeat(data / "bot.heartbeat")
            state = hb.state if hb is not None else "none"
            states[state] = states.get(state, 0) + 1
            time.sleep(sample_s)
        final = px.rate_limits()
        orders = len(px.ledger()["orders"])
    finally:
        code = stop(proc, timeout=60.0)
    limits = {(lim["rateLimitType"], lim["interval"]): lim["limit"] for lim in final["limits"]}
    return {
        "minutes": minutes, "samples": len(samples),
        "weight_limit_1m": limits[("REQUEST_WEIGHT", "MINUTE")],
        "orders_limit_10s": limits[("ORDERS", "SECOND")],
        "peak_weight_1m": final["peak"]["weight_1m"],
        "peak_orders_10s": final["peak"]["orders_10s"],
        "refused_429": final["refused"]["429"], "refused_418": final["refused"]["418"],
        "orders_on_exchange": orders,
        "orders_1d": int(final["used"]["X-MBX-ORDER-COUNT-1D"]),
        "rate_holds": _rate_holds(conf, t_running - 60),
        "heartbeat_states": states,
        "exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run after the bot "
                    "is running (default 10)")
    ap.add_argument("--sample-s", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0:
        ap.error("--minutes and --sample-s must be > 0")
    root = Path(tempfile.mkdtemp(prefix="tg-demo-limits-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # run the cleanup on a stop
    try:
        r = measure(root, args.minutes, args.sample_s)
    except (RuntimeError, OSError) as e:
        print(f"bench_demo_limits: {e} (logs in {root})", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"demo bot, {r['minutes']:g} min under `tradeguard run` (paper defaults), "
              f"{r['samples']} samples of /_paper/rate-limits")
        print(f"  peak request weight in a minute : {r['peak_weight_1m']} of {r['weight_limit_1m']}")
        print(f"  peak orders in 10 s             : {r['peak_orders_10s']} of {r['orders_limit_10s']}")
        print(f"  refused: HTTP 429 {r['refused_429']}, HTTP 418 {r['refused_418']}")
        print(f"  orders on the exchange          : {r['orders_on_exchange']}")
        print(f"  calls held back by the governor : {r['rate_holds']}")
        print(f"  heartbeat states sampled        : {r['heartbeat_states']}")
        print(f"  tradeguard run exit code        : {r['exit_code']}")
    return 0 if r["refused_429"] == 0 and r["refused_418"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
