"""Judging the bot from outside: pid file, process, heartbeat, progress and memory.

One :meth:`BotChecker.check` per interval returns a :class:`Verdict` with its evidence:

* ``crashed`` — no live process for the pid file (gone, zombie, or the PID now belongs to
  another program: its start time differs from the one in ``bot.pid``);
* ``hung`` — the heartbeat is older than ``heartbeat_timeout_s`` (a SIGSTOPped bot), or a bot
  still has not finished starting after ``startup_timeout_s``;
* ``stalled`` — the heartbeat is fresh but ``seq`` has not advanced for ``progress_timeout_s``;
* ``leaking`` — RSS above ``memory_limit_mb``;
* ``starting`` — within the startup grace; ``stopped`` — the bot is shutting down or shut
  down gracefully (its last heartbeat said ``stopping``): neither is a fault;
* ``healthy`` otherwise.

Ages are measured on the watchdog's own monotonic clock, never on timestamps another process
wrote: the heartbeat's age is the time since the watchdog saw the file change, progress the time
since it saw ``seq`` change, a process's age comes from the kernel's boot-time clock. A wall
clock stepped back (or a bot writing a ``ts`` in the future) cannot make a frozen bot look
fresh. A watchdog that starts beside an already frozen bot judges it after ``heartbeat_timeout_s``.

Which process is the bot: the one its manager reports (supervisord's pid, systemd's MainPID, the
standalone watchdog's child) wins over ``bot.pid``; a pid from the file is judged only when it is
the bot (start time and command line, :func:`tradeguard.heartbeat.verified_process`). A pid file
naming a stranger never makes the watchdog judge, or signal, the stranger.

It is cheap by design: files are re-read only when ``os.stat`` says they changed, the
``psutil.Process`` of the bot is kept between checks and the manager is asked at most once per
``MANAGER_TTL_S`` unless the pid file changed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import psutil

from tradeguard.config import WatchdogConfig
from tradeguard.heartbeat import (PID_TOLERANCE_S, Heartbeat, PidInfo, find_bot, process_age_s,
                                  process_for, process_info, read_heartbeat, read_pidfile)
from tradeguard.paths import RuntimePaths

FAULTS = ("crashed", "hung", "stalled", "leaking")
MANAGER_TTL_S = 1.0  # how long the manager's answer about the bot's pid is reused

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    name: str
    pid: int | None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def fault(self) -> bool:
        """Something the watchdog must remedy."""
        return self.name in FAULTS


class _StatCache(Generic[T]):
    """Re-reads a file only when its (inode, mtime, size) changed."""

    def __init__(self, path: Path, loader: Callable[[Path], T | None],
                 clock: Callable[[], float] = time.monotonic):
        self.path, self.loader, self.clock = path, loader, clock
        self._key: tuple[int, int, int] | None = None
        self.value: T | None = None
        self.changed_at = 0.0  # on ``clock``: when a change of the file was first seen

    def get(self) -> T | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._key, self.value = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            value = self.loader(self.path)
            if value != self.value:
                self.changed_at = self.clock()
            self._key, self.value = key, value
        return self.value


def why_not_running(info: PidInfo) -> str:
    """Why the process named by a pid file is not the live bot (for the evidence)."""
    try:
        p = psutil.Process(info.pid)
        started = p.create_time()
        if abs(started - info.create_time) > PID_TOLERANCE_S:
            return (f"pid {info.pid} was reused by another program ({p.name()}, started "
                    f"{started:.2f}, bot.pid says {info.create_time:.2f})")
        if p.status() == psutil.STATUS_ZOMBIE:
            return f"pid {info.pid} is a zombie (exited, not yet reaped)"
    except psutil.NoSuchProcess:
        return f"pid {info.pid} is gone"
    except psutil.AccessDenied:
        return f"pid {info.pid} cannot be inspected (access denied)"
    return f"pid {info.pid} is gone"


class BotChecker:
    """Produces one verdict per call from the bot's files and process."""

    def __init__(self, paths: RuntimePaths, cfg: WatchdogConfig,
                 manager_pid: Callable[[], int | None] | None = None,
                 bot_command: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._pidfile = _StatCache(paths.pidfile, read_pidfile, clock)
        self._heartbeat = _StatCache(paths.heartbeat, read_heartbeat, clock)
        # The manager's word on the bot's pid wins over the pid file (which anyone with write
        # access to the data dir can forge).
        self._manager_pid = manager_pid or (lambda: None)
        self._bot_command = bot_command
        self._mpid: int | None = None
        self._mpid_at: float | None = None
        self._mpid_for: PidInfo | None = None
        self._info: PidInfo | None = None
        self._key: tuple | None = None  # (pid file, heartbeat pid) the bot was looked up for
        self._proc: psutil.Process | None = None
        self._refused: str | None = None  # why the pid file's process is not taken for the bot
        self._seq_pid: int | None = None
        self._seq: int | None = None
        self._first_seq: int | None = None
        self._progress_at = 0.0

    @property
    def progressed(self) -> bool:
        """The current bot's ``seq`` advanced since the watchdog first saw it."""
        return self._seq is not None and self._first_seq is not None and self._seq > self._first_seq

    def check(self, now: float | None = None) -> Verdict:
        """Judge the bot once (``now``: wall time, for the evidence only; ages are monotonic)."""
        now = time.time() if now is None else now
        mono = self.clock()
        info = self._pidfile.get()
        hb = self._heartbeat.get()
        mpid = self._manager_says(info, mono)
        info, proc = self._process(info, mpid, hb)
        if proc is None:
            return self._not_running(info, hb, mono)
        try:
            with proc.oneshot():
                alive = proc.is_running()
                status = proc.status() if alive else psutil.STATUS_DEAD
                rss = proc.memory_info().rss if alive else 0
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            alive, status, rss = False, psutil.STATUS_DEAD, 0
        if not alive or status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            self._proc = None
            return self._not_running(info, hb, mono)
        assert info is not None
        return self._judge_live(info, proc, status, rss, hb, mono)

    @property
    def heartbeat(self) -> Heartbeat | None:
        """The heartbeat as last read."""
        return self._heartbeat.value

    def bot_process(self) -> psutil.Process | None:
        """The process the last check took for the bot (verified), or None."""
        return self._proc

    # --- internals --------------------------------------------------------------------------
    def _manager_says(self, info: PidInfo | None, mono: float) -> int | None:
        if self._mpid_at is None or info != self._mpid_for or mono - self._mpid_at >= MANAGER_TTL_S:
            self._mpid, self._mpid_at, self._mpid_for = self._manager_pid(), mono, info
        return self._mpid

    def _process(self, info: PidInfo | None, mpid: int | None,
                 hb: Heartbeat | None) -> tuple[PidInfo | None, psutil.Process | None]:
        if mpid is not None and (info is None or info.pid != mpid):
            # The manager runs another process than the one the pid file names: a new bot that
            # has not written its pid file yet, or a forged pid file. The manager's is the bot.
            minfo = process_info(mpid)
            if minfo is not None:
                self._refused = (f"bot.pid names pid {info.pid}, but its manager runs pid {mpid}"
                                 if info is not None and process_for_live(info) else None)
                if minfo != self._info:
                    self._info, self._proc = minfo, process_for(minfo)
                self._key = None
                return minfo, self._proc
        hb_pid = hb.pid if hb is not None else None
        key = (info, hb_pid if self._refused or self._proc is None else None)
        if info is None and hb_pid is None:
            self._info, self._proc, self._refused, self._key = None, None, None, None
        elif key != self._key:
            self._refused = None
            judged, self._proc = find_bot(info, hb_pid, mpid, self._bot_command, self._refuse)
            if self._proc is not None and info is not None and judged != info:
                self._refused = (f"bot.pid names pid {info.pid}, which is not the bot; the "
                                 f"heartbeat's pid {judged.pid} is")
            self._info, self._key = judged, (info, hb_pid if self._refused or self._proc is None
                                             else None)
        return (self._info if self._proc is not None else info), self._proc

    def _refuse(self, why: str) -> None:
        self._refused = why

    def _not_running(self, info: PidInfo | None, hb: Heartbeat | None, mono: float) -> Verdict:
        last = self._hb_evidence(hb, mono)
        if hb is not None and hb.state == "stopping" and (info is None or hb.pid == info.pid):
            return Verdict("stopped", hb.pid, {"reason": "the bot shut down gracefully", **last})
        if info is not None and self._refused is not None and process_for_live(info):
            # A live stranger is named by the pid file: the bot is not running; the stranger is
            # neither judged nor (by the managers, which verify too) signalled.
            return Verdict("crashed", None, {"reason": self._refused, **last})
        reason = why_not_running(info) if info is not None else "no pid file: the bot is not running"
        return Verdict("crashed", info.pid if info else None, {"reason": reason, **last})

    def _judge_live(self, info: PidInfo, proc: psutil.Process, status: str, rss: int,
                    hb: Heartbeat | None, mono: float) -> Verdict:
        cfg = self.cfg
        pid = info.pid
        age_proc = _process_age(pid)
        age_proc = 0.0 if age_proc is None else age_proc
        rss_mb = rss / 1048576
        ev: dict[str, Any] = {"pid": pid, "status": status, "rss_mb": round(rss_mb, 1)}
        if self._refused:
            ev["pidfile"] = self._refused
        if rss_mb > cfg.memory_limit_mb:
            return Verdict("leaking", pid, {**ev, "limit_mb": cfg.memory_limit_mb,
                                            **self._hb_evidence(hb, mono)})
        if hb is None or hb.pid != pid:
            ev["process_age_s"] = round(age_proc, 3)
            named = self._pidfile.value is not None and self._pidfile.value.pid == pid
            what = "heartbeat from this process" if named else "pid file"
            ev["reason"] = (f"no {what} yet" if named
                            else "started by its manager; no pid file yet")
            if age_proc <= cfg.startup_timeout_s:
                return Verdict("starting", pid, ev)
            return Verdict("hung", pid, {**ev, "reason": f"no {what} within "
                                         f"startup_timeout_s={cfg.startup_timeout_s}"})
        self._track_progress(pid, hb.seq, mono)
        ev.update(self._hb_evidence(hb, mono))
        hb_age = mono - self._heartbeat.changed_at
        if hb.state == "stopping":
            if hb_age <= cfg.startup_timeout_s:
                return Verdict("stopped", pid, {**ev, "reason": "the bot is shutting down"})
            return Verdict("hung", pid, {**ev, "reason": "still shutting down after "
                                         f"{hb_age:.1f}s"})
        if hb.state == "starting":
            ev["process_age_s"] = round(age_proc, 3)
            if age_proc <= cfg.startup_timeout_s:
                return Verdict("starting", pid, ev)
            return Verdict("hung", pid, {**ev, "reason": "still starting after "
                                         f"startup_timeout_s={cfg.startup_timeout_s}"})
        if hb_age > cfg.heartbeat_timeout_s:
            return Verdict("hung", pid, {**ev, "timeout_s": cfg.heartbeat_timeout_s,
                                         "reason": f"heartbeat unchanged for {hb_age:.2f}s"})
        idle = mono - self._progress_at
        if idle > cfg.progress_timeout_s:
            return Verdict("stalled", pid, {**ev, "no_progress_s": round(idle, 3),
                                            "timeout_s": cfg.progress_timeout_s,
                                            "reason": f"seq stuck at {hb.seq} for {idle:.2f}s"})
        return Verdict("healthy", pid, ev)

    def _track_progress(self, pid: int, seq: int, mono: float) -> None:
        if pid != self._seq_pid:
            self._seq_pid, self._seq, self._first_seq, self._progress_at = pid, seq, seq, mono
        elif seq != self._seq:
            self._seq, self._progress_at = seq, mono

    def _hb_evidence(self, hb: Heartbeat | None, mono: float) -> dict[str, Any]:
        if hb is None:
            return {"heartbeat": None}
        # hb_age_s: since the watchdog saw the file change (its own clock); hb_ts is what the
        # bot wrote, for the record only
        return {"hb_pid": hb.pid, "hb_age_s": round(mono - self._heartbeat.changed_at, 3),
                "hb_ts": hb.ts, "seq": hb.seq, "state": hb.state}


def process_for_live(info: PidInfo) -> bool:
    """Some live, non-zombie process has the pid and start time ``info`` names."""
    try:
        p = psutil.Process(info.pid)
        return (abs(p.create_time() - info.create_time) <= PID_TOLERANCE_S
                and p.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _process_age(pid: int) -> float | None:
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return process_age_s(pid)
