"""The field key: loading, generation and rotation.

Where the key comes from (first found wins; see :mod:`tradeguard.secrets`):
``$CREDENTIALS_DIRECTORY/field.key`` (systemd), ``data/keys/field.key`` (0600, refused if group or
others can read it), ``TRADEGUARD_FIELD_KEY``. Each holds 32 bytes as base64 or hex.

Rotation (``tradeguard keys rotate``) re-encrypts every encrypted column under a new key and can
be killed at any point and run again; every row stays readable throughout:

1. The new key is written durably to ``keys/field.key.next`` (a rerun reuses it).
2. With both keys loaded, rows are re-encrypted in batches, one short transaction each. Every
   value names the key it is under, so a half-done table is readable.
3. When every value is under the new key and verified with the new key alone, the files are
   swapped: the old key is linked to ``keys/field.key.<old id>.retired``, then ``field.key.next``
   atomically replaces ``field.key``.
4. A last pass re-encrypts anything written under the old key meanwhile, verifies again, and
   removes the retired key, and any temp file a key write killed midway left behind
   (``.field.key.next.<pid>.tmp``: a SIGKILL between its link and its unlink leaves a second
   name of the key), so that afterwards no file in ``keys/`` holds the old key.

Every process that loads the key (:func:`ensure_cipher`) also loads a pending ``field.key.next``
(and encrypts under it) and any ``*.retired`` key, so a rotation interrupted between any two
steps never leaves a row that a restarted bot cannot read. Rotation refuses to run while the bot
runs (its pid file names a live process): a long-running writer would keep encrypting under the
old key. The watchdog writes only short emergency transactions with keys loaded per run, and the
final pass (4) re-encrypts whatever such a writer left under the old key.
Only a key held in ``data/keys/field.key`` can be rotated; one from systemd credentials or the
environment must be replaced there by the operator. A database that fails its integrity check is
refused before anything changes (opening it would quarantine it, and the old key that reads the
quarantined copy would then be removed).
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from blackbox.redact import register_secret
from resilience.crypto import KEY_BYTES, FieldCipher, key_id
from resilience.state import StateStore, open_readonly, stored_key_id
from tradeguard.exceptions import KeyFileError, StateCorruptError
from tradeguard.fsutil import fsync_dir
from tradeguard.heartbeat import process_for, read_pidfile
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import load_secret, read_private, write_private

log = logging.getLogger(__name__)

KEY_ENV = "TRADEGUARD_FIELD_KEY"
CREDENTIAL = "field.key"
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class RotationResult:
    old_key_id: str
    new_key_id: str
    reencrypted: int  # values re-encrypted by this run
    verified: int     # values verified under the new key alone
    resumed: bool     # an earlier, interrupted rotation was finished


def next_key_path(paths: RuntimePaths) -> Path:
    return paths.keys_dir / "field.key.next"


def retired_key_path(paths: RuntimePaths, kid: str) -> Path:
    return paths.keys_dir / f"field.key.{kid}.retired"


def encode_key(key: bytes) -> str:
    """The text form of a key as stored in key files (standard base64)."""
    return base64.b64encode(key).decode("ascii")


def parse_key(text: str, source: str) -> bytes:
    """32 key bytes from base64 or hex text; KeyFileError (never echoing the value) if malformed."""
    t = text.strip()
    if _HEX_RE.fullmatch(t):
        return bytes.fromhex(t)
    try:
        alt = b"-_" if ("-" in t or "_" in t) else None
        key = base64.b64decode(t, altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"the field key in {source} is malformed: expected {KEY_BYTES} bytes as base64 "
            f"(44 characters) or hex (64 characters), got {len(t)} characters; "
            "generate one with: tradeguard keys generate")
    return key


def _register(key: bytes) -> None:
    for form in (encode_key(key), base64.urlsafe_b64encode(key).decode(), key.hex(), key):
        register_secret(form)


def key_source(paths: RuntimePaths, environ: Mapping[str, str] | None = None) -> str | None:
    """Where the field key would be loaded from: a description, or None when there is none."""
    environ = os.environ if environ is None else environ
    cred = environ.get("CREDENTIALS_DIRECTORY")
    if cred and (Path(cred) / CREDENTIAL).is_file():
        return f"$CREDENTIALS_DIRECTORY/{CREDENTIAL}"
    if paths.field_key.exists():
        return str(paths.field_key)
    if environ.get(KEY_ENV):
        return KEY_ENV
    return None


def load_field_key(paths: RuntimePaths, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The field key from credentials, the key file or the environment; None if there is none."""
    environ = os.environ if environ is None else environ
    text = load_secret(CREDENTIAL, file=paths.field_key, env=KEY_ENV, environ=environ)
    if text is None:
        return None
    key = parse_key(text, key_source(paths, environ) or "the field key")
    _register(key)
    return key


