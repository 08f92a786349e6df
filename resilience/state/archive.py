"""Retention: closed orders, with their fills and audit rows, leave state.db for monthly archives.

state.db holds the work in hand and a recent window; history lives in ``<data dir>/archive/
state-YYYY-MM.db`` (the month an order closed; position adjustments by their own time). An
archive has state.db's schema, its key canary and the encrypted values exactly as the bot wrote
them (each value is bound to its table, key and column, not to the file), so
:func:`resilience.state.open_readonly` reads, checks and decrypts it like state.db.

:class:`Archiver` moves one batch at a time: it reads a batch of final orders older than the
cutoff (a short read), writes them with their fills and transitions to the month's archive (one
fsync'd transaction there), then deletes them from state.db in one short ``BEGIN IMMEDIATE`` --
only the orders whose row, fills and transitions are unchanged since the read. Killed between the
two, the rows are in both files; the next batch writes them again (idempotent) and deletes them.
Positions and realized P&L live in ``positions``, which is never touched; the counters of
archived rows are kept in ``meta`` (``archived.<table>``).
"""
from __future__ import annotations

import base64
import logging
import os
import re
import sqlite3
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from resilience import schema
from resilience.state.canary import _canary_blob
from resilience.state.connection import _begin_immediate, _one
from resilience.state.reads import StateReader
from resilience.state.records import TERMINAL, Fill, Order
from resilience.state.store import TRANSITIONS_FLOOR_KEY
from tradeguard.exceptions import StateError, WrongKeyError

log = logging.getLogger("resilience.state")

ARCHIVE_DIR = "archive"
_NAME_RE = re.compile(r"^state-(\d{4})-(\d{2})\.db$")
_CHUNK = 400  # SQL parameters per IN (...)


def archive_dir(state_db: Path) -> Path:
    return Path(state_db).parent / ARCHIVE_DIR


def archive_files(state_db: Path) -> list[Path]:
    """The monthly archives beside ``state_db``, oldest month first."""
    d = archive_dir(state_db)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME_RE.match(p.name) and p.is_file())


