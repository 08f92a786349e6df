"""``tradeguard kill [--flatten] --reason TEXT`` and ``tradeguard resume``: the kill switch by hand.

Both act on ``<data dir>/KILL`` (see :mod:`resilience.killswitch`), record what they did in the
black box (critical: durable before the command returns) and say what the bot will do.
``resume`` exits 1 when ``BOT_EMERGENCY_SHUTDOWN`` in this environment keeps the switch engaged.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any

import click

from tradeguard.commands._common import lenient_config_options
from tradeguard.config import Config

_EFFECT = {
    "halt": "The bot places no new orders and cancels its open entry orders at its next loop; "
            "positions and protective orders stay.",
    "flatten": "The bot cancels its orders and sells what it holds at its next loop; if it has not "
               "done so within [watchdog] flatten_deadline_s ({deadline:g} s), the watchdog stops it "
               "and flattens the positions itself.",
}


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _setup(cfg: Config) -> Any:
    """The kill switch of the data dir; logging only where it can (a broken logs dir must not
    keep the switch from being pulled)."""
    from resilience.killswitch import KillSwitch
    from tradeguard.exceptions import DirectoryError
    from tradeguard.logsetup import setup_logging
    from tradeguard.paths import ensure_writable_dir

    from blackbox import recorder

    paths = cfg.runtime
    ensure_writable_dir(paths.data_dir, "data", "[paths] data_dir or --data-dir", mode=0o700)
    try:
        setup_logging("cli", paths.logs_dir, console=False)
    except DirectoryError as e:
        click.echo(f"warning: {e}; not logging this command to a file (the black box still "
                   "records it)", err=True)
    recorder.init(paths, "cli", cfg.blackbox)  # the switch records what it does, durably
    return KillSwitch(paths.kill_file, environ=os.environ)


def _nonempty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value is None or not value.strip():
        raise click.BadParameter("must not be empty: say why, it is shown to whoever resumes")
    return value.strip()


@click.command("kill")
@click.option("--flatten", is_flag=True,
              help="Also close the bot's positions (default: halt — stop new orders, keep positions).")
@click.option("--reason", required=True, callback=_nonempty,
              help="Why (recorded in the KILL file and the black box).")
@lenient_config_options
def kill(cfg: Config, flatten: bool, reason: str) -> None:
    """Engage the kill switch: the bot stops trading at its next loop."""
    switch = _setup(cfg)
    mode = "flatten" if flatten else "halt"
    before = switch.file_state()
    state = switch.engage(mode, reason, by="cli")
    if state.mode != mode:
        click.echo(f"Kill switch already engaged in flatten mode since {_when(state.at)} by {state.by}: "
                   f"{state.reason}\nNot downgraded to halt.")
    elif state == before:  # nothing was written
        click.echo(f"Kill switch already engaged ({state.mode}) since {_when(state.at)} by {state.by}: "
                   f"{state.reason}\nLeft unchanged.")
    else:
        click.echo(f"Kill switch engaged ({mode}) in {switch.kill_file}: {state.reason}")
    click.echo(_EFFECT[state.mode].format(deadline=cfg.watchdog.flatten_deadline_s))
    env = switch.env_state()
    if env is not None:
        click.echo(f"Note: {env.reason} in this environment also engages it ({env.mode}).")
    click.echo("Run 'tradeguard resume' to release it.")


@click.command("resume")
@lenient_config_options
def resume(cfg: Config) -> None:
    """Release the kill switch (remove the KILL file): the bot trades again at its next loop."""
    switch = _setup(cfg)
    previous = switch.release()
    if previous is None:
        click.echo(f"No kill file at {switch.kill_file}: nothing to release.")
    else:
        click.echo(f"Kill switch released (was {previous.mode} since {_when(previous.at)} by "
                   f"{previous.by}: {previous.reason}).")
    env = switch.env_state()
    if env is not None:
        click.echo(f"error: the kill switch remains engaged by env: {env.reason} ({env.mode}) is set "
                   "in this environment; unset it in the bot's environment (unit file, shell) too.",
                   err=True)
        raise SystemExit(1)
    if previous is not None:
        click.echo("The bot resumes normal trading at its next loop (positions a flatten closed stay closed).")
