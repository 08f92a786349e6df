"""The watchdog loop in-process over real heartbeat-protocol bots (standalone manager): verdicts,
restarts, the budget, the emergency and its release, and watchdog.json."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest

from blackbox import recorder
from resilience.killswitch import KillSwitch
from tests.helpers.proc import REPO, child_env, wait_until
from tests.watchdog.conftest import hbbot_argv, pid_gone
from tradeguard.heartbeat import read_pidfile
from watchdog.alerts import Alerter
from watchdog.main import Watchdog
from watchdog.managers import StandaloneManager


class Loop:
    """A Watchdog running in a thread; the bots it starts are killed at the end."""

    def __init__(self, cfg, mode: str = "normal"):
        self.cfg = cfg
        self.manager = StandaloneManager(cfg, child_env(PYTHONPATH=str(REPO)),
                                         argv=hbbot_argv(cfg.runtime.data_dir, mode))
        self.alerter = Alerter(cfg.alerts, attempts=1, backoff_s=0.05)
        self.wd = Watchdog(cfg, self.manager, self.alerter)
        self.thread = threading.Thread(target=self.wd.run, daemon=True)
        self.pids: set[int] = set()

    def start(self) -> "Loop":
        self.thread.start()
        return self

    def state(self) -> dict:
        return json.loads(self.cfg.runtime.watchdog_state.read_text())

    def bot_pid(self) -> int | None:
        info = read_pidfile(self.cfg.runtime.pidfile)
        if info:
            self.pids.add(info.pid)
        return info.pid if info else None

    def healthy_bot(self, not_pid: int | None = None, timeout: float = 10, after: float = 0.0) -> int:
        def ok():
            st = self.state()
            pid = self.bot_pid()
            return (st["verdict"] == "healthy" and st["ts"] > after and pid != not_pid
                    and st["bot_pid"] == pid and pid)
        return wait_until(ok, timeout, message="a healthy bot")

    def stop_watchdog(self) -> None:
        """What SIGTERM does to the process: the loop ends, the bot is left running."""
        self.wd.stop_event.set()
        self.thread.join(10)
        self.alerter.stop(1)

    def close(self) -> None:
        self.stop_watchdog()
        self.bot_pid()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.manager.poll()


@pytest.fixture
def loop(make_cfg):
    loops: list[Loop] = []

    def make(mode: str = "normal", **kw) -> Loop:
        lp = Loop(make_cfg(**kw), mode)
        loops.append(lp)
        return lp.start()

    yield make
    for lp in loops:
        lp.close()


def events(kind: str) -> list[dict]:
    return [e for e in recorder.recent(5000) if e["kind"] == kind]


def test_starts_the_bot_and_restarts_it_after_sigkill(loop):
    lp = loop()
    pid = lp.healthy_bot()
    since = len(events("watchdog.restart"))
    os.kill(pid, signal.SIGKILL)
    new = lp.healthy_bot(not_pid=pid)
    st = lp.state()
    assert st["restarts_total"] == 1 and st["budget_left"] == 4 and len(st["restarts"]) == 1
    assert st["verdict_counts"]["crashed"] == 1 and st["manager"] == "standalone"
    assert st["pid"] == os.getpid() and st["bot_pid"] == new
    restarts = events("watchdog.restart")[since:]
    assert restarts[0]["fields"]["fault"] == "crashed"
    assert restarts[-1]["fields"]["outcome"] == "healthy"
    crashed = [e for e in events("watchdog.verdict") if e["fields"]["verdict"] == "crashed"]
    assert str(pid) in crashed[-1]["fields"]["evidence"]["reason"]


def test_sigstopped_bot_is_hung_within_timeout_plus_an_interval_and_restarted(loop):
    lp = loop()
    pid = lp.healthy_bot()
    os.kill(pid, signal.SIGSTOP)
    lp.healthy_bot(not_pid=pid)
    assert pid_gone(pid)
    hung = [e for e in events("watchdog.verdict") if e["fields"]["verdict"] == "hung"][-1]
    ev = hung["fields"]["evidence"]
    timeout, interval = lp.cfg.watchdog.heartbeat_timeout_s, lp.cfg.watchdog.interval_s
    # judged on evidence, loosely: stale beyond the timeout, seen no later than ~one interval after
    assert timeout < ev["hb_age_s"] <= timeout + interval + 0.5
    assert ev["status"] == "stopped"
    how = [e for e in events("watchdog.restart") if e["fields"].get("fault") == "hung"][-1]
    assert how["fields"]["how"].startswith("SIGKILL (process was stopped)")


def test_graceful_stop_is_respected(loop):
    lp = loop("stopping")
    wait_until(lambda: lp.state()["verdict"] == "stopped", 10, message="stopped")
    pid = lp.bot_pid()
    wait_until(lambda: pid_gone(pid), 5)
    for _ in range(5):  # several checks later: still no restart
        lp.wd.stop_event.wait(lp.cfg.watchdog.interval_s)
    st = lp.state()
    assert st["verdict"] == "stopped" and st["restarts_total"] == 0


def _venue(px, data_dir) -> str:
    """Config lines (and the credentials file in ``data_dir``) for trading on ``px``: a flatten
    asks the exchange what the bot holds, even with no state.db."""
    data_dir.joinpath("paper").mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy(px.data_dir / "paper" / "credentials.json", data_dir / "paper" / "credentials.json")
    return f'\n[paper]\nport = {px.port}\n'


def test_crash_loop_spends_the_budget_then_emergency_then_resume(loop, make_cfg, webhook,
                                                                 paper_exchange, data_dir):
    extra = f'\n[alerts]\nwebhook_url = "{webhook.url}"\n' + _venue(paper_exchange, data_dir)
    lp = loop("crash", restart_budget=2, extra=extra)
    wait_until(lambda: lp.state()["emergency"]["state"] == "done", 20, message="emergency done")
    st = lp.state()
    assert st["restarts_total"] == 2 and st["budget_left"] == 0
    assert st["verdict"] == "emergency" and "restart budget spent" in st["emergency"]["reason"]
    kill = json.loads(lp.cfg.runtime.kill_file.read_text())
    assert kill["mode"] == "flatten" and kill["by"] == "watchdog"
    wait_until(lambda: {"restart", "budget_spent", "kill_engaged", "emergency_started",
                        "emergency_finished"} <= set(webhook.events()), 10, message="alerts")
    # the bot stays down while the kill switch is engaged
    for _ in range(5):
        lp.wd.stop_event.wait(lp.cfg.watchdog.interval_s)
    assert lp.state()["restarts_total"] == 2 and not lp.manager.is_running()

    lp.cfg.runtime.kill_file.unlink()  # what `tradeguard resume` does
    wait_until(lambda: events("watchdog.resume"), 10, message="resume")
    wait_until(lambda: lp.state()["restarts_total"] >= 3, 10, message="supervision again")


def test_restart_budget_survives_a_watchdog_restart(loop, make_cfg):
    lp = loop()
    pid = lp.healthy_bot()
    os.kill(pid, signal.SIGKILL)
    pid = lp.healthy_bot(not_pid=pid)
    lp.stop_watchdog()
    assert not lp.thread.is_alive()
    assert not pid_gone(pid)  # the watchdog's shutdown left the bot running

    t = time.time()
    lp2 = loop()
    lp2.pids.add(pid)
    assert lp2.healthy_bot(after=t) == pid  # re-attached: same bot, not restarted
    st = lp2.state()
    assert st["restarts_total"] == 1 and len(st["restarts"]) == 1 and st["budget_left"] == 4


def test_flatten_kill_switch_on_an_unresponsive_bot_is_carried_out(loop, paper_exchange, data_dir):
    # flatten_deadline_s longer than heartbeat_timeout_s: hung by then
    lp = loop(flatten_deadline_s=2.5, extra=_venue(paper_exchange, data_dir))
    pid = lp.healthy_bot()
    os.kill(pid, signal.SIGSTOP)
    KillSwitch(lp.cfg.runtime.kill_file).engage("flatten", "test: by hand", by="test")
    wait_until(lambda: lp.state()["emergency"]["state"] == "done", 15, message="emergency done")
    st = lp.state()
    assert "kill switch (flatten)" in st["emergency"]["reason"]
    assert pid_gone(pid) and st["restarts_total"] == 0
    # the watchdog took the person's flatten over: the file says who sells (a bot brought back
    # by hand leaves the selling to the watchdog)
    kill = KillSwitch(lp.cfg.runtime.kill_file).check()
    assert kill.mode == "flatten" and kill.by == "watchdog"
    assert "taking over the flatten engaged by test: test: by hand" in kill.reason


def test_a_check_of_an_earlier_flatten_is_not_taken_for_the_next_one(paper_exchange):
    """The chaos suite's kill-switch #4 under load: a verify job of one flatten episode finished
    after that kill switch was released, and its answer ("still held") began an emergency 16 ms
    into the next flatten, before the bot had its flatten_deadline_s to sell."""
    from tests.watchdog.trading import bot_buys, exchange_cfg

    cfg = exchange_cfg(paper_exchange, TRADEGUARD_WATCHDOG_INTERVAL_S="0.1",
                       TRADEGUARD_WATCHDOG_FLATTEN_DEADLINE_S="1.5",
                       TRADEGUARD_WATCHDOG_MANAGER="standalone", TRADEGUARD_HEALTH_ENABLED="false")
    bot_buys(cfg, "BTC/USDT", 0.01)
    kill = KillSwitch(cfg.runtime.kill_file)
    lp = Loop(cfg).start()  # a heartbeat bot: healthy, but it never sells anything

    def verifying() -> bool:
        return any(t.name == "watchdog-verify-flatten" and t.is_alive() for t in threading.enumerate())

    try:
        lp.healthy_bot()
        # the check's exchange calls hang: it is still running when the switch is released
        paper_exchange.add_fault(method="GET", path="/api/v3/exchangeInfo", action="hang",
                                 seconds=3, times=None)
        kill.engage("flatten", "test: first", by="test")
        wait_until(verifying, 15, interval=0.01, message="the first flatten's check running")
        kill.release()
        paper_exchange.clear_faults()
        wait_until(lambda: not verifying(), 30, interval=0.05, message="the first check over")
        lp.wd.stop_event.wait(0.5)  # a few turns of the loop with no kill switch
        assert lp.state()["emergency"]["state"] == "none"
        engaged = time.time()
        kill.engage("flatten", "test: second", by="test")
        wait_until(lambda: lp.state()["emergency"]["state"] == "done", 20, message="emergency")
        em = lp.state()["emergency"]
        # the bot had its deadline first, and the check that ended it was this episode's own
        assert em["started_at"] - engaged >= 1.5, em
        assert "0.01 BTC/USDT still held" in em["reason"], em
    finally:
        lp.close()

def test_healthy_bot_that_does_not_flatten_in_time_is_flattened_for(paper_exchange):
    from tests.watchdog.trading import balance, bot_buys, exchange_cfg, ledger_orders

    cfg = exchange_cfg(paper_exchange, TRADEGUARD_WATCHDOG_INTERVAL_S="0.1",
                       TRADEGUARD_WATCHDOG_FLATTEN_DEADLINE_S="1.0",
                       TRADEGUARD_WATCHDOG_MANAGER="standalone", TRADEGUARD_HEALTH_ENABLED="false")
    bot_buys(cfg, "BTC/USDT", 0.01)
    lp = Loop(cfg).start()  # a heartbeat bot: healthy, but it never sells anything
    try:
        lp.healthy_bot()
        KillSwitch(cfg.runtime.kill_file).engage("flatten", "test: by hand", by="test")
        wait_until(lambda: lp.state()["emergency"]["state"] == "done", 15, message="emergency")
        assert "did not flatten" in lp.state()["emergency"]["reason"]
        assert balance(paper_exchange, "BTC") == pytest.approx(0.0)
        assert len(ledger_orders(paper_exchange, "tg-tg1-x")) == 1
    finally:
        lp.close()
