"""The key canary in ``meta``: whether a field key opens a database, and which key wrote it."""
from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from resilience import schema
from resilience.crypto import FieldCipher, blob_key_id
from resilience.state.connection import _connect, _one
from tradeguard.exceptions import FieldDecryptError, StateCorruptError, StateError, WrongKeyError

CANARY = b"tradeguard state.db canary v1"


def _canary_blob(conn: sqlite3.Connection) -> bytes | None:
    row = _one(conn, "SELECT value FROM meta WHERE key = 'canary'")
    if row is None:
        return None
    try:
        return base64.b64decode(row[0], validate=True)
    except (ValueError, TypeError):
        raise StateCorruptError("the key canary in state.db meta is damaged; restore the "
                                "database from a backup (nothing was changed)") from None


def _verify_key(conn: sqlite3.Connection, cipher: FieldCipher, path: Path) -> None:
    """Raise WrongKeyError unless ``cipher`` decrypts the database's canary."""
    blob = _canary_blob(conn)
    if blob is None:
        return
    try:
        ok = cipher.decrypt("meta", "canary", "value", blob) == CANARY
    except FieldDecryptError:
        ok = False
    if not ok:
        try:
            written = blob_key_id(blob)
        except FieldDecryptError:
            written = "?"
        raise WrongKeyError(
            f"this key does not open this database: {path} was written under field key "
            f"{written}, the loaded key is {', '.join(cipher.key_ids)}. Restore the key it was "
            "written with (data/keys/field.key from your backup, $CREDENTIALS_DIRECTORY/field.key "
            "or TRADEGUARD_FIELD_KEY); the database was not changed")


def stored_key_id(path: Path) -> str | None:
    """The field key id an existing database was written under (None: no database or canary)."""
    if not Path(path).is_file():
        return None
    try:
        conn = _connect(Path(path), readonly=True)
    except sqlite3.DatabaseError:
        return None
    try:
        if schema.current_version(conn) == 0:
            return None
        blob = _canary_blob(conn)
        return blob_key_id(blob) if blob else None
    except (sqlite3.DatabaseError, StateError):
        return None  # unreadable: the writer quarantines it when it opens the file
    finally:
        conn.close()
