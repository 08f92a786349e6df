"""No secret in any response or log line of the endpoint: the token, a Basic password, the
field key, the exchange secret — even when secret-shaped text reaches fields it relays."""
from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path

from tests.watchdog.health.conftest import PASSWORD, basic, bearer
from tests.watchdog.health.test_detailed_metrics import write_state
from tradeguard.paths import RuntimePaths
from watchdog.health.passwords import credentials_path, set_password


def test_no_response_or_log_line_contains_a_secret(serve, health_cfg, bot_child, wd_state,
                                                   data_dir: Path, logs_dir: Path, caplog,
                                                   monkeypatch):
    caplog.set_level(logging.DEBUG)
    exchange_secret = secrets.token_hex(32)  # the shape of a Binance API secret
    api_key = secrets.token_hex(32)
    monkeypatch.setenv("TRADEGUARD_PAPER_API_SECRET", exchange_secret)
    paths = RuntimePaths(data_dir, logs_dir)
    write_state(paths)
    field_key = paths.field_key.read_text().strip()
    (data_dir / "paper").mkdir()
    (data_dir / "paper" / "credentials.json").write_text(
        json.dumps({"api_key": api_key, "secret": exchange_secret}))
    cfg = health_cfg()
    set_password(credentials_path(cfg), "alice", PASSWORD)
    s = serve(cfg)
    token = s.token
    # Secret-shaped text in every free-text field the snapshot relays.
    bot_child.start("running", needs_attention=f"auth failed with secret {exchange_secret}",
                    api_key=api_key, breakers={"orders": "closed"})
    wd_state["evidence"] = {"note": f"called https://bot:{exchange_secret}@127.0.0.1/x",
                            "signature": exchange_secret}
    s.cfg.runtime.kill_file.write_text(json.dumps(
        {"mode": "halt", "reason": f"leak test Bearer {token} api_key={api_key}", "at": time.time()}))
    s.wait_status("halted")

    bodies = []
    for auth in (bearer(token), basic("alice", PASSWORD), bearer("wrong"), basic("alice", "x"), None):
        for path in ("/health", "/health/detailed", "/metrics", "/missing"):
            r = s.get(path, auth)
            bodies.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    everything = "\n".join(bodies) + "\n".join(rec.getMessage() for rec in caplog.records)
    assert "halted" in everything and "leak test" in everything  # the reason is relayed...
    for name, value in {"token": token, "password": PASSWORD, "field key": field_key,
                        "exchange secret": exchange_secret, "api key": api_key}.items():
        assert value not in everything, f"the {name} leaked"  # ...with the secrets masked
