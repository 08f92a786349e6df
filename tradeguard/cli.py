"""The ``tradeguard`` command line: one group, commands assembled from ``tradeguard.commands``.

Only commands that work are registered, so ``--help`` never lists a promise.
"""
from __future__ import annotations

import importlib
import os
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
    ("stop", "stop"),
    ("blackbox_cmd", "blackbox"),
    ("kill", "kill"),
    ("kill", "resume"),
    ("health", "health"),
    ("status", "status"),
    ("trades", "trades"),
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
        except PermissionError as e:  # a file or directory the checks up front did not cover
            click.echo(f"error: permission denied: {e.filename or e}: run as the user that owns "
                       "the data and logs dirs, or fix their permissions", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tradeguard")
def cli() -> None:
    """Run a trading bot unattended and keep it from hurting its owner."""


for _mod, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"tradeguard.commands.{_mod}"), _attr))


# Every tradeguard process (each is started through main(), supervisord's and systemd's children
# too) creates its files for its owner alone, whatever umask it inherited: state, keys, logs,
# dumps and sockets carry positions, tokens and exchange details (systemd's UMask= agrees).
UMASK = 0o077


def main() -> None:
    os.umask(UMASK)
    cli(prog_name="tradeguard")


if __name__ == "__main__":
    sys.exit(main())
