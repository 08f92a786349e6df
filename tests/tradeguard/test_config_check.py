"""``tradeguard config check`` checks what a start checks, each problem a clear message, exit 2;
a failing start generates no field key."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.proc import free_port, run_cli


def _check(tmp_path: Path, toml: str, env: dict | None = None, *args: str):
    cfg = tmp_path / "tg.toml"
    cfg.write_text(toml)
    return run_cli(*args or ("config", "check"), "--config", str(cfg), "--data-dir",
                   str(tmp_path / "data"), "--logs-dir", str(tmp_path / "logs"), env=env, cwd=tmp_path)


def _strategy(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "mystrat.py"
    f.write_text(body)
    return f


GOOD = "from bot.strategy import Strategy\nclass S(Strategy):\n    def __init__(self, size=1):\n" \
       "        self.size = size\n    def on_tick(self, ctx):\n        return []\n"


def test_a_good_configuration_says_what_it_found(tmp_path: Path) -> None:
    f = _strategy(tmp_path, GOOD)
    port = free_port()
    r = _check(tmp_path, f'[bot]\nstrategy = "{f}:S"\nstrategy_params = {{size = 2}}\n'
                         f'[paper]\nport = {port}\n')
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout and "strategy: S from" in r.stdout
    assert f"paper exchange at 127.0.0.1:{port}" in r.stdout
    assert "no paper exchange listens" in r.stdout and "ccxt id" in r.stdout
    assert not (tmp_path / "data" / "paper").exists() and not (tmp_path / "data" / "keys").exists()


@pytest.mark.parametrize("body, spec_suffix, params, words", [
    (None, ":S", "", ["does not exist"]),
    ("def broken(:\n", ":S", "", ["failed to load", "SyntaxError"]),
    (GOOD, ":S", "strategy_params = {nope = 1}\n", ["strategy_params do not fit S", "nope"]),
    (GOOD, ":Missing", "", ["has no 'Missing'"]),
])
def test_strategy_problems(tmp_path: Path, body, spec_suffix, params, words) -> None:
    f = tmp_path / "mystrat.py" if body is None else _strategy(tmp_path, body)
    r = _check(tmp_path, f'[bot]\nstrategy = "{f}{spec_suffix}"\n{params}')
    assert r.returncode == 2, r.stdout
    assert "Traceback" not in r.stderr and "[bot] strategy" in r.stderr
    for w in words:
        assert w in r.stderr


def test_exchange_id_must_be_a_ccxt_id(tmp_path: Path) -> None:
    r = _check(tmp_path, '[exchange]\nid = "binanse"\n')
    assert r.returncode == 2 and "[exchange] id = 'binanse': not a ccxt exchange id" in r.stderr


def test_a_real_exchange_needs_credentials(tmp_path: Path) -> None:
    r = _check(tmp_path, '[exchange]\nid = "binance"\n')
    assert r.returncode == 2 and "no API key for exchange 'binance'" in r.stderr
    r = _check(tmp_path, '[exchange]\nid = "binance"\n',
               {"TRADEGUARD_EXCHANGE_API_KEY": "k", "TRADEGUARD_EXCHANGE_API_SECRET": "s"})
    assert r.returncode == 0, r.stderr
    assert "binance (live), API key found" in r.stdout


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    r = _check(tmp_path, '[exchange]\nid = "binance"\n[bot]\nstrategy = "/nope/x.py:S"\n'
                         '[health]\nusers = {alice = "scrypt$1$2"}\n')
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, r.stderr
    assert "users.alice" in errors[2] and "tradeguard health passwd alice" in errors[2]


def test_health_credentials_file_problems(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    users = data / "health.users"
    users.write_text("# monitors\nbob:scrypt$x\nno-colon-here\n")
    os.chmod(users, 0o600)
    r = _check(tmp_path, "")
    assert r.returncode == 2
    assert "health.users line 2" in r.stderr and "health.users line 3" in r.stderr
    os.chmod(users, 0o644)
    r = _check(tmp_path, "")
    assert r.returncode == 2 and "chmod 600" in r.stderr


def test_a_failing_start_generates_no_field_key(tmp_path: Path) -> None:
    r = _check(tmp_path, '[exchange]\nid = "binance"\n', None, "bot")
    assert r.returncode == 2 and "no API key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "keys" / "field.key").exists()
    assert not (tmp_path / "data" / "state.db").exists()


def test_run_refuses_what_the_bot_would_refuse(tmp_path: Path) -> None:
    r = _check(tmp_path, '[bot]\nstrategy = "/nope/x.py:S"\n', None, "run")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "data" / "supervisord.conf").exists()
