"""Export events to JSON lines or CSV for incident analysis (streamed; never a partial file)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable

from blackbox.events import format_ts
from blackbox.reader import EventFilter, iter_events, open_readonly
from tradeguard.exceptions import ExportError
from tradeguard.fsutil import staged

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("id", "time", "ts", "role", "pid", "seq", "severity", "kind", "source",
               "message", "fields", "critical")


def export_events(db: Path, flt: EventFilter, fmt: str, target: str | os.PathLike | IO[str],
                  *, force: bool = False) -> int:
    """Write the events matching ``flt`` to ``target`` (a path or an open text stream);
    returns how many. A path that exists is refused (ExportError) unless ``force``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    open_readonly(db).close()  # a missing or unreadable database fails before any file is made
    events = iter_events(db, flt)
    if not isinstance(target, (str, os.PathLike)):
        return _write(events, fmt, target)
    path = Path(target)
    if path.exists() and not force:
        raise ExportError(f"{path} already exists; use --force to overwrite it")
    try:
        with staged(path, overwrite=force) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = _write(events, fmt, fh)
    except FileExistsError:  # it appeared meanwhile: never clobbered
        raise ExportError(f"{path} already exists; use --force to overwrite it") from None
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return n


def _write(events: Iterable[dict[str, Any]], fmt: str, fh: IO[str]) -> int:
    n = 0
    if fmt == "jsonl":
        for ev in events:
            fh.write(json.dumps({"time": format_ts(ev["ts"]), **ev}, ensure_ascii=False) + "\n")
            n += 1
        return n
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    for ev in events:
        row = {**ev, "time": format_ts(ev["ts"]),
               "fields": json.dumps(ev["fields"], ensure_ascii=False, separators=(",", ":"))}
        writer.writerow([row[c] for c in CSV_COLUMNS])
        n += 1
    return n
