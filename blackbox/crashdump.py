"""Crash dumps: what a process was doing when it failed, written to ``logs/crash/``.

:func:`install` (once per process) hooks unhandled exceptions in the main thread and in every
other thread, points faulthandler at a per-process ``.fault`` file for fatal signals, and makes
SIGUSR1 take a dump on demand (the handler only writes a byte to a pipe; a background thread
takes the dump). :func:`dump` is what the bot and the watchdog call on a SIGTERM shutdown.

A dump (JSON) holds the last events from the recorder's ring, every thread's stack, the
exception with its traceback, process facts (psutil), the effective configuration and an objgraph
memory summary, all passed through :func:`blackbox.redact.redact`. Dumps are rate-limited per
reason (unhandled exceptions excepted) and the newest ``dumps.KEEP_DUMPS`` are kept. Taking a
dump never raises and does not need the event log.
"""
from __future__ import annotations

import atexit
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Callable

from blackbox import recorder
from blackbox.dumps import dump_name, prune
from blackbox.redact import redact, redact_config, redact_text
from tradeguard.fsutil import write_atomic
from tradeguard.paths import RuntimePaths

log = logging.getLogger(__name__)

FORMAT = "tradeguard-crashdump/1"
RATE_LIMIT_S = 10.0
MAX_OPEN_FILES = 100
OBJGRAPH_LIMIT = 20
UNHANDLED = "unhandled exception"
ON_DEMAND = "SIGUSR1 (on demand)"


@dataclass
class _Installed:
    paths: RuntimePaths
    role: str
    config: dict[str, Any]
    fault_file: IO[str] | None = None
    last_dump: dict[str, float] = field(default_factory=dict)  # reason -> monotonic time
    peak_stats: dict[str, int] = field(default_factory=dict)   # objgraph.growth baseline
    growth_since: float | None = None
    pid: int = field(default_factory=os.getpid)  # the process that owns fault_file


_state: _Installed | None = None
_lock = threading.RLock()
_wake_w: int | None = None
_hooks_installed = False
_prev_excepthook: Callable[..., Any] = sys.excepthook
_prev_thread_hook: Callable[..., Any] = threading.excepthook
_prev_sigusr1: Any = signal.SIG_DFL


def install(paths: RuntimePaths, role: str, config: dict[str, Any] | None = None) -> None:
    """Set up crash dumps for this process (``role``: bot, watchdog, ...). Never raises.

    ``config`` is the effective configuration to include in every dump, redacted here once
    (:func:`~blackbox.redact.redact_config`: ``[health] users`` never reaches a dump).
    """
    global _state
    try:
        paths.crash_dir.mkdir(parents=True, exist_ok=True)
        with _lock:
            previous, _state = _state, _Installed(paths, role, redact_config(config or {}))
            if previous is not None:
                _close_fault_file(previous)
                _state.peak_stats, _state.growth_since = previous.peak_stats, previous.growth_since
            _open_fault_file(_state)
        prune(paths.crash_dir)
        _install_hooks()
        _start_dump_thread()
    except Exception:  # noqa: BLE001 - a process must run even if dumps cannot be set up
        log.exception("crash dumps could not be set up")


def dump(reason: str, exc: BaseException | None = None, *, thread: threading.Thread | None = None,
         rate_limit: bool = True) -> Path | None:
    """Write a crash dump now; its path, or None if rate-limited, not installed, or it failed."""
    try:
        with _lock:
            st = _state
            if st is None:
                log.warning("crash dump (%s) requested before crashdump.install()", reason)
                return None
            now = time.monotonic()
            if rate_limit and now - st.last_dump.get(reason, -RATE_LIMIT_S) < RATE_LIMIT_S:
                log.info("crash dump (%s) skipped: one was taken less than %.0fs ago",
                         reason, RATE_LIMIT_S)
                return None
            st.last_dump[reason] = now
            data = _collect(st, reason, exc, thread)
            path = _write(st.paths.crash_dir, data)
            prune(st.paths.crash_dir)
    except Exception:  # noqa: BLE001 - a dump must never take its process down
        log.exception("crash dump (%s) failed", reason)
        return None
    log.log(logging.ERROR if exc is not None else logging.WARNING, "crash dump written: %s (%s)",
            path, reason)
    exc_text = f"{type(exc).__name__}: {exc}" if exc is not None else None
    recorder.record("crash.dump", "crashdump", f"crash dump written: {reason}",
                    severity="error" if exc is not None else "warning", critical=True,
                    file=path.name, exception=exc_text)  # a name: the pattern net masks long paths
    return path


# --- collecting ---------------------------------------------------------------------------
def _collect(st: _Installed, reason: str, exc: BaseException | None,
             thread: threading.Thread | None) -> dict[str, Any]:
    ts = time.time()
    data: dict[str, Any] = {
        "format": FORMAT, "reason": reason, "role": st.role, "pid": os.getpid(), "ts": ts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
        "python": sys.version, "argv": list(sys.argv), "errors": []}
    sections: dict[str, Callable[[], Any]] = {
        "exception": lambda: _exception(exc, thread),
        "threads": _threads,
        "process": _process,
        "memory": lambda: _memory(st),
        "config": lambda: st.config,
        "recorder": lambda: (recorder.get().stats() if recorder.get() else None),
        "events": recorder.recent,  # the whole ring ([blackbox] ring_kb) and what is unwritten
    }
    for name, collect in sections.items():
        try:
            data[name] = collect()
        except Exception as e:  # noqa: BLE001 - a partial dump beats none
            data[name] = None
            data["errors"].append(f"{name}: {type(e).__name__}: {e}")
    return data


