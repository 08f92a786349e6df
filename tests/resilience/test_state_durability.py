"""Real processes killed with SIGKILL, concurrent writers, readers and backups during writes."""
from __future__ import annotations

import random
import signal
import sqlite3
import time
from contextlib import closing

from resilience.state import BUSY_TIMEOUT_MS, StateStore, open_readonly
from tests.helpers.proc import wait_until
from tests.resilience._state_support import cipher_for, key_bytes, running_writer, spawn_writer

KEY = key_bytes(1)


def _acked(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines if line.startswith("ack ")}


def test_sigkill_at_random_moments_loses_no_committed_intent(data_dir):
    db = data_dir / "state.db"
    rng = random.Random(20261123)
    acked: set[str] = set()
    for _ in range(20):
        with running_writer(db, KEY) as writer:
            writer.wait_for(1 + rng.randint(1, 25))  # "ready" + a random number of commits
            writer.proc.send_signal(signal.SIGKILL)
            assert writer.proc.wait(5) == -signal.SIGKILL
        lines = writer.drain()
        assert lines[0] == "ready None", lines[0]  # never quarantined: the file stayed sound
        acked |= _acked(lines)
    with closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = StateStore.open(db, cipher_for(1))
    try:
        stored = {o.client_order_id for o in store.orders()}
        assert acked <= stored, f"lost committed intents: {sorted(acked - stored)[:5]}"
        assert len(acked) >= 40
        assert store.quarantined is None
        # each stored intent is whole: its audit row and encrypted reason came with it
        for o in store.orders():
            assert o.reason.startswith("writer tg1 #")
            assert store.transitions(o.client_order_id)[0].to_state == "INTENT"
    finally:
        store.close()
    assert not list(data_dir.glob("state.db.corrupt-*"))


def test_two_processes_writing_at_once_never_see_database_is_locked(data_dir):
    db = data_dir / "state.db"
    StateStore.open(db, cipher_for(1)).close()
    procs = [spawn_writer(db, KEY, bot, count=200) for bot in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
        assert b"locked" not in err
    store = StateStore.open(db, cipher_for(1))
    try:
        orders = store.orders()
        assert len(orders) == 400
        assert len({o.client_order_id for o in orders}) == 400
        assert store.kv_get("last-a")["i"] == 198 and store.kv_get("last-b")["i"] == 198
        writers = [o.bot_id for o in orders]  # in commit order
        switches = sum(1 for x, y in zip(writers, writers[1:]) if x != y)
        assert switches >= 2, "the two writers did not overlap"
    finally:
        store.close()


def test_readonly_reader_while_a_writer_commits(data_dir):
    db = data_dir / "state.db"
    StateStore.open(db, cipher_for(1)).close()
    with running_writer(db, KEY) as lines:
        lines.wait_for(2)
        with open_readonly(db, cipher_for(1)) as r:
            seen = [len(r.orders()) for _ in range(30)]
            assert seen == sorted(seen) and seen[-1] >= 1  # never goes back, never fails
            assert not r._conn.in_transaction  # no read transaction is left open
            n = len(r.orders())
            wait_until(lambda: len(r.orders()) > n + 5, timeout=10, message="reader sees new rows")
            assert all(o.reason.startswith("writer") for o in r.orders())


def test_backup_taken_while_writing_is_consistent(data_dir, tmp_path):
    db = data_dir / "state.db"
    StateStore.open(db, cipher_for(1)).close()
    with running_writer(db, KEY) as lines:
        lines.wait_for(30)
        with open_readonly(db) as r:
            r.backup(tmp_path / "backup.db")
        acked_before = _acked(lines.lines)
        lines.wait_for(len(lines.lines) + 5)  # the writer kept going during and after
    assert (tmp_path / "backup.db").stat().st_mode & 0o077 == 0
    with open_readonly(tmp_path / "backup.db", cipher_for(1)) as b:
        report = b.check()
        assert report["integrity"] == "ok"
        orders = b.orders()
        ids = {o.client_order_id for o in orders}
        # a snapshot: it holds at least what was acknowledged before the backup began...
        assert acked_before <= ids
        # ...and every order in it is whole (its intent audit row is in the same snapshot)
        assert report["counts"]["transitions"] >= len(orders)
        assert all(b.transitions(cid)[0].to_state == "INTENT" for cid in ids)


def test_automatic_checkpoint_does_not_wait_for_a_reader_on_an_old_snapshot(data_dir):
    store = StateStore(data_dir / "state.db", cipher_for(1), checkpoint_every=1)
    try:
        store.kv_set("k", 0)
        with closing(sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM orders").fetchone()  # holds this snapshot
            store.kv_set("k", 1)  # commits first, then checkpoints: a TRUNCATE would wait 5 s
            t0 = time.monotonic()
            store.kv_set("k", 2)
            took = time.monotonic() - t0
            reader.execute("COMMIT")
        assert took < BUSY_TIMEOUT_MS / 1000 / 2, f"a write waited {took:.2f}s for a reader"
        assert store.kv_get("k") == 2
        store.checkpoint()  # explicit: waits, and with no reader left truncates the WAL
        assert (data_dir / "state.db-wal").stat().st_size == 0
    finally:
        store.close()
