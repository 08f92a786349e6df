"""The bot's durable memory: a WAL-mode SQLite state store with encrypted sensitive fields.

API (Order, Fill, Position are frozen dataclasses; amounts are floats)::

    ORDER_STATES = ("INTENT","SUBMITTING","OPEN","FILLED","CANCELED","REJECTED","UNKNOWN")
    TERMINAL = {"FILLED","CANCELED","REJECTED"}
    NewOrder(client_order_id, seq, bot_id, symbol, side, type, amount, price=None,
             purpose="entry", origin="bot", reason="")
    Fill(fill_id, client_order_id, exchange_order_id, symbol, side, amount, price, fee=0.0,
         fee_currency=None, ts=0.0, raw=None)
    Position(symbol, amount, cost, realized_pnl, updated_at).avg_price
    class StateStore:
        @classmethod
        def open(cls, path, cipher, *, synchronous="FULL", on_event=None) -> StateStore
        # StateStore(path, cipher, ...) is the same, with checkpoint_every/_interval_s knobs
        quarantined: Path | None
        def close(self)
        needs_reconciliation -> bool; def set_needs_reconciliation(self, flag, reason="")
        def next_client_order_id(self, bot_id, *, emergency=False) -> tuple[str, int]
        def add_intent(self, o: NewOrder) -> Order
        def transition(self, cid, to_state, *, note="", **fields) -> Order
        def get_order(self, cid) -> Order | None
        def orders(self, states=None, *, symbol=None, origin=None) -> list[Order]
        def add_fill(self, f: Fill) -> bool
        def fills(self, *, client_order_id=None, symbol=None) -> list[Fill]
        def positions(self) -> dict[str, Position]
        def adjust_position(self, symbol, amount, *, reason, price=None) -> None
        def kv_get(self, key, default=None); def kv_set(self, key, value) -> None
        def checkpoint(self) -> None
        def backup(self, dest: Path) -> None
        def check(self) -> dict
        def transitions(self, cid=None) -> list[Transition]          # the audit trail
        def reencrypt(self, *, batch_size=500, progress=None) -> int  # key rotation
        def verify_encryption(self, cipher) -> int
    def open_readonly(path, cipher=None) -> StateReader  # same reads; never decrypts without a cipher
    def stored_key_id(path) -> str | None                # key id the database was written under

Durability: every write is one short ``BEGIN IMMEDIATE`` transaction on a connection with
``isolation_level=None``; ``synchronous`` is FULL by default, so a returned ``add_intent`` survives
a power cut. Concurrent writers (the bot and the watchdog's emergency orders) wait for each
other instead of failing with "database is locked": ``BEGIN IMMEDIATE`` is retried every few
milliseconds for up to the busy timeout (5 s), so neither can starve the other. Readers open the file
with ``mode=ro`` and each call is its own short read. The WAL is truncated every
``checkpoint_every`` writes or ``checkpoint_interval_s`` seconds, and on :meth:`checkpoint`.

Opening never silently uses or overwrites a damaged file:

* A file that is not a database or fails ``PRAGMA quick_check`` is moved aside as
  ``state.db.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``), ``on_event("state.quarantined",
  message, path=..., problem=..., severity="critical")`` is called, and the store starts empty
  with ``needs_reconciliation`` set, so the bot rebuilds its view from the exchange before
  trading. ``store.quarantined`` is the moved path. Other events: ``state.migrated`` and
  ``state.position_adjusted``.
* A key that cannot decrypt the canary in ``meta`` raises WrongKeyError and touches nothing.
* A database newer than this code raises SchemaVersionError and touches nothing.

Client order id sequences start at the current Unix time in microseconds the first time they are
used in a database (then count up by one), so a database that was lost or quarantined never hands
out an id that an older order on the exchange already carries: that would take more than a
million orders a second. ``tg-<12 chars>-x<16 digits>`` stays within Binance's 36 characters.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sqlite_utils import Database

from resilience import schema
from resilience.crypto import FieldCipher, blob_key_id
from tradeguard.exceptions import (BackupError, FieldDecryptError, SchemaVersionError,
                                   StateCorruptError, StateError, WrongKeyError)

log = logging.getLogger(__name__)

ORDER_STATES = ("INTENT", "SUBMITTING", "OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN")
TERMINAL = frozenset({"FILLED", "CANCELED", "REJECTED"})
ALLOWED: dict[str, frozenset[str]] = {
    "INTENT": frozenset({"SUBMITTING", "CANCELED", "REJECTED", "UNKNOWN", "OPEN", "FILLED"}),
    "SUBMITTING": frozenset({"OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"}),
    "UNKNOWN": frozenset({"SUBMITTING", "OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"}),
    "OPEN": frozenset({"OPEN", "FILLED", "CANCELED", "UNKNOWN"}),
    **{t: frozenset({t}) for t in TERMINAL},  # terminal: field updates only (e.g. add the fee)
}
SIDES = ("buy", "sell")
PURPOSES = ("entry", "exit", "protective", "emergency")
ORIGINS = ("bot", "watchdog")
SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 5000
CANARY = b"tradeguard state.db canary v1"

_CID_RE = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")  # what Binance accepts as clientOrderId
_BOT_ID_RE = re.compile(r"[A-Za-z0-9]{1,12}")
_TRANSITION_FIELDS = ("exchange_order_id", "filled", "average", "fee", "raw", "reason",
                      "attempts", "price")
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_DUST = 1e-12

EventCallback = Callable[..., None]
Progress = Callable[[str, int], None]


# --- records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewOrder:
    """An order the caller is about to send; committed as INTENT before anything is sent."""
    client_order_id: str
    seq: int
    bot_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None = None
    purpose: str = "entry"
    origin: str = "bot"
    reason: str = ""


@dataclass(frozen=True)
class Order:
    client_order_id: str
    seq: int
    bot_id: str
    origin: str
    purpose: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    state: str
    filled: float
    average: float | None
    fee: float
    exchange_order_id: str | None
    attempts: int
    created_at: float
    updated_at: float
    reason: str | None  # None when read without the field key
    raw: Any            # the exchange's payload (decrypted JSON), or None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def remaining(self) -> float:
        return max(self.amount - self.filled, 0.0)


@dataclass(frozen=True)
class Fill:
    fill_id: str
    client_order_id: str | None
    exchange_order_id: str | None
    symbol: str
    side: str
    amount: float
    price: float
    fee: float = 0.0
    fee_currency: str | None = None
    ts: float = 0.0
    raw: Any = None


@dataclass(frozen=True)
class Position:
    symbol: str
    amount: float
    cost: float
    realized_pnl: float
    updated_at: float

    @property
    def avg_price(self) -> float:
        return self.cost / self.amount if self.amount else 0.0


@dataclass(frozen=True)
class Transition:
    id: int
    client_order_id: str | None
    from_state: str | None
    to_state: str
    ts: float
    note: str | None  # None when read without the field key


# --- connections --------------------------------------------------------------------------
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


def _connect(path: Path, *, readonly: bool, synchronous: str = "FULL") -> _Connection:
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
        if not readonly:
            _one(conn, "PRAGMA journal_mode = WAL")
        _one(conn, f"PRAGMA synchronous = {synchronous}")
        _one(conn, "PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _begin_immediate(c: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retrying every 0.2-2 ms for up to the busy timeout.

    SQLite's own busy handler backs off to 100 ms sleeps, so a process that commits in a tight
    loop can starve another writer until it fails with "database is locked"; short polls catch
    the gaps between the other writer's transactions."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0002
    _one(c, "PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                _one(c, "BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) != 5 or time.monotonic() > deadline:
                    raise  # not SQLITE_BUSY, or busy for the whole timeout
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
    finally:
        _one(c, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


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


def fsync_dir(d: Path) -> None:
    """Make a rename/link/unlink in directory ``d`` durable."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _canary_blob(conn: sqlite3.Connection) -> bytes | None:
    row = _one(conn, "SELECT value FROM meta WHERE key = 'canary'")
    if row is None:
        return None
    try:
        return base64.b64decode(row[0], validate=True)
    except (ValueError, TypeError):
        raise StateCorruptError("the key canary in state.db meta is damaged; restore the "
                                "database from a backup (nothing was changed)") from None


