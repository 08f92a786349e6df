"""The health endpoint's HTTP/1.1 server: one asyncio loop, guarded against slow and hostile clients.

Why not waitress (issue 19's benchmark): its loop asks every connection ``readable()`` and
``writable()`` on every turn, and every request hops from the loop thread to a worker thread and
back. Under 100 attacking connections that held the endpoint to 240-410 authenticated requests
a second on 2 cores (docs/BENCHMARKS.md). Here the loop waits on epoll, so an idle or trickling
connection costs nothing between its bytes, and a request the app can answer from what it holds
(a token check, a cached login, a fresh snapshot) is answered in the loop itself. Only a request
that may block — a password check (scrypt), reading the bot's files for a new snapshot — runs in
a worker thread (the app says which: ``app.inline(environ, start_response)`` answers, or returns
None when it would block).

The bounds, all enforced in the loop thread:

* **whole-request time**: a request must arrive complete within ``request_timeout_s`` of the
  connection opening (or of its first byte on a kept-alive connection), and an answer the client
  does not read counts the same; checked every second;
* **size**: a request head over ``max_head`` bytes is answered 431, a body over ``max_body`` 413
  (every route is a GET), a chunked body 501; a malformed request 400; each then closes;
* **connections per client address**: at ``per_client`` the client's own stalest connection that
  is not being served is closed to make room (a monitor sharing an address with a slow attacker
  still gets in); **in total**: at ``max_connections`` the stalest of the address that holds the
  most connections. "Stalest": an unfinished request, oldest first, before idle kept-alive
  connections (least recently active);
* **clients told to wait** (``throttled(address)``, answered 429): one request is taken from such
  a connection at most ``throttle_per_s`` times a second; its flood waits in its own socket;
* **idle kept-alive connections** are closed after ``idle_timeout_s``.
"""
from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import unquote_to_bytes

log = logging.getLogger(__name__)

MAINTENANCE_S = 1.0  # how often deadlines are checked
THROTTLE_PER_S = 5.0  # requests a second taken from an address that was told to wait
MAX_HEAD = 16384
MAX_BODY = 1024
IDLE_TIMEOUT_S = 30.0
WORKERS = 4
DRAIN_S = 1.0  # longest wait at stop for answers already written to leave
SERVER_NAME = "tradeguard"  # the Server header: no software or version

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}


