"""Configuration: one TOML file, environment overrides, validation that names what is wrong.

Resolution order for the file: ``--config PATH``, then ``$TRADEGUARD_CONFIG``, then
``./tradeguard.toml`` if it exists; with none, the defaults run the paper demo.
Every key can be overridden with ``TRADEGUARD_<SECTION>_<KEY>`` (e.g.
``TRADEGUARD_PAPER_PORT=9000``). Unknown keys, wrong types and out-of-range values raise
:class:`~tradeguard.exceptions.ConfigError` naming the key, the value and what is allowed.
Secrets are never read from here: see :mod:`tradeguard.secrets`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tradeguard.exceptions import ConfigError
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import SECRET_ENV_VARS

ENV_PREFIX = "TRADEGUARD_"
DEFAULT_FILE = "tradeguard.toml"
# Keys that look like secrets are refused in the file: they belong in credentials or env.
_SECRET_KEY_RE = re.compile(r"(secret|password|passwd|api_key|apikey|token|private)", re.I)
_SECRET_KEY_ALLOWED = {("health", "users"), ("health", "credentials_file")}


def _f(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
       choices: tuple[str, ...] | None = None, pattern: str | None = None) -> Any:
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "pattern": pattern}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str = _f("./data", "Runtime state: state.db, heartbeat, pid, KILL, blackbox, keys.")
    logs_dir: str = _f("./logs", "JSON-lines logs per process and crash dumps (crash/).")


@dataclass(frozen=True)
class ExchangeConfig:
    id: str = _f("paper", "'paper' for the local paper exchange (`tradeguard run` starts it; under systemd nothing does: set your exchange's ccxt id, or run `tradeguard paper-exchange` yourself), or any ccxt exchange id.",
                 pattern=r"^[a-z0-9_]+$")
    symbols: list = _f(["BTC/USDT", "ETH/USDT"], "Markets the bot trades (ccxt unified symbols).")
    sandbox: bool = _f(False, "Use the exchange's testnet (ccxt set_sandbox_mode).")
    timeout_ms: int = _f(5000, "Per-request HTTP timeout of the exchange client.", min=100, max=120000)
    recv_window_ms: int = _f(5000, "recvWindow of signed requests (venues that have one): a request the exchange has not executed this long after its timestamp never will — the fence an unknown order waits for.", min=100, max=60000)


@dataclass(frozen=True)
class PaperConfig:
    host: str = _f("127.0.0.1", "Bind address of the paper exchange (loopback only unless --allow-remote).")
    port: int = _f(8765, "Port of the paper exchange.", min=1, max=65535)
    fee: float = _f(0.001, "Trading fee as a fraction of the notional (0.001 = 0.1%).", min=0, max=0.1)
    fee_asset: str = _f("quote", "Asset the fee is charged in: 'quote' or 'received' (Binance default).",
                        choices=("quote", "received"))
    slippage: float = _f(0.0005, "Half spread: best ask/bid distance from the last price (fraction); "
                         "market orders then walk the book from there.", min=0, max=0.1)
    start_balances: dict = _f({"USDT": 10000.0}, "Balances of a new paper account.")
    volatility: float = _f(0.001, "Standard deviation of each random-walk price step (fraction).",
                           min=0, max=0.5)
    tick_s: float = _f(0.5, "Seconds between price steps.", min=0.01, max=3600)
    seed: int = _f(42, "Seed of the price random walk.", min=0)
    prices_csv: str = _f("", "Replay close prices from this OHLCV CSV (in the data dir) instead of a random walk.")
    client_id_reuse: str = _f("after_close", "When a newClientOrderId may be used again: 'after_close' "
                              "(Binance: unique only among open orders) or 'never' (kinder than Binance).",
                              choices=("after_close", "never"))
    visibility_lag_s: float = _f(0.0, "Seconds an accepted order stays invisible to GET /order, openOrders, "
                                 "allOrders and myTrades (-2013), as on an eventually consistent venue.",
                                 min=0, max=60)
    recv_window_at_matching: bool = _f(True, "Check timestamp + recvWindow again when a (delayed) order or "
                                       "cancel reaches the matching engine (Binance does); false models a "
                                       "venue without that fence.")
    book_levels: int = _f(50, "Price levels on each side of the synthetic order book.", min=1, max=5000)
    book_level_quote: float = _f(5000.0, "Average liquidity of one book level, in quote (sizes vary per "
                                 "level and price step).", min=0.01, max=1e9)
    book_step: float = _f(0.0001, "Distance between book levels as a fraction of the price (at least one "
                          "tick).", min=0, max=0.1)
    rate_limit_multiplier: float = _f(1.0, "Multiplies the Binance rate limits the exchange enforces "
                                      "(request weight/minute, orders/10 s, orders/day); raise it for "
                                      "benchmarks, lower it to provoke 429s.", min=0.001, max=1e6)
    rate_limit_ban_s: float = _f(120.0, "IP ban (HTTP 418) after repeated requests past a 429.",
                                 min=1, max=3 * 86400)


@dataclass(frozen=True)
class BotConfig:
    bot_id: str = _f("tg1", "Short id of this bot; prefixes every client order id.",
                     pattern=r"^[A-Za-z0-9]{1,12}$")
    strategy: str = _f("bot.strategies.demo:DemoStrategy",
                       "Strategy class: 'package.module:Class' or '/path/file.py:Class'.")
    strategy_params: dict = _f({}, "Keyword arguments passed to the strategy's constructor.")
    loop_interval_s: float = _f(1.0, "Seconds between loop ticks.", min=0.05, max=3600)
    tick_deadline_s: float = _f(4.0, "Longest one tick may wait on the exchange (keep it below [watchdog] heartbeat_timeout_s).", min=0.5, max=600)
    strategy_failures_attention: int = _f(5, "Consecutive ticks the strategy raised before the bot asks for attention (heartbeat needs_attention, /health 503, an alert).", min=1, max=1000000)
    reconcile_interval_s: float = _f(30.0, "Seconds between reconciliations while trading.", min=1, max=86400)
    cancel_entries_on_stop: bool = _f(True, "Cancel open entry orders on graceful shutdown.")
    unknown_grace_s: float = _f(3.0, "How long an accepted order may stay invisible to queries (eventual consistency), added to the fence before an UNKNOWN order counts as never sent.", min=0, max=3600)
    state_synchronous: str = _f("FULL", "SQLite synchronous level for the bot's writes.",
                                choices=("FULL", "NORMAL", "EXTRA"))


@dataclass(frozen=True)
class RiskConfig:
    max_position: dict = _f({"BTC/USDT": 0.05, "ETH/USDT": 1.0},
                            "Largest position per symbol, in base units.")
    max_position_notional: float = _f(2000.0, "Largest position per symbol, in quote currency.", min=0)
    max_exposure: float = _f(5000.0, "Largest total notional of all positions, in quote currency.", min=0)
    max_orders_per_minute: int = _f(30, "Most orders submitted in any 60 s.", min=1, max=100000)
    daily_loss_limit: float = _f(500.0, "Daily loss (realized + unrealized, quote) that halts trading; 0 = off.", min=0)
    daily_loss_limit_pct: float = _f(0.0, "Daily loss as % of the day's starting equity that halts trading; 0 = off.", min=0, max=100)
    stop_loss_pct: float = _f(5.0, "Protective stop on the exchange for every position: a stop-loss sell this % below the position's average entry price, placed as soon as an entry fills and resized with the position; it outlives the host. 0 = no stops (the explicit switch: required on a venue without stop orders).", min=0, max=50)
    stop_missing_attention_s: float = _f(30.0, "A position without its protective stop on the exchange for longer than this is needs_attention (heartbeat, /health 503, an alert).", min=1, max=86400)
    stop_limit_offset_pct: float = _f(0.0, "0 = the stop sells at market when triggered (STOP_LOSS): the loss is bounded by the stop distance plus slippage, also through a gap. > 0 = a stop-limit (STOP_LOSS_LIMIT) with its limit this % below the stop price: no worse price than that, but a gap past the limit leaves it resting unfilled and the position unprotected.", min=0, max=20)


@dataclass(frozen=True)
class ResilienceConfig:
    breaker_fail_max: int = _f(5, "Failures that open a dependency's circuit breaker.", min=1, max=1000)
    breaker_reset_s: float = _f(10.0, "Seconds an open breaker waits before a half-open probe.", min=0.1, max=3600)
    retry_budget: int = _f(100, "Retries allowed per dependency per budget window.", min=0, max=1000000)
    retry_budget_window_s: float = _f(3600.0, "Window of the retry budget.", min=1, max=86400)
    max_attempts: int = _f(4, "Attempts per read call (first try included).", min=1, max=20)
    backoff_base_s: float = _f(0.2, "First retry wait; doubles each retry, with jitter.", min=0.001, max=60)
    backoff_max_s: float = _f(5.0, "Longest wait between retries.", min=0.01, max=600)
    rate_limit_backoff_s: float = _f(2.0, "Least wait after a rate-limit error.", min=0.01, max=600)
    safe_after_s: float = _f(60.0, "An outage longer than this moves the bot from degraded to safe.", min=1, max=86400)


@dataclass(frozen=True)
class BlackboxConfig:
    max_events: int = _f(200000, "Events kept in blackbox.db; the oldest are dropped first.", min=1000, max=100000000)
    max_age_days: float = _f(30.0, "Events older than this are dropped.", min=0.01, max=3650)
    max_mb: float = _f(256.0, "Largest size of the kept events (their text, in MB); the oldest are dropped first.", min=1, max=1000000)
    flush_interval_ms: int = _f(100, "Longest a non-critical event waits in memory before it is written.", min=1, max=10000)
    ring_kb: int = _f(512, "Memory (KiB, taken at start) for the recent events every crash dump carries; ~2,000 events at 512.", min=64, max=1048576)


@dataclass(frozen=True)
class RetentionConfig:
    enabled: bool = _f(True, "Move closed orders, their fills and audit rows out of state.db into monthly archives (data/archive/) once they are old; positions and P&L are kept.")
    archive_after_days: float = _f(7.0, "Closed orders (and their fills and transitions) older than this are archived; state.db then holds about orders a day x this x 1.2 KB.", min=1, max=36500)
    batch_orders: int = _f(200, "Orders moved per archive transaction (a short write: the bot never waits long for it).", min=10, max=10000)


@dataclass(frozen=True)
class WatchdogConfig:
    interval_s: float = _f(0.5, "Seconds between checks.", min=0.05, max=60)
    heartbeat_timeout_s: float = _f(10.0, "Heartbeat older than this = hung (must exceed [bot] tick_deadline_s + loop_interval_s).", min=0.5, max=3600)
    progress_timeout_s: float = _f(15.0, "No seq progress for this long = stalled.", min=0.5, max=3600)
    memory_limit_mb: float = _f(500.0, "Bot RSS above this = leaking.", min=16, max=1048576)
    restart_budget: int = _f(5, "Restarts allowed per restart window.", min=0, max=1000)
    restart_window_s: float = _f(600.0, "Window of the restart budget.", min=1, max=86400)
    startup_timeout_s: float = _f(30.0, "A (re)started bot must report healthy within this.", min=1, max=3600)
    kill_grace_s: float = _f(3.0, "SIGTERM to SIGKILL grace for a hung bot.", min=0, max=600)
    flatten_deadline_s: float = _f(5.0, "How long the bot gets to carry out a flatten kill switch before the watchdog does.", min=0.5, max=3600)
    emergency_timeout_s: float = _f(120.0, "How long an emergency flatten keeps retrying before it reports failure.", min=1, max=86400)
    flatten_lookback_h: float = _f(168.0, "With state.db lost, how far back the emergency flatten reads the bot's orders and trades from the exchange to rebuild its positions.", min=1, max=24 * 366)
    unhealthy_alert_s: float = _f(60.0, "Alert when the bot stays unhealthy longer than this.", min=1, max=86400)
    manager: str = _f("auto", "Who restarts the bot.", choices=("auto", "supervisor", "systemd", "standalone"))


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = _f(True, "Serve the health endpoint from the watchdog.")
    host: str = _f("127.0.0.1", "Bind address; non-loopback needs TLS from a reverse proxy.")
    port: int = _f(8080, "Port of the health endpoint.", min=1, max=65535)
    users: dict = _f({}, "HTTP Basic users: name = scrypt hash (from 'tradeguard health passwd').")
    credentials_file: str = _f("", "File of 'user:scrypt-hash' lines (default: data_dir/health.users).")
    failed_auth_per_minute: int = _f(10, "Failed attempts per client address per minute before 429.", min=1, max=100000)
    auth_cache_s: float = _f(60.0, "Lifetime of a cached successful Basic verification.", min=0, max=3600)
    basic_checks_per_minute: int = _f(30, "scrypt checks a minute from all client addresses together (at least 10 at once), then 429.", min=1, max=100000)
    max_connections: int = _f(256, "Open connections in total; beyond it the stalest incomplete one is closed.", min=8, max=4096)
    max_connections_per_client: int = _f(16, "Open connections per client address (raise it behind a proxy).", min=1, max=4096)
    request_timeout_s: float = _f(10.0, "Longest time to receive one whole request (headers included).", min=1, max=300)


@dataclass(frozen=True)
class AlertsConfig:
    webhook_url: str = _f("", "POST alerts here (a secret-bearing URL is fine: it is never logged).")
    webhook_format: str = _f("generic", "Payload shape.", choices=("generic", "slack", "discord"))
    smtp_host: str = _f("", "SMTP server; empty = no email.")
    smtp_port: int = _f(587, "SMTP port.", min=1, max=65535)
    smtp_security: str = _f("starttls", "Transport security.", choices=("starttls", "tls", "none"))
    smtp_user: str = _f("", "SMTP login (password from credentials or TRADEGUARD_SMTP_PASSWORD).")
    smtp_from: str = _f("tradeguard@localhost", "Sender address.")
    smtp_to: list = _f([], "Recipients.")
    timeout_s: float = _f(10.0, "Per-delivery timeout.", min=0.1, max=300)
    queue_size: int = _f(100, "Alerts waiting for delivery; the oldest are dropped beyond this.", min=1, max=100000)
    daily_summary: bool = _f(False, "Send a daily_summary alert once a day: equity, P&L (total, today, per symbol), fees, positions.")
    daily_summary_hour_utc: int = _f(21, "UTC hour from which the day's summary is sent.", min=0, max=23)


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    blackbox: BlackboxConfig = field(default_factory=BlackboxConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    source: str | None = None  # the file it came from, if any

    @property
    def runtime(self) -> RuntimePaths:
        """Absolute paths of every runtime file."""
        return RuntimePaths(Path(self.paths.data_dir), Path(self.paths.logs_dir))

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (holds no secrets by construction)."""
        return {s.name: dataclasses.asdict(getattr(self, s.name)) for s in _sections()}


