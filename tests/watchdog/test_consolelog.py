"""bot.console.log under the standalone manager: a generation per bot process, bounded in size."""
from __future__ import annotations

import sys

from tests.helpers.proc import REPO, child_env, wait_until
from watchdog import consolelog
from watchdog.managers import StandaloneManager

CHATTY = ("import time, itertools\n"
          "for i in itertools.count():\n"
          "    print(f'line {i:08d} ' + 'x' * 80, flush=True)\n"
          "    time.sleep(0.002)\n")


def test_console_log_rotates_per_process_and_stays_bounded(make_cfg, logs_dir, monkeypatch):
    monkeypatch.setattr(consolelog, "MAX_BYTES", 20_000)
    log = logs_dir / "bot.console.log"
    log.write_text("output of an earlier bot\n")
    m = StandaloneManager(make_cfg(), child_env(PYTHONPATH=str(REPO)),
                          argv=[sys.executable, "-c", CHATTY])
    m.start()
    try:
        first = logs_dir / "bot.console.log.1"
        assert first.read_text() == "output of an earlier bot\n"  # a new process, a new file
        wait_until(lambda: log.stat().st_size > 20_000, 20, message="the bot's output grows")
        m.poll()  # the watchdog's check: too big -> copied to .1 and truncated in place
        assert (logs_dir / "bot.console.log.2").read_text() == "output of an earlier bot\n"
        assert first.stat().st_size > 20_000 and first.read_text().startswith("line 00000000")
        wait_until(lambda: log.stat().st_size > 500, 10, message="the bot writes on")
        assert log.stat().st_size < first.stat().st_size
        assert log.read_bytes()[:5] == b"line "  # appends at the new end: no hole of NULs
    finally:
        m.stop()
    m.start()  # the next process: the previous output moves down a generation
    m.stop()
    assert (logs_dir / "bot.console.log.3").read_text() == "output of an earlier bot\n"
    assert len(list(logs_dir.glob("bot.console.log*"))) <= consolelog.KEEP + 1
