"""The named fault scenarios. Each injects one fault into a running :class:`System` and
reports when it was injected and when (if) the system recovered; the harness checks the
invariants afterwards."""
from __future__ import annotations

import json
import os
import signal
import time

from chaos.attacks import ATTACKS
from chaos.base import (RECOVERY_TIMEOUT, Ctx, Injection, Scenario, emergency_done,
                        failpoints_consumed, flat, kill_at, kill_bot, kill_state, let_run,
                        recovered_after, tg)
from chaos.hostdeath import HOSTDEATH
from chaos.invariants import Window
from chaos.system import poll

__all__ = ["SCENARIOS", "Ctx", "Injection", "Scenario"]


def bot_sigkill(ctx: Ctx) -> Injection:
    ctx.trade_for(1.0, 4.0)
    pid, t0 = kill_bot(ctx.system, signal.SIGKILL)
    return Injection(t0, recovered_after(ctx.system, t0, pid_not=pid),
                     expect_kinds=["watchdog.verdict", "watchdog.restart"])


CRASH_POINTS = ("orders.after_intent", "orders.before_submit", "orders.after_submit",
                "orders.after_ack")


def _failpoint_restart(ctx: Ctx, spec: str, kinds: list[str]) -> Injection:
    """Arm a one-shot failpoint, restart the bot so it reads it, and time the recovery from
    the moment it fires (the bot removes it from the file right before acting)."""
    s = ctx.system
    s.write_failpoints(spec)
    os.kill(s.bot_pid(), signal.SIGKILL)
    if not poll(lambda: failpoints_consumed(s), 40):
        s.clear_failpoints()
        return Injection(time.time(), None, kinds, note=f"{spec}: never fired")
    t0 = time.time()
    faulty = s.bot_pid()
    rec = recovered_after(s, t0, pid_not=faulty)
    return Injection(t0, rec, expect_kinds=kinds, note=spec)


def bot_crash_points(ctx: Ctx) -> Injection:
    point = CRASH_POINTS[ctx.rng.randrange(len(CRASH_POINTS))]
    return _failpoint_restart(ctx, f"{point}=crash", ["watchdog.restart", "order.intent"])


def lost_ack(ctx: Ctx) -> Injection:
    kind = ["status", "reset", "hang"][ctx.rng.randrange(3)]
    spec = {"method": "POST", "path": "/api/v3/order", "action": "apply_then_fail",
            "times": 2}
    if kind == "status":
        spec["status"] = 503
    else:
        spec["then"] = kind
    s = ctx.system
    before = len(s.ledger()["orders"])
    t0 = time.time()
    s.add_fault(**spec)
    # the fault fires on the next order(s); wait until both were applied and resolved
    poll(lambda: len(s.ledger()["orders"]) >= before + 2, 30)
    s.clear_faults()
    return Injection(t0, recovered_after(s, t0), expect_kinds=["order."], note=kind)


def exchange_outage(ctx: Ctx) -> Injection:
    s = ctx.system
    action = ["respond", "hang"][ctx.rng.randrange(2)]
    spec = {"method": "*", "path": "*", "action": action, "times": 100000}
    if action == "respond":
        spec.update(status=503, body="Service Unavailable")
    else:
        spec.update(seconds=5)
    t0 = time.time()
    s.add_fault(**spec)
    degraded = poll(lambda: (hb := s.heartbeat()) and hb.ts > t0 and hb.state in ("degraded", "safe"), 20)
    let_run(ctx.rng.uniform(1.0, 3.0) * (0.5 if ctx.quick else 1.0))
    s.clear_faults()
    t1 = time.time()
    rec = recovered_after(s, t1)
    note = f"{action}; bot went {'degraded' if degraded else 'NOT degraded'}"
    return Injection(t0, rec if degraded else None, expect_kinds=["breaker."], note=note)


