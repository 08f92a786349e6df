"""Every exception tradeguard raises on purpose, in one place.

Expected mistakes (bad config, bad arguments, a key file with loose permissions, a corrupt
file) derive from :class:`UserError`: the CLI prints their message and exits 2 (or 1 for a
failed check) instead of showing a traceback.
"""
from __future__ import annotations


class TradeguardError(Exception):
    """Base class of all tradeguard errors."""


class UserError(TradeguardError):
    """An expected mistake by the operator; the message says what to do."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration (file, environment override or CLI option) is invalid."""


class DirectoryError(UserError):
    """The data or logs directory cannot be created or written by this user."""


class SecretError(UserError):
    """A secret is missing, unreadable, or stored with permissions that expose it."""


class KeyFileError(SecretError):
    """A key file is missing, malformed or readable by group or others."""


class WrongKeyError(SecretError):
    """The field key does not open this database."""


class CheckFailed(UserError):
    """A check (db check, health check, chaos invariant) found a problem."""

    exit_code = 1


class StateError(TradeguardError):
    """The state store cannot do what was asked (illegal transition, missing row)."""


class StateCorruptError(StateError):
    """The state database failed its integrity check."""


class FieldDecryptError(StateError):
    """An encrypted value cannot be decrypted: wrong key, or moved to another row or column."""


class SchemaVersionError(UserError):
    """The state database was written by a newer tradeguard than this one."""


class BackupError(UserError):
    """A backup cannot be written (the target exists or is not writable)."""


class KillSwitchEngaged(TradeguardError):
    """An order was about to be sent while the kill switch is engaged."""

    def __init__(self, mode: str, reason: str):
        super().__init__(f"kill switch engaged ({mode}): {reason}")
        self.mode = mode
        self.reason = reason


class CircuitOpenError(TradeguardError):
    """The circuit breaker for a dependency is open; the call was not attempted."""

    def __init__(self, dependency: str):
        super().__init__(f"circuit breaker for {dependency!r} is open")
        self.dependency = dependency


class RetryBudgetExhausted(TradeguardError):
    """The retry budget of a dependency is spent; the call fails fast."""

    def __init__(self, dependency: str):
        super().__init__(f"retry budget for {dependency!r} is exhausted")
        self.dependency = dependency


class RiskLimitExceeded(TradeguardError):
    """A desired order would break a risk limit; it is not sent."""

    def __init__(self, limit: str, detail: str):
        super().__init__(f"risk limit {limit}: {detail}")
        self.limit = limit
        self.detail = detail


class StrategyLoadError(UserError):
    """The configured strategy cannot be imported or does not implement the interface."""


class AlreadyRunning(UserError):
    """Another process of this role already runs for this data dir."""


class ManagerError(TradeguardError):
    """The bot's process manager (supervisord, systemd, the standalone watchdog) failed an action."""


class BotSetupError(UserError):
    """The bot cannot start: its state database or another resource it needs is unusable."""


class FailpointTriggered(TradeguardError):
    """A failpoint with the ``raise`` action fired (chaos testing only)."""

    def __init__(self, name: str):
        super().__init__(f"failpoint {name!r} fired")
        self.name = name


class PaperApiError(TradeguardError):
    """The paper exchange rejects a request: a Binance error ``code`` and ``msg`` with an HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status


class BlackboxUnavailable(UserError):
    """blackbox.db does not exist or cannot be read."""


class ExportError(UserError):
    """An export cannot be written (the target exists or is not writable)."""


class HealthUnreachable(TradeguardError):
    """Nothing answers at the health endpoint's address (the watchdog is not serving it)."""


class PaperStateError(UserError):
    """The paper exchange's own database cannot be opened (corrupt or not a database)."""
