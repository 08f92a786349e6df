"""Who may read the health endpoint: the bearer token, or HTTP Basic users with scrypt hashes.

A successful Basic verification is cached under HMAC(per-process secret, "user:password") for
``[health] auth_cache_s``, so a monitor polling every few seconds costs microseconds, not a
scrypt run. The cache holds successes only, and is dropped whenever the credentials file
changes (a changed password is never served from it).

Order of a Basic attempt (:meth:`Authenticator.basic`), each step before the next:

1. the per-address :class:`FailureLimiter`: an address over ``failed_auth_per_minute`` gets 429
   for every Basic attempt, right or wrong — the cache is never consulted before it, so a
   monitor keeping the cache warm cannot lend its success to a guesser at the same address;
2. the global :class:`PasswordBudget` (``basic_checks_per_minute``): when it is spent,
   429 — again before the cache, or a cache lookup would test guesses for free;
3. the success cache; 4. scrypt, which takes one verification from the budget.

Password checks run in one thread of their own at a lower CPU priority (nice +10), so a
flood's checks yield the CPU to the bot and to everyone else's requests.

The bearer token is not behind either limit: it is a 384-bit random secret that nobody can
guess, checked with one SHA-256, so a monitor sharing an address with strangers (a proxy, a
NAT) keeps working while they are refused.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from tradeguard.config import Config
from tradeguard.exceptions import SecretError
from watchdog.health.filestat import FileChange
from watchdog.health.passwords import (DUMMY_HASH, ScryptHash, config_users, credentials_path,
                                       read_credentials, verify_password)
from watchdog.health.ratelimit import FailureLimiter, PasswordBudget
from watchdog.health.tokens import TokenVerifier

log = logging.getLogger(__name__)

FAILURE_WINDOW_S = 60.0
MAX_CACHED = 1024
MAX_WAITING = 10000  # addresses remembered as told to wait (memory bound)
HASHER_NICE = 10


def _lower_priority() -> None:
    try:  # Linux: a thread's own priority (its native id); elsewhere the call may fail: fine
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHER_NICE)
    except (OSError, AttributeError):
        log.debug("password checks run at normal priority")


class BasicUsers:
    """The config's users plus the credentials file's (the file wins, so ``tradeguard health
    passwd`` always takes effect), re-read when the file changes."""

    def __init__(self, cfg: Config):
        self.path = credentials_path(cfg)
        self._config_users = config_users(cfg)
        self._lock = threading.Lock()
        self._change = FileChange(self.path)
        self._users: dict[str, ScryptHash] = dict(self._config_users)
        self.generation = 0
        self.refresh()

    def refresh(self) -> int:
        """Reload if the file changed (one ``stat``); returns the current generation."""
        with self._lock:
            if self._change.changed():
                self._users = {**self._config_users, **self._load_file()}
                self.generation += 1
            return self.generation

    def _load_file(self) -> dict[str, ScryptHash]:
        try:
            return read_credentials(self.path)
        except SecretError as e:
            log.error("HTTP Basic users of %s refused until it is fixed: %s", self.path, e)
            return {}

    def get(self, user: str) -> ScryptHash | None:
        return self._users.get(user)

    def __len__(self) -> int:
        return len(self._users)


class Authenticator:
    """Token and Basic verification, the success cache and the failure limiter."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.cache_s = cfg.health.auth_cache_s
        self.tokens = TokenVerifier(cfg.runtime.health_token)
        self.users = BasicUsers(cfg)
        self.limiter = FailureLimiter(cfg.health.failed_auth_per_minute, FAILURE_WINDOW_S,
                                      clock=clock)
        self.budget = PasswordBudget(cfg.health.basic_checks_per_minute, clock=clock)
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="health-scrypt",
                                          initializer=_lower_priority)
        self._waiting: dict[str, float] = {}  # address -> until (clock) it was told to wait
        self._secret = os.urandom(32)
        self._cache: dict[bytes, tuple[float, int, str]] = {}
        self._cache_lock = threading.Lock()

    def bearer(self, token: str) -> bool:
        """True for the current token (cheap: a stat and a SHA-256)."""
        return self.tokens.verify(token)

    def told_to_wait(self, addr: str, seconds: int) -> None:
        """``addr`` was answered 429 with ``Retry-After: seconds``."""
        now = self.clock()
        with self._cache_lock:
            if len(self._waiting) >= MAX_WAITING:
                self._waiting = {a: t for a, t in self._waiting.items() if t > now}
                if len(self._waiting) >= MAX_WAITING:
                    self._waiting.clear()
            self._waiting[addr] = now + seconds

    def waiting(self, addr: str) -> bool:
        """True while ``addr`` has been told to wait (the server then reads it slowly). Called
        for every connection on every turn of the server loop: one dict lookup when not."""
        until = self._waiting.get(addr)
        return until is not None and until > self.clock()

    def basic(self, addr: str, user: str, password: str) -> tuple[str | None, int | None]:
        """``(user, None)`` when the pair is right, ``(None, None)`` when it is wrong, and
        ``(None, seconds)`` when it was refused unchecked (429 with ``Retry-After``)."""
        retry = self.limiter.retry_after(addr)
        if retry is None:
            retry = self.budget.retry_after()
        if retry is not None:
            return None, retry
        gen = self.users.refresh()
        key = self._cache_key(user, password)
        hit = self._cache.get(key)
        if hit is not None and hit[1] == gen and hit[0] > self.clock():
            return hit[2], None
        retry = self.budget.acquire()
        if retry is not None:
            return None, retry
        try:
            stored = self.users.get(user)
            ok = self._hasher.submit(verify_password, password, stored or DUMMY_HASH).result()
            ok = ok and stored is not None
        finally:
            self.budget.release()
        if ok and self.cache_s > 0:
            self._remember(key, gen, user)
        return (user if ok else None), None

    def basic_needs_check(self, addr: str, user: str, password: str) -> bool:
        """Would :meth:`basic` run scrypt for this attempt (not refused by a limit, not cached)?
        Changes nothing: the server asks it to decide where to answer the request."""
        if self.limiter.retry_after(addr) is not None or self.budget.retry_after() is not None:
            return False
        hit = self._cache.get(self._cache_key(user, password))
        return not (hit is not None and hit[1] == self.users.generation and hit[0] > self.clock())

    def close(self) -> None:
        """Stop the password-check thread (after a check in progress)."""
        self._hasher.shutdown(wait=True)

    def _remember(self, key: bytes, gen: int, user: str) -> None:
        with self._cache_lock:
            if len(self._cache) >= MAX_CACHED:
                now = self.clock()
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
            self._cache[key] = (self.clock() + self.cache_s, gen, user)

    def _cache_key(self, user: str, password: str) -> bytes:
        msg = f"{user}:{password}".encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()
