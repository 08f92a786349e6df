"""Fixtures of the health endpoint tests: a real health server in this process (as in the
watchdog), a steerable heartbeat bot as a real child process, a fake clock for the failure
window and the auth cache, and helpers to build Authorization headers."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

import watchdog.health.auth as auth_mod

from tests.helpers.proc import REPO, child_env, free_port, wait_until
from tradeguard.config import Config, load_config
from watchdog.health.server import HealthServer, start_health_server
from watchdog.health.snapshot import build_snapshot

HEALTH_TOML = """
[bot]
tick_deadline_s = 0.5
loop_interval_s = 0.2

[watchdog]
heartbeat_timeout_s = 1.0
{watchdog}

[health]
host = "{host}"
port = {port}
failed_auth_per_minute = {limit}
auth_cache_s = {cache_s}
basic_checks_per_minute = {checks}
{extra}
"""
PASSWORD = "s3cret-basic-pass"


class FakeClock:
    """Monotonic time the test moves by hand (failure window, auth cache)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def request_from(source: str, url: str, auth: str | None = None, method: str = "GET",
                 path: str = "/health/detailed") -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection from ``source`` (any 127.x address is this host's
    loopback, and a distinct client address to the server): ``(status, headers, body)``."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, headers={"Authorization": auth} if auth else {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def healthy_watchdog() -> dict[str, Any]:
    """A live watchdog dict (the shared watchdog.json contract) for a healthy bot."""
    import time
    now = time.time()
    return {"pid": os.getpid(), "ts": now, "manager": "standalone", "verdict": "healthy",
            "evidence": {}, "since": now - 5, "bot_pid": None, "restarts": [now - 30],
            "restarts_total": 3, "restart_budget": 5, "restart_window_s": 600.0, "budget_left": 4,
            "emergency": {"state": "none", "started_at": None, "finished_at": None, "reason": "",
                          "orders": 0, "detail": ""},
            "verdict_counts": {"healthy": 7, "hung": 1}, "emergency_actions_total": 0}


@pytest.fixture
def health_cfg(tmp_path: Path, data_dir: Path, logs_dir: Path) -> Callable[..., Config]:
    """``make(limit=, cache_s=, host=, extra=, watchdog=, checks=)``: a validated config on a free
    port (``extra``: more ``[health]`` lines, ``watchdog``: more ``[watchdog]`` lines, ``checks``:
    the global scrypt budget per minute)."""

    def make(limit: int = 1000, cache_s: float = 60.0, host: str = "127.0.0.1", extra: str = "",
             watchdog: str = "", checks: int = 100000) -> Config:
        f = tmp_path / "tradeguard.toml"
        f.write_text(HEALTH_TOML.format(host=host, port=free_port(), limit=limit, cache_s=cache_s,
                                        checks=checks, extra=extra, watchdog=watchdog))
        return load_config(f, data_dir=data_dir, logs_dir=logs_dir, env={})

    return make


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts scrypt verifications (a spy: the real function still runs)."""
    calls: list[str] = []
    real = auth_mod.verify_password

    def spy(password: str, h: Any) -> bool:
        calls.append(password)
        return real(password, h)

    monkeypatch.setattr(auth_mod, "verify_password", spy)
    return calls


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wd_state() -> dict[str, Any]:
    return healthy_watchdog()


class Served:
    """A started server with its config, token and a keep-alive session."""

    def __init__(self, server: HealthServer, cfg: Config):
        self.server, self.cfg = server, cfg
        self.url = server.url
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment: 127.0.0.1 only

    @property
    def token(self) -> str:
        return self.cfg.runtime.health_token.read_text().strip()

    def get(self, path: str, auth: str | bytes | None = None, **headers: Any) -> requests.Response:
        if auth is not None:
            headers["Authorization"] = auth
        return self.session.get(self.url + path, headers=headers, timeout=10)

    def authed(self, path: str = "/health") -> requests.Response:
        return self.get(path, bearer(self.token))

    def wait_status(self, status: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll /health/detailed until the snapshot's status is ``status``."""
        return wait_until(lambda: (d := self.authed("/health/detailed").json())["status"] == status and d,
                          timeout, message=f"status {status}")


@pytest.fixture
def serve(health_cfg: Callable[..., Config], clock: FakeClock,
          wd_state: dict[str, Any]) -> Iterator[Callable[..., Served]]:
    """``serve(cfg=None, watchdog=wd_state)``: start the endpoint as the watchdog does."""
    started: list[Served] = []

    def start(cfg: Config | None = None, watchdog: dict[str, Any] | None = wd_state) -> Served:
        cfg = cfg or health_cfg()
        hs = start_health_server(cfg, lambda: build_snapshot(cfg, watchdog), clock=clock)
        started.append(Served(hs, cfg))
        return started[-1]

    yield start
    for s in started:
        s.session.close()
        s.server.stop()


class BotChild:
    """``tests/watchdog/health/hbchild.py`` as a real child; ``steer`` changes what it reports."""

    def __init__(self, data_dir: Path, control: Path):
        self.data_dir, self.control = data_dir, control
        self.proc: subprocess.Popen | None = None

    def steer(self, state: str = "running", **detail: Any) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": state, "detail": detail}))
        os.replace(tmp, self.control)

    def start(self, state: str = "running", **detail: Any) -> "BotChild":
        self.steer(state, **detail)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.watchdog.health.hbchild", str(self.data_dir), str(self.control)],
            cwd=REPO, env=child_env(), start_new_session=True)
        wait_until(lambda: (self.data_dir / "bot.heartbeat").exists(), 15, message="first heartbeat")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def bot_child(data_dir: Path, tmp_path: Path) -> Iterator[BotChild]:
    child = BotChild(data_dir, tmp_path / "control.json")
    yield child
    child.stop()
