"""What an existing database must pass before it is used: integrity, schema version, the key."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from resilience import schema
from resilience.crypto import FieldCipher
from resilience.state.canary import _verify_key
from resilience.state.connection import _connect, _is_corruption
from tradeguard.exceptions import SchemaVersionError, StateError


def _usable_version(conn: sqlite3.Connection, cipher: FieldCipher | None, path: Path) -> int:
    """The schema version, after refusing a newer schema or a key that does not open the file."""
    version = schema.current_version(conn)
    if version > schema.SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {version}, this tradeguard knows up to "
            f"{schema.SCHEMA_VERSION}: upgrade tradeguard (the database was not changed)")
    if version and cipher is not None:
        _verify_key(conn, cipher, path)
    return version


def _probe(path: Path, cipher: FieldCipher | None, *, quick_check: bool = True) -> str | None:
    """Read-only look at an existing file: the corruption found, or None if it is usable.
    ``quick_check``: scan every page (``PRAGMA quick_check``); else only what opening reads.

    Raises WrongKeyError / SchemaVersionError without writing anything."""
    try:
        conn = _connect(path, readonly=True)
    except sqlite3.DatabaseError as e:
        if _is_corruption(e):
            return str(e)
        raise StateError(f"cannot open {path}: {e}") from None
    try:
        if quick_check:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if rows != ["ok"]:
                return "quick_check: " + "; ".join(rows[:5])
        _usable_version(conn, cipher, path)
        return None
    except sqlite3.DatabaseError as e:
        if _is_corruption(e):
            return str(e)
        raise StateError(f"cannot read {path}: {e}") from None
    finally:
        conn.close()
