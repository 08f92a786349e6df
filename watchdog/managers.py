"""Who restarts the bot: supervisord, systemd, or the watchdog itself (standalone).

Each manager has the same interface: ``restart(pid_info)`` (end the faulty process if it is
still there, then bring a new one up), ``stop()`` (end it so that it stays down), ``start()``,
``is_running()``, ``current_pid()`` and ``poll()`` (reap children). Ending a process is
SIGTERM, then SIGKILL after ``kill_grace_s``; a stopped (SIGSTOPped) process cannot handle
SIGTERM until continued, so it gets SIGKILL at once.

Only the bot is ever signalled: the process its manager reports, or a pid from ``bot.pid`` that
is verified to be the bot (start time and command line,
:func:`tradeguard.heartbeat.verified_process`) — never a stranger a forged pid file names.

``stop()`` is the emergency's gate: it returns only once every bot process it found is proven
dead (gone, or a zombie: a zombie executes nothing), and raises :class:`ManagerError` otherwise.
When the manager does not answer (supervisord killed, systemctl refused), it does not give up
before anything is signalled: it ends the verified bot itself.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

import psutil

from tradeguard.config import Config
from tradeguard.exceptions import ManagerError
from tradeguard.heartbeat import PidInfo, find_bot, process_for, read_heartbeat, read_pidfile
from watchdog import consolelog

log = logging.getLogger(__name__)

SYSTEMD_UNIT = "tradeguard-bot.service"
SUPERVISOR_PROGRAM = "bot"
_STOPPED_STATES = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def end_process(proc: psutil.Process, grace_s: float) -> str:
    """End ``proc``: SIGTERM, SIGKILL after ``grace_s`` (at once if it is stopped). Says how;
    returns only once it is gone or a zombie, else raises :class:`ManagerError`."""
    try:
        stopped = proc.status() in _STOPPED_STATES
        if stopped:
            proc.kill()
            how = "SIGKILL (process was stopped)"
        else:
            proc.terminate()
            how = "SIGTERM"
    except psutil.NoSuchProcess:
        return "already gone"
    if wait_dead(proc, grace_s if not stopped else 5.0):
        return how
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
    if not wait_dead(proc, 5.0):
        raise ManagerError(f"pid {proc.pid} survived SIGKILL")
    return f"SIGKILL after {grace_s}s"


def is_dead(proc: psutil.Process) -> bool:
    """``proc`` executes nothing any more: gone (or its PID reused), or a zombie."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def wait_dead(proc: psutil.Process, timeout: float) -> bool:
    """Wait up to ``timeout`` for :func:`is_dead`; reaps ``proc`` if it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(0)  # reaps a child of ours; a no-op test for any other process
            return True
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            return True
        if is_dead(proc):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


class BotManager(ABC):
    """The common interface of the three managers."""

    name = ""

    def __init__(self, cfg: Config, bot_command: Sequence[str] | None = None):
        self.cfg = cfg
        self._bot_command = list(bot_command) if bot_command else None

    def bot_command(self) -> list[str] | None:
        """The command line the bot runs with, when it is not ``tradeguard ... bot``."""
        return self._bot_command

    def _bot_process(self, pid_info: PidInfo | None = None) -> psutil.Process | None:
        """The bot: the process the manager reports, else the verified process of the pid
        file (or ``pid_info``); never a stranger the pid file names."""
        mpid = self.current_pid()
        if mpid is not None:
            try:
                mproc = psutil.Process(mpid)
                if mproc.status() != psutil.STATUS_ZOMBIE:
                    return mproc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        info = pid_info or read_pidfile(self.cfg.runtime.pidfile)
        hb = read_heartbeat(self.cfg.runtime.heartbeat)
        return find_bot(info, hb.pid if hb is not None else None, mpid, self.bot_command(),
                        why=lambda why: log.warning("%s: not signalling it", why))[1]

    def _end(self, pid_info: PidInfo | None) -> str:
        proc = self._bot_process(pid_info)
        return "not running" if proc is None else end_process(proc, self.cfg.watchdog.kill_grace_s)

    @abstractmethod
    def restart(self, pid_info: PidInfo | None) -> str:
        """End the faulty bot if it is still there and have a new one started; says how."""

    def stop(self) -> str:
        """End the bot so that it stays down; says how. Returns only once every bot process
        found before is proven dead (gone or a zombie) and no other bot runs; raises
        :class:`ManagerError` otherwise. The emergency sells nothing before this returns."""
        victims = [p for p in (self._bot_process(),) if p is not None]
        try:
            how = self._stop_bot()
        except ManagerError as e:
            # the manager does not answer: end the verified bot directly rather than not at all
            log.error("%s; ending the bot with signals", e)
            how = f"{e}; {self._end(None)}"
        grace = self.cfg.watchdog.kill_grace_s
        for proc in victims:
            if not wait_dead(proc, grace + 5.0):
                how += f"; {end_process(proc, grace)} (pid {proc.pid} outlived the stop)"
        left = self._bot_process()
        if left is not None and not is_dead(left):
            raise ManagerError(f"a bot process (pid {left.pid}) still runs after the stop")
        pids = ", ".join(str(p.pid) for p in victims) or "none found"
        return f"{how}; bot dead (pid {pids})"

    @abstractmethod
    def _stop_bot(self) -> str:
        """The manager's own way of ending the bot so that it stays down; says how."""

    @abstractmethod
    def start(self) -> None:
        """Start the bot (no-op if it runs)."""

    @abstractmethod
    def is_running(self) -> bool:
        """The manager has a live bot process (or is bringing one up)."""

    def current_pid(self) -> int | None:
        """The bot's pid as the manager knows it (before the bot writes its pid file); None
        when it does not know or does not answer."""
        return None

    def poll(self) -> None:
        """Reap exited children; called every check."""


