"""Crash dump files in ``logs/crash/``: their names, their one-line summaries, their retention.

Two kinds, both named ``<UTC time>-<role>-<pid>.<ext>``:
``.json`` — a full dump written by :mod:`blackbox.crashdump`;
``.fault`` — the raw traceback Python's faulthandler writes on a fatal signal (SIGSEGV, SIGABRT,
...). Every process opens its own ``.fault`` file at start; it stays empty unless that happens,
and empty ones are not dumps.
"""
from __future__ import annotations

import json
import logging
import re
import time
from calendar import timegm
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

KEEP_DUMPS = 50
NAME_RE = re.compile(r"^(\d{8}T\d{6})\.(\d{3})Z-([A-Za-z0-9_-]+)-(\d+)(?:-\d+)?\.(json|fault)$")
FAULT_REASON = "fatal error (faulthandler)"


@dataclass(frozen=True)
class DumpInfo:
    """One crash dump as ``tradeguard blackbox dumps`` lists it."""

    path: Path
    ts: float
    role: str
    pid: int
    kind: str  # "json" or "fault"
    reason: str
    exception: str | None

    def line(self) -> str:
        """``2026-11-23 10:00:01 bot[1234] SIGUSR1 — ValueError: boom  (path)``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.ts))
        exc = f" — {self.exception}" if self.exception else ""
        return f"{when} {self.role}[{self.pid}] {self.reason}{exc}  ({self.path})"


def dump_name(ts: float, role: str, pid: int, ext: str) -> str:
    """The file name of a dump taken at ``ts`` by process ``pid`` of ``role``."""
    safe_role = re.sub(r"[^A-Za-z0-9_-]", "_", role)[:40] or "process"
    ms = int((ts % 1) * 1000)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ts))}.{ms:03d}Z-{safe_role}-{pid}.{ext}"


def list_dumps(crash_dir: Path) -> list[DumpInfo]:
    """Every crash dump in ``crash_dir``, oldest first (empty fault files are skipped)."""
    out = []
    for path in _dump_files(Path(crash_dir)):
        info = _summarize(path)
        if info is not None:
            out.append(info)
    return out


def prune(crash_dir: Path, keep: int = KEEP_DUMPS) -> int:
    """Delete the oldest dumps beyond ``keep`` and empty fault files of processes that are
    gone; returns how many files were deleted."""
    deleted = 0
    files = []
    for path in _dump_files(Path(crash_dir)):
        m = NAME_RE.match(path.name)
        try:
            empty = path.suffix == ".fault" and path.stat().st_size == 0
        except OSError:
            continue
        if empty:
            if m and not psutil.pid_exists(int(m.group(4))):
                deleted += _unlink(path)
            continue
        files.append(path)
    for path in files[:max(0, len(files) - keep)]:
        deleted += _unlink(path)
    return deleted


def _dump_files(crash_dir: Path) -> list[Path]:
    try:
        names = sorted(p.name for p in crash_dir.iterdir() if NAME_RE.match(p.name))
    except FileNotFoundError:
        return []
    return [crash_dir / n for n in names]  # names start with the UTC time: sorted = by age


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError as e:
        log.warning("cannot delete old crash dump %s: %s", path, e)
        return 0


def _summarize(path: Path) -> DumpInfo | None:
    m = NAME_RE.match(path.name)
    assert m is not None
    ts = timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S")) + int(m.group(2)) / 1000
    role, pid, kind = m.group(3), int(m.group(4)), m.group(5)
    try:
        if kind == "fault":
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                return None
            first = next(line.strip() for line in text.splitlines() if line.strip())
            return DumpInfo(path, ts, role, pid, kind, FAULT_REASON, first[:200])
        data = json.loads(path.read_text(encoding="utf-8"))
        exc = data.get("exception") or {}
        summary = f"{exc.get('type')}: {exc.get('message')}"[:200] if exc.get("type") else None
        return DumpInfo(path, float(data.get("ts", ts)), str(data.get("role", role)),
                        int(data.get("pid", pid)), kind, str(data.get("reason", "?")), summary)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        return DumpInfo(path, ts, role, pid, kind, "unreadable", f"{type(e).__name__}: {e}")
