"""Binance request signing, checked the way Binance checks it: ``X-MBX-APIKEY``, then the HMAC-SHA256
of the total parameters (query string followed by body, without ``signature``), then ``timestamp``
within ``recvWindow``."""
from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from paper_exchange import apierrors

DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
MAX_AHEAD_MS = 1000


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
                 api_key: str, secret: str, now_ms: int) -> None:
    """Raise the Binance error a real signed endpoint would give, or return if the request is good."""
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
    window = DEFAULT_RECV_WINDOW_MS
    if raw_window is not None:
        if not raw_window.isdigit():
            raise apierrors.illegal("recvWindow", "^[0-9]{1,20}$")
        window = int(raw_window)
        if window > MAX_RECV_WINDOW_MS:
            raise apierrors.recv_window_too_large()
    ts = int(raw_ts)
    if ts > now_ms + MAX_AHEAD_MS or now_ms - ts > window:
        raise apierrors.outside_recv_window()
