"""Orders and fills of the paper exchange, and their Binance JSON forms."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from paper_exchange.markets import STOP_TYPES, ZERO, fmt

OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")


@dataclass
class Order:
    order_id: int
    client_order_id: str
    symbol: str  # Binance id, e.g. "BTCUSDT"
    side: str    # BUY | SELL
    type: str    # one of ORDER_TYPES
    time_in_force: str  # GTC | IOC | FOK ("" for MARKET and the market stops)
    price: Decimal      # 0 for MARKET, STOP_LOSS, TAKE_PROFIT
    orig_qty: Decimal
    executed_qty: Decimal
    cum_quote: Decimal
    status: str  # NEW | PARTIALLY_FILLED | FILLED | CANCELED | EXPIRED
    reserved: Decimal   # funds locked while the order rests
    reserved_asset: str
    time: int
    update_time: int
    stop_price: Decimal = ZERO
    orig_quote_qty: Decimal = ZERO
    is_working: bool = True  # False while a stop order waits for its trigger
    working_time: int = -1
    # not stored: until when (ms) queries do not see the order yet (eventual visibility)
    visible_at: int = field(default=0, compare=False)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def binance(self) -> dict[str, Any]:
        """As ``GET /api/v3/order`` returns it."""
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_order_id, "price": fmt(self.price),
            "origQty": fmt(self.orig_qty), "executedQty": fmt(self.executed_qty),
            "cummulativeQuoteQty": fmt(self.cum_quote), "status": self.status,
            "timeInForce": self.time_in_force or "GTC", "type": self.type, "side": self.side,
            "stopPrice": fmt(self.stop_price), "icebergQty": fmt(ZERO), "time": self.time,
            "updateTime": self.update_time, "isWorking": self.is_working,
            "workingTime": self.working_time if self.is_working else -1,
            "origQuoteOrderQty": fmt(self.orig_quote_qty), "selfTradePreventionMode": "NONE",
        }

    def ack(self) -> dict[str, Any]:
        """``newOrderRespType=ACK``."""
        return {"symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
                "clientOrderId": self.client_order_id, "transactTime": self.update_time}

    def result(self) -> dict[str, Any]:
        """``newOrderRespType=RESULT``."""
        out = self.binance()
        for k in ("icebergQty", "time", "updateTime", "isWorking"):
            del out[k]
        if self.type not in STOP_TYPES:
            del out["stopPrice"]
        out["transactTime"] = self.time
        return out


@dataclass
class Fill:
    trade_id: int
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_maker: bool

    def order_fill(self) -> dict[str, Any]:
        """An entry of the ``fills`` list of a FULL order response."""
        return {"price": fmt(self.price), "qty": fmt(self.qty), "commission": fmt(self.commission),
                "commissionAsset": self.commission_asset, "tradeId": self.trade_id}

    def trade(self) -> dict[str, Any]:
        """As ``GET /api/v3/myTrades`` returns it."""
        return {"symbol": self.symbol, "id": self.trade_id, "orderId": self.order_id,
                "orderListId": -1, "price": fmt(self.price), "qty": fmt(self.qty),
                "quoteQty": fmt(self.quote_qty), "commission": fmt(self.commission),
                "commissionAsset": self.commission_asset, "time": self.time,
                "isBuyer": self.side == "BUY", "isMaker": self.is_maker, "isBestMatch": True}

    def ledger(self) -> dict[str, Any]:
        """The control API's ledger entry (trade fields plus the order's client id and side)."""
        return {"id": self.trade_id, "orderId": self.order_id, "clientOrderId": self.client_order_id,
                "symbol": self.symbol, "side": self.side, "price": fmt(self.price),
                "qty": fmt(self.qty), "quoteQty": fmt(self.quote_qty),
                "commission": fmt(self.commission), "commissionAsset": self.commission_asset,
                "time": self.time, "isMaker": self.is_maker}
