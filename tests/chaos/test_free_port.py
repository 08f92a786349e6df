"""Ports for servers under test are chosen where outgoing connections never take them."""
from __future__ import annotations

import socket

from chaos.system import EPHEMERAL_RANGE, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_are_bindable() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports), ports
    assert len(ports) > 1  # chosen at random, not one fixed port every caller would share
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_never_returned(monkeypatch) -> None:
    import random

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: port)
        assert free_port() != port  # every pick taken: it falls back to the kernel's choice
    finally:
        held.close()
