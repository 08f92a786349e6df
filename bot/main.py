"""The bot process: ``run_bot(cfg) -> exit code`` (``tradeguard bot``).

Startup order: strategy and failpoints are validated (a mistake exits 2 before anything runs),
then ``bot.pid`` and a ``starting`` heartbeat, the black box, failpoint ``startup``, the field key
and the state store, the exchange client and the resilience manager, then the loop (recovery
first). SIGTERM/SIGINT stop the loop at once (the tick's remaining exchange calls are skipped),
then the bot cancels entry orders if configured, records the fills of orders answered after the
signal, persists, records, crash-dumps "sigterm" and exits 0; a second signal exits immediately
(every state write is a transaction, so the state stays consistent).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Mapping

from blackbox import crashdump, recorder
from bot.engine import Bot
from trading.exchange import build_exchange
from trading.failpoints import Failpoints
from tradeguard.notify import Notifier
from trading.runtime import Runtime
from trading.stops import stop_policy
from bot.strategy import load_strategy
from resilience.keys import ensure_cipher
from resilience.killswitch import KillSwitch
from resilience.manager import ResilienceManager
from resilience.state import StateStore
from tradeguard.config import Config
from tradeguard.exceptions import AlreadyRunning, BotSetupError, StateError
from tradeguard.lifetime import hold_lock
from tradeguard.heartbeat import Heartbeat, process_for, read_pidfile, write_heartbeat, write_pidfile

log = logging.getLogger(__name__)
SECOND_SIGNAL_EXIT = 1


def _refuse_second_instance(cfg: Config) -> None:
    """Two bots on one state.db would each think they own every order: refuse."""
    info = read_pidfile(cfg.runtime.pidfile)
    if info is None or info.pid == os.getpid():
        return
    if process_for(info) is not None:
        raise AlreadyRunning(f"a bot (pid {info.pid}) already runs for {cfg.runtime.data_dir}; "
                             "stop it first (or remove a stale bot.pid if that process is not a bot)")


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(SECOND_SIGNAL_EXIT)  # second signal: at once
        log.warning("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _open_store(cfg: Config, environ: Mapping[str, str]) -> Any:
    paths = cfg.runtime
    fresh = not paths.state_db.exists()
    cipher, generated = ensure_cipher(paths, allow_generate=fresh, environ=environ)
    if generated:
        log.warning("generated a new field key at %s: back it up now — without it the encrypted "
                    "columns of state.db cannot be read", paths.field_key)
        recorder.record("keys.generated", "bot", f"new field key generated at {paths.field_key}",
                        severity="warning", critical=True)

    def on_event(kind: str, message: str, **fields: Any) -> None:
        severity = str(fields.pop("severity", "warning"))
        recorder.record(kind, "bot.state", message, severity=severity, critical=True, **fields)

    store = StateStore.open(paths.state_db, cipher, synchronous=cfg.bot.state_synchronous,
                            on_event=on_event, integrity="auto")  # scan only after an unclean stop
    if store.quarantined:
        log.error("state.db was corrupt and has been quarantined; the bot rebuilds it from the exchange")
    return store


def _on_breaker_change(dependency: str, old: str, new: str) -> None:
    # logged by the breaker itself; recorded here
    recorder.record("breaker.state", "bot", f"{dependency}: {old} -> {new}", severity="warning",
                    dependency=dependency, from_state=old, to_state=new)


def build_runtime(cfg: Config, failpoints: Failpoints, environ: Mapping[str, str]) -> Runtime:
    """State store, exchange client, resilience manager and kill switch for one bot process."""
    # The exchange first: a wrong id or missing credentials must fail before a field key is
    # generated for a state.db that never gets used.
    exchange = build_exchange(cfg, role="bot", environ=environ)
    store = _open_store(cfg, environ)
    manager = ResilienceManager(cfg.resilience, on_breaker_change=_on_breaker_change)
    killswitch = KillSwitch(cfg.runtime.kill_file, environ=environ)
    return Runtime(cfg, exchange, manager, store, killswitch, failpoints)


def run_bot(cfg: Config, *, environ: Mapping[str, str] | None = None,
            stop: threading.Event | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT (or ``stop``); return the process exit code."""
    environ = os.environ if environ is None else environ
    paths = cfg.runtime.ensure()
    strategy = load_strategy(cfg.bot.strategy, cfg.bot.strategy_params)
    if stop_policy(cfg) is None:  # ConfigError when the venue cannot hold the stops asked for
        log.warning("protective stops are off ([risk] stop_loss_pct = 0): if this host dies, "
                    "nothing limits the loss of the bot's positions")
    failpoints = Failpoints.load(paths.data_dir, environ)
    lock = hold_lock(paths.data_dir, "bot", "bot")  # one bot per state.db, race-free
    try:
        return _run_locked(cfg, strategy, failpoints, environ, stop)
    finally:
        lock.close()


def _run_locked(cfg: Config, strategy: Any, failpoints: Failpoints, environ: Mapping[str, str],
                stop: threading.Event | None) -> int:
    paths = cfg.runtime
    _refuse_second_instance(cfg)
    write_pidfile(paths.pidfile)
    write_heartbeat(paths.heartbeat, Heartbeat(os.getpid(), time.time(), 0, "starting",
                                               {"bot_id": cfg.bot.bot_id}))
    recorder.init(paths, "bot", cfg.blackbox)
    crashdump.install(paths, "bot", cfg.to_dict())
    recorder.record("bot.start", "bot", f"bot {cfg.bot.bot_id} starting (strategy {cfg.bot.strategy})",
                    strategy=cfg.bot.strategy, symbols=list(cfg.exchange.symbols),
                    failpoints=[f.text for f in failpoints.armed()])
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        _install_signals(stop)
    failpoints.hit("startup")

    try:
        rt = build_runtime(cfg, failpoints, environ)
    except StateError as e:  # e.g. state.db unreadable (permissions, disk): nothing can run
        raise BotSetupError(f"cannot open the state database: {e}") from None
    try:
        code = Bot(rt, strategy, Notifier(environ), stop).run()
    finally:
        rt.store.close()
    crashdump.dump("sigterm")
    recorder.flush()
    log.info("bot stopped")
    return code
