"""Work in hand, not history: with thousands of closed orders in state.db, startup recovery, ticks,
reconciliation and the health snapshot touch none of them.

A real bot (in-process, so its SQL can be traced) trades on the paper exchange over HTTP with a
history of closed orders written through the store's API. Every statement run on state.db by
any connection is recorded and planned with EXPLAIN QUERY PLAN: none may scan the orders, fills
or transitions tables (each must search an index). Every decryption is recorded: no history row
is ever decrypted.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time

import pytest

from resilience.crypto import FieldCipher
from tests.helpers.fixtures_bot import FAST_ENV, FAST_STRATEGY
from tests.helpers.history import build_history
from tests.helpers.proc import wait_until

HISTORY = 2000
DAY = 86400.0
_SKIP = re.compile(r"^\s*(--|BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE|CREATE)", re.I)
_FULL_SCAN = re.compile(r"\bSCAN (orders|fills|transitions)\b")


@pytest.fixture
def traced(monkeypatch):
    """Statements run on any state.db connection, and every (table, pk) decrypted."""
    statements: list[str] = []
    decrypted: list[tuple[str, str]] = []
    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        conn = real_connect(database, *args, **kwargs)
        name = str(database)
        if "state.db" in name and "/archive/" not in name:
            conn.set_trace_callback(statements.append)
        return conn

    real_decrypt = FieldCipher.decrypt

    def decrypt(self, table, pk, column, blob):
        decrypted.append((table, str(pk)))
        return real_decrypt(self, table, pk, column, blob)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(FieldCipher, "decrypt", decrypt)
    return statements, decrypted


def _scans(db, statements: list[str]) -> dict[str, list[str]]:
    """Statement -> the plan lines that scan a history table."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    try:
        for sql in sorted(set(statements)):
            if _SKIP.match(sql):
                continue
            plan = [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql)]
            bad = [p for p in plan if _FULL_SCAN.search(p)]
            if bad:
                out[sql[:200]] = bad
    finally:
        con.close()
    return out


@pytest.mark.timeout(300)  # building the history through the API takes most of it
def test_startup_ticks_reconciliation_and_health_never_touch_closed_orders(paper_exchange, traced):
    from blackbox import recorder
    from bot.engine import Bot
    from bot.main import build_runtime
    from bot.strategy import load_strategy
    from resilience.keys import ensure_cipher
    from tradeguard.config import load_config
    from trading.failpoints import Failpoints
    from watchdog.health.snapshot import build_snapshot
    from watchdog.health.statedb import read_state_summary

    px = paper_exchange
    env = {**FAST_ENV, **px.env, "TRADEGUARD_BOT_STRATEGY_PARAMS": json.dumps(FAST_STRATEGY),
           "TRADEGUARD_BOT_RECONCILE_INTERVAL_S": "1"}
    cfg = load_config(px.config_file, env=env)
    paths = cfg.runtime.ensure()
    cipher = ensure_cipher(paths, allow_generate=True, environ={})[0]
    now = time.time()
    history = set(build_history(paths.state_db, cipher, HISTORY, start=now - 5 * DAY,
                                end=now - 3600))
    statements, decrypted = traced
    statements.clear()
    decrypted.clear()

    recorder.init(paths, "bot", cfg.blackbox)
    rt = build_runtime(cfg, Failpoints(), env)
    bot = Bot(rt, load_strategy(cfg.bot.strategy, cfg.bot.strategy_params), stop=threading.Event())
    passes: list[float] = []
    try:
        def trading() -> bool:
            bot.tick()
            if bot.reconciler.last not in passes:
                passes.append(bot.reconciler.last)
            mine = set(rt.store.order_ids(("OPEN", "FILLED"))) - history  # (decrypts nothing)
            return bot.recovered and len(mine) >= 3 and len(passes) >= 3

        wait_until(trading, timeout=60, interval=0.05, message="recovered, traded, reconciled")
        summary = read_state_summary(paths.state_db)
        snap = build_snapshot(cfg)
    finally:
        rt.store.close()
        recorder.close()

    assert bot.recovered and bot.state == "running"
    # the history is still all there (nothing archived) and counted without a recount
    assert summary["orders_by_state"]["FILLED"] >= HISTORY and summary["fills_total"] >= HISTORY
    assert snap["orders_by_state"] == summary["orders_by_state"]
    fill_pks = {json.dumps([f"t{cid.rsplit('-', 1)[1]}", "BTC/USDT"], separators=(",", ":"))
                for cid in history}
    touched = [(t, pk) for t, pk in decrypted
               if (t == "orders" and pk in history) or (t == "fills" and pk in fill_pks)
               or (t == "transitions" and int(pk) <= HISTORY * 4)]
    assert touched == [], f"history rows decrypted on the hot path: {touched[:5]}"
    assert any(t == "orders" for t, _ in decrypted)  # the bot's own live orders were read
    assert len(statements) > 100
    scans = _scans(paths.state_db, statements)
    assert scans == {}, f"statements that scan a history table: {scans}"


def test_orders_moved_to_an_archive_are_not_adopted_again(bot_factory):
    """The exchange still lists orders that retention archived: reconciliation leaves them be."""
    from resilience.keys import ensure_cipher
    from resilience.state import Archiver, StateStore, archived_order

    bot = bot_factory()
    reader = bot.state_reader()
    wait_until(lambda: len(reader.orders("FILLED")) >= 3, 60, message="a few filled orders")
    bot.stop()
    paths = bot.paths
    store = StateStore.open(paths.state_db, ensure_cipher(paths, allow_generate=False, environ={})[0])
    try:  # as if a week had passed: every closed order goes to the archive
        Archiver(store, max_age_s=DAY).run(now=time.time() + 8 * DAY)
    finally:
        store.close()
    moved = _archived_cids(paths.state_db)
    assert moved and not any(o["client_order_id"] in moved for o in reader.orders())
    bot.start()
    first = bot.wait_state("running", timeout=60)
    bot.wait_state("running", min_seq=first.seq + 20, timeout=60)  # reconciliation passes ran
    live = {o["client_order_id"] for o in reader.orders()}
    assert not live & set(moved), "archived orders were adopted again"
    assert all(archived_order(paths.state_db, cid) is not None for cid in moved)
    assert "adopted order" not in bot.output()


def _archived_cids(db) -> list[str]:
    from resilience.state import archive_files, open_readonly

    out = []
    for path in archive_files(db):
        with open_readonly(path) as r:
            out += [o.client_order_id for o in r.orders()]
    return out
