"""BotChecker against real processes speaking the heartbeat protocol."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

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
        assert v.evidence["hb_age_s"] >= 0.6  # over the timeout; the evidence is rounded to the ms
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
    # over the limit in bytes; the evidence is rounded, so a hair over reads as 120.0
    assert v.evidence["rss_mb"] >= 120.0 and v.evidence["limit_mb"] == 120.0


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
    c = checker(data_dir, logs_dir, startup_timeout_s=3.0)  # room for a slow interpreter start
    v = verdict_becomes(c, "starting")
    assert v.pid == bot.pid
    v = verdict_becomes(c, "hung", timeout=8.0)
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


# --- #16 A17: ages on the watchdog's own monotonic clock ------------------------------------
def test_frozen_bot_with_a_future_timestamp_is_hung(data_dir, logs_dir, hbbot):
    """A bot whose wall clock ran an hour ahead wrote its last heartbeat and froze: the
    timestamp says "fresh" for an hour, the file has not changed for longer than the timeout."""
    bot = hbbot("silent")  # a live bot process with a pid file; the heartbeat is written here
    wait_until(lambda: (data_dir / "bot.pid").exists(), 5)
    write_heartbeat(data_dir / "bot.heartbeat", Heartbeat(bot.pid, time.time() + 3600, 9, "running"))
    c = checker(data_dir, logs_dir)
    assert c.check().name == "healthy"
    t0 = time.monotonic()
    v = verdict_becomes(c, "hung")
    assert time.monotonic() - t0 < 0.6 + 1.0
    assert v.evidence["hb_age_s"] >= 0.6 and v.evidence["hb_ts"] > time.time() + 3000


def test_stalled_writer_with_stepped_back_timestamps_is_stalled(data_dir, logs_dir, hbbot):
    """The writer keeps rewriting the file (fresh by the file) with a stuck seq and timestamps
    from a clock stepped back again and again: progress is judged on seq, on the watchdog's
    clock."""
    bot = hbbot("silent")
    wait_until(lambda: (data_dir / "bot.pid").exists(), 5)
    c = checker(data_dir, logs_dir)
    deadline = time.monotonic() + 5
    v = None
    step = 0
    while time.monotonic() < deadline:
        step += 1
        ts = time.time() - 60 * step  # a wall clock stepped back a minute at every write
        write_heartbeat(data_dir / "bot.heartbeat", Heartbeat(bot.pid, ts, 4, "running"))
        v = c.check(now=ts)  # the watchdog's wall clock is stepped in the same way
        if v.name == "stalled":
            break
        time.sleep(0.05)
    assert v is not None and v.name == "stalled", v
    assert v.evidence["no_progress_s"] >= 0.6 and v.evidence["hb_age_s"] < 0.6  # rounded to the ms


def test_wall_clock_stepped_back_does_not_hide_a_sigstopped_bot(data_dir, logs_dir, hbbot):
    bot = hbbot()
    c = checker(data_dir, logs_dir)
    verdict_becomes(c, "healthy")
    os.kill(bot.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        # every check sees a wall clock one hour behind the heartbeat's timestamp
        v = wait_until(lambda: (v := c.check(now=time.time() - 3600)).name == "hung" and v, 5,
                       message="hung")
        assert time.monotonic() - t0 < 0.6 + 1.0
        assert v.evidence["status"] == "stopped"
    finally:
        os.kill(bot.pid, signal.SIGCONT)


# --- #16 A8: a forged pid file --------------------------------------------------------------
@pytest.fixture
def stranger():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def forge_pidfile(data_dir: Path, pid: int) -> None:
    """bot.pid naming ``pid`` with its true start time (what a forger can read in /proc)."""
    atomic_write_json(data_dir / "bot.pid", {"pid": pid, "create_time": psutil.Process(pid).create_time()})


def stays_healthy(c: BotChecker, pid: int, seconds: float = 1.5):
    """Checks for longer than the heartbeat and progress timeouts: always healthy, always
    ``pid``; returns the last verdict."""
    end = time.monotonic() + seconds
    while True:
        v = c.check()
        assert v.name == "healthy" and v.pid == pid, v
        if time.monotonic() >= end:
            return v
        time.sleep(0.05)


def test_forged_pidfile_loses_to_the_managers_pid(data_dir, logs_dir, hbbot, stranger):
    bot = hbbot()
    c = checker(data_dir, logs_dir, manager_pid=lambda: bot.pid)
    verdict_becomes(c, "healthy")
    forge_pidfile(data_dir, stranger.pid)
    v = stays_healthy(c, bot.pid)
    assert "manager runs pid" in v.evidence["pidfile"]
    assert c.bot_process().pid == bot.pid


def test_forged_pidfile_without_a_manager_names_no_bot(data_dir, logs_dir, stranger):
    forge_pidfile(data_dir, stranger.pid)
    v = checker(data_dir, logs_dir).check()
    assert v.name == "crashed" and v.pid is None  # nothing to judge, nothing to signal
    assert "is not the bot" in v.evidence["reason"] and "sleep 60" in v.evidence["reason"]


def test_forged_pidfile_without_a_manager_the_heartbeats_bot_is_judged(data_dir, logs_dir, hbbot,
                                                                      stranger):
    bot = hbbot()
    c = checker(data_dir, logs_dir)
    verdict_becomes(c, "healthy")
    forge_pidfile(data_dir, stranger.pid)
    v = stays_healthy(c, bot.pid)
    assert "which is not the bot" in v.evidence["pidfile"]
    os.kill(bot.pid, signal.SIGSTOP)  # the real bot hangs: it, not the stranger, is hung
    try:
        v = verdict_becomes(c, "hung")
        assert v.pid == bot.pid
    finally:
        os.kill(bot.pid, signal.SIGCONT)