def _verify_key(conn: sqlite3.Connection, cipher: FieldCipher, path: Path) -> None:
    """Raise WrongKeyError unless ``cipher`` decrypts the database's canary."""
    blob = _canary_blob(conn)
    if blob is None:
        return
    try:
        ok = cipher.decrypt("meta", "canary", "value", blob) == CANARY
    except FieldDecryptError:
        ok = False
    if not ok:
        try:
            written = blob_key_id(blob)
        except FieldDecryptError:
            written = "?"
        raise WrongKeyError(
            f"this key does not open this database: {path} was written under field key "
            f"{written}, the loaded key is {', '.join(cipher.key_ids)}. Restore the key it was "
            "written with (data/keys/field.key from your backup, $CREDENTIALS_DIRECTORY/field.key "
            "or TRADEGUARD_FIELD_KEY); the database was not changed")


def _usable_version(conn: sqlite3.Connection, cipher: FieldCipher, path: Path) -> int:
    """The schema version, after refusing a newer schema or a key that does not open the file."""
    version = schema.current_version(conn)
    if version > schema.SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {version}, this tradeguard knows up to "
            f"{schema.SCHEMA_VERSION}: upgrade tradeguard (the database was not changed)")
    if version:
        _verify_key(conn, cipher, path)
    return version


def _probe(path: Path, cipher: FieldCipher) -> str | None:
    """Read-only look at an existing file: the corruption found, or None if it is usable.

    Raises WrongKeyError / SchemaVersionError without writing anything."""
    try:
        conn = _connect(path, readonly=True)
    except sqlite3.DatabaseError as e:
        if _is_corruption(e):
            return str(e)
        raise StateError(f"cannot open {path}: {e}") from None
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            return "quick_check: " + "; ".join(rows[:5])
        _usable_version(conn, cipher, path)
        return None
    except sqlite3.DatabaseError as e:
        if _is_corruption(e):
            return str(e)
        raise StateError(f"cannot read {path}: {e}") from None
    finally:
        conn.close()