def _read_key_file(path: Path) -> bytes:
    key = parse_key(read_private(path), str(path))
    _register(key)
    return key


def load_pending_keys(paths: RuntimePaths) -> tuple[bytes | None, list[bytes]]:
    """Keys of an unfinished rotation: (``field.key.next`` or None, the ``*.retired`` keys)."""
    nxt = next_key_path(paths)
    pending = _read_key_file(nxt) if nxt.exists() else None
    retired = [_read_key_file(p) for p in sorted(paths.keys_dir.glob("field.key.*.retired"))]
    return pending, retired


def _write_key(path: Path, key: bytes) -> None:
    write_private(path, encode_key(key) + "\n")
    os.chmod(path.parent, 0o700)
    fsync_dir(path.parent)


def generate_field_key(paths: RuntimePaths) -> Path:
    """Create ``data/keys/field.key`` (0600 in a 0700 dir); never overwrites (KeyFileError).

    Also refuses when a state.db already exists under another key: a new key cannot open it."""
    if paths.field_key.exists():
        raise KeyFileError(f"{paths.field_key} already exists; refusing to overwrite it "
                           "(to replace the key use: tradeguard keys rotate)")
    written = stored_key_id(paths.state_db)
    if written:
        raise KeyFileError(
            f"{paths.state_db} was written under field key {written}; a new key cannot open it. "
            f"Restore that key to {paths.field_key} from your backup, or move state.db aside "
            "to start afresh")
    key = os.urandom(KEY_BYTES)
    _write_key(paths.field_key, key)
    _register(key)
    log.info("generated field key %s at %s", key_id(key), paths.field_key)
    return paths.field_key


def _missing_key_message(paths: RuntimePaths) -> str:
    return (f"no field key: looked in $CREDENTIALS_DIRECTORY/{CREDENTIAL}, {paths.field_key} and "
            f"${KEY_ENV}. If {paths.state_db} holds data, restore the key it was written with "
            f"from your backup; for a new install run: tradeguard keys generate "
            f"--data-dir {paths.data_dir}")


def ensure_cipher(paths: RuntimePaths, *, allow_generate: bool,
                  environ: Mapping[str, str] | None = None) -> tuple[FieldCipher, bool]:
    """The cipher for state.db and whether a key was generated just now.

    ``allow_generate=True`` only on a fresh install (no state.db): then a missing key is created
    and the caller must tell the operator to back up ``data/keys/field.key``."""
    key = load_field_key(paths, environ)
    generated = False
    if key is None:
        if not allow_generate or paths.state_db.exists():
            raise KeyFileError(_missing_key_message(paths))
        generate_field_key(paths)
        key = load_field_key(paths, environ)
        if key is None:  # pragma: no cover - just written
            raise KeyFileError(_missing_key_message(paths))
        generated = True
    pending, retired = load_pending_keys(paths)
    keys = ([pending] if pending else []) + [key] + retired  # the first one encrypts
    return FieldCipher.from_keys(*keys), generated


