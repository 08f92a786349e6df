"""The flight recorder: ``record()`` from anywhere, cheap; a background thread writes to blackbox.db.

``record`` appends the raw event to a pending queue, under one short lock, and returns. A writer
thread redacts, serializes and writes the pending queue every ``[blackbox] flush_interval_ms``,
then keeps the written events, redacted and packed, in a fixed-size ring in memory
(``[blackbox] ring_kb``, allocated up front: the footprint does not grow as it fills). A crash
dump carries the ring and everything not yet written. A critical event (``critical=True``) is
written by the caller before ``record`` returns, together with everything pending before it, in
order, with ``synchronous=FULL``. Before ``init`` (or in a process that never calls it), the
last MEMORY_ONLY_EVENTS events stay pending; ``init`` writes them out. If the database cannot be
written, events wait in memory (at most MAX_PENDING; beyond that the oldest are dropped and
counted) and writing resumes when it can. ``record`` never raises.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from blackbox.events import SEVERITIES, Event, pack_row, to_dict, to_row, unpack_row
from blackbox.ring import ByteRing
from blackbox.store import EventStore
from tradeguard.config import BlackboxConfig
from tradeguard.paths import RuntimePaths

log = logging.getLogger(__name__)

MAX_PENDING = 100_000
MEMORY_ONLY_EVENTS = 1000  # kept by a recorder without a database (before init, after close)
RETRY_MAX_S = 5.0  # longest pause between write attempts while the database is unavailable
_SEVERITY_SET = frozenset(SEVERITIES)
UNKNOWN_ROLE = "unknown"  # events recorded before init get the role init gives


class Recorder:
    """One process's recorder. ``store=None`` keeps events in memory only (the last
    MEMORY_ONLY_EVENTS), until a recorder with a store adopts them."""

    def __init__(self, role: str, store: EventStore | None = None, *,
                 flush_interval_s: float = 0.1, ring_bytes: int = 512 * 1024,
                 max_pending: int = MAX_PENDING):
        self.role = role
        self.pid = os.getpid()
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending if store is not None else MEMORY_ONLY_EVENTS
        # written events, packed; a memory-only recorder gets one only when it adopts one
        self._ring = ByteRing(ring_bytes) if store is not None else None
        self._pending: deque[Event] = deque()
        self._inflight: deque[Event] = deque()  # taken from _pending by the write under way
        self._overflow = 0  # dropped from _pending, not yet counted in the database
        self._seq = 0
        self._last_ts = 0.0
        # Re-entrant: a signal handler may record while this thread is inside record or flush.
        self._lock = threading.RLock()        # guards seq, ring, pending, inflight
        self._flush_lock = threading.RLock()  # one writer at a time, batches in order
        self._flush_depth = 0                 # > 0 while the holder of _flush_lock writes
        self._in_record = False               # the holder of _lock is inside record()
        self._deferred: deque[tuple] = deque()  # events of signal handlers that interrupted it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.written = 0

    # --- hot path ---------------------------------------------------------------------------
    def record(self, kind: str, source: str, message: str, severity: str, critical: bool,
               fields: dict[str, Any]) -> None:
        """Keep one event; if critical, write it (and all before it) durably before returning."""
        if severity not in _SEVERITY_SET:
            fields["severity_given"], severity = str(severity), "info"
        args = (kind, source, message, severity, critical, fields)
        with self._lock:
            if self._in_record:
                # A signal handler interrupted this thread inside record(): the interrupted
                # call numbers and stores this event right after its own.
                self._deferred.append(args)
                return
            self._in_record = True
            try:
                self._append(*args)
                while self._deferred:
                    later = self._deferred.popleft()
                    critical = critical or later[4]
                    self._append(*later)
            finally:
                self._in_record = False
        if self.store is not None:
            if self._thread is None:
                self._start_writer()
            if critical:
                self.flush(durable=True)

    def _append(self, kind: str, source: str, message: str, severity: str, critical: bool,
                fields: dict[str, Any]) -> None:
        ts = time.time()
        if ts < self._last_ts:  # the wall clock stepped back: keep per-process order
            ts = self._last_ts
        self._last_ts = ts
        self._seq += 1
        ev = Event(ts, self._seq, self.pid, self.role, kind, source, severity, message, fields,
                   critical)
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._overflow += 1
        self._pending.append(ev)

    # --- writing ----------------------------------------------------------------------------
    def flush(self, timeout: float | None = None, *, durable: bool = False) -> bool:
        """Write everything pending now; False if it could not (events stay pending)."""
        if self.store is None:
            return True
        if not self._flush_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        if self._flush_depth:
            # Re-entered (a signal handler) in the middle of this thread's own write: the events
            # stay pending; the interrupted flush's successor or the writer thread writes them.
            self._flush_lock.release()
            return False
        self._flush_depth += 1
        try:
            with self._lock:
                # swap, not copy-and-clear: an event a signal handler appends meanwhile is kept
                batch, self._pending = self._pending, deque()
                lost, self._overflow = self._overflow, 0
                self._inflight = batch
            if not batch and not lost:
                return True
            try:
                rows = [to_row(e) for e in batch]
                self.store.write(rows, durable=durable, lost=lost)
            except Exception as e:  # noqa: BLE001 - any failure keeps the events for later
                self._requeue(batch, lost)
                if not self._failing:
                    self._failing = True
                    log.warning("blackbox: cannot write %s (%s); keeping events in memory and "
                                "retrying", self.store.path, e)
                return False
            self._keep(rows)
            self.written += len(batch)
            if self._failing:
                self._failing = False
                log.info("blackbox: %s writable again", self.store.path)
            return True
        finally:
            self._flush_depth -= 1
            self._flush_lock.release()

    def _keep(self, rows: list[tuple]) -> None:
        """Move written rows from in flight to the ring."""
        packed = []
        for row in rows:
            data = pack_row(row)
            # a row is capped (fields, message, names), a ring is at least 64 KiB: this is a guard
            packed.append(data if len(data) <= self._ring.capacity // 4 else pack_row(
                row[:7] + ("[event too large for the ring]", "{}", row[9])))
        with self._lock:
            for data in packed:
                self._ring.append(data)
            self._inflight = deque()

    def _requeue(self, batch: deque[Event], lost: int) -> None:
        with self._lock:
            self._inflight = deque()
            self._pending.extendleft(reversed(batch))
            self._overflow += lost
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._overflow += 1

    def _start_writer(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="blackbox-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = self.flush_interval_s
        while not self._stop.wait(pause):
            ok = self.flush()
            pause = self.flush_interval_s if ok else min(max(pause * 2, 0.5), RETRY_MAX_S)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the writer and write what is pending; True if nothing was left unwritten."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        ok = self.flush(timeout)
        if self.store is not None and self._flush_lock.acquire(timeout=max(timeout, 0)):
            try:
                self.store.close()
            finally:
                self._flush_lock.release()
        return ok

    # --- reading ----------------------------------------------------------------------------
    def recent(self, n: int | None = None) -> list[dict[str, Any]]:
        """The last ``n`` (default: all) events held in memory, written or not, oldest first,
        redacted."""
        with self._lock:
            packed = self._ring.records() if self._ring is not None else []
            raw = [*self._inflight, *self._pending]
        if n is not None:
            raw = raw[max(len(raw) - n, 0):] if n > 0 else []
            older = max(n - len(raw), 0)
            packed = packed[max(len(packed) - older, 0):] if older else []
        events = [*map(unpack_row, packed), *map(to_dict, raw)]
        # A signal handler that interrupted _keep between a ring append and the end of the
        # batch sees an event both in the ring and in flight: list it once.
        seen: set[tuple] = set()
        unique = []
        for e in events:
            key = (e["pid"], e["seq"], e["ts"])
            if key not in seen:
                seen.add(key)
                unique.append(e)
        return unique

    def stats(self) -> dict[str, Any]:
        """Counters for health reporting."""
        with self._lock:
            ring = self._ring
            return {"role": self.role, "recorded": self._seq, "written": self.written,
                    "pending": len(self._pending) + len(self._inflight),
                    "dropped_in_memory": self._overflow,
                    "ring_events": len(ring) if ring is not None else 0,
                    "ring_bytes": ring.used if ring is not None else 0,
                    "failing": self._failing}

    # --- process life -----------------------------------------------------------------------
    def adopt(self, other: "Recorder") -> None:
        """Take over ``other``'s sequence, ring and unwritten events (``other`` is left empty)."""
        with other._lock:
            ring = other._ring
            written = ring.records() if ring is not None else []
            unwritten = [*other._inflight, *other._pending]
            lost, seq, last_ts = other._overflow, other._seq, other._last_ts
            if ring is not None:
                ring.clear()
            other._pending.clear()
            other._overflow = 0
        relabel = (lambda e: e._replace(role=self.role) if e.role == UNKNOWN_ROLE else e)
        with self._lock:
            self._seq, self._last_ts = max(self._seq, seq), max(self._last_ts, last_ts)
            if written:
                if self._ring is None:
                    self._ring = ByteRing(ring.capacity)
                merged = [*written, *self._ring.records()]  # keeps the newest if over capacity
                self._ring.clear()
                for data in merged:
                    self._ring.append(data)
            self._pending.extendleft(map(relabel, reversed(unwritten)))
            self._overflow += lost
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._overflow += 1

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, own pid and sequence, a writer started on demand."""
        self._lock = threading.RLock()
        self._flush_lock = threading.RLock()
        self._flush_depth = 0
        self._in_record = False
        self._deferred.clear()
        self._stop = threading.Event()
        self._thread = None
        self.pid = os.getpid()
        self._seq, self._overflow, self.written = 0, 0, 0
        self._pending.clear()  # the parent writes these
        self._inflight = deque()
        if self.store is not None:
            _inherited.append(self.store)  # never close the parent's connection from here
            old = self.store
            self.store = EventStore(old.path, old.max_events, old.max_age_s, old.max_bytes)


_inherited: list[EventStore] = []
_current: Recorder | None = None
_fallback = Recorder(UNKNOWN_ROLE)
_init_lock = threading.Lock()
_atexit_registered = False
_record_failed = False


def init(paths: RuntimePaths, role: str, cfg: BlackboxConfig | None = None) -> Recorder:
    """Start recording this process (``role``: bot, watchdog, cli, ...) into ``paths.blackbox_db``.

    Call once per process; a second call closes the previous recorder first. Never fails
    because of the database: it is opened by the writer, and trouble keeps events in memory.
    """
    global _current, _atexit_registered
    cfg = cfg or BlackboxConfig()
    store = EventStore(paths.blackbox_db, cfg.max_events, cfg.max_age_days * 86400.0,
                       int(cfg.max_mb * 1024 * 1024))
    rec = Recorder(role, store, flush_interval_s=cfg.flush_interval_ms / 1000.0,
                   ring_bytes=cfg.ring_kb * 1024)
    with _init_lock:
        previous = _current
        if previous is not None:
            previous.close()
        rec.adopt(previous or _fallback)
        _current = rec
        if not _atexit_registered:
            atexit.register(close)
            _atexit_registered = True
    rec._start_writer()
    return rec


def record(kind: str, source: str, message: str, *, severity: str = "info",
           critical: bool = False, **fields: Any) -> None:
    """Record one event (kinds are dotted: ``order.intent``). Never raises."""
    global _record_failed
    try:
        (_current or _fallback).record(kind, source, message, severity, critical, fields)
    except Exception:  # noqa: BLE001 - the recorder must never take its caller down
        if not _record_failed:
            _record_failed = True
            log.exception("blackbox: recording failed (reported once)")


def get() -> Recorder | None:
    """This process's recorder, or None before ``init``."""
    return _current


def recent(n: int | None = None) -> list[dict[str, Any]]:
    """The last ``n`` (default: all held in memory) events recorded in this process (redacted),
    oldest first."""
    return (_current or _fallback).recent(n)


def flush(timeout: float = 5.0) -> bool:
    """Write everything recorded so far; False on timeout or if the database is unavailable."""
    rec = _current
    return rec.flush(timeout) if rec is not None else True


def close() -> None:
    """Flush and stop recording to the database; later events stay in memory (ring only)."""
    global _current
    with _init_lock:
        rec, _current = _current, None
        if rec is not None:
            rec.close()
            _fallback.role = rec.role
            _fallback.adopt(rec)


def _after_fork() -> None:
    global _init_lock
    _init_lock = threading.Lock()
    for rec in (_current, _fallback):
        if rec is not None:
            rec.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
