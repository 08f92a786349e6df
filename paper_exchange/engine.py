"""The paper exchange's matching engine and account: orders, fills, balances, prices.

All state lives in memory under one lock and is written through to :class:`~paper_exchange.store.Store`
in one transaction per operation before the caller answers, so an applied order is durable even if
the response never reaches the client. Takers walk the synthetic :class:`~paper_exchange.book.Book`
(one fill per level, at that level's price); resting limit orders fill at their own price when the
last price crosses them, as much as the crossed levels hold (``PARTIALLY_FILLED`` until done).
Stop orders wait (``isWorking`` false, funds locked) until the last price triggers them, then trade
as a market or limit order. Orders are hidden from queries until ``visible_at`` (eventual
visibility); the matching engine itself always sees them.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Callable, Iterable, Iterator

from paper_exchange import apierrors
from paper_exchange.book import ASK, BID, Book, BookSettings
from paper_exchange.ledger_types import Fill, Order
from paper_exchange.markets import MARKETS, STOP_TYPES, ZERO, Market, dec, market_for, q8
from paper_exchange.prices import KEEP_MINUTES, PriceFeed
from paper_exchange.store import Store
from paper_exchange.tape import Tape

_MARKET_LIKE = ("MARKET", "STOP_LOSS", "TAKE_PROFIT")
Plan = list[tuple[Decimal, Decimal]]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EngineSettings:
    fee: Decimal
    fee_asset: str  # "quote" | "received"
    slippage: Decimal  # half spread: best ask/bid distance from the last price
    start_balances: dict[str, Decimal]
    book: BookSettings | None = None
    client_id_reuse: str = "after_close"  # | "never"
    visibility_lag_ms: int = 0
    recheck_recv_window: bool = True


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
    stop_price: Decimal | None = None
    deadline_ms: float | None = None  # timestamp + recvWindow: not executed after that
    hidden_ms: int = 0  # extra invisibility (the ``invisible`` fault)


def _triggered(o: Order, last: Decimal) -> bool:
    """Binance's trigger rule: a stop-loss sell / take-profit buy fires at or below the stop price."""
    if (o.side == "SELL") == o.type.startswith("STOP_LOSS"):
        return last <= o.stop_price
    return last >= o.stop_price


