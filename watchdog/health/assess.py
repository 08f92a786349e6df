"""One word for the bot's health, from a snapshot: what ``GET /health`` and ``tradeguard status``
report. ``healthy`` only when the bot runs, beats, trades normally and nothing is engaged."""
from __future__ import annotations

from typing import Any

HEALTHY = "healthy"
WATCHDOG_FAULTS = ("crashed", "hung", "stalled", "leaking", "restarting", "stopped")
BOT_STATE_STATUS = {"starting": "starting", "degraded": "degraded", "safe": "safe_mode",
                    "stopping": "stopping"}


def assess(snap: dict[str, Any], heartbeat_timeout_s: float) -> tuple[str, str]:
    """``(status, reason)``; the first problem found wins, most severe first."""
    kill = snap["kill_switch"]
    if kill.get("engaged"):
        return "halted", (f"kill switch engaged ({kill.get('mode')}, from {kill.get('source')}): "
                          f"{kill.get('reason') or 'no reason given'}")
    wd = snap["watchdog"]
    em = wd.get("emergency") or {}
    if wd.get("running") and (wd.get("verdict") == "emergency" or em.get("state") in ("running", "failed")):
        return "emergency", f"emergency {em.get('state', '?')}: {em.get('reason') or 'no reason given'}"
    if wd.get("stale"):
        age = wd.get("state_age_s")
        return "watchdog_stale", (f"the watchdog (pid {wd.get('pid')}) has not refreshed its state "
                                  f"for {age or 0:.0f}s: it is hung or stopped, nothing supervises "
                                  "the bot")
    if wd.get("running") and wd.get("verdict") in WATCHDOG_FAULTS:
        return wd["verdict"], f"watchdog verdict {wd['verdict']} for {wd.get('verdict_age_s', 0):.1f}s"
    bot = snap["bot"]
    if bot.get("state") is None:
        return "no_heartbeat", "no bot heartbeat (bot.heartbeat missing or unreadable)"
    if not bot.get("alive"):
        pid = bot.get("pid")
        return "down", f"the bot process{f' (pid {pid})' if pid else ''} is not running"
    age = bot.get("heartbeat_age_s")
    if age is not None and age > heartbeat_timeout_s:
        stopped = "; the process is stopped" if bot.get("process_status") == "stopped" else ""
        return "hung", f"heartbeat {age:.1f}s old (timeout {heartbeat_timeout_s:g}s){stopped}"
    if bot["state"] != "running":
        return BOT_STATE_STATUS.get(bot["state"], bot["state"]), f"bot state {bot['state']}" + (
            f" (degradation {snap['degradation']})" if snap.get("degradation") else "") + (
            f": {snap['needs_attention']}" if snap.get("needs_attention") else "")
    if snap.get("degradation") not in (None, "running"):
        level = snap["degradation"]
        return BOT_STATE_STATUS.get(level, str(level)), f"degradation level {level}"
    if snap.get("needs_attention"):
        return "attention", f"needs attention: {snap['needs_attention']}"
    return HEALTHY, ""