@contextmanager
def _rotation_lock(paths: RuntimePaths) -> Iterator[None]:
    paths.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(paths.keys_dir / ".rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyFileError("another 'tradeguard keys rotate' is running") from None
        yield
    finally:
        os.close(fd)


def _remove_key_temps(paths: RuntimePaths) -> None:
    """Delete temp files of key writes (``.field.key*.<pid>.tmp``). Called under the rotation
    lock while ``field.key`` exists, when no other process writes a key file (``keys generate``
    refuses then), so every such file is a leftover of a writer that died."""
    for p in paths.keys_dir.glob(".field.key*.tmp"):
        p.unlink(missing_ok=True)
        log.info("removed %s, left by a key write that was killed midway", p.name)


def _refuse_if_bot_runs(paths: RuntimePaths) -> None:
    info = read_pidfile(paths.pidfile)
    if info is not None and process_for(info) is not None:
        raise KeyFileError(f"the bot is running (pid {info.pid}); stop it before rotating the "
                           "field key, then start it again")


def _refuse_unsound_db(paths: RuntimePaths, cipher: FieldCipher) -> None:
    """Rotation must never open a damaged database: the store would quarantine it and the old
    key, the only one that reads the quarantined copy, would then be removed."""
    if not paths.state_db.exists():
        return
    try:
        with open_readonly(paths.state_db, cipher) as reader:  # a wrong key: WrongKeyError
            integrity = reader.check()["integrity"]
    except StateCorruptError as e:
        integrity = str(e)
    if integrity != "ok":
        raise StateCorruptError(f"{paths.state_db} fails its integrity check ({integrity}); "
                                "restore it from a backup before rotating the key")


def rotate_field_key(paths: RuntimePaths, *, batch_size: int = 500,
                     progress: Callable[[str, int], None] | None = None,
                     environ: Mapping[str, str] | None = None) -> RotationResult:
    """Re-encrypt state.db under a new field key (see the module docstring); resumable."""
    if batch_size < 1:
        raise KeyFileError(f"batch size {batch_size}: must be >= 1")
    source = key_source(paths, environ)
    if source is None:
        raise KeyFileError(_missing_key_message(paths))
    if source != str(paths.field_key):
        raise KeyFileError(f"the field key comes from {source}; rotation rewrites "
                           f"{paths.field_key}, so put the key there (0600) to rotate it")
    _refuse_if_bot_runs(paths)
    report = progress or (lambda phase, n: None)
    with _rotation_lock(paths):
        current = _read_key_file(paths.field_key)
        _remove_key_temps(paths)
        pending, retired = load_pending_keys(paths)
        resumed = pending is not None or bool(retired)
        _refuse_unsound_db(paths, FieldCipher.from_keys(current, *retired,
                                                        *([pending] if pending else [])))
        if pending is None and not retired:
            pending = os.urandom(KEY_BYTES)
            _write_key(next_key_path(paths), pending)
            report("next_key_written", 0)
        new = pending if pending is not None else current
        old = [k for k in ([current] + retired) if k != new]
        cipher = FieldCipher.from_keys(new, *old)
        only_new = FieldCipher.from_keys(new)
        done = verified = 0
        store = StateStore.open(paths.state_db, cipher) if paths.state_db.exists() else None
        try:
            if store is not None:
                done += store.reencrypt(batch_size=batch_size, progress=report)
                verified = store.verify_encryption(only_new)
                report("verified", verified)
            if pending is not None:
                retired_path = retired_key_path(paths, key_id(current))
                if not retired_path.exists():
                    os.link(paths.field_key, retired_path)
                os.replace(next_key_path(paths), paths.field_key)
                fsync_dir(paths.keys_dir)
                report("swapped", 0)
            if store is not None:  # a writer may have used the old key until the swap
                done += store.reencrypt(batch_size=batch_size, progress=report)
                verified = store.verify_encryption(only_new)
        finally:
            if store is not None:
                store.close()
        for p in paths.keys_dir.glob("field.key.*.retired"):
            p.unlink()
        _remove_key_temps(paths)
        fsync_dir(paths.keys_dir)
        report("done", done)
    old_id = key_id(current) if pending is not None else (key_id(old[0]) if old else key_id(new))
    log.info("field key rotated from %s to %s (%d values re-encrypted)", old_id, key_id(new), done)
    return RotationResult(old_id, key_id(new), done, verified, resumed)
