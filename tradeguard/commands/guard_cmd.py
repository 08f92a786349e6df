"""``tradeguard watchdog-guard``: the supervisord event listener that replaces a hung watchdog
under ``tradeguard run`` (started by it; not meant to be run by hand)."""
from __future__ import annotations

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config


@click.command("watchdog-guard", hidden=True)
@click.option("--stale-s", type=click.FloatRange(6, 3600), default=15.0, show_default=True,
              help="Replace the watchdog when watchdog.json has not changed for this long.")
@config_options
def watchdog_guard(cfg: Config, stale_s: float) -> None:
    """Replace a watchdog that stopped refreshing its state file (supervisord event listener)."""
    import logging

    from blackbox import recorder
    from tradeguard.logsetup import setup_logging
    from tradeguard.runner import supervisor_rpc
    from tradeguard.watchdog_guard import WatchdogGuard, serve
    from watchdog.alerts import Alerter

    paths = cfg.runtime.ensure()
    setup_logging("watchdog-guard", paths.logs_dir)  # stdout belongs to the listener protocol
    recorder.init(paths, "watchdog-guard", cfg.blackbox)
    alerter = Alerter(cfg.alerts, secrets_paths=paths)
    log = logging.getLogger("tradeguard.watchdog_guard")

    def on_action(what: str) -> None:
        log.critical(what)
        recorder.record("runner.watchdog_replaced", "watchdog-guard", what, severity="critical",
                        critical=True)
        alerter.send("watchdog_replaced", what)

    guard = WatchdogGuard(paths.watchdog_state, lambda: supervisor_rpc(cfg).supervisor, stale_s)
    try:
        serve(guard, on_action)
    finally:
        alerter.stop()
        recorder.flush()