class HttpError(Exception):
    """A request refused before the app sees it; the connection closes after the answer."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class Request:
    """One parsed request: what the WSGI environ is built from."""

    __slots__ = ("method", "target", "version", "headers", "body")

    def __init__(self, method: str, target: bytes, version: tuple[int, int],
                 headers: list[tuple[str, str]], body: bytes):
        self.method, self.target, self.version = method, target, version
        self.headers, self.body = headers, body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


def parse_request(buf: bytearray, max_head: int = MAX_HEAD,
                  max_body: int = MAX_BODY) -> tuple[Request, int] | None:
    """The first complete request in ``buf`` and how many bytes it used; None when incomplete.
    Raises HttpError for a request that must be refused."""
    end = buf.find(b"\r\n\r\n", 0, max_head + 4)
    if end < 0:
        if len(buf) > max_head:
            raise HttpError(431)
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] \
            or _BAD_VALUE.search(parts[1]) or b" " in parts[1]:
        raise HttpError(400)
    version = _VERSIONS.get(parts[2])
    if version is None:
        raise HttpError(505 if parts[2].startswith(b"HTTP/") else 400)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):  # also obs-fold and whitespace before ':'
            raise HttpError(400)
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400)
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    req = Request(parts[0].decode("ascii"), parts[1], version, headers, b"")
    if req.header("transfer-encoding") is not None:
        raise HttpError(501)
    lengths = {v.strip() for k, v in headers if k == "content-length"}
    length = 0
    if lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise HttpError(400)
        length = int(next(iter(lengths)))
        if length > max_body:
            raise HttpError(413)
    used = end + 4 + length
    if len(buf) < used:
        return None
    req.body = bytes(buf[end + 4:used])
    return req, used


Answer = tuple[str, list[tuple[str, str]], bytes]


def call_app(app: Callable[..., Iterable[bytes] | None], environ: dict[str, Any]) -> Answer | None:
    """Run a WSGI app to completion: (status line, headers, body); a raise is a 500. None when
    the app returned None (``inline``: it would block)."""
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        got[:] = [status, headers]
        return lambda data: None  # the legacy write() callable: unused by our app

    try:
        chunks = app(environ, start_response)
        if chunks is None:
            return None
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return got[0], list(got[1]), body
    except Exception:  # noqa: BLE001 - the endpoint answers 500 and keeps serving
        log.exception("health app failed on %s", environ.get("PATH_INFO"))
        return "500 Internal Server Error", [("Content-Type", "text/plain")], b"internal error\n"


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second, self._text = -1, ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


class Connection(asyncio.Protocol):
    """One client connection: parses requests in order, answers each, keeps its deadlines."""

    def __init__(self, server: "HttpServer"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.buf = bytearray()
        self.opened = self.last_activity = time.monotonic()
        self.receiving_since: float | None = self.opened  # a new connection owes a request
        self.stalled_since: float | None = None  # its answers are not being read
        self.serving = False  # a request runs in a worker thread
        self.closing = False
        self._held: asyncio.TimerHandle | None = None  # throttled: next request after this

    # --- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.server.admit(self):
            self.closing = True
            transport.abort()
            return
        self.server.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._held is not None:
            self._held.cancel()
        self.server.left(self)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_activity = now
        if self.receiving_since is None:
            self.receiving_since = now
        self.buf += data
        if len(self.buf) > MAX_HEAD + MAX_BODY + 8 and (self.serving or self._held or self.stalled_since):
            self.transport.pause_reading()  # requests piled up behind one still being answered
        self._next()

    def eof_received(self) -> bool:
        return self.serving  # half-closed by the client: keep the socket for the answer in flight

    def pause_writing(self) -> None:
        self.stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        self.stalled_since = None
        self._next()

    # --- requests -----------------------------------------------------------------------
    def busy(self) -> bool:
        """A request is being answered, or its answer is still leaving."""
        return self.serving or bool(self.transport and self.transport.get_write_buffer_size())

    def staleness(self) -> tuple[int, float]:
        """Eviction order: unfinished requests (oldest first) before idle connections."""
        owed = self.receiving_since if self.receiving_since is not None else self.stalled_since
        return (0, owed) if owed is not None else (1, self.last_activity)

    def _next(self) -> None:
        """Take the next complete request from the buffer, unless one is being answered."""
        while not (self.closing or self.serving or self._held or self.stalled_since
                   or self.server.stopping):
            try:
                parsed = parse_request(self.buf)
            except HttpError as e:
                self._refuse(e.status)
                return
            if parsed is None:
                if not self.buf:
                    self.receiving_since = None  # nothing half-received: idle
                self.transport.resume_reading()  # if it was paused for requests piling up
                return
            req, used = parsed
            del self.buf[:used]
            self.receiving_since = time.monotonic() if self.buf else None
            self._serve(req)
            if self.server.throttled(self.client):
                gap = 1.0 / self.server.throttle_per_s
                self.transport.pause_reading()
                self._held = self.server.loop.call_later(gap, self._release)

    def _release(self) -> None:
        self._held = None
        if not self.closing:
            self.transport.resume_reading()
            self._next()

    def _serve(self, req: Request) -> None:
        environ = self.server.environ(req, self.client)
        if self.server.inline is not None:
            answer = call_app(self.server.inline, environ)
            if answer is not None:
                self._answer(req, *answer)
                return
            environ = self.server.environ(req, self.client)  # a fresh wsgi.input for the app
        self.serving = True
        fut = self.server.loop.run_in_executor(self.server.workers, call_app, self.server.app, environ)
        fut.add_done_callback(lambda f: self._served(req, f))

    def _served(self, req: Request, fut: "asyncio.Future[Any]") -> None:
        self.serving = False
        if self.closing:
            return
        if fut.cancelled() or fut.exception() is not None:
            self._refuse(500)
            return
        answer = fut.result()
        assert answer is not None  # the WSGI app itself always answers
        self._answer(req, *answer)
        self._next()

    def _answer(self, req: Request, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        keep = req.keep_alive() and not self.server.stopping
        self._write(status, headers, body, keep, req.version, head_only=req.method == "HEAD")
        if not keep:
            self._close()

    def _refuse(self, status: int) -> None:
        body = f'{{"error":"{HTTPStatus(status).phrase.lower()}"}}\n'.encode()
        self._write(f"{status} {HTTPStatus(status).phrase}",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                    body, False, (1, 1), head_only=False)
        self._close()

    def _write(self, status: str, headers: list[tuple[str, str]], body: bytes, keep: bool,
               version: tuple[int, int], head_only: bool) -> None:
        if self.closing:
            return
        lines = [f"HTTP/1.1 {status}", f"Server: {SERVER_NAME}", f"Date: {self.server.date()}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("server", "date", "connection")]
        if not status.startswith(("1", "204", "304")) and \
                not any(k.lower() == "content-length" for k, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        if not keep:
            lines.append("Connection: close")
        elif version < (1, 1):
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head if head_only else head + body)

    def _close(self) -> None:
        """Close after what was written has left (the transport flushes first)."""
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()


class HttpServer:
    """Serves a WSGI ``app`` on ``host:port`` from an asyncio loop in a thread of its own.

    ``app.inline`` (optional: without it every request runs in a worker thread) answers in the
    loop or returns None. ``throttled(address)`` says which clients were told to wait."""

    def __init__(self, app: Any, *, host: str, port: int, max_connections: int, per_client: int,
                 request_timeout_s: float, throttled: Callable[[str], bool] | None = None,
                 throttle_per_s: float = THROTTLE_PER_S, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 workers: int = WORKERS):
        self.app = app
        self.inline: Callable[..., Iterable[bytes] | None] | None = getattr(app, "inline", None)
        self.host = host
        self.max_connections, self.per_client = max_connections, per_client
        self.request_timeout_s, self.idle_timeout_s = request_timeout_s, idle_timeout_s
        self._throttled, self.throttle_per_s = throttled, throttle_per_s
        self.connections: set[Connection] = set()
        self.clients: Counter[str] = Counter()
        self.evicted = 0  # connections closed to make room or past a deadline
        self.stopping = False
        self.date = _Date()
        self.workers = ThreadPoolExecutor(workers, thread_name_prefix="health-worker")
        self.loop = asyncio.new_event_loop()
        try:  # bind now: a taken port raises OSError in the caller
            self._server = self.loop.run_until_complete(self.loop.create_server(
                lambda: Connection(self), host, port, reuse_address=True, backlog=128))
        except BaseException:
            self.loop.close()
            self.workers.shutdown(wait=False)
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._environ_base = {"SERVER_NAME": host, "SERVER_PORT": str(self.port), "SCRIPT_NAME": "",
                              "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
                              "wsgi.errors": sys.stderr, "wsgi.multithread": True,
                              "wsgi.multiprocess": False, "wsgi.run_once": False}
        self._thread = threading.Thread(target=self._run, name="health-http", daemon=True)

    # --- the loop -----------------------------------------------------------------------
    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_later(MAINTENANCE_S, self._maintain)
        try:
            self.loop.run_forever()
        finally:
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            self.loop.run_until_complete(asyncio.sleep(0))  # let the aborts' callbacks run
            self.loop.close()

    def _maintain(self) -> None:
        try:
            self._check_deadlines(time.monotonic())
        except Exception:  # noqa: BLE001 - the deadlines must go on being checked
            log.exception("health endpoint: deadline check failed")
        if not self.stopping:
            self.loop.call_later(MAINTENANCE_S, self._maintain)

    def _check_deadlines(self, now: float) -> None:
        cutoff = now - self.request_timeout_s
        for conn in list(self.connections):
            if conn.serving:
                continue
            owed = conn.staleness()
            if owed[0] == 0 and owed[1] < cutoff:
                self.evicted += 1
                conn.abort()
            elif owed[0] == 1 and now - conn.last_activity > self.idle_timeout_s:
                conn.abort()

    # --- connections ----------------------------------------------------------------------
    def throttled(self, client: str) -> bool:
        return self._throttled is not None and self._throttled(client)

    def admit(self, conn: Connection) -> bool:
        """Room for a new connection of ``conn.client``: made by closing the stalest if needed."""
        if self.stopping:
            return False
        if self.clients.get(conn.client, 0) >= self.per_client and not self._evict(conn.client):
            return False
        return len(self.connections) < self.max_connections or self._evict(None)

    def joined(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.clients[conn.client] += 1

    def left(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.clients[conn.client] -= 1
            if self.clients[conn.client] <= 0:
                del self.clients[conn.client]

    def _evict(self, client: str | None) -> bool:
        candidates = [c for c in self.connections if not c.closing and not c.busy()
                      and (client is None or c.client == client)]
        if not candidates:
            return False
        # the address holding the most connections gives one up first: under a churn of
        # reconnecting slow sockets every connection is young, and a monitor's fresh one would
        # otherwise soon be the stalest before its request (already sent) was read
        victim = min(candidates, key=lambda c: (-self.clients.get(c.client, 0), c.staleness()))
        victim.abort()
        self.left(victim)  # counted out now: connection_lost comes on a later turn
        self.evicted += 1
        return True

    def environ(self, req: Request, client: str) -> dict[str, Any]:
        target = req.target
        if not target.startswith(b"/") and b"://" in target:  # absolute-form: keep the path
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        path, _, query = target.partition(b"?")
        env = dict(self._environ_base)
        env.update({"REQUEST_METHOD": req.method, "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
                    "QUERY_STRING": query.decode("latin-1"), "REMOTE_ADDR": client,
                    "SERVER_PROTOCOL": f"HTTP/{req.version[0]}.{req.version[1]}",
                    "wsgi.input": io.BytesIO(req.body)})
        for name, value in req.headers:
            if "_" in name:  # HTTP_X_A could be "x-a" or "x_a": such headers are dropped
                continue
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value
            else:
                key = "HTTP_" + key
                env[key] = f"{env[key]},{value}" if key in env else value
        return env

    # --- stopping -------------------------------------------------------------------------
    def stop(self, timeout: float) -> bool:
        """Stop accepting, let requests being answered finish and their answers leave, close every
        connection, end the loop and its thread (bounded by ``timeout``). True if all ended."""
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(deadline), self.loop)
            try:
                fut.result(max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a stop must end: the loop is stopped below anyway
                log.warning("health endpoint: orderly stop did not finish; closing at once")
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # the loop is already closed
                pass
            self._thread.join(max(0.1, deadline - time.monotonic()))
        elif not self.loop.is_closed():
            self._server.close()
            self.loop.close()
        self.workers.shutdown(wait=False, cancel_futures=True)
        return not self._thread.is_alive()

    async def _shutdown(self, deadline: float) -> None:
        self.stopping = True
        self._server.close()
        for conn in list(self.connections):
            if not conn.serving and not conn.closing:
                conn.transport.pause_reading()
        while any(c.serving for c in self.connections) and time.monotonic() < deadline - 0.5:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if not conn.closing:
                conn._close()
        drain_until = min(time.monotonic() + DRAIN_S, deadline - 0.2)
        while self.connections and time.monotonic() < drain_until:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)
