"""The attacks of issue #16 as scenarios: each puts the emergency flatten or the watchdog in a
state an attacker found it wrong in, with real processes and real signals, and says what the
system must have done. The owner's own coins (``System.owner``) sit in the account throughout:
the harness checks from the exchange's ledger that the bot never sold more than it bought."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import psutil

from chaos.base import (Ctx, Injection, Scenario, emergency, failpoints_consumed, flat, kill_at,
                        kill_bot, kill_state, let_run, recovered_after, tg)
from chaos.invariants import Violation, Window, flat_of_bot_coins
from chaos.system import System, poll
from tradeguard.secrets import read_private

FLATTEN_TIMEOUT = 45.0    # from the fault to the emergency flatten's outcome
HOLD_TIMEOUT = 20.0       # for the bot to hold coins (or rest a limit buy) before the fault
SLOW_ORDER_S = 8.0        # A18: how long each order request is held
SLOW_EXIT_FAULT_S = 20.0  # A18: how long order requests stay that slow (several fences)
TWO_SELLERS_SLACK_S = 0.1


# --- what the exchange and the files say ---------------------------------------------------
def bot_fills(s: System) -> list[dict]:
    prefix = f"tg-{s.cfg.bot.bot_id}-"
    return [f for f in s.ledger()["fills"] if str(f.get("clientOrderId", "")).startswith(prefix)]


def bot_orders(s: System) -> list[dict]:
    prefix = f"tg-{s.cfg.bot.bot_id}-"
    return [o for o in s.ledger()["orders"] if str(o.get("clientOrderId", "")).startswith(prefix)]


def bot_holds(s: System) -> dict[str, float]:
    """What the bot holds according to the exchange's fills (above dust)."""
    return flat_of_bot_coins(bot_fills(s))


def state_rows(s: System, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{s.paths.state_db}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan killed after supervisord died may
    stay a zombie until init reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    return bool(poll(lambda: not alive(pid), timeout, 0.01))


def emergency_finished(s: System) -> dict | None:
    em = emergency(s)
    return em if em.get("state") in ("done", "failed") else None


def hold_coins(s: System) -> dict[str, float]:
    """Wait until the bot holds coins (the point of a flatten); RuntimeError if it never does."""
    held = poll(lambda: bot_holds(s), HOLD_TIMEOUT, 0.2)
    if not held:
        raise RuntimeError(f"the bot bought nothing within {HOLD_TIMEOUT:g} s")
    return held


def emergency_window(s: System, on_the_wire: float = 0.0) -> list[Window]:
    """From the moment the kill switch was engaged, only the watchdog's exits may trade; an
    order request already on the wire then (held ``on_the_wire`` s at most by a fault) may
    still reach the exchange after it."""
    try:
        return [Window(kill_at(s) + on_the_wire, None, "emergency")]
    except (OSError, ValueError):
        return []


def flatten_verdict(s: System, em: dict | None) -> list[Violation]:
    """A flatten that says "done" must have left the account flat of the bot's coins."""
    if not em or em.get("state") != "done":
        return []
    left = bot_holds(s)
    if not left:
        return []
    return [Violation("flatten-done-means-flat", f"the flatten reported done "
                      f"({em.get('detail', '')}) while the bot's coins are still held: {left}")]


def finish_flatten(s: System, t0: float, *, notes: list[str],
                   extra: Callable[[], list[Violation]] = lambda: [],
                   lost_at: float | None = None, timeout: float = FLATTEN_TIMEOUT,
                   on_the_wire: float = 0.0) -> Injection:
    """Wait for the emergency flatten's outcome; recovered when it is done and the account is
    flat of the bot's coins."""
    em = poll(lambda: emergency_finished(s), timeout)
    s.clear_failpoints()
    done_flat = bool(em and em.get("state") == "done" and not bot_holds(s))
    notes.append(f"flatten {em.get('state')}: {em.get('detail', '')}" if em
                 else "no flatten outcome" + (f" within {timeout:g} s" if timeout else ""))
    return Injection(t0, time.time() if done_flat else None, expect_kinds=["emergency.", "kill."],
                     kill_windows=emergency_window(s, on_the_wire), flattened=True,
                     note="; ".join(notes), violations=flatten_verdict(s, em) + extra(),
                     state_lost_at=lost_at)


# --- A1: state.db lost while the bot is down ------------------------------------------------
def destroy_state(db: os.PathLike, how: str, rng: Any) -> None:
    """Delete state.db (and its WAL) or overwrite its header and some pages with noise."""
    from pathlib import Path

    db = Path(db)
    if how == "corrupt":
        size = db.stat().st_size
        with open(db, "r+b") as fh:
            fh.write(bytes(rng.randrange(256) for _ in range(4096)))  # the header page
            for _ in range(3):
                fh.seek(rng.randrange(max(1, size)))
                fh.write(bytes(rng.randrange(256) for _ in range(1024)))
            fh.flush()
            os.fsync(fh.fileno())
    for suffix in ("-wal", "-shm") + (("",) if how == "delete" else ()):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)


