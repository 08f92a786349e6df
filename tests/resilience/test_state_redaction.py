"""Exchange error text is redacted inside the state store before it is stored (issue 19 item 4),
and an encrypted column that holds NULL reads back as None (item 7): real SQLite files, and the
real bot against the paper exchange with an error body that echoes the API key and secret."""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from blackbox.redact import register_secret
from resilience import schema
from resilience.keys import ensure_cipher
from resilience.state import StateStore, open_readonly
from tests.bot.test_safety import BUY_ONCE
from tests.helpers.proc import wait_until
from tests.resilience._state_support import cipher_for, intent

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # Binance-shaped
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
ECHO = f"Invalid API-key, IP, or permissions for action. apiKey={KEY}&signature=ab12cd&secret={SECRET}"


def decrypted_plaintexts(db: Path, cipher) -> list[str]:
    """Every encrypted value of the database, decrypted; plus every plain text column."""
    out: list[str] = []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        c.row_factory = sqlite3.Row
        for table, _pk, cols in schema.ENCRYPTED:
            for r in c.execute(f"SELECT * FROM {table}"):
                for col in cols:
                    if r[col] is not None:
                        out.append(cipher.decrypt(table, schema.aad_pk(table, r), col, r[col]).decode())
        out += [str(v) for (v,) in c.execute("SELECT value FROM meta")]
    return out


def assert_clean(data_dir: Path, cipher, *leaks: str) -> list[str]:
    texts = decrypted_plaintexts(data_dir / "state.db", cipher)
    raw = b"".join(p.read_bytes() for p in data_dir.glob("state.db*"))
    for leak in leaks:
        assert all(leak not in t for t in texts), f"{leak[:8]}... stored in a decrypted value"
        assert leak.encode() not in raw
    return texts


def test_every_writer_of_free_text_is_redacted_before_it_is_stored(data_dir):
    register_secret("registered-exchange-secret-42")
    store = StateStore.open(data_dir / "state.db", cipher_for(1))
    try:
        o = intent(store, reason=f"entry; server said {ECHO}")
        store.transition(o.client_order_id, "SUBMITTING", note="registered-exchange-secret-42 echoed")
        done = store.transition(o.client_order_id, "REJECTED", note=ECHO, reason=f"AuthenticationError: {ECHO}")
        store.set_needs_reconciliation(True, f"fetch failed: {ECHO}")
        store.adjust_position("BTC/USDT", 0.5, reason=f"exchange says {ECHO}")
        assert KEY not in done.reason and "***" in done.reason
        assert o.reason is not None and KEY not in o.reason  # what add_intent returns matches
    finally:
        store.close()
    texts = assert_clean(data_dir, cipher_for(1), KEY, SECRET, "registered-exchange-secret-42")
    assert any("Invalid API-key" in t for t in texts)  # the useful part of the message stays


def test_an_encrypted_column_holding_null_reads_back_as_none(data_dir):
    with StateStore.open(data_dir / "state.db", cipher_for(1)) as store:
        o = intent(store, reason="why")
        store.transition(o.client_order_id, "SUBMITTING", reason=None)
        assert store.get_order(o.client_order_id).reason is None
        assert store.transitions(o.client_order_id)[0].note is None  # written without a note
    with closing(open_readonly(data_dir / "state.db", cipher_for(1))) as r:
        assert r.get_order(o.client_order_id).reason is None


def test_the_real_bot_never_stores_an_error_that_echoes_its_keys(bot_factory, paper_exchange_factory,
                                                               tmp_path):
    strategy = tmp_path / "buy_once.py"
    strategy.write_text(BUY_ONCE)
    paper = paper_exchange_factory()
    body = json.dumps({"code": -2010, "msg": f"Account has insufficient balance for requested action. "
                                             f"apiKey={paper.api_key} secret={paper.secret}"})
    paper.add_fault(method="POST", path="/api/v3/order", action="respond", status=400, body=body,
                    times=None)
    bot = bot_factory(paper=paper, strategy=f"{strategy}:BuyOnce")
    bot.wait_state("running", "degraded", "safe", timeout=30)  # state.db exists from here on
    reader = bot.state_reader()
    wait_until(lambda: reader.orders("REJECTED"), timeout=30, message="the order rejected")
    bot.stop()
    cipher, _ = ensure_cipher(bot.paths, allow_generate=False)
    texts = assert_clean(bot.paths.data_dir, cipher, paper.api_key, paper.secret)
    assert any("insufficient balance" in t for t in texts)  # the rejection reason itself is kept