def rate_limit_storm(ctx: Ctx) -> Injection:
    s = ctx.system
    choice = ctx.rng.randrange(3)
    body = {0: '{"code":-1003,"msg":"Too many requests."}',
            1: '{"code":-1003,"msg":"Way too many requests; IP banned."}',
            2: '{"code":-1015,"msg":"Too many new orders."}'}[choice]
    status = {0: 429, 1: 418, 2: 429}[choice]
    t0 = time.time()
    # every request for a while: enough failures in a row to open the breakers, every time
    s.add_fault(method="*", path="*", action="respond", status=status, body=body, times=100000)
    let_run(ctx.rng.uniform(2.0, 4.0) * (0.5 if ctx.quick else 1.0))
    s.clear_faults()
    return Injection(t0, recovered_after(s, time.time()), expect_kinds=["breaker."],
                     note=f"HTTP {status}")


def bot_hang(ctx: Ctx) -> Injection:
    ctx.trade_for(1.0, 3.0)
    pid, t0 = kill_bot(ctx.system, signal.SIGSTOP)
    # quick mode: long enough for the watchdog (timeout + grace + restart), short for baseline
    rec = recovered_after(ctx.system, t0, pid_not=pid, timeout=15.0 if ctx.quick else RECOVERY_TIMEOUT)
    try:  # if nothing killed it (baseline), let it go again
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    return Injection(t0, rec, expect_kinds=["watchdog.verdict", "watchdog.restart"])


def bot_stall(ctx: Ctx) -> Injection:
    return _failpoint_restart(ctx, "loop.tick=stall@5", ["watchdog.verdict", "watchdog.restart"])


def memory_leak(ctx: Ctx) -> Injection:
    return _failpoint_restart(ctx, "memory=leak:40", ["watchdog.verdict", "watchdog.restart"])


def crash_loop(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(3.0, 5.0)
    s.write_failpoints("startup=crash*")  # '*' keeps it: the bot crashes on every start
    pid, t0 = kill_bot(s, signal.SIGKILL)
    done = poll(lambda: kill_state(s) == "flatten" and emergency_done(s), 90)
    s.clear_failpoints()
    rec = time.time() if done else None
    windows = [Window(kill_at(s), None, "flatten")] if done else []
    return Injection(t0, rec, expect_kinds=["emergency.", "kill."], flattened=bool(done),
                     kill_windows=windows)


def kill_switch(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 3.0)
    mode = ["halt", "flatten"][ctx.rng.randrange(2)]
    via = ["cli", "file"][ctx.rng.randrange(2)]
    t0 = time.time()
    if via == "cli":
        args = ["kill", "--reason", "chaos"] + (["--flatten"] if mode == "flatten" else [])
        r = tg(s, *args)
        if r.returncode != 0:
            raise RuntimeError(f"tradeguard kill failed: {r.stderr.strip()}")
    else:
        tmp = s.paths.kill_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode, "reason": "chaos (file)", "at": t0, "by": "chaos"}))
        os.replace(tmp, s.paths.kill_file)
    # the switch is engaged from the moment the kill file says, not from when the CLI started
    # (its interpreter takes a second to get there, and the bot trades on meanwhile)
    t0 = kill_at(s)
    state_ok = poll(lambda: (hb := s.heartbeat()) and hb.ts > t0 and hb.state == "safe"
                    and (mode == "halt" or flat(s)), 30)
    t_done = time.time() if state_ok else None
    let_run(1.0)
    t_release = time.time()
    r = tg(s, "resume")
    if r.returncode != 0:
        raise RuntimeError(f"tradeguard resume failed: {r.stderr.strip()}")
    rec = recovered_after(s, t_release)
    return Injection(t0, t_done if rec else None, expect_kinds=["kill."],
                     kill_windows=[Window(t0, t_release, mode)], flattened=False,
                     note=f"{mode} via {via}")


