"""The health endpoint's WSGI app: every route (unknown ones too) behind authentication.

Authentication comes first, for every request: Basic or Bearer, chosen by the scheme of the
``Authorization`` header (matched case-insensitively, RFC 7235). Failures get one uniform 401
(or 429 with ``Retry-After`` when a limit refused the attempt unchecked: see
:mod:`watchdog.health.auth`), whatever went wrong: nothing tells a stranger which part was wrong,
or whether a route exists. An authenticated ``OPTIONS`` is answered 204 with ``Allow``.

Plain WSGI, no web framework: three JSON/text routes behind one header check, in a process that
runs for months beside the bot; Flask (with jinja2, blinker, itsdangerous) and werkzeug cost the
watchdog ~7 MB of memory for them (see docs/BENCHMARKS.md, issue 20).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
from http import HTTPStatus
from typing import Any, Callable, Iterable

from blackbox.redact import redact, redact_text
from watchdog.health.assess import HEALTHY
from watchdog.health.auth import Authenticator

log = logging.getLogger(__name__)

REALM = "tradeguard"
MAX_AUTH_HEADER = 4096  # a token or user:password never needs more; longer is refused unparsed
CHALLENGE = f'Basic realm="{REALM}", Bearer realm="{REALM}"'
HEALTHY_BODY = json.dumps({"status": HEALTHY}).encode()
Snapshot = Callable[[], dict[str, Any]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ROUTES = {"/health": "health", "/health/detailed": "detailed", "/metrics": "metrics"}
METHODS = ("GET", "HEAD")  # OPTIONS is answered before routing


class Response:
    """A status, headers and a body, sent by ``__call__`` as a WSGI app (no body for HEAD)."""

    def __init__(self, body: bytes | str = b"", status: int = 200,
                 content_type: str | None = None, headers: dict[str, str] | None = None):
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status = status
        self.headers = dict(headers or {})
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers = dict(self.headers)
        if self.status != 204:
            headers["Content-Length"] = str(len(self.body))
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", list(headers.items()))
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [self.body]


class _Blocking(Exception):
    """Answering would block (a password check, a snapshot to build): not in the server's loop."""


class _HttpError(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return str(o)


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, separators=(",", ":"), default=_default) + "\n"
    return Response(text, status=status, content_type="application/json")


def _basic_credentials(header: str) -> tuple[str, str]:
    """(user, password) of a Basic header; ("", "") when it is not one that parses."""
    try:
        _scheme, encoded = header.encode("utf-8").split(b" ", 1)
        user, password = base64.b64decode(encoded).split(b":", 1)
    except (ValueError, TypeError, binascii.Error):
        return "", ""
    try:
        return user.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return user.decode("latin1"), password.decode("latin1")


class _HealthApp:
    """The WSGI callable over ``snapshot`` (a callable returning build_snapshot's dict)."""

    def __init__(self, snapshot: Snapshot, auth: Authenticator):
        self._snapshot = snapshot
        self._auth = auth

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self._call(environ, start_response, inline=False)

    def inline(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes] | None:
        """Answer at once if that cannot block, else None: the server then calls the app in a
        worker thread. Blocking: a password check (scrypt), a snapshot to build (the bot's files,
        state.db), the heavier routes. A token, a cached login, a refused attempt and ``/health``
        from a fresh snapshot are answered in the server's loop."""
        try:
            return self._call(environ, start_response, inline=True)
        except _Blocking:
            return None

    def _call(self, environ: dict[str, Any], start_response: Callable[..., Any],
              inline: bool) -> Iterable[bytes]:
        try:
            resp = self._respond(environ, inline)
        except _Blocking:
            raise
        except _HttpError as e:
            resp = _json({"error": HTTPStatus(e.status).phrase.lower()}, e.status)
        except Exception:  # noqa: BLE001 - a broken snapshot must not take the endpoint down
            log.exception("health endpoint error on %s", environ.get("PATH_INFO"))
            resp = _json({"error": "internal error"}, 500)
        resp.headers["Cache-Control"] = "no-store"
        return resp(environ, start_response)

    def _snapshot_fresh(self) -> bool:
        fresh = getattr(self._snapshot, "fresh", None)
        return bool(fresh()) if callable(fresh) else False

    def _respond(self, environ: dict[str, Any], inline: bool = False) -> Response:
        header = environ.get("HTTP_AUTHORIZATION", "")
        addr = environ.get("REMOTE_ADDR") or "?"
        retry: list[int | None] = [None]
        if len(header) > MAX_AUTH_HEADER or not self._authenticated(addr, header, retry, inline):
            return self._deny(addr, "HTTP_AUTHORIZATION" in environ, retry[0])
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "OPTIONS":
            return Response(status=204, headers={"Allow": "GET, HEAD, OPTIONS"})
        endpoint = ROUTES.get(environ.get("PATH_INFO", ""))
        if endpoint is None:
            raise _HttpError(404)
        if method not in METHODS:
            raise _HttpError(405)
        if inline and (endpoint != "health" or not self._snapshot_fresh()):
            raise _Blocking
        return getattr(self, "_" + endpoint)()

    def _authenticated(self, addr: str, header: str, retry: list[int | None], inline: bool) -> bool:
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return bool(self._auth.bearer(rest.strip()))
        username, password = _basic_credentials(header) if header else ("", "")
        if not username:  # no header, or not a parseable Basic one: nothing worth a scrypt run
            return False
        if inline and self._auth.basic_needs_check(addr, username, password):
            raise _Blocking
        user, retry[0] = self._auth.basic(addr, username, password)
        return user not in (None, False)  # refused unchecked (retry set): answered 429

    def _deny(self, addr: str, had_header: bool, retry: int | None) -> Response:
        retry = retry or self._auth.limiter.retry_after(addr)
        if retry is None and had_header:
            self._auth.limiter.failed(addr)  # missing credentials cost nothing and are not counted
        if retry is not None:
            resp = _json({"error": "too many failed attempts"}, 429)
            resp.headers["Retry-After"] = str(retry)
            self._auth.told_to_wait(addr, retry)
        else:
            resp = _json({"error": "unauthorized"}, 401)
        resp.headers["WWW-Authenticate"] = CHALLENGE
        return resp

    def _health(self) -> Response:
        s = self._snapshot()
        if s["status"] == HEALTHY:  # the hot path of every monitor: a prebuilt body
            return Response(HEALTHY_BODY, content_type="application/json")
        return _json(redact({"status": s["status"], "reason": s["reason"]}), 503)

    def _detailed(self) -> Response:
        return _json(redact(self._snapshot()))

    def _metrics(self) -> Response:
        # imported at the first scrape: prometheus_client costs a watchdog nobody scrapes ~1 MB
        from watchdog.health.metrics import CONTENT_TYPE, render_metrics

        snap: list[dict[str, Any]] = []

        def once() -> dict[str, Any]:  # render_metrics may ask more than once: one snapshot
            if not snap:
                snap.append(self._snapshot())
            return snap[0]

        text = redact_text(render_metrics(once).decode("utf-8"))
        return Response(text, content_type=CONTENT_TYPE)


def create_app(snapshot: Snapshot, auth: Authenticator) -> WsgiApp:
    """The WSGI app over ``snapshot`` (a callable returning build_snapshot's dict)."""
    return _HealthApp(snapshot, auth)
