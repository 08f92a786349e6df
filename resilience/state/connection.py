"""SQLite connections that leave no statement running, BEGIN IMMEDIATE, and small SQL helpers."""
from __future__ import annotations

import sqlite3
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 5000
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class _Connection(sqlite3.Connection):
    """A connection that knows its open cursors, so that no statement outlives its transaction.

    Since Python 3.11, ``sqlite3`` resets a statement that still has rows to give (a
    ``fetchone()`` that did not reach the end, ``PRAGMA journal_mode = WAL`` whose one row
    nobody read) only when its cursor is closed or garbage-collected. Anything that holds a
    reference to the cursor for a moment -- ``gc.get_objects()`` in the crash-dump thread's
    objgraph baseline, a debugger, a traceback -- keeps the statement running, and a running
    statement that writes (``PRAGMA journal_mode``, ``PRAGMA wal_checkpoint``, ``INSERT ...
    RETURNING``) makes ``COMMIT`` fail with "cannot commit transaction - SQL statements in
    progress"; a running read keeps a stale WAL snapshot. :meth:`finish_statements` closes every
    cursor still open; the store calls it before each COMMIT/ROLLBACK and at the end of each
    read, so correctness never depends on when Python frees a cursor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def cursor(self, factory: Any = sqlite3.Cursor) -> sqlite3.Cursor:  # type: ignore[override]
        cur = super().cursor(factory)
        self._cursors.add(cur)
        return cur

    # sqlite3.Connection.execute* create their cursor in C, bypassing cursor(): route them here
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executemany(sql, seq)

    def executescript(self, script: str, /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executescript(script)

    def finish_statements(self) -> None:
        """Close (and so reset) every cursor still open on this connection."""
        for cur in list(self._cursors):
            cur.close()
        self._cursors.clear()


def _one(c: sqlite3.Connection, sql: str, args: Iterable[Any] = ()) -> Any:
    """The first row of ``sql`` (or None), with its statement finished whatever it returned."""
    cur = c.execute(sql, tuple(args))
    try:
        return cur.fetchone()
    finally:
        cur.close()


def _connect(path: Path, *, readonly: bool, synchronous: str = "FULL",
             new: bool = False) -> _Connection:
    """A connection; ``new`` (an empty file): pages freed by deletes (retention) are returned to
    the file system (``auto_vacuum = INCREMENTAL``, settable only before WAL and the first table)."""
    if readonly:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False, factory=_Connection)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               cached_statements=256, factory=_Connection)
    try:
        conn.row_factory = sqlite3.Row
        # _one: these PRAGMAs return a row; left unread, journal_mode's blocks every COMMIT
        _one(conn, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if new and not readonly:
            _one(conn, "PRAGMA auto_vacuum = INCREMENTAL")
        if not readonly:
            _one(conn, "PRAGMA journal_mode = WAL")
        _one(conn, f"PRAGMA synchronous = {synchronous}")
        _one(conn, "PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def _no_busy_wait(c: sqlite3.Connection) -> Iterator[None]:
    """Within the block a locked database answers SQLITE_BUSY at once (busy_timeout 0) instead
    of through SQLite's sleeping busy handler."""
    _one(c, "PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        _one(c, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _begin_immediate(c: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retrying every 0.2-2 ms for up to the busy timeout.

    SQLite's own busy handler backs off to 100 ms sleeps, so a process that commits in a tight
    loop can starve another writer until it fails with "database is locked"; short polls catch
    the gaps between the other writer's transactions."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0002
    with _no_busy_wait(c):
        while True:
            try:
                _one(c, "BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) != 5 or time.monotonic() > deadline:
                    raise  # not SQLITE_BUSY, or busy for the whole timeout
            time.sleep(delay)
            delay = min(delay * 2, 0.002)


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    msg = str(e).lower()
    return "malformed" in msg or "not a database" in msg


def _equals(**filters: Any) -> tuple[list[str], list[Any]]:
    """WHERE terms ``column = ?`` and their arguments for the filters that are not None."""
    where = [f"{col} = ?" for col, v in filters.items() if v is not None]
    return where, [v for v in filters.values() if v is not None]


def _select(table: str, where: list[str], order_by: str) -> str:
    return (f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {order_by}")


def _rows_after(c: sqlite3.Connection, table: str, rowid: int, limit: int) -> list[sqlite3.Row]:
    """The next ``limit`` rows of ``table`` after ``rowid`` (``_rid``): scans in short batches."""
    return c.execute(f"SELECT rowid AS _rid, * FROM {table} WHERE rowid > ? ORDER BY rowid "
                     "LIMIT ?", (rowid, limit)).fetchall()
