"""Every command takes --config, --data-dir and --logs-dir (README, "Commands")."""
from __future__ import annotations

import click

from tests.helpers.proc import run_cli
from tradeguard.cli import cli


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaves(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_takes_the_common_options() -> None:
    missing = [" ".join(path) for path, cmd in _leaves(cli)
               if not {"--config", "--data-dir", "--logs-dir"} <= {o for p in cmd.params for o in p.opts}]
    assert missing == []
    assert {"stop", "trades"} <= set(cli.commands)


def test_chaos_list_and_run_accept_them(tmp_path) -> None:
    r = run_cli("chaos", "list", "--data-dir", str(tmp_path), "--logs-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0 and "bot-sigkill" in r.stdout
    r = run_cli("chaos", "run", "--scenario", "nope", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "unknown scenario" in r.stderr
