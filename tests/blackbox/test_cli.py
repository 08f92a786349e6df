"""``tradeguard blackbox tail|export|stats|dumps`` over a real blackbox.db."""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from typing import Iterator

import pytest
from click.testing import CliRunner

from blackbox import recorder
from blackbox.dumps import dump_name
from blackbox.events import Event, to_row
from blackbox.reader import parse_time
from blackbox.store import EventStore
from tests.helpers.proc import run_cli, spawn, stop, tradeguard_cmd, wait_until
from tradeguard.cli import cli


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC (the CLI shows and parses local time)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.fixture
def recorded(paths, start_recorder):
    """A db with events from two roles: 3 old ones (2 h ago, from an earlier bot process) and
    6 recent ones."""
    store = EventStore(paths.blackbox_db, max_events=1000, max_age_s=86400, max_bytes=10**6)
    old = time.time() - 7200
    store.write([to_row(Event(old + i, i + 1, 4242, "bot", "order.intent", "orders",
                              "info", f"old intent {i}", {"i": i}, False)) for i in range(3)],
                durable=True)
    store.close()
    start_recorder("bot")
    recorder.record("order.intent", "orders", "buy BTC/USDT", symbol="BTC/USDT", amount=0.01)
    recorder.record("order.fill", "orders", "filled", price=50000.5)
    recorder.record("risk.blocked", "risk", "max position", severity="warning", limit="max_position")
    recorder.record("kill.engaged", "killswitch", "halt: manual", severity="critical", critical=True)
    recorder.close()
    recorder.init(paths, "watchdog")
    recorder.record("watchdog.verdict", "watchdog", "bot hung", severity="error", verdict="hung")
    recorder.record("watchdog.restart", "watchdog", "restarting", critical=True)
    recorder.close()
    return paths


def invoke(paths, *args: str):
    res = CliRunner().invoke(cli, ["blackbox", args[0], "--data-dir", str(paths.data_dir),
                                   "--logs-dir", str(paths.logs_dir), *args[1:]])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res


def kinds(output: str) -> list[str]:
    return [line.split()[4] for line in output.splitlines()]


def test_tail_shows_the_newest_events_oldest_first_in_readable_lines(recorded, utc):
    res = invoke(recorded, "tail", "-n", "3")
    assert res.exit_code == 0
    assert kinds(res.output) == ["kill.engaged", "watchdog.verdict", "watchdog.restart"]
    first = res.output.splitlines()[0]
    assert first.split()[2].startswith("bot[") and " critical kill.engaged killswitch: halt: manual" in first
    assert 'verdict=hung' in res.output.splitlines()[1]


def test_tail_filters_by_kind_prefix_source_role_and_since(recorded, utc):
    assert kinds(invoke(recorded, "tail", "--kind", "order").output) == ["order.intent"] * 4 + ["order.fill"]
    assert kinds(invoke(recorded, "tail", "--kind", "order", "--since", "10m").output) == \
        ["order.intent", "order.fill"]
    assert kinds(invoke(recorded, "tail", "--source", "risk").output) == ["risk.blocked"]
    assert kinds(invoke(recorded, "tail", "--role", "watchdog", "--kind", "watchdog.r").output) == \
        ["watchdog.restart"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600)) + "Z"
    assert len(invoke(recorded, "tail", "--since", iso, "-n", "100").output.splitlines()) == 6


def test_export_jsonl_and_csv_and_refuses_to_overwrite(recorded, tmp_path, utc):
    out = tmp_path / "incident.jsonl"
    res = invoke(recorded, "export", "--since", "1h", str(out))
    assert res.exit_code == 0 and "exported 6 events" in res.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["kind"] for e in events][:2] == ["order.intent", "order.fill"]
    assert events[0]["fields"] == {"symbol": "BTC/USDT", "amount": 0.01}
    assert {e["role"] for e in events} == {"bot", "watchdog"}

    again = invoke(recorded, "export", "--since", "1h", str(out))
    assert again.exit_code == 2 and "already exists; use --force" in again.output
    assert len(out.read_text().splitlines()) == 6  # untouched

    table = tmp_path / "incident.csv"
    res = invoke(recorded, "export", "--since", "3h", "--kind", "order", str(table))
    assert res.exit_code == 0
    rows_ = list(csv.DictReader(table.open()))
    assert [r["kind"] for r in rows_] == ["order.intent"] * 4 + ["order.fill"]
    assert json.loads(rows_[-1]["fields"]) == {"price": 50000.5}
    assert invoke(recorded, "export", "--since", "1h", "--format", "csv", "--force",
                  str(out)).exit_code == 0
    assert out.read_text().startswith("id,time,ts,role,pid,seq")
    everything = tmp_path / "all.jsonl"  # --since is optional: every kept event
    res = invoke(recorded, "export", str(everything))
    assert res.exit_code == 0 and len(everything.read_text().splitlines()) >= 6


