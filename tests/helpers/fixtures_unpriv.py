"""``unprivileged``: run the CLI where file permissions apply (root's capabilities ignore them).

``u = unprivileged``; ``u.dir("data", writable=False)`` makes a directory this user cannot
write; ``u.run_cli(*args)`` runs ``tradeguard ARGS`` without the capabilities that bypass
permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER are dropped from the
child's bounding set when the tests run as root), so a 0500 directory is really read-only.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from tests.helpers.proc import child_env, tradeguard_cmd

_PR_CAPBSET_DROP = 24
_BYPASS_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_bypass_caps() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _BYPASS_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Unprivileged:
    def __init__(self, root: Path):
        self.root = root

    def dir(self, name: str, *, writable: bool = True) -> Path:
        """A directory the child can (or cannot) write."""
        d = self.root / name
        d.mkdir(mode=0o700)
        os.chmod(d, 0o700 if writable else 0o500)
        return d

    def run_cli(self, *args: str, env: Mapping[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        kw = {"preexec_fn": _drop_bypass_caps} if os.getuid() == 0 else {}
        return subprocess.run(tradeguard_cmd(*args), env=child_env(env), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[Unprivileged]:
    root = tmp_path / "unpriv"
    root.mkdir()
    yield Unprivileged(root)
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o700)  # let pytest remove it
