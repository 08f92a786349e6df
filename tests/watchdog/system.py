"""A real bot guarded by a real ``tradeguard watchdog`` process (standalone, or both under a
real supervisord), trading on the ``paper_exchange`` fixture's exchange in its data dir."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paper_exchange.control import PaperExchange
from tests.helpers.fixtures_bot import FAST_ENV, FAST_STRATEGY
from tests.helpers.proc import child_env, spawn, stop, tradeguard_cmd, wait_until
from tradeguard.config import Config, load_config
from tradeguard.heartbeat import PidInfo, process_for, read_heartbeat, read_pidfile

# A tick may take up to tick_deadline_s: the heartbeat timeout must leave room for one.
WATCHDOG_ENV = {
    "TRADEGUARD_BOT_TICK_DEADLINE_S": "1.2",
    "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.1",
    "TRADEGUARD_WATCHDOG_HEARTBEAT_TIMEOUT_S": "2.0",
    "TRADEGUARD_WATCHDOG_PROGRESS_TIMEOUT_S": "2.5",
    "TRADEGUARD_WATCHDOG_STARTUP_TIMEOUT_S": "20",
    "TRADEGUARD_WATCHDOG_KILL_GRACE_S": "1.0",
    "TRADEGUARD_WATCHDOG_FLATTEN_DEADLINE_S": "1.0",
    "TRADEGUARD_WATCHDOG_EMERGENCY_TIMEOUT_S": "30",
    "TRADEGUARD_HEALTH_ENABLED": "false",
}


@dataclass
class GuardedBot:
    px: PaperExchange
    config_file: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    seen_bots: set[PidInfo] = field(default_factory=set)

    @classmethod
    def create(cls, px: PaperExchange, manager: str, **env: str) -> "GuardedBot":
        # the exchange's own config plus a fast strategy (a TOML table: no quoting in env values)
        conf = px.config_file.with_name("guarded.toml")
        params = ", ".join(f"{k} = {v}" for k, v in FAST_STRATEGY.items())
        conf.write_text(px.config_file.read_text() + f"\n[bot]\nstrategy_params = {{ {params} }}\n")
        e = {**px.env, **FAST_ENV, **WATCHDOG_ENV, "TRADEGUARD_WATCHDOG_MANAGER": manager, **env}
        return cls(px, conf, e, px.logs_dir / "watchdog.out")

    @property
    def cfg(self) -> Config:
        return load_config(self.config_file, env=self.env)

    def argv(self, command: str = "watchdog") -> list[str]:
        return tradeguard_cmd(command, "--config", str(self.config_file), "--data-dir",
                              str(self.px.data_dir), "--logs-dir", str(self.px.logs_dir))

    # --- the standalone watchdog process --------------------------------------------------
    def start(self) -> "GuardedBot":
        self.proc = spawn(self.argv(), env=self.env, log=self.log)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    # --- observation ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return json.loads(self.cfg.runtime.watchdog_state.read_text())

    def bot_pid(self) -> int | None:
        info = read_pidfile(self.px.data_dir / "bot.pid")
        if info is not None:
            self.seen_bots.add(info)
        return info.pid if info else None

    def healthy(self, not_pid: int | None = None, timeout: float = 30.0) -> int:
        """The pid of a bot the watchdog judges healthy (other than ``not_pid``)."""
        def ok() -> int | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"watchdog exited {self.proc.returncode}:\n{self.output()}")
            st, pid = self.state(), self.bot_pid()
            hb = read_heartbeat(self.px.data_dir / "bot.heartbeat")
            return pid if (st["verdict"] == "healthy" and pid != not_pid and st["bot_pid"] == pid
                           and hb is not None and hb.pid == pid) else None
        return wait_until(ok, timeout, interval=0.05, message="a healthy bot")

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Events of ``kind`` from the black box, oldest first."""
        from blackbox.reader import query_events

        return query_events(self.px.data_dir / "blackbox.db", kinds=(kind,))

    def verdict_events(self, verdict: str) -> list[dict[str, Any]]:
        return [e for e in self.events("watchdog.verdict") if e["fields"].get("verdict") == verdict]

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.bot_pid()
        for info in self.seen_bots:  # bots run in their own session: end each one still there
            proc = process_for(info)
            if proc is not None:
                proc.kill()


def supervisord(cfg: Config, env: dict[str, str], programs: tuple[str, ...] = ("bot", "watchdog")
                ) -> subprocess.Popen:
    """A real supervisord running ``programs`` for ``cfg`` (stop it with tests.helpers.proc.stop)."""
    from tradeguard.runner import supervisor_rpc, write_supervisord_conf

    conf = write_supervisord_conf(cfg, programs, env=env)
    sd = Path(sys.executable).parent / "supervisord"
    proc = subprocess.Popen([str(sd), "-n", "-c", str(conf)], env=child_env(env),
                            stdout=open(cfg.runtime.logs_dir / "supervisord.out", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: all(supervisor_rpc(cfg).supervisor.getProcessInfo(p)["statename"] == "RUNNING"
                           for p in programs), 20, message="supervisord programs running")
    return proc
