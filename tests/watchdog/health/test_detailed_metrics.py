"""GET /health/detailed and GET /metrics over a real state.db, black box and heartbeat process."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience.keys import ensure_cipher
from tests.helpers.proc import REPO, child_env
from resilience.state import Fill, NewOrder, StateStore
from tradeguard.paths import RuntimePaths

EXCHANGE = {
    "orders": {"calls": 12, "retries": 3, "retry_budget_left": 97, "breaker": "closed",
               "errors": {"RequestTimeout": 2, "InsufficientFunds": 1},
               "latency": {"count": 12, "sum_s": 0.9,
                           "buckets": {"0.005": 1, "0.05": 6, "0.5": 11, "5.0": 12, "+Inf": 12}}},
    "market_data": {"calls": 40, "errors": {},
                    "latency": {"count": 40, "sum_s": 0.4, "buckets": {"0.01": 30, "0.1": 40, "+Inf": 40}}},
    "broken": {"calls": "many", "latency": {"buckets": {"0.1": 5, "+Inf": 2}}},  # not cumulative
}
DETAIL = {"degradation": "running", "breakers": {"orders": "closed", "market_data": "half-open"},
          "positions": {"BTC/USDT": 0.5}, "open_orders": 1, "exchange": EXCHANGE}


def write_state(paths: RuntimePaths) -> None:
    """One filled buy (position 0.02 BTC) and one open sell, through the real StateStore."""
    cipher, _ = ensure_cipher(paths, allow_generate=True)
    store = StateStore.open(paths.state_db, cipher)
    try:
        for seq, side, state in ((1, "buy", "FILLED"), (2, "sell", "OPEN")):
            cid = f"tg-tg1-{seq}"
            store.add_intent(NewOrder(cid, seq, "tg1", "BTC/USDT", side, "limit", 0.02, 40000.0,
                                      reason="secret strategy reason"))
            store.transition(cid, "SUBMITTING")
            store.transition(cid, "OPEN", exchange_order_id=f"ex{seq}")
            if state == "FILLED":
                store.add_fill(Fill(f"t{seq}", cid, f"ex{seq}", "BTC/USDT", side, 0.02, 40000.0,
                                    fee=0.04, fee_currency="USDT", ts=time.time()))
                store.transition(cid, "FILLED", filled=0.02, average=40000.0)
    finally:
        store.close()


def write_events(paths: RuntimePaths, n: int = 7) -> None:
    """``n`` events recorded by another process through the public recorder API."""
    code = ("import sys; from pathlib import Path; from blackbox import recorder; "
            "from tradeguard.paths import RuntimePaths; "
            "recorder.init(RuntimePaths(Path(sys.argv[1]), Path(sys.argv[2])), 'bot'); "
            f"[recorder.record('order.state', 'test', f'event {{i}}') for i in range({n})]; "
            "assert recorder.flush(5); recorder.close()")
    subprocess.run([sys.executable, "-c", code, str(paths.data_dir), str(paths.logs_dir)],
                   cwd=REPO, env=child_env(), check=True, timeout=30)


@pytest.fixture
def populated(serve, bot_child, data_dir: Path, logs_dir: Path):
    paths = RuntimePaths(data_dir, logs_dir)
    write_state(paths)
    write_events(paths)
    bot_child.start("running", **DETAIL, last_reconcile=time.time() - 3)
    s = serve()
    s.wait_status("healthy")
    return s


def test_detailed_reports_every_part(populated, bot_child):
    d = populated.authed("/health/detailed").json()
    assert d["status"] == "healthy" and d["reason"] == ""
    bot = d["bot"]
    assert bot["state"] == "running" and bot["pid"] == bot_child.proc.pid and bot["alive"]
    assert 0 <= bot["heartbeat_age_s"] < 1 and bot["seq"] >= 1 and bot["uptime_s"] >= 0
    wd = d["watchdog"]
    assert wd["running"] and wd["verdict"] == "healthy" and wd["restarts_in_window"] == 1
    assert wd["budget_left"] == 4 and wd["restarts_total"] == 3
    assert d["degradation"] == "running"
    assert d["breakers"] == {"orders": "closed", "market_data": "half-open"}
    assert d["positions"] == {"BTC/USDT": pytest.approx(0.02)}  # state.db wins over the heartbeat
    assert [o["client_order_id"] for o in d["open_orders"]] == ["tg-tg1-2"]
    assert d["open_orders_count"] == 1
    assert d["orders_by_state"] == {"FILLED": 1, "OPEN": 1}
    assert d["fills_total"] == 1
    assert d["kill_switch"]["engaged"] is False
    assert 2 <= d["last_reconcile_age_s"] < 60
    assert d["blackbox"]["available"] and d["blackbox"]["events"] == 7
    assert set(d["exchange"]) == {"orders", "market_data", "broken"}
    assert "latency" not in d["exchange"]["broken"]  # malformed buckets are dropped, not served
    res = d["resources"]
    assert res["memory"]["total_bytes"] > 0 and res["disk"]["free_bytes"] > 0
    assert "secret strategy reason" not in populated.authed("/health/detailed").text


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fam, **labels) -> float:
    return next(s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_carry_the_snapshot(populated):
    r = populated.authed("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    fams = _families(r.text)
    assert all(name.startswith("tradeguard_") for name in fams)
    assert _value(fams["tradeguard_bot_up"]) == 1
    assert _value(fams["tradeguard_healthy"]) == 1
    assert _value(fams["tradeguard_bot_state"], state="running") == 1
    assert _value(fams["tradeguard_bot_state"], state="safe") == 0
    assert _value(fams["tradeguard_kill_switch_engaged"]) == 0
    assert _value(fams["tradeguard_degradation_level"]) == 0
    assert _value(fams["tradeguard_breaker_state"], breaker="market_data", state="half-open") == 1
    assert _value(fams["tradeguard_breaker_state"], breaker="market_data", state="closed") == 0
    assert fams["tradeguard_watchdog_restarts"].type == "counter"
    assert _value(fams["tradeguard_watchdog_restarts"]) == 3
    assert _value(fams["tradeguard_watchdog_verdicts"], verdict="hung") == 1
    assert _value(fams["tradeguard_orders"], state="OPEN") == 1
    assert _value(fams["tradeguard_fills"]) == 1
    assert _value(fams["tradeguard_position_amount"], symbol="BTC/USDT") == pytest.approx(0.02)
    assert _value(fams["tradeguard_exchange_calls"], dependency="orders") == 12
    assert _value(fams["tradeguard_exchange_retries"], dependency="orders") == 3
    assert _value(fams["tradeguard_exchange_retry_budget_left"], dependency="orders") == 97
    assert _value(fams["tradeguard_exchange_errors"], dependency="orders", **{"class": "RequestTimeout"}) == 2
    lat = fams["tradeguard_exchange_latency_seconds"]
    assert lat.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in lat.samples
               if s.name.endswith("_bucket") and s.labels["dependency"] == "orders"}
    assert buckets["0.05"] == 6 and buckets["+Inf"] == 12
    assert _value(fams["tradeguard_blackbox_events"]) == 7
    assert not any(s.labels.get("dependency") == "broken" for s in lat.samples)


def test_metrics_follow_the_kill_switch(populated):
    populated.cfg.runtime.kill_file.write_text('{"mode": "halt", "reason": "test", "at": 1}')
    populated.wait_status("halted")
    fams = _families(populated.authed("/metrics").text)
    assert _value(fams["tradeguard_kill_switch_engaged"]) == 1
    assert _value(fams["tradeguard_healthy"]) == 0
