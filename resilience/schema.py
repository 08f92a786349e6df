"""The state.db schema, its version and the forward migrations (sqlite-utils).

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``; a new database runs them all.
:func:`migrate` runs inside the caller's ``BEGIN IMMEDIATE`` transaction (sqlite-utils nests its
own statements in savepoints), so a migration interrupted by a crash leaves the old version intact.
Never edit a released migration: append a new one and bump nothing else.

Version history:
  1. meta, sequences, orders, fills, positions, kv.
  2. transitions (the audit trail of every order state change) and the query indexes.
  3. work in hand, not history: ``counters`` (rows per table and orders per state, kept by
     triggers as rows change, so nothing recounts the history) and the indexes the hot paths and
     the archiver use (orders by state and age, by creation time; transitions by order).
  4. ``fees``: fees paid per symbol and currency, kept by a trigger as fills arrive.
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # imported by migrate() when a migration runs: it and its imports cost ~8 MB
    from sqlite_utils import Database

# (table, primary key columns, encrypted columns); see docs/ENCRYPTED_COLUMNS.md for why.
ENCRYPTED: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("orders", ("client_order_id",), ("reason", "raw")),
    ("fills", ("fill_id", "symbol"), ("raw",)),
    ("kv", ("key",), ("value",)),
    ("transitions", ("id",), ("note",)),
)
TABLES = ("meta", "sequences", "orders", "fills", "positions", "kv", "transitions", "counters",
          "fees")
COUNTED = ("orders", "fills", "transitions")  # counters: "<table>" and "orders.<STATE>"


def aad_pk(table: str, row: Any) -> str:
    """The primary key a table's encrypted values are bound to (``row`` maps column -> value)."""
    cols = next(pk for t, pk, _ in ENCRYPTED if t == table)
    if len(cols) == 1:
        return str(row[cols[0]])
    return json.dumps([str(row[c]) for c in cols], separators=(",", ":"))


def _v1_core(db: Database) -> None:
    db.create_table("meta", {"key": str, "value": str}, pk="key")
    db.create_table("sequences", {"name": str, "value": int}, pk="name", not_null={"value"})
    db.create_table(
        "orders",
        {"client_order_id": str, "seq": int, "bot_id": str, "origin": str, "purpose": str,
         "symbol": str, "side": str, "type": str, "amount": float, "price": float, "state": str,
         "filled": float, "average": float, "fee": float, "exchange_order_id": str,
         "attempts": int, "created_at": float, "updated_at": float, "reason": bytes,
         "raw": bytes},
        pk="client_order_id",
        not_null={"seq", "bot_id", "origin", "purpose", "symbol", "side", "type", "amount",
                  "state", "filled", "fee", "attempts", "created_at", "updated_at"},
        defaults={"filled": 0.0, "fee": 0.0, "attempts": 0})
    # Exchange trade ids are unique per market (Binance), so the key includes the symbol.
    db.create_table(
        "fills",
        {"fill_id": str, "symbol": str, "client_order_id": str, "exchange_order_id": str,
         "side": str, "amount": float, "price": float, "fee": float, "fee_currency": str,
         "ts": float, "raw": bytes},
        pk=("fill_id", "symbol"),
        not_null={"side", "amount", "price", "fee", "ts"}, defaults={"fee": 0.0})
    db.create_table(
        "positions",
        {"symbol": str, "amount": float, "cost": float, "realized_pnl": float,
         "updated_at": float},
        pk="symbol", not_null={"amount", "cost", "realized_pnl", "updated_at"})
    db.create_table("kv", {"key": str, "value": bytes, "updated_at": float}, pk="key",
                    not_null={"updated_at"})


def _v2_audit_and_indexes(db: Database) -> None:
    # client_order_id is NULL for audit rows that belong to no order (position adjustments).
    db.create_table(
        "transitions",
        {"id": int, "client_order_id": str, "from_state": str, "to_state": str, "ts": float,
         "note": bytes},
        pk="id", not_null={"to_state", "ts"},
        foreign_keys=[("client_order_id", "orders", "client_order_id")])
    # transitions is append-only and read only for audits: no index, so that every order write
    # (which appends to it) stays cheap. One orders index serves both hot queries: by state,
    # and by state and symbol.
    db["orders"].create_index(["state", "symbol"])
    db["fills"].create_index(["client_order_id"])


