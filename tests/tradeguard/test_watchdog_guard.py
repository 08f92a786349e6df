"""#16 A5: under ``tradeguard run`` someone watches the watchdog. A SIGSTOPped watchdog (which
supervisord alone reports RUNNING forever) is replaced by the ``watchdog-guard`` event listener,
and the new watchdog handles a bot that hung meanwhile. ``tradeguard status`` says when the
watchdog itself is stale."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.helpers.proc import free_port, run_cli, spawn, stop, tradeguard_cmd, wait_until
from tradeguard.config import load_config
from tradeguard.runner import supervisor_rpc

GUARD_STALE_S = 15.0  # the listener's default (tradeguard.watchdog_guard.STALE_S)


def _info(cfg, name: str) -> dict:
    return supervisor_rpc(cfg).supervisor.getProcessInfo(name)


@pytest.mark.slow
def test_a_sigstopped_watchdog_is_replaced_and_the_hung_bot_handled(tmp_path, data_dir, logs_dir,
                                                                    monkeypatch):
    env = {"TRADEGUARD_PAPER_PORT": str(free_port()), "TRADEGUARD_HEALTH_ENABLED": "false",
           "TRADEGUARD_PATHS_DATA_DIR": str(data_dir), "TRADEGUARD_PATHS_LOGS_DIR": str(logs_dir),
           "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.2", "TRADEGUARD_WATCHDOG_HEARTBEAT_TIMEOUT_S": "3",
           "TRADEGUARD_WATCHDOG_PROGRESS_TIMEOUT_S": "4", "TRADEGUARD_WATCHDOG_KILL_GRACE_S": "1",
           "TRADEGUARD_BOT_LOOP_INTERVAL_S": "0.2", "TRADEGUARD_BOT_TICK_DEADLINE_S": "1"}
    proc = spawn(tradeguard_cmd("run"), env=env, log=tmp_path / "run.out", cwd=tmp_path)
    stopped: list[int] = []
    try:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = load_config()
        wait_until(lambda: _info(cfg, "watchdog-guard")["statename"] == "RUNNING"
                   and _info(cfg, "bot")["statename"] == "RUNNING", 40, message="programs running")
        state = lambda: json.loads(cfg.runtime.watchdog_state.read_text())  # noqa: E731
        wd = _info(cfg, "watchdog")["pid"]
        bot = wait_until(lambda: (s := state())["verdict"] == "healthy" and s["pid"] == wd
                         and s["bot_pid"], 60, message="a watched, healthy bot")

        os.kill(wd, signal.SIGSTOP)  # the watchdog hangs ...
        stopped.append(wd)
        t0 = time.monotonic()
        os.kill(bot, signal.SIGSTOP)  # ... then the bot does
        stopped.append(bot)
        assert _info(cfg, "watchdog")["statename"] == "RUNNING"  # supervisord sees nothing wrong

        # replaced within the listener's staleness plus one TICK_5 (and a slow start's margin)
        new_wd = wait_until(lambda: (i := _info(cfg, "watchdog"))["statename"] == "RUNNING"
                            and i["pid"] != wd and i["pid"], GUARD_STALE_S + 5 + 20,
                            message="a new watchdog")
        assert not psutil.pid_exists(wd) or psutil.Process(wd).status() == psutil.STATUS_ZOMBIE
        # the new watchdog finds the hung bot and restarts it
        new_bot = wait_until(lambda: (s := state())["pid"] == new_wd and s["verdict"] == "healthy"
                             and s["bot_pid"] != bot and s["bot_pid"], 60, message="a new bot")
        took = time.monotonic() - t0
        assert not psutil.pid_exists(bot) or psutil.Process(bot).status() == psutil.STATUS_ZOMBIE
        assert _info(cfg, "bot")["pid"] == new_bot
        assert took < GUARD_STALE_S + 5 + 60

        from blackbox.reader import query_events
        (ev,) = query_events(data_dir / "blackbox.db", kinds=("runner.watchdog_replaced",))
        assert f"pid {wd}" in ev["message"] and "stopped" in ev["message"]
    finally:
        for pid in stopped:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop(proc, timeout=20)


def test_status_says_when_the_watchdog_is_stale(tmp_path, data_dir, logs_dir):
    """watchdog.json written 60 s ago by a watchdog process that is still there (stopped)."""
    hung = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(hung.pid, signal.SIGSTOP)
        now = time.time()
        (data_dir / "watchdog.json").write_text(json.dumps({
            "pid": hung.pid, "ts": now - 60, "manager": "supervisor", "verdict": "healthy",
            "since": now - 120, "evidence": {}, "restarts": [], "restarts_total": 0,
            "restart_budget": 5, "restart_window_s": 600.0, "budget_left": 5,
            "emergency": {"state": "none"}}))
        cfg_file = tmp_path / "tg.toml"
        cfg_file.write_text(f"[health]\nport = {free_port()}\n")
        args = ("--config", str(cfg_file), "--data-dir", str(data_dir), "--logs-dir", str(logs_dir))
        r = run_cli("status", *args)
        assert "watchdog   : STALE: pid" in r.stdout and "hung or stopped" in r.stdout, r.stdout
        assert "WATCHDOG_STALE" in r.stdout
        snap = json.loads(run_cli("status", "--json", *args).stdout)
        assert snap["watchdog"]["stale"] is True and snap["status"] == "watchdog_stale"
        hung.kill()
        hung.wait()  # gone: not stale, just not running
        snap = json.loads(run_cli("status", "--json", *args).stdout)
        assert snap["watchdog"]["stale"] is False and snap["watchdog"]["running"] is False
    finally:
        hung.kill()
        hung.wait()
