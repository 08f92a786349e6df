"""``tradeguard trades [--since TIME] [--json | --csv]``: the bot's fills with price, fee and the
P&L each realized (read-only from state.db's plain columns: no field key needed)."""
from __future__ import annotations

import csv
import json
import sqlite3
import sys
from dataclasses import asdict, fields

import click

from tradeguard.commands._common import config_options
from tradeguard.commands.blackbox_cmd import TIME
from tradeguard.config import Config
from tradeguard.exceptions import UserError


@click.command("trades")
@click.option("--since", type=TIME, help="Only fills from TIME (ISO 8601, or 10m / 2h / 1d ago).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of fills.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@config_options
def trades(cfg: Config, since: float | None, as_json: bool, as_csv: bool) -> None:
    """List fills: time, symbol, side, amount, price, fee, realized P&L, position after."""
    from blackbox.events import format_ts
    from trading.pnl import Trade, trades as read_trades

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    db = cfg.runtime.state_db
    if not db.is_file():
        raise UserError(f"no state.db at {db} (check --data-dir or [paths] data_dir)")
    try:
        rows = read_trades(db, since)
    except sqlite3.Error as e:
        raise UserError(f"{db} cannot be read: {e}") from None
    if as_json:
        click.echo(json.dumps([asdict(t) for t in rows], indent=2))
    elif as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow([f.name for f in fields(Trade)])
        w.writerows([[getattr(t, f.name) for f in fields(Trade)] for t in rows])
    else:
        click.echo(f"{'time':<25} {'symbol':<10} {'side':<4} {'amount':>12} {'price':>12} "
                   f"{'fee':>14} {'realized P&L':>13} {'position':>12}")
        for t in rows:
            fee = f"{t.fee:.6g} {t.fee_currency or ''}".strip()
            click.echo(f"{format_ts(t.ts):<25} {t.symbol:<10} {t.side:<4} {t.amount:>12.8g} "
                       f"{t.price:>12.8g} {fee:>14} {t.realized_pnl:>+13.4f} {t.position_after:>12.8g}")
        realized = sum(t.realized_pnl for t in rows)
        click.echo(f"{len(rows)} fills, realized P&L {realized:+.4f}"
                   + ("" if since is None else f" since {format_ts(since)}"))
