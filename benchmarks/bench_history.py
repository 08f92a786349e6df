"""History benchmark (#20): does a bot with a year of trading start, tick and answer as on day one?

    .venv/bin/python -m benchmarks.bench_history --build-only --sizes 1000,100000,1000000 --per-day 150
    .venv/bin/python -m benchmarks.bench_history --sizes 1000,100000,1000000 --per-day 150 --runs 5 --minute 120

For each size N, a state.db with N closed orders is built through the store's own API (each
order with one fill and three transitions, encrypted as the bot writes them; tests/helpers/
history.py), spread evenly over ``--days`` (365) ending an hour ago -- or, with ``--per-day R``,
over N / R days: the same order rate for every size, so that every size has the same work in hand
(the retention window holds the same orders) and only the history behind it differs. Building takes 1-2 ms an
order here (``StateStore.batch()``: 500 orders a transaction; 10^6 in ~25 min), so each database
is built once into ``--cache`` (``benchmarks/.cache/``, gitignored; resumable: an interrupted
build continues) and copied for every measurement. Every size is measured in the same minutes,
interleaved (``side_by_side``): on this shared host the same command drifts by half from one
quarter hour to the next, and sizes measured one after the other showed that drift as a
difference between them. Then, on a copy:

* ``archive``: the default retention policy ([retention] archive_after_days = 7) applied with
  the Archiver (batch after batch, as the bot does a slice per tick) -- its time, and state.db's
  size before and after (the policy's bound) and the archives' size;
* ``cold start``: ``tradeguard bot`` spawned until its heartbeat says ``running`` (recovery done),
  median of ``--runs``; ``first tick`` is the loop_ms of the first heartbeat after it;
* ``steady tick``: median loop_ms of the heartbeats while every size's bot runs, ``--minute`` s;
* ``RSS``: each bot's RSS at the end of that;
* ``status``: ``tradeguard status --json`` wall time; ``db check``: ``tradeguard db check``
  (live state.db: quick_check, key check of the recent rows) while the bots run;
* ``/health/detailed``: in-process ``build_snapshot`` with the state.db cache expired (a cache
  miss), median of 5 a turn;
* ``flatten``: ``Emergency`` run (the watchdog's flatten, in-process) on the files the stopped bot
  left until its first order reaches the paper exchange, ``--runs`` times from kept copies.

And the watchdog's memory: RSS and USS of a real ``tradeguard watchdog`` process in a supervisord
system (paper exchange, bot, watchdog) after ``--minute`` seconds, and its RSS after one
/health/detailed and one /metrics scrape (``--watchdog-only`` measures just that).

Also ``--unarchived``: the same measures with the whole history left in state.db (retention
disabled): the hot paths must not care. Everything runs on 127.0.0.1 against a paper exchange.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

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
    """A fresh copy of a cached history (state.db and its field key) to measure on, left as a
    bot's clean stop leaves it: a copy is a new file (its inode differs from the one the
    clean-shutdown marker names), which the next open would rightly scan as a restored file;
    opening and closing it once here records the copy as cleanly closed, so that the cold
    start measured is a bot's restart after a clean stop."""
    from resilience.keys import ensure_cipher
    from resilience.state import StateStore

    shutil.copytree(src / "data", dest / "data")
    (dest / "logs").mkdir(parents=True, exist_ok=True)
    paths = _paths(dest)
    StateStore.open(paths.state_db, ensure_cipher(paths, allow_generate=False, environ={})[0],
                    synchronous="NORMAL").close()
    return paths