_COUNTER_TRIGGERS = """
CREATE TRIGGER count_orders_insert AFTER INSERT ON orders BEGIN
  UPDATE counters SET value = value + 1 WHERE name IN ('orders', 'orders.' || NEW.state);
END;
CREATE TRIGGER count_orders_delete AFTER DELETE ON orders BEGIN
  UPDATE counters SET value = value - 1 WHERE name IN ('orders', 'orders.' || OLD.state);
END;
CREATE TRIGGER count_orders_state AFTER UPDATE OF state ON orders
WHEN NEW.state IS NOT OLD.state BEGIN
  UPDATE counters SET value = value - 1 WHERE name = 'orders.' || OLD.state;
  UPDATE counters SET value = value + 1 WHERE name = 'orders.' || NEW.state;
END;
"""


def _v3_counters_and_history_indexes(db: Database) -> None:
    # One row per counter, all present from the start: the triggers only ever UPDATE.
    from resilience.state.records import ORDER_STATES

    db.create_table("counters", {"name": str, "value": int}, pk="name", not_null={"value"})
    names = [*COUNTED, *(f"orders.{s}" for s in ORDER_STATES)]
    db["counters"].insert_all([{"name": n, "value": 0} for n in names])
    conn = db.conn
    for table in COUNTED:  # the one full count, at the migration
        conn.execute(f"UPDATE counters SET value = (SELECT COUNT(*) FROM {table}) "
                     "WHERE name = ?", (table,)).close()
    conn.execute("UPDATE counters SET value = (SELECT COUNT(*) FROM orders o WHERE "
                 "'orders.' || o.state = counters.name) WHERE name LIKE 'orders.%'").close()
    triggers = _COUNTER_TRIGGERS.split("END;")[:-1]
    for table in ("fills", "transitions"):
        for event, sign in (("INSERT", "+"), ("DELETE", "-")):
            triggers.append(f"CREATE TRIGGER count_{table}_{event.lower()} AFTER {event} ON {table} "
                            f"BEGIN UPDATE counters SET value = value {sign} 1 WHERE name = '{table}'; ")
    for stmt in triggers:
        conn.execute(stmt + "END;").close()
    # the archiver: final orders by age; the order-rate limit: orders by creation time; moving
    # an order's audit rows with it: transitions by order
    db["orders"].create_index(["state", "updated_at"])
    db["orders"].create_index(["created_at"])
    db["transitions"].create_index(["client_order_id"])


def _v4_fee_totals(db: Database) -> None:
    # Fees paid per symbol and currency, kept as fills arrive (the P&L views read them on every
    # health snapshot: a sum over fills would read the whole history). Archiving a fill moves
    # it, it does not un-pay it: no delete trigger.
    db.create_table("fees", {"symbol": str, "currency": str, "total": float},
                    pk=("symbol", "currency"), not_null={"total"})
    conn = db.conn
    conn.execute("INSERT INTO fees(symbol, currency, total) SELECT symbol, "
                 "COALESCE(fee_currency, '?'), SUM(fee) FROM fills "
                 "GROUP BY symbol, COALESCE(fee_currency, '?')").close()
    conn.execute("CREATE TRIGGER fees_on_fill AFTER INSERT ON fills BEGIN "
                 "INSERT INTO fees(symbol, currency, total) "
                 "VALUES (NEW.symbol, COALESCE(NEW.fee_currency, '?'), NEW.fee) "
                 "ON CONFLICT(symbol, currency) DO UPDATE SET total = total + excluded.total; "
                 "END;").close()


MIGRATIONS: list[Callable[[Database], None]] = [_v1_core, _v2_audit_and_indexes,
                                                _v3_counters_and_history_indexes, _v4_fee_totals]
SCHEMA_VERSION = len(MIGRATIONS)


def _first_row(conn: sqlite3.Connection, sql: str) -> Any:
    """The first row (or None), with the statement finished: it may run inside a transaction."""
    cur = conn.execute(sql)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in ``meta`` (0 for a new, empty database)."""
    has_meta = _first_row(
        conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    if not has_meta:
        return 0
    row = _first_row(conn, "SELECT value FROM meta WHERE key = 'schema_version'")
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply the migrations up to ``target`` inside the caller's transaction; the versions applied."""
    if not conn.in_transaction:
        raise RuntimeError("migrate() must run inside a BEGIN IMMEDIATE transaction")
    # The counters' triggers need it: INSERT OR REPLACE (the archiver's copy) must fire the delete
    # trigger of the row it replaces. sqlite-utils' Database() set it on every connection that
    # migrate() saw; it is now imported only when a migration runs, so the pragma is set here.
    _first_row(conn, "PRAGMA recursive_triggers = ON")
    applied: list[int] = []
    versions = range(current_version(conn) + 1, target + 1)
    if not versions:
        return applied
    from sqlite_utils import Database

    db = Database(conn, execute_plugins=False)
    for version in versions:
        MIGRATIONS[version - 1](db)
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(version),)
                     ).close()
        applied.append(version)
    return applied
