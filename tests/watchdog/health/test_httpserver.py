"""The health endpoint's HTTP/1.1 server (watchdog.health.httpserver): request parsing, and a real
server on 127.0.0.1 driven by raw sockets — pipelining, keep-alive, refusals, and a request in a
worker thread never holding up the others."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from tests.helpers.proc import wait_until
from watchdog.health.httpserver import HttpError, HttpServer, parse_request


def _parse(raw: bytes):
    return parse_request(bytearray(raw))


def test_a_complete_request_is_parsed_and_a_partial_one_waits():
    raw = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    req, used = _parse(raw + b"GET /next")
    assert used == len(raw) and req.method == "GET" and req.target == b"/health?x=1"
    assert req.version == (1, 1) and req.header("authorization") == "Bearer t"
    assert req.header("x-a") == "1,2" and req.keep_alive()
    assert _parse(raw[:-2]) is None
    body = b"POST /h HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nab"
    assert _parse(body) is None  # the body is not all there yet
    req, used = _parse(body + b"c")
    assert req.body == b"abc" and req.version == (1, 0) and req.keep_alive()
    assert not _parse(b"GET / HTTP/1.0\r\n\r\n")[0].keep_alive()
    assert not _parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")[0].keep_alive()


@pytest.mark.parametrize("raw, status", [
    (b"GET /health\r\n\r\n", 400),                              # no version
    (b"GET  /health HTTP/1.1\r\n\r\n", 400),                    # two spaces
    (b"G(T /health HTTP/1.1\r\n\r\n", 400),                     # not a token
    (b"GET /health HTTP/2.0\r\n\r\n", 505),
    (b"GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET /health HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),        # a control byte
    (b"GET /health HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET /health HTTP/1.1\r\nX: " + b"a" * 20000, 431),      # a head that never ends in bounds
])
def test_bad_requests_are_refused_with_their_status(raw, status):
    with pytest.raises(HttpError) as ei:
        _parse(raw)
    assert ei.value.status == status


class _App:
    """A WSGI app: ``/fast`` answered inline, ``/slow`` only in a thread (it sleeps)."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def _answer(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ.get('HTTP_X_N', '')}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def inline(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes] | None:
        return None if environ["PATH_INFO"] == "/slow" else self._answer(environ, start_response)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.threads.append(threading.current_thread().name)
        if environ["PATH_INFO"] == "/slow":
            time.sleep(1.5)
        return self._answer(environ, start_response)


@pytest.fixture
def http() -> Iterator[tuple[HttpServer, _App]]:
    app = _App()
    server = HttpServer(app, host="127.0.0.1", port=0, max_connections=16, per_client=8,
                        request_timeout_s=5).start()
    yield server, app
    assert server.stop(5)


