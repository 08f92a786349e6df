"""Fixtures of the black-box tests: runtime paths, an in-process recorder, recording children."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from blackbox import recorder
from tests.helpers.proc import REPO, child_env
from tradeguard.config import BlackboxConfig
from tradeguard.paths import RuntimePaths


@pytest.fixture
def paths(data_dir: Path, logs_dir: Path) -> RuntimePaths:
    return RuntimePaths(data_dir, logs_dir)


@pytest.fixture
def fresh_recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No events from another test: an empty pre-init ring, and recording closed afterwards."""
    recorder.close()
    monkeypatch.setattr(recorder, "_fallback", recorder.Recorder(recorder.UNKNOWN_ROLE))
    yield
    recorder.close()


@pytest.fixture
def start_recorder(paths: RuntimePaths, fresh_recorder: None) -> Callable[..., recorder.Recorder]:
    """``start_recorder(role="bot", **BlackboxConfig keys)`` → this process records to paths."""

    def start(role: str = "bot", **cfg: int | float) -> recorder.Recorder:
        return recorder.init(paths, role, BlackboxConfig(**{"flush_interval_ms": 20, **cfg}))

    return start


@pytest.fixture
def child(paths: RuntimePaths) -> Iterator[Callable[..., subprocess.Popen]]:
    """``child(scenario, *args)``: tests/blackbox/child.py as a real process (text stdout pipe)."""
    procs: list[subprocess.Popen] = []

    def start(scenario: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "tests.blackbox.child", scenario,
                              str(paths.data_dir), str(paths.logs_dir), *args],
                             cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def rows(db: Path, sql: str = "SELECT pid, seq, ts, kind, fields FROM events ORDER BY ts, pid, seq",
         params: tuple = ()) -> list[tuple]:
    """Query the database the way an investigator would (a separate connection)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def meta(db: Path) -> dict[str, object]:
    return dict(rows(db, "SELECT key, value FROM meta"))


def raw_bytes(db: Path) -> bytes:
    """Everything SQLite has on disk for ``db`` (the file, its WAL and shared memory)."""
    return b"".join(Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-shm")
                    if Path(f"{db}{s}").exists())
