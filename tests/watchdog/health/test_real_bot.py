"""The endpoint over a real ``tradeguard bot`` trading on the real paper exchange."""
from __future__ import annotations

import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.proc import free_port
from tradeguard.config import load_config


def test_real_bot_healthy_then_sigstopped_then_back(bot_factory, serve):
    bot = bot_factory()
    bot.wait_state("running")
    cfg = load_config(bot.config_file, data_dir=bot.data_dir, logs_dir=bot.logs_dir,
                      env={"TRADEGUARD_HEALTH_PORT": str(free_port()),
                           "TRADEGUARD_WATCHDOG_HEARTBEAT_TIMEOUT_S": "1.5",
                           "TRADEGUARD_BOT_TICK_DEADLINE_S": "1.0",
                           "TRADEGUARD_BOT_LOOP_INTERVAL_S": "0.2"})
    s = serve(cfg)
    d = s.wait_status("healthy", timeout=20)
    assert d["bot"]["pid"] == bot.pid and d["bot"]["alive"]
    assert d["exchange"], "the bot's heartbeat carries resilience stats"

    fams = {f.name: f for f in text_string_to_metric_families(s.authed("/metrics").text)}
    calls = {smp.labels["dependency"]: smp.value for smp in fams["tradeguard_exchange_calls"].samples}
    assert sum(calls.values()) > 0
    assert any(smp.name.endswith("_bucket") for smp in fams["tradeguard_exchange_latency_seconds"].samples)

    bot.kill(signal.SIGSTOP, wait=False)
    try:
        d = s.wait_status("hung", timeout=10)
        assert "stopped" in d["reason"]
        assert s.authed("/health").status_code == 503
    finally:
        bot.kill(signal.SIGCONT, wait=False)
    s.wait_status("healthy", timeout=20)
    assert s.authed("/health").status_code == 200
