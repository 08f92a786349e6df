"""waitress, guarded against clients that hold connections without finishing a request.

waitress reads requests in one asyncore loop and hands only complete ones to its threads, so a
slow client costs a socket, never a worker thread; but its only bound is idle time
(``channel_timeout``) and one global ``connection_limit`` beyond which it stops accepting. A
client that trickles one header byte before each idle timeout holds its connection for ever,
and 64 of them shut everyone out (issue 19). This server adds three bounds, all enforced in
the loop thread that owns the sockets:

* **whole-request time**: a request must arrive complete within ``request_timeout_s`` of the
  connection opening (or of its first byte, on a kept-alive connection); checked every second;
* **connections per client address**: at ``per_client`` the client's own stalest connection
  that is not being served is closed to make room (so a monitor sharing an address with a
  slow attacker still gets in);
* **connections in total**: at ``max_connections`` the stalest such connection of anyone is
  closed. "Stalest": an unfinished request, oldest first, before idle kept-alive connections
  (least recently active first); a connection whose request is being served is never chosen;
* **slow reading of clients told to wait**: while ``throttled(address)`` is true (the address
  was answered 429), its connections are read at most ``throttle_per_s`` times a second, so a
  flood of refused attempts cannot crowd out everyone else's requests: the flood's requests
  wait in its own sockets, not in the server's queue.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

MAINTENANCE_S = 1  # how often the deadlines are checked (waitress' cleanup_interval)
THROTTLE_PER_S = 5.0  # reads a second of an address that was told to wait


class GuardedChannel(HTTPChannel):
    """An HTTP connection that knows since when it owes a complete request."""

    server: "GuardedServer"

    def __init__(self, server: "GuardedServer", sock: Any, addr: Any, adj: Adjustments,
                 map: dict | None = None):
        self.client = addr[0] if isinstance(addr, tuple) else str(addr)
        self._counted = False
        super().__init__(server, sock, addr, adj, map=map)
        self.receiving_since: float | None = self.creation_time  # a new connection owes one

    def readable(self) -> bool:
        return super().readable() and self.server.may_read(self.client)

    def handle_read(self) -> None:
        self.server.did_read(self.client)
        super().handle_read()

    def received(self, data: bytes) -> bool:
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.receiving_since = None  # nothing half-received: idle (channel_timeout applies)
        elif before is not None and self.request is not before:
            self.receiving_since = time.time()  # one completed, the next (pipelined) began
        elif self.receiving_since is None:
            self.receiving_since = time.time()  # first byte of a request on a kept-alive connection
        return result

    def busy(self) -> bool:
        """A request is queued or being served, or a response is still being sent."""
        return bool(self.requests) or bool(self.total_outbufs_len)

    def staleness(self) -> tuple[int, float]:
        """Eviction order: unfinished requests (oldest first) before idle connections."""
        if self.receiving_since is not None:
            return 0, self.receiving_since
        return 1, self.last_activity

    def add_channel(self, map: dict | None = None) -> None:
        super().add_channel(map)
        self.server.count(self.client, +1)
        self._counted = True

    def del_channel(self, map: dict | None = None) -> None:
        if self._counted:
            self._counted = False
            self.server.count(self.client, -1)
        super().del_channel(map)


class GuardedServer(TcpWSGIServer):
    """waitress' TCP server with the bounds of the module docstring."""

    channel_class = GuardedChannel

    def __init__(self, application: Any, *, max_connections: int, per_client: int,
                 request_timeout_s: float, throttled: Callable[[str], bool] | None = None,
                 throttle_per_s: float = THROTTLE_PER_S, **adjustments: Any):
        self.max_connections, self.per_client = max_connections, per_client
        self.request_timeout_s = request_timeout_s
        self.throttled, self.throttle_gap_s = throttled, 1.0 / throttle_per_s
        self._next_read: dict[str, float] = {}  # throttled address -> earliest next read
        self.clients: Counter[str] = Counter()
        self._clients_lock = threading.Lock()
        self.evicted = 0  # connections closed to make room or past their deadline
        # waitress' own limit stays above ours (its map also holds the listener and a trigger),
        # so it never stops accepting: this server decides whom to drop instead.
        adj = Adjustments(connection_limit=max_connections + 8, cleanup_interval=MAINTENANCE_S,
                          asyncore_use_poll=True, **adjustments)
        super().__init__(application, map={}, adj=adj)

    def count(self, client: str, delta: int) -> None:
        with self._clients_lock:
            self.clients[client] += delta
            if self.clients[client] <= 0:
                del self.clients[client]

    def may_read(self, client: str) -> bool:
        """False while ``client`` was throttled at its last read and read too recently (loop
        thread only). The loop asks this of every connection on every turn, so it is a dict
        lookup: the throttle itself is consulted once per read, in :meth:`did_read`."""
        until = self._next_read.get(client)
        return until is None or time.monotonic() >= until

    def did_read(self, client: str) -> None:
        if self.throttled is not None and self.throttled(client):
            self._next_read[client] = time.monotonic() + self.throttle_gap_s
        elif client in self._next_read:
            del self._next_read[client]

    def handle_accept(self) -> None:
        try:
            pair = self.accept()
        except OSError:  # the peer went away before accept: nothing to serve
            return
        if pair is None:
            return
        conn, addr = pair
        client = addr[0]
        if self.clients.get(client, 0) >= self.per_client and not self._evict(client):
            conn.close()
            return
        if len(self.active_channels) >= self.max_connections and not self._evict(None):
            conn.close()
            return
        try:
            self.set_socket_options(conn)
        except OSError:
            conn.close()
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def _evict(self, client: str | None) -> bool:
        """Close the stalest idle-or-unfinished connection (of ``client``, or of anyone)."""
        candidates = [ch for ch in list(self.active_channels.values())
                      if not ch.busy() and (client is None or ch.client == client)]
        if not candidates:
            return False
        min(candidates, key=GuardedChannel.staleness).handle_close()
        self.evicted += 1
        return True

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle kept-alive connections: channel_timeout
        cutoff = now - self.request_timeout_s
        for ch in list(self.active_channels.values()):
            if (ch.receiving_since is not None and ch.receiving_since < cutoff and not ch.busy()
                    and not ch.will_close):
                ch.will_close = True
                self.evicted += 1
