"""``logs/bot.console.log`` under the standalone manager: one generation per bot process, bounded.

The bot's stdout/stderr go straight to the file (the bot outlives the watchdog, so no pipe may
sit between them). Each start moves the previous process's output to ``.1`` (``.1`` to ``.2``,
and so on, keeping :data:`KEEP`); while a bot runs, a file past :data:`MAX_BYTES` is copied to
``.1`` and truncated in place -- the bot writes with ``O_APPEND``, so it carries on at the new end.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024  # as the JSON logs (tradeguard.logsetup)
KEEP = 5


def _shift(path: Path, keep: int) -> None:
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))


def new_generation(path: Path, keep: int = KEEP) -> None:
    """Before a new bot process: the previous one's output becomes ``.1``."""
    if path.exists() and path.stat().st_size > 0:
        _shift(path, keep)
        os.replace(path, path.with_name(f"{path.name}.1"))


def bound(path: Path, max_bytes: int | None = None, keep: int = KEEP) -> bool:
    """While the bot runs: copy a file past ``max_bytes`` (:data:`MAX_BYTES`) to ``.1`` and
    truncate it; whether it did."""
    try:
        if path.stat().st_size <= (MAX_BYTES if max_bytes is None else max_bytes):
            return False
    except FileNotFoundError:
        return False
    _shift(path, keep)
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True
