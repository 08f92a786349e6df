"""systemd notify over a real AF_UNIX datagram socket (path and abstract namespace)."""
from __future__ import annotations

import os
import socket

import pytest

from tradeguard.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_status_stopping(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.ready("running")
    assert _recv(sock) == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=running"]
    n.tick("running")
    assert _recv(sock) == ["WATCHDOG=1"]  # STATUS only when it changes
    n.tick("degraded; BTC/USDT=0.01")
    assert _recv(sock) == ["WATCHDOG=1", "STATUS=degraded; BTC/USDT=0.01"]
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1", "STATUS=stopping"]


def test_watchdog_pid_of_another_process_disables_keepalive(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    n.tick("running")
    assert _recv(sock) == ["STATUS=running"]
    n.tick("running")
    sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        sock.recv(4096)


def test_abstract_namespace():
    name = f"tg-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock)[0] == "READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_noop_and_a_dead_socket_never_raises(tmp_path):
    assert not Notifier({}).enabled and not Notifier({}).ready()
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and not n.ready() and not n.stopping()
