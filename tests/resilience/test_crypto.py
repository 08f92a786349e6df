"""AES-GCM field encryption: round trips, and values bound to their table, row, column and key."""
from __future__ import annotations

import hashlib

import pytest

from resilience.crypto import HEADER_BYTES, FieldCipher, blob_key_id, key_id
from tests.resilience._state_support import key_bytes
from tradeguard.exceptions import FieldDecryptError, KeyFileError

KEY = key_bytes(1)
OTHER = key_bytes(2)


def test_round_trip_and_layout():
    c = FieldCipher.from_keys(KEY)
    blob = c.encrypt("orders", "tg-a-1", "raw", '{"id": 5}')
    assert blob[0] == 1 and blob_key_id(blob) == key_id(KEY) == c.current_key_id
    assert len(blob) == HEADER_BYTES + len(b'{"id": 5}') + 16
    assert b'"id"' not in blob
    assert c.decrypt("orders", "tg-a-1", "raw", blob) == b'{"id": 5}'
    assert c.decrypt("kv", "k", "value", c.encrypt("kv", "k", "value", b"\x00\xff")) == b"\x00\xff"


def test_key_id_is_first_8_hex_of_sha256():
    assert key_id(KEY) == hashlib.sha256(KEY).hexdigest()[:8]


def test_each_value_gets_a_fresh_nonce():
    c = FieldCipher.from_keys(KEY)
    a, b = (c.encrypt("kv", "k", "value", "same") for _ in range(2))
    assert a != b and a[5:HEADER_BYTES] != b[5:HEADER_BYTES]


@pytest.mark.parametrize("table,pk,column", [
    ("orders", "tg-a-2", "raw"),      # another row
    ("orders", "tg-a-1", "reason"),   # another column
    ("fills", "tg-a-1", "raw"),       # another table
])
def test_ciphertext_moved_elsewhere_is_rejected(table, pk, column):
    c = FieldCipher.from_keys(KEY)
    blob = c.encrypt("orders", "tg-a-1", "raw", "account 123")
    with pytest.raises(FieldDecryptError, match="not written for this row and column"):
        c.decrypt(table, pk, column, blob)


def test_tampered_or_relabelled_values_are_rejected():
    both = FieldCipher.from_keys(KEY, OTHER)
    blob = bytearray(both.encrypt("kv", "k", "value", "secret"))
    flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    with pytest.raises(FieldDecryptError):
        both.decrypt("kv", "k", "value", flipped)
    relabelled = bytes(blob[:1]) + bytes.fromhex(key_id(OTHER)) + bytes(blob[5:])
    with pytest.raises(FieldDecryptError):
        both.decrypt("kv", "k", "value", relabelled)
    with pytest.raises(FieldDecryptError, match="not an encrypted"):
        both.decrypt("kv", "k", "value", b"plain text, not ours")


def test_unknown_key_gives_a_clear_error():
    blob = FieldCipher.from_keys(OTHER).encrypt("kv", "k", "value", "x")
    with pytest.raises(FieldDecryptError, match="this key does not open this database"):
        FieldCipher.from_keys(KEY).decrypt("kv", "k", "value", blob)


def test_several_keys_decrypt_and_the_current_one_encrypts():
    old_blob = FieldCipher.from_keys(KEY).encrypt("kv", "k", "value", "v")
    ring = FieldCipher.from_keys(OTHER, KEY)
    assert ring.current_key_id == key_id(OTHER)
    assert ring.decrypt("kv", "k", "value", old_blob) == b"v"
    assert ring.needs_reencrypt(old_blob)
    new_blob = ring.reencrypt("kv", "k", "value", old_blob)
    assert blob_key_id(new_blob) == key_id(OTHER) and not ring.needs_reencrypt(new_blob)
    assert FieldCipher.from_keys(OTHER).decrypt("kv", "k", "value", new_blob) == b"v"


def test_bad_keys_are_refused():
    with pytest.raises(KeyFileError, match="32 bytes"):
        FieldCipher.from_keys(b"short")
    with pytest.raises(KeyFileError, match="has id"):
        FieldCipher({"00000000": KEY}, "00000000")
    with pytest.raises(KeyFileError, match="not among"):
        FieldCipher({key_id(KEY): KEY}, key_id(OTHER))
