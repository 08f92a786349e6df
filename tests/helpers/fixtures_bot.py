"""A real bot child process for tests: ``BotProcess`` and the ``bot_factory`` fixture.

``bot_factory(**options)`` starts ``tradeguard bot`` against the ``paper_exchange`` fixture, in the
same data dir (the bot finds the paper credentials there), with a fast loop. Tests (bot, watchdog,
health, chaos) drive it with real signals and read its files:

    bot = bot_factory(strategy_params={"interval_s": 0.3})
    bot.wait_state("running")
    bot.wait_ticks(5)
    bot.kill(signal.SIGKILL)
    bot.start()                      # same data dir: recovery runs
    assert bot.state_reader().duplicate_client_ids() == []
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.proc import spawn, stop, tradeguard_cmd, wait_until
from tradeguard.heartbeat import Heartbeat, read_heartbeat
from tradeguard.paths import RuntimePaths

# Fast but realistic: a tick every 0.2 s, short exchange timeouts, quick breakers.
FAST_ENV = {
    "TRADEGUARD_BOT_LOOP_INTERVAL_S": "0.2",
    "TRADEGUARD_BOT_TICK_DEADLINE_S": "1",
    "TRADEGUARD_BOT_RECONCILE_INTERVAL_S": "2",
    "TRADEGUARD_BOT_UNKNOWN_GRACE_S": "1",
    "TRADEGUARD_EXCHANGE_TIMEOUT_MS": "1000",
    "TRADEGUARD_EXCHANGE_RECV_WINDOW_MS": "2000",
    "TRADEGUARD_RESILIENCE_BREAKER_FAIL_MAX": "3",
    "TRADEGUARD_RESILIENCE_BREAKER_RESET_S": "1",
    "TRADEGUARD_RESILIENCE_MAX_ATTEMPTS": "2",
    "TRADEGUARD_RESILIENCE_BACKOFF_BASE_S": "0.05",
    "TRADEGUARD_RESILIENCE_BACKOFF_MAX_S": "0.3",
    "TRADEGUARD_RESILIENCE_RATE_LIMIT_BACKOFF_S": "0.1",
    "TRADEGUARD_BOT_STATE_SYNCHRONOUS": "NORMAL",
}
FAST_STRATEGY = {"interval_s": 0.4}


class StateReader:
    """Read-only view of a bot's state.db (plain columns only: no key needed)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args)]
        finally:
            con.close()

    def orders(self, state: str | None = None) -> list[dict[str, Any]]:
        cols = ("client_order_id, seq, origin, purpose, symbol, side, type, amount, price, state, "
                "filled, exchange_order_id, attempts, created_at, updated_at")
        if state:
            return self._rows(f"SELECT {cols} FROM orders WHERE state = ? ORDER BY seq", (state,))
        return self._rows(f"SELECT {cols} FROM orders ORDER BY seq")

    def fills(self) -> list[dict[str, Any]]:
        return self._rows("SELECT fill_id, client_order_id, exchange_order_id, symbol, side, amount, "
                          "price, fee, fee_currency, ts FROM fills ORDER BY ts")

    def positions(self) -> dict[str, float]:
        return {r["symbol"]: float(r["amount"]) for r in self._rows("SELECT symbol, amount FROM positions")}

    def sequence(self, name: str = "orders") -> int:
        rows = self._rows("SELECT value FROM sequences WHERE name = ?", (name,))
        return int(rows[0]["value"]) if rows else 0

    def transitions(self, client_order_id: str) -> list[tuple[str | None, str]]:
        return [(r["from_state"], r["to_state"]) for r in self._rows(
            "SELECT from_state, to_state FROM transitions WHERE client_order_id = ? ORDER BY id",
            (client_order_id,))]


LEDGER_TO_STATE = {"NEW": "OPEN", "PARTIALLY_FILLED": "OPEN", "FILLED": "FILLED", "CANCELED": "CANCELED",
                   "EXPIRED": "CANCELED", "REJECTED": "REJECTED"}


