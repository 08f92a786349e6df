"""Noticing that a file changed, for one ``os.stat``: how the endpoint follows the token and
credentials files without re-reading them on every request."""
from __future__ import annotations

import os
from pathlib import Path

_UNSEEN = object()


class FileChange:
    """``changed()`` is True on the first call and whenever the file's inode, mtime, ctime (a
    chmod) or size differ from the previous call's, including appearing or disappearing."""

    def __init__(self, path: Path):
        self.path = path
        self._key: object = _UNSEEN

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            key: object = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key == self._key:
            return False
        self._key = key
        return True
