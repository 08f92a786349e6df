"""``tradeguard watchdog``: supervise the bot (DESIGN.md, "Watchdog policy")."""
from __future__ import annotations

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config
from tradeguard.lifetime import die_with_run


@click.command("watchdog")
@config_options
def watchdog(cfg: Config) -> None:
    """Restart the bot when it dies, hangs, stalls or leaks; flatten when it cannot come back."""
    die_with_run()  # under `tradeguard run`: never outlive supervisord
    from tradeguard.logsetup import setup_logging
    from watchdog.main import run_watchdog

    setup_logging("watchdog", cfg.runtime.logs_dir)
    raise SystemExit(run_watchdog(cfg))
