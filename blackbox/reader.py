"""Reading ``blackbox.db`` (read-only): filtered queries, follow, counts, time parsing, formatting.

Used by ``tradeguard blackbox tail|export``, the chaos harness and incident scripts. Nothing
here writes to the database, so it is safe while the bot and the watchdog are recording.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from blackbox.events import format_ts
from tradeguard.exceptions import BlackboxUnavailable

_COLUMNS = "id, ts, pid, seq, role, kind, source, severity, message, fields, critical"
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.I)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


@dataclass(frozen=True)
class EventFilter:
    """Which events to read. ``kinds`` match as prefixes (``order`` matches ``order.intent``)."""

    since: float | None = None
    until: float | None = None
    kinds: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    after_id: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL WHERE clause (or "") and its parameters."""
        terms: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            terms.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            terms.append("ts <= ?")
            params.append(self.until)
        if self.after_id is not None:
            terms.append("id > ?")
            params.append(self.after_id)
        if self.kinds:
            # a plain prefix, without LIKE's wildcards and case folding
            terms.append("(" + " OR ".join("substr(kind, 1, ?) = ?" for _ in self.kinds) + ")")
            for k in self.kinds:
                params += [len(k), k]
        for column, values in (("source", self.sources), ("role", self.roles)):
            if values:
                terms.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        return (" WHERE " + " AND ".join(terms) if terms else ""), params


def open_readonly(db: Path) -> sqlite3.Connection:
    """A read-only connection to ``db``; BlackboxUnavailable if it is missing or unreadable."""
    db = Path(db)
    if not db.is_file():
        raise BlackboxUnavailable(f"no black box at {db}: nothing has been recorded there yet "
                                  "(check --data-dir / [paths] data_dir)")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise BlackboxUnavailable(f"{db} cannot be read: {e}") from None
    return conn


def iter_events(db: Path, flt: EventFilter = EventFilter(), *, limit: int | None = None,
                newest: bool = False, order_by_id: bool = False) -> Iterator[dict[str, Any]]:
    """Events matching ``flt`` in time order (or insertion order with ``order_by_id``).

    With ``limit``, the first ``limit`` matches, or the last ones if ``newest``.
    """
    conn = open_readonly(db)
    try:
        where, params = flt.where()
        key = "id" if order_by_id else "ts, pid, seq"
        desc = "id DESC" if order_by_id else "ts DESC, pid DESC, seq DESC"
        sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY {desc if newest else key}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if newest:
            sql = f"SELECT * FROM ({sql}) ORDER BY {key}"
        try:
            for row in conn.execute(sql, params):
                yield _row_dict(row)
        except sqlite3.DatabaseError as e:
            raise BlackboxUnavailable(f"{db} cannot be read: {e}") from None
    finally:
        conn.close()


def query_events(db: Path, *, since: float | None = None, until: float | None = None,
                 kinds: tuple[str, ...] = (), sources: tuple[str, ...] = (),
                 roles: tuple[str, ...] = (), limit: int | None = None,
                 newest: bool = False) -> list[dict[str, Any]]:
    """A list of matching events, oldest first (see :func:`iter_events`)."""
    flt = EventFilter(since=since, until=until, kinds=tuple(kinds), sources=tuple(sources),
                      roles=tuple(roles))
    return list(iter_events(db, flt, limit=limit, newest=newest))


def counts(db: Path) -> dict[str, Any]:
    """Totals: events kept, by role and by kind, time span, and what was dropped and why."""
    conn = open_readonly(db)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        total, oldest, newest = conn.execute(
            "SELECT count(*), min(ts), max(ts) FROM events").fetchone()
        by_role = dict(conn.execute("SELECT role, count(*) FROM events GROUP BY role"))
        by_kind = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind"))
    except sqlite3.DatabaseError as e:
        raise BlackboxUnavailable(f"{db} cannot be read: {e}") from None
    finally:
        conn.close()
    dropped = {k: int(meta.get(f"dropped_{k}", 0) or 0)
               for k in ("max_events", "max_mb", "max_age", "overflow")}
    return {"events": total, "bytes": int(meta.get("bytes", 0) or 0), "oldest": oldest,
            "newest": newest, "by_role": by_role,
            "by_kind": by_kind, "dropped": dropped, "dropped_total": sum(dropped.values())}


def last_id(db: Path) -> int:
    """The id of the newest row (0 when empty): where ``tail -f`` starts following."""
    conn = open_readonly(db)
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time from ISO 8601 (naive = local time), a duration ago (``30s``, ``10m``, ``2h``,
    ``1d``, ``1w``), ``now``, or unix seconds. ValueError with a clear message otherwise."""
    now = time.time() if now is None else now
    raw = text.strip()
    if raw.lower() == "now":
        return now
    m = _RELATIVE.match(raw)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        return float(raw) if re.fullmatch(r"\d{9,}(\.\d+)?", raw) else \
            datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use ISO 8601 (2026-11-23T10:00:00, "
                         "local time unless it has an offset), a duration ago like "
                         "30s, 10m, 2h, 1d, or now") from None


def format_line(ev: dict[str, Any]) -> str:
    """One readable line: ``2026-11-23 10:00:01.123 bot[1234] info order.intent orders: msg k=v``."""
    parts = [f"{format_ts(ev['ts'])} {ev['role']}[{ev['pid']}] {ev['severity']} {ev['kind']} "
             f"{ev['source']}: {ev['message']}"]
    for k, v in (ev.get("fields") or {}).items():
        parts.append(f"{k}={_fmt_value(v)}")
    return " ".join(parts)


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v if v and _BARE.match(v) else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)


def _row_dict(row: tuple) -> dict[str, Any]:
    try:
        fields = json.loads(row[9])
    except (TypeError, ValueError):
        fields = {"_unreadable": str(row[9])[:200]}
    return {"id": row[0], "ts": row[1], "pid": row[2], "seq": row[3], "role": row[4],
            "kind": row[5], "source": row[6], "severity": row[7], "message": row[8],
            "fields": fields, "critical": bool(row[10])}
