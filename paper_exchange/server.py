"""``serve()``: run the paper exchange until SIGTERM/SIGINT (``tradeguard paper-exchange``)."""
from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from decimal import Decimal
from typing import Any, Callable

from paper_exchange.app import PaperApp
from paper_exchange.book import BookSettings
from paper_exchange.ratelimit import RateLimiter
from trading.paper_credentials import load_or_create
from paper_exchange.engine import Engine, EngineSettings, now_ms
from paper_exchange.faults import FaultBook
from paper_exchange.markets import MARKETS
from paper_exchange.prices import PriceFeed, load_csv_series
from paper_exchange.store import Store
from paper_exchange.wsgi import make_server
from tradeguard.config import Config
from tradeguard.net import is_loopback
from tradeguard.exceptions import ConfigError, PaperStateError
from tradeguard.logsetup import setup_logging

log = logging.getLogger("paper_exchange")
ROLE = "paper-exchange"


def _blackbox(cfg: Config) -> Callable[..., None]:
    """``record(kind, message, **fields)`` into the black box if it is available; else a no-op."""
    try:
        from blackbox import recorder  # type: ignore[attr-defined]
        recorder.init(cfg.runtime, ROLE, cfg.blackbox)
    except Exception as e:  # noqa: BLE001 - the recorder is optional for the paper exchange
        log.debug("black box not available: %s", e)
        return lambda *a, **k: None

    def record(kind: str, message: str, **fields: Any) -> None:
        try:
            recorder.record(kind, ROLE, message, **fields)
        except Exception:  # noqa: BLE001
            log.debug("black box record failed", exc_info=True)

    return record


def build_app(cfg: Config, record: Callable[..., None] = lambda *a, **k: None) -> PaperApp:
    """The application with its engine, database and credentials (no socket yet)."""
    paths = cfg.runtime
    api_key, secret = load_or_create(paths)
    series = None
    if cfg.paper.prices_csv:
        series = load_csv_series(paths.data_dir / cfg.paper.prices_csv, MARKETS.values())
    pc = cfg.paper
    spread = Decimal(str(pc.slippage))
    settings = EngineSettings(fee=Decimal(str(pc.fee)), fee_asset=pc.fee_asset, slippage=spread,
                              start_balances={a: Decimal(str(v)) for a, v in pc.start_balances.items()},
                              book=BookSettings(pc.book_levels, Decimal(str(pc.book_level_quote)),
                                                Decimal(str(pc.book_step)), spread, pc.seed),
                              client_id_reuse=pc.client_id_reuse,
                              visibility_lag_ms=int(pc.visibility_lag_s * 1000),
                              recheck_recv_window=pc.recv_window_at_matching)
    db = paths.paper_dir / "exchange.db"
    store = None
    try:
        store = Store(db)
        engine = Engine(store,
                        lambda state: PriceFeed(MARKETS, seed=cfg.paper.seed, volatility=cfg.paper.volatility,
                                                tick_s=cfg.paper.tick_s, series=series, state=state,
                                                now_ms=now_ms()),
                        settings)
    except (sqlite3.DatabaseError, ArithmeticError, ValueError, TypeError) as e:
        if store is not None:
            store.close()
        raise PaperStateError(f"paper exchange database {db} cannot be read ({e}); it is left "
                              "untouched: move it aside to start a fresh paper account") from None
    return PaperApp(engine, api_key, secret, FaultBook(cfg.paper.seed), record=record,
                    limits=RateLimiter(pc.rate_limit_multiplier, pc.rate_limit_ban_s))


def _tick_loop(app: PaperApp, tick_s: float) -> None:
    while not app.stopping.wait(tick_s):
        app.ticks += 1
        if app.paused.is_set():
            continue
        try:
            for f in app.engine.tick():
                log.info("limit order %s filled: %s %s %s @ %s", f.client_order_id, f.side, f.qty,
                         f.symbol, f.price)
        except Exception:  # noqa: BLE001 - a failed step must not stop the prices
            log.exception("price step failed")


def serve(cfg: Config, host: str | None = None, port: int | None = None, allow_remote: bool = False) -> None:
    """Serve on ``host:port`` (default from ``[paper]``) until SIGTERM/SIGINT; stops within seconds."""
    host = host or cfg.paper.host
    port = cfg.paper.port if port is None else port
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"paper exchange host {host!r} is not a loopback address; it would expose "
                          "the exchange to the network. Use 127.0.0.1, or pass --allow-remote.")
    paths = cfg.runtime.ensure()
    setup_logging(ROLE, paths.logs_dir)
    record = _blackbox(cfg)
    app = build_app(cfg, record)
    try:
        server = make_server(app, host, port)
    except OSError as e:
        app.engine.store.close()
        raise ConfigError(f"[paper] port = {port}: cannot listen on {host}:{port}: {e.strerror or e}") from None

    def stop(signum: int, frame: Any) -> None:
        app.stopping.set()
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    ticker = threading.Thread(target=_tick_loop, args=(app, cfg.paper.tick_s), name="paper-prices", daemon=True)
    ticker.start()
    url_host = f"[{host}]" if ":" in host else host
    log.info("paper exchange listening on http://%s:%d", url_host, int(server.effective_port))
    record("paper.start", f"paper exchange listening on {host}:{server.effective_port}")
    try:
        server.run()
    finally:
        app.stopping.set()
        ticker.join(timeout=5)
        server.close()
        with app.engine.lock:
            app.engine.store.close()
        record("paper.stop", "paper exchange stopped")
        log.info("paper exchange stopped")
