"""scrypt password hashes for HTTP Basic users, and the credentials file that holds them.

Hash format: ``scrypt$n$r$p$salt_b64$hash_b64`` (:func:`hashlib.scrypt`, n=2**14, r=8, p=1,
16-byte salt, 32-byte hash). One verification costs ~16 MiB of memory and ~50-150 ms of CPU:
that is the point (a stolen hash is slow to attack) and the reason the health endpoint caches
successful verifications and rate-limits failures before running scrypt.

Credentials file (``data/health.users`` unless ``[health] credentials_file`` says otherwise):
one ``user:hash`` per line, ``#`` comments and blank lines allowed, mode 0600.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tradeguard.config import Config
from tradeguard.exceptions import UserError
from tradeguard.secrets import check_private, write_private

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
# Bounds on parameters read from a file or the config: a hostile hash must not make the
# server allocate gigabytes (memory ~ 128 * n * r bytes).
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_MAXMEM = 128 * _MAX_N * 8 + 1024 * 1024
USER_RE = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
MAX_PASSWORD_BYTES = 1024


class PasswordHashError(ValueError):
    """A stored hash is not in the ``scrypt$n$r$p$salt$hash`` format or is out of bounds."""


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def encode(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return f"scrypt${self.n}${self.r}${self.p}${b64(self.salt)}${b64(self.digest)}"


def parse_hash(text: str) -> ScryptHash:
    """Parse and bound-check a stored hash; raise PasswordHashError when it is not one."""
    parts = text.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise PasswordHashError("expected scrypt$n$r$p$salt_b64$hash_b64")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise PasswordHashError("n, r, p must be integers and salt, hash base64") from None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise PasswordHashError(f"scrypt parameters out of bounds (n={n}, r={r}, p={p})")
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise PasswordHashError("salt or hash too short")
    return ScryptHash(n, r, p, salt, digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=dklen)


def hash_password(password: str) -> str:
    """A new ``scrypt$...`` hash of ``password`` with a random salt."""
    if not password:
        raise UserError("the password must not be empty")
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
        raise UserError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest).encode()


def verify_password(password: str, h: ScryptHash) -> bool:
    """True when ``password`` matches ``h`` (constant-time comparison of the digests)."""
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
        return False
    return hmac.compare_digest(_scrypt(password, h.salt, h.n, h.r, h.p, len(h.digest)), h.digest)


# Verified against when the user does not exist, so that timing does not tell who exists.
DUMMY_HASH = ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"tradeguard-dummy", b"\0" * HASH_BYTES)


def credentials_path(cfg: Config) -> Path:
    """``[health] credentials_file`` (relative to the data dir), default ``data/health.users``."""
    raw = cfg.health.credentials_file
    if not raw:
        return cfg.runtime.health_users
    p = Path(raw).expanduser()
    return p if p.is_absolute() else cfg.runtime.data_dir / p


def parse_credentials(text: str, source: str) -> dict[str, ScryptHash]:
    """``user -> hash`` from credentials-file text; malformed lines are logged and skipped."""
    users: dict[str, ScryptHash] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, h = line.partition(":")
        try:
            if not sep or not USER_RE.fullmatch(user):
                raise PasswordHashError("expected user:scrypt$...")
            users[user] = parse_hash(h)
        except PasswordHashError as e:
            log.warning("%s line %d ignored: %s", source, no, e)
    return users


def read_credentials(path: Path) -> dict[str, ScryptHash]:
    """The users of a credentials file; {} when it does not exist. Raises KeyFileError when
    group or others can access it (the hashes would be exposed to offline attack)."""
    if not path.exists():
        return {}
    check_private(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        log.error("cannot read %s: %s", path, e)
        return {}
    return parse_credentials(text, str(path))


def config_users(cfg: Config) -> dict[str, ScryptHash]:
    """The ``[health] users`` table, parsed (bad entries are logged and skipped)."""
    users = {}
    for user, h in cfg.health.users.items():
        try:
            if not USER_RE.fullmatch(user):
                raise PasswordHashError(f"user name must match {USER_RE.pattern}")
            users[user] = parse_hash(h)
        except PasswordHashError as e:
            log.warning("[health] users.%s ignored: %s", user, e)
    return users


def set_password(path: Path, user: str, password: str) -> bool:
    """Set ``user``'s password in the credentials file (created 0600 if absent), keeping every
    other line. Returns True when the user existed."""
    if not USER_RE.fullmatch(user):
        raise UserError(f"user name {user!r} is not allowed: use 1-64 of A-Z a-z 0-9 . _ @ + -")
    new_line = f"{user}:{hash_password(password)}"
    lines, existed = [], False
    if path.exists():
        try:
            old = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        for line in old.splitlines():
            if line.strip().partition(":")[0] == user and not line.lstrip().startswith("#"):
                if not existed:
                    lines.append(new_line)
                existed = True
            else:
                lines.append(line)
    if not existed:
        lines.append(new_line)
    write_private(path, "\n".join(lines) + "\n", overwrite=True)
    return existed
