"""Issue #17's proof: protection that outlives the host.

``host-death`` freezes and SIGKILLs every tradeguard process at once (supervisord, bot,
watchdog) at a moment when the bot holds positions, each with its protective stop resting and no
other order of the bot open. The paper exchange is the venue: it is not killed (a SIGKILLed
supervisord does not take its children with it, so the exchange keeps running as it was, same
process, same port, same book). The price is then driven through the stops with
``POST /_paper/price`` in small steps; the exchange's ledger must show every stop filled within
its distance plus slippage, and nothing else of the bot's trading. The host then comes back
(a new supervisord running the bot and the watchdog; the venue is not restarted) and the bot must
adopt the stops' fills as fills of protective orders. ``host-death-no-stops`` runs the same with
``[risk] stop_loss_pct = 0``: the baseline, whose loss follows the price all the way down.

``exit-window`` SIGKILLs the bot between an exit's stop cancel and its sell (failpoint
``exit.after_stop_cancel``): after recovery every position has its stop again (or is flat) and
nothing was sold twice.
"""
from __future__ import annotations

import os
import signal
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from chaos.attacks import bot_fills, bot_holds, bot_orders, state_rows, wait_dead
from chaos.base import Ctx, Injection, Scenario, failpoints_consumed, let_run, recovered_after
from chaos.invariants import Violation, _base, bot_net
from chaos.system import System, poll
from tradeguard.runner import default_programs, write_supervisord_conf

DRIVE_PCT = 20.0          # the price is driven this far below its last print...
DRIVE_STEP_PCT = 0.5      # ...one print every this much: a stop fires at the first print at or below it
PROTECTED_TIMEOUT = 40.0  # for a moment when each position has its stop and nothing else rests
SETTLE_S = 0.5            # after the freeze: a request already on the wire lands meanwhile
RESTART_TIMEOUT = 60.0
ADOPT_TIMEOUT = 20.0
COVERED_TIMEOUT = 20.0    # exit-window: for each position to have its stop again
STOP_PCT_TOL = 0.01       # percentage points: the stop price is rounded to the tick
STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT")
OPEN = ("NEW", "PARTIALLY_FILLED")


def _f(v: Any) -> float:
    return float(v or 0)


def _remaining(o: dict) -> float:
    return _f(o["origQty"]) - _f(o["executedQty"])


def _unified(s: System, symbol_id: str) -> str:
    return next(x for x in s.cfg.exchange.symbols if x.replace("/", "") == symbol_id)


def lot_filters(s: System, symbol: str) -> tuple[float, float]:
    """(lot step, minimum notional) of ``symbol``, as the venue's public exchangeInfo says."""
    url = f"http://127.0.0.1:{s.cfg.paper.port}/api/v3/exchangeInfo?symbol={symbol.replace('/', '')}"
    with urllib.request.urlopen(url, timeout=5) as r:
        filters = {f["filterType"]: f for f in json.loads(r.read())["symbols"][0]["filters"]}
    return float(filters["LOT_SIZE"]["stepSize"]), float(filters["NOTIONAL"]["minNotional"])


def holdings(s: System, stops_on: bool = True) -> dict[str, dict]:
    """Per symbol the bot holds (exchange fills) above what the venue would accept in an order:
    the held amount, its resting stops, the open sells locking it, and whether they cover it to
    a lot step (``stops_on`` False: stops are off, nothing is asked of them)."""
    open_ = [o for o in bot_orders(s) if o["status"] in OPEN]
    prices = {k: _f(v) for k, v in s.paper("GET", "health")["prices"].items()}
    out: dict[str, dict] = {}
    for base, qty in bot_holds(s).items():
        sym = next(x for x in s.cfg.exchange.symbols if x.startswith(base + "/"))
        step, min_notional = lot_filters(s, sym)
        mine = [o for o in open_ if _base(o["symbol"]) == base]
        stops = [o for o in mine if o["type"] in STOP_TYPES]
        locked = sum(_remaining(o) for o in mine if o["side"] == "SELL")
        price = prices.get(sym.replace("/", ""), prices.get(sym, 0.0))
        if (qty - step) * price < min_notional:
            continue  # nothing the venue would accept: no stop can hold it
        ok = not stops_on or bool(stops) and locked >= qty - step - 1e-12
        out[sym] = {"held": qty, "stops": stops, "price": price, "covered": ok}
    return out


def covered(s: System, *, others: bool, stops_on: bool = True) -> dict[str, dict] | None:
    """``holdings`` when every position is covered by its stops (``others``: other open orders
    of the bot may rest too; their sells count as locking the coins); else None."""
    if not others and any(o["type"] not in STOP_TYPES for o in bot_orders(s) if o["status"] in OPEN):
        return None
    h = holdings(s, stops_on)
    return h if all(v["covered"] for v in h.values()) else None


