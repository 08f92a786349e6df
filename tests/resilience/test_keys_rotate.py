"""Key rotation: every row readable at every step, resumable after an interruption or SIGKILL."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from resilience import schema
from resilience.crypto import FieldCipher, blob_key_id, key_id
from resilience.keys import (encode_key, ensure_cipher, generate_field_key, load_field_key,
                             next_key_path, rotate_field_key)
from resilience.state import Fill, StateStore
from tests.helpers.proc import REPO, child_env, run_cli, tradeguard_cmd
from tests.resilience._state_support import LineReader, intent
from tradeguard.exceptions import KeyFileError, StateCorruptError, WrongKeyError
from tradeguard.heartbeat import write_pidfile
from tradeguard.paths import RuntimePaths


@pytest.fixture
def paths(data_dir, logs_dir) -> RuntimePaths:
    return RuntimePaths(data_dir, logs_dir)


def _populate(paths: RuntimePaths, n: int) -> bytes:
    """A key file and a state.db with every kind of encrypted value; returns the key."""
    generate_field_key(paths)
    key = load_field_key(paths, environ={})
    store = StateStore.open(paths.state_db, FieldCipher.from_keys(key), synchronous="NORMAL")
    for i in range(n):
        o = intent(store, reason=f"signal {i}")
        store.transition(o.client_order_id, "OPEN", raw={"orderId": i, "account": "acct-7"},
                         note="accepted")
        if i % 4 == 0:
            store.add_fill(Fill(str(i), o.client_order_id, str(i), "BTC/USDT", "buy", 0.01, 100.0,
                                raw={"tradeId": i}))
    store.kv_set("strategy", {"n": n})
    store.close()
    return key


def _read_everything(paths: RuntimePaths, cipher: FieldCipher) -> int:
    """Open the store with ``cipher`` and decrypt every encrypted value; their count."""
    store = StateStore.open(paths.state_db, cipher)
    try:
        orders = store.orders()
        assert all(o.reason.startswith("signal") and o.raw["account"] == "acct-7" for o in orders)
        assert all(f.raw["tradeId"] == int(f.fill_id) for f in store.fills())
        assert store.kv_get("strategy")["n"] == len(orders)
        return store.verify_encryption(cipher)
    finally:
        store.close()


def _key_ids_in_db(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as c:
        return {blob_key_id(v) for table, _pk, cols in schema.ENCRYPTED for col in cols
                for (v,) in c.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL")}


def test_rotation_re_encrypts_everything_and_retires_the_old_key(paths):
    old = _populate(paths, 12)
    values = _read_everything(paths, FieldCipher.from_keys(old))
    seen = []
    result = rotate_field_key(paths, batch_size=3, progress=lambda p, n: seen.append(p),
                              environ={})
    new = load_field_key(paths, environ={})
    assert new != old and result.new_key_id == key_id(new) and result.old_key_id == key_id(old)
    assert result.reencrypted == values and result.verified == values and not result.resumed
    assert seen[0] == "next_key_written" and seen[-1] == "done" and "swapped" in seen
    assert seen.count("reencrypt") > 3  # many short batches, not one long transaction
    assert sorted(p.name for p in paths.keys_dir.iterdir()) == [".rotate.lock", "field.key"]
    assert paths.field_key.stat().st_mode & 0o777 == 0o600
    assert _key_ids_in_db(paths.state_db) == {key_id(new)}
    assert _read_everything(paths, FieldCipher.from_keys(new)) == values
    with pytest.raises(WrongKeyError):
        StateStore.open(paths.state_db, FieldCipher.from_keys(old))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("phase", ["next_key_written", "reencrypt", "verified", "swapped"])
def test_rotation_interrupted_at_any_step_keeps_rows_readable_and_resumes(paths, phase):
    old = _populate(paths, 8)
    values = _read_everything(paths, FieldCipher.from_keys(old))

    def stop_at(p: str, n: int) -> None:
        if p == phase:
            raise _Stop(p)

    with pytest.raises(_Stop):
        rotate_field_key(paths, batch_size=2, progress=stop_at, environ={})
    # what a restarted bot would load reads every row
    cipher, generated = ensure_cipher(paths, allow_generate=False, environ={})
    assert not generated and len(cipher.key_ids) == 2
    assert _read_everything(paths, cipher) == values
    result = rotate_field_key(paths, batch_size=2, environ={})
    assert result.resumed and result.old_key_id == key_id(old)
    new = load_field_key(paths, environ={})
    assert result.new_key_id == key_id(new) != key_id(old)
    assert _key_ids_in_db(paths.state_db) == {key_id(new)}
    assert _read_everything(paths, FieldCipher.from_keys(new)) == values
    assert not next_key_path(paths).exists() and not list(paths.keys_dir.glob("*.retired"))


def test_rotate_command_killed_midway_then_rerun(paths):
    old = _populate(paths, 200)
    values = _read_everything(paths, FieldCipher.from_keys(old))
    args = ["keys", "rotate", "--batch-size", "2", "--data-dir", str(paths.data_dir),
            "--logs-dir", str(paths.logs_dir)]
    proc = subprocess.Popen(tradeguard_cmd(*args), cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = LineReader(proc)
    try:
        lines.wait_for(4)  # "new key written" + three batches re-encrypted
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert all("re-encrypted" in line for line in lines.lines[1:4])
    # killed midway: the swap has not happened and the rows are under both keys
    assert next_key_path(paths).exists() and load_field_key(paths, environ={}) == old
    assert len(_key_ids_in_db(paths.state_db)) == 2
    cipher, _ = ensure_cipher(paths, allow_generate=False, environ={})
    assert _read_everything(paths, cipher) == values

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "finished an interrupted rotation" in done.stdout
    new = load_field_key(paths, environ={})
    assert new != old and _key_ids_in_db(paths.state_db) == {key_id(new)}
    assert _read_everything(paths, FieldCipher.from_keys(new)) == values
    with pytest.raises(WrongKeyError):
        StateStore.open(paths.state_db, FieldCipher.from_keys(old))


def test_rotation_refuses_while_the_bot_runs(paths):
    _populate(paths, 1)
    write_pidfile(paths.pidfile)  # this test process stands in for a live bot
    with pytest.raises(KeyFileError, match="the bot is running"):
        rotate_field_key(paths, environ={})
    assert not next_key_path(paths).exists()


def test_rotation_refuses_a_key_it_cannot_replace(paths):
    env = {"TRADEGUARD_FIELD_KEY": os.urandom(32).hex()}
    with pytest.raises(KeyFileError, match="comes from TRADEGUARD_FIELD_KEY"):
        rotate_field_key(paths, environ=env)
    with pytest.raises(KeyFileError, match="no field key"):
        rotate_field_key(paths, environ={})


def test_rotation_refuses_a_damaged_database_and_keeps_the_old_key(paths):
    old = _populate(paths, 30)
    with open(paths.state_db, "r+b") as fh:
        fh.seek(2 * 4096)
        fh.write(b"\xff" * 4 * 4096)
    with pytest.raises(StateCorruptError, match="restore it from a backup"):
        rotate_field_key(paths, environ={})
    assert load_field_key(paths, environ={}) == old and not next_key_path(paths).exists()
    assert not list(paths.data_dir.glob("state.db.corrupt-*"))  # nothing was moved aside


KILL_AT_UNLINK = """
import os, signal, sys
from pathlib import Path
real_unlink = os.unlink
def unlink(path, *a, **kw):  # SIGKILL between the link of field.key.next and its temp's unlink
    if ".field.key.next." in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(path, *a, **kw)
