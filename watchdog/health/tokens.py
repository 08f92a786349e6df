"""The health endpoint's bearer token: ``data/health.token`` (0600), created on first start.

The server keeps only the token's SHA-256 and compares digests in constant time. It re-reads
the file when its (inode, mtime, ctime, size) changes, so ``tradeguard health token --rotate`` takes
effect on the next request without a restart. The token is 64 URL-safe characters: long enough
that the redaction patterns of :mod:`blackbox.redact` mask it wherever it might appear.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from pathlib import Path

from tradeguard.exceptions import KeyFileError, SecretError
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import read_private, write_private
from watchdog.health.filestat import FileChange

log = logging.getLogger(__name__)

TOKEN_BYTES = 48  # -> 64 characters of URL-safe base64


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def ensure_token(paths: RuntimePaths) -> tuple[str | None, Path]:
    """Create the token file if it is missing. Returns ``(token, path)`` when it was just
    created (so the caller can show it once), ``(None, path)`` when it already existed.
    Raises KeyFileError when an existing file is accessible by group or others."""
    path = paths.health_token
    if path.exists():
        read_private(path)  # permissions and readability, checked now rather than per request
        return None, path
    token = new_token()
    try:
        write_private(path, token + "\n")
    except KeyFileError:
        if path.exists():  # another process created it meanwhile: theirs stands
            return None, path
        raise
    return token, path


def rotate_token(paths: RuntimePaths) -> tuple[str, Path]:
    """Replace the token with a new one (atomically); returns ``(token, path)``."""
    token = new_token()
    write_private(paths.health_token, token + "\n", overwrite=True)
    return token, paths.health_token


def read_token(paths: RuntimePaths) -> str | None:
    """The current token for a client (CLI), or None when there is no token file."""
    try:
        return read_private(paths.health_token) or None
    except FileNotFoundError:
        return None


class TokenVerifier:
    """Checks presented tokens against the file's SHA-256, reloading when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._change = FileChange(path)
        self._digest: bytes | None = None

    def _current(self) -> bytes | None:
        with self._lock:
            if self._change.changed():
                self._digest = self._load()
            return self._digest

    def _load(self) -> bytes | None:
        if not self.path.exists():
            return None
        try:
            token = read_private(self.path)
        except (SecretError, OSError) as e:
            log.error("bearer token refused until %s is fixed: %s", self.path, e)
            return None
        if not token:
            log.error("bearer token refused: %s is empty", self.path)
            return None
        return hashlib.sha256(token.encode("utf-8")).digest()

    def verify(self, presented: str) -> bool:
        """True when ``presented`` is the current token."""
        digest = self._current()
        if digest is None or not presented:
            return False
        given = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, digest)
