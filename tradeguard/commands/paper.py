"""``tradeguard paper-exchange``: the local Binance-spot paper exchange."""
from __future__ import annotations

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config
from tradeguard.lifetime import die_with_run


@click.command("paper-exchange")
@click.option("--host", help="Bind address (default [paper] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default [paper] port, 8765).")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback bind address (exposes the exchange to the network).")
@config_options
def paper_exchange(cfg: Config, host: str | None, port: int | None, allow_remote: bool) -> None:
    """Run the paper exchange (Binance spot REST subset, fault injection) until SIGTERM or Ctrl-C."""
    die_with_run()  # under `tradeguard run`: never outlive supervisord
    from paper_exchange.server import serve

    serve(cfg, host=host, port=port, allow_remote=allow_remote)
