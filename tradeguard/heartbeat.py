"""The heartbeat protocol and the pid file: the contract between a bot and the watchdog.

Heartbeat (``bot.heartbeat``), replaced atomically after every completed loop::

    {"pid": int, "ts": float unix seconds, "seq": int, "state": "starting|running|degraded|safe|stopping",
     "detail": {...}}

``seq`` grows by one per completed loop, so a reader judges progress, not just freshness.
Pid file (``bot.pid``): ``{"pid": int, "create_time": float}`` — the process start time as psutil
reports it, so that a reused PID is never mistaken for the bot. Anyone who can write the data dir
can also write a pid file naming another live process with its true start time: before the
watchdog judges or signals a pid from the file it checks that the process is the bot
(:func:`verified_process`: the pid its manager reports, or a command line that runs the bot).

Ages are measured on this host's monotonic clocks, never on timestamps another process wrote:
:func:`process_age_s` uses the kernel's boot-time clock and the process's start tick.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import Callable, Sequence

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


def process_age_s(pid: int) -> float | None:
    """Seconds since ``pid`` started, on the kernel's boot-time clock (immune to wall-clock
    steps); None if the process is gone. Linux (/proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # field 22 (starttime, clock ticks since boot) — counted after the ")" closing the command
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start)


def runs_bot(cmdline: Sequence[str], expected: Sequence[str] | None = None) -> bool:
    """``cmdline`` runs the bot: ``expected`` (the manager's command; its arguments after the
    executable must appear in order, as one run) or, without one, ``tradeguard ... bot``."""
    args = list(cmdline)
    if expected:
        want = list(expected)[1:] or list(expected)
        return any(args[i:i + len(want)] == want for i in range(len(args) - len(want) + 1))
    for i, a in enumerate(args):
        if os.path.basename(a) == "tradeguard" and "bot" in args[i + 1:]:
            # the console script, or ``python -m tradeguard``: the first non-option argument
            # after it is the sub-command
            rest = [x for x in args[i + 1:] if not x.startswith("-")]
            return bool(rest) and rest[0] == "bot"
    return False


def verified_process(info: PidInfo, trusted_pid: int | None = None,
                     expected: Sequence[str] | None = None,
                     why: Callable[[str], None] | None = None,
                     heartbeat_pid: int | None = None) -> psutil.Process | None:
    """The live bot process named by a pid file, or None: gone, zombie, PID reused, or a live
    process that is not the bot. A live process is taken for the bot when it is
    ``trusted_pid`` (the pid its manager reports), or the heartbeat names it too
    (``heartbeat_pid``: any bot speaking the protocol), or its command line runs the bot
    (:func:`runs_bot`). ``why`` receives the reason of a refusal of a live process."""
    p = process_for(info)
    if p is None or p.pid in (trusted_pid, heartbeat_pid):
        return p
    try:
        cmdline = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if runs_bot(cmdline, expected):
        return p
    if why is not None:
        why(f"pid {info.pid} named by bot.pid is not the bot: it runs "
            f"{' '.join(cmdline)[:120]!r}" + (f" and its manager reports pid {trusted_pid}"
                                              if trusted_pid else "")
            + (f" and the heartbeat is from pid {heartbeat_pid}" if heartbeat_pid else ""))
    return None


def process_info(pid: int) -> PidInfo | None:
    """``pid`` with its start time, as a pid file would name it; None if it is gone."""
    try:
        return PidInfo(pid, psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def find_bot(info: PidInfo | None, heartbeat_pid: int | None, trusted_pid: int | None = None,
             expected: Sequence[str] | None = None,
             why: Callable[[str], None] | None = None) -> tuple[PidInfo | None, psutil.Process | None]:
    """The bot from the files: the pid file's process if it is verified; else, when the pid
    file names a stranger (forged or stale), the heartbeat's pid if its command line runs the
    bot. Returns the pid info judged and its process (None: no verified bot)."""
    if info is not None:
        p = verified_process(info, trusted_pid, expected, why, heartbeat_pid)
        if p is not None or heartbeat_pid is None or heartbeat_pid == info.pid:
            return info, p
    if heartbeat_pid is None:
        return info, None
    hinfo = process_info(heartbeat_pid)
    if hinfo is None:
        return info, None
    p = verified_process(hinfo, trusted_pid, expected)
    return (hinfo, p) if p is not None else (info, None)
