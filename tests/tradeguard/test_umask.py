"""Every tradeguard process sets umask 077 itself (issue 19 item 6), and `tradeguard run` names
the bearer token's file but never prints the token (item 7): the whole system started with
`tradeguard run` under umask 022, its files and directories inspected on disk."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.proc import child_env, free_port, stop, tradeguard_cmd, wait_until

EXPECTED = ("bot.heartbeat", "bot.pid", "watchdog.json", "blackbox.db", "health.token",
            "paper/exchange.db")


def _open_to_others(root: Path) -> list[str]:
    """Every path under ``root`` (``root`` too) that group or others may access."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in paths
            if not p.is_symlink() and p.lstat().st_mode & 0o077]


@pytest.mark.slow
def test_run_under_umask_022_creates_nothing_others_can_read(tmp_path):
    data, logs = tmp_path / "state" / "data", tmp_path / "state" / "logs"  # created by tradeguard
    env = {"TRADEGUARD_PAPER_PORT": str(free_port()), "TRADEGUARD_HEALTH_PORT": str(free_port()),
           "TRADEGUARD_PATHS_DATA_DIR": str(data), "TRADEGUARD_PATHS_LOGS_DIR": str(logs),
           "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.2"}
    out = tmp_path / "run.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(tradeguard_cmd("run"), env=child_env(env), cwd=tmp_path, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, umask=0o022)
    try:
        wait_until(lambda: all((data / f).exists() for f in EXPECTED), timeout=60,
                   message=f"{EXPECTED} created (output: {out})")
        wait_until(lambda: any(logs.glob("*.log")), timeout=30, message="log files")
        wait_until(lambda: "bearer token" in out.read_text(), timeout=10, message="run's banner")
        assert _open_to_others(data) == []
        assert _open_to_others(logs) == []
        assert any(data.glob("blackbox.db-wal")) or (data / "blackbox.db").exists()
    finally:
        stop(proc, timeout=20)
    assert _open_to_others(data) == [] and _open_to_others(logs) == []  # and what shutdown wrote
    token = (data / "health.token").read_text().strip()
    text = out.read_text()
    assert str(data / "health.token") in text
    assert token not in text and token[:16] not in text
