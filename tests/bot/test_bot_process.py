"""The bot as a process: it trades, its books match the exchange, it stops cleanly on SIGTERM,
speaks the systemd notify protocol, and refuses bad setups with a clear message (exit 2)."""
from __future__ import annotations

import base64
import json
import signal
import socket
import time

import pytest

from tests.helpers.fixtures_bot import consistency_problems
from tests.helpers.proc import run_cli, wait_until


def _ledger_orders(bot) -> list[dict]:
    return [o for o in bot.paper.ledger()["orders"] if o["clientOrderId"].startswith("tg-tg1-")]


def test_trades_books_match_the_exchange_and_a_second_bot_is_refused(bot_factory):
    bot = bot_factory(strategy_params={"interval_s": 0.1, "limit_probability": 0.35, "limit_ttl_s": 0.6})
    bot.wait_state("running")

    def traded() -> bool:
        orders = _ledger_orders(bot)
        kinds = {(o["side"], o["type"], o["status"]) for o in orders}
        return {("BUY", "MARKET", "FILLED"), ("SELL", "MARKET", "FILLED"),
                ("BUY", "LIMIT", "CANCELED")} <= kinds
    wait_until(traded, 25, interval=0.2, message="market buys, sells and a canceled limit entry")
    hb = bot.wait_ticks(2)
    assert hb.detail["bot_id"] == "tg1" and "exchange" in hb.detail and hb.detail["loop_ms"] > 0
    second = run_cli(*bot.argv()[3:], env=bot.env, timeout=30)  # two bots on one state.db: refused
    assert second.returncode == 2 and "already runs" in second.stderr and bot.alive()
    assert bot.stop() == 0
    assert consistency_problems(bot.state_reader(), bot.paper) == []


def test_sigterm_cancels_entries_persists_notifies_and_exits_0(bot_factory, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    try:
        bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 1.0, "limit_ttl_s": 60},
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "5000000"})
        seen: list[str] = []
        while "READY=1" not in seen or "WATCHDOG=1" not in seen[seen.index("READY=1"):]:
            seen += sock.recv(4096).decode().split("\n")  # keep-alives go on after READY
        assert "STATUS=running; positions none" in seen[seen.index("READY=1"):]
        wait_until(lambda: any(o["status"] == "NEW" for o in _ledger_orders(bot)), 15,
                   message="a resting limit entry")
        t0 = time.monotonic()
        bot.kill(signal.SIGTERM, wait=False)
        assert bot.wait_exit(10) == 0
        assert time.monotonic() - t0 < 10
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().split("\n")
    finally:
        sock.close()
    assert bot.heartbeat().state == "stopping"
    assert [o for o in _ledger_orders(bot) if o["status"] == "NEW"] == []
    assert consistency_problems(bot.state_reader(), bot.paper) == []
    dumps = [json.loads(f.read_text()) for f in (bot.logs_dir / "crash").glob("*.json")]
    assert [d["role"] for d in dumps if d["reason"] == "sigterm"] == ["bot"]



def test_sigterm_while_an_order_is_in_flight_records_its_fill_before_exiting(bot_factory):
    bot = bot_factory(strategy_params={"interval_s": 0.2, "limit_probability": 0.0},
                      # the delay is an answer, not a timeout; without protective stops the
                      # request the fault holds is one of the demo's market orders
                      env={"TRADEGUARD_EXCHANGE_TIMEOUT_MS": "5000", "TRADEGUARD_RISK_STOP_LOSS_PCT": "0"})
    bot.wait_state("running")
    fid = bot.paper.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=2.0)
    # the fault is used up when a request takes it; that request is then held for 2 s
    wait_until(lambda: all(f["id"] != fid for f in bot.paper.faults()), 20, interval=0.05,
               message="an order request held by the delay")
    bot.kill(signal.SIGTERM, wait=False)
    assert bot.wait_exit(10) == 0
    held = _ledger_orders(bot)[-1]
    assert held["status"] == "FILLED"  # a market order, answered after the signal
    assert {o["client_order_id"]: o["state"] for o in bot.state_reader().orders()}[held["clientOrderId"]] == "FILLED"
    assert consistency_problems(bot.state_reader(), bot.paper) == []


@pytest.mark.parametrize("env, words", [
    ({"TRADEGUARD_BOT_STRATEGY": "/nowhere/mine.py:Mine"}, "does not exist"),
    ({"TRADEGUARD_FAILPOINTS": "orders.after_intent=explode"}, "unknown action"),
])
def test_bad_setup_exits_2_with_a_clear_message(tmp_path, env, words):
    r = run_cli("bot", "--data-dir", str(tmp_path / "d"), "--logs-dir", str(tmp_path / "l"), env=env, timeout=30)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_an_unusable_state_db_exits_2_with_a_clear_message(tmp_path):
    (tmp_path / "d" / "state.db").mkdir(parents=True)  # not a database: cannot be opened
    key = base64.b64encode(bytes(range(32))).decode()
    r = run_cli("bot", "--data-dir", str(tmp_path / "d"), "--logs-dir", str(tmp_path / "l"),
                env={"TRADEGUARD_FIELD_KEY": key}, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "cannot open the state database" in r.stderr and "Traceback" not in r.stderr
