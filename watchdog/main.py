"""The watchdog process: judge the bot every interval, restart it through its manager, and
close its positions when it cannot be brought back (DESIGN.md, "Watchdog policy").

Phases of :class:`Watchdog`:

* watching — a fault (crashed, hung, stalled, leaking) schedules a restart after the backoff
  if the restart budget allows, else an emergency;
* restarting — the restart is issued; it succeeds when a new bot (new pid, ``seq`` advancing)
  is healthy within ``startup_timeout_s``. A new bot that fails again costs another restart
  from the budget; one that does not come back healthy in time starts an emergency;
* emergency — kill switch in ``flatten`` mode, bot stopped, orders cancelled, positions sold
  (:func:`watchdog.emergency.flatten`, in a worker thread). The bot stays stopped until a
  person runs ``tradeguard resume``; a bot started meanwhile by hand refuses to trade because
  the kill switch is engaged. After ``resume`` the watchdog starts the bot again with a
  fresh restart budget.

A kill switch in ``flatten`` mode engaged by a person is the bot's to carry out while it is
healthy; after ``flatten_deadline_s`` the watchdog checks that nothing is left to sell and
runs the emergency itself otherwise (at once if the bot is not healthy).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from blackbox import recorder
from resilience.killswitch import KillSwitch
from tradeguard.config import Config
from tradeguard.exceptions import TradeguardError
from tradeguard.lifetime import ProcessLock, hold_lock
from tradeguard.heartbeat import read_pidfile
from tradeguard.notify import Notifier
from watchdog.attention import AttentionWatch
from watchdog.budget import RestartBudget
from watchdog.checks import BotChecker, Verdict
from watchdog.emergency import FlattenResult, flatten, pending_flatten
from watchdog.managers import BotManager, make_manager
from watchdog.summary import DailySummary
from watchdog.statefile import EmergencyState, WatchdogState, load_state, save_state

log = logging.getLogger(__name__)

SOURCE = "watchdog"
STATE_REFRESH_S = 2.0  # watchdog.json is rewritten at least this often (contract: <= 5 s)
SHUTDOWN_JOIN_S = 2.0


@dataclass
class _Restart:
    """A restart in progress: due after the backoff, then awaiting a healthy new bot."""

    fault: Verdict | None          # None for a start that is not a restart (first start, resume)
    old_pid: int | None
    due: float
    counted: bool = True
    issued_at: float | None = None
    deadline: float = 0.0
    how: str = ""

    @property
    def verdict(self) -> str:
        return "restarting" if self.fault is not None else "starting"

    @property
    def kind(self) -> str:
        return "watchdog.restart" if self.fault is not None else "watchdog.bot_started"


@dataclass
class _Job:
    thread: threading.Thread
    result: list[Any] = field(default_factory=list)

    def done(self) -> bool:
        return not self.thread.is_alive()


class Watchdog:
    """One watchdog over one bot; :meth:`step` is one check, :meth:`run` the loop."""

    def __init__(self, cfg: Config, manager: BotManager, alerter: Any):
        self.cfg, self.wcfg, self.paths = cfg, cfg.watchdog, cfg.runtime
        self.manager, self.alerter = manager, alerter
        self.checker = BotChecker(self.paths, self.wcfg, manager.current_pid, manager.bot_command())
        self.killswitch = KillSwitch(self.paths.kill_file)
        self.stop_event = threading.Event()
        self.state = WatchdogState(pid=os.getpid(), manager=manager.name,
                                   restart_budget=self.wcfg.restart_budget,
                                   restart_window_s=self.wcfg.restart_window_s)
        self.resumed = load_state(self.paths.watchdog_state, self.state)
        self.budget = RestartBudget(self.wcfg.restart_budget, self.wcfg.restart_window_s,
                                    list(self.state.restarts), self.state.restart_streak)
        self._lock = threading.Lock()
        self._restart: _Restart | None = None
        self._emergency_job: _Job | None = None
        self._retry_at: float | None = None  # when a failed (not refused) flatten runs again
        self._verify_job: _Job | None = None
        self._kill_seen: str | None = None
        self._kill_since: float | None = None
        self._flatten_verified = False
        self._unhealthy_since: float | None = None
        self._unhealthy_alerted = False
        self.attention = AttentionWatch(self.paths.heartbeat, alerter)
        self.summary = DailySummary(cfg, alerter)
        self._store_fault: str | None = None  # the bot said state.db cannot commit
        self._saved_at = 0.0
        self._save_error: str | None = None
        self._saved_key: tuple = ()
        self._snapshot: dict[str, Any] = {}
        self._durable = False
        self.state.since = time.time()
        self.notifier = Notifier()  # systemd: READY=1 once watching, WATCHDOG=1 every check

    # --- public -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The current watchdog.json content (thread-safe; for the health endpoint)."""
        with self._lock:
            return dict(self._snapshot) if self._snapshot else self._publish(time.time())

    def begin(self) -> None:
        """Before the first check: resume an interrupted emergency, or start the bot when the
        watchdog owns it (standalone) and nothing runs."""
        now = time.time()
        em = self.state.emergency
        if em.state in ("running", "failed"):
            log.warning("emergency left %s by the previous watchdog: running it again (%s)",
                        em.state, em.reason)
            self._relaunch_emergency()
        elif em.state == "none" and self.manager.name == "standalone" \
                and not self.manager.is_running():
            self._start_bot(now, "first start")
        kill = self.killswitch.check()  # engaged before this watchdog started: no new alert
        self._kill_seen, self._kill_since = (kill.mode, now) if kill else (None, None)
        info = read_pidfile(self.paths.pidfile)
        recorder.record("watchdog.start", SOURCE, "watchdog started", manager=self.manager.name,
                        bot_pid=info.pid if info else None, bot_running=self.manager.is_running(),
                        restarts_in_window=len(self.budget.restarts))

    def step(self, now: float | None = None) -> Verdict:
        """One check: observe, judge, act, publish."""
        now = time.time() if now is None else now
        self.manager.poll()
        kill = self.killswitch.check()
        self._note_kill(kill, now)
        v = self.checker.check(now)
        self._note_store_fault(v)
        if self.state.emergency.state != "none":
            reported = self._during_emergency(v, kill, now)
        elif kill is not None and kill.mode == "flatten" and self._flatten_due(v, now):
            reported = self._verdict("emergency", v)
        elif kill is not None and kill.mode == "flatten" and v.fault and self._restart is None \
                and not self._flatten_verified:
            reported = v  # no restart: at the deadline the watchdog flattens in its place
        elif self._restart is not None:
            reported = self._during_restart(v, now)
        else:
            reported = self._watching(v, now)
        self._set_verdict(reported, now)
        self._alert_if_unhealthy(now)
        self.attention.observe()
        self.summary.observe(now)
        self._save_if_due(now)
        return reported

    def run(self) -> int:
        """Check every ``interval_s`` until :attr:`stop_event` is set; returns the exit code."""
        self.begin()
        self.notifier.ready(f"watching the bot through {self.manager.name}")
        interval = self.wcfg.interval_s
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - one failed check must not end supervision
                log.exception("check failed: %s", e)
                recorder.record("watchdog.error", SOURCE, f"check failed: {e}", severity="error")
            # A loop that stops coming here (hung check, SIGSTOP) is replaced by WatchdogSec.
            self.notifier.tick(f"bot: {self.state.verdict}")
            self.stop_event.wait(max(0.0, interval - (time.monotonic() - t0)))
        self.notifier.stopping()
        self.shutdown()
        self.notifier.close()
        return 0

    def shutdown(self) -> None:
        """Leave the bot running; let an emergency reach a safe point; persist the state."""
        for job in (self._emergency_job, self._verify_job):
            if job is not None:
                job.thread.join(SHUTDOWN_JOIN_S)
        with self._lock:
            self._publish(time.time())
            save_state(self.paths.watchdog_state, self.state, durable=True)
        recorder.record("watchdog.stop", SOURCE, "watchdog stopped (the bot keeps running)",
                        bot_pid=self.state.bot_pid)
        log.info("watchdog stopped; the bot was left as it was (pid %s)", self.state.bot_pid)

    # --- phases -------------------------------------------------------------------------
    def _watching(self, v: Verdict, now: float) -> Verdict:
        if not v.fault:
            return v
        self._set_verdict(v, now)  # the fault itself is on record before the remedy
        if self.budget.spent(now):
            self._budget_spent(v, now)
            return self._verdict("emergency", v)
        self._restart = _Restart(fault=v, old_pid=v.pid, due=now + self.budget.backoff_s())
        return self._during_restart(v, now)

    def _during_restart(self, v: Verdict, now: float) -> Verdict:
        r = self._restart
        assert r is not None
        if r.issued_at is None:
            if v.name == "healthy" and v.pid != r.old_pid:
                self._restart = None  # someone else brought a new bot up meanwhile
                return v
            if now < r.due:
                return self._verdict(r.verdict, v, backoff_until=round(r.due, 3))
            self._issue(r, v, now)
            return self._verdict(r.verdict, v, how=r.how)
        new_bot = v.pid is not None and v.pid != r.old_pid
        if new_bot and v.name == "healthy" and self.checker.progressed:
            self._restarted(r, v, now)
            return v
        if new_bot and v.name == "stopped":  # someone stopped the new bot on purpose
            log.info("the new bot (pid %s) was stopped gracefully; not restarting it", v.pid)
            self._restart = None
            return v
        if (new_bot and v.fault) or (not new_bot and not self.manager.is_running()):
            self._set_verdict(v if v.fault else Verdict("crashed", v.pid, v.evidence), now)
            self._restart_failed(r, v, now)
            return self._verdict("emergency" if self.state.emergency.state != "none"
                                 else "restarting", v)
        if now > r.deadline:
            self._restart = None
            self._begin_emergency(f"the bot did not come back healthy within startup_timeout_s="
                                  f"{self.wcfg.startup_timeout_s} after a restart "
                                  f"(last verdict: {v.name})", now)
            return self._verdict("emergency", v)
        return self._verdict(r.verdict, v, how=r.how)

    def _issue(self, r: _Restart, v: Verdict, now: float) -> None:
        if r.counted:
            self.budget.record(now)
            self.state.restarts_total += 1
        info = read_pidfile(self.paths.pidfile)
        try:
            if r.fault is None:
                self.manager.start()
                r.how = "started"
            else:
                r.how = self.manager.restart(info if info and info.pid == r.old_pid else None)
        except TradeguardError as e:
            r.how = f"failed: {e}"
            log.error("restart through %s failed: %s", self.manager.name, e)
        r.issued_at, r.deadline = time.time(), time.time() + self.wcfg.startup_timeout_s
        fault = r.fault.name if r.fault else "none"
        msg = f"restarting the bot ({fault}): {r.how}" if r.fault else f"starting the bot: {r.how}"
        log.warning(msg)
        recorder.record(r.kind, SOURCE, msg, severity="warning", critical=True,
                        fault=fault, evidence=r.fault.evidence if r.fault else {},
                        old_pid=r.old_pid, how=r.how, counted=r.counted,
                        budget_left=self.budget.left(now), manager=self.manager.name)
        if r.counted:
            self.alerter.send("restart", msg, fault=fault, old_pid=r.old_pid,
                              budget_left=self.budget.left(now), manager=self.manager.name)
        self._durable = True

    def _restarted(self, r: _Restart, v: Verdict, now: float) -> None:
        took = now - (r.issued_at or now)
        self._restart = None
        self.budget.healthy()
        log.info("the bot is healthy (pid %s) %.2fs after the %s", v.pid, took,
                 "restart" if r.fault else "start")
        recorder.record(r.kind, SOURCE, f"bot healthy (pid {v.pid})",
                        outcome="healthy", pid=v.pid, old_pid=r.old_pid,
                        seconds_to_healthy=round(took, 3), critical=True)

    def _restart_failed(self, r: _Restart, v: Verdict, now: float) -> None:
        reason = v.evidence.get("reason", v.name)
        log.warning("the restarted bot failed again (%s: %s)", v.name, reason)
        recorder.record("watchdog.restart", SOURCE, f"restarted bot failed: {reason}",
                        severity="warning", outcome="failed", verdict=v.name, evidence=v.evidence)
        self._restart = None
        if self.budget.spent(now):
            self._budget_spent(v, now)
        else:
            fault = v if v.fault else Verdict("crashed", v.pid, v.evidence)
            self._restart = _Restart(fault=fault, old_pid=v.pid, due=now + self.budget.backoff_s())

    def _budget_spent(self, v: Verdict, now: float) -> None:
        msg = (f"restart budget spent ({self.wcfg.restart_budget} restarts in "
               f"{self.wcfg.restart_window_s:g}s); the bot is {v.name}: "
               f"{v.evidence.get('reason', '')}").rstrip(": ")
        self.alerter.send("budget_spent", msg, verdict=v.name, restarts=len(self.budget.restarts))
        self._begin_emergency(msg, now)

    def _start_bot(self, now: float, why: str) -> None:
        info = read_pidfile(self.paths.pidfile)
        self._restart = _Restart(fault=None, old_pid=info.pid if info else None, due=now,
                                 counted=False)
        log.info("starting the bot (%s)", why)

    # --- kill switch and emergency --------------------------------------------------------
    def _note_kill(self, kill: Any, now: float) -> None:
        mode = kill.mode if kill is not None else None
        if mode != self._kill_seen:
            if mode is not None:
                self.alerter.send("kill_engaged", f"kill switch engaged ({mode}): {kill.reason}",
                                  mode=mode, reason=kill.reason, source=kill.source)
            self._kill_seen, self._kill_since = mode, (now if mode else None)
            self._flatten_verified = False
            # a check still running (or unread) belongs to the episode that just ended: its
            # answer says nothing about this one (its thread only reads; left to finish alone)
            self._verify_job = None

    def _flatten_due(self, v: Verdict, now: float) -> bool:
        """A person's flatten kill switch: the watchdog takes over when the bot cannot do it."""
        job = self._verify_job
        if job is not None and job.done():
            self._verify_job = None
            left = job.result[0] if job.result else "the check failed"
            if left:
                self._begin_emergency("kill switch (flatten): the bot did not flatten within "
                                      f"flatten_deadline_s={self.wcfg.flatten_deadline_s}: {left}",
                                      now)
                return True
            self._flatten_verified = True
        if self._flatten_verified or job is not None:
            return False
        if self._kill_since is None or now - self._kill_since < self.wcfg.flatten_deadline_s:
            return False
        if v.name != "healthy":
            self._begin_emergency(f"kill switch (flatten) engaged and the bot is {v.name}: "
                                  f"{v.evidence.get('reason', '')}".rstrip(": "), now)
            return True
        self._verify_job = self._spawn("verify-flatten", pending_flatten, self.cfg)
        return False

    def _during_emergency(self, v: Verdict, kill: Any, now: float) -> Verdict:
        em = self.state.emergency
        if em.state == "running":
            return self._verdict("emergency", v)
        if kill is None:  # `tradeguard resume`: a person took responsibility again
            self._resume(now)
            return self._watching(v, now) if self._restart is None else self._verdict("starting", v)
        if em.state == "failed" and self._retry_at is not None and now >= self._retry_at:
            self._relaunch_emergency()
            return self._verdict("emergency", v)
        return v if v.name in ("healthy", "starting") else self._verdict("emergency", v)

    def _begin_emergency(self, reason: str, now: float) -> None:
        self._restart = None
        with self._lock:
            self.state.emergency = EmergencyState("running", started_at=now, reason=reason)
            self.state.emergency_actions_total += 1
        log.critical("EMERGENCY: %s", reason)
        recorder.record("emergency.started", SOURCE, reason, severity="critical", critical=True)
        self.alerter.send("emergency_started", reason, reason=reason)
        self._launch_emergency(reason)
        self._durable = True
        self._save_if_due(now, force=True)

    def _launch_emergency(self, reason: str) -> None:
        self._emergency_job = self._spawn("emergency", self._emergency, reason)

    def _relaunch_emergency(self) -> None:
        """Run an unfinished or failed emergency again (it is idempotent)."""
        self._retry_at = None
        with self._lock:
            em = self.state.emergency
            em.state, em.finished_at = "running", None
            self.state.emergency_actions_total += 1
            self._durable = True
        recorder.record("emergency.retry", SOURCE,
                        f"running the emergency flatten again: {em.reason}",
                        severity="critical", critical=True)
        self._launch_emergency(em.reason or "emergency (resumed)")

    def _emergency(self, reason: str) -> FlattenResult:
        """Worker thread: kill switch, stop the bot, flatten; then publish the outcome."""
        killswitch = KillSwitch(self.paths.kill_file)  # its own: the main thread keeps checking
        current = killswitch.check()
        if current is None or current.mode != "flatten" or current.by != SOURCE:
            # Marked as the watchdog's: a bot still alive leaves the selling to it (never two
            # sellers) — also when a person engaged the flatten and the watchdog takes it over.
            taken = (f" (taking over the flatten engaged by {current.by}: {current.reason})"
                     if current is not None and current.mode == "flatten" else "")
            killswitch.engage("flatten", f"{reason}{taken}"[:500], by=SOURCE, take_over=True)
        try:
            # returns only once the bot is proven dead (never two sellers)
            how = self.manager.stop()
        except TradeguardError as e:
            log.error("could not prove the bot dead through %s: %s", self.manager.name, e)
            recorder.record("emergency.bot_stop_failed", SOURCE, str(e), severity="error",
                            critical=True)
            # Nothing is sold while the bot may still run; the emergency is retried after
            # emergency_timeout_s (the stop first).
            result = FlattenResult.failed(f"the bot could not be proven dead: {e}", reason)
            self._emergency_finished(result)
            return result
        recorder.record("emergency.bot_stopped", SOURCE, f"bot stopped: {how}",
                        critical=True, manager=self.manager.name)
        result = flatten(self.cfg, reason, stop=self.stop_event, bot_stopped=True)
        self._emergency_finished(result)
        return result

    def _emergency_finished(self, result: FlattenResult) -> None:
        if result.state == "aborted":
            log.warning("emergency interrupted by shutdown; the next watchdog resumes it")
            return
        now = time.time()
        with self._lock:
            em = self.state.emergency
            em.state, em.finished_at = result.state, now
            em.orders, em.detail = len(result.orders), result.summary()
            self._durable = True
        if result.state == "failed" and not result.refused:
            self._retry_at = now + self.wcfg.emergency_timeout_s
        event = "emergency_finished" if result.state == "done" else "emergency_failed"
        self.alerter.send(event, f"emergency flatten {result.state}: {result.summary()}",
                          reason=em.reason, orders=len(result.orders), sold=result.sold,
                          remaining=result.remaining)
        log.log(logging.CRITICAL if result.state != "done" else logging.WARNING,
                "emergency flatten %s: %s", result.state, result.summary())

    def _resume(self, now: float) -> None:
        log.warning("kill switch released after the emergency: resuming supervision")
        recorder.record("watchdog.resume", SOURCE, "kill switch released; supervision resumes "
                        "with a fresh restart budget", critical=True)
        with self._lock:
            self.state.emergency = EmergencyState()
        self.budget.reset()
        self._durable = True
        if not self.manager.is_running():
            self._start_bot(now, "kill switch released after an emergency")

    def _spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> _Job:
        result: list[Any] = []

        def target() -> None:
            try:
                result.append(fn(*args))
            except Exception as e:  # noqa: BLE001 - reported, never silently lost
                log.exception("%s failed: %s", name, e)
                recorder.record(f"watchdog.{name}_error", SOURCE, str(e), severity="error",
                                critical=True)
                if name == "emergency":
                    self._emergency_finished(FlattenResult.failed(f"{type(e).__name__}: {e}"))

        job = _Job(threading.Thread(target=target, name=f"watchdog-{name}", daemon=True), result)
        job.thread.start()
        return job

    # --- reporting ----------------------------------------------------------------------
    def _verdict(self, name: str, observed: Verdict, **extra: Any) -> Verdict:
        ev = dict(observed.evidence, observed=observed.name, **extra)
        if self._restart is not None and self._restart.fault is not None:
            ev["fault"] = self._restart.fault.name
        if name == "emergency":
            ev["emergency"] = self.state.emergency.reason
        return Verdict(name, observed.pid, ev)

    def _set_verdict(self, v: Verdict, now: float) -> None:
        with self._lock:
            st = self.state
            if v.name != st.verdict:
                st.verdict_counts[v.name] = st.verdict_counts.get(v.name, 0) + 1
                sev = "warning" if v.fault or v.name in ("restarting", "emergency") else "info"
                log.log(logging.WARNING if sev == "warning" else logging.INFO,
                        "verdict: %s (was %s) %s", v.name, st.verdict, v.evidence)
                recorder.record("watchdog.verdict", SOURCE, f"bot {v.name}", severity=sev,
                                verdict=v.name, previous=st.verdict, pid=v.pid,
                                evidence=v.evidence)
                st.verdict, st.since = v.name, now
            st.evidence = v.evidence
            if v.pid is not None:
                st.bot_pid = v.pid

    def _note_store_fault(self, v: Verdict) -> None:
        """The bot's heartbeat says state.db cannot commit (disk full...): it is in ``safe`` and
        sends nothing; a person must make room. Alert once per episode."""
        hb = self.checker.heartbeat
        fault = hb.detail.get("store_fault") if hb is not None and hb.pid == v.pid else None
        fault = str(fault)[:300] if fault else None
        if fault and not self._store_fault:
            msg = f"the bot is in safe mode: {fault}"
            log.critical(msg)
            recorder.record("watchdog.bot_store_fault", SOURCE, msg, severity="critical",
                            critical=True, pid=v.pid)
            self.alerter.send("bot_safe", msg, pid=v.pid, reason=fault)
        elif self._store_fault and not fault and hb is not None and hb.pid == v.pid:
            recorder.record("watchdog.bot_store_recovered", SOURCE, "the bot's state.db takes "
                            "writes again", severity="warning", pid=v.pid)
        if hb is not None and hb.pid == v.pid:
            self._store_fault = fault

    def _alert_if_unhealthy(self, now: float) -> None:
        st = self.state
        if st.verdict in ("healthy", "starting", "emergency"):
            self._unhealthy_since, self._unhealthy_alerted = None, False
            return
        self._unhealthy_since = self._unhealthy_since or now
        if not self._unhealthy_alerted and now - self._unhealthy_since >= self.wcfg.unhealthy_alert_s:
            self._unhealthy_alerted = True
            self.alerter.send("unhealthy", f"the bot has been unhealthy for "
                              f"{now - self._unhealthy_since:.0f}s ({st.verdict})",
                              verdict=st.verdict, evidence=st.evidence)

    def _publish(self, now: float) -> dict[str, Any]:
        st = self.state
        st.ts, st.pid = now, os.getpid()
        st.restarts, st.restart_streak = list(self.budget.restarts), self.budget.streak
        st.budget_left = self.budget.left(now)
        self._snapshot = st.to_dict()
        return dict(self._snapshot)

    def _save_if_due(self, now: float, force: bool = False) -> None:
        with self._lock:
            st = self.state
            key = (st.verdict, st.bot_pid, len(self.budget.restarts), self.budget.streak,
                   st.emergency.state, st.restarts_total)
            self._publish(now)
            due = now - self._saved_at >= STATE_REFRESH_S
            if force or due or key != self._saved_key or self._durable:
                try:
                    save_state(self.paths.watchdog_state, st, durable=self._durable)
                except OSError as e:  # disk full: supervision goes on; retried next check
                    if self._save_error != str(e):
                        self._save_error = str(e)
                        log.error("watchdog.json not saved: %s", e)
                        recorder.record("watchdog.state_not_saved", SOURCE, str(e),
                                        severity="error")
                    return
                self._save_error = None
                self._saved_at, self._saved_key, self._durable = now, key, False


