"""``tradeguard status [--json]``: the bot's health, from the endpoint when it answers, else from
the files in the data dir (the same snapshot either way); always says which."""
from __future__ import annotations

import json
import time
from typing import Any

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="Seconds to wait for the health endpoint before reading the files.")
@config_options
def status(cfg: Config, as_json: bool, timeout: float) -> None:
    """Show the bot, the watchdog, positions, open orders and the kill switch."""
    from blackbox.redact import redact

    snap, source = _snapshot(cfg, timeout)
    snap = {**redact(snap), "source": source}  # source: our own path and URL, nothing secret
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=False))
    else:
        click.echo(format_status(snap))


def _snapshot(cfg: Config, timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
    from tradeguard.exceptions import HealthUnreachable
    from watchdog.health.client import endpoint_url, get

    try:
        reply = get(cfg, "/health/detailed", timeout=timeout)
        if reply.status == 200 and isinstance(reply.body, dict):
            return reply.body, {"kind": "endpoint", "where": endpoint_url(cfg)}
        why = f"the endpoint answered HTTP {reply.status}"
    except HealthUnreachable as e:
        why = str(e)
    from tradeguard.exceptions import UserError
    from watchdog.health.snapshot import build_snapshot

    if not cfg.runtime.data_dir.is_dir():
        raise UserError(f"no data dir at {cfg.runtime.data_dir} (check --data-dir or [paths] "
                        f"data_dir); and {why}")
    return build_snapshot(cfg), {"kind": "files", "where": str(cfg.runtime.data_dir), "why": why}


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _bot_line(bot: dict[str, Any]) -> str:
    if bot.get("state") is None:
        return "no heartbeat" + ("" if bot.get("alive") else " (not running)")
    if not bot.get("alive"):  # a stale heartbeat says what the bot was, not what it is
        return (f"NOT RUNNING (pid {bot.get('pid')} is gone; its last heartbeat, "
                f"{_ago(bot.get('heartbeat_age_s'))} ago, said {bot['state']})")
    parts = [bot["state"], f"pid {bot.get('pid')}",
             f"heartbeat {_ago(bot.get('heartbeat_age_s'))} ago", f"seq {bot.get('seq')}"]
    if bot.get("uptime_s") is not None:
        parts.append(f"up {_ago(bot['uptime_s'])}")
    if bot.get("process_status") == "stopped":
        parts.append("PROCESS STOPPED")
    return "  ".join(parts)


def _watchdog_line(wd: dict[str, Any]) -> str:
    if wd.get("stale"):
        return (f"STALE: pid {wd.get('pid')} has not refreshed its state for "
                f"{_ago(wd.get('state_age_s'))} (hung or stopped): nothing restarts the bot or "
                "flattens it in an emergency")
    if not wd.get("running"):
        return "NOT RUNNING: nothing restarts the bot or flattens it in an emergency"
    line = (f"{wd.get('verdict')} for {_ago(wd.get('verdict_age_s'))}  ({wd.get('manager')}, "
            f"pid {wd.get('pid')})  restarts: {wd.get('restarts_in_window')} in window, "
            f"{wd.get('budget_left')} of {wd.get('restart_budget')} left, {wd.get('restarts_total')} total")
    em = wd.get("emergency") or {}
    if em.get("state") not in (None, "none"):
        line += f"\n             emergency {em['state']}: {em.get('reason', '')}"
    return line


def _kill_line(kill: dict[str, Any]) -> str:
    if not kill.get("engaged"):
        return "off"
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(kill["at"])) \
        if isinstance(kill.get("at"), (int, float)) else "?"
    return f"ENGAGED ({kill.get('mode')}, from {kill.get('source')}) at {at}: {kill.get('reason')}"


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+,.2f}"


