"""How long a tradeguard process lives: one per role and data dir, and never past its run.

* :func:`hold_lock` — an exclusive ``flock`` on ``<data dir>/<role>.lock`` held for the life of the
  process (the kernel drops it when the process dies, however it dies): a second ``run``, ``bot`` or
  ``watchdog`` on the same data dir is refused, with no window between check and claim.
* :func:`die_with_run` — under ``tradeguard run`` each program asks the kernel for SIGTERM when
  supervisord dies (``PR_SET_PDEATHSIG``), so no bot trades on unsupervised after its run is gone.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
from pathlib import Path
from typing import Mapping

from tradeguard.exceptions import AlreadyRunning

# Set by `tradeguard run` in every program's environment: the pid of its supervisord.
RUN_PID_ENV = "TRADEGUARD_RUN_PID"
_PR_SET_PDEATHSIG = 1


class ProcessLock:
    """A held lock; :meth:`close` releases it (so does the death of every process holding it)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_path(data_dir: Path, role: str) -> Path:
    return Path(data_dir) / f"{role}.lock"


def hold_lock(data_dir: Path, role: str, what: str, *, inheritable: bool = False) -> ProcessLock:
    """Claim ``<data_dir>/<role>.lock`` or raise AlreadyRunning naming the holder's pid.

    ``inheritable`` keeps it across ``exec`` (``tradeguard run`` hands it to supervisord).
    """
    path = lock_path(data_dir, role)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"another {what} (pid {other}) already runs for {path.parent}; "
                             "stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    os.set_inheritable(fd, inheritable)
    return ProcessLock(path, fd)


def lock_holder(data_dir: Path, role: str) -> int | None:
    """The pid that holds ``<role>.lock`` now, or None when nobody does."""
    path = lock_path(data_dir, role)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(raw) if raw.isdigit() else -1
        return None
    finally:
        os.close(fd)


def die_with_run(environ: Mapping[str, str] | None = None) -> None:
    """Under ``tradeguard run``: SIGTERM this process when its supervisord dies.

    Outside a run (systemd, standalone, a terminal) this does nothing: there a bot outlives a
    restarted watchdog on purpose.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(RUN_PID_ENV, "")
    if not raw.isdigit():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != int(raw):  # supervisord died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
