"""Everything the health endpoint and ``tradeguard status`` report, built from files.

:func:`build_snapshot` reads the heartbeat and pid file (every call: they are small and change
every loop), the kill switch, ``watchdog.json`` (or the live dict the watchdog passes in), and,
through short caches, ``state.db`` (read-only), the black box counts and host resources. Fields
that come from the bot's heartbeat are checked for shape: any program may speak the heartbeat
protocol, and a malformed detail must not break the status page.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from resilience.killswitch import KillSwitch
from tradeguard.config import Config
from tradeguard.exceptions import TradeguardError
from tradeguard.heartbeat import Heartbeat, PidInfo, process_for, read_heartbeat, read_pidfile
from watchdog.health.assess import assess
from watchdog.health.statedb import read_state_summary

STATE_DB_TTL_S = 1.0
BLACKBOX_TTL_S = 5.0  # counting events scans the table: not on every poll
RESOURCES_TTL_S = 1.0
WATCHDOG_STALE_S = 15.0  # watchdog.json is rewritten at least every 5 s while it runs

_cache: dict[tuple[str, str], tuple[float, Any]] = {}
_kill_switches: dict[Path, KillSwitch] = {}
_cpu_primed = False
_cache_lock = threading.Lock()


def _cached(kind: str, key: Path, ttl: float, load: Callable[[], Any]) -> Any:
    """``load()``, re-run at most every ``ttl`` seconds per (kind, file)."""
    k = (kind, str(key))
    now = time.monotonic()
    hit = _cache.get(k)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = load()
    with _cache_lock:
        _cache[k] = (now + ttl, value)
    return value


def build_snapshot(cfg: Config, watchdog_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full health picture; ``watchdog_state`` is the live watchdog dict when called from
    the watchdog, else ``data/watchdog.json`` is read. Adds ``status`` and ``reason``."""
    paths = cfg.runtime
    now = time.time()
    hb = read_heartbeat(paths.heartbeat)
    pid_info = read_pidfile(paths.pidfile)
    proc = process_for(pid_info) if pid_info else None
    detail = hb.detail if hb else {}
    db = _cached("state", paths.state_db, STATE_DB_TTL_S, lambda: read_state_summary(paths.state_db))
    positions = db["positions"] if db["available"] else _number_map(detail.get("positions"))
    last_reconcile = _number(detail.get("last_reconcile"))
    snap: dict[str, Any] = {
        "ts": now,
        "bot": _bot(hb, pid_info, proc, now),
        "watchdog": _watchdog(watchdog_state, paths.watchdog_state, now),
        "degradation": _text(detail.get("degradation")),
        "breakers": _text_map(detail.get("breakers")),
        "positions": positions,
        "open_orders": db.get("open_orders", []),
        "stops": _stops(positions, db.get("open_orders", []), detail.get("stops")),
        "open_orders_count": db["open_orders_count"] if db["available"]
        else int(_number(detail.get("open_orders")) or 0),
        "orders_by_state": db.get("orders_by_state", {}),
        "fills_total": db.get("fills_total"),
        "kill_switch": kill_switch_state(paths.kill_file),
        "last_reconcile": last_reconcile,
        "last_reconcile_age_s": None if last_reconcile is None else round(now - last_reconcile, 3),
        "needs_attention": _text(detail.get("needs_attention")),
        "pnl": _cached("pnl", paths.state_db, STATE_DB_TTL_S, lambda: _pnl(cfg, detail, now)),
        "exchange": exchange_stats(detail.get("exchange")),
        "state_db": {k: db[k] for k in ("available", "error", "needs_reconciliation") if k in db},
        "blackbox": _cached("blackbox", paths.blackbox_db, BLACKBOX_TTL_S,
                            lambda: _blackbox_counts(paths.blackbox_db)),
        "resources": _cached("resources", paths.data_dir, RESOURCES_TTL_S,
                             lambda: _resources(paths.data_dir)),
    }
    snap["status"], snap["reason"] = assess(snap, cfg.watchdog.heartbeat_timeout_s)
    return snap


def _pnl(cfg: Config, detail: dict[str, Any], now: float) -> dict[str, Any] | None:
    """Equity, realized/unrealized P&L, fees, today's P&L (trading.pnl); None without state.db."""
    import sqlite3

    from trading.pnl import pnl_report

    if not cfg.runtime.state_db.is_file():
        return None
    try:
        return pnl_report(cfg.runtime.state_db, detail, cfg.risk, now).to_dict()
    except sqlite3.Error:
        return None  # reported by state_db.available