def test_stats_counts_events_and_drops(recorded):
    res = invoke(recorded, "stats", "--json")
    data = json.loads(res.output)
    assert data["events"] == 9 and data["by_role"] == {"bot": 7, "watchdog": 2}
    assert data["dropped_total"] == 0


def test_dumps_lists_json_and_fault_files_with_summaries(paths, utc):
    paths.crash_dir.mkdir(parents=True)
    t = 1_795_429_000.0
    dump = {"format": "tradeguard-crashdump/1", "ts": t, "role": "bot", "pid": 42,
            "reason": "unhandled exception", "exception": {"type": "KeyError", "message": "'x'"}}
    (paths.crash_dir / dump_name(t, "bot", 42, "json")).write_text(json.dumps(dump))
    (paths.crash_dir / dump_name(t + 1, "watchdog", 43, "fault")).write_text(
        "Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n")
    (paths.crash_dir / dump_name(t + 2, "bot", 44, "json")).write_text("{not json")
    res = invoke(paths, "dumps")
    lines = res.output.splitlines()
    assert res.exit_code == 0 and len(lines) == 3
    assert "bot[42] unhandled exception — KeyError: 'x'" in lines[0]
    assert "watchdog[43] fatal error (faulthandler) — Fatal Python error: Segmentation fault" in lines[1]
    assert "bot[44] unreadable" in lines[2]


def test_no_dumps_and_no_database_are_clear_messages(paths):
    assert "no crash dumps in" in invoke(paths, "dumps").output
    res = invoke(paths, "tail")
    assert res.exit_code == 2 and "no black box at" in res.output


def test_bad_arguments_exit_2_without_a_traceback(recorded, tmp_path):
    d = ["--data-dir", str(recorded.data_dir), "--logs-dir", str(recorded.logs_dir)]
    for args in (["tail", "--since", "yesterday-ish"], ["export", "--since", "soon", str(tmp_path / "x")],
                 ["tail", "-n", "-3"], ["export", "--since", "1h", "--format", "xml", "x"]):
        res = run_cli("blackbox", *args, *d)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and "Error" in res.stderr
    res = run_cli("blackbox", "tail", "--since", "yesterday-ish", *d)
    assert "is not a time" in res.stderr


def test_tail_follow_prints_new_events_and_exits_cleanly_on_sigterm(recorded, tmp_path, start_recorder):
    start_recorder("bot")
    recorder.record("live.tick", "test", "tick 0", critical=True)
    log = tmp_path / "follow.out"
    p = spawn(tradeguard_cmd("blackbox", "tail", "-f", "-n", "1", "--kind", "live",
                             "--data-dir", str(recorded.data_dir),
                             "--logs-dir", str(recorded.logs_dir)), log=log)
    try:
        wait_until(lambda: "tick 0" in log.read_text(), timeout=10, message="the initial tail")
        for i in range(1, 4):
            recorder.record("live.tick", "test", f"tick {i}", critical=i != 2)
            recorder.record("other.kind", "test", "filtered out", critical=True)
        wait_until(lambda: "tick 3" in log.read_text(), timeout=10, message="followed events")
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        stop(p)
    lines = log.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [f"tick {i}" for i in range(4)]


def test_parse_time_accepts_iso_relative_and_unix_seconds(utc):
    now = 1_795_429_000.0
    assert parse_time("10m", now) == now - 600
    assert parse_time("2h", now) == now - 7200
    assert parse_time(" 1.5d ", now) == now - 129600
    assert parse_time("2026-11-23T10:00:00Z") == parse_time("2026-11-23 10:00:00") == 1795428000.0
    assert parse_time("2026-11-23T12:00:00+02:00") == 1795428000.0
    assert parse_time("1795428000") == 1795428000.0
    for bad in ("", "10 minutes", "-5m", "2026-13-01"):
        with pytest.raises(ValueError, match="is not a time"):
            parse_time(bad, now)
