"""Deadline polling, free ports and child processes for tests (no fixed sleeps)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from chaos.system import free_port  # noqa: F401 - one implementation, re-exported for tests

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent




def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def tradeguard_cmd(*args: str) -> list[str]:
    """argv that runs the CLI of the installed project with this interpreter."""
    return [sys.executable, "-m", "tradeguard", *args]


def child_env(extra: Mapping[str, str] | None = None, **kw: str) -> dict[str, str]:
    """A clean environment for a child process: no inherited TRADEGUARD_* or kill switch."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRADEGUARD_") and k != "BOT_EMERGENCY_SHUTDOWN"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    env.update(kw)
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``tradeguard ARGS`` to completion and capture its output."""
    return subprocess.run(tradeguard_cmd(*args), env=child_env(env), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, input=input)


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a child in its own session (so a group kill reaches its children)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(list(argv), env=child_env(env), cwd=cwd or REPO, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL at the deadline; always reaps the child."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode
