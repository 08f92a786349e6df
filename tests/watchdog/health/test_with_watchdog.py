"""The endpoint inside the real watchdog process: served while it runs, gone (port free) when
SIGTERM stops it, with the watchdog's live state in /health/detailed."""
from __future__ import annotations

import requests

from tests.helpers.proc import spawn, stop, tradeguard_cmd, wait_until
from tests.watchdog.health.conftest import bearer

WATCHDOG_CFG = 'interval_s = 0.1\nmanager = "standalone"\n'


def test_watchdog_serves_health_and_stops_it_cleanly(health_cfg, bot_child, logs_dir):
    cfg = health_cfg(watchdog=WATCHDOG_CFG)
    cfg_file = cfg.source
    bot_child.start()
    wd = spawn(tradeguard_cmd("watchdog", "--config", cfg_file, "--data-dir", str(cfg.runtime.data_dir),
                              "--logs-dir", str(logs_dir)), log=logs_dir / "watchdog.out")
    url = f"http://127.0.0.1:{cfg.health.port}"
    try:
        token = wait_until(lambda: cfg.runtime.health_token.read_text().strip(), 20, message="token")
        sess = requests.Session()
        sess.trust_env = False

        def detailed() -> dict:
            return sess.get(url + "/health/detailed", headers={"Authorization": bearer(token)},
                            timeout=5).json()

        # the watchdog's verdict follows the bot's heartbeat by up to one check interval
        d = wait_until(lambda: (x := detailed())["status"] == "healthy"
                       and x["watchdog"]["verdict"] == "healthy" and x, 20, message="healthy")
        assert d["watchdog"]["running"] and d["watchdog"]["pid"] == wd.pid
        assert sess.get(url + "/health", timeout=5).status_code == 401
        sess.close()
    finally:
        assert stop(wd) == 0, (logs_dir / "watchdog.out").read_text()
    try:
        requests.get(url + "/health", timeout=2)
        raise AssertionError("the endpoint still answers after the watchdog stopped")
    except requests.ConnectionError:
        pass
