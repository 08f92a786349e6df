"""``tradeguard bot``: run the trading bot in the foreground (DESIGN.md, "The order lifecycle")."""
from __future__ import annotations

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config
from tradeguard.lifetime import die_with_run


@click.command("bot")
@config_options
def bot(cfg: Config) -> None:
    """Run the trading bot: strategy, risk limits, orders, reconciliation, heartbeat."""
    die_with_run()  # under `tradeguard run`: never outlive supervisord
    from bot.main import run_bot
    from tradeguard.logsetup import setup_logging

    setup_logging("bot", cfg.runtime.logs_dir)
    raise SystemExit(run_bot(cfg))
