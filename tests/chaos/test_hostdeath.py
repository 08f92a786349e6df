"""Issue #17's proof scenarios, once each against the real system (supervisord, paper exchange,
bot, watchdog; real SIGKILLs; the price driven through the stops with the control API)."""
from __future__ import annotations

import re

import pytest

from chaos.hostdeath import DRIVE_PCT
from tests.chaos.test_chaos_smoke import _failures, _run
from tradeguard.config import RiskConfig

STOP_LOSS_PCT = RiskConfig().stop_loss_pct  # the chaos configuration keeps the default

LOSS_RE = re.compile(r"(\w+/\w+): entry [\d.]+, stop ([\d.]+) % \([\d.]+\), filled [\d.e-]+ at "
                     r"[\d.]+: loss ([\d.]+) % \(bound ([\d.]+) %\)")
BASELINE_RE = re.compile(r"(\w+/\w+): entry [\d.]+, no stop, .*?: loss ([\d.]+) % \(unbounded\)")


def _one(tmp_path, name: str) -> dict:
    r, data, md = _run(tmp_path, name, timeout=230)
    outcomes = [o for o in data["outcomes"] if o["mode"] == "watchdog"]
    assert [o["scenario"] for o in outcomes] == [name]
    assert r.returncode == 0 and not _failures(data), md
    return outcomes[0]


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(250)
def test_host_death_stops_bound_the_loss(tmp_path) -> None:
    # the scenario itself fails when no stop rests on a held position (it finds no moment to kill
    # the host), when a stop fills below its bound, or when the restarted bot does not adopt it
    o = _one(tmp_path, "host-death")
    rows = LOSS_RE.findall(o["note"])
    assert rows, o["note"]
    for symbol, stop_pct, loss, bound in rows:
        assert abs(float(stop_pct) - STOP_LOSS_PCT) <= 0.01, o["note"]  # the default distance
        assert float(stop_pct) <= float(loss) <= float(bound) < DRIVE_PCT / 2, o["note"]


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(250)
def test_host_death_without_stops_loses_what_the_price_loses(tmp_path) -> None:
    o = _one(tmp_path, "host-death-no-stops")
    rows = BASELINE_RE.findall(o["note"])
    assert rows, o["note"]
    for symbol, loss in rows:
        assert float(loss) > DRIVE_PCT * 0.75, o["note"]


@pytest.mark.attack
@pytest.mark.slow
@pytest.mark.timeout(250)
def test_exit_window_never_naked_never_sold_twice(tmp_path) -> None:
    o = _one(tmp_path, "exit-window")
    # the failpoint fired between a real exit's stop cancel and its sell: a position was bare then
    assert re.search(r"without a stop at the kill: \w+/\w+", o["note"]), o["note"]
