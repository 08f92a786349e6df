"""GET /health: 200 only for a healthy, normally trading bot; 503 with the reason otherwise,
driven by a real heartbeat process, real signals, the real KILL file and the watchdog's dict."""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.helpers.proc import wait_until


def _health(s) -> tuple[int, dict]:
    r = s.authed("/health")
    return r.status_code, r.json()


def _wait_health(s, code: int, status: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: (h := _health(s)) == (code, h[1]) and h[1]["status"] == status and h[1],
                      timeout, message=f"/health {code} {status}")


def test_no_heartbeat_is_503(serve):
    s = serve()
    code, body = _health(s)
    assert code == 503
    assert body["status"] == "no_heartbeat" and "heartbeat" in body["reason"]


def test_healthy_bot_is_200_and_a_dead_one_is_503(serve, bot_child):
    s = serve()
    bot_child.start()
    assert _wait_health(s, 200, "healthy") == {"status": "healthy"}
    bot_child.stop()
    body = _wait_health(s, 503, "down")
    assert str(bot_child.proc.pid) in body["reason"]


def test_sigstopped_bot_goes_stale_and_comes_back(serve, bot_child):
    s = serve()
    bot_child.start()
    _wait_health(s, 200, "healthy")
    bot_child.signal(signal.SIGSTOP)
    body = _wait_health(s, 503, "hung")
    assert "heartbeat" in body["reason"] and "stopped" in body["reason"]
    bot_child.signal(signal.SIGCONT)
    _wait_health(s, 200, "healthy")


def test_kill_switch_file_and_environment_are_503_halted(serve, bot_child, monkeypatch):
    s = serve()
    bot_child.start()
    _wait_health(s, 200, "healthy")
    kill = s.cfg.runtime.kill_file
    kill.write_text(json.dumps({"mode": "flatten", "reason": "pulled from my phone", "at": time.time()}))
    body = _wait_health(s, 503, "halted")
    assert "flatten" in body["reason"] and "pulled from my phone" in body["reason"]
    kill.unlink()
    _wait_health(s, 200, "healthy")
    monkeypatch.setenv("BOT_EMERGENCY_SHUTDOWN", "halt")
    assert "halt" in _wait_health(s, 503, "halted")["reason"]


@pytest.mark.parametrize("state, detail, status", [
    ("starting", {}, "starting"),
    ("degraded", {"degradation": "degraded"}, "degraded"),
    ("safe", {"degradation": "safe"}, "safe_mode"),
    ("stopping", {}, "stopping"),
    ("running", {"degradation": "degraded"}, "degraded"),
    ("running", {"needs_attention": "unexplained BTC balance"}, "attention"),
])
def test_bot_states_other_than_normal_trading_are_503(serve, bot_child, state, detail, status):
    s = serve()
    bot_child.start(state, **detail)
    body = _wait_health(s, 503, status)
    assert body["reason"]
    bot_child.steer("running")
    _wait_health(s, 200, "healthy")


@pytest.mark.parametrize("change, status", [
    ({"verdict": "restarting"}, "restarting"),
    ({"verdict": "stalled"}, "stalled"),
    ({"verdict": "emergency", "emergency": {"state": "running", "reason": "restart budget spent"}},
     "emergency"),
    ({"verdict": "healthy", "emergency": {"state": "failed", "reason": "exchange down"}}, "emergency"),
])
def test_watchdog_verdicts_are_503(serve, bot_child, wd_state, change, status):
    s = serve()
    bot_child.start()
    _wait_health(s, 200, "healthy")
    saved = dict(wd_state)
    wd_state.update(change)
    body = _wait_health(s, 503, status)
    if "emergency" in change:
        assert change["emergency"]["reason"] in body["reason"]
    wd_state.clear()
    wd_state.update(saved)
    _wait_health(s, 200, "healthy")
