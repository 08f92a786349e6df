"""The three bot managers against real processes (and a real supervisord)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers.proc import REPO, child_env, stop, wait_until
from tests.watchdog.conftest import hbbot_argv, pid_gone
from tradeguard.heartbeat import read_pidfile
from tradeguard.runner import supervisor_rpc, write_supervisord_conf
from watchdog.managers import (StandaloneManager, SupervisorManager, SystemdManager,
                               detect_manager_name, end_process)

SLEEPER = ("import signal, sys, time\n"
           "if sys.argv[1] == 'ignore-term': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "print('ready', flush=True)\ntime.sleep(60)")


def new_pid(data_dir: Path, not_pid: int | None = None) -> int:
    info = wait_until(lambda: (i := read_pidfile(data_dir / "bot.pid")) and i.pid != not_pid and i,
                      10, message="a new bot.pid")
    return info.pid


@pytest.mark.parametrize("how", ["term", "ignore-term", "stopped"])
def test_end_process_escalates(how):
    p = subprocess.Popen([sys.executable, "-c", SLEEPER, how], stdout=subprocess.PIPE, text=True)
    try:
        proc = psutil.Process(p.pid)
        assert p.stdout.readline().strip() == "ready"
        if how == "stopped":
            os.kill(p.pid, signal.SIGSTOP)
            wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 5)
        said = end_process(proc, grace_s=0.5)
        expect = {"term": "SIGTERM", "ignore-term": "SIGKILL after 0.5s",
                  "stopped": "SIGKILL (process was stopped)"}[how]
        assert said == expect
        assert pid_gone(p.pid)
    finally:
        p.kill()
        p.wait()


def test_standalone_starts_restarts_and_stops_in_own_session(make_cfg, data_dir):
    cfg = make_cfg()
    env = child_env(PYTHONPATH=str(REPO))
    m = StandaloneManager(cfg, env, argv=hbbot_argv(data_dir))
    assert not m.is_running()
    m.start()
    pid = new_pid(data_dir)
    assert m.is_running() and m.current_pid() == pid
    assert os.getsid(pid) != os.getsid(0)  # outlives the watchdog's session
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5)
    said = m.restart(read_pidfile(data_dir / "bot.pid"))
    assert said.startswith("SIGKILL (process was stopped)")
    pid2 = new_pid(data_dir, not_pid=pid)
    assert pid_gone(pid)
    # a second watchdog adopts the running bot through bot.pid and can stop it
    other = StandaloneManager(cfg, env, argv=hbbot_argv(data_dir))
    assert other.is_running() and other.current_pid() is None
    assert other.stop().startswith("SIGTERM")
    wait_until(lambda: pid_gone(pid2), 5)
    m.poll()
    assert not m.is_running()


def test_standalone_default_command_runs_the_bot_with_the_same_paths(make_cfg, data_dir, logs_dir):
    argv = StandaloneManager(make_cfg()).argv()
    assert argv[1:4] == ["-m", "tradeguard", "bot"]
    assert argv[argv.index("--data-dir") + 1] == str(data_dir)
    assert argv[argv.index("--logs-dir") + 1] == str(logs_dir)
    assert "--config" in argv


@pytest.fixture
def supervised_hbbot(make_cfg, data_dir, logs_dir, tmp_path):
    """A real supervisord whose ``bot`` program is the heartbeat bot."""
    cfg = make_cfg(manager="supervisor")
    conf = write_supervisord_conf(cfg, programs=("bot",))
    cmd = " ".join(hbbot_argv(data_dir))
    text = re.sub(r"^command=.*$", f"command={cmd}", conf.read_text(), flags=re.M)
    conf.write_text(text.replace(f"directory={Path.cwd()}", f"directory={REPO}"))
    sd = Path(sys.executable).parent / "supervisord"
    proc = subprocess.Popen([str(sd), "-n", "-c", str(conf)], env=child_env(),
                            stdout=open(logs_dir / "sd.out", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: supervisor_rpc(cfg).supervisor.getProcessInfo("bot")["statename"]
                   == "RUNNING", 15, message="supervisord running the bot")
        yield cfg
    finally:
        stop(proc)


def test_supervisor_restart_and_stop(supervised_hbbot, data_dir):
    cfg = supervised_hbbot
    m = SupervisorManager(cfg)
    pid = new_pid(data_dir)
    assert m.is_running() and m.current_pid() == pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: m.info()["statename"] == "EXITED", 5)
    assert not m.is_running() and m.current_pid() is None
    said = m.restart(read_pidfile(data_dir / "bot.pid"))
    assert "startProcess" in said
    pid2 = new_pid(data_dir, not_pid=pid)
    wait_until(lambda: m.current_pid() == pid2, 5)
    os.kill(pid2, signal.SIGSTOP)  # hung: supervisord alone would never notice
    wait_until(lambda: psutil.Process(pid2).status() == psutil.STATUS_STOPPED, 5)
    assert m.restart(read_pidfile(data_dir / "bot.pid")).startswith("SIGKILL (process was stopped)")
    pid3 = new_pid(data_dir, not_pid=pid2)
    assert pid_gone(pid2)
    assert m.stop().startswith(("SIGTERM", "already gone"))
    assert m.info()["statename"] == "STOPPED" and pid_gone(pid3)
    m.start()
    wait_until(m.is_running, 5)


def test_auto_detection(supervised_hbbot, make_cfg, monkeypatch):
    auto = make_cfg(manager="auto")
    assert detect_manager_name(auto, {}) == "supervisor"  # rpc.json + a live socket
    assert detect_manager_name(make_cfg(manager="standalone"), {}) == "standalone"


def test_auto_detection_without_supervisord(make_cfg):
    cfg = make_cfg(manager="auto")
    assert detect_manager_name(cfg, {"SUPERVISOR_SERVER_URL": "unix:///x"}) == "supervisor"
    assert detect_manager_name(cfg, {"INVOCATION_ID": "abc"}) == "systemd"
    assert detect_manager_name(cfg, {}) == "standalone"  # no systemd unit on this host


def test_systemd_restart_is_a_sigkill(make_cfg, data_dir, hbbot):
    """systemd itself cannot run here; what the watchdog does is the SIGKILL (a failure in
    systemd's eyes, so Restart=on-failure starts a new bot; a SIGTERM would not)."""
    bot = hbbot()
    new_pid(data_dir)
    said = SystemdManager(make_cfg(manager="systemd"), bot_command=hbbot_argv(data_dir)
                          ).restart(read_pidfile(data_dir / "bot.pid"))
    assert said.startswith("SIGKILL")
    wait_until(lambda: pid_gone(bot.pid), 5)
    assert not (data_dir / "hbbot.sigterm").exists()


def test_a_forged_pidfile_never_gets_a_stranger_signalled(make_cfg, data_dir):
    """bot.pid naming a live stranger with its true start time (#16 A8): stop and restart find
    no bot to end, and the stranger is untouched."""
    from tradeguard.heartbeat import atomic_write_json

    stranger = subprocess.Popen(["sleep", "60"])
    try:
        sp = psutil.Process(stranger.pid)
        atomic_write_json(data_dir / "bot.pid", {"pid": sp.pid, "create_time": sp.create_time()})
        for m in (StandaloneManager(make_cfg(), argv=hbbot_argv(data_dir)),
                  SystemdManager(make_cfg(manager="systemd"))):
            said = m.stop()
            assert said.startswith("not running") and "none found" in said, said
            assert stranger.poll() is None and sp.status() != psutil.STATUS_STOPPED
        said = SystemdManager(make_cfg(manager="systemd")).restart(read_pidfile(data_dir / "bot.pid"))
        assert said.startswith("not running") and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
