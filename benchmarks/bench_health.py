"""Health endpoint benchmark (issues 7 and 19): authenticated requests per second, what a flood
of wrong passwords costs the host, and authenticated service while the endpoint is attacked.

    .venv/bin/python -m benchmarks.bench_health [--seconds 3] [--rounds 5] [--clients 4]

A watchdog-like server process (the real waitress server and Flask app, a real snapshot of a
data dir with a live heartbeat) is loaded over 127.0.0.1 by client threads in this process,
each with its own keep-alive connection. Prints medians over the rounds and the p99 latency.

The flood part sends wrong Basic passwords as fast as one client can, and measures the
server process's CPU time and a separate "bot loop" process doing fixed work: once with the
default limit (10 failures a minute per address, then 429 without running scrypt) and once
with the limit effectively off, to show what the limit saves.

The attack part (issue 19) measures bearer-token ``/health`` from 127.0.0.1 while another
process runs 80 slow sockets (a header line every 0.5 s, never finishing a request, reconnecting
when dropped) and a wrong-password flood, one keep-alive connection per source address, from 20
addresses (127.0.0.2-21: all loopback, distinct clients to the server), beside the same
measure without them.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.helpers.proc import free_port, wait_until
from tests.watchdog.health.slowloris import SlowLoris
from tradeguard.config import load_config
from tradeguard.heartbeat import Heartbeat, write_heartbeat, write_pidfile
from watchdog.health.passwords import credentials_path, set_password
from watchdog.health.server import start_health_server
from watchdog.health.snapshot import build_snapshot

USER, PASSWORD = "monitor", "correct horse battery staple"


def _serve(data_dir: str, port: int, fail_limit: int) -> None:
    """Child: the health server over a data dir whose 'bot' (this process) beats every 0.2 s."""
    cfg = load_config(None, data_dir=data_dir, logs_dir=Path(data_dir) / "logs",
                      env={"TRADEGUARD_HEALTH_PORT": str(port),
                           "TRADEGUARD_HEALTH_FAILED_AUTH_PER_MINUTE": str(fail_limit),
                           # "limit off" lifts the global budget too (issue 19), else it is default
                           **({"TRADEGUARD_HEALTH_BASIC_CHECKS_PER_MINUTE": "100000"}
                              if fail_limit >= 100000 else {}),
                           # other [health] settings to try, e.g. TRADEGUARD_HEALTH_MAX_CONNECTIONS
                           **{k: v for k, v in os.environ.items()
                              if k.startswith("TRADEGUARD_HEALTH_") and k != "TRADEGUARD_HEALTH_PORT"}})
    paths = cfg.runtime
    write_pidfile(paths.pidfile)
    wd = {"pid": os.getpid(), "ts": time.time(), "manager": "standalone", "verdict": "healthy",
          "since": time.time(), "restarts": [], "restarts_total": 0, "restart_budget": 5,
          "restart_window_s": 600.0, "budget_left": 5, "emergency": {"state": "none"}}
    server = start_health_server(cfg, lambda: build_snapshot(cfg, wd))
    seq = 0
    while True:
        seq += 1
        write_heartbeat(paths.heartbeat, Heartbeat(os.getpid(), time.time(), seq, "running",
                                                   {"bot_id": "bench", "positions": {"BTC/USDT": 0.01}}))
        time.sleep(0.2)
        if os.getppid() == 1:
            server.stop()
            return


def _bot_loop(seconds: float, out: "mp.Queue[list[float]]") -> None:
    """Child: fixed chunks of CPU work; the time each takes shows how much CPU is left."""
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        sum(i * i for i in range(20000))
        times.append(time.perf_counter() - t)
    out.put(times)


def _load(port: int, auth: str, seconds: float, clients: int) -> tuple[int, list[float], dict[int, int]]:
    """``clients`` threads GET /health for ``seconds``: (requests, latencies, status counts)."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seen: dict[int, int] = {}
        while time.monotonic() < end:
            t = time.perf_counter()
            conn.request("GET", "/health", headers={"Authorization": auth})
            r = conn.getresponse()
            r.read()
            lat[i].append(time.perf_counter() - t)
            seen[r.status] = seen.get(r.status, 0) + 1
        conn.close()
        with lock:
            for k, v in seen.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for lst in lat for x in lst]
    return len(flat), flat, statuses


ATTACK_SOURCES = [f"127.0.0.{i}" for i in range(2, 22)]


