"""Run a paper exchange as a child process and drive it through its ``/_paper/`` control API.

Used by the test fixture (``tests/helpers/fixtures_paper.py``) and the chaos harness::

    px = PaperExchange.create(root_dir, port).start()
    px.set_price("BTC/USDT", 59000); px.add_fault(method="POST", path="/api/v3/order", action="reset")
    client = px.client()      # a real ccxt client (trading.exchange.build_exchange)
    px.stop()
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trading.paper_credentials import ENV_KEY, ENV_SECRET, read_credentials
from tradeguard.paths import RuntimePaths

Launcher = Callable[[Sequence[str], Mapping[str, str], Path], subprocess.Popen]
Stopper = Callable[[subprocess.Popen], Any]


def _launch(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start the exchange in its own session, output appended to ``log``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
    full_env.update(env)
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _terminate(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the process group, SIGKILL at the deadline."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
    return proc.returncode


class ControlError(RuntimeError):
    """The control API answered with an error (``status`` and the decoded body)."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"paper exchange control API: HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class PaperExchange:
    """One paper exchange process on ``127.0.0.1:port`` with its own data and logs dirs."""

    data_dir: Path
    logs_dir: Path
    port: int
    config_file: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    launch: Launcher = _launch
    terminate: Stopper = _terminate
    proc: subprocess.Popen | None = None
    api_key: str = ""
    secret: str = ""

    @classmethod
    def create(cls, root: Path, port: int, *, paper: Mapping[str, Any] | None = None,
               extra_env: Mapping[str, str] | None = None, **kw: Any) -> "PaperExchange":
        """Lay out ``root/data``, ``root/logs`` and ``root/paper.toml`` ([paths] and [paper])."""
        root = Path(root)
        data, logs = root / "data", root / "logs"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        logs.mkdir(parents=True, exist_ok=True)
        settings = {"port": port, **(paper or {})}
        lines = ["[paths]", f"data_dir = {json.dumps(str(data))}", f"logs_dir = {json.dumps(str(logs))}",
                 "", "[paper]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
        config = root / "paper.toml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return cls(data, logs, port, config, dict(extra_env or {}), **kw)

    # --- process ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What another process needs to use this exchange (with its own config or data dir)."""
        return {"TRADEGUARD_PAPER_HOST": "127.0.0.1", "TRADEGUARD_PAPER_PORT": str(self.port),
                ENV_KEY: self.api_key, ENV_SECRET: self.secret}

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tradeguard", "paper-exchange", "--config", str(self.config_file),
                "--data-dir", str(self.data_dir), "--logs-dir", str(self.logs_dir), "--port", str(self.port)]

    def start(self, timeout: float = 20.0) -> "PaperExchange":
        """Start the process and wait until it answers ``/api/v3/ping``."""
        self.proc = self.launch(self.argv(), dict(self.extra_env), self.logs_dir / "paper-exchange.out")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"paper exchange exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/api/v3/ping", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"paper exchange did not answer within {timeout}s:\n{self.output()}")
            time.sleep(0.05)
        creds = read_credentials(RuntimePaths(self.data_dir, self.logs_dir), self.extra_env)
        if creds is None:
            raise RuntimeError("paper exchange runs but its credentials file is missing")
        self.api_key, self.secret = creds
        return self

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL); returns the exit code."""
        if self.proc is None:
            return None
        code = self.terminate(self.proc)
        return code

    def restart(self, timeout: float = 20.0) -> "PaperExchange":
        """Stop and start again on the same port and data dir."""
        self.stop()
        return self.start(timeout)

    def output(self, limit: int = 4000) -> str:
        """The tail of the process's console output."""
        try:
            return (self.logs_dir / "paper-exchange.out").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    # --- clients ----------------------------------------------------------------------------
    def config(self):
        """The configuration a client of this exchange loads (config file + credentials env)."""
        from tradeguard.config import load_config

        return load_config(self.config_file, env=self.env)

    def client(self):
        """A new real ccxt client for this exchange (``trading.exchange.build_exchange``)."""
        from trading.exchange import build_exchange

        return build_exchange(self.config(), role="test", environ=self.env)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """Call the control API (``path`` under ``/_paper/``); ControlError on an error status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/_paper/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ControlError(e.code, detail) from None
        return json.loads(raw) if raw else None

    def ledger(self) -> dict[str, list[dict]]:
        return self.request("GET", "ledger")

    def balances(self) -> dict[str, dict[str, str]]:
        return self.request("GET", "balances")

    def health(self) -> dict[str, Any]:
        return self.request("GET", "health")

    def add_fault(self, **spec: Any) -> int:
        return self.request("POST", "faults", spec)["id"]

    def faults(self) -> list[dict]:
        return self.request("GET", "faults")

    def clear_faults(self) -> int:
        return self.request("DELETE", "faults")["cleared"]

    def set_price(self, symbol: str, price: float | str) -> dict[str, Any]:
        return self.request("POST", "price", {"symbol": symbol, "price": str(price)})

    def pause(self) -> None:
        self.request("POST", "pause")

    def resume(self) -> None:
        self.request("POST", "resume")

    def deposit(self, asset: str, amount: float | str) -> dict[str, Any]:
        return self.request("POST", "deposit", {"asset": asset, "amount": str(amount)})

    def rate_limits(self) -> dict[str, Any]:
        return self.request("GET", "rate-limits")

    def reset_rate_limits(self) -> dict[str, Any]:
        """Forget the request weight and order counters and any IP ban."""
        return self.request("DELETE", "rate-limits")


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))
