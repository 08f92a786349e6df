"""The writer, StateStore: opens (or quarantines and recreates) the database, commits changes."""
from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import sqlite3
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from blackbox.redact import redact_text
from resilience import schema
from resilience.crypto import FieldCipher
from resilience.state.canary import CANARY, _canary_blob
from resilience.state.connection import (SYNCHRONOUS, _Connection, _begin_immediate, _connect,
                                         _no_busy_wait, _one, _rows_after)
from resilience.state.files import _quarantine, _side_files
from resilience.state.positions import _DUST, apply_fill
from resilience.state.probe import _probe, _usable_version
from resilience.state.reads import _Reads
from resilience.state.session import CHANGED, Session

TRANSITIONS_FLOOR_KEY = "transitions_archived_max_id"  # meta: the highest transition id archived
from resilience.state.records import (ALLOWED, ORDER_STATES, ORIGINS, PURPOSES, SIDES, Fill,
                                      NewOrder, Order)
from resilience.state.validation import _BOT_ID_RE, _CID_RE, _TRANSITION_FIELDS, _finite, _symbol
from tradeguard.exceptions import StateError

log = logging.getLogger("resilience.state")  # the package's name: JSON logs and filters use it

EventCallback = Callable[..., None]
Progress = Callable[[str, int], None]


def _clean(text: str) -> str:
    """Free text as it may be stored: exchange error messages echo requests (API keys,
    signatures) and backups copy this file with its key beside it, so the same redaction as
    the logs and the black box runs here, for every writer, before anything is encrypted."""
    return redact_text(text) if text else text


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


SEQUENCES = ("orders", "emergency")
INTEGRITY = ("auto", "always", "never")


def _sequence_start() -> int:
    """Where a sequence starts on first use: Unix time in µs (see the package docstring)."""
    return int(time.time() * 1_000_000)


