"""Fixtures of the watchdog tests: a heartbeat-protocol bot (tests/watchdog/hbbot.py) as a real
child process, and a short-timeout watchdog configuration."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from tests.helpers.proc import REPO, child_env
from tradeguard.config import Config, load_config

FAST_WATCHDOG = """
[bot]
tick_deadline_s = 1.0
loop_interval_s = 0.2

[watchdog]
interval_s = 0.1
heartbeat_timeout_s = 1.5
progress_timeout_s = 1.5
memory_limit_mb = {memory_limit_mb}
restart_budget = {restart_budget}
restart_window_s = 600.0
startup_timeout_s = {startup_timeout_s}
kill_grace_s = 1.0
flatten_deadline_s = {flatten_deadline_s}
manager = "{manager}"

[health]
enabled = false
"""


def hbbot_argv(data_dir: Path, mode: str = "normal", interval: float = 0.05) -> list[str]:
    return [sys.executable, "-m", "tests.watchdog.hbbot", str(data_dir), "--mode", mode,
            "--interval", str(interval)]


@pytest.fixture
def hbbot(data_dir: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start heartbeat bots in ``data_dir``; every one is killed and reaped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(mode: str = "normal", interval: float = 0.05) -> subprocess.Popen:
        p = subprocess.Popen(hbbot_argv(data_dir, mode, interval), cwd=REPO, env=child_env(),
                             start_new_session=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(5)


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path, logs_dir: Path) -> Callable[..., Config]:
    """A validated configuration with short watchdog timings (overridable per test)."""

    def make(manager: str = "standalone", restart_budget: int = 5, memory_limit_mb: float = 300,
             startup_timeout_s: float = 8.0, flatten_deadline_s: float = 1.0,
             extra: str = "") -> Config:
        f = tmp_path / "tradeguard.toml"
        f.write_text(FAST_WATCHDOG.format(manager=manager, restart_budget=restart_budget,
                                          memory_limit_mb=memory_limit_mb,
                                          startup_timeout_s=startup_timeout_s,
                                          flatten_deadline_s=flatten_deadline_s) + extra)
        return load_config(f, data_dir=data_dir, logs_dir=logs_dir, env={})

    return make


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class WebhookReceiver:
    """A local HTTP server collecting alert webhooks (generic JSON) in a thread."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [a["event"] for a in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def short_path_exchange():
    """A paper exchange under a short path: supervisord's unix socket lives in its data dir."""
    import shutil
    import tempfile

    from tests.helpers.fixtures_paper import start_paper_exchange

    root = Path(tempfile.mkdtemp(prefix="tgwd-", dir="/tmp"))
    px = start_paper_exchange(root)
    yield px
    px.stop()
    shutil.rmtree(root, ignore_errors=True)
