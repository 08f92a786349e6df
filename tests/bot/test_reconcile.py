"""The order sequence moves above what the exchange has seen (after a rebuild), never below."""
from __future__ import annotations

from bot.reconcile import raise_sequence
from resilience.keys import ensure_cipher
from resilience.state import StateStore
from tradeguard.paths import RuntimePaths


def _store(data_dir, logs_dir) -> StateStore:
    paths = RuntimePaths(data_dir, logs_dir)
    cipher, _ = ensure_cipher(paths, allow_generate=True, environ={})
    return StateStore.open(paths.state_db, cipher)


def test_raise_sequence_moves_above_the_highest_seen_and_never_lowers(data_dir, logs_dir):
    store = _store(data_dir, logs_dir)
    try:
        _, first = store.next_client_order_id("tg1")
        far = first + 10**9  # an id the exchange has that this database never handed out
        raise_sequence(store.path, "orders", far)
        cid, seq = store.next_client_order_id("tg1")
        assert seq == far + 1 and cid == f"tg-tg1-{far + 1}"
        raise_sequence(store.path, "orders", first)  # lower: no effect
        assert store.next_client_order_id("tg1")[1] == far + 2
        raise_sequence(store.path, "emergency", far * 2)  # not used yet: starts above it
        assert store.next_client_order_id("tg1", emergency=True) == (f"tg-tg1-x{far * 2 + 1}", far * 2 + 1)
    finally:
        store.close()
