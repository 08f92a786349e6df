"""Why a network call failed, in words: DNS, refused, timed out, reset, unreachable, TLS.

ccxt raises ``NetworkError("binance GET <url>")`` from the HTTP library's exception, which wraps
urllib3's, which wraps the socket error: the cause is several links down the chain (``__cause__``,
``__context__``, urllib3's ``reason``, exception arguments). :func:`describe` follows them.
"""
from __future__ import annotations

import errno
import socket
import ssl

import ccxt

_MAX_LINKS = 16
_ERRNO_CAUSE = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset by the peer",
                errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "host unreachable",
                errno.ETIMEDOUT: "timed out"}
_DNS_WORDS = ("name or service not known", "temporary failure in name resolution",
              "nodename nor servname", "no address associated", "failed to resolve")


def _one(e: BaseException) -> str | None:
    if isinstance(e, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(e, ssl.SSLError):
        return "TLS error"
    if isinstance(e, OSError) and e.errno in _ERRNO_CAUSE:
        return _ERRNO_CAUSE[e.errno]
    if isinstance(e, (TimeoutError, ccxt.RequestTimeout)) or type(e).__name__.endswith("Timeout") \
            or type(e).__name__.endswith("TimeoutError"):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    text = str(e).lower()
    if any(w in text for w in _DNS_WORDS):
        return "DNS lookup failed"
    if "connection refused" in text:
        return "connection refused"
    return None


def network_cause(exc: BaseException) -> str | None:
    """The first recognised cause along ``exc``'s chain, or None."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < _MAX_LINKS:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        cause = _one(e)
        if cause is not None:
            return cause
        links = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo += [x for x in links if isinstance(x, BaseException)]
    return None


def describe(exc: BaseException) -> str:
    """``Type: message (cause)`` — the cause only for network errors, when it can be found."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (ccxt.NetworkError, OSError)):
        cause = network_cause(exc)
        if cause and cause not in text:
            text += f" ({cause})"
    return text
