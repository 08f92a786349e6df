"""The writing side of ``blackbox.db``: schema, bounded inserts, pruning, corruption recovery.

Every process opens its own connection; each write is one short ``BEGIN IMMEDIATE``
transaction (SQLite serializes writers; ``busy_timeout`` plus a short retry absorb the
contention). The ``meta`` table keeps the exact count and size of the events (so the bounds
cost O(1) per write) and how many events were dropped and why. A database SQLite reports as
corrupt is moved aside (``blackbox.db.corrupt-<UTC time>-<pid>``) and recreated; another process
that still has the old file open notices the replaced inode at its next write and reopens.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 3.0
CACHE_KIB = 64  # page cache of the writer connection: the ends of the table and its indexes
AGE_PRUNE_EVERY_S = 60.0
PRUNE_SLACK = 0.01  # prune to 99% of max_events so deletions come in batches, not per write
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    pid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    fields TEXT NOT NULL,
    critical INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_time ON events (ts, pid, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
INSERT = ("INSERT INTO events (ts, pid, seq, role, kind, source, severity, message, fields, critical)"
          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# What a row costs, as counted against max_bytes (its text plus a fixed overhead); the same
# formula in Python (row_size) and in SQL (_SIZE_SQL) so that inserts and deletes balance.
ROW_OVERHEAD = 48
_SIZE_SQL = ("length(role) + length(kind) + length(source) + length(message) + length(fields)"
             f" + {ROW_OVERHEAD}")
# meta keys
COUNT = "events"
BYTES = "bytes"
DROPPED_MAX_EVENTS = "dropped_max_events"
DROPPED_MAX_MB = "dropped_max_mb"
DROPPED_MAX_AGE = "dropped_max_age"
DROPPED_OVERFLOW = "dropped_overflow"  # lost in a process's memory while the db was unavailable


def row_size(row: tuple) -> int:
    """The size of an ``INSERT`` row as counted against ``max_bytes``."""
    return len(row[3]) + len(row[4]) + len(row[5]) + len(row[7]) + len(row[8]) + ROW_OVERHEAD


def is_busy(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and (
        getattr(e, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
        or "locked" in str(e))


def is_corrupt(e: BaseException) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return isinstance(e, sqlite3.DatabaseError) and (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "malformed" in str(e) or "not a database" in str(e))


class EventStore:
    """One process's writer connection to ``blackbox.db``."""

    def __init__(self, path: Path, max_events: int, max_age_s: float, max_bytes: int):
        self.path = Path(path)
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._sync_full: bool | None = None
        self._age_pruned_at = 0.0
        self._retry = Retrying(retry=retry_if_exception(is_busy), stop=stop_after_attempt(3),
                               wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True)

    # --- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # appends and trims at the ends of the table need few pages; SQLite's default (2 MB)
            # would sit in the recording process (the bot) as the file grows
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (SCHEMA_VERSION,))
            # Count once for a new database; every write keeps both totals exact after that.
            known = conn.execute("SELECT count(*) FROM meta WHERE key IN (?, ?)",
                                 (COUNT, BYTES)).fetchone()[0]
            if known < 2:
                n, size = conn.execute(
                    f"SELECT count(*), coalesce(sum({_SIZE_SQL}), 0) FROM events").fetchone()
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(COUNT, n), (BYTES, size)])
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        st = os.stat(self.path)
        self._conn, self._inode, self._sync_full = conn, (st.st_dev, st.st_ino), None

    def _ensure_open(self) -> sqlite3.Connection:
        """The connection, reopened if the file was replaced or removed since it was opened."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._inode
        except FileNotFoundError:
            same = False
        if self._conn is None or not same:
            self.close()
            try:
                self._retry(self._connect)
            except sqlite3.DatabaseError as e:
                if not is_corrupt(e):
                    raise
                self.quarantine(e)
                self._retry(self._connect)
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                log.debug("closing blackbox.db failed", exc_info=True)
            self._conn = None

    def quarantine(self, err: BaseException) -> Path | None:
        """Move a corrupt database aside (unless another process already did) and forget it."""
        self.close()
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _still_corrupt(self.path):
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{dest}{suffix}")
        log.error("blackbox.db is corrupt (%s); moved it aside to %s and started a new one",
                  err, dest)
        return dest

    # --- writing ----------------------------------------------------------------------------
    def write(self, rows: list[tuple], *, durable: bool, lost: int = 0) -> None:
        """Insert ``rows`` in one transaction, then enforce the bounds. Raises sqlite3.Error."""
        try:
            self._retry(self._write, rows, durable, lost)
        except sqlite3.DatabaseError as e:
            if not is_corrupt(e):
                raise
            self.quarantine(e)
            self._retry(self._write, rows, durable, lost)

    def _write(self, rows: list[tuple], durable: bool, lost: int) -> None:
        conn = self._ensure_open()
        if self._sync_full is not durable:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._sync_full = durable
        now = time.time()
        age_due = now - self._age_pruned_at >= AGE_PRUNE_EVERY_S
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(INSERT, rows)
            count = _meta_int(conn, COUNT) + len(rows)
            size = _meta_int(conn, BYTES) + sum(map(row_size, rows))
            if lost:
                _meta_add(conn, DROPPED_OVERFLOW, lost)
            if age_due:
                n, b = _delete(conn, "ts < ?", now - self.max_age_s)
                count, size = count - n, size - b
                _meta_add(conn, DROPPED_MAX_AGE, n)
            count, size = self._enforce_bounds(conn, count, size)
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             [(COUNT, count), (BYTES, size)])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if age_due:
            self._age_pruned_at = now

    def _enforce_bounds(self, conn: sqlite3.Connection, count: int, size: int) -> tuple[int, int]:
        """Drop the oldest events until both bounds hold with some slack; the new totals."""
        if count <= self.max_events and size <= self.max_bytes:
            return count, size
        keep_n = self.max_events - int(self.max_events * PRUNE_SLACK)
        keep_b = self.max_bytes - int(self.max_bytes * PRUNE_SLACK)
        while count > 0 and (count > keep_n or size > keep_b):
            reason = DROPPED_MAX_EVENTS if count > keep_n else DROPPED_MAX_MB
            chunk = max(count - keep_n, count // 100, 1)
            n, b = _delete(conn, "id IN (SELECT id FROM events ORDER BY ts, pid, seq LIMIT ?)",
                           chunk)
            if n == 0:
                break
            count, size = count - n, size - b
            _meta_add(conn, reason, n)
        return count, size


def _delete(conn: sqlite3.Connection, where: str, param: float | int) -> tuple[int, int]:
    """Delete the matching events; how many, and their size."""
    sizes = [r[0] for r in conn.execute(f"DELETE FROM events WHERE {where} RETURNING {_SIZE_SQL}",
                                        (param,))]
    return len(sizes), sum(sizes)


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _meta_add(conn: sqlite3.Connection, key: str, n: int) -> None:
    if n:
        conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                     "value + excluded.value", (key, n))


def _still_corrupt(path: Path) -> bool:
    """True if ``path`` exists and SQLite still reports it corrupt (checked under the lock)."""
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        try:
            ok = conn.execute("PRAGMA quick_check(1)").fetchone()
            return not ok or ok[0] != "ok"
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return is_corrupt(e)