def _stops(positions: dict[str, float], open_orders: list[dict[str, Any]],
           reported: Any) -> dict[str, dict[str, Any]]:
    """Each position's protective stop: on the exchange (an OPEN protective order in state.db)
    or missing, with the price, distance and since-when the bot reported (a dead bot's last word)."""
    reported = reported if isinstance(reported, dict) else {}
    out: dict[str, dict[str, Any]] = {}
    for symbol, amount in sorted(positions.items()):
        if not amount or amount <= 0:
            continue
        stops = [o for o in open_orders if o.get("symbol") == symbol and
                 o.get("purpose") == "protective" and o.get("state") == "OPEN"]
        r = reported.get(symbol) if isinstance(reported.get(symbol), dict) else {}
        on = bool(stops)
        out[symbol] = {
            "state": "on_exchange" if on else "missing",
            "client_order_id": stops[0]["client_order_id"] if on else None,
            "amount": (stops[0]["amount"] - stops[0]["filled"]) if on else None,
            "stop_price": _number(r.get("stop_price")) if on else None,
            "limit_price": stops[0]["price"] if on else None,
            "distance_pct": _number(r.get("distance_pct")) if on else None,
            "missing_since": None if on else _number(r.get("since")),
        }
    return out


# --- bot --------------------------------------------------------------------------------------
def _bot(hb: Heartbeat | None, pid_info: PidInfo | None, proc: psutil.Process | None,
         now: float) -> dict[str, Any]:
    detail = hb.detail if hb else {}
    started = _number(detail.get("started_at"))
    out: dict[str, Any] = {
        "state": hb.state if hb else None,
        "pid": pid_info.pid if pid_info else (hb.pid if hb else None),
        "alive": proc is not None,
        "heartbeat_age_s": round(hb.age(now), 3) if hb else None,
        "seq": hb.seq if hb else None,
        "bot_id": _text(detail.get("bot_id")),
        "started_at": started,
        "uptime_s": None,
        "loop_ms": _number(detail.get("loop_ms")),
        "process_status": None,
        "rss_bytes": None,
    }
    if proc is not None:
        try:
            with proc.oneshot():
                out["process_status"] = proc.status()
                out["rss_bytes"] = proc.memory_info().rss
                started = started or proc.create_time()
        except psutil.Error:
            out["alive"] = False
    if started is not None and out["alive"]:
        out["uptime_s"] = round(now - started, 3)
    return out


# --- watchdog -------------------------------------------------------------------------------
def _watchdog(live: dict[str, Any] | None, path: Path, now: float) -> dict[str, Any]:
    if live is not None:
        raw, running, ts = live, True, now  # served by the watchdog itself
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            return {"running": False, "state_file": "missing or unreadable"}
        ts = _number(raw.get("ts")) or 0.0
        pid = raw.get("pid")
        running = now - ts <= WATCHDOG_STALE_S and isinstance(pid, int) and psutil.pid_exists(pid)
    stale = not running and _alive(raw.get("pid")) and now - ts > WATCHDOG_STALE_S
    window = _number(raw.get("restart_window_s")) or 0.0
    restarts = [t for t in raw.get("restarts") or [] if isinstance(t, (int, float))]
    since = _number(raw.get("since"))
    return {
        "running": running,
        # the watchdog process is there but its state stopped refreshing: hung or SIGSTOPped
        "stale": stale,
        "pid": raw.get("pid"),
        "manager": _text(raw.get("manager")),
        "verdict": _text(raw.get("verdict")),
        "since": since,
        "verdict_age_s": round(now - since, 3) if since else None,
        "evidence": raw.get("evidence") if isinstance(raw.get("evidence"), dict) else {},
        "bot_pid": raw.get("bot_pid"),
        "restarts_in_window": sum(1 for t in restarts if t > now - window),
        "restarts_total": int(_number(raw.get("restarts_total")) or 0),
        "restart_budget": raw.get("restart_budget"),
        "restart_window_s": window,
        "budget_left": raw.get("budget_left"),
        "emergency": raw.get("emergency") if isinstance(raw.get("emergency"), dict) else {"state": "none"},
        "verdict_counts": _number_map(raw.get("verdict_counts")),
        "emergency_actions_total": int(_number(raw.get("emergency_actions_total")) or 0),
        "state_age_s": round(now - _number(raw.get("ts")), 3) if _number(raw.get("ts")) else None,
    }


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# --- kill switch ------------------------------------------------------------------------------
def kill_switch_state(kill_file: Path) -> dict[str, Any]:
    """``{"engaged", "mode", "reason", "at", "source"}`` from the KILL file or the environment."""
    ks = _kill_switches.get(kill_file)
    if ks is None:  # kept between calls: an unchanged KILL file then costs one stat
        ks = _kill_switches[kill_file] = KillSwitch(kill_file)
    state = ks.check()
    if state is None:
        return {"engaged": False, "mode": None, "reason": None, "at": None, "source": None}
    return {"engaged": True, "mode": state.mode, "reason": state.reason, "at": state.at,
            "source": state.source}


