"""#16 A3 and A8 against a real supervisord: the manager is gone (SIGKILLed) when the bot must be
stopped, and a forged pid file names a stranger while supervisord runs the bot."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.proc import stop, wait_until
from tests.watchdog.system import GuardedBot, supervisord
from tests.watchdog.trading import balance, bot_buys, exchange_cfg
from tradeguard.heartbeat import atomic_write_json, read_heartbeat
from watchdog.managers import is_dead

pytestmark = pytest.mark.slow


class DeathWatch:
    """Records (wall clock) when a process stops executing: gone, or a zombie."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.died_at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if is_dead(self.proc):
                self.died_at = time.time()
                return
            time.sleep(0.002)


def emergency_orders(db: Path) -> list[tuple[str, float]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT client_order_id, created_at FROM orders WHERE purpose = "
                           "'emergency' ORDER BY created_at").fetchall()
    finally:
        con.close()


STALL_AT = 60  # the bot's loop stalls at its 60th tick (~12 s): after supervisord is killed


def test_manager_gone_the_bot_is_dead_before_the_first_emergency_order(short_path_exchange):
    """supervisord is SIGKILLed, then the bot (running, not stopped: it would answer a flatten
    kill switch itself) stalls. The watchdog cannot reach supervisord; it must end the verified
    bot itself and prove it dead before the flatten sends anything."""
    px = short_path_exchange
    bot_buys(exchange_cfg(px), "BTC/USDT", 0.01)  # the bot holds a position
    g = GuardedBot.create(px, "supervisor", TRADEGUARD_WATCHDOG_RESTART_BUDGET="0",
                          TRADEGUARD_BOT_STRATEGY_PARAMS='{"interval_s": 3600}',
                          TRADEGUARD_FAILPOINTS=f"loop.tick=stall@{STALL_AT}")
    sd = supervisord(g.cfg, g.env, programs=("bot",))
    try:
        g.start()  # the watchdog: its own process, not a child of supervisord
        pid = g.healthy()
        os.kill(sd.pid, signal.SIGKILL)  # the manager is gone; the bot lives on
        sd.wait(5)
        hb = read_heartbeat(px.data_dir / "bot.heartbeat")
        assert hb is not None and hb.seq < STALL_AT - 5, "the machine is too slow for this test"
        proc = psutil.Process(pid)
        assert not is_dead(proc)
        death = DeathWatch(pid)
        wait_until(lambda: g.state()["emergency"]["state"] == "done", 90,
                   message=f"emergency done\n{g.output()}")
        assert g.verdict_events("stalled"), "the bot stalled, it was not stopped"
        orders = emergency_orders(px.data_dir / "state.db")
        assert orders, "the flatten sold the bot's position"
        assert death.died_at is not None and death.died_at < orders[0][1], (death.died_at, orders)
        (stopped,) = g.events("emergency.bot_stopped")
        assert "supervisord" in stopped["message"] and f"bot dead (pid {pid})" in stopped["message"]
        assert balance(px, "BTC") == pytest.approx(0.0)
    finally:
        stop(sd)
        g.close()


def test_forged_pidfile_under_supervisord_the_stranger_is_never_judged_or_signalled(
        short_path_exchange):
    px = short_path_exchange
    g = GuardedBot.create(px, "supervisor", TRADEGUARD_BOT_STRATEGY_PARAMS='{"interval_s": 3600}')
    sd = supervisord(g.cfg, g.env, programs=("bot",))
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        g.start()
        pid = g.healthy()
        sp = psutil.Process(stranger.pid)
        atomic_write_json(px.data_dir / "bot.pid", {"pid": stranger.pid,
                                                    "create_time": sp.create_time()})
        timeout = g.cfg.watchdog.heartbeat_timeout_s + g.cfg.watchdog.progress_timeout_s
        end = time.monotonic() + timeout + 2.0
        while time.monotonic() < end:  # longer than any timeout the stranger could trip
            st = g.state()
            assert st["verdict"] == "healthy" and st["bot_pid"] == pid, st
            assert sp.status() != psutil.STATUS_STOPPED and stranger.poll() is None
            time.sleep(0.1)
        assert "its manager runs pid" in g.state()["evidence"]["pidfile"]
        assert g.state()["restarts_total"] == 0 and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        stop(sd)
        g.close()
