"""A heartbeat-protocol bot whose state and detail a test steers: before every beat it reads
``CONTROL`` (JSON ``{"state": ..., "detail": {...}}``, replaced atomically by the test).

    python -m tests.watchdog.health.hbchild DATA_DIR CONTROL [--interval S]

It writes ``bot.pid`` once and ``bot.heartbeat`` every ``interval`` with ``seq`` + 1, exactly as
README's "Heartbeat protocol" asks of any bot; SIGSTOP it and the heartbeat goes stale.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tradeguard.heartbeat import Heartbeat, write_heartbeat, write_pidfile


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("control", type=Path)
    ap.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args()
    write_pidfile(a.data_dir / "bot.pid")
    started, seq = time.time(), 0
    while True:
        try:
            control = json.loads(a.control.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            control = {}
        seq += 1
        detail = {"bot_id": "hb", "started_at": started, **control.get("detail", {})}
        write_heartbeat(a.data_dir / "bot.heartbeat",
                        Heartbeat(os.getpid(), time.time(), seq, control.get("state", "running"), detail))
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
