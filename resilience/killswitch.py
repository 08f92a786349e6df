"""The kill switch: the ``KILL`` file in the data dir, or ``BOT_EMERGENCY_SHUTDOWN`` in the environment.

File: JSON ``{"mode": "halt"|"flatten", "reason": str, "at": unix seconds, "by": str}``, written
atomically (temp file, fsync, ``os.replace``, fsync of the directory) by :meth:`KillSwitch.engage`
(``tradeguard kill``, the watchdog, the bot) and removed by :meth:`KillSwitch.release`
(``tradeguard resume``). A file that exists but cannot be read or is not such an object (empty,
truncated, hand-edited, unknown mode) counts as **engaged in halt mode** with the reason
"unreadable kill file": failing safe beats trading on when someone clearly meant to stop it.

Environment ``BOT_EMERGENCY_SHUTDOWN`` (case and surrounding blanks ignored): ``1``, ``true``,
``halt`` → halt; ``flatten`` → flatten; unset, empty, ``0``, ``false`` → not engaged; any other
value → halt, with a warning (someone set the variable to stop the bot; a typo must not trade).
Its ``at`` is when this KillSwitch first saw the value. When both are engaged, the stronger
mode wins (flatten over halt); on a tie the file's state, which carries a reason, is reported.

:meth:`KillSwitch.check` runs before every order submission, so it is cheap: one ``os.stat`` and
one environment lookup when nothing changed; the file is read again only when its
``(mtime_ns, size, inode)`` changes.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from blackbox import recorder
from tradeguard.fsutil import fsync_dir
from tradeguard.heartbeat import atomic_write_json

log = logging.getLogger(__name__)

ENV_VAR = "BOT_EMERGENCY_SHUTDOWN"
HALT, FLATTEN = "halt", "flatten"
MODES = (HALT, FLATTEN)
UNREADABLE_REASON = "unreadable kill file"
_ENV_MODES = {"1": HALT, "true": HALT, "halt": HALT, "flatten": FLATTEN,
              "": None, "0": None, "false": None}
_STRENGTH = {HALT: 1, FLATTEN: 2}


@dataclass(frozen=True)
class KillState:
    """An engaged kill switch: what to do, why, since when, where it was seen, who pulled it."""

    mode: str      # "halt" | "flatten"
    reason: str
    at: float      # unix seconds
    source: str    # "file" | "env"
    by: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "at": self.at, "source": self.source,
                "by": self.by}


def parse_env_value(raw: str | None) -> tuple[str | None, bool]:
    """``(mode or None, recognised)`` for a value of BOT_EMERGENCY_SHUTDOWN."""
    if raw is None:
        return None, True
    key = raw.strip().lower()
    if key in _ENV_MODES:
        return _ENV_MODES[key], True
    return HALT, False


class KillSwitch:
    """Read, engage and release the kill switch of one data dir."""

    def __init__(self, kill_file: Path, environ: Mapping[str, str] = os.environ):
        self.kill_file = Path(kill_file)
        self._path = os.fspath(self.kill_file)
        self._environ = environ
        self._file_key: tuple[int, int, int] | None = None
        self._file_state: KillState | None = None
        self._env_raw: str | None = None
        self._env_state: KillState | None = None

    # --- reading -----------------------------------------------------------------------------
    def check(self) -> KillState | None:
        """The engaged kill switch, or None when trading may go on."""
        env = self.env_state()
        file = self.file_state()
        if env is None:
            return file
        if file is None or _STRENGTH[env.mode] > _STRENGTH[file.mode]:
            return env
        return file

    def file_state(self) -> KillState | None:
        """The kill switch as the file says (the environment aside)."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._file_key = self._file_state = None
            return None
        except OSError as e:  # e.g. the data dir is not searchable: fail safe
            return self._unreadable(f"cannot stat {self._path}: {e}", time.time())
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._file_key:
            self._file_state = self._read_file(st.st_mtime)
            self._file_key = key if self._file_state is not None else None
        return self._file_state

    def env_state(self) -> KillState | None:
        """The kill switch as ``BOT_EMERGENCY_SHUTDOWN`` says (the file aside)."""
        raw = self._environ.get(ENV_VAR)
        return self._env_state if raw == self._env_raw else self._read_env(raw)

    def _read_env(self, raw: str | None) -> KillState | None:
        mode, recognised = parse_env_value(raw)
        if not recognised:
            log.warning("%s=%r is not one of 1, true, halt, flatten, 0, false: treated as halt",
                        ENV_VAR, raw)
        state = None if mode is None else KillState(mode, f"{ENV_VAR}={(raw or '').strip()}",
                                                    time.time(), "env", "env")
        self._env_raw, self._env_state = raw, state
        return state

    def _read_file(self, mtime: float) -> KillState | None:
        try:
            with open(self._path, "rb") as fh:
                raw = fh.read(65536)
        except FileNotFoundError:  # removed between stat and open: released
            return None
        except OSError as e:
            return self._unreadable(f"cannot read {self._path}: {e}", mtime)
        try:
            obj = json.loads(raw)
        except ValueError:
            return self._unreadable(f"{self._path} is not JSON ({len(raw)} bytes)", mtime)
        if not isinstance(obj, dict) or obj.get("mode") not in MODES:
            return self._unreadable(f"{self._path} has no valid 'mode' (halt or flatten)", mtime)
        at = obj.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not (at == at):
            at = mtime
        reason = obj.get("reason")
        by = obj.get("by")
        return KillState(obj["mode"], reason if isinstance(reason, str) else "",
                         float(at), "file", by if isinstance(by, str) and by else "unknown")

    @staticmethod
    def _unreadable(detail: str, at: float) -> KillState:
        log.warning("kill switch: %s; engaged in halt mode (fail safe)", detail)
        return KillState(HALT, UNREADABLE_REASON, at, "file", "unknown")

    # --- writing -----------------------------------------------------------------------------
    def engage(self, mode: str, reason: str, by: str = "cli", take_over: bool = False) -> KillState:
        """Engage the file kill switch; return the state now in force in the file.

        Never downgrades: ``halt`` over an engaged ``flatten`` leaves the file as it is, and an
        engagement in the same mode keeps its first reason — unless ``take_over`` (the watchdog
        carrying out a flatten a person engaged: the file then says who sells). A halt over an
        unreadable file replaces it with a readable one.
        """
        if mode not in MODES:
            raise ValueError(f"kill switch mode must be 'halt' or 'flatten', not {mode!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a kill switch needs a non-empty reason")
        current = self.file_state()
        if current is not None and current.reason != UNREADABLE_REASON \
                and _STRENGTH[current.mode] >= _STRENGTH[mode] \
                and not (take_over and current.mode == mode and current.by != by):
            return current
        state = KillState(mode, reason.strip(), time.time(), "file", by)
        self.kill_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.kill_file, {"mode": state.mode, "reason": state.reason,
                                           "at": state.at, "by": state.by}, fsync=True)
        self._file_key = None
        log.warning("kill switch engaged (%s) by %s: %s", mode, by, state.reason)
        recorder.record("kill.engaged", by, f"kill switch engaged ({mode}) by {by}: {state.reason}",
                        severity="critical", critical=True, mode=mode, reason=state.reason, by=by)
        return state

    def release(self, by: str = "cli") -> KillState | None:
        """Remove the kill file; return what it said (None if there was none)."""
        previous = self.file_state()
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            previous = None
        else:
            fsync_dir(self.kill_file.parent)
        self._file_key = self._file_state = None
        if previous is not None:
            log.warning("kill switch file released (was %s: %s)", previous.mode, previous.reason)
            recorder.record("kill.released", by, f"kill switch released by {by} (was "
                            f"{previous.mode}: {previous.reason})", severity="warning",
                            critical=True, mode=previous.mode, reason=previous.reason, by=by)
        return previous

