"""Reads shared by the writer and the read-only reader, and the read-only reader itself."""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from resilience import schema
from resilience.crypto import FieldCipher
from resilience.state.canary import CANARY, _canary_blob, _verify_key
from resilience.state.connection import (_Connection, _connect, _equals, _is_corruption, _one,
                                         _rows_after, _select)
from resilience.state.files import _backup
from resilience.state.records import ORDER_STATES, Fill, Order, Position, Transition
from tradeguard.exceptions import FieldDecryptError, StateCorruptError, StateError


def _counters(c: sqlite3.Connection) -> dict[str, int]:
    """The counters the schema's triggers keep (empty before the schema has them)."""
    if not _one(c, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counters'"):
        return {}
    return {r[0]: r[1] for r in c.execute("SELECT name, value FROM counters")}


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
        if blob is None or self._cipher is None:  # no value (NULL), or no key to read it
            return None
        return self._cipher.decrypt(table, pk, column, blob).decode("utf-8")

    def _dec_json(self, table: str, pk: Any, column: str, blob: bytes | None) -> Any:
        text = self._dec(table, pk, column, blob)
        return json.loads(text) if text else None

    def _order(self, r: sqlite3.Row, decrypt: bool = True) -> Order:
        cid = r["client_order_id"]
        if not decrypt:  # plain columns only: what the hot paths need of a closed order
            return Order(**{k: r[k] for k in r.keys() if k not in ("reason", "raw")},
                         reason=None, raw=None)
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

    def get_order(self, cid: str, *, decrypt: bool = True) -> Order | None:
        """The order with this client order id, or None; ``decrypt=False`` leaves ``reason`` and
        ``raw`` None (no decryption: a look at a closed order costs one indexed row)."""
        with self._read() as c:
            r = _one(c, "SELECT * FROM orders WHERE client_order_id = ?", (cid,))
            return self._order(r, decrypt) if r else None

    def order_ids(self, states: Iterable[str], *, updated_since: float | None = None,
                  filled_only: bool = False) -> list[str]:
        """Client order ids in ``states`` (changed since ``updated_since``; with a fill when
        ``filled_only``), oldest change first: one indexed range, nothing decrypted."""
        states = tuple(states)
        where = [f"state IN ({','.join('?' * len(states))})"]
        args: list[Any] = list(states)
        if updated_since is not None:
            where.append("updated_at >= ?")
            args.append(float(updated_since))
        if filled_only:
            where.append("filled > 0")
        with self._read() as c:
            return [r[0] for r in c.execute(
                f"SELECT client_order_id FROM orders WHERE {' AND '.join(where)} "
                "ORDER BY updated_at", args)]

    def recorded_fill_amount(self, cid: str) -> float:
        """The sum of the fills recorded for one order (indexed; nothing decrypted)."""
        with self._read() as c:
            return float(_one(c, "SELECT COALESCE(SUM(amount), 0) FROM fills "
                                 "WHERE client_order_id = ?", (cid,))[0])

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

    def order_times(self) -> tuple[float | None, float | None]:
        """(created_at of the oldest order not final, of the newest order); None when none."""
        with self._read() as c:
            live = c.execute("SELECT MIN(created_at) FROM orders WHERE state IN "
                             "('INTENT','SUBMITTING','UNKNOWN','OPEN')").fetchone()[0]
            newest = c.execute("SELECT MAX(created_at) FROM orders").fetchone()[0]
        return live, newest

    def counts(self) -> dict[str, int]:
        """Rows per table: the kept counters for orders, fills and transitions (nothing is
        recounted), a count for the small tables."""
        with self._read() as c:
            kept = _counters(c)
            tables = {r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            return {t: kept[t] if t in kept else _one(c, f"SELECT COUNT(*) FROM {t}")[0]
                    for t in schema.TABLES if t in tables}

    def orders_by_state(self) -> dict[str, int]:
        """How many orders are in each state (non-zero ones), from the kept counters."""
        with self._read() as c:
            return {k.split(".", 1)[1]: v for k, v in _counters(c).items()
                    if k.startswith("orders.") and v}

    def check(self, *, full: bool = False) -> dict[str, Any]:
        """Integrity (``quick_check``; ``integrity_check`` when ``full``), schema version, row
        counts, orders by state, WAL size."""
        pragma = "integrity_check" if full else "quick_check"
        with self._read() as c:
            integrity = "; ".join(r[0] for r in c.execute(f"PRAGMA {pragma}").fetchall())
            version = schema.current_version(c)
        wal = self.path.with_name(self.path.name + "-wal")
        return {"integrity": integrity, "schema_version": version, "counts": self.counts(),
                "orders_by_state": self.orders_by_state(),
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "needs_reconciliation": self.needs_reconciliation,
                "key_id": self.meta_value("key_id")}

    def verify_encryption(self, cipher: FieldCipher, *, newest: int | None = None) -> int:
        """Decrypt every encrypted value with ``cipher`` (e.g. the new key alone) -- or those of
        the ``newest`` rows of each table (a quick check) -- and the canary; count them.

        Raises FieldDecryptError on the first value it cannot open."""
        count = 0
        for table, _pk, cols in schema.ENCRYPTED:
            last = 0
            if newest is not None:
                with self._read() as c:
                    top = _one(c, f"SELECT MAX(rowid) FROM {table}")[0] or 0
                last = max(top - newest, 0)
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
