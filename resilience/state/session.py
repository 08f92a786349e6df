"""The clean-shutdown marker beside state.db: was the file left by a clean close?

``state.db.session`` is held with ``flock`` by every writer (shared), and rewritten by the last
writer to close (exclusive) as ``clean <size> <mtime_ns> <inode>`` of the database file. A writer
that opens the file alone reads it first: the marker says clean and the file is exactly what the
last writer left -> no integrity scan is needed. Anything else -- no marker, a writer that never
closed (power cut, OS crash, SIGKILL), a file changed or replaced since (a restored backup, a disk
that rewrote it) -- calls for ``PRAGMA quick_check``.

A writer opening while another one holds the file (the watchdog's emergency orders while the bot
runs) finds it in use and scans nothing: only the opener that finds no one else decides. A process
crash alone cannot damage an SQLite file (its WAL is recovered), so the marker exists for what
takes the whole host down, which no writer survives.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tradeguard.fsutil import fsync_dir


def marker_path(db: Path) -> Path:
    return db.with_name(db.name + ".session")


def _fingerprint(db: Path) -> str:
    st = os.stat(db)
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _read(fd: int) -> list[str]:
    return os.pread(fd, 256, 0).decode("ascii", "replace").split()


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("ascii"), 0)
    os.fsync(fd)


CHANGED = "it was changed since its last clean close (size, mtime or inode)"


class Session:
    """One writer's hold on the marker: :meth:`needs_check`, :meth:`open` before use,
    :meth:`close` after. The marker reads ``open`` (held, checked), ``dirty`` (held, not checked
    after an unclean shutdown) or ``clean <size> <mtime_ns> <inode>``."""

    def __init__(self, db: Path):
        self.db = Path(db)
        self.path = marker_path(self.db)
        self._fd: int | None = None
        self.why: str | None = None  # set by needs_check()

    def needs_check(self) -> bool:
        """Read-only: should the opener run ``quick_check``? No when the file was closed cleanly
        and left untouched since, or is held by a writer that checked it. ``self.why`` says why
        it should."""
        self.why = self._why()
        return self.why is not None

    def _why(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return "it has no session marker"
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use: checked by its holder unless dirty
                return "its writer has not checked it since an unclean shutdown" \
                    if _read(fd) == ["dirty"] else None
            try:
                text = _read(fd)
                if len(text) == 4 and text[0] == "clean":
                    return None if " ".join(text[1:]) == _fingerprint(self.db) else CHANGED
                return "it was not closed cleanly"
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            return f"its session marker cannot be read ({e})"
        finally:
            os.close(fd)

    def open(self, *, verified: bool) -> None:
        """Take the shared hold and mark the file in use until :meth:`close`.

        ``verified``: the file was found clean or has just passed its check; when False after
        an unclean shutdown the marker says ``dirty`` and no close records it clean."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone:
                _write(fd, "open" if verified else "dirty")
                fsync_dir(self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrades an exclusive hold; waits out an opener
            if not alone and verified and _read(fd) == ["dirty"]:
                _write(fd, "open")  # checked now, by this writer
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        """Release the hold; the last writer out records the file as cleanly closed (unless it
        was never checked after an unclean shutdown). Call after the connection is closed: its
        last checkpoint changes the file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # others still hold it: the last one records the close
            if _read(fd) == ["open"] and self.db.exists():
                _write(fd, f"clean {_fingerprint(self.db)}\n")
        finally:
            os.close(fd)
