"""The system under test: paper exchange, bot and watchdog under a real supervisord, in a
scratch directory, with timings short enough that a fault is detected in seconds."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tradeguard.config import Config, load_config
from tradeguard.heartbeat import Heartbeat, read_heartbeat, read_pidfile
from tradeguard.runner import default_programs, supervisor_rpc, write_supervisord_conf

# Fast but realistic timings: every fault is detected and repaired within seconds.
FAST_CONFIG = """
[exchange]
timeout_ms = 1000
recv_window_ms = 2000

[paper]
port = {paper_port}
tick_s = 0.2
volatility = 0.002
seed = {seed}
# as unkind as the venue: ids reusable once closed (the default), orders invisible for a moment
# after they are accepted, a book with varying depth (partial fills), Binance's rate limits
visibility_lag_s = 0.3

[bot]
loop_interval_s = 0.25
tick_deadline_s = 1.5
reconcile_interval_s = 2.0
unknown_grace_s = 1.0
strategy_params = {{ interval_s = 1.0, limit_ttl_s = 3.0 }}

[resilience]
breaker_fail_max = 3
breaker_reset_s = 1.0
max_attempts = 2
backoff_base_s = 0.05
backoff_max_s = 0.5
rate_limit_backoff_s = 0.2
safe_after_s = 30.0

[watchdog]
interval_s = 0.2
heartbeat_timeout_s = 2.5
progress_timeout_s = 3.0
memory_limit_mb = {memory_limit_mb}
restart_budget = {restart_budget}
restart_window_s = 600.0
startup_timeout_s = {startup_timeout_s}
kill_grace_s = 1.0
flatten_deadline_s = 3.0
manager = "supervisor"