FAST = {"TRADEGUARD_BOT_LOOP_INTERVAL_S": "1.0", "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "3000"}


def _px(root: Path) -> Any:
    from paper_exchange.control import PaperExchange
    from tests.helpers.proc import free_port, spawn, stop

    return PaperExchange.create(root, free_port(), launch=lambda a, e, log: spawn(a, env=e, log=log),
                                terminate=stop).start()


def _heartbeats(path: Path, pid: int, until: Callable[[Any], bool], timeout: float,
                seen: list[Any]) -> Any:
    """Read the heartbeat every 2 ms until ``until(hb)``; every new seq goes into ``seen``."""
    from tradeguard.heartbeat import read_heartbeat

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hb = read_heartbeat(path)
        if hb is not None and hb.pid == pid:
            if not seen or hb.seq != seen[-1][1].seq:
                seen.append((time.perf_counter(), hb))
            if until(hb):
                return hb
        time.sleep(0.002)
    raise RuntimeError(f"heartbeat condition not met within {timeout}s (last: {seen[-1:]})")


def _cli_seconds(*args: str, env: dict[str, str]) -> tuple[float, int]:
    from tests.helpers.proc import tradeguard_cmd

    t = time.perf_counter()
    r = subprocess.run(tradeguard_cmd(*args), env={**os.environ, **env}, capture_output=True)
    return time.perf_counter() - t, r.returncode


def _bot_setup(root: Path, paths: RuntimePaths, unarchived: bool) -> tuple[Any, dict[str, str], list[str]]:
    """A running paper exchange of its own for the bot of ``paths``; the bot's env and argv."""
    from tests.helpers.proc import tradeguard_cmd

    px = _px(root / "paper")
    env = {**px.env, **FAST}
    if unarchived:
        env["TRADEGUARD_RETENTION_ENABLED"] = "false"
    argv = tradeguard_cmd("bot", "--config", str(px.config_file), "--data-dir",
                          str(paths.data_dir), "--logs-dir", str(paths.logs_dir))
    return px, env, argv


def _archive(paths: RuntimePaths) -> dict[str, Any]:
    """The default retention policy applied to the copy, as the bot would (batch by batch)."""
    from resilience.keys import ensure_cipher
    from resilience.state import Archiver, StateStore, archive_files
    from tradeguard.config import RetentionConfig

    policy = RetentionConfig()  # the defaults
    before = paths.state_db.stat().st_size
    store = StateStore.open(paths.state_db, ensure_cipher(paths, allow_generate=False, environ={})[0],
                            synchronous="NORMAL")
    try:
        t = time.perf_counter()
        moved = Archiver(store, max_age_s=policy.archive_after_days * DAY,
                         batch=policy.batch_orders).run()
        seconds = time.perf_counter() - t
        store.checkpoint()
        live = store.counts()["orders"]
    finally:
        store.close()
    files = archive_files(paths.state_db)
    return {"moved": moved, "seconds": round(seconds, 2), "orders_per_s": round(moved / seconds),
            "live_orders": live, "state_db_before_mb": round(before / 1e6, 2),
            "state_db_after_mb": round(paths.state_db.stat().st_size / 1e6, 2),
            "archives": len(files), "archives_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2)}


def _snapshot_ms(paths: RuntimePaths, px: Any, runs: int = 5) -> float:
    """build_snapshot (what /health/detailed serves) with the state.db cache expired."""
    from tradeguard.config import load_config
    from watchdog.health import snapshot

    cfg = load_config(px.config_file, data_dir=paths.data_dir, logs_dir=paths.logs_dir, env=px.env)
    out = []
    for _ in range(runs):
        snapshot._cache.clear()
        t = time.perf_counter()
        snapshot.build_snapshot(cfg)
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def _flatten(paths: RuntimePaths, px: Any) -> dict[str, Any]:
    """The watchdog's flatten (in-process) on the data dir the bot left: to its first order."""
    from tradeguard.config import load_config
    from watchdog.emergency import flatten

    cfg = load_config(px.config_file, data_dir=paths.data_dir, logs_dir=paths.logs_dir, env=px.env)
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:
        con = None
        while not done.is_set() and not first:
            try:
                con = con or sqlite3.connect(f"file:{paths.state_db}?mode=ro", uri=True)
                if con.execute("SELECT 1 FROM orders WHERE origin = 'watchdog' LIMIT 1").fetchone():
                    first.append(time.perf_counter())
            except sqlite3.Error:
                pass
            time.sleep(0.001)

    threading.Thread(target=watch, daemon=True).start()
    os.environ.update(px.env)  # the exchange credentials, as the watchdog's environment has them
    t = time.perf_counter()
    result = flatten(cfg, "bench: time to first order")
    total = time.perf_counter() - t
    done.set()
    return {"first_order_s": round(first[0] - t, 3) if first else None,
            "total_s": round(total, 3), "state": result.state, "orders": len(result.orders),
            "errors": [str(e)[:200] for e in result.errors[:2]]}


def _tick_sampler(path: Path, pid: int, stop_at: threading.Event, out: list[float]) -> threading.Thread:
    """A thread that appends the loop_ms of every new heartbeat of ``pid`` until ``stop_at``."""
    from tradeguard.heartbeat import read_heartbeat

    def run() -> None:
        last = None
        while not stop_at.is_set():
            hb = read_heartbeat(path)
            if hb is not None and hb.pid == pid and hb.seq != last:
                last = hb.seq
                out.append(float(hb.detail.get("loop_ms") or 0.0))
            time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _keep_files(src: Path, dest: Path, *, tree: bool = False) -> None:
    """Replace the plain files of ``dest`` with those of ``src`` (subdirectories, such as the
    bot's archives, stay where they are: a flatten does not write them); ``tree``: the whole
    directory (the venue's: its ledger lives in a subdirectory)."""
    if tree:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)
        return
    dest.mkdir(parents=True, exist_ok=True)
    for p in dest.iterdir():
        if p.is_file():
            p.unlink()
    for p in src.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)


