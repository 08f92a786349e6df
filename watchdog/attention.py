"""Alerts when the bot asks for a person: its heartbeat's ``needs_attention`` (a strategy that
keeps raising, an unexplained balance, a step that keeps failing for a reason of its own), and
``stops_missing`` (a position without its protective stop past ``[risk] stop_missing_attention_s``).

One alert when attention is first asked for, one when it clears — not one per tick while the
text changes (it carries counters).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from blackbox import recorder
from tradeguard.heartbeat import read_heartbeat

log = logging.getLogger(__name__)
SOURCE = "watchdog"


class AttentionWatch:
    """Follows ``detail.needs_attention`` of ``bot.heartbeat`` and alerts on its changes."""

    def __init__(self, heartbeat: Path, alerter: Any):
        self.heartbeat, self.alerter = heartbeat, alerter
        self.current: str | None = None
        self.bare: set[str] = set()  # detail.stops_missing: positions without their stop

    def observe(self) -> str | None:
        """Read the heartbeat once; alert when attention is asked for or no longer needed."""
        hb = read_heartbeat(self.heartbeat)
        if hb is None:  # no heartbeat: the liveness checks report that, not this
            return self.current
        text = hb.detail.get("needs_attention")
        text = str(text) if text else None
        if text and self.current is None:
            log.warning("the bot needs attention: %s", text)
            recorder.record("watchdog.attention", SOURCE, f"the bot needs attention: {text}",
                            severity="warning", reason=text)
            self.alerter.send("needs_attention", f"the bot needs attention: {text}", reason=text,
                              bot_pid=hb.pid)
        elif text is None and self.current is not None:
            log.info("the bot no longer needs attention (was: %s)", self.current)
            recorder.record("watchdog.attention_cleared", SOURCE, "the bot no longer needs attention",
                            previous=self.current)
            self.alerter.send("attention_cleared", f"the bot no longer needs attention (was: "
                              f"{self.current})", previous=self.current, bot_pid=hb.pid)
        self.current = text
        self._stops(hb)
        return text

    def _stops(self, hb: Any) -> None:
        """A dedicated alert per position left without its protective stop (even while
        ``needs_attention`` already says something else), and one when it is covered again."""
        raw = hb.detail.get("stops_missing")
        bare = {str(s) for s in raw} if isinstance(raw, list) else set()
        for symbol in sorted(bare - self.bare):
            self.alerter.send("stop_missing", f"{symbol}: the position has no protective stop on "
                              "the exchange", symbol=symbol, bot_pid=hb.pid)
        for symbol in sorted(self.bare - bare):
            self.alerter.send("stop_restored", f"{symbol}: no longer without a protective stop",
                              symbol=symbol, bot_pid=hb.pid)
        self.bare = bare