def _sections() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.name != "source"]


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else globals()[f.type]
                             for f in _sections()}


def _type_name(t: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}[t]


def _field_type(f: dataclasses.Field) -> type:
    t = f.type
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}[t] \
        if isinstance(t, str) else t


def _check_value(section: str, f: dataclasses.Field, value: Any, origin: str) -> Any:
    key = f"[{section}] {f.name}"
    t = _field_type(f)
    where = f" (from {origin})" if origin else ""
    ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{key} = {value!r}{where}: must be {_type_name(t)}")
    m = f.metadata
    if m.get("min") is not None and value < m["min"]:
        raise ConfigError(f"{key} = {value!r}{where}: must be >= {m['min']}")
    if m.get("max") is not None and value > m["max"]:
        raise ConfigError(f"{key} = {value!r}{where}: must be <= {m['max']}")
    if m.get("choices") and value not in m["choices"]:
        allowed = ", ".join(repr(c) for c in m["choices"])
        raise ConfigError(f"{key} = {value!r}{where}: must be one of {allowed}")
    if m.get("pattern") and not re.fullmatch(m["pattern"], value):
        raise ConfigError(f"{key} = {value!r}{where}: must match {m['pattern']}")
    return value


def _parse_env(section: str, f: dataclasses.Field, raw: str, name: str) -> Any:
    t = _field_type(f)
    try:
        if t is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t is int:
            return int(raw)
        if t is float:
            return float(raw)
        if t is list:
            raw_s = raw.strip()
            if raw_s.startswith("["):
                v = json.loads(raw_s)
                if not isinstance(v, list):
                    raise ValueError
                return v
            return [p.strip() for p in raw_s.split(",") if p.strip()]
        if t is dict:
            v = json.loads(raw)
            if not isinstance(v, dict):
                raise ValueError
            return v
        return raw
    except ValueError:
        hint = " (JSON object)" if t is dict else ""
        raise ConfigError(f"{name}={raw!r}: [{section}] {f.name} must be {_type_name(t)}{hint}") from None


