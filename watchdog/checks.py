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

It is cheap by design: files are re-read only when ``os.stat`` says they changed, and the
``psutil.Process`` of the bot is kept between checks.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import psutil

from tradeguard.config import WatchdogConfig
from tradeguard.heartbeat import (PID_TOLERANCE_S, Heartbeat, PidInfo, process_for, read_heartbeat,
                                  read_pidfile)
from tradeguard.paths import RuntimePaths

FAULTS = ("crashed", "hung", "stalled", "leaking")

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

    def __init__(self, path: Path, loader: Callable[[Path], T | None]):
        self.path, self.loader = path, loader
        self._key: tuple[int, int, int] | None = None
        self.value: T | None = None

    def get(self) -> T | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._key, self.value = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._key, self.value = key, self.loader(self.path)
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
                 manager_pid: Callable[[], int | None] | None = None):
        self.cfg = cfg
        self._pidfile = _StatCache(paths.pidfile, read_pidfile)
        self._heartbeat = _StatCache(paths.heartbeat, read_heartbeat)
        # Asked only when the pid file names no live process: a manager may have started a
        # bot that has not written its pid file yet.
        self._manager_pid = manager_pid or (lambda: None)
        self._info: PidInfo | None = None
        self._proc: psutil.Process | None = None
        self._seq_pid: int | None = None
        self._seq: int | None = None
        self._first_seq: int | None = None
        self._progress_at = 0.0

    @property
    def progressed(self) -> bool:
        """The current bot's ``seq`` advanced since the watchdog first saw it."""
        return self._seq is not None and self._first_seq is not None and self._seq > self._first_seq

    def check(self, now: float | None = None) -> Verdict:
        """Judge the bot once."""
        now = time.time() if now is None else now
        info = self._pidfile.get()
        hb = self._heartbeat.get()
        proc = self._process(info)
        if proc is None:
            return self._not_running(info, hb, now)
        try:
            with proc.oneshot():
                alive = proc.is_running()
                status = proc.status() if alive else psutil.STATUS_DEAD
                rss = proc.memory_info().rss if alive else 0
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            alive, status, rss = False, psutil.STATUS_DEAD, 0
        if not alive or status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            self._proc = None
            return self._not_running(info, hb, now)
        assert info is not None
        return self._judge_live(info, proc, status, rss, hb, now)

    # --- internals --------------------------------------------------------------------------
    def _process(self, info: PidInfo | None) -> psutil.Process | None:
        if info is None:
            self._info, self._proc = None, None
        elif info != self._info:
            self._info, self._proc = info, process_for(info)
        return self._proc

    def _not_running(self, info: PidInfo | None, hb: Heartbeat | None, now: float) -> Verdict:
        last = _hb_evidence(hb, now)
        if hb is not None and hb.state == "stopping" and (info is None or hb.pid == info.pid):
            return Verdict("stopped", hb.pid, {"reason": "the bot shut down gracefully", **last})
        mpid = self._manager_pid()
        if mpid is not None and (info is None or mpid != info.pid):
            age = _process_age(mpid, now)
            if age is not None:
                ev = {"pid": mpid, "reason": "started by its manager; no pid file yet",
                      "process_age_s": round(age, 3)}
                if age <= self.cfg.startup_timeout_s:
                    return Verdict("starting", mpid, ev)
                return Verdict("hung", mpid, {**ev, "reason": "no pid file after "
                                              f"startup_timeout_s={self.cfg.startup_timeout_s}"})
        reason = why_not_running(info) if info is not None else "no pid file: the bot is not running"
        return Verdict("crashed", info.pid if info else None, {"reason": reason, **last})

    def _judge_live(self, info: PidInfo, proc: psutil.Process, status: str, rss: int,
                    hb: Heartbeat | None, now: float) -> Verdict:
        cfg = self.cfg
        pid = info.pid
        age_proc = now - info.create_time
        rss_mb = rss / 1048576
        ev: dict[str, Any] = {"pid": pid, "status": status, "rss_mb": round(rss_mb, 1)}
        if rss_mb > cfg.memory_limit_mb:
            return Verdict("leaking", pid, {**ev, "limit_mb": cfg.memory_limit_mb,
                                            **_hb_evidence(hb, now)})
        if hb is None or hb.pid != pid:
            ev["process_age_s"] = round(age_proc, 3)
            ev["reason"] = "no heartbeat from this process yet"
            if age_proc <= cfg.startup_timeout_s:
                return Verdict("starting", pid, ev)
            return Verdict("hung", pid, {**ev, "reason": "no heartbeat from this process within "
                                         f"startup_timeout_s={cfg.startup_timeout_s}"})
        self._track_progress(pid, hb.seq, now)
        ev.update(_hb_evidence(hb, now))
        hb_age = now - hb.ts
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
                                         "reason": f"heartbeat {hb_age:.2f}s old"})
        idle = now - self._progress_at
        if idle > cfg.progress_timeout_s:
            return Verdict("stalled", pid, {**ev, "no_progress_s": round(idle, 3),
                                            "timeout_s": cfg.progress_timeout_s,
                                            "reason": f"seq stuck at {hb.seq} for {idle:.2f}s"})
        return Verdict("healthy", pid, ev)

    def _track_progress(self, pid: int, seq: int, now: float) -> None:
        if pid != self._seq_pid:
            self._seq_pid, self._seq, self._first_seq, self._progress_at = pid, seq, seq, now
        elif seq != self._seq:
            self._seq, self._progress_at = seq, now


def _hb_evidence(hb: Heartbeat | None, now: float) -> dict[str, Any]:
    if hb is None:
        return {"heartbeat": None}
    return {"hb_pid": hb.pid, "hb_age_s": round(now - hb.ts, 3), "seq": hb.seq, "state": hb.state}


def _process_age(pid: int, now: float) -> float | None:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return now - p.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
