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
        def raise_sequence(self, name, seen) -> None  # above ids seen on the exchange
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
        def batch(self)  # context: one transaction across many calls (bulk writers, not orders)
        def backup(self, dest: Path) -> None
        def check(self) -> dict
        def transitions(self, cid=None) -> list[Transition]          # the audit trail
        def reencrypt(self, *, batch_size=500, progress=None) -> int  # key rotation
        def verify_encryption(self, cipher) -> int
        def get_order(self, cid, *, decrypt=True); def order_ids(states, *, updated_since=None,
            filled_only=False) -> list[str]; def recorded_fill_amount(cid) -> float  # hot paths
        def counts(self) -> dict; def orders_by_state(self) -> dict  # kept counters, no recount
    def open_readonly(path, cipher=None) -> StateReader  # same reads; never decrypts without a cipher
    class Archiver(store, *, max_age_s, batch=200): step(time_limit_s=0.05, now=None); run()
    def history_fills(state_db, cipher=None, *, symbol=None, since=None, until=None) -> list[Fill]
    def archived_order(state_db, cid) -> Order | None; def archive_files(state_db) -> list[Path]
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
* ``PRAGMA quick_check`` runs at open only when asked: ``integrity="auto"`` (the bot) scans after
  an unclean shutdown or a change to the file since its last clean close (``state.db.session``),
  ``"always"`` every time, ``"never"`` (the default; the watchdog's emergency path) not at all.
* A key that cannot decrypt the canary in ``meta`` raises WrongKeyError and touches nothing.
* A database newer than this code raises SchemaVersionError and touches nothing.

Client order id sequences start at the current Unix time in microseconds the first time they are
used in a database (then count up by one), so a database that was lost or quarantined never hands
out an id that an older order on the exchange already carries: that would take more than a
million orders a second. ``tg-<12 chars>-x<16 digits>`` stays within Binance's 36 characters.

Modules, from the bottom up: ``records`` (states, transitions, dataclasses), ``connection``
(SQLite connections and SQL helpers), ``files`` (fsync, quarantine, backup), ``canary`` (the key
canary), ``probe`` (checks before use), ``positions`` (average-cost maths), ``validation`` (input
rules), ``reads`` (the shared reads and StateReader), ``session`` (the clean-shutdown marker), ``store``
(StateStore, the writer), ``archive`` (retention: monthly archives and history reads).

Work in hand, not history: the hot paths (startup, ticks, reconciliation, the health snapshot)
use indexed queries on live orders or a recent window, ``counts()``/``orders_by_state()`` read
counters the schema's triggers keep, and ``get_order(cid, decrypt=False)`` looks at a closed order
without decrypting it. Closed orders older than ``[retention] archive_after_days`` move to
``data/archive/state-YYYY-MM.db`` (see :mod:`resilience.state.archive`).
"""
from __future__ import annotations

from resilience.state.canary import CANARY, stored_key_id
from resilience.state.connection import BUSY_TIMEOUT_MS, SYNCHRONOUS
from resilience.state.positions import apply_fill
from resilience.state.reads import StateReader, open_readonly
from resilience.state.records import (ALLOWED, ORDER_STATES, ORIGINS, PURPOSES, SIDES, TERMINAL,
                                      Fill, NewOrder, Order, Position, Transition)
from resilience.state.store import EventCallback, Progress, StateStore
from resilience.state.archive import Archiver, archive_files, archived_order, history_fills

__all__ = [
    "ALLOWED", "BUSY_TIMEOUT_MS", "CANARY", "ORDER_STATES", "ORIGINS", "PURPOSES", "SIDES",
    "SYNCHRONOUS", "TERMINAL",
    "Archiver", "EventCallback", "Fill", "NewOrder", "Order", "Position", "Progress", "Transition",
    "StateReader", "StateStore",
    "apply_fill", "archive_files", "archived_order", "history_fills", "open_readonly",
    "stored_key_id",
]