def state_loss_flatten(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 2.0)
    held = hold_coins(s)
    how = ["delete", "corrupt"][ctx.rng.randrange(2)]
    s.write_failpoints("startup=crash*")  # the bot cannot come back: the watchdog must flatten
    pid, t0 = kill_bot(s, signal.SIGKILL)
    wait_dead(pid)
    destroy_state(s.paths.state_db, how, ctx.rng)  # before anything can start the bot again
    return finish_flatten(s, t0, notes=[f"state.db {how}d; the bot held {held}"],
                          lost_at=time.time())


# --- A2: a resting limit buy fills while the bot is down -------------------------------------
def resting_limit_buy(s: System) -> dict | None:
    """A limit buy the bot recorded as OPEN and the exchange still has resting (NEW)."""
    rows = state_rows(s, "SELECT client_order_id FROM orders WHERE side = 'buy' AND type = 'limit' "
                         "AND state = 'OPEN' AND filled = 0")
    ids = {r["client_order_id"] for r in rows}
    return next((o for o in bot_orders(s) if o["clientOrderId"] in ids and o["status"] == "NEW"), None)


def fill_while_down(ctx: Ctx) -> Injection:
    s = ctx.system
    for _ in range(5):  # the bot may cancel its entry (ttl) between our look and the SIGSTOP
        order = poll(lambda: resting_limit_buy(s), HOLD_TIMEOUT, 0.05)
        if order is None:
            raise RuntimeError(f"the bot rested no limit buy within {HOLD_TIMEOUT:g} s")
        pid, t0 = kill_bot(s, signal.SIGSTOP)
        mine = {o["clientOrderId"]: o for o in bot_orders(s)}.get(order["clientOrderId"])
        if mine and mine["status"] == "NEW":
            break
        os.kill(pid, signal.SIGCONT)
    else:
        raise RuntimeError("every resting limit buy was gone by the time the bot was stopped")
    s.write_failpoints("startup=crash*")  # every restart crashes: budget spent, flatten
    price = float(order["price"]) * 0.995
    filled = s.paper("POST", "price", {"symbol": order["symbol"], "price": price})["filled"]
    note = (f"{order['clientOrderId']} ({order['origQty']} {order['symbol']} at {order['price']}) "
            f"filled while the bot was stopped: {bool(filled)}")
    if not filled:
        raise RuntimeError(f"moving the price to {price} filled nothing: {note}")
    return finish_flatten(s, t0, notes=[note])


# --- A3: supervisord gone, then the bot leaks ----------------------------------------------
LEAK_AT_LOOP = 48      # the armed leak fires on the bot's 48th loop (12-25 s after its start)
LEAK_MARGIN = 12       # supervisord must be gone at least this many loops before the leak
SLOW_REQUEST_S = 0.8   # order requests are slow but answered (within the client timeout)
RSS_GUARD_MB = 1500    # the harness ends a bot that leaks this far (nobody else did)
MANAGER_DEAD_STARTUP_S = 8.0  # the watchdog gives up on a restart after this


