"""``tradeguard run``: the whole system under supervisord in the foreground."""
from __future__ import annotations

import importlib.util
import os

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config
from tradeguard.lifetime import hold_lock


def _announce_health(cfg: Config) -> None:
    """Print where the health endpoint is and where its token is (never the token: a terminal's
    scrollback, a tmux log or a CI log would keep it)."""
    if not cfg.health.enabled or importlib.util.find_spec("watchdog.health.tokens") is None:
        return
    from watchdog.health.tokens import ensure_token

    created, path = ensure_token(cfg.runtime)
    click.echo(f"health endpoint: http://{cfg.health.host}:{cfg.health.port}/health "
               f"(bearer token {'created in' if created else 'in'} {path}, mode 0600)")


@click.command("run")
@click.option("--only", multiple=True, type=click.Choice(["paper-exchange", "bot", "watchdog"]),
              help="Start only these programs (repeatable); default: all that apply.")
@config_options
def run(cfg: Config, only: tuple[str, ...]) -> None:
    """Run the paper exchange, the bot and the watchdog under supervisord (Ctrl-C stops all)."""
    from tradeguard.runner import default_programs, exec_supervisord, preflight, \
        write_supervisord_conf

    programs = only or default_programs(cfg)
    if "bot" in programs:  # what the bot would refuse at start, refused before anything starts
        from bot.preflight import check_exchange, check_strategy

        check_strategy(cfg)
        check_exchange(cfg)
    # Held by supervisord after the exec, until it dies: one run per data dir.
    _lock = hold_lock(cfg.runtime.ensure().data_dir, "run", "tradeguard run", inheritable=True)
    preflight(cfg, programs)
    conf = write_supervisord_conf(cfg, programs, run_pid=os.getpid())
    click.echo(f"tradeguard: starting {', '.join(programs)} under supervisord")
    click.echo(f"  data: {cfg.paths.data_dir}   logs: {cfg.paths.logs_dir}")
    if "watchdog" in programs:
        _announce_health(cfg)
    click.echo("  kill switch: tradeguard kill --reason '...'   status: tradeguard status   "
               "stop: tradeguard stop (or Ctrl-C)")
    exec_supervisord(conf)