def _attack(port: int, seconds: float, ready: "mp.Event", out: "mp.Queue[dict]", slow: int,
            flooders: int) -> None:
    """Child: ``slow`` slow sockets and a wrong-password flood from ``flooders`` addresses."""
    loris = SlowLoris("127.0.0.1", port, slow, ATTACK_SOURCES, every_s=0.5).start()
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds
    wrong = _basic(USER, "wrong password")

    def flood(source: str) -> None:
        seen: dict[int, int] = {}
        conn = None
        while time.monotonic() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                                      source_address=(source, 0))
                conn.request("GET", "/health", headers={"Authorization": wrong})
                r = conn.getresponse()
                r.read()
                seen[r.status] = seen.get(r.status, 0) + 1
            except (OSError, http.client.HTTPException):
                seen[0] = seen.get(0, 0) + 1
                conn = None
        with lock:
            for k, v in seen.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=flood, args=(s,)) for s in ATTACK_SOURCES[:flooders]]
    started = time.monotonic()
    ready.set()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while time.monotonic() < end:  # the slow sockets go on for the whole measure
        time.sleep(0.1)
    held = max(loris.dropped, default=0.0)
    connects = loris.connects
    loris.stop()
    out.put({"statuses": statuses, "slow_connects": connects, "slow_held_max_s": held,
             "seconds": time.monotonic() - started})


def _under_attack(port: int, token: str, args: argparse.Namespace,
                  server_pid: int) -> tuple[float, float, dict]:
    ctx = mp.get_context("spawn")
    total = args.rounds * args.seconds + 12  # warm-up of the attack included
    ready, q = ctx.Event(), ctx.Queue()
    attacker = ctx.Process(target=_attack, args=(port, total, ready, q, args.slow, args.flooders),
                           daemon=True)
    attacker.start()
    try:
        ready.wait(30)
        time.sleep(10)  # a constant warm-up, not a wait for a condition: the attack settles
        cpu0, t0 = _cpu_s(server_pid), time.monotonic()
        rate, p99, n = _throughput_n(port, f"Bearer {token}", args)
        cpu, wall = _cpu_s(server_pid) - cpu0, time.monotonic() - t0
        stats = q.get(timeout=total + 60)
        stats.update(cpu_pct=100 * cpu / wall, cpu_ms_per_req=1000 * cpu / n)
    finally:
        attacker.join(30)
        if attacker.is_alive():
            attacker.kill()
    return rate, p99, stats


def _start_server(data_dir: Path, fail_limit: int) -> tuple[mp.Process, int]:
    port = free_port()
    p = mp.get_context("spawn").Process(target=_serve, args=(str(data_dir), port, fail_limit), daemon=True)
    p.start()

    def up() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 401
        finally:
            conn.close()

    wait_until(up, timeout=20, message="health server up")
    return p, port


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _throughput(port: int, auth: str, args: argparse.Namespace) -> tuple[float, float]:
    return _throughput_n(port, auth, args)[:2]


def _throughput_n(port: int, auth: str, args: argparse.Namespace) -> tuple[float, float, int]:
    """(median req/s, p99 ms, requests served) over the rounds."""
    rates, lats = [], []
    _load(port, auth, 0.5, args.clients)  # warm-up (and the first scrypt for Basic)
    for _ in range(args.rounds):
        n, lat, statuses = _load(port, auth, args.seconds, args.clients)
        assert set(statuses) == {200}, statuses
        rates.append(n / args.seconds)
        lats += lat
    lats.sort()
    return statistics.median(rates), lats[int(len(lats) * 0.99)] * 1000, len(lats)


def _cpu_s(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])