def _exception(exc: BaseException | None, thread: threading.Thread | None) -> dict | None:
    if exc is None:
        return None
    return {"type": type(exc).__qualname__, "module": type(exc).__module__, "message": str(exc),
            "thread": thread.name if thread is not None else threading.current_thread().name,
            "traceback": traceback.format_exception(exc)}


def _threads() -> list[dict[str, Any]]:
    by_id = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    out = []
    for tid, frame in sys._current_frames().items():
        t = by_id.get(tid)
        out.append({"id": tid, "name": t.name if t else "?", "daemon": t.daemon if t else None,
                    "dumping": tid == me, "stack": _stack(frame)})
    return out


def _stack(frame: FrameType) -> list[str]:
    return [line.rstrip("\n") for line in traceback.format_stack(frame)]


def _process() -> dict[str, Any]:
    import psutil

    p = psutil.Process()
    with p.oneshot():
        mem, cpu = p.memory_info(), p.cpu_times()
        files = p.open_files()
        return {"rss_bytes": mem.rss, "vms_bytes": mem.vms, "cpu_user_s": cpu.user,
                "cpu_system_s": cpu.system, "num_threads": p.num_threads(),
                "num_fds": p.num_fds(), "create_time": p.create_time(),
                "open_files_total": len(files),
                "open_files": [f.path for f in files[:MAX_OPEN_FILES]]}


def _memory(st: _Installed) -> dict[str, Any]:
    import objgraph

    since = st.growth_since
    growth = objgraph.growth(limit=OBJGRAPH_LIMIT, peak_stats=st.peak_stats)
    st.growth_since = time.time()
    return {"most_common_types": [list(t) for t in objgraph.most_common_types(limit=OBJGRAPH_LIMIT)],
            "growth": [list(t) for t in growth],
            "growth_since": since}  # unix time of the baseline (install or the previous dump)


def _write(crash_dir: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(redact(data), indent=1, default=str, ensure_ascii=False)
    base = dump_name(data["ts"], data["role"], data["pid"], "json")
    path, n = crash_dir / base, 1
    while True:
        try:
            write_atomic(path, text, overwrite=False)  # two dumps in one ms keep both
            return path
        except FileExistsError:
            n += 1
            path = crash_dir / base.replace(".json", f"-{n}.json")


# --- hooks --------------------------------------------------------------------------------
def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if not issubclass(exc_type, KeyboardInterrupt):
        dump(UNHANDLED, exc, rate_limit=False)
    if _prev_excepthook is sys.__excepthook__:
        _report(None, exc)
    else:
        _prev_excepthook(exc_type, exc, tb)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    if args.exc_value is not None:
        dump(f"{UNHANDLED} in thread {name}", args.exc_value, thread=args.thread,
             rate_limit=False)
    if _prev_thread_hook is threading.__excepthook__ and args.exc_value is not None:
        _report(f"Exception in thread {name}:", args.exc_value)
    else:
        _prev_thread_hook(args)


def _report(header: str | None, exc: BaseException) -> None:
    """What Python's default hook prints, redacted (stderr usually ends up in a log)."""
    try:
        text = "".join(traceback.format_exception(exc))
        sys.stderr.write((f"{header}\n" if header else "") + redact_text(text))
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr may be gone at this point
        pass


def _on_sigusr1(signum: int, frame: FrameType | None) -> None:
    # Signal context: only wake the dump thread; never take the dump here.
    if _wake_w is not None:
        try:
            os.write(_wake_w, b"!")
        except OSError:  # pipe full: a dump is already on its way
            pass
    if callable(_prev_sigusr1):
        _prev_sigusr1(signum, frame)


def _install_hooks() -> None:
    global _hooks_installed, _prev_excepthook, _prev_thread_hook, _prev_sigusr1
    if _hooks_installed:
        return
    _prev_excepthook, sys.excepthook = sys.excepthook, _excepthook
    _prev_thread_hook, threading.excepthook = threading.excepthook, _thread_excepthook
    try:
        _prev_sigusr1 = signal.signal(signal.SIGUSR1, _on_sigusr1)
    except ValueError:  # not the main thread: no on-demand dumps, the rest works
        log.warning("SIGUSR1 dumps not available: crashdump.install() ran outside the main thread")
    atexit.register(_at_exit)
    _hooks_installed = True


def _start_dump_thread() -> None:
    """The thread that takes the objgraph baseline, then takes SIGUSR1 dumps."""
    global _wake_w
    if _wake_w is not None:
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    _wake_w = w
    threading.Thread(target=_dump_thread, args=(r,), name="crashdump", daemon=True).start()


def _dump_thread(r: int) -> None:
    with _lock:
        st = _state
        if st is not None:
            try:
                _memory(st)
            except Exception:  # noqa: BLE001 - growth will then be relative to nothing
                log.warning("objgraph baseline failed", exc_info=True)
    while True:
        try:
            os.read(r, 64)
        except OSError:
            return
        dump(ON_DEMAND)


# --- the faulthandler file ----------------------------------------------------------------
def _open_fault_file(st: _Installed) -> None:
    path = st.paths.crash_dir / dump_name(time.time(), st.role, os.getpid(), "fault")
    st.fault_file = open(path, "w", encoding="utf-8")
    faulthandler.enable(file=st.fault_file, all_threads=True)


def _close_fault_file(st: _Installed) -> None:
    fh, st.fault_file = st.fault_file, None
    if fh is None:
        return
    faulthandler.disable()
    path = Path(fh.name)
    fh.close()
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _at_exit() -> None:
    with _lock:
        if _state is not None and _state.pid == os.getpid():
            _close_fault_file(_state)


def _after_fork() -> None:
    # The child has no dump thread: SIGUSR1 must not wake the parent's through the shared pipe.
    global _lock, _wake_w
    _lock, _wake_w = threading.RLock(), None


os.register_at_fork(after_in_child=_after_fork)