def manager_dead_flatten(ctx: Ctx) -> Injection:
    s = ctx.system
    hb = s.heartbeat()
    if hb is None or hb.seq >= LEAK_AT_LOOP - LEAK_MARGIN:
        raise RuntimeError(f"the bot's loop count ({hb.seq if hb else None}) is no good for "
                           f"killing supervisord before the leak at loop {LEAK_AT_LOOP}")
    bot = hb.pid
    held = bot_holds(s)
    assert s.proc is not None
    t0 = time.time()
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(5)
    s.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=SLOW_REQUEST_S,
                times=None)
    alive_at = [time.time()]
    guard: list[str] = []

    def watch() -> dict | None:
        if alive(bot):
            alive_at[0] = time.time()
            rss = psutil.Process(bot).memory_info().rss / 1048576
            if rss > RSS_GUARD_MB:
                os.kill(bot, signal.SIGKILL)
                guard.append(f"the harness SIGKILLed the bot at {rss:.0f} MB")
        return emergency_finished(s)

    if not poll(lambda: failpoints_consumed(s), 60):
        raise RuntimeError(f"the leak armed for loop {LEAK_AT_LOOP} never fired")
    # the leak, the limit, a restart that cannot happen, the startup allowance, the flatten
    em = poll(watch, FLATTEN_TIMEOUT)
    s.clear_faults()

    def two_sellers() -> list[Violation]:
        exits = [int(o["time"]) / 1000.0 for o in bot_orders(s)
                 if o["clientOrderId"].startswith(f"tg-{s.cfg.bot.bot_id}-x")]
        if exits and alive(bot):
            return [Violation("never-two-sellers", f"the watchdog placed {len(exits)} exit "
                              f"order(s) and the bot (pid {bot}) is still alive")]
        if exits and min(exits) < alive_at[0] - TWO_SELLERS_SLACK_S:
            return [Violation("never-two-sellers", f"the watchdog's first exit order came "
                              f"{alive_at[0] - min(exits):.2f} s before the bot (pid {bot}) died")]
        return []

    extra = two_sellers()
    if alive(bot):  # the attack is over: a leaking bot must not outlive the scenario
        os.kill(bot, signal.SIGKILL)
        guard.append(f"the bot (pid {bot}) was still alive at the end: the harness SIGKILLed it")
    # a flatten that only starts because the harness ended the bot does not count
    return finish_flatten(s, t0, notes=[f"supervisord SIGKILLed; the bot held {held}", *guard],
                          extra=lambda: extra, timeout=FLATTEN_TIMEOUT if em else 0.0,
                          on_the_wire=SLOW_REQUEST_S + 1.0)


# --- A18: kill --flatten while order requests take 8 s -------------------------------------
def slow_exit_flatten(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 2.0)
    held = hold_coins(s)
    s.add_fault(method="POST", path="/api/v3/order", action="delay", seconds=SLOW_ORDER_S,
                times=None)
    r = tg(s, "kill", "--flatten", "--reason", "chaos: slow exit")
    if r.returncode != 0:
        raise RuntimeError(f"tradeguard kill --flatten failed: {r.stderr.strip()}")
    t0 = kill_at(s)

    def settled() -> bool:
        hb = s.heartbeat()
        return bool(emergency_finished(s) or (flat(s) and hb and hb.state == "safe"))

    # While every order request is held past recvWindow no sell can execute: the attack is
    # that the held requests land later. It lasts a few fences, then the venue is well again.
    poll(settled, SLOW_EXIT_FAULT_S)
    s.clear_faults()
    let_run(SLOW_ORDER_S + 1.0)  # every request still held lands now: the exchange's last word
    # the flatten gets its fence and a resend (same id) and finishes; recovered = settled and flat
    end = poll(lambda: settled() and flat(s), FLATTEN_TIMEOUT)
    em = emergency(s)
    is_flat = flat(s)
    notes = [f"the bot held {held}", f"watchdog emergency: {em.get('state', 'none')} "
             f"{em.get('detail', '')}".strip(), f"flat after the held requests landed: {is_flat}"]
    # a request already on the wire when a window opened reaches the exchange up to
    # SLOW_ORDER_S (and the time to serve it) later: the windows open that much later
    on_the_wire = SLOW_ORDER_S + 1.0
    windows = [Window(t0 + on_the_wire, None, "flatten")]
    if em.get("started_at"):
        windows.append(Window(float(em["started_at"]) + on_the_wire, None, "emergency"))
    return Injection(t0, time.time() if end and is_flat else None,
                     expect_kinds=["kill."], kill_windows=windows, flattened=True,
                     note="; ".join(notes), violations=flatten_verdict(s, em))


# --- A8: bot.pid names another live process --------------------------------------------------
FORGERY_STARTUP_S = 10.0  # the watchdog's startup allowance on this scenario's system
FORGERY_WATCH_S = FORGERY_STARTUP_S + 5.0  # a restart "to" the stranger fails after the allowance


