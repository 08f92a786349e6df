"""Serving the health app from a thread of the watchdog (:mod:`watchdog.health.httpserver`: one
asyncio loop, guarded against slow and hostile clients).

``start_health_server(cfg, snapshot)`` creates the token on first start, binds (raising OSError
when the address is taken, so the watchdog can carry on without its status page), and serves
in a daemon thread; ``.stop()`` stops accepting, lets requests being served finish, closes every
connection from inside the server's loop, joins its threads, and leaves the port free.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from tradeguard.config import Config
from tradeguard.net import is_loopback
from tradeguard.exceptions import SecretError
from watchdog.health.app import create_app
from watchdog.health.auth import Authenticator
from watchdog.health.httpserver import HttpServer
from watchdog.health.tokens import ensure_token

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
SNAPSHOT_TTL_S = 0.2  # under load, at most 5 snapshots a second whatever the request rate


class ThrottledSnapshot:
    """Reuses one snapshot for ``ttl_s``: concurrent polls share the cost of building it. A fresh
    one is taken without the lock, so the server's loop never waits for a thread building one."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], ttl_s: float = SNAPSHOT_TTL_S):
        self.snapshot, self.ttl_s = snapshot, ttl_s
        self._lock = threading.Lock()
        self._held: tuple[dict[str, Any], float] | None = None  # (snapshot, expires): one object

    def __call__(self) -> dict[str, Any]:
        held = self._held
        if held is not None and time.monotonic() < held[1]:
            return held[0]
        with self._lock:
            held = self._held
            now = time.monotonic()
            if held is None or now >= held[1]:
                held = (self.snapshot(), now + self.ttl_s)
                self._held = held
            return held[0]

    def fresh(self) -> bool:
        """A snapshot is held and younger than the TTL (taking it will not build one)."""
        held = self._held
        return held is not None and time.monotonic() < held[1]


class HealthServer:
    """A running health endpoint: ``.port``, ``.url``, ``.http`` (the server), ``.stop()``."""

    def __init__(self, http: HttpServer, host: str, auth: Authenticator | None = None):
        self.http = http
        self._auth = auth
        self.host = host
        self.port = http.port
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self._stopped = threading.Event()

    def start(self) -> "HealthServer":
        self.http.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop accepting, let requests being served finish and their responses drain, then
        close every connection and end the server's threads (all bounded by ``timeout``);
        idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if not self.http.stop(timeout):
            log.warning("health endpoint loop did not stop in %.1fs", timeout)
        if self._auth is not None:
            self._auth.close()
        log.info("health endpoint on %s stopped", self.url)


def start_health_server(cfg: Config, snapshot: Callable[[], dict[str, Any]], *,
                        clock: Callable[[], float] = time.monotonic) -> HealthServer:
    """Serve ``/health``, ``/health/detailed`` and ``/metrics`` on ``[health] host:port``.

    ``clock`` drives the failure window and the auth cache (tests inject one)."""
    h = cfg.health
    token_path = cfg.runtime.ensure().health_token
    try:
        if ensure_token(cfg.runtime)[0] is not None:
            log.info("health bearer token created in %s (mode 0600)", token_path)
    except SecretError as e:  # the watchdog matters more than its status page: serve, refuse the token
        log.error("bearer token refused until it is fixed: %s", e)
    auth = Authenticator(cfg, clock=clock)
    if not is_loopback(h.host):
        log.warning("health endpoint binds to non-loopback address %s: it speaks plain HTTP, so "
                    "TLS must come from a reverse proxy in front of it", h.host)
    app = create_app(ThrottledSnapshot(snapshot), auth)
    try:
        server = HttpServer(app, host=h.host, port=h.port, max_connections=h.max_connections,
                            per_client=h.max_connections_per_client,
                            request_timeout_s=h.request_timeout_s, throttled=auth.waiting)
    except BaseException:
        auth.close()
        raise
    hs = HealthServer(server, h.host, auth).start()
    log.info("health endpoint listening on %s (bearer token %s, %d Basic user(s))", hs.url,
             token_path, len(auth.users))
    return hs