def consistency_problems(reader: StateReader, paper: Any, prefix: str = "tg-tg1-",
                         symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT")) -> list[str]:
    """What breaks the order-lifecycle invariants between state.db and the paper exchange:
    a client order id with two orders, an order of ours or a fill missing from state.db, a
    final state that differs, a position that differs from the exchange balance."""
    problems: list[str] = []
    ledger = paper.ledger()
    ours = [o for o in ledger["orders"] if str(o["clientOrderId"]).startswith(prefix)]
    cids = [o["clientOrderId"] for o in ours]
    problems += [f"client order id {c} has {cids.count(c)} orders" for c in sorted(set(cids))
                 if cids.count(c) > 1]
    local = {o["client_order_id"]: o for o in reader.orders()}
    for o in ours:
        mine = local.get(o["clientOrderId"])
        if mine is None:
            problems.append(f"order {o['clientOrderId']} ({o['status']}) is missing from state.db")
        elif LEDGER_TO_STATE.get(o["status"]) != mine["state"] and mine["state"] != "UNKNOWN":
            problems.append(f"order {o['clientOrderId']}: exchange {o['status']}, state.db {mine['state']}")
    fills = {(f["fill_id"], f["symbol"].replace("/", "")) for f in reader.fills()}
    for f in ledger["fills"]:
        if str(f["clientOrderId"]).startswith(prefix) and (str(f["id"]), f["symbol"]) not in fills:
            problems.append(f"fill {f['id']} of {f['clientOrderId']} is missing from state.db")
    balances = paper.balances()
    positions = reader.positions()
    for symbol in symbols:
        base = symbol.split("/")[0]
        have = float(balances.get(base, {}).get("total", 0))
        mine = positions.get(symbol, 0.0)
        if abs(have - mine) > 1e-9:
            problems.append(f"{symbol}: state.db position {mine:.8f} != exchange balance {have:.8f}")
    return problems


@dataclass
class BotProcess:
    """One ``tradeguard bot`` child; ``start()`` again after a kill to restart it on the same data."""

    config_file: Path
    data_dir: Path
    logs_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    paper: Any = None  # the PaperExchange it trades on, when started by bot_factory

    @property
    def paths(self) -> RuntimePaths:
        return RuntimePaths(self.data_dir, self.logs_dir)

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "bot.out"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return tradeguard_cmd("bot", "--config", str(self.config_file), "--data-dir", str(self.data_dir),
                              "--logs-dir", str(self.logs_dir))

    def start(self, env: dict[str, str] | None = None) -> "BotProcess":
        """Start (or restart) the bot; ``env`` adds to this bot's environment for this run only."""
        assert self.proc is None or self.proc.poll() is not None, "bot already running"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.argv(), env={**self.env, **(env or {})}, log=self.log_path)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def heartbeat(self) -> Heartbeat | None:
        hb = read_heartbeat(self.paths.heartbeat)
        return hb if hb is not None and self.proc is not None and hb.pid == self.proc.pid else None

    def wait_state(self, *states: str, timeout: float = 20.0, min_seq: int = 0) -> Heartbeat:
        """The first heartbeat of this process in one of ``states`` with seq >= ``min_seq``."""
        def ready() -> Heartbeat | None:
            if not self.alive():
                raise AssertionError(f"bot exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            hb = self.heartbeat()
            return hb if hb and hb.state in states and hb.seq >= min_seq else None
        return wait_until(ready, timeout, message=f"bot state in {states}")

    def wait_ticks(self, n: int = 1, timeout: float = 20.0) -> Heartbeat:
        """Wait until ``n`` more loops completed (heartbeat seq advanced by n)."""
        hb = self.heartbeat()
        start = hb.seq if hb else 0
        return wait_until(lambda: (h := self.heartbeat()) and h.seq >= start + n and h,
                          timeout, message=f"{n} bot ticks")

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL, wait: bool = True, timeout: float = 15.0) -> int | None:
        """Send a real signal to the bot; wait for it to exit unless ``wait=False``."""
        assert self.proc is not None
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        return self.proc.wait(timeout) if wait else None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL at the deadline; always reaps."""
        if self.proc is None:
            return None
        return stop(self.proc, timeout)

    def write_failpoints(self, spec: str) -> None:
        path = self.data_dir / "FAILPOINTS"
        tmp = path.with_name(".FAILPOINTS.tmp")
        tmp.write_text(spec + "\n")
        os.replace(tmp, path)

    def kill_switch(self, mode: str = "halt", reason: str = "test") -> None:
        """Engage the kill switch the way ``tradeguard kill`` does (the KILL file)."""
        path = self.paths.kill_file
        tmp = path.with_name(".KILL.tmp")
        tmp.write_text(json.dumps({"mode": mode, "reason": reason, "at": __import__("time").time(),
                                   "by": "test"}))
        os.replace(tmp, path)

    def release_kill_switch(self) -> None:
        self.paths.kill_file.unlink(missing_ok=True)

    def state_reader(self) -> StateReader:
        return StateReader(self.paths.state_db)


@pytest.fixture
def bot_factory(paper_exchange_factory):
    """Start bots against a paper exchange: ``bot_factory(env=..., strategy=..., paper=...)``.

    Without ``paper`` every bot of the test shares one default paper exchange (started on first
    use); pass ``paper=paper_exchange_factory(volatility=0)`` for other exchange settings.
    """
    bots: list[BotProcess] = []
    default: list[Any] = []

    def make(*, env: dict[str, str] | None = None, strategy: str | None = None,
             strategy_params: dict[str, Any] | None = None, failpoints: str | None = None,
             paper: Any = None, fast: bool = True, start: bool = True) -> BotProcess:
        if paper is None:
            if not default:
                default.append(paper_exchange_factory())
            paper = default[0]
        e = {**(FAST_ENV if fast else {}), **paper.env}
        params = strategy_params if strategy_params is not None else ({} if strategy else FAST_STRATEGY)
        e["TRADEGUARD_BOT_STRATEGY_PARAMS"] = json.dumps(params)
        if strategy:
            e["TRADEGUARD_BOT_STRATEGY"] = strategy
        if failpoints:
            e["TRADEGUARD_FAILPOINTS"] = failpoints
        e.update(env or {})
        b = BotProcess(Path(paper.config_file), Path(paper.data_dir), Path(paper.logs_dir), e)
        b.paper = paper
        bots.append(b)
        return b.start() if start else b

    yield make
    for b in bots:
        b.stop()