def _positions(s: System) -> dict[str, tuple[float, float]]:
    """state.db: symbol -> (amount, average entry price)."""
    return {r["symbol"]: (_f(r["amount"]), _f(r["cost"]) / _f(r["amount"]) if _f(r["amount"]) else 0.0)
            for r in state_rows(s, "SELECT symbol, amount, cost FROM positions")}


# --- the host dies ----------------------------------------------------------------------------
def _host_pids(s: System, venue: int) -> list[int]:
    """Every process of the system's supervisord session but the venue (and its children)."""
    assert s.proc is not None
    spare = {venue} | {c.pid for c in psutil.Process(venue).children(recursive=True)}
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == s.proc.pid and p.pid not in spare:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _trail(s: System) -> tuple[set[str], set[str]]:
    """The bot's order ids and fill ids on the exchange."""
    return {o["clientOrderId"] for o in bot_orders(s)}, {str(f["id"]) for f in bot_fills(s)}


def kill_host(s: System, with_stops: bool) -> tuple[float, dict[str, dict], set[str], int]:
    """Freeze, then SIGKILL, every tradeguard process at a moment when the bot holds positions
    (each with its stop when ``with_stops``) and nothing else of it rests. Returns (moment,
    positions, the bot's order ids then, the venue's pid)."""
    venue = s.program_pid("paper-exchange")
    for _ in range(10):
        def ready() -> dict | None:
            c = covered(s, others=False, stops_on=with_stops)
            return c if c and (with_stops or not any(o["status"] in OPEN for o in bot_orders(s))) \
                else None

        if not poll(ready, PROTECTED_TIMEOUT, 0.1):
            raise RuntimeError(f"within {PROTECTED_TIMEOUT:g} s the bot never held positions "
                               f"{'each with its stop resting' if with_stops else 'without stops'} "
                               "and nothing else open")
        pids = _host_pids(s, venue)
        seen = _trail(s)
        _signal(pids, signal.SIGSTOP)  # all at once: none of them can react to another's death
        t0 = time.time()
        let_run(SETTLE_S)
        snap = ready()
        if snap is not None and _trail(s) == seen:
            _signal(pids, signal.SIGKILL)
            for p in pids:
                wait_dead(p)
            s.proc.wait(5)
            return t0, snap, seen[0], venue
        _signal(pids, signal.SIGCONT)  # a request on the wire landed after the look: not quiet
    raise RuntimeError("no quiet moment to kill the host in 10 tries")


def drive_down(s: System, symbols: list[str]) -> dict[str, dict]:
    """Walk each price DRIVE_PCT down in DRIVE_STEP_PCT prints; per symbol: the price before,
    the step, the price after."""
    s.paper("POST", "pause")  # the random walk stops: every print is ours
    out = {}
    try:
        prices = {k: _f(v) for k, v in s.paper("GET", "health")["prices"].items()}
        for sym in symbols:
            p0 = prices.get(sym.replace("/", ""), prices.get(sym))
            n = round(DRIVE_PCT / DRIVE_STEP_PCT)
            for k in range(1, n + 1):
                s.paper("POST", "price", {"symbol": sym, "price": f"{p0 * (1 - k * DRIVE_STEP_PCT / 100):.2f}"})
            out[sym] = {"p0": p0, "step": p0 * DRIVE_STEP_PCT / 100, "last": p0 * (1 - DRIVE_PCT / 100)}
    finally:
        s.paper("POST", "resume")
    return out


