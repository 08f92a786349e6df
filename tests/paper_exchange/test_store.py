"""The store opens a version-1 database (before stop orders and id reuse) and upgrades it in place."""
from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal

from paper_exchange.store import Store


def test_v1_database_is_upgraded_and_allows_a_reused_client_id(tmp_path) -> None:
    db = tmp_path / "exchange.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE orders (order_id INTEGER PRIMARY KEY, client_order_id TEXT, symbol TEXT, side TEXT,
            type TEXT, time_in_force TEXT, price TEXT, orig_qty TEXT, executed_qty TEXT, cum_quote TEXT,
            status TEXT, reserved TEXT, reserved_asset TEXT, time INTEGER, update_time INTEGER);
        CREATE UNIQUE INDEX idx_orders_client_order_id ON orders(client_order_id);
        INSERT INTO orders VALUES (1000001, 'tg-1', 'BTCUSDT', 'BUY', 'MARKET', '', '0', '0.001', '0.001',
            '60', 'FILLED', '0', 'USDT', 1, 1);
    """)
    con.commit()
    con.close()
    store = Store(db)
    [old] = store.load_orders()
    assert (old.client_order_id, old.stop_price, old.orig_quote_qty, old.is_working) == \
        ("tg-1", Decimal(0), Decimal(0), True)
    again = replace(old, order_id=1000002, stop_price=Decimal("59000"), is_working=False)
    with store.transaction():
        store.save_order(again)  # the same client id: no longer UNIQUE
    store.close()
    reloaded = Store(db).load_orders()
    assert [(o.order_id, o.client_order_id, o.stop_price, o.is_working) for o in reloaded] == \
        [(1000001, "tg-1", Decimal(0), True), (1000002, "tg-1", Decimal("59000"), False)]
