"""``tradeguard blackbox tail|export|stats|dumps``: read the flight recorder (read-only)."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import replace
from typing import Any, Callable, Iterable

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config

FOLLOW_POLL_S = 0.5


class TimeParam(click.ParamType):
    """ISO 8601 or a duration ago (``10m``, ``2h``, ``1d``) → unix time."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        from blackbox.reader import parse_time

        try:
            return parse_time(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


TIME = TimeParam()


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--kind/--source/--role (repeatable) and --until, shared by tail and export."""
    for opt in reversed([
        click.option("--kind", "kinds", multiple=True,
                     help="Only kinds starting with this (order matches order.intent); repeatable."),
        click.option("--source", "sources", multiple=True, help="Only this source; repeatable."),
        click.option("--role", "roles", multiple=True,
                     help="Only this process role (bot, watchdog, cli, ...); repeatable."),
        click.option("--until", type=TIME, help="Only events up to TIME."),
    ]):
        fn = opt(fn)
    return fn


@click.group("blackbox")
def blackbox() -> None:
    """Read the flight recorder: events (tail, export, stats) and crash dumps."""


@blackbox.command("tail")
@config_options
@click.option("-n", "--lines", "n", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the newest matching events to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--since", type=TIME, help="Only events from TIME (ISO 8601, or 10m / 2h / 1d ago).")
@filter_options
def tail(cfg: Config, n: int, follow: bool, since: float | None, until: float | None,
         kinds: tuple[str, ...], sources: tuple[str, ...], roles: tuple[str, ...]) -> None:
    """Show the newest events, oldest first; with -f, follow new ones."""
    from blackbox.reader import EventFilter, format_line, iter_events, last_id

    db = cfg.runtime.blackbox_db
    flt = EventFilter(since=since, until=until, kinds=kinds, sources=sources, roles=roles)
    start = last_id(db)
    shown = list(iter_events(db, flt, limit=n, newest=True)) if n else []
    _echo_lines(format_line(e) for e in shown)
    if not follow:
        return
    seen = {e["id"] for e in shown}
    stop = _stop_on_signals()
    last = start
    while not stop.wait(FOLLOW_POLL_S):
        top = last_id(db)  # everything up to here is committed: never scan it again
        new = list(iter_events(db, replace(flt, after_id=last), order_by_id=True))
        last = max([top, *(e["id"] for e in new)])
        _echo_lines(format_line(e) for e in new if e["id"] not in seen)
        seen.clear()


@blackbox.command("export")
@config_options
@click.option("--since", type=TIME, default=None,
              help="Events from TIME (ISO 8601, or 10m / 2h / 1d ago); default: every kept event.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]),
              help="Output format (default: csv if PATH ends in .csv, else jsonl).")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@filter_options
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
def export(cfg: Config, since: float | None, until: float | None, fmt: str | None, force: bool,
           kinds: tuple[str, ...], sources: tuple[str, ...], roles: tuple[str, ...],
           path: str) -> None:
    """Write the events (since TIME, if given) to PATH (- for stdout) for incident analysis."""
    from blackbox.export import export_events
    from blackbox.reader import EventFilter

    flt = EventFilter(since=since, until=until, kinds=kinds, sources=sources, roles=roles)
    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
    if path == "-":
        n = export_events(cfg.runtime.blackbox_db, flt, fmt, sys.stdout)
    else:
        n = export_events(cfg.runtime.blackbox_db, flt, fmt, path, force=force)
    click.echo(f"exported {n} events ({fmt}) to {'stdout' if path == '-' else path}", err=True)


@blackbox.command("stats")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(cfg: Config, as_json: bool) -> None:
    """How many events are kept, from whom, and how many were dropped and why."""
    from blackbox.events import format_ts
    from blackbox.reader import counts

    c = counts(cfg.runtime.blackbox_db)
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    span = (f"{format_ts(c['oldest'])} .. {format_ts(c['newest'])}" if c["events"] else "empty")
    lines = [f"events: {c['events']} ({span})",
             "by role: " + (", ".join(f"{k}={v}" for k, v in sorted(c["by_role"].items())) or "-"),
             "dropped: " + ", ".join(f"{k}={v}" for k, v in c["dropped"].items()),
             "top kinds: " + (", ".join(f"{k}={v}" for k, v in sorted(
                 c["by_kind"].items(), key=lambda kv: -kv[1])[:10]) or "-")]
    _echo_lines(lines)


@blackbox.command("dumps")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dumps(cfg: Config, as_json: bool) -> None:
    """List crash dumps (JSON dumps and faulthandler files) with one-line summaries."""
    from blackbox.dumps import list_dumps

    crash_dir = cfg.runtime.crash_dir
    found = list_dumps(crash_dir)
    if as_json:
        click.echo(json.dumps([{**vars(d), "path": str(d.path)} for d in found], indent=2))
    elif not found:
        click.echo(f"no crash dumps in {crash_dir}")
    else:
        _echo_lines(d.line() for d in found)


def _echo_lines(lines: Iterable[str]) -> None:
    try:
        for line in lines:
            click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `tradeguard blackbox tail | head`: the reader left, so do we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop

