"""``tradeguard db check|backup`` and ``tradeguard keys generate|rotate``: output and exit codes."""
from __future__ import annotations

import json
import os
import time

import pytest

from resilience import schema
from resilience.keys import ensure_cipher, load_field_key
from resilience.state import Archiver, Fill, StateStore, archive_files, open_readonly
from tests.helpers.proc import run_cli
from tests.resilience._state_support import intent
from tradeguard.paths import RuntimePaths


@pytest.fixture
def paths(data_dir, logs_dir) -> RuntimePaths:
    return RuntimePaths(data_dir, logs_dir)


def _cli(paths: RuntimePaths, *args: str, env: dict | None = None):
    r = run_cli(*args, "--data-dir", str(paths.data_dir), "--logs-dir", str(paths.logs_dir),
                env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def populated(paths) -> RuntimePaths:
    assert _cli(paths, "keys", "generate").returncode == 0
    store = StateStore.open(paths.state_db, ensure_cipher(paths, allow_generate=False)[0])
    o = intent(store, reason="why")
    store.transition(o.client_order_id, "FILLED", filled=0.01, raw={"id": 1})
    store.add_fill(Fill("1", o.client_order_id, "1", "BTC/USDT", "buy", 0.01, 100.0))
    store.close()
    return paths


def test_keys_generate_then_refuses_to_overwrite(paths):
    r = _cli(paths, "keys", "generate")
    assert r.returncode == 0 and "back it up" in r.stdout
    assert paths.field_key.stat().st_mode & 0o777 == 0o600
    before = paths.field_key.read_bytes()
    r = _cli(paths, "keys", "generate")
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert paths.field_key.read_bytes() == before


def test_db_check_healthy(populated):
    r = _cli(populated, "db", "check")
    assert r.returncode == 0, r.stderr
    assert "integrity: ok" in r.stdout and f"schema version: {schema.SCHEMA_VERSION}" in r.stdout
    assert "orders 1" in r.stdout and "FILLED 1" in r.stdout and "needs reconciliation: no" in r.stdout
    assert "encrypted values verified" in r.stdout
    report = json.loads(_cli(populated, "db", "check", "--json").stdout)
    assert report["ok"] and report["counts"]["fills"] == 1 and report["integrity"] == "ok"


def test_db_check_fails_on_corruption_and_on_a_wrong_key(populated):
    r = _cli(populated, "db", "check", env={"TRADEGUARD_FIELD_KEY": os.urandom(32).hex()})
    assert r.returncode == 0  # the key file comes first; the env key is not used
    os.rename(populated.field_key, populated.data_dir / "elsewhere.key")
    r = _cli(populated, "db", "check", env={"TRADEGUARD_FIELD_KEY": os.urandom(32).hex()})
    assert r.returncode == 1 and "WRONG" in r.stdout and "does not open" in r.stderr
    with open(populated.state_db, "r+b") as fh:
        fh.write(b"\x00" * 100)
    r = _cli(populated, "db", "check")
    assert r.returncode == 1 and "not a database" in r.stderr
    assert populated.state_db.exists()  # a check never moves or repairs anything


def test_db_check_fails_on_a_field_key_others_can_read(populated):
    populated.field_key.chmod(0o640)
    r = _cli(populated, "db", "check")
    assert r.returncode == 1, r.stdout
    assert "field key file cannot be used" in r.stderr and "chmod 600" in r.stderr
    assert "UNSAFE" in r.stdout and "encrypted values verified" not in r.stdout
    populated.field_key.chmod(0o600)
    assert _cli(populated, "db", "check").returncode == 0


def test_db_check_covers_the_archives_on_request(populated):
    store = StateStore.open(populated.state_db, ensure_cipher(populated, allow_generate=False)[0])
    try:
        assert Archiver(store, max_age_s=86400).run(now=time.time() + 3 * 86400) == 1
    finally:
        store.close()
    [archive] = archive_files(populated.state_db)
    r = _cli(populated, "db", "check")
    assert r.returncode == 0, r.stderr
    assert "archives: 1 files" in r.stdout and "not checked; --archives" in r.stdout
    r = _cli(populated, "db", "check", "--archives", "--full")
    assert r.returncode == 0, r.stderr
    assert f"archive: {archive}" in r.stdout and "orders 1" in r.stdout
    report = json.loads(_cli(populated, "db", "check", "--archives", "--json").stdout)
    assert report["ok"] and report["archive_reports"][0]["counts"]["fills"] == 1
    with open(archive, "r+b") as fh:  # a damaged archive fails the check that covers it
        fh.write(b"\x00" * 100)
    assert _cli(populated, "db", "check").returncode == 0
    r = _cli(populated, "db", "check", "--archives")
    assert r.returncode == 1 and archive.name in r.stderr


def test_db_check_without_a_database_is_a_usage_error(paths):
    r = _cli(paths, "db", "check")
    assert r.returncode == 2 and "no state database" in r.stderr


def test_db_backup_and_refusal_to_overwrite(populated, tmp_path):
    dest = tmp_path / "copy.db"
    r = _cli(populated, "db", "backup", str(dest))
    assert r.returncode == 0, r.stderr
    assert "integrity ok" in r.stdout and "field key" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.db"]
    cipher = ensure_cipher(populated, allow_generate=False)[0]
    with open_readonly(dest, cipher) as b:
        [o] = b.orders()
        assert (o.state, o.reason, o.raw) == ("FILLED", "why", {"id": 1})
    assert not any(p.name.startswith("copy.db-") for p in tmp_path.iterdir())  # no -wal/-shm
    before = dest.read_bytes()
    r = _cli(populated, "db", "backup", str(dest))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert dest.read_bytes() == before
    r = _cli(populated, "db", "backup", str(tmp_path / "missing-dir" / "x.db"))
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_keys_rotate_command(populated):
    old = load_field_key(populated, environ={})
    r = _cli(populated, "keys", "rotate")
    assert r.returncode == 0, r.stderr
    assert "field key rotated" in r.stdout and "back up the new" in r.stdout
    assert load_field_key(populated, environ={}) != old
    assert _cli(populated, "db", "check").returncode == 0
    populated.field_key.unlink()
    r = _cli(populated, "keys", "rotate")
    assert r.returncode == 2 and "no field key" in r.stderr
