"""Invariants checked after every injection, from the exchange's ledger and ``state.db`` —
never from the bot's own word."""
from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# Balances below this are dust the exchange's lot step does not let anyone sell.
DUST = {"BTC": 1e-5, "ETH": 1e-4}
TOL = 1e-9
IN_FLIGHT_SLACK_S = 0.25


@dataclass
class Violation:
    invariant: str
    detail: str


@dataclass
class Window:
    """A period during which the kill switch was engaged (unix seconds). ``mode`` is the kill
    switch's ``halt`` or ``flatten``, or ``emergency``: the watchdog carries the flatten out,
    and only its own exit orders (``tg-<bot_id>-x…``) may reach the exchange."""

    start: float
    end: float | None
    mode: str


@dataclass
class CheckInput:
    ledger: dict
    balances: dict
    state_db: Path
    bot_id: str
    start_balances: dict[str, float]
    max_position: dict[str, float]
    max_orders_per_minute: int
    kill_windows: list[Window] = field(default_factory=list)
    flattened: bool = False
    since: float = 0.0
    # coins the owner holds in the account outside the bot (deposited at system start)
    owner: dict[str, float] = field(default_factory=dict)
    # when the scenario destroyed state.db on purpose: orders placed before it cannot be in
    # the new file, and its positions start over (the exchange remains the truth)
    state_lost_at: float | None = None


