"""Slow clients for tests and the benchmark: sockets that trickle header lines and never finish
a request, reconnecting whenever the server drops them (as an attacker would)."""
from __future__ import annotations

import socket
import threading
import time


class SlowLoris:
    """``count`` sockets spread over ``sources`` (127.0.0.x addresses), each sending one more
    header line every ``every_s`` seconds from a background thread until :meth:`stop`."""

    def __init__(self, host: str, port: int, count: int, sources: list[str], every_s: float = 0.5):
        self.host, self.port, self.every_s = host, port, every_s
        self.sources = [sources[i % len(sources)] for i in range(count)]
        self.socks: list[socket.socket | None] = [None] * count
        self.opened_at: list[float] = [0.0] * count
        self.dropped: list[float] = []  # how long each dropped socket had been held
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _open(self, i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.bind((self.sources[i], 0))
            s.connect((self.host, self.port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.socks[i], self.opened_at[i] = s, time.monotonic()
        self.connects += 1

    def _drop(self, i: int) -> None:
        s = self.socks[i]
        if s is not None:
            s.close()
            self.dropped.append(time.monotonic() - self.opened_at[i])
            self.socks[i] = None

    def _tick(self) -> None:
        for i, s in enumerate(self.socks):
            if self._stop.is_set():
                return
            if s is None:
                self._open(i)
                continue
            try:
                if s.recv(4096) == b"":  # the server closed it (answered or dropped)
                    self._drop(i)
                    continue
            except BlockingIOError:
                pass
            except OSError:
                self._drop(i)
                continue
            try:
                s.send(b"X-Slow: 1\r\n")
            except OSError:
                self._drop(i)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.every_s)

    def start(self) -> "SlowLoris":
        for i in range(len(self.socks)):
            self._open(i)
        self._thread.start()
        return self

    def held(self) -> int:
        """Sockets currently open."""
        return sum(s is not None for s in self.socks)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            if s is not None:
                s.close()