def start_stranger(s: System) -> None:
    """A harmless process of our own, started before the system so that it is older than the
    watchdog's startup allowance by the time its pid is forged into bot.pid."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    # a parent that reaps it, like any process's: a signalled stranger does not linger as a zombie
    threading.Thread(target=proc.wait, name="stranger-reaper", daemon=True).start()
    s.strangers.append(proc.pid)


def pid_forgery(ctx: Ctx) -> Injection:
    s = ctx.system
    stranger = psutil.Process(s.strangers[0])
    created = stranger.create_time()
    # older than the startup allowance: "no heartbeat from this process" is not "starting"
    let_run(created + s.startup_timeout_s + 0.5 - time.time())
    bot = s.bot_pid()
    real = s.paths.pidfile.read_text()
    t0 = time.time()
    forged = s.paths.pidfile.with_suffix(".forged")
    forged.write_text(f'{{"pid":{stranger.pid},"create_time":{created}}}')
    os.replace(forged, s.paths.pidfile)
    hb0 = s.heartbeat()
    broken: dict[str, str] = {}

    def watch() -> None:
        if not alive(stranger.pid):
            broken.setdefault("stranger-untouched", f"the process named by the forged pid file "
                              f"(pid {stranger.pid}, `sleep`) was ended")
        if bot is None or not alive(bot):
            broken.setdefault("healthy-bot-left-alone", f"the healthy bot (pid {bot}) was ended")
        if kill_state(s) is not None or emergency(s).get("state") not in (None, "none"):
            broken.setdefault("healthy-bot-not-flattened", f"kill switch {kill_state(s)}, "
                              f"emergency {emergency(s).get('state')}")

    poll(lambda: watch(), FORGERY_WATCH_S, 0.05)  # watch the whole while: never true
    hb = s.healthy_heartbeat(newer_than=t0)
    if not broken and not (hb and hb0 and hb.pid == bot and hb.seq > hb0.seq):
        broken["healthy-bot-left-alone"] = f"the bot (pid {bot}) stopped making progress"
    flattened = "healthy-bot-not-flattened" in broken
    if flattened:  # let the flatten finish: the account is checked as after any flatten
        poll(lambda: emergency_finished(s), FLATTEN_TIMEOUT)
    elif bot is not None and alive(bot):
        s.paths.pidfile.write_text(real)  # the attack is over
    return Injection(t0, None if broken else time.time(),
                     kill_windows=emergency_window(s) if flattened else [], flattened=flattened,
                     violations=[Violation(k, v) for k, v in broken.items()],
                     note=f"bot.pid forged to name `sleep` (pid {stranger.pid})")


# --- A5: watchdog SIGSTOPped, then the bot hangs ----------------------------------------------
# The issue saw nothing happen in 30 s. What must happen: watchdog.json stale for 15 s (the
# guard's STALE_S), the guard's next look, supervisord starting a new watchdog, it judging the
# bot hung, the bot restarted to healthy: ~25 s on a quiet host, 31 s seen on a loaded one.
WATCHDOG_HANG_BOUND_S = 50.0


def watchdog_hang(ctx: Ctx) -> Injection:
    import json

    s = ctx.system
    ctx.trade_for(0.5, 1.5)
    wd = s.program_pid("watchdog")
    os.kill(wd, signal.SIGSTOP)
    bot, t0 = kill_bot(s, signal.SIGSTOP)

    def replaced() -> bool:
        st = json.loads(s.paths.watchdog_state.read_text())
        return st.get("pid") not in (None, wd) and st.get("ts", 0) > t0

    def handled() -> float | None:
        if replaced() and s.healthy_heartbeat(newer_than=t0, pid_not=bot):
            return time.time()
        return None

    at = poll(handled, WATCHDOG_HANG_BOUND_S)
    rec = recovered_after(s, t0, pid_not=bot, timeout=5) if at else None
    left = [p for p in (wd, bot) if alive(p)]
    violations = []
    if rec and left:
        violations.append(Violation("hung-processes-ended", f"replaced, but still there: {left}"))
    for p in left:  # the attack is over (nothing replaced them): let them run again
        os.kill(p, signal.SIGCONT)
    note = ("watchdog replaced and bot restarted" if rec else
            f"after {WATCHDOG_HANG_BOUND_S:g} s: watchdog replaced {poll(replaced, 0.1) or False}, "
            f"bot restarted {bool(s.healthy_heartbeat(newer_than=t0, pid_not=bot))}")
    return Injection(t0, rec, expect_kinds=["watchdog."], violations=violations, note=note)


# --- A4: the data dir fills up ---------------------------------------------------------------
DISK_FULL_BOUND_S = 10.0


def fill_up(path: os.PathLike) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC at 1 MB, then at 4 KB); bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 512):
            block = b"\0" * chunk
            try:
                while True:
                    written += fh.write(block)
            except OSError as e:
                if e.errno != 28:  # ENOSPC
                    raise
    return written


def _health(s: System) -> tuple[int, str]:
    """``GET /health`` as a monitor does (bearer token from the data dir); (status, body).
    The harness asks over HTTP, never through the watchdog's code (no process imports another)."""
    token = read_private(s.paths.health_token).strip()
    req = urllib.request.Request(f"http://127.0.0.1:{s.cfg.health.port}/health",
                                 headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=1.0) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def disk_full(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 2.0)
    filler = s.paths.data_dir / "chaos-filler"
    t0 = time.time()
    size = fill_up(filler)
    seen: dict[str, Any] = {}

    def reported() -> float | None:
        hb = s.heartbeat()
        seen["heartbeat"] = f"{hb.state} ({hb.age():.1f} s old)" if hb else None
        status, body = _health(s)
        seen["health"] = f"{status} {body}"[:200]
        if hb and hb.state == "safe" and hb.ts > t0 and status not in (0, 200):
            return time.time()
        return None

    at = poll(reported, DISK_FULL_BOUND_S, 0.1)
    # nothing may reach the exchange that state.db did not record first
    try:
        known = {r["client_order_id"] for r in state_rows(s, "SELECT client_order_id FROM orders")}
        sent = [o["clientOrderId"] for o in bot_orders(s) if int(o["time"]) / 1000.0 > t0]
        unrecorded = [c for c in sent if c not in known]
    except sqlite3.Error as e:
        unrecorded, sent = [f"state.db unreadable: {e}"], []
    filler.unlink()
    violations = [Violation("recorded-before-sent", f"sent while the disk was full and not in "
                            f"state.db: {unrecorded[:5]}")] if unrecorded else []
    if at is None:
        violations.append(Violation("disk-full-reported", f"within {DISK_FULL_BOUND_S:g} s the "
                                    f"bot did not go safe and say so: heartbeat "
                                    f"{seen.get('heartbeat')}, /health {seen.get('health')}"))
    return Injection(t0, at, expect_kinds=[], violations=violations,
                     note=f"filled {size >> 20} MB; {len(sent)} order(s) sent while full; "
                          f"heartbeat {seen.get('heartbeat')}; /health {seen.get('health')}")