class StateStore(_Reads):
    """The writer (the bot; the watchdog for emergency orders). See the package docstring."""

    def __init__(self, path: Path, cipher: FieldCipher | None, *, synchronous: str = "FULL",
                 on_event: EventCallback | None = None, checkpoint_every: int = 2000,
                 checkpoint_interval_s: float = 300.0, integrity: str = "never",
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self._clock = clock  # the time rows are stamped with (a history builder sets the past)
        if integrity not in INTEGRITY:
            raise StateError(f"integrity = {integrity!r}: must be one of {', '.join(INTEGRITY)}")
        if cipher is not None and not isinstance(cipher, FieldCipher):
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
        self._batched: _Connection | None = None  # inside batch(): its transaction's connection
        self._last_checkpoint = time.monotonic()
        self.quarantined: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        self._session = Session(self.path)
        problem = None
        changed = False
        self.integrity_checked = False  # PRAGMA quick_check ran at this open
        verified = True
        if self.path.exists():
            unclean = self._session.needs_check()
            self.integrity_checked = integrity == "always" or (integrity == "auto" and unclean)
            verified = self.integrity_checked or not unclean
            if unclean and not self.integrity_checked:
                log.info("state.db was not closed cleanly; integrity check skipped (integrity=%s)",
                         integrity)
            problem = _probe(self.path, cipher, quick_check=self.integrity_checked)
            changed = self._session.why == CHANGED and not problem
            if self.integrity_checked and unclean and not problem:
                # said out loud: a file changed behind the store's back may be damaged where
                # quick_check cannot see (free pages, values inside records)
                self._emit("state.checked", f"state.db was checked at open because "
                           f"{self._session.why}: quick_check passed"
                           + ("; every record is verified against the exchange before trading"
                              if changed else ""), why=self._session.why, severity="warning")
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
            self._conn = _connect(self.path, readonly=False, synchronous=sync,
                                  new=self.path.stat().st_size == 0)
        except sqlite3.DatabaseError as e:
            raise StateError(f"cannot open {self.path}: {e}") from None
        try:
            self._init_schema()
            self._session.open(verified=verified or problem is not None)
            if changed:  # the exchange is the truth: the bot rebuilds from it before trading
                self.set_needs_reconciliation(True, reason=f"state.db {CHANGED}")
        except BaseException:
            self._closed = True
            self._conn.close()
            raise

    @classmethod
    def open(cls, path: Path, cipher: FieldCipher | None, *, synchronous: str = "FULL",
             on_event: EventCallback | None = None, integrity: str = "never") -> "StateStore":
        """Open (create, migrate, or quarantine and recreate) the state database.

        ``integrity``: when to run ``PRAGMA quick_check`` before use -- ``auto`` only after an
        unclean shutdown or a change to the file since its last clean close (see
        :mod:`resilience.state.session`), ``always``, or ``never`` (the watchdog's emergency
        path: a damaged page then surfaces as StateCorruptError on the read that meets it).

        ``cipher=None`` is the keyless mode of the emergency flatten (no field key, or not the one
        the file was written under): the key canary is neither checked nor written, encrypted
        columns are written as NULL and read as None, kv writes are refused. Amounts, states and
        positions are plain columns, so orders and fills are recorded in full."""
        return cls(path, cipher, synchronous=synchronous, on_event=on_event, integrity=integrity)

    def close(self) -> None:
        """Close the connection; the last writer out marks the file cleanly closed."""
        with self._lock:
            was_open = not self._closed
            super().close()
            if was_open:
                self._session.close()

    def _enc(self, table: str, pk: str, column: str, value: str | bytes) -> bytes | None:
        """An encrypted column's value; NULL in keyless mode (see ``open``)."""
        if self._cipher is None:
            return None
        return self._cipher.encrypt(table, pk, column, value)

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
            if self._cipher is not None and _canary_blob(c) is None:
                blob = self._enc("meta", "canary", "value", CANARY)
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
    def batch(self) -> Iterator["StateStore"]:
        """Hold one transaction across every write made in the block (for bulk writers such as
        an import or a history builder, never the order path): the rows are exactly what the same
        calls write alone, but they become durable together, when the block ends. Each call
        inside is still all or nothing (a SAVEPOINT): one that raises leaves nothing of itself
        and the batch goes on; an exception leaving the block rolls the whole batch back. Other
        threads using this store wait for the block; other processes' writers wait up to the
        busy timeout, so keep batches short (a few thousand calls)."""
        with self._lock:
            if self._batched is not None:
                raise StateError("batch() blocks do not nest")
            with self._write() as c:
                self._batched = c
                try:
                    yield self
                finally:
                    self._batched = None

    def _outside_batch(self, what: str) -> None:
        if self._batched is not None:
            raise StateError(f"{what}() cannot run inside a batch() block (it ends transactions)")

    @contextmanager
    def _savepoint(self, c: _Connection) -> Iterator[_Connection]:
        """One write inside a batch: all or nothing, without ending the batch's transaction."""
        _one(c, "SAVEPOINT write")
        try:
            yield c
        except BaseException:
            c.finish_statements()
            _one(c, "ROLLBACK TO write")
            _one(c, "RELEASE write")
            raise
        c.finish_statements()
        _one(c, "RELEASE write")

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        """One short BEGIN IMMEDIATE transaction; commits on success, rolls back on error.

        Every cursor opened inside is closed before COMMIT/ROLLBACK: a statement still running
        (its cursor kept alive by anyone) would make COMMIT fail. A COMMIT that fails anyway
        is rolled back, so the connection never stays inside a dead transaction. Inside
        :meth:`batch` (same thread: the lock is held) a write is a savepoint of its transaction."""
        with self._read() as c:
            if self._batched is not None:
                with self._savepoint(c):
                    yield c
                return
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
                self.checkpoint(wait=False)  # on the order path: never wait for readers

    def _audit(self, c: sqlite3.Connection, cid: str | None, frm: str | None, to: str,
               note: str, now: float) -> None:
        # The id is chosen here (under the write lock) because the note is bound to it.
        # above the highest id ever used, archived ones included: an id is never reused
        tid = _one(c, "SELECT MAX(COALESCE((SELECT MAX(id) FROM transitions), 0), COALESCE(("
                      "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0)) + 1",
                   (TRANSITIONS_FLOOR_KEY,))[0]
        blob = self._enc("transitions", tid, "note", _clean(note)) if note else None
        c.execute("INSERT INTO transitions(id, client_order_id, from_state, to_state, ts, note) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (tid, cid, frm, to, now, blob))

    # --- reconciliation flag ------------------------------------------------------------
    def set_needs_reconciliation(self, flag: bool, reason: str = "") -> None:
        """Mark (or clear) that the bot must rebuild its state from the exchange before trading."""
        with self._write() as c:
            self._meta_set(c, "needs_reconciliation", "1" if flag else "0")
            self._meta_set(c, "needs_reconciliation_reason", _clean(reason) if flag else "")

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
                       (name, _sequence_start()))[0]
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('bot_id', ?)", (bot_id,))
        return f"tg-{bot_id}-{'x' if emergency else ''}{seq}", seq

    def raise_sequence(self, name: str, seen: int) -> None:
        """Make sequence ``name`` (``orders`` or ``emergency``) hand out only numbers above
        ``seen`` (the highest the exchange has seen); never lowers it."""
        if name not in SEQUENCES:
            raise StateError(f"sequence {name!r}: must be one of {', '.join(SEQUENCES)}")
        if isinstance(seen, bool) or not isinstance(seen, int) or seen < 0:
            raise StateError(f"seen = {seen!r}: must be a non-negative integer")
        with self._write() as c:
            c.execute("INSERT INTO sequences(name, value) VALUES (?, ?) ON CONFLICT(name) "
                      "DO UPDATE SET value = MAX(value, ?)",
                      (name, max(seen, _sequence_start()), seen))

    def add_intent(self, o: NewOrder) -> Order:
        """Commit a new order as INTENT (durably) before anything is sent; duplicate id -> StateError."""
        self._validate_new(o)
        price = None if o.price is None else float(o.price)
        now = self._clock()
        text = _clean(o.reason)
        with self._write() as c:
            reason = self._enc("orders", o.client_order_id, "reason", text) if text else None
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
                     now, now, text or None, None)

    @staticmethod
    def _validate_new(o: NewOrder) -> None:
        if not isinstance(o.client_order_id, str) or not _CID_RE.fullmatch(o.client_order_id):
            raise StateError(f"client_order_id {o.client_order_id!r}: must match "
                             f"{_CID_RE.pattern}")
        _symbol(o.symbol)
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
        now = self._clock()
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
                out[k] = self._enc("orders", cid, "reason", _clean(str(v))) if v else None
            elif k == "raw":
                out[k] = None if v is None else self._enc("orders", cid, "raw", _dumps(v))
        return out

    # --- fills and positions ------------------------------------------------------------
    def add_fill(self, f: Fill) -> bool:
        """Record a fill and update its position in one transaction; False if already known."""
        if f.side not in SIDES:
            raise StateError(f"fill {f.fill_id}: side {f.side!r} must be buy or sell")
        _symbol(f.symbol, f"fill {f.fill_id}: symbol")
        qty = _finite("fill amount", f.amount, positive=True)
        price = _finite("fill price", f.price, positive=True)
        fee = _finite("fill fee", f.fee)
        fill_id = str(f.fill_id)
        pk = schema.aad_pk("fills", {"fill_id": fill_id, "symbol": f.symbol})
        raw = None if f.raw is None else self._enc("fills", pk, "raw", _dumps(f.raw))
        now = self._clock()
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
        _symbol(symbol)
        try:
            new = float(amount)
        except (TypeError, ValueError):
            raise StateError(f"amount = {amount!r}: must be a number") from None
        if not math.isfinite(new):
            raise StateError(f"amount = {amount!r}: must be finite")
        price = _finite("price", price, positive=True, allow_none=True)
        now = self._clock()
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
        if self._cipher is None:
            raise StateError(f"kv {key!r} not written: opened without the field key (kv values "
                             "are encrypted)")
        blob = self._enc("kv", key, "value", text)
        with self._write() as c:
            c.execute("INSERT INTO kv(key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                      "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                      (key, blob, self._clock()))

    # --- maintenance --------------------------------------------------------------------
    def release_free_pages(self, pages: int = 1000) -> None:
        """Give up to ``pages`` free pages back to the file system (databases created with
        incremental auto-vacuum; a no-op for older ones). A short write of its own."""
        with self._read() as c:
            self._outside_batch("release_free_pages")
            c.executescript(f"PRAGMA incremental_vacuum({int(pages)})")

    def checkpoint(self, *, wait: bool = True) -> None:
        """Copy the WAL into the database and truncate it (bounded WAL); best effort with readers.

        ``wait=False`` copies what it can and returns at once when a reader holds an older
        snapshot (the WAL is truncated at a later checkpoint) instead of waiting up to the busy
        timeout for it."""
        with self._read() as c, (nullcontext() if wait else _no_busy_wait(c)):
            self._outside_batch("checkpoint")
            busy, log_frames, done = _one(c, "PRAGMA wal_checkpoint(TRUNCATE)")
            self._last_checkpoint = time.monotonic()
            self._writes = 0
            if busy:
                log.debug("wal checkpoint incomplete (%s of %s frames): readers active",
                          done, log_frames)

    def reencrypt(self, *, batch_size: int = 500, progress: Progress | None = None) -> int:
        """Re-encrypt every value not under the current key, in short batches; count changed.

        Safe to kill at any point: each batch is one transaction and each value names its key."""
        if self._cipher is None:
            raise StateError("re-encryption needs the field key")
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
