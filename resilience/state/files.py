"""The database's files: durable directory changes, moving a damaged file aside, online backups."""
from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from tradeguard.exceptions import BackupError
from tradeguard.fsutil import fsync_dir, staged


def _side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm")]


def _quarantine(path: Path) -> Path:
    """Move ``path`` (and its -wal/-shm) aside under a new UTC-stamped name; return it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists() or any(p.exists() for p in _side_files(dest)):
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    if path.exists():
        os.rename(path, dest)
    for src, dst in zip(_side_files(path), _side_files(dest)):
        if src.exists():
            os.rename(src, dst)
    fsync_dir(path.parent)
    return dest


def _backup(conn: sqlite3.Connection, dest: Path) -> None:
    """Online backup of ``conn`` into a new 0600 file ``dest``; never overwrites."""
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest} already exists; refusing to overwrite it")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a directory")
    try:
        with staged(dest, overwrite=False) as tmp:
            target = sqlite3.connect(str(tmp))
            try:
                conn.backup(target)  # one step: a consistent snapshot while writers go on
                # a self-contained file: opening the copy never creates -wal/-shm beside it
                target.execute("PRAGMA journal_mode = DELETE").fetchall()
            finally:
                target.close()
    except FileExistsError:
        raise BackupError(f"{dest} already exists; refusing to overwrite it") from None
    except OSError as e:
        raise BackupError(f"cannot write backup {dest}: {e}") from None
