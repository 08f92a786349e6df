"""The real watchdog process stays lean while nothing is wrong (issue 20): serving /health and
/health/detailed and watching a healthy bot, it has not loaded the exchange client (ccxt: only an
emergency needs it), the field cipher's OpenSSL bindings (it reads state.db without the key), the
schema migrator's sqlite-utils or a web framework. Its module table is read from inside the real
process by a ``sitecustomize`` that writes ``sys.modules`` when asked through a file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import requests

from tests.helpers.proc import spawn, stop, tradeguard_cmd, wait_until
from tests.watchdog.health.conftest import bearer

WATCHDOG_CFG = 'interval_s = 0.1\nmanager = "standalone"\n'
NOT_ON_THE_STEADY_PATH = ("ccxt", "cryptography", "sqlite_utils", "flask", "werkzeug", "jinja2")

SITECUSTOMIZE = '''
import json, os, sys, threading, time
ask, out = os.environ["LEAN_TEST_ASK"], os.environ["LEAN_TEST_OUT"]
def _answer():
    while not os.path.exists(ask):
        time.sleep(0.02)
    with open(out + ".tmp", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.replace(out + ".tmp", out)
if sys.argv[1:2] == ["watchdog"]:
    threading.Thread(target=_answer, daemon=True).start()
'''


def test_a_watching_watchdog_has_not_loaded_what_only_emergencies_need(health_cfg, bot_child,
                                                                      logs_dir, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ask, out = tmp_path / "ask", tmp_path / "modules.json"
    cfg = health_cfg(watchdog=WATCHDOG_CFG)
    bot_child.start()
    env = {"PYTHONPATH": os.pathsep.join([str(site)] + ([os.environ["PYTHONPATH"]]
                                                         if os.environ.get("PYTHONPATH") else [])),
           "LEAN_TEST_ASK": str(ask), "LEAN_TEST_OUT": str(out)}
    wd = spawn(tradeguard_cmd("watchdog", "--config", cfg.source, "--data-dir",
                              str(cfg.runtime.data_dir), "--logs-dir", str(logs_dir)),
               env=env, log=logs_dir / "watchdog.out")
    url = f"http://127.0.0.1:{cfg.health.port}"
    try:
        token = wait_until(lambda: cfg.runtime.health_token.read_text().strip(), 20, message="token")
        sess = requests.Session()
        sess.trust_env = False
        auth = {"Authorization": bearer(token)}
        wait_until(lambda: sess.get(url + "/health/detailed", headers=auth, timeout=5).json()
                   ["watchdog"]["verdict"] == "healthy", 20, message="healthy")
        assert sess.get(url + "/health", headers=auth, timeout=5).status_code == 200
        sess.close()
        ask.touch()
        modules = set(wait_until(lambda: out.exists() and json.loads(out.read_text()), 20,
                                 message="the watchdog's module table"))
    finally:
        assert stop(wd) == 0, (logs_dir / "watchdog.out").read_text()
    assert {"watchdog.main", "watchdog.health.server", "resilience.state"} <= modules
    loaded = {m.split(".")[0] for m in modules} & set(NOT_ON_THE_STEADY_PATH)
    assert not loaded, f"the watchdog loaded {sorted(loaded)} with nothing wrong"
