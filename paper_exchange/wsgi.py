"""The waitress server the paper exchange runs on, with one addition: a request can drop its own
connection (the ``reset``/``hang`` faults), because each request's environ carries its channel."""
from __future__ import annotations

import socket
import struct
from typing import Any, Callable

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import WSGITask

CHANNEL_KEY = "paper.channel"


class _Task(WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[CHANNEL_KEY] = self.channel
        return environ


class _Channel(HTTPChannel):
    task_class = _Task


def drop_connection(environ: dict[str, Any]) -> bool:
    """Close this request's connection without an answer (RST); False if not under our server."""
    channel = environ.get(CHANNEL_KEY)
    if channel is None:
        return False
    sock = channel.socket
    if sock is None:  # the client is already gone and waitress closed the channel
        return True
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client is already gone
    channel.will_close = True
    channel.server.pull_trigger()
    return True


def make_server(app: Callable, host: str, port: int, *, threads: int = 32) -> Any:
    """A bound (not yet running) waitress server; ``.run()`` serves until SystemExit."""
    server = create_server(app, host=host, port=port, threads=threads, ident="paper-exchange",
                           channel_request_lookahead=1, max_request_body_size=1 << 20,
                           log_socket_errors=False, clear_untrusted_proxy_headers=True)
    server.channel_class = _Channel
    return server
