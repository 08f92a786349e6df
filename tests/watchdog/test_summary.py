"""The opt-in daily summary alert: sent once per UTC day from the configured hour, with the
P&L of a real state.db, through a real alerter to a real webhook; not again after a restart."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from tests.helpers.proc import wait_until
from tests.trading.test_pnl import _state_db
from tests.watchdog.test_alerts import receiver  # noqa: F401 - fixture
from tradeguard.config import load_config
from watchdog.alerts import Alerter
from watchdog.summary import DailySummary


def _at(hour: int) -> float:
    return datetime(2026, 12, 7, hour, 30, tzinfo=timezone.utc).timestamp()


def test_daily_summary_once_a_day_and_opt_in(tmp_path, data_dir, logs_dir, receiver):  # noqa: F811
    _state_db(data_dir)
    (data_dir / "bot.heartbeat").write_text(json.dumps({
        "pid": 1, "ts": time.time(), "seq": 1, "state": "running",
        "detail": {"pnl": {"prices": {"BTC/USDT": 110.0}, "equity": 10005.0, "day_start": None}}}))
    env = {"TRADEGUARD_ALERTS_WEBHOOK_URL": receiver.url(), "TRADEGUARD_ALERTS_DAILY_SUMMARY_HOUR_UTC": "20"}
    off = load_config(data_dir=data_dir, logs_dir=logs_dir, env=env)
    alerter = Alerter(off.alerts, secrets_paths=off.runtime)
    try:
        assert DailySummary(off, alerter).observe(_at(22)) is False  # opt-in: off by default
        cfg = load_config(data_dir=data_dir, logs_dir=logs_dir,
                          env={**env, "TRADEGUARD_ALERTS_DAILY_SUMMARY": "true"})
        s = DailySummary(cfg, alerter)
        assert s.observe(_at(19)) is False  # before the hour
        assert s.observe(_at(20)) is True
        assert s.observe(_at(23)) is False  # once a day
        assert DailySummary(cfg, alerter).observe(_at(23)) is False  # also after a restart
        body = wait_until(lambda: receiver.bodies and receiver.bodies[0], 10, message="summary")
        assert body["event"] == "daily_summary" and body["severity"] == "info"
        assert "daily summary 2026-12-07" in body["message"]
        assert "equity 10,005.00" in body["message"] and "BTC/USDT 0.5" in body["message"]
        assert "fees 0.1980 USDT" in body["message"]
        assert body["fields"]["pnl"]["symbols"]["BTC/USDT"]["unrealized"] == 5.0
        assert s.observe(_at(20) + 86400) is True  # the next day
        wait_until(lambda: len(receiver.bodies) == 2, 10, message="next day's summary")
    finally:
        alerter.stop()
