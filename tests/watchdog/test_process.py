"""``tradeguard watchdog`` as a real process over the real bot, the real paper exchange and
(for the supervisor manager) a real supervisord; faults are real signals and bot failpoints."""
from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from tests.helpers.proc import free_port, run_cli, spawn, stop, wait_until
from tests.watchdog.system import GuardedBot, supervisord
from tests.watchdog.trading import balance, bot_buys, exchange_cfg, ledger_orders
from tradeguard.heartbeat import read_heartbeat
from tradeguard.runner import supervisor_rpc
from watchdog.health import client as health_client

pytestmark = pytest.mark.slow


@pytest.fixture
def guarded(paper_exchange):
    made: list[GuardedBot] = []

    def make(manager: str = "standalone", **env: str) -> GuardedBot:
        g = GuardedBot.create(paper_exchange, manager, **env)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def test_standalone_restart_reattach_and_clean_exit(guarded):
    g = guarded(TRADEGUARD_HEALTH_ENABLED="true", TRADEGUARD_HEALTH_PORT=str(free_port())).start()
    pid = g.healthy()
    assert os.getsid(pid) != os.getsid(g.proc.pid)  # own session: outlives the watchdog
    # the health endpoint runs in the watchdog and reports its live state
    reply = wait_until(lambda: (r := health_client.get(g.cfg, "/health/detailed")).status == 200
                       and r, 10, message="health endpoint")
    assert reply.body["watchdog"]["running"] and reply.body["bot"]["pid"] == pid

    os.kill(pid, signal.SIGKILL)
    pid = g.healthy(not_pid=pid)
    assert g.state()["restarts_total"] == 1

    # a second watchdog on the same data dir is refused
    second = run_cli(*g.argv()[3:], env=g.env, timeout=30)
    assert second.returncode == 2 and "another watchdog" in second.stderr

    # the watchdog dies; its successor re-attaches to the same bot without restarting it
    old_wd = g.proc.pid
    os.kill(old_wd, signal.SIGKILL)
    g.proc.wait(5)
    g.start()
    wait_until(lambda: g.state()["pid"] == g.proc.pid and g.state()["verdict"] == "healthy", 20,
               message="the new watchdog judging the bot")
    st = g.state()
    assert st["bot_pid"] == pid and g.bot_pid() == pid and st["restarts_total"] == 1
    wait_until(lambda: [e for e in g.events("watchdog.start") if e["pid"] == g.proc.pid
                        and e["fields"]["bot_running"]], 5, message="watchdog.start (bot running)")

    # SIGTERM: exit 0, the bot keeps running
    assert stop(g.proc) == 0
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    hb = read_heartbeat(g.px.data_dir / "bot.heartbeat")
    wait_until(lambda: (h := read_heartbeat(g.px.data_dir / "bot.heartbeat")) and h.seq > hb.seq, 5,
               message="the bot still looping")


def test_supervisor_restarts_crashed_and_hung_bots(short_path_exchange):
    g = GuardedBot.create(short_path_exchange, "supervisor")
    cfg = g.cfg
    sd = supervisord(cfg, g.env)
    try:
        pid = g.healthy()
        rpc = supervisor_rpc(cfg).supervisor
        assert rpc.getProcessInfo("bot")["pid"] == pid

        os.kill(pid, signal.SIGKILL)
        pid = g.healthy(not_pid=pid)
        assert rpc.getProcessInfo("bot")["pid"] == pid

        os.kill(pid, signal.SIGSTOP)
        new = g.healthy(not_pid=pid)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        hung = g.verdict_events("hung")[-1]["fields"]["evidence"]
        timeout = cfg.watchdog.heartbeat_timeout_s
        assert hung["status"] == "stopped" and hung["pid"] == pid
        assert timeout < hung["hb_age_s"] <= timeout + cfg.watchdog.interval_s + 1.0
        st = g.state()
        assert st["manager"] == "supervisor" and st["restarts_total"] == 2
        assert rpc.getProcessInfo("bot")["pid"] == new
    finally:
        stop(sd)
        g.close()


def test_stalled_and_leaking_bots_are_restarted(guarded):
    g = guarded(TRADEGUARD_WATCHDOG_MEMORY_LIMIT_MB="220")
    # one-shot failpoints: the first bot leaks 50 MB a tick; the second stalls at its 5th tick
    (g.px.data_dir / "FAILPOINTS").write_text("memory=leak:50\nloop.tick=stall@5\n")
    g.start()
    wait_until(lambda: g.verdict_events("leaking"), 30, message="leaking")
    leak = g.verdict_events("leaking")[-1]["fields"]["evidence"]
    assert leak["rss_mb"] > 220 and leak["limit_mb"] == 220
    wait_until(lambda: g.verdict_events("stalled"), 30, message="stalled")
    stall = g.verdict_events("stalled")[-1]["fields"]["evidence"]
    assert stall["no_progress_s"] > 2.5 and stall["hb_age_s"] < 2.0  # fresh file, stuck seq
    g.healthy(not_pid=stall["pid"])
    assert g.state()["restarts_total"] == 2
    assert (g.px.data_dir / "FAILPOINTS").read_text().strip() == ""


def test_crash_loop_ends_in_a_flatten_and_the_bot_stays_out(guarded, paper_exchange, webhook):
    px = paper_exchange
    bot_buys(exchange_cfg(px), "BTC/USDT", 0.01)  # the bot holds a position
    bot_orders = len(ledger_orders(px, "tg-tg1-"))
    g = guarded(TRADEGUARD_FAILPOINTS="startup=crash", TRADEGUARD_WATCHDOG_RESTART_BUDGET="2",
                TRADEGUARD_ALERTS_WEBHOOK_URL=webhook.url).start()

    wait_until(lambda: g.state()["emergency"]["state"] == "done", 60, message="emergency done")
    st = g.state()
    assert st["restarts_total"] == 2 and st["verdict"] == "emergency"
    assert "restart budget spent" in st["emergency"]["reason"] and st["emergency"]["orders"] == 1
    kill = json.loads(g.cfg.runtime.kill_file.read_text())
    assert kill["mode"] == "flatten" and "restart budget spent" in kill["reason"]
    assert balance(px, "BTC") == pytest.approx(0.0)
    (sell,) = ledger_orders(px, "tg-tg1-x")
    assert sell["side"] == "SELL" and sell["status"] == "FILLED"
    wait_until(lambda: {"restart", "budget_spent", "emergency_started", "emergency_finished"}
               <= set(webhook.events()), 10, message="alerts delivered")

    # a bot started again by hand (no failpoint) finds the kill switch and refuses to trade
    env = {k: v for k, v in g.env.items() if k != "TRADEGUARD_FAILPOINTS"}
    bot = spawn(g.argv("bot"), env=env, log=px.logs_dir / "bot.by-hand.out")
    try:
        hb = wait_until(lambda: (h := read_heartbeat(px.data_dir / "bot.heartbeat")) and
                        h.pid == bot.pid and h.state == "safe" and h, 30, message="bot in safe mode")
        assert hb.detail.get("kill_switch") == "flatten"
        # the demo strategy would trade every second tick
        wait_until(lambda: (h := read_heartbeat(px.data_dir / "bot.heartbeat"))
                   and h.seq >= hb.seq + 10, 20, message="ten more ticks")
        assert len(ledger_orders(px, "tg-tg1-")) == bot_orders + 1  # only the emergency sell
        assert g.state()["restarts_total"] == 2  # the watchdog did not restart anything
    finally:
        stop(bot)
