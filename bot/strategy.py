"""The strategy interface: market data in, desired orders or target positions out.

A strategy is a class with an ``on_tick(ctx: TickContext)`` method that returns (or yields)
:class:`Order`, :class:`Target` and :class:`Cancel` actions. The bot does everything else:
market data, risk limits, the order lifecycle, reconciliation. Name it in the configuration
as ``[bot] strategy = "package.module:Class"`` or ``"/path/file.py:Class"``; the table
``[bot] strategy_params`` is passed to its constructor as keyword arguments.

Class attributes tell the bot what data to fetch: ``timeframe`` and ``ohlcv_limit`` (0 = no
candles), refreshed at most every ``ohlcv_refresh_s``. Optional ``snapshot() -> dict`` and
``restore(dict)`` keep the strategy's own state across restarts (stored in state.db).
Optional ``on_fill(fill: FillEvent)`` hears every fill of the bot's orders — its own, the
protective stops', and those adopted from the exchange after a restart — at most once each (a
fill recorded just before a crash is not told again), after the tick that recorded it.
Optional ``on_start(ctx)`` runs once after startup recovery, before the first ``on_tick``, and
``on_stop()`` once on a clean shutdown (SIGTERM/SIGINT); a raise in either is logged and recorded
like a failing tick, never fatal.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from tradeguard.exceptions import StrategyLoadError


@dataclass(frozen=True)
class MarketData:
    """What the bot knows about one symbol this tick."""

    symbol: str
    last: float
    bid: float | None = None
    ask: float | None = None
    ts: float = 0.0  # unix seconds of the ticker
    ohlcv: tuple[tuple[float, float, float, float, float, float], ...] = ()  # ms, o, h, l, c, v


@dataclass(frozen=True)
class OpenOrder:
    """One of the bot's orders that is not final yet (OPEN, or in flight: INTENT/SUBMITTING/UNKNOWN)."""

    client_order_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    filled: float
    state: str
    purpose: str
    created_at: float
    tag: str = ""
    stop_price: float | None = None  # a protective stop's trigger price


@dataclass(frozen=True)
class FillEvent:
    """One fill of one of the bot's orders (``purpose``: entry, exit or protective — a stop)."""

    client_order_id: str
    symbol: str
    side: str
    amount: float
    price: float
    fee: float
    fee_currency: str | None
    purpose: str
    ts: float  # unix seconds of the trade on the exchange


@dataclass(frozen=True)
class PositionView:
    """One position of the bot as a strategy sees it."""

    amount: float  # base units held
    avg_entry: float | None = None  # average entry price (average cost, fees in quote included)
    unrealized_pnl: float | None = None  # quote, at the tick's last price (None without a price)
    stop_price: float | None = None  # its protective stop resting on the exchange; None = missing/off
    take_profit_price: float | None = None  # the bot-held take-profit, if one was asked for


@dataclass(frozen=True)
class Balance:
    """One currency of the account, as of the bot's last balance read (its last reconciliation)."""

    free: float
    total: float


@dataclass(frozen=True)
class TickContext:
    """Everything a strategy sees in one tick."""

    now: float
    market: dict[str, MarketData]  # symbols with fresh data this tick
    positions: dict[str, float]  # base amount the bot holds, per symbol
    open_orders: tuple[OpenOrder, ...]
    degradation: str  # running | degraded (exits only); in safe mode the strategy is not called
    views: dict[str, PositionView] = field(default_factory=dict)  # see position()
    balances: dict[str, Balance] = field(default_factory=dict)  # per currency; {} before the first read

    def orders_for(self, symbol: str) -> list[OpenOrder]:
        return [o for o in self.open_orders if o.symbol == symbol]

    def position(self, symbol: str) -> PositionView:
        """The bot's position in ``symbol``: amount, average entry, unrealized P&L, its stop."""
        view = self.views.get(symbol)
        return view if view is not None else PositionView(self.positions.get(symbol, 0.0))


TAKE_PROFIT_MAX_PCT = 1000.0


def _check_stop(pct: float | None) -> None:
    if pct is not None and not 0 < pct <= 50:
        raise ValueError(f"stop_loss_pct must be > 0 and <= 50, not {pct!r}")


def _check_take_profit(pct: float | None) -> None:
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float))
                            or not 0 < pct <= TAKE_PROFIT_MAX_PCT):
        raise ValueError(f"take_profit_pct must be > 0 and <= {TAKE_PROFIT_MAX_PCT:g}, not {pct!r}")


@dataclass(frozen=True)
class Order:
    """Send this order. ``amount`` in base units; ``price`` only for limit orders."""

    symbol: str
    side: str  # "buy" | "sell"
    amount: float
    type: str = "market"  # "market" | "limit"
    price: float | None = None
    tag: str = ""  # free text kept with the order (e.g. why it was placed)
    stop_loss_pct: float | None = None  # buys: the position's stop this % below its entry
    take_profit_pct: float | None = None  # buys: the bot sells the position this % above its entry

    def __post_init__(self) -> None:
        _check_stop(self.stop_loss_pct)
        _check_take_profit(self.take_profit_pct)
        if self.stop_loss_pct is not None and self.side != "buy":
            raise ValueError("stop_loss_pct is for buys: the position's stop is set by its entry")
        if self.take_profit_pct is not None and self.side != "buy":
            raise ValueError("take_profit_pct is for buys: the position's take-profit is set by its entry")
        if self.side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', not {self.side!r}")
        if self.type not in ("market", "limit"):
            raise ValueError(f"type must be 'market' or 'limit', not {self.type!r}")
        if not self.amount > 0:
            raise ValueError(f"amount must be > 0, not {self.amount!r}")
        if self.type == "limit" and not (self.price and self.price > 0):
            raise ValueError("a limit order needs a price > 0")