[health]
port = {health_port}
"""


# Coins the owner holds in the paper account outside the bot, deposited before the bot trades:
# the bot (and the watchdog's flatten) must never sell them. Each is well above the market
# minimum, so a flatten that sold "the free balance" would really sell it.
OWNER_COINS = {"BTC": 0.02, "ETH": 0.3}


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, chosen *below* the kernel's ephemeral range.

    The kernel's own choice (bind to port 0) comes from the ephemeral range, which every
    outgoing connection also draws from: between this check and the server's bind, any client
    on the host may take it (seen: a paper exchange that could not listen while another test
    run was busy). Below the range only another explicit bind can."""
    import random
    import socket

    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()  # not test data: a seed shared by parallel runs would collide
    for _ in range(100):
        port = rng.randrange(max(1024, low - 20000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # below the range is crowded: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Return the first truthy value of ``predicate`` before the deadline, else None."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception:  # noqa: BLE001 - the system is being broken on purpose
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class System:
    """One running tradeguard system in ``root`` (data/, logs/, tradeguard.toml)."""

    root: Path
    seed: int
    # A shared system lives through hundreds of deliberate restarts in a full run; the budget
    # is exercised on purpose by the crash-loop scenario on its own system (budget 2).
    restart_budget: int = 1000
    memory_limit_mb: int = 250
    watchdog: bool = True
    startup_timeout_s: float = 20.0
    # > 0: the data dir is a tmpfs of this many MB (root only), so that it can really fill up
    data_tmpfs_mb: int = 0
    failpoints: str = ""  # armed in data/FAILPOINTS before the bot's first start
    extra_config: str = ""  # TOML appended to the configuration (sections FAST_CONFIG lacks)
    owner: dict[str, float] = field(default_factory=lambda: dict(OWNER_COINS))
    proc: subprocess.Popen | None = None
    cfg: Config | None = None
    events: list[dict] = field(default_factory=list)
    strangers: list[int] = field(default_factory=list)  # processes a scenario started

    @classmethod
    def create(cls, parent: Path | None, seed: int, **kw: Any) -> "System":
        root = Path(tempfile.mkdtemp(prefix="tg-chaos-", dir=parent))
        return cls(root=root, seed=seed, **kw)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 40.0) -> None:
        conf_file = self.root / "tradeguard.toml"
        conf_file.write_text(FAST_CONFIG.format(
            paper_port=free_port(), health_port=free_port(), seed=self.seed,
            memory_limit_mb=self.memory_limit_mb, restart_budget=self.restart_budget,
            startup_timeout_s=self.startup_timeout_s) + self.extra_config)
        if self.data_tmpfs_mb:
            self._mount_tmpfs_data()
        self.cfg = load_config(conf_file, data_dir=self.root / "data", logs_dir=self.root / "logs",
                               env={})
        # every program `tradeguard run` starts (whatever watches the watchdog too); the
        # baseline only the exchange and the bot
        programs = tuple(p for p in default_programs(self.cfg)
                         if self.watchdog or p in ("paper-exchange", "bot"))
        conf = write_supervisord_conf(self.cfg, programs)
        if self.failpoints:
            self.write_failpoints(self.failpoints)
        if not self.watchdog:  # baseline: plain supervisord restarts what dies, nothing more
            text = conf.read_text().replace("autorestart=false", "autorestart=true")
            conf.write_text(text)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TRADEGUARD_") and k != "BOT_EMERGENCY_SHUTDOWN"}
        sd = str(Path(sys.executable).parent / "supervisord")
        self.proc = subprocess.Popen([sd, "-n", "-c", str(conf)], cwd=self.root, env=env,
                                     stdout=open(self.root / "supervisord.out", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._deposit_owner_coins(timeout)
        if not poll(lambda: self.healthy_heartbeat(), timeout):
            raise RuntimeError(f"system in {self.root} did not become healthy within {timeout}s")
        # a scenario starts once the watchdog watches (it starts after the bot)
        if self.watchdog and not poll(lambda: self.watchdog_verdict() == "healthy", timeout):
            raise RuntimeError(f"the watchdog of {self.root} did not judge the bot healthy "
                               f"within {timeout}s")

    def watchdog_verdict(self, max_age: float = 2.0) -> str | None:
        """The verdict in the watchdog's state file, if the file is fresh."""
        try:
            st = json.loads(self.paths.watchdog_state.read_text())
        except (OSError, ValueError):
            return None
        return st.get("verdict") if time.time() - float(st.get("ts", 0)) <= max_age else None

    def _deposit_owner_coins(self, timeout: float) -> None:
        """Put the owner's own coins into the paper account as soon as the exchange answers
        (once per account: the paper exchange keeps its balances in data/paper)."""
        marker = self.root / "owner-deposited"
        if not self.owner or marker.exists():
            return
        if not poll(lambda: self.paper("GET", "health", timeout=1.0), timeout):
            raise RuntimeError(f"the paper exchange of {self.root} did not answer within {timeout}s")
        for asset, amount in self.owner.items():
            self.paper("POST", "deposit", {"asset": asset, "amount": amount})
        marker.write_text("deposited\n")

    def _mount_tmpfs_data(self) -> None:
        """A data dir that can fill up: a tmpfs of ``data_tmpfs_mb`` MB. The paper exchange's
        own database (data/paper) stays on the ordinary disk through a symlink: the exchange
        is the venue, not the bot's disk."""
        if os.geteuid() != 0:
            raise RuntimeError("a tmpfs data dir needs root (mount -t tmpfs)")
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        if not os.path.ismount(data):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_tmpfs_mb}m,mode=0755",
                                "tmpfs", str(data)], capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                raise RuntimeError(f"cannot mount a tmpfs data dir: {r.stderr.strip()}")
        venue = self.root / "paper-store"
        venue.mkdir(exist_ok=True)
        link = data / "paper"
        if not link.is_symlink():
            link.symlink_to(venue, target_is_directory=True)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc and self.proc.poll() is None:
            # a stopped process cannot handle supervisord's SIGTERM (it would wait out
            # stopwaitsecs, then SIGKILL): let every process of the system run again first
            self._signal_session(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # A SIGSTOPped process outlives its group's SIGTERM, and when a scenario killed
        # supervisord its programs live on as orphans: end everything of this system's session.
        if self.proc:
            self._kill_session(self.proc.pid)
        for pid in list(self.strangers):
            _kill_quietly(pid)
        self.strangers.clear()
        data = self.root / "data"
        if self.data_tmpfs_mb and os.path.ismount(data):
            # keep what was on the tmpfs for --keep and the report's readers, then unmount
            try:
                shutil.copytree(data, self.root / "data.kept", symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock"))
            except (shutil.Error, OSError):
                pass  # a copy for inspection only
            subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=10)

    @staticmethod
    def _signal_session(sid: int, sig: int) -> None:
        """Signal every process of session ``sid`` (supervisord's: the system's own processes)."""
        import psutil

        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                    os.kill(p.pid, sig)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue

    def _kill_session(self, sid: int) -> None:
        self._signal_session(sid, signal.SIGKILL)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # --- observation -------------------------------------------------------------------
    @property
    def paths(self):
        assert self.cfg is not None
        return self.cfg.runtime

    def heartbeat(self) -> Heartbeat | None:
        return read_heartbeat(self.paths.heartbeat)

    def bot_pid(self) -> int | None:
        info = read_pidfile(self.paths.pidfile)
        return info.pid if info else None

    def healthy_heartbeat(self, newer_than: float = 0.0, pid_not: int | None = None,
                          states: tuple[str, ...] = ("running",)) -> Heartbeat | None:
        """A fresh heartbeat in one of ``states`` written after ``newer_than``."""
        hb = self.heartbeat()
        if hb is None or hb.ts <= newer_than or hb.state not in states or hb.age() > 2.0:
            return None
        if pid_not is not None and hb.pid == pid_not:
            return None
        return hb

    def rpc(self):
        return supervisor_rpc(self.cfg).supervisor

    def program_pid(self, name: str) -> int:
        return int(self.rpc().getProcessInfo(name)["pid"])

    # --- paper exchange control API ----------------------------------------------------
    def paper(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        url = f"http://127.0.0.1:{self.cfg.paper.port}/_paper/{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def ledger(self) -> dict:
        return self.paper("GET", "ledger")

    def balances(self) -> dict:
        return self.paper("GET", "balances")

    def add_fault(self, **spec: Any) -> Any:
        return self.paper("POST", "faults", spec)

    def clear_faults(self) -> None:
        self.paper("DELETE", "faults")

    # --- the bot's own files -----------------------------------------------------------
    def write_failpoints(self, spec: str) -> None:
        path = self.paths.data_dir / "FAILPOINTS"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec + "\n")
        os.replace(tmp, path)

    def clear_failpoints(self) -> None:
        (self.paths.data_dir / "FAILPOINTS").unlink(missing_ok=True)
