"""Failpoints: named places where the chaos harness makes the bot fail on purpose.

Armed by ``TRADEGUARD_FAILPOINTS="name=action;name=action"`` (read once at start) or by the
one-shot file ``<data dir>/FAILPOINTS`` (same syntax, ``;`` or newlines between entries).
An entry is ``name=action[:arg][@N][*]``:

* actions: ``crash`` (SIGKILL self), ``exit`` (``os._exit(3)``), ``raise``
  (:class:`~tradeguard.exceptions.FailpointTriggered`), ``hang`` (block the main thread
  forever), ``stall`` (the loop only refreshes the heartbeat's ts), ``leak[:MB]`` (grow RSS by
  MB, default 20, every tick from then on);
* ``@N`` fires on the Nth hit instead of the first;
* ``*`` keeps a file entry armed across restarts (``startup=crash*`` crashes every start).

An entry from the file is removed from the file durably *before* its action runs, so a
restarted bot does not repeat it. With nothing armed, :meth:`Failpoints.hit` costs one dict
lookup.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from blackbox import recorder
from tradeguard.exceptions import ConfigError, FailpointTriggered
from tradeguard.fsutil import SHARED, write_atomic

log = logging.getLogger(__name__)

ENV_VAR = "TRADEGUARD_FAILPOINTS"
FILE_NAME = "FAILPOINTS"
NAMES = ("startup", "orders.after_intent", "orders.before_submit", "orders.after_submit",
         "orders.after_ack", "loop.tick", "memory", "exit.after_stop_cancel")
ACTIONS = ("crash", "exit", "raise", "hang", "stall", "leak")
DEFAULT_LEAK_MB = 20
_ENTRY_RE = re.compile(r"^(?P<name>[a-z_.]+)=(?P<action>[a-z]+)(?::(?P<arg>\d+))?"
                       r"(?:@(?P<nth>\d+))?(?P<keep>\*)?$")


@dataclass
class Failpoint:
    name: str
    action: str
    arg: int | None = None
    nth: int = 1
    keep: bool = False
    source: str = "env"  # "env" or "file"
    text: str = ""  # the entry as written, to remove it from the file
    hits: int = 0


def parse(spec: str, source: str = "env") -> list[Failpoint]:
    """Parse ``name=action[:arg][@N][*]`` entries separated by ``;`` or newlines."""
    out = []
    for raw in re.split(r"[;\n]", spec):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        m = _ENTRY_RE.match(entry)
        if not m:
            raise ConfigError(f"failpoint {entry!r} ({source}): expected name=action[:arg][@N][*]")
        name, action = m["name"], m["action"]
        if name not in NAMES:
            raise ConfigError(f"failpoint {entry!r} ({source}): unknown name {name!r}; "
                              f"allowed: {', '.join(NAMES)}")
        if action not in ACTIONS:
            raise ConfigError(f"failpoint {entry!r} ({source}): unknown action {action!r}; "
                              f"allowed: {', '.join(ACTIONS)}")
        if m["arg"] is not None and action != "leak":
            raise ConfigError(f"failpoint {entry!r} ({source}): only 'leak' takes an argument")
        nth = int(m["nth"] or 1)
        if nth < 1:
            raise ConfigError(f"failpoint {entry!r} ({source}): @N must be >= 1")
        arg = int(m["arg"]) if m["arg"] is not None else (DEFAULT_LEAK_MB if action == "leak" else None)
        out.append(Failpoint(name, action, arg, nth, bool(m["keep"]), source, entry))
    return out


def _remove_entry(path: Path, entry: str) -> None:
    """Drop one entry from the failpoints file, durably: a restarted bot must not repeat it."""
    try:
        lines = re.split(r"[;\n]", path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    kept, removed = [], False
    for line in lines:
        if not removed and line.strip() == entry:
            removed = True
            continue
        if line.strip():
            kept.append(line.strip())
    write_atomic(path, "".join(k + "\n" for k in kept), mode=SHARED)


class Failpoints:
    """The armed failpoints of this process."""

    def __init__(self, points: list[Failpoint] | None = None, file: Path | None = None):
        self.file = file
        self._points: dict[str, list[Failpoint]] = {}
        for fp in points or []:
            self._points.setdefault(fp.name, []).append(fp)

    @classmethod
    def load(cls, data_dir: Path, environ: Mapping[str, str] | None = None) -> "Failpoints":
        """Failpoints from the environment and ``<data_dir>/FAILPOINTS``; ConfigError if malformed."""
        environ = os.environ if environ is None else environ
        points = parse(environ.get(ENV_VAR, ""), "env")
        file = Path(data_dir) / FILE_NAME
        try:
            points += parse(file.read_text(encoding="utf-8"), "file")
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file} cannot be read: {e}") from None
        if points:
            log.warning("failpoints armed: %s", "; ".join(f"{p.text} ({p.source})" for p in points))
        return cls(points, file)

    def __bool__(self) -> bool:
        return bool(self._points)

    def armed(self) -> list[Failpoint]:
        return [fp for fps in self._points.values() for fp in fps]

    def hit(self, name: str) -> Failpoint | None:
        """Count a pass through ``name``; act if a failpoint fires there.

        ``crash``, ``exit``, ``raise`` and ``hang`` act here; ``stall`` and ``leak`` are returned
        for the loop to carry out. Returns None when nothing fires.
        """
        fps = self._points.get(name)
        if not fps:
            return None
        for fp in fps:
            fp.hits += 1
            if fp.hits == fp.nth:
                fps.remove(fp)
                if not fps:
                    del self._points[name]
                return self._fire(fp)
        return None

    def _fire(self, fp: Failpoint) -> Failpoint | None:
        if fp.source == "file" and not fp.keep and self.file is not None:
            _remove_entry(self.file, fp.text)
        log.warning("failpoint %s fired: %s", fp.name, fp.action)
        try:
            recorder.record("failpoint.fired", "bot", f"failpoint {fp.text} fired",
                            severity="warning", critical=True, failpoint=fp.name,
                            action=fp.action, origin=fp.source)
        except Exception:  # noqa: BLE001 - recording must not change what the failpoint does
            log.debug("failpoint not recorded", exc_info=True)
        if fp.action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # SIGKILL is delivered asynchronously; never run on
        if fp.action == "exit":
            os._exit(3)
        if fp.action == "raise":
            raise FailpointTriggered(fp.name)
        if fp.action == "hang":
            while True:
                time.sleep(3600)
        return fp  # stall, leak


class Leak:
    """Memory the ``leak`` failpoint holds on to: N MB more every tick."""

    def __init__(self) -> None:
        self.mb_per_tick = 0
        self._blocks: list[bytes] = []

    def start(self, mb: int) -> None:
        self.mb_per_tick = mb

    def tick(self) -> None:
        if self.mb_per_tick:
            # bytes of a non-zero value: every page is written, so RSS really grows
            self._blocks.append(b"\x01" * (self.mb_per_tick * 1024 * 1024))
