"""A real recording process for the black-box tests: ``python -m tests.blackbox.child SCENARIO DATA LOGS [N]``.

Scenarios:
  flood N     print "ready", wait for DATA/go, record N events (every 100th critical) with short pauses, close
  critical    record critical events forever, printing each seq after record() returned
  usr1        install crash dumps, print "ready", idle until killed (SIGUSR1 takes a dump)
  thread      a worker thread dies of an exception; then dump("SIGTERM") twice; print results
  main        the main thread dies of an unhandled exception
  segv        install crash dumps, then crash with SIGSEGV (faulthandler writes its file)
  ring KB N   a ring of KB KiB; record N events, take a dump, print its path
  config TOML install crash dumps with the tradeguard config of TOML, take a dump, print its path
"""
from __future__ import annotations

import faulthandler
import json
import sys
import threading
import time
from pathlib import Path

from blackbox import crashdump, recorder
from blackbox.redact import register_secret
from tradeguard.config import BlackboxConfig
from tradeguard.paths import RuntimePaths

SECRET = "sup3r-s3cret-v4lue-42"  # registered: must never reach a file
CONFIG = {"exchange": {"id": "paper", "api_key": "ak-live-123456"}, "alerts": {
    "webhook_url": "https://hooks.example/T000/B000/XXXXXXXX"}}


def _setup(role: str, data: Path, logs: Path, flush_ms: int = 20) -> RuntimePaths:
    paths = RuntimePaths(data, logs).ensure()
    recorder.init(paths, role, BlackboxConfig(flush_interval_ms=flush_ms))
    return paths


def flood(paths: RuntimePaths, n: int) -> None:
    go = paths.data_dir / "go"
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(n):
        recorder.record("test.flood", "child", f"event {i}", critical=i % 100 == 0, i=i)
        if i % 50 == 0:
            time.sleep(0.002)
    recorder.close()
    print("done", flush=True)


def critical(paths: RuntimePaths) -> None:
    i = 0
    while True:
        recorder.record("test.noise", "child", "not critical", i=i)
        recorder.record("order.intent", "child", f"intent {i}", critical=True, i=i)
        print(i, flush=True)
        i += 1


def secrets_everywhere(paths: RuntimePaths, role: str) -> None:
    register_secret(SECRET)
    crashdump.install(paths, role, CONFIG)
    recorder.record("test.secret", "child", f"token is {SECRET}", api_key="ak-live-123456",
                    auth="Bearer abcdefghijklmnopqrstuvwxyz", note=f"x {SECRET} y")


def usr1(paths: RuntimePaths) -> None:
    secrets_everywhere(paths, "usr1")
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.02)


def explode_in_worker() -> None:
    raise ValueError(f"worker failed holding {SECRET}")


def thread(paths: RuntimePaths) -> None:
    secrets_everywhere(paths, "thread")
    # One write attempt before the worker dies, so that the dump's recorder state does not
    # depend on whether the writer thread's first flush (20 ms after init) came first.
    recorder.flush(timeout=5)
    t = threading.Thread(target=explode_in_worker, name="worker-1")
    t.start()
    t.join()
    first = crashdump.dump("SIGTERM")
    second = crashdump.dump("SIGTERM")  # rate-limited
    print(json.dumps({"first": str(first) if first else None,
                      "second": str(second) if second else None}), flush=True)


def main_thread(paths: RuntimePaths) -> None:
    secrets_everywhere(paths, "main")
    raise RuntimeError(f"main loop failed holding {SECRET}")


def segv(paths: RuntimePaths) -> None:
    crashdump.install(paths, "segv")
    print("ready", flush=True)
    faulthandler._sigsegv()


def ring(data: Path, logs: Path, kb: int, n: int) -> None:
    paths = RuntimePaths(data, logs).ensure()
    recorder.init(paths, "ring", BlackboxConfig(flush_interval_ms=20, ring_kb=kb))
    crashdump.install(paths, "ring")
    for i in range(n):
        recorder.record("test.ring", "child", f"event {i}", i=i)
        if i % 100 == 0:
            recorder.flush()
    print(crashdump.dump("SIGTERM"), flush=True)


def config_dump(paths: RuntimePaths, toml: Path) -> None:
    from tradeguard.config import load_config
    cfg = load_config(toml, data_dir=paths.data_dir, logs_dir=paths.logs_dir, env={})
    crashdump.install(paths, "config", cfg.to_dict())
    print(crashdump.dump("SIGTERM"), flush=True)


def main(argv: list[str]) -> None:
    scenario, data, logs = argv[0], Path(argv[1]), Path(argv[2])
    if scenario == "ring":
        return ring(data, logs, int(argv[3]), int(argv[4]))
    paths = _setup(scenario, data, logs)
    if scenario == "flood":
        flood(paths, int(argv[3]))
    elif scenario == "critical":
        critical(paths)
    elif scenario == "usr1":
        usr1(paths)
    elif scenario == "thread":
        thread(paths)
    elif scenario == "main":
        main_thread(paths)
    elif scenario == "segv":
        segv(paths)
    elif scenario == "config":
        config_dump(paths, Path(argv[3]))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
