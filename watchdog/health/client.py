"""A small client of the local health endpoint, for ``tradeguard status`` and ``health check``.

Standard library only (the CLI must not need test dependencies), proxies ignored (the token
must never be sent to an HTTP proxy from the environment), bearer token from
``data/health.token``.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tradeguard.config import Config
from tradeguard.exceptions import HealthUnreachable
from watchdog.health.tokens import read_token

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON


def endpoint_url(cfg: Config) -> str:
    """Where this host reaches its health endpoint (a wildcard bind is reached on loopback)."""
    host = _WILDCARDS.get(cfg.health.host, cfg.health.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.health.port}"


def get(cfg: Config, path: str, *, timeout: float = 3.0) -> Reply:
    """GET ``path`` with the bearer token (if there is a token file). Raises HealthUnreachable
    when nothing answers; any HTTP status is a Reply."""
    url = endpoint_url(cfg) + path
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    token = read_token(cfg.runtime)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Reply(resp.status, _parse(resp.read()))
    except urllib.error.HTTPError as e:
        with e:
            return Reply(e.code, _parse(e.read()))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HealthUnreachable(f"health endpoint {endpoint_url(cfg)} unreachable: {reason}") from None


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