os.unlink = unlink
from resilience.keys import rotate_field_key
from tradeguard.paths import RuntimePaths
rotate_field_key(RuntimePaths(Path(sys.argv[1]), Path(sys.argv[2])), environ={})
"""


def test_a_key_write_killed_between_link_and_unlink_leaves_no_copy_of_the_old_key(paths):
    old = _populate(paths, 4)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_UNLINK, str(paths.data_dir),
                           str(paths.logs_dir)], cwd=REPO, env=child_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(paths.keys_dir.glob(".field.key.next.*.tmp"))
    assert leftovers and next_key_path(paths).exists()  # the temp is a second name of the new key
    middle = _read_key_file_bytes(next_key_path(paths))
    for _ in range(2):  # finish the interrupted rotation, then rotate once more
        done = run_cli("keys", "rotate", "--data-dir", str(paths.data_dir),
                       "--logs-dir", str(paths.logs_dir))
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in paths.keys_dir.iterdir()) == [".rotate.lock", "field.key"]
    assert paths.field_key.stat().st_nlink == 1
    current = load_field_key(paths, environ={})
    assert current not in (old, middle)
    for p in paths.data_dir.rglob("*"):  # "the old key is gone": no file holds either old key
        if p.is_file() and p.stat().st_size < 4096:
            text = p.read_bytes()
            for gone in (old, middle):
                assert encode_key(gone).encode() not in text, p


def _read_key_file_bytes(path: Path) -> bytes:
    from resilience.keys import parse_key
    return parse_key(path.read_text(), str(path))