def _backup(conn: sqlite3.Connection, dest: Path) -> None:
    """Online backup of ``conn`` into a new 0600 file ``dest``; never overwrites."""
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest} already exists; refusing to overwrite it")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a directory")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        target = sqlite3.connect(str(tmp))
        try:
            conn.backup(target)  # one step: a consistent snapshot while writers go on
        finally:
            target.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, dest)
        fsync_dir(dest.parent)
    except FileExistsError:
        raise BackupError(f"{dest} already exists; refusing to overwrite it") from None
    except OSError as e:
        raise BackupError(f"cannot write backup {dest}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _rows_after(c: sqlite3.Connection, table: str, rowid: int, limit: int) -> list[sqlite3.Row]:
    """The next ``limit`` rows of ``table`` after ``rowid`` (``_rid``): scans in short batches."""
    return c.execute(f"SELECT rowid AS _rid, * FROM {table} WHERE rowid > ? ORDER BY rowid "
                     "LIMIT ?", (rowid, limit)).fetchall()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _finite(name: str, v: Any, *, positive: bool = False, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise StateError(f"{name} = {v!r}: must be a number") from None
    if not math.isfinite(f) or (positive and f <= 0) or f < 0:
        raise StateError(f"{name} = {v!r}: must be a finite number {'> 0' if positive else '>= 0'}")
    return f


def apply_fill(amount: float, cost: float, pnl: float, *, side: str, qty: float, price: float,
               fee: float, fee_currency: str | None, base: str, quote: str
               ) -> tuple[float, float, float]:
    """Average-cost position after one fill: (amount, cost, realized_pnl).

    A buy adds ``qty`` (minus the fee when charged in the base asset) at ``qty * price``; a sell
    removes ``qty`` (plus a base-asset fee) and realizes the gain over the average cost. Fees in
    the quote asset reduce realized pnl; fees in a third asset are recorded on the fill only."""
    notional = qty * price
    fee_base = fee if fee_currency == base else 0.0
    q = (qty - fee_base) if side == "buy" else -(qty + fee_base)
    if q == 0:
        return amount, cost, pnl - (fee if fee_currency == quote else 0.0)
    unit = notional / abs(q)  # effective price per unit that moved
    if amount == 0 or (amount > 0) == (q > 0):
        amount, cost = amount + q, cost + q * unit
    else:
        closing = min(abs(q), abs(amount))
        sign = 1.0 if amount > 0 else -1.0
        avg = cost / amount
        pnl += (unit - avg) * closing * sign
        cost -= avg * closing * sign
        amount -= closing * sign
        rest = abs(q) - closing
        if rest > 0:  # crossed zero: the remainder opens the other way at this fill's price
            amount, cost = amount - sign * rest, cost - sign * rest * unit
    if fee_currency == quote:
        pnl -= fee
    if abs(amount) < _DUST:
        amount, cost = 0.0, 0.0
    return amount, cost, pnl


# --- reads shared by the writer and the read-only reader ------------------------------------
class _Reads:
    _conn: _Connection
    _cipher: FieldCipher | None
    path: Path

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._depth = 0  # nesting of _read() in the thread that holds the lock

    @contextmanager
    def _read(self) -> Iterator[_Connection]:
        """The connection, under the lock; every cursor opened inside is closed on the way out."""
        with self._lock:
            if self._closed:
                raise StateError(f"state store {self.path} is closed")
            self._depth += 1
            try:
                yield self._conn
            except sqlite3.DatabaseError as e:
                if _is_corruption(e):
                    raise StateCorruptError(f"{self.path} is damaged: {e}") from None
                raise
            finally:
                self._depth -= 1
                if self._depth == 0 and not self._closed:
                    self._conn.finish_statements()  # no statement (or read snapshot) lingers

    def _dec(self, table: str, pk: Any, column: str, blob: bytes | None) -> str | None:
        if blob is None:
            return "" if self._cipher is not None else None
        if self._cipher is None:
            return None
        return self._cipher.decrypt(table, pk, column, blob).decode("utf-8")

    def _dec_json(self, table: str, pk: Any, column: str, blob: bytes | None) -> Any:
        text = self._dec(table, pk, column, blob)
        return json.loads(text) if text else None

    def _order(self, r: sqlite3.Row) -> Order:
        cid = r["client_order_id"]
        return Order(
            client_order_id=cid, seq=r["seq"], bot_id=r["bot_id"], origin=r["origin"],
            purpose=r["purpose"], symbol=r["symbol"], side=r["side"], type=r["type"],
            amount=r["amount"], price=r["price"], state=r["state"], filled=r["filled"],
            average=r["average"], fee=r["fee"], exchange_order_id=r["exchange_order_id"],
            attempts=r["attempts"], created_at=r["created_at"], updated_at=r["updated_at"],
            reason=self._dec("orders", cid, "reason", r["reason"]),
            raw=self._dec_json("orders", cid, "raw", r["raw"]))

    def _fill(self, r: sqlite3.Row) -> Fill:
        return Fill(fill_id=r["fill_id"], client_order_id=r["client_order_id"],
                    exchange_order_id=r["exchange_order_id"], symbol=r["symbol"],
                    side=r["side"], amount=r["amount"], price=r["price"], fee=r["fee"],
                    fee_currency=r["fee_currency"], ts=r["ts"],
                    raw=self._dec_json("fills", schema.aad_pk("fills", r), "raw", r["raw"]))

    def get_order(self, cid: str) -> Order | None:
        """The order with this client order id, or None."""
        with self._read() as c:
            r = _one(c, "SELECT * FROM orders WHERE client_order_id = ?", (cid,))
            return self._order(r) if r else None

    def orders(self, states: str | Iterable[str] | None = None, *, symbol: str | None = None,
               origin: str | None = None) -> list[Order]:
        """Orders, oldest first, filtered by state(s), symbol and origin."""
        where, args = _equals(symbol=symbol, origin=origin)
        if states is not None:
            states = (states,) if isinstance(states, str) else tuple(states)
            bad = [s for s in states if s not in ORDER_STATES]
            if bad:
                raise StateError(f"unknown order state(s) {bad}; known: {', '.join(ORDER_STATES)}")
            if not states:
                return []
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        with self._read() as c:
            rows = c.execute(_select("orders", where, "created_at, rowid"), args).fetchall()
            return [self._order(r) for r in rows]

    def fills(self, *, client_order_id: str | None = None, symbol: str | None = None) -> list[Fill]:
        """Fills in time order, optionally of one order or one symbol."""
        where, args = _equals(client_order_id=client_order_id, symbol=symbol)
        with self._read() as c:
            rows = c.execute(_select("fills", where, "ts, rowid"), args).fetchall()
            return [self._fill(r) for r in rows]

    def positions(self) -> dict[str, Position]:
        """Every position row (symbol -> Position), including flat ones with realized pnl."""
        with self._read() as c:
            return {r["symbol"]: Position(r["symbol"], r["amount"], r["cost"], r["realized_pnl"],
                                          r["updated_at"])
                    for r in c.execute("SELECT * FROM positions ORDER BY symbol").fetchall()}

    def transitions(self, cid: str | None = None) -> list[Transition]:
        """The audit trail, oldest first: of one order, or all rows (adjustments have no order)."""
        sql, args = "SELECT * FROM transitions", ()
        if cid is not None:
            sql, args = sql + " WHERE client_order_id = ?", (cid,)
        with self._read() as c:
            return [Transition(r["id"], r["client_order_id"], r["from_state"], r["to_state"],
                               r["ts"], self._dec("transitions", r["id"], "note", r["note"]))
                    for r in c.execute(sql + " ORDER BY id", args).fetchall()]

    def meta_value(self, key: str) -> str | None:
        with self._read() as c:
            r = _one(c, "SELECT value FROM meta WHERE key = ?", (key,))
            return r[0] if r else None

    @property
    def meta(self) -> dict[str, str]:
        """The plain ``meta`` table (schema_version, needs_reconciliation, key_id, bot_id, ...)."""
        with self._read() as c:
            return {r[0]: r[1] for r in c.execute("SELECT key, value FROM meta") if r[0] != "canary"}

    @property
    def needs_reconciliation(self) -> bool:
        return self.meta_value("needs_reconciliation") == "1"

    def counts(self) -> dict[str, int]:
        """Rows per table (sqlite-utils)."""
        with self._read() as c:
            db = Database(c, execute_plugins=False)
            return {t: db[t].count for t in schema.TABLES if db[t].exists()}

    def check(self) -> dict[str, Any]:
        """Full integrity check, schema version, row counts, orders by state, WAL size."""
        with self._read() as c:
            integrity = "; ".join(r[0] for r in c.execute("PRAGMA integrity_check").fetchall())
            version = schema.current_version(c)
            by_state = {r[0]: r[1] for r in
                        c.execute("SELECT state, COUNT(*) FROM orders GROUP BY state")}
        wal = self.path.with_name(self.path.name + "-wal")
        return {"integrity": integrity, "schema_version": version, "counts": self.counts(),
                "orders_by_state": by_state, "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "needs_reconciliation": self.needs_reconciliation,
                "key_id": self.meta_value("key_id")}

    def verify_encryption(self, cipher: FieldCipher) -> int:
        """Decrypt every encrypted value with ``cipher`` (e.g. the new key alone); count them.

        Raises FieldDecryptError on the first value it cannot open."""
        count = 0
        for table, _pk, cols in schema.ENCRYPTED:
            last = 0
            while True:
                with self._read() as c:
                    rows = _rows_after(c, table, last, 1000)
                if not rows:
                    break
                for r in rows:
                    for col in cols:
                        if r[col] is not None:
                            cipher.decrypt(table, schema.aad_pk(table, r), col, r[col])
                            count += 1
                last = rows[-1]["_rid"]
        with self._read() as c:
            blob = _canary_blob(c)
        if blob is not None:
            if cipher.decrypt("meta", "canary", "value", blob) != CANARY:
                raise FieldDecryptError("meta.value of row 'canary' holds the wrong value")
            count += 1
        return count

    def backup(self, dest: Path) -> None:
        """Online backup (sqlite3 backup API) to a new file; consistent while others write."""
        with self._read() as c:
            _backup(c, Path(dest))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StateReader(_Reads):
    """Read-only view (``mode=ro``) for the watchdog, the CLI and the health endpoint."""

    def __init__(self, path: Path, cipher: FieldCipher | None = None):
        super().__init__()
        self.path = Path(path)
        self._cipher = cipher
        if not self.path.is_file():
            raise StateError(f"no state database at {self.path} (has the bot run with this "
                             "--data-dir?)")
        conn = None
        try:
            conn = _connect(self.path, readonly=True)
            if schema.current_version(conn) == 0:
                raise StateError(f"{self.path} is not initialised yet (the bot creates it)")
            if cipher is not None:
                _verify_key(conn, cipher, self.path)
            conn.finish_statements()
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                if _is_corruption(e):
                    raise StateCorruptError(f"{self.path} is damaged: {e}") from None
                raise StateError(f"cannot read {self.path}: {e}") from None
            raise
        self._conn = conn


def open_readonly(path: Path, cipher: FieldCipher | None = None) -> StateReader:
    """A read-only view; encrypted fields read as None unless ``cipher`` is given."""
    return StateReader(path, cipher)


def stored_key_id(path: Path) -> str | None:
    """The field key id an existing database was written under (None: no database or canary)."""
    if not Path(path).is_file():
        return None
    try:
        conn = _connect(Path(path), readonly=True)
    except sqlite3.DatabaseError:
        return None
    try:
        if schema.current_version(conn) == 0:
            return None
        blob = _canary_blob(conn)
        return blob_key_id(blob) if blob else None
    except (sqlite3.DatabaseError, StateError):
        return None  # unreadable: the writer quarantines it when it opens the file
    finally:
        conn.close()


# --- the writer ---------------------------------------------------------------------------
class StateStore(_Reads):
    """The writer (the bot; the watchdog for emergency orders). See the module docstring."""

    def __init__(self, path: Path, cipher: FieldCipher, *, synchronous: str = "FULL",
                 on_event: EventCallback | None = None, checkpoint_every: int = 2000,
                 checkpoint_interval_s: float = 300.0):
        super().__init__()
        if not isinstance(cipher, FieldCipher):
            raise TypeError(f"cipher must be a FieldCipher, not {type(cipher).__name__} "
                            "(ensure_cipher returns a (cipher, generated) pair)")
        sync = str(synchronous).upper()
        if sync not in SYNCHRONOUS:
            raise StateError(f"synchronous = {synchronous!r}: must be one of {', '.join(SYNCHRONOUS)}")
        self.path = Path(path)
        self._cipher = cipher
        self._on_event = on_event
        self._checkpoint_every = max(int(checkpoint_every), 1)
        self._checkpoint_interval_s = float(checkpoint_interval_s)
        self._writes = 0  # since the last checkpoint
        self._last_checkpoint = time.monotonic()
        self.quarantined: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        problem = None
        if self.path.exists():
            problem = _probe(self.path, cipher)
        elif any(p.exists() for p in _side_files(self.path)):
            problem = "a -wal/-shm file without its database"
        if problem:
            self.quarantined = _quarantine(self.path)
            log.error("state.db is damaged (%s); moved to %s, starting empty", problem,
                      self.quarantined)
            self._emit("state.quarantined",
                       f"state.db failed its integrity check ({problem}); moved to "
                       f"{self.quarantined}; starting empty: the bot must rebuild its state "
                       "from the exchange before trading", path=str(self.quarantined),
                       problem=problem, severity="critical")
        if not self.path.exists():  # private from the start; -wal/-shm inherit the mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._conn = _connect(self.path, readonly=False, synchronous=sync)
        except sqlite3.DatabaseError as e:
            raise StateError(f"cannot open {self.path}: {e}") from None
        try:
            self._init_schema()
        except BaseException:
            self._closed = True
            self._conn.close()
            raise

    @classmethod
    def open(cls, path: Path, cipher: FieldCipher, *, synchronous: str = "FULL",
             on_event: EventCallback | None = None) -> "StateStore":
        """Open (create, migrate, or quarantine and recreate) the state database."""
        return cls(path, cipher, synchronous=synchronous, on_event=on_event)

    def _emit(self, kind: str, message: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, message, **fields)
        except Exception:  # noqa: BLE001 - a broken recorder must not break the store
            log.exception("on_event callback failed for %s", kind)

    def _init_schema(self) -> None:
        with self._write() as c:
            # checked again under the write lock: another process may have created it meanwhile
            version = _usable_version(c, self._cipher, self.path)
            applied = schema.migrate(c)
            if _canary_blob(c) is None:
                blob = self._cipher.encrypt("meta", "canary", "value", CANARY)
                self._meta_set(c, "canary", base64.b64encode(blob).decode())
                self._meta_set(c, "key_id", self._cipher.current_key_id)
            if version == 0:
                self._meta_set(c, "created_at", str(time.time()))
                self._meta_set(c, "needs_reconciliation", "1" if self.quarantined else "0")
                if self.quarantined:
                    self._meta_set(c, "needs_reconciliation_reason",
                                   f"state.db was quarantined to {self.quarantined.name}")
        if applied and version:
            log.info("state.db migrated from schema %d to %d", version, applied[-1])
            self._emit("state.migrated", f"state.db migrated from schema version {version} "
                       f"to {applied[-1]}", from_version=version, to_version=applied[-1])

    @staticmethod
    def _meta_set(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        """One short BEGIN IMMEDIATE transaction; commits on success, rolls back on error.

        Every cursor opened inside is closed before COMMIT/ROLLBACK: a statement still running
        (its cursor kept alive by anyone) would make COMMIT fail. A COMMIT that fails anyway
        is rolled back, so the connection never stays inside a dead transaction."""
        with self._read() as c:
            _begin_immediate(c)
            try:
                yield c
            except BaseException:
                c.finish_statements()
                if c.in_transaction:
                    _one(c, "ROLLBACK")
                raise
            c.finish_statements()
            try:
                _one(c, "COMMIT")
            except BaseException:
                if c.in_transaction:
                    try:
                        _one(c, "ROLLBACK")
                    except sqlite3.Error:  # pragma: no cover - nothing more can be done here
                        log.exception("ROLLBACK after a failed COMMIT failed")
                raise
            self._writes += 1
            if (self._writes >= self._checkpoint_every
                    or time.monotonic() - self._last_checkpoint >= self._checkpoint_interval_s):
                self.checkpoint()

    def _audit(self, c: sqlite3.Connection, cid: str | None, frm: str | None, to: str,
               note: str, now: float) -> None:
        # The id is chosen here (under the write lock) because the note is bound to it.
        tid = _one(c, "SELECT COALESCE(MAX(id), 0) + 1 FROM transitions")[0]
        blob = self._cipher.encrypt("transitions", tid, "note", note) if note else None
        c.execute("INSERT INTO transitions(id, client_order_id, from_state, to_state, ts, note) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (tid, cid, frm, to, now, blob))

    # --- reconciliation flag ------------------------------------------------------------
    def set_needs_reconciliation(self, flag: bool, reason: str = "") -> None:
        """Mark (or clear) that the bot must rebuild its state from the exchange before trading."""
        with self._write() as c:
            self._meta_set(c, "needs_reconciliation", "1" if flag else "0")
            self._meta_set(c, "needs_reconciliation_reason", reason if flag else "")

    # --- orders -------------------------------------------------------------------------
    def next_client_order_id(self, bot_id: str, *, emergency: bool = False) -> tuple[str, int]:
        """A new durable client order id: ``tg-<bot_id>-<seq>`` (``-x<seq>`` for emergencies)."""
        if not isinstance(bot_id, str) or not _BOT_ID_RE.fullmatch(bot_id):
            raise StateError(f"bot_id = {bot_id!r}: must be 1-12 letters or digits")
        name = "emergency" if emergency else "orders"
        with self._write() as c:
            seq = _one(c,
                       "INSERT INTO sequences(name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
                       (name, int(time.time() * 1_000_000)))[0]
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('bot_id', ?)", (bot_id,))
        return f"tg-{bot_id}-{'x' if emergency else ''}{seq}", seq

    def add_intent(self, o: NewOrder) -> Order:
        """Commit a new order as INTENT (durably) before anything is sent; duplicate id -> StateError."""
        self._validate_new(o)
        price = None if o.price is None else float(o.price)
        now = time.time()
        with self._write() as c:
            reason = self._cipher.encrypt("orders", o.client_order_id, "reason", o.reason) \
                if o.reason else None
            try:
                c.execute(
                    "INSERT INTO orders(client_order_id, seq, bot_id, origin, purpose, symbol, "
                    "side, type, amount, price, state, filled, fee, attempts, created_at, "
                    "updated_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'INTENT', 0, 0, 0, "
                    "?, ?, ?)",
                    (o.client_order_id, int(o.seq), o.bot_id, o.origin, o.purpose, o.symbol,
                     o.side, o.type, float(o.amount), price, now, now, reason))
            except sqlite3.IntegrityError:
                raise StateError(f"order {o.client_order_id} already exists") from None
            self._audit(c, o.client_order_id, None, "INTENT", "", now)  # reason: on the order
        return Order(o.client_order_id, int(o.seq), o.bot_id, o.origin, o.purpose, o.symbol,
                     o.side, o.type, float(o.amount), price, "INTENT", 0.0, None, 0.0, None, 0,
                     now, now, o.reason, None)

    @staticmethod
    def _validate_new(o: NewOrder) -> None:
        if not isinstance(o.client_order_id, str) or not _CID_RE.fullmatch(o.client_order_id):
            raise StateError(f"client_order_id {o.client_order_id!r}: must match "
                             f"{_CID_RE.pattern}")
        if not isinstance(o.symbol, str) or "/" not in o.symbol or o.symbol != o.symbol.strip():
            raise StateError(f"symbol {o.symbol!r}: must look like 'BTC/USDT'")
        for name, value, allowed in (("side", o.side, SIDES), ("purpose", o.purpose, PURPOSES),
                                     ("origin", o.origin, ORIGINS)):
            if value not in allowed:
                raise StateError(f"{name} {value!r}: must be one of {', '.join(allowed)}")
        if not isinstance(o.type, str) or not re.fullmatch(r"[a-z_]{1,32}", o.type):
            raise StateError(f"type {o.type!r}: must be a ccxt order type such as 'market'")
        _finite("amount", o.amount, positive=True)
        _finite("price", o.price, positive=True, allow_none=True)
        if not isinstance(o.reason, str):
            raise StateError(f"reason {o.reason!r}: must be text")

    def transition(self, cid: str, to_state: str, *, note: str = "", **fields: Any) -> Order:
        """Move an order to ``to_state`` (validated), update ``fields``, audit it; one transaction."""
        if to_state not in ORDER_STATES:
            raise StateError(f"unknown order state {to_state!r}; known: {', '.join(ORDER_STATES)}")
        unknown = set(fields) - set(_TRANSITION_FIELDS)
        if unknown:
            raise StateError(f"transition() got unknown field(s) {sorted(unknown)}; allowed: "
                             f"{', '.join(_TRANSITION_FIELDS)}")
        values = self._transition_values(cid, fields)
        now = time.time()
        with self._write() as c:
            r = _one(c, "SELECT state FROM orders WHERE client_order_id = ?", (cid,))
            if r is None:
                raise StateError(f"no order {cid!r} in the state store")
            frm = r[0]
            if to_state not in ALLOWED[frm]:
                raise StateError(f"illegal transition {frm} -> {to_state} for order {cid}")
            cols = sorted(values)
            sets = "".join(f", {col} = ?" for col in cols)
            c.execute(f"UPDATE orders SET state = ?, updated_at = ?{sets} WHERE client_order_id = ?",
                      (to_state, now, *(values[col] for col in cols), cid))
            self._audit(c, cid, frm, to_state, note, now)
            return self._order(_one(c, "SELECT * FROM orders WHERE client_order_id = ?", (cid,)))

    def _transition_values(self, cid: str, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in fields.items():
            if k in ("filled", "fee"):
                out[k] = _finite(k, v)
            elif k in ("average", "price"):
                out[k] = _finite(k, v, allow_none=True)
            elif k == "attempts":
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise StateError(f"attempts = {v!r}: must be an integer >= 0")
                out[k] = v
            elif k == "exchange_order_id":
                out[k] = None if v is None else str(v)
            elif k == "reason":
                out[k] = self._cipher.encrypt("orders", cid, "reason", str(v)) if v else None
            elif k == "raw":
                out[k] = None if v is None else self._cipher.encrypt("orders", cid, "raw", _dumps(v))
        return out

    # --- fills and positions ------------------------------------------------------------
    def add_fill(self, f: Fill) -> bool:
        """Record a fill and update its position in one transaction; False if already known."""
        if f.side not in SIDES:
            raise StateError(f"fill {f.fill_id}: side {f.side!r} must be buy or sell")
        if not isinstance(f.symbol, str) or "/" not in f.symbol:
            raise StateError(f"fill {f.fill_id}: symbol {f.symbol!r} must look like 'BTC/USDT'")
        qty = _finite("fill amount", f.amount, positive=True)
        price = _finite("fill price", f.price, positive=True)
        fee = _finite("fill fee", f.fee)
        fill_id = str(f.fill_id)
        pk = schema.aad_pk("fills", {"fill_id": fill_id, "symbol": f.symbol})
        raw = None if f.raw is None else self._cipher.encrypt("fills", pk, "raw", _dumps(f.raw))
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO fills(fill_id, symbol, client_order_id, exchange_order_id, "
                "side, amount, price, fee, fee_currency, ts, raw) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fill_id, f.symbol, f.client_order_id, f.exchange_order_id, f.side, qty, price,
                 fee, f.fee_currency, float(f.ts or now), raw))
            if cur.rowcount == 0:
                return False
            r = _one(c, "SELECT amount, cost, realized_pnl FROM positions WHERE symbol = ?",
                     (f.symbol,))
            base, quote = f.symbol.split(":")[0].split("/", 1)
            amount, cost, pnl = apply_fill(*(tuple(r) if r else (0.0, 0.0, 0.0)), side=f.side,
                                           qty=qty, price=price, fee=fee,
                                           fee_currency=f.fee_currency, base=base, quote=quote)
            self._put_position(c, f.symbol, amount, cost, pnl, now)
            return True

    @staticmethod
    def _put_position(c: sqlite3.Connection, symbol: str, amount: float, cost: float,
                      pnl: float, now: float) -> None:
        c.execute("INSERT INTO positions(symbol, amount, cost, realized_pnl, updated_at) "
                  "VALUES (?, ?, ?, ?, ?) ON CONFLICT(symbol) DO UPDATE SET amount = excluded.amount, "
                  "cost = excluded.cost, realized_pnl = excluded.realized_pnl, "
                  "updated_at = excluded.updated_at", (symbol, amount, cost, pnl, now))

    def adjust_position(self, symbol: str, amount: float, *, reason: str,
                        price: float | None = None) -> None:
        """Adopt the exchange's position (reconciliation); audited with ``reason``.

        Units kept keep their average cost; units added cost ``price`` (or the current average
        when no price is given); realized pnl is unchanged."""
        if not reason:
            raise StateError("adjust_position needs a reason (it is audited)")
        try:
            new = float(amount)
        except (TypeError, ValueError):
            raise StateError(f"amount = {amount!r}: must be a number") from None
        if not math.isfinite(new):
            raise StateError(f"amount = {amount!r}: must be finite")
        price = _finite("price", price, positive=True, allow_none=True)
        now = time.time()
        with self._write() as c:
            r = _one(c, "SELECT amount, cost, realized_pnl FROM positions WHERE symbol = ?",
                     (symbol,))
            old, cost, pnl = tuple(r) if r else (0.0, 0.0, 0.0)
            avg = cost / old if old else (price or 0.0)
            if old and (new > 0) == (old > 0) and abs(new) > abs(old):
                cost += (new - old) * (price if price is not None else avg)
            elif old and (new > 0) == (old > 0):
                cost = avg * new
            else:
                cost = new * (price if price is not None else avg)
            if abs(new) < _DUST:
                new, cost = 0.0, 0.0
            self._put_position(c, symbol, new, cost, pnl, now)
            note = _dumps({"symbol": symbol, "from": old, "to": new, "price": price,
                           "reason": reason})
            self._audit(c, None, "POSITION", "ADJUST", note, now)
        log.warning("position %s adjusted from %g to %g: %s", symbol, old, new, reason)
        self._emit("state.position_adjusted", f"{symbol} position adjusted from {old:g} to "
                   f"{new:g}: {reason}", symbol=symbol, old=old, new=new, severity="warning")

    # --- key/value state ----------------------------------------------------------------
    def kv_get(self, key: str, default: Any = None) -> Any:
        """A JSON value stored with kv_set, or ``default``."""
        with self._read() as c:
            r = _one(c, "SELECT value FROM kv WHERE key = ?", (key,))
            return default if r is None else self._dec_json("kv", key, "value", r[0])

    def kv_set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (encrypted)."""
        if not isinstance(key, str) or not key:
            raise StateError(f"kv key {key!r}: must be non-empty text")
        try:
            text = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise StateError(f"kv value for {key!r} is not JSON-serialisable: {e}") from None
        blob = self._cipher.encrypt("kv", key, "value", text)
        with self._write() as c:
            c.execute("INSERT INTO kv(key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                      "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                      (key, blob, time.time()))

    # --- maintenance --------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (bounded WAL); best effort with readers."""
        with self._read() as c:
            busy, log_frames, done = _one(c, "PRAGMA wal_checkpoint(TRUNCATE)")
            self._last_checkpoint = time.monotonic()
            self._writes = 0
            if busy:
                log.debug("wal checkpoint incomplete (%s of %s frames): readers active",
                          done, log_frames)

    def reencrypt(self, *, batch_size: int = 500, progress: Progress | None = None) -> int:
        """Re-encrypt every value not under the current key, in short batches; count changed.

        Safe to kill at any point: each batch is one transaction and each value names its key."""
        total = 0
        for table, _pk, cols in schema.ENCRYPTED:
            last = 0
            while True:
                with self._write() as c:
                    rows = _rows_after(c, table, last, batch_size)
                    changed = 0
                    for r in rows:
                        updates = {col: self._cipher.reencrypt(table, schema.aad_pk(table, r),
                                                               col, r[col])
                                   for col in cols
                                   if r[col] is not None and self._cipher.needs_reencrypt(r[col])}
                        if updates:
                            sets = ", ".join(f"{col} = ?" for col in updates)
                            c.execute(f"UPDATE {table} SET {sets} WHERE rowid = ?",
                                      (*updates.values(), r["_rid"]))
                            changed += len(updates)
                if not rows:
                    break
                last = rows[-1]["_rid"]
                total += changed
                if changed and progress:
                    progress("reencrypt", total)
        with self._write() as c:
            blob = _canary_blob(c)
            if blob is not None and self._cipher.needs_reencrypt(blob):
                blob = self._cipher.reencrypt("meta", "canary", "value", blob)
                self._meta_set(c, "canary", base64.b64encode(blob).decode())
                total += 1
            self._meta_set(c, "key_id", self._cipher.current_key_id)
        return total
