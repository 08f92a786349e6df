"""Who watches the watchdog under ``tradeguard run``: a supervisord event listener.

supervisord restarts a watchdog that exits, but not one that hangs (SIGSTOPped, deadlocked):
such a watchdog stays RUNNING while nothing supervises the bot. The listener
(``tradeguard watchdog-guard``, ``[eventlistener:watchdog-guard]`` with ``TICK_5`` events) checks
on every tick that ``data/watchdog.json`` changes — the watchdog rewrites it at least every
``STATE_REFRESH_S`` — measured on the listener's own monotonic clock, never on the timestamp
inside the file. When the file has not changed for ``stale_s`` while supervisord reports the
watchdog RUNNING for at least as long, it SIGKILLs the watchdog (a stopped process can take
nothing else) and supervisord's ``autorestart`` starts a new one, which re-attaches to the bot.
A watchdog in FATAL (it could not be started) is started again.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import psutil

log = logging.getLogger(__name__)

PROGRAM = "watchdog"
STALE_S = 15.0  # watchdog.json is rewritten at least every 5 s while the watchdog runs


@dataclass
class WatchdogGuard:
    """One :meth:`tick` per TICK event; says what it did, or None."""

    state_file: Path
    rpc: Callable[[], Any]            # -> supervisord's ``supervisor`` XML-RPC namespace
    stale_s: float = STALE_S
    clock: Callable[[], float] = time.monotonic
    program: str = PROGRAM

    def __post_init__(self) -> None:
        self._key: tuple[int, int, int] | None = None
        self._changed_at = self.clock()

    def _file_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.state_file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def stale_for(self) -> float:
        """Seconds since the state file was last seen changing (listener's clock)."""
        key, now = self._file_key(), self.clock()
        if key != self._key:
            self._key, self._changed_at = key, now
        return now - self._changed_at

    def tick(self) -> str | None:
        stale = self.stale_for()
        if stale < self.stale_s:
            return None
        sup = self.rpc()
        info = sup.getProcessInfo(self.program)
        state = info["statename"]
        if state == "FATAL":
            sup.startProcess(self.program, False)
            self._changed_at = self.clock()
            return f"the watchdog was FATAL ({info.get('spawnerr') or 'could not start'}): started it"
        if state != "RUNNING" or info["now"] - info["start"] < self.stale_s:
            return None  # stopped on purpose, or a new one still has time to write its state
        pid = int(info["pid"])
        try:
            status = psutil.Process(pid).status()
            os.kill(pid, 9)
        except (psutil.NoSuchProcess, ProcessLookupError):
            return None
        self._changed_at = self.clock()  # the new watchdog gets stale_s to write its state
        return (f"watchdog.json unchanged for {stale:.0f}s while the watchdog (pid {pid}, "
                f"{status}) ran: SIGKILLed it; supervisord starts a new one")


def serve(guard: WatchdogGuard, on_action: Callable[[str], None],
          stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """The event listener protocol: READY, one event, a tick, OK; until stdin closes."""
    from supervisor.childutils import listener

    while True:
        listener.ready(stdout)
        line = stdin.readline()
        if not line:
            return
        headers = dict(x.split(":", 1) for x in line.split())
        stdin.read(int(headers.get("len", 0)))
        try:
            did = guard.tick()
        except Exception as e:  # noqa: BLE001 - supervisord unreachable for a tick: try the next
            log.error("watchdog check failed: %s", e)
            did = None
        if did:
            on_action(did)
        listener.ok(stdout)