def _ro(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    return con


def _base(symbol: str) -> str:
    for quote in ("USDT", "BUSD", "USDC", "BTC"):
        if symbol.endswith(quote) and symbol != quote:
            return symbol[: -len(quote)]
    return symbol.split("/")[0]


def _f(v: Any) -> float:
    return float(v or 0)


def check(inp: CheckInput) -> list[Violation]:
    """Every invariant; an empty list means the system kept every promise."""
    out: list[Violation] = []
    prefix = f"tg-{inp.bot_id}-"
    orders = [o for o in inp.ledger.get("orders", []) if str(o.get("clientOrderId", "")).startswith(prefix)]
    fills = [f for f in inp.ledger.get("fills", []) if str(f.get("clientOrderId", "")).startswith(prefix)]

    # 1. no client order id has more than one order on the exchange
    dup = [cid for cid, n in Counter(o["clientOrderId"] for o in orders).items() if n > 1]
    if dup:
        out.append(Violation("unique-client-order-id", f"client ids with several orders: {dup[:5]}"))

    # 2. state.db integrity and completeness
    try:
        con = _ro(inp.state_db)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            known_orders = {r["client_order_id"]: r for r in con.execute(
                "SELECT client_order_id, state, filled FROM orders")}
            known_fills = {str(r["fill_id"]) for r in con.execute("SELECT fill_id FROM fills")}
            positions = {r["symbol"]: r["amount"] for r in con.execute(
                "SELECT symbol, amount FROM positions")}
        finally:
            con.close()
    except sqlite3.Error as e:
        return out + [Violation("state-db-readable", f"state.db cannot be read: {e}")]
    if integrity != "ok":
        out.append(Violation("state-db-integrity", str(integrity)[:200]))
    lost = inp.state_lost_at
    recordable = [o for o in orders if lost is None or _f(o.get("time")) / 1000.0 > lost]
    recordable_ids = {o["clientOrderId"] for o in recordable}
    missing = [o["clientOrderId"] for o in recordable if o["clientOrderId"] not in known_orders]
    if missing:
        out.append(Violation("orders-recorded", f"exchange orders missing from state.db: {missing[:5]}"))
    missing_f = [str(f.get("id")) for f in fills if f.get("clientOrderId") in recordable_ids
                 and str(f.get("id")) not in known_fills]
    if missing_f:
        out.append(Violation("fills-recorded", f"exchange fills missing from state.db: {missing_f[:5]}"))
    for o in recordable:
        row = known_orders.get(o["clientOrderId"])
        if row is not None and abs(_f(row["filled"]) - _f(o.get("executedQty"))) > 1e-8 \
                and o.get("status") in ("FILLED", "CANCELED", "EXPIRED"):
            out.append(Violation("fill-amounts", f"{o['clientOrderId']}: state.db filled "
                                 f"{row['filled']} != exchange {o.get('executedQty')}"))
    stuck = [cid for cid, r in known_orders.items() if r["state"] in ("INTENT", "SUBMITTING")]
    if stuck:
        out.append(Violation("intents-resolved", f"unresolved intents after recovery: {stuck[:5]}"))

    negative = {s: a for s, a in positions.items() if _f(a) < -TOL}
    if negative:
        out.append(Violation("no-negative-position", f"state.db positions below zero: {negative}"))

    # 3. positions in state.db equal the bot's holdings on the exchange
    totals = {a: _f(b.get("total", b) if isinstance(b, dict) else b) for a, b in inp.balances.items()}
    holdings = {a: t - _f(inp.start_balances.get(a)) - _f(inp.owner.get(a)) for a, t in totals.items()}
    symbols = {o["symbol"] for o in orders} | {s.replace("/", "") for s in positions}
    for sym in symbols if lost is None else ():
        base = _base(sym)
        held = holdings.get(base, 0.0)
        pos = next((v for k, v in positions.items() if k.replace("/", "") == sym), 0.0)
        if abs(held - pos) > max(1e-8, 1e-6 * abs(held)):
            out.append(Violation("positions-match", f"{sym}: state.db {pos} vs exchange {held}"))

    # 4. no bot order while the kill switch was engaged; flat after flatten
    for w in inp.kill_windows:
        # halt: no bot order at all; flatten: only the exits that close positions; emergency:
        # only the watchdog's exits (never two sellers). The slack covers a request already on
        # the wire when the switch was engaged.
        bad = [o["clientOrderId"] for o in orders
               if f"{prefix}x" not in o["clientOrderId"]
               and (w.mode in ("halt", "emergency") or o.get("side") == "BUY")
               and w.start + IN_FLIGHT_SLACK_S < _f(o.get("time")) / 1000.0 < (w.end or float("inf"))]
        if bad:
            out.append(Violation("kill-switch-respected",
                                 f"orders placed while the kill switch ({w.mode}) was engaged: {bad[:5]}"))
    if inp.flattened:
        for asset, amount in holdings.items():
            if asset in DUST and amount > DUST[asset] + TOL:
                out.append(Violation("flat-after-flatten", f"{asset} still held: {amount}"))

    # 5. the owner's own coins are never touched
    out += owner_intact(fills, totals, inp.start_balances, inp.owner)

    # 6. risk limits never exceeded (reconstructed from the exchange's fills, in time order)
    pos: dict[str, float] = defaultdict(float)
    for f in sorted(fills, key=lambda f: (_f(f.get("time")), str(f.get("id")))):
        sym = f["symbol"]
        qty = _f(f.get("qty"))
        pos[sym] += qty if f.get("side") == "BUY" else -qty
        limit = next((v for k, v in inp.max_position.items() if k.replace("/", "") == sym), None)
        if limit is not None and pos[sym] > limit * (1 + 1e-9) + TOL:
            out.append(Violation("max-position", f"{sym} reached {pos[sym]} > {limit}"))
            break
    # the order-rate limit caps entries (buys, on spot); exits are exempt so that a rate limit
    # can never trap a position
    times = sorted(_f(o.get("time")) / 1000.0 for o in orders
                   if f"{prefix}x" not in o["clientOrderId"] and o.get("side") == "BUY")
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 60:
            j += 1
        if i - j + 1 > inp.max_orders_per_minute:
            out.append(Violation("order-rate", f"{i - j + 1} orders within 60 s at {t:.0f}"))
            break
    return out


def bot_net(fills: list[dict]) -> tuple[dict[str, float], list[str]]:
    """The bot's net holding of each base asset from its fills on the exchange (bought minus
    fees paid in it minus sold), and the moments (in fill order) it sold more than it had."""
    net: dict[str, float] = defaultdict(float)
    oversold: list[str] = []
    for f in sorted(fills, key=lambda f: (_f(f.get("time")), str(f.get("id")))):
        base = _base(str(f["symbol"]))
        qty = _f(f.get("qty"))
        if f.get("side") == "BUY":
            net[base] += qty - (_f(f.get("commission")) if f.get("commissionAsset") == base else 0.0)
        else:
            net[base] -= qty
            if net[base] < -max(TOL, 1e-9 * qty):
                oversold.append(f"{f.get('clientOrderId')} sold {qty:g} {base}, "
                                f"{-net[base]:g} more than the bot had bought")
    return dict(net), oversold


def owner_intact(fills: list[dict], totals: dict[str, float], start: dict[str, float],
                 owner: dict[str, float]) -> list[Violation]:
    """The bot (every ``tg-<bot_id>-`` order, the watchdog's emergency exits included) never
    sold more of a coin than it bought, and the owner's own coins are all still there."""
    out: list[Violation] = []
    net, oversold = bot_net(fills)
    if oversold:
        out.append(Violation("bot-sold-only-its-own", "; ".join(oversold[:3])))
    short = {a: round(_f(start.get(a)) + amt - totals.get(a, 0.0), 10) for a, amt in owner.items()
             if totals.get(a, 0.0) + TOL < _f(start.get(a)) + amt}
    if short:
        out.append(Violation("owner-coins-intact", "the owner's own coins are short by "
                             + ", ".join(f"{v:g} {a}" for a, v in sorted(short.items()))))
    return out


def flat_of_bot_coins(fills: list[dict], dust: dict[str, float] = DUST) -> dict[str, float]:
    """What the bot still holds (from its fills on the exchange) above dust, per asset."""
    net, _ = bot_net(fills)
    return {a: v for a, v in net.items() if v > dust.get(a, TOL) + TOL}


def explained(events: Iterable[dict], kinds: Iterable[str]) -> list[str]:
    """The expected black-box kinds (prefixes) that no event matches."""
    seen = [str(e.get("kind", "")) for e in events]
    return [k for k in kinds if not any(s.startswith(k) for s in seen)]