def _validate_special(cfg: Config) -> None:
    for sym in cfg.exchange.symbols:
        if not isinstance(sym, str) or not re.fullmatch(r"[A-Z0-9]+/[A-Z0-9]+", sym):
            raise ConfigError(f"[exchange] symbols contains {sym!r}: each must look like 'BTC/USDT'")
    if not cfg.exchange.symbols:
        raise ConfigError("[exchange] symbols = []: at least one symbol is required")
    for name, table in (("[paper] start_balances", cfg.paper.start_balances),
                        ("[risk] max_position", cfg.risk.max_position)):
        for k, v in table.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{name}.{k} = {v!r}: must be a number >= 0")
    for user, h in cfg.health.users.items():
        if not isinstance(h, str) or not h.startswith("scrypt$"):
            raise ConfigError(f"[health] users.{user}: must be a hash from 'tradeguard health passwd' "
                              "(starts with 'scrypt$'); plain passwords are not accepted")
    slowest_tick = cfg.bot.tick_deadline_s + cfg.bot.loop_interval_s
    if cfg.watchdog.heartbeat_timeout_s <= slowest_tick:
        raise ConfigError(
            f"[watchdog] heartbeat_timeout_s = {cfg.watchdog.heartbeat_timeout_s}: must exceed "
            f"[bot] tick_deadline_s + loop_interval_s = {slowest_tick:g}, or a bot that is only "
            "waiting out a slow exchange is judged hung and restarted")
    for addr in cfg.alerts.smtp_to:
        if not isinstance(addr, str) or "@" not in addr:
            raise ConfigError(f"[alerts] smtp_to contains {addr!r}: each must be an e-mail address")


