"""Field encryption for sensitive state.db columns: AES-GCM-256, one random 96-bit nonce per value.

A stored value is a BLOB ``version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag``.
The associated data binds it to its table, primary key, column and key id, so a ciphertext copied
to another row or column, or re-labelled with another key id, fails authentication and raises
:class:`~tradeguard.exceptions.FieldDecryptError` — never garbage.

A :class:`FieldCipher` holds several keys (during a key rotation both the old and the new key are
loaded); it encrypts under ``current_key_id`` and decrypts whatever key id a value names.
The key id is the first 8 hex digits of SHA-256 of the key.
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping

from typing import TYPE_CHECKING

from tradeguard.exceptions import FieldDecryptError, KeyFileError

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 4
HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES
TAG_BYTES = 16

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def key_id(key: bytes) -> str:
    """The public id of a key: first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:2 * KEY_ID_BYTES]


def blob_key_id(blob: bytes) -> str:
    """The key id a stored value was encrypted under (no decryption)."""
    if len(blob) < HEADER_BYTES + TAG_BYTES or blob[0] != VERSION:
        raise FieldDecryptError("not an encrypted tradeguard value (bad header)")
    return blob[1:1 + KEY_ID_BYTES].hex()


def _aad(table: str, pk: object, column: str, kid: str) -> bytes:
    # Length-prefixed parts stay unambiguous whatever characters a primary key holds.
    parts = (table, str(pk), column, kid)
    return (f"tradeguard-field/{VERSION}/" + "".join(f"{len(p)}:{p};" for p in parts)).encode()


class FieldCipher:
    """Encrypts and decrypts single column values under a set of named keys."""

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str):
        # imported here: OpenSSL's bindings cost ~9 MB, and processes that read state.db without
        # the key (the watchdog's loop and health endpoint) never make a cipher
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if current_key_id not in keys:
            raise KeyFileError(f"current key id {current_key_id} is not among the loaded keys")
        self._aead: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            if len(key) != KEY_BYTES:
                raise KeyFileError(f"field key {kid} must be {KEY_BYTES} bytes, not {len(key)}")
            if key_id(key) != kid:
                raise KeyFileError(f"field key registered as {kid} has id {key_id(key)}")
            self._aead[kid] = AESGCM(key)
        self.current_key_id = current_key_id
        self._current_raw = bytes.fromhex(current_key_id)

    @classmethod
    def from_keys(cls, *keys: bytes) -> "FieldCipher":
        """A cipher that encrypts under the first key and decrypts under any of them."""
        if not keys:
            raise KeyFileError("no field key given")
        return cls({key_id(k): k for k in keys}, key_id(keys[0]))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    def encrypt(self, table: str, pk: object, column: str, plaintext: bytes | str) -> bytes:
        """Encrypt one value for ``table.column`` of the row with primary key ``pk``."""
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current_key_id
        ct = self._aead[kid].encrypt(nonce, data, _aad(table, pk, column, kid))
        return bytes((VERSION,)) + self._current_raw + nonce + ct

    def decrypt(self, table: str, pk: object, column: str, blob: bytes) -> bytes:
        """Decrypt one value; FieldDecryptError if it does not belong here or the key is absent."""
        where = f"{table}.{column} of row {pk!r}"
        try:
            kid = blob_key_id(bytes(blob))
        except (FieldDecryptError, TypeError):
            raise FieldDecryptError(f"{where} is not an encrypted tradeguard value") from None
        aead = self._aead.get(kid)
        if aead is None:
            raise FieldDecryptError(
                f"{where} was encrypted under field key {kid}, which is not loaded "
                f"(loaded: {', '.join(self._aead)}); this key does not open this database")
        from cryptography.exceptions import InvalidTag  # loaded with AESGCM in __init__

        nonce = blob[1 + KEY_ID_BYTES:HEADER_BYTES]
        try:
            return aead.decrypt(nonce, bytes(blob[HEADER_BYTES:]), _aad(table, pk, column, kid))
        except InvalidTag:
            raise FieldDecryptError(
                f"{where} fails authentication: it was not written for this row and column "
                "(copied or tampered with)") from None

    def needs_reencrypt(self, blob: bytes) -> bool:
        """True when ``blob`` is not under the current key (key rotation)."""
        return bytes(blob[1:1 + KEY_ID_BYTES]) != self._current_raw

    def reencrypt(self, table: str, pk: object, column: str, blob: bytes) -> bytes:
        """The same value encrypted under the current key."""
        return self.encrypt(table, pk, column, self.decrypt(table, pk, column, blob))
