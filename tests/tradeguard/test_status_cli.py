"""``tradeguard status [--json]`` as a real subprocess: from the endpoint when it is up, from the
files when it is not, and it says which."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers.proc import free_port, run_cli
from tests.watchdog.health.conftest import BotChild, healthy_watchdog
from tests.watchdog.health.test_detailed_metrics import write_state
from tradeguard.config import Config, load_config
from watchdog.health.server import start_health_server
from watchdog.health.snapshot import build_snapshot


@pytest.fixture
def cfg(tmp_path: Path, data_dir: Path, logs_dir: Path) -> Config:
    f = tmp_path / "tradeguard.toml"
    f.write_text(f"[health]\nport = {free_port()}\n")
    return load_config(f, data_dir=data_dir, logs_dir=logs_dir, env={})


@pytest.fixture
def bot(cfg: Config, tmp_path: Path):
    write_state(cfg.runtime)
    child = BotChild(cfg.runtime.data_dir, tmp_path / "control.json")
    child.start("running", degradation="running", breakers={"orders": "closed"})
    yield child
    child.stop()


def _status(cfg: Config, *args: str, data_dir: Path | None = None):
    return run_cli("status", *args, "--config", str(cfg.source), "--data-dir",
                   str(data_dir or cfg.runtime.data_dir), "--logs-dir", str(cfg.runtime.logs_dir))


def _check_contract(snap: dict, bot: BotChild) -> None:
    assert snap["bot"]["state"] == "running"
    assert snap["bot"]["pid"] == bot.proc.pid
    assert 0 <= snap["bot"]["heartbeat_age_s"] < 5
    assert snap["positions"] == {"BTC/USDT": pytest.approx(0.02)}
    assert [o["client_order_id"] for o in snap["open_orders"]] == ["tg-tg1-2"]
    assert "engaged" in snap["kill_switch"]


def test_status_reads_the_files_when_the_endpoint_is_down(cfg, bot):
    cfg.runtime.kill_file.write_text(json.dumps({"mode": "halt", "reason": "lunch", "at": time.time()}))
    r = _status(cfg, "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["source"]["kind"] == "files" and "unreachable" in snap["source"]["why"]
    _check_contract(snap, bot)
    assert snap["kill_switch"]["engaged"] and snap["kill_switch"]["reason"] == "lunch"
    assert snap["status"] == "halted"
    assert snap["watchdog"]["running"] is False

    r = _status(cfg)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"from the files in {cfg.runtime.data_dir}" in out
    assert "HALTED" in out and "ENGAGED (halt" in out and "lunch" in out
    assert "tg-tg1-2" in out and "BTC/USDT 0.02" in out
    assert "watchdog   : NOT RUNNING" in out


def test_status_uses_the_endpoint_when_it_is_up(cfg, bot):
    server = start_health_server(cfg, lambda: build_snapshot(cfg, healthy_watchdog()))
    try:
        r = _status(cfg, "--json")
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert snap["source"] == {"kind": "endpoint", "where": server.url}
        _check_contract(snap, bot)
        assert snap["status"] == "healthy" and snap["kill_switch"]["engaged"] is False
        assert snap["watchdog"]["running"] is True
        r = _status(cfg)
        assert r.returncode == 0, r.stderr
        assert f"from the health endpoint {server.url}" in r.stdout
        assert "overall    : HEALTHY" in r.stdout and "restarts: 1 in window, 4 of 5 left" in r.stdout
    finally:
        server.stop()


def test_status_of_a_data_dir_that_does_not_exist_is_a_clear_error(cfg, tmp_path):
    r = _status(cfg, data_dir=tmp_path / "typo")
    assert r.returncode == 2
    assert r.stderr.startswith("error: no data dir at") and "Traceback" not in r.stderr


def test_status_of_a_dead_bot_says_not_running(cfg, bot):
    """After an emergency the last heartbeat still says 'running': status must not repeat it."""
    pid = bot.proc.pid
    bot.stop()
    r = _status(cfg)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("  bot "))
    assert f"NOT RUNNING (pid {pid} is gone" in line and "said running" in line
    assert "(gone)" not in line
