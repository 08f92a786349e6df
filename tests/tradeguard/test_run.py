"""`tradeguard run`: real supervisord in the foreground, real programs, real signals."""
from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.proc import free_port, run_cli, spawn, stop, tradeguard_cmd, wait_until
from tradeguard.config import load_config
from tradeguard.runner import supervisor_rpc


def _env(data_dir: Path, logs_dir: Path) -> dict[str, str]:
    return {"TRADEGUARD_PAPER_PORT": str(free_port()), "TRADEGUARD_HEALTH_PORT": str(free_port()),
            "TRADEGUARD_PATHS_DATA_DIR": str(data_dir), "TRADEGUARD_PATHS_LOGS_DIR": str(logs_dir),
            "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.2"}


def _all_running(cfg) -> dict[str, str] | None:
    info = {p["name"]: p["statename"] for p in supervisor_rpc(cfg).supervisor.getAllProcessInfo()}
    return info if info and all(s == "RUNNING" for s in info.values()) else None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_everything_and_stops_within_15s(tmp_path, data_dir, logs_dir, monkeypatch, sig):
    env = _env(data_dir, logs_dir)
    proc = spawn(tradeguard_cmd("run"), env=env, log=tmp_path / "run.out", cwd=tmp_path)
    try:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = load_config()
        info = wait_until(lambda: _all_running(cfg), timeout=30, message="all programs RUNNING")
        assert "paper-exchange" in info
        conf = data_dir / "supervisord.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "supervisor").stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "supervisor" / "rpc.json").stat().st_mode) == 0o600
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "supervisord started no programs"

        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        proc.wait(20)
        assert time.monotonic() - t0 < 15
        wait_until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                                   for c in children), timeout=5, message="children gone")
    finally:
        stop(proc)


def test_run_refuses_a_taken_port(tmp_path, data_dir, logs_dir):
    import socket

    env = _env(data_dir, logs_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(env["TRADEGUARD_PAPER_PORT"])))
        s.listen()
        r = run_cli("run", env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 2
    assert "[paper] port" in r.stderr and "Traceback" not in r.stderr
