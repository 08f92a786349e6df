"""The chaos smoke: every scenario once, with short timings, against the real system
(supervisord, paper exchange, bot, watchdog). `make chaos` runs the full suite."""
from __future__ import annotations

import json

import pytest

from tests.helpers.proc import run_cli

SCENARIOS = ["bot-sigkill", "bot-crash-points", "lost-ack", "exchange-outage", "rate-limit-storm",
             "bot-hang", "bot-stall", "memory-leak", "crash-loop", "kill-switch",
             "state-corruption", "watchdog-sigkill", "exchange-restart", "sigterm"]


def test_list_describes_every_scenario() -> None:
    r = run_cli("chaos", "list")
    assert r.returncode == 0, r.stderr
    for name in SCENARIOS:
        assert name in r.stdout


def test_unknown_scenario_is_a_usage_error(tmp_path) -> None:
    r = run_cli("chaos", "run", "--scenario", "nope", "--report", str(tmp_path / "r"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_smoke_every_scenario_once(tmp_path) -> None:
    report = tmp_path / "report"
    r = run_cli("chaos", "run", "--quick", "--iterations", "1", "--seed", "7", "--report",
                str(report), "--workdir", str(tmp_path / "work"), timeout=400)
    assert (report / "report.md").exists(), r.stdout + r.stderr
    data = json.loads((report / "report.json").read_text())
    ran = {o["scenario"] for o in data["outcomes"] if o["mode"] == "watchdog"}
    assert ran == set(SCENARIOS)
    failures = [o for o in data["outcomes"] if o["mode"] == "watchdog"
                and (o["violations"] or not o["recovered"])]
    assert r.returncode == 0 and not failures, (report / "report.md").read_text()
    # the baseline shows what the watchdog adds: plain supervisord never notices a hang
    hang = [o for o in data["outcomes"] if o["mode"] == "baseline" and o["scenario"] == "bot-hang"]
    assert hang and not hang[0]["recovered"]
    assert (report / "recovery.svg").read_text().startswith("<svg")
