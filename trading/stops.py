"""Protective stops: a stop-loss sell resting on the exchange for every position of the bot.

The exchange holds it, so it limits the loss when the whole host is gone (#17). Each position
gets one stop (purpose ``protective``, client id ``tg-<bot_id>-<seq>``, through the order
lifecycle of ``trading.orders``: intent first, fence-protected resubmission, the stop price kept
in state.db for a resubmission). It is sized to the position minus what other sells of the bot
already lock, priced ``[risk] stop_loss_pct`` below the average entry price, and replaced
(cancel, then place) when the position changes. On spot a resting stop locks the base: an exit
releases the stop first (``release``) and the next ``maintain`` puts back whatever the exit did
not sell — a failed sell included.

``maintain`` sizes nothing while an order of the symbol is in flight or its fills are not all
recorded: a stop is never sized on a position the bot is not sure of. When the price is already
at or through the stop (the venue would refuse the order as "would immediately trigger") the
position is sold at market, as the stop would have done.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from blackbox import recorder
from trading.exchange import amount_step, capabilities, check_exchange_id, tradable_amount
from trading.orders import FILL_EPS, FINAL, IN_FLIGHT, STOP_PRICE_KEY, OrderBook, OrderSpec, as_float
from trading.runtime import Budget, Runtime
from tradeguard.config import Config
from tradeguard.exceptions import ConfigError

log = logging.getLogger(__name__)
SOURCE = "trading.stops"
TAG = "protective stop"
PCT_KEY = "stop_loss_pct.{}"  # kv: a strategy's own stop distance for a symbol's position


def stop_policy(cfg: Config) -> "StopPolicy | None":
    """The stops this configuration asks for on its venue; None when turned off
    (``[risk] stop_loss_pct = 0``). ConfigError when the venue cannot hold them."""
    pct = cfg.risk.stop_loss_pct
    check_exchange_id(cfg.exchange.id)  # a typo is named as one, not as a venue without stops
    if not pct:
        return None
    kind = "limit" if cfg.risk.stop_limit_offset_pct else "market"
    if kind not in capabilities(cfg.exchange.id).get("stop_loss", ()):
        have = capabilities(cfg.exchange.id).get("stop_loss", ())
        what = f"only stop-{have[0]} orders" if have else "no stop orders tradeguard can place"
        raise ConfigError(
            f"[risk] stop_loss_pct = {pct:g}: exchange {cfg.exchange.id!r} has {what} "
            f"(trading/exchange.py capability table), so positions would have no protection on the "
            f"exchange. Set [risk] stop_loss_pct = 0 to run without protective stops"
            + (f", or [risk] stop_limit_offset_pct {'> 0' if have[0] == 'limit' else '= 0'}"
               if have else ""))
    return StopPolicy(pct, cfg.risk.stop_limit_offset_pct)


@dataclass(frozen=True)
class StopPolicy:
    pct: float
    limit_offset_pct: float

    @property
    def order_type(self) -> str:
        """The ccxt type of the stop order: ``limit`` (stop-limit) or ``market`` (stop-market)."""
        return "limit" if self.limit_offset_pct else "market"

    def prices(self, exchange: Any, symbol: str, entry: float,
               pct: float | None = None) -> tuple[float, float | None]:
        """(stop price, limit price or None) for a position entered at ``entry``, ``pct`` (else
        ``[risk] stop_loss_pct``) below it."""
        stop = float(exchange.price_to_precision(symbol, entry * (1 - (pct or self.pct) / 100)))
        if not self.limit_offset_pct:
            return stop, None
        return stop, float(exchange.price_to_precision(symbol, stop * (1 - self.limit_offset_pct / 100)))


class ProtectiveStops:
    """Keeps one correctly sized stop on the exchange for each position of the bot."""

    def __init__(self, rt: Runtime, orders: OrderBook, policy: StopPolicy, symbols: list[str]):
        self.rt = rt
        self.orders = orders
        self.policy = policy
        self.symbols = list(symbols)
        self._bare_since: dict[str, float] = {}  # symbol -> since when a position has no stop
        self._pct: dict[str, float | None] = {}  # kv PCT_KEY, read once

    # --- a strategy's own distance -------------------------------------------------------
    def set_pct(self, symbol: str, pct: float) -> None:
        """Stops of ``symbol``'s position ``pct`` below its entry, until the position is flat."""
        self._set_pct(symbol, pct)

    def pct(self, symbol: str) -> float | None:
        if symbol not in self._pct:
            v = self.rt.store.kv_get(PCT_KEY.format(symbol))
            self._pct[symbol] = float(v) if isinstance(v, (int, float)) else None
        return self._pct[symbol]

    def _set_pct(self, symbol: str, pct: float | None) -> None:
        if self.pct(symbol) != pct:
            self.rt.store.kv_set(PCT_KEY.format(symbol), pct)
            self._pct[symbol] = pct

    # --- views ---------------------------------------------------------------------------
    def stop_price(self, cid: str) -> float | None:
        v = self.rt.store.kv_get(STOP_PRICE_KEY.format(cid))
        return float(v) if isinstance(v, (int, float)) else None

    def live(self, symbol: str) -> list[Any]:
        return [o for o in self.orders.live_orders(symbol) if o.purpose == "protective"]

    def report(self, prices: dict[str, float]) -> dict[str, dict[str, Any]]:
        """Per position: its stop (price, distance from the last price, on the exchange or
        missing, since when missing) — for the heartbeat, ``status`` and ``/health``."""
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        for symbol, pos in sorted(self.rt.store.positions().items()):
            if as_float(pos.amount) <= FILL_EPS:
                continue
            stops = [o for o in self.live(symbol) if o.state == "OPEN"]
            price = prices.get(symbol)
            if stops:
                self._bare_since.pop(symbol, None)
                o = stops[0]
                sp = self.stop_price(o.client_order_id)
                out[symbol] = {"state": "on_exchange", "client_order_id": o.client_order_id,
                               "stop_price": sp, "limit_price": o.price,
                               "amount": o.amount - o.filled, "position": pos.amount,
                               "distance_pct": round((price - sp) / price * 100, 4)
                               if sp and price else None}
            else:
                since = self._bare_since.setdefault(symbol, now)
                out[symbol] = {"state": "missing", "position": pos.amount, "since": since,
                               "pending": bool(self.live(symbol))}
        for symbol in [s for s in self._bare_since if s not in out]:
            del self._bare_since[symbol]
        return out

    # --- keeping them right --------------------------------------------------------------
    def maintain(self, prices: dict[str, float], budget: Budget) -> None:
        """Place, resize or put back the stop of every position (one pass, idempotent)."""
        positions = self.rt.store.positions()
        unsettled = {o.symbol for o in (self.rt.store.get_order(cid, decrypt=False)
                                        for cid in self.orders.fills_pending()) if o is not None}
        for symbol in sorted(set(positions) | {o.symbol for o in self.orders.live_orders()
                                                if o.purpose == "protective"}):
            if budget.expired():
                return
            if symbol not in self.rt.exchange.markets or symbol in unsettled:
                continue  # fills still to record: the position is not known yet
            live = self.orders.live_orders(symbol)
            if any(o.state in IN_FLIGHT for o in live):
                continue  # an order of unknown outcome: resolve it first (the fence)
            pos = positions.get(symbol)
            self._maintain_one(symbol, pos, live, prices.get(symbol), budget)

    def _maintain_one(self, symbol: str, pos: Any, live: list[Any], price: float | None,
                      budget: Budget) -> None:
        ex = self.rt.exchange
        amount = as_float(pos.amount) if pos is not None else 0.0
        locked = sum(max(0.0, o.amount - o.filled) for o in live
                     if o.side == "sell" and o.purpose != "protective")
        entry = pos.avg_price if pos is not None and amount > FILL_EPS else 0.0
        if entry <= 0 and not live and self.pct(symbol) is not None:
            self._set_pct(symbol, None)  # flat, nothing working: the next entry sets its own
        stop, limit = self.policy.prices(ex, symbol, entry, self.pct(symbol)) if entry > 0 else (0.0, None)
        want = tradable_amount(ex, symbol, amount - locked, limit or stop) if entry > 0 else 0.0
        stops = [o for o in live if o.purpose == "protective"]
        step = amount_step(ex, symbol)
        keep = None
        for o in stops:
            right = want > 0 and abs((o.amount - o.filled) - want) <= step / 2 + FILL_EPS and \
                self.stop_price(o.client_order_id) == stop
            if keep is None and right:
                keep = o
                continue
            self.orders.cancel(o, "protective stop resized: the position changed" if want > 0 else
                               "protective stop no longer needed: no position", budget)
        if keep is not None or want <= 0 or not self._settled(stops):
            return
        if price is not None and price <= stop:
            self._stop_breached(symbol, amount - locked, price, stop, budget)
            return
        spec = OrderSpec(symbol, "sell", self.policy.order_type, want, limit, "protective",
                         limit or stop, TAG, stop_price=stop)
        placed = self.orders.place(spec, self.orders.book({symbol: price} if price else {}), budget)
        if placed is not None:
            log.info("protective stop %s: sell %g %s at %g (limit %s), entry %g", placed.client_order_id,
                     want, symbol, stop, limit, entry)

    def _stop_breached(self, symbol: str, amount: float, price: float, stop: float,
                       budget: Budget) -> None:
        """The price is at or through the stop already: sell now, as the stop would have."""
        qty = tradable_amount(self.rt.exchange, symbol, amount, price)
        if qty <= 0:
            return
        log.warning("%s: price %g is at or below the stop %g: selling %g at market", symbol, price, stop, qty)
        recorder.record("stops.breached", SOURCE, f"{symbol}: price {price:g} at or below the stop "
                        f"{stop:g}; selling {qty:g} at market", severity="warning", critical=True,
                        symbol=symbol, price=price, stop_price=stop, amount=qty)
        spec = OrderSpec(symbol, "sell", "market", qty, None, "exit", price, "stop-loss (breached)")
        self.orders.place(spec, self.orders.book({symbol: price}), budget)

    def release(self, symbol: str, budget: Budget) -> bool:
        """Cancel the stops of ``symbol`` so an exit can sell the coins they lock. True when none
        is left working and none traded (the caller's sizing still holds)."""
        stops = self.live(symbol)
        for o in stops:
            if o.state == "OPEN":
                self.orders.cancel(o, "exit: the stop's coins are sold by the exit", budget)
        return self._settled(stops)

    def _settled(self, canceled: list[Any]) -> bool:
        """Every one of these (just canceled) stops is final and none traded meanwhile: the coins
        they locked are free and the position the caller sized from still holds."""
        for before in canceled:
            now = self.rt.store.get_order(before.client_order_id, decrypt=False)
            if now is None:
                continue
            if now.state not in FINAL or as_float(now.filled) > as_float(before.filled) + FILL_EPS:
                return False
        return True
