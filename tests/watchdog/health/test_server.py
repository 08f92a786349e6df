"""The server's life: token on first start, loopback default, warning off loopback, clean stop."""
from __future__ import annotations

import logging
import socket
import stat
import threading
import time

import pytest
import requests

from tests.helpers.proc import wait_until
from tradeguard.exceptions import KeyFileError
from watchdog.health.server import start_health_server
from watchdog.health.snapshot import build_snapshot
from watchdog.health.tokens import ensure_token


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``: a new server (SO_REUSEADDR, as the server binds) can have it.
    Closed connections may linger in TIME_WAIT; they do not stop a restart."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_first_start_creates_a_private_token_only_once(health_cfg, caplog):
    cfg = health_cfg()
    caplog.set_level(logging.INFO)
    token, path = ensure_token(cfg.runtime)
    assert token and path == cfg.runtime.health_token and len(token) >= 48
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(cfg.runtime) == (None, path)
    assert path.read_text().strip() == token
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        ensure_token(cfg.runtime)


def test_binds_loopback_serves_and_stops_cleanly(serve, health_cfg):
    cfg = health_cfg()
    assert cfg.health.host == "127.0.0.1"
    s = serve(cfg)
    assert s.url == f"http://127.0.0.1:{cfg.health.port}"
    assert s.authed("/health").status_code in (200, 503)
    assert s.get("/health").headers["Server"] == "tradeguard"  # no software or version
    threads_before = {t.name for t in threading.enumerate()}
    assert "health-http" in threads_before
    # An idle keep-alive connection must not hold the stop up.
    s.server.stop(timeout=5)
    assert _port_free(cfg.health.port)
    assert not any(t.name == "health-http" for t in threading.enumerate())
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=2)
    s.server.stop()  # idempotent


def test_port_in_use_raises_oserror_for_the_watchdog_to_handle(serve, health_cfg):
    cfg = health_cfg()
    serve(cfg)
    with pytest.raises(OSError):
        start_health_server(cfg, lambda: build_snapshot(cfg))


def test_non_loopback_bind_warns_that_tls_must_come_from_a_proxy(serve, health_cfg, caplog,
                                                                 monkeypatch):
    import watchdog.health.server as server_mod

    asked: list[str] = []
    real_server = server_mod.HttpServer

    def loopback_only(app, *, host, **kw):  # tests never listen beyond 127.0.0.1
        asked.append(host)
        return real_server(app, host="127.0.0.1", **kw)

    monkeypatch.setattr(server_mod, "HttpServer", loopback_only)
    caplog.set_level(logging.WARNING)
    s = serve(health_cfg(host="0.0.0.0"))
    assert asked == ["0.0.0.0"]
    assert any("TLS" in r.getMessage() and "reverse proxy" in r.getMessage() for r in caplog.records)
    r = requests.get(f"http://127.0.0.1:{s.server.port}/health", timeout=5)
    assert r.status_code == 401


def test_loopback_bind_does_not_warn(serve, health_cfg, caplog):
    caplog.set_level(logging.WARNING)
    serve(health_cfg())
    assert not any("TLS" in r.getMessage() for r in caplog.records)


def test_stop_while_requests_are_in_flight(serve, health_cfg):
    s = serve(health_cfg())
    answered = [0, 0, 0]
    errors: list[BaseException] = []

    def poll(i: int) -> None:  # until the server is gone: every answer it gets must be whole
        with requests.Session() as sess:
            while True:
                try:
                    r = sess.get(s.url + "/health", headers={"Authorization": f"Bearer {s.token}"}, timeout=5)
                    assert r.status_code in (200, 503) and "status" in r.json(), r.text
                    answered[i] += 1
                except requests.ConnectionError:
                    return
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                    return

    pollers = [threading.Thread(target=poll, args=(i,)) for i in range(3)]
    for t in pollers:
        t.start()
    wait_until(lambda: min(answered) >= 3, 10, message="three clients polling")
    t0 = time.monotonic()
    s.server.stop(timeout=5)
    assert time.monotonic() - t0 < 5
    for t in pollers:
        t.join(10)
    assert not any(t.is_alive() for t in pollers), "a client still gets answers after stop"
    assert errors == []
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=2)
    assert wait_until(lambda: _port_free(s.server.port), 5)


def test_loose_token_file_at_start_is_refused_but_the_server_runs(serve, health_cfg, caplog):
    cfg = health_cfg()
    token, path = ensure_token(cfg.runtime)
    path.chmod(0o644)
    caplog.set_level(logging.ERROR)
    s = serve(cfg)  # the watchdog must not die over its status page
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert s.get("/health", f"Bearer {token}").status_code == 401
    path.chmod(0o600)
    assert s.get("/health", f"Bearer {token}").status_code in (200, 503)
