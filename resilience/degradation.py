"""Degradation levels derived from the breakers and the kill switch (DESIGN.md, "Error classes").

* ``running`` — every breaker closed, kill switch released: trade normally.
* ``degraded`` — some breaker is not closed (open, or half-open while its probe decides): no new
  entries; open positions are still managed (exits, protective orders).
* ``safe`` — the kill switch is engaged, or a critical dependency (``orders`` or
  ``market_data``) has been unavailable for ``safe_after_s`` or longer (its outage started when
  its breaker first opened; re-opening, and closing for less than the breaker's cool-down, do not
  end it): cancel entry orders, keep protective ones, no new orders.

Recovery is immediate: once the breakers close (and the kill switch is released) the level is
``running`` again. :func:`level` is pure: the caller passes ``now`` from its own clock.
"""
from __future__ import annotations

from typing import Mapping

from resilience.breaker import CLOSED

RUNNING, DEGRADED, SAFE = "running", "degraded", "safe"
LEVELS = (RUNNING, DEGRADED, SAFE)  # from best to worst
CRITICAL_DEPENDENCIES = frozenset({"orders", "market_data"})

BreakerView = tuple[str, "float | None"]  # (state, outage_since) as CircuitBreaker.snapshot()


def level(breakers: Mapping[str, BreakerView], now: float, safe_after_s: float, *,
          kill_engaged: bool = False) -> str:
    """The degradation level for these breaker snapshots at time ``now``."""
    if kill_engaged:
        return SAFE
    result = RUNNING
    for name, (state, outage_since) in breakers.items():
        if state == CLOSED:
            continue
        if name in CRITICAL_DEPENDENCIES and outage_since is not None \
                and now - outage_since >= safe_after_s:
            return SAFE
        result = DEGRADED
    return result
