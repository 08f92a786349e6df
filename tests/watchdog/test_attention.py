"""A strategy that raises on every tick is not healthy: after ``[bot] strategy_failures_attention``
failures in a row the heartbeat asks for attention, ``/health`` answers 503 with the reason and
the watchdog alerts; all of it clears when the strategy recovers. Real bot, real paper exchange,
real watchdog process, real webhook receiver."""
from __future__ import annotations

import requests

from tests.helpers.proc import free_port, spawn, stop, tradeguard_cmd, wait_until
from tests.watchdog.test_alerts import receiver  # noqa: F401 - fixture

STRATEGY = '''
from pathlib import Path
from bot.strategy import Strategy


class Flaky(Strategy):
    """Raises on every tick while the control file exists."""

    def __init__(self, control):
        self.control = Path(control)

    def on_tick(self, ctx):
        if self.control.exists():
            raise RuntimeError("model file missing")
        return []
'''


def test_a_strategy_failing_every_tick_needs_attention_until_it_recovers(bot_factory, receiver,  # noqa: F811
                                                                         tmp_path):
    strategy = tmp_path / "flaky.py"
    strategy.write_text(STRATEGY)
    control = tmp_path / "broken"
    health_port = free_port()
    bot = bot_factory(strategy=f"{strategy}:Flaky", strategy_params={"control": str(control)},
                      env={"TRADEGUARD_BOT_STRATEGY_FAILURES_ATTENTION": "3"})
    bot.wait_state("running")
    wd_env = {**bot.env, "TRADEGUARD_WATCHDOG_MANAGER": "standalone",
              "TRADEGUARD_WATCHDOG_INTERVAL_S": "0.1", "TRADEGUARD_HEALTH_PORT": str(health_port),
              "TRADEGUARD_ALERTS_WEBHOOK_URL": receiver.url()}
    wd = spawn(tradeguard_cmd("watchdog", "--config", str(bot.config_file), "--data-dir",
                              str(bot.data_dir), "--logs-dir", str(bot.logs_dir)),
               env=wd_env, log=bot.logs_dir / "watchdog.out")
    sess = requests.Session()
    sess.trust_env = False
    try:
        token = wait_until(lambda: bot.paths.health_token.read_text().strip(), 30, message="token")

        def health() -> requests.Response:
            return sess.get(f"http://127.0.0.1:{health_port}/health",
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)

        wait_until(lambda: health().status_code == 200, 30, message="healthy first")
        control.touch()
        hb = wait_until(lambda: (h := bot.heartbeat()) and h.detail.get("needs_attention") and h,
                        30, message="heartbeat asks for attention")
        assert "strategy failing: raised on 3 consecutive ticks" in hb.detail["needs_attention"]
        assert "RuntimeError: model file missing" in hb.detail["needs_attention"]
        body = wait_until(lambda: (x := health()).status_code == 503 and x.json(), 15, message="503")
        assert body["status"] == "attention"
        assert "strategy failing" in body["reason"] and "model file missing" in body["reason"]
        alert = wait_until(lambda: [b for b in receiver.bodies if b["event"] == "needs_attention"],
                           15, message="needs_attention alert")[0]
        assert alert["severity"] == "error" and "model file missing" in alert["message"]
        bot.wait_ticks(5)
        assert [b["event"] for b in receiver.bodies].count("needs_attention") == 1  # not one per tick

        control.unlink()
        wait_until(lambda: health().status_code == 200, 30, message="healthy again")
        assert bot.heartbeat().detail["needs_attention"] is None
        wait_until(lambda: any(b["event"] == "attention_cleared" for b in receiver.bodies), 15,
                   message="attention_cleared alert")
        assert bot.alive()
    finally:
        sess.close()
        stop(wd)
