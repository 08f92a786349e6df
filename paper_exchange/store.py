"""The paper exchange's own SQLite database (``<data dir>/paper/exchange.db``, WAL, synchronous FULL):
orders, fills, balances, prices and 1-minute candles, so a restart loses nothing.

Decimals are stored as their exact text. Every engine operation writes inside one transaction
(:meth:`Store.transaction`), so an order, its fills and the balance changes land together.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import sqlite_utils

from paper_exchange.ledger_types import Fill, Order
from paper_exchange.prices import Candle, SymbolState

SCHEMA_VERSION = 2

_ORDER_COLS = ("order_id", "client_order_id", "symbol", "side", "type", "time_in_force", "price",
               "orig_qty", "executed_qty", "cum_quote", "status", "reserved", "reserved_asset",
               "time", "update_time", "stop_price", "orig_quote_qty", "is_working", "working_time")
# version 2: stop orders and quote-quantity orders; a client order id may repeat (Binance reuse rule)
_V2_ORDER_COLS = {"stop_price": "TEXT NOT NULL DEFAULT '0'", "orig_quote_qty": "TEXT NOT NULL DEFAULT '0'",
                  "is_working": "INTEGER NOT NULL DEFAULT 1", "working_time": "INTEGER NOT NULL DEFAULT -1"}
_FILL_COLS = ("trade_id", "order_id", "client_order_id", "symbol", "side", "price", "qty",
              "quote_qty", "commission", "commission_asset", "time", "is_maker")
_CANDLE_COLS = ("symbol", "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades")
_DECIMAL_ORDER = {"price", "orig_qty", "executed_qty", "cum_quote", "reserved", "stop_price", "orig_quote_qty"}
_INT_ORDER = {"order_id", "time", "update_time", "is_working", "working_time"}
_DECIMAL_FILL = {"price", "qty", "quote_qty", "commission"}


def _create_schema(con: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(con)
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["orders"].create({c: (int if c in _INT_ORDER else str) for c in _ORDER_COLS},
                        pk="order_id", if_not_exists=True)
    have = {c.name for c in db["orders"].columns}
    for col, decl in _V2_ORDER_COLS.items():
        if col not in have:
            con.execute(f"ALTER TABLE orders ADD COLUMN {col} {decl}")
    con.execute("DROP INDEX IF EXISTS idx_orders_client_order_id")  # v1 had it UNIQUE
    con.execute("CREATE INDEX IF NOT EXISTS idx_orders_client_id ON orders(client_order_id)")
    db["orders"].create_index(["symbol", "status"], if_not_exists=True)
    db["fills"].create({c: (int if c in ("trade_id", "order_id", "time", "is_maker") else str)
                        for c in _FILL_COLS}, pk="trade_id", if_not_exists=True)
    db["balances"].create({"asset": str, "free": str, "locked": str}, pk="asset", if_not_exists=True)
    db["prices"].create({"symbol": str, "price": str, "step": int}, pk="symbol", if_not_exists=True)
    db["candles"].create({c: (int if c in ("open_time", "trades") else str) for c in _CANDLE_COLS},
                         pk=("symbol", "open_time"), if_not_exists=True)
    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


class Store:
    """Write-through persistence of the engine's state. Callers hold the engine lock."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            _create_schema(self.con)

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """One atomic write. ``durable=False`` skips the fsync of this commit (WAL, synchronous
        NORMAL: safe against a crash of the process, not of the machine); the next durable commit
        syncs it too."""
        if not durable:
            self.con.execute("PRAGMA synchronous=NORMAL")
        try:
            self.con.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")
        finally:
            if not durable:
                self.con.execute("PRAGMA synchronous=FULL")

    # --- loading --------------------------------------------------------------------------
    def load_orders(self) -> list[Order]:
        cur = self.con.execute(f"SELECT {', '.join(_ORDER_COLS)} FROM orders ORDER BY order_id")
        return [Order(**{c: (Decimal(v) if c in _DECIMAL_ORDER else bool(v) if c == "is_working" else v)
                         for c, v in zip(_ORDER_COLS, row)}) for row in cur]

    def load_fills(self) -> list[Fill]:
        cur = self.con.execute(f"SELECT {', '.join(_FILL_COLS)} FROM fills ORDER BY trade_id")
        return [Fill(**{c: (Decimal(v) if c in _DECIMAL_FILL else bool(v) if c == "is_maker" else v)
                        for c, v in zip(_FILL_COLS, row)}) for row in cur]

    def load_balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        return {a: (Decimal(f), Decimal(lk)) for a, f, lk in
                self.con.execute("SELECT asset, free, locked FROM balances")}

    def load_prices(self) -> dict[str, SymbolState]:
        out: dict[str, SymbolState] = {}
        for sym, price, step in self.con.execute("SELECT symbol, price, step FROM prices"):
            candles = [Candle(t, Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v), Decimal(qv), n)
                       for t, o, h, lo, c, v, qv, n in self.con.execute(
                           "SELECT open_time, open, high, low, close, volume, quote_volume, trades "
                           "FROM candles WHERE symbol = ? ORDER BY open_time", (sym,))]
            out[sym] = SymbolState(Decimal(price), step, candles)
        return out

    # --- writing (inside transaction()) ------------------------------------------------------
    def save_order(self, o: Order) -> None:
        vals = [str(getattr(o, c)) if c in _DECIMAL_ORDER else int(o.is_working) if c == "is_working"
                else getattr(o, c) for c in _ORDER_COLS]
        self.con.execute(f"INSERT OR REPLACE INTO orders({', '.join(_ORDER_COLS)}) "
                         f"VALUES ({', '.join('?' * len(_ORDER_COLS))})", vals)

    def save_fills(self, fills: list[Fill]) -> None:
        if fills:
            self.con.executemany(
                f"INSERT INTO fills({', '.join(_FILL_COLS)}) VALUES ({', '.join('?' * len(_FILL_COLS))})",
                [[str(getattr(f, c)) if c in _DECIMAL_FILL else int(f.is_maker) if c == "is_maker"
                  else getattr(f, c) for c in _FILL_COLS] for f in fills])

    def save_balance(self, asset: str, free: Decimal, locked: Decimal) -> None:
        self.con.execute("INSERT OR REPLACE INTO balances(asset, free, locked) VALUES (?, ?, ?)",
                         (asset, str(free), str(locked)))

    def save_price(self, symbol: str, st: SymbolState, candles: list[Candle]) -> None:
        """The price, step counter and the given (changed) candles of one symbol."""
        self.con.execute("INSERT OR REPLACE INTO prices(symbol, price, step) VALUES (?, ?, ?)",
                         (symbol, str(st.price), st.step))
        self.con.executemany(
            f"INSERT OR REPLACE INTO candles({', '.join(_CANDLE_COLS)}) VALUES ({', '.join('?' * 9)})",
            [(symbol, c.open_time, str(c.open), str(c.high), str(c.low), str(c.close), str(c.volume),
              str(c.quote_volume), c.trades) for c in candles])

    def prune_candles(self, symbol: str, before_ms: int) -> None:
        self.con.execute("DELETE FROM candles WHERE symbol = ? AND open_time < ?", (symbol, before_ms))
