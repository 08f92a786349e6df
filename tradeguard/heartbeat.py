"""The heartbeat protocol and the pid file: the contract between a bot and the watchdog.

Heartbeat (``bot.heartbeat``), replaced atomically after every completed loop::

    {"pid": int, "ts": float unix seconds, "seq": int, "state": "starting|running|degraded|safe|stopping",
     "detail": {...}}

``seq`` grows by one per completed loop, so a reader judges progress, not just freshness.
Pid file (``bot.pid``): ``{"pid": int, "create_time": float}`` — the process start time as psutil
reports it, so that a reused PID is never mistaken for the bot.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tradeguard.fsutil import SHARED, SwapWriter, write_atomic

STATES = ("starting", "running", "degraded", "safe", "stopping")
PID_TOLERANCE_S = 0.05  # a process start time read back from /proc differs by rounding only


@dataclass(frozen=True)
class Heartbeat:
    pid: int
    ts: float
    seq: int
    state: str
    detail: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.ts


@dataclass(frozen=True)
class PidInfo:
    pid: int
    create_time: float


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def atomic_write_json(path: Path, obj: Any, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``obj`` as JSON in one step; ``fsync``: durably (file and directory)."""
    write_atomic(path, _json(obj), mode=SHARED, durable=fsync)


def _heartbeat_obj(hb: Heartbeat) -> dict[str, Any]:
    return {"pid": hb.pid, "ts": hb.ts, "seq": hb.seq, "state": hb.state, "detail": hb.detail}


def write_heartbeat(path: Path, hb: Heartbeat) -> None:
    """Replace ``path`` with ``hb`` once (a loop that beats keeps a :class:`HeartbeatFile`)."""
    atomic_write_json(path, _heartbeat_obj(hb))


class HeartbeatFile:
    """The heartbeat file of a process that writes one every loop: replaced whole each time,
    cheaply (see :class:`tradeguard.fsutil.SwapWriter`)."""

    def __init__(self, path: Path):
        self._writer = SwapWriter(path, SHARED)

    def write(self, hb: Heartbeat) -> None:
        self._writer.write(_json(_heartbeat_obj(hb)))

    def close(self) -> None:
        """Remove the spare file; the heartbeat stays."""
        self._writer.close()


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The current heartbeat, or None if absent or malformed (a malformed file is no heartbeat)."""
    for attempt in (1, 2):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            hb = Heartbeat(pid=int(obj["pid"]), ts=float(obj["ts"]), seq=int(obj["seq"]),
                           state=str(obj["state"]), detail=dict(obj.get("detail") or {}))
        except ValueError:
            # A reader held up between open and read for a whole loop may have read the spare
            # being rewritten (SwapWriter): the name now leads to a whole file.
            if attempt == 1:
                continue
            return None
        except (OSError, KeyError, TypeError):
            return None
        return hb if hb.state in STATES else None
    return None


def write_pidfile(path: Path, pid: int | None = None) -> PidInfo:
    pid = os.getpid() if pid is None else pid
    info = PidInfo(pid, psutil.Process(pid).create_time())
    atomic_write_json(path, {"pid": info.pid, "create_time": info.create_time}, fsync=True)
    return info


def read_pidfile(path: Path) -> PidInfo | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return PidInfo(int(obj["pid"]), float(obj["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_for(info: PidInfo) -> psutil.Process | None:
    """The live, non-zombie process the pid file names, or None (gone, zombie, or PID reused)."""
    try:
        p = psutil.Process(info.pid)
        if abs(p.create_time() - info.create_time) > PID_TOLERANCE_S:
            return None  # the PID now belongs to another program
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
