"""Files that appear whole or not at all: write beside the target, then rename or link it in.

A reader never sees a half-written file, and a crash leaves either the old file or the new one.
``durable`` also fsyncs the new file before it is moved in and the directory after, so the change
survives a power loss. ``overwrite=False`` moves it in with ``os.link``, which fails with
FileExistsError if the target exists, even one that appeared a moment earlier: never clobbered.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

PRIVATE = 0o600
SHARED = 0o666  # readable by the owner's other processes, as the umask allows


def fsync_dir(directory: Path) -> None:
    """Make a rename, link or unlink in ``directory`` durable (a no-op where the filesystem
    cannot sync directories)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _move_in(tmp: Path, path: Path, overwrite: bool, durable: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
    else:
        os.link(tmp, path)
        os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes, *, overwrite: bool = True, mode: int = PRIVATE,
                 durable: bool = True) -> None:
    """Replace (or, without ``overwrite``, create) ``path`` with ``data`` in one step."""
    path = Path(path)
    tmp = _temp_beside(path)
    view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _move_in(tmp, path, overwrite, durable)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def staged(path: Path, *, overwrite: bool = True, mode: int = PRIVATE,
           durable: bool = True) -> Iterator[Path]:
    """Yield an empty temp file beside ``path`` for the caller to fill (a stream, an SQLite
    backup); when the block ends without an error it is moved in as :func:`write_atomic` does.
    The temp file never outlives the call."""
    path = Path(path)
    tmp = _temp_beside(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _move_in(tmp, path, overwrite, durable)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
