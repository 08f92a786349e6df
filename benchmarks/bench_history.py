"""History benchmark (#20): does a bot with a year of trading start, tick and answer as on day one?

    .venv/bin/python -m benchmarks.bench_history --build-only --sizes 1000,100000,1000000
    .venv/bin/python -m benchmarks.bench_history --sizes 1000,100000,1000000

For each size N, a state.db with N closed orders is built through the store's own API (each
order with one fill and three transitions, encrypted as the bot writes them; tests/helpers/
history.py), spread evenly over ``--days`` (365) ending an hour ago. Building is slow (several
ms an order on a shared 2-core machine), so each database is built once into ``--cache``
(``benchmarks/.cache/``, gitignored; resumable: an interrupted build continues) and copied for
every measurement. Then, on a copy:

* ``archive``: the default retention policy ([retention] archive_after_days = 30) applied with
  the Archiver (batch after batch, as the bot does a slice per tick) -- its time, and state.db's
  size before and after (the policy's bound) and the archives' size;
* ``cold start``: ``tradeguard bot`` spawned until its heartbeat says ``running`` (recovery done),
  median of ``--runs``; ``first tick`` is the loop_ms of the first heartbeat after it;
* ``steady tick``: median loop_ms of the heartbeats over the minute after start;
* ``RSS``: the bot's RSS a minute after start;
* ``status``: ``tradeguard status --json`` wall time; ``db check``: ``tradeguard db check``
  (live state.db: quick_check, key check of the recent rows) while the bot runs;
* ``/health/detailed``: in-process ``build_snapshot`` with the state.db cache expired (a cache
  miss), median of 20;
* ``flatten``: ``Emergency`` run (the watchdog's flatten, in-process) on the data dir until its
  first order reaches the paper exchange; the watchdog's RSS after importing its modules.

Also ``--unarchived``: the same measures with the whole history left in state.db (retention
disabled): the hot paths must not care. Everything runs on 127.0.0.1 against a paper exchange.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tests.helpers.history import build_history
from tradeguard.paths import RuntimePaths

CACHE = Path(__file__).resolve().parent / ".cache"
DAY = 86400.0


def _paths(root: Path) -> RuntimePaths:
    return RuntimePaths(root / "data", root / "logs")


def build(n: int, days: float, cache: Path = CACHE) -> Path:
    """The cached history of ``n`` orders (built, or finished, now); its root directory."""
    from resilience.keys import ensure_cipher

    root = cache / f"history-{n}-{int(days)}d"
    done = root / "built.json"
    if done.exists():
        return root
    paths = _paths(root)
    paths.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    cipher, _ = ensure_cipher(paths, allow_generate=True, environ={}) \
        if not paths.field_key.exists() else ensure_cipher(paths, allow_generate=False, environ={})
    meta = root / "building.json"
    spent = json.loads(meta.read_text())["seconds"] if meta.exists() else 0.0
    anchor = json.loads(meta.read_text())["end"] if meta.exists() else time.time() - 3600
    t0 = time.monotonic()

    def progress(i: int) -> None:
        meta.write_text(json.dumps({"seconds": spent + time.monotonic() - t0, "end": anchor}))
        print(f"  built {i}/{n} orders ({spent + time.monotonic() - t0:.0f} s)", flush=True)

    meta.write_text(json.dumps({"seconds": spent, "end": anchor}))
    build_history(paths.state_db, cipher, n, start=anchor - days * DAY, end=anchor,
                  progress=progress, resume=True)
    seconds = spent + time.monotonic() - t0
    done.write_text(json.dumps({"orders": n, "days": days, "end": anchor, "seconds": seconds,
                                "bytes": paths.state_db.stat().st_size}))
    meta.unlink()
    print(f"built {n} orders in {seconds:.0f} s ({paths.state_db.stat().st_size / 1e6:.1f} MB)")
    return root


def copy_history(src: Path, dest: Path) -> RuntimePaths:
    """A fresh copy of a cached history (state.db and its field key) to measure on."""
    shutil.copytree(src / "data", dest / "data")
    (dest / "logs").mkdir(parents=True, exist_ok=True)
    return _paths(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--minute", type=float, default=60.0, help="seconds of the steady run")
    ap.add_argument("--unarchived", action="store_true",
                    help="measure with the whole history in state.db (retention off)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    roots = {}
    for n in sizes:
        t = time.monotonic()
        roots[n] = build(n, args.days, args.cache)
        print(f"history {n}: ready ({time.monotonic() - t:.0f} s)", flush=True)
    if args.build_only:
        return 0
    from benchmarks.bench_history_measure import measure_all
    return measure_all(roots, args)


if __name__ == "__main__":
    sys.exit(main())
