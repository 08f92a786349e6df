"""The ``tradeguard`` command line: one group, commands assembled from ``tradeguard.commands``.

Only commands that work are registered, so ``--help`` never lists a promise.
"""
from __future__ import annotations

import importlib
import sys

import click

from tradeguard import __version__
from tradeguard.exceptions import UserError

# (module under tradeguard.commands, attribute) — each attribute is a click command or group.
COMMANDS = [
    ("config_cmd", "config"),
    ("db", "db"),
    ("keys", "keys"),
    ("paper", "paper_exchange"),
    ("run", "run"),
    ("blackbox_cmd", "blackbox"),
    ("kill", "kill"),
    ("kill", "resume"),
    ("health", "health"),
    ("status", "status"),
    ("bot", "bot"),
    ("watchdog_cmd", "watchdog"),
    ("guard_cmd", "watchdog_guard"),
    ("chaos_cmd", "chaos"),
]


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tradeguard")
def cli() -> None:
    """Run a trading bot unattended and keep it from hurting its owner."""


for _mod, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"tradeguard.commands.{_mod}"), _attr))


def main() -> None:
    cli(prog_name="tradeguard")


if __name__ == "__main__":
    sys.exit(main())
