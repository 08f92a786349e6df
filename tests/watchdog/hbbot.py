"""A minimal bot that speaks the heartbeat protocol (README, "Heartbeat protocol"): the watchdog
guards any such process. Used where the watchdog's judgement, not trading, is under test.

    python -m tests.watchdog.hbbot DATA_DIR [--mode normal|stall|leak|crash|silent|stopping]
                                   [--interval S]

``stall`` keeps the heartbeat fresh with a stuck ``seq``; ``leak`` grows its memory by 20 MB a
tick; ``crash`` exits 3 right after writing its pid file; ``silent`` writes a pid file and no
heartbeat; ``stopping`` reports ``stopping`` and exits after two ticks.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from tradeguard.heartbeat import Heartbeat, write_heartbeat, write_pidfile


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--mode", default="normal",
                    choices=("normal", "stall", "leak", "crash", "silent", "stopping"))
    ap.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args()
    def on_term(*_: object) -> None:  # leaves a mark: the tests tell SIGTERM from SIGKILL
        (a.data_dir / "hbbot.sigterm").touch()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    write_pidfile(a.data_dir / "bot.pid")
    if a.mode == "crash":
        return 3
    seq, hoard, ticks = 0, [], 0
    while True:
        ticks += 1
        if a.mode != "stall" or seq == 0:
            seq += 1
        if a.mode == "leak":
            hoard.append(bytearray(os.urandom(1)) * (20 * 1024 * 1024))
        state = "stopping" if a.mode == "stopping" else "running"
        if a.mode != "silent":
            write_heartbeat(a.data_dir / "bot.heartbeat",
                            Heartbeat(os.getpid(), time.time(), seq, state, {"bot_id": "hb"}))
        if a.mode == "stopping" and ticks >= 2:
            return 0
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
