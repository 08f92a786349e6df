"""Probes for idle breakers.

A breaker closes only through a call, and the bot calls a dependency only when it has work for
it. After a storm, an ``orders`` breaker with no open order left to follow, under a strategy
that sends no entries while the bot is degraded, would never be called again: the bot would stay
``degraded`` and, after ``safe_after_s``, ``safe`` — for good, with the exchange long healthy.
So once a breaker's cool-down is over and nothing in the tick has probed it, one cheap read on
its behalf does (request weight 2 to 20 on Binance, once per ``breaker_reset_s`` at most).
"""
from __future__ import annotations

from typing import Any


def due_probes(manager: Any) -> list[str]:
    """The dependencies whose breaker is open with its cool-down over."""
    return [name for name in manager.breaker_states() if manager.breaker(name).probe_due()]


def probe(rt: Any, dependency: str, budget: Any) -> None:
    """One read through ``dependency``'s breaker: an answer closes it, a failure reopens it."""
    ex, symbol = rt.exchange, rt.cfg.exchange.symbols[0]
    if dependency == "orders":
        rt.call(dependency, ex.fetch_open_orders, symbol, budget=budget)
    elif dependency == "account":
        rt.call(dependency, ex.fetch_balance, budget=budget)
    else:
        rt.call(dependency, ex.fetch_ticker, symbol, budget=budget)