def find_config_file(path: str | os.PathLike | None, env: Mapping[str, str]) -> Path | None:
    """The file to load: explicit path, ``$TRADEGUARD_CONFIG``, or ``./tradeguard.toml``."""
    if path:
        return Path(path)
    if env.get("TRADEGUARD_CONFIG"):
        return Path(env["TRADEGUARD_CONFIG"])
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_config(path: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                logs_dir: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load, override and validate the configuration; raise ConfigError on any problem."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {file} cannot be read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from None

    values: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {file}; allowed: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name} = {value!r} in {file}: must be a [{name}] table")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
        for key, v in value.items():
            if _SECRET_KEY_RE.search(key) and (name, key) not in _SECRET_KEY_ALLOWED:
                raise ConfigError(f"[{name}] {key} in {file}: secrets are never read from the config "
                                  "file; remove it and use systemd credentials, a 0600 file in the "
                                  "keys dir or the environment (README, 'Secrets')")
            if key not in fields:
                raise ConfigError(f"unknown key [{name}] {key} in {file}; allowed: {', '.join(fields)}")
            values.setdefault(name, {})[key] = _check_value(name, fields[key], v, str(file))

    for var, rawv in env.items():
        if not var.startswith(ENV_PREFIX) or var == "TRADEGUARD_CONFIG" or var in SECRET_ENV_VARS:
            continue  # secrets are read by tradeguard.secrets, never as configuration
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # other TRADEGUARD_* variables (secrets, failpoints) are not config
        key = rest[len(section) + 1:]
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        if key not in fields:
            raise ConfigError(f"{var}: unknown key [{section}] {key}; allowed: {', '.join(fields)}")
        v = _parse_env(section, fields[key], rawv, var)
        values.setdefault(section, {})[key] = _check_value(section, fields[key], v, var)

    _resolve_paths(values.setdefault("paths", {}), data_dir, logs_dir)
    cfg = Config(**{s: SECTIONS[s](**values.get(s, {})) for s in SECTIONS},
                 source=str(file) if file else None)
    _validate_special(cfg)
    return cfg


