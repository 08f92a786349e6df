"""The chaos report from known outcomes: the summary table, the failure sections, the chart."""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from chaos.harness import Outcome
from chaos.report import markdown, summarize, svg_chart

META = {"date": "2026-11-23 12:00 UTC", "command": "tradeguard chaos run --iterations 3",
        "seed": 7, "iterations": 3, "passed": False}
TS = 1795437415.8635938  # 2026-11-23 12:36:55.863 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    """Black-box times are local times: pin the zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def outcome(scenario: str, i: int, recovery: float | None, mode: str = "watchdog",
            violations: list[dict] | None = None) -> Outcome:
    return Outcome(scenario, i, f"7:{scenario}:{i}", mode, TS, recovery is not None, recovery,
                   violations or [],
                   blackbox=[{"ts": TS, "role": "watchdog", "pid": 42, "kind": "emergency.started",
                              "message": "restart budget spent"}] if violations else [])


OUTCOMES = [
    outcome("bot-sigkill", 0, 1.0), outcome("bot-sigkill", 1, 3.0), outcome("bot-sigkill", 2, 2.0),
    outcome("kill-switch", 0, 0.5, violations=[{"invariant": "kill-switch-respected",
                                                "detail": "orders placed while engaged: ['x']"}]),
    outcome("bot-hang", 0, None, mode="baseline"),
]


def test_summary_counts_failures_and_recovery_percentiles() -> None:
    rows = {(r["scenario"], r["mode"]): r for r in summarize(OUTCOMES)}
    kill = rows[("bot-sigkill", "watchdog")]
    assert (kill["injections"], kill["invariant_failures"], kill["not_recovered"]) == (3, 0, 0)
    assert (kill["p50"], kill["p95"], kill["max"]) == (2.0, 3.0, 3.0)
    assert rows[("kill-switch", "watchdog")]["invariant_failures"] == 1
    hang = rows[("bot-hang", "baseline")]
    assert hang["not_recovered"] == 1 and hang["p50"] is None


def test_markdown_has_the_table_and_a_reproducible_failure_section() -> None:
    md = markdown(OUTCOMES, META)
    assert "result: **FAIL** (1 failed injections of 4)" in md
    assert "| bot-sigkill | watchdog | 3 | 0 | 0 | 2.00 s | 3.00 s | 3.00 s |" in md
    assert "| bot-hang | baseline | 1 | 0 | 1 | — | — | — |" in md
    section = md[md.index("### kill-switch #0"):]
    assert "`tradeguard chaos run --scenario kill-switch --seed 7 --iterations 1 --keep`" in section
    assert "**kill-switch-respected**: orders placed while engaged" in section
    assert "2026-11-23 12:36:55.863 watchdog[42] emergency.started: restart budget spent" in section


@pytest.mark.parametrize("outcomes", [OUTCOMES, []])
def test_chart_is_well_formed_svg_with_a_bar_per_row(outcomes) -> None:
    svg = ET.fromstring(svg_chart(summarize(outcomes)))
    labels = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    for r in summarize(outcomes):
        assert f"{r['scenario']} ({r['mode']})" in labels
    if outcomes:
        assert "never recovered" in labels
