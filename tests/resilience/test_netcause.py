"""A network error says its cause: refused and timed out from a real ccxt client against real
sockets on 127.0.0.1; DNS from a synthesized resolver error (no lookup may leave the host)."""
from __future__ import annotations

import socket
import threading

import ccxt
import pytest

from resilience.netcause import describe, network_cause
from tests.helpers.proc import free_port


def _client(port: int) -> ccxt.binance:
    ex = ccxt.binance({"timeout": 300, "enableRateLimit": False})
    ex.urls["api"] = {k: f"http://127.0.0.1:{port}/api/v3" for k in ex.urls["api"]}
    return ex


def test_connection_refused() -> None:
    with pytest.raises(ccxt.NetworkError) as e:
        _client(free_port()).fetch_time()
    assert network_cause(e.value) == "connection refused"
    assert describe(e.value).endswith("(connection refused)")


def test_timed_out() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True)
    t.start()
    try:
        with pytest.raises(ccxt.NetworkError) as e:  # accepted, never answered
            _client(srv.getsockname()[1]).fetch_time()
        assert network_cause(e.value) == "timed out"
        assert "timed out" in describe(e.value)
    finally:
        for s in accepted:
            s.close()
        srv.close()


def test_dns_failure() -> None:
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as low:
            raise ccxt.NetworkError("binance GET https://api.example/api/v3/time") from low
    except ccxt.NetworkError as e:
        assert describe(e) == "NetworkError: binance GET https://api.example/api/v3/time (DNS lookup failed)"


def test_other_errors_are_left_alone() -> None:
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert network_cause(ccxt.NetworkError("x")) is None
