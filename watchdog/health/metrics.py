"""``GET /metrics``: the snapshot as Prometheus metrics (``tradeguard_*``, counters ``*_total``).

A custom collector over the snapshot, in its own registry: nothing is kept between scrapes
and no global state of prometheus_client is touched.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from resilience.state import ORDER_STATES
from tradeguard.heartbeat import STATES
from watchdog.statefile import VERDICTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_STATES = ("closed", "open", "half-open")
DEGRADATION_LEVELS = {"running": 0, "degraded": 1, "safe": 2, "flatten": 3}


def _g(name: str, doc: str, value: float | None, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels) or None)
    if value is not None and not labels:
        fam.add_metric([], value)
    return fam


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


class SnapshotCollector(Collector):
    """Turns one snapshot per scrape into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield from _bot(s)
        yield from _watchdog(s["watchdog"])
        yield from _trading(s)
        yield from _pnl(s)
        yield from _exchange(s["exchange"])
        yield from _host(s)


def _bot(s: dict[str, Any]) -> Iterator[Metric]:
    bot = s["bot"]
    up = bot["alive"] and bot["heartbeat_age_s"] is not None and s["status"] not in ("hung", "no_heartbeat")
    yield _g("tradeguard_healthy", "1 when GET /health answers 200.", float(s["status"] == "healthy"))
    yield _g("tradeguard_bot_up", "1 when the bot process runs and its heartbeat is fresh.", float(up))
    yield _g("tradeguard_bot_heartbeat_age_seconds", "Age of the bot's last heartbeat.",
             _nan(bot["heartbeat_age_s"]))
    yield _g("tradeguard_bot_heartbeat_seq", "Loop iterations the bot has completed.", _nan(bot["seq"]))
    yield _g("tradeguard_bot_uptime_seconds", "Seconds since the bot started.", _nan(bot["uptime_s"]))
    yield _g("tradeguard_bot_rss_bytes", "Resident memory of the bot process.", _nan(bot["rss_bytes"]))
    st = _g("tradeguard_bot_state", "1 for the bot's current state.", None, ("state",))
    for name in STATES:
        st.add_metric([name], float(bot["state"] == name))
    yield st
    deg = s["degradation"]
    yield _g("tradeguard_degradation_level",
             "Degradation: 0 running, 1 degraded (exits only), 2 safe (no orders), 3 flatten.",
             _nan(DEGRADATION_LEVELS.get(deg)) if deg is not None else math.nan)
    br = _g("tradeguard_breaker_state", "1 for the current state of each circuit breaker.", None,
            ("breaker", "state"))
    for name, state in sorted(s["breakers"].items()):
        for candidate in BREAKER_STATES:
            br.add_metric([name, candidate], float(state == candidate))
    yield br


def _watchdog(wd: dict[str, Any]) -> Iterator[Metric]:
    yield _g("tradeguard_watchdog_up", "1 when the watchdog runs.", float(bool(wd.get("running"))))
    total = CounterMetricFamily("tradeguard_watchdog_restarts", "Bot restarts by the watchdog.")
    total.add_metric([], wd.get("restarts_total", 0))
    yield total
    yield _g("tradeguard_watchdog_restarts_in_window", "Restarts within the restart window.",
             _nan(wd.get("restarts_in_window")))
    yield _g("tradeguard_watchdog_restart_budget_left", "Restarts left in the window.",
             _nan(wd.get("budget_left")))
    cur = _g("tradeguard_watchdog_verdict", "1 for the watchdog's current verdict.", None, ("verdict",))
    counts = CounterMetricFamily("tradeguard_watchdog_verdicts", "Verdicts reached, by verdict.",
                                 labels=["verdict"])
    seen = wd.get("verdict_counts") or {}
    for v in sorted(set(VERDICTS) | set(seen)):
        cur.add_metric([v], float(wd.get("verdict") == v))
        counts.add_metric([v], seen.get(v, 0))
    yield cur
    yield counts
    em = CounterMetricFamily("tradeguard_emergency_actions", "Emergency actions taken by the watchdog.")
    em.add_metric([], wd.get("emergency_actions_total", 0))
    yield em
    yield _g("tradeguard_emergency_running", "1 while an emergency flatten is running.",
             float((wd.get("emergency") or {}).get("state") == "running"))


def _trading(s: dict[str, Any]) -> Iterator[Metric]:
    yield _g("tradeguard_kill_switch_engaged", "1 when the kill switch is engaged.",
             float(s["kill_switch"]["engaged"]))
    orders = _g("tradeguard_orders", "Orders in state.db by state.", None, ("state",))
    for state in sorted(set(ORDER_STATES) | set(s["orders_by_state"])):
        orders.add_metric([state], s["orders_by_state"].get(state, 0))
    yield orders
    yield _g("tradeguard_open_orders", "Orders not yet final (INTENT, SUBMITTING, OPEN, UNKNOWN).",
             float(s["open_orders_count"]))
    if s["fills_total"] is not None:
        fills = CounterMetricFamily("tradeguard_fills", "Fills recorded in state.db.")
        fills.add_metric([], s["fills_total"])
        yield fills
    pos = _g("tradeguard_position_amount", "Position per symbol, in base units.", None, ("symbol",))
    for symbol, amount in sorted(s["positions"].items()):
        pos.add_metric([symbol], float(amount))
    yield pos
    yield _g("tradeguard_last_reconcile_timestamp_seconds", "Unix time of the last reconciliation.",
             _nan(s["last_reconcile"]))


