"""``tradeguard config check|show``."""
from __future__ import annotations

import json
from typing import Callable

import click

from tradeguard.commands._common import config_options
from tradeguard.config import Config
from tradeguard.exceptions import KeyFileError, UserError


@click.group("config")
def config() -> None:
    """Validate or show the effective configuration."""


def _health_user_problems(cfg: Config) -> list[str]:
    """Every ``[health] users`` entry and credentials-file line that the watchdog would ignore."""
    from tradeguard.secrets import check_private
    from watchdog.health.passwords import USER_RE, PasswordHashError, credentials_path, parse_hash

    def bad(user: str, h: str) -> str | None:
        if not USER_RE.fullmatch(user):
            return f"user name must match {USER_RE.pattern}"
        try:
            parse_hash(h)
        except PasswordHashError as e:
            return f"{e}; set it with 'tradeguard health passwd {user}'"
        return None

    problems = [f"[health] users.{u}: {why}" for u, h in cfg.health.users.items()
                if (why := bad(u, h)) is not None]
    path = credentials_path(cfg)
    if not path.exists():
        return problems
    try:
        check_private(path)
        text = path.read_text(encoding="utf-8")
    except KeyFileError as e:
        return problems + [str(e)]
    except (OSError, UnicodeDecodeError) as e:
        return problems + [f"{path} cannot be read: {e}"]
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            user, sep, h = line.partition(":")
            why = bad(user, h) if sep else "expected user:scrypt$..."
            if why is not None:
                problems.append(f"{path} line {no}: {why}")
    return problems


@config.command("check")
@config_options
def check(cfg: Config) -> None:
    """Check what the bot and the watchdog check at start; exit 2 naming each problem."""
    from bot.preflight import check_exchange, check_strategy

    def strategy() -> str:
        loaded = check_strategy(cfg)
        return f"{type(loaded.instance).__name__} from {cfg.bot.strategy} {loaded.params or ''}"

    def exchange() -> str:
        return f"{check_exchange(cfg)}; symbols {', '.join(cfg.exchange.symbols)}"

    problems: list[str] = []
    found: dict[str, str] = {}
    checks: dict[str, Callable[[], str]] = {"strategy": strategy, "exchange": exchange}
    for name, run_check in checks.items():
        try:
            found[name] = run_check()
        except UserError as e:
            problems.append(str(e))
    if cfg.health.enabled:
        problems += _health_user_problems(cfg)
    if problems:
        for p in problems:
            click.echo(f"error: {p}", err=True)
        raise SystemExit(2)
    src = cfg.source or "defaults (no config file)"
    click.echo(f"configuration OK: {src}")
    click.echo(f"  strategy: {found['strategy']}")
    click.echo(f"  exchange: {found['exchange']}")
    click.echo(f"  data dir: {cfg.paths.data_dir}")
    click.echo(f"  logs dir: {cfg.paths.logs_dir}")
    _warn_no_paper_exchange(cfg)


def _warn_no_paper_exchange(cfg: Config) -> None:
    """On 'paper' with nothing listening, the bot would wait in safe mode forever: say so."""
    from tradeguard.runner import port_in_use

    if cfg.exchange.id != "paper":
        return
    host = "127.0.0.1" if cfg.paper.host in ("0.0.0.0", "") else cfg.paper.host
    if not port_in_use(host, cfg.paper.port):
        click.echo(f"note: [exchange] id = 'paper' but no paper exchange listens on {host}:"
                   f"{cfg.paper.port} now. `tradeguard run` starts one; otherwise (systemd) set "
                   "[exchange] id to your exchange's ccxt id, or run `tradeguard paper-exchange`.")


@config.command("show")
@config_options
def show(cfg: Config) -> None:
    """Print the effective configuration (file + environment overrides) as JSON."""
    click.echo(json.dumps(cfg.to_dict(), indent=2))
