"""What the exchange knows of this bot: every order under its client-id prefix and every fill of
them, adopted into state.db (idempotently: unknown orders are added, changed ones updated, fills
keyed by trade id). Used by the bot's reconciliation and by the watchdog's emergency flatten —
the exchange is the source of truth for both.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from blackbox import recorder
from resilience.state import NewOrder, Order, archived_order
from trading.orders import FINAL, OrderBook, as_float
from trading.runtime import Budget, Runtime

log = logging.getLogger(__name__)
SOURCE = "trading.history"
PAGE = 500
PROGRESS_S = 0.5  # a long adoption tells its caller this often (the bot writes a heartbeat)


@dataclass
class Report:
    adopted_orders: list[str] = field(default_factory=list)
    updated_orders: list[str] = field(default_factory=list)
    adopted_fills: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    max_seq: int = 0
    max_emergency_seq: int = 0
    seen: dict[str, set[str]] = field(default_factory=dict)  # symbol -> client ids listed

    def summary(self) -> str:
        return (f"{len(self.adopted_orders)} orders adopted, {len(self.updated_orders)} updated, "
                f"{self.adopted_fills} fills adopted, {len(self.problems)} unexplained")


class ExchangeHistory:
    """Adopts the exchange's record of this bot's orders and fills into state.db."""

    def __init__(self, rt: Runtime, orders: OrderBook, *, source: str = SOURCE,
                 skip_archived: bool = True, progress: Callable[[Report], None] | None = None):
        self.rt = rt
        self.orders = orders
        self.source = source
        # told every PROGRESS_S while adopting: rebuilding a lost state.db from a long history
        # takes many seconds in one pass, and the bot must not look hung meanwhile
        self.progress = progress
        self._told = 0.0
        # an order retention moved to an archive is history, not news (its fills are counted);
        # only a rebuild of a lost state.db counts it again
        self.skip_archived = skip_archived
        self._archived_ids: set[str] = set()
        self._seq_re = re.compile(rf"^{re.escape(rt.prefix)}(x?)(\d+)$")

    def learn(self, symbols: Iterable[str], since_ms: int | None, budget: Budget) -> Report:
        """Every order of ours (and its trades) since ``since_ms``; ``None`` reads the whole
        history, paged by id. Raises (TickDeadline, exchange errors) rather than return a
        partial picture."""
        rep = Report()
        for symbol in symbols:
            by_exchange_id: dict[str, Order] = {}
            rep.seen[symbol] = self._orders(symbol, since_ms, budget, rep, by_exchange_id)
            self._fills(symbol, since_ms, budget, rep, by_exchange_id)
        if since_ms is None or rep.adopted_orders:
            # no id handed out later may repeat one the exchange has seen
            for name, seen in (("orders", rep.max_seq), ("emergency", rep.max_emergency_seq)):
                if seen:
                    self.rt.store.raise_sequence(name, seen)
        return rep

    def _paged(self, fn: Any, symbol: str, since: int | None, budget: Budget,
               id_param: str) -> list[dict[str, Any]]:
        """Every item since ``since`` (ms), oldest first; ``None`` = the whole history, paged by
        id (Binance's ``orderId`` / ``fromId``). Items may repeat at page edges (callers are
        idempotent)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {id_param: 0} if since is None else {}
        while True:
            # a spent budget raises TickDeadline: a partial list must never look like the truth
            page = self.rt.call("account", fn, symbol, since, PAGE, params, budget=budget)
            out += page
            if len(page) < PAGE:
                break
            if since is None:
                params = {id_param: max(int(x["id"]) for x in page) + 1}
            else:
                since = max(since + 1, max(int(x.get("timestamp") or 0) for x in page))
        return out

    def _orders(self, symbol: str, since: int | None, budget: Budget, rep: Report,
                by_exchange_id: dict[str, Order]) -> set[str]:
        seen: set[str] = set()
        for ex in self._paged(self.rt.exchange.fetch_orders, symbol, since, budget, "orderId"):
            cid = str(ex.get("clientOrderId") or "")
            m = self._seq_re.match(cid)
            if not m or cid in seen:
                continue
            seen.add(cid)
            if m.group(1):
                rep.max_emergency_seq = max(rep.max_emergency_seq, int(m.group(2)))
            else:
                rep.max_seq = max(rep.max_seq, int(m.group(2)))
            local = self.rt.store.get_order(cid, decrypt=False)  # a look, no decryption
            if local is None and self.skip_archived and self._archived(cid):
                continue
            if local is None:
                local = self._adopt(ex, cid, int(m.group(2)), bool(m.group(1)))
                rep.adopted_orders.append(cid)
                self._tell(rep)
            elif local.state not in FINAL or as_float(ex.get("filled")) > as_float(local.filled):
                before = local.state
                local = self.orders.apply(local, ex, "the exchange says "
                                          f"{ex.get('status')} (changed while unobserved)")
                if local.state != before:
                    rep.updated_orders.append(cid)
            by_exchange_id[str(ex.get("id"))] = local
        return seen

    def _tell(self, rep: Report) -> None:
        now = time.monotonic()
        if self.progress is not None and now - self._told >= PROGRESS_S:
            self._told = now
            self.progress(rep)

    def _archived(self, cid: str) -> bool:
        """Whether retention moved this order to an archive (remembered: a window held open by
        an old live order lists the same archived orders on every pass)."""
        if cid not in self._archived_ids and archived_order(self.rt.store.path, cid) is not None:
            self._archived_ids.add(cid)
        return cid in self._archived_ids

    def _adopt(self, ex: dict[str, Any], cid: str, seq: int, emergency: bool) -> Order:
        side = str(ex.get("side"))
        o = self.orders.add(NewOrder(
            client_order_id=cid, seq=seq, bot_id=self.rt.bot_id,
            origin="watchdog" if emergency else "bot",
            purpose="emergency" if emergency else ("entry" if side == "buy" else
                                                   "protective" if _is_stop(ex) else "exit"),
            symbol=str(ex.get("symbol")), side=side, type=str(ex.get("type") or "market"),
            amount=as_float(ex.get("amount")),
            price=ex.get("price") if ex.get("type") == "limit" else None))
        recorder.record("reconcile.adopted_order", self.source, f"order {cid} of ours found on the "
                        f"exchange ({ex.get('status')}): adopted", severity="warning", critical=True,
                        client_order_id=cid, symbol=o.symbol, status=ex.get("status"))
        log.warning("adopted order %s (%s) found on the exchange", cid, ex.get("status"))
        return self.orders.apply(o, ex, "adopted from the exchange")

    def _fills(self, symbol: str, since: int | None, budget: Budget, rep: Report,
               by_exchange_id: dict[str, Order]) -> None:
        trades = self._paged(self.rt.exchange.fetch_my_trades, symbol, since, budget, "fromId")
        for t in trades:
            o = by_exchange_id.get(str(t.get("order")))  # every order of ours in the window
            if o is None:
                continue  # not ours (another program or a person trading on this account)
            n = self.orders.add_trades(o, [t])
            if n:
                rep.adopted_fills += n
                self._tell(rep)
                recorder.record("reconcile.adopted_fill", self.source, f"fill {t.get('id')} of "
                                f"{o.client_order_id} adopted from the exchange",
                                severity="warning", client_order_id=o.client_order_id,
                                fill_id=str(t.get("id")))


def _is_stop(ex: dict[str, Any]) -> bool:
    """A resting stop-loss sell of the bot (its protective stop) has a trigger price."""
    return any(as_float(ex.get(k)) > 0 for k in ("triggerPrice", "stopPrice", "stopLossPrice"))
