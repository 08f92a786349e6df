"""``tradeguard config check|show``."""
from __future__ import annotations

import json

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config


@click.group("config")
def config() -> None:
    """Validate or show the effective configuration."""


@config.command("check")
@config_options
def check(cfg: Config) -> None:
    """Validate the configuration; exit 2 naming the bad key if it is wrong."""
    src = cfg.source or "defaults (no config file)"
    click.echo(f"configuration OK: {src}")
    click.echo(f"  exchange: {cfg.exchange.id} {', '.join(cfg.exchange.symbols)}")
    click.echo(f"  data dir: {cfg.paths.data_dir}")
    click.echo(f"  logs dir: {cfg.paths.logs_dir}")


@config.command("show")
@config_options
def show(cfg: Config) -> None:
    """Print the effective configuration (file + environment overrides) as JSON."""
    click.echo(json.dumps(cfg.to_dict(), indent=2))
