"""State store throughput, measured side by side in one run: ``python -m benchmarks.bench_state``.

* durable order intents per second (``StateStore.add_intent``: synchronous=FULL, encrypted
  reason, audit row, one transaction) beside raw ``sqlite3`` single-row inserts with WAL and
  synchronous=FULL on the same disk (target: the store reaches >= 50% of raw);
* a whole new order (``next_client_order_id`` + ``add_intent``: two durable commits);
* AES-GCM encrypt + decrypt of one 200-byte value per second.
Rounds alternate between the contenders so that disk noise hits both; medians are printed.
"""
from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from resilience.crypto import FieldCipher
from resilience.state import NewOrder, StateStore

ROUNDS = 7
WRITES = 300
CRYPTO_OPS = 20000


def _raw_connection(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, symbol TEXT, amount REAL, state TEXT, "
                 "created_at REAL, reason BLOB)")
    return conn


def _raw_inserts(conn: sqlite3.Connection, n: int, start: int) -> float:
    payload = os.urandom(60)
    t0 = time.perf_counter()
    for i in range(start, start + n):  # autocommit: one durable transaction per row
        conn.execute("INSERT INTO t VALUES (?, 'BTC/USDT', 0.01, 'INTENT', ?, ?)",
                     (f"tg-b-{i}", time.time(), payload))
    return n / (time.perf_counter() - t0)


def _intents(store: StateStore, n: int, start: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        store.add_intent(NewOrder(f"tg-b-{i}", i, "b", "BTC/USDT", "buy", "limit", 0.01,
                                  price=100.0, reason="ema cross above 100.5 on 1m candles"))
    return n / (time.perf_counter() - t0)


def _new_orders(store: StateStore, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        cid, seq = store.next_client_order_id("b")
        store.add_intent(NewOrder(cid, seq, "b", "BTC/USDT", "buy", "market", 0.01,
                                  reason="ema cross"))
    return n / (time.perf_counter() - t0)


def _crypto(cipher: FieldCipher, n: int) -> float:
    value = os.urandom(200)
    t0 = time.perf_counter()
    for i in range(n):
        blob = cipher.encrypt("orders", "tg-b-1", "raw", value)
        cipher.decrypt("orders", "tg-b-1", "raw", blob)
    return n / (time.perf_counter() - t0)


def main() -> int:
    cipher = FieldCipher.from_keys(os.urandom(32))
    with tempfile.TemporaryDirectory(prefix="bench_state_", dir=os.environ.get("BENCH_DIR")) as d:
        store = StateStore.open(Path(d) / "state.db", cipher, synchronous="FULL")
        conn = _raw_connection(Path(d) / "raw.db")
        raw, intents, orders, crypto = [], [], [], []
        for r in range(ROUNDS):
            raw.append(_raw_inserts(conn, WRITES, r * WRITES))
            intents.append(_intents(store, WRITES, r * WRITES))
            orders.append(_new_orders(store, WRITES // 3))
            crypto.append(_crypto(cipher, CRYPTO_OPS))
        store.close()
        conn.close()
        where = d
    raw_m, int_m = statistics.median(raw), statistics.median(intents)
    print(f"state store benchmark ({ROUNDS} rounds, medians; temp dir {where}, "
          f"{os.cpu_count()} cores, SQLite {sqlite3.sqlite_version})")
    print(f"  raw sqlite3 insert, WAL + FULL, 1 row/commit : {raw_m:9.0f} /s")
    ratio = statistics.median(i / r for i, r in zip(intents, raw))  # paired: same disk moment
    print(f"  StateStore.add_intent (FULL, encrypted)      : {int_m:9.0f} /s "
          f"({100 * ratio:.0f}% of raw, median of per-round ratios; target >= 50%)")
    print(f"  next_client_order_id + add_intent            : {statistics.median(orders):9.0f} /s")
    print(f"  AES-GCM encrypt+decrypt, 200-byte value      : {statistics.median(crypto):9.0f} /s")
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
