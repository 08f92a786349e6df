"""The paper exchange's markets and their Binance filters (PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE,
NOTIONAL), enforced like Binance does, with decimal arithmetic so that nothing drifts."""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation
from typing import Any

from paper_exchange import apierrors

QUOTE = "USDT"
STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
ORDER_TYPES = ("LIMIT", "MARKET", "LIMIT_MAKER") + STOP_TYPES
ZERO = Decimal(0)
EIGHT = Decimal("0.00000001")
_NUMBER_RE = re.compile(apierrors.NUMBER_PATTERN)


def dec(value: Any) -> Decimal:
    """A Decimal from a number or numeric string (no float noise)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def fmt(value: Decimal) -> str:
    """Binance's fixed 8-decimal string form."""
    return f"{value:.8f}"


def q8(value: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
    return value.quantize(EIGHT, rounding=rounding)


def parse_number(name: str, raw: str) -> Decimal:
    """A request parameter as a non-negative Decimal; -1100 for anything else (as Binance)."""
    if not _NUMBER_RE.fullmatch(raw):
        raise apierrors.illegal(name, apierrors.NUMBER_PATTERN)
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise apierrors.illegal(name, apierrors.NUMBER_PATTERN) from None


@dataclass(frozen=True)
class Market:
    symbol: str          # unified, e.g. "BTC/USDT"
    base: str
    start_price: Decimal
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal = Decimal("5")
    max_notional: Decimal = Decimal("9000000")
    quote: str = QUOTE

    @property
    def id(self) -> str:
        return f"{self.base}{self.quote}"

    def round_price(self, price: Decimal, up: bool = False) -> Decimal:
        """``price`` on the tick grid (down, or up when ``up``), never below the minimum."""
        ticks = (price / self.tick_size).to_integral_value(rounding=ROUND_UP if up else ROUND_DOWN)
        return max(ticks * self.tick_size, self.min_price)

    def _price_ok(self, price: Decimal) -> bool:
        return self.min_price <= price <= self.max_price and (price - self.min_price) % self.tick_size == 0

    def check(self, order_type: str, qty: Decimal, price: Decimal | None, ref_price: Decimal,
              stop_price: Decimal | None = None) -> None:
        """Raise -1013 naming the first filter the order fails, like Binance."""
        for p in (price, stop_price):
            if p is not None and not self._price_ok(p):
                raise apierrors.filter_failure("PRICE_FILTER")
        if order_type in ("MARKET", "STOP_LOSS", "TAKE_PROFIT"):
            if qty <= 0 or qty > self.market_max_qty or qty < self.min_qty or \
                    (qty - self.min_qty) % self.step_size != 0:
                raise apierrors.filter_failure("MARKET_LOT_SIZE")
        if qty < self.min_qty or qty > self.max_qty or (qty - self.min_qty) % self.step_size != 0:
            raise apierrors.filter_failure("LOT_SIZE")
        at = price if price is not None else stop_price if stop_price is not None else ref_price
        notional = qty * at
        if notional < self.min_notional or (price is not None and notional > self.max_notional):
            raise apierrors.filter_failure("NOTIONAL")

    def exchange_info(self) -> dict[str, Any]:
        """This market's entry in ``GET /api/v3/exchangeInfo``."""
        return {
            "symbol": self.id, "status": "TRADING",
            "baseAsset": self.base, "baseAssetPrecision": 8,
            "quoteAsset": self.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": list(ORDER_TYPES),
            "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
            "cancelReplaceAllowed": False, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(self.min_price),
                 "maxPrice": fmt(self.max_price), "tickSize": fmt(self.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": fmt(self.min_qty), "maxQty": fmt(self.max_qty),
                 "stepSize": fmt(self.step_size)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": fmt(ZERO),
                 "maxQty": fmt(self.market_max_qty), "stepSize": fmt(ZERO)},
                {"filterType": "NOTIONAL", "minNotional": fmt(self.min_notional),
                 "applyMinToMarket": True, "maxNotional": fmt(self.max_notional),
                 "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "NONE", "allowedSelfTradePreventionModes": ["NONE"],
        }


MARKETS: dict[str, Market] = {m.id: m for m in (
    Market("BTC/USDT", "BTC", Decimal("60000"), tick_size=Decimal("0.01"), min_price=Decimal("0.01"),
           max_price=Decimal("1000000"), step_size=Decimal("0.00001"), min_qty=Decimal("0.00001"),
           max_qty=Decimal("9000"), market_max_qty=Decimal("100")),
    Market("ETH/USDT", "ETH", Decimal("3000"), tick_size=Decimal("0.01"), min_price=Decimal("0.01"),
           max_price=Decimal("1000000"), step_size=Decimal("0.0001"), min_qty=Decimal("0.0001"),
           max_qty=Decimal("90000"), market_max_qty=Decimal("1000")),
    # eight more of Binance's spot USDT markets, with their filters: a bot (or a benchmark) that
    # trades many symbols meets different tick and lot sizes, and prices below 1 USDT
    *(Market(f"{base}/USDT", base, Decimal(price), tick_size=Decimal(tick), min_price=Decimal(tick),
             max_price=Decimal(max_price), step_size=Decimal(step), min_qty=Decimal(step),
             max_qty=Decimal(max_qty), market_max_qty=Decimal(market_max))
      for base, price, tick, step, max_price, max_qty, market_max in (
          ("BNB", "600", "0.01", "0.001", "100000", "900000", "5000"),
          ("SOL", "150", "0.01", "0.001", "10000", "9000000", "20000"),
          ("XRP", "0.6", "0.0001", "0.1", "10000", "9222449", "2000000"),
          ("ADA", "0.45", "0.0001", "0.1", "1000", "9000000", "3000000"),
          ("DOGE", "0.15", "0.00001", "1", "1000", "9000000000", "20000000"),
          ("LTC", "80", "0.01", "0.001", "100000", "90000", "5000"),
          ("DOT", "7", "0.001", "0.01", "10000", "9000000", "200000"),
          ("LINK", "15", "0.01", "0.01", "10000", "9000000", "100000"),
      )),
)}


def market_for(symbol: str | None) -> Market:
    """The market for a Binance id ("BTCUSDT") or unified symbol ("BTC/USDT"); -1121 otherwise."""
    if not symbol:
        raise apierrors.mandatory("symbol")
    m = MARKETS.get(symbol.replace("/", "").upper()) if len(symbol) <= 20 else None
    if m is None:
        raise apierrors.invalid_symbol()
    return m
