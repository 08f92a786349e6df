"""The paper exchange's matching engine and account: orders, fills, balances, prices.

All state lives in memory under one lock and is written through to :class:`~paper_exchange.store.Store`
in one transaction per operation before the caller answers, so an applied order is durable even if
the response never reaches the client. Fills are all-or-nothing: market orders and marketable
limit orders fill at once (at the price plus/minus ``slippage``), resting limit orders fill at
their limit price when the price crosses it.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Callable, Iterable

from paper_exchange import apierrors
from paper_exchange.ledger_types import Fill, Order
from paper_exchange.markets import MARKETS, ZERO, Market, dec, market_for, q8
from paper_exchange.prices import KEEP_MINUTES, PriceFeed
from paper_exchange.store import Store


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EngineSettings:
    fee: Decimal
    fee_asset: str  # "quote" | "received"
    slippage: Decimal
    start_balances: dict[str, Decimal]


@dataclass(frozen=True)
class OrderRequest:
    """A validated ``POST /api/v3/order``."""
    market: Market
    side: str
    type: str
    qty: Decimal | None
    quote_qty: Decimal | None
    price: Decimal | None
    time_in_force: str
    client_order_id: str


class Engine:
    """Thread-safe: every public method takes the lock."""

    def __init__(self, store: Store, feed_factory: Callable[[dict], PriceFeed], settings: EngineSettings):
        self.lock = threading.RLock()
        self.store = store
        self.settings = settings
        self.orders: dict[int, Order] = {o.order_id: o for o in store.load_orders()}
        self.by_client_id: dict[str, Order] = {o.client_order_id: o for o in self.orders.values()}
        self.open: dict[int, Order] = {i: o for i, o in self.orders.items() if o.is_open}
        self.fills: list[Fill] = store.load_fills()
        balances = store.load_balances()
        fresh = not balances and not self.orders
        self.balances: dict[str, list[Decimal]] = {a: [f, lk] for a, (f, lk) in balances.items()}
        stored_prices = store.load_prices()
        self.feed = feed_factory(stored_prices)
        self._order_ids = itertools.count(max(self.orders, default=1_000_000) + 1)
        self._trade_ids = itertools.count(max((f.trade_id for f in self.fills), default=5_000_000) + 1)
        self._client_ids = itertools.count(1)
        with store.transaction():
            if fresh:
                for asset, amount in settings.start_balances.items():
                    self._set(asset, amount, ZERO)
            for symbol, st in self.feed.state.items():
                if symbol not in stored_prices:  # new market: keep its backfilled history
                    store.save_price(symbol, st, st.candles)

    # --- balances ---------------------------------------------------------------------------
    def _bal(self, asset: str) -> list[Decimal]:
        return self.balances.setdefault(asset, [ZERO, ZERO])

    def _set(self, asset: str, free: Decimal, locked: Decimal) -> None:
        self.balances[asset] = [free, locked]
        self.store.save_balance(asset, free, locked)

    def _move(self, asset: str, free_delta: Decimal = ZERO, locked_delta: Decimal = ZERO) -> None:
        free, locked = self._bal(asset)
        self._set(asset, free + free_delta, locked + locked_delta)

    def balance_view(self) -> dict[str, tuple[Decimal, Decimal]]:
        with self.lock:
            return {a: (f, lk) for a, (f, lk) in sorted(self.balances.items())}

    def deposit(self, asset: str, amount: Decimal) -> tuple[Decimal, Decimal]:
        """Add (or, negative, withdraw) free funds; never below zero (control API)."""
        with self.lock:
            free, locked = self._bal(asset)
            if free + amount < 0:
                raise apierrors.insufficient_balance()
            with self.store.transaction():
                self._set(asset, free + amount, locked)
            return free + amount, locked

    # --- orders -----------------------------------------------------------------------------
    def new_client_order_id(self) -> str:
        return f"paper-{now_ms()}-{next(self._client_ids)}"

    def _fee(self, amount: Decimal) -> Decimal:
        return q8(amount * self.settings.fee, ROUND_UP)

    def _fill_price(self, m: Market, side: str) -> Decimal:
        last = self.feed.price(m.id)
        slip = self.settings.slippage
        return m.round_price(last * (1 + slip), up=True) if side == "BUY" else m.round_price(last * (1 - slip))

    def _buy_cost(self, qty: Decimal, price: Decimal) -> Decimal:
        """Quote needed to buy ``qty`` at ``price``, fee included when charged in quote."""
        notional = q8(qty * price, ROUND_UP)
        return notional + (self._fee(notional) if self.settings.fee_asset == "quote" else ZERO)

    def place(self, req: OrderRequest) -> tuple[Order, list[Fill]]:
        """Validate against filters and balances, then accept (and maybe fill) an order."""
        with self.lock:
            m = req.market
            if req.client_order_id in self.by_client_id:
                raise apierrors.duplicate_order()
            ask_bid = self._fill_price(m, req.side)
            qty = req.qty
            if qty is None:  # MARKET with quoteOrderQty: as much as that buys/sells at the fill price
                qty = (req.quote_qty / ask_bid / m.step_size).to_integral_value(ROUND_DOWN) * m.step_size
            m.check(req.type, qty, req.price, self.feed.price(m.id))
            if req.type == "MARKET":
                fill_at: Decimal | None = ask_bid
            elif req.side == "BUY":
                fill_at = min(req.price, ask_bid) if req.price >= ask_bid else None
            else:
                fill_at = max(req.price, ask_bid) if req.price <= ask_bid else None
            if req.side == "BUY":
                need_asset = m.quote
                need = self._buy_cost(qty, fill_at if fill_at is not None else req.price)
            else:
                need_asset, need = m.base, qty
            if self._bal(need_asset)[0] < need:
                raise apierrors.insufficient_balance()
            t = now_ms()
            order = Order(next(self._order_ids), req.client_order_id, m.id, req.side, req.type,
                          req.time_in_force, req.price or ZERO, qty, ZERO, ZERO, "NEW", ZERO, need_asset, t, t)
            fills: list[Fill] = []
            with self.store.transaction():
                if fill_at is not None:
                    fills.append(self._execute(order, fill_at, is_maker=False, t=t))
                elif req.time_in_force in ("IOC", "FOK"):
                    order.status = "EXPIRED"
                else:
                    order.reserved = need
                    self._move(need_asset, -need, need)
                    self.open[order.order_id] = order
                self.orders[order.order_id] = order
                self.by_client_id[order.client_order_id] = order
                self.store.save_order(order)
            return order, fills

    def _execute(self, order: Order, price: Decimal, *, is_maker: bool, t: int) -> Fill:
        """Fill ``order`` completely at ``price``: balances, fill record, order state (in a transaction)."""
        m = MARKETS[order.symbol]
        qty = order.orig_qty
        notional = q8(qty * price, ROUND_UP if order.side == "BUY" else ROUND_DOWN)
        if order.reserved:
            self._move(order.reserved_asset, order.reserved, -order.reserved)
            order.reserved = ZERO
        if order.side == "BUY":
            if self.settings.fee_asset == "quote":
                fee, fee_asset = self._fee(notional), m.quote
                self._move(m.quote, -(notional + fee))
                self._move(m.base, qty)
            else:
                fee, fee_asset = self._fee(qty), m.base
                self._move(m.quote, -notional)
                self._move(m.base, qty - fee)
        else:
            fee, fee_asset = self._fee(notional), m.quote
            self._move(m.base, -qty)
            self._move(m.quote, notional - fee)
        fill = Fill(next(self._trade_ids), order.order_id, order.client_order_id, order.symbol,
                    order.side, price, qty, notional, fee, fee_asset, t, is_maker)
        order.executed_qty, order.cum_quote, order.status, order.update_time = qty, notional, "FILLED", t
        self.open.pop(order.order_id, None)
        self.fills.append(fill)
        self.store.save_fill(fill)
        self.store.save_order(order)
        self.feed.add_trade(order.symbol, price, qty, t)
        return fill

    def find(self, symbol: str, order_id: int | None, client_order_id: str | None) -> Order | None:
        with self.lock:
            o = self.orders.get(order_id) if order_id is not None else self.by_client_id.get(client_order_id or "")
            return o if o is not None and o.symbol == symbol else None

    def cancel(self, symbol: str, order_id: int | None, client_order_id: str | None) -> Order:
        with self.lock:
            o = self.find(symbol, order_id, client_order_id)
            if o is None or not o.is_open:
                raise apierrors.unknown_order()
            with self.store.transaction():
                self._move(o.reserved_asset, o.reserved, -o.reserved)
                o.reserved, o.status, o.update_time = ZERO, "CANCELED", now_ms()
                self.open.pop(o.order_id, None)
                self.store.save_order(o)
            return o

    def open_orders(self, symbol: str | None) -> list[Order]:
        with self.lock:
            return [o for _, o in sorted(self.open.items()) if symbol is None or o.symbol == symbol]

    def all_orders(self, symbol: str | None = None) -> list[Order]:
        with self.lock:
            return [o for _, o in sorted(self.orders.items()) if symbol is None or o.symbol == symbol]

    def trades(self, symbol: str | None = None) -> list[Fill]:
        with self.lock:
            return [f for f in self.fills if symbol is None or f.symbol == symbol]

    # --- prices -----------------------------------------------------------------------------
    def prices(self) -> dict[str, Decimal]:
        with self.lock:
            return {s: st.price for s, st in self.feed.state.items()}

    def ticker(self, m: Market) -> dict:
        with self.lock:
            return self.feed.ticker_24h(m, now_ms(), self.settings.slippage)

    def klines(self, m: Market, interval: str, start: int | None, end: int | None, limit: int) -> list[list]:
        with self.lock:
            return self.feed.klines(m.id, interval, start, end, limit)

    def _match(self, symbol: str, t: int) -> list[Fill]:
        last = self.feed.price(symbol)
        out = []
        for o in [o for o in self.open.values() if o.symbol == symbol]:
            if (o.side == "BUY" and last <= o.price) or (o.side == "SELL" and last >= o.price):
                out.append(self._execute(o, o.price, is_maker=True, t=t))
        return out

    def _persist_prices(self, symbols: Iterable[str], t: int) -> None:
        for s in symbols:
            st = self.feed.state[s]
            self.store.save_price(s, st, st.candles[-1:])
            if len(st.candles) >= KEEP_MINUTES:
                self.store.prune_candles(s, st.candles[0].open_time)

    def tick(self) -> list[Fill]:
        """One random-walk (or replay) step of every market; fills the limit orders it crosses."""
        with self.lock:
            t = now_ms()
            prices = self.feed.step(t)
            with self.store.transaction():
                fills = [f for s in prices for f in self._match(s, t)]
                self._persist_prices(prices, t)
            return fills

    def set_price(self, symbol: str, price: Decimal) -> list[Fill]:
        """Jump a price (control API) and fill the limit orders it crosses."""
        with self.lock:
            m = market_for(symbol)
            price = m.round_price(dec(price))
            t = now_ms()
            self.feed.set_price(m.id, price, t)
            with self.store.transaction():
                fills = self._match(m.id, t)
                self._persist_prices([m.id], t)
            return fills
