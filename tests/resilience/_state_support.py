"""Helpers shared by the state store, crypto and key tests."""
from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resilience.crypto import FieldCipher
from resilience.state import NewOrder, StateStore
from tests.helpers.proc import REPO, child_env


def key_bytes(seed: int) -> bytes:
    """A deterministic 32-byte key for tests."""
    return random.Random(seed).randbytes(32)


def cipher_for(seed: int = 1) -> FieldCipher:
    return FieldCipher.from_keys(key_bytes(seed))


def intent(store: StateStore, *, bot_id: str = "tg1", symbol: str = "BTC/USDT", side: str = "buy",
           amount: float = 0.01, reason: str = "", origin: str = "bot",
           purpose: str = "entry", emergency: bool = False):
    """Allocate a client order id and commit an intent with it."""
    cid, seq = store.next_client_order_id(bot_id, emergency=emergency)
    return store.add_intent(NewOrder(cid, seq, bot_id, symbol, side, "market", amount,
                                     reason=reason, origin=origin, purpose=purpose))


def spawn_writer(db: Path, key: bytes, bot_id: str, count: int | None = None) -> subprocess.Popen:
    """Start tests/resilience/_state_writer.py; its stdout is a pipe of ``ack <cid>`` lines."""
    argv = [sys.executable, "-m", "tests.resilience._state_writer", str(db), key.hex(), bot_id]
    if count is not None:
        argv.append(str(count))
    return subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class LineReader:
    """Reads complete lines from a child's stdout pipe with a deadline (no blocking forever)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.lines: list[str] = []

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return False
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode() for d in done]
        return True

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child printed {len(self.lines)} lines, wanted {n}: "
                                     f"{self.lines[-3:]}")
            if not self._pump(min(left, 0.5)):
                err = self.proc.stderr.read().decode(errors="replace")
                raise AssertionError(f"child exited after {len(self.lines)} lines: {err[-2000:]}")

    def drain(self, timeout: float = 5.0) -> list[str]:
        """Read everything up to EOF (the child has exited); a torn last line is dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pump(0.2):
            pass
        return self.lines


@contextmanager
def running_writer(db: Path, key: bytes, bot_id: str = "tg1") -> Iterator[LineReader]:
    """A writer child for the duration of the block; SIGKILLed and reaped on the way out."""
    proc = spawn_writer(db, key, bot_id)
    try:
        yield LineReader(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
