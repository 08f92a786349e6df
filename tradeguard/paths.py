"""Where every runtime file lives (DESIGN.md, "Runtime files"). One place, so names never drift."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tradeguard.exceptions import DirectoryError


@dataclass(frozen=True)
class RuntimePaths:
    data_dir: Path
    logs_dir: Path

    # --- data dir -------------------------------------------------------------------------
    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def heartbeat(self) -> Path:
        return self.data_dir / "bot.heartbeat"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "bot.pid"

    @property
    def kill_file(self) -> Path:
        return self.data_dir / "KILL"

    @property
    def blackbox_db(self) -> Path:
        return self.data_dir / "blackbox.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def field_key(self) -> Path:
        return self.keys_dir / "field.key"

    @property
    def health_token(self) -> Path:
        return self.data_dir / "health.token"

    @property
    def health_users(self) -> Path:
        return self.data_dir / "health.users"

    @property
    def watchdog_state(self) -> Path:
        return self.data_dir / "watchdog.json"

    @property
    def supervisord_conf(self) -> Path:
        return self.data_dir / "supervisord.conf"

    @property
    def supervisor_dir(self) -> Path:
        """supervisord's pid file and ``rpc.json`` (its XML-RPC URL and credentials, 0600)."""
        return self.data_dir / "supervisor"

    @property
    def supervisor_rpc(self) -> Path:
        return self.supervisor_dir / "rpc.json"

    @property
    def supervisor_socket(self) -> Path:
        """The XML-RPC socket: in the data dir, or — when that path is too long for AF_UNIX
        (108 bytes) — in a private per-data-dir directory under the system temp dir."""
        sock = self.supervisor_dir / "supervisor.sock"
        if len(str(sock)) < 100:
            return sock
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"tradeguard-{os.getuid()}-{digest}" / "supervisor.sock"

    @property
    def paper_dir(self) -> Path:
        return self.data_dir / "paper"

    @property
    def paper_credentials(self) -> Path:
        return self.paper_dir / "credentials.json"

    # --- logs dir -------------------------------------------------------------------------
    @property
    def crash_dir(self) -> Path:
        return self.logs_dir / "crash"

    def log_file(self, role: str) -> Path:
        return self.logs_dir / f"{role}.jsonl"

    def ensure(self) -> "RuntimePaths":
        """Create the data and logs directories (0700 data dir: it holds secrets).

        Raises DirectoryError, with a plain message, when either cannot be created or written.
        """
        ensure_writable_dir(self.data_dir, "data", "[paths] data_dir or --data-dir", mode=0o700)
        ensure_writable_dir(self.logs_dir, "logs", "[paths] logs_dir or --logs-dir")
        return self


def ensure_writable_dir(path: Path, what: str, setting: str, *, mode: int = 0o777) -> Path:
    """Create ``path`` if needed and check this user can write in it; DirectoryError if not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as e:
        raise DirectoryError(f"cannot create the {what} dir {path}: {e.strerror or e}; "
                             f"choose a directory you can write with {setting}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DirectoryError(f"the {what} dir {path} is not writable by this user "
                             f"(uid {os.getuid()}); fix its permissions or choose another "
                             f"directory with {setting}")
    return path
