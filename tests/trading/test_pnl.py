"""P&L from a real state.db: positions, fills and fees by the bot's own average-cost rule."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from resilience import schema
from resilience.state import apply_fill
from tradeguard.config import RiskConfig
from trading.pnl import pnl_report, trades
from trading.risk import utc_day

FILLS = [  # ts, symbol, side, amount, price, fee (USDT)
    (1000.0, "BTC/USDT", "buy", 1.0, 100.0, 0.1),
    (2000.0, "BTC/USDT", "sell", 0.5, 120.0, 0.06),
    (3000.0, "ETH/USDT", "buy", 2.0, 10.0, 0.02),
    (4000.0, "ETH/USDT", "sell", 2.0, 9.0, 0.018),
]


def _state_db(path: Path) -> Path:
    db = path / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("BEGIN IMMEDIATE")
    schema.migrate(conn)  # the real tables, and the trigger that keeps the fee totals
    conn.commit()
    book: dict[str, tuple[float, float, float]] = {}
    for i, (ts, sym, side, amt, price, fee) in enumerate(FILLS):
        conn.execute("INSERT INTO fills VALUES (?, ?, ?, NULL, ?, ?, ?, ?, 'USDT', ?, NULL)",
                     (str(i), sym, f"tg-tg1-{i}", side, amt, price, fee, ts))
        book[sym] = apply_fill(*book.get(sym, (0.0, 0.0, 0.0)), side=side, qty=amt, price=price,
                               fee=fee, fee_currency="USDT", base=sym.split("/")[0], quote="USDT")
    for sym, (amount, cost, pnl) in book.items():
        conn.execute("INSERT INTO positions VALUES (?, ?, ?, ?, 0)", (sym, amount, cost, pnl))
    conn.commit()
    conn.close()
    return db


def test_report_per_symbol_total_today_and_fees(tmp_path: Path) -> None:
    db = _state_db(tmp_path)
    now = time.time()
    detail = {"pnl": {"prices": {"BTC/USDT": 110.0, "ETH/USDT": 9.5}, "equity": 10012.5,
                      "day_start": {"day": utc_day(now), "pnl": 4.0, "equity": 10000.0}}}
    r = pnl_report(db, detail, RiskConfig(daily_loss_limit=500.0, daily_loss_limit_pct=0.05), now)
    btc, eth = r.symbols["BTC/USDT"], r.symbols["ETH/USDT"]
    assert btc.realized == pytest.approx(0.5 * 20 - 0.1 - 0.06)
    assert btc.amount == 0.5 and btc.avg_price == pytest.approx(100.0)
    assert btc.unrealized == pytest.approx(0.5 * 110 - 50)
    assert eth.realized == pytest.approx(2 * -1 - 0.02 - 0.018) and eth.unrealized == 0.0
    assert r.realized == pytest.approx(9.84 - 2.038)
    assert r.total == pytest.approx(9.84 - 2.038 + 5)
    assert r.fees == {"USDT": pytest.approx(0.198)}
    assert r.daily_pnl == pytest.approx(r.total - 4.0)
    assert r.daily_loss_limit == pytest.approx(5.0)  # 0.05 % of 10,000 is tighter than 500
    assert r.daily_loss_used == 0.0 and r.equity == 10012.5
    d = r.to_dict()
    assert d["symbols"]["BTC/USDT"]["avg_price"] == pytest.approx(100.0)


def test_unknowns_stay_unknown(tmp_path: Path) -> None:
    db = _state_db(tmp_path)
    yesterday = {"day": "2000-01-01", "pnl": 0.0, "equity": 1.0}
    r = pnl_report(db, {"pnl": {"prices": {}, "equity": None, "day_start": yesterday}},
                   RiskConfig(daily_loss_limit=0.0), time.time())
    assert r.symbols["BTC/USDT"].unrealized is None and r.unrealized is None and r.total is None
    assert r.daily_pnl is None and r.daily_loss_limit is None and r.daily_loss_used is None
    r = pnl_report(db, {"pnl": "garbage"}, RiskConfig(), time.time())  # any bot may write detail
    assert r.equity is None and r.realized == pytest.approx(9.84 - 2.038)


def test_a_loss_uses_the_limit(tmp_path: Path) -> None:
    db = _state_db(tmp_path)
    now = time.time()
    detail = {"pnl": {"prices": {"BTC/USDT": 60.0}, "day_start": {"day": utc_day(now), "pnl": 0.0}}}
    r = pnl_report(db, detail, RiskConfig(daily_loss_limit=20.0), now)
    assert r.daily_pnl == pytest.approx(7.802 + (30 - 50))
    assert r.daily_loss_used == pytest.approx(-r.daily_pnl / 20.0)


def test_trades_replay_realized_pnl_per_fill(tmp_path: Path) -> None:
    db = _state_db(tmp_path)
    rows = trades(db)
    assert [t.realized_pnl for t in rows] == pytest.approx([-0.1, 10 - 0.06, -0.02, -2 - 0.018])
    assert [t.position_after for t in rows] == pytest.approx([1.0, 0.5, 2.0, 0.0])
    assert sum(t.realized_pnl for t in rows) == pytest.approx(
        sum(p.realized for p in pnl_report(db, {}, RiskConfig(), time.time()).symbols.values()))
    assert [t.ts for t in trades(db, since=2500.0)] == [3000.0, 4000.0]
