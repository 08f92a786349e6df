"""The systemd notify protocol (sd_notify) without an extra package.

Datagrams of ``KEY=value`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading
``@`` means the abstract namespace). ``READY=1`` after recovery, ``WATCHDOG=1`` each tick when
``$WATCHDOG_USEC`` is set (and ``$WATCHDOG_PID``, if set, is this process), ``STATUS=...``,
``STOPPING=1`` on shutdown. Without ``$NOTIFY_SOCKET`` every call is a no-op; a failed send is
logged once and never raised: systemd's absence must not stop the bot.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; cheap no-op when not run under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        addr = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        pid = environ.get("WATCHDOG_PID")
        self.watchdog_enabled = bool(environ.get("WATCHDOG_USEC")) and (
            not pid or pid.strip() == str(os.getpid()))
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; True if it was delivered to the socket."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("systemd notify to %r failed: %s", self.address.lstrip("\0"), e)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
            self._last_status = status
        return self.send(*lines)

    def tick(self, status: str) -> None:
        """Per-tick keep-alive: WATCHDOG=1 when enabled, STATUS= when it changed."""
        lines = ["WATCHDOG=1"] if self.watchdog_enabled else []
        if status != self._last_status:
            lines.append(f"STATUS={status}")
            self._last_status = status
        if lines:
            self.send(*lines)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