def _resolve_paths(paths: dict[str, Any], data_dir: str | os.PathLike | None,
                   logs_dir: str | os.PathLike | None) -> None:
    """Apply the command-line directories and make both paths absolute (relative to the cwd)."""
    if data_dir is not None:
        paths["data_dir"] = str(data_dir)
    if logs_dir is not None:
        paths["logs_dir"] = str(logs_dir)
    base = Path.cwd()
    for k in ("data_dir", "logs_dir"):
        p = Path(paths.get(k, getattr(PathsConfig(), k))).expanduser()
        paths[k] = str(p if p.is_absolute() else (base / p).resolve())


def fallback_config(path: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                    logs_dir: str | os.PathLike | None = None,
                    env: Mapping[str, str] | None = None) -> Config:
    """Defaults with the best-known directories, for commands that must work with a broken config.

    The kill switch must reach the bot's data dir whatever else is wrong: each directory comes
    from the command line, else ``TRADEGUARD_PATHS_*``, else ``[paths]`` of the file if that
    much of it parses, else the default.
    """
    env = os.environ if env is None else env
    paths: dict[str, Any] = {}
    try:
        file = find_config_file(path, env)
        raw = tomllib.loads(file.read_text(encoding="utf-8")) if file is not None else {}
        section = raw.get("paths") if isinstance(raw, dict) else None
        if isinstance(section, dict):
            paths.update({k: v for k, v in section.items()
                          if k in ("data_dir", "logs_dir") and isinstance(v, str) and v})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    for k in ("data_dir", "logs_dir"):
        if env.get(f"{ENV_PREFIX}PATHS_{k.upper()}"):
            paths[k] = env[f"{ENV_PREFIX}PATHS_{k.upper()}"]
    _resolve_paths(paths, data_dir, logs_dir)
    return Config(paths=PathsConfig(**paths))


