"""``tradeguard health check | token [--rotate] | passwd USER``: the health endpoint's client side."""
from __future__ import annotations

import sys

import click

from tradeguard.commands._common import config_options, fail
from tradeguard.config import Config


@click.group("health")
def health() -> None:
    """Check the health endpoint, manage its bearer token and HTTP Basic users."""


@health.command("check")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds to wait for an answer.")
@config_options
def check(cfg: Config, timeout: float) -> None:
    """Exit 0 if GET /health answers 200, else 1 with the reason (for scripts and monitors)."""
    from tradeguard.exceptions import HealthUnreachable
    from watchdog.health.client import endpoint_url, get

    try:
        reply = get(cfg, "/health", timeout=timeout)
    except HealthUnreachable as e:
        fail(str(e))
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status == 200:
        click.echo(f"healthy ({endpoint_url(cfg)})")
        return
    if reply.status == 503:
        fail(f"unhealthy: {body.get('status', '?')}: {body.get('reason', '')}")
    if reply.status in (401, 429) and not cfg.runtime.health_token.exists():
        fail(f"no token in {cfg.runtime.health_token} to authenticate with (HTTP {reply.status}); "
             "is this the data dir of the running watchdog?")
    if reply.status in (401, 429):
        fail(f"the endpoint refused the token in {cfg.runtime.health_token} (HTTP {reply.status}); "
             "is this the data dir of the running watchdog?")
    fail(f"unexpected answer HTTP {reply.status} from {endpoint_url(cfg)}")


@health.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token; the running endpoint uses the "
              "new one from its next request, the old one stops working.")
@config_options
def token(cfg: Config, rotate: bool) -> None:
    """Show where the bearer token is, or replace it with --rotate."""
    from watchdog.health.tokens import ensure_token, rotate_token

    paths = cfg.runtime.ensure()
    if rotate:
        _, path = rotate_token(paths)
        click.echo(f"new bearer token written to {path} (mode 0600); the old one no longer works.")
    else:
        created, path = ensure_token(paths)
        click.echo(f"bearer token {'created in' if created else 'in'} {path} (mode 0600)")
    click.echo(f"use it: curl -H \"Authorization: Bearer $(cat {path})\" "
               f"http://{cfg.health.host}:{cfg.health.port}/health")


@health.command("passwd")
@click.argument("user")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (for scripts).")
@config_options
def passwd(cfg: Config, user: str, password_stdin: bool) -> None:
    """Set USER's HTTP Basic password in the credentials file (scrypt hash, file mode 0600)."""
    from watchdog.health.passwords import credentials_path, set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"password for {user}", hide_input=True,
                                confirmation_prompt="repeat it")
    if not password:
        fail("the password must not be empty", code=2)
    path = credentials_path(cfg)
    cfg.runtime.ensure()
    existed = set_password(path, user, password)
    click.echo(f"{'changed' if existed else 'added'} {user} in {path}; the running endpoint "
               "accepts it from the next request")
    if user in cfg.health.users:
        click.echo(f"note: this overrides [health] users.{user} of the config", err=True)
