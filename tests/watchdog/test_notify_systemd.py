"""The watchdog speaks sd_notify: READY=1 once it watches, WATCHDOG=1 after every check,
STOPPING=1 on the way out (its unit is Type=notify with WatchdogSec)."""
from __future__ import annotations

import socket
import threading

import pytest

from tests.helpers.proc import wait_until
from tests.watchdog.test_main import Loop


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    yield sock
    sock.close()


class Received:
    """Datagrams from the notify socket, one ``recv`` (up to its timeout) per call."""

    def __init__(self, sock: socket.socket):
        self.sock, self.messages = sock, []

    def __call__(self) -> list[list[str]]:
        try:
            self.messages.append(self.sock.recv(4096).decode().split("\n"))
        except socket.timeout:
            pass
        return self.messages


def test_ready_then_a_keepalive_per_check_then_stopping(make_cfg, notify_socket) -> None:
    lp = Loop(make_cfg())
    receive = Received(notify_socket)
    got = receive.messages
    try:
        lp.start()
        wait_until(lambda: sum("WATCHDOG=1" in m for m in receive()) >= 3, 20,
                   message="three keep-alives")
        assert got[0][0] == "READY=1" and got[0][2].startswith("STATUS=watching the bot")
        assert all("READY=1" not in m for m in got[1:])
        lp.stop_watchdog()
        wait_until(lambda: any("STOPPING=1" in m for m in receive()), 10, message="STOPPING=1")
    finally:
        lp.close()


def test_no_keepalive_while_a_check_hangs(make_cfg, notify_socket) -> None:
    """WATCHDOG=1 proves the loop runs: a check that never returns sends none."""
    lp = Loop(make_cfg())
    hang = threading.Event()
    real_step = lp.wd.step
    lp.wd.step = lambda now=None: hang.wait(30) or real_step(now)  # type: ignore[method-assign]
    receive = Received(notify_socket)
    try:
        lp.start()
        msgs = wait_until(receive, 10, message="READY=1")
        assert msgs[0][0] == "READY=1" and len(msgs) == 1
        with pytest.raises(socket.timeout):
            notify_socket.settimeout(1.5)  # three check intervals
            notify_socket.recv(4096)
    finally:
        hang.set()
        lp.close()