def restart_host(s: System, venue: int) -> float:
    """The host comes back: a new supervisord with the bot and the watchdog (the venue runs on,
    it was never the host's). Returns when it was started."""
    s.strangers.append(venue)  # ended with the system (it outlived its supervisord's session)
    programs = tuple(p for p in default_programs(s.cfg) if p != "paper-exchange")
    conf = write_supervisord_conf(s.cfg, programs)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRADEGUARD_") and k != "BOT_EMERGENCY_SHUTDOWN"}
    t = time.time()
    s.proc = subprocess.Popen([str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(conf)],
                              cwd=s.root, env=env, stdout=open(s.root / "supervisord.out", "ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    return t


def slippage_floor(s: System, stop_price: float, step: float) -> float:
    """The worst price a triggered stop-market sell can get here: the print that triggers it is
    at most one drive step below the stop; the best bid is the half spread below that print; a
    market order can walk at most the whole book (``book_levels`` levels ``book_step`` apart)."""
    p = s.cfg.paper
    return (stop_price - step) * (1 - p.slippage) * (1 - p.book_levels * p.book_step)


def _dead_window(s: System, t0: float, ids: set[str], stop_ids: set[str], until: float) -> list[Violation]:
    """While the host was dead only the resting stops may have traded."""
    new = [o["clientOrderId"] for o in bot_orders(s) if o["clientOrderId"] not in ids
           and _f(o["time"]) / 1000.0 < until]
    fills = [f for f in bot_fills(s) if t0 <= _f(f["time"]) / 1000.0 < until
             and f["clientOrderId"] not in stop_ids]
    out = []
    if new:
        out.append(Violation("nothing-trades-while-dead", f"orders of the bot placed while the host "
                             f"was dead: {new[:5]}"))
    if fills:
        out.append(Violation("nothing-trades-while-dead", f"fills of non-stop orders while the host "
                             f"was dead: {[f['clientOrderId'] for f in fills[:5]]}"))
    return out


def _adopted(s: System, stop_ids: set[str]) -> list[str]:
    """The stops whose exchange fills state.db does not (yet) hold as fills of a protective order."""
    ex = {o["clientOrderId"]: o for o in bot_orders(s) if o["clientOrderId"] in stop_ids}
    fills: dict[str, set[str]] = {}
    for f in bot_fills(s):
        fills.setdefault(f["clientOrderId"], set()).add(str(f["id"]))
    bad = []
    for cid in stop_ids:
        rows = state_rows(s, "SELECT purpose, state, filled FROM orders WHERE client_order_id = ?", (cid,))
        got = {str(r["fill_id"]) for r in state_rows(
            s, "SELECT fill_id FROM fills WHERE client_order_id = ?", (cid,))}
        o = ex.get(cid)
        if not rows or o is None or rows[0]["purpose"] != "protective" or \
                abs(_f(rows[0]["filled"]) - _f(o["executedQty"])) > 1e-9 or \
                not fills.get(cid, set()) <= got:
            bad.append(f"{cid}: state.db {dict(rows[0]) if rows else None}, fills {sorted(got)}; "
                       f"exchange {o and o['status']} {o and o['executedQty']}, fills "
                       f"{sorted(fills.get(cid, set()))}")
    return bad


def _stop_outcomes(s: System, snap: dict[str, dict], entries: dict[str, tuple[float, float]],
                   drive: dict[str, dict]) -> tuple[list[str], list[Violation]]:
    notes, out = [], []
    fills = bot_fills(s)
    orders = {o["clientOrderId"]: o for o in bot_orders(s)}
    for sym, pos in sorted(snap.items()):
        amount, entry = entries.get(sym, (0.0, 0.0))
        if entry <= 0:
            out.append(Violation("entry-known", f"{sym}: no entry price in state.db at the kill"))
            continue
        for stop in pos["stops"]:
            o = orders[stop["clientOrderId"]]
            mine = [f for f in fills if f["clientOrderId"] == stop["clientOrderId"]]
            qty = sum(_f(f["qty"]) for f in mine)
            sp = _f(o["stopPrice"])
            floor = slippage_floor(s, sp, drive[sym]["step"])
            if qty + 1e-12 < _f(o["origQty"]):
                out.append(Violation("stop-filled", f"{sym}: stop {o['clientOrderId']} at {sp:g} "
                                     f"{o['status']}, filled {qty:g} of {o['origQty']} after the "
                                     f"price went {DRIVE_PCT:g} % down"))
                continue
            vwap = sum(_f(f["qty"]) * _f(f["price"]) for f in mine) / qty
            loss, dist, bound = ((entry - x) / entry * 100 for x in (vwap, sp, floor))
            notes.append(f"{sym}: entry {entry:.2f}, stop {dist:.2f} % ({sp:g}), filled {qty:g} at "
                         f"{vwap:.2f}: loss {loss:.2f} % (bound {bound:.2f} %)")
            want = s.cfg.risk.stop_loss_pct
            if dist > want + STOP_PCT_TOL:
                out.append(Violation("stop-distance", f"{sym}: stop {o['clientOrderId']} rested "
                                     f"{dist:.2f} % below the entry {entry:.2f}, not the "
                                     f"configured {want:g} %"))
            if vwap < floor - 0.01:
                out.append(Violation("loss-bounded-by-stop", f"{sym}: stop at {sp:g} filled at "
                                     f"{vwap:.2f}, below the floor {floor:.2f} (stop distance "
                                     f"{dist:.2f} % + one {DRIVE_STEP_PCT:g} % print + spread + book)"))
    return notes, out


def host_death_run(ctx: Ctx, with_stops: bool) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 3.0)
    t0, snap, ids, venue = kill_host(s, with_stops)
    entries = _positions(s)  # the dead bot's last word: consistent, nothing writes it now
    stop_ids = {o["clientOrderId"] for v in snap.values() for o in v["stops"]}
    drive = drive_down(s, sorted(snap))
    violations: list[Violation] = []
    if with_stops:
        notes, violations = _stop_outcomes(s, snap, entries, drive)
    else:
        notes = []
        for sym, pos in sorted(snap.items()):
            amount, entry = entries.get(sym, (0.0, 0.0))
            last = drive[sym]["last"]
            notes.append(f"{sym}: entry {entry:.2f}, no stop, held {pos['held']:g} through a "
                         f"{DRIVE_PCT:g} % fall: loss {(entry - last) / entry * 100:.2f} % "
                         f"(unbounded)")
    t_restart = restart_host(s, venue)
    violations += _dead_window(s, t0, ids, stop_ids, t_restart)
    ok = poll(lambda: s.healthy_heartbeat(newer_than=t_restart), RESTART_TIMEOUT) and \
        poll(lambda: s.watchdog_verdict() == "healthy", RESTART_TIMEOUT)
    rec = recovered_after(s, t_restart) if ok else None
    if rec and stop_ids:
        if not poll(lambda: not _adopted(s, stop_ids), ADOPT_TIMEOUT):
            left = _adopted(s, stop_ids)
            violations.append(Violation("stop-fills-adopted", "; ".join(left[:3])))
    dead_s = t_restart - t0
    return Injection(t0, rec, expect_kinds=["bot.recovered"], violations=violations,
                     note="; ".join(notes + [f"host dead {dead_s:.1f} s, restarted in "
                                             f"{(rec - t_restart) if rec else float('nan'):.1f} s"]))


def host_death(ctx: Ctx) -> Injection:
    return host_death_run(ctx, with_stops=True)


def host_death_no_stops(ctx: Ctx) -> Injection:
    return host_death_run(ctx, with_stops=False)


# --- the exit window ----------------------------------------------------------------------------
EXIT_FIRE_TIMEOUT = 60.0


def exit_window(ctx: Ctx) -> Injection:
    s = ctx.system
    if not poll(lambda: covered(s, others=True), PROTECTED_TIMEOUT, 0.2):
        raise RuntimeError(f"the bot held no protected position within {PROTECTED_TIMEOUT:g} s")
    s.write_failpoints("exit.after_stop_cancel=crash")
    os.kill(s.bot_pid(), signal.SIGKILL)  # the file is read at start
    if not poll(lambda: failpoints_consumed(s), EXIT_FIRE_TIMEOUT):
        s.clear_failpoints()
        return Injection(time.time(), None, note=f"no exit released its stop within "
                         f"{EXIT_FIRE_TIMEOUT:g} s: the failpoint never fired")
    t0 = time.time()
    faulty = s.bot_pid()
    if faulty is not None:
        wait_dead(faulty)
    naked = sorted(sym for sym, v in holdings(s).items() if not v["covered"])
    rec = recovered_after(s, t0, pid_not=faulty)
    violations: list[Violation] = []
    if rec is not None and not poll(lambda: covered(s, others=True), COVERED_TIMEOUT, 0.1):
        violations.append(Violation("never-naked", f"{COVERED_TIMEOUT:g} s after recovery a "
                                    f"position still had no stop on the exchange: holds "
                                    f"{bot_holds(s)}, open {[(o['clientOrderId'], o['type'], o['origQty']) for o in bot_orders(s) if o['status'] in OPEN]}"))
    _, oversold = bot_net(bot_fills(s))
    if oversold:
        violations.append(Violation("never-sold-twice", "; ".join(oversold[:3])))
    negative = {r["symbol"]: r["amount"] for r in state_rows(s, "SELECT symbol, amount FROM positions")
                if _f(r["amount"]) < -1e-9}
    if negative:
        violations.append(Violation("never-sold-twice", f"negative positions in state.db: {negative}"))
    return Injection(t0, rec, expect_kinds=["failpoint.fired", "bot.recovered"],
                     violations=violations, note=f"killed between an exit's stop cancel and its "
                     f"sell; without a stop at the kill: {', '.join(naked) or 'none'}")


NO_STOPS = "\n[risk]\nstop_loss_pct = 0\n"

HOSTDEATH = [
    Scenario("host-death", "#17: SIGKILL supervisord, bot and watchdog at once while positions "
             "rest with their stops; drive the price 20 % down on the exchange: each loss within "
             "its stop plus slippage, nothing else trades, the restarted bot adopts the stop fills.",
             host_death, own_system=True),
    Scenario("host-death-no-stops", "#17 baseline: host-death with [risk] stop_loss_pct = 0; the "
             "loss follows the price down (reported, not a failure).", host_death_no_stops,
             own_system=True, system={"extra_config": NO_STOPS}),
    Scenario("exit-window", "#17: SIGKILL the bot between an exit's stop cancel and its sell: "
             "after recovery every position has its stop again, nothing sold twice.", exit_window),
]