def iter_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, doc) for every configuration key: the reference."""
    out = []
    for s, cls in SECTIONS.items():
        inst = cls()
        for f in dataclasses.fields(cls):
            out.append((s, f.name, getattr(inst, f.name), f.metadata.get("doc", "")))
    return out


def reference_markdown() -> str:
    """The configuration reference as Markdown tables (kept in README between markers)."""
    rows: list[str] = []
    current = None
    for section, key, default, doc in iter_keys():
        if section != current:
            rows += ["", f"**[{section}]**", "", "| key | default | meaning |", "|---|---|---|"]
            current = section
        shown = json.dumps(default) if not isinstance(default, bool) else str(default).lower()
        rows.append(f"| `{key}` | `{shown}` | {doc} |")
    return "\n".join(rows).strip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = ", ".join(f"{json.dumps(k) if not re.fullmatch(r'[A-Za-z0-9_-]+', k) else k} = "
                          f"{_toml_value(x)}" for k, x in v.items())
        return "{ " + items + " }" if v else "{}"
    return repr(v)


def example_toml() -> str:
    """``tradeguard.example.toml``: every key with its default and what it means."""
    lines = ["# tradeguard configuration — every key, with its default.",
             "# Copy to tradeguard.toml (or pass --config PATH). Each key can be overridden with",
             "# TRADEGUARD_<SECTION>_<KEY>, e.g. TRADEGUARD_PAPER_PORT=9000.",
             "# Secrets (exchange keys, field key, SMTP password) are never read from this file:",
             "# see README, 'Secrets'."]
    current = None
    for section, key, default, doc in iter_keys():
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        lines += [f"# {doc}", f"{key} = {_toml_value(default)}"]
    return "\n".join(lines) + "\n"
