"""Order states, legal transitions and allowed values, and the frozen records the store returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ORDER_STATES = ("INTENT", "SUBMITTING", "OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN")
TERMINAL = frozenset({"FILLED", "CANCELED", "REJECTED"})
ALLOWED: dict[str, frozenset[str]] = {
    "INTENT": frozenset({"SUBMITTING", "CANCELED", "REJECTED", "UNKNOWN", "OPEN", "FILLED"}),
    "SUBMITTING": frozenset({"OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"}),
    "UNKNOWN": frozenset({"SUBMITTING", "OPEN", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"}),
    "OPEN": frozenset({"OPEN", "FILLED", "CANCELED", "UNKNOWN"}),
    **{t: frozenset({t}) for t in TERMINAL},  # terminal: field updates only (e.g. add the fee)
}
SIDES = ("buy", "sell")
PURPOSES = ("entry", "exit", "protective", "emergency")
ORIGINS = ("bot", "watchdog")


@dataclass(frozen=True)
class NewOrder:
    """An order the caller is about to send; committed as INTENT before anything is sent."""
    client_order_id: str
    seq: int
    bot_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None = None
    purpose: str = "entry"
    origin: str = "bot"
    reason: str = ""


@dataclass(frozen=True)
class Order:
    client_order_id: str
    seq: int
    bot_id: str
    origin: str
    purpose: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    state: str
    filled: float
    average: float | None
    fee: float
    exchange_order_id: str | None
    attempts: int
    created_at: float
    updated_at: float
    reason: str | None  # None when there is none, or when read without the field key
    raw: Any            # the exchange's payload (decrypted JSON), or None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def remaining(self) -> float:
        return max(self.amount - self.filled, 0.0)


@dataclass(frozen=True)
class Fill:
    fill_id: str
    client_order_id: str | None
    exchange_order_id: str | None
    symbol: str
    side: str
    amount: float
    price: float
    fee: float = 0.0
    fee_currency: str | None = None
    ts: float = 0.0
    raw: Any = None


@dataclass(frozen=True)
class Position:
    symbol: str
    amount: float
    cost: float
    realized_pnl: float
    updated_at: float

    @property
    def avg_price(self) -> float:
        return self.cost / self.amount if self.amount else 0.0


@dataclass(frozen=True)
class Transition:
    id: int
    client_order_id: str | None
    from_state: str | None
    to_state: str
    ts: float
    note: str | None  # None when there is none, or when read without the field key
