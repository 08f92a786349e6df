"""The trader's view over a real bot trading on the paper exchange: ``tradeguard trades``
(table, --json, --csv, --since), ``status`` (text and --json) and ``/metrics`` agree with
state.db and with each other."""
from __future__ import annotations

import csv
import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.proc import free_port, run_cli, wait_until
from tradeguard.config import load_config


def _cli(bot, *args):
    return run_cli(*args, "--config", str(bot.config_file), "--data-dir", str(bot.data_dir),
                   "--logs-dir", str(bot.logs_dir), env=bot.env, timeout=60)


def test_trades_status_and_metrics_show_the_pnl(bot_factory, serve):
    bot = bot_factory(strategy_params={"interval_s": 0.1})
    bot.wait_state("running")
    wait_until(lambda: len(bot.state_reader().fills()) >= 4, 40, interval=0.2, message="4 fills")
    hb = wait_until(lambda: (h := bot.heartbeat()) and h.detail["pnl"]["equity"] and h, 40,
                    message="equity in the heartbeat (after a reconciliation)")
    assert set(hb.detail["pnl"]["prices"]) == {"BTC/USDT", "ETH/USDT"}

    assert bot.stop() == 0  # the books stand still from here

    r = _cli(bot, "trades", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    fills = bot.state_reader().fills()
    assert [(x["symbol"], x["side"], x["price"], x["fee"]) for x in rows] == \
        [(f["symbol"], f["side"], f["price"], f["fee"]) for f in fills]
    r = _cli(bot, "status", "--json")
    pnl = json.loads(r.stdout)["pnl"]
    for sym, sp in pnl["symbols"].items():  # the replay agrees with the bot's own books
        assert sum(x["realized_pnl"] for x in rows if x["symbol"] == sym) == pytest.approx(sp["realized"])
        assert sum(x["fee"] for x in rows if x["symbol"] == sym) == pytest.approx(sum(sp["fees"].values()))

    r = _cli(bot, "trades", "--csv", "--since", "1h")
    assert r.returncode == 0, r.stderr
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert table and set(table[0]) >= {"ts", "symbol", "side", "amount", "price", "fee", "realized_pnl"}
    r = _cli(bot, "trades")
    assert r.returncode == 0 and "realized P&L" in r.stdout and "fills" in r.stdout.splitlines()[-1]
    assert _cli(bot, "trades", "--json", "--csv").returncode == 2

    assert pnl["equity"] > 0 and set(pnl["symbols"]) == {"BTC/USDT", "ETH/USDT"}
    assert pnl["fees"]["USDT"] > 0
    assert pnl["daily_loss_limit"] == 500.0 and pnl["daily_pnl"] is not None
    assert pnl["realized"] == pytest.approx(sum(s["realized"] for s in pnl["symbols"].values()))
    text = _cli(bot, "status").stdout
    assert "equity" in text and "realized" in text and "of it used" in text and "fees paid" in text

    cfg = load_config(bot.config_file, data_dir=bot.data_dir, logs_dir=bot.logs_dir,
                      env={"TRADEGUARD_HEALTH_PORT": str(free_port())})
    s = serve(cfg)
    fams = {f.name: f for f in text_string_to_metric_families(s.authed("/metrics").text)}
    for name in ("tradeguard_equity", "tradeguard_pnl_realized_total", "tradeguard_pnl_unrealized",
                 "tradeguard_pnl_daily", "tradeguard_daily_loss_limit",
                 "tradeguard_daily_loss_limit_used_ratio", "tradeguard_symbol_pnl_realized",
                 "tradeguard_fees_paid", "tradeguard_position_unprotected"):
        assert name in fams, name
    assert fams["tradeguard_equity"].samples[0].value > 0
    assert fams["tradeguard_daily_loss_limit"].samples[0].value == 500.0
    detailed = s.authed("/health/detailed").json()
    assert detailed["pnl"]["equity"] > 0 and "BTC/USDT" in detailed["pnl"]["symbols"]