@dataclass(frozen=True)
class Target:
    """Hold ``amount`` (base units) of ``symbol``; the bot sends the market order that gets there."""

    symbol: str
    amount: float
    tag: str = ""
    stop_loss_pct: float | None = None  # the position's stop this % below its entry
    take_profit_pct: float | None = None  # the bot sells the position this % above its entry

    def __post_init__(self) -> None:
        _check_stop(self.stop_loss_pct)
        _check_take_profit(self.take_profit_pct)
        if self.amount < 0:
            raise ValueError("spot positions cannot be negative")


@dataclass(frozen=True)
class Cancel:
    """Cancel one of the bot's open orders."""

    client_order_id: str
    reason: str = "strategy"


Action = Union[Order, Target, Cancel]


class Strategy:
    """Base class (optional: any class with ``on_tick`` works)."""

    timeframe: str = "1m"
    ohlcv_limit: int = 0
    ohlcv_refresh_s: float = 10.0

    def on_tick(self, ctx: TickContext) -> Iterable[Action]:
        """Return the actions for this tick (an empty list to do nothing)."""
        raise NotImplementedError

    def on_fill(self, fill: FillEvent) -> None:
        """A fill of one of the bot's orders (optional)."""

    def on_start(self, ctx: TickContext) -> None:
        """Once after startup recovery, before the first tick (optional); ``ctx.market`` may be
        empty when no price was fetched yet."""

    def on_stop(self) -> None:
        """Once on a clean shutdown, before the strategy's snapshot is saved (optional)."""

    def snapshot(self) -> dict[str, Any] | None:
        """State to keep across restarts (JSON-serialisable), or None."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`snapshot` returned before a restart."""


@dataclass
class LoadedStrategy:
    instance: Any
    spec: str
    params: dict = field(default_factory=dict)


def _import_target(spec: str) -> Any:
    module_part, _, class_name = spec.rpartition(":")
    if not module_part or not class_name or not class_name.isidentifier():
        raise StrategyLoadError(f"[bot] strategy = {spec!r}: expected 'package.module:Class' "
                                "or '/path/to/file.py:Class'")
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part).expanduser()
        if not path.is_file():
            raise StrategyLoadError(f"[bot] strategy = {spec!r}: file {path} does not exist")
        mod_name = f"tradeguard_user_strategy_{abs(hash(str(path.resolve())))}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise StrategyLoadError(f"[bot] strategy = {spec!r}: {path} is not a Python module")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise StrategyLoadError(f"[bot] strategy = {spec!r}: {path} failed to load: "
                                    f"{type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            raise StrategyLoadError(f"[bot] strategy = {spec!r}: module {e.name!r} not found "
                                    "(is it on PYTHONPATH?)") from None
        except Exception as e:
            raise StrategyLoadError(f"[bot] strategy = {spec!r}: module {module_part} failed to "
                                    f"load: {type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise StrategyLoadError(f"[bot] strategy = {spec!r}: {module_part} has no {class_name!r}")
    if not inspect.isclass(cls) or not callable(getattr(cls, "on_tick", None)):
        raise StrategyLoadError(f"[bot] strategy = {spec!r}: {class_name} must be a class with "
                                "an on_tick(ctx) method")
    if getattr(cls, "on_tick") is Strategy.on_tick:
        raise StrategyLoadError(f"[bot] strategy = {spec!r}: {class_name} does not implement on_tick")
    return cls


def load_strategy(spec: str, params: dict[str, Any] | None = None) -> LoadedStrategy:
    """Import and construct the configured strategy; StrategyLoadError says what is wrong."""
    cls = _import_target(spec)
    params = dict(params or {})
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as e:
        raise StrategyLoadError(f"[bot] strategy_params do not fit {cls.__name__}: {e}") from None
    try:
        instance = cls(**params)
    except (TypeError, ValueError) as e:
        raise StrategyLoadError(f"[bot] strategy {cls.__name__}({params}): {e}") from None
    limit = getattr(instance, "ohlcv_limit", 0)
    if not isinstance(limit, int) or limit < 0 or limit > 1000:
        raise StrategyLoadError(f"{cls.__name__}.ohlcv_limit = {limit!r}: must be an integer 0..1000")
    return LoadedStrategy(instance, spec, params)


def to_actions(result: Iterable[Action] | None) -> list[Action]:
    """The strategy's output as a list; TypeError when it returns something else."""
    if result is None:
        return []
    actions = list(result)
    for a in actions:
        if not isinstance(a, (Order, Target, Cancel)):
            raise TypeError(f"strategy returned {a!r}; expected Order, Target or Cancel")
    return actions
