"""What every scenario is made of: the injection record, the context, the registry entry, and
the helpers that inject a fault and wait for the system to come back."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from chaos.invariants import Violation, Window
from chaos.system import System, poll


@dataclass
class Injection:
    injected_at: float
    recovered_at: float | None
    expect_kinds: list[str] = field(default_factory=list)
    kill_windows: list[Window] = field(default_factory=list)
    flattened: bool = False
    note: str = ""
    # broken promises the scenario saw while the fault was on (the harness adds its own checks)
    violations: list[Violation] = field(default_factory=list)
    state_lost_at: float | None = None  # the scenario destroyed state.db at this moment


@dataclass
class Ctx:
    system: System
    rng: random.Random
    quick: bool  # smoke mode: shorter waits

    def trade_for(self, lo: float, hi: float) -> None:
        """Let the bot trade for a random while (seeded) before the fault."""
        let_run(self.rng.uniform(lo, hi) * (0.5 if self.quick else 1.0))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: Callable[[Ctx], Injection]
    baseline: bool = False       # also meaningful against plain supervisord
    own_system: bool = False     # needs a fresh system (it ends in an emergency)
    system: dict[str, Any] = field(default_factory=dict)  # System settings for its own system
    needs_root: bool = False     # mounts a filesystem: cannot run as an ordinary user
    prepare: Callable[[System], None] | None = None  # on its own system, before it starts


RECOVERY_TIMEOUT = 30.0


def let_run(seconds: float) -> None:
    """Let the system run for ``seconds`` (the bot keeps trading; this picks the moment)."""
    time.sleep(max(0.0, seconds))


def recovered_after(system: System, t0: float, *, pid_not: int | None = None,
                    timeout: float = RECOVERY_TIMEOUT) -> float | None:
    """Time a healthy running heartbeat (from a new pid if given) appeared after ``t0``."""
    hb = poll(lambda: system.healthy_heartbeat(newer_than=t0, pid_not=pid_not), timeout)
    if hb is None:
        return None
    base = hb.seq
    # progress, not just a fresh file: seq must advance
    ok = poll(lambda: (h := system.healthy_heartbeat(newer_than=t0)) and h.seq > base and h, 10)
    return time.time() if ok else None


def kill_bot(system: System, sig: int) -> tuple[int, float]:
    pid = system.bot_pid()
    if pid is None:
        raise RuntimeError("no bot pid")
    t0 = time.time()
    os.kill(pid, sig)
    return pid, t0


def kill_at(s: System) -> float:
    """When the kill switch was engaged, as the kill file says."""
    return float(json.loads(s.paths.kill_file.read_text()).get("at", time.time()))


def kill_state(s: System) -> str | None:
    """The kill switch's mode, or None when it is released."""
    try:
        return json.loads(s.paths.kill_file.read_text())["mode"]
    except (OSError, ValueError, KeyError):
        return None


def emergency(s: System) -> dict:
    """The watchdog's emergency record from its state file ({} when unreadable)."""
    try:
        return json.loads(s.paths.watchdog_state.read_text()).get("emergency") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def emergency_done(s: System) -> bool:
    return emergency(s).get("state") == "done"


def tg(s: System, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tradeguard", *args, "--data-dir",
                           str(s.paths.data_dir), "--logs-dir", str(s.paths.logs_dir)],
                          capture_output=True, text=True, timeout=30, env={
                              k: v for k, v in os.environ.items()
                              if not k.startswith("TRADEGUARD_")})


def flat(s: System) -> bool:
    """The bot holds nothing above dust: the account is back to the owner's own coins."""
    from chaos.invariants import DUST

    bal = s.balances()
    start = s.cfg.paper.start_balances
    return all(float((bal.get(a) or {}).get("total", 0) if isinstance(bal.get(a), dict)
                     else bal.get(a) or 0) - float(start.get(a, 0)) - s.owner.get(a, 0.0) <= d
               for a, d in DUST.items())


def failpoints_consumed(s: System) -> bool:
    """Every one-shot failpoint armed in data/FAILPOINTS has fired."""
    p = s.paths.data_dir / "FAILPOINTS"
    return not p.exists() or not p.read_text().strip()
