"""Binance request signing, checked the way Binance checks it: ``X-MBX-APIKEY``, then the HMAC-SHA256
of the total parameters (query string followed by body, without ``signature``), then ``timestamp``
within ``recvWindow``.

``recvWindow`` may carry up to three decimals (microsecond precision, as Binance accepts since
2025). :func:`check_signed` returns the request's *deadline* (timestamp + recvWindow, ms): the
matching engine checks it again, so a request delayed past it never executes."""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Mapping

from paper_exchange import apierrors

DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
MAX_AHEAD_MS = 1000
_WINDOW_RE = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,3})?$")


def _without_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` with its ``signature=...`` part removed, and that signature (if any)."""
    kept, sig = [], None
    for part in raw.split("&") if raw else []:
        if part.startswith("signature="):
            sig = part[len("signature="):]
        else:
            kept.append(part)
    return "&".join(kept), sig


def check_signed(*, query: str, body: str, params: Mapping[str, str], api_key_header: str | None,
                 api_key: str, secret: str, now_ms: int) -> float:
    """Raise the Binance error a real signed endpoint would give, or return the request's deadline."""
    if not api_key_header or not api_key_header.isprintable() or len(api_key_header) > 256:
        raise apierrors.api_key_format()
    if not hmac.compare_digest(api_key_header.encode(), api_key.encode()):
        raise apierrors.bad_api_key()
    q, sig_q = _without_signature(query)
    b, sig_b = _without_signature(body)
    signature = sig_q if sig_q is not None else sig_b
    if not signature:
        raise apierrors.mandatory("signature")
    expected = hmac.new(secret.encode(), (q + b).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise apierrors.bad_signature()
    raw_ts = params.get("timestamp")
    if not raw_ts or not raw_ts.isdigit():
        raise apierrors.mandatory("timestamp")
    raw_window = params.get("recvWindow")
    window: float = DEFAULT_RECV_WINDOW_MS
    if raw_window is not None:
        if not _WINDOW_RE.fullmatch(raw_window):
            raise apierrors.illegal("recvWindow", _WINDOW_RE.pattern)
        window = float(raw_window)
        if window > MAX_RECV_WINDOW_MS:
            raise apierrors.recv_window_too_large()
    if len(raw_ts) > 19:
        raise apierrors.illegal("timestamp", "^[0-9]{1,19}$")
    ts = int(raw_ts)
    if ts > now_ms + MAX_AHEAD_MS:
        raise apierrors.ahead_of_server(MAX_AHEAD_MS)
    if now_ms - ts > window:
        raise apierrors.outside_recv_window()
    return ts + window
