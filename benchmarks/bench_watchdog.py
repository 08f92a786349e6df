"""Watchdog benchmark (issue 6): recovery times and the watchdog's own CPU cost, beside plain
supervisord.

    .venv/bin/python -m benchmarks.bench_watchdog [--kills 5] [--stops 3] [--cpu-seconds 30]

Each system is a real ``tradeguard run``-style supervisord (paper exchange, bot, and — except for
the baseline — the watchdog) in a scratch directory, with the shipped ``[watchdog]`` defaults
(printed at the start: interval, heartbeat timeout), the shipped bot tick deadline inside that
timeout, and a large restart budget so that the repetitions do not end in an emergency. Prints
medians:

* SIGKILL of the bot -> first ``running`` heartbeat of the new bot (target <= 2 s);
* SIGSTOP of the bot -> the restart (new bot process): the heartbeat timeout plus about one
  interval (target <= timeout + 1 s), and -> its first ``running`` heartbeat;
* the watchdog's CPU (user + system, psutil) over a quiet window at a 0.5 s interval (target
  <= 1 % of one core);
* baseline: plain supervisord (``autorestart=true``, no watchdog) and a SIGSTOPped bot: what
  supervisord reports over the same window (it keeps saying RUNNING).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.helpers.proc import free_port, wait_until
from tests.helpers.proc import stop as stop_process
from tradeguard.config import Config, load_config
from tradeguard.heartbeat import process_for, read_heartbeat, read_pidfile
from tradeguard.runner import supervisor_rpc, write_supervisord_conf

CONFIG = """
[paper]
port = {paper_port}

[bot]
loop_interval_s = 0.5

[watchdog]
manager = "supervisor"
restart_budget = 1000
restart_window_s = 600

[health]
port = {health_port}
"""


class System:
    """One supervisord with its programs in a scratch directory."""

    def __init__(self, watchdog: bool, config: str = CONFIG):
        self.root = Path(tempfile.mkdtemp(prefix="tgbench-", dir="/tmp"))
        conf = self.root / "tradeguard.toml"
        conf.write_text(config.format(paper_port=free_port(), health_port=free_port()))
        self.cfg: Config = load_config(conf, data_dir=self.root / "data",
                                       logs_dir=self.root / "logs", env={})
        programs = ("paper-exchange", "bot", "watchdog") if watchdog else ("paper-exchange", "bot")
        sd_conf = write_supervisord_conf(self.cfg, programs)
        if not watchdog:  # plain supervisord restarts what exits, and nothing else
            sd_conf.write_text(sd_conf.read_text().replace("autorestart=false", "autorestart=true"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
        sd = Path(sys.executable).parent / "supervisord"
        self.proc = subprocess.Popen([str(sd), "-n", "-c", str(sd_conf)], cwd=self.root, env=env,
                                     stdout=open(self.root / "supervisord.out", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.running_heartbeat(None, 60)

    @property
    def paths(self):
        return self.cfg.runtime

    def paper(self) -> Any:
        """A control handle on this system's paper exchange (its ledger, balances, a client)."""
        from paper_exchange.control import PaperExchange
        from trading.paper_credentials import load_or_create

        key, secret = load_or_create(self.paths, {})
        return PaperExchange(self.paths.data_dir, self.paths.logs_dir, self.cfg.paper.port,
                             self.root / "tradeguard.toml", api_key=key, secret=secret)

    def rpc(self) -> Any:
        return supervisor_rpc(self.cfg).supervisor

    def bot_pid(self) -> int:
        return wait_until(lambda: read_pidfile(self.paths.pidfile), 10, 0.01).pid

    def running_heartbeat(self, not_pid: int | None, timeout: float = 30) -> float:
        """Wait for a ``running`` heartbeat from a bot other than ``not_pid``; when it was seen."""
        wait_until(lambda: (hb := read_heartbeat(self.paths.heartbeat)) and hb.pid != not_pid
                   and hb.state == "running", timeout, 0.01)
        return time.monotonic()

    def new_bot_process(self, not_pid: int, timeout: float = 30) -> float:
        wait_until(lambda: (p := self.rpc().getProcessInfo("bot"))["pid"] not in (0, not_pid)
                   and p["statename"] == "RUNNING", timeout, 0.01)
        return time.monotonic()

    def stop(self) -> None:
        info = read_pidfile(self.paths.pidfile)
        stop_process(self.proc, 20)
        bot = process_for(info) if info else None
        if bot is not None:  # a SIGSTOPped bot ignores its group's SIGTERM
            bot.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def bench_kills(s: System, n: int) -> list[float]:
    out = []
    for _ in range(n):
        s.running_heartbeat(None)
        time.sleep(1.0)  # let it trade a little
        pid = s.bot_pid()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        out.append(s.running_heartbeat(pid) - t0)
    return out


def bench_stops(s: System, n: int) -> tuple[list[float], list[float]]:
    to_restart, to_healthy = [], []
    for _ in range(n):
        s.running_heartbeat(None)
        time.sleep(1.0)
        pid = s.bot_pid()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        to_restart.append(s.new_bot_process(pid) - t0)
        to_healthy.append(s.running_heartbeat(pid) - t0)
    return to_restart, to_healthy


def bench_cpu(s: System, seconds: float) -> float:
    wd = psutil.Process(int(s.rpc().getProcessInfo("watchdog")["pid"]))
    s.running_heartbeat(None)
    time.sleep(2.0)  # past the restart just measured
    c0, t0 = wd.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = wd.cpu_times(), time.monotonic()
    return 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)


def bench_baseline(seconds: float) -> dict[str, Any]:
    s = System(watchdog=False)
    try:
        time.sleep(1.0)
        pid = s.bot_pid()
        os.kill(pid, signal.SIGSTOP)
        states = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            info = s.rpc().getProcessInfo("bot")
            states.add((info["statename"], info["pid"]))
            time.sleep(0.5)
        hb = read_heartbeat(s.paths.heartbeat)
        return {"states": sorted(states), "heartbeat_age_s": hb.age() if hb else None, "pid": pid}
    finally:
        s.stop()


def median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--stops", type=int, default=3)
    ap.add_argument("--cpu-seconds", type=float, default=30.0)
    a = ap.parse_args()
    s = System(watchdog=True)
    w, b = s.cfg.watchdog, s.cfg.bot
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; [watchdog] interval "
          f"{w.interval_s:g} s, heartbeat timeout {w.heartbeat_timeout_s:g} s (shipped defaults), "
          f"manager supervisor; [bot] loop {b.loop_interval_s:g} s, tick deadline "
          f"{b.tick_deadline_s:g} s", flush=True)
    try:
        kills = bench_kills(s, a.kills)
        print(f"SIGKILL -> healthy heartbeat of the new bot: median {median(kills)}", flush=True)
        restart, healthy = bench_stops(s, a.stops)
        print(f"SIGSTOP -> restart (new bot process): median {median(restart)}", flush=True)
        print(f"SIGSTOP -> healthy heartbeat of the new bot: median {median(healthy)}", flush=True)
        cpu = bench_cpu(s, a.cpu_seconds)
        print(f"watchdog CPU at a {w.interval_s:g} s interval over {a.cpu_seconds:g} s: {cpu:.2f} % of one core",
              flush=True)
    finally:
        s.stop()
    base = bench_baseline(a.cpu_seconds / 2)
    print(f"baseline, plain supervisord, SIGSTOPped bot for {a.cpu_seconds / 2:g} s: supervisord "
          f"reported {base['states']} (pid {base['pid']}); heartbeat age at the end "
          f"{base['heartbeat_age_s']:.1f} s: never restarted", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