# --- exchange statistics (resilience.manager stats() in the heartbeat detail) -----------------
def exchange_stats(raw: Any) -> dict[str, Any]:
    """Per dependency ``{"calls", "retries", "errors": {class: n}, "retry_budget_left",
    "latency": {"count", "sum_s", "buckets": {le: n}}}`` (resilience.manager ``stats()``),
    keeping only well-formed parts (latency buckets cumulative, ending with +Inf)."""
    out: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return out
    for dep, st in raw.items():
        if not isinstance(dep, str) or not isinstance(st, dict):
            continue
        entry: dict[str, Any] = {"calls": int(_number(st.get("calls")) or 0),
                                 "retries": int(_number(st.get("retries")) or 0),
                                 "errors": {k: int(v) for k, v in _number_map(st.get("errors")).items()},
                                 "retry_budget_left": _number(st.get("retry_budget_left"))}
        lat = st.get("latency")
        if isinstance(lat, dict):
            buckets = _buckets(lat.get("buckets"))
            if buckets is not None:
                entry["latency"] = {"count": int(_number(lat.get("count")) or 0),
                                    "sum_s": float(_number(lat.get("sum_s")) or 0.0),
                                    "buckets": buckets}
        out[dep] = entry
    return out


def _buckets(raw: Any) -> dict[str, int] | None:
    if not isinstance(raw, dict) or "+Inf" not in raw:
        return None
    try:
        pairs = sorted(((float(le), le, int(n)) for le, n in raw.items()), key=lambda p: p[0])
    except (TypeError, ValueError):
        return None
    counts = [n for _, _, n in pairs]
    if any(b < a for a, b in zip(counts, counts[1:])):
        return None  # not cumulative
    return {le: n for _, le, n in pairs}


# --- black box and resources ----------------------------------------------------------------
def _blackbox_counts(db: Path) -> dict[str, Any]:
    from blackbox.reader import counts

    try:
        c = counts(db)
    except TradeguardError as e:
        return {"available": False, "error": str(e)}
    return {"available": True, "events": c["events"], "by_role": c["by_role"],
            "by_kind": c["by_kind"], "dropped_total": c["dropped_total"], "newest": c["newest"]}


def _resources(data_dir: Path) -> dict[str, Any]:
    global _cpu_primed
    cpu = psutil.cpu_percent(None)  # since the previous call; the first one has no baseline
    cpu, _cpu_primed = (cpu if _cpu_primed else None), True
    vm = psutil.virtual_memory()
    out: dict[str, Any] = {
        "cpu_percent": cpu,
        "cpu_count": psutil.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "memory": {"total_bytes": vm.total, "available_bytes": vm.available, "percent": vm.percent},
        "process_rss_bytes": psutil.Process().memory_info().rss,
    }
    try:
        du = psutil.disk_usage(str(data_dir))
        out["disk"] = {"path": str(data_dir), "total_bytes": du.total, "free_bytes": du.free,
                       "percent": du.percent}
    except OSError as e:
        out["disk"] = {"path": str(data_dir), "error": str(e)}
    return out


# --- shape checks for heartbeat detail ----------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _number_map(v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        return {}
    return {str(k): x for k, x in v.items() if _number(x) is not None}


def _text_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        return {}
    return {str(k): x for k, x in v.items() if isinstance(x, str)}
