"""Options every command takes (``--config``, ``--data-dir``, ``--logs-dir``) and error handling."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from tradeguard.config import fallback_config, load_config
from tradeguard.exceptions import ConfigError


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``, ``--data-dir``, ``--logs-dir`` passed through as ``config_path``, ``data_dir``,
    ``logs_dir`` (for commands that interpret them themselves)."""
    fn = click.option("--logs-dir", type=click.Path(file_okay=False),
                      help="Logs directory (overrides [paths] logs_dir).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False),
                      help="Runtime state directory (overrides [paths] data_dir).")(fn)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="Configuration file (default: $TRADEGUARD_CONFIG or ./tradeguard.toml).")(fn)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the common options and pass the loaded, validated ``cfg: Config`` to the command."""

    @common_options
    @functools.wraps(fn)
    def wrapper(config_path: str | None, data_dir: str | None, logs_dir: str | None,
                **kwargs: Any) -> Any:
        cfg = load_config(config_path, data_dir=data_dir, logs_dir=logs_dir)
        return fn(cfg=cfg, **kwargs)

    return wrapper


def lenient_config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like :func:`config_options`, but an invalid configuration is reported, not fatal.

    For the commands that must work whatever else is wrong (the kill switch): the command gets
    the defaults with the best-known directories (:func:`tradeguard.config.fallback_config`).
    """

    @common_options
    @functools.wraps(fn)
    def wrapper(config_path: str | None, data_dir: str | None, logs_dir: str | None,
                **kwargs: Any) -> Any:
        try:
            cfg = load_config(config_path, data_dir=data_dir, logs_dir=logs_dir)
        except ConfigError as e:
            cfg = fallback_config(config_path, data_dir=data_dir, logs_dir=logs_dir)
            click.echo(f"warning: the configuration is invalid: {e}\n"
                       f"warning: going on with data dir {cfg.paths.data_dir} "
                       "(from --data-dir, TRADEGUARD_PATHS_DATA_DIR, the file's [paths] or the "
                       "default); fix the configuration before the next start", err=True)
        return fn(cfg=cfg, **kwargs)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    """Print an error for the operator and exit with ``code`` (1 check failed, 2 usage)."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)
