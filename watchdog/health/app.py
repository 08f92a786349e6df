"""The health endpoint's Flask app: every route (unknown ones too) behind authentication.

Authentication runs in ``before_request`` through flask-httpauth (Basic or Bearer, chosen by
the scheme of the ``Authorization`` header). Failures get one uniform 401 (or 429 with
``Retry-After`` when a limit refused the attempt unchecked: see :mod:`watchdog.health.auth`),
whatever went wrong: nothing tells a stranger which part was wrong, or whether a route exists.
An authenticated ``OPTIONS`` is answered 204 with ``Allow``; the auth schemes are matched
case-insensitively (RFC 7235).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from flask import Flask, Response, g, jsonify, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth
from werkzeug.exceptions import HTTPException

from blackbox.redact import redact, redact_text
from watchdog.health.assess import HEALTHY
from watchdog.health.auth import Authenticator
from watchdog.health.metrics import CONTENT_TYPE, render_metrics

log = logging.getLogger(__name__)

REALM = "tradeguard"
MAX_AUTH_HEADER = 4096  # a token or user:password never needs more; longer is refused unparsed
CHALLENGE = f'Basic realm="{REALM}", Bearer realm="{REALM}"'
HEALTHY_BODY = json.dumps({"status": HEALTHY}).encode()
Snapshot = Callable[[], dict[str, Any]]


def _client() -> str:
    return request.remote_addr or "?"


class _TokenAuth(HTTPTokenAuth):
    """HTTPTokenAuth whose scheme matches in any case (``bearer``, ``BEARER``: RFC 7235 2.1)."""

    def is_compatible_auth(self, headers: Any) -> bool:
        scheme = headers.get("Authorization", "").split(None, 1)
        return len(scheme) == 2 and scheme[0].lower() == self.scheme.lower()


def create_app(snapshot: Snapshot, auth: Authenticator) -> Flask:
    """The WSGI app over ``snapshot`` (a callable returning build_snapshot's dict)."""
    app = Flask("tradeguard.health")
    app.json.sort_keys = False
    basic, token = HTTPBasicAuth(realm=REALM), _TokenAuth("Bearer", realm=REALM)

    def authenticated() -> bool:
        """The header's scheme picks the check (flask-httpauth's login_required would let
        OPTIONS through unchecked, so the check is called directly for every method)."""
        scheme = token if token.is_compatible_auth(request.headers) else basic
        creds = scheme.get_auth()
        return scheme.authenticate(creds, scheme.get_auth_password(creds)) not in (None, False)

    @basic.verify_password
    def _verify_basic(username: str, password: str) -> str | None:
        if not username:  # no header, or not a parseable Basic one: nothing worth a scrypt run
            return None
        user, g.retry_after = auth.basic(_client(), username, password)
        return user  # refused unchecked (retry_after set): the error handler answers 429

    @token.verify_token
    def _verify_token(tok: str) -> bool:
        return auth.bearer(tok)

    def deny() -> Response:
        addr = _client()
        retry = g.get("retry_after") or auth.limiter.retry_after(addr)
        if retry is None and request.headers.get("Authorization") is not None:
            auth.limiter.failed(addr)  # missing credentials cost nothing and are not counted
        if retry is not None:
            resp = jsonify(error="too many failed attempts")
            resp.status_code = 429
            resp.headers["Retry-After"] = str(retry)
            auth.told_to_wait(addr, retry)
        else:
            resp = jsonify(error="unauthorized")
            resp.status_code = 401
        resp.headers["WWW-Authenticate"] = CHALLENGE
        return resp

    @app.before_request
    def _authenticate() -> Response | None:
        header = request.headers.get("Authorization", "")
        if len(header) > MAX_AUTH_HEADER or not authenticated():
            return deny()
        if request.method == "OPTIONS":
            return Response(status=204, headers={"Allow": "GET, HEAD, OPTIONS"})
        return None

    @app.after_request
    def _no_store(resp: Response) -> Response:
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> tuple[Response, int]:
        return jsonify(error=e.name.lower()), e.code or 500

    @app.errorhandler(Exception)
    def _crash(e: Exception) -> tuple[Response, int]:
        log.exception("health endpoint error on %s", request.path)
        return jsonify(error="internal error"), 500

    def _snap() -> dict[str, Any]:
        if "snap" not in g:
            g.snap = snapshot()
        return g.snap

    @app.get("/health", provide_automatic_options=False)
    def health() -> Response | tuple[Response, int]:
        s = _snap()
        if s["status"] == HEALTHY:  # the hot path of every monitor: a prebuilt body
            return Response(HEALTHY_BODY, content_type="application/json")
        return jsonify(redact({"status": s["status"], "reason": s["reason"]})), 503

    @app.get("/health/detailed", provide_automatic_options=False)
    def detailed() -> Response:
        return jsonify(redact(_snap()))

    @app.get("/metrics", provide_automatic_options=False)
    def metrics() -> Response:
        text = redact_text(render_metrics(_snap).decode("utf-8"))
        return Response(text, content_type=CONTENT_TYPE)

    return app