def _pnl_lines(p: dict[str, Any] | None) -> list[str]:
    """Equity, P&L per symbol and total, today's P&L against the daily loss limit, fees."""
    if not p:
        return ["  P&L        : n/a (no state.db yet)"]
    equity = "n/a (until the bot's first balance)" if p["equity"] is None else f"{p['equity']:,.2f}"
    fees = ", ".join(f"{v:,.4f} {cur}" for cur, v in sorted(p["fees"].items())) or "none"
    if p["daily_pnl"] is None:
        daily = "n/a (measured by the bot once it has prices; needs a daily loss limit)"
    else:
        daily = _money(p["daily_pnl"])
        if p["daily_loss_limit"] is not None:
            daily += (f" (limit -{p['daily_loss_limit']:,.2f}: {100 * p['daily_loss_used']:.0f}% "
                      "of it used)")
    lines = [f"  equity     : {equity}",
             f"  P&L        : realized {_money(p['realized'])}  unrealized {_money(p['unrealized'])}"
             f"  total {_money(p['total'])}",
             f"  today      : {daily}",
             f"  fees paid  : {fees}"]
    for sym, sp in p["symbols"].items():
        avg = "" if sp["avg_price"] is None else f" avg {sp['avg_price']:,.2f}"
        price = "" if sp["price"] is None else f" last {sp['price']:,.2f}"
        lines.append(f"      {sym}: {sp['amount']:g}{avg}{price}  realized {_money(sp['realized'])}"
                     f"  unrealized {_money(sp['unrealized'])}")
    return lines


def _stop_lines(stops: Any) -> list[str]:
    """Each position's protective stop on the exchange, or that it has none."""
    if not isinstance(stops, dict) or not stops:
        return []
    lines = ["  stops      :"]
    for symbol, st in sorted(stops.items()):
        if st.get("state") != "on_exchange":
            lines.append(f"      {symbol}: NO STOP on the exchange")
            continue
        price = "?" if st.get("stop_price") is None else f"{st['stop_price']:g}"
        dist = "" if st.get("distance_pct") is None else f", {st['distance_pct']:.2f}% below the price"
        lines.append(f"      {symbol}: stop {price} for {st.get('amount') or 0:g} on the exchange{dist}")
    return lines


def format_status(s: dict[str, Any]) -> str:
    """The human-readable status report."""
    src = s["source"]
    head = (f"from the health endpoint {src['where']}" if src["kind"] == "endpoint"
            else f"from the files in {src['where']} ({src['why']})")
    overall = "HEALTHY" if s["status"] == "healthy" else f"{s['status'].upper()}: {s['reason']}"
    positions = ", ".join(f"{sym} {amt:g}" for sym, amt in s["positions"].items()) or "none"
    breakers = ", ".join(f"{k} {v}" for k, v in s["breakers"].items()) or "-"
    lines = [
        f"tradeguard status, {head}",
        f"  overall    : {overall}",
        f"  bot        : {_bot_line(s['bot'])}",
        f"  watchdog   : {_watchdog_line(s['watchdog'])}",
        f"  kill switch: {_kill_line(s['kill_switch'])}",
        f"  degradation: {s.get('degradation') or '-'}   breakers: {breakers}",
        f"  positions  : {positions}",
        f"  open orders: {s['open_orders_count']}",
    ]
    for o in s["open_orders"]:
        price = f" @ {o['price']:g}" if o.get("price") is not None else ""
        lines.append(f"      {o['client_order_id']}  {o['symbol']} {o['side']} {o['type']} "
                     f"{o['amount']:g}{price}  {o['state']}  filled {o['filled']:g}")
    lines += _stop_lines(s.get("stops"))
    lines += _pnl_lines(s.get("pnl"))
    if s.get("needs_attention"):
        lines.append(f"  ATTENTION  : {s['needs_attention']}")
    lines.append(f"  reconciled : {_ago(s.get('last_reconcile_age_s'))}"
                 + (" ago" if s.get("last_reconcile_age_s") is not None else ""))
    if not s["state_db"].get("available"):
        lines.append(f"  state.db   : {s['state_db'].get('error')}")
    r = s["resources"]
    disk = r.get("disk", {})
    disk_txt = f"{disk['free_bytes'] / 1e9:.1f} GB free" if "free_bytes" in disk else disk.get("error", "?")
    cpu = "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.0f}%"
    lines.append(f"  host       : cpu {cpu}  load {r['load_1m']}  memory "
                 f"{r['memory']['percent']:.0f}% used  data disk {disk_txt}")
    bb = s["blackbox"]
    lines.append(f"  black box  : {bb['events']} events" if bb.get("available")
                 else f"  black box  : {bb.get('error')}")
    return "\n".join(lines)