def _flood(data_dir: Path, fail_limit: int, args: argparse.Namespace) -> dict[str, float]:
    server, port = _start_server(data_dir, fail_limit)
    try:
        proc = psutil.Process(server.pid)
        q: mp.Queue = mp.get_context("spawn").Queue()
        bot = mp.get_context("spawn").Process(target=_bot_loop, args=(args.seconds, q))
        cpu0 = sum(proc.cpu_times()[:2])
        bot.start()
        n, _, statuses = _load(port, _basic(USER, "wrong password"), args.seconds, 1)
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        chunks = q.get(timeout=60)
        bot.join()
        return {"requests": n, "s401": statuses.get(401, 0), "s429": statuses.get(429, 0),
                "server_cpu_pct": 100 * cpu / args.seconds, "cpu_ms_per_attempt": 1000 * cpu / max(n, 1),
                "bot_chunk_ms": 1000 * statistics.median(chunks)}
    finally:
        server.kill()
        server.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--attack-only", action="store_true", help="only the issue 19 measure")
    ap.add_argument("--slow", type=int, default=80, help="slow sockets of the attack")
    ap.add_argument("--flooders", type=int, default=20, help="flooding addresses (at most 20)")
    args = ap.parse_args()
    if args.attack_only:
        return _attack_report(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = _data_dir_with_user(Path(tmp))
        server, port = _start_server(data, 10)
        try:
            token = (data / "health.token").read_text().strip()
            tok_rate, tok_p99 = _throughput(port, f"Bearer {token}", args)
            bas_rate, bas_p99 = _throughput(port, _basic(USER, PASSWORD), args)
        finally:
            server.kill()
            server.join()
        q: mp.Queue = mp.get_context("spawn").Queue()
        idle = mp.get_context("spawn").Process(target=_bot_loop, args=(args.seconds, q))
        idle.start()
        idle_chunk = 1000 * statistics.median(q.get(timeout=60))
        idle.join()
        limited = _flood(data, 10, args)
        unlimited = _flood(data, 100000, args)

    print(f"GET /health, {args.clients} keep-alive clients, {args.rounds} x {args.seconds:g}s, 2 cores")
    print(f"  bearer token : median {tok_rate:8.0f} req/s   p99 {tok_p99:6.2f} ms")
    print(f"  basic cached : median {bas_rate:8.0f} req/s   p99 {bas_p99:6.2f} ms")
    print(f"bot loop alone : median chunk {idle_chunk:.2f} ms")
    for name, r in (("limit 10/min", limited), ("limit off   ", unlimited)):
        print(f"wrong-password flood, {name}: {r['requests']} attempts in {args.seconds:g}s "
              f"({r['s401']} x 401 = scrypt runs, {r['s429']} x 429), server CPU "
              f"{r['server_cpu_pct']:.0f}% of a core = {r['cpu_ms_per_attempt']:.2f} ms per attempt, "
              f"bot loop median chunk {r['bot_chunk_ms']:.2f} ms")
    return _attack_report(args)


def _data_dir_with_user(tmp: Path) -> Path:
    """A data dir under ``tmp`` with the Basic user USER."""
    data = tmp / "data"
    cfg = load_config(None, data_dir=data, logs_dir=tmp / "logs", env={})
    set_password(credentials_path(cfg), USER, PASSWORD)
    return data


def _attack_report(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = _data_dir_with_user(Path(tmp))
        server, port = _start_server(data, 10)
        try:
            token = (data / "health.token").read_text().strip()
            cpu0, t0 = _cpu_s(server.pid), time.monotonic()
            calm_rate, calm_p99, n = _throughput_n(port, f"Bearer {token}", args)
            calm_cpu, calm_wall = _cpu_s(server.pid) - cpu0, time.monotonic() - t0
            rate, p99, stats = _under_attack(port, token, args, server.pid)
        finally:
            server.kill()
            server.join()
    st = stats["statuses"]
    print(f"bearer /health, {args.clients} keep-alive clients from 127.0.0.1, "
          f"{args.rounds} x {args.seconds:g}s, default limits")
    print(f"  no attack             : median {calm_rate:8.0f} req/s   p99 {calm_p99:6.2f} ms   "
          f"server CPU {100 * calm_cpu / calm_wall:.0f}% of a core, "
          f"{1000 * calm_cpu / n:.2f} ms per request")
    print(f"  {args.slow} slow sockets + flood from {args.flooders}: median {rate:8.0f} req/s   "
          f"p99 {p99:6.2f} ms   server CPU {stats['cpu_pct']:.0f}% of a core, "
          f"{stats['cpu_ms_per_req']:.2f} ms per authenticated request")
    minutes = stats["seconds"] / 60
    print(f"  flood from {args.flooders} addresses for {stats['seconds']:.0f}s: {sum(st.values())} attempts: "
          f"{st.get(401, 0)} x 401 (scrypt runs: {st.get(401, 0) / minutes:.0f} a minute), "
          f"{st.get(429, 0)} x 429, {st.get(0, 0)} connection errors")
    print(f"  slow sockets: {stats['slow_connects']} connections opened, longest held "
          f"{stats['slow_held_max_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