def _connect(server: HttpServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return s


def _read_answers(s: socket.socket, n: int) -> list[bytes]:
    """``n`` whole answers (head + Content-Length body) from ``s``."""
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return out
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:
            rest += s.recv(65536)
        out.append(head + b"\r\n\r\n" + rest[:length])
        buf = rest[length:]
    return out


def test_pipelined_requests_are_answered_in_order(http):
    server, _ = http
    with _connect(server) as s:
        s.sendall(b"".join(b"GET /fast HTTP/1.1\r\nX-N: %d\r\n\r\n" % i for i in range(5)))
        answers = _read_answers(s, 5)
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [b"GET /fast %d" % i for i in range(5)]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\nServer: tradeguard\r\nDate: ") for a in answers)


def test_keep_alive_by_version_and_head_has_no_body(http):
    server, _ = http
    with _connect(server) as s:
        s.sendall(b"GET /fast HTTP/1.0\r\n\r\n")
        answer = _read_answers(s, 1)[0]
        assert b"Connection: close" in answer and s.recv(10) == b""  # HTTP/1.0: closed after it
    with _connect(server) as s:
        s.sendall(b"GET /fast HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert b"Connection: keep-alive" in _read_answers(s, 1)[0]
        s.sendall(b"HEAD /fast HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
        both = b""
        while both.count(b"\r\n\r\n") < 2 or not both.endswith(b"GET /fast "):
            both += s.recv(65536)
        head, get = both.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 11" in head
        assert get.startswith(b"HTTP/1.1 200 OK")  # HEAD's answer carried no body
        s.sendall(b"GET /fast HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert _read_answers(s, 1)[0].endswith(b"GET /fast ") and s.recv(10) == b""


def test_a_refused_request_gets_its_status_and_the_connection_closes(http):
    server, _ = http
    with _connect(server) as s:
        s.sendall(b"GET /fast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        answer = _read_answers(s, 1)[0]
        assert answer.startswith(b"HTTP/1.1 501 Not Implemented") and b"Connection: close" in answer
        assert s.recv(10) == b""
    with _connect(server) as s:  # a head past the bound: 431 without waiting for its end
        s.sendall(b"GET /fast HTTP/1.1\r\nX: " + b"a" * 17000)
        assert _read_answers(s, 1)[0].startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


def test_a_request_in_a_worker_thread_holds_up_nobody_else(http):
    server, app = http
    slow = _connect(server)
    slow.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
    wait_until(lambda: app.threads, 5, interval=0.01, message="the slow request in its thread")
    took = []
    with _connect(server) as s:
        for _ in range(20):
            t = time.monotonic()
            s.sendall(b"GET /fast HTTP/1.1\r\n\r\n")
            _read_answers(s, 1)
            took.append(time.monotonic() - t)
    assert sum(took) < 1.0, took  # 20 answers while the slow one still sleeps (1.5 s)
    assert _read_answers(slow, 1)[0].endswith(b"GET /slow ")
    slow.close()
    assert app.threads and all(n.startswith("health-worker") for n in app.threads)


def test_stop_answers_the_request_in_a_thread_then_closes_everything(http):
    server, _ = http
    slow, idle = _connect(server), _connect(server)
    idle.sendall(b"GET /fast HTTP/1.1\r\n\r\n")
    _read_answers(idle, 1)  # an idle kept-alive connection now
    slow.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
    wait_until(lambda: any(c.serving for c in server.connections), 5, interval=0.01,
               message="the slow request in its thread")
    assert server.stop(5)
    answer = _read_answers(slow, 1)[0]
    assert answer.endswith(b"GET /slow ") and b"Connection: close" in answer
    assert slow.recv(10) == b"" and idle.recv(10) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
    slow.close()
    idle.close()


def test_the_health_app_answers_in_the_loop_only_what_cannot_block(health_cfg, scrypt_calls):
    """``inline`` answers a token, a cached login, a refusal and /health from a fresh snapshot;
    a password check, a snapshot to build and the heavier routes go to a worker thread."""
    from watchdog.health.app import create_app
    from watchdog.health.auth import Authenticator
    from watchdog.health.passwords import credentials_path, set_password
    from watchdog.health.server import ThrottledSnapshot
    from watchdog.health.tokens import ensure_token
    from tests.watchdog.health.conftest import basic, bearer

    cfg = health_cfg(limit=2)
    set_password(credentials_path(cfg), "alice", "right horse")
    token = ensure_token(cfg.runtime)[0]
    built: list[int] = []
    snapshot = ThrottledSnapshot(lambda: built.append(1) or {"status": "healthy", "reason": ""}, ttl_s=60)
    app = create_app(snapshot, Authenticator(cfg))

    def inline(path: str, auth: str | None, addr: str = "127.0.0.1") -> str | None:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": addr}
        if auth:
            env["HTTP_AUTHORIZATION"] = auth
        status: list[str] = []
        out = app.inline(env, lambda s, h: status.append(s))
        return None if out is None else status[0]

    assert inline("/health", None) == "401 Unauthorized"
    assert inline("/health", bearer(token)) is None and not built  # no snapshot yet: a thread
    snapshot()
    assert inline("/health", bearer(token)) == "200 OK" and built == [1]
    assert inline("/health/detailed", bearer(token)) is None and inline("/metrics", bearer(token)) is None
    assert inline("/nope", bearer(token)) == "404 Not Found"
    assert inline("/health", basic("alice", "right horse")) is None  # scrypt: a thread
    assert scrypt_calls == []
    status: list[str] = []
    app({"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "REMOTE_ADDR": "127.0.0.1",
         "HTTP_AUTHORIZATION": basic("alice", "right horse")}, lambda s, h: status.append(s))
    assert status == ["200 OK"] and len(scrypt_calls) == 1
    assert inline("/health", basic("alice", "right horse")) == "200 OK"  # cached now
    for _ in range(2):  # wrong guesses are checked in a thread, then the limit answers at once
        app({"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "REMOTE_ADDR": "127.0.0.9",
             "HTTP_AUTHORIZATION": basic("alice", "guess")}, lambda s, h: None)
    assert inline("/health", basic("alice", "guess"), "127.0.0.9") == "429 Too Many Requests"
    assert len(scrypt_calls) == 3


def test_at_the_total_limit_the_address_holding_most_gives_one_up():
    """Not simply the stalest connection: under a churn of reconnecting slow sockets a monitor's
    fresh connection would soon be the stalest before its request was read."""
    server = HttpServer(_App(), host="127.0.0.1", port=0, max_connections=4, per_client=4,
                        request_timeout_s=30).start()
    socks: list[socket.socket] = []
    try:
        def open_from(source: str) -> socket.socket:
            s = socket.socket()
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /fast HTTP/1.1\r\n")  # never finished
            socks.append(s)
            wait_until(lambda: len(server.connections) == len(socks), 5, interval=0.01,
                       message="the connection admitted")
            return s

        lone = open_from("127.0.0.3")  # the oldest
        crowd = [open_from("127.0.0.2") for _ in range(3)]
        socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))  # the 5th
        try:  # the crowd's oldest was closed (a FIN, or a reset if it had unread bytes)
            assert crowd[0].recv(10) == b""
        except ConnectionResetError:
            pass
        wait_until(lambda: server.clients == {"127.0.0.3": 1, "127.0.0.2": 2, "127.0.0.1": 1}, 5,
                   interval=0.01, message="one of the crowd gave way")
        lone.sendall(b"\r\n")
        assert _read_answers(lone, 1)[0].endswith(b"GET /fast ")
        assert server.evicted == 1
    finally:
        for s in socks:
            s.close()
        assert server.stop(5)
