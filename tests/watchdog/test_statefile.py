"""watchdog.json: the shared contract, atomic replacement, and what survives a restart."""
from __future__ import annotations

import json

from watchdog.statefile import EmergencyState, WatchdogState, load_state, save_state

CONTRACT_KEYS = {"pid", "ts", "manager", "verdict", "evidence", "since", "bot_pid", "restarts",
                 "restarts_total", "restart_budget", "restart_window_s", "budget_left",
                 "emergency", "verdict_counts", "emergency_actions_total"}
EMERGENCY_KEYS = {"state", "started_at", "finished_at", "reason", "orders", "detail"}


def test_contract_keys_and_round_trip(data_dir):
    path = data_dir / "watchdog.json"
    st = WatchdogState(pid=11, manager="supervisor", restart_budget=5, restart_window_s=600.0,
                       restarts=[1.0, 2.0], restarts_total=7, verdict_counts={"hung": 2},
                       emergency=EmergencyState("running", 3.0, None, "budget spent", 1, ""),
                       emergency_actions_total=1, restart_streak=2)
    save_state(path, st, durable=True)
    raw = json.loads(path.read_text())
    assert CONTRACT_KEYS <= set(raw) and set(raw["emergency"]) == EMERGENCY_KEYS
    assert not list(data_dir.glob(".watchdog.json.*"))  # no temp file left behind
    fresh = WatchdogState(pid=12, manager="supervisor", restart_budget=5, restart_window_s=600.0)
    assert load_state(path, fresh)
    assert fresh.restarts == [1.0, 2.0] and fresh.restarts_total == 7
    assert fresh.verdict_counts == {"hung": 2} and fresh.restart_streak == 2
    assert fresh.emergency.state == "running" and fresh.emergency.reason == "budget spent"
    assert fresh.pid == 12  # identity is the new watchdog's


def test_missing_or_corrupt_file_keeps_defaults(data_dir):
    path = data_dir / "watchdog.json"
    st = WatchdogState(pid=1, manager="standalone", restart_budget=5, restart_window_s=600.0)
    assert not load_state(path, st)
    for bad in ("{not json", "[]", '{"restarts": "abc"}', '{"emergency": {"state": "weird"}}'):
        path.write_text(bad)
        assert not load_state(path, st)
        assert st.restarts == [] and st.emergency.state == "none"
