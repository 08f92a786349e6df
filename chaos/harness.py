"""Runs scenarios against a live system, checks the invariants after each injection, and
collects the outcomes for the report."""
from __future__ import annotations

import os
import random
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from chaos import invariants
from chaos.invariants import CheckInput, Violation, Window
from chaos.base import Ctx, Injection, Scenario
from chaos.scenarios import SCENARIOS
from chaos.system import System, poll

QUIESCE_TIMEOUT = 30.0


@dataclass
class Outcome:
    scenario: str
    iteration: int
    seed: str
    mode: str                      # "watchdog" or "baseline"
    injected_at: float
    recovered: bool
    recovery_s: float | None
    violations: list[dict] = field(default_factory=list)
    note: str = ""
    blackbox: list[dict] = field(default_factory=list)  # excerpt kept for failures
    took_s: float | None = None  # wall time of the whole injection, its own system's start included

    @property
    def failed(self) -> bool:
        return self.mode == "watchdog" and (bool(self.violations) or not self.recovered)


def blackbox_events(system: System, since: float, limit: int = 200) -> list[dict]:
    """Events recorded since ``since`` (read-only; empty if the black box is unavailable)."""
    from blackbox.reader import query_events

    try:
        return query_events(system.paths.blackbox_db, since=since, limit=limit)
    except (OSError, sqlite3.Error, ValueError):
        return []


def _release(system: System) -> None:
    from resilience.killswitch import KillSwitch

    KillSwitch(system.paths.kill_file).release(by="chaos")


def quiesce(system: System) -> Window | None:
    """Halt the bot with the kill switch and wait until it has settled and reconciled, so the
    exchange and state.db can be compared exactly. Returns the halt window (still open)."""
    from resilience.killswitch import KillSwitch

    t0 = time.time()
    KillSwitch(system.paths.kill_file).engage("halt", "chaos: invariant check", by="chaos")

    def settled() -> bool:
        hb = system.heartbeat()
        last = (hb.detail.get("last_reconcile") or 0) if hb else 0
        return bool(hb and hb.state == "safe" and last > t0 + 0.2 and hb.ts > last)

    if not poll(settled, QUIESCE_TIMEOUT):
        return None
    return Window(t0, None, "halt")


def check_system(system: System, kill_windows: list[Window], flattened: bool,
                 state_lost_at: float | None = None) -> list[Violation]:
    cfg = system.cfg
    inp = CheckInput(ledger=system.ledger(), balances=system.balances(),
                     state_db=system.paths.state_db, bot_id=cfg.bot.bot_id,
                     start_balances=dict(cfg.paper.start_balances),
                     max_position=dict(cfg.risk.max_position),
                     max_orders_per_minute=cfg.risk.max_orders_per_minute,
                     kill_windows=kill_windows, flattened=flattened, owner=dict(system.owner),
                     state_lost_at=state_lost_at)
    return invariants.check(inp)


def run_one(system: System, scenario: Scenario, iteration: int, seed: int, mode: str,
            quick: bool) -> Outcome:
    label = f"{seed}:{scenario.name}:{iteration}"
    rng = random.Random(label)
    ctx = Ctx(system=system, rng=rng, quick=quick)
    try:
        inj: Injection = scenario.run(ctx)
    except Exception as e:  # noqa: BLE001 - a scenario that cannot run is a failure to report
        return Outcome(scenario.name, iteration, label, mode, time.time(), False, None,
                       [asdict(Violation("scenario-ran", f"{type(e).__name__}: {e}"))])
    recovered = inj.recovered_at is not None
    rec_s = round(inj.recovered_at - inj.injected_at, 3) if recovered else None
    out = Outcome(scenario.name, iteration, label, mode, inj.injected_at, recovered, rec_s,
                  note=inj.note)
    if mode == "baseline":
        return out
    # what the scenario itself saw break while the fault was on (checked at that moment)
    out.violations += [asdict(v) for v in inj.violations]
    windows = list(inj.kill_windows)
    if not inj.flattened:
        halt = quiesce(system)
        if halt is None:
            out.violations.append(asdict(Violation("settles", "the bot did not settle and "
                                                   "reconcile within the deadline")))
        else:
            windows.append(halt)
    violations = check_system(system, windows, inj.flattened, inj.state_lost_at)
    events = blackbox_events(system, inj.injected_at - 1.0)
    missing = invariants.explained(events, inj.expect_kinds)
    if missing:
        violations.append(Violation("blackbox-explains", f"no event of kind {missing} recorded"))
    out.violations += [asdict(v) for v in violations]
    if out.failed:
        out.blackbox = events[-60:]
    if not inj.flattened:
        released = time.time()
        _release(system)
        poll(lambda: system.healthy_heartbeat(newer_than=released), 20)
    return out


def run(names: Iterable[str], iterations: int, seed: int, workdir: Path | None,
        keep: bool, baseline: bool, quick: bool,
        on_outcome: Callable[[Outcome, int, int], None] = lambda o, i, n: None) -> list[Outcome]:
    """Run every named scenario ``iterations`` times; return all outcomes."""
    chosen = [SCENARIOS[n] for n in names]
    plan: list[tuple[str, Scenario, int]] = [("watchdog", s, i) for s in chosen
                                             for i in range(iterations)]
    if baseline:
        plan += [("baseline", s, i) for s in chosen if s.baseline for i in range(iterations)]
    outcomes: list[Outcome] = []
    shared: dict[str, System] = {}
    systems: list[System] = []

    def system_for(mode: str, scenario: Scenario) -> System:
        if scenario.own_system:
            kw = {"restart_budget": 2, **scenario.system}
            s = System.create(workdir, seed, watchdog=mode == "watchdog", **kw)
            systems.append(s)
            if scenario.prepare:
                scenario.prepare(s)
            s.start()
            return s
        s = shared.get(mode)
        if s is not None and not poll(lambda: s.healthy_heartbeat(), 15):
            s.stop()  # broken beyond repair by the last scenario: start a fresh one
            s = None
        if s is None:
            s = System.create(workdir, seed, watchdog=mode == "watchdog")
            systems.append(s)
            s.start()
            shared[mode] = s
        return s

    try:
        for n, (mode, scenario, i) in enumerate(plan, 1):
            began = time.monotonic()
            try:
                if scenario.needs_root and os.geteuid() != 0:
                    raise RuntimeError("this scenario mounts a tmpfs data dir: run it as root")
                system = system_for(mode, scenario)
            except RuntimeError as e:
                o = Outcome(scenario.name, i, f"{seed}:{scenario.name}:{i}", mode, time.time(),
                            False, None, [asdict(Violation("system-starts", str(e)))])
            else:
                o = run_one(system, scenario, i, seed, mode, quick)
                if scenario.own_system:
                    system.stop()
            o.took_s = round(time.monotonic() - began, 1)
            outcomes.append(o)
            on_outcome(o, n, len(plan))
    finally:
        for s in systems:
            s.stop()
            if not keep:
                s.cleanup()
    return outcomes
