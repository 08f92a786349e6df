"""``data/watchdog.json``: the watchdog's state, written atomically, read back on start (so the
restart budget and an interrupted emergency survive a watchdog restart) and read by the health
snapshot and ``tradeguard status``.

Shape (the shared contract)::

    {"pid", "ts", "manager", "verdict", "evidence", "since", "bot_pid", "restarts",
     "restarts_total", "restart_budget", "restart_window_s", "budget_left", "emergency",
     "verdict_counts", "emergency_actions_total", "restart_streak"}
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tradeguard.heartbeat import atomic_write_json

log = logging.getLogger(__name__)

VERDICTS = ("healthy", "starting", "crashed", "hung", "stalled", "leaking", "restarting",
            "emergency", "stopped")
EMERGENCY_STATES = ("none", "running", "done", "failed")


@dataclass
class EmergencyState:
    state: str = "none"
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    orders: int = 0
    detail: str = ""


@dataclass
class WatchdogState:
    pid: int
    manager: str
    restart_budget: int
    restart_window_s: float
    ts: float = 0.0
    verdict: str = "starting"
    evidence: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0
    bot_pid: int | None = None
    restarts: list[float] = field(default_factory=list)
    restarts_total: int = 0
    budget_left: int = 0
    emergency: EmergencyState = field(default_factory=EmergencyState)
    verdict_counts: dict[str, int] = field(default_factory=dict)
    emergency_actions_total: int = 0
    restart_streak: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_state(path: Path, state: WatchdogState, *, durable: bool = False) -> None:
    """Replace the file atomically; ``durable`` also fsyncs (restarts, emergencies)."""
    atomic_write_json(path, state.to_dict(), fsync=durable)


def load_state(path: Path, into: WatchdogState) -> bool:
    """Carry the persistent parts of a previous watchdog's file into ``into``.

    Returns False (and keeps the defaults) when there is no file or it is unreadable: a corrupt
    file costs the restart history, never the watchdog.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        restarts = [float(t) for t in raw.get("restarts", [])]
        total = int(raw.get("restarts_total", 0))
        counts = {str(k): int(v) for k, v in dict(raw.get("verdict_counts", {})).items()}
        actions = int(raw.get("emergency_actions_total", 0))
        streak = int(raw.get("restart_streak", 0))
        em = dict(raw.get("emergency") or {})
        emergency = EmergencyState(
            state=str(em.get("state", "none")), started_at=_opt_float(em.get("started_at")),
            finished_at=_opt_float(em.get("finished_at")), reason=str(em.get("reason", "")),
            orders=int(em.get("orders", 0)), detail=str(em.get("detail", "")))
        if emergency.state not in EMERGENCY_STATES:
            raise ValueError(f"emergency state {emergency.state!r}")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return False
    into.restarts, into.restarts_total, into.verdict_counts = restarts, total, counts
    into.emergency_actions_total, into.restart_streak, into.emergency = actions, streak, emergency
    return True


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
