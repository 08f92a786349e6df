"""Trading setups for the emergency tests: a bot that holds a position (bought through the bot's
own order lifecycle against the real paper exchange), and views of the exchange's ledger."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from paper_exchange.control import PaperExchange
from tests.helpers.proc import wait_until
from tradeguard.config import Config, load_config

# Quick resolution of unknown outcomes and short exchange timeouts: tests stay fast.
FAST = {
    "TRADEGUARD_BOT_UNKNOWN_GRACE_S": "0.5",
    "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "1000",
    "TRADEGUARD_EXCHANGE_RECV_WINDOW_MS": "2000",
    "TRADEGUARD_WATCHDOG_EMERGENCY_TIMEOUT_S": "20",
    "TRADEGUARD_RESILIENCE_MAX_ATTEMPTS": "2",
    "TRADEGUARD_RESILIENCE_BACKOFF_BASE_S": "0.05",
    "TRADEGUARD_RESILIENCE_BACKOFF_MAX_S": "0.2",
    "TRADEGUARD_RESILIENCE_BREAKER_RESET_S": "0.5",
}


def exchange_cfg(px: PaperExchange, **env: str) -> Config:
    """The configuration of a bot (and its watchdog) trading on ``px``, in ``px``'s data dir."""
    return load_config(px.config_file, env={**px.env, **FAST, **env})


def bot_runtime(cfg: Config) -> Any:
    """The bot's parts (exchange, resilience, state store), creating its field key if needed."""
    from resilience.keys import generate_field_key
    from watchdog.flatten import open_runtime

    if not cfg.runtime.field_key.exists():
        generate_field_key(cfg.runtime)
    return open_runtime(cfg)[0]


def bot_buys(cfg: Config, symbol: str, amount: float) -> str:
    """The bot buys ``amount`` at market through its order lifecycle; returns the client order id."""
    from trading.runtime import StoppableBudget
    from trading.orders import OrderBook, OrderSpec
    from trading.risk import RiskLimits

    rt = bot_runtime(cfg)
    try:
        rt.exchange.load_markets()
        price = float(rt.exchange.fetch_ticker(symbol)["last"])
        book = OrderBook(rt, RiskLimits(cfg.risk))
        budget = StoppableBudget(10.0, threading.Event())
        o = book.place(OrderSpec(symbol, "buy", "market", amount, None, "entry", price),
                       book.book({symbol: price}), budget)
        assert o is not None and o.state == "FILLED", o

        def recorded() -> bool:
            book.sync_fills(budget)
            held = rt.store.positions().get(symbol)
            return held is not None and held.amount >= amount * 0.99
        wait_until(recorded, 10, interval=0.05, message="fills recorded")
        return o.client_order_id
    finally:
        rt.store.close()


@contextmanager
def bot_store(cfg: Config) -> Iterator[Any]:
    """The bot's state store (opened with its key), closed afterwards."""
    rt = bot_runtime(cfg)
    try:
        yield rt.store
    finally:
        rt.store.close()


def recorded_position(cfg: Config, symbol: str) -> float:
    with bot_store(cfg) as store:
        p = store.positions().get(symbol)
        return p.amount if p else 0.0


def ledger_orders(px: PaperExchange, prefix: str = "") -> list[dict]:
    return [o for o in px.ledger()["orders"] if str(o.get("clientOrderId", "")).startswith(prefix)]


def balance(px: PaperExchange, asset: str, kind: str = "total") -> float:
    return float((px.balances().get(asset) or {}).get(kind, 0))



def bot_order(cfg: Config, px: PaperExchange, side: str, order_type: str, amount: float,
              price: float | None = None, fault: dict | None = None,
              symbol: str = "BTC/USDT") -> str:
    """The bot places one order through its lifecycle (``fault`` on POST /api/v3/order first,
    e.g. a delay longer than the client timeout: the order ends UNKNOWN while the exchange still
    holds the request); returns the client order id."""
    from trading.orders import OrderBook, OrderSpec
    from trading.risk import RiskLimits
    from trading.runtime import StoppableBudget

    rt = bot_runtime(cfg)
    try:
        rt.exchange.load_markets()
        last = float(rt.exchange.fetch_ticker(symbol)["last"])
        book = OrderBook(rt, RiskLimits(cfg.risk))
        if fault:
            px.add_fault(method="POST", path="/api/v3/order", times=1, **fault)
        spec = OrderSpec(symbol, side, order_type, amount, price,
                         "entry" if side == "buy" else "exit", price or last)
        o = book.place(spec, book.book({symbol: last}), StoppableBudget(10.0, threading.Event()))
        assert o is not None, "blocked by the risk limits"
        return o.client_order_id
    finally:
        rt.store.close()
