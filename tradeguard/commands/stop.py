"""``tradeguard stop``: end the ``tradeguard run`` of a data dir cleanly.

Asks its supervisord to shut down over XML-RPC (each program gets SIGTERM and its stop grace);
when the socket does not answer, sends SIGTERM to the supervisord that holds the run lock. Waits
until the run has ended. Works with a broken configuration too (like ``kill``).
"""
from __future__ import annotations

import os
import signal
import time
import xmlrpc.client

import click

from tradeguard.commands._common import fail, lenient_config_options
from tradeguard.config import Config
from tradeguard.exceptions import SecretError
from tradeguard.lifetime import lock_holder


def _is_our_supervisord(pid: int) -> bool:
    import psutil

    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "tradeguard.supervisord_main" in cmd or "supervisord" in cmd


def _ask_to_shut_down(cfg: Config, pid: int) -> str:
    from tradeguard.runner import supervisor_rpc

    try:
        supervisor_rpc(cfg).supervisor.shutdown()
        return "supervisord shutdown over XML-RPC"
    except (OSError, ValueError, KeyError, SecretError, xmlrpc.client.Error) as e:
        if pid <= 0 or not _is_our_supervisord(pid):
            fail(f"supervisord does not answer ({e}) and pid {pid} is not a supervisord; "
                 f"stop the run by hand", 1)
        os.kill(pid, signal.SIGTERM)
        return f"SIGTERM to supervisord pid {pid} (XML-RPC: {e})"


@click.command("stop")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for every program to stop.")
@lenient_config_options
def stop(cfg: Config, timeout: float) -> None:
    """Stop the `tradeguard run` of this data dir (paper exchange, bot, watchdog) and wait."""
    data_dir = cfg.runtime.data_dir
    pid = lock_holder(data_dir, "run")
    if pid is None:
        click.echo(f"no tradeguard run for {data_dir}: nothing to stop")
        return
    how = _ask_to_shut_down(cfg, pid)
    click.echo(f"stopping tradeguard run (pid {pid}): {how}")
    deadline = time.monotonic() + timeout
    while lock_holder(data_dir, "run") is not None:
        if time.monotonic() >= deadline:
            fail(f"the run (pid {pid}) is still running after {timeout:g} s", 1)
        time.sleep(0.1)
    click.echo("stopped")
