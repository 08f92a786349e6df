"""The process: persistence across restarts, credentials, the CLI, bind address, shutdown."""
from __future__ import annotations

import json
import socket
import stat

import ccxt
import pytest

from trading.paper_credentials import ENV_KEY, ENV_SECRET, load_or_create, read_credentials
from tests.helpers.proc import free_port, run_cli, wait_until
from tradeguard.exceptions import KeyFileError
from tradeguard.paths import RuntimePaths


def test_restart_keeps_orders_fills_balances_and_prices(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600, slippage=0.0)
    px.set_price("BTC/USDT", 50000)
    px.set_price("ETH/USDT", 2500.5)
    c = px.client()
    c.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-p-1"})
    c.create_order("BTC/USDT", "limit", "buy", 0.01, 40000, {"newClientOrderId": "tg-p-2"})
    before = (px.ledger(), px.balances())
    key = px.api_key
    px.restart()
    assert (px.ledger(), px.balances()) == before
    assert px.api_key == key  # same credentials file
    prices = px.health()["prices"]
    assert (prices["BTCUSDT"], prices["ETHUSDT"]) == ("50000.00000000", "2500.50000000")
    c = px.client()
    assert c.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tg-p-2"})["status"] == "open"
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate"):  # the restored order is still open
        c.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "tg-p-2"})
    px.set_price("BTC/USDT", 39000)  # the restored resting order still fills
    assert c.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tg-p-2"})["status"] == "closed"
    new = c.create_order("BTC/USDT", "market", "buy", 0.001)
    assert int(new["id"]) > max(o["orderId"] for o in before[0]["orders"])


def test_random_walk_moves_and_pause_stops_it(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=0.02, volatility=0.01)
    first = px.health()["prices"]["BTCUSDT"]
    wait_until(lambda: px.health()["prices"]["BTCUSDT"] != first, timeout=5, message="a price step")
    px.pause()
    health = px.health()
    paused = health["prices"]
    wait_until(lambda: px.health()["ticks"] >= health["ticks"] + 5, timeout=5, message="paused ticks")
    assert px.health()["prices"] == paused and px.health()["paused"]
    px.resume()
    wait_until(lambda: px.health()["prices"] != paused, timeout=5, message="steps after resume")


def test_credentials_file_is_private_and_env_wins(tmp_path) -> None:
    paths = RuntimePaths(tmp_path / "data", tmp_path / "logs")
    assert read_credentials(paths, {}) is None
    key, secret = load_or_create(paths, {})
    mode = stat.S_IMODE(paths.paper_credentials.stat().st_mode)
    assert mode == 0o600 and json.loads(paths.paper_credentials.read_text()) == {"api_key": key, "secret": secret}
    assert load_or_create(paths, {}) == (key, secret)
    assert load_or_create(paths, {ENV_KEY: "k" * 10, ENV_SECRET: "s" * 10}) == ("k" * 10, "s" * 10)
    paths.paper_credentials.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_credentials(paths, {})
    paths.paper_credentials.chmod(0o600)
    paths.paper_credentials.write_text("[]")
    with pytest.raises(KeyFileError, match="api_key"):
        read_credentials(paths, {})


def test_secret_never_reaches_the_logs(paper_exchange_factory) -> None:
    px = paper_exchange_factory(tick_s=3600)
    c = px.client()
    c.secret = "f" * 64  # a bad signature gets logged as a rejection
    with pytest.raises(ccxt.AuthenticationError):
        c.fetch_balance()
    px.stop()
    logs = (px.logs_dir / "paper-exchange.jsonl").read_text() + px.output()
    assert "-1022" in logs
    assert px.secret not in logs and px.api_key not in logs


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.org"])
def test_non_loopback_bind_is_refused_without_allow_remote(tmp_path, host) -> None:
    r = run_cli("paper-exchange", "--host", host, "--port", str(free_port()),
                "--data-dir", str(tmp_path / "d"), "--logs-dir", str(tmp_path / "l"), timeout=30)
    assert r.returncode == 2 and "--allow-remote" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("paper-exchange", "--port", str(port), "--data-dir", str(tmp_path / "d"),
                    "--logs-dir", str(tmp_path / "l"), timeout=30)
    assert r.returncode == 2 and f"{port}" in r.stderr and "Traceback" not in r.stderr


def test_bad_prices_csv_is_a_config_error(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p.csv").write_text("timestamp,close\n1,abc\n")
    r = run_cli("paper-exchange", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                "--logs-dir", str(tmp_path / "l"), env={"TRADEGUARD_PAPER_PRICES_CSV": "p.csv"}, timeout=30)
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_database_is_a_clear_error_and_is_left_alone(tmp_path) -> None:
    db = tmp_path / "d" / "paper" / "exchange.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    r = run_cli("paper-exchange", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                "--logs-dir", str(tmp_path / "l"), timeout=30)
    assert r.returncode == 2 and "exchange.db" in r.stderr and "Traceback" not in r.stderr
    assert db.read_bytes() == b"this is not a database" * 100
