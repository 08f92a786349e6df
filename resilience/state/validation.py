"""The rules values meet before the writer stores them: order ids, bot ids, fields, numbers."""
from __future__ import annotations

import math
import re
from typing import Any

from tradeguard.exceptions import StateError

_CID_RE = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")  # what Binance accepts as clientOrderId
_BOT_ID_RE = re.compile(r"[A-Za-z0-9]{1,12}")
_TRANSITION_FIELDS = ("exchange_order_id", "filled", "average", "fee", "raw", "reason",
                      "attempts", "price")


def _symbol(v: Any, what: str = "symbol") -> str:
    """A unified market symbol: ``BASE/QUOTE`` (``:SETTLE`` allowed), no blanks around it."""
    if not isinstance(v, str) or "/" not in v or v != v.strip() or not all(v.split(":")[0].split("/")):
        raise StateError(f"{what} {v!r}: must look like 'BTC/USDT'")
    return v


def _finite(name: str, v: Any, *, positive: bool = False, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise StateError(f"{name} = {v!r}: must be a number") from None
    if not math.isfinite(f) or (positive and f <= 0) or f < 0:
        raise StateError(f"{name} = {v!r}: must be a finite number {'> 0' if positive else '>= 0'}")
    return f
