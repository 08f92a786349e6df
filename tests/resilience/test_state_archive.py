"""Retention: old closed orders move to monthly archives; positions, P&L and history survive."""
from __future__ import annotations

import time

import pytest

from resilience.state import (Archiver, Fill, StateStore, archive_files, archived_order,
                              history_fills, open_readonly)
from resilience.state import archive as archive_mod
from resilience.crypto import FieldCipher
from tests.resilience._state_support import cipher_for, intent, key_bytes

DAY = 86400.0


def _closed(store: StateStore, i: int, side: str = "buy") -> str:
    o = intent(store, reason=f"why {i}", side=side)
    cid = o.client_order_id
    store.transition(cid, "SUBMITTING", note="submitting")
    store.transition(cid, "OPEN", note="ack", exchange_order_id=f"e{i}", raw={"id": i})
    store.transition(cid, "FILLED", note="filled", filled=0.01, average=100.0 + i)
    store.add_fill(Fill(f"f{i}", cid, f"e{i}", "BTC/USDT", side, 0.01, 100.0 + i, fee=0.01,
                        fee_currency="USDT", ts=time.time(), raw={"trade": i}))
    return cid


@pytest.fixture
def history(data_dir):
    store = StateStore.open(data_dir / "state.db", cipher_for(1), synchronous="NORMAL")
    closed = [_closed(store, i, "buy" if i % 3 else "sell") for i in range(30)]
    live = intent(store, reason="still open")
    store.transition(live.client_order_id, "SUBMITTING")
    store.transition(live.client_order_id, "OPEN", exchange_order_id="live")
    store.adjust_position("ETH/USDT", 2.0, reason="adopted from the exchange", price=10.0)
    yield store, closed, live.client_order_id
    store.close()


def test_old_closed_orders_move_to_a_monthly_archive_keeping_positions_and_history(history, data_dir):
    store, closed, live = history
    db = data_dir / "state.db"
    positions = store.positions()
    fills = history_fills(db, cipher_for(1))
    trail = {cid: store.transitions(cid) for cid in closed}
    archiver = Archiver(store, max_age_s=DAY, batch=7)
    assert archiver.run() == 0 and not archive_files(db)  # nothing is a day old yet

    assert archiver.run(now=time.time() + 2 * DAY) == 31  # 30 orders + the adjustment's audit row
    assert store.orders_by_state() == {"OPEN": 1} and store.counts()["fills"] == 0
    assert [o.client_order_id for o in store.orders()] == [live]
    assert store.counts()["transitions"] == 3  # the live order's
    assert store.positions() == positions  # positions and realized P&L are untouched
    with store._read() as c:  # the freed pages went back to the file system
        assert c.execute("PRAGMA freelist_count").fetchone()[0] == 0
    meta = store.meta
    assert (meta["archived.orders"], meta["archived.fills"]) == ("30", "30")
    assert meta["archived.transitions"] == str(30 * 4 + 1)

    [path] = archive_files(db)
    assert path.parent == data_dir / "archive" and path.stat().st_mode & 0o777 == 0o600
    assert path.name == time.strftime("state-%Y-%m.db", time.gmtime())
    assert history_fills(db, cipher_for(1)) == fills  # encrypted payloads still open
    assert history_fills(db, symbol="ETH/USDT") == []
    assert [f.fill_id for f in history_fills(db, since=fills[10].ts)] == \
        [f.fill_id for f in fills[10:]]
    with open_readonly(path, cipher_for(1)) as r:
        assert r.check(full=True)["integrity"] == "ok"
        assert r.verify_encryption(cipher_for(1)) == 30 * 2 + 30 + 30 * 3 + 1 + 1
        assert {cid: r.transitions(cid) for cid in closed} == trail
        assert r.get_order(closed[4]).reason == "why 4"
    assert archived_order(db, closed[0]).state == "FILLED"
    assert archived_order(db, live) is None

    # ids of archived audit rows are never handed out again
    top = max(t.id for ts in trail.values() for t in ts)
    nxt = intent(store)
    assert store.transitions(nxt.client_order_id)[0].id > top


def test_a_batch_interrupted_after_the_copy_is_finished_by_the_next(history, data_dir, monkeypatch):
    store, closed, _ = history
    db = data_dir / "state.db"
    fills = history_fills(db, cipher_for(1))
    archiver = Archiver(store, max_age_s=DAY, batch=10)
    later = time.time() + 2 * DAY

    def killed(*_a, **_k):
        raise KeyboardInterrupt("killed between the archive's commit and state.db's delete")

    monkeypatch.setattr(archive_mod.Archiver, "_delete", killed)
    with pytest.raises(KeyboardInterrupt):
        archiver.run(now=later)
    monkeypatch.undo()
    assert store.orders_by_state()["FILLED"] == 30  # nothing left state.db
    assert history_fills(db, cipher_for(1)) == fills  # rows in both files are read once
    assert archiver.run(now=later) == 31
    assert "FILLED" not in store.orders_by_state()
    assert history_fills(db, cipher_for(1)) == fills
    with open_readonly(archive_files(db)[0]) as r:
        assert r.counts()["orders"] == 30 and r.counts()["fills"] == 30


def test_an_order_changed_after_its_copy_stays_until_the_next_batch(history, data_dir, monkeypatch):
    store, closed, _ = history
    archiver = Archiver(store, max_age_s=DAY, batch=100)
    real_write = archive_mod.Archiver._write_archive

    def write_then_change(self, month, rows):
        real_write(self, month, rows)
        if not getattr(self, "_changed", False):  # a late fill of an old order arrives
            self._changed = True
            store.add_fill(Fill("late", closed[0], "e0", "BTC/USDT", "buy", 0.001, 99.0))

    monkeypatch.setattr(archive_mod.Archiver, "_write_archive", write_then_change)
    later = time.time() + 2 * DAY
    archiver.run(now=later)
    db = data_dir / "state.db"
    assert store.get_order(closed[0]) is None  # the next batch took it, with the late fill
    assert {f.fill_id for f in history_fills(db) if f.client_order_id == closed[0]} == {"f0", "late"}
    assert store.counts()["fills"] == 0


def test_the_archiver_refuses_nonsense(history):
    store, _, _ = history
    with pytest.raises(Exception, match="positive"):
        Archiver(store, max_age_s=0)


def test_archives_written_before_a_key_rotation_still_give_their_fills(history, data_dir):
    store, closed, _ = history
    db = data_dir / "state.db"
    fills = history_fills(db, cipher_for(1))
    Archiver(store, max_age_s=DAY).run(now=time.time() + 2 * DAY)
    store.close()
    # state.db re-encrypted under a new key (as keys rotate does); the archive keeps the old one
    both = FieldCipher.from_keys(key_bytes(2), key_bytes(1))
    with StateStore.open(db, both) as rotated:
        rotated.reencrypt()
    later = history_fills(db, cipher_for(2))
    assert [(f.fill_id, f.amount, f.price, f.fee) for f in later] == \
        [(f.fill_id, f.amount, f.price, f.fee) for f in fills]
    assert all(f.raw is None for f in later)  # the payloads need the old key