def side_by_side(roots: dict[int, Path], args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Every size in the same minutes, interleaved, so that the host's own drift (shared cores:
    the same command here varies by 50 % from one quarter hour to the next) cannot pass for a
    difference between sizes. Cold starts alternate size by size (``--runs`` each, the order
    reversed every round); then one bot per size runs at once for ``--minute`` s, steady ticks
    sampled from each, while ``status``, ``db check`` and the health snapshot (cache miss) take
    turns between the sizes; then the flatten of each, in turn."""
    import psutil
    from tests.helpers.proc import spawn, stop

    sizes = list(roots)
    out: dict[int, dict[str, Any]] = {n: {"orders": n, "cold": [], "first_tick": [], "ticks": [],
                                          "status": [], "db_check": [], "health": [],
                                          "flattens": []} for n in sizes}
    with tempfile.TemporaryDirectory(prefix="bench-history-sbs-") as tmp:
        setups: dict[int, tuple[RuntimePaths, Any, dict[str, str], list[str]]] = {}
        try:
            for n in sizes:
                root = Path(tmp) / str(n)
                paths = copy_history(roots[n], root)
                out[n]["archive"] = None if args.unarchived else _archive(paths)
                setups[n] = (paths, *_bot_setup(root, paths, args.unarchived))
            os.sync()  # the copies' dirty pages are written back before anything is timed
            for r in range(args.runs):
                for n in (sizes if r % 2 == 0 else sizes[::-1]):
                    paths, px, env, argv = setups[n]
                    seen: list[Any] = []
                    t0 = time.perf_counter()
                    proc = spawn(argv, env=env, log=paths.logs_dir / "bot.out")
                    try:
                        hb = _heartbeats(paths.heartbeat, proc.pid, lambda h: h.state == "running", 120, seen)
                        out[n]["cold"].append(seen[-1][0] - t0)
                        nxt = _heartbeats(paths.heartbeat, proc.pid, lambda h: h.seq > hb.seq, 60, seen)
                        out[n]["first_tick"].append(float(nxt.detail.get("loop_ms") or 0.0))
                    finally:
                        stop(proc)
            procs = {n: spawn(setups[n][3], env=setups[n][2], log=setups[n][0].logs_dir / "bot.out")
                     for n in sizes}
            done = threading.Event()
            try:
                for n in sizes:
                    _heartbeats(setups[n][0].heartbeat, procs[n].pid, lambda h: h.state == "running", 120, [])
                samplers = [_tick_sampler(setups[n][0].heartbeat, procs[n].pid, done, out[n]["ticks"])
                            for n in sizes]
                end, turn = time.monotonic() + args.minute, 0
                while time.monotonic() < end:
                    for n in (sizes if turn % 2 == 0 else sizes[::-1]):
                        paths, px, _, _ = setups[n]
                        cli = ["--config", str(px.config_file), "--data-dir", str(paths.data_dir),
                               "--logs-dir", str(paths.logs_dir)]
                        out[n]["status"].append(_cli_seconds("status", "--json", *cli, env=px.env)[0])
                        sec, rc = _cli_seconds("db", "check", *cli, env=px.env)
                        out[n]["db_check"].append(sec)
                        out[n]["db_check_exit"] = max(rc, out[n].get("db_check_exit", 0))
                        out[n]["health"].append(_snapshot_ms(paths, px))
                    turn += 1
                for n in sizes:
                    out[n]["rss_mb_after_minute"] = round(psutil.Process(procs[n].pid).memory_info().rss / 2**20, 1)
                    out[n]["state_db_mb_running"] = round(setups[n][0].state_db.stat().st_size / 1e6, 2)
            finally:
                done.set()
                for proc in procs.values():
                    stop(proc)
            import ccxt  # noqa: F401  (imported once before: no size pays the import for the others)
            for n in sizes:  # what each flatten starts from: the bot's files and the venue's
                setups[n][1].stop()
                _keep_files(setups[n][0].data_dir, Path(tmp) / f"{n}-keep" / "bot")
                _keep_files(setups[n][1].data_dir, Path(tmp) / f"{n}-keep" / "venue", tree=True)
            for r in range(args.runs):
                for n in (sizes[::-1] if r % 2 == 0 else sizes):
                    paths, px, _, _ = setups[n]
                    _keep_files(Path(tmp) / f"{n}-keep" / "bot", paths.data_dir)
                    _keep_files(Path(tmp) / f"{n}-keep" / "venue", px.data_dir, tree=True)
                    px.start()
                    os.sync()
                    try:
                        out[n]["flattens"].append(_flatten(paths, px))
                    finally:
                        px.stop()
        finally:
            for _, px, _, _ in setups.values():
                px.stop()
    med = statistics.median
    for n in sizes:
        o = out[n]
        o["cold_start_s"], o["first_tick_ms"] = round(med(o["cold"]), 3), round(med(o["first_tick"]), 2)
        o["steady_tick_ms"] = round(med(o["ticks"][5:] or o["ticks"]), 2)
        o["status_s"], o["db_check_s"] = round(med(o["status"]), 3), round(med(o["db_check"]), 3)
        o["health_detailed_miss_ms"] = round(med(o["health"]), 2)
        firsts = [f["first_order_s"] for f in o["flattens"] if f["first_order_s"] is not None]
        o["flatten"] = {"first_order_s": round(med(firsts), 3) if firsts else None,
                        "total_s": round(med(f["total_s"] for f in o["flattens"]), 3),
                        "runs": o.pop("flattens")}
        o["samples"] = {k: len(o[k]) for k in ("cold", "ticks", "status", "db_check", "health")}
        for k in ("cold", "first_tick", "ticks", "status", "db_check", "health"):
            del o[k]
        print(f"history {n}: {json.dumps(o)}", flush=True)
    return out


def ratios(results: dict[Any, Any], sizes: list[int]) -> None:
    """Each figure at every size as a multiple of the smallest size's (the issue's 20 % rule)."""
    keys = ("cold_start_s", "first_tick_ms", "steady_tick_ms", "rss_mb_after_minute", "status_s",
            "db_check_s", "health_detailed_miss_ms")
    base = results[sizes[0]]
    print("\n| figure | " + " | ".join(f"{n:,}" for n in sizes[1:]) + f" (x of {sizes[0]:,}) |")
    print("|---|" + "---|" * (len(sizes) - 1))
    def fig(r: dict[str, Any], k: str) -> float:
        return (r["flatten"]["first_order_s"] or 0.0) if k == "flatten_first_order_s" else r[k]

    for k in (*keys, "flatten_first_order_s"):
        print(f"| {k} | " + " | ".join(f"{fig(results[n], k) / fig(base, k):.2f}" if fig(base, k)
                                       else "-" for n in sizes[1:]) + " |")


def watchdog_rss_mb(seconds: float = 60.0) -> dict[str, Any]:
    """RSS (and USS) of a real ``tradeguard watchdog``: a supervisord system (paper exchange, bot,
    watchdog; benchmarks.bench_watchdog.System) after ``seconds``, then again after one
    /health/detailed and one /metrics scrape (prometheus_client loads at the first scrape)."""
    import psutil
    import requests

    from benchmarks.bench_watchdog import System

    s = System(watchdog=True)
    try:
        proc = psutil.Process(s.rpc().getProcessInfo("watchdog")["pid"])
        time.sleep(seconds)
        mem = proc.memory_full_info()
        out = {"after_s": seconds, "rss_mb": round(mem.rss / 2**20, 1),
               "uss_mb": round(mem.uss / 2**20, 1)}
        token = s.paths.health_token.read_text().strip()
        url = f"http://127.0.0.1:{s.cfg.health.port}"
        with requests.Session() as sess:
            sess.trust_env = False
            for path in ("/health/detailed", "/metrics"):
                sess.get(url + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=10).raise_for_status()
        out["rss_mb_after_scrape"] = round(proc.memory_info().rss / 2**20, 1)
        return out
    finally:
        s.stop()


def report(results: dict[Any, Any], sizes: list[int]) -> None:
    """The table for docs/BENCHMARKS.md."""
    print("\n| orders of history | cold start -> running | first tick | steady tick | bot RSS at the end "
          "| `status` | `db check` | health (miss) | flatten to 1st order | state.db (after policy) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        r = results[n]
        a = r.get("archive") or {}
        fl = r["flatten"]
        print(f"| {n:,} | {r['cold_start_s']:.2f} s | {r['first_tick_ms']:.0f} ms | "
              f"{r['steady_tick_ms']:.1f} ms | {r['rss_mb_after_minute']:.0f} MB | {r['status_s']:.2f} s | "
              f"{r['db_check_s']:.2f} s | {r['health_detailed_miss_ms']:.1f} ms | "
              f"{'%.2f s' % fl['first_order_s'] if fl['first_order_s'] is not None else 'no position (%.2f s)' % fl['total_s']} | "
              f"{a.get('state_db_after_mb', r['state_db_mb_running'])} MB |")
    wd = results.get("watchdog")
    if wd:
        print(f"\nwatchdog (real process, {wd['after_s']:.0f} s): RSS {wd['rss_mb']} MiB, USS "
              f"{wd['uss_mb']} MiB; after a /metrics scrape: RSS {wd['rss_mb_after_scrape']} MiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,100000",
                    help="history sizes; add 1000000 for the 10^6 run (its build: ~25 min here)")
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--per-day", type=float, default=None,
                    help="orders a day: spread each size over N / R days instead of --days")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--minute", type=float, default=60.0, help="seconds of the steady run")
    ap.add_argument("--unarchived", action="store_true",
                    help="measure with the whole history in state.db (retention off)")
    ap.add_argument("--skip-watchdog", action="store_true", help="no watchdog memory run")
    ap.add_argument("--watchdog-only", action="store_true",
                    help="only the real watchdog's memory (no history is built or measured)")
    args = ap.parse_args(argv)
    if args.watchdog_only:
        wd = watchdog_rss_mb(args.minute)
        print(json.dumps(wd))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    roots = {}
    for n in sizes:
        t = time.monotonic()
        roots[n] = build(n, n / args.per_day if args.per_day else args.days, args.cache)
        print(f"history {n}: ready ({time.monotonic() - t:.0f} s)", flush=True)
    if args.build_only:
        return 0
    results: dict[Any, Any] = side_by_side(roots, args)
    if not args.skip_watchdog:
        results["watchdog"] = watchdog_rss_mb(args.minute)
    print(json.dumps(results, indent=2))
    report(results, sizes)
    ratios(results, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