def _pnl(s: dict[str, Any]) -> Iterator[Metric]:
    """Equity and P&L (trading.pnl), and positions that have no protective stop."""
    stops = s.get("stops") or {}
    bare = _g("tradeguard_position_unprotected", "1 when a position has no protective stop order "
              "on the exchange.", None, ("symbol",))
    price = _g("tradeguard_position_stop_price", "Trigger price of the position's protective stop.",
               None, ("symbol",))
    distance = _g("tradeguard_position_stop_distance_pct", "How far the last price is above the "
                  "protective stop, in % of the price.", None, ("symbol",))
    for symbol, amount in sorted(s["positions"].items()):
        stop = stops.get(symbol) or {}
        bare.add_metric([symbol], float(bool(amount) and amount > 0 and stop.get("state") != "on_exchange"))
        if stop.get("state") == "on_exchange":
            price.add_metric([symbol], _nan(stop.get("stop_price")))
            distance.add_metric([symbol], _nan(stop.get("distance_pct")))
    yield bare
    yield price
    yield distance
    p = s.get("pnl")
    if not p:
        return
    yield _g("tradeguard_equity", "Account equity in quote currency at the bot's last balance.",
             _nan(p["equity"]))
    yield _g("tradeguard_pnl_realized_total", "Realized P&L (fees in quote included), all symbols.",
             float(p["realized"]))
    yield _g("tradeguard_pnl_unrealized", "Unrealized P&L at the bot's last prices, all symbols.",
             _nan(p["unrealized"]))
    yield _g("tradeguard_pnl_daily", "Today's P&L (UTC day), the figure the daily loss limit acts on.",
             _nan(p["daily_pnl"]))
    yield _g("tradeguard_daily_loss_limit", "The daily loss limit in quote (the tighter of the two).",
             _nan(p["daily_loss_limit"]))
    yield _g("tradeguard_daily_loss_limit_used_ratio", "Today's loss / the daily loss limit (1 = halts).",
             _nan(p["daily_loss_used"]))
    realized = _g("tradeguard_symbol_pnl_realized", "Realized P&L per symbol.", None, ("symbol",))
    unrealized = _g("tradeguard_symbol_pnl_unrealized", "Unrealized P&L per symbol.", None, ("symbol",))
    fees = _g("tradeguard_fees_paid", "Fees paid per symbol and currency.", None, ("symbol", "currency"))
    for symbol, sp in sorted(p["symbols"].items()):
        realized.add_metric([symbol], float(sp["realized"]))
        unrealized.add_metric([symbol], _nan(sp["unrealized"]))
        for cur, v in sorted(sp["fees"].items()):
            fees.add_metric([symbol, cur], float(v))
    yield from (realized, unrealized, fees)


def _exchange(ex: dict[str, Any]) -> Iterator[Metric]:
    calls = CounterMetricFamily("tradeguard_exchange_calls", "Exchange calls by dependency.",
                                labels=["dependency"])
    errors = CounterMetricFamily("tradeguard_exchange_errors", "Exchange errors by dependency and class.",
                                 labels=["dependency", "class"])
    retries = CounterMetricFamily("tradeguard_exchange_retries", "Retries by dependency.",
                                  labels=["dependency"])
    budget = _g("tradeguard_exchange_retry_budget_left", "Retries left in the budget window.", None,
                ("dependency",))
    latency = HistogramMetricFamily("tradeguard_exchange_latency_seconds",
                                    "Exchange call latency by dependency.", labels=["dependency"])
    for dep, st in sorted(ex.items()):
        calls.add_metric([dep], st["calls"])
        retries.add_metric([dep], st["retries"])
        if st["retry_budget_left"] is not None:
            budget.add_metric([dep], st["retry_budget_left"])
        for cls, n in sorted(st["errors"].items()):
            errors.add_metric([dep, cls], n)
        lat = st.get("latency")
        if lat:
            latency.add_metric([dep], list(lat["buckets"].items()), lat["sum_s"])
    yield from (calls, retries, errors, budget, latency)


def _host(s: dict[str, Any]) -> Iterator[Metric]:
    bb = s["blackbox"]
    if bb.get("available"):
        yield _g("tradeguard_blackbox_events", "Events kept in the black box.", float(bb["events"]))
        dropped = CounterMetricFamily("tradeguard_blackbox_dropped", "Events the black box dropped.")
        dropped.add_metric([], bb["dropped_total"])
        yield dropped
    r = s["resources"]
    yield _g("tradeguard_host_cpu_percent", "Host CPU use.", _nan(r["cpu_percent"]))
    yield _g("tradeguard_host_memory_available_bytes", "Host memory available.",
             float(r["memory"]["available_bytes"]))
    if "free_bytes" in r["disk"]:
        yield _g("tradeguard_data_disk_free_bytes", "Free space on the data dir's filesystem.",
                 float(r["disk"]["free_bytes"]))


def render_metrics(snapshot: Callable[[], dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
