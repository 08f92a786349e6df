"""BotChecker against real processes speaking the heartbeat protocol."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.helpers.proc import wait_until
from tests.watchdog.conftest import hbbot_argv
from tradeguard.config import WatchdogConfig
from tradeguard.heartbeat import Heartbeat, atomic_write_json, write_heartbeat
from tradeguard.paths import RuntimePaths
from watchdog.checks import BotChecker


def checker(data_dir: Path, logs_dir: Path, manager_pid=None, **kw) -> BotChecker:
    cfg = WatchdogConfig(**{"heartbeat_timeout_s": 0.6, "progress_timeout_s": 0.6,
                            "startup_timeout_s": 1.0, "memory_limit_mb": 300.0, **kw})
    return BotChecker(RuntimePaths(data_dir, logs_dir), cfg, manager_pid, hbbot_argv(data_dir)[:4])


def verdict_becomes(c: BotChecker, name: str, timeout: float = 5.0):
    return wait_until(lambda: (v := c.check()).name == name and v, timeout, message=name)


def test_healthy_then_hung_when_sigstopped(data_dir, logs_dir, hbbot):
    bot = hbbot()
    c = checker(data_dir, logs_dir)
    v = verdict_becomes(c, "healthy")
    assert v.pid == bot.pid and v.evidence["state"] == "running"
    wait_until(lambda: c.check() and c.progressed, 3, message="seq progress")
    os.kill(bot.pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        v = verdict_becomes(c, "hung")
        assert v.evidence["status"] == "stopped"
        assert v.evidence["hb_age_s"] > 0.6
        assert time.time() - t0 < 0.6 + 1.0  # timeout plus slack, never much later
    finally:
        os.kill(bot.pid, signal.SIGCONT)
    verdict_becomes(c, "healthy")


def test_stalled_when_seq_stops_advancing(data_dir, logs_dir, hbbot):
    hbbot("stall")
    c = checker(data_dir, logs_dir)
    v = verdict_becomes(c, "stalled")
    assert v.evidence["hb_age_s"] < 0.6  # the file is fresh: not hung
    assert v.evidence["no_progress_s"] >= 0.6 and v.evidence["seq"] == 1  # evidence is rounded to the ms


def test_leaking_over_memory_limit(data_dir, logs_dir, hbbot):
    hbbot("leak", interval=0.1)
    c = checker(data_dir, logs_dir, memory_limit_mb=120.0)
    v = verdict_becomes(c, "leaking")
    assert v.evidence["rss_mb"] > 120.0 and v.evidence["limit_mb"] == 120.0


def test_crashed_when_killed_and_when_zombie(data_dir, logs_dir, hbbot):
    bot = hbbot()
    c = checker(data_dir, logs_dir)
    verdict_becomes(c, "healthy")
    os.kill(bot.pid, signal.SIGKILL)
    # not reaped yet: a zombie is no bot
    v = verdict_becomes(c, "crashed")
    assert "zombie" in v.evidence["reason"] or "gone" in v.evidence["reason"]
    bot.wait(5)
    v = c.check()
    assert v.name == "crashed" and "gone" in v.evidence["reason"]


def test_reused_pid_is_not_the_bot(data_dir, logs_dir):
    me = psutil.Process()
    # bot.pid names a live process (this one) but with another start time: the PID was reused
    atomic_write_json(data_dir / "bot.pid", {"pid": me.pid, "create_time": me.create_time() - 50})
    write_heartbeat(data_dir / "bot.heartbeat", Heartbeat(me.pid, time.time(), 7, "running"))
    v = checker(data_dir, logs_dir).check()
    assert v.name == "crashed"
    assert "reused" in v.evidence["reason"]


def test_startup_grace_then_hung_without_heartbeat(data_dir, logs_dir, hbbot):
    bot = hbbot("silent")
    c = checker(data_dir, logs_dir, startup_timeout_s=1.0)
    v = verdict_becomes(c, "starting")
    assert v.pid == bot.pid
    v = verdict_becomes(c, "hung")
    assert "startup_timeout_s" in v.evidence["reason"]


def test_graceful_stop_is_not_a_fault(data_dir, logs_dir, hbbot):
    bot = hbbot("stopping")
    c = checker(data_dir, logs_dir)
    bot.wait(5)
    v = c.check()
    assert v.name == "stopped" and not v.fault


def test_manager_started_bot_without_pid_file_is_starting(data_dir, logs_dir):
    fresh = subprocess.Popen(["sleep", "30"])
    try:
        v = checker(data_dir, logs_dir, manager_pid=lambda: fresh.pid).check()
        assert v.name == "starting" and v.pid == fresh.pid
    finally:
        fresh.kill()
        fresh.wait()
    # this test process started long before startup_timeout_s: no pid file by now is a hang
    v = checker(data_dir, logs_dir, manager_pid=os.getpid).check()
    assert v.name == "hung" and "no pid file" in v.evidence["reason"]
    v = checker(data_dir, logs_dir, manager_pid=lambda: None).check()
    assert v.name == "crashed" and "no pid file" in v.evidence["reason"]


def test_files_are_reread_only_when_changed(data_dir, logs_dir, hbbot):
    hbbot(interval=10.0)  # writes once, then sleeps
    c = checker(data_dir, logs_dir, heartbeat_timeout_s=30.0, progress_timeout_s=30.0)
    verdict_becomes(c, "healthy")
    reads = []
    c._heartbeat.loader = reads.append  # any re-read would land here (and break the verdict)
    for _ in range(20):
        assert c.check().name == "healthy"
    assert reads == []
