"""Options every command takes (``--config``, ``--data-dir``, ``--logs-dir``) and error handling."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from tradeguard.config import load_config



def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the common options and pass the loaded, validated ``cfg: Config`` to the command."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="Configuration file (default: $TRADEGUARD_CONFIG or ./tradeguard.toml).")
    @click.option("--data-dir", type=click.Path(file_okay=False),
                  help="Runtime state directory (overrides [paths] data_dir).")
    @click.option("--logs-dir", type=click.Path(file_okay=False),
                  help="Logs directory (overrides [paths] logs_dir).")
    @functools.wraps(fn)
    def wrapper(config_path: str | None, data_dir: str | None, logs_dir: str | None,
                **kwargs: Any) -> Any:
        cfg = load_config(config_path, data_dir=data_dir, logs_dir=logs_dir)
        return fn(cfg=cfg, **kwargs)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    """Print an error for the operator and exit with ``code`` (1 check failed, 2 usage)."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


