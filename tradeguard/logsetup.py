"""Logging: a JSON-lines file per process (rotated) and a readable console; secrets masked in both."""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

from blackbox.redact import redact, redact_text
from tradeguard.exceptions import DirectoryError
from tradeguard.paths import ensure_writable_dir

_STD_ATTRS = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Masks secrets in the message and the extra fields of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            msg = str(record.msg)
        record.msg, record.args = redact_text(msg), None
        for k in list(vars(record)):
            if k not in _STD_ATTRS:
                setattr(record, k, redact({k: getattr(record, k)})[k])
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname, "role": self.role,
               "pid": record.process, "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS:
                out[k] = v
        if record.exc_info:
            out["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{t} {record.levelname:<7} {self.role}: {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


def setup_logging(role: str, logs_dir: Path | None, *, level: str | None = None,
                  console: bool = True) -> None:
    """Configure the root logger for one process role (bot, watchdog, paper-exchange, cli)."""
    level = (level or os.environ.get("TRADEGUARD_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level)
    redactor = RedactingFilter()
    if logs_dir is not None:
        ensure_writable_dir(Path(logs_dir), "logs", "[paths] logs_dir or --logs-dir")
        try:
            fh = logging.handlers.RotatingFileHandler(Path(logs_dir) / f"{role}.jsonl",
                                                      maxBytes=10 * 1024 * 1024, backupCount=5,
                                                      encoding="utf-8")
        except OSError as e:
            raise DirectoryError(f"cannot open the log file {Path(logs_dir) / f'{role}.jsonl'}: "
                                 f"{e.strerror or e}") from None
        fh.addFilter(redactor)
        fh.setFormatter(JsonFormatter(role))
        root.addHandler(fh)
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.addFilter(redactor)
        ch.setFormatter(ConsoleFormatter(role))
        root.addHandler(ch)
    for noisy in ("urllib3", "ccxt", "waitress", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