def run_watchdog(cfg: Config) -> int:
    """The ``tradeguard watchdog`` process: supervise until SIGTERM/SIGINT; returns 0."""
    from blackbox import crashdump
    from watchdog.alerts import Alerter

    paths = cfg.runtime.ensure()
    lock = _single_instance(paths.data_dir / "watchdog.lock")
    recorder.init(paths, "watchdog", cfg.blackbox)
    crashdump.install(paths, "watchdog", cfg.to_dict())
    manager = make_manager(cfg)
    alerter = Alerter(cfg.alerts, secrets_paths=paths)
    wd = Watchdog(cfg, manager, alerter)

    signalled: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signal.Signals(signum).name)
        log.info("received %s: stopping", signalled[-1])
        wd.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    health = _start_health(cfg, wd)
    log.info("watching the bot every %.2fs through %s (state from %s: %s)", cfg.watchdog.interval_s,
             manager.name, paths.watchdog_state, "loaded" if wd.resumed else "new")
    try:
        return wd.run()
    finally:
        if signalled:  # the record of a signal-triggered shutdown, taken after the loop ended
            crashdump.dump(signalled[0].lower())
        if health is not None:
            health.stop()
        alerter.stop()
        lock.close()


def _single_instance(path: Path) -> ProcessLock:
    """Hold an exclusive lock for the process's life: two watchdogs would both restart the bot.
    The kernel drops it when the process dies, however it dies."""
    return hold_lock(path.parent, "watchdog", "watchdog")


def _start_health(cfg: Config, wd: Watchdog) -> Any:
    if not cfg.health.enabled:
        return None
    from watchdog.health.server import start_health_server
    from watchdog.health.snapshot import build_snapshot

    try:
        server = start_health_server(cfg, lambda: build_snapshot(cfg, wd.state_dict()))
    except OSError as e:
        # Supervising the bot matters more than the status page: keep watching, say so loudly.
        log.error("health endpoint not started on %s:%s: %s", cfg.health.host, cfg.health.port, e)
        recorder.record("watchdog.health_failed", SOURCE, str(e), severity="error")
        return None
    log.info("health endpoint on %s", server.url)
    return server
