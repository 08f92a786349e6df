"""Loading and generating the field key: sources, permissions, formats, redaction."""
from __future__ import annotations

import base64
import os

import pytest

from blackbox.redact import redact_text
from resilience.crypto import key_id
from resilience.keys import (encode_key, ensure_cipher, generate_field_key, load_field_key,
                             next_key_path, parse_key, retired_key_path)
from resilience.state import StateStore
from tests.resilience._state_support import cipher_for, key_bytes
from tradeguard.exceptions import KeyFileError
from tradeguard.paths import RuntimePaths


@pytest.fixture
def paths(data_dir, logs_dir) -> RuntimePaths:
    return RuntimePaths(data_dir, logs_dir)


def _write_key(path, key: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(encode_key(key) + "\n")
    os.chmod(path, mode)


def test_parse_accepts_base64_urlsafe_and_hex():
    k = key_bytes(3)
    assert parse_key(base64.b64encode(k).decode(), "x") == k
    assert parse_key(base64.urlsafe_b64encode(k).decode(), "x") == k
    assert parse_key(k.hex().upper(), "x") == k
    assert parse_key(f"  {k.hex()}\n", "x") == k


@pytest.mark.parametrize("text", ["", "not a key at all", "c2hvcnQ=", "zz" * 32,
                                  base64.b64encode(b"k" * 31).decode()])
def test_malformed_keys_get_a_clear_error_without_the_value(text):
    with pytest.raises(KeyFileError, match="malformed: expected 32 bytes") as e:
        parse_key(text, "TRADEGUARD_FIELD_KEY")
    assert "TRADEGUARD_FIELD_KEY" in str(e.value)
    if text:
        assert text not in str(e.value)


def test_sources_in_order_credentials_file_environment(paths, tmp_path):
    k_cred, k_file, k_env = key_bytes(10), key_bytes(11), key_bytes(12)
    env = {"TRADEGUARD_FIELD_KEY": k_env.hex()}
    assert load_field_key(paths, environ={}) is None
    assert load_field_key(paths, environ=env) == k_env
    _write_key(paths.field_key, k_file)
    assert load_field_key(paths, environ=env) == k_file
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "field.key").write_text(encode_key(k_cred))
    assert load_field_key(paths, environ={**env, "CREDENTIALS_DIRECTORY": str(cred)}) == k_cred


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(paths, mode):
    _write_key(paths.field_key, key_bytes(1), mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_field_key(paths, environ={})
    with pytest.raises(KeyFileError, match="chmod 600"):
        ensure_cipher(paths, allow_generate=True, environ={})


def test_generate_creates_a_private_key_and_never_overwrites(paths):
    path = generate_field_key(paths)
    assert path == paths.field_key
    assert path.stat().st_mode & 0o777 == 0o600
    assert paths.keys_dir.stat().st_mode & 0o777 == 0o700
    key = load_field_key(paths, environ={})
    assert len(key) == 32
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_field_key(paths)
    assert path.read_bytes() == before


def test_generate_refuses_when_a_database_needs_another_key(paths):
    StateStore.open(paths.state_db, cipher_for(1)).close()
    with pytest.raises(KeyFileError, match=f"written under field key {cipher_for(1).current_key_id}"):
        generate_field_key(paths)
    assert not paths.field_key.exists()


def test_ensure_cipher_generates_only_on_a_fresh_install(paths):
    with pytest.raises(KeyFileError, match="tradeguard keys generate"):
        ensure_cipher(paths, allow_generate=False, environ={})
    cipher, generated = ensure_cipher(paths, allow_generate=True, environ={})
    assert generated and paths.field_key.exists()
    StateStore.open(paths.state_db, cipher).close()
    again, generated = ensure_cipher(paths, allow_generate=True, environ={})
    assert not generated and again.current_key_id == cipher.current_key_id


def test_ensure_cipher_never_generates_beside_an_existing_database(paths):
    StateStore.open(paths.state_db, cipher_for(1)).close()
    with pytest.raises(KeyFileError, match="restore the key"):
        ensure_cipher(paths, allow_generate=True, environ={})
    assert not paths.field_key.exists()


def test_pending_rotation_keys_are_loaded_and_the_next_key_encrypts(paths):
    old, new, retired = key_bytes(1), key_bytes(2), key_bytes(3)
    _write_key(paths.field_key, old)
    _write_key(next_key_path(paths), new)
    _write_key(retired_key_path(paths, key_id(retired)), retired)
    cipher, _ = ensure_cipher(paths, allow_generate=False, environ={})
    assert cipher.current_key_id == key_id(new)
    assert set(cipher.key_ids) == {key_id(old), key_id(new), key_id(retired)}


def test_loaded_keys_are_masked_in_logs(paths):
    key = key_bytes(5)
    load_field_key(paths, environ={"TRADEGUARD_FIELD_KEY": key.hex()})
    line = f"env dump: {encode_key(key)} {key.hex()} {base64.urlsafe_b64encode(key).decode()}"
    masked = redact_text(line)
    assert encode_key(key) not in masked and key.hex() not in masked
