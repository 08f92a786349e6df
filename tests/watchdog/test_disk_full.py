"""#16 A4: the data dir's filesystem fills up under a trading bot (a real tmpfs, mounted for the
test). Any failed commit puts the bot in ``safe``: it sends nothing it could not first record,
says why in its heartbeat, the watchdog alerts and the health status says so; once there is
room again the bot trades again."""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers.fixtures_bot import FAST_ENV, BotProcess
from tests.helpers.proc import wait_until
from tradeguard.config import load_config
from watchdog.alerts import Alerter
from watchdog.health.snapshot import build_snapshot
from watchdog.main import Watchdog
from watchdog.managers import StandaloneManager

pytestmark = pytest.mark.slow
TMPFS_SIZE = "24m"


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 24 MB tmpfs of its own (needs root: CI and this machine run tests as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "smallfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC; returns the filler file."""
    filler = fs / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as fh:
        while True:
            try:
                fh.write(chunk)
                fh.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


def recorded_ids(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in con.execute("SELECT client_order_id FROM orders")}
    finally:
        con.close()


def test_disk_full_puts_the_bot_in_safe_and_the_watchdog_alerts(paper_exchange, small_fs,
                                                                  logs_dir, webhook):
    px = paper_exchange
    data = small_fs / "data"
    data.mkdir(mode=0o700)
    env = {**FAST_ENV, **px.env,
           "TRADEGUARD_BOT_STRATEGY_PARAMS": json.dumps({"interval_s": 0.2, "limit_probability": 0.0}),
           "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.1", "TRADEGUARD_WATCHDOG_HEARTBEAT_TIMEOUT_S": "5",
           "TRADEGUARD_WATCHDOG_PROGRESS_TIMEOUT_S": "5", "TRADEGUARD_HEALTH_ENABLED": "false",
           "TRADEGUARD_ALERTS_WEBHOOK_URL": webhook.url}
    bot = BotProcess(px.config_file, data, logs_dir, env).start()
    cfg = load_config(px.config_file, data_dir=data, logs_dir=logs_dir, env=env)
    alerter = Alerter(cfg.alerts, attempts=1, backoff_s=0.05)
    wd = Watchdog(cfg, StandaloneManager(cfg, env, argv=bot.argv()), alerter)
    thread = threading.Thread(target=wd.run, daemon=True)
    try:
        bot.wait_state("running", timeout=30)
        wait_until(lambda: len(recorded_ids(data / "state.db")) >= 2, 30, message="orders")
        thread.start()  # adopts the running bot (its command line is the manager's)
        wait_until(lambda: wd.state_dict()["verdict"] == "healthy", 20, message="watched")

        filler = fill(small_fs)
        hb = bot.wait_state("safe", timeout=60)
        assert "full" in hb.detail["store_fault"] and "state.db cannot commit" in hb.detail["store_fault"]
        assert hb.detail["needs_attention"] == hb.detail["store_fault"]
        wait_until(lambda: "bot_safe" in webhook.events(), 15, message="the bot_safe alert")
        (alert,) = [a for a in webhook.received if a["event"] == "bot_safe"]
        assert "full" in json.dumps(alert)
        snap = build_snapshot(cfg)
        assert snap["status"] == "safe_mode" and "full" in snap["reason"], snap["reason"]
        # nothing reached the exchange that state.db does not know
        bot.wait_ticks(10)
        sent = {o["clientOrderId"] for o in px.ledger()["orders"]
                if o["clientOrderId"].startswith("tg-tg1-")}
        assert sent <= recorded_ids(data / "state.db"), sent - recorded_ids(data / "state.db")
        assert bot.heartbeat().state == "safe" and bot.alive()

        filler.unlink()  # room again: the bot leaves safe mode on its own
        hb = bot.wait_state("running", timeout=30)
        assert hb.detail["store_fault"] is None
        assert wd.state_dict()["verdict"] == "healthy" and wd.state_dict()["restarts_total"] == 0
    finally:
        wd.stop_event.set()
        if thread.is_alive():
            thread.join(10)
        alerter.stop(1)
        bot.stop()