def state_corruption(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 3.0)
    rpc = s.rpc()
    rpc.stopProcess("watchdog")
    rpc.stopProcess("bot")
    db = s.paths.state_db
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        for _ in range(3):
            page = ctx.rng.randrange(max(1, size // 4096))
            fh.seek(page * 4096 + ctx.rng.randrange(100))
            fh.write(bytes(ctx.rng.randrange(256) for _ in range(512)))
    for suffix in ("-wal", "-shm"):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)
    t0 = time.time()
    rpc.startProcess("bot")
    rpc.startProcess("watchdog")
    rec = recovered_after(s, t0)
    return Injection(t0, rec, expect_kinds=["state.", "reconcile."])


def watchdog_sigkill(ctx: Ctx) -> Injection:
    s = ctx.system
    bot_before = s.bot_pid()
    wd = s.program_pid("watchdog")
    t0 = time.time()
    os.kill(wd, signal.SIGKILL)

    def reattached() -> bool:
        st = json.loads(s.paths.watchdog_state.read_text())
        return st.get("pid") not in (None, wd) and st.get("ts", 0) > t0 and st.get("verdict") == "healthy"

    ok = poll(reattached, 30)
    same_bot = s.bot_pid() == bot_before
    rec = time.time() if ok and same_bot else None
    return Injection(t0, rec, expect_kinds=["watchdog."],
                     note="bot kept running" if same_bot else "bot was restarted (should not be)")


def exchange_restart(ctx: Ctx) -> Injection:
    s = ctx.system
    ctx.trade_for(1.0, 3.0)
    rpc = s.rpc()
    t0 = time.time()
    rpc.stopProcess("paper-exchange")
    let_run(ctx.rng.uniform(0.5, 2.0))
    rpc.startProcess("paper-exchange")
    return Injection(t0, recovered_after(s, time.time()), expect_kinds=["breaker."])


def sigterm(ctx: Ctx) -> Injection:
    """A graceful stop under load: exit 0 within 10 s with state persisted. The watchdog
    treats a deliberate stop as a person's decision ("stopped") and does not fight it, so
    the harness starts the bot again, as an operator would, and times that recovery."""
    import psutil

    s = ctx.system
    ctx.trade_for(1.0, 3.0)
    pid, t0 = kill_bot(s, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(12)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return Injection(t0, None, note="did not exit within 12 s")
    info = s.rpc().getProcessInfo("bot")
    took = time.time() - t0
    if info["statename"] != "EXITED" or info["exitstatus"] != 0 or took > 10.5:
        return Injection(t0, None, note=f"state {info['statename']}, exit status "
                         f"{info['exitstatus']}, after {took:.1f} s")
    s.rpc().startProcess("bot", False)
    return Injection(t0, recovered_after(s, t0, pid_not=pid), expect_kinds=["bot."],
                     note=f"exited 0 after {took:.1f} s")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("bot-sigkill", "SIGKILL the bot at a random moment while it trades.", bot_sigkill, baseline=True),
    Scenario("bot-crash-points", "SIGKILL the bot at an order-lifecycle failpoint (after intent, "
             "before submit, after submit, after ack).", bot_crash_points),
    Scenario("lost-ack", "The exchange applies order requests, then fails the response "
             "(503, connection reset, or hang).", lost_ack),
    Scenario("exchange-outage", "Every endpoint returns 503 or hangs for a while, then recovers.",
             exchange_outage),
    Scenario("rate-limit-storm", "429/418 and -1015 responses on most requests.", rate_limit_storm),
    Scenario("bot-hang", "SIGSTOP the bot: alive to the OS, dead to the market.", bot_hang, baseline=True),
    Scenario("bot-stall", "Failpoint: the loop stops making progress but the heartbeat file stays fresh.",
             bot_stall),
    Scenario("memory-leak", "Failpoint: memory grows each tick until the watchdog's limit.", memory_leak),
    Scenario("crash-loop", "The bot crashes on every start until the restart budget is spent; the "
             "watchdog must flatten its positions.", crash_loop, own_system=True),
    Scenario("kill-switch", "Engage the kill switch (CLI or file; halt or flatten) mid-trade, then resume.",
             kill_switch),
    Scenario("state-corruption", "Overwrite pages of state.db while the bot is stopped, then start it.",
             state_corruption),
    Scenario("watchdog-sigkill", "SIGKILL the watchdog; it must come back and re-attach without "
             "restarting the bot.", watchdog_sigkill),
    Scenario("exchange-restart", "Restart the paper exchange mid-trade.", exchange_restart),
    Scenario("sigterm", "SIGTERM the bot under load: it must exit cleanly within 10 s.", sigterm),
    *ATTACKS,
    *HOSTDEATH,
]}