class Engine:
    """Thread-safe: every public method takes the lock."""

    def __init__(self, store: Store, feed_factory: Callable[[dict], PriceFeed], settings: EngineSettings):
        self.lock = threading.RLock()
        self.store = store
        self.settings = settings
        self.book = Book(settings.book or BookSettings(50, Decimal(5000), Decimal("0.0001"),
                                                       settings.slippage, 0))
        self.tape = Tape()
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
        self._dirty_assets: set[str] = set()
        self._dirty_orders: dict[int, Order] = {}
        self._new_fills: list[Fill] = []
        with self._txn():
            if fresh:
                for asset, amount in settings.start_balances.items():
                    self._set(asset, amount, ZERO)
            for symbol, st in self.feed.state.items():
                if symbol not in stored_prices:  # new market: keep its backfilled history
                    store.save_price(symbol, st, st.candles)

    @contextmanager
    def _txn(self, durable: bool = True) -> Iterator[None]:
        """One store transaction; the balances, orders and fills changed in it are written once,
        at its end (a market order walking five levels is a handful of statements)."""
        try:
            with self.store.transaction(durable):
                yield
                self.store.save_fills(self._new_fills)
                for o in self._dirty_orders.values():
                    self.store.save_order(o)
                for a in self._dirty_assets:
                    free, locked = self.balances[a]
                    self.store.save_balance(a, free, locked)
        finally:
            self._new_fills.clear()
            self._dirty_orders.clear()
            self._dirty_assets.clear()

    # --- balances ---------------------------------------------------------------------------
    def _bal(self, asset: str) -> list[Decimal]:
        return self.balances.setdefault(asset, [ZERO, ZERO])

    def _set(self, asset: str, free: Decimal, locked: Decimal) -> None:
        self.balances[asset] = [free, locked]
        self._dirty_assets.add(asset)

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
            with self._txn():
                self._set(asset, free + amount, locked)
            return free + amount, locked

    # --- orders -----------------------------------------------------------------------------
    def new_client_order_id(self) -> str:
        return f"paper-{now_ms()}-{next(self._client_ids)}"

    def _fee(self, amount: Decimal) -> Decimal:
        return q8(amount * self.settings.fee, ROUND_UP)

    def _buy_cost(self, qty: Decimal, price: Decimal) -> Decimal:
        """Quote needed to buy ``qty`` at ``price``, fee included when charged in quote."""
        notional = q8(qty * price, ROUND_UP)
        return notional + (self._fee(notional) if self.settings.fee_asset == "quote" else ZERO)

    def _check_deadline(self, deadline_ms: float | None) -> None:
        """The recvWindow fence at the matching engine: a request that arrives late never executes."""
        if deadline_ms is not None and self.settings.recheck_recv_window and now_ms() > deadline_ms:
            raise apierrors.outside_recv_window()

    def _reservation(self, o: Order) -> Decimal:
        """What a resting order locks: the base it sells, or the quote its remainder costs."""
        if o.side == "SELL":
            return o.remaining
        return self._buy_cost(o.remaining, o.price if o.price else o.stop_price)

    def _plan(self, o: Order, m: Market, last: Decimal) -> Plan:
        """The taker fills ``o`` would get now (empty for a FOK that cannot fill whole)."""
        side = ASK if o.side == "BUY" else BID
        if o.type in _MARKET_LIKE:
            quote = o.orig_quote_qty - o.cum_quote if o.orig_quote_qty else None
            plan = self.book.plan(m, last, side, qty=None if quote is not None else o.remaining, quote=quote)
        else:
            plan = self.book.plan(m, last, side, qty=o.remaining, limit_price=o.price)
        if o.time_in_force == "FOK" and sum((q for _, q in plan), ZERO) < o.remaining:
            return []
        return plan

    def _rests(self, o: Order) -> bool:
        return o.type not in _MARKET_LIKE and o.time_in_force in ("GTC", "")

    def _needs(self, o: Order, plan: Plan) -> Decimal:
        """Funds (in the asset the order spends) to take ``plan`` and lock what then rests."""
        if o.side == "SELL":
            return sum((q for _, q in plan), ZERO) if o.type in _MARKET_LIKE else o.remaining
        taken = sum((q for _, q in plan), ZERO)
        cost = sum((self._buy_cost(q, p) for p, q in plan), ZERO)
        if self._rests(o) and o.remaining > taken:
            cost += self._buy_cost(o.remaining - taken, o.price)
        return cost

    def _take(self, o: Order, m: Market, last: Decimal, plan: Plan, t: int) -> list[Fill]:
        """Execute ``plan`` as taker; the remainder rests (locked) or expires."""
        fills = [self._fill(o, p, q, is_maker=False, t=t) for p, q in plan]
        self.book.take(m, last, ASK if o.side == "BUY" else BID, sum((q for _, q in plan), ZERO))
        if o.remaining > 0 and o.is_open:
            if self._rests(o):
                o.reserved = self._reservation(o)
                self._move(o.reserved_asset, -o.reserved, o.reserved)
                self.open[o.order_id] = o
            else:
                o.status = "EXPIRED"
                self.open.pop(o.order_id, None)
        self._dirty_orders[o.order_id] = o
        return fills

    def place(self, req: OrderRequest) -> tuple[Order, list[Fill]]:
        """Validate against filters and balances, then accept (and maybe fill) an order."""
        with self.lock:
            self._check_deadline(req.deadline_ms)
            m = req.market
            prev = self.by_client_id.get(req.client_order_id)
            if prev is not None and (prev.is_open or self.settings.client_id_reuse == "never"):
                raise apierrors.duplicate_order()
            last = self.feed.price(m.id)
            t = now_ms()
            working = req.type not in STOP_TYPES
            order = Order(next(self._order_ids), req.client_order_id, m.id, req.side, req.type,
                          req.time_in_force, req.price or ZERO, req.qty or ZERO, ZERO, ZERO, "NEW", ZERO,
                          m.quote if req.side == "BUY" else m.base, t, t,
                          stop_price=req.stop_price or ZERO, orig_quote_qty=req.quote_qty or ZERO,
                          is_working=working, working_time=t if working else -1,
                          visible_at=t + self.settings.visibility_lag_ms + req.hidden_ms)
            plan: Plan = []
            if req.quote_qty is not None:  # MARKET by quote: as much as that buys/sells on the book
                plan = self._plan(order, m, last)
                order.orig_qty = sum((q for _, q in plan), ZERO)
            m.check(req.type, order.orig_qty, req.price, last, req.stop_price)
            if not working:
                if _triggered(order, last):
                    raise apierrors.would_trigger()
            elif req.type == "LIMIT_MAKER":
                bid, ask = self.book.best(m, last)
                if (req.side == "BUY" and req.price >= ask) or (req.side == "SELL" and req.price <= bid):
                    raise apierrors.would_take()
            elif req.quote_qty is None:
                plan = self._plan(order, m, last)
            need = self._reservation(order) if not working or req.type == "LIMIT_MAKER" else self._needs(order, plan)
            if self._bal(order.reserved_asset)[0] < need:
                raise apierrors.insufficient_balance()
            fills: list[Fill] = []
            with self._txn():
                self.orders[order.order_id] = order
                self.by_client_id[order.client_order_id] = order
                if working and req.type != "LIMIT_MAKER":
                    fills = self._take(order, m, last, plan, t)
                else:
                    order.reserved = need
                    self._move(order.reserved_asset, -need, need)
                    self.open[order.order_id] = order
                    self._dirty_orders[order.order_id] = order
            return order, fills

    def _fill(self, order: Order, price: Decimal, qty: Decimal, *, is_maker: bool, t: int) -> Fill:
        """Fill ``qty`` of ``order`` at ``price``: balances, fill record, order state (in a transaction)."""
        m = MARKETS[order.symbol]
        notional = q8(qty * price, ROUND_UP if order.side == "BUY" else ROUND_DOWN)
        if order.reserved:
            rem = order.remaining
            release = order.reserved if qty >= rem else min(order.reserved, q8(order.reserved * qty / rem, ROUND_UP))
            self._move(order.reserved_asset, release, -release)
            order.reserved -= release
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
        order.executed_qty += qty
        order.cum_quote += notional
        order.status = "FILLED" if order.executed_qty >= order.orig_qty else "PARTIALLY_FILLED"
        order.update_time = t
        if order.status == "FILLED":
            self.open.pop(order.order_id, None)
        self.fills.append(fill)
        self._new_fills.append(fill)
        self._dirty_orders[order.order_id] = order
        self.feed.add_trade(order.symbol, price, qty, t)
        self.tape.add(order.symbol, price, qty, t, buyer_maker=(order.side == "BUY") == is_maker)
        return fill

    def _visible(self, o: Order | None, t: int) -> Order | None:
        return o if o is not None and o.visible_at <= t else None

    def find(self, symbol: str, order_id: int | None, client_order_id: str | None) -> Order | None:
        """The order queries see: by id (and then its client id must match, when given), else by
        client id (the newest order with it); None while it is not visible yet."""
        with self.lock:
            if order_id is not None:
                o = self.orders.get(order_id)
                if o is not None and client_order_id is not None and o.client_order_id != client_order_id:
                    o = None
            else:
                o = self.by_client_id.get(client_order_id or "")
            o = self._visible(o, now_ms())
            return o if o is not None and o.symbol == symbol else None

    def _cancel(self, o: Order, t: int) -> Order:
        self._move(o.reserved_asset, o.reserved, -o.reserved)
        o.reserved, o.status, o.update_time = ZERO, "CANCELED", t
        self.open.pop(o.order_id, None)
        self._dirty_orders[o.order_id] = o
        return o

    def cancel(self, symbol: str, order_id: int | None, client_order_id: str | None,
               deadline_ms: float | None = None) -> Order:
        """Cancel an open order; what already filled stays filled. -2011 when there is none."""
        with self.lock:
            self._check_deadline(deadline_ms)
            o = self.find(symbol, order_id, client_order_id)
            if o is None or not o.is_open:
                raise apierrors.unknown_order()
            with self._txn():
                return self._cancel(o, now_ms())

    def cancel_all(self, symbol: str, deadline_ms: float | None = None) -> list[Order]:
        """Cancel every open (visible) order of ``symbol``; -2011 when there is none."""
        with self.lock:
            self._check_deadline(deadline_ms)
            orders = self.open_orders(symbol)
            if not orders:
                raise apierrors.unknown_order()
            t = now_ms()
            with self._txn():
                return [self._cancel(o, t) for o in orders]

    def open_orders(self, symbol: str | None, *, hidden: bool = False) -> list[Order]:
        with self.lock:
            t = now_ms()
            return [o for _, o in sorted(self.open.items()) if (symbol is None or o.symbol == symbol)
                    and (hidden or o.visible_at <= t)]

    def all_orders(self, symbol: str | None = None, *, hidden: bool = False) -> list[Order]:
        with self.lock:
            t = now_ms()
            return [o for _, o in sorted(self.orders.items()) if (symbol is None or o.symbol == symbol)
                    and (hidden or o.visible_at <= t)]

    def trades(self, symbol: str | None = None, *, hidden: bool = False) -> list[Fill]:
        with self.lock:
            t = now_ms()
            return [f for f in self.fills if (symbol is None or f.symbol == symbol)
                    and (hidden or self.orders[f.order_id].visible_at <= t)]

    def depth(self, m: Market, limit: int) -> dict[str, list[tuple[Decimal, Decimal]]]:
        with self.lock:
            last = self.feed.price(m.id)
            return {"bids": self.book.view(m, last, BID, limit), "asks": self.book.view(m, last, ASK, limit)}

    def public_trades(self, m: Market) -> list:
        with self.lock:
            return self.tape.trades(m.id)

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

    def _trigger(self, o: Order, m: Market, last: Decimal, t: int) -> list[Fill]:
        """A stop fires: its lock is released and it trades as a market or limit order now."""
        self._move(o.reserved_asset, o.reserved, -o.reserved)
        o.reserved, o.is_working, o.working_time, o.update_time = ZERO, True, t, t
        plan = self._plan(o, m, last)
        if self._bal(o.reserved_asset)[0] < self._needs(o, plan):
            o.status = "EXPIRED"  # as Binance: a triggered order the account cannot pay expires
            self.open.pop(o.order_id, None)
            self._dirty_orders[o.order_id] = o
            return []
        return self._take(o, m, last, plan, t)

    def _due(self, symbol: str) -> tuple[list[Order], list[Order]]:
        """The stops that ``last`` triggers and the working limit orders it crosses (best price first)."""
        last = self.feed.price(symbol)
        stops: list[Order] = []
        crossed: list[Order] = []
        for o in self.open.values():
            if o.symbol != symbol:
                continue
            if not o.is_working:
                if _triggered(o, last):
                    stops.append(o)
            elif (last <= o.price) if o.side == "BUY" else (last >= o.price):
                crossed.append(o)
        crossed.sort(key=lambda o: (-o.price if o.side == "BUY" else o.price, o.order_id))
        return stops, crossed

    def _match(self, symbol: str, due: tuple[list[Order], list[Order]], t: int) -> list[Fill]:
        """Trigger the due stops, then fill the crossed limit orders, each as much as the crossed
        levels still hold (in a transaction)."""
        m = MARKETS[symbol]
        last = self.feed.price(symbol)
        stops, crossed = due
        out: list[Fill] = []
        for o in stops:
            out += self._trigger(o, m, last, t)
        for o in crossed:
            if not o.is_open:
                continue
            side = ASK if o.side == "BUY" else BID
            qty = min(o.remaining, self.book.crossed(m, last, side, o.price))
            if qty > 0:
                out.append(self._fill(o, o.price, qty, is_maker=True, t=t))
                self.book.take(m, last, side, qty)
        return out

    def _step(self, symbols: Iterable[str], t: int) -> list[Fill]:
        """Match after a price move and persist the prices; fsync only when something filled
        (a lost price step costs nothing, a lost fill would)."""
        due = {s: self._due(s) for s in symbols}
        with self._txn(durable=any(a or b for a, b in due.values())):
            fills = [f for s, d in due.items() for f in self._match(s, d, t)]
            self._persist_prices(due, t)
        return fills

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
            for sym, price in prices.items():
                self.book.moved(sym)
                self.tape.add(sym, price, self.feed.state[sym].last_qty, t, buyer_maker=bool(t & 1))
            return self._step(prices, t)

    def set_price(self, symbol: str, price: Decimal) -> list[Fill]:
        """Jump a price (control API) and fill the limit orders it crosses."""
        with self.lock:
            m = market_for(symbol)
            price = m.round_price(dec(price))
            t = now_ms()
            self.feed.set_price(m.id, price, t)
            self.book.moved(m.id)
            return self._step([m.id], t)