class StandaloneManager(BotManager):
    """The watchdog starts the bot itself, in its own session so that it outlives the watchdog.

    A bot started by a previous watchdog is adopted through ``bot.pid`` (not our child: it is
    reaped by init).
    """

    name = "standalone"

    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None,
                 argv: list[str] | None = None):
        super().__init__(cfg, argv)
        self.environ = dict(os.environ if environ is None else environ)
        self._argv = argv
        self._child: subprocess.Popen | None = None
        self.last_exit: int | None = None

    def argv(self) -> list[str]:
        """``tradeguard bot --config F --data-dir D --logs-dir L`` (or the command given)."""
        if self._argv is not None:
            return list(self._argv)
        paths = self.cfg.runtime
        args = [sys.executable, "-m", "tradeguard", "bot"]
        if self.cfg.source:
            args += ["--config", str(Path(self.cfg.source).resolve())]
        return args + ["--data-dir", str(paths.data_dir), "--logs-dir", str(paths.logs_dir)]

    def start(self) -> None:
        if self.is_running():
            return
        paths = self.cfg.runtime
        paths.logs_dir.mkdir(parents=True, exist_ok=True)
        # Console output (tracebacks of a crash at import time) goes beside the bot's JSON log,
        # one generation per bot process, bounded in size while it runs (see poll).
        console = paths.logs_dir / "bot.console.log"
        consolelog.new_generation(console)
        with open(console, "ab") as out:
            self._child = subprocess.Popen(self.argv(), env=self.environ, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True, close_fds=True)
        log.info("started the bot (pid %d)", self._child.pid)

    def poll(self) -> None:
        consolelog.bound(self.cfg.runtime.logs_dir / "bot.console.log")
        if self._child is not None and self._child.poll() is None and self._child_is_zombie():
            try:  # Popen.poll() can miss an exited child; wait() reaps it for certain
                self._child.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        if self._child is not None and self._child.poll() is not None:
            self.last_exit = self._child.returncode
            log.info("bot pid %d exited with %s", self._child.pid, self.last_exit)
            self._child = None

    def _child_is_zombie(self) -> bool:
        assert self._child is not None
        try:
            return psutil.Process(self._child.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True  # reaped behind Popen's back: wait() records it
        except psutil.AccessDenied:
            return False

    def _child_alive(self) -> bool:
        self.poll()
        return self._child is not None

    def is_running(self) -> bool:
        return self._child_alive() or self._bot_process() is not None

    def current_pid(self) -> int | None:
        return self._child.pid if self._child_alive() else None

    def bot_command(self) -> list[str] | None:
        return self.argv()

    def _end_all(self, pid_info: PidInfo | None) -> str:
        how = self._end(pid_info)
        if self._child_alive():  # our child, not (yet) in bot.pid
            how = end_process(psutil.Process(self._child.pid), self.cfg.watchdog.kill_grace_s)
        self.poll()
        return how

    def restart(self, pid_info: PidInfo | None) -> str:
        how = self._end_all(pid_info)
        self.start()
        return f"{how}; started a new bot"

    def _stop_bot(self) -> str:
        return self._end_all(None)


class SupervisorManager(BotManager):
    """supervisord's XML-RPC API over its unix socket (``tradeguard run``).

    The bot program has ``autorestart=false``: only the watchdog restarts it.
    """

    name = "supervisor"
    RUNNING = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")

    def __init__(self, cfg: Config, program: str = SUPERVISOR_PROGRAM,
                 bot_command: Sequence[str] | None = None):
        super().__init__(cfg, bot_command)
        self.program = program
        self._proxy: Any = None
        self._lock = threading.Lock()  # one XML-RPC connection; the emergency thread shares it

    def _rpc(self) -> Any:
        if self._proxy is None:
            from tradeguard.runner import supervisor_rpc

            self._proxy = supervisor_rpc(self.cfg).supervisor
        return self._proxy

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            try:
                return getattr(self._rpc(), method)(*args)
            except xmlrpc.client.Fault:
                raise
            except (OSError, xmlrpc.client.Error) as e:
                self._proxy = None  # reconnect next time (supervisord may have restarted)
                raise ManagerError(f"supervisord {method}({self.program}) failed: {e}") from None

    def info(self) -> dict[str, Any]:
        try:
            return self._call("getProcessInfo", self.program)
        except xmlrpc.client.Fault as f:
            raise ManagerError(f"supervisord has no program {self.program!r}: "
                               f"{f.faultString}") from None

    def is_running(self) -> bool:
        try:
            return self.info()["statename"] in self.RUNNING
        except ManagerError as e:  # supervisord itself is gone: so is the bot it ran
            log.error("%s", e)
            return self._bot_process() is not None

    def current_pid(self) -> int | None:
        try:
            info = self.info()
        except ManagerError:
            return None
        if info["statename"] not in self.RUNNING:
            return None
        return int(info["pid"]) or None

    def _control(self, method: str, already: str) -> None:
        """``method(program, wait=False)``; the fault ``already`` means it is done already."""
        try:
            self._call(method, self.program, False)
        except xmlrpc.client.Fault as f:
            if already not in f.faultString:
                raise ManagerError(f"supervisord {method}({self.program}): {f.faultString}") from None

    def start(self) -> None:
        self._control("startProcess", "ALREADY_STARTED")

    def _stop_request(self) -> None:
        """Ask supervisord to stop the program (so it will not restart it), without waiting."""
        self._control("stopProcess", "NOT_RUNNING")

    def _wait_down(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.info()["statename"] in self.RUNNING:
            if time.monotonic() >= deadline:
                raise ManagerError(f"supervisord still reports {self.program} running")
            time.sleep(0.02)

    def _stop(self, pid_info: PidInfo | None) -> str:
        proc = self._bot_process(pid_info)
        if proc is not None:
            stopped = proc.status() in _STOPPED_STATES
            if not stopped:
                self._stop_request()  # supervisord sends SIGTERM to the group
            how = end_process(proc, self.cfg.watchdog.kill_grace_s)
        else:
            how = "not running"
            if self.is_running():  # started, no pid file yet
                self._stop_request()
        self._wait_down(self.cfg.watchdog.kill_grace_s + 5.0)
        return how

    def restart(self, pid_info: PidInfo | None) -> str:
        try:
            info = self.info()
        except ManagerError as e:
            # supervisord is gone: it cannot start a new bot, but the faulty one is ended anyway
            raise ManagerError(f"{e}; {self._end(pid_info)}; no new bot started") from None
        if info["statename"] in self.RUNNING and pid_info is not None and info["pid"] != pid_info.pid:
            return f"supervisord already runs a new bot (pid {info['pid']})"
        how = self._stop(pid_info)
        self.start()
        return f"{how}; supervisord startProcess({self.program})"

    def _stop_bot(self) -> str:
        return self._stop(None)


class SystemdManager(BotManager):
    """systemd (``tradeguard-bot.service`` with ``Restart=on-failure``).

    A restart is a SIGKILL to the bot, as the same user, no root needed: a SIGKILL counts as a
    failure, so systemd starts a new one (a SIGTERM would be a clean exit and would not). Stop
    and start go through ``systemctl``; without the rights to do that, stop falls back to
    SIGTERM/SIGKILL — if systemd then restarts the bot, it finds the kill switch engaged and
    refuses to trade.
    """

    name = "systemd"

    def __init__(self, cfg: Config, unit: str = SYSTEMD_UNIT,
                 bot_command: Sequence[str] | None = None):
        super().__init__(cfg, bot_command)
        self.unit = unit

    def _systemctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["systemctl", *args], capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return subprocess.CompletedProcess(["systemctl", *args], 1, "", str(e))

    def restart(self, pid_info: PidInfo | None) -> str:
        proc = self._bot_process(pid_info)
        if proc is None:
            return "not running; systemd restarts it (Restart=on-failure)"
        try:
            proc.kill()
            proc.wait(5.0)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise ManagerError(f"pid {proc.pid} survived SIGKILL") from None
        return "SIGKILL; systemd restarts it (Restart=on-failure)"

    def _stop_bot(self) -> str:
        r = self._systemctl("stop", self.unit, timeout=self.cfg.watchdog.kill_grace_s + 30)
        if r.returncode == 0:
            return f"systemctl stop {self.unit}"
        log.warning("systemctl stop %s failed (%s); ending the bot with signals", self.unit,
                    r.stderr.strip())
        return self._end(None)

    def start(self) -> None:
        r = self._systemctl("start", self.unit)
        if r.returncode != 0:
            raise ManagerError(f"systemctl start {self.unit} failed: {r.stderr.strip()}; "
                               f"start it with: sudo systemctl start {self.unit}")

    def is_running(self) -> bool:
        r = self._systemctl("is-active", self.unit, timeout=5.0)
        if r.stdout.strip() in ("active", "activating", "reloading", "deactivating"):
            return True
        return self._bot_process() is not None

    def current_pid(self) -> int | None:
        r = self._systemctl("show", "-p", "MainPID", "--value", self.unit, timeout=5.0)
        try:
            return int(r.stdout.strip()) or None
        except ValueError:
            return None


def _supervisor_reachable(cfg: Config) -> bool:
    rpc = cfg.runtime.supervisor_rpc
    try:
        url = json.loads(rpc.read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not url.startswith("unix://"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(url[len("unix://"):]) == 0


def _systemd_unit_active(unit: str) -> bool:
    try:
        r = subprocess.run(["systemctl", "is-active", "--quiet", unit], capture_output=True,
                           timeout=5.0)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def detect_manager_name(cfg: Config, environ: Mapping[str, str] | None = None) -> str:
    """``[watchdog] manager``, or for ``auto``: supervisor, systemd, else standalone."""
    env = os.environ if environ is None else environ
    if cfg.watchdog.manager != "auto":
        return cfg.watchdog.manager
    if env.get("SUPERVISOR_SERVER_URL") or _supervisor_reachable(cfg):
        return "supervisor"
    if env.get("INVOCATION_ID") or env.get("NOTIFY_SOCKET") or _systemd_unit_active(SYSTEMD_UNIT):
        return "systemd"
    return "standalone"


def make_manager(cfg: Config, environ: Mapping[str, str] | None = None) -> BotManager:
    """The manager of the bot for this configuration and environment."""
    name = detect_manager_name(cfg, environ)
    if name == "supervisor":
        return SupervisorManager(cfg)
    if name == "systemd":
        return SystemdManager(cfg)
    return StandaloneManager(cfg, environ)
