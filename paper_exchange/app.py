"""The paper exchange's WSGI application: Binance routes, signatures, faults, the control API.

Every answer is JSON; an unexpected error is logged and answered with Binance's -1000 (HTTP 500),
never a traceback, and the server keeps serving.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from paper_exchange import apierrors, binance_api, control_api, ratelimit
from paper_exchange.auth import check_signed
from paper_exchange.binance_api import RequestParams
from paper_exchange.engine import Engine, now_ms
from paper_exchange.faults import Fault, FaultBook
from paper_exchange.ratelimit import RateLimiter
from paper_exchange.wsgi import drop_connection
from tradeguard.exceptions import PaperApiError

log = logging.getLogger("paper_exchange")
MAX_BODY = 64 * 1024
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status=status,
                    content_type="application/json;charset=UTF-8")


def _error(e: PaperApiError) -> Response:
    return _json({"code": e.code, "msg": e.msg}, e.status)


_BODY_KEY = "tradeguard.paper.body"


def _params(query: str, body: str) -> RequestParams:
    """Query and form parameters together; a repeated name is -1101 like Binance."""
    out = RequestParams()
    for raw in (query, body):
        try:
            pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise apierrors.illegal("query", "application/x-www-form-urlencoded") from None
        for k, v in pairs:
            if k in out:
                raise apierrors.duplicate_param(k)
            out[k] = v
    return out


@dataclass
class PaperApp:
    """The WSGI callable. ``record`` sends events to the black box (best effort)."""

    engine: Engine
    api_key: str
    secret: str
    faults: FaultBook
    paused: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.time)
    ticks: int = 0  # iterations of the price loop, paused ones included
    limits: RateLimiter = field(default_factory=RateLimiter)
    record: Callable[..., None] = lambda *a, **k: None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._dispatch(request, environ)
        except PaperApiError as e:
            response = _error(e)
        except Exception:  # noqa: BLE001 - the server never answers with a traceback, never stops
            log.exception("unexpected error serving %s %s", request.method, request.path)
            response = _error(apierrors.unknown_error())
        return response(environ, start_response)

    def _dispatch(self, request: Request, environ: dict) -> Response:
        method, path = request.method, request.path
        if path.startswith("/_paper/"):
            if request.remote_addr not in LOOPBACK:
                raise PaperApiError(-1002, "The control API only answers loopback clients.", 403)
            return _json(control_api.handle(self, method, path, self._read_body(request)))
        fault = self.faults.take(method, path, lambda: self._fields(request))
        if fault is not None:
            self.record("paper.fault", f"fault {fault.id} ({fault.action}) on {method} {path}",
                        fault=fault.view())
            log.info("fault %d (%s) fires on %s %s", fault.id, fault.action, method, path)
            early = self._before(fault, environ)
            if early is not None:
                return early
        response = self._serve_api(request, method, path, fault)
        if fault is not None and fault.action == "apply_then_fail":
            return self._fail(fault, fault.then, environ)
        return response

    def _read_body(self, request: Request) -> bytes:
        cached = request.environ.get(_BODY_KEY)
        if cached is not None:  # read once already (a fault that matches on parameters)
            return cached
        if (request.content_length or 0) > MAX_BODY:
            raise apierrors.too_large(MAX_BODY)
        body = request.stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise apierrors.too_large(MAX_BODY)
        request.environ[_BODY_KEY] = body
        return body

    def _fields(self, request: Request) -> dict[str, str]:
        """The request's query and form parameters, leniently (for fault matching only: a
        malformed request is still refused by the API's own checks)."""
        try:
            body = self._read_body(request).decode("utf-8", "replace")
        except PaperApiError:
            body = ""
        return dict(parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True)
                    + parse_qsl(body, keep_blank_values=True))

    def _serve_api(self, request: Request, method: str, path: str, fault: Fault | None) -> Response:
        retry_after = None
        try:
            route = binance_api.ROUTES.get((method, path))
            if route is None:
                if path in binance_api.PATHS:
                    raise apierrors.method_not_allowed(method, path)
                raise apierrors.not_found(method, path)
            query = request.query_string.decode("latin-1")
            try:
                body = self._read_body(request).decode("utf-8")
            except UnicodeDecodeError:
                raise apierrors.illegal("body", "application/x-www-form-urlencoded") from None
            params = _params(query, body)
            refused = self.limits.admit(ratelimit.weight(method, path, params),
                                        (method, path) == ("POST", "/api/v3/order"), now_ms())
            if refused is not None:
                error, retry_after = refused
                raise error
            params.rate_limits = self.limits.advertised
            if route.signed:
                params.deadline_ms = check_signed(
                    query=query, body=body, params=params, api_key_header=request.headers.get("X-MBX-APIKEY"),
                    api_key=self.api_key, secret=self.secret, now_ms=now_ms())
            if fault is not None:  # accepted: now held up on its way to the matching engine
                if fault.action == "delay":
                    self.stopping.wait(fault.seconds)
                params.hidden_ms = int(fault.invisible_s * 1000)
            response = _json(route.handler(self.engine, params))
        except PaperApiError as e:
            if e.code not in (-2013, -2011):  # lookups of unknown orders are routine
                log.info("%s %s -> %d %s", method, path, e.code, e.msg)
            response = _error(e)
        response.headers.update(self.limits.headers(now_ms()))
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    # --- faults -----------------------------------------------------------------------------
    def _before(self, fault: Fault, environ: dict) -> Response | None:
        """Carry out a fault before the request is served; None = serve it."""
        if fault.action == "respond":
            return self._respond(fault)
        if fault.action in ("hang", "reset"):
            return self._fail(fault, fault.action, environ)
        return None

    def _fail(self, fault: Fault, how: str, environ: dict) -> Response:
        if how == "respond":
            return self._respond(fault)
        if how == "hang":
            disconnected = environ.get("waitress.client_disconnected")
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline and not self.stopping.is_set():
                if disconnected is not None and disconnected():
                    break
                self.stopping.wait(0.05)
        drop_connection(environ)
        return Response(b"", status=500)

    @staticmethod
    def _respond(fault: Fault) -> Response:
        body = fault.body
        if isinstance(body, (dict, list)):
            return _json(body, fault.status)
        text = "" if body is None else str(body)
        try:
            json.loads(text)
            ctype = "application/json;charset=UTF-8"
        except ValueError:
            ctype = "text/plain;charset=UTF-8"
        return Response(text, status=fault.status, content_type=ctype)
