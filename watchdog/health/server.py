"""Serving the health app from a thread of the watchdog, with waitress (a production WSGI server)
guarded against slow clients (:mod:`watchdog.health.guard`).

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

from waitress import wasyncore

from tradeguard.config import Config
from tradeguard.net import is_loopback
from tradeguard.exceptions import SecretError
from watchdog.health.app import create_app
from watchdog.health.auth import Authenticator
from watchdog.health.guard import GuardedServer
from watchdog.health.tokens import ensure_token

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
DRAIN_S = 1.0  # longest wait for answered requests' bytes to leave at stop
SNAPSHOT_TTL_S = 0.2  # under load, at most 5 snapshots a second whatever the request rate
_WAITRESS = dict(
    threads=4,
    ident="tradeguard",               # no server version in responses
    max_request_header_size=16384,    # beyond this waitress answers 431 itself
    max_request_body_size=1024,       # every route is a GET
    channel_timeout=30,                # idle kept-alive connections; unfinished requests: guard
    expose_tracebacks=False,
    clear_untrusted_proxy_headers=True,
)


class ThrottledSnapshot:
    """Reuses one snapshot for ``ttl_s``: concurrent polls share the cost of building it."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], ttl_s: float = SNAPSHOT_TTL_S):
        self.snapshot, self.ttl_s = snapshot, ttl_s
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._expires = 0.0

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now >= self._expires:
                self._value = self.snapshot()
                self._expires = now + self.ttl_s
            return self._value


class HealthServer:
    """A running health endpoint: ``.port``, ``.url``, ``.stop()``."""

    def __init__(self, server: Any, host: str, auth: Authenticator | None = None):
        self._server = server
        self._auth = auth
        self.host = host
        self.port = int(server.effective_port)
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)
        self._stopped = threading.Event()

    def _serve(self) -> None:
        try:
            self._server.run()
        except Exception:  # noqa: BLE001 - the watchdog must outlive its status page
            log.exception("health endpoint stopped by an error")

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop accepting, let requests being served finish and their responses drain, then
        close every connection and join the threads (all bounded by ``timeout``); idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        server = self._server
        deadline = time.monotonic() + timeout
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        # Sockets belong to the server's loop thread: close them from inside it (a trigger thunk).
        server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=left())
        drain_until = time.monotonic() + min(DRAIN_S, left())
        while time.monotonic() < drain_until and any(
                getattr(ch, "total_outbufs_len", 0) for ch in list(server._map.values())):
            time.sleep(0.01)
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        except OSError:  # the loop already ended and closed its trigger: nothing left to wake
            pass
        self._thread.join(left())
        if self._thread.is_alive():
            log.warning("health endpoint loop did not stop in %.1fs; closing from outside", timeout)
            wasyncore.close_all(server._map, ignore_all=True)
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
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "queue depth" noise under load
    app = create_app(ThrottledSnapshot(snapshot), auth)
    server = GuardedServer(app, host=h.host, port=h.port, max_connections=h.max_connections,
                           per_client=h.max_connections_per_client,
                           request_timeout_s=h.request_timeout_s, throttled=auth.waiting,
                           **_WAITRESS)
    hs = HealthServer(server, h.host, auth).start()
    log.info("health endpoint listening on %s (bearer token %s, %d Basic user(s))", hs.url,
             token_path, len(auth.users))
    return hs