ATTACKS = [
    Scenario("state-loss-flatten", "A1: state.db deleted or corrupted while the bot is down and "
             "cannot come back; the watchdog's flatten must sell what the exchange says the bot "
             "bought.", state_loss_flatten, own_system=True),
    Scenario("fill-while-down", "A2: a resting limit buy of the stopped bot fills; the restart "
             "budget is spent and the flatten must sell the filled coins too.", fill_while_down,
             own_system=True),
    Scenario("manager-dead-flatten", "A3: supervisord SIGKILLed, then the bot leaks memory with "
             "slow order requests; the watchdog must end the bot itself before it sells.",
             manager_dead_flatten, own_system=True,
             system={"restart_budget": 1, "memory_limit_mb": 150,
                     "startup_timeout_s": MANAGER_DEAD_STARTUP_S,
                     "failpoints": f"memory=leak:10@{LEAK_AT_LOOP}"}),
    Scenario("slow-exit-flatten", f"A18: `tradeguard kill --flatten` while order requests take "
             f"{SLOW_ORDER_S:g} s; nothing sold twice, nothing unrecorded left.", slow_exit_flatten,
             own_system=True),
    Scenario("pid-forgery", "A8: bot.pid rewritten to name another live process; the stranger is "
             "never signalled and the healthy bot is left alone.", pid_forgery, own_system=True,
             prepare=start_stranger, system={"startup_timeout_s": FORGERY_STARTUP_S}),
    Scenario("watchdog-hang", "A5: SIGSTOP the watchdog, then the bot; within "
             f"{WATCHDOG_HANG_BOUND_S:g} s the watchdog is replaced and the bot restarted.",
             watchdog_hang, own_system=True),
    Scenario("disk-full", "A4: the data dir (a tmpfs) fills up; the bot goes safe, says so in "
             "its heartbeat and /health, and sends nothing it could not record.", disk_full,
             own_system=True, system={"data_tmpfs_mb": 32}, needs_root=True),
]
