"""Configuration loading, overrides and validation (through the API and the real CLI)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.helpers.proc import REPO, run_cli
from tradeguard.config import load_config
from tradeguard.exceptions import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tg.toml"
    p.write_text(text)
    return p


def test_defaults_run_the_paper_demo(tmp_path: Path) -> None:
    cfg = load_config(env={})
    assert cfg.exchange.id == "paper"
    assert cfg.paper.port == 8765 and cfg.health.port == 8080
    assert Path(cfg.paths.data_dir) == (tmp_path / "data").resolve()
    assert cfg.source is None


def test_file_and_env_override(tmp_path: Path) -> None:
    f = write(tmp_path, '[paper]\nport = 9001\n[exchange]\nsymbols = ["ETH/USDT"]\n')
    cfg = load_config(f, env={"TRADEGUARD_PAPER_PORT": "9002", "TRADEGUARD_BOT_LOOP_INTERVAL_S": "0.25",
                              "TRADEGUARD_EXCHANGE_SANDBOX": "true"})
    assert cfg.paper.port == 9002
    assert cfg.bot.loop_interval_s == 0.25
    assert cfg.exchange.sandbox is True
    assert cfg.exchange.symbols == ["ETH/USDT"]


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    f = write(tmp_path, "[watchdog]\ninterval_s = 0.2\n")
    assert load_config(env={"TRADEGUARD_CONFIG": str(f)}).watchdog.interval_s == 0.2


@pytest.mark.parametrize("text, words", [
    ("[bot]\nfoo = 1\n", ["unknown key", "[bot] foo"]),
    ("[nosuch]\na = 1\n", ["unknown section", "[nosuch]"]),
    ("[paper]\nport = \"x\"\n", ["[paper] port", "'x'", "integer"]),
    ("[paper]\nport = 70000\n", ["[paper] port", "70000", "<= 65535"]),
    ("[watchdog]\nmanager = \"cron\"\n", ["[watchdog] manager", "'cron'", "one of"]),
    ("[exchange]\nsymbols = [\"btcusdt\"]\n", ["symbols", "btcusdt"]),
    ("[exchange]\napi_secret = \"s\"\n", ["[exchange] api_secret", "secrets are never read from the config file"]),
    ("[exchange]\napi_key = \"k\"\n", ["[exchange] api_key", "secrets are never read from the config file"]),
    ("[exchange]\npassword = \"p\"\n", ["[exchange] password", "secrets are never read from the config file"]),
    ("[alerts]\nsmtp_password = \"p\"\n", ["[alerts] smtp_password", "secrets are never read from the config file"]),
    ("[health]\nusers = {bob = \"plain\"}\n", ["users.bob", "scrypt"]),
    ("not toml [", ["not valid TOML"]),
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    for w in words:
        assert w in str(e.value)


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TRADEGUARD_WATCHDOG_INTERVAL_S"):
        load_config(env={"TRADEGUARD_WATCHDOG_INTERVAL_S": "fast"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(env={"TRADEGUARD_BOT_NOPE": "1"})


SECRET_ENV = {"TRADEGUARD_EXCHANGE_API_KEY": "k", "TRADEGUARD_EXCHANGE_API_SECRET": "s",
              "TRADEGUARD_EXCHANGE_PASSWORD": "p", "TRADEGUARD_PAPER_API_KEY": "pk",
              "TRADEGUARD_PAPER_API_SECRET": "ps", "TRADEGUARD_FIELD_KEY": "f",
              "TRADEGUARD_SMTP_PASSWORD": "m"}


def test_secret_variables_are_not_configuration() -> None:
    from tradeguard.secrets import SECRET_ENV_VARS

    assert set(SECRET_ENV) == SECRET_ENV_VARS
    cfg = load_config(env={**SECRET_ENV, "TRADEGUARD_PAPER_PORT": "9100"})
    assert cfg.paper.port == 9100
    assert "k" not in str(cfg.to_dict().get("exchange"))


@pytest.mark.parametrize("command", [("config", "check"), ("status",), ("config", "show")])
def test_commands_work_with_the_documented_secret_variables(tmp_path: Path, command) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    r = run_cli(*command, "--data-dir", str(tmp_path / "d"), "--logs-dir", str(tmp_path / "l"),
                env=SECRET_ENV, cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr  # status exits 1: no bot runs here
    assert "unknown key" not in r.stderr and "Traceback" not in r.stderr


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_example_file_documents_every_key_and_loads() -> None:
    from tradeguard.config import example_toml

    example = REPO / "tradeguard.example.toml"
    assert example.read_text() == example_toml(), "regenerate tradeguard.example.toml"
    assert load_config(example, env={}) == dataclasses.replace(load_config(env={}),
                                                                source=str(example))


def test_heartbeat_timeout_must_outlast_the_slowest_tick() -> None:
    with pytest.raises(ConfigError, match="heartbeat_timeout_s"):
        load_config(env={"TRADEGUARD_BOT_TICK_DEADLINE_S": "12"})


def test_cli_config_check(tmp_path: Path) -> None:
    good = write(tmp_path, "[bot]\nloop_interval_s = 2\n")
    r = run_cli("config", "check", "--config", str(good), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[bot]\nloop_interval_s = \"slow\"\n")
    r = run_cli("config", "check", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert "[bot] loop_interval_s" in r.stderr and "Traceback" not in r.stderr

    unknown = write(tmp_path, "[risk]\nmax_leverage = 3\n")
    r = run_cli("config", "check", "--config", str(unknown), cwd=tmp_path)
    assert r.returncode == 2 and "max_leverage" in r.stderr

    r = run_cli("config", "check", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_readme_reference_is_current() -> None:
    """README's configuration reference is the generated one (regenerate it when keys change)."""
    from tradeguard.config import reference_markdown

    readme = (REPO / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- config-reference:start")) + 4
    end = readme.index("<!-- config-reference:end -->")
    assert readme[start:end] == reference_markdown()
