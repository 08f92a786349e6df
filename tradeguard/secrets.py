"""Secrets come from systemd credentials, then 0600 files, then the environment — never the config.

``load_secret("field.key", file=paths.field_key, env="TRADEGUARD_FIELD_KEY")`` looks in
``$CREDENTIALS_DIRECTORY/field.key``, then the file (refused if group or others can read it),
then the environment variable. Returns ``None`` when none of them has it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping

from tradeguard.exceptions import KeyFileError
from tradeguard.fsutil import PRIVATE, write_atomic

# Every environment variable that carries a secret (README, "Secrets"). They share the
# TRADEGUARD_<SECTION>_ prefix of configuration overrides but are not configuration keys.
SECRET_ENV_VARS = frozenset({
    "TRADEGUARD_EXCHANGE_API_KEY", "TRADEGUARD_EXCHANGE_API_SECRET", "TRADEGUARD_EXCHANGE_PASSWORD",
    "TRADEGUARD_PAPER_API_KEY", "TRADEGUARD_PAPER_API_SECRET",
    "TRADEGUARD_FIELD_KEY", "TRADEGUARD_SMTP_PASSWORD",
})


def check_private(path: Path) -> None:
    """Raise KeyFileError if ``path`` is readable or writable by group or others."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}")


def read_private(path: Path) -> str:
    """Read a secret file after checking its permissions; strips surrounding whitespace."""
    check_private(path)
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path} cannot be read: {e}") from None


def load_secret(name: str, *, file: Path | None = None, env: str | None = None,
                environ: Mapping[str, str] | None = None) -> str | None:
    """Look a secret up in systemd credentials, then ``file``, then ``env``."""
    environ = os.environ if environ is None else environ
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        p = Path(cred_dir) / name
        if p.is_file():
            # systemd makes credentials private to the unit; no mode check needed there.
            return p.read_text(encoding="utf-8").strip()
    if file is not None and file.exists():
        return read_private(file)
    if env and environ.get(env):
        return environ[env].strip()
    return None


def write_private(path: Path, content: str, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 atomically; refuse to overwrite unless asked."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path} already exists; refusing to overwrite it")
    try:
        write_atomic(path, content, overwrite=overwrite, mode=PRIVATE)
    except FileExistsError:  # another process created it meanwhile
        raise KeyFileError(f"{path} already exists; refusing to overwrite it") from None
