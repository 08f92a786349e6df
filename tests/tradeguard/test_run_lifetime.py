"""No program outlives its run: SIGHUP, SIGKILL of supervisord, Ctrl-C on ``run | tee``; one run,
bot or watchdog per data dir (a real lock); ``tradeguard stop``. Real processes, real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers.proc import REPO, child_env, free_port, run_cli, spawn, stop, tradeguard_cmd, \
    wait_until
from tradeguard.heartbeat import read_heartbeat
from tradeguard.lifetime import lock_holder
from tradeguard.runner import ALL_PROGRAMS, supervisor_rpc

pytestmark = pytest.mark.slow


def _env(data_dir: Path, logs_dir: Path) -> dict[str, str]:
    return {"TRADEGUARD_PAPER_PORT": str(free_port()), "TRADEGUARD_HEALTH_PORT": str(free_port()),
            "TRADEGUARD_PATHS_DATA_DIR": str(data_dir), "TRADEGUARD_PATHS_LOGS_DIR": str(logs_dir),
            "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.2"}


def _programs_running(cfg_env: dict[str, str], monkeypatch) -> list[psutil.Process]:
    """Wait until supervisord reports all three programs RUNNING; return their processes."""
    from tradeguard.config import load_config

    for k, v in cfg_env.items():
        monkeypatch.setenv(k, v)
    cfg = load_config()

    def running():
        info = [p for p in supervisor_rpc(cfg).supervisor.getAllProcessInfo()
                if p["name"] in ALL_PROGRAMS]  # not the watchdog-guard event listener
        ok = len(info) == 3 and all(p["statename"] == "RUNNING" for p in info)
        return [psutil.Process(p["pid"]) for p in info] if ok else None
    return wait_until(running, timeout=40, interval=0.2, message="all programs RUNNING")


def _gone(procs: list[psutil.Process]) -> bool:
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return not any(alive(p) for p in procs)


def _start_run(tmp_path: Path, data_dir: Path, logs_dir: Path, monkeypatch):
    env = _env(data_dir, logs_dir)
    proc = spawn(tradeguard_cmd("run"), env=env, log=tmp_path / "run.out", cwd=tmp_path)
    return proc, env, _programs_running(env, monkeypatch)


def _reap_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_no_program_outlives_supervisord(tmp_path, data_dir, logs_dir, monkeypatch, sig):
    """SIGHUP (a closed terminal) stops the run; SIGKILL of supervisord takes every program
    with it (each asked the kernel for SIGTERM when its parent dies)."""
    proc, _, programs = _start_run(tmp_path, data_dir, logs_dir, monkeypatch)
    try:
        wait_until(lambda: (hb := read_heartbeat(data_dir / "bot.heartbeat")) and hb.state == "running",
                   timeout=60, interval=0.2, message="the bot trading")
        os.kill(proc.pid, sig)
        proc.wait(20)
        wait_until(lambda: _gone(programs), timeout=15, message="every program gone")
        if sig == signal.SIGHUP:
            assert proc.returncode == 0
            assert "SIGTERM indicating exit request" in (logs_dir / "supervisord.log").read_text()
        # either way the bot stopped through its own SIGTERM handler (a graceful stop, its
        # output pipe broken or not), not by being killed mid-tick
        assert "\"msg\": \"bot stopped\"" in (logs_dir / "bot.jsonl").read_text()
        assert lock_holder(data_dir, "run") is None and lock_holder(data_dir, "bot") is None
    finally:
        stop(proc)
        _reap_all(programs)


def test_ctrl_c_on_run_piped_into_tee(tmp_path, data_dir, logs_dir, monkeypatch):
    """``make run | tee log`` and Ctrl-C: the terminal's SIGINT reaches tee and the run at once;
    supervisord then writes into a closed pipe. Nothing may be left running."""
    env = _env(data_dir, logs_dir)
    cmd = " ".join(tradeguard_cmd("run")) + f" | tee {tmp_path / 'tee.log'}"
    terminal = tmp_path / "terminal.err"  # what the run prints on the terminal (its stderr)
    with open(terminal, "wb") as err:
        shell = subprocess.Popen(["sh", "-c", cmd], env=child_env(env), cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    programs: list[psutil.Process] = []
    try:
        programs = _programs_running(env, monkeypatch)
        supervisord = psutil.Process(lock_holder(data_dir, "run"))
        os.killpg(shell.pid, signal.SIGINT)  # the whole foreground job, as a terminal does
        wait_until(lambda: _gone(programs + [supervisord]), timeout=25,
                   message="supervisord and every program gone")
        assert "Traceback" not in terminal.read_text(errors="replace")
    finally:
        stop(shell)
        _reap_all(programs)


def test_one_run_per_data_dir_and_stop(tmp_path, data_dir, logs_dir, monkeypatch):
    proc, env, programs = _start_run(tmp_path, data_dir, logs_dir, monkeypatch)
    try:
        other_ports = {**env, "TRADEGUARD_PAPER_PORT": str(free_port()),
                       "TRADEGUARD_HEALTH_PORT": str(free_port())}
        second = run_cli("run", env=other_ports, cwd=tmp_path, timeout=30)
        assert second.returncode == 2, second.stdout
        assert f"another tradeguard run (pid {proc.pid}) already runs" in second.stderr

        r = run_cli("stop", "--data-dir", str(data_dir), cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "XML-RPC" in r.stdout and "stopped" in r.stdout
        assert proc.wait(5) == 0
        assert _gone(programs)
        r = run_cli("stop", "--data-dir", str(data_dir), cwd=tmp_path)
        assert r.returncode == 0 and "nothing to stop" in r.stdout
    finally:
        stop(proc)
        _reap_all(programs)


def test_stop_without_the_socket_signals_the_lock_holder(tmp_path, data_dir, logs_dir, monkeypatch):
    proc, _, programs = _start_run(tmp_path, data_dir, logs_dir, monkeypatch)
    try:
        (data_dir / "supervisor" / "rpc.json").unlink()
        r = run_cli("stop", "--data-dir", str(data_dir), cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"SIGTERM to supervisord pid {proc.pid}" in r.stdout
        assert proc.wait(5) == 0 and _gone(programs)
    finally:
        stop(proc)
        _reap_all(programs)


def test_two_bots_started_together_one_wins(tmp_path):
    """The lock has no window between check and claim: of bots racing for one data dir, exactly
    one holds it (the others exit 2 before touching the state)."""
    code = ("import sys, time\nfrom tradeguard.lifetime import hold_lock\n"
            "from tradeguard.exceptions import AlreadyRunning\n"
            "try:\n    lock = hold_lock(sys.argv[1], 'bot', 'bot')\n"
            "except AlreadyRunning as e:\n    print(e); sys.exit(2)\n"
            "print('held', flush=True); time.sleep(30)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        losers = wait_until(lambda: [p for p in procs if p.poll() is not None]
                            if sum(p.poll() is not None for p in procs) == 5 else None,
                            timeout=20, message="five losers")
        assert all(p.returncode == 2 and "already runs" in p.stdout.read() for p in losers)
        (winner,) = [p for p in procs if p.poll() is None]
        assert winner.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path, "bot") == winner.pid
    finally:
        for p in procs:
            p.kill()
            p.wait()
