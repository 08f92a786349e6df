"""The recorder in this process: buffering, durability of critical events, bounds, redaction,
an unavailable or corrupt database, fork."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

from blackbox import recorder, store
from blackbox.events import MAX_FIELDS_BYTES, MAX_MESSAGE_CHARS
from blackbox.redact import register_secret
from tests.blackbox.conftest import meta, raw_bytes, rows
from tests.helpers.proc import wait_until


def count(db) -> int:
    return rows(db, "SELECT count(*) FROM events")[0][0]


def test_events_before_init_are_kept_and_written_by_init(paths, start_recorder):
    recorder.record("boot.config", "cli", "loaded config", step=1)
    assert recorder.get() is None
    assert [e["kind"] for e in recorder.recent(5)] == ["boot.config"]
    start_recorder("bot")
    recorder.record("bot.state", "bot", "running", critical=True)
    got = rows(paths.blackbox_db, "SELECT role, seq, kind, critical FROM events ORDER BY seq")
    assert got == [("bot", 1, "boot.config", 0), ("bot", 2, "bot.state", 1)]


def test_noncritical_events_reach_disk_within_the_flush_interval(paths, start_recorder):
    start_recorder(flush_interval_ms=50)
    for i in range(100):
        recorder.record("tick", "bot", "loop", i=i)
    wait_until(lambda: count(paths.blackbox_db) == 100, timeout=5, message="100 events written")
    seqs = [r[1] for r in rows(paths.blackbox_db)]
    assert seqs == list(range(1, 101))


def test_critical_event_is_durable_with_everything_before_it_when_record_returns(paths, start_recorder):
    start_recorder(flush_interval_ms=10000)  # the writer would not flush for 10 s
    for i in range(5):
        recorder.record("tick", "bot", "loop", i=i)
    recorder.record("kill.engaged", "bot", "kill switch", severity="critical", critical=True)
    got = rows(paths.blackbox_db, "SELECT seq, kind, severity FROM events ORDER BY seq")
    assert got == [(i + 1, "tick", "info") for i in range(5)] + [(6, "kill.engaged", "critical")]


def test_size_bound_drops_the_oldest_and_counts_them(paths, start_recorder):
    start_recorder(max_events=1000, flush_interval_ms=5)
    total = 5000
    for i in range(total):
        recorder.record("flood", "bot", "x", i=i)
        if i % 500 == 499:
            assert recorder.flush(10)
            assert count(paths.blackbox_db) <= 1000
    assert recorder.flush(10)
    kept = [json.loads(r[4])["i"] for r in rows(paths.blackbox_db)]
    m = meta(paths.blackbox_db)
    assert len(kept) <= 1000 and kept == list(range(total - len(kept), total))  # the newest
    assert int(m["dropped_max_events"]) == total - len(kept)
    assert int(m["events"]) == len(kept)


def test_size_bound_in_bytes_holds_and_the_stored_size_is_exact(paths, start_recorder):
    start_recorder(max_mb=1.0, flush_interval_ms=5)
    total = 600
    for i in range(total):
        recorder.record("big", "bot", "x", i=i, blob="y " * 2000)  # ~4 KiB each
    assert recorder.flush(10)
    kept = [json.loads(r[4])["i"] for r in rows(paths.blackbox_db)]
    m = meta(paths.blackbox_db)
    assert 200 < len(kept) < 260 and kept == list(range(total - len(kept), total))
    assert int(m["dropped_max_mb"]) == total - len(kept) and "dropped_max_events" not in m
    (actual,) = rows(paths.blackbox_db, f"SELECT sum({store._SIZE_SQL}) FROM events")[0]
    assert int(m["bytes"]) == actual <= 1024 * 1024


def test_events_older_than_max_age_are_dropped_and_counted(paths):
    from blackbox.events import Event, to_row
    from blackbox.store import EventStore

    now = time.time()
    store = EventStore(paths.blackbox_db, max_events=1000, max_age_s=3600, max_bytes=10**6)
    old = [to_row(Event(now - 7200 + i, i, 1, "bot", "old", "t", "info", "m", {}, False))
           for i in range(10)]
    store.write(old, durable=False)  # the first write of a store prunes by age
    assert count(paths.blackbox_db) == 0
    new = [to_row(Event(now, 11, 1, "bot", "new", "t", "info", "m", {}, False))]
    store.write(new, durable=True)
    store.close()
    assert [r[3] for r in rows(paths.blackbox_db)] == ["new"]
    assert int(meta(paths.blackbox_db)["dropped_max_age"]) == 10


def test_oversized_fields_and_messages_are_truncated_with_a_marker(paths, start_recorder):
    start_recorder()
    recorder.record("big", "bot", "word " * 2000, blob="z " * 25_000, critical=True)
    (message, fields), = rows(paths.blackbox_db, "SELECT message, fields FROM events")
    assert len(message) == MAX_MESSAGE_CHARS and message.endswith("[truncated]")
    assert len(fields.encode()) <= MAX_FIELDS_BYTES
    f = json.loads(fields)
    assert f["_truncated"] is True and f["_bytes"] > 50_000 and f["_preview"].startswith('{"blob":"z z')


def test_secrets_are_redacted_before_anything_is_written(paths, start_recorder):
    secret = "registered-secret-value-9f8e7d"
    register_secret(secret)
    hexsig = "ab12" * 16
    start_recorder()
    recorder.record("order.intent", "orders", f"signed with {secret}", critical=True,
                    api_key="AKIA-live-key", password="hunter2-pass",
                    headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload"},
                    url=f"https://api.example/order?symbol=BTCUSDT&signature={hexsig}",
                    note=f"nested {secret}")
    recorder.close()
    data = raw_bytes(paths.blackbox_db)
    for leaked in (secret, "AKIA-live-key", "hunter2-pass", "eyJhbGciOiJIUzI1NiJ9", hexsig):
        assert leaked.encode() not in data
    (message, fields), = rows(paths.blackbox_db, "SELECT message, fields FROM events")
    f = json.loads(fields)
    assert message == "signed with ***"
    assert f["api_key"] == "***" and f["password"] == "***" and f["note"] == "nested ***"
    assert f["url"].endswith("signature=***")
    assert all(secret not in json.dumps(e) for e in recorder.recent(10))


def test_record_never_raises_on_odd_input(paths, start_recorder):
    start_recorder()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    recorder.record("odd", "bot", "weird severity", severity="loud", critical=True)
    recorder.record("odd", "bot", "unserializable", obj=Unprintable(), s={1, 2}, critical=True)
    got = rows(paths.blackbox_db, "SELECT severity, fields FROM events ORDER BY seq")
    assert got[0] == ("info", '{"severity_given":"loud"}')
    assert "_unserializable" in json.loads(got[1][1])


def test_undecodable_text_is_written_escaped_and_does_not_stop_the_writer(paths, start_recorder):
    rec = start_recorder()
    name = os.fsdecode(b"/data/caf\xe9.toml")  # a Latin-1 file name: a lone surrogate in a str
    recorder.record("odd\udcff", "bot", f"cannot read {name}", path=name, critical=True,
                    **{"k\ud800": 1})
    recorder.record("after", "bot", "next event", critical=True)
    got = rows(paths.blackbox_db, "SELECT kind, message, fields FROM events ORDER BY seq")
    assert [g[0] for g in got] == ["odd\\udcff", "after"]
    assert got[0][1] == "cannot read /data/caf\\udce9.toml"
    assert json.loads(got[0][2])["path"] == "/data/caf\\udce9.toml"
    assert rec.stats()["failing"] is False
    assert [e["kind"] for e in recorder.recent()] == ["odd\\udcff", "after"]


def test_unavailable_database_keeps_events_in_memory_then_writes_them(paths, start_recorder, caplog):
    paths.blackbox_db.mkdir(parents=True)  # a directory where the database should be
    start_recorder(flush_interval_ms=10)
    for i in range(20):
        recorder.record("tick", "bot", "loop", critical=i % 10 == 0, i=i)  # never raises
    assert recorder.flush(5) is False and recorder.get().stats()["failing"] is True
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per event
    shutil.rmtree(paths.blackbox_db)
    assert recorder.flush(10)
    assert [json.loads(r[4])["i"] for r in rows(paths.blackbox_db)] == list(range(20))


def test_corrupt_database_is_moved_aside_and_recreated(paths, start_recorder):
    paths.data_dir.mkdir(exist_ok=True)
    paths.blackbox_db.write_bytes(b"this is not a sqlite database" * 200)
    start_recorder()
    recorder.record("bot.start", "bot", "started", critical=True)
    assert [r[3] for r in rows(paths.blackbox_db)] == ["bot.start"]
    aside = [p.name for p in paths.data_dir.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert (paths.data_dir / aside[0]).read_bytes().startswith(b"this is not a sqlite")


def test_a_process_that_still_had_the_replaced_file_open_switches_to_the_new_one(paths, start_recorder):
    start_recorder()
    recorder.record("one", "bot", "before", critical=True)
    os.replace(paths.blackbox_db, paths.data_dir / "moved.db")  # as a quarantine by another process
    recorder.record("two", "bot", "after", critical=True)
    assert [r[3] for r in rows(paths.blackbox_db)] == ["two"]


def test_forked_child_records_under_its_own_pid_and_sequence(paths, start_recorder):
    start_recorder()
    recorder.record("parent", "bot", "before fork", critical=True)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            recorder.record("child", "bot", "in child", critical=True)
            code = 0 if recorder.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.record("parent", "bot", "after fork", critical=True)
    got = rows(paths.blackbox_db, "SELECT pid, seq, kind FROM events ORDER BY id")
    me = os.getpid()
    assert got == [(me, 1, "parent"), (pid, 1, "child"), (me, 2, "parent")]


def test_signal_handlers_may_record_while_the_main_thread_records(paths, start_recorder):
    start_recorder(flush_interval_ms=5)
    fired = []

    def on_alarm(signum, frame):
        recorder.record("from.signal", "test", "alarm", critical=True)
        fired.append(1)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        n, deadline = 0, time.monotonic() + 0.5
        while time.monotonic() < deadline:  # no deadlock, however the two interleave
            recorder.record("main.loop", "test", "tick", critical=n % 3 == 0)
            n += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert recorder.flush(10) and fired
    seqs = [r[0] for r in rows(paths.blackbox_db, "SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(1, n + len(fired) + 1))  # every event, each seq once


def test_recent_returns_the_last_events_oldest_first_written_or_not(start_recorder):
    rec = start_recorder(ring_kb=64, flush_interval_ms=10_000)
    for i in range(2000):
        recorder.record("tick", "bot", "loop", i=i)
    assert rec.stats()["ring_events"] == 0  # nothing written yet: all of them pending
    assert [e["fields"]["i"] for e in recorder.recent(3)] == [1997, 1998, 1999]
    assert recorder.flush(10)
    recorder.record("tick", "bot", "loop", i=2000)  # pending again
    held = [e["fields"]["i"] for e in recorder.recent()]
    assert held == list(range(held[0], 2001)) and 500 < len(held) < 2000
    assert rec.stats()["ring_events"] == len(held) - 1
    assert [e["fields"]["i"] for e in recorder.recent(3)] == [1998, 1999, 2000]
    for i in (2001, 2002):  # three pending: n = 4 spans both kinds
        recorder.record("tick", "bot", "loop", i=i)
    assert [e["fields"]["i"] for e in recorder.recent(4)] == [1999, 2000, 2001, 2002]
    assert len(recorder.recent(10**6)) == len(held) + 2
    assert recorder.recent(0) == []


def test_the_ring_keeps_redacted_events_and_a_memory_only_recorder_hands_it_on(start_recorder):
    secret = "zq9" + "Kx7" * 16
    register_secret(secret)
    start_recorder(ring_kb=64)
    recorder.record("auth", "bot", f"key {secret}", api_key=secret)
    assert recorder.flush(10)
    recorder.close()  # back to memory only: the ring goes with the events to the fallback
    recorder.record("after", "cli", "closed")
    got = recorder.recent()
    assert [e["kind"] for e in got] == ["auth", "after"]
    assert secret not in json.dumps(got) and got[0]["fields"]["api_key"] == "***"


def test_the_writer_keeps_a_small_page_cache_in_the_recording_process(start_recorder):
    rec = start_recorder()
    recorder.record("tick", "bot", "loop", critical=True)  # written: the connection is open
    conn = rec.store._conn
    assert conn is not None
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -store.CACHE_KIB
