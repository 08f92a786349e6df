"""The opt-in daily summary alert (``[alerts] daily_summary``): once per UTC day, from
``[alerts] daily_summary_hour_utc`` on, the watchdog sends equity, P&L (total, today against the
daily loss limit, per symbol), fees and positions. The day it was last sent is kept in
``data/daily_summary.json``, so a restarted watchdog does not send it twice.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timezone
from typing import Any

from tradeguard.config import Config
from tradeguard.fsutil import write_atomic
from tradeguard.heartbeat import read_heartbeat
from trading.pnl import PnlReport, pnl_report

log = logging.getLogger(__name__)


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+,.2f}"


def summary_text(r: PnlReport) -> str:
    """One paragraph a trader reads on a phone."""
    equity = "n/a" if r.equity is None else f"{r.equity:,.2f}"
    today = _money(r.daily_pnl)
    if r.daily_loss_used is not None:
        today += f" ({100 * r.daily_loss_used:.0f}% of the daily loss limit used)"
    fees = ", ".join(f"{v:,.4f} {c}" for c, v in sorted(r.fees.items())) or "none"
    held = ", ".join(f"{s} {p.amount:g}" for s, p in r.symbols.items() if p.amount) or "none"
    return (f"equity {equity}; P&L total {_money(r.total)} (realized {_money(r.realized)}, "
            f"unrealized {_money(r.unrealized)}); today {today}; fees {fees}; positions {held}")


class DailySummary:
    def __init__(self, cfg: Config, alerter: Any):
        self.cfg, self.alerter = cfg, alerter
        self.path = cfg.runtime.data_dir / "daily_summary.json"
        self.sent_day = self._load()

    def _load(self) -> str | None:
        try:
            day = json.loads(self.path.read_text(encoding="utf-8")).get("day")
        except (OSError, ValueError, AttributeError):
            return None
        return day if isinstance(day, str) else None

    def observe(self, now: float) -> bool:
        """Send today's summary if it is due and not sent yet; True when sent."""
        if not self.cfg.alerts.daily_summary:
            return False
        t = datetime.fromtimestamp(now, timezone.utc)
        day = t.strftime("%Y-%m-%d")
        if day == self.sent_day or t.hour < self.cfg.alerts.daily_summary_hour_utc:
            return False
        paths = self.cfg.runtime
        if not paths.state_db.is_file():
            return False
        hb = read_heartbeat(paths.heartbeat)
        try:
            report = pnl_report(paths.state_db, hb.detail if hb else {}, self.cfg.risk, now)
        except sqlite3.Error as e:
            log.warning("daily summary postponed: state.db cannot be read: %s", e)
            return False
        self.alerter.send("daily_summary", f"daily summary {day}: {summary_text(report)}",
                          severity="info", day=day, pnl=report.to_dict())
        self.sent_day = day
        try:
            write_atomic(self.path, json.dumps({"day": day}), overwrite=True)
        except OSError as e:
            log.warning("daily summary: %s not written (%s); a restart may send it again", self.path, e)
        return True
