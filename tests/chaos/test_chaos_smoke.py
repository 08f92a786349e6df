"""The chaos smoke: every scenario once, with short timings, against the real system
(supervisord, paper exchange, bot, watchdog). `make chaos` runs the full suite.

The scenarios from issue #16 (the attacks on the emergency flatten and the watchdog) each have
a test of their own, so that which of them pass is visible per attack."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers.proc import run_cli

SCENARIOS = ["bot-sigkill", "bot-crash-points", "lost-ack", "exchange-outage", "rate-limit-storm",
             "bot-hang", "bot-stall", "memory-leak", "crash-loop", "kill-switch",
             "state-corruption", "watchdog-sigkill", "exchange-restart", "sigterm"]
ATTACKS = ["state-loss-flatten", "fill-while-down", "manager-dead-flatten", "slow-exit-flatten",
           "pid-forgery", "watchdog-hang", "disk-full"]


def _run(tmp_path, *names: str, timeout: float) -> tuple[object, dict, str]:
    report = tmp_path / "report"
    args = [a for n in names for a in ("--scenario", n)]
    r = run_cli("chaos", "run", *args, "--quick", "--iterations", "1", "--seed", "7", "--report",
                str(report), "--workdir", str(tmp_path / "work"), timeout=timeout)
    assert (report / "report.md").exists(), r.stdout + r.stderr
    return r, json.loads((report / "report.json").read_text()), (report / "report.md").read_text()


def _failures(data: dict) -> list[dict]:
    return [o for o in data["outcomes"] if o["mode"] == "watchdog"
            and (o["violations"] or not o["recovered"])]


def test_list_describes_every_scenario() -> None:
    r = run_cli("chaos", "list")
    assert r.returncode == 0, r.stderr
    for name in SCENARIOS + ATTACKS:
        assert name in r.stdout


def test_unknown_scenario_is_a_usage_error(tmp_path) -> None:
    r = run_cli("chaos", "run", "--scenario", "nope", "--report", str(tmp_path / "r"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_smoke_every_scenario_once(tmp_path) -> None:
    r, data, md = _run(tmp_path, *SCENARIOS, timeout=400)
    ran = {o["scenario"] for o in data["outcomes"] if o["mode"] == "watchdog"}
    assert ran == set(SCENARIOS)
    assert r.returncode == 0 and not _failures(data), md
    # the baseline shows what the watchdog adds: plain supervisord never notices a hang
    hang = [o for o in data["outcomes"] if o["mode"] == "baseline" and o["scenario"] == "bot-hang"]
    assert hang and not hang[0]["recovered"]
    assert (tmp_path / "report" / "recovery.svg").read_text().startswith("<svg")


def _attack(tmp_path, name: str) -> None:
    r, data, md = _run(tmp_path, name, timeout=170)
    outcomes = [o for o in data["outcomes"] if o["mode"] == "watchdog"]
    assert [o["scenario"] for o in outcomes] == [name]
    assert r.returncode == 0 and not _failures(data), md


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_state_loss_flatten(tmp_path) -> None:
    _attack(tmp_path, "state-loss-flatten")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_fill_while_down(tmp_path) -> None:
    _attack(tmp_path, "fill-while-down")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_manager_dead_flatten(tmp_path) -> None:
    _attack(tmp_path, "manager-dead-flatten")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_slow_exit_flatten(tmp_path) -> None:
    _attack(tmp_path, "slow-exit-flatten")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_pid_forgery(tmp_path) -> None:
    _attack(tmp_path, "pid-forgery")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_attack_watchdog_hang(tmp_path) -> None:
    _attack(tmp_path, "watchdog-hang")


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="disk-full mounts a tmpfs data dir: needs root")
def test_attack_disk_full(tmp_path) -> None:
    _attack(tmp_path, "disk-full")