def _month(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")


def _month_end(path: Path) -> float:
    """The first instant after the archive's month (UTC)."""
    m = _NAME_RE.match(path.name)
    assert m is not None
    y, mo = int(m.group(1)), int(m.group(2))
    y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return datetime(y, mo, 1, tzinfo=timezone.utc).timestamp()


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _in(n: int) -> str:
    return ",".join("?" * n)


class Archiver:
    """Moves final orders older than ``max_age_s`` out of ``store`` (a StateStore), in batches."""

    def __init__(self, store: Any, *, max_age_s: float, batch: int = 200,
                 clock: Callable[[], float] = time.time):
        if max_age_s <= 0 or batch <= 0:
            raise StateError("the archive age and batch size must be positive")
        self.store = store
        self.max_age_s = float(max_age_s)
        self.batch = int(batch)
        self.clock = clock
        self.dir = archive_dir(store.path)
        self._open: dict[str, sqlite3.Connection] = {}  # month -> its archive, during one step

    def step(self, *, time_limit_s: float = 0.05, now: float | None = None) -> int:
        """Move batches until nothing old is left or ``time_limit_s`` has passed; returns the
        orders moved (audit rows of no order count one each)."""
        cutoff = (self.clock() if now is None else now) - self.max_age_s
        t0, moved = time.monotonic(), 0
        try:
            while True:
                n = self._batch(cutoff)
                moved += n
                if n == 0 or time.monotonic() - t0 >= time_limit_s:
                    return moved
        finally:
            for conn in self._open.values():  # no archive stays open between steps
                conn.close()
            self._open.clear()

    def run(self, *, now: float | None = None) -> int:
        """Everything due, batch after batch (each its own short transaction); orders moved."""
        return self.step(time_limit_s=float("inf"), now=now)

    # --- one batch ----------------------------------------------------------------------
    def _batch(self, cutoff: float) -> int:
        orders, fills, trans = self._read(cutoff)
        if not orders and not trans:
            return 0
        by_month: dict[str, dict[str, list[sqlite3.Row]]] = defaultdict(lambda: defaultdict(list))
        month_of = {}
        for o in orders:
            month_of[o["client_order_id"]] = m = _month(o["updated_at"])
            by_month[m]["orders"].append(o)
        for f in fills:
            by_month[month_of[f["client_order_id"]]]["fills"].append(f)
        for t in trans:
            cid = t["client_order_id"]
            by_month[month_of[cid] if cid is not None else _month(t["ts"])]["transitions"].append(t)
        for month, rows in sorted(by_month.items()):
            self._write_archive(month, rows)
        self._delete(orders, fills, trans)
        self.store.release_free_pages()  # state.db shrinks with what left it
        return len(orders) or len(trans)

    def _read(self, cutoff: float) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
        with self.store._read() as c:
            orders: list[sqlite3.Row] = []
            for state in sorted(TERMINAL):
                if len(orders) >= self.batch:
                    break
                orders += c.execute("SELECT * FROM orders WHERE state = ? AND updated_at < ? "
                                    "ORDER BY updated_at LIMIT ?",
                                    (state, cutoff, self.batch - len(orders))).fetchall()
            cids = [o["client_order_id"] for o in orders]
            fills: list[sqlite3.Row] = []
            trans: list[sqlite3.Row] = []
            for chunk in _chunks(cids):
                fills += c.execute(f"SELECT * FROM fills WHERE client_order_id IN ({_in(len(chunk))})",
                                   chunk).fetchall()
                trans += c.execute("SELECT * FROM transitions WHERE client_order_id IN "
                                   f"({_in(len(chunk))})", chunk).fetchall()
            if not orders:  # audit rows of no order (position adjustments), by age
                trans = c.execute("SELECT * FROM transitions WHERE client_order_id IS NULL AND "
                                  "ts < ? ORDER BY id LIMIT ?", (cutoff, self.batch)).fetchall()
            return orders, fills, trans

    def _archive_path(self, month: str) -> Path:
        return self.dir / f"state-{month}.db"

    def _archive_conn(self, month: str) -> sqlite3.Connection:
        """The month's archive, created with the schema and key canary on first use; a rollback
        journal (one self-contained file to read or copy) and synchronous FULL: a commit is on
        disk before state.db lets go of the rows."""
        conn = self._open.get(month)
        if conn is not None:
            return conn
        path = self._archive_path(month)
        new = not path.exists()
        if new:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            _one(conn, "PRAGMA busy_timeout = 5000")
            _one(conn, "PRAGMA synchronous = FULL")
            _begin_immediate(conn)
            try:
                schema.migrate(conn)
                if new:
                    self._copy_key_meta(conn)
                _one(conn, "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    _one(conn, "ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._open[month] = conn
        return conn

    def _write_archive(self, month: str, rows: dict[str, list[sqlite3.Row]]) -> None:
        conn = self._archive_conn(month)
        _begin_immediate(conn)
        try:
            for table, mode in (("orders", "REPLACE"), ("fills", "IGNORE"), ("transitions", "IGNORE")):
                items = rows.get(table) or []
                if items:
                    cols = items[0].keys()
                    conn.executemany(f"INSERT OR {mode} INTO {table} ({', '.join(cols)}) "
                                     f"VALUES ({_in(len(cols))})", [tuple(r) for r in items])
            _one(conn, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                _one(conn, "ROLLBACK")
            raise

    def _copy_key_meta(self, conn: sqlite3.Connection) -> None:
        with self.store._read() as c:
            blob = _canary_blob(c)
            key_id = _one(c, "SELECT value FROM meta WHERE key = 'key_id'")
        for key, value in (("canary", base64.b64encode(blob).decode() if blob else None),
                           ("key_id", key_id[0] if key_id else None),
                           ("created_at", str(time.time())), ("needs_reconciliation", "0")):
            if value is not None:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             (key, value)).close()

    def _delete(self, orders: list[sqlite3.Row], fills: list[sqlite3.Row],
                trans: list[sqlite3.Row]) -> None:
        nfills: dict[str, int] = defaultdict(int)
        ntrans: dict[str, int] = defaultdict(int)
        for f in fills:
            nfills[f["client_order_id"]] += 1
        for t in trans:
            if t["client_order_id"] is not None:
                ntrans[t["client_order_id"]] += 1
        seen = {o["client_order_id"]: o["updated_at"] for o in orders}
        with self.store._write() as c:
            done: list[str] = []
            for chunk in _chunks(list(seen)):
                for cid, updated, nf, nt in c.execute(
                        "SELECT client_order_id, updated_at, "
                        "(SELECT COUNT(*) FROM fills f WHERE f.client_order_id = o.client_order_id), "
                        "(SELECT COUNT(*) FROM transitions t WHERE t.client_order_id = o.client_order_id) "
                        f"FROM orders o WHERE client_order_id IN ({_in(len(chunk))})", chunk):
                    if updated == seen[cid] and nf == nfills[cid] and nt == ntrans[cid]:
                        done.append(cid)  # unchanged since it was copied
            counts = {"orders": 0, "fills": 0, "transitions": 0}
            for chunk in _chunks(done):
                for table in ("transitions", "fills", "orders"):
                    counts[table] += c.execute(
                        f"DELETE FROM {table} WHERE client_order_id IN ({_in(len(chunk))})",
                        chunk).rowcount
            loose = [t["id"] for t in trans if t["client_order_id"] is None]
            for chunk in _chunks(loose):
                counts["transitions"] += c.execute(
                    f"DELETE FROM transitions WHERE id IN ({_in(len(chunk))})", chunk).rowcount
            if trans:
                top = max(t["id"] for t in trans)
                c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                          "SET value = MAX(CAST(value AS INTEGER), excluded.value)",
                          (TRANSITIONS_FLOOR_KEY, top))
            for table, n in counts.items():
                if n:
                    c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                              "UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                              (f"archived.{table}", n))


# --- reading history across state.db and its archives ----------------------------------------
def _readers(state_db: Path, cipher: Any, since: float | None) -> Iterator[StateReader]:
    """Read-only views of the archives that can hold rows at or after ``since``, then state.db."""
    for path in archive_files(state_db):
        if since is not None and _month_end(path) <= since:
            continue  # a month's archive holds only fills up to the end of that month
        try:
            reader = StateReader(path, cipher)
        except WrongKeyError:
            # written before a `keys rotate` (which re-encrypts state.db only): its plain columns
            # -- amounts, prices, fees, times -- still read; its payloads need the old key
            log.warning("%s was written under an earlier field key: reading it without its "
                        "encrypted payloads", path.name)
            reader = StateReader(path)
        with reader as r:
            yield r
    if Path(state_db).is_file():
        with StateReader(state_db, cipher) as r:
            yield r


def history_fills(state_db: Path, cipher: Any = None, *, symbol: str | None = None,
                  since: float | None = None, until: float | None = None) -> list[Fill]:
    """Every fill of the bot, archived and live, oldest first (each once), optionally of one
    symbol and within ``[since, until)`` (unix s). Encrypted ``raw`` is None without ``cipher``."""
    out: dict[tuple[str, str], Fill] = {}
    for r in _readers(Path(state_db), cipher, since):
        for f in r.fills(symbol=symbol):
            if (since is None or f.ts >= since) and (until is None or f.ts < until):
                out[(f.fill_id, f.symbol)] = f
    return sorted(out.values(), key=lambda f: (f.ts, f.fill_id))


def archived_order(state_db: Path, cid: str) -> Order | None:
    """An order that was moved to an archive (plain columns; newest archive first), or None."""
    for path in reversed(archive_files(state_db)):
        with StateReader(path) as r:
            o = r.get_order(cid, decrypt=False)
            if o is not None:
                return o
    return None
