"""The OCI image (Containerfile): built from the local base, run as a user would run it.

It trades on the paper exchange, answers its HEALTHCHECK, survives ``kill -9`` of the bot inside,
takes the kill switch through ``exec``, and stops gracefully on ``podman stop``. The container has
no network but its own loopback (``--network none``): nothing here needs more.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.system.box import Box, BoxError, flatten_with_kill_switch, record
from tests.system.images import REPO, ULIMITS, podman

pytestmark = pytest.mark.timeout(900)

IMAGE = "localhost/tradeguard-systest"

# state.db read-only: filled orders and positions (the image's own Python, as the image's user).
_TRADES = """
import json, sqlite3
try:
    db = sqlite3.connect("file:/data/state.db?mode=ro", uri=True, timeout=10)
    filled = db.execute("SELECT count(*) FROM orders WHERE state = 'FILLED'").fetchone()[0]
    positions = dict(db.execute("SELECT symbol, amount FROM positions").fetchall())
except sqlite3.Error:
    filled, positions = 0, {}
print(json.dumps({"filled": filled, "positions": positions}))
"""


class Container(Box):
    """An application container (no systemd): commands run as its own user."""

    def py(self, code: str, timeout: float = 60):  # type: ignore[override]
        r = self.sh("python3 -", input=code.encode(), timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])


def trades(c: Container) -> dict:
    return c.py(_TRADES)


def bot_pid(c: Container) -> int:
    try:
        return int(json.loads(c.sh("cat /data/bot.pid").stdout)["pid"])
    except (BoxError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def image(images: dict) -> str:
    t0 = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *ULIMITS, "--build-arg",
           f"BASE={images['base']}", "-f", str(REPO / "Containerfile"), "-t", IMAGE, str(REPO),
           timeout=1200)
    record("container_build_s", time.monotonic() - t0)
    return IMAGE


@pytest.fixture(scope="module")
def running(image: str):
    name = f"tg-oci-{os.getpid()}"
    vols = [f"{name}-data", f"{name}-logs"]
    podman("rm", "-f", name, check=False)
    t0 = time.monotonic()
    # As deploy/compose.yaml runs it: read-only root, no capabilities, no new privileges.
    podman("run", "-d", "--name", name, "--network", "none", "--stop-timeout", "30", *ULIMITS,
           "--read-only", "--tmpfs", "/tmp", "--cap-drop", "all",
           "--security-opt", "no-new-privileges",
           # as on a slow host (docs/DEPLOY.md): a restarted bot may need more than 30 s here
           "-e", "TRADEGUARD_WATCHDOG_STARTUP_TIMEOUT_S=90",
           "-v", f"{vols[0]}:/data", "-v", f"{vols[1]}:/logs", image)
    c = Container(name)
    try:
        yield c, t0
    finally:
        podman("rm", "-f", "-t", "5", name, check=False, timeout=120)
        podman("volume", "rm", "-f", *vols, check=False)


def test_the_image_runs_as_non_root_with_volumes_and_a_healthcheck(image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "tradeguard:tradeguard"
    assert set(cfg["Volumes"]) == {"/data", "/logs"}
    assert cfg["Entrypoint"] == ["tradeguard"] and cfg["Cmd"] == ["run"]
    assert cfg.get("StopSignal") == "SIGTERM"
    health = info.get("Healthcheck") or cfg.get("Healthcheck")  # podman: top level
    assert health and health["Test"] == ["CMD", "tradeguard", "health", "check"]


def test_it_trades_on_the_paper_exchange_and_is_healthy(running) -> None:
    c, t0 = running
    assert c.sh("id -u").stdout.strip() == "10001"
    c.wait_for(lambda: trades(c)["filled"] >= 2, 180, "the bot's first filled orders")
    record("container_first_trades_s", time.monotonic() - t0)
    # HEALTHCHECK: podman runs the image's command and records the result.
    c.wait_for(lambda: podman("healthcheck", "run", c.name, check=False).returncode == 0, 60,
               "the HEALTHCHECK to pass")
    assert c.sh("tradeguard health check").returncode == 0


def test_it_survives_kill_9_of_the_bot_inside(running) -> None:
    c, _ = running
    old = c.wait_for(lambda: bot_pid(c), 30, "the bot's pid file")
    t0 = time.monotonic()
    c.sh(f"kill -9 {old}")
    c.wait_for(lambda: (p := bot_pid(c)) and p != old and
               json.loads(c.sh("cat /data/bot.heartbeat").stdout).get("pid") == p, 90,
               "a new bot with its own heartbeat")
    n = trades(c)["filled"]
    c.wait_for(lambda: trades(c)["filled"] > n, 90, "the new bot trading")
    record("container_kill9_to_trading_s", time.monotonic() - t0)


def test_the_kill_switch_is_reachable_with_exec(running) -> None:
    c, _ = running
    flatten_with_kill_switch(c, lambda: trades(c)["positions"],
                             lambda: c.sh("tradeguard kill --flatten --reason 'system test: exec'"),
                             "container_kill_flatten_to_flat_s")
    assert json.loads(c.sh("cat /data/KILL").stdout)["mode"] == "flatten"
    c.sh("tradeguard resume")


def test_podman_stop_is_graceful(running) -> None:
    """SIGTERM reaches supervisord (PID 1); the bot completes its shutdown (entry orders
    cancelled, state flushed) before anything is killed, and the container exits with 0."""
    c, _ = running
    t0 = time.monotonic()
    podman("stop", "-t", "30", c.name, timeout=90)
    took = time.monotonic() - t0
    record("container_stop_s", took)
    state = json.loads(podman("inspect", c.name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, state
    assert took < 30, took  # podman did not fall back to SIGKILL
    r = podman("logs", c.name)
    logs = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert "received SIGTERM indicating exit request" in logs, logs[-3000:]
    done = logs.index("bot: bot stopped")
    # supervisord's own grace for the bot is 8 s (tradeguard/runner.py); on a loaded host the
    # interpreter's exit after the shutdown can outlast it — never the shutdown itself.
    killed = logs.find("killing 'bot'")
    assert killed == -1 or killed > done, logs[-3000:]
    record("container_bot_exit_sigkilled_after_shutdown", float(killed != -1))
